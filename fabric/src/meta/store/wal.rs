//! The Raft log's entries in one file, `raft.log`, of checksummed records: appending a batch is
//! one `pwrite`, making it durable one `fdatasync` (run by the group-commit thread in
//! [`super::log`]).
//!
//! Why not sled for the entries: sled's flush writes its IO buffers one after another, each
//! followed by a blocking `sync_file_range`, and an `fdatasync` is still needed after it. A
//! follower spent ~4.7 ms per AppendEntries there, against ~0.15 ms for one `fdatasync` of
//! this disk. sled keeps the vote and the committed log id, which change rarely.
//!
//! Format: the file begins with the synced mark ([`super::mark`]): two 4 KiB slots, written in
//! turn, whose valid mark of the highest sequence says up to which byte S the log is known to
//! be on disk. Records follow from byte 8192: `[len: u32 LE][crc32c(body): u32 LE][body: len
//! bytes of JSON]`. The file is grown in zero-filled chunks ahead of the write position, so an
//! append overwrites allocated blocks and its `fdatasync` writes data only, never the file's
//! size. A zero `len` ends the log.
//!
//! The mark trails the log by about one batch and costs no `fdatasync` of its own: once a sync
//! of the bytes up to S has returned (reported with [`Wal::synced`]), the next write also
//! rewrites a mark slot to say S, and that write's own `fdatasync` makes the mark durable with
//! the batch. A mark is written only once the one before it is known durable, so the slot it
//! overwrites never holds the only whole mark: a torn mark write leaves the other slot's mark.
//! (Why not a mark per sync, written after it: that would be a second `fdatasync` per group
//! commit, doubling the latency an append waits for.)
//!
//! Recovery: every record before the mark's S was synced, and may have been acknowledged, so
//! it must be whole. A record there that is short, fails its crc, or has a zero or oversized
//! `len` is corruption: opening fails with [`LogCorrupt`], naming the file, the byte offset and
//! what is wrong, and leaves the file as it is. A member must not come back without entries it
//! acknowledged: the quorum that committed them may have counted on its copy. From S on, the
//! first such record is a torn tail: its batch was never reported synced, so never
//! acknowledged, and everything from it on is zeroed, since those bytes may hold records written
//! after the torn one, which must not come back once later appends overwrite the torn bytes. A
//! body whose crc matches but that does not decode is refused wherever it is. Opening then
//! syncs what it kept and marks it synced.
//!
//! Limits: the mark trails, so damage inside the batches synced after the last mark was written
//! (the last batch before a crash or a stop, typically: a stop writes no mark of its own) cannot
//! be told from a torn tail, and is cut as one; the entries lost that way may have been
//! acknowledged. Only opening reads the file; damage to it while the member runs is found at the
//! next start. A mark is trusted as far as its crc32c goes. A file without marks (written before
//! they existed) is read the old way, every bad record a torn tail, except that it must begin
//! with a whole record, and is rewritten with marks at once.
//!
//! Replay: an `Entry` at index i replaces every entry from i on (Raft's log matching: a new
//! entry at an index supersedes the old tail); `TruncateAfter(i)` drops entries after i;
//! `Purge(id)` drops entries up to id's index and makes id the last purged log id.
//!
//! Compaction: when a purge finds the file past [`WAL_COMPACT_BYTES`], the live state (last
//! purged id and entries) is written to `raft.log.new`, both mark slots saying all of it is
//! synced; that file is synced, renamed over `raft.log`, and the directory synced. A fresh log is
//! created the same way, so `raft.log` always exists whole and marked.

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

use super::mark::{self, Head, MARKS_BYTES, Mark};
use crate::meta::types::{Entry, LogId};

/// Name of the log file in the member's store directory.
pub const WAL_FILE: &str = "raft.log";
const WAL_FILE_NEW: &str = "raft.log.new";
/// Bytes of a record's header: length and crc32c of the body.
const RECORD_HEADER_BYTES: usize = 8;
/// Largest record body: an entry of at most [`super::VALUE_BYTES_MAX`] plus the record's tag.
pub const RECORD_BYTES_MAX: usize = super::VALUE_BYTES_MAX + 64;
/// The file grows by this many zero-filled bytes at a time.
const WAL_GROW_BYTES: u64 = 4 * 1024 * 1024;
/// A purge rewrites the file once it is larger than this.
pub const WAL_COMPACT_BYTES: u64 = 64 * 1024 * 1024;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

