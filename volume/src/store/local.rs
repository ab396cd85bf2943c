//! [`LocalVolume`]: one thin, checksummed volume on a local disk, served as a [`BlockVolume`].
//!
//! Every mutation follows the same order, which is what keeps data and checksums consistent
//! across a crash of the process:
//!
//! 1. hold the affected block range (partial blocks are read, patched and rewritten whole);
//! 2. advance the blocks' checksum entries (new checksum, previous one kept) and write them to
//!    the `crc` file;
//! 3. write, punch or zero the data;
//! 4. for FUA, make both files durable before answering.
//!
//! Reads take no lock: they read the blocks, then check each against its entry. A read racing
//! two writes of the same block can see an entry two steps ahead of the data it read, so a
//! mismatch is re-checked once under the range lock before it is reported as corruption.
//!
//! A volume grows while it serves IO (see [`ExtentStore::grow_volume`](super::ExtentStore)):
//! its files are extended first, durably, then the catalog records the new size, and only then
//! does the size the range checks use move, so no IO reaches the new range before the grow is
//! durable, and none in the old range waits for it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use super::crc_table::{CRC_ZERO, CrcTable, ENTRIES_PER_PAGE, ENTRY_BYTES, bytes_crc, content_crc};
use super::range_lock::RangeLock;
use super::{BLOCK_SIZE_BYTES, CRC_OPEN, DATA_OPEN, IO_SIZE_MAX_BYTES, StoreError, StoreStats};
use crate::checksum::{append_block_crc, block_crc, concat_block_crcs};
use crate::io::{BlockFile, Disk, OpenOptions};
use crate::volume::{BlockVolume, Extent, ExtentState, VolFuture, VolumeError, ZeroFlags};

const BS: u64 = BLOCK_SIZE_BYTES;
/// Most extents one block-status answer carries; the client asks again for the rest.
pub const BLOCK_STATUS_EXTENTS_MAX: usize = 1024;

/// One local volume. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct LocalVolume {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// The size range checks use: raised by a grow once it is durable, never lowered.
    size: AtomicU64,
    data: Arc<dyn BlockFile>,
    crc: Arc<dyn BlockFile>,
    table: CrcTable,
    locks: Arc<RangeLock>,
    stats: Arc<StoreStats>,
}

/// What a scrub of a range found ([`LocalVolume::scrub`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scrubbed {
    /// Offsets of the blocks that failed their checksum, in order.
    pub bad: Vec<u64>,
    /// The crc32c of the range's contents, when no block failed.
    pub crc: Option<u32>,
}

/// What [`Inner::read_checked`] found.
struct Checked {
    bytes: Bytes,
    /// crc32c of all the bytes, when no block failed its check.
    crc: u32,
    /// The first block that failed its check.
    bad: Option<u64>,
}

/// A contiguous run of whole blocks.
#[derive(Clone, Copy, Debug)]
struct Blocks {
    start: u64,
    end: u64,
}

impl Blocks {
    fn covering(offset: u64, len: u64) -> Blocks {
        Blocks {
            start: offset / BS,
            end: (offset + len).div_ceil(BS),
        }
    }
    fn count(self) -> u64 {
        self.end - self.start
    }
    fn byte_offset(self) -> u64 {
        self.start * BS
    }
    fn byte_len(self) -> u64 {
        self.count() * BS
    }
}

impl LocalVolume {
    /// A read that also returns the crc32c of the bytes when the range is whole blocks, derived
    /// from the checksums the read verified (no extra pass over the data).
    pub async fn read_with_crc(
        &self,
        offset: u64,
        len: u32,
    ) -> Result<(Bytes, Option<u32>), VolumeError> {
        Arc::clone(&self.inner).read(offset, u64::from(len)).await
    }

    /// Checks every block of `[offset, offset + len)` against its checksum, as a scrub does:
    /// the offsets of the blocks that do not match (each one counted as a checksum error) and,
    /// when every block matched, the crc32c of the range's contents (as DIGEST returns it), so
    /// one pass over the data both checks a copy and lets it be compared with the others. Like
    /// a read, a mismatch is decided with writers of the range held off, so a block a write
    /// is changing is not taken for a bad one.
    pub async fn scrub(&self, offset: u64, len: u64) -> Result<Scrubbed, VolumeError> {
        Arc::clone(&self.inner).bad_blocks(offset, len).await
    }

