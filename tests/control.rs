//! The control plane's shape, with real processes: a fixed voter set, storage-only nodes that
//! are not Raft members, liveness kept off the Raft log, and the guard that never marks a
//! whole rack out.

use std::path::Path;
use std::time::{Duration, Instant};

use fabric_suite::{DevNode, fabricctl, node_pid, qemu_io_ok, tools};
use serde_json::Value;

/// Out interval of a dev cluster (`DEV_NODE_OUT_AFTER_MS`).
const DEV_OUT_AFTER: Duration = Duration::from_secs(30);
/// Longest a killed node may stay `up`: 3 s of silence, then a probe answered with the next
/// heartbeat (1 s), then the commit; the rest is slack for a loaded machine.
const DOWN_WITHIN: Duration = Duration::from_secs(10);

/// The node records, by id.
fn node(data: &Path, id: u64) -> Value {
    let nodes = fabricctl(data, &["node", "list"]);
    nodes
        .as_array()
        .expect("node list")
        .iter()
        .find(|n| n["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("node {id} listed in {nodes}"))
}

/// The leader's last log index, from `fabricctl status`.
fn leader_log_index(data: &Path) -> u64 {
    let status = fabricctl(data, &["status"]);
    let leader = status["leader_id"].as_u64().expect("a leader");
    status["nodes"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == leader)
        .and_then(|m| m["last_log_index"].as_u64())
        .unwrap_or_else(|| panic!("leader {leader} in {status}"))
}

fn kill9(data: &Path, id: u64) -> Instant {
    let pid = node_pid(data, id);
    // SAFETY: signalling a child process of the launcher by pid.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 node {id}");
    Instant::now()
}

/// Waits until node `id` is recorded `down`, and returns how long that took from `since`.
fn wait_down(data: &Path, id: u64, since: Instant) -> Duration {
    loop {
        if node(data, id)["health"] == "down" {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < DOWN_WITHIN * 3,
            "node {id} not marked down {:?} after its kill",
            since.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn six_nodes_three_voters_a_quiet_log_and_a_dead_rack_marked_down_but_never_out() {
    if tools(&["qemu-io"]).is_none() {
        return;
    }
    let _serial = fabric_suite::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut dev = DevNode::start_with(
        &data,
        "vol0:64MiB",
        &["--nodes", "6", "--voters", "3", "--nodes-per-rack", "2"],
    )
    .expect("start dev");
    let uri = dev.uri();

    // Three voters; six storage nodes, the last three of them no Raft members at all.
    let status = fabricctl(&data, &["status"]);
    let members: Vec<u64> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(members, vec![1, 2, 3], "{status}");
    for id in 1..=6 {
        let n = node(&data, id);
        assert_eq!(n["health"], "up", "{n}");
        if id > 3 {
            assert_eq!(n["rpc_addr"], "", "a storage-only node serves no gRPC: {n}");
        }
    }

    // Storage-only nodes hold replicas: 48 MiB over 64 PGs on 3 racks of 2 reach each node.
    qemu_io_ok(&uri, "write -P 0x5a 0 48M");
    qemu_io_ok(&uri, "read -P 0x5a 0 48M");
    for id in 4..=6 {
        let held = std::fs::read_dir(data.join(format!("node-{id}/store")))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(held > 0, "node {id} stores nothing");
    }

    // A steady cluster writes nothing to the Raft log: heartbeats stay on the leader. (The
    // audit log's tail is checkpointed once, within 10 s of the last call; after that, nothing.)
    let settled = Instant::now();
    loop {
        let audit = fabricctl(&data, &["audit", "status"]);
        if audit["checkpoint_size"] == audit["size"] {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(30),
            "the audit log's tail was not checkpointed: {audit}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let before = leader_log_index(&data);
    std::thread::sleep(Duration::from_secs(30));
    let after = leader_log_index(&data);
    assert_eq!(before, after, "the Raft log grew in steady state");

    // Rack 3 (nodes 5 and 6, both storage-only) dies: each node is marked down, IO goes on
    // with two racks, and the rack is never marked out automatically.
    let killed = kill9(&data, 6);
    let first = wait_down(&data, 6, killed);
    let killed = kill9(&data, 5);
    let second = wait_down(&data, 5, killed);
    eprintln!("nodes marked down {first:?} and {second:?} after their kills");
    assert!(first < DOWN_WITHIN && second < DOWN_WITHIN);
    qemu_io_ok(&uri, "write -P 0x5b 0 4M");
    qemu_io_ok(&uri, "read -P 0x5b 0 4M");
    std::thread::sleep(DEV_OUT_AFTER + Duration::from_secs(10));
    for id in [5, 6] {
        let n = node(&data, id);
        assert_eq!(n["health"], "down", "{n}");
        assert_eq!(n["membership"], "in", "a whole rack must not go out: {n}");
    }
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}

/// The metrics address node `id` recorded in its node.json.
fn metrics_addr(data: &Path, id: u64) -> String {
    let text = std::fs::read_to_string(data.join(format!("node-{id}/node.json"))).unwrap();
    let node: Value = serde_json::from_str(&text).unwrap();
    node["metrics_addr"]
        .as_str()
        .unwrap_or_else(|| panic!("node {id} serves metrics: {node}"))
        .to_string()
}

fn scrape(addr: &str) -> Vec<(String, f64)> {
    let text = fabric_suite::scrape(addr).unwrap_or_else(|e| panic!("scrape {addr}: {e:#}"));
    fabric_suite::parse_prometheus_text(&text)
        .unwrap_or_else(|e| panic!("{addr} is not Prometheus text: {e:#}\n{text}"))
}

fn value(samples: &[(String, f64)], series: &str) -> f64 {
    fabric_suite::sample(samples, series).unwrap_or_else(|| panic!("no {series} in {samples:?}"))
}

#[test]
fn every_process_serves_prometheus_metrics_that_move_with_io() {
    if tools(&["qemu-io"]).is_none() {
        return;
    }
    let _serial = fabric_suite::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gateway = format!("127.0.0.1:{}", fabric_suite::free_port());
    let mut dev = DevNode::start_with(
        &data,
        "vol0:64MiB",
        &["--nodes", "4", "--metrics-listen", &gateway],
    )
    .expect("start dev");
    let uri = dev.uri();

    let write = |samples: &[(String, f64)], what: &str| {
        value(
            samples,
            &format!("fabric_volume_{what}_total{{volume=\"vol0\",op=\"write\"}}"),
        )
    };
    qemu_io_ok(&uri, "write -P 0x11 0 1M");
    let before = scrape(&gateway);
    qemu_io_ok(&uri, "write -P 0x12 0 8M");
    qemu_io_ok(&uri, "read -P 0x12 0 8M");
    let after = scrape(&gateway);
    assert!(write(&after, "ops") > write(&before, "ops"));
    assert!(
        write(&after, "bytes") - write(&before, "bytes") >= (8 << 20) as f64,
        "8 MiB written"
    );
    let reads = value(
        &after,
        "fabric_volume_bytes_total{volume=\"vol0\",op=\"read\"}",
    );
    assert!(reads >= (8 << 20) as f64, "8 MiB read: {reads}");
    assert!(
        value(
            &after,
            "fabric_volume_latency_seconds_count{volume=\"vol0\",op=\"write\"}"
        ) >= 1.0
    );

    // Every node: its Raft progress (members) and its heartbeats (all four store data).
    let mut leaders = 0.0;
    for id in 1..=4 {
        // A node's first heartbeat waits up to an interval (spread over the interval).
        let deadline = Instant::now() + Duration::from_secs(10);
        let samples = loop {
            let samples = scrape(&metrics_addr(&data, id));
            if value(&samples, "fabric_agent_heartbeats") >= 1.0 {
                break samples;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} has no accepted heartbeat"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(value(&samples, "fabric_store_checksum_errors"), 0.0);
        if id <= 3 {
            assert!(value(&samples, "fabric_raft_term") >= 1.0, "node {id}");
            assert!(
                value(&samples, "fabric_raft_applied_index") >= 1.0,
                "node {id}"
            );
            assert_eq!(
                value(&samples, "fabric_nodes{state=\"up\"}"),
                4.0,
                "node {id}"
            );
            leaders += value(&samples, "fabric_raft_leader");
        } else {
            assert!(fabric_suite::sample(&samples, "fabric_raft_term").is_none());
        }
    }
    assert_eq!(leaders, 1.0, "one leader");

    // Every metric the Grafana dashboard plots is one some process declares.
    let mut declared = std::collections::BTreeSet::new();
    let mut addrs = vec![gateway.clone()];
    addrs.extend((1..=4).map(|id| metrics_addr(&data, id)));
    for addr in &addrs {
        let text = fabric_suite::scrape(addr).unwrap();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            }
        }
    }
    let dashboard = std::fs::read_to_string(
        fabric_suite::workspace_root().join("tools/grafana/fabric-dashboard.json"),
    )
    .unwrap();
    let mut plotted = 0;
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if !word.starts_with("fabric_") {
            continue;
        }
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| word.strip_suffix(s))
            .unwrap_or(word);
        assert!(
            declared.contains(base),
            "the dashboard plots {word}, which no process declares: {declared:?}"
        );
        plotted += 1;
    }
    assert!(plotted >= 10, "{plotted} metrics plotted");
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}
