//! The rebuild agent: heals and scrubs volumes that nobody has attached.
//!
//! A volume's stale replicas are resynced by its writer (see [`crate::gateway`]), because only
//! the writer can hold its extents still while they are copied. A volume that no gateway
//! serves has no writer, so after a node goes out its re-placed replicas would stay empty and
//! the volume would stay degraded until someone attached it. The agent on the node whose
//! metadata member leads the Raft group attaches such a volume under its own name
//! (`rebuild-agent@node-N`), resyncs until every replica is current, flushes and detaches.
//!
//! The agent never stands in anyone's way: the state machine lets its attachment yield to any
//! other client without `--force`. That attach bumps the epoch, which fences the agent, both at
//! the replicas and in the metadata service: every membership change the agent proposes names
//! its attach epoch, so a resync it finishes after the takeover cannot restore a replica that
//! missed the new writer's writes. The new writer resyncs what is left.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::gateway::{Attached, Opening, detach, open_volume, resync_round};
use crate::identity::Transport;
use crate::meta::client::Client;
use crate::meta::state::REBUILD_AGENT_PREFIX;
use crate::meta::watcher::{ClusterView, Follower, follow};
use crate::scrub::{Intervals, ScrubView};
use proto::meta as pb;
use volume::BlockVolume;
use volume::client::{PoolConfig, ReplicaPool};

/// How often the agent looks again at degraded volumes when nothing changed: a heal that
/// failed (a replica still away) is retried at this pace. New work wakes it at once.
pub const REBUILD_AGENT_RETRY_MS: u64 = 5_000;
/// Resync rounds the agent spends on one volume before it moves on (one round a second): a
/// replica that stays away is tried again at a later visit.
const ROUNDS_PER_VISIT_MAX: u32 = 60;

/// Runs the agent of node `node`, whose metadata member listens on `rpc_addr`, until `stop`.
/// It follows the volumes over `Watch` (from its own member) and acts while that member leads.
pub async fn run(
    node: u64,
    rpc_addr: SocketAddr,
    transport: Transport,
    scrub: Intervals,
    mut stop: watch::Receiver<bool>,
) {
    let since_ms = crate::meta::clock::unix_ms();
    let client = Arc::new(Client::new(vec![rpc_addr.to_string()], transport.clone()));
    let me = format!("{REBUILD_AGENT_PREFIX}node-{node}");
    let pool = match crate::replica_dial::replica_pool(&transport, PoolConfig::default()) {
        Ok(pool) => pool,
        Err(e) => {
            tracing::error!(error = %e, "rebuild agent cannot start");
            return;
        }
    };
    let (tx, mut degraded) = watch::channel(Vec::new());
    let (idle_tx, idle) = watch::channel(BTreeMap::new());
    let subscription = tokio::spawn({
        let (client, stop) = (Arc::clone(&client), stop.clone());
        async move {
            // Pools come too, for their PG counts, which a volume's scrub schedule covers.
            let request = pb::WatchRequest {
                exclude_nodes: true,
                ..pb::WatchRequest::default()
            };
            let mut follower = Degraded::new(tx, idle_tx);
            follow(&client, request, &mut follower, stop).await;
        }
    });
    let mut retry = tokio::time::interval(Duration::from_millis(REBUILD_AGENT_RETRY_MS));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = retry.tick() => {}
            changed = degraded.changed() => if changed.is_err() { break },
            _ = stop.changed() => break,
        }
        let leads = client
            .status_of(&rpc_addr.to_string())
            .await
            .is_ok_and(|s| s.role == "leader");
        if !leads {
            continue;
        }
        let volumes: Vec<(String, String)> = degraded.borrow_and_update().clone();
        for (name, holder) in volumes {
            if !holder.is_empty() && holder != me {
                continue;
            }
            tokio::select! {
                healed = heal(&client, &pool, &name, &me) => {
                    if let Err(e) = healed {
                        tracing::warn!(volume = %name, error = %format!("{e:#}"), "rebuild agent could not heal the volume; will try again");
                    }
                }
                _ = stop.changed() => break,
            }
        }
        // Then the idle volumes whose scrub was asked for or is due.
        let now = crate::meta::clock::unix_ms();
        let due: Vec<String> = idle
            .borrow()
            .iter()
            .filter(|(_, (holder, view))| {
                (holder.is_empty() || *holder == me) && view.due(since_ms, now, scrub).is_some()
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            // It stops between PGs once `stop` turns, and lets go of the volume.
            let scrubbed = scrub_idle(&client, &pool, &name, &me, (since_ms, scrub), &stop).await;
            if let Err(e) = scrubbed {
                tracing::warn!(volume = %name, error = %format!("{e:#}"), "maintenance agent could not scrub the volume; will try again");
            }
            if *stop.borrow() {
                break;
            }
        }
    }
    subscription.abort();
}