    /// A write of data that must have crc32c `crc` (as a wire payload carries it): on a
    /// mismatch nothing is written and the error is [`VolumeError::PayloadCrc`].
    pub async fn write_checked(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
        crc: u32,
    ) -> Result<(), VolumeError> {
        Arc::clone(&self.inner)
            .write(offset, data, fua, Some(crc))
            .await
    }

    /// Opens the volume whose files are in `dir`; with `create`, makes them first.
    pub(crate) async fn open(
        disk: &dyn Disk,
        dir: &Path,
        name: String,
        size: u64,
        stats: Arc<StoreStats>,
        create: bool,
    ) -> Result<Self, StoreError> {
        assert!(size > 0 && size.is_multiple_of(BS));
        let data_path = dir.join("data");
        let crc_path = dir.join("crc");
        // Files are opened through the disk seam (not checked on the host file system), so the
        // simulated disk sees the same sequence as a real one.
        let open = |path: &Path, opts: OpenOptions| {
            disk.open(path, OpenOptions { create, ..opts })
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        StoreError::Corrupt(format!("volume {name}: {} is missing", path.display()))
                    }
                    _ => StoreError::io(format!("open {}", path.display()), e),
                })
        };
        let data = open(&data_path, DATA_OPEN)?;
        let crc = open(&crc_path, CRC_OPEN)?;
        let blocks = size / BS;
        let crc_len = crc_file_len(size);
        if create {
            data.set_len(size)
                .await
                .map_err(|e| StoreError::io(format!("size {}", data_path.display()), e))?;
            crc.set_len(crc_len)
                .await
                .map_err(|e| StoreError::io(format!("size {}", crc_path.display()), e))?;
            // The lengths must be durable before the catalog names the volume, or a power
            // loss could leave a catalogued volume with short files.
            for (file, path) in [(&data, &data_path), (&crc, &crc_path)] {
                file.sync_data()
                    .await
                    .map_err(|e| StoreError::io(format!("sync {}", path.display()), e))?;
            }
        } else {
            let (dl, cl) = (data.file_len().await, crc.file_len().await);
            let (dl, cl) = (
                dl.map_err(|e| StoreError::io("stat data", e))?,
                cl.map_err(|e| StoreError::io("stat crc", e))?,
            );
            if dl < size || cl < crc_len {
                return Err(StoreError::Corrupt(format!(
                    "volume {name}: data is {dl} bytes (want {size}), crc is {cl} bytes (want {crc_len})"
                )));
            }
            if dl > size || cl > crc_len {
                // A grow that stopped before the catalog recorded it: its files were extended,
                // and nothing was written past the old end, which only the catalog's record
                // would have allowed. Back to the recorded size.
                tracing::warn!(volume = %name, data_bytes = dl, size_bytes = size, "undoing a grow that did not finish");
                for (file, path, len) in [(&data, &data_path, size), (&crc, &crc_path, crc_len)] {
                    file.set_len(len)
                        .await
                        .map_err(|e| StoreError::io(format!("size {}", path.display()), e))?;
                }
            }
        }
        Ok(LocalVolume {
            inner: Arc::new(Inner {
                name,
                size: AtomicU64::new(size),
                data,
                crc,
                table: CrcTable::new(blocks),
                locks: Arc::new(RangeLock::default()),
                stats,
            }),
        })
    }

    pub fn size_bytes(&self) -> u64 {
        self.inner.size()
    }

    /// First step of a grow to `size` bytes: extends the data and crc files and makes their
    /// lengths durable. The volume keeps serving its old size; the new range is refused until
    /// [`LocalVolume::grown`]. Idempotent, so a grow that failed part-way can be retried.
    pub(crate) async fn extend_files(&self, size: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        assert!(
            size > inner.size() && size.is_multiple_of(BS),
            "a grow to {size}"
        );
        for (file, what, len) in [
            (&inner.data, "data", size),
            (&inner.crc, "crc", crc_file_len(size)),
        ] {
            file.set_len(len).await.map_err(|e| {
                StoreError::io(format!("grow the {what} file of {}", inner.name), e)
            })?;
            // Durable before the catalog names the new size, as at create.
            file.sync_data().await.map_err(|e| {
                StoreError::io(format!("sync the {what} file of {}", inner.name), e)
            })?;
        }
        Ok(())
    }

    /// Last step of a grow: the files were extended and the catalog records `size`, so the new
    /// range is served from now on (it reads as zeros until written).
    pub(crate) fn grown(&self, size: u64) {
        let inner = &self.inner;
        assert!(size > inner.size(), "a grow to {size}");
        // The table first: a request that sees the new size finds entries for its blocks.
        inner.table.grow(size / BS);
        inner.size.store(size, Ordering::Release);
    }

    pub fn checksum_errors(&self) -> u64 {
        self.inner.stats.checksum_errors()
    }
}

