//! The node's list of local volumes: `volumes.json` in the data directory.
//!
//! It changes only when a volume is created, grown or deleted, so it is rewritten whole and
//! replaced atomically and durably through the disk seam ([`Disk::replace_durably`]). A crash
//! leaves either the old list or the new one.

use std::path::Path;

use bytes::Bytes;

use crate::io::Disk;

use serde::{Deserialize, Serialize};

use super::StoreError;

pub const CATALOG_FILE: &str = "volumes.json";
/// Version of the catalog's format; a newer one is refused rather than misread.
pub const CATALOG_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub size_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct CatalogFile {
    version: u32,
    volumes: Vec<VolumeRecord>,
}

pub async fn load(disk: &dyn Disk, dir: &Path) -> Result<Vec<VolumeRecord>, StoreError> {
    let path = dir.join(CATALOG_FILE);
    let bytes = match disk.read_small(&path).await {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(format!("read {}", path.display()), e)),
    };
    let file: CatalogFile = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    if file.version != CATALOG_VERSION {
        return Err(StoreError::Corrupt(format!(
            "{}: format version {} is not {CATALOG_VERSION}",
            path.display(),
            file.version
        )));
    }
    Ok(file.volumes)
}

pub async fn store(
    disk: &dyn Disk,
    dir: &Path,
    volumes: &[VolumeRecord],
) -> Result<(), StoreError> {
    let path = dir.join(CATALOG_FILE);
    let file = CatalogFile {
        version: CATALOG_VERSION,
        volumes: volumes.to_vec(),
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("catalog serialises");
    disk.replace_durably(&path, Bytes::from(bytes))
        .await
        .map_err(|e| StoreError::io(format!("write {}", path.display()), e))
}
