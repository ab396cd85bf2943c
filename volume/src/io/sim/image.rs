//! One view (volatile or durable) of a simulated file: a length and a sparse map of 4 KiB
//! blocks. A block that is absent is a hole; it reads as zeros and takes no space.
//!
//! Invariants, kept by every method: no block lies at or past the end of the file, and the
//! bytes of the last block past the end of the file are zero. Reads therefore never need to
//! look at the length to return zeros past it.

use std::collections::BTreeMap;

/// Allocation unit of the simulated disk, in bytes.
pub(super) const BLOCK_SIZE_BYTES: u64 = 4096;

/// Unit a write is torn at, in bytes: a sector is either fully written or not at all.
pub(super) const SECTOR_SIZE_BYTES: u64 = 512;

const _: () = assert!(BLOCK_SIZE_BYTES.is_multiple_of(SECTOR_SIZE_BYTES));

const BLOCK: usize = BLOCK_SIZE_BYTES as usize;

pub(super) type Block = Box<[u8; BLOCK]>;

fn zero_block() -> Block {
    Box::new([0; BLOCK])
}

/// The blocks `[offset, offset + len)` touches, as `(block index, byte range in the block)`.
pub(super) fn blocks_of(
    offset: u64,
    len: u64,
) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
    let end = offset + len;
    let first = offset / BLOCK_SIZE_BYTES;
    let last = if len == 0 {
        first
    } else {
        end.div_ceil(BLOCK_SIZE_BYTES)
    };
    (first..last).map(move |index| {
        let block_start = index * BLOCK_SIZE_BYTES;
        let from = offset.max(block_start) - block_start;
        let to = end.min(block_start + BLOCK_SIZE_BYTES) - block_start;
        (index, from as usize..to as usize)
    })
}

#[derive(Clone, Default)]
pub(super) struct Image {
    len: u64,
    blocks: BTreeMap<u64, Block>,
}

impl Image {
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    pub(super) fn allocated_bytes(&self) -> u64 {
        self.blocks.len() as u64 * BLOCK_SIZE_BYTES
    }

    pub(super) fn block(&self, index: u64) -> Option<&Block> {
        self.blocks.get(&index)
    }

    /// Replaces block `index` (within the file) wholesale, e.g. when a crash settles it.
    pub(super) fn put_block(&mut self, index: u64, block: Option<Block>) {
        match block {
            Some(block) => {
                self.blocks.insert(index, block);
            }
            None => {
                self.blocks.remove(&index);
            }
        }
    }

    /// Fills `buf` from `offset`; holes and the range past the end read as zeros.
    pub(super) fn read(&self, offset: u64, buf: &mut [u8]) {
        let mut at = 0;
        for (index, range) in blocks_of(offset, buf.len() as u64) {
            let out = &mut buf[at..at + range.len()];
            match self.blocks.get(&index) {
                Some(block) => out.copy_from_slice(&block[range]),
                None => out.fill(0),
            }
            at += out.len();
        }
    }

    /// Writes `data` at `offset`, allocating blocks and extending the file as needed.
    pub(super) fn write(&mut self, offset: u64, data: &[u8]) {
        let mut at = 0;
        for (index, range) in blocks_of(offset, data.len() as u64) {
            let block = self.blocks.entry(index).or_insert_with(zero_block);
            let len = range.len();
            block[range].copy_from_slice(&data[at..at + len]);
            at += len;
        }
        self.len = self.len.max(offset + data.len() as u64);
    }

    /// Deallocates whole blocks of the range and zeroes the partial ones at its edges; the
    /// length does not change.
    pub(super) fn punch(&mut self, offset: u64, len: u64) {
        let end = (offset + len).min(self.len);
        if offset >= end {
            return;
        }
        for (index, range) in blocks_of(offset, end - offset) {
            if range.len() == BLOCK {
                self.blocks.remove(&index);
            } else if let Some(block) = self.blocks.get_mut(&index) {
                block[range].fill(0);
            }
        }
    }

    /// Zeroes the range keeping it allocated; the length does not change.
    pub(super) fn zero(&mut self, offset: u64, len: u64) {
        let end = (offset + len).min(self.len);
        if offset >= end {
            return;
        }
        for (index, range) in blocks_of(offset, end - offset) {
            self.blocks.entry(index).or_insert_with(zero_block)[range].fill(0);
        }
    }

    /// Sets the length: growing allocates nothing, shrinking frees the blocks past the end and
    /// zeroes the tail of the new last block.
    pub(super) fn set_len(&mut self, len: u64) {
        if len < self.len {
            let first_gone = len.div_ceil(BLOCK_SIZE_BYTES);
            self.blocks.split_off(&first_gone);
            let tail = (len % BLOCK_SIZE_BYTES) as usize;
            if tail != 0
                && let Some(block) = self.blocks.get_mut(&(len / BLOCK_SIZE_BYTES))
            {
                block[tail..].fill(0);
            }
        }
        self.len = len;
    }

    /// Flips bit `bit` of the byte at `offset` (which must lie within the file), allocating
    /// the block if it was a hole.
    pub(super) fn flip_bit(&mut self, offset: u64, bit: u8) {
        assert!(offset < self.len && bit < 8);
        let block = self
            .blocks
            .entry(offset / BLOCK_SIZE_BYTES)
            .or_insert_with(zero_block);
        block[(offset % BLOCK_SIZE_BYTES) as usize] ^= 1 << bit;
    }

    /// SEEK_DATA at block granularity.
    pub(super) fn seek_data(&self, offset: u64) -> Option<u64> {
        if offset >= self.len {
            return None;
        }
        let (&index, _) = self.blocks.range(offset / BLOCK_SIZE_BYTES..).next()?;
        let found = (index * BLOCK_SIZE_BYTES).max(offset);
        (found < self.len).then_some(found)
    }

    /// SEEK_HOLE at block granularity; the end of the file is a hole, and so is everything
    /// past it.
    pub(super) fn seek_hole(&self, offset: u64) -> u64 {
        if offset >= self.len {
            return offset;
        }
        let mut index = offset / BLOCK_SIZE_BYTES;
        while self.blocks.contains_key(&index) {
            index += 1;
        }
        (index * BLOCK_SIZE_BYTES).max(offset).min(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_splits_a_range_at_block_boundaries() {
        let pieces: Vec<_> = blocks_of(4000, 5000).collect();
        assert_eq!(pieces, vec![(0, 4000..4096), (1, 0..4096), (2, 0..808)]);
        assert_eq!(blocks_of(8192, 0).count(), 0);
    }

    #[test]
    fn shrinking_clears_the_tail_so_growing_again_reads_zeros() {
        let mut image = Image::default();
        image.write(0, &[7; 10_000]);
        image.set_len(5000);
        image.set_len(10_000);
        let mut buf = vec![0xAA; 10_000];
        image.read(0, &mut buf);
        assert!(buf[..5000].iter().all(|&b| b == 7));
        assert!(buf[5000..].iter().all(|&b| b == 0));
        assert_eq!(image.allocated_bytes(), 2 * BLOCK_SIZE_BYTES);
    }
}