const _: () = assert!(RECORD_BYTES_MAX < u32::MAX as usize);
const _: () = assert!(
    WAL_GROW_BYTES as usize >= MARKS_BYTES as usize + RECORD_HEADER_BYTES + RECORD_BYTES_MAX
);

/// The log file holds damage where it was known synced, so entries this member may have
/// acknowledged are gone; opening refuses to go on without them.
#[derive(Clone, Debug, thiserror::Error)]
#[error("metadata log {} is corrupt at byte offset {offset}: {reason}", path.display())]
pub struct LogCorrupt {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: Corruption,
}

impl LogCorrupt {
    /// The corruption `e` carries, if it is one.
    pub fn find(e: &io::Error) -> Option<&LogCorrupt> {
        e.get_ref()?.downcast_ref()
    }
}

impl From<LogCorrupt> for io::Error {
    fn from(e: LogCorrupt) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// What is wrong where a [`LogCorrupt`] points.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error(
        "{damage} (the log's mark says it was synced up to byte {synced_to}, so this is no torn \
         write)"
    )]
    Synced { damage: Damage, synced_to: u64 },
    #[error("a record whose crc32c matches does not decode: {0}")]
    Undecodable(String),
    #[error("neither of the two mark slots at the start of the file holds a whole mark")]
    NoMark,
    #[error(
        "the mark in this slot says the log was synced up to byte {synced_to}, outside the \
         file's records (from byte {MARKS_BYTES} to its length, {len})"
    )]
    MarkOutOfRange { synced_to: u64, len: u64 },
    #[error("the file has no marks and does not begin with a whole record")]
    Unrecognised,
}

/// How a record is damaged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("the record is cut short ({left} bytes left where {needed} are needed)")]
    Short { needed: usize, left: usize },
    #[error("the record's length is zero")]
    ZeroLength,
    #[error("the record's length, {0}, is over the {RECORD_BYTES_MAX}-byte limit")]
    TooLong(usize),
    #[error("the record's crc32c {stored:#010x} does not match its body's, {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("the record runs on to byte {end}, across the synced end")]
    PastMark { end: u64 },
}

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
    /// The last mark written, durable or not yet.
    mark: Mark,
    /// Bytes of the file known durable: a sync covering them has returned.
    durable: u64,
    /// The sequence of the last mark known durable.
    durable_mark: u64,
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    /// A purge compacts the file once it is larger than this ([`WAL_COMPACT_BYTES`]).
    compact_bytes: u64,
}

/// What an `fdatasync` started now makes durable: the file as [`Wal::sync_point`] found it.
/// Hand it back to [`Wal::synced`] once [`SyncPoint::sync`] has returned.
pub struct SyncPoint {
    file: Arc<File>,
    end: u64,
    mark_sequence: u64,
}

