//! [`Fence`]: the highest attach epoch a replica has seen for one volume, persisted, and the
//! admission check every request of that volume passes.
//!
//! The epoch lives in a 12-byte file (`epoch u64`, `crc32c u32` of the epoch, little endian)
//! replaced atomically and durably through the disk seam ([`Disk::replace_durably`]), so a
//! simulated crash covers it like the data. A request carrying a newer epoch is answered only after that, so an
//! acknowledged request of epoch `e` means no restart of this replica can ever accept a request
//! older than `e` again.
//!
//! Admission holds a shared lock for the whole execution of a request; raising the epoch takes
//! it exclusively. So once a request of a new epoch is admitted, no request of an older epoch
//! is still running on this replica: a stale writer cannot land a write after the new one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use crate::checksum::block_crc;
use crate::io::Disk;

/// Size of the epoch file, in bytes.
const EPOCH_FILE_BYTES: usize = 12;

/// A request was refused because the replica has seen a newer attach epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fenced {
    /// The highest epoch the replica has seen.
    pub current: u64,
}

/// The persisted epoch of one volume on one replica.
pub struct Fence {
    disk: Arc<dyn Disk>,
    path: PathBuf,
    highest: AtomicU64,
    admission: Arc<RwLock<()>>,
}

/// Held while an admitted request runs.
pub type Admitted = OwnedRwLockReadGuard<()>;

impl Fence {
    /// Loads the epoch from `path` on `disk` (zero if the file does not exist yet).
    pub async fn open(disk: Arc<dyn Disk>, path: PathBuf) -> io::Result<Fence> {
        let highest = match disk.read_small(&path).await? {
            Some(bytes) => decode(&path, &bytes)?,
            None => 0,
        };
        Ok(Fence {
            disk,
            path,
            highest: AtomicU64::new(highest),
            admission: Arc::new(RwLock::new(())),
        })
    }

    pub fn highest(&self) -> u64 {
        self.highest.load(Ordering::Acquire)
    }

    /// Admits a request of `epoch`: refuses it if older than the highest seen, persists it
    /// first if newer. The returned guard must be held until the request has completed.
    pub async fn admit(&self, epoch: u64) -> Result<Result<Admitted, Fenced>, io::Error> {
        loop {
            let shared = Arc::clone(&self.admission).read_owned().await;
            let current = self.highest();
            if epoch < current {
                return Ok(Err(Fenced { current }));
            }
            if epoch == current {
                return Ok(Ok(shared));
            }
            drop(shared);
            // Newer: wait for every running request to finish, then persist.
            let _exclusive = self.admission.write().await;
            if epoch > self.highest() {
                self.disk.replace_durably(&self.path, encode(epoch)).await?;
                self.highest.store(epoch, Ordering::Release);
                tracing::info!(path = %self.path.display(), epoch, "attach epoch raised");
            }
        }
    }
}

fn decode(path: &Path, bytes: &[u8]) -> io::Result<u64> {
    let bytes: [u8; EPOCH_FILE_BYTES] = bytes.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {} bytes, want {EPOCH_FILE_BYTES}",
                path.display(),
                bytes.len()
            ),
        )
    })?;
    let mut epoch = [0u8; 8];
    epoch.copy_from_slice(&bytes[..8]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[8..]);
    if block_crc(&epoch) != u32::from_le_bytes(crc) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: checksum mismatch", path.display()),
        ));
    }
    Ok(u64::from_le_bytes(epoch))
}

fn encode(epoch: u64) -> Bytes {
    let mut bytes = [0u8; EPOCH_FILE_BYTES];
    bytes[..8].copy_from_slice(&epoch.to_le_bytes());
    let crc = block_crc(&bytes[..8]);
    bytes[8..].copy_from_slice(&crc.to_le_bytes());
    Bytes::copy_from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::portable::PortableDisk;
    use crate::io::sim::SimDisk;

    fn disk() -> Arc<dyn Disk> {
        Arc::new(PortableDisk::new("fence-test"))
    }

    #[tokio::test]
    async fn a_newer_epoch_is_persisted_and_older_ones_are_refused_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epoch");
        let fence = Fence::open(disk(), path.clone()).await.unwrap();
        assert_eq!(fence.highest(), 0);
        drop(fence.admit(3).await.unwrap().unwrap());
        drop(fence.admit(3).await.unwrap().unwrap());

        let reopened = Fence::open(disk(), path).await.unwrap();
        assert_eq!(reopened.highest(), 3);
        assert_eq!(
            reopened.admit(2).await.unwrap().err(),
            Some(Fenced { current: 3 })
        );
    }

    #[tokio::test]
    async fn a_damaged_epoch_file_is_an_error_not_epoch_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epoch");
        std::fs::write(&path, [1u8; EPOCH_FILE_BYTES]).unwrap();
        assert!(Fence::open(disk(), path).await.is_err());
    }

    #[tokio::test]
    async fn a_raised_epoch_survives_a_simulated_crash_and_a_failed_raise_admits_nothing() {
        let sim = Arc::new(SimDisk::new("fence", 7));
        let path = PathBuf::from("replica/v/epoch");
        let fence = Fence::open(sim.clone(), path.clone()).await.unwrap();
        drop(fence.admit(5).await.unwrap().unwrap());
        sim.fail_next(crate::io::sim::FaultOp::Write, 1);
        assert!(
            fence.admit(6).await.is_err(),
            "the raise could not be persisted"
        );
        assert_eq!(fence.highest(), 5);
        sim.crash();
        let reopened = Fence::open(sim.clone(), path).await.unwrap();
        assert_eq!(reopened.highest(), 5);
    }
}
