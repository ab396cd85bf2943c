//! Reading the allocated parts of a sparse table file (a replica's versions and intents): a
//! table of fixed-size entries where unwritten entries are holes that read as zeros, so only
//! what was ever written costs a read when the table is loaded.

use std::io;

use bytes::Bytes;

use super::BlockFile;

/// Largest read while loading a table, in bytes.
const LOAD_CHUNK_BYTES: u64 = 1 << 20;

/// Sizes a fresh table file to `len` bytes, or checks an existing one has that length. A
/// longer one is what a grow of its volume left when it stopped before the volume grew (a
/// table grows first, see [`grow_table`]): nothing was written past `len`, and it is cut back.
/// A shorter one is damage.
pub async fn size_table(file: &dyn BlockFile, len: u64, what: &str) -> io::Result<()> {
    let have = file.file_len().await?;
    if have == 0 || have > len {
        if have > len {
            tracing::warn!(
                what,
                have,
                len,
                "undoing the grow of a table that did not finish"
            );
        }
        file.set_len(len).await
    } else if have < len {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} file is {have} bytes, want {len}"),
        ))
    } else {
        Ok(())
    }
}

/// Grows a table file to at least `len` bytes (the new entries are holes, read as zeros) and
/// makes the length durable: a table grows before its volume does, so that it is never found
/// shorter. One already longer (an earlier grow that went further and failed) is left so.
pub async fn grow_table(file: &dyn BlockFile, len: u64) -> io::Result<()> {
    let have = file.file_len().await?;
    if len > have {
        file.set_len(len).await?;
        file.sync_data().await?;
    }
    Ok(())
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
