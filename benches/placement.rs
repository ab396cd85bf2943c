//! Cost of mapping one PG (3 replicas across racks) on synthetic clusters of 100, 1,000 and
//! 10,000 hosts with 12 disks each; the target is at most 2 µs per PG at 10,000 hosts.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use placement::synthetic::Topology;
use placement::{ClusterMap, Placer, Pool, PoolSpec};

/// PGs mapped per iteration; spread over the pool so caches see a realistic mix.
const PGS_PER_ITERATION: u32 = 1024;
/// PGs in the benchmarked pool.
const POOL_PGS: u32 = 1 << 20;

fn topology(hosts: u32) -> Topology {
    let racks = (hosts / 40).max(4);
    let cells = (racks / 62).clamp(1, 4);
    Topology {
        cells,
        racks,
        hosts,
        disks_per_host: 12,
        disk_weight: 1.0,
    }
}

fn map_pgs(c: &mut Criterion) {
    let mut group = c.benchmark_group("map_pg_3_replicas_across_racks");
    group.throughput(Throughput::Elements(PGS_PER_ITERATION as u64));
    for hosts in [100, 1_000, 10_000] {
        let map = ClusterMap::new(topology(hosts).spec()).expect("synthetic map is valid");
        let spec = PoolSpec {
            id: 1,
            name: "bench".into(),
            replicas: 3,
            failure_domain: "rack".into(),
            subtree: None,
            tags: Default::default(),
            pg_count: POOL_PGS,
        };
        let pool = Pool::compile(&spec, &map).expect("rule is satisfiable");
        let mut placer = Placer::new(&map, &pool).expect("pool compiled for this map");
        let mut out = [0u32; 3];
        let mut next_pg = 0u32;
        group.bench_function(BenchmarkId::from_parameter(format!("{hosts}_hosts")), |b| {
            b.iter(|| {
                for _ in 0..PGS_PER_ITERATION {
                    placer.place(next_pg, &mut out).expect("placement succeeds");
                    black_box(&out);
                    next_pg = (next_pg + 7919) % POOL_PGS;
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, map_pgs);
criterion_main!(benches);
