//! The Raft log's entries in one file, `raft.log`, of checksummed records: appending a batch is
//! one `pwrite`, making it durable one `fdatasync` (run by the group-commit thread in
//! [`super::log`]).
//!
//! Why not sled for the entries: sled's flush writes its IO buffers one after another, each
//! followed by a blocking `sync_file_range`, and an `fdatasync` is still needed after it. A
//! follower spent ~4.7 ms per AppendEntries there, against ~0.15 ms for one `fdatasync` of
//! this disk. sled keeps the vote and the committed log id, which change rarely.
//!
//! Format: records `[len: u32 LE][crc32c(body): u32 LE][body: len bytes of JSON]`. The file is
//! grown in zero-filled chunks ahead of the write position, so an append overwrites allocated
//! blocks and its `fdatasync` writes data only, never the file's size. A zero `len` ends the
//! log. Recovery reads records up to the first one that is short, fails its crc or has a zero
//! `len`, and zeroes everything after it: those bytes may hold records written after a torn
//! one, which were never synced and so never acknowledged, and must not come back later.
//!
//! Replay: an `Entry` at index i replaces every entry from i on (Raft's log matching: a new
//! entry at an index supersedes the old tail); `TruncateAfter(i)` drops entries after i;
//! `Purge(id)` drops entries up to id's index and makes id the last purged log id.
//!
//! Compaction: when a purge finds the file past [`WAL_COMPACT_BYTES`], the live state (last
//! purged id and entries) is written to `raft.log.new`, synced, renamed over `raft.log`, and the
//! directory synced. A fresh log is created the same way, so `raft.log` always exists whole.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::entry::RaftEntry;
use serde::{Deserialize, Serialize};
use volume::checksum::block_crc;

use crate::meta::types::{Entry, LogId};

/// Name of the log file in the member's store directory.
pub const WAL_FILE: &str = "raft.log";
const WAL_FILE_NEW: &str = "raft.log.new";
/// Bytes of a record's header: length and crc32c of the body.
const HEADER_BYTES: usize = 8;
/// Largest record body: an entry of at most [`super::VALUE_BYTES_MAX`] plus the record's tag.
pub const RECORD_BYTES_MAX: usize = super::VALUE_BYTES_MAX + 64;
/// The file grows by this many zero-filled bytes at a time.
const WAL_GROW_BYTES: u64 = 4 * 1024 * 1024;
/// A purge rewrites the file once it is larger than this.
pub const WAL_COMPACT_BYTES: u64 = 64 * 1024 * 1024;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

const _: () = assert!(RECORD_BYTES_MAX < u32::MAX as usize);
const _: () = assert!(WAL_GROW_BYTES as usize >= HEADER_BYTES + RECORD_BYTES_MAX);

#[derive(Deserialize)]
enum Record {
    Entry(Entry),
    TruncateAfter(Option<u64>),
    Purge(LogId),
}

