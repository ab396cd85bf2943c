//! The control plane's shape, with real processes: a fixed voter set, storage-only nodes that
//! are not Raft members, liveness kept off the Raft log, and the guard that never marks a
//! whole rack out.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fabric_suite::{DevNode, fabricctl, node_pid, tools};
use serde_json::Value;

/// Out interval of a dev cluster (`DEV_NODE_OUT_AFTER_MS`).
const DEV_OUT_AFTER: Duration = Duration::from_secs(30);
/// Longest a killed node may stay `up`: 3 s of silence, then a probe answered with the next
/// heartbeat (1 s), then the commit; the rest is slack for a loaded machine.
const DOWN_WITHIN: Duration = Duration::from_secs(10);

fn qemu_io_ok(uri: &str, cmd: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd, uri])
        .stdin(Stdio::null())
        .output()
        .expect("run qemu-io");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("error") && !text.contains("Pattern verification"),
        "qemu-io {cmd:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

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

    // A steady cluster writes nothing to the Raft log: heartbeats stay on the leader.
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
