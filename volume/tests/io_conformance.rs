//! The disk seam's conformance suite: one set of scenarios, run against every backend
//! (io_uring with its default sizes, io_uring squeezed to a queue of two and a one-buffer pool,
//! the portable backend, and the simulated disk). A backend that passes can stand in for any
//! other under the extent store.
//!
//! Real backends run in a temporary directory, which must be on a file system with O_DIRECT,
//! hole punching and SEEK_DATA / SEEK_HOLE (ext4, xfs, btrfs).
//!
//! The simulated disk's own powers (faults, crashes) are tested at the end of this file.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinSet;
use volume::io::portable::PortableDisk;
use volume::io::sim::{FaultOp, SimDisk};
use volume::io::uring::{UringConfig, UringDisk};
use volume::io::{BlockFile, DIRECT_ALIGN_BYTES, Disk, IO_SIZE_MAX_BYTES, OpenOptions};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const BLOCK: usize = DIRECT_ALIGN_BYTES as usize;

/// A disk under test and where its files live.
struct Rig {
    disk: Arc<dyn Disk>,
    /// Real backends: the directory holding the files (removed on drop).
    dir: Option<tempfile::TempDir>,
    /// The simulated backend, for its allocation count.
    sim: Option<Arc<SimDisk>>,
}

impl Rig {
    fn real(disk: Arc<dyn Disk>) -> Rig {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        Rig {
            disk,
            dir: Some(dir),
            sim: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        match &self.dir {
            Some(dir) => dir.path().join(name),
            None => PathBuf::from(name),
        }
    }

    fn open(&self, name: &str, direct: bool) -> Arc<dyn BlockFile> {
        let options = OpenOptions {
            create: true,
            direct,
        };
        self.disk
            .open(&self.path(name), options)
            .unwrap_or_else(|error| panic!("open {name}: {error}"))
    }

    /// Space the file takes on its disk (`st_blocks` for real files).
    fn allocated_bytes(&self, name: &str) -> u64 {
        let path = self.path(name);
        match &self.sim {
            Some(sim) => sim.allocated_bytes(&path).expect("simulated file exists"),
            None => std::fs::metadata(&path).expect("stat").blocks() * 512,
        }
    }
}

mod rigs {
    use super::*;

    pub fn uring() -> Rig {
        Rig::real(Arc::new(
            UringDisk::new("conformance").expect("start io_uring"),
        ))
    }

    /// Every limit at its smallest, so that queueing, admission and the fallback buffers
    /// carry almost every request.
    pub fn uring_tiny() -> Rig {
        let config = UringConfig {
            queue_depth_max: 2,
            requests_queued_max: 4,
            files_open_max: 4,
            pool_buffer_count: 1,
            pool_buffer_size_bytes: 4096,
        };
        Rig::real(Arc::new(
            UringDisk::with_config("tiny", config).expect("start io_uring"),
        ))
    }

    pub fn portable() -> Rig {
        Rig::real(Arc::new(PortableDisk::new("conformance")))
    }

