//! A sled database whose `sync` really persists: sled's flush, then `fdatasync` of its data file.

use std::fs::File;
use std::io;
use std::path::Path;

/// sled plus a handle on its data file, for the fsync sled does not do.
pub struct DurableDb {
    pub db: sled::Db,
    data_file: File,
}

impl DurableDb {
    /// Opens the database in `dir`, creating it if needed. Blocking.
    pub fn open(dir: &Path) -> io::Result<DurableDb> {
        let db = sled::Config::new()
            .path(dir)
            // Our own syncs decide durability; sled's periodic flush is only a background help.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| io::Error::other(format!("open sled at {}: {e}", dir.display())))?;
        // sled keeps its log and pages in the file `db` of its directory.
        let data_file = File::open(dir.join("db"))?;
        // Make the directory entries of a fresh database durable once.
        File::open(dir)?.sync_all()?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(DurableDb { db, data_file })
    }

    /// Makes every write issued before this call durable. Blocking.
    pub fn sync(&self) -> io::Result<()> {
        self.db
            .flush()
            .map_err(|e| io::Error::other(format!("flush sled: {e}")))?;
        self.data_file.sync_data()
    }
}
