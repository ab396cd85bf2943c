//! openraft's storage conformance suite against the log store and the state machine, and what
//! survives reopening them.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

use super::{LogStore, StateMachineStore};
use crate::meta::types::TypeConfig;

struct StoreDir;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for StoreDir {
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
    Suite::test_all(StoreDir).await.expect("storage suite");
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

/// A member whose entries were kept in sled (before the log had its own file) keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_kept_in_sled_by_an_older_store_are_moved_into_the_log_file() {
    use openraft::RaftLogReader;
    use openraft::entry::RaftEntry;
    use openraft::storage::RaftLogStorage;

    use crate::meta::command::CommandV1;
    use crate::meta::types::{Entry, LogId};

    let leader = openraft::impls::leader_id_adv::LeaderId {
        term: 2,
        node_id: 1,
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let db = super::DurableDb::open(&dir.path().join("sled")).unwrap();
        let log = db.db.open_tree("log").unwrap();
        for i in 4..=6u64 {
            let cmd = CommandV1::DeleteVolume {
                name: format!("v{i}"),
            };
            let entry = Entry::new_normal(LogId::new(leader, i), cmd.into());
            log.insert(i.to_be_bytes(), serde_json::to_vec(&entry).unwrap())
                .unwrap();
        }
        let purged = LogId::new(leader, 3);
        let raft = db.db.open_tree("raft").unwrap();
        raft.insert("last_purged", serde_json::to_vec(&purged).unwrap())
            .unwrap();
        db.sync().unwrap();
    }
    for _ in 0..2 {
        let (mut log, _sm) = super::open(dir.path()).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(LogId::new(leader, 3)));
        assert_eq!(state.last_log_id, Some(LogId::new(leader, 6)));
        let back = log.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(
            back.iter().map(|e| e.index()).collect::<Vec<_>>(),
            vec![4, 5, 6]
        );
    }
}
