//! Continuous scrub: the writer of each volume has its PGs scrubbed when they are due
//! (`schedule`) or when an operator asks (`fabricctl scrub start`), and reports what each
//! PG's scrub found and repaired to the metadata service, where `scrub status` reads it.
//!
//! The checking itself happens on the storage nodes (SCRUB reads and checks a replica's
//! blocks on its own disk, in the scrub class of its IO scheduler), and the repairs through
//! the writer (`volume::client::ReplicatedVolume::scrub_group`), which alone can hold a range
//! still while it rewrites a copy. So a volume a gateway serves is scrubbed by that gateway;
//! one nobody has attached, by the maintenance agent of the leader's node, which attaches it
//! for the purpose as it does to heal it (`crate::rebuild_agent`).

pub mod schedule;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

use proto::meta as pb;
use volume::client::ScrubTally;

use crate::gateway::Attached;
use crate::meta::client::Client;
use crate::metrics::ScrubLabels;
pub use schedule::{Due, Intervals};

/// How often a scrubbing writer reports the PGs it has finished, at the most.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// PGs of one volume scrubbed at once (each with a few extents in flight).
const PGS_IN_FLIGHT: usize = 4;

/// What a writer knows of its volume's scrubs: the record, and the PGs it must cover.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScrubView {
    pub volume_id: u64,
    pub pg_count: u32,
    pub record: pb::VolumeScrub,
}

impl ScrubView {
    /// What is due at `now_ms` for a writer that began to follow the schedule at `since_ms`.
    pub fn due(&self, since_ms: u64, now_ms: u64, intervals: Intervals) -> Option<Due> {
        let times = (since_ms, now_ms);
        schedule::due(
            self.volume_id,
            &self.record,
            self.pg_count,
            times,
            intervals,
        )
    }
}

/// Scrubs the PGs of `due` on the attached volume, [`PGS_IN_FLIGHT`] at a time, and reports
/// them as it goes (every [`REPORT_EVERY`], and at the end). Starts no PG once `stop()` says
/// so, the attachment is superseded or something failed, lets those under way finish, and
/// reports what it finished (unless it failed). Returns the volume's record as the last report
/// left it.
pub(crate) async fn run(
    attached: &Attached,
    client: &Client,
    due: &Due,
    stop: impl Fn() -> bool,
) -> anyhow::Result<Option<pb::Volume>> {
    let started_ms = crate::meta::clock::unix_ms();
    let kind = if due.deep { "deep" } else { "light" };
    tracing::info!(volume = %attached.name, kind, pgs = due.pgs.len(), requested = due.fulfils.is_some(), "scrub starting");
    let labels = ScrubLabels {
        volume: attached.name.clone(),
        kind,
    };
    let m = &attached.metrics;
    let mut total = ScrubTally::default();
    let mut pending = Vec::new();
    let mut last_report = Instant::now();
    let mut record = None;
    // Set on the first failure: no PG starts after it.
    let mut failed: Option<anyhow::Error> = None;
    let halted = AtomicBool::new(false);
    let stopped =
        || halted.load(Ordering::Relaxed) || stop() || attached.superseded.refusal().is_some();
    // A few PGs at once: one PG of a small volume holds few extents, and the replicas'
    // disks are kept busy across the gaps between them. The stream is always drained: a PG's
    // scrub dropped mid-way could leave a repair's write in flight after its range lock is
    // given back, where a client's later write to the same blocks could overtake it.
    let mut scrubs = futures::stream::iter(due.pgs.iter().copied())
        .map(|pg| async move {
            if stopped() {
                return None;
            }
            Some((pg, attached.volume.scrub_group(pg as usize, due.deep).await))
        })
        .buffered(PGS_IN_FLIGHT);
    let mut done = 0;
    while let Some(scrubbed) = scrubs.next().await {
        let Some((pg, t)) = scrubbed else {
            continue;
        };
        let t = match t {
            Ok(t) => t,
            Err(e) => {
                halted.store(true, Ordering::Relaxed);
                failed.get_or_insert(anyhow::anyhow!("scrub PG {pg}: {e}"));
                continue;
            }
        };
        done += 1;
        m.scrubs.get_or_create(&labels).inc();
        m.scrub_bytes.get_or_create(&labels).inc_by(t.bytes_checked);
        m.scrub_errors.get_or_create(&labels).inc_by(t.errors());
        m.scrub_repaired.get_or_create(&labels).inc_by(t.repaired);
        m.scrub_unrepaired
            .get_or_create(&labels)
            .inc_by(t.unrepaired);
        total.add(&t);
        pending.push(pb::PgScrubReport {
            pg,
            errors: t.errors(),
            repaired: t.repaired,
            unrepaired: t.unrepaired,
        });
        let last = done == due.pgs.len();
        if failed.is_none() && (last || last_report.elapsed() >= REPORT_EVERY) {
            let pgs = std::mem::take(&mut pending);
            let fulfils = if last { due.fulfils } else { None };
            match report(attached, client, (due.deep, started_ms), pgs, fulfils).await {
                Ok(v) => record = Some(v),
                Err(status) => {
                    attached.superseded.note(&attached.name, &status);
                    halted.store(true, Ordering::Relaxed);
                    failed = Some(anyhow::anyhow!("report the scrub: {}", status.message()));
                }
            }
            last_report = Instant::now();
        }
    }
    drop(scrubs);
    if let Some(e) = failed {
        return Err(e);
    }
    if done < due.pgs.len() {
        // Stopped: what was scrubbed is reported; the rest stays due.
        tracing::info!(volume = %attached.name, kind, done, "scrub stopped");
        if !pending.is_empty()
            && let Ok(v) = report(attached, client, (due.deep, started_ms), pending, None).await
        {
            record = Some(v);
        }
        return Ok(record);
    }
    if total.errors() > 0 {
        tracing::warn!(volume = %attached.name, kind, pgs = due.pgs.len(), bytes_checked = total.bytes_checked, bad_blocks = total.bad_blocks, divergent = total.divergent, repaired = total.repaired, unrepaired = total.unrepaired, unchecked = total.unchecked, "scrub done");
    } else {
        tracing::info!(volume = %attached.name, kind, pgs = due.pgs.len(), bytes_checked = total.bytes_checked, unchecked = total.unchecked, "scrub done");
    }
    Ok(record)
}

/// Reports the scrub of `pgs` (deep or not, started at `started_ms`), finishing the request
/// of `fulfils` if given.
async fn report(
    attached: &Attached,
    client: &Client,
    (deep, started_ms): (bool, u64),
    pgs: Vec<pb::PgScrubReport>,
    fulfils: Option<u64>,
) -> Result<pb::Volume, tonic::Status> {
    let req = pb::ReportScrubRequest {
        volume: attached.name.clone(),
        attach_epoch: attached.attach_epoch,
        deep,
        started_ms,
        pgs,
        fulfils_ms: fulfils,
    };
    client
        .call(|mut c| {
            let req = req.clone();
            async move { c.report_scrub(req).await }
        })
        .await
}
