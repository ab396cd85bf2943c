//! The extent store: thin, checksummed volumes on one disk of one node.
//!
//! Layout of a data directory:
//!
//! ```text
//! LOCK                   flock'd by the one process that owns the directory
//! volumes.json           the catalog: names and sizes (see `catalog`)
//! volumes/NAME/data      the volume's bytes at their own offsets; a sparse file, O_DIRECT
//! volumes/NAME/crc       8 bytes per 4 KiB block of `data` (see `crc_table`); buffered
//! ```
//!
//! Which extents of a volume exist is the data file's own allocation map (SEEK_DATA /
//! SEEK_HOLE), so there is no second record of it to drift out of step with the data after a
//! crash. The checksum file is kept in step by ordering: an entry is updated (keeping the
//! previous checksum as well) before the data it describes is written.
//!
//! Start reading at [`ExtentStore::open`], then [`local::LocalVolume`].

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::io::{Disk, OpenOptions};
use crate::volume::BlockVolume;

pub mod catalog;
pub mod crc_table;
pub mod local;
pub mod range_lock;
mod segments;

pub use local::LocalVolume;

/// Size of a checksummed block, in bytes.
pub const BLOCK_SIZE_BYTES: u64 = 4096;
/// Largest single read or write a volume accepts, in bytes.
pub const IO_SIZE_MAX_BYTES: u32 = 32 * 1024 * 1024;
/// Longest volume name, in bytes.
pub const VOLUME_NAME_MAX_BYTES: usize = 64;
/// Largest volume, in bytes (keeps block numbers and the checksum table's page count sane).
pub const VOLUME_SIZE_MAX_BYTES: u64 = 1 << 50;

const _: () = assert!((IO_SIZE_MAX_BYTES as u64).is_multiple_of(BLOCK_SIZE_BYTES));
const _: () = assert!(IO_SIZE_MAX_BYTES as usize <= crate::io::IO_SIZE_MAX_BYTES);

/// Errors of the store's own operations (volume IO errors are [`crate::VolumeError`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid volume name {0:?}: use 1 to 64 of [A-Za-z0-9._-], not starting with '.'")]
    InvalidName(String),
    #[error(
        "invalid size {size} for volume {name}: must be a non-zero multiple of 4096 up to 1 PiB"
    )]
    InvalidSize { name: String, size: u64 },
    #[error("volume {name} already exists with size {size}")]
    AlreadyExists { name: String, size: u64 },
    #[error(
        "volume {name} is {size} bytes: shrinking it to {requested} is refused, it would drop data"
    )]
    Shrink {
        name: String,
        size: u64,
        requested: u64,
    },
    #[error("volume {0} does not exist")]
    NotFound(String),
    #[error("data directory {0} is in use by another process")]
    DataDirLocked(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt store metadata: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Counters of one store, shared by its volumes.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Blocks whose contents failed their checksum on read (after a retry).
    pub checksum_errors: AtomicU64,
}

impl StoreStats {
    pub fn checksum_errors(&self) -> u64 {
        self.checksum_errors.load(Ordering::Relaxed)
    }
}

/// All local volumes of one data directory on one disk.
pub struct ExtentStore {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    volumes: Mutex<BTreeMap<String, Arc<LocalVolume>>>,
    stats: Arc<StoreStats>,
    /// Held by a create, a grow or a delete from its check to its catalog update, so that two
    /// of them never write the catalog from the same old list.
    catalog_change: tokio::sync::Mutex<()>,
    _lock: fs::File,
}

pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= VOLUME_NAME_MAX_BYTES
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_string()))
    }
}

fn validate_size(name: &str, size: u64) -> Result<(), StoreError> {
    if size == 0 || !size.is_multiple_of(BLOCK_SIZE_BYTES) || size > VOLUME_SIZE_MAX_BYTES {
        return Err(StoreError::InvalidSize {
            name: name.to_string(),
            size,
        });
    }
    Ok(())
}

