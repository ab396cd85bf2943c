//! The capacity line: every disk owns ranges of one number line, as long in total as its
//! weight. A PG's draws are points on this line (see `select`); the disk owning a point is a
//! candidate replica, a point in a hole (capacity that was removed) is simply skipped.
//!
//! The layout is part of the map and only changes locally: a new disk fills holes first and
//! then extends the line, a removed disk leaves a hole, a weight change trims or grows only that
//! disk's ranges. Because a point keeps its owner unless its own range changed, a change moves
//! only the replicas that the changed capacity must gain or lose. That is the minimal-movement
//! guarantee, and the reason positions are remembered rather than recomputed.

use crate::error::MapError;
use crate::spec::LineRange;

/// Blocks a brand-new map's line is cut into; the block size then stays fixed for life.
pub const BLOCKS_AT_GENESIS: u64 = 16;
/// Most blocks a line may grow to (each costs one draw per PG); past this, re-layout the map.
pub const BLOCKS_MAX: u64 = 4096;
/// Longest line, in weight units; keeps every sum far from overflow.
pub const LINE_UNITS_MAX: u64 = 1 << 56;
/// Entries of the coarse lookup index, which turns a binary search into a short scan.
const COARSE_INDEX_ENTRIES_MAX: u64 = 1 << 16;
/// Owner of a segment of the line that belongs to no disk.
pub const HOLE: u32 = u32::MAX;

/// The compiled line: sorted segments covering `[0, len_units)`, each owned by a disk slot or
/// a hole, plus a coarse index from position to segment.
#[derive(Clone, Debug)]
pub(crate) struct Line {
    block_units: u64,
    blocks: u32,
    len_units: u64,
    /// Sorted by start; start and owner side by side so a lookup touches one cache line.
    segments: Vec<Segment>,
    coarse: Vec<u32>,
    coarse_shift: u32,
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    start: u64,
    owner: u32,
}

impl Line {
    pub fn block_units(&self) -> u64 {
        self.block_units
    }

    pub fn blocks(&self) -> u32 {
        self.blocks
    }

    pub fn len_units(&self) -> u64 {
        self.len_units
    }

    /// Units of the line owned by no disk.
    pub fn hole_units(&self) -> u64 {
        (0..self.segments.len())
            .filter(|&i| self.segments[i].owner == HOLE)
            .map(|i| self.segment_end(i) - self.segments[i].start)
            .sum()
    }

    fn segment_end(&self, i: usize) -> u64 {
        self.segments.get(i + 1).map_or(self.len_units, |s| s.start)
    }

    /// The disk slot owning `position`, or `HOLE`.
    #[inline]
    pub fn owner_at(&self, position: u64) -> u32 {
        if position >= self.len_units {
            return HOLE;
        }
        let mut i = self.coarse[(position >> self.coarse_shift) as usize] as usize;
        while i + 1 < self.segments.len() && self.segments[i + 1].start <= position {
            i += 1;
        }
        self.segments[i].owner
    }
}