    pub fn sim() -> Rig {
        let sim = Arc::new(SimDisk::new("conformance", 0x5EED));
        Rig {
            disk: Arc::clone(&sim) as Arc<dyn Disk>,
            dir: None,
            sim: Some(sim),
        }
    }
}

/// Deterministic bytes, different for every `seed` and in every 4 KiB block, so a block read
/// from the wrong place never matches. Built from one random block per seed, stamped with the
/// block's index, because byte-at-a-time generation is slow in debug builds.
fn pattern(seed: u64, len: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut base = Vec::with_capacity(BLOCK);
    while base.len() < BLOCK {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        base.extend_from_slice(&state.to_le_bytes());
    }
    let mut out = vec![0; len.next_multiple_of(BLOCK)];
    for (index, block) in out.chunks_exact_mut(BLOCK).enumerate() {
        block.copy_from_slice(&base);
        block[..8].copy_from_slice(&(index as u64 + 1).to_le_bytes());
        block[8..16].copy_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Compares without printing megabytes: reports the first differing offset.
#[track_caller]
fn assert_bytes(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    if actual == expected {
        return;
    }
    let at = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(0);
    panic!(
        "{what}: first difference at byte {at}: {} != {}",
        actual[at], expected[at]
    );
}

#[track_caller]
fn assert_zeros(actual: &[u8], what: &str) {
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    if actual
        .chunks(BLOCK)
        .all(|chunk| chunk == &ZEROS[..chunk.len()])
    {
        return;
    }
    let at = actual.iter().position(|&b| b != 0).unwrap_or(0);
    panic!("{what}: byte {at} is {} instead of zero", actual[at]);
}

#[track_caller]
fn assert_invalid_input<T: std::fmt::Debug>(result: io::Result<T>, what: &str) {
    match result {
        Err(error) => assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{what}: {error}"),
        Ok(value) => panic!("{what}: accepted ({value:?}) instead of InvalidInput"),
    }
}

/// The scenarios every backend must pass.
mod scenarios {
    use super::*;

    pub async fn write_then_read_back_at_aligned_offsets_and_sizes(rig: &Rig) {
        // Sizes around the default pool buffer (128 KiB) and the tiny one (4 KiB), and large.
        let cases = [
            (0, BLOCK),
            (BLOCK, 2 * BLOCK),
            (MIB, 64 * KIB),
            (2 * MIB, 128 * KIB),
            (3 * MIB, 132 * KIB),
            (5 * MIB, 8 * MIB),
        ];
        for direct in [false, true] {
            let name = format!("roundtrip-direct-{direct}");
            let file = rig.open(&name, direct);
            for (seed, &(offset, len)) in cases.iter().enumerate() {
                file.write_at(offset as u64, pattern(seed as u64, len), false)
                    .await
                    .expect("write");
            }
            for (seed, &(offset, len)) in cases.iter().enumerate() {
                let data = file.read_at(offset as u64, len).await.expect("read");
                assert_bytes(
                    &data,
                    &pattern(seed as u64, len),
                    &format!("{name} at {offset} of {len}"),
                );
            }
            assert_eq!(file.file_len().await.expect("len"), (13 * MIB) as u64);
        }
    }

    pub async fn buffered_files_accept_unaligned_requests(rig: &Rig) {
        let file = rig.open("unaligned", false);
        file.write_at(1234, pattern(1, 5000), false)
            .await
            .expect("write");
        file.write_at(7, pattern(2, 1), false)
            .await
            .expect("write one byte");
        assert_eq!(file.file_len().await.expect("len"), 6234);
        let data = file.read_at(0, 8192).await.expect("read");
        assert_zeros(&data[..7], "before the byte");
        assert_bytes(&data[7..8], &pattern(2, 1), "the byte");
        assert_zeros(&data[8..1234], "between");
        assert_bytes(&data[1234..6234], &pattern(1, 5000), "unaligned write");
        assert_zeros(&data[6234..], "past the end");
    }

    pub async fn many_requests_in_flight_are_each_answered_correctly(rig: &Rig) {
        const REQUESTS: usize = 300;
        // Sizes cycle through 4 KiB .. 60 KiB, with every 16th large enough to miss the pool.
        let size = |i: usize| {
            if i.is_multiple_of(16) {
                256 * KIB
            } else {
                BLOCK * (1 + i % 15)
            }
        };
        let offset = |i: usize| (i * 256 * KIB) as u64;
        let file = rig.open("many", true);

        let mut writes = JoinSet::new();
        for i in 0..REQUESTS {
            let write = file.write_at(offset(i), pattern(i as u64, size(i)), i % 7 == 0);
            writes.spawn(async move { (i, write.await) });
        }
        while let Some(joined) = writes.join_next().await {
            let (i, result) = joined.expect("write task");
            result.unwrap_or_else(|error| panic!("write {i}: {error}"));
        }

        let mut reads = JoinSet::new();
        for i in (0..REQUESTS).rev() {
            let read = file.read_at(offset(i), size(i));
            reads.spawn(async move { (i, read.await) });
        }
        let mut answered = 0;
        while let Some(joined) = reads.join_next().await {
            let (i, result) = joined.expect("read task");
            let data = result.unwrap_or_else(|error| panic!("read {i}: {error}"));
            assert_bytes(&data, &pattern(i as u64, size(i)), &format!("read {i}"));
            answered += 1;
        }
        assert_eq!(answered, REQUESTS);
    }

    pub async fn holes_read_as_zeros_and_take_no_space(rig: &Rig) {
        let file = rig.open("holes", true);
        file.set_len((16 * MIB) as u64).await.expect("set_len");
        file.write_at((8 * MIB) as u64, pattern(3, BLOCK), false)
            .await
            .expect("write");

        let around = file
            .read_at((8 * MIB - 2 * BLOCK) as u64, 5 * BLOCK)
            .await
            .expect("read");
        assert_zeros(&around[..2 * BLOCK], "hole before");
        assert_bytes(&around[2 * BLOCK..3 * BLOCK], &pattern(3, BLOCK), "data");
        assert_zeros(&around[3 * BLOCK..], "hole after");
        assert_zeros(
            &file.read_at(0, MIB).await.expect("read hole"),
            "leading hole",
        );

        file.sync_data().await.expect("sync");
        assert!(
            rig.allocated_bytes("holes") < MIB as u64,
            "a 16 MiB file with one block is thin"
        );
    }

    pub async fn reads_past_the_end_are_zero_filled(rig: &Rig) {
        for direct in [false, true] {
            let name = format!("eof-direct-{direct}");
            let file = rig.open(&name, direct);
            file.write_at(0, pattern(4, 2 * BLOCK), false)
                .await
                .expect("write");
            // An end that is not block aligned: direct reads then stop mid-block.
            file.set_len(6000).await.expect("set_len");

            let whole = file
                .read_at(0, 2 * BLOCK)
                .await
                .expect("read across the end");
            assert_bytes(&whole[..6000], &pattern(4, 6000), &format!("{name}: data"));
            assert_zeros(&whole[6000..], &format!("{name}: past the end"));

            let tail = file
                .read_at(BLOCK as u64, 2 * BLOCK)
                .await
                .expect("read from the last block");
            assert_bytes(
                &tail[..6000 - BLOCK],
                &pattern(4, 6000)[BLOCK..],
                &format!("{name}: tail"),
            );
            assert_zeros(
                &tail[6000 - BLOCK..],
                &format!("{name}: past the end of the tail"),
            );

            let beyond = file
                .read_at((64 * BLOCK) as u64, 4 * BLOCK)
                .await
                .expect("read past the end");
            assert_zeros(&beyond, &format!("{name}: wholly past the end"));
            assert_eq!(
                file.file_len().await.expect("len"),
                6000,
                "{name}: reads do not extend"
            );
        }
    }

    pub async fn punch_hole_frees_space_and_leaves_a_hole(rig: &Rig) {
        let file = rig.open("punch", true);
        let data = pattern(5, MIB);
        file.write_at(0, data.clone(), false).await.expect("write");
        file.sync_data().await.expect("sync");
        let before = rig.allocated_bytes("punch");
        assert!(
            before >= MIB as u64,
            "1 MiB written takes 1 MiB, got {before}"
        );

        let (hole_start, hole_end) = (256 * KIB, 768 * KIB);
        file.punch_hole(hole_start as u64, (hole_end - hole_start) as u64)
            .await
            .expect("punch");
        file.sync_data().await.expect("sync");

        let after = file.read_at(0, MIB).await.expect("read");
        assert_bytes(&after[..hole_start], &data[..hole_start], "before the hole");
        assert_zeros(&after[hole_start..hole_end], "the hole");
        assert_bytes(&after[hole_end..], &data[hole_end..], "after the hole");
        assert_eq!(
            file.file_len().await.expect("len"),
            MIB as u64,
            "punching keeps the length"
        );

        assert_eq!(file.seek_data(0).await.expect("seek_data"), Some(0));
        assert_eq!(
            file.seek_hole(0).await.expect("seek_hole"),
            hole_start as u64
        );
        assert_eq!(
            file.seek_data(hole_start as u64).await.expect("seek_data"),
            Some(hole_end as u64)
        );
        assert_eq!(
            file.seek_hole(hole_end as u64).await.expect("seek_hole"),
            MIB as u64
        );

        let freed = before - rig.allocated_bytes("punch");
        assert!(
            freed >= (hole_end - hole_start) as u64,
            "punching 512 KiB freed only {freed} bytes"
        );
    }

    pub async fn zero_range_reads_zeros_and_keeps_the_length(rig: &Rig) {
        let file = rig.open("zero", true);
        let data = pattern(6, 64 * KIB);
        file.write_at(0, data.clone(), false).await.expect("write");
        file.zero_range(BLOCK as u64, 2 * BLOCK as u64)
            .await
            .expect("zero_range");
        // Past the end: the length must not move.
        file.zero_range(64 * KIB as u64, 64 * KIB as u64)
            .await
            .expect("zero_range past the end");

        let after = file.read_at(0, 128 * KIB).await.expect("read");
        assert_bytes(&after[..BLOCK], &data[..BLOCK], "before the zeroed range");
        assert_zeros(&after[BLOCK..3 * BLOCK], "zeroed range");
        assert_bytes(
            &after[3 * BLOCK..64 * KIB],
            &data[3 * BLOCK..],
            "after the zeroed range",
        );
        assert_zeros(&after[64 * KIB..], "past the end");
        assert_eq!(file.file_len().await.expect("len"), 64 * KIB as u64);
    }

    pub async fn set_len_grows_thinly_and_shrinks(rig: &Rig) {
        let size = (64 * MIB) as u64;
        let file = rig.open("resize", true);
        assert_eq!(
            file.file_len().await.expect("len"),
            0,
            "a new file is empty"
        );
        file.set_len(size).await.expect("grow");
        assert_eq!(file.file_len().await.expect("len"), size);
        assert_eq!(
            file.seek_data(0).await.expect("seek_data"),
            None,
            "growing writes no data"
        );
        assert!(
            rig.allocated_bytes("resize") < MIB as u64,
            "growing allocates nothing"
        );

        file.write_at(size - BLOCK as u64, pattern(7, BLOCK), false)
            .await
            .expect("write the last block");
        assert_eq!(
            file.file_len().await.expect("len"),
            size,
            "a write inside the file keeps its length"
        );

        file.set_len(BLOCK as u64).await.expect("shrink");
        assert_eq!(file.file_len().await.expect("len"), BLOCK as u64);
        file.set_len(size).await.expect("grow again");
        let last = file
            .read_at(size - BLOCK as u64, BLOCK)
            .await
            .expect("read the last block");
        assert_zeros(&last, "data cut off by shrinking does not come back");
    }

    pub async fn durable_writes_and_sync_data_read_back(rig: &Rig) {
        let file = rig.open("durable", true);
        file.write_at(0, pattern(8, BLOCK), true)
            .await
            .expect("durable write");
        file.write_at(BLOCK as u64, pattern(9, 64 * KIB), false)
            .await
            .expect("write");
        file.sync_data().await.expect("sync_data");
        // A durable write that extends the file, and one that is larger than a pool buffer.
        file.write_at(MIB as u64, pattern(10, 512 * KIB), true)
            .await
            .expect("durable extending write");
        file.sync_data()
            .await
            .expect("sync_data with nothing dirty");

        assert_bytes(
            &file.read_at(0, BLOCK).await.expect("read"),
            &pattern(8, BLOCK),
            "durable",
        );
        assert_bytes(
            &file.read_at(BLOCK as u64, 64 * KIB).await.expect("read"),
            &pattern(9, 64 * KIB),
            "synced",
        );
        let extended = file.read_at(MIB as u64, 512 * KIB).await.expect("read");
        assert_bytes(&extended, &pattern(10, 512 * KIB), "durable extending");
        assert_eq!(
            file.file_len().await.expect("len"),
            (MIB + 512 * KIB) as u64
        );
    }

    pub async fn misaligned_direct_io_is_rejected(rig: &Rig) {
        let file = rig.open("misaligned", true);
        assert_invalid_input(
            file.read_at(512, BLOCK).await,
            "read at an unaligned offset",
        );
        assert_invalid_input(file.read_at(0, 100).await, "read of an unaligned length");
        assert_invalid_input(
            file.write_at(0, pattern(11, 100), false).await,
            "write of an unaligned length",
        );
        assert_invalid_input(
            file.write_at(BLOCK as u64 + 1, pattern(11, BLOCK), true)
                .await,
            "write at an unaligned offset",
        );
        assert_eq!(
            file.file_len().await.expect("len"),
            0,
            "rejected writes change nothing"
        );
    }

    pub async fn oversized_requests_are_rejected_and_the_largest_is_served(rig: &Rig) {
        let file = rig.open("oversized", true);
        let too_big = IO_SIZE_MAX_BYTES + BLOCK;
        assert_invalid_input(file.read_at(0, too_big).await, "read above io_size_max");
        assert_invalid_input(
            file.write_at(0, pattern(12, too_big), false).await,
            "write above io_size_max",
        );
        assert_invalid_input(
            file.read_at(u64::MAX - DIRECT_ALIGN_BYTES + 1, BLOCK).await,
            "read past the largest offset",
        );

        let largest = pattern(13, IO_SIZE_MAX_BYTES);
        file.write_at(0, largest.clone(), false)
            .await
            .expect("write of io_size_max");
        let data = file
            .read_at(0, IO_SIZE_MAX_BYTES)
            .await
            .expect("read of io_size_max");
        assert_bytes(&data, &largest, "io_size_max round trip");
    }

    pub async fn seeks_at_and_past_the_end(rig: &Rig) {
        let file = rig.open("seek", true);
        assert_eq!(
            file.seek_data(0).await.expect("seek_data"),
            None,
            "an empty file has no data"
        );
        assert_eq!(
            file.seek_hole(0).await.expect("seek_hole"),
            0,
            "an empty file ends at once"
        );

        file.write_at(0, pattern(14, 2 * BLOCK), false)
            .await
            .expect("write");
        let end = 2 * BLOCK as u64;
        assert_eq!(file.seek_data(0).await.expect("seek_data"), Some(0));
        assert_eq!(
            file.seek_data(BLOCK as u64).await.expect("seek_data"),
            Some(BLOCK as u64)
        );
        assert_eq!(
            file.seek_hole(BLOCK as u64).await.expect("seek_hole"),
            end,
            "the end counts as a hole"
        );
        assert_eq!(
            file.seek_data(end).await.expect("seek_data at the end"),
            None
        );
        assert_eq!(
            file.seek_data(end + MIB as u64)
                .await
                .expect("seek_data past the end"),
            None
        );
        assert_eq!(
            file.seek_hole(end).await.expect("seek_hole at the end"),
            end
        );
        assert_eq!(
            file.seek_hole(end + 100)
                .await
                .expect("seek_hole past the end"),
            end + 100
        );
    }

    pub async fn files_open_create_and_persist_across_handles(rig: &Rig) {
        let missing = rig.disk.open(
            &rig.path("missing"),
            OpenOptions {
                create: false,
                direct: false,
            },
        );
        match missing {
            Err(error) => assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}"),
            Ok(_) => panic!("opening a missing file without create succeeded"),
        }

        let file = rig.open("persist", true);
        file.write_at(0, pattern(15, BLOCK), false)
            .await
            .expect("write");
        drop(file);
        let again = rig.disk.open(
            &rig.path("persist"),
            OpenOptions {
                create: false,
                direct: false,
            },
        );
        let again = again.expect("reopen an existing file");
        assert_bytes(
            &again.read_at(0, BLOCK).await.expect("read"),
            &pattern(15, BLOCK),
            "after reopening",
        );
        assert!(!rig.disk.name().is_empty());
    }

    pub async fn abandoned_requests_do_not_disturb_later_ones(rig: &Rig) {
        let file = rig.open("abandoned", true);
        file.write_at(0, pattern(17, 64 * KIB), false)
            .await
            .expect("write");
        // Callers that give up (timeouts, cancelled tasks) drop their futures mid-flight.
        let mut abandoned = JoinSet::new();
        for i in 0..64u64 {
            let read = file.read_at((i % 16) * BLOCK as u64, BLOCK);
            abandoned.spawn(async move { read.await.map(drop) });
            let at = (64 + i) * BLOCK as u64;
            abandoned.spawn(file.write_at(at, pattern(i, BLOCK), i % 2 == 0));
        }
        abandoned.abort_all();
        while abandoned.join_next().await.is_some() {}

        file.write_at(MIB as u64, pattern(18, 8 * BLOCK), true)
            .await
            .expect("write after");
        let data = file
            .read_at(MIB as u64, 8 * BLOCK)
            .await
            .expect("read after");
        assert_bytes(
            &data,
            &pattern(18, 8 * BLOCK),
            "IO after abandoned requests",
        );
        let first = file.read_at(0, 64 * KIB).await.expect("read");
        assert_bytes(&first, &pattern(17, 64 * KIB), "data under abandoned reads");
    }

    pub async fn empty_requests_do_nothing(rig: &Rig) {
        let file = rig.open("empty", true);
        file.write_at(0, pattern(16, BLOCK), false)
            .await
            .expect("write");
        assert!(
            file.read_at(BLOCK as u64, 0)
                .await
                .expect("empty read")
                .is_empty()
        );
        file.write_at(2 * BLOCK as u64, Bytes::new(), true)
            .await
            .expect("empty write");
        file.punch_hole(0, 0).await.expect("empty punch");
        file.zero_range(0, 0).await.expect("empty zero");
        assert_eq!(
            file.file_len().await.expect("len"),
            BLOCK as u64,
            "empty requests keep the length"
        );
        assert_bytes(
            &file.read_at(0, BLOCK).await.expect("read"),
            &pattern(16, BLOCK),
            "data untouched",
        );
    }
}

macro_rules! scenario {
    ($rig:path, $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let rig = $rig();
            crate::scenarios::$name(&rig).await;
        }
    };
}

/// Runs every scenario against the backend built by `$rig`.
macro_rules! conformance {
    ($backend:ident, $rig:path) => {
        mod $backend {
            scenario!($rig, write_then_read_back_at_aligned_offsets_and_sizes);
            scenario!($rig, buffered_files_accept_unaligned_requests);
            scenario!($rig, many_requests_in_flight_are_each_answered_correctly);
            scenario!($rig, holes_read_as_zeros_and_take_no_space);
            scenario!($rig, reads_past_the_end_are_zero_filled);
            scenario!($rig, punch_hole_frees_space_and_leaves_a_hole);
            scenario!($rig, zero_range_reads_zeros_and_keeps_the_length);
            scenario!($rig, set_len_grows_thinly_and_shrinks);
            scenario!($rig, durable_writes_and_sync_data_read_back);
            scenario!($rig, misaligned_direct_io_is_rejected);
            scenario!(
                $rig,
                oversized_requests_are_rejected_and_the_largest_is_served
            );
            scenario!($rig, seeks_at_and_past_the_end);
            scenario!($rig, files_open_create_and_persist_across_handles);
            scenario!($rig, abandoned_requests_do_not_disturb_later_ones);
            scenario!($rig, empty_requests_do_nothing);
        }
    };
}

conformance!(uring, crate::rigs::uring);
conformance!(uring_tiny, crate::rigs::uring_tiny);
conformance!(portable, crate::rigs::portable);
conformance!(sim, crate::rigs::sim);

/// What only the io_uring backend promises.
mod uring_engine {
    use super::*;

