//! The state machine of one member: the [`ClusterState`] in memory, applied entry by entry,
//! with durable snapshots, and one watch channel per kind of record (nodes, pools, volumes)
//! carrying the epoch of its last change, which `Watch` streams wake up on.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::snapshot_file;
use crate::meta::changes::Kind;
use crate::meta::command::Applied;
use crate::meta::state::ClusterState;
use crate::meta::types::{
    LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};

/// What a snapshot's bytes hold.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotPayload {
    pub state: ClusterState,
}

struct AppliedState {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    state: ClusterState,
    snapshot: Option<(SnapshotMeta, Arc<Vec<u8>>)>,
}

struct Inner {
    data: RwLock<AppliedState>,
    snapshot_path: PathBuf,
    /// Serializes snapshot file writes, so an older snapshot never replaces a newer one.
    snapshot_write: tokio::sync::Mutex<()>,
    /// Per [`Kind`]: the cluster epoch of its last change.
    changed: [watch::Sender<u64>; 3],
}

/// The state machine; clones share it (a clone is the snapshot builder).
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

impl StateMachineStore {
    /// Opens the state machine, starting from the snapshot at `snapshot_path` if one exists.
    pub fn open(snapshot_path: &Path) -> io::Result<StateMachineStore> {
        let mut data = AppliedState {
            last_applied: None,
            last_membership: StoredMembership::default(),
            state: ClusterState::default(),
            snapshot: None,
        };
        if let Some((meta, bytes)) = snapshot_file::read(snapshot_path)? {
            let payload: SnapshotPayload = super::decode("snapshot", &bytes)?;
            data.last_applied = meta.last_log_id;
            data.last_membership = meta.last_membership.clone();
            data.state = payload.state;
            data.snapshot = Some((meta, Arc::new(bytes)));
        }
        let epoch = data.state.cluster_epoch;
        let changed = Kind::ALL.map(|_| watch::channel(epoch).0);
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                data: RwLock::new(data),
                snapshot_path: snapshot_path.to_path_buf(),
                snapshot_write: tokio::sync::Mutex::new(()),
                changed,
            }),
        })
    }

    /// Reads the applied state: `f(state, last applied index)`.
    pub fn read<T>(&self, f: impl FnOnce(&ClusterState, u64) -> T) -> T {
        let d = self.inner.data.read().expect("state machine lock");
        f(&d.state, d.last_applied.as_ref().map_or(0, |l| l.index()))
    }

    /// The epoch of the last change of `kind`, now and after every change of it.
    pub fn subscribe(&self, kind: Kind) -> watch::Receiver<u64> {
        self.inner.changed[kind as usize].subscribe()
    }

    /// Wakes the watchers of each kind that changed; all of them when the whole state was
    /// replaced (a snapshot installed), which the journal cannot describe.
    fn publish_changes(&self, replaced: bool) {
        let last = self.read(|s, _| {
            Kind::ALL.map(|k| match replaced {
                true => s.cluster_epoch,
                false => s.journal.last_change(k),
            })
        });
        for (tx, epoch) in self.inner.changed.iter().zip(last) {
            tx.send_if_modified(|cur| {
                let moved = epoch > *cur || (replaced && epoch != *cur);
                if moved {
                    *cur = epoch;
                }
                moved
            });
        }
    }

    async fn persist_snapshot(&self, meta: &SnapshotMeta, bytes: Arc<Vec<u8>>) -> io::Result<()> {
        let _guard = self.inner.snapshot_write.lock().await;
        {
            let d = self.inner.data.read().expect("state machine lock");
            if let Some((cur, _)) = &d.snapshot
                && cur.last_log_id > meta.last_log_id
            {
                return Ok(());
            }
        }
        let path = self.inner.snapshot_path.clone();
        let meta_w = meta.clone();
        let bytes_w = Arc::clone(&bytes);
        tokio::task::spawn_blocking(move || snapshot_file::write(&path, &meta_w, &bytes_w))
            .await
            .map_err(io::Error::other)??;
        let mut d = self.inner.data.write().expect("state machine lock");
        d.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;

    /// Durable before it returns, so openraft may purge the log the snapshot covers.
    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, payload) = {
            let d = self.inner.data.read().expect("state machine lock");
            let meta = SnapshotMeta {
                last_log_id: d.last_applied,
                last_membership: d.last_membership.clone(),
            };
            (
                meta,
                SnapshotPayload {
                    state: d.state.clone(),
                },
            )
        };
        let bytes = Arc::new(serde_json::to_vec(&payload).map_err(io::Error::other)?);
        self.persist_snapshot(&meta, Arc::clone(&bytes)).await?;
        Ok(Snapshot {
            meta,
            snapshot: bytes.as_ref().clone(),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let d = self.inner.data.read().expect("state machine lock");
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let outcome = {
                let mut d = self.inner.data.write().expect("state machine lock");
                d.last_applied = Some(entry.log_id());
                match entry.payload {
                    EntryPayload::Blank => Ok(Applied::Nothing),
                    EntryPayload::Normal(ref command) => d.state.apply(command),
                    EntryPayload::Membership(ref m) => {
                        d.last_membership = StoredMembership::new(Some(entry.log_id()), m.clone());
                        Ok(Applied::Nothing)
                    }
                }
            };
            if let Some(r) = responder {
                r.send(outcome);
            }
        }
        self.publish_changes(false);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let payload: SnapshotPayload = super::decode("snapshot", &snapshot)?;
        {
            let mut d = self.inner.data.write().expect("state machine lock");
            d.last_applied = meta.last_log_id;
            d.last_membership = meta.last_membership.clone();
            d.state = payload.state;
        }
        self.persist_snapshot(meta, Arc::new(snapshot)).await?;
        self.publish_changes(true);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let d = self.inner.data.read().expect("state machine lock");
        Ok(d.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: bytes.as_ref().clone(),
        }))
    }
}