/// Lays out every disk and compiles the line.
///
/// `ranges[slot]` holds what the map already recorded for disk `slot`; whatever its weight
/// (`units[slot]`) is not yet covered is allocated here, holes first (lowest position first),
/// then at the end of the line. On success `ranges` holds each disk's complete, sorted layout.
pub(crate) fn lay_out(
    names: &[&str],
    units: &[u64],
    ranges: &mut [Vec<LineRange>],
    block_units: Option<u64>,
) -> Result<Line, MapError> {
    assert_eq!(names.len(), units.len());
    assert_eq!(names.len(), ranges.len());

    let mut placed: Vec<(LineRange, u32)> = Vec::new();
    for (slot, disk_ranges) in ranges.iter().enumerate() {
        let mut covered = 0u64;
        for &r in disk_ranges {
            if r.len == 0 {
                return Err(MapError::EmptyRange {
                    disk: names[slot].to_string(),
                    start: r.start,
                });
            }
            if r.start
                .checked_add(r.len)
                .is_none_or(|end| end > LINE_UNITS_MAX)
            {
                return Err(MapError::LineTooLong {
                    max: LINE_UNITS_MAX,
                });
            }
            covered += r.len;
            placed.push((r, slot as u32));
        }
        if covered > units[slot] {
            return Err(MapError::LayoutExceedsWeight {
                disk: names[slot].to_string(),
                layout_units: covered,
                weight_units: units[slot],
            });
        }
    }
    placed.sort_unstable_by_key(|(r, _)| r.start);
    for pair in placed.windows(2) {
        let ((a, a_slot), (b, b_slot)) = (pair[0], pair[1]);
        if a.end() > b.start {
            return Err(MapError::RangeOverlap {
                first: names[a_slot as usize].to_string(),
                second: names[b_slot as usize].to_string(),
                at: b.start,
            });
        }
    }

    allocate_missing(units, ranges, &mut placed)?;
    let len_units = placed.iter().map(|(r, _)| r.end()).max().unwrap_or(0);

    let block_units = match block_units {
        Some(0) => return Err(MapError::ZeroBlock),
        Some(b) => b,
        None => len_units.div_ceil(BLOCKS_AT_GENESIS).max(1),
    };
    let blocks = len_units.div_ceil(block_units).max(1);
    if blocks > BLOCKS_MAX {
        return Err(MapError::TooManyBlocks {
            blocks,
            max: BLOCKS_MAX,
        });
    }

    for disk_ranges in ranges.iter_mut() {
        normalize(disk_ranges);
    }
    Ok(compile(&placed, len_units, block_units, blocks as u32))
}

/// Gives every disk the units its layout lacks: holes first, then the end of the line.
fn allocate_missing(
    units: &[u64],
    ranges: &mut [Vec<LineRange>],
    placed: &mut Vec<(LineRange, u32)>,
) -> Result<(), MapError> {
    // `placed` is sorted and disjoint here.
    let mut holes = Vec::new();
    let mut cursor = 0u64;
    for (r, _) in placed.iter() {
        if r.start > cursor {
            holes.push(LineRange {
                start: cursor,
                len: r.start - cursor,
            });
        }
        cursor = r.end();
    }
    let mut end = cursor;
    let mut hole_index = 0;
    for slot in 0..units.len() {
        let covered: u64 = ranges[slot].iter().map(|r| r.len).sum();
        let mut missing = units[slot] - covered;
        while missing > 0 {
            let grant = if let Some(hole) = holes.get_mut(hole_index) {
                let take = hole.len.min(missing);
                let grant = LineRange {
                    start: hole.start,
                    len: take,
                };
                hole.start += take;
                hole.len -= take;
                if hole.len == 0 {
                    hole_index += 1;
                }
                grant
            } else {
                if end.checked_add(missing).is_none_or(|e| e > LINE_UNITS_MAX) {
                    return Err(MapError::LineTooLong {
                        max: LINE_UNITS_MAX,
                    });
                }
                let grant = LineRange {
                    start: end,
                    len: missing,
                };
                end += missing;
                grant
            };
            missing -= grant.len;
            ranges[slot].push(grant);
            placed.push((grant, slot as u32));
        }
    }
    placed.sort_unstable_by_key(|(r, _)| r.start);
    Ok(())
}

/// Sorts a disk's ranges and merges touching ones.
fn normalize(ranges: &mut Vec<LineRange>) {
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<LineRange> = Vec::with_capacity(ranges.len());
    for &r in ranges.iter() {
        match merged.last_mut() {
            Some(last) if last.end() == r.start => last.len += r.len,
            _ => merged.push(r),
        }
    }
    *ranges = merged;
}

