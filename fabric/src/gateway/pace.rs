//! `--resync-pace governed`: the gateway paces every resync's copies by what its clients see.
//! Twice a second the governor (`volume::sched::governor`, the rule the storage nodes apply
//! to their disks' recovery class) takes the window of client latencies and copied bytes the
//! replica pool measured (`volume::client::pace`) and sets the copies' rate: none while no
//! client does IO, falling while the clients' p99 is above 1.2 × their p99 without recovery,
//! rising while it is below, never under the governor's floor.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use volume::client::ReplicaPool;
use volume::sched::governor::{Governor, GovernorConfig};

/// How long one window of the governor is.
const WINDOW: Duration = Duration::from_millis(500);

/// Governs `pool`'s recovery pace for as long as the gateway runs; `limit` shows the rate
/// set (bytes per second, 0: none).
pub(super) async fn govern(pool: Arc<ReplicaPool>, limit: Gauge) {
    let mut governor = Governor::new(GovernorConfig::default());
    let mut tick = tokio::time::interval(WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let window = pool.pace().take_window();
        let set = governor.observe(&window);
        if set != pool.pace().limit() {
            tracing::debug!(limit = ?set, client_p99_us = window.client_p99_ns / 1000, baseline_us = ?governor.baseline_ns().map(|b| b / 1000), recovery_bytes = window.recovery_bytes, "gateway recovery pace");
        }
        pool.pace().set_limit(set);
        limit.set(set.map_or(0, |l| l as i64));
    }
}
