//! Replicated volumes served by `fabricd dev --nodes N`: storage nodes and the gateway are
//! separate processes, and real clients (qemu-img, fio) talk to the gateway while storage
//! nodes are killed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fabric_suite::{
    DevNode, fabricctl, fio_report, fio_verify, node_pid, qemu_io_ok, run, tools, workspace_bin,
};
use serde_json::Value;

/// `fabricd dev --nodes 3` serving `vol0` (64 MiB) from a fresh directory: the directory, the
/// data directory in it, and the running launcher. `None` (skip) when a client is missing.
fn three_node_cluster(clients: &[&str]) -> Option<(Serial, tempfile::TempDir, PathBuf, DevNode)> {
    cluster(3, clients)
}

/// Held by the test that runs a cluster; see `fabric_suite::one_cluster_at_a_time`.
type Serial = std::sync::MutexGuard<'static, ()>;

/// The same with `nodes` storage nodes.
fn cluster(nodes: u32, clients: &[&str]) -> Option<(Serial, tempfile::TempDir, PathBuf, DevNode)> {
    cluster_with(nodes, clients, &[])
}

/// The same with more arguments to `fabricd dev`.
fn cluster_with(
    nodes: u32,
    clients: &[&str],
    extra: &[&str],
) -> Option<(Serial, tempfile::TempDir, PathBuf, DevNode)> {
    tools(clients)?;
    let serial = fabric_suite::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let nodes = nodes.to_string();
    let mut args = vec!["--nodes", &nodes];
    args.extend_from_slice(extra);
    let dev = DevNode::start_with(&data, "vol0:64MiB", &args).expect("start dev");
    Some((serial, dir, data, dev))
}

/// The nodes of every PG of the first pool, primary first.
fn pg_nodes(data_dir: &std::path::Path) -> Vec<Vec<u64>> {
    let pools = fabricctl(data_dir, &["pool", "list"]);
    pools[0]["pgs"]
        .as_array()
        .expect("PG map")
        .iter()
        .map(|pg| {
            pg.as_array()
                .expect("PG")
                .iter()
                .map(|n| n.as_u64().expect("node id"))
                .collect()
        })
        .collect()
}

/// Three replicas on three distinct nodes (each in its own rack in a dev cluster).
fn assert_distinct(nodes: &[u64]) {
    let mut distinct = nodes.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "three distinct nodes: {nodes:?}");
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
fn four_nodes_kill_one_under_fio_verify_mark_it_out_rebuild_and_verify_again() {
    let Some((_serial, dir, data, mut dev)) = cluster(4, &["fio", "qemu-img", "qemu-io"]) else {
        return;
    };

    // Every replica holds what a client wrote before any failure.
    let before = dir.path().join("before.raw");
    std::fs::write(&before, vec![0x5au8; 4 << 20]).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&before)
        .arg(dev.uri()))
    .expect("write through the gateway");
    let stored: u64 = (1..=4).map(|id| stored_bytes(&data, id)).sum();
    assert!(
        stored >= 3 * (4 << 20),
        "three copies of the first 4 MiB: {stored} bytes"
    );

    // fio writes with checksums; storage node 2 dies under it.
    let mut fio = fio_verify(&dev.uri(), &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_millis(500));
    signal(node_pid(&data, 2), "-9");
    assert!(
        fio.try_wait().expect("poll fio").is_none(),
        "fio finished before the kill; the test would prove nothing"
    );
    let report = fio_report(fio.wait_with_output().expect("fio ran"));
    let job = &report["jobs"][0];
    let stall_ms = job["write"]["clat_ns"]["max"].as_f64().unwrap() / 1e6;
    eprintln!("longest write while a node died: {stall_ms:.1} ms");
    assert!(stall_ms < 10_000.0, "stall of {stall_ms} ms");

    // The volume's replica state names node 2 as stale wherever the gateway wrote after the
    // kill, and nothing else.
    let shown = volume_show(&data);
    let state = &shown["replica_state"];
    assert!(state["pgs_degraded"].as_u64().unwrap() >= 1, "{shown}");
    assert_eq!(
        state["pgs_degraded"].as_u64().unwrap() + state["pgs_full_redundancy"].as_u64().unwrap(),
        state["pgs_total"].as_u64().unwrap(),
        "{shown}"
    );
    for stale in state["stale"].as_array().unwrap() {
        assert_eq!(stale["nodes"], serde_json::json!([2]), "{shown}");
    }

    // Node 2 is marked out: its PGs move to the other three nodes and are rebuilt there, with
    // the three replicas of every PG still on distinct nodes (one rack each).
    fabricctl(&data, &["node", "out", "2"]);
    wait_fully_redundant(&data);
    for nodes in pg_nodes(&data) {
        assert!(!nodes.contains(&2), "node 2 is out: {nodes:?}");
        assert_distinct(&nodes);
    }

    // Everything fio wrote, and what was written before, reads back and verifies.
    let verified = fio_report(
        fio_verify(&dev.uri(), &["--verify_only"])
            .output()
            .expect("run fio --verify_only"),
    );
    let read = verified["jobs"][0]["read"]["io_bytes"].as_u64().unwrap();
    assert!(
        read >= 40 << 20,
        "the verify pass read back the 48 MiB region: {read} bytes"
    );
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0x5a 0 4M"])
        .arg(dev.uri()))
    .expect("data written before the kill reads back");
    assert_eq!(dev.stop().unwrap(), 0, "clean exit with a node down");
}

