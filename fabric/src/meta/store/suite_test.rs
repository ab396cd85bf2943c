//! openraft's storage conformance suite against the sled log store and the state machine.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

use super::{LogStore, StateMachineStore};
use crate::meta::types::TypeConfig;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = super::open(dir.path()).await.expect("open store");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(SledBuilder).await.expect("storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_and_entries_survive_reopen() {
    use openraft::async_runtime::Oneshot;
    use openraft::entry::RaftEntry;
    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::{RaftLogReader, Vote};

    use crate::meta::command::CommandV1;
    use crate::meta::types::{Entry, LogId};

    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(3, 1);
    {
        let (mut log, _sm) = super::open(dir.path()).await.unwrap();
        log.save_vote(&vote).await.unwrap();
        let entries: Vec<Entry> = (1..=3)
            .map(|i| {
                let cmd = CommandV1::DeleteVolume {
                    name: format!("v{i}"),
                }
                .into();
                let leader = openraft::impls::leader_id_adv::LeaderId {
                    term: 3,
                    node_id: 1,
                };
                Entry::new_normal(LogId::new(leader, i), cmd)
            })
            .collect();
        // The callback fires once the entries are durable.
        let (tx, rx) = openraft::alias::OneshotOf::<TypeConfig>::channel();
        log.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }
    let (mut log, _sm) = super::open(dir.path()).await.unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    let back = log.try_get_log_entries(0..10).await.unwrap();
    assert_eq!(
        back.iter().map(|e| e.index()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}