impl SyncPoint {
    /// `fdatasync`s the file. Blocking.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Wal {
    /// Opens the log in `dir`, creating an empty one if there is none. Blocking. Returns
    /// whether it was created. Damage where the log was known synced is an error that
    /// [`LogCorrupt::find`] finds, and the file is left as it is.
    pub fn open(dir: &Path) -> io::Result<(Wal, bool)> {
        let path = dir.join(WAL_FILE);
        if !path.exists() {
            let wal = Wal::create(dir, None, std::iter::empty())?;
            return Ok((wal, true));
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let bytes = std::fs::read(&path)?;
        let len = bytes.len() as u64;
        let corrupt = |offset, reason| corrupt(&path, offset, reason);
        let mark = match mark::read(&bytes) {
            Head::Marked(mark) => mark,
            Head::Damaged => return Err(corrupt(0, Corruption::NoMark)),
            Head::Unmarked => return Ok((Wal::upgrade(dir, file, &bytes)?, false)),
        };
        if mark.synced_to < MARKS_BYTES || mark.synced_to > len {
            let reason = Corruption::MarkOutOfRange {
                synced_to: mark.synced_to,
                len,
            };
            return Err(corrupt(mark.offset(), reason));
        }
        let mut wal = Wal::with_file(dir, file, len, mark);
        wal.end = wal
            .replay(&bytes, MARKS_BYTES, mark.synced_to)
            .map_err(|(o, r)| corrupt(o, r))?;
        if bytes[wal.end as usize..].iter().any(|&b| b != 0) {
            tracing::warn!(
                file = %path.display(),
                offset = wal.end,
                synced_to = mark.synced_to,
                bytes = len - wal.end,
                "raft log: zeroing a torn tail (a batch never reported synced, so never acknowledged)"
            );
            wal.zero(wal.end, wal.allocated)?;
        }
        // What was read is made durable before a mark may say so.
        wal.file.sync_data()?;
        if wal.end > mark.synced_to {
            wal.write_mark(mark.next(wal.end))?;
            wal.file.sync_data()?;
        }
        wal.durable = wal.end;
        wal.durable_mark = wal.mark.sequence;
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
        let start = Mark {
            sequence: 0,
            synced_to: MARKS_BYTES,
        };
        let mut wal = Wal::with_file(dir, file, 0, start);
        wal.zero(0, WAL_GROW_BYTES)?;
        wal.allocated = WAL_GROW_BYTES;
        if let Some(id) = last_purged {
            wal.purge_record(id)?;
        }
        wal.append(entries)?;
        // Both slots say that all of it is synced, which it is before the rename puts it in
        // place.
        let first = Mark {
            sequence: 0,
            synced_to: wal.end,
        };
        wal.write_mark(first)?;
        wal.write_mark(first.next(wal.end))?;
        wal.file.sync_all()?;
        wal.durable = wal.end;
        wal.durable_mark = wal.mark.sequence;
        std::fs::rename(&new_path, dir.join(WAL_FILE))?;
        File::open(dir)?.sync_all()?;
        Ok(wal)
    }

    fn with_file(dir: &Path, file: File, allocated: u64, mark: Mark) -> Wal {
        Wal {
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            end: MARKS_BYTES,
            allocated,
            mark,
            durable: mark.synced_to,
            durable_mark: mark.sequence,
            entries: BTreeMap::new(),
            last_purged: None,
            compact_bytes: WAL_COMPACT_BYTES,
        }
    }

    /// Reads a log written before marks existed (records from offset 0; nothing is known
    /// synced, so the first bad record ends it) and rewrites it with marks.
    fn upgrade(dir: &Path, file: File, bytes: &[u8]) -> io::Result<Wal> {
        let path = dir.join(WAL_FILE);
        let start = Mark {
            sequence: 0,
            synced_to: 0,
        };
        let mut old = Wal::with_file(dir, file, bytes.len() as u64, start);
        let end = old
            .replay(bytes, 0, 0)
            .map_err(|(o, r)| corrupt(&path, o, r))?;
        if end == 0 && bytes.iter().any(|&b| b != 0) {
            return Err(corrupt(&path, 0, Corruption::Unrecognised));
        }
        let count = old.entries.len();
        let wal = Wal::create(dir, old.last_purged, old.entries.into_values())?;
        tracing::info!(
            file = %path.display(),
            entries = count,
            "raft log from before synced marks rewritten with them"
        );
        Ok(wal)
    }

    /// Applies every whole record of `bytes` from `start`; returns where the log ends. Damage
    /// before `synced_to` is corruption, returned with its offset; from there on the first
    /// damaged record ends the log.
    fn replay(
        &mut self,
        bytes: &[u8],
        start: u64,
        synced_to: u64,
    ) -> Result<u64, (u64, Corruption)> {
        let mut at = start;
        loop {
            let (body, next) = match record_at(bytes, at as usize) {
                Ok((body, next)) => (body, next as u64),
                Err(damage) if at < synced_to => {
                    return Err((at, Corruption::Synced { damage, synced_to }));
                }
                Err(_) => return Ok(at),
            };
            if at < synced_to && next > synced_to {
                let damage = Damage::PastMark { end: next };
                return Err((at, Corruption::Synced { damage, synced_to }));
            }
            let record: Record = serde_json::from_slice(body)
                .map_err(|e| (at, Corruption::Undecodable(e.to_string())))?;
            match record {
                Record::Entry(entry) => self.insert(entry),
                Record::TruncateAfter(index) => self.drop_after(index),
                Record::Purge(id) => self.drop_through(id),
            }
            at = next;
        }
    }

    /// Appends `entries` with one write. Durable only after a sync (see [`Wal::sync_point`]).
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

    /// What a sync started now makes durable: every record written so far.
    pub fn sync_point(&self) -> SyncPoint {
        SyncPoint {
            file: Arc::clone(&self.file),
            end: self.end,
            mark_sequence: self.mark.sequence,
        }
    }

    /// Notes that `point`'s sync has returned, so the next write marks its bytes synced. A
    /// point of a file since replaced by compaction is ignored (the new file is synced whole).
    pub fn synced(&mut self, point: &SyncPoint) {
        if Arc::ptr_eq(&self.file, &point.file) {
            self.durable = self.durable.max(point.end);
            self.durable_mark = self.durable_mark.max(point.mark_sequence);
        }
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

    /// Where the file's records end.
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

    /// Writes `buf` at the end, growing the zero-filled allocation first if needed, and a new
    /// mark if a sync has made more bytes durable than the last mark says and that mark itself
    /// is durable.
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        let needed = self.end + buf.len() as u64;
        if needed > self.allocated {
            let target = needed.div_ceil(WAL_GROW_BYTES) * WAL_GROW_BYTES;
            self.zero(self.allocated, target)?;
            // The new size must be durable before appends rely on data-only syncs.
            self.file.sync_all()?;
            self.allocated = target;
            // That sync made everything written so far durable, the last mark too.
            self.durable = self.end;
            self.durable_mark = self.mark.sequence;
        }
        if self.durable > self.mark.synced_to && self.durable_mark == self.mark.sequence {
            self.write_mark(self.mark.next(self.durable))?;
        }
        self.file.write_all_at(buf, self.end)?;
        self.end = needed;
        Ok(())
    }

    /// Writes `mark` into its slot. Durable only after a sync.
    fn write_mark(&mut self, mark: Mark) -> io::Result<()> {
        self.file.write_all_at(&mark.encode(), mark.offset())?;
        self.mark = mark;
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

fn corrupt(path: &Path, offset: u64, reason: Corruption) -> io::Error {
    io::Error::from(LogCorrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    })
}

/// The body of the record at `at` and where the next one starts, or how the record is damaged
/// (also where the bytes end or the log's zeros begin).
fn record_at(bytes: &[u8], at: usize) -> Result<(&[u8], usize), Damage> {
    let left = bytes.len().saturating_sub(at);
    let header = bytes
        .get(at..at + RECORD_HEADER_BYTES)
        .ok_or(Damage::Short {
            needed: RECORD_HEADER_BYTES,
            left,
        })?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let stored = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 {
        return Err(Damage::ZeroLength);
    }
    if len > RECORD_BYTES_MAX {
        return Err(Damage::TooLong(len));
    }
    let needed = RECORD_HEADER_BYTES + len;
    let body = bytes
        .get(at + RECORD_HEADER_BYTES..at + needed)
        .ok_or(Damage::Short { needed, left })?;
    let computed = block_crc(body);
    if computed != stored {
        return Err(Damage::BadCrc { stored, computed });
    }
    Ok((body, at + needed))
}

fn encode_record(buf: &mut Vec<u8>, record: &RecordRef<'_>) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    serde_json::to_writer(&mut *buf, record)
        .map_err(|e| io::Error::other(format!("encode raft log record: {e}")))?;
    let len = buf.len() - start - RECORD_HEADER_BYTES;
    if len > RECORD_BYTES_MAX {
        buf.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("raft log record is {len} bytes, over the {RECORD_BYTES_MAX}-byte limit"),
        ));
    }
    let crc = block_crc(&buf[start + RECORD_HEADER_BYTES..]);
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

