//! The Raft log storage of a member: entries in [`Wal`] (one file, one `fdatasync` per group
//! commit); the vote and the committed log id in sled's tree `raft`.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::durable::DurableDb;
use super::wal::Wal;
use super::{decode, encode};
use crate::meta::types::{Entry, LogId, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
/// Where an older store kept the last purged log id, beside its entries in tree `log`.
const KEY_PURGED: &[u8] = b"last_purged";

/// Log storage of one member; clones share the files (a clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DurableDb>,
    raft: sled::Tree,
    wal: Arc<Mutex<Wal>>,
    /// Hands appended batches to the group-commit thread, which signals them once durable.
    flusher: std::sync::mpsc::Sender<IOFlushed<TypeConfig>>,
}

/// Group commit: waits for appended batches, makes everything written so far durable with one
/// `fdatasync`, then signals every batch that sync covered, in append order. Runs until every
/// [`LogStore`] clone is gone.
fn run_flusher(wal: Weak<Mutex<Wal>>, queue: std::sync::mpsc::Receiver<IOFlushed<TypeConfig>>) {
    while let Ok(first) = queue.recv() {
        let mut covered = vec![first];
        covered.extend(queue.try_iter());
        // The sync point is taken after the batches were written, so its file is the one
        // holding them (a compaction in between has synced them into its new file already).
        let point = match wal.upgrade() {
            Some(wal) => lock(&wal).map(|w| w.sync_point()),
            None => Err(io::Error::other("the log store was closed before the sync")),
        };
        let result = point.and_then(|p| p.sync().map(|()| p));
        // The log's next write marks these bytes synced.
        if let (Ok(point), Some(wal)) = (&result, wal.upgrade())
            && let Ok(mut w) = lock(&wal)
        {
            w.synced(point);
        }
        let result = result.map(drop);
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

fn lock(wal: &Mutex<Wal>) -> io::Result<MutexGuard<'_, Wal>> {
    wal.lock()
        .map_err(|_| io::Error::other("the raft log is poisoned by an earlier panic"))
}

fn sled_err(what: &str, e: sled::Error) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl LogStore {
    /// Opens the log in `dir` beside the sled database `db`. Blocking. A store from before the
    /// log file existed has its entries moved from sled's tree `log` into a new log file.
    pub fn open(db: Arc<DurableDb>, dir: &Path) -> io::Result<LogStore> {
        let raft = db
            .db
            .open_tree("raft")
            .map_err(|e| sled_err("open tree raft", e))?;
        let (mut wal, created) = Wal::open(dir)?;
        if created {
            wal = import_sled_log(&db, &raft, dir)?.unwrap_or(wal);
        }
        let wal = Arc::new(Mutex::new(wal));
        let (flusher, queue) = std::sync::mpsc::channel();
        let wal_w = Arc::downgrade(&wal);
        std::thread::Builder::new()
            .name("meta-log-sync".into())
            .spawn(move || run_flusher(wal_w, queue))?;
        Ok(LogStore {
            db,
            raft,
            wal,
            flusher,
        })
    }

    fn wal(&self) -> io::Result<MutexGuard<'_, Wal>> {
        lock(&self.wal)
    }

    /// Runs `f` on the log, then `fdatasync`s it, on the blocking pool.
    async fn write_synced(
        &self,
        f: impl FnOnce(&mut Wal) -> io::Result<()> + Send + 'static,
    ) -> io::Result<()> {
        let wal = Arc::clone(&self.wal);
        tokio::task::spawn_blocking(move || {
            let point = {
                let mut w = lock(&wal)?;
                f(&mut w)?;
                w.sync_point()
            };
            point.sync()?;
            lock(&wal)?.synced(&point);
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        get_meta(&self.raft, key)
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        let bytes = encode(std::str::from_utf8(key).unwrap_or("meta"), value)?;
        self.raft
            .insert(key, bytes)
            .map_err(|e| sled_err("write raft meta", e))?;
        Ok(())
    }
}

fn get_meta<T: serde::de::DeserializeOwned>(
    raft: &sled::Tree,
    key: &[u8],
) -> io::Result<Option<T>> {
    match raft.get(key).map_err(|e| sled_err("read raft meta", e))? {
        Some(bytes) => Ok(Some(decode(
            std::str::from_utf8(key).unwrap_or("meta"),
            &bytes,
        )?)),
        None => Ok(None),
    }
}

/// Moves the entries an older store kept in sled into a new log file; `None` if there were
/// none. The file is whole and synced before sled's copy is dropped, so a crash in between
/// leaves the file in place and nothing is imported twice.
fn import_sled_log(db: &DurableDb, raft: &sled::Tree, dir: &Path) -> io::Result<Option<Wal>> {
    let old = db
        .db
        .open_tree("log")
        .map_err(|e| sled_err("open tree log", e))?;
    let last_purged: Option<LogId> = get_meta(raft, KEY_PURGED)?;
    if old.is_empty() && last_purged.is_none() {
        return Ok(None);
    }
    let mut entries = Vec::new();
    for item in old.iter() {
        let (_, v) = item.map_err(|e| sled_err("read old log", e))?;
        entries.push(decode::<Entry>("log entry", &v)?);
    }
    let count = entries.len();
    let wal = Wal::create(dir, last_purged, entries.into_iter())?;
    db.db
        .drop_tree("log")
        .map_err(|e| sled_err("drop old log", e))?;
    raft.remove(KEY_PURGED)
        .map_err(|e| sled_err("drop old purge mark", e))?;
    db.sync()?;
    tracing::info!(
        entries = count,
        "raft log moved from sled into its own file"
    );
    Ok(Some(wal))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.wal()?.entries(range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let wal = self.wal()?;
        let last_purged_log_id = wal.last_purged();
        Ok(LogState {
            last_purged_log_id,
            last_log_id: wal.last_log_id().or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Durable before it returns: a member never forgets whom it voted for.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(KEY_VOTE, vote)?;
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || db.sync())
            .await
            .map_err(io::Error::other)?
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
        self.wal()?.append(entries.into_iter())?;
        self.flusher
            .send(callback)
            .map_err(|_| io::Error::other("the log sync thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let index = last_log_id.map(|l| l.index());
        self.write_synced(move |w| w.truncate_after(index)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.write_synced(move |w| w.purge(log_id)).await
    }
}
