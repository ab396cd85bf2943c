//! Small records replaced whole (a replica's fence epoch, the store's catalog), on a real file
//! system: the blocking halves of [`Disk::read_small`](super::Disk::read_small) and
//! [`Disk::replace_durably`](super::Disk::replace_durably) for the real backends.
//!
//! A replacement writes a temporary file beside the target, fsyncs it, renames it over the
//! target and fsyncs the directory: a crash leaves the old content or the new one, and once the
//! call returns only the new one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{IoFuture, SMALL_FILE_MAX_BYTES};

/// Reads `path` whole; `None` if it does not exist.
pub fn read(path: &Path) -> io::Result<Option<Bytes>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() > SMALL_FILE_MAX_BYTES {
        return Err(too_large(path, bytes.len()));
    }
    Ok(Some(Bytes::from(bytes)))
}

/// Replaces `path` with `data` atomically and durably.
pub fn replace(path: &Path, data: &[u8]) -> io::Result<()> {
    if data.len() > SMALL_FILE_MAX_BYTES {
        return Err(too_large(path, data.len()));
    }
    let dir = path.parent().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: no parent directory", path.display()),
        )
    })?;
    let mut tmp: PathBuf = path.to_owned();
    tmp.as_mut_os_string().push(".tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// [`read`] on the blocking pool.
pub fn read_async(path: &Path) -> IoFuture<Option<Bytes>> {
    let path = path.to_owned();
    Box::pin(async move {
        tokio::task::spawn_blocking(move || read(&path))
            .await
            .map_err(io::Error::other)?
    })
}

/// [`replace`] on the blocking pool.
pub fn replace_async(path: &Path, data: Bytes) -> IoFuture<()> {
    let path = path.to_owned();
    Box::pin(async move {
        tokio::task::spawn_blocking(move || replace(&path, &data))
            .await
            .map_err(io::Error::other)?
    })
}

pub(super) fn too_large(path: &Path, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: {len} bytes, more than a small record's {SMALL_FILE_MAX_BYTES}",
            path.display()
        ),
    )
}
