//! Replicated volumes served by `fabricd dev --nodes N`: storage nodes and the gateway are
//! separate processes, and real clients (qemu-img, fio) talk to the gateway while storage
//! nodes are killed.

use std::process::{Command, Stdio};
use std::time::Duration;

use fabric_suite::{DevNode, run, tools, workspace_bin};
use serde_json::Value;

/// Pid of storage node `id` of the cluster in `data_dir`, from `fabricctl status --json`.
fn node_pid(data_dir: &std::path::Path, id: u64) -> u32 {
    let out = Command::new(workspace_bin("fabricctl"))
        .args(["--json", "--data-dir"])
        .arg(data_dir)
        .arg("status")
        .output()
        .expect("run fabricctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let node = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("node {id} in {status}"));
    node["pid"].as_u64().expect("pid") as u32
}

/// Bytes the store of node `id` holds on disk (its data files are thin).
fn stored_bytes(data_dir: &std::path::Path, id: u64) -> u64 {
    let out = Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(data_dir.join(format!("node-{id}/store")))
        .output()
        .expect("du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du output")
}

#[test]
fn three_nodes_kill_one_during_fio_verify_and_every_acknowledged_write_reads_back() {
    let Some(()) = tools(&["fio", "qemu-img", "qemu-io"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut dev = DevNode::start_with(&data, "vol0:64MiB", &["--nodes", "3"]).expect("start dev");

    // Every replica holds what a client wrote before any failure.
    let before = dir.path().join("before.raw");
    std::fs::write(&before, vec![0x5au8; 4 << 20]).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&before)
        .arg(dev.uri()))
    .expect("write through the gateway");
    for id in 1..=3 {
        assert!(
            stored_bytes(&data, id) >= 4 << 20,
            "node {id} holds a replica of the first 4 MiB"
        );
    }

    // fio writes with checksums; storage node 2 dies under it.
    let mut fio = Command::new("fio")
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", dev.uri()),
            "--rw=randwrite",
            "--bs=4k",
            "--offset=8M",
            "--size=48M",
            "--iodepth=16",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--do_verify=1",
            "--output-format=json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_millis(500));
    let victim = node_pid(&data, 2);
    run(Command::new("kill").args(["-9", &victim.to_string()])).expect("kill -9 node 2");
    assert!(
        fio.try_wait().expect("poll fio").is_none(),
        "fio finished before the kill; the test would prove nothing"
    );
    let out = fio.wait_with_output().expect("fio ran");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&text[text.find('{').expect("fio JSON")..]).unwrap();
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "fio saw an IO error: {job}");
    let stall_ms = job["write"]["clat_ns"]["max"].as_f64().unwrap() / 1e6;
    eprintln!("longest write while a node died: {stall_ms:.1} ms");
    assert!(stall_ms < 10_000.0, "stall of {stall_ms} ms");

    // The cluster's PG map names node 2 as stale wherever the gateway wrote after the kill.
    let out = Command::new(workspace_bin("fabricctl"))
        .args(["--json", "--data-dir"])
        .arg(&data)
        .args(["pool", "list"])
        .output()
        .expect("run fabricctl");
    let pools: Value = serde_json::from_slice(&out.stdout).expect("pool JSON");
    let stale = pools[0]["stale"].as_array().expect("stale lists");
    assert!(pools[0]["degraded_pgs"].as_u64().unwrap() >= 1, "{pools}");
    for (pg, nodes) in stale.iter().enumerate() {
        let nodes = nodes.as_array().unwrap();
        assert!(
            nodes.is_empty() || nodes == &[Value::from(2)],
            "PG {pg}: only node 2 missed writes, stale {nodes:?}"
        );
    }

    // What was written before the failure still reads back, now from two replicas.
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0x5a 0 4M"])
        .arg(dev.uri()))
    .expect("data written before the kill reads back");
    assert_eq!(dev.stop().unwrap(), 0, "clean exit with a node down");
}