    #[tokio::test]
    async fn ring_closes_once_the_disk_and_its_files_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = UringDisk::new("exit-probe").expect("start io_uring");
        let ring = disk.ring_probe();
        assert!(ring.is_open(), "the disk has its ring");

        let file = disk
            .open(
                &dir.path().join("f"),
                OpenOptions {
                    create: true,
                    direct: true,
                },
            )
            .expect("open");
        let pending = file.write_at(0, pattern(20, BLOCK), true);
        drop(disk);
        pending
            .await
            .expect("a request issued before the disk was dropped is served");
        assert!(ring.is_open(), "an open file keeps the ring");
        drop(file);

        for _ in 0..500 {
            if !ring.is_open() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("ring still open 5 s after its disk and files were dropped");
    }

    #[tokio::test]
    async fn opening_past_files_open_max_fails_and_closing_frees_a_slot() {
        let config = UringConfig {
            files_open_max: 2,
            ..UringConfig::default()
        };
        let rig = Rig::real(Arc::new(
            UringDisk::with_config("slots", config).expect("start io_uring"),
        ));
        let first = rig.open("first", false);
        let _second = rig.open("second", false);
        let third = rig.disk.open(
            &rig.path("third"),
            OpenOptions {
                create: true,
                direct: false,
            },
        );
        assert!(third.is_err(), "a third file on a two-file disk");

        first
            .write_at(0, pattern(21, BLOCK), false)
            .await
            .expect("write");
        drop(first);
        let third = rig.open("third", false);
        third
            .write_at(0, pattern(22, BLOCK), false)
            .await
            .expect("write to the reused slot");
        let first = rig.disk.open(
            &rig.path("first"),
            OpenOptions {
                create: false,
                direct: false,
            },
        );
        assert!(first.is_err(), "still two files open");
        drop(third);
        let first = rig.open("first", false);
        assert_bytes(
            &first.read_at(0, BLOCK).await.expect("read"),
            &pattern(21, BLOCK),
            "slot reuse kept files apart",
        );
    }

