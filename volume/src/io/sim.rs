//! The simulated backend: an in-memory disk for fault injection and seeded simulation tests.
//!
//! Paths are only keys; there is no file system and no directory. Each file keeps two views:
//! the volatile one (what reads see) and the durable one (what survives [`SimDisk::crash`]).
//! `sync_data` copies the volatile view into the durable one; a durable (FUA) write lands in
//! both. Punch, zero and length changes are volatile until the next `sync_data`, like a
//! journalled file system that commits them with the next fdatasync. A file, once created,
//! exists after a crash (empty if nothing of it was made durable). Small records
//! ([`Disk::replace_durably`]) are durable once replaced, so a crash keeps them as they are.
//!
//! Faults, all driven by one seeded generator so that a run is reproducible from its seed:
//! - errors (`EIO`) on the next N operations of a class, or on each with a probability
//!   ([`SimDisk::fail_next`], [`SimDisk::set_fail_rate`]);
//! - torn writes: the next N `write_at` calls land a seeded subset of their 512-byte sectors,
//!   then fail ([`SimDisk::tear_next_writes`]);
//! - bit flips at a given file offset, in both views, as media corruption
//!   ([`SimDisk::flip_bit`]);
//! - crashes that drop everything not durable, optionally tearing each unsynced 4 KiB block at
//!   sector granularity ([`SimDisk::crash_tearing`]).
//!
//! Operations run when their future is first polled, in poll order, with no await point inside;
//! given a seed and a deterministic executor (tokio's current-thread runtime), a run repeats
//! exactly. Handles opened before a crash fail every later operation: the process that held
//! them is gone, and a test that still uses one has a bug.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};

use super::portable::sys;
use super::{BlockFile, Disk, IoFuture, OpenOptions};

mod image;

use image::{BLOCK_SIZE_BYTES, Block, Image, SECTOR_SIZE_BYTES};

/// One in a million: the unit of [`SimDisk::set_fail_rate`].
pub const PARTS_PER_MILLION: u32 = 1_000_000;

/// Classes of operations that faults are injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// `read_at`.
    Read,
    /// Everything that changes the volatile view: `write_at`, `punch_hole`, `zero_range`,
    /// `set_len`.
    Write,
    /// `sync_data`.
    Sync,
}

impl FaultOp {
    fn index(self) -> usize {
        match self {
            FaultOp::Read => 0,
            FaultOp::Write => 1,
            FaultOp::Sync => 2,
        }
    }
}

/// Counts of what the disk was asked to do, faults included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub reads: u64,
    pub writes: u64,
    /// `punch_hole` and `zero_range`.
    pub trims: u64,
    pub syncs: u64,
    /// `len`, `seek_data`, `seek_hole`, `set_len`.
    pub metadata: u64,
    /// Operations that failed or tore because of an injected fault.
    pub faults_injected: u64,
    pub crashes: u64,
}

impl SimStats {
    /// Every operation issued on a file of the disk.
    pub fn ops(&self) -> u64 {
        self.reads + self.writes + self.trims + self.syncs + self.metadata
    }
}

/// An in-memory disk; see the module documentation. Share it as `Arc<SimDisk>`: the same `Arc`
/// coerces to `Arc<dyn Disk>` for the code under test and keeps the fault controls for the test.
pub struct SimDisk {
    name: String,
    state: Arc<Mutex<SimState>>,
}