/// A process started by the test, killed when the test ends however it ends.
struct Respawned(std::process::Child);

impl Drop for Respawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `sig` (as `kill` spells it, e.g. "-9") to process `pid`; it must be delivered.
fn signal(pid: u32, sig: &str) {
    run(Command::new("kill").args([sig, &pid.to_string()]))
        .unwrap_or_else(|e| panic!("kill {sig} {pid}: {e}"));
}

/// Bytes the gateway's resyncs of `vol0` copied, from its `fabric_resync_bytes` counter on
/// `metrics` (counted at the end of each round of resyncs), once it reached `at_least` and
/// then held still for two resync intervals.
fn resync_bytes_copied(metrics: &str, at_least: u64) -> u64 {
    let read = || {
        let text = fabric_suite::scrape(metrics).expect("scrape the gateway");
        let samples = fabric_suite::parse_prometheus_text(&text).expect("Prometheus text");
        fabric_suite::sample(&samples, "fabric_resync_bytes_total{volume=\"vol0\"}").unwrap_or(0.0)
            as u64
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut copied = read();
    while copied < at_least {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway counted {copied} resync bytes, not {at_least}"
        );
        std::thread::sleep(Duration::from_millis(100));
        copied = read();
    }
    std::thread::sleep(Duration::from_secs(2));
    read()
}

fn volume_show(data_dir: &std::path::Path) -> Value {
    show(data_dir, "vol0")
}

fn show(data_dir: &std::path::Path, volume: &str) -> Value {
    fabricctl(data_dir, &["volume", "show", volume])
}

#[test]
fn a_node_that_comes_back_gets_only_what_changed_while_it_was_away() {
    let metrics = format!("127.0.0.1:{}", fabric_suite::free_port());
    let Some((_serial, dir, data, mut dev)) =
        cluster_with(3, &["qemu-io"], &["--metrics-listen", &metrics])
    else {
        return;
    };
    let uri = dev.uri();
    let qemu_io = |cmd: &str| qemu_io_ok(&uri, cmd);
    qemu_io("write -P 0x11 0 32M");

    // Node 2 goes away; one extent (8 MiB .. 12 MiB) is rewritten meanwhile.
    let pid = node_pid(&data, 2);
    let argv = fabric_suite::command_line(pid);
    signal(pid, "-9");
    qemu_io("write -P 0x22 8M 4M");
    let shown = volume_show(&data);
    assert!(
        shown["replica_state"]["pgs_degraded"].as_u64().unwrap() >= 1,
        "node 2 missed a write: {shown}"
    );

    // It comes back with the same data directory and is resynced by the gateway.
    let log = std::fs::File::create(dir.path().join("node-2-again.log")).unwrap();
    let _node2 = Respawned(
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("restart node 2"),
    );
    wait_fully_redundant(&data);

    // Only the rewritten extent was copied, and node 2 holds it.
    let copied = resync_bytes_copied(&metrics, 4 << 20);
    eprintln!("written while node 2 was away: 4194304 bytes; resync copied {copied} bytes");
    assert_eq!(
        copied,
        4 << 20,
        "delta resync copies the changed extent only"
    );
    let on_node2 = std::fs::read(data.join("node-2/store/volumes/r-0000000000000001/data"))
        .expect("node 2's copy of the volume");
    assert!(
        on_node2[8 << 20..12 << 20].iter().all(|&b| b == 0x22),
        "new data on node 2"
    );
    assert!(
        on_node2[..8 << 20].iter().all(|&b| b == 0x11),
        "old data kept on node 2"
    );
    qemu_io("read -P 0x22 8M 4M");
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}