/// Follows the volumes and publishes those with stale replicas (name and holder) whenever
/// that list changes. An event is looked at for the volumes it carries only (a delta touches a
/// few; scanning every volume on every event made the agent the busiest task of a member
/// under a stream of creates).
struct Degraded {
    view: ClusterView,
    /// The volumes with stale replicas, and who holds each.
    degraded: BTreeMap<String, String>,
    tx: watch::Sender<Vec<(String, String)>>,
    /// The volumes no gateway holds (nobody, or an agent), with their scrub records.
    idle: watch::Sender<BTreeMap<String, (String, ScrubView)>>,
}

impl Degraded {
    fn new(
        tx: watch::Sender<Vec<(String, String)>>,
        idle: watch::Sender<BTreeMap<String, (String, ScrubView)>>,
    ) -> Degraded {
        Degraded {
            view: ClusterView::default(),
            degraded: BTreeMap::new(),
            tx,
            idle,
        }
    }

    /// Takes volume `name` as the view has it now.
    fn look_at(&mut self, name: &str) {
        match self.view.volumes.get(name) {
            Some(v) if !v.stale.is_empty() => {
                self.degraded.insert(name.to_owned(), v.attached_to.clone());
            }
            _ => {
                self.degraded.remove(name);
            }
        }
        let idle = self.idle_entry(name);
        self.idle.send_if_modified(|have| {
            let before = have.get(name);
            if before == idle.as_ref() {
                return false;
            }
            match idle {
                Some(entry) => have.insert(name.to_owned(), entry),
                None => have.remove(name),
            };
            true
        });
    }

    /// What the idle list holds for `name`: its holder and scrub view, if no gateway holds it.
    fn idle_entry(&self, name: &str) -> Option<(String, ScrubView)> {
        let v = self.view.volumes.get(name)?;
        if !(v.attached_to.is_empty() || v.attached_to.starts_with(REBUILD_AGENT_PREFIX)) {
            return None;
        }
        let view = ScrubView {
            volume_id: v.id,
            pg_count: self.view.pools.get(&v.pool)?.pg_count,
            record: v.scrub.clone().unwrap_or_default(),
        };
        Some((v.attached_to.clone(), view))
    }
}

impl Follower for Degraded {
    fn epoch(&self) -> u64 {
        self.view.epoch()
    }

    fn apply(&mut self, event: pb::WatchEvent) -> bool {
        let full = event.full;
        let touched: Vec<String> = event
            .volume_records
            .iter()
            .map(|v| v.name.clone())
            .chain(event.removed_volumes.iter().cloned())
            .collect();
        if !self.view.apply(event) {
            return false;
        }
        if full {
            self.degraded = self
                .view
                .volumes
                .values()
                .filter(|v| !v.stale.is_empty())
                .map(|v| (v.name.clone(), v.attached_to.clone()))
                .collect();
            let idle = self
                .view
                .volumes
                .keys()
                .filter_map(|name| Some((name.clone(), self.idle_entry(name)?)))
                .collect();
            self.idle.send_replace(idle);
        } else {
            for name in touched {
                self.look_at(&name);
            }
        }
        let degraded: Vec<(String, String)> = self
            .degraded
            .iter()
            .map(|(n, h)| (n.clone(), h.clone()))
            .collect();
        self.tx.send_if_modified(|have| {
            let changed = *have != degraded;
            *have = degraded;
            changed
        });
        true
    }
}

/// Attaches `name` as `me`, scrubs what is due of it (see `crate::scrub`), flushes and
/// detaches. Stops between PGs once another client took the volume, or `stop` turns true.
async fn scrub_idle(
    client: &Arc<Client>,
    pool: &Arc<ReplicaPool>,
    name: &str,
    me: &str,
    (since_ms, intervals): (u64, Intervals),
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let attached = attach_idle(client, pool, name, me).await?;
    // What is due as the attach read the record: the list may have been behind it.
    let due = attached
        .scrub
        .borrow()
        .due(since_ms, crate::meta::clock::unix_ms(), intervals);
    let taken = || attached.volume.fenced_by().is_some() || attached.superseded.refusal().is_some();
    if let Some(due) = due {
        tracing::info!(
            volume = name,
            epoch = attached.attach_epoch,
            deep = due.deep,
            "maintenance agent attached an idle volume to scrub it"
        );
        crate::scrub::run(&attached, client, &due, || *stop.borrow() || taken()).await?;
    }
    if taken() {
        return Ok(());
    }
    attached
        .volume
        .flush()
        .await
        .map_err(|e| anyhow::anyhow!("flush: {e}"))?;
    detach(client, &attached, me).await;
    Ok(())
}