fn compile(placed: &[(LineRange, u32)], len_units: u64, block_units: u64, blocks: u32) -> Line {
    let mut segments: Vec<Segment> = Vec::with_capacity(placed.len() * 2 + 1);
    let mut cursor = 0u64;
    for &(r, slot) in placed {
        if r.start > cursor {
            segments.push(Segment {
                start: cursor,
                owner: HOLE,
            });
        }
        // Touching ranges of one disk make one segment.
        if !(cursor == r.start && segments.last().is_some_and(|s| s.owner == slot)) {
            segments.push(Segment {
                start: r.start,
                owner: slot,
            });
        }
        cursor = r.end();
    }
    if segments.is_empty() {
        segments.push(Segment {
            start: 0,
            owner: HOLE,
        });
    }

    let mut coarse_shift = 0u32;
    while (len_units.max(1) - 1) >> coarse_shift >= COARSE_INDEX_ENTRIES_MAX {
        coarse_shift += 1;
    }
    let entries = ((len_units.max(1) - 1) >> coarse_shift) + 1;
    let mut coarse = Vec::with_capacity(entries as usize);
    let mut segment = 0usize;
    for entry in 0..entries {
        let position = entry << coarse_shift;
        while segment + 1 < segments.len() && segments[segment + 1].start <= position {
            segment += 1;
        }
        coarse.push(segment as u32);
    }
    Line {
        block_units,
        blocks,
        len_units,
        segments,
        coarse,
        coarse_shift,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, len: u64) -> LineRange {
        LineRange { start, len }
    }

    #[test]
    fn new_disks_fill_holes_before_extending_the_line() {
        let names = ["a", "b", "c"];
        let mut ranges = vec![vec![r(0, 10)], vec![r(30, 10)], vec![]];
        let line = lay_out(&names, &[10, 10, 25], &mut ranges, Some(8)).unwrap();
        // The hole [10, 30) is used first, the rest extends the line past 40.
        assert_eq!(ranges[2], vec![r(10, 20), r(40, 5)]);
        assert_eq!(line.len_units(), 45);
        assert_eq!(line.hole_units(), 0);
        assert_eq!(line.owner_at(9), 0);
        assert_eq!(line.owner_at(10), 2);
        assert_eq!(line.owner_at(35), 1);
        assert_eq!(line.owner_at(44), 2);
        assert_eq!(line.owner_at(45), HOLE);
    }

    #[test]
    fn removed_capacity_leaves_a_hole_and_keeps_other_positions() {
        let names = ["a", "c"];
        let mut ranges = vec![vec![r(0, 10)], vec![r(20, 10)]];
        let line = lay_out(&names, &[10, 10], &mut ranges, Some(8)).unwrap();
        assert_eq!(line.owner_at(15), HOLE);
        assert_eq!(line.owner_at(25), 1);
        assert_eq!(line.hole_units(), 10);
    }

    #[test]
    fn overlapping_and_oversized_layouts_name_the_disks() {
        let names = ["a", "b"];
        let mut ranges = vec![vec![r(0, 10)], vec![r(5, 10)]];
        let err = lay_out(&names, &[10, 10], &mut ranges, Some(8)).unwrap_err();
        assert!(
            matches!(err, MapError::RangeOverlap { ref first, ref second, at: 5 } if first == "a" && second == "b")
        );

        let mut ranges = vec![vec![r(0, 11)], vec![]];
        let err = lay_out(&names, &[10, 10], &mut ranges, Some(8)).unwrap_err();
        assert!(matches!(err, MapError::LayoutExceedsWeight { ref disk, .. } if disk == "a"));
    }

    #[test]
    fn genesis_picks_a_block_size_and_the_line_may_not_outgrow_the_block_limit() {
        let names = ["a"];
        let mut ranges = vec![vec![]];
        let line = lay_out(&names, &[1600], &mut ranges, None).unwrap();
        assert_eq!(line.block_units(), 100);
        assert_eq!(line.blocks(), 16);
        let mut ranges = vec![vec![]];
        let err = lay_out(&names, &[BLOCKS_MAX + 1], &mut ranges, Some(1)).unwrap_err();
        assert!(matches!(err, MapError::TooManyBlocks { .. }));
    }

    #[test]
    fn coarse_index_agrees_with_a_linear_scan() {
        let count = 5000usize;
        let names: Vec<String> = (0..count).map(|i| format!("d{i}")).collect();
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let units: Vec<u64> = (0..count as u64)
            .map(|i| 1000 + (i * 7919) % 5000)
            .collect();
        let mut ranges = vec![Vec::new(); count];
        let line = lay_out(&names, &units, &mut ranges, None).unwrap();
        let mut position = 0u64;
        for (slot, disk_ranges) in ranges.iter().enumerate() {
            assert_eq!(disk_ranges.len(), 1);
            assert_eq!(disk_ranges[0].start, position);
            for probe in [
                position,
                position + units[slot] / 2,
                position + units[slot] - 1,
            ] {
                assert_eq!(line.owner_at(probe), slot as u32);
            }
            position += units[slot];
        }
    }
}
