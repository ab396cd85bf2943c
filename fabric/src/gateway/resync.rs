//! Bringing stale replicas back: every second, and at once when the watch says the volume's
//! map or record moved, each volume's stale replicas that answer are resynced and restored in
//! the metadata. The map is read again only when something moved (or a resize waits for a
//! replica), and as a safety net every [`MAP_REFRESH_TICKS_MAX`] seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use proto::meta as pb;

use super::attach::Attached;
use super::maps::{Followed, Stamps, follow_map};
use super::{RESYNC_INTERVAL_MS, RESYNCS_IN_PARALLEL_MAX};
use crate::meta::client::Client;

/// Resync intervals after which a volume reads its map again although the watch reported
/// nothing: a subscription that was down for a while may have missed a change.
pub const MAP_REFRESH_TICKS_MAX: u32 = 30;

/// Follows the PG map and resyncs stale replicas of the volume that answer, for as long as
/// the attachment is not superseded: a node that came back, or a node a PG was re-placed
/// onto (a rebuild). Ends between rounds once `stop` turns true.
pub(super) async fn resync_stale(
    attached: Attached,
    client: Arc<Client>,
    mut moved: tokio::sync::watch::Receiver<Stamps>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(RESYNC_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watching = true;
    // The map was read at attach, as the stamps stood then.
    let mut seen = moved.borrow_and_update().clone();
    let (mut since_refresh, mut again) = (0u32, false);
    loop {
        // A moved map is followed at once; the tick retries replicas that were away.
        let ticked = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => true,
            changed = moved.changed(), if watching => {
                watching = changed.is_ok();
                false
            }
        };
        since_refresh += u32::from(ticked);
        if attached.superseded.refusal().is_some() {
            return;
        }
        let now = moved.borrow_and_update().clone();
        let refresh = again
            || seen.moved_for(&now, &attached.name)
            || since_refresh >= MAP_REFRESH_TICKS_MAX
            || !watching;
        seen = now;
        if !refresh && !ticked {
            // Another volume's record moved: nothing for this one until its next tick.
            continue;
        }
        if refresh {
            since_refresh = 0;
        }
        again = resync_round(&attached, &client, refresh).await;
    }
}

