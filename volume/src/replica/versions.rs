//! [`VersionTable`]: the version `(attach_epoch, seq)` of the last write of every extent of one
//! volume on one replica, cached in memory and persisted in a sparse `versions` file of 16
//! bytes per extent (see [`crate::wire::versions`] for the entry layout).
//!
//! Ordering and crash consistency. The checksum file is written *before* the data it describes
//! because a checksum ahead of its data is harmless (the previous slot still vouches for the old
//! contents). A version is the opposite: it is what delta resync trusts to decide that an extent
//! needs no copy, so a version ahead of its data would hide a missed write forever. Versions are
//! therefore written *after* the data, in the same request, before the reply:
//!
//! 1. the store writes the data (checksums first, as it always does);
//! 2. the extent's version is raised to `max(current, request's version)` and written;
//! 3. for FUA, the data is already durable, and the `versions` file is synced before the reply;
//!    a FLUSH syncs the store first and the `versions` file second.
//!
//! A process killed between 1 and 2 leaves newer data under an older version; resync then
//! copies the extent again, which is wasteful but safe. Known limit: after a power loss (not a
//! process kill), unflushed version entries and unflushed data may each survive without the
//! other, like the store's checksums; acknowledged FUA writes and flushes are unaffected.
//!
//! Entries are written under one async mutex per volume, so two writes of the same extent
//! cannot reorder their entries in the file behind the cache's back.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};

use crate::io::{BlockFile, sparse};
use crate::wire::{EXTENT_SIZE_BYTES, VERSION_ENTRY_BYTES, WriteVersion, decode_versions};

const ENTRY: u64 = VERSION_ENTRY_BYTES as u64;

/// Versions of every extent of one volume on this replica.
pub struct VersionTable {
    file: Arc<dyn BlockFile>,
    /// Raised by a grow, never lowered.
    extents: AtomicU64,
    /// Only extents ever written; absent means [`WriteVersion::NONE`].
    cache: Mutex<HashMap<u64, WriteVersion>>,
    persist: tokio::sync::Mutex<()>,
}

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
        sparse::size_table(&*file, want, "versions").await?;
        let mut cache = HashMap::new();
        sparse::for_each_allocated(&*file, want, ENTRY, |at, bytes| {
            let entries = decode_versions(&bytes)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short versions read"))?;
            for (i, v) in entries.into_iter().enumerate() {
                if v != WriteVersion::NONE {
                    cache.insert(at / ENTRY + i as u64, v);
                }
            }
            Ok(())
        })
        .await?;
        Ok(VersionTable {
            file,
            extents: AtomicU64::new(extents),
            cache: Mutex::new(cache),
            persist: tokio::sync::Mutex::new(()),
        })
    }

    pub fn extents(&self) -> u64 {
        self.extents.load(Ordering::Acquire)
    }

    /// Makes room for the extents of a volume grown to `size_bytes` (never written, so
    /// [`WriteVersion::NONE`]), durably. Call before the volume itself grows.
    pub async fn grow(&self, size_bytes: u64) -> io::Result<()> {
        let extents = Self::extents_of(size_bytes);
        // Already larger after an earlier grow that went further and failed: left so.
        if extents > self.extents() {
            sparse::grow_table(&*self.file, extents * ENTRY).await?;
            self.extents.fetch_max(extents, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Versions of extents `first..first + count`, which must exist.
    pub fn get(&self, first: u64, count: u64) -> Vec<WriteVersion> {
        assert!(first + count <= self.extents());
        let cache = self.cache.lock().expect("versions cache");
        (first..first + count)
            .map(|e| cache.get(&e).copied().unwrap_or(WriteVersion::NONE))
            .collect()
    }

    /// Raises the version of extents `first..end` to at least `version` and writes them.
    /// Call only after the data the version describes was written.
    pub async fn record(&self, first: u64, end: u64, version: WriteVersion) -> io::Result<()> {
        assert!(
            first < end && end <= self.extents(),
            "extents {first}..{end}"
        );
        assert_ne!(version, WriteVersion::NONE, "a write carries a version");
        let _persist = self.persist.lock().await;
        let mut bytes = BytesMut::with_capacity(((end - first) * ENTRY) as usize);
        {
            let mut cache = self.cache.lock().expect("versions cache");
            for e in first..end {
                let v = cache.entry(e).or_insert(WriteVersion::NONE);
                *v = (*v).max(version);
                bytes.put_u64_le(v.epoch);
                bytes.put_u64_le(v.seq);
            }
        }
        self.file
            .write_at(first * ENTRY, bytes.freeze(), false)
            .await
    }

    /// Sets the versions of extents `first..end` back to [`WriteVersion::NONE`]: their data was
    /// just reset to never written. Call only after the data was.
    pub async fn reset(&self, first: u64, end: u64) -> io::Result<()> {
        assert!(
            first < end && end <= self.extents(),
            "extents {first}..{end}"
        );
        let _persist = self.persist.lock().await;
        {
            let mut cache = self.cache.lock().expect("versions cache");
            for e in first..end {
                cache.remove(&e);
            }
        }
        let zeros = Bytes::from(vec![0u8; ((end - first) * ENTRY) as usize]);
        self.file.write_at(first * ENTRY, zeros, false).await
    }

    /// Makes every recorded version durable.
    pub async fn sync(&self) -> io::Result<()> {
        self.file.sync_data().await
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
        table.record(3, 5, v(1, 5)).await.unwrap();
        // A write that completed later but was numbered earlier does not move it back.
        table.record(4, 5, v(1, 3)).await.unwrap();
        table.record(1000, 1001, v(2, 1)).await.unwrap();
        table.sync().await.unwrap();
        assert_eq!(table.get(3, 2), vec![v(1, 5), v(1, 5)]);
        drop(table);

        let again = open(dir.path()).await;
        assert_eq!(again.get(2, 3), vec![WriteVersion::NONE, v(1, 5), v(1, 5)]);
        assert_eq!(again.get(1000, 1), vec![v(2, 1)]);
        assert_eq!(again.get(999, 1), vec![WriteVersion::NONE]);
    }
}
