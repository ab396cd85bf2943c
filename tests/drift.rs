//! Drift on a real cluster (`fabricd dev --nodes 3` and a fourth storage node started from a
//! config file): a hand edit of the file shows in `fabricctl drift` within two heartbeats, as
//! auto-repair, and the node puts the file back; under an exception the edit is listed as
//! excepted and left alone, and once accepted it is the desired state; all in the audit log.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fabric_suite::{fabricctl, workspace_bin};
use serde_json::Value;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "{what} within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

fn audited(data: &Path, verb: &str, target: &str) -> bool {
    fabricctl(data, &["audit", "list", "--verb", verb, "--limit", "10000"])
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["target"] == target)
}

fn drift_of(data: &Path, node: u64) -> Vec<Value> {
    fabricctl(data, &["drift"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["node"] == node)
        .cloned()
        .collect()
}

#[test]
fn a_hand_edited_config_file_is_found_within_two_heartbeats_and_put_back() {
    let (_serial, dir, data, _dev) = fabric_suite::three_node_cluster();
    let cluster: Value =
        serde_json::from_slice(&std::fs::read(data.join("cluster.json")).unwrap()).unwrap();
    let member = cluster["members"][0][1].as_str().unwrap().to_owned();
    let token = fabricctl(&data, &["join-token", "create"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = dir.path().join("node-4.toml");
    let original = format!(
        "id = 4\nroles = \"storage\"\ndata_dir = \"{}\"\ndata_addr = \"127.0.0.1:0\"\n\
         location = \"rack=rack4,host=host4\"\njoin = \"{member}\"\n",
        dir.path().join("node-4").display()
    );
    std::fs::write(&config, &original).unwrap();
    let log = std::fs::File::create(dir.path().join("node-4.log")).unwrap();
    let _node = Killed(
        Command::new(workspace_bin("fabricd"))
            .args(["node", "--config"])
            .arg(&config)
            .args(["--token", &token])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // Registered, and its first report taken as its desired state.
    wait_for("node 4's baseline", 30, || {
        audited(&data, "drift.baseline", "node/4")
    });
    assert!(drift_of(&data, 4).is_empty());

    // A hand edit: listed as auto-repair within two heartbeats (1 s apart), then put back.
    std::fs::write(&config, format!("{original}disk_capacity = \"5TiB\"\n")).unwrap();
    let mut listed = Vec::new();
    let found = wait_for("the edit in fabricctl drift", 10, || {
        listed = drift_of(&data, 4);
        !listed.is_empty() || audited(&data, "drift.detected", "node/4 config")
    });
    eprintln!("the edit was found after {found:?}");
    assert!(
        found < Duration::from_millis(3_000),
        "found after {found:?}"
    );
    if let Some(d) = listed.first() {
        assert_eq!(d["item"], "config");
        assert_eq!(d["class"], "auto-repair");
    }
    wait_for("the file put back", 10, || {
        std::fs::read_to_string(&config).unwrap() == original
    });
    wait_for("the drift cleared", 10, || {
        audited(&data, "drift.cleared", "node/4 config") && drift_of(&data, 4).is_empty()
    });
    assert!(audited(&data, "drift.detected", "node/4 config"));

    // Under an exception the edit stays, listed as excepted.
    fabricctl(
        &data,
        &[
            "drift",
            "except",
            "4",
            "config",
            "--for",
            "1h",
            "--reason",
            "trying a setting",
        ],
    );
    let edited = format!("{original}# kept by an exception\n");
    std::fs::write(&config, &edited).unwrap();
    wait_for("the excepted edit listed", 10, || {
        drift_of(&data, 4)
            .first()
            .is_some_and(|d| d["excepted_until"].is_string())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);

    // Accepted, the edit is the desired state: no drift, and nothing is put back.
    fabricctl(&data, &["drift", "accept", "4", "config"]);
    wait_for("the accepted edit no longer drift", 10, || {
        drift_of(&data, 4).is_empty()
    });
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
}