    #[tokio::test]
    async fn small_io_uses_registered_buffers_and_large_io_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = UringDisk::new("buffers").expect("start io_uring");
        let file = disk
            .open(
                &dir.path().join("f"),
                OpenOptions {
                    create: true,
                    direct: true,
                },
            )
            .expect("open");
        file.write_at(0, pattern(23, BLOCK), false)
            .await
            .expect("small write");
        file.read_at(0, BLOCK).await.expect("small read");
        let stats = disk.stats();
        assert_eq!(
            stats.pool_buffer_ios, 2,
            "the pool was registered and used: {stats:?}"
        );
        assert_eq!(stats.own_buffer_ios, 0, "{stats:?}");

        let large = pattern(24, 4 * MIB);
        file.write_at(0, large.clone(), true)
            .await
            .expect("large write");
        assert_bytes(
            &file.read_at(0, 4 * MIB).await.expect("large read"),
            &large,
            "large IO",
        );
        let stats = disk.stats();
        assert_eq!(
            stats.own_buffer_ios, 2,
            "IO larger than a pool buffer: {stats:?}"
        );
        assert_eq!(stats.requests_answered, 4, "{stats:?}");
    }

    #[test]
    fn out_of_bounds_configs_are_refused() {
        let refused = [
            UringConfig {
                queue_depth_max: 0,
                ..UringConfig::default()
            },
            UringConfig {
                requests_queued_max: 1,
                ..UringConfig::default()
            },
            UringConfig {
                files_open_max: 0,
                ..UringConfig::default()
            },
            UringConfig {
                pool_buffer_size_bytes: 1000,
                ..UringConfig::default()
            },
        ];
        for config in refused {
            let error = UringDisk::with_config("refused", config)
                .err()
                .expect("config refused");
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{config:?}");
        }
    }
}

