//! Per-block checksums of one volume, cached in memory and persisted in the volume's `crc` file.
//!
//! Each 4 KiB block has an 8-byte entry, little endian: the low half is the crc32c of the block's
//! current contents, the high half the crc32c of its previous contents. A read accepts either.
//! Why two: a write updates the entry first and the data second, so a process killed between the
//! two leaves a block whose data is still the old one; accepting the previous checksum keeps
//! that block readable (NBD allows either old or new data after an unacknowledged write),
//! while any other contents, a torn block or flipped bits, still fail the check.
//!
//! The value [`CRC_ZERO`] in a slot means "reads as zeros" (never written, trimmed or zeroed).
//! The cache is filled a page (512 entries, 2 MiB of data) at a time on first use, so memory is
//! proportional to the part of the volume that was touched. It grows with its volume in place
//! ([`Segments`]): a page cached before a grow is the page used after it.

use std::sync::atomic::{AtomicU64, Ordering};

use super::segments::{SEGMENTS_MAX, Segments};
use super::{BLOCK_SIZE_BYTES, VOLUME_SIZE_MAX_BYTES};
use crate::checksum::{ZERO_BLOCK_CRC, block_crc};

/// Bytes per checksum entry in the `crc` file.
pub const ENTRY_BYTES: u64 = 8;
/// Entries per cached page (one 4 KiB page of the `crc` file).
pub const ENTRIES_PER_PAGE: u64 = 512;
/// Slot value meaning "the block reads as zeros".
pub const CRC_ZERO: u32 = 0;

const _: () = assert!(ENTRY_BYTES * ENTRIES_PER_PAGE == 4096);
// The largest volume's pages fit the segments even when the table starts at one page.
const _: () =
    assert!(VOLUME_SIZE_MAX_BYTES / BLOCK_SIZE_BYTES / ENTRIES_PER_PAGE <= 1 << (SEGMENTS_MAX - 1));

/// One block's checksum entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub current: u32,
    pub previous: u32,
}

impl Entry {
    pub const UNWRITTEN: Entry = Entry {
        current: CRC_ZERO,
        previous: CRC_ZERO,
    };

    pub fn from_u64(v: u64) -> Self {
        Entry {
            current: v as u32,
            previous: (v >> 32) as u32,
        }
    }

    pub fn to_u64(self) -> u64 {
        u64::from(self.current) | (u64::from(self.previous) << 32)
    }

    /// The entry after the block's contents become `crc`.
    pub fn advance(self, crc: u32) -> Entry {
        Entry {
            current: crc,
            previous: self.current,
        }
    }

    /// Whether `data` (one block) is contents this entry vouches for.
    pub fn accepts(self, data: &[u8]) -> bool {
        self.accepts_with(block_crc(data), data)
    }

    /// [`Entry::accepts`] for a block whose crc32c the caller computed already.
    pub fn accepts_with(self, crc: u32, data: &[u8]) -> bool {
        if crc == self.current || crc == self.previous {
            return true;
        }
        (self.current == CRC_ZERO || self.previous == CRC_ZERO) && is_zero(data)
    }
}

/// The crc32c of a block's bytes, from the value [`content_crc`] gave it: a zero block's
/// entry holds [`CRC_ZERO`] rather than its crc32c.
pub fn bytes_crc(content_crc: u32, data: &[u8]) -> u32 {
    if content_crc == CRC_ZERO && is_zero(data) {
        ZERO_BLOCK_CRC
    } else {
        content_crc
    }
}

/// The checksum a block with these contents gets in its entry.
pub fn content_crc(data: &[u8]) -> u32 {
    if is_zero(data) {
        CRC_ZERO
    } else {
        block_crc(data)
    }
}

pub fn is_zero(data: &[u8]) -> bool {
    // Compare in 8-byte words; the compiler vectorises this loop.
    let (chunks, rest) = data.as_chunks::<8>();
    chunks.iter().all(|c| u64::from_ne_bytes(*c) == 0) && rest.iter().all(|&b| b == 0)
}

type Page = [AtomicU64; ENTRIES_PER_PAGE as usize];

/// In-memory cache of a volume's checksum entries.
pub struct CrcTable {
    pages: Segments<Box<Page>>,
    blocks: AtomicU64,
}

impl CrcTable {
    pub fn new(blocks: u64) -> Self {
        CrcTable {
            pages: Segments::new(blocks.div_ceil(ENTRIES_PER_PAGE)),
            blocks: AtomicU64::new(blocks),
        }
    }

    pub fn blocks(&self) -> u64 {
        self.blocks.load(Ordering::Acquire)
    }

    /// Makes room for `blocks` blocks; the new ones are read from the `crc` file on first use.
    /// Callers serialise their grows; readers and writers of the table need not.
    pub fn grow(&self, blocks: u64) {
        assert!(blocks >= self.blocks(), "the table grows only");
        self.pages.grow(blocks.div_ceil(ENTRIES_PER_PAGE));
        self.blocks.store(blocks, Ordering::Release);
    }