impl SimDisk {
    /// An empty disk whose every random choice derives from `seed`.
    pub fn new(name: &str, seed: u64) -> SimDisk {
        let state = SimState {
            seed,
            rng: SplitMix64(seed),
            generation: 0,
            boots: 0,
            files: BTreeMap::new(),
            records: BTreeMap::new(),
            fail_next: [0; 3],
            fail_rate_ppm: [0; 3],
            tear_next_writes: 0,
            stats: SimStats::default(),
        };
        SimDisk {
            name: format!("sim:{name}"),
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The seed this disk was created with; print it when a seeded test fails.
    pub fn seed(&self) -> u64 {
        lock(&self.state).seed
    }

    /// Makes the next `count` operations of class `op` fail with an IO error.
    pub fn fail_next(&self, op: FaultOp, count: u32) {
        lock(&self.state).fail_next[op.index()] = count;
    }

    /// Makes each operation of class `op` fail with probability `parts_per_million` /
    /// [`PARTS_PER_MILLION`]; 0 turns it off.
    pub fn set_fail_rate(&self, op: FaultOp, parts_per_million: u32) {
        assert!(parts_per_million <= PARTS_PER_MILLION);
        lock(&self.state).fail_rate_ppm[op.index()] = parts_per_million;
    }

    /// Makes the next `count` `write_at` calls land only a seeded subset of their sectors in
    /// the volatile view, then fail with an IO error.
    pub fn tear_next_writes(&self, count: u32) {
        lock(&self.state).tear_next_writes = count;
    }

    /// Flips bit `bit` (0..8) of the byte at `offset` of `path` in both views, as media
    /// corruption would. Fails if the file does not exist or `offset` is past its end.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        if bit >= 8 {
            return Err(sys::invalid(format!("bit {bit} is not in 0..8")));
        }
        let mut state = lock(&self.state);
        let file = state.files.get_mut(path).ok_or_else(|| not_found(path))?;
        if offset >= file.volatile.len() {
            return Err(sys::invalid(format!(
                "offset {offset} is past the end of {}",
                path.display()
            )));
        }
        for view in [&mut file.volatile, &mut file.durable] {
            if offset < view.len() {
                view.flip_bit(offset, bit);
            }
        }
        Ok(())
    }

    /// Simulates power loss: every file falls back to its durable view. Open handles become
    /// stale.
    pub fn crash(&self) {
        lock(&self.state).crash(false);
    }

    /// Simulates the death of the process using the disk (kill -9), the machine staying up:
    /// nothing is lost, not even what was never synced (the page cache keeps it), but handles
    /// opened before fail every later operation, as the dead process's would.
    pub fn kill_process(&self) {
        lock(&self.state).generation += 1;
    }

    /// Like [`SimDisk::crash`], but each 512-byte sector of an unsynced block independently
    /// either reached the media or did not (seeded).
    pub fn crash_tearing(&self) {
        lock(&self.state).crash(true);
    }

    /// Bytes allocated to `path` in its volatile view (what `st_blocks` would show).
    pub fn allocated_bytes(&self, path: &Path) -> Option<u64> {
        lock(&self.state)
            .files
            .get(path)
            .map(|file| file.volatile.allocated_bytes())
    }

    pub fn stats(&self) -> SimStats {
        lock(&self.state).stats
    }
}

impl Disk for SimDisk {
    fn name(&self) -> &str {
        &self.name
    }

    fn boot_id(&self) -> io::Result<String> {
        Ok(format!("sim-boot-{}", lock(&self.state).boots))
    }

    fn open(&self, path: &Path, options: OpenOptions) -> io::Result<Arc<dyn BlockFile>> {
        let mut state = lock(&self.state);
        if !state.files.contains_key(path) {
            if !options.create {
                return Err(not_found(path));
            }
            state.files.insert(path.to_owned(), SimFile::default());
        }
        Ok(Arc::new(SimBlockFile {
            state: Arc::clone(&self.state),
            path: path.to_owned(),
            direct: options.direct,
            generation: state.generation,
        }))
    }

    fn read_small(&self, path: &Path) -> IoFuture<Option<Bytes>> {
        let result = lock(&self.state).record(path, None);
        Box::pin(std::future::ready(result))
    }

    fn replace_durably(&self, path: &Path, data: Bytes) -> IoFuture<()> {
        let result = lock(&self.state).record(path, Some(data)).map(|_| ());
        Box::pin(std::future::ready(result))
    }
}

