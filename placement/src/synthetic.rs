//! Synthetic topologies (root → cell → rack → host → disk) for the simulator, the benches and
//! the tests. Ids are decimal and readable: disk `h * disks_per_host + d`, host
//! `HOST_ID_BASE + h`, rack `RACK_ID_BASE + r`, cell `CELL_ID_BASE + c`, root `ROOT_ID`.

use crate::edit::Edit;
use crate::spec::{BucketSpec, MapSpec, State};

pub const LEVELS: [&str; 5] = ["root", "cell", "rack", "host", "disk"];
pub const HOST_ID_BASE: u32 = 1_000_000_000;
pub const RACK_ID_BASE: u32 = 2_000_000_000;
pub const CELL_ID_BASE: u32 = 3_000_000_000;
pub const ROOT_ID: u32 = 4_000_000_000;

/// A uniform cluster: racks spread evenly over cells, hosts evenly over racks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Topology {
    pub cells: u32,
    pub racks: u32,
    pub hosts: u32,
    pub disks_per_host: u32,
    /// Weight of every disk.
    pub disk_weight: f64,
}

impl Topology {
    pub fn cell_of_rack(&self, rack: u32) -> u32 {
        (rack as u64 * self.cells as u64 / self.racks as u64) as u32
    }

    /// Initial hosts fill racks in contiguous runs; hosts added later go round-robin.
    pub fn rack_of_host(&self, host: u32) -> u32 {
        if host < self.hosts {
            (host as u64 * self.racks as u64 / self.hosts as u64) as u32
        } else {
            host % self.racks
        }
    }

    pub fn disk_id(&self, host: u32, disk: u32) -> u32 {
        host * self.disks_per_host + disk
    }

    /// The map of epoch 1 with every bucket in and up.
    pub fn spec(&self) -> MapSpec {
        assert!(
            self.cells >= 1
                && self.racks >= self.cells
                && self.hosts >= self.racks
                && self.disks_per_host >= 1
        );
        let mut buckets = Vec::with_capacity(
            (self.hosts * (self.disks_per_host + 1) + self.racks + self.cells + 1) as usize,
        );
        buckets.push(bucket(ROOT_ID, "root".into(), "root", None, None));
        for c in 0..self.cells {
            buckets.push(bucket(
                CELL_ID_BASE + c,
                format!("cell-{c}"),
                "cell",
                Some(ROOT_ID),
                None,
            ));
        }
        for r in 0..self.racks {
            let parent = CELL_ID_BASE + self.cell_of_rack(r);
            buckets.push(bucket(
                RACK_ID_BASE + r,
                format!("rack-{r}"),
                "rack",
                Some(parent),
                None,
            ));
        }
        for h in 0..self.hosts {
            buckets.extend(self.host_buckets(h));
        }
        MapSpec {
            epoch: 1,
            levels: LEVELS.iter().map(|l| l.to_string()).collect(),
            buckets,
            block_units: None,
        }
    }

    /// Host `host` and its disks, parents first.
    pub fn host_buckets(&self, host: u32) -> Vec<BucketSpec> {
        let host_id = HOST_ID_BASE + host;
        let rack_id = RACK_ID_BASE + self.rack_of_host(host);
        let mut out = vec![bucket(
            host_id,
            format!("host-{host}"),
            "host",
            Some(rack_id),
            None,
        )];
        for d in 0..self.disks_per_host {
            let id = self.disk_id(host, d);
            out.push(bucket(
                id,
                format!("disk-{id}"),
                "disk",
                Some(host_id),
                Some(self.disk_weight),
            ));
        }
        out
    }

    /// Edits adding hosts `first..first + count` (beyond the initial ones) with their disks.
    pub fn add_hosts(&self, first: u32, count: u32) -> Vec<Edit> {
        (first..first + count)
            .flat_map(|h| self.host_buckets(h))
            .map(Edit::AddBucket)
            .collect()
    }

    /// Edits removing host `host` and its disks.
    pub fn remove_host(&self, host: u32) -> Vec<Edit> {
        let mut edits: Vec<Edit> = (0..self.disks_per_host)
            .map(|d| Edit::RemoveBucket {
                id: self.disk_id(host, d),
            })
            .collect();
        edits.push(Edit::RemoveBucket {
            id: HOST_ID_BASE + host,
        });
        edits
    }
}

fn bucket(
    id: u32,
    name: String,
    level: &str,
    parent: Option<u32>,
    weight: Option<f64>,
) -> BucketSpec {
    BucketSpec {
        id,
        name,
        level: level.to_string(),
        parent,
        weight,
        state: State::default(),
        tags: Default::default(),
        ranges: Vec::new(),
    }
}