/// What only the simulated disk does: faults and crashes.
mod sim_faults {
    use super::*;

    fn disk(seed: u64) -> (Arc<SimDisk>, Arc<dyn BlockFile>) {
        let sim = Arc::new(SimDisk::new("faults", seed));
        let file = sim
            .open(
                Path::new("f"),
                OpenOptions {
                    create: true,
                    direct: true,
                },
            )
            .expect("open");
        (sim, file)
    }

    fn reopen(sim: &SimDisk) -> Arc<dyn BlockFile> {
        sim.open(
            Path::new("f"),
            OpenOptions {
                create: false,
                direct: true,
            },
        )
        .expect("reopen after crash")
    }

    #[tokio::test]
    async fn injected_errors_fail_the_next_operations_then_clear() {
        let (sim, file) = disk(1);
        file.write_at(0, pattern(30, BLOCK), false)
            .await
            .expect("write");

        sim.fail_next(FaultOp::Read, 2);
        for attempt in 0..2 {
            let error = file
                .read_at(0, BLOCK)
                .await
                .expect_err("injected read error");
            assert_eq!(error.raw_os_error(), Some(libc::EIO), "attempt {attempt}");
        }
        assert_bytes(
            &file.read_at(0, BLOCK).await.expect("third read"),
            &pattern(30, BLOCK),
            "after the faults",
        );

        sim.fail_next(FaultOp::Write, 1);
        file.write_at(0, pattern(31, BLOCK), false)
            .await
            .expect_err("injected write error");
        assert_bytes(
            &file.read_at(0, BLOCK).await.expect("read"),
            &pattern(30, BLOCK),
            "a failed write changes nothing",
        );

        sim.fail_next(FaultOp::Sync, 1);
        file.sync_data().await.expect_err("injected sync error");
        file.sync_data().await.expect("sync after the fault");
        assert_eq!(sim.stats().faults_injected, 4);
    }

