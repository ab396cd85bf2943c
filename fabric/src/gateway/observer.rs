//! The replicated volume's seam to the metadata service: a replica that failed a write
//! leaves its acting set through `RemoveReplica` before the write is acknowledged.

use std::sync::Arc;

use proto::meta as pb;
use volume::client::{AclFuture, AclObserver, RemovalError, ReplicaFailure};
use volume::wire::VolumeId;

use super::attach::{NodeAddresses, Superseded};
use crate::meta::client::Client;
use crate::meta::command::{FENCED_WORDS, fencing_epoch};
use crate::metrics::{VolumeLabels, VolumeMetrics};

/// Reports failed replicas to the metadata service, which takes them out of the PG's acting
/// set; the write that found the failure is acknowledged only once that change is committed.
/// The change names the attach epoch the failure was seen under: once a newer attach fenced
/// it, it is refused and the write fails.
pub(super) struct ClusterObserver {
    pub(super) client: Arc<Client>,
    pub(super) volume: String,
    pub(super) node_of: NodeAddresses,
    pub(super) superseded: Superseded,
    pub(super) metrics: VolumeMetrics,
}

impl AclObserver for ClusterObserver {
    fn replica_failed(&self, failure: ReplicaFailure) -> AclFuture {
        let client = Arc::clone(&self.client);
        let volume = self.volume.clone();
        let superseded = self.superseded.clone();
        let metrics = self.metrics.clone();
        let node = self
            .node_of
            .read()
            .expect("node addresses")
            .get(&failure.replica)
            .copied();
        Box::pin(async move {
            let node = node.ok_or_else(|| {
                RemovalError::Refused(format!("{} is no node's address", failure.replica))
            })?;
            let req = pb::ReplicaRequest {
                volume,
                pg: failure.group as u32,
                node,
                attach_epoch: failure.attach_epoch,
            };
            client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.remove_replica(req).await }
                })
                .await
                .map_err(|s| {
                    superseded.note(&req.volume, &s);
                    removal_error(&s, node, failure.group)
                })?;
            tracing::warn!(volume = %failure.volume, pg = failure.group, node, reason = %failure.reason, "replica left the acting set");
            let labels = VolumeLabels { volume: req.volume };
            metrics.removals.get_or_create(&labels).inc();
            if failure.reason.contains("timed out") {
                metrics.link_timeouts.get_or_create(&labels).inc();
            }
            Ok(())
        })
    }

    fn fenced(&self, volume: VolumeId, our_epoch: u64, current: u64) {
        tracing::error!(%volume, our_epoch, current, "volume fenced by a newer attach; this gateway refuses its IO");
    }
}

/// What a refused or failed `RemoveReplica` means to the volume driver: a metadata service
/// that cannot commit now (retried with backoff while the group's writes wait), a newer
/// attach (the volume is fenced), or a refusal that retrying will not change.
pub(super) fn removal_error(status: &tonic::Status, node: u64, group: usize) -> RemovalError {
    let what = format!("remove node {node} from PG {group}: {}", status.message());
    match status.code() {
        tonic::Code::FailedPrecondition if status.message().contains(FENCED_WORDS) => {
            match fencing_epoch(status.message()) {
                Some(current) => RemovalError::Fenced { current },
                None => RemovalError::Refused(what),
            }
        }
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled
        | tonic::Code::Aborted
        | tonic::Code::Unknown
        | tonic::Code::ResourceExhausted
        | tonic::Code::Internal => RemovalError::Unavailable(what),
        _ => RemovalError::Refused(what),
    }
}
