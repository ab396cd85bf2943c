//! The Raft log and vote in sled: entries keyed by big-endian index in tree `log`; the vote, the
//! committed log id and the last purged log id in tree `raft`.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Weak};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::durable::DurableDb;
use super::{decode, encode};
use crate::meta::types::{Entry, LogId, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// Log storage of one member; clones share the database (a clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DurableDb>,
    log: sled::Tree,
    raft: sled::Tree,
    /// Hands appended batches to the group-commit thread, which signals them once durable.
    flusher: std::sync::mpsc::Sender<IOFlushed<TypeConfig>>,
}

/// Group commit: waits for appended batches, makes everything written so far durable with one
/// sync, then signals every batch that sync covered, in append order. Runs until every
/// [`LogStore`] clone is gone.
fn run_flusher(db: Weak<DurableDb>, queue: std::sync::mpsc::Receiver<IOFlushed<TypeConfig>>) {
    while let Ok(first) = queue.recv() {
        let mut covered = vec![first];
        covered.extend(queue.try_iter());
        // Only a weak handle: the database closes as soon as the last store is dropped.
        let result = match db.upgrade() {
            Some(db) => db.sync(),
            None => Err(io::Error::other("the log store was closed before the sync")),
        };
        for callback in covered {
            let reported = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            callback.io_completed(reported);
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "sync of the raft log failed");
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn sled_err(what: &str, e: sled::Error) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl LogStore {
    pub fn open(db: Arc<DurableDb>) -> io::Result<LogStore> {
        let log = db
            .db
            .open_tree("log")
            .map_err(|e| sled_err("open tree log", e))?;
        let raft = db
            .db
            .open_tree("raft")
            .map_err(|e| sled_err("open tree raft", e))?;
        let (flusher, queue) = std::sync::mpsc::channel();
        let db_w = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("meta-log-sync".into())
            .spawn(move || run_flusher(db_w, queue))?;
        Ok(LogStore {
            db,
            log,
            raft,
            flusher,
        })
    }

    /// Flushes and fsyncs on the blocking pool.
    async fn sync(&self) -> io::Result<()> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || db.sync())
            .await
            .map_err(io::Error::other)?
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self
            .raft
            .get(key)
            .map_err(|e| sled_err("read raft meta", e))?
        {
            Some(bytes) => Ok(Some(decode(
                std::str::from_utf8(key).unwrap_or("meta"),
                &bytes,
            )?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        let bytes = encode(std::str::from_utf8(key).unwrap_or("meta"), value)?;
        self.raft
            .insert(key, bytes)
            .map_err(|e| sled_err("write raft meta", e))?;
        Ok(())
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        match self
            .log
            .last()
            .map_err(|e| sled_err("read last entry", e))?
        {
            Some((_, v)) => Ok(Some(decode::<Entry>("log entry", &v)?.log_id())),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in self.log.range(index_key(start)..) {
            let (k, v) = item.map_err(|e| sled_err("read entries", e))?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(io::Error::other)?);
            if !range.contains(&index) {
                break;
            }
            out.push(decode("log entry", &v)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Durable before it returns: a member never forgets whom it voted for.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(KEY_VOTE, vote)?;
        self.sync().await
    }

    /// Not synced on its own: losing it only means re-learning the commit index from the leader.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        match committed {
            Some(c) => self.put_meta(KEY_COMMITTED, &c),
            None => {
                self.raft
                    .remove(KEY_COMMITTED)
                    .map_err(|e| sled_err("clear committed", e))?;
                Ok(())
            }
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.get_meta(KEY_COMMITTED)
    }

    /// Returns once the entries are written (readable, so openraft may replicate them at once);
    /// signals `callback` only once they are durable: the group-commit thread syncs after the
    /// write, so the sync covers them.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&index_key(entry.index()), encode("log entry", &entry)?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| sled_err("append entries", e))?;
        self.flusher
            .send(callback)
            .map_err(|_| io::Error::other("the log sync thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(from)..) {
            let (k, _) = item.map_err(|e| sled_err("scan for truncate", e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| sled_err("truncate", e))?;
        self.sync().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purge point first: a crash in between leaves extra entries, never a gap.
        self.put_meta(KEY_PURGED, &log_id)?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index())) {
            let (k, _) = item.map_err(|e| sled_err("scan for purge", e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| sled_err("purge", e))?;
        self.sync().await
    }
}