    #[tokio::test]
    async fn error_rate_is_reproducible_from_the_seed() {
        async fn outcomes(seed: u64) -> Vec<bool> {
            let (sim, file) = disk(seed);
            sim.set_fail_rate(FaultOp::Write, 300_000);
            let mut outcomes = Vec::new();
            for i in 0..200u64 {
                outcomes.push(
                    file.write_at(i * BLOCK as u64, pattern(i, BLOCK), false)
                        .await
                        .is_ok(),
                );
            }
            outcomes
        }
        let first = outcomes(42).await;
        assert_eq!(first, outcomes(42).await, "same seed, same faults");
        assert_ne!(first, outcomes(43).await, "another seed, other faults");
        let failed = first.iter().filter(|ok| !**ok).count();
        assert!(
            (30..=90).contains(&failed),
            "about 30% of 200 writes fail, got {failed}"
        );
    }

    #[tokio::test]
    async fn crash_drops_unsynced_writes_and_keeps_synced_and_durable_ones() {
        let (sim, file) = disk(2);
        file.write_at(0, pattern(32, BLOCK), false)
            .await
            .expect("write");
        file.sync_data().await.expect("sync");
        file.write_at(BLOCK as u64, pattern(33, BLOCK), true)
            .await
            .expect("durable write");
        file.write_at(2 * BLOCK as u64, pattern(34, BLOCK), false)
            .await
            .expect("unsynced write");
        file.write_at(0, pattern(35, BLOCK), false)
            .await
            .expect("unsynced overwrite");
        file.punch_hole(BLOCK as u64, BLOCK as u64)
            .await
            .expect("unsynced punch");

        sim.crash();
        let file = reopen(&sim);
        assert_bytes(
            &file.read_at(0, BLOCK).await.expect("read"),
            &pattern(32, BLOCK),
            "synced block",
        );
        assert_bytes(
            &file.read_at(BLOCK as u64, BLOCK).await.expect("read"),
            &pattern(33, BLOCK),
            "durable block",
        );
        assert_eq!(
            file.file_len().await.expect("len"),
            2 * BLOCK as u64,
            "the unsynced extension is gone"
        );
        assert_zeros(
            &file.read_at(2 * BLOCK as u64, BLOCK).await.expect("read"),
            "unsynced block",
        );
    }

