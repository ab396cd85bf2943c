//! Reading the allocated parts of a sparse table file (a replica's versions and intents): a
//! table of fixed-size entries where unwritten entries are holes that read as zeros, so only
//! what was ever written costs a read when the table is loaded.

use std::io;

use bytes::Bytes;

use super::BlockFile;

/// Largest read while loading a table, in bytes.
const LOAD_CHUNK_BYTES: u64 = 1 << 20;

/// Sizes a fresh table file to `len` bytes, or checks an existing one has that length.
pub async fn size_table(file: &dyn BlockFile, len: u64, what: &str) -> io::Result<()> {
    let have = file.file_len().await?;
    if have == 0 {
        file.set_len(len).await
    } else if have != len {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} file is {have} bytes, want {len}"),
        ))
    } else {
        Ok(())
    }
}

/// Calls `each(offset, bytes)` for the allocated parts of the first `len` bytes of `file`, in
/// order, widened to whole entries of `entry` bytes and read in chunks of whole entries.
pub async fn for_each_allocated(
    file: &dyn BlockFile,
    len: u64,
    entry: u64,
    mut each: impl FnMut(u64, Bytes) -> io::Result<()>,
) -> io::Result<()> {
    assert!(entry > 0 && len.is_multiple_of(entry), "whole entries");
    let chunk = LOAD_CHUNK_BYTES / entry * entry;
    let mut pos = 0;
    while pos < len {
        let Some(data) = file.seek_data(pos).await? else {
            break;
        };
        if data >= len {
            break;
        }
        let start = data - data % entry;
        let end = file.seek_hole(data).await?.min(len).div_ceil(entry) * entry;
        let mut at = start;
        while at < end {
            let n = (end - at).min(chunk);
            each(at, file.read_at(at, n as usize).await?)?;
            at += n;
        }
        assert!(end > pos, "table load made no progress at {pos}");
        pos = end;
    }
    Ok(())
}
