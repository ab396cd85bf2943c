//! The synced mark of `raft.log`: how far the log is known to be on disk.
//!
//! The file begins with two 4 KiB slots, each holding at its start
//! `[magic and version: 8 bytes][sequence: u64 LE][synced_to: u64 LE][crc32c of the 24 bytes
//! before it: u32 LE]` and zeros after. A mark of sequence `n` goes to slot `n % 2`, so marks
//! are written to the slots in turn: a write torn by a crash damages one slot and leaves the
//! other one's mark whole. The valid mark of the highest sequence is the current one. Each slot
//! is a page of its own, so writing one never rewrites the bytes of the other.
//!
//! The magic read as a record's length is over the record limit, so a log written before the
//! marks existed (records from offset 0) cannot be taken for one with marks.

use volume::checksum::block_crc;

/// Bytes of one slot.
pub const SLOT_BYTES: usize = 4096;
/// Bytes at the start of the file that hold the two slots; records follow.
pub const MARKS_BYTES: u64 = 2 * SLOT_BYTES as u64;
/// `FRLM`, then the format's version.
const MAGIC: [u8; 8] = *b"FRLM\x01\x00\x00\x00";
/// Bytes of an encoded mark: magic, sequence, synced_to, crc.
const ENCODED_BYTES: usize = 8 + 8 + 8 + 4;

const _: () = assert!(
    u32::from_le_bytes([MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3]]) as usize
        > super::wal::RECORD_BYTES_MAX
);

/// One mark: every byte of the file before `synced_to` was made durable by an `fdatasync` that
/// returned before this mark was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub sequence: u64,
    pub synced_to: u64,
}

impl Mark {
    /// The mark that follows this one, saying `synced_to`.
    pub fn next(self, synced_to: u64) -> Mark {
        Mark {
            sequence: self.sequence + 1,
            synced_to,
        }
    }

    /// Where in the file this mark's slot starts.
    pub fn offset(self) -> u64 {
        (self.sequence % 2) * SLOT_BYTES as u64
    }

    /// The whole slot holding this mark.
    pub fn encode(self) -> Vec<u8> {
        let mut slot = vec![0; SLOT_BYTES];
        slot[..8].copy_from_slice(&MAGIC);
        slot[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        slot[16..24].copy_from_slice(&self.synced_to.to_le_bytes());
        let crc = block_crc(&slot[..24]);
        slot[24..ENCODED_BYTES].copy_from_slice(&crc.to_le_bytes());
        slot
    }

    /// The mark in `slot` (a slot's bytes, or as many as the file has), if it is whole and sits
    /// in the slot its sequence names.
    fn decode(slot: &[u8], index: usize) -> Option<Mark> {
        let bytes = slot.get(..ENCODED_BYTES)?;
        if bytes[..8] != MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
        if block_crc(&bytes[..24]) != crc {
            return None;
        }
        let mark = Mark {
            sequence: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
            synced_to: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
        };
        (mark.sequence % 2 == index as u64).then_some(mark)
    }
}

/// What the start of a log file holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// The current mark: the valid one of the highest sequence.
    Marked(Mark),
    /// A slot begins with the magic, but neither holds a whole mark.
    Damaged,
    /// Neither slot begins with the magic: a log from before the marks.
    Unmarked,
}

/// Reads the marks from the start of a log file's bytes.
pub fn read(bytes: &[u8]) -> Head {
    let slot = |i: usize| bytes.get(i * SLOT_BYTES..).unwrap_or_default();
    let found = (0..2)
        .filter_map(|i| Mark::decode(slot(i), i))
        .max_by_key(|m| m.sequence);
    match found {
        Some(mark) => Head::Marked(mark),
        None if (0..2).any(|i| slot(i).starts_with(&MAGIC)) => Head::Damaged,
        None => Head::Unmarked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(marks: &[Mark]) -> Vec<u8> {
        let mut bytes = vec![0; MARKS_BYTES as usize];
        for m in marks {
            let at = m.offset() as usize;
            bytes[at..at + SLOT_BYTES].copy_from_slice(&m.encode());
        }
        bytes
    }

    #[test]
    fn the_highest_whole_mark_is_current() {
        let a = Mark {
            sequence: 6,
            synced_to: 10_000,
        };
        let b = a.next(20_000);
        assert_eq!(read(&file(&[a, b])), Head::Marked(b));
        assert_eq!(read(&file(&[b, a])), Head::Marked(b));
        assert_eq!(read(&file(&[a])), Head::Marked(a));
    }

    #[test]
    fn a_torn_slot_leaves_the_other_mark() {
        let a = Mark {
            sequence: 3,
            synced_to: 10_000,
        };
        let b = a.next(20_000);
        let mut bytes = file(&[a, b]);
        // The write of b reached its slot only in part.
        bytes[b.offset() as usize + 17] ^= 0xff;
        assert_eq!(read(&bytes), Head::Marked(a));
        // A mark copied into the wrong slot is not taken either.
        let mut moved = file(&[a]);
        moved.copy_within(
            a.offset() as usize..a.offset() as usize + SLOT_BYTES,
            b.offset() as usize,
        );
        moved[a.offset() as usize..a.offset() as usize + SLOT_BYTES].fill(0);
        assert_eq!(read(&moved), Head::Damaged);
    }

    #[test]
    fn marks_and_their_absence_are_told_apart() {
        assert_eq!(read(&[]), Head::Unmarked);
        assert_eq!(read(&vec![0; MARKS_BYTES as usize]), Head::Unmarked);
        let a = Mark {
            sequence: 0,
            synced_to: MARKS_BYTES,
        };
        let mut bytes = file(&[a]);
        bytes[20] ^= 1;
        assert_eq!(read(&bytes), Head::Damaged);
    }
}