/// SplitMix64: tiny, fast, and good enough to pick faults; the seed fully determines it.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    fn chance_ppm(&mut self, parts_per_million: u32) -> bool {
        self.next_u64() % u64::from(PARTS_PER_MILLION) < u64::from(parts_per_million)
    }
}

/// What an operation is, for statistics and fault selection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Read,
    Write,
    Trim,
    SetLen,
    Sync,
    Metadata,
}

impl Class {
    fn fault_op(self) -> Option<FaultOp> {
        match self {
            Class::Read => Some(FaultOp::Read),
            Class::Write | Class::Trim | Class::SetLen => Some(FaultOp::Write),
            Class::Sync => Some(FaultOp::Sync),
            Class::Metadata => None,
        }
    }
}

struct SimState {
    seed: u64,
    rng: SplitMix64,
    /// Bumped by every crash; handles from an older generation are stale.
    generation: u64,
    /// Bumped by every power loss (not by a process kill): the machine's boot.
    boots: u64,
    files: BTreeMap<PathBuf, SimFile>,
    /// Small records ([`Disk::replace_durably`]): each is replaced whole and durably, so one
    /// view serves both reads and crashes.
    records: BTreeMap<PathBuf, Bytes>,
    fail_next: [u32; 3],
    fail_rate_ppm: [u32; 3],
    tear_next_writes: u32,
    stats: SimStats,
}

impl SimState {
    /// Runs `work` on file `path` unless the handle is stale or a fault is injected.
    /// `work` gets the seeded generator when the operation is a write to be torn.
    fn execute<T>(
        &mut self,
        path: &Path,
        generation: u64,
        class: Class,
        work: impl FnOnce(&mut SimFile, Option<&mut SplitMix64>) -> io::Result<T>,
    ) -> io::Result<T> {
        if generation != self.generation {
            return Err(io::Error::other(format!(
                "{}: handle opened before a simulated crash",
                path.display()
            )));
        }
        let stats = &mut self.stats;
        match class {
            Class::Read => stats.reads += 1,
            Class::Write => stats.writes += 1,
            Class::Trim => stats.trims += 1,
            Class::Sync => stats.syncs += 1,
            Class::SetLen | Class::Metadata => stats.metadata += 1,
        }
        if let Some(op) = class.fault_op() {
            self.inject(op)?;
        }
        let tear = class == Class::Write && self.tear_next_writes > 0;
        if tear {
            self.tear_next_writes -= 1;
            self.stats.faults_injected += 1;
        }
        let file = self.files.get_mut(path).ok_or_else(|| not_found(path))?;
        work(file, tear.then_some(&mut self.rng))
    }

    /// Fails the operation if a queued or random fault of its kind is due.
    fn inject(&mut self, op: FaultOp) -> io::Result<()> {
        let index = op.index();
        let fail = if self.fail_next[index] > 0 {
            self.fail_next[index] -= 1;
            true
        } else {
            // Draw only when a rate is set, so that turning one class on does not shift the
            // choices of another.
            self.fail_rate_ppm[index] > 0 && self.rng.chance_ppm(self.fail_rate_ppm[index])
        };
        if fail {
            self.stats.faults_injected += 1;
            return Err(injected(op));
        }
        Ok(())
    }

    /// Reads the record at `path` (`data` is `None`) or replaces it, with the faults of a read
    /// or a write. Runs at the call, not at the first poll: a record has no ordering to keep
    /// with the file operations queued beside it.
    fn record(&mut self, path: &Path, data: Option<Bytes>) -> io::Result<Option<Bytes>> {
        let op = if data.is_some() {
            self.stats.writes += 1;
            FaultOp::Write
        } else {
            self.stats.reads += 1;
            FaultOp::Read
        };
        self.inject(op)?;
        match data {
            Some(data) => {
                if data.len() > super::SMALL_FILE_MAX_BYTES {
                    return Err(super::small_file::too_large(path, data.len()));
                }
                self.records.insert(path.to_owned(), data);
                Ok(None)
            }
            None => Ok(self.records.get(path).cloned()),
        }
    }