/// Attaches `name` as `me`, which yields to any other client. The volume has no client here,
/// so its resyncs keep no pace.
async fn attach_idle(
    client: &Arc<Client>,
    pool: &Arc<ReplicaPool>,
    name: &str,
    me: &str,
) -> anyhow::Result<Attached> {
    let opening = Opening {
        attach_as: me,
        force: false,
        metrics: Default::default(),
        resync_pace_bytes_per_sec: volume::client::RESYNC_BYTES_PER_SEC_MAX,
    };
    open_volume(client, pool, name, opening).await
}

/// Attaches `name` as `me`, resyncs its stale replicas, flushes and detaches. Stops early once
/// another client took the volume: a replica refused `me`'s epoch, or the metadata service
/// refused one of `me`'s membership changes as fenced (the restore of a resync that may have
/// missed the new writer's writes, say).
async fn heal(
    client: &Arc<Client>,
    pool: &Arc<ReplicaPool>,
    name: &str,
    me: &str,
) -> anyhow::Result<()> {
    let attached = attach_idle(client, pool, name, me).await?;
    let volume = &attached.volume;
    tracing::info!(
        volume = name,
        epoch = attached.attach_epoch,
        stale = volume.stale_replicas().len(),
        "rebuild agent attached an idle volume to heal it"
    );
    let taken = || volume.fenced_by().is_some() || attached.superseded.refusal().is_some();
    for _ in 0..ROUNDS_PER_VISIT_MAX {
        if volume.stale_replicas().is_empty() || taken() {
            break;
        }
        resync_round(&attached, client, true).await;
        if !volume.stale_replicas().is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    if taken() {
        tracing::info!(
            volume = name,
            epoch = attached.attach_epoch,
            "another client attached the volume; it resyncs the rest"
        );
        return Ok(());
    }
    volume
        .flush()
        .await
        .map_err(|e| anyhow::anyhow!("flush: {e}"))?;
    let left = volume.stale_replicas().len();
    detach(client, &attached, me).await;
    tracing::info!(
        volume = name,
        stale_left = left,
        "rebuild agent let go of the volume"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(name: &str, stale: bool, holder: &str) -> pb::Volume {
        pb::Volume {
            name: name.into(),
            stale: if stale {
                vec![pb::StaleReplicas::default()]
            } else {
                Vec::new()
            },
            attached_to: holder.into(),
            ..Default::default()
        }
    }

    fn event(
        full: bool,
        base: u64,
        epoch: u64,
        volumes: Vec<pb::Volume>,
        removed: &[&str],
    ) -> pb::WatchEvent {
        pb::WatchEvent {
            full,
            base_epoch: base,
            cluster_epoch: epoch,
            volume_records: volumes,
            removed_volumes: removed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_degraded_list_follows_full_states_and_deltas() {
        let (tx, rx) = watch::channel(Vec::new());
        let mut d = Degraded::new(tx, watch::channel(BTreeMap::new()).0);
        assert!(d.apply(event(
            true,
            0,
            1,
            vec![
                volume("a", true, ""),
                volume("b", false, ""),
                volume("c", true, "gw")
            ],
            &[],
        )));
        let names = |rx: &watch::Receiver<Vec<(String, String)>>| -> Vec<String> {
            rx.borrow().iter().map(|(n, _)| n.clone()).collect()
        };
        assert_eq!(names(&rx), ["a", "c"]);
        assert_eq!(rx.borrow()[1].1, "gw");
        // A delta: b degrades, a heals, c is deleted.
        assert!(d.apply(event(
            false,
            1,
            2,
            vec![volume("a", false, ""), volume("b", true, "")],
            &["c"],
        )));
        assert_eq!(names(&rx), ["b"]);
        // A delta from another base is refused and changes nothing.
        assert!(!d.apply(event(false, 7, 8, vec![volume("d", true, "")], &[])));
        assert_eq!(names(&rx), ["b"]);
    }
}
