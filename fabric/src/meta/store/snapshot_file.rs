//! One snapshot on disk, replaced atomically: `MAGIC`, the metadata's length (u32 LE), the
//! metadata (JSON), then the snapshot bytes. Written to a temporary file, fsynced, renamed over
//! the old one, and the directory fsynced, so a crash leaves either the old or the new snapshot.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use super::decode;
use crate::meta::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"FSNAP001";
/// Largest snapshot metadata, in bytes.
const META_BYTES_MAX: usize = 1 << 20;

/// Writes `meta` and `data` to `path` atomically and durably. Blocking.
pub fn write(path: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
    let meta_bytes = serde_json::to_vec(meta).map_err(io::Error::other)?;
    assert!(
        meta_bytes.len() <= META_BYTES_MAX,
        "snapshot metadata is small"
    );
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&(meta_bytes.len() as u32).to_le_bytes())?;
        f.write_all(&meta_bytes)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads the snapshot at `path`, or `None` if there is none. Blocking.
pub fn read(path: &Path) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot {}: {why}", path.display()),
        )
    };
    if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("bad magic"));
    }
    let len_at = MAGIC.len();
    let meta_len =
        u32::from_le_bytes(bytes[len_at..len_at + 4].try_into().expect("4 bytes")) as usize;
    let meta_at = len_at + 4;
    if meta_len > META_BYTES_MAX || bytes.len() < meta_at + meta_len {
        return Err(bad("truncated metadata"));
    }
    let meta: SnapshotMeta = decode("snapshot metadata", &bytes[meta_at..meta_at + meta_len])?;
    let data = bytes.split_off(meta_at + meta_len);
    Ok(Some((meta, data)))
}
