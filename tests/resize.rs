//! Resizing a replicated volume under `fabricd dev --nodes 3`: `fabricctl volume resize`
//! changes the cluster's record, every storage node grows its replica, and the gateway's next
//! NBD connection exports the new size, with the old data in place and the new range
//! writable on every replica; after a restart of every process, still.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fabric_suite::{DevNode, fabricctl, qemu_io_ok, run_text, tools};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const OLD: u64 = 64 * MIB;
const NEW: u64 = 160 * MIB;
/// How long the replicas and the gateway may take to follow a resize: a watch event for the
/// storage agents, then the gateway's next look at the volume (every second).
const GROWN_WITHIN: Duration = Duration::from_secs(30);

/// The size a new NBD connection to `uri` is told, as `qemu-img info` reports it.
fn exported_size(uri: &str) -> u64 {
    let info = run_text(Command::new("qemu-img").args(["info", "--output=json", uri]))
        .expect("qemu-img info");
    let info: Value = serde_json::from_str(&info).expect("qemu-img info JSON");
    info["virtual-size"].as_u64().expect("virtual-size")
}

/// The one replicated volume's directory in the store of node `id`.
fn replica_dir(data: &Path, id: u64) -> std::path::PathBuf {
    let volumes = data.join(format!("node-{id}/store/volumes"));
    let mut dirs: Vec<_> = std::fs::read_dir(&volumes)
        .unwrap_or_else(|e| panic!("{}: {e}", volumes.display()))
        .map(|d| d.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "node {id} holds one volume: {dirs:?}");
    dirs.remove(0)
}

/// The size node `id`'s store records for its replica of the volume.
fn catalogued_size(data: &Path, id: u64) -> u64 {
    let path = data.join(format!("node-{id}/store/volumes.json"));
    let catalog: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    catalog["volumes"][0]["size_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: {catalog}", path.display()))
}

/// `len` bytes at `offset` of node `id`'s replica, read from its data file.
fn replica_bytes(data: &Path, id: u64, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(replica_dir(data, id).join("data")).unwrap();
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn a_resized_volume_grows_on_every_replica_and_a_new_connection_sees_and_writes_the_new_range() {
    if tools(&["qemu-img", "qemu-io"]).is_none() {
        return;
    }
    let _serial = fabric_suite::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut dev = DevNode::start_with(&data, "vol0:64MiB", &["--nodes", "3"]).expect("start dev");
    let uri = dev.uri();
    assert_eq!(exported_size(&uri), OLD);

    // Data at the start and at the very end of the old size.
    qemu_io_ok(&uri, "write -P 0x5a 0 8M");
    qemu_io_ok(&uri, "write -P 0x6b 63M 1M");

    let resized = fabricctl(&data, &["volume", "resize", "vol0", "--size", "160MiB"]);
    assert_eq!(resized["size_bytes"], NEW, "{resized}");

    // Each new connection asks again: the gateway exports the new size once every replica
    // holds it.
    let asked = Instant::now();
    loop {
        let size = exported_size(&uri);
        if size == NEW {
            break;
        }
        assert_eq!(size, OLD, "the export is the old size or the new one");
        assert!(
            asked.elapsed() < GROWN_WITHIN,
            "the export still has {size} bytes {:?} after the resize",
            asked.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("the export grew {:?} after the resize", asked.elapsed());

    // Every node's store grew, durably: its catalog and its data file say so.
    for id in 1..=3 {
        assert_eq!(catalogued_size(&data, id), NEW, "node {id}'s catalog");
        let len = std::fs::metadata(replica_dir(&data, id).join("data"))
            .unwrap()
            .len();
        assert_eq!(len, NEW, "node {id}'s data file");
    }

    // The old data is in place, the new range reads as zeros, and takes writes: across the
    // old end and far past it.
    qemu_io_ok(&uri, "read -P 0x5a 0 8M");
    qemu_io_ok(&uri, "read -P 0x6b 63M 1M");
    qemu_io_ok(&uri, "read -P 0 64M 96M");
    qemu_io_ok(&uri, "write -P 0x3d 62M 4M");
    qemu_io_ok(&uri, "write -P 0x7c 150M 10M");
    qemu_io_ok(&uri, "flush");
    qemu_io_ok(&uri, "read -P 0x3d 62M 4M");
    qemu_io_ok(&uri, "read -P 0x7c 150M 10M");
    qemu_io_ok(&uri, "read -P 0 66M 84M");

    // Three replicas of every PG on three nodes: each node holds the writes past the old end.
    for id in 1..=3 {
        for (offset, byte) in [(65 * MIB, 0x3d), (159 * MIB, 0x7c)] {
            let got = replica_bytes(&data, id, offset, 4096);
            assert!(
                got.iter().all(|&b| b == byte),
                "node {id} at {offset}: not the {byte:#x} written there"
            );
        }
    }

    // Shrinking is refused, and the export keeps its size.
    let shrink = Command::new(fabric_suite::workspace_bin("fabricctl"))
        .args(["--json", "--data-dir"])
        .arg(&data)
        .args(["volume", "resize", "vol0", "--size", "64MiB"])
        .output()
        .expect("run fabricctl");
    assert!(!shrink.status.success(), "a shrink must be refused");
    assert_eq!(exported_size(&uri), NEW);

    // Every process restarts: the stores open grown, and the gateway attaches at the new size.
    assert_eq!(dev.stop().expect("stop dev"), 0, "a clean stop");
    dev.restart().expect("restart dev");
    assert_eq!(exported_size(&uri), NEW);
    qemu_io_ok(&uri, "read -P 0x5a 0 8M");
    qemu_io_ok(&uri, "read -P 0x3d 62M 4M");
    qemu_io_ok(&uri, "read -P 0x7c 150M 10M");
    qemu_io_ok(&uri, "write -P 0x4e 159M 1M");
    qemu_io_ok(&uri, "read -P 0x4e 159M 1M");
}