    fn crash(&mut self, tearing: bool) {
        self.generation += 1;
        self.boots += 1;
        self.stats.crashes += 1;
        for file in self.files.values_mut() {
            file.crash(tearing.then_some(&mut self.rng));
        }
    }
}

/// The two views of one file and which blocks may differ between them.
#[derive(Default)]
struct SimFile {
    volatile: Image,
    durable: Image,
    /// Blocks changed in the volatile view since the last sync.
    dirty: BTreeSet<u64>,
}

impl SimFile {
    fn mark_dirty(&mut self, offset: u64, len: u64) {
        self.dirty
            .extend(image::blocks_of(offset, len).map(|(index, _)| index));
    }

    fn write(&mut self, offset: u64, data: &[u8], durable: bool) {
        if data.is_empty() {
            // Like pwrite of nothing: not even the length moves.
            return;
        }
        self.volatile.write(offset, data);
        self.mark_dirty(offset, data.len() as u64);
        if durable {
            // FUA: these bytes, and the length needed to read them, are on the media. The
            // block stays dirty: other unsynced bytes of it may still be lost.
            self.durable.write(offset, data);
        }
    }

    /// A write interrupted part way: each sector of it independently landed or not.
    fn write_torn(&mut self, offset: u64, data: &[u8], rng: &mut SplitMix64) {
        let end = offset + data.len() as u64;
        let mut sector_start = offset - offset % SECTOR_SIZE_BYTES;
        while sector_start < end {
            let from = sector_start.max(offset);
            let to = (sector_start + SECTOR_SIZE_BYTES).min(end);
            if rng.coin() {
                let piece = &data[(from - offset) as usize..(to - offset) as usize];
                self.write(from, piece, false);
            }
            sector_start += SECTOR_SIZE_BYTES;
        }
    }

    fn sync(&mut self) {
        for &index in &self.dirty {
            self.durable
                .put_block(index, self.volatile.block(index).cloned());
        }
        self.durable.set_len(self.volatile.len());
        self.dirty.clear();
    }

    /// Settles the file after power loss; with `tearing`, unsynced blocks keep a seeded mix of
    /// new and old sectors.
    fn crash(&mut self, tearing: Option<&mut SplitMix64>) {
        if let Some(rng) = tearing {
            for &index in &self.dirty {
                let settled =
                    mix_sectors(self.volatile.block(index), self.durable.block(index), rng);
                self.durable.put_block(index, settled);
            }
            // Torn blocks past the durable end stay invisible, as the size never reached the
            // media; trimming keeps the image's invariants.
            let len = self.durable.len();
            self.durable.set_len(len);
        }
        self.volatile = self.durable.clone();
        self.dirty.clear();
    }
}

/// Per sector, the new or the old content (a hole counts as zeros).
fn mix_sectors(new: Option<&Block>, old: Option<&Block>, rng: &mut SplitMix64) -> Option<Block> {
    if new.is_none() && old.is_none() {
        return None;
    }
    let mut mixed: Block = Box::new([0; BLOCK_SIZE_BYTES as usize]);
    let sector = SECTOR_SIZE_BYTES as usize;
    for (index, out) in mixed.chunks_mut(sector).enumerate() {
        let source = if rng.coin() { new } else { old };
        if let Some(block) = source {
            out.copy_from_slice(&block[index * sector..(index + 1) * sector]);
        }
    }
    Some(mixed)
}

/// One open file of a [`SimDisk`].
struct SimBlockFile {
    state: Arc<Mutex<SimState>>,
    path: PathBuf,
    direct: bool,
    generation: u64,
}

