//! Scrub under `fabricd dev --nodes 3` (three replicas of every PG, one per node): a byte
//! flipped in a cold block of one replica's data file while the cluster is stopped is found by
//! `fabricctl scrub start --wait` with no client reading it, and the file holds the right
//! bytes again; a replica that silently lost a write (its files rolled back to an older
//! version while its process was down) is found by a deep scrub and given the newest copy; a
//! volume nobody serves is scrubbed by the maintenance agent; `scrub status` shows each PG.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fabric_suite::{DevNode, fabricctl, node_pid, qemu_io_ok, run, tools};
use serde_json::Value;

const MIB: usize = 1 << 20;

/// `fabricd dev --nodes 3` serving `vol0` (64 MiB) from a fresh directory.
fn cluster() -> Option<(
    std::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    PathBuf,
    DevNode,
)> {
    tools(&["qemu-io"])?;
    let serial = fabric_suite::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = DevNode::start_with(&data, "vol0:64MiB", &["--nodes", "3"]).expect("start dev");
    Some((serial, dir, data, dev))
}

/// The store's directory name of the volume with id `id`.
fn store_name(id: u64) -> String {
    format!("r-{id:016x}")
}

/// Node `node`'s data file of the volume with id `id`.
fn data_file(data: &Path, node: u64, id: u64) -> PathBuf {
    data.join(format!("node-{node}/store/volumes/{}/data", store_name(id)))
}

fn volume_id(data: &Path, name: &str) -> u64 {
    fabricctl(data, &["volume", "show", name])["id"]
        .as_u64()
        .expect("volume id")
}

/// The rows of `scrub start NAME --wait` (and `ARGS`), summed: errors, repaired, unrepaired.
fn scrub_and_wait(data: &Path, name: &str, args: &[&str]) -> (u64, u64, u64, Vec<Value>) {
    let mut cmd = vec!["scrub", "start", name, "--wait", "--timeout", "120"];
    cmd.extend_from_slice(args);
    let rows = fabricctl(data, &cmd);
    let rows = rows.as_array().expect("scrub status rows").clone();
    let sum = |k: &str| rows.iter().map(|r| r[k].as_u64().unwrap()).sum::<u64>();
    (sum("errors"), sum("repaired"), sum("unrepaired"), rows)
}

fn read_at(path: &Path, offset: usize, len: usize) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes[offset..offset + len].to_vec()
}

#[test]
fn a_byte_flipped_in_a_cold_block_is_found_and_repaired_without_a_client_read() {
    let Some((_serial, _dir, data, mut dev)) = cluster() else {
        return;
    };
    qemu_io_ok(&dev.uri(), "write -P 0x5a 0 8M");
    let id = volume_id(&data, "vol0");
    assert_eq!(dev.stop().unwrap(), 0, "SIGTERM is a clean stop");

    let file = data_file(&data, 1, id);
    let at = 3 * MIB + 4096 * 7 + 100;
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes[at], 0x5a);
    bytes[at] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();

    dev.restart().unwrap();
    let (errors, repaired, unrepaired, rows) = scrub_and_wait(&data, "vol0", &[]);
    assert_eq!((errors, repaired, unrepaired), (1, 1, 0), "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["last_scrub"] != "never" && r["requested"] == ""),
        "every PG scrubbed: {rows:?}"
    );
    assert_eq!(
        read_at(&file, 3 * MIB, MIB),
        vec![0x5a; MIB],
        "the replica's file holds the right bytes again"
    );
    // A second scrub finds nothing; the totals keep the first one's find.
    let (errors, _, _, rows) = scrub_and_wait(&data, "vol0", &[]);
    assert_eq!(errors, 0, "{rows:?}");
    let totals: u64 = rows
        .iter()
        .map(|r| r["repaired_total"].as_u64().unwrap())
        .sum();
    assert_eq!(totals, 1);
    qemu_io_ok(&dev.uri(), "read -P 0x5a 0 8M");
}

#[test]
fn a_deep_scrub_gives_a_replica_that_lost_a_write_the_newest_copy() {
    let Some((_serial, dir, data, _dev)) = cluster() else {
        return;
    };
    let uri = _dev.uri();
    qemu_io_ok(&uri, "write -P 0x11 0 4M");
    let id = volume_id(&data, "vol0");
    let name = store_name(id);
    let node2 = data.join("node-2/store");
    let files = [
        format!("volumes/{name}/data"),
        format!("volumes/{name}/crc"),
        format!("replica/{name}/versions"),
    ];
    // Node 2's copy as it is now: what it will be rolled back to.
    let saved: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(node2.join(f)).unwrap())
        .collect();
    qemu_io_ok(&uri, "write -P 0x22 0 4M");

    // Node 2's process dies and its disk loses the last write (files back as they were);
    // nothing is written while it is away, so the gateway never marks it stale.
    let pid = node_pid(&data, 2);
    let argv = fabric_suite::command_line(pid);
    run(Command::new("kill").args(["-9", &pid.to_string()])).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for (f, bytes) in files.iter().zip(&saved) {
        std::fs::write(node2.join(f), bytes).unwrap();
    }
    let log = std::fs::File::create(dir.path().join("node-2-again.log")).unwrap();
    let mut node2_again = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("restart node 2");
    let file = data_file(&data, 2, id);
    assert_eq!(read_at(&file, 0, 4096), vec![0x11; 4096], "rolled back");

    // A light scrub finds nothing wrong with any block: each matches its own checksum.
    let (errors, _, _, rows) = scrub_and_wait(&data, "vol0", &[]);
    assert_eq!(errors, 0, "{rows:?}");
    let (errors, repaired, unrepaired, rows) = scrub_and_wait(&data, "vol0", &["--deep"]);
    assert_eq!((errors, repaired, unrepaired), (1, 1, 0), "{rows:?}");
    assert!(rows.iter().all(|r| r["last_deep_scrub"] != "never"));
    assert_eq!(
        read_at(&file, 0, 4 * MIB),
        vec![0x22; 4 * MIB],
        "the newest copy"
    );
    qemu_io_ok(&uri, "read -P 0x22 0 4M");
    let _ = node2_again.kill();
    let _ = node2_again.wait();
}

#[test]
fn a_volume_nobody_serves_is_scrubbed_by_the_maintenance_agent() {
    let Some((_serial, _dir, data, mut dev)) = cluster() else {
        return;
    };
    fabricctl(&data, &["volume", "create", "cold", "--size", "16MiB"]);
    let gateway = dev.uri().rsplit_once('/').unwrap().0.to_owned();
    qemu_io_ok(&format!("{gateway}/cold"), "write -P 0x33 0 1M");
    let id = volume_id(&data, "cold");
    assert_eq!(dev.stop().unwrap(), 0);
    let file = data_file(&data, 3, id);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[4096 + 1] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    dev.restart().unwrap();

    let shown = fabricctl(&data, &["volume", "show", "cold"]);
    assert_eq!(shown["attached_to"], "", "nobody serves it: {shown}");
    let (errors, repaired, _, rows) = scrub_and_wait(&data, "cold", &[]);
    assert_eq!((errors, repaired), (1, 1), "{rows:?}");
    assert_eq!(read_at(&file, 4096, 4096), vec![0x33; 4096]);
    let shown = fabricctl(&data, &["volume", "show", "cold"]);
    assert_eq!(shown["attached_to"], "", "the agent let go: {shown}");
    // `scrub status` without a name lists every volume's PGs.
    let all = fabricctl(&data, &["scrub", "status"]);
    let volumes: std::collections::BTreeSet<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["volume"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, ["cold", "vol0"].into());
}
