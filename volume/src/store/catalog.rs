//! The node's list of local volumes: `volumes.json` in the data directory.
//!
//! It changes only when a volume is created or deleted, so it is rewritten whole and replaced
//! atomically (write a temporary file, fsync it, rename it over the old one, fsync the
//! directory). A crash leaves either the old list or the new one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

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

pub fn load(dir: &Path) -> Result<Vec<VolumeRecord>, StoreError> {
    let path = dir.join(CATALOG_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
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

pub fn store(dir: &Path, volumes: &[VolumeRecord]) -> Result<(), StoreError> {
    let path = dir.join(CATALOG_FILE);
    let tmp: PathBuf = dir.join(format!("{CATALOG_FILE}.tmp"));
    let file = CatalogFile {
        version: CATALOG_VERSION,
        volumes: volumes.to_vec(),
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("catalog serialises");
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| StoreError::io(format!("write {}", path.display()), e))
}
