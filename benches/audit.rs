//! What the audit log adds to one metadata commit, on one member, without the noise of a
//! shared machine's network and disk: applying a volume create as it was before the audit log
//! (a plain command) and as it is now (wrapped with its call's record, whose entry is appended
//! and hashed into the Merkle tree), and the JSON round trip of the command as the WAL and
//! AppendEntries carry it. Each commit pays the apply on all three members and the round trip
//! about three times (the leader's WAL, and each follower's AppendEntries and WAL).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use fabric::audit::entry::AuditCall;
use fabric::audit::merkle::leaf_hash;
use fabric::meta::cell_key::CellKey;
use fabric::meta::command::{Command, CommandV1};
use fabric::meta::model::{
    DiskInfo, EXTENT_SIZE_DEFAULT_BYTES, Location, NodeRegistration, PoolSpec, Rule, VolumeSpec,
};
use fabric::meta::state::ClusterState;

/// A state as the benchmark cluster has it: three nodes in three racks, a pool of 16 PGs and
/// a cell key.
fn cluster() -> ClusterState {
    let mut state = ClusterState::default();
    for id in 1..=3u64 {
        let registration = NodeRegistration {
            id,
            rpc_addr: format!("127.0.0.1:{}", 7000 + id),
            data_addr: String::new(),
            location: Location {
                levels: vec![("rack".into(), format!("r{id}"))],
            },
            disks: vec![DiskInfo {
                name: "data".into(),
                capacity_bytes: 1 << 40,
            }],
        };
        state
            .apply(&CommandV1::RegisterNode(registration).into())
            .expect("register");
    }
    let pool = PoolSpec {
        name: "bench".into(),
        rule: Rule {
            replicas: 3,
            min_replicas: 2,
            failure_domain: "rack".into(),
            tag_filter: vec![],
        },
        pg_count: 16,
    };
    state
        .apply(&CommandV1::CreatePool(pool).into())
        .expect("pool");
    // The key that signs a checkpoint every 1,024 entries, as a cluster's first member makes
    // it: without checkpoints the log could not be pruned and would fill.
    state
        .apply(&CommandV1::AddCellKey(CellKey::generate()).into())
        .expect("cell key");
    state
}

fn create(n: u64) -> CommandV1 {
    CommandV1::CreateVolume(VolumeSpec {
        name: format!("bench-{n}"),
        pool: "bench".into(),
        size_bytes: 1 << 30,
        extent_size_bytes: EXTENT_SIZE_DEFAULT_BYTES,
        request_id: String::new(),
    })
}

/// The record a member makes of an administrator's create.
fn call(n: u64) -> AuditCall {
    AuditCall {
        time_ms: 1_796_000_000_000 + n,
        principal: "fabric://bench/user/admin".into(),
        verb: "volume.create".into(),
        target: format!("volume/bench-{n}"),
        request_sha256: leaf_hash(&n.to_be_bytes()),
        peer: "127.0.0.1:51234".into(),
    }
}

fn audited(n: u64) -> CommandV1 {
    CommandV1::Audited {
        call: call(n),
        command: Box::new(create(n)),
    }
}

/// `iters` creates applied in order to a fresh cluster, timed (the command built outside).
fn apply_creates(iters: u64, command: fn(u64) -> CommandV1) -> Duration {
    let mut state = cluster();
    let mut elapsed = Duration::ZERO;
    for n in 0..iters {
        let c: Command = command(n).into();
        let started = Instant::now();
        black_box(state.apply(black_box(&c))).expect("create");
        elapsed += started.elapsed();
    }
    elapsed
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply volume create");
    g.bench_function("plain (before the audit log)", |b| {
        b.iter_custom(|iters| apply_creates(iters, create))
    });
    g.bench_function("audited", |b| {
        b.iter_custom(|iters| apply_creates(iters, audited))
    });
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("raft entry json round trip");
    for (name, command) in [
        ("plain (before the audit log)", create(12_345)),
        ("audited", audited(12_345)),
    ] {
        let command: Command = command.into();
        let bytes = serde_json::to_vec(&command).expect("encode");
        println!("{name}: {} bytes of JSON", bytes.len());
        g.bench_function(name, |b| {
            b.iter(|| {
                let bytes = serde_json::to_vec(black_box(&command)).expect("encode");
                let back: Command = serde_json::from_slice(&bytes).expect("decode");
                black_box(back)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, apply, round_trip);
criterion_main!(benches);