    #[tokio::test]
    async fn crash_tearing_leaves_each_sector_old_or_new() {
        let (sim, file) = disk(3);
        let (old, new) = (pattern(36, 16 * BLOCK), pattern(37, 16 * BLOCK));
        file.write_at(0, old.clone(), true)
            .await
            .expect("durable write");
        file.write_at(0, new.clone(), false)
            .await
            .expect("unsynced overwrite");

        sim.crash_tearing();
        let after = reopen(&sim).read_at(0, 16 * BLOCK).await.expect("read");
        let (mut kept_old, mut kept_new) = (0, 0);
        for (index, sector) in after.chunks(512).enumerate() {
            let range = index * 512..(index + 1) * 512;
            if *sector == old[range.clone()] {
                kept_old += 1;
            } else {
                assert_bytes(
                    sector,
                    &new[range],
                    &format!("sector {index} is neither old nor new"),
                );
                kept_new += 1;
            }
        }
        assert!(
            kept_old > 0 && kept_new > 0,
            "128 sectors tear both ways ({kept_old} old, {kept_new} new)"
        );
    }

    #[tokio::test]
    async fn torn_write_fails_and_lands_whole_sectors_only() {
        let (sim, file) = disk(4);
        let new = pattern(38, 16 * BLOCK);
        sim.tear_next_writes(1);
        file.write_at(0, new.clone(), false)
            .await
            .expect_err("a torn write reports failure");

        let after = file.read_at(0, 16 * BLOCK).await.expect("read");
        let landed = after
            .chunks(512)
            .zip(new.chunks(512))
            .filter(|(got, written)| got == written)
            .count();
        for (index, sector) in after.chunks(512).enumerate() {
            if *sector != new[index * 512..(index + 1) * 512] {
                assert_zeros(
                    sector,
                    &format!("sector {index} is neither written nor untouched"),
                );
            }
        }
        assert!(
            0 < landed && landed < 128,
            "a torn write lands part of its sectors, got {landed}"
        );
        file.write_at(0, new.clone(), false)
            .await
            .expect("the next write is whole");
    }