/// Length of the `crc` file of a volume of `size` bytes: whole pages of entries.
fn crc_file_len(size: u64) -> u64 {
    (size / BS).div_ceil(ENTRIES_PER_PAGE) * ENTRIES_PER_PAGE * ENTRY_BYTES
}

impl Inner {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Checks a read or write: within the volume and within the IO size limit.
    fn check_io(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        if len > u64::from(IO_SIZE_MAX_BYTES) {
            return Err(VolumeError::TooLarge {
                len,
                max: u64::from(IO_SIZE_MAX_BYTES),
            });
        }
        self.check_range(offset, len)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(VolumeError::OutOfRange { offset, len, size }),
        }
    }

    /// Makes sure the checksum entries of `blocks` are cached.
    async fn load_entries(&self, blocks: Blocks) -> Result<(), VolumeError> {
        let missing: Vec<u64> = self.table.missing_pages(blocks.start, blocks.end).collect();
        for page in missing {
            let bytes = self
                .crc
                .read_at(page * ENTRIES_PER_PAGE * ENTRY_BYTES, 4096)
                .await?;
            self.table.fill_page(page, &bytes);
        }
        Ok(())
    }

    /// Reads `blocks` and checks each against its entry. Returns the bytes, their crc32c
    /// (folded from the blocks' as they are checked), and the first bad block, if any.
    async fn read_checked(&self, blocks: Blocks) -> Result<Checked, VolumeError> {
        self.load_entries(blocks).await?;
        let bytes = self
            .data
            .read_at(blocks.byte_offset(), blocks.byte_len() as usize)
            .await?;
        assert_eq!(
            bytes.len() as u64,
            blocks.byte_len(),
            "backend returned a short read"
        );
        let mut crc = 0;
        for (chunk, b) in bytes.chunks(BS as usize).zip(blocks.start..) {
            let block = block_crc(chunk);
            if !self.table.get(b).accepts_with(block, chunk) {
                return Ok(Checked {
                    bytes,
                    crc,
                    bad: Some(b),
                });
            }
            crc = append_block_crc(crc, block);
        }
        Ok(Checked {
            bytes,
            crc,
            bad: None,
        })
    }

    fn corrupt(&self, block: u64) -> VolumeError {
        self.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
        let offset = block * BS;
        tracing::error!(volume = %self.name, offset, "checksum mismatch: block contents do not match their crc32c");
        VolumeError::Checksum {
            volume: self.name.clone(),
            offset,
        }
    }

    /// The bytes of `[offset, offset + len)`, every block checked, and their crc32c when the
    /// range is whole blocks (derived from the blocks' checksums, so it costs no extra pass).
    async fn read(
        self: Arc<Self>,
        offset: u64,
        len: u64,
    ) -> Result<(Bytes, Option<u32>), VolumeError> {
        self.check_io(offset, len)?;
        if len == 0 {
            return Ok((Bytes::new(), Some(block_crc(&[]))));
        }
        let blocks = Blocks::covering(offset, len);
        let mut checked = self.read_checked(blocks).await?;
        if checked.bad.is_some() {
            // Possibly a race with writes of the same blocks; decide with writers held off.
            let _guard = self.locks.lock(blocks.start, blocks.end).await;
            checked = self.read_checked(blocks).await?;
            if let Some(block) = checked.bad {
                return Err(self.corrupt(block));
            }
        }
        let skip = (offset - blocks.byte_offset()) as usize;
        if skip == 0 && len == blocks.byte_len() {
            return Ok((checked.bytes, Some(checked.crc)));
        }
        Ok((checked.bytes.slice(skip..skip + len as usize), None))
    }

    /// The blocks of `[offset, offset + len)` that fail their checksum (see
    /// [`LocalVolume::scrub`]).
    async fn bad_blocks(self: Arc<Self>, offset: u64, len: u64) -> Result<Scrubbed, VolumeError> {
        self.check_io(offset, len)?;
        if len == 0 {
            return Ok(Scrubbed {
                bad: Vec::new(),
                crc: Some(0),
            });
        }
        let blocks = Blocks::covering(offset, len);
        let first = self.read_checked(blocks).await?;
        if first.bad.is_none() {
            let whole = offset.is_multiple_of(BS) && len.is_multiple_of(BS);
            return Ok(Scrubbed {
                bad: Vec::new(),
                crc: Some(if whole {
                    first.crc
                } else {
                    let head = (offset % BS) as usize;
                    block_crc(&first.bytes[head..head + len as usize])
                }),
            });
        }
        let _guard = self.locks.lock(blocks.start, blocks.end).await;
        let mut bad = Vec::new();
        let mut rest = blocks;
        while let Some(b) = self.read_checked(rest).await?.bad {
            // Counted and logged as a read's mismatch is.
            let _ = self.corrupt(b);
            bad.push(b * BS);
            rest.start = b + 1;
            if rest.start == rest.end {
                break;
            }
        }
        Ok(Scrubbed { bad, crc: None })
    }

    /// Reads one block for a read-modify-write; the caller holds its range.
    async fn read_block_locked(&self, block: u64) -> Result<Bytes, VolumeError> {
        let checked = self
            .read_checked(Blocks {
                start: block,
                end: block + 1,
            })
            .await?;
        match checked.bad {
            Some(b) => Err(self.corrupt(b)),
            None => Ok(checked.bytes),
        }
    }

    /// Builds the whole-block image of writing `data` at `offset`, reading the partial blocks
    /// at either end. The caller holds the range.
    async fn whole_blocks(&self, offset: u64, data: Bytes) -> Result<(Blocks, Bytes), VolumeError> {
        let blocks = Blocks::covering(offset, data.len() as u64);
        let head = offset % BS;
        let tail = (offset + data.len() as u64) % BS;
        if head == 0 && tail == 0 {
            return Ok((blocks, data));
        }
        let mut image = BytesMut::zeroed(blocks.byte_len() as usize);
        if head != 0 {
            let first = self.read_block_locked(blocks.start).await?;
            image[..BS as usize].copy_from_slice(&first);
        }
        if tail != 0 && (head == 0 || blocks.count() > 1) {
            let last = self.read_block_locked(blocks.end - 1).await?;
            let at = ((blocks.count() - 1) * BS) as usize;
            image[at..].copy_from_slice(&last);
        }
        image[head as usize..head as usize + data.len()].copy_from_slice(&data);
        Ok((blocks, image.freeze()))
    }

    /// Advances and persists the entries of `blocks` to `crcs` (step 2 of every mutation).
    async fn advance_entries(&self, blocks: Blocks, crcs: &[u32]) -> Result<(), VolumeError> {
        assert_eq!(crcs.len() as u64, blocks.count());
        let bytes = self.table.advance(blocks.start, crcs);
        self.crc
            .write_at(blocks.start * ENTRY_BYTES, Bytes::from(bytes), false)
            .await?;
        Ok(())
    }

    async fn sync_both(&self) -> Result<(), VolumeError> {
        let (a, b) = tokio::join!(self.data.sync_data(), self.crc.sync_data());
        a?;
        b?;
        Ok(())
    }

    /// Writes `data` at `offset`. With `expected`, the data must have that crc32c or nothing
    /// is written ([`VolumeError::PayloadCrc`]); for whole blocks the check reuses the blocks'
    /// checksums, so it costs no extra pass over the data.
    async fn write(
        self: Arc<Self>,
        offset: u64,
        data: Bytes,
        fua: bool,
        expected: Option<u32>,
    ) -> Result<(), VolumeError> {
        let len = data.len() as u64;
        self.check_io(offset, len)?;
        // Whole blocks get their checksums before the lock; partial ones once patched.
        let aligned = offset.is_multiple_of(BS) && len.is_multiple_of(BS);
        let crcs = if aligned {
            let crcs: Vec<u32> = data.chunks(BS as usize).map(content_crc).collect();
            let of_bytes = data.chunks(BS as usize).zip(&crcs);
            if expected
                .is_some_and(|e| e != concat_block_crcs(of_bytes.map(|(b, &c)| bytes_crc(c, b))))
            {
                return Err(VolumeError::PayloadCrc);
            }
            Some(crcs)
        } else {
            if expected.is_some_and(|e| e != block_crc(&data)) {
                return Err(VolumeError::PayloadCrc);
            }
            None
        };
        if len == 0 {
            return if fua { self.sync_both().await } else { Ok(()) };
        }
        let span = Blocks::covering(offset, len);
        let _guard = self.locks.lock(span.start, span.end).await;
        self.load_entries(span).await?;
        let (blocks, image) = self.whole_blocks(offset, data).await?;
        let crcs = crcs.unwrap_or_else(|| image.chunks(BS as usize).map(content_crc).collect());
        self.advance_entries(blocks, &crcs).await?;
        if fua {
            let (a, b) = tokio::join!(
                self.data.write_at(blocks.byte_offset(), image, true),
                self.crc.sync_data()
            );
            a?;
            b?;
        } else {
            self.data
                .write_at(blocks.byte_offset(), image, false)
                .await?;
        }
        Ok(())
    }

    /// Zeroes `[offset, offset + len)`; whole blocks are punched (`punch`) or zeroed in place.
    async fn zero(
        self: Arc<Self>,
        offset: u64,
        len: u64,
        punch: bool,
        fua: bool,
    ) -> Result<(), VolumeError> {
        self.check_range(offset, len)?;
        if len == 0 {
            return if fua { self.sync_both().await } else { Ok(()) };
        }
        let span = Blocks::covering(offset, len);
        let _guard = self.locks.lock(span.start, span.end).await;
        self.load_entries(span).await?;
        let end = offset + len;
        let whole = Blocks {
            start: offset.div_ceil(BS),
            end: end / BS,
        };
        // Partial blocks at the edges are rewritten with zeros in the covered bytes.
        let mut edges = Vec::new();
        if whole.start > whole.end || whole.count() == 0 {
            edges.push((offset, len));
        } else {
            if !offset.is_multiple_of(BS) {
                edges.push((offset, whole.byte_offset() - offset));
            }
            if !end.is_multiple_of(BS) {
                edges.push((whole.end * BS, end - whole.end * BS));
            }
        }
        for (at, n) in edges {
            let (blocks, image) = self
                .whole_blocks(at, Bytes::from(vec![0u8; n as usize]))
                .await?;
            let crcs: Vec<u32> = image.chunks(BS as usize).map(content_crc).collect();
            self.advance_entries(blocks, &crcs).await?;
            self.data
                .write_at(blocks.byte_offset(), image, false)
                .await?;
        }
        if whole.start < whole.end {
            self.advance_entries(whole, &vec![CRC_ZERO; whole.count() as usize])
                .await?;
            if punch {
                self.data
                    .punch_hole(whole.byte_offset(), whole.byte_len())
                    .await?;
            } else {
                self.data
                    .zero_range(whole.byte_offset(), whole.byte_len())
                    .await?;
            }
        }
        if fua {
            self.sync_both().await?;
        }
        Ok(())
    }

    async fn block_status(
        self: Arc<Self>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Extent>, VolumeError> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size && len > 0 => {}
            _ => return Err(VolumeError::OutOfRange { offset, len, size }),
        }
        const DATA: ExtentState = ExtentState {
            hole: false,
            zero: false,
        };
        const HOLE: ExtentState = ExtentState {
            hole: true,
            zero: true,
        };
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end && out.len() < BLOCK_STATUS_EXTENTS_MAX {
            let (next, state) = match self.data.seek_data(pos).await? {
                None => (end, HOLE),
                Some(d) if d > pos => (d.min(end), HOLE),
                Some(_) => (self.data.seek_hole(pos).await?.min(end), DATA),
            };
            assert!(next > pos, "seek made no progress at {pos}");
            match out.last_mut() {
                Some(last) if last.state == state => last.len += next - pos,
                _ => out.push(Extent {
                    len: next - pos,
                    state,
                }),
            }
            pos = next;
        }
        Ok(out)
    }
}

impl BlockVolume for LocalVolume {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn max_io_bytes(&self) -> u32 {
        IO_SIZE_MAX_BYTES
    }

    fn read(&self, offset: u64, len: u32) -> VolFuture<Bytes> {
        let read = Arc::clone(&self.inner).read(offset, u64::from(len));
        Box::pin(async move { Ok(read.await?.0) })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> VolFuture<()> {
        Box::pin(Arc::clone(&self.inner).write(offset, data, fua, None))
    }

    fn flush(&self) -> VolFuture<()> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.sync_both().await })
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> VolFuture<()> {
        Box::pin(Arc::clone(&self.inner).zero(offset, len, true, fua))
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> VolFuture<()> {
        // Punching and zero-range are metadata operations here, so fast zeroing always holds.
        Box::pin(Arc::clone(&self.inner).zero(offset, len, flags.may_trim, flags.fua))
    }

    fn block_status(&self, offset: u64, len: u64) -> VolFuture<Vec<Extent>> {
        Box::pin(Arc::clone(&self.inner).block_status(offset, len))
    }
}
