//! [`VersionTable`]: the version `(attach_epoch, seq)` of the last write of every extent of one
//! volume on one replica, cached in memory and persisted in a sparse `versions` file of 16
//! bytes per extent (see [`crate::wire::versions`] for the entry layout).
//!
//! Crash consistency. A version is what delta resync trusts to decide that an extent needs no
//! copy, so a version on disk must never be ahead of the data it describes: after a power
//! loss it would hide a write the replica lost, for ever. Unflushed data and an unflushed
//! entry of the `versions` file may each survive a power loss without the other, so entries
//! are written only when their data is known durable:
//!
//! 1. a mutation raises its extents' versions in memory ([`VersionTable::record`]), after its
//!    data was written and before its reply; replies to `GetExtentVersions` come from memory,
//!    which is the truth while the process runs;
//! 2. a FLUSH takes the extents raised so far ([`VersionTable::pending`]), syncs the store, and
//!    only then writes those extents' entries and syncs the `versions` file
//!    ([`VersionTable::persist`]).
//!
//! After a kill or a power loss the file may therefore be *behind* the data (never ahead):
//! resync then copies such extents again, which is wasteful but safe. A FUA write's data is
//! durable at its reply; its version becomes durable with the next flush (writing it earlier
//! could vouch for an older, unflushed write of the same extent).

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};

use crate::io::BlockFile;
use crate::wire::{EXTENT_SIZE_BYTES, VERSION_ENTRY_BYTES, WriteVersion, decode_versions};

/// Largest read of the `versions` file while loading it, in bytes.
const LOAD_CHUNK_BYTES: u64 = 1 << 20;

const ENTRY: u64 = VERSION_ENTRY_BYTES as u64;
const _: () = assert!(LOAD_CHUNK_BYTES.is_multiple_of(ENTRY));

/// Versions of every extent of one volume on this replica.
pub struct VersionTable {
    file: Arc<dyn BlockFile>,
    extents: u64,
    /// Only extents ever written; absent means [`WriteVersion::NONE`].
    cache: Mutex<Cache>,
    /// Held while entries are written, so two flushes do not interleave their writes.
    persist: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    versions: HashMap<u64, WriteVersion>,
    /// Extents whose version in memory is ahead of the file.
    dirty: BTreeSet<u64>,
}

/// Versions taken by [`VersionTable::pending`], to be written once their data is durable.
#[derive(Debug, Default)]
pub struct Pending(Vec<(u64, WriteVersion)>);

impl VersionTable {
    /// Number of extents of a volume of `size_bytes`.
    pub fn extents_of(size_bytes: u64) -> u64 {
        size_bytes.div_ceil(EXTENT_SIZE_BYTES)
    }