impl ExtentStore {
    /// Opens (creating if needed) the store in `dir`, taking an exclusive lock on it, and opens
    /// every volume in its catalog.
    pub async fn open(dir: &Path, disk: Arc<dyn Disk>) -> Result<Self, StoreError> {
        fs::create_dir_all(dir.join("volumes"))
            .map_err(|e| StoreError::io(format!("create {}", dir.display()), e))?;
        let lock = lock_dir(dir)?;
        let stats = Arc::new(StoreStats::default());
        let mut volumes = BTreeMap::new();
        for record in catalog::load(&*disk, dir).await? {
            let vol = LocalVolume::open(
                &*disk,
                &volume_dir(dir, &record.name),
                record.name.clone(),
                record.size_bytes,
                Arc::clone(&stats),
                false,
            )
            .await?;
            volumes.insert(record.name, Arc::new(vol));
        }
        tracing::info!(dir = %dir.display(), disk = disk.name(), volumes = volumes.len(), "extent store open");
        Ok(ExtentStore {
            dir: dir.to_path_buf(),
            disk,
            volumes: Mutex::new(volumes),
            stats,
            catalog_change: tokio::sync::Mutex::new(()),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The disk the store's files live on; the replica server keeps its per-volume records
    /// on it too.
    pub fn disk(&self) -> &Arc<dyn Disk> {
        &self.disk
    }

    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }

    pub fn volume(&self, name: &str) -> Option<Arc<LocalVolume>> {
        self.volumes.lock().expect("volumes").get(name).cloned()
    }

    pub fn volumes(&self) -> Vec<Arc<LocalVolume>> {
        self.volumes
            .lock()
            .expect("volumes")
            .values()
            .cloned()
            .collect()
    }

    /// Creates a thin volume of `size` bytes. Nothing is allocated until it is written.
    pub async fn create_volume(
        &self,
        name: &str,
        size: u64,
    ) -> Result<Arc<LocalVolume>, StoreError> {
        validate_name(name)?;
        validate_size(name, size)?;
        let _changing = self.catalog_change.lock().await;
        if let Some(existing) = self.volume(name) {
            return Err(StoreError::AlreadyExists {
                name: name.to_string(),
                size: existing.size_bytes(),
            });
        }
        let vdir = volume_dir(&self.dir, name);
        // A directory left by a create that crashed before the catalog was written holds
        // nothing anyone was told about; start it afresh.
        if vdir.exists() {
            fs::remove_dir_all(&vdir)
                .map_err(|e| StoreError::io(format!("clear {}", vdir.display()), e))?;
        }
        fs::create_dir_all(&vdir)
            .map_err(|e| StoreError::io(format!("create {}", vdir.display()), e))?;
        let vol = LocalVolume::open(
            &*self.disk,
            &vdir,
            name.to_string(),
            size,
            Arc::clone(&self.stats),
            true,
        )
        .await?;
        fsync_dir(&vdir)?;
        fsync_dir(&self.dir.join("volumes"))?;

        let mut records = records_of(self.volumes.lock().expect("volumes").values());
        records.push(catalog::VolumeRecord {
            name: name.to_string(),
            size_bytes: size,
        });
        catalog::store(&*self.disk, &self.dir, &records).await?;
        let vol = Arc::new(vol);
        self.volumes
            .lock()
            .expect("volumes")
            .insert(name.to_string(), Arc::clone(&vol));
        tracing::info!(volume = name, size_bytes = size, "volume created");
        Ok(vol)
    }

    /// Returns the volume `name`, creating it if it does not exist. An existing volume of a
    /// different size is an error: sizes never change silently.
    pub async fn ensure_volume(
        &self,
        name: &str,
        size: u64,
    ) -> Result<Arc<LocalVolume>, StoreError> {
        match self.volume(name) {
            Some(v) if v.size_bytes() == size => Ok(v),
            Some(v) => Err(StoreError::AlreadyExists {
                name: name.to_string(),
                size: v.size_bytes(),
            }),
            None => self.create_volume(name, size).await,
        }
    }

    /// Grows volume `name` to `size` bytes, keeping its data; the new range reads as zeros. IO
    /// goes on meanwhile, and the new range is refused until the grow is durable. In order:
    /// the files are extended and synced, the catalog records the new size (replaced
    /// atomically), the volume serves it. A crash before the catalog's replace leaves the old
    /// size, and the next open cuts the files back to it. Growing to the current size does
    /// nothing; a smaller size is refused ([`StoreError::Shrink`]).
    pub async fn grow_volume(&self, name: &str, size: u64) -> Result<Arc<LocalVolume>, StoreError> {
        validate_size(name, size)?;
        let _changing = self.catalog_change.lock().await;
        let vol = self
            .volume(name)
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let old = vol.size_bytes();
        if size < old {
            return Err(StoreError::Shrink {
                name: name.to_string(),
                size: old,
                requested: size,
            });
        }
        if size == old {
            return Ok(vol);
        }
        vol.extend_files(size).await?;
        let mut records = records_of(self.volumes.lock().expect("volumes").values());
        for r in records.iter_mut().filter(|r| r.name == name) {
            r.size_bytes = size;
        }
        catalog::store(&*self.disk, &self.dir, &records).await?;
        vol.grown(size);
        tracing::info!(
            volume = name,
            from_bytes = old,
            size_bytes = size,
            "volume grown"
        );
        Ok(vol)
    }

    /// Deletes a volume and its data.
    pub async fn delete_volume(&self, name: &str) -> Result<(), StoreError> {
        let _changing = self.catalog_change.lock().await;
        let records = {
            let volumes = self.volumes.lock().expect("volumes");
            if !volumes.contains_key(name) {
                return Err(StoreError::NotFound(name.to_string()));
            }
            records_of(volumes.values().filter(|v| v.name() != name))
        };
        catalog::store(&*self.disk, &self.dir, &records).await?;
        self.volumes.lock().expect("volumes").remove(name);
        let vdir = volume_dir(&self.dir, name);
        fs::remove_dir_all(&vdir)
            .map_err(|e| StoreError::io(format!("remove {}", vdir.display()), e))?;
        tracing::info!(volume = name, "volume deleted");
        Ok(())
    }
}

/// The catalog records of `volumes`.
fn records_of<'a>(
    volumes: impl Iterator<Item = &'a Arc<LocalVolume>>,
) -> Vec<catalog::VolumeRecord> {
    volumes
        .map(|v| catalog::VolumeRecord {
            name: v.name().to_string(),
            size_bytes: v.size_bytes(),
        })
        .collect()
}

fn volume_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("volumes").join(name)
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io(format!("fsync {}", dir.display()), e))
}

fn lock_dir(dir: &Path) -> Result<fs::File, StoreError> {
    let path = dir.join("LOCK");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StoreError::DataDirLocked(dir.to_path_buf()));
    }
    Ok(file)
}

/// Options for opening a volume's files, shared by `local`.
pub(crate) const DATA_OPEN: OpenOptions = OpenOptions {
    create: true,
    direct: true,
};
pub(crate) const CRC_OPEN: OpenOptions = OpenOptions {
    create: true,
    direct: false,
};
