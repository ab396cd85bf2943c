//! The disk under a directory, read from `/proc/diskstats`: what it wrote and how long it was
//! busy during a measurement, to tell a disk-bound figure from a CPU-bound one.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// Bytes of a sector as `/proc/diskstats` counts them, whatever the device's own sector.
const DISKSTATS_SECTOR_BYTES: u64 = 512;

/// A block device, as `/proc/diskstats` names it.
pub(crate) struct Disk {
    major: u32,
    minor: u32,
}

/// A device's counters at one moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DiskCounters {
    sectors_written: u64,
    /// Milliseconds during which the device had IO in flight (`io_ticks`).
    busy_ms: u64,
}

impl Disk {
    /// The block device holding `path`, or `None` when `/proc/diskstats` does not list it
    /// (an overlay or tmpfs has no device of its own).
    pub fn of(path: &Path) -> anyhow::Result<Option<Disk>> {
        let dev = std::fs::metadata(path)?.dev();
        let disk = Disk {
            major: libc::major(dev),
            minor: libc::minor(dev),
        };
        Ok(disk.counters().ok().map(|_| disk))
    }

    pub fn counters(&self) -> anyhow::Result<DiskCounters> {
        let stats = std::fs::read_to_string("/proc/diskstats")?;
        for line in stats.lines() {
            // major minor name, then reads (4 fields), writes: completed, merged, sectors,
            // ms; in flight, io_ticks, ...
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 13 || f[0] != self.major.to_string() || f[1] != self.minor.to_string() {
                continue;
            }
            let field = |i: usize| f[i].parse::<u64>().unwrap_or(0);
            return Ok(DiskCounters {
                sectors_written: field(9),
                busy_ms: field(12),
            });
        }
        anyhow::bail!(
            "/proc/diskstats lists no device {}:{}",
            self.major,
            self.minor
        )
    }
}

impl DiskCounters {
    /// MiB/s written since `before`, over `elapsed`.
    pub fn mib_s_written_since(&self, before: &DiskCounters, elapsed: Duration) -> f64 {
        let bytes = (self.sectors_written - before.sectors_written) * DISKSTATS_SECTOR_BYTES;
        bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
    }

    /// The share of `elapsed` during which the device had IO in flight.
    pub fn busy_since(&self, before: &DiskCounters, elapsed: Duration) -> f64 {
        (self.busy_ms - before.busy_ms) as f64 / 1000.0 / elapsed.as_secs_f64()
    }
}
