//! Checks of what the driver benchmark's tools produced, so that a broken copy fails the run
//! instead of counting as fast: a copy read back and compared with its source, and a
//! converted sparse file compared range by range, its holes still holes.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};

use super::driver::{DATA_BYTES, DATA_RANGES_MIB, MIB, SPARSE_VOLUME_BYTES};

/// How much more than the data the converted file may hold allocated: qemu-img allocates the
/// first block of an image it creates.
const OUTPUT_SLACK_BYTES: u64 = MIB;

/// Reads the whole volume back through nbdcopy and compares it with the source.
pub(crate) fn verify_copy(uri: &str, source: &Path) -> anyhow::Result<()> {
    let mut child = Command::new("nbdcopy")
        .arg(uri)
        .arg("-")
        .stdout(Stdio::piped())
        .spawn()
        .context("start nbdcopy to read the copy back")?;
    let compared = compare_stream(child.stdout.as_mut().expect("piped stdout"), source);
    if compared.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    compared.with_context(|| format!("the copy in {uri} is broken"))?;
    ensure!(status.success(), "nbdcopy {uri} - failed: {status}");
    eprintln!("the copy in {uri} reads back as the source");
    Ok(())
}

fn compare_stream(stream: &mut impl Read, source: &Path) -> anyhow::Result<()> {
    let mut file = File::open(source)?;
    let mut got = vec![0u8; MIB as usize];
    let mut want = vec![0u8; MIB as usize];
    for mib in 0..DATA_BYTES / MIB {
        stream
            .read_exact(&mut got)
            .with_context(|| format!("read back MiB {mib}"))?;
        file.read_exact(&mut want)?;
        if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
            bail!(
                "it differs from the source at byte {}",
                mib * MIB + at as u64
            );
        }
    }
    ensure!(
        stream.read(&mut got)? == 0,
        "more than {DATA_BYTES} bytes read back"
    );
    Ok(())
}

/// Checks a converted file: the volume's size, still sparse (holes not filled), each data
/// range equal to its slice of the source, and zeros in whatever else is allocated.
pub(crate) fn verify_output(output: &Path, source: &Path) -> anyhow::Result<()> {
    let out = File::open(output)?;
    let meta = out.metadata()?;
    ensure!(
        meta.len() == SPARSE_VOLUME_BYTES,
        "output of {} bytes",
        meta.len()
    );
    let allocated = meta.blocks() * 512;
    ensure!(
        allocated <= DATA_BYTES + OUTPUT_SLACK_BYTES,
        "output has {allocated} bytes allocated for {DATA_BYTES} of data: holes were written"
    );
    let src = File::open(source)?;
    let mut from = 0;
    for (offset, len) in DATA_RANGES_MIB {
        if let Some(at) = first_difference(&out, offset * MIB, Some((&src, from)), len * MIB)? {
            bail!("output differs from the source at byte {at}");
        }
        from += len * MIB;
    }
    for (start, end) in data_segments(&out)? {
        let mut at = start;
        for (offset, len) in DATA_RANGES_MIB.map(|(o, l)| (o * MIB, l * MIB)) {
            if at >= end {
                break;
            }
            if at < offset
                && let Some(bad) = first_difference(&out, at, None, end.min(offset) - at)?
            {
                bail!("output holds data at byte {bad}, outside the ranges written");
            }
            at = at.max(offset + len);
        }
        if at < end
            && let Some(bad) = first_difference(&out, at, None, end - at)?
        {
            bail!("output holds data at byte {bad}, after the ranges written");
        }
    }
    eprintln!(
        "convert output checked: {} MiB allocated, the data in place",
        allocated / MIB
    );
    Ok(())
}

/// The first byte of `len` bytes of `file` at `offset` that differs from `reference` (a file
/// and an offset in it), or from zeros without one.
fn first_difference(
    file: &File,
    offset: u64,
    reference: Option<(&File, u64)>,
    len: u64,
) -> anyhow::Result<Option<u64>> {
    let mut got = vec![0u8; MIB as usize];
    let mut want = vec![0u8; MIB as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        file.read_exact_at(&mut got[..n], offset + done)?;
        if let Some((r, from)) = reference {
            r.read_exact_at(&mut want[..n], from + done)?;
        }
        if let Some(at) = got[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
            return Ok(Some(offset + done + at as u64));
        }
        done += n as u64;
    }
    Ok(None)
}

/// The allocated ranges of a file, as (start, end), from SEEK_DATA and SEEK_HOLE.
fn data_segments(file: &File) -> anyhow::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let size = i64::try_from(file.metadata()?.len())?;
    let mut segments = Vec::new();
    let mut at = 0i64;
    while at < size {
        // SAFETY: lseek on a descriptor this function borrows; it only moves its offset.
        let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if start < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after `at`
            }
            return Err(e).context("lseek SEEK_DATA");
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        ensure!(
            end > start,
            "lseek SEEK_HOLE: {}",
            std::io::Error::last_os_error()
        );
        segments.push((start as u64, end as u64));
        at = end;
    }
    Ok(segments)
}