    /// What the group-commit thread does after a batch: sync, then report it.
    fn sync(wal: &mut Wal) {
        let point = wal.sync_point();
        point.sync().unwrap();
        wal.synced(&point);
    }

    fn path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join(WAL_FILE)
    }

    fn flip(dir: &tempfile::TempDir, offset: u64) {
        let mut bytes = std::fs::read(path(dir)).unwrap();
        bytes[offset as usize] ^= 0x40;
        std::fs::write(path(dir), &bytes).unwrap();
    }

    fn current_mark(dir: &tempfile::TempDir) -> Mark {
        match mark::read(&std::fs::read(path(dir)).unwrap()) {
            Head::Marked(m) => m,
            other => panic!("no mark: {other:?}"),
        }
    }

    /// Opening must fail with a [`LogCorrupt`] at `offset`; returns its reason.
    fn refused_at(dir: &tempfile::TempDir, offset: u64) -> Corruption {
        let err = Wal::open(dir.path()).err().expect("the open is refused");
        let corrupt = LogCorrupt::find(&err).unwrap_or_else(|| panic!("not LogCorrupt: {err}"));
        assert_eq!(corrupt.path, path(dir));
        assert_eq!(corrupt.offset, offset, "{corrupt}");
        let text = err.to_string();
        assert!(text.contains("raft.log"), "{text}");
        assert!(text.contains(&format!("offset {offset}")), "{text}");
        corrupt.reason.clone()
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
            sync(&mut wal);
        }
        let (wal, created) = Wal::open(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(indexes(&wal), vec![(1, 3), (2, 4), (2, 5), (3, 6)]);
        assert_eq!(wal.last_purged(), Some(entry(1, 2).log_id()));
    }

    /// Batches 1 and 2 synced and reported, batch 3 written: the mark written with batch 3
    /// says batch 2's end is synced. Returns where each batch starts and where the log ends.
    fn three_synced_batches(dir: &tempfile::TempDir) -> [u64; 4] {
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        let mut at = [0; 4];
        for (batch, indexes) in [1..=2, 3..=4, 5..=6].into_iter().enumerate() {
            at[batch] = wal.len_bytes();
            wal.append(indexes.map(|i| entry(1, i))).unwrap();
            sync(&mut wal);
        }
        at[3] = wal.len_bytes();
        assert_eq!(current_mark(dir).synced_to, at[2]);
        at
    }

    /// Before the mark, a flipped bit is corruption, not a torn tail: the open fails naming the
    /// offset and leaves every byte of the file as it was, the entries after it included.
    #[test]
    fn damage_before_the_synced_mark_is_refused_and_the_file_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let at = three_synced_batches(&dir);
        let whole = std::fs::read(path(&dir)).unwrap();
        // The body of entry 3, the first of batch 2.
        flip(&dir, at[1] + RECORD_HEADER_BYTES as u64 + 3);
        let damaged = std::fs::read(path(&dir)).unwrap();
        let reason = refused_at(&dir, at[1]);
        assert!(
            matches!(
                reason,
                Corruption::Synced {
                    damage: Damage::BadCrc { .. },
                    synced_to
                } if synced_to == at[2]
            ),
            "{reason}"
        );
        assert_eq!(std::fs::read(path(&dir)).unwrap(), damaged, "file changed");
        // Refused again on the next try, and whole once repaired.
        refused_at(&dir, at[1]);
        std::fs::write(path(&dir), &whole).unwrap();
        let (wal, _) = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.entries(..).len(), 6);
    }

    #[test]
    fn a_zeroed_length_or_a_short_file_before_the_mark_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let at = three_synced_batches(&dir);
        let whole = std::fs::read(path(&dir)).unwrap();

        let mut bytes = whole.clone();
        bytes[at[1] as usize..at[1] as usize + 4].fill(0);
        std::fs::write(path(&dir), &bytes).unwrap();
        let reason = refused_at(&dir, at[1]);
        assert!(
            matches!(
                reason,
                Corruption::Synced {
                    damage: Damage::ZeroLength,
                    ..
                }
            ),
            "{reason}"
        );

        // Cut inside batch 2: the mark says more was synced than the file holds.
        std::fs::write(path(&dir), &whole[..at[1] as usize + 5]).unwrap();
        let reason = refused_at(&dir, current_mark(&dir).offset());
        assert!(
            matches!(reason, Corruption::MarkOutOfRange { synced_to, .. } if synced_to == at[2]),
            "{reason}"
        );
    }

    /// After the mark, the first bad record is a torn tail: cut there, what came before kept,
    /// what was written after it zeroed so it cannot come back once later appends overwrite
    /// the torn bytes. The open then marks what it kept synced, so damage to it is found later.
    #[test]
    fn a_torn_batch_after_the_mark_is_cut_and_what_came_before_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (batch2, batch3, torn_end);
        {
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            wal.append((1..=2).map(|i| entry(1, i))).unwrap();
            sync(&mut wal);
            batch2 = wal.len_bytes();
            // Written with the mark saying batch 1 is synced; its own sync never reported.
            wal.append((3..=4).map(|i| entry(1, i))).unwrap();
            batch3 = wal.len_bytes();
            wal.append((5..=6).map(|i| entry(1, i))).unwrap();
            torn_end = wal.len_bytes();
        }
        assert_eq!(current_mark(&dir).synced_to, batch2);
        // Tear entry 5; entry 6 stays whole behind it, and garbage lies past the end.
        flip(&dir, batch3 + RECORD_HEADER_BYTES as u64 + 3);
        let mut bytes = std::fs::read(path(&dir)).unwrap();
        bytes[torn_end as usize..torn_end as usize + 100].fill(0xa5);
        std::fs::write(path(&dir), &bytes).unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            assert_eq!(indexes(&wal), (1..=4).map(|i| (1, i)).collect::<Vec<_>>());
            assert_eq!(wal.len_bytes(), batch3);
            let bytes = std::fs::read(path(&dir)).unwrap();
            assert!(bytes[batch3 as usize..].iter().all(|&b| b == 0));
            assert_eq!(current_mark(&dir).synced_to, batch3);
            wal.append(std::iter::once(entry(2, 5))).unwrap();
            sync(&mut wal);
        }
        let (wal, _) = Wal::open(dir.path()).unwrap();
        let mut want: Vec<_> = (1..=4).map(|i| (1, i)).collect();
        want.push((2, 5));
        assert_eq!(indexes(&wal), want);
        drop(wal);
        // Batch 2, kept and marked at the open, is no torn tail any more.
        flip(&dir, batch2 + RECORD_HEADER_BYTES as u64 + 3);
        refused_at(&dir, batch2);
    }

    /// A mark write torn by a crash leaves the mark before it, which still guards what it
    /// covers.
    #[test]
    fn a_torn_mark_slot_leaves_the_other_one() {
        let dir = tempfile::tempdir().unwrap();
        let at = three_synced_batches(&dir);
        let newest = current_mark(&dir);
        flip(&dir, newest.offset() + 12);
        let older = current_mark(&dir);
        assert_eq!(older.sequence + 1, newest.sequence);
        assert_eq!(older.synced_to, at[1]);
        {
            let (wal, _) = Wal::open(dir.path()).unwrap();
            assert_eq!(wal.entries(..).len(), 6);
        }
        // The open rewrote the torn slot; tear it again and damage batch 1, which the older
        // mark covers.
        let current = current_mark(&dir);
        assert_eq!(current.offset(), newest.offset());
        flip(&dir, current.offset() + 12);
        assert_eq!(current_mark(&dir), older);
        flip(&dir, at[0] + RECORD_HEADER_BYTES as u64 + 3);
        refused_at(&dir, at[0]);
        // Both slots torn: nothing says how far the log was synced.
        flip(&dir, older.offset() + 12);
        assert_eq!(refused_at(&dir, 0), Corruption::NoMark);
    }

    /// A sync taken before a mark was written, reported after, must not let the next write
    /// overwrite the other slot while the newest mark may not be on disk yet.
    #[test]
    fn a_mark_is_not_overwritten_before_the_one_after_it_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        let created = current_mark(&dir);
        wal.append(std::iter::once(entry(1, 1))).unwrap();
        let a = wal.sync_point();
        wal.append(std::iter::once(entry(1, 2))).unwrap();
        let b = wal.sync_point();
        a.sync().unwrap();
        wal.synced(&a);
        wal.append(std::iter::once(entry(1, 3))).unwrap();
        let written = current_mark(&dir);
        assert_eq!(written.sequence, created.sequence + 1);
        assert_eq!(written.synced_to, a.end);
        // b covers more bytes but not the mark just written.
        b.sync().unwrap();
        wal.synced(&b);
        wal.append(std::iter::once(entry(1, 4))).unwrap();
        assert_eq!(current_mark(&dir), written);
        // Once a sync covers that mark, the next write marks b's bytes and more.
        sync(&mut wal);
        wal.append(std::iter::once(entry(1, 5))).unwrap();
        let next = current_mark(&dir);
        assert_eq!(next.sequence, written.sequence + 1);
        assert!(next.synced_to > b.end);
    }

    #[test]
    fn a_purge_past_the_size_limit_compacts_the_file_and_marks_it_synced() {
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
        let compacted_end = wal.len_bytes();
        drop(wal);
        // The compacted file says all it holds is synced, in both slots.
        let bytes = std::fs::read(path(&dir)).unwrap();
        let mark = current_mark(&dir);
        assert_eq!(mark.synced_to, compacted_end);
        let mut one_slot = bytes.clone();
        one_slot[mark.offset() as usize + 12] ^= 1;
        assert!(matches!(mark::read(&one_slot), Head::Marked(m) if m.synced_to == compacted_end));
        {
            let (wal, _) = Wal::open(dir.path()).unwrap();
            assert_eq!(wal.entries(..).len(), 10);
            assert_eq!(wal.last_purged(), Some(entry(1, index - 10).log_id()));
            assert!(!dir.path().join(WAL_FILE_NEW).exists());
        }
        // So damage to its first record is refused.
        flip(&dir, MARKS_BYTES + RECORD_HEADER_BYTES as u64 + 3);
        refused_at(&dir, MARKS_BYTES);
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
        // Past the mark, where damage would be a torn tail: this is not one.
        let file = OpenOptions::new().write(true).open(path(&dir)).unwrap();
        file.write_all_at(&bytes, MARKS_BYTES).unwrap();
        let reason = refused_at(&dir, MARKS_BYTES);
        assert!(matches!(reason, Corruption::Undecodable(_)), "{reason}");
    }

    /// A log written before the marks existed: records from offset 0, a torn tail cut the old
    /// way, the rest rewritten with marks.
    #[test]
    fn a_log_without_marks_is_read_and_rewritten_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &RecordRef::Purge(&entry(1, 1).log_id())).unwrap();
        for i in 2..=4 {
            encode_record(&mut bytes, &RecordRef::Entry(&entry(1, i))).unwrap();
        }
        let torn = bytes.len();
        encode_record(&mut bytes, &RecordRef::Entry(&entry(1, 5))).unwrap();
        bytes[torn + RECORD_HEADER_BYTES + 2] ^= 0x40;
        bytes.resize(WAL_GROW_BYTES as usize, 0);
        std::fs::write(path(&dir), &bytes).unwrap();
        let (wal, created) = Wal::open(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(indexes(&wal), vec![(1, 2), (1, 3), (1, 4)]);
        assert_eq!(wal.last_purged(), Some(entry(1, 1).log_id()));
        assert_eq!(current_mark(&dir).synced_to, wal.len_bytes());
        drop(wal);
        let (wal, _) = Wal::open(dir.path()).unwrap();
        assert_eq!(indexes(&wal), vec![(1, 2), (1, 3), (1, 4)]);
        drop(wal);
        // An empty log from before the marks.
        std::fs::write(path(&dir), b"").unwrap();
        let (wal, _) = Wal::open(dir.path()).unwrap();
        assert!(wal.entries(..).is_empty());
        drop(wal);
        // A file with neither marks nor a whole first record is not taken for an empty log.
        std::fs::write(path(&dir), [0, 0, 0, 0, 0, 0, 0, 0, 7]).unwrap();
        assert_eq!(refused_at(&dir, 0), Corruption::Unrecognised);
    }
}
