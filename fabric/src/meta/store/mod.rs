//! Persistence of one metadata member: the Raft log's entries in their own file (`wal.rs`, with
//! the mark of how far it is synced in `mark.rs`), the vote and committed log id in sled
//! ([`LogStore`]), the state machine in memory with durable snapshots ([`StateMachineStore`]).
//!
//! Durability contract: `save_vote` returns, and `append` signals openraft's callback, only
//! after the bytes are on disk. For the vote that is sled's `flush` followed by an `fdatasync`
//! of sled's data file, because sled's own flush ends in `sync_file_range`, which does not
//! persist the file's metadata. For entries it is one `fdatasync` of the log file. `append`
//! itself returns as soon as the entries are written (so the leader can replicate them while
//! its own sync runs); one thread syncs for every batch appended since its last sync (group
//! commit) and signals them in order.
//! Values stay far below sled's blob threshold (~128 KiB), since blob files are not fsynced.
//!
//! The state machine is rebuilt at start from the last snapshot plus the committed log, so it
//! needs no fsync of its own; a snapshot is written to its own file atomically (write, fsync,
//! rename, fsync the directory) before openraft may purge the log it covers.

mod durable;
mod log;
mod mark;
mod sm;
mod snapshot_file;
#[cfg(test)]
mod suite_test;
mod wal;

use std::io;
use std::path::Path;
use std::sync::Arc;

pub use durable::DurableDb;
pub use log::LogStore;
pub use sm::{SnapshotPayload, StateMachineStore};
pub use wal::{Corruption, Damage, LogCorrupt};

/// Largest encoded log entry, vote or committed log id, in bytes. Far below sled's blob
/// threshold, so the vote lives in sled's fsynced data file; the log file's records are held
/// to it too (`wal::RECORD_BYTES_MAX`).
pub const VALUE_BYTES_MAX: usize = 64 * 1024;

/// Opens (or creates) the log store and state machine of a member in `dir`.
pub async fn open(dir: &Path) -> io::Result<(LogStore, StateMachineStore)> {
    std::fs::create_dir_all(dir)?;
    let dir_owned = dir.to_path_buf();
    let db = tokio::task::spawn_blocking(move || DurableDb::open(&dir_owned.join("sled")))
        .await
        .map_err(io::Error::other)??;
    let db = Arc::new(db);
    let log_dir = dir.to_path_buf();
    let log = tokio::task::spawn_blocking(move || LogStore::open(db, &log_dir))
        .await
        .map_err(io::Error::other)??;
    let sm = StateMachineStore::open(&dir.join("snapshot"))?;
    Ok((log, sm))
}

pub(crate) fn encode<T: serde::Serialize>(what: &str, value: &T) -> io::Result<Vec<u8>> {
    let bytes =
        serde_json::to_vec(value).map_err(|e| io::Error::other(format!("encode {what}: {e}")))?;
    if bytes.len() > VALUE_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{what} is {} bytes, over the {VALUE_BYTES_MAX}-byte limit",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("decode {what}: {e}")))
}
