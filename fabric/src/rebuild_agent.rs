//! The rebuild agent: heals volumes that nobody has attached.
//!
//! A volume's stale replicas are resynced by its writer (see [`crate::gateway`]), because only
//! the writer can hold its extents still while they are copied. A volume that no gateway
//! serves has no writer, so after a node goes out its re-placed replicas would stay empty and
//! the volume would stay degraded until someone attached it. The agent on the node whose
//! metadata member leads the Raft group attaches such a volume under its own name
//! (`rebuild-agent@node-N`), resyncs until every replica is current, flushes and detaches.
//!
//! The agent never stands in anyone's way: the state machine lets its attachment yield to any
//! other client without `--force`. That attach bumps the epoch, which fences the agent; the new
//! writer resyncs what is left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::gateway::{detach, open_volume, resync_round};
use crate::meta::client::Client;
use crate::meta::state::REBUILD_AGENT_PREFIX;
use proto::meta as pb;
use volume::BlockVolume;

/// How often the agent looks for idle, degraded volumes.
pub const REBUILD_AGENT_INTERVAL_MS: u64 = 2_000;
/// Resync rounds the agent spends on one volume before it moves on (one round a second): a
/// replica that stays away is tried again at a later visit.
const ROUNDS_PER_VISIT_MAX: u32 = 60;

/// Runs the agent of node `node`, whose metadata member listens on `rpc_addr`, until `stop`.
pub async fn run(node: u64, rpc_addr: SocketAddr, mut stop: watch::Receiver<bool>) {
    let client = Arc::new(Client::new(vec![rpc_addr.to_string()]));
    let me = format!("{REBUILD_AGENT_PREFIX}node-{node}");
    let mut tick = tokio::time::interval(Duration::from_millis(REBUILD_AGENT_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let leads = client
            .status_of(&rpc_addr.to_string())
            .await
            .is_ok_and(|s| s.role == "leader");
        if !leads {
            continue;
        }
        let Ok(listed) = client
            .call(|mut c| async move { c.list_volumes(pb::ListVolumesRequest {}).await })
            .await
        else {
            continue;
        };
        for v in listed.volumes {
            let idle = v.attached_to.is_empty() || v.attached_to == me;
            if !idle || v.stale.is_empty() {
                continue;
            }
            tokio::select! {
                healed = heal(&client, &v.name, &me) => {
                    if let Err(e) = healed {
                        tracing::warn!(volume = %v.name, error = %format!("{e:#}"), "rebuild agent could not heal the volume; will try again");
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }
}

/// Attaches `name` as `me`, resyncs its stale replicas, flushes and detaches.
async fn heal(client: &Arc<Client>, name: &str, me: &str) -> anyhow::Result<()> {
    let (volume, node_of) = open_volume(client, name, me, false).await?;
    tracing::info!(
        volume = name,
        stale = volume.stale_replicas().len(),
        "rebuild agent attached an idle volume to heal it"
    );
    for _ in 0..ROUNDS_PER_VISIT_MAX {
        if volume.stale_replicas().is_empty() || volume.fenced_by().is_some() {
            break;
        }
        resync_round(&volume, name, client, &node_of).await;
        if !volume.stale_replicas().is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    if let Some(epoch) = volume.fenced_by() {
        tracing::info!(
            volume = name,
            epoch,
            "another client attached the volume; it resyncs the rest"
        );
        return Ok(());
    }
    volume
        .flush()
        .await
        .map_err(|e| anyhow::anyhow!("flush: {e}"))?;
    let left = volume.stale_replicas().len();
    detach(client, name, me).await;
    tracing::info!(
        volume = name,
        stale_left = left,
        "rebuild agent let go of the volume"
    );
    Ok(())
}