    /// Opens the table in `file` (buffered), sizing a fresh file and loading the entries of an
    /// existing one; only the file's allocated parts are read.
    pub async fn open(file: Arc<dyn BlockFile>, size_bytes: u64) -> io::Result<VersionTable> {
        let extents = Self::extents_of(size_bytes);
        let want = extents * ENTRY;
        let have = file.file_len().await?;
        if have == 0 {
            file.set_len(want).await?;
        } else if have != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("versions file is {have} bytes, want {want}"),
            ));
        }
        let mut versions = HashMap::new();
        let mut pos = 0;
        while pos < want {
            let Some(data) = file.seek_data(pos).await? else {
                break;
            };
            if data >= want {
                break;
            }
            let start = data - data % ENTRY;
            let end = file.seek_hole(data).await?.min(want).div_ceil(ENTRY) * ENTRY;
            let mut at = start;
            while at < end {
                let n = (end - at).min(LOAD_CHUNK_BYTES);
                let bytes = file.read_at(at, n as usize).await?;
                let entries = decode_versions(&bytes).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "short versions read")
                })?;
                for (i, v) in entries.into_iter().enumerate() {
                    if v != WriteVersion::NONE {
                        versions.insert(at / ENTRY + i as u64, v);
                    }
                }
                at += n;
            }
            assert!(end > pos, "versions load made no progress at {pos}");
            pos = end;
        }
        Ok(VersionTable {
            file,
            extents,
            cache: Mutex::new(Cache {
                versions,
                dirty: BTreeSet::new(),
            }),
            persist: tokio::sync::Mutex::new(()),
        })
    }

    pub fn extents(&self) -> u64 {
        self.extents
    }

    /// Versions of extents `first..first + count`, which must exist.
    pub fn get(&self, first: u64, count: u64) -> Vec<WriteVersion> {
        assert!(first + count <= self.extents);
        let cache = self.cache.lock().expect("versions cache");
        (first..first + count)
            .map(|e| {
                cache
                    .versions
                    .get(&e)
                    .copied()
                    .unwrap_or(WriteVersion::NONE)
            })
            .collect()
    }

    /// Raises the version of extents `first..end` to at least `version`, in memory. Call only
    /// after the data the version describes was written.
    pub fn record(&self, first: u64, end: u64, version: WriteVersion) {
        assert!(first < end && end <= self.extents, "extents {first}..{end}");
        assert_ne!(version, WriteVersion::NONE, "a write carries a version");
        let mut cache = self.cache.lock().expect("versions cache");
        for e in first..end {
            let v = cache.versions.entry(e).or_insert(WriteVersion::NONE);
            *v = (*v).max(version);
            cache.dirty.insert(e);
        }
    }

    /// The versions recorded so far and not yet in the file. Take them *before* syncing the
    /// data they describe, then [`VersionTable::persist`] them.
    pub fn pending(&self) -> Pending {
        let cache = self.cache.lock().expect("versions cache");
        Pending(
            cache
                .dirty
                .iter()
                .map(|&e| (e, cache.versions[&e]))
                .collect(),
        )
    }

    /// Writes `pending`'s entries and makes them durable. Call once the data they describe
    /// is durable. An extent raised again meanwhile stays pending for the next flush.
    pub async fn persist(&self, pending: Pending) -> io::Result<()> {
        if pending.0.is_empty() {
            return Ok(());
        }
        let _persist = self.persist.lock().await;
        // One write per run of consecutive extents.
        let mut runs: Vec<(u64, BytesMut)> = Vec::new();
        for &(e, v) in &pending.0 {
            match runs.last_mut() {
                Some((first, bytes)) if *first + (bytes.len() as u64) / ENTRY == e => {
                    bytes.put_u64_le(v.epoch);
                    bytes.put_u64_le(v.seq);
                }
                _ => {
                    let mut bytes = BytesMut::with_capacity(ENTRY as usize);
                    bytes.put_u64_le(v.epoch);
                    bytes.put_u64_le(v.seq);
                    runs.push((e, bytes));
                }
            }
        }
        for (first, bytes) in runs {
            self.file
                .write_at(first * ENTRY, bytes.freeze(), false)
                .await?;
        }
        self.file.sync_data().await?;
        let mut cache = self.cache.lock().expect("versions cache");
        for (e, v) in pending.0 {
            if cache.versions.get(&e) == Some(&v) {
                cache.dirty.remove(&e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Disk;
    use crate::io::portable::PortableDisk;
    use crate::store::CRC_OPEN;

    const SIZE: u64 = 1024 * EXTENT_SIZE_BYTES;

    async fn open(dir: &std::path::Path) -> VersionTable {
        let file = PortableDisk::new("test")
            .open(&dir.join("versions"), CRC_OPEN)
            .unwrap();
        VersionTable::open(file, SIZE).await.unwrap()
    }

    #[tokio::test]
    async fn versions_only_move_forward_and_are_reloaded_from_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let table = open(dir.path()).await;
        let v = |epoch, seq| WriteVersion { epoch, seq };
        table.record(3, 5, v(1, 5));
        // A write that completed later but was numbered earlier does not move it back.
        table.record(4, 5, v(1, 3));
        table.record(1000, 1001, v(2, 1));
        table.persist(table.pending()).await.unwrap();
        assert_eq!(table.get(3, 2), vec![v(1, 5), v(1, 5)]);
        drop(table);

        let again = open(dir.path()).await;
        assert_eq!(again.get(2, 3), vec![WriteVersion::NONE, v(1, 5), v(1, 5)]);
        assert_eq!(again.get(1000, 1), vec![v(2, 1)]);
        assert_eq!(again.get(999, 1), vec![WriteVersion::NONE]);
    }

    #[tokio::test]
    async fn a_version_reaches_the_file_only_through_a_persist() {
        let dir = tempfile::tempdir().unwrap();
        let v = |epoch, seq| WriteVersion { epoch, seq };
        let table = open(dir.path()).await;
        table.record(7, 8, v(1, 1));
        let pending = table.pending();
        table.persist(pending).await.unwrap();
        table.record(7, 9, v(1, 2));
        // Taken before the data is synced, then raised again: that raise stays pending.
        let pending = table.pending();
        table.record(8, 9, v(1, 3));
        table.persist(pending).await.unwrap();
        assert_eq!(table.get(7, 2), vec![v(1, 2), v(1, 3)]);
        table.record(9, 10, v(1, 4));
        drop(table);

        // As after a crash: what was never persisted is not in the file.
        let again = open(dir.path()).await;
        assert_eq!(again.get(7, 3), vec![v(1, 2), v(1, 2), WriteVersion::NONE]);
        assert!(again.pending().0.is_empty());
    }
}