    #[tokio::test]
    async fn bit_flip_is_visible_on_read_and_survives_a_crash() {
        let (sim, file) = disk(5);
        let data = pattern(39, BLOCK);
        file.write_at(0, data.clone(), true)
            .await
            .expect("durable write");
        sim.flip_bit(Path::new("f"), 100, 3).expect("flip");

        let read = file.read_at(0, BLOCK).await.expect("read");
        assert_eq!(read[100], data[100] ^ 0b1000, "flipped bit");
        assert_bytes(&read[..100], &data[..100], "bytes before the flip");
        assert_bytes(&read[101..], &data[101..], "bytes after the flip");

        sim.crash();
        assert_eq!(
            reopen(&sim).read_at(0, BLOCK).await.expect("read")[100],
            data[100] ^ 0b1000,
            "media corruption stays"
        );
        assert!(
            sim.flip_bit(Path::new("f"), BLOCK as u64, 0).is_err(),
            "no flip past the end"
        );
        assert!(
            sim.flip_bit(Path::new("nope"), 0, 0).is_err(),
            "no flip in a missing file"
        );
    }

    #[tokio::test]
    async fn handles_from_before_a_crash_fail() {
        let (sim, file) = disk(6);
        file.write_at(0, pattern(40, BLOCK), true)
            .await
            .expect("write");
        sim.crash();
        file.read_at(0, BLOCK)
            .await
            .expect_err("a handle from before the crash");
        reopen(&sim)
            .read_at(0, BLOCK)
            .await
            .expect("a fresh handle works");
    }

    #[tokio::test]
    async fn every_operation_is_counted() {
        let (sim, file) = disk(7);
        file.write_at(0, pattern(41, BLOCK), false)
            .await
            .expect("write");
        file.read_at(0, BLOCK).await.expect("read");
        file.sync_data().await.expect("sync");
        file.punch_hole(0, BLOCK as u64).await.expect("punch");
        file.file_len().await.expect("len");
        let stats = sim.stats();
        assert_eq!(
            (
                stats.writes,
                stats.reads,
                stats.syncs,
                stats.trims,
                stats.metadata
            ),
            (1, 1, 1, 1, 1)
        );
        assert_eq!(stats.ops(), 5);
        assert_eq!(sim.seed(), 7);
    }
}