impl SimBlockFile {
    /// Runs `work` when the future is first polled.
    fn run<T, F>(&self, class: Class, work: F) -> IoFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut SimFile, Option<&mut SplitMix64>) -> io::Result<T> + Send + 'static,
    {
        let state = Arc::clone(&self.state);
        let path = self.path.clone();
        let generation = self.generation;
        Box::pin(async move { lock(&state).execute(&path, generation, class, work) })
    }
}

impl BlockFile for SimBlockFile {
    fn read_at(&self, offset: u64, len: usize) -> IoFuture<Bytes> {
        if let Err(error) = sys::check_rw(self.direct, offset, len) {
            return Box::pin(std::future::ready(Err(error)));
        }
        self.run(Class::Read, move |file, _| {
            let mut buf = BytesMut::zeroed(len);
            file.volatile.read(offset, &mut buf);
            Ok(buf.freeze())
        })
    }

    fn write_at(&self, offset: u64, data: Bytes, durable: bool) -> IoFuture<()> {
        if let Err(error) = sys::check_rw(self.direct, offset, data.len()) {
            return Box::pin(std::future::ready(Err(error)));
        }
        self.run(Class::Write, move |file, tear| {
            match tear {
                Some(rng) => {
                    file.write_torn(offset, &data, rng);
                    return Err(injected(FaultOp::Write));
                }
                None => file.write(offset, &data, durable),
            }
            Ok(())
        })
    }

    fn sync_data(&self) -> IoFuture<()> {
        self.run(Class::Sync, |file, _| {
            file.sync();
            Ok(())
        })
    }

    fn punch_hole(&self, offset: u64, len: u64) -> IoFuture<()> {
        if let Err(error) = sys::check_range(offset, len) {
            return Box::pin(std::future::ready(Err(error)));
        }
        self.run(Class::Trim, move |file, _| {
            file.volatile.punch(offset, len);
            file.mark_dirty(offset, len.min(file.volatile.len().saturating_sub(offset)));
            Ok(())
        })
    }

    fn zero_range(&self, offset: u64, len: u64) -> IoFuture<()> {
        if let Err(error) = sys::check_range(offset, len) {
            return Box::pin(std::future::ready(Err(error)));
        }
        self.run(Class::Trim, move |file, _| {
            file.volatile.zero(offset, len);
            file.mark_dirty(offset, len.min(file.volatile.len().saturating_sub(offset)));
            Ok(())
        })
    }

    fn seek_data(&self, offset: u64) -> IoFuture<Option<u64>> {
        self.run(Class::Metadata, move |file, _| {
            Ok(file.volatile.seek_data(offset))
        })
    }

    fn seek_hole(&self, offset: u64) -> IoFuture<u64> {
        self.run(Class::Metadata, move |file, _| {
            Ok(file.volatile.seek_hole(offset))
        })
    }

    fn set_len(&self, len: u64) -> IoFuture<()> {
        if let Err(error) = sys::check_range(0, len) {
            return Box::pin(std::future::ready(Err(error)));
        }
        self.run(Class::SetLen, move |file, _| {
            let old = file.volatile.len();
            file.volatile.set_len(len);
            let (low, high) = (old.min(len), old.max(len));
            // Only blocks that existed can change; growing touches none.
            let high = high.min(old.next_multiple_of(BLOCK_SIZE_BYTES));
            file.mark_dirty(low, high.saturating_sub(low));
            Ok(())
        })
    }

    fn file_len(&self) -> IoFuture<u64> {
        self.run(Class::Metadata, |file, _| Ok(file.volatile.len()))
    }
}

fn lock(state: &Mutex<SimState>) -> MutexGuard<'_, SimState> {
    // A panic while holding the lock (a failed assert in a test) leaves consistent maps:
    // keep going so the test reports its own failure.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such simulated file", path.display()),
    )
}

/// An injected fault looks like what a failing disk returns: `EIO`.
fn injected(op: FaultOp) -> io::Error {
    tracing::debug!(?op, "injecting an IO error");
    io::Error::from_raw_os_error(libc::EIO)
}
