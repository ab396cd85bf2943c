//! The failure detector: on the Raft leader, a node whose heartbeats have stopped for longer
//! than `node_out_after_ms` is marked out of placement, so its PGs are re-placed and rebuilt on
//! the others without an operator. A node that is merely slow or briefly away (a restart, a
//! short partition) is left alone: it keeps its PGs, misses some writes, and is resynced.
//!
//! Two guards keep one bad moment from emptying the cluster: silence is counted from when this
//! member became leader at the latest (a leader that just took over, or a whole cluster coming
//! back from a power cut, has seen no heartbeats yet), and nothing is marked out while half or
//! more of the nodes are silent (that is a partition or an outage, not a failed node).

use std::sync::Arc;
use std::time::Duration;

use super::command::CommandV1;
use super::member::Member;
use super::model::{NodeId, Participation};

/// How often the leader looks for silent nodes.
pub const DETECTOR_INTERVAL_MS: u64 = 1_000;

/// Watches heartbeats while this member leads, until `stop`.
pub async fn run(
    member: Arc<Member>,
    node_out_after_ms: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut leading_since: Option<u64> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(DETECTOR_INTERVAL_MS)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = wall_clock_ms();
        if member.metrics().current_leader != Some(member.id) {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert(now);
        for node in silent_nodes(&member, now, since, node_out_after_ms) {
            tracing::warn!(
                node,
                node_out_after_ms,
                "node silent past the out timeout; marking it out"
            );
            let out = CommandV1::SetParticipation {
                node,
                participation: Participation::Out,
            };
            if let Err(e) = member.write(out.into()).await {
                tracing::warn!(node, error = %e, "could not mark a silent node out");
            }
        }
    }
}

/// Nodes still in placement whose last heartbeat (or `since`, if later) is more than
/// `out_after_ms` before `now`; none while half or more of the nodes are silent.
fn silent_nodes(member: &Member, now: u64, since: u64, out_after_ms: u64) -> Vec<NodeId> {
    member.sm.read(|state, _| {
        let silent_ms = |last: u64| now.saturating_sub(last.max(since));
        let silent: Vec<NodeId> = state
            .nodes
            .values()
            .filter(|n| silent_ms(n.last_heartbeat_ms) > out_after_ms)
            .map(|n| n.registration.id)
            .collect();
        if silent.len() * 2 >= state.nodes.len() {
            if !silent.is_empty() {
                tracing::warn!(
                    silent = silent.len(),
                    nodes = state.nodes.len(),
                    "half or more of the nodes are silent; marking none out"
                );
            }
            return Vec::new();
        }
        silent
            .into_iter()
            .filter(|id| state.nodes[id].participation == Participation::In)
            .collect()
    })
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