/// Starts another gateway for `vol0` that attaches as `client` with `--force`, logging to
/// `log`; returns it and its NBD URI once it listens.
fn start_gateway(
    data_dir: &std::path::Path,
    log: &std::path::Path,
    client: &str,
) -> (Respawned, String) {
    start_gateway_of(data_dir, log, client, "vol0")
}

/// Starts a gateway serving `volume` as `client`, taking it over if another holds it.
fn start_gateway_of(
    data_dir: &std::path::Path,
    log: &std::path::Path,
    client: &str,
    volume: &str,
) -> (Respawned, String) {
    let cluster: Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("cluster.json")).unwrap()).unwrap();
    let endpoints: Vec<&str> = cluster["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[1].as_str().unwrap())
        .collect();
    let port = fabric_suite::free_port();
    let log = std::fs::File::create(log).unwrap();
    let cert_dir = fabric_suite::gateway_identity_as(data_dir, client, "volume-admin");
    let gateway = Respawned(
        Command::new(workspace_bin("fabricd"))
            .args(["gateway", "--volume", volume, "--force"])
            .args(["--client-name", client])
            .arg("--cert-dir")
            .arg(&cert_dir)
            .args(["--endpoints", &endpoints.join(",")])
            .args(["--nbd-listen", &format!("127.0.0.1:{port}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a gateway"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "gateway {client} never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (gateway, format!("nbd://127.0.0.1:{port}/{volume}"))
}

#[test]
fn a_gateway_started_while_a_node_is_down_serves_from_the_others() {
    let Some((_serial, dir, data, mut dev)) = three_node_cluster(&["qemu-io"]) else {
        return;
    };
    qemu_io_ok(&dev.uri(), "write -P 0x81 0 4M");
    signal(node_pid(&data, 3), "-9");

    let started = std::time::Instant::now();
    let (_b, uri) = start_gateway(&data, &dir.path().join("gateway-b.log"), "host-b");
    eprintln!(
        "gateway up {:?} after start with node 3 down",
        started.elapsed()
    );
    qemu_io_ok(&uri, "read -P 0x81 0 4M");
    qemu_io_ok(&uri, "write -P 0x82 0 4M");
    qemu_io_ok(&uri, "read -P 0x82 0 4M");
    assert!(
        volume_show(&data)["replica_state"]["pgs_degraded"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}

/// Waits until the volume has no stale replica, or fails after 60 s.
fn wait_fully_redundant(data_dir: &std::path::Path) {
    wait_fully_redundant_of(data_dir, "vol0");
}

fn wait_fully_redundant_of(data_dir: &std::path::Path, volume: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let shown = show(data_dir, volume);
        if shown["replica_state"]["pgs_degraded"] == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still degraded after 60 s: {shown}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_frozen_node_is_dropped_after_the_timeout_and_resynced_when_it_thaws() {
    let Some((_serial, _dir, data, mut dev)) = three_node_cluster(&["qemu-io"]) else {
        return;
    };
    let uri = dev.uri();
    let qemu_io = |cmd: &str| qemu_io_ok(&uri, cmd);
    qemu_io("write -P 0x31 0 8M");

    // Frozen, not dead: its connections stay open and simply stop answering.
    let pid = node_pid(&data, 2);
    signal(pid, "-STOP");
    let started = std::time::Instant::now();
    qemu_io("write -P 0x32 0 4M");
    let stall = started.elapsed();
    eprintln!("write while node 2 is frozen took {stall:?}");
    // The gateway's request timeout is 5 s; the rest is the Raft commit of the removal.
    assert!(
        stall < Duration::from_secs(10),
        "the write resumes after the request timeout, took {stall:?}"
    );
    assert!(
        volume_show(&data)["replica_state"]["pgs_degraded"]
            .as_u64()
            .unwrap()
            >= 1
    );

    signal(pid, "-CONT");
    wait_fully_redundant(&data);
    let on_node2 = std::fs::read(data.join("node-2/store/volumes/r-0000000000000001/data"))
        .expect("node 2's copy of the volume");
    assert!(
        on_node2[..4 << 20].iter().all(|&b| b == 0x32),
        "node 2 caught up"
    );
    qemu_io("read -P 0x32 0 4M");
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}

#[test]
fn after_a_forced_attach_the_old_gateway_is_refused_and_the_new_ones_writes_stay() {
    let Some((_serial, dir, data, mut dev)) = three_node_cluster(&["qemu-io"]) else {
        return;
    };
    let qemu_io = |uri: &str, cmd: &str| {
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", cmd, uri])
            .output()
            .expect("run qemu-io")
    };
    let old = dev.uri();
    assert!(qemu_io(&old, "write -P 0x41 0 1M").status.success());

    // A second gateway takes the volume over.
    let (_b, new) = start_gateway(&data, &dir.path().join("gateway-b.log"), "host-b");
    let shown = volume_show(&data);
    assert_eq!(shown["attached_to"], "host-b", "{shown}");
    assert_eq!(shown["attach_epoch"], 2, "{shown}");

    assert!(qemu_io(&new, "write -P 0x42 0 1M").status.success());
    let refused = qemu_io(&old, "write -P 0x43 0 1M");
    let said = String::from_utf8_lossy(&refused.stdout).to_string()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() || said.contains("error"),
        "the old gateway's write must fail: {said}"
    );
    let read = qemu_io(&new, "read -P 0x42 0 1M");
    assert!(
        read.status.success() && !String::from_utf8_lossy(&read.stdout).contains("mismatch"),
        "the new gateway's write is intact: {}",
        String::from_utf8_lossy(&read.stdout)
    );
    let old_log = std::fs::read_to_string(data.join("gateway/fabricd.log")).unwrap();
    assert!(
        old_log.contains("fenced"),
        "the old gateway says it is fenced"
    );
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}

#[test]
fn a_corrupt_block_on_the_primary_is_read_from_another_replica_and_repaired() {
    use std::os::unix::fs::FileExt;
    let Some((_serial, _dir, data, mut dev)) = three_node_cluster(&["qemu-io"]) else {
        return;
    };
    qemu_io_ok(&dev.uri(), "write -P 0x51 0 1M");

    // The node that serves reads of extent 0 first: its PG's primary.
    let pgs = pg_nodes(&data);
    let pg = volume::client::pg_of(volume::wire::VolumeId(1), 0, pgs.len());
    let primary = pgs[pg][0];
    let file = data.join(format!(
        "node-{primary}/store/volumes/r-0000000000000001/data"
    ));
    let copy = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .expect("primary's data file");
    let mut byte = [0u8; 1];
    copy.read_exact_at(&mut byte, 4096 + 7).unwrap();
    assert_eq!(byte[0], 0x51);
    copy.write_all_at(&[byte[0] ^ 0x10], 4096 + 7).unwrap();
    copy.sync_all().unwrap();

    // The read fails over and returns good data; the primary's copy is then rewritten, and the
    // gateway logs the repair once the replica has acknowledged it (so after the file changed).
    qemu_io_ok(&dev.uri(), "read -P 0x51 0 1M");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        copy.read_exact_at(&mut byte, 4096 + 7).unwrap();
        let log = std::fs::read_to_string(data.join("gateway/fabricd.log")).unwrap_or_default();
        if byte[0] == 0x51 && log.contains("bad copy repaired") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {primary}'s bad block was not repaired and logged (byte {:#x}): {log}",
            byte[0]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}

#[test]
fn a_node_marked_out_has_its_replicas_rebuilt_on_the_remaining_nodes() {
    let metrics = format!("127.0.0.1:{}", fabric_suite::free_port());
    let Some((_serial, _dir, data, mut dev)) =
        cluster_with(4, &["qemu-io"], &["--metrics-listen", &metrics])
    else {
        return;
    };
    let uri = dev.uri();
    qemu_io_ok(&uri, "write -P 0x61 0 32M");
    let held_by = |node: u64| {
        pg_nodes(&data)
            .iter()
            .filter(|nodes| nodes.contains(&node))
            .count()
    };
    assert!(held_by(2) > 0, "node 2 holds PGs before it is marked out");

    fabricctl(&data, &["node", "out", "2"]);
    assert_eq!(held_by(2), 0, "no PG is placed on node 2 any more");
    // That the moved PGs were rebuilt (and not found current) is the copy counter's to show
    // below: a rebuild of 32 MiB can be over before a second command reads the volume.
    let started = std::time::Instant::now();
    wait_fully_redundant(&data);
    eprintln!("rebuild after node out took {:?}", started.elapsed());
    let state = &volume_show(&data)["replica_state"];
    assert_eq!(
        state["pgs_rebuilding"], 0,
        "finished rebuilds are cleared: {state}"
    );

    // Every PG has three current replicas in distinct racks (one node per rack here), and the
    // data reads back with node 2 gone.
    for nodes in pg_nodes(&data) {
        assert_distinct(&nodes);
    }
    signal(node_pid(&data, 2), "-9");
    qemu_io_ok(&uri, "read -P 0x61 0 32M");
    let copied = resync_bytes_copied(&metrics, 1);
    eprintln!("rebuild copied {copied} bytes");
    assert!(
        copied > 0 && copied <= 32 << 20,
        "rebuild copied {copied} bytes"
    );
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}

#[test]
fn a_node_that_stays_dead_is_marked_out_by_the_leader_and_its_replicas_rebuilt() {
    let Some((_serial, _dir, data, mut dev)) = cluster(4, &["qemu-io"]) else {
        return;
    };
    let uri = dev.uri();
    qemu_io_ok(&uri, "write -P 0x71 0 16M");

    // Node 4 dies and stays dead; the dev cluster marks a node out after 30 s of silence.
    signal(node_pid(&data, 4), "-9");
    qemu_io_ok(&uri, "write -P 0x72 16M 4M");
    let killed = std::time::Instant::now();
    let deadline = killed + Duration::from_secs(120);
    loop {
        let nodes = fabricctl(&data, &["node", "list"]);
        let node4 = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == 4)
            .cloned()
            .expect("node 4 listed");
        if node4["membership"] == "out" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 4 not marked out after 120 s: {node4}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("node 4 marked out {:?} after the kill", killed.elapsed());
    wait_fully_redundant(&data);
    qemu_io_ok(&uri, "read -P 0x71 0 16M");
    qemu_io_ok(&uri, "read -P 0x72 16M 4M");
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}

#[test]
fn an_idle_volume_is_rebuilt_by_the_agent_after_its_node_is_marked_out() {
    let Some((_serial, dir, data, mut dev)) = cluster(4, &["qemu-io"]) else {
        return;
    };
    fabricctl(&data, &["volume", "create", "idle", "--size", "64MiB"]);
    // A gateway writes the volume, then stops cleanly: it flushes and detaches.
    let (mut gateway, uri) = start_gateway_of(
        &data,
        &dir.path().join("gateway-idle.log"),
        "host-i",
        "idle",
    );
    qemu_io_ok(&uri, "write -P 0x71 0 32M");
    signal(gateway.0.id(), "-TERM");
    assert!(gateway.0.wait().unwrap().success(), "clean gateway exit");
    assert_eq!(show(&data, "idle")["attached_to"], "", "detached on stop");

    // Node 2 goes out; nobody serves the volume, so the agent on the leader's node heals it.
    fabricctl(&data, &["node", "out", "2"]);
    assert!(
        show(&data, "idle")["replica_state"]["pgs_degraded"]
            .as_u64()
            .unwrap()
            > 0,
        "node 2's PGs moved, so the idle volume has replicas to rebuild"
    );
    wait_fully_redundant_of(&data, "idle");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let shown = show(&data, "idle");
        if shown["attached_to"] == "" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent still holds the volume: {shown}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let healed_by_agent = (1..=4).any(|n| {
        std::fs::read_to_string(data.join(format!("node-{n}/fabricd.log")))
            .unwrap_or_default()
            .contains("rebuild agent let go of the volume")
    });
    assert!(healed_by_agent, "a node's rebuild agent healed the volume");

    // With node 2 dead, the data reads back through a new gateway from the rebuilt replicas.
    signal(node_pid(&data, 2), "-9");
    let (_again, uri) = start_gateway_of(
        &data,
        &dir.path().join("gateway-idle-2.log"),
        "host-j",
        "idle",
    );
    qemu_io_ok(&uri, "read -P 0x71 0 32M");
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}

#[test]
fn a_deleted_volume_frees_its_space_on_every_node() {
    let Some((_serial, dir, data, mut dev)) = cluster(4, &["qemu-io"]) else {
        return;
    };
    fabricctl(&data, &["volume", "create", "scratch", "--size", "64MiB"]);
    let (mut gateway, uri) = start_gateway_of(
        &data,
        &dir.path().join("gateway-scratch.log"),
        "host-s",
        "scratch",
    );
    let before: Vec<u64> = (1..=4).map(|id| stored_bytes(&data, id)).collect();
    qemu_io_ok(&uri, "write -P 0x3c 0 48M");
    signal(gateway.0.id(), "-TERM");
    assert!(gateway.0.wait().unwrap().success(), "clean gateway exit");
    let written: Vec<u64> = (1..=4).map(|id| stored_bytes(&data, id)).collect();
    let grown: u64 = written.iter().zip(&before).map(|(w, b)| w - b).sum();
    assert!(
        grown >= 3 * (48 << 20),
        "3 copies of 48 MiB stored: {grown}"
    );

    fabricctl(&data, &["volume", "delete", "scratch"]);
    // Every node's agent sees the deletion on its watch and removes the replica.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now: Vec<u64> = (1..=4).map(|id| stored_bytes(&data, id)).collect();
        let held: u64 = now
            .iter()
            .zip(&before)
            .map(|(n, b)| n.saturating_sub(*b))
            .sum();
        if held < 1 << 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "space not freed 30 s after the delete: {now:?} (before {before:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The volume the dev gateway serves is untouched.
    qemu_io_ok(&dev.uri(), "write -P 0x3d 0 1M");
    qemu_io_ok(&dev.uri(), "read -P 0x3d 0 1M");
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}

/// `nbdinfo --map` of a replicated volume shows where data was written and holes elsewhere:
/// the gateway asks a live replica of each extent's group, whose store knows its holes.
#[test]
fn nbdinfo_map_of_a_replicated_volume_shows_holes() {
    let Some((_serial, _dir, _data, mut dev)) = three_node_cluster(&["nbdinfo", "qemu-io"]) else {
        return;
    };
    let uri = dev.uri();
    qemu_io_ok(&uri, "write -P 0x5a 8M 1M");
    let map = fabric_suite::run_text(Command::new("nbdinfo").args(["--map", &uri])).unwrap();
    // offset length type description
    let mut covered = 0u64;
    let (mut data, mut holes) = (Vec::new(), 0u64);
    for line in map.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (offset, len): (u64, u64) = (fields[0].parse().unwrap(), fields[1].parse().unwrap());
        assert_eq!(offset, covered, "extents tile the volume: {map}");
        covered += len;
        match fields.last() {
            Some(&"data") => data.push((offset, len)),
            Some(&"hole,zero") => holes += len,
            other => panic!("unexpected type {other:?}: {map}"),
        }
    }
    assert_eq!(covered, 64 << 20, "{map}");
    assert_eq!(data, vec![(8 << 20, 1 << 20)], "{map}");
    assert_eq!(holes, 63 << 20, "{map}");
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}
