//! Small clusters and pools for the property tests: racks of hosts of disks with chosen
//! weights, under one root. Ids: disk `n` (dense from 0), host `HOST_BASE + h`, rack
//! `RACK_BASE + r`, root `ROOT`.
#![allow(dead_code)]

use placement::{BucketSpec, ClusterMap, MapSpec, PgMap, Pool, PoolSpec, State};
use proptest::prelude::*;

pub const HOST_BASE: u32 = 1_000_000;
pub const RACK_BASE: u32 = 2_000_000;
pub const ROOT: u32 = 3_000_000;

/// Disk weights per host per rack.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub racks: Vec<Vec<Vec<f64>>>,
}

impl Cluster {
    pub fn uniform(racks: usize, hosts_per_rack: usize, disks_per_host: usize) -> Cluster {
        Cluster {
            racks: vec![vec![vec![1.0; disks_per_host]; hosts_per_rack]; racks],
        }
    }

    pub fn spec(&self) -> MapSpec {
        let mut buckets = vec![bucket(ROOT, "root", "root", None, None)];
        let mut host = 0u32;
        let mut disk = 0u32;
        for (r, hosts) in self.racks.iter().enumerate() {
            let rack_id = RACK_BASE + r as u32;
            buckets.push(bucket(
                rack_id,
                &format!("rack-{r}"),
                "rack",
                Some(ROOT),
                None,
            ));
            for disks in hosts {
                let host_id = HOST_BASE + host;
                buckets.push(bucket(
                    host_id,
                    &format!("host-{host}"),
                    "host",
                    Some(rack_id),
                    None,
                ));
                for &w in disks {
                    buckets.push(bucket(
                        disk,
                        &format!("disk-{disk}"),
                        "disk",
                        Some(host_id),
                        Some(w),
                    ));
                    disk += 1;
                }
                host += 1;
            }
        }
        MapSpec {
            epoch: 1,
            levels: levels(),
            buckets,
            block_units: None,
        }
    }

    pub fn map(&self) -> ClusterMap {
        ClusterMap::new(self.spec()).expect("generated cluster is valid")
    }

    pub fn disk_count(&self) -> usize {
        self.racks.iter().flatten().map(Vec::len).sum()
    }

    pub fn host_count(&self) -> usize {
        self.racks.iter().map(Vec::len).sum()
    }

    pub fn total_weight(&self) -> f64 {
        self.racks.iter().flatten().flatten().sum()
    }
}

pub fn levels() -> Vec<String> {
    ["root", "rack", "host", "disk"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

pub fn bucket(
    id: u32,
    name: &str,
    level: &str,
    parent: Option<u32>,
    weight: Option<f64>,
) -> BucketSpec {
    BucketSpec {
        id,
        name: name.to_string(),
        level: level.to_string(),
        parent,
        weight,
        state: State::default(),
        tags: Default::default(),
        ranges: Vec::new(),
    }
}

pub fn pool(replicas: u32, failure_domain: &str, pg_count: u32) -> PoolSpec {
    PoolSpec {
        id: 7,
        name: "test".into(),
        replicas,
        failure_domain: failure_domain.into(),
        subtree: None,
        tags: Default::default(),
        pg_count,
    }
}

pub fn compute(map: &ClusterMap, spec: &PoolSpec) -> (Pool, PgMap) {
    let pool = Pool::compile(spec, map).expect("rule is satisfiable");
    let pgmap = PgMap::compute(map, &pool, None).expect("every PG maps");
    (pool, pgmap)
}

/// Clusters of `racks` racks, `hosts` hosts per rack (varying), `disks` disks per host
/// (varying), each disk weighing one of `weights`.
pub fn clusters(
    racks: std::ops::RangeInclusive<usize>,
    hosts: std::ops::RangeInclusive<usize>,
    disks: std::ops::RangeInclusive<usize>,
    weights: &'static [f64],
) -> impl Strategy<Value = Cluster> {
    let disk = proptest::sample::select(weights);
    let host = proptest::collection::vec(disk, disks);
    let rack = proptest::collection::vec(host, hosts);
    proptest::collection::vec(rack, racks).prop_map(|racks| Cluster { racks })
}

/// Replicas per disk id.
pub fn counts(pgmap: &PgMap) -> std::collections::HashMap<u32, u64> {
    let mut counts = std::collections::HashMap::new();
    for (_, replicas) in pgmap.iter() {
        for &d in replicas {
            *counts.entry(d).or_insert(0) += 1;
        }
    }
    counts
}
