//! Reading and writing the CA's and identities' files: private keys are created with mode 0600
//! and never world-readable, even for an instant; every file is synced before it counts.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::error::IdentityError;

/// Mode of a private key file.
pub const KEY_FILE_MODE: u32 = 0o600;
/// Mode of a certificate file (public).
pub const CERT_FILE_MODE: u32 = 0o644;
/// Mode of a directory this module creates: it may hold keys.
pub const DIR_MODE: u32 = 0o700;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a whole text file; the error names it.
pub fn read(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(io_error(path))
}

/// Creates `dir` (and its parents) if missing; a directory created here is private to its owner.
pub fn create_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_error(dir))
}

/// Refuses if any of `paths` exists (checked before anything is written).
pub fn refuse_existing(paths: &[&Path], what: &'static str) -> Result<(), IdentityError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(IdentityError::Exists {
            path: p.to_path_buf(),
            what,
        }),
        None => Ok(()),
    }
}

/// Writes a file that must not exist yet, with `mode` from its creation on, and syncs it.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => IdentityError::Exists {
                path: path.to_path_buf(),
                what: "it",
            },
            _ => IdentityError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    file.write_all(contents).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// Replaces a file atomically (a reader sees the old or the new contents, never a mix): written
/// beside it under a temporary name with `mode`, synced, renamed over it, directory synced.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp: PathBuf = path.with_file_name(tmp_name);
    // A leftover from an interrupted replace is ours to discard.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&tmp)(e)),
    }
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(io_error(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Syncs a directory so that the names created in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}