/// With `refresh`, follows the PG map first; then resyncs the stale replicas of the volume
/// that answer, up to [`RESYNCS_IN_PARALLEL_MAX`] at once. Nothing once the attachment is
/// superseded. True when the map should be read again at the next round (the read failed, or
/// a resize waits for a replica to grow).
pub(crate) async fn resync_round(attached: &Attached, client: &Arc<Client>, refresh: bool) -> bool {
    let name = attached.name.as_str();
    if attached.superseded.refusal().is_some() {
        return false;
    }
    let again = refresh
        && match follow_map(attached, client).await {
            Ok(Followed::Done) => false,
            Ok(Followed::SizePending) => true,
            Err(e) => {
                tracing::debug!(volume = %name, error = %e, "PG map not refreshed");
                true
            }
        };
    // A replica that restarted while the volume was idle is found here, not by the next reader.
    if let Err(e) = attached.volume.probe_unflushed().await {
        tracing::debug!(volume = %name, error = %e, "replicas not probed");
    }
    let round: Vec<(usize, SocketAddr, u64)> = {
        let nodes = attached.node_of.read().expect("node addresses");
        attached
            .volume
            .stale_replicas()
            .into_iter()
            .filter_map(|(group, replica)| Some((group, replica, *nodes.get(&replica)?)))
            .collect()
    };
    if round.is_empty() {
        return again;
    }
    tracing::debug!(volume = %name, replicas = round.len(), "resync round starting");
    let started = Instant::now();
    let copied = AtomicU64::new(0);
    let resynced = AtomicU64::new(0);
    futures::stream::iter(round)
        .for_each_concurrent(RESYNCS_IN_PARALLEL_MAX, |(group, replica, node)| {
            let (copied, resynced) = (&copied, &resynced);
            async move {
                if let Some(bytes) = resync_one(attached, client, group, replica, node).await {
                    copied.fetch_add(bytes, Ordering::Relaxed);
                    resynced.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    // Every round that brought a replica back says so, even when nothing needed copying: a
    // reader of the log (or a test) waiting for the end of the resyncs must not wait for a
    // round that copied data when the last one only confirmed replicas already current.
    let (bytes_copied, replicas) = (copied.into_inner(), resynced.into_inner());
    let labels = crate::metrics::VolumeLabels {
        volume: name.to_owned(),
    };
    attached
        .metrics
        .resync_bytes
        .get_or_create(&labels)
        .inc_by(bytes_copied);
    if bytes_copied > 0 {
        attached
            .metrics
            .resync_seconds
            .get_or_create(&labels)
            .inc_by(started.elapsed().as_secs_f64());
    }
    if replicas > 0 {
        tracing::info!(volume = %name, replicas, bytes_copied, elapsed_ms = started.elapsed().as_millis() as u64, "resync round done");
    }
    again
}

/// Resyncs stale `replica` (on `node`) of `group` if it answers; the bytes copied, or `None`
/// if it is still away or the resync failed (the next round tries again).
pub(super) async fn resync_one(
    attached: &Attached,
    client: &Arc<Client>,
    group: usize,
    replica: SocketAddr,
    node: u64,
) -> Option<u64> {
    let (volume, name) = (&attached.volume, attached.name.as_str());
    if let Err(e) = volume.extent_versions(replica, 0, 1).await {
        tracing::debug!(volume = %name, pg = group, node, error = %e, "replica does not answer yet; resync later");
        return None;
    }
    let req = pb::ReplicaRequest {
        volume: name.to_owned(),
        pg: group as u32,
        node,
        attach_epoch: attached.attach_epoch,
    };
    // Refused as fenced, the restore fails the resync: the replica stays stale for the
    // writer that superseded this one.
    let restore = async {
        client
            .call(|mut c| {
                let req = req.clone();
                async move { c.restore_replica(req).await }
            })
            .await
            .map(|_| ())
            .map_err(|s| {
                attached.superseded.note(name, &s);
                format!("restore node {node} in PG {group}: {}", s.message())
            })
    };
    // Progress goes to the metadata service at most once a second (and at the end), so that
    // `fabricctl volume show` can tell how far a rebuild has come.
    let last_report: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let progress = |done: u64, total: u64| {
        let mut last = last_report.lock().expect("last report");
        if done != total && last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        let client = Arc::clone(client);
        let superseded = attached.superseded.clone();
        let req = pb::ReportRebuildRequest {
            volume: name.to_owned(),
            progress: Some(pb::RebuildProgress {
                pg: group as u32,
                node,
                done_bytes: done,
                total_bytes: total,
            }),
            attach_epoch: attached.attach_epoch,
        };
        tokio::spawn(async move {
            let sent = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.report_rebuild(req).await }
                })
                .await;
            if let Err(s) = sent
                && !superseded.note(&req.volume, &s)
            {
                tracing::debug!(status = %s, "rebuild progress not recorded");
            }
        });
    };
    let started = Instant::now();
    match volume.resync(group, replica, progress, restore).await {
        Ok(report) => {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                volume = %name,
                pg = group,
                node,
                extents_in_pg = report.extents_in_group,
                extents_copied = report.extents_copied,
                bytes_copied = report.bytes_copied,
                "resync done"
            );
            Some(report.bytes_copied)
        }
        Err(e) if attached.superseded.refusal().is_some() => {
            // Logged already, where the refusal was noted.
            tracing::debug!(volume = %name, pg = group, node, error = %e, "resync given up: the attachment is superseded");
            None
        }
        Err(e) => {
            tracing::warn!(volume = %name, pg = group, node, error = %e, "resync failed; will retry");
            None
        }
    }
}
