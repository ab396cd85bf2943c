//! When a member builds a snapshot of its state machine.
//!
//! A snapshot serializes the whole state and writes it out, so its cost grows with the state:
//! with a fixed interval (openraft's `LogsSinceLast`) a cluster of many volumes would spend
//! more and more of its time snapshotting as it grows (at 5,000 entries and some tens of
//! thousands of volumes, about a quarter of the metadata group's commit throughput). Here the
//! next snapshot is due once the log since the last one holds at least `snapshot_logs`
//! entries *and* at least as many entries as the last snapshot had records. Each entry then
//! pays for about one record of snapshot work at most, and the state at most doubles between
//! two snapshots, so the log a restart replays stays about as long as the snapshot. (Comparing
//! with the records the state has *now* would never come due while every entry adds a record
//! or two, as creates do.)

use std::sync::Arc;
use std::time::Duration;

use super::member::Member;

/// How often a member checks whether a snapshot is due.
pub const SNAPSHOT_CHECK_INTERVAL_MS: u64 = 200;

/// The log length since the last snapshot at which the next one is due: the configured
/// minimum, or the number of records the last snapshot held if that is larger.
pub fn snapshot_due_after(snapshot_logs: u64, records_at_last: u64) -> u64 {
    snapshot_logs.max(records_at_last)
}

/// Triggers a snapshot whenever one is due, until `stop`.
pub async fn run(
    member: Arc<Member>,
    snapshot_logs: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    assert!(snapshot_logs > 0, "validated with the node's configuration");
    // The last applied index a snapshot was asked for, and the state's records then: openraft
    // builds one at a time, and asking again before the log has grown as much once more would
    // only queue rebuilds.
    let mut asked_at = 0;
    let mut records_at_last = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(SNAPSHOT_CHECK_INTERVAL_MS)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (applied, snapshot) = {
            use openraft::async_runtime::watch::WatchReceiver;
            let m = member.raft.metrics();
            let m = m.borrow_watched();
            (
                m.last_applied.as_ref().map_or(0, |l| l.index()),
                m.snapshot.as_ref().map_or(0, |l| l.index()),
            )
        };
        let since = applied.saturating_sub(snapshot.max(asked_at));
        if since < snapshot_due_after(snapshot_logs, records_at_last) {
            continue;
        }
        asked_at = applied;
        records_at_last = member.sm.read(|state, _| state.records());
        if let Err(e) = member.raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "snapshot not triggered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_for_as_many_entries_as_the_last_one_had_records() {
        assert_eq!(snapshot_due_after(5_000, 12), 5_000);
        assert_eq!(snapshot_due_after(5_000, 80_000), 80_000);
        assert_eq!(snapshot_due_after(10, 10), 10);
    }
}