    /// Pages (indices) among blocks `[start, end)` that are not cached yet.
    pub fn missing_pages(&self, start: u64, end: u64) -> impl Iterator<Item = u64> + '_ {
        let blocks = self.blocks();
        assert!(
            start <= end && end <= blocks,
            "blocks {start}..{end} of {blocks}"
        );
        let first = start / ENTRIES_PER_PAGE;
        let last = end.div_ceil(ENTRIES_PER_PAGE);
        (first..last).filter(|&p| self.pages.slot(p).get().is_none())
    }

    /// Caches page `page` from its bytes in the `crc` file. A page cached meanwhile by another
    /// task wins: it may hold updates these bytes predate.
    pub fn fill_page(&self, page: u64, bytes: &[u8]) {
        assert_eq!(bytes.len() as u64, ENTRIES_PER_PAGE * ENTRY_BYTES);
        self.pages.slot(page).get_or_init(|| {
            let entries: Page = std::array::from_fn(|i| {
                let at = i * ENTRY_BYTES as usize;
                let raw: [u8; 8] = bytes[at..at + 8].try_into().expect("8-byte entry");
                AtomicU64::new(u64::from_le_bytes(raw))
            });
            Box::new(entries)
        });
    }

    fn slot(&self, block: u64) -> &AtomicU64 {
        assert!(block < self.blocks(), "block {block} of {}", self.blocks());
        let page = self
            .pages
            .slot(block / ENTRIES_PER_PAGE)
            .get()
            .expect("crc page cached before use");
        &page[(block % ENTRIES_PER_PAGE) as usize]
    }

    pub fn get(&self, block: u64) -> Entry {
        Entry::from_u64(self.slot(block).load(Ordering::Acquire))
    }

    /// Sets entries for blocks `start..` to `crcs` and returns their on-disk bytes. The caller
    /// holds the blocks' range lock, so no other writer races this read-modify-write.
    pub fn advance(&self, start: u64, crcs: &[u32]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(crcs.len() * ENTRY_BYTES as usize);
        for (i, &crc) in crcs.iter().enumerate() {
            let slot = self.slot(start + i as u64);
            let next = Entry::from_u64(slot.load(Ordering::Acquire)).advance(crc);
            slot.store(next.to_u64(), Ordering::Release);
            bytes.extend_from_slice(&next.to_u64().to_le_bytes());
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_accepts_current_and_previous_contents_only() {
        let old = vec![1u8; 4096];
        let new = vec![2u8; 4096];
        let torn: Vec<u8> = old[..2048].iter().chain(&new[2048..]).copied().collect();
        let e = Entry::UNWRITTEN
            .advance(content_crc(&old))
            .advance(content_crc(&new));
        assert!(e.accepts(&old));
        assert!(e.accepts(&new));
        assert!(!e.accepts(&torn));
        assert!(!e.accepts(&[0u8; 4096]));
    }

    #[test]
    fn an_unwritten_block_accepts_zeros_only() {
        assert!(Entry::UNWRITTEN.accepts(&[0u8; 4096]));
        let mut flipped = [0u8; 4096];
        flipped[100] = 0x10;
        assert!(!Entry::UNWRITTEN.accepts(&flipped));
    }

    #[test]
    fn entries_round_trip_through_their_bytes() {
        let table = CrcTable::new(1000);
        for p in table.missing_pages(0, 1000).collect::<Vec<_>>() {
            table.fill_page(p, &[0u8; 4096]);
        }
        let bytes = table.advance(510, &[7, 8, 9]);
        assert_eq!(
            table.get(511),
            Entry {
                current: 8,
                previous: 0
            }
        );
        assert_eq!(
            Entry::from_u64(u64::from_le_bytes(bytes[8..16].try_into().unwrap())),
            table.get(511)
        );
        assert_eq!(table.missing_pages(0, 1000).count(), 0);
    }

    #[test]
    fn a_grown_table_keeps_its_cached_entries_and_loads_the_new_ones() {
        let table = CrcTable::new(600);
        for p in table.missing_pages(0, 600).collect::<Vec<_>>() {
            table.fill_page(p, &[0u8; 4096]);
        }
        table.advance(599, &[5]);
        table.grow(5000);
        assert_eq!(table.blocks(), 5000);
        assert_eq!(table.get(599).current, 5, "an entry cached before the grow");
        // Block 1023 shares its page with block 599: cached already, as unwritten.
        assert_eq!(table.missing_pages(0, 1024).count(), 0);
        assert_eq!(table.get(1023), Entry::UNWRITTEN);
        assert_eq!(table.missing_pages(0, 5000).count(), 10 - 2);
    }
}