/// The same records, borrowed for writing (serde encodes both alike).
#[derive(Serialize)]
enum RecordRef<'a> {
    Entry(&'a Entry),
    TruncateAfter(Option<u64>),
    Purge(&'a LogId),
}

/// The log file and, in memory, every entry it still holds.
pub struct Wal {
    dir: PathBuf,
    file: Arc<File>,
    /// Where the next record goes.
    end: u64,
    /// Bytes of the file, zero-filled past `end`.
    allocated: u64,
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    /// A purge compacts the file once it is larger than this ([`WAL_COMPACT_BYTES`]).
    compact_bytes: u64,
}

impl Wal {
    /// Opens the log in `dir`, creating an empty one if there is none. Blocking. Returns
    /// whether it was created.
    pub fn open(dir: &Path) -> io::Result<(Wal, bool)> {
        let path = dir.join(WAL_FILE);
        if !path.exists() {
            let wal = Wal::create(dir, None, std::iter::empty())?;
            return Ok((wal, true));
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let bytes = std::fs::read(&path)?;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            end: 0,
            allocated: bytes.len() as u64,
            entries: BTreeMap::new(),
            last_purged: None,
            compact_bytes: WAL_COMPACT_BYTES,
        };
        let end = wal.replay(&bytes)?;
        wal.end = end as u64;
        if bytes[end..].iter().any(|&b| b != 0) {
            tracing::warn!(
                file = %path.display(),
                offset = end,
                bytes = bytes.len() - end,
                "raft log: zeroing a torn tail (records never synced, so never acknowledged)"
            );
            wal.zero(wal.end, wal.allocated)?;
            wal.file.sync_data()?;
        }
        Ok((wal, false))
    }

    /// Writes a log holding `last_purged` and `entries` to a new file, syncs it and renames it
    /// over `raft.log`. Blocking.
    pub fn create(
        dir: &Path,
        last_purged: Option<LogId>,
        entries: impl Iterator<Item = Entry>,
    ) -> io::Result<Wal> {
        let new_path = dir.join(WAL_FILE_NEW);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&new_path)?;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            end: 0,
            allocated: 0,
            entries: BTreeMap::new(),
            last_purged: None,
            compact_bytes: WAL_COMPACT_BYTES,
        };
        if let Some(id) = last_purged {
            wal.purge_record(id)?;
        }
        wal.append(entries)?;
        wal.file.sync_all()?;
        std::fs::rename(&new_path, dir.join(WAL_FILE))?;
        File::open(dir)?.sync_all()?;
        Ok(wal)
    }

    /// Applies every whole record of `bytes`; returns where the log ends.
    fn replay(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut at = 0;
        while let Some(header) = bytes.get(at..at + HEADER_BYTES) {
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
            if len == 0 || len > RECORD_BYTES_MAX {
                break;
            }
            let Some(body) = bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + len) else {
                break;
            };
            if block_crc(body) != crc {
                break;
            }
            // A body whose crc matches but does not decode is not a torn write: refuse to start
            // rather than drop what follows it.
            let record: Record = serde_json::from_slice(body).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("raft log record at offset {at}: {e}"),
                )
            })?;
            match record {
                Record::Entry(entry) => self.insert(entry),
                Record::TruncateAfter(index) => self.drop_after(index),
                Record::Purge(id) => self.drop_through(id),
            }
            at += HEADER_BYTES + len;
        }
        Ok(at)
    }

    /// Appends `entries` with one write. Durable only after [`Wal::file`] is synced.
    pub fn append(&mut self, entries: impl Iterator<Item = Entry>) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut batch = Vec::new();
        for entry in entries {
            encode_record(&mut buf, &RecordRef::Entry(&entry))?;
            batch.push(entry);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.write(&buf)?;
        for entry in batch {
            self.insert(entry);
        }
        Ok(())
    }

    /// Drops every entry after `index` (all of them for `None`). Durable only after a sync.
    pub fn truncate_after(&mut self, index: Option<u64>) -> io::Result<()> {
        let mut buf = Vec::new();
        encode_record(&mut buf, &RecordRef::TruncateAfter(index))?;
        self.write(&buf)?;
        self.drop_after(index);
        Ok(())
    }

    /// Drops every entry up to `id`, and rewrites the file if it has grown past
    /// [`WAL_COMPACT_BYTES`]. Losing an unsynced purge only brings back entries the snapshot
    /// already covers.
    pub fn purge(&mut self, id: LogId) -> io::Result<()> {
        self.purge_record(id)?;
        if self.end > self.compact_bytes {
            let live = self.entries.values().cloned();
            let compacted = Wal::create(&self.dir, self.last_purged, live)?;
            tracing::info!(
                from_bytes = self.end,
                to_bytes = compacted.end,
                "raft log compacted"
            );
            *self = Wal {
                compact_bytes: self.compact_bytes,
                ..compacted
            };
        }
        Ok(())
    }

    fn purge_record(&mut self, id: LogId) -> io::Result<()> {
        let mut buf = Vec::new();
        encode_record(&mut buf, &RecordRef::Purge(&id))?;
        self.write(&buf)?;
        self.drop_through(id);
        Ok(())
    }

    /// The file to `fdatasync` to make every record written so far durable.
    pub fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    pub fn last_purged(&self) -> Option<LogId> {
        self.last_purged
    }

    pub fn last_log_id(&self) -> Option<LogId> {
        self.entries.values().next_back().map(|e| e.log_id())
    }

    pub fn entries(&self, range: impl RangeBounds<u64>) -> Vec<Entry> {
        self.entries.range(range).map(|(_, e)| e.clone()).collect()
    }

    /// Bytes of the file that hold records.
    #[cfg(test)]
    fn len_bytes(&self) -> u64 {
        self.end
    }

    fn insert(&mut self, entry: Entry) {
        let index = entry.index();
        drop(self.entries.split_off(&index));
        self.entries.insert(index, entry);
    }

    fn drop_after(&mut self, index: Option<u64>) {
        match index {
            Some(i) => drop(self.entries.split_off(&(i + 1))),
            None => self.entries.clear(),
        }
    }

    fn drop_through(&mut self, id: LogId) {
        self.entries = self.entries.split_off(&(id.index() + 1));
        self.last_purged = Some(id);
    }

    /// Writes `buf` at the end, growing the zero-filled allocation first if needed.
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        let needed = self.end + buf.len() as u64;
        if needed > self.allocated {
            let target = needed.div_ceil(WAL_GROW_BYTES) * WAL_GROW_BYTES;
            self.zero(self.allocated, target)?;
            // The new size must be durable before appends rely on data-only syncs.
            self.file.sync_all()?;
            self.allocated = target;
        }
        self.file.write_all_at(buf, self.end)?;
        self.end = needed;
        Ok(())
    }

    fn zero(&self, from: u64, to: u64) -> io::Result<()> {
        let mut at = from;
        while at < to {
            let n = (to - at).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

fn encode_record(buf: &mut Vec<u8>, record: &RecordRef<'_>) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_BYTES]);
    serde_json::to_writer(&mut *buf, record)
        .map_err(|e| io::Error::other(format!("encode raft log record: {e}")))?;
    let len = buf.len() - start - HEADER_BYTES;
    if len > RECORD_BYTES_MAX {
        buf.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("raft log record is {len} bytes, over the {RECORD_BYTES_MAX}-byte limit"),
        ));
    }
    let crc = block_crc(&buf[start + HEADER_BYTES..]);
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::command::CommandV1;

    fn entry(term: u64, index: u64) -> Entry {
        let leader = openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 };
        let cmd = CommandV1::DeleteVolume {
            name: format!("v{index}"),
        };
        Entry::new_normal(LogId::new(leader, index), cmd.into())
    }

    fn indexes(wal: &Wal) -> Vec<(u64, u64)> {
        wal.entries(..)
            .iter()
            .map(|e| (e.log_id().leader_id.term, e.index()))
            .collect()
    }

    #[test]
    fn appends_truncations_and_purges_replay_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, created) = Wal::open(dir.path()).unwrap();
            assert!(created);
            wal.append((1..=5).map(|i| entry(1, i))).unwrap();
            wal.truncate_after(Some(3)).unwrap();
            wal.append((4..=6).map(|i| entry(2, i))).unwrap();
            // A new entry at an index replaces the tail from there.
            wal.append(std::iter::once(entry(3, 6))).unwrap();
            wal.purge(entry(1, 2).log_id()).unwrap();
            wal.file().sync_data().unwrap();
        }
        let (wal, created) = Wal::open(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(indexes(&wal), vec![(1, 3), (2, 4), (2, 5), (3, 6)]);
        assert_eq!(wal.last_purged(), Some(entry(1, 2).log_id()));
    }

    /// A torn record ends the log, and whatever was written after it is zeroed, so it cannot
    /// come back once later appends overwrite the torn bytes.
    #[test]
    fn a_torn_record_ends_the_log_and_what_follows_it_is_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let torn_at;
        {
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            wal.append((1..=2).map(|i| entry(1, i))).unwrap();
            torn_at = wal.len_bytes();
            wal.append((3..=4).map(|i| entry(1, i))).unwrap();
            wal.file().sync_data().unwrap();
        }
        // Flip one byte in the body of entry 3; entry 4 stays whole behind it.
        let path = dir.path().join(WAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[torn_at as usize + HEADER_BYTES + 3] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            assert_eq!(indexes(&wal), vec![(1, 1), (1, 2)]);
            assert_eq!(wal.len_bytes(), torn_at);
            wal.append(std::iter::once(entry(2, 3))).unwrap();
            wal.file().sync_data().unwrap();
        }
        let (wal, _) = Wal::open(dir.path()).unwrap();
        assert_eq!(indexes(&wal), vec![(1, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn a_purge_past_the_size_limit_compacts_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        wal.compact_bytes = 2 * WAL_GROW_BYTES;
        let mut index = 0;
        while wal.len_bytes() <= wal.compact_bytes {
            wal.append((index + 1..=index + 1000).map(|i| entry(1, i)))
                .unwrap();
            index += 1000;
        }
        wal.purge(entry(1, index - 10).log_id()).unwrap();
        assert!(wal.len_bytes() < 64 * 1024, "{} bytes", wal.len_bytes());
        drop(wal);
        let (wal, _) = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.entries(..).len(), 10);
        assert_eq!(wal.last_purged(), Some(entry(1, index - 10).log_id()));
        assert!(!dir.path().join(WAL_FILE_NEW).exists());
    }

    #[test]
    fn a_record_that_decodes_wrong_behind_a_good_crc_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Wal::open(dir.path()).unwrap());
        let body = br#"{"NotARecord":1}"#;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&block_crc(body).to_le_bytes());
        bytes.extend_from_slice(body);
        std::fs::write(dir.path().join(WAL_FILE), &bytes).unwrap();
        let err = Wal::open(dir.path()).err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
