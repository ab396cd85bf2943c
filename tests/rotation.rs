//! Key rotation on a real cluster (`fabricd dev --nodes 3 --two-person`), with QEMU's qemu-io
//! writing and reading the volume throughout:
//! - the cell key rotates once a second person approves, and the audit log exported afterwards
//!   verifies offline across both keys;
//! - a node whose certificate nears its expiry renews it by itself, as its drift repair;
//! - the root CA is replaced in three steps: a new root added to the trust of every member,
//!   node and gateway; every certificate reissued under it in place, without a restart; the
//!   old root retired — refused, with the node named, while a node's certificate still chains
//!   to it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fabric_suite::{DevNode, approval_requested, fabricctl, tools};
use serde_json::Value;

fn ctl(data: &Path, certs: &Path, args: &[&str]) -> Output {
    fabric_suite::fabricctl_as(data, Some(certs), args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Makes a guarded call as the administrator and has the approver approve it.
fn with_approval(data: &Path, args: &[&str]) {
    let id = approval_requested(data, args);
    let out = ctl(data, &data.join("approver"), &["approve", &id]);
    assert!(out.status.success(), "approve {id}: {}", stderr(&out));
}

/// Writes `pattern` over the volume's first MiB with qemu-io and reads it back.
fn write_and_read(uri: &str, pattern: u8) {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c"])
        .arg(format!("write -P {pattern} 0 1M"))
        .arg("-c")
        .arg(format!("read -P {pattern} 0 1M"))
        .arg(uri)
        .output()
        .expect("run qemu-io");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &stderr(&out);
    assert!(
        out.status.success() && !text.contains("fail") && !text.contains("error"),
        "qemu-io with pattern {pattern}: {text}"
    );
}

/// How many certificates a PEM file holds.
fn certificates_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches("-----BEGIN CERTIFICATE-----")
        .count()
}

/// The `ca.pem` of every process of the dev cluster: its nodes and its gateway.
fn trust_files(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=3)
        .map(|n| data.join(format!("node-{n}")).join("tls").join("ca.pem"))
        .collect();
    files.push(data.join("gateways").join("dev-gateway").join("ca.pem"));
    files
}

/// Exports the audit log and verifies it offline against the roots in `ca`; the export's
/// header, or the reason it does not verify.
fn export_and_verify(data: &Path, dir: &Path, ca: &Path) -> Result<Value, String> {
    let file = dir.join("audit.export");
    let _ = std::fs::remove_file(&file);
    fabricctl(data, &["audit", "export", file.to_str().unwrap()]);
    let out = fabric_suite::fabricctl_as(
        data,
        None,
        &[
            "audit",
            "verify",
            file.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ],
    );
    if !out.status.success() {
        return Err(stderr(&out));
    }
    let text = std::fs::read_to_string(&file).unwrap();
    Ok(serde_json::from_str(text.lines().next().unwrap()).unwrap())
}

/// Issues a certificate with `ca` into `out` (replacing what is there) and returns
/// `fabricctl`'s report of it; a server's names its loopback addresses.
fn issue(
    data: &Path,
    ca: &Path,
    kind: &str,
    name: &str,
    out: &Path,
    server: bool,
    extra: &[&str],
) -> Value {
    let mut args = vec![
        "cert",
        "issue",
        kind,
        name,
        "--ca-dir",
        ca.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--overwrite",
    ];
    if server {
        args.extend(["--san", "127.0.0.1", "--san", "localhost"]);
    }
    args.extend_from_slice(extra);
    fabricctl(data, &args)
}

/// Whether each of the three nodes last reported a certificate issued under root `pin`.
fn every_node_issued_by(data: &Path, pin: &str) -> bool {
    let bundle = fabricctl(data, &["trust", "show"]);
    let nodes = bundle["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{bundle}");
    nodes.iter().all(|n| n["issuer_pin"] == pin)
}

#[test]
fn the_cell_key_and_the_root_ca_are_replaced_with_a_second_person_while_io_goes_on() {
    if tools(&["qemu-io"]).is_none() {
        return;
    }
    let _serial = fabric_suite::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = DevNode::start_with(&data, "vol0:64MiB", &["--nodes", "3", "--two-person"])
        .expect("start dev");
    let uri = dev.uri();
    write_and_read(&uri, 0x11);

    // The cell key: rotated with an approval; checkpoints signed by the new key verify
    // beside the old ones, from the root CA alone.
    let old_ca = data.join("ca").join("ca.pem");
    let mut old_key = Value::Null;
    // (An export verifies once a member had the cell key certified, within seconds.)
    wait_for("a first signed checkpoint", 60, || {
        let Ok(header) = export_and_verify(&data, dir.path(), &old_ca) else {
            return false;
        };
        old_key = header["checkpoints"]
            .as_array()
            .unwrap()
            .last()
            .map_or(Value::Null, |c| c["key"].clone());
        !old_key.is_null()
    });
    with_approval(&data, &["cell-key", "rotate"]);
    wait_for(
        "a checkpoint signed by the new cell key that verifies",
        60,
        || {
            export_and_verify(&data, dir.path(), &old_ca).is_ok_and(|h| {
                let newest = &h["checkpoints"].as_array().unwrap().last().unwrap()["key"];
                h["cell_keys"].as_array().unwrap().len() == 2 && *newest != old_key
            })
        },
    );
    write_and_read(&uri, 0x22);

    // A certificate near its expiry is drift the node repairs itself: it asks a member for a
    // fresh one and loads it without a restart.
    let node2 = data.join("node-2").join("tls");
    let short = issue(
        &data,
        &data.join("ca"),
        "node",
        "2",
        &node2,
        true,
        &["--days", "7"],
    );
    let short_serial = format!("serial={} ", short["serial"].as_str().unwrap());
    let node2_certificate = || -> String {
        fabricctl(&data, &["trust", "show"])["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == 2)
            .map(|n| n["certificate"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    wait_for("node 2 reporting its short-lived certificate", 30, || {
        node2_certificate().contains(&short_serial)
    });
    wait_for("node 2 renewing its short-lived certificate", 60, || {
        let now = node2_certificate();
        now.contains("serial=") && !now.contains(&short_serial)
    });
    let renewals = fabricctl(
        &data,
        &["audit", "list", "--verb", "node.renew_certificate"],
    );
    assert_eq!(
        renewals.as_array().unwrap()[0]["principal"],
        "fabric://dev/node/2",
        "{renewals}"
    );
    wait_for("node 2's certificate drift cleared", 30, || {
        fabricctl(&data, &["drift"])
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["item"] != "tls")
    });
    write_and_read(&uri, 0x2a);

    // Step one: a new root CA, trusted beside the old one by every process.
    let new_ca = dir.path().join("new-ca");
    fabricctl(
        &data,
        &[
            "ca",
            "init",
            "--cluster",
            "dev",
            "--dir",
            new_ca.to_str().unwrap(),
        ],
    );
    with_approval(
        &data,
        &["trust", "add", new_ca.join("ca.pem").to_str().unwrap()],
    );
    let bundle = fabricctl(&data, &["trust", "show"]);
    let roots = bundle["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 2, "{bundle}");
    let old_pin = roots[0]["pin"].as_str().unwrap().to_owned();
    let new_pin = roots[1]["pin"].as_str().unwrap().to_owned();
    wait_for("every process trusting both roots", 30, || {
        trust_files(&data).iter().all(|f| certificates_in(f) == 2)
    });

    // Retiring the old root is refused while a node's certificate chains to it, and the
    // nodes' certificates show as drift.
    wait_for("every node's certificate reported", 30, || {
        every_node_issued_by(&data, &old_pin)
    });
    let out = ctl(&data, &data.join("admin"), &["trust", "retire", &old_pin]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("FAILED_PRECONDITION") && stderr(&out).contains("chains to root"),
        "{}",
        stderr(&out)
    );
    wait_for("the old certificates listed as drift", 30, || {
        let drift = fabricctl(&data, &["drift"]);
        let tls: Vec<&Value> = drift
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["item"] == "tls")
            .collect();
        tls.len() == 3 && tls.iter().all(|d| d["class"] == "auto-repair")
    });

    // Step two: every certificate reissued under the new root, in place.
    for n in 1..=3 {
        let out = data.join(format!("node-{n}")).join("tls");
        issue(&data, &new_ca, "node", &n.to_string(), &out, true, &[]);
    }
    let gateway = data.join("gateways").join("dev-gateway");
    issue(
        &data,
        &new_ca,
        "gateway",
        "dev-gateway",
        &gateway,
        true,
        &[],
    );
    issue(
        &data,
        &new_ca,
        "user",
        "admin",
        &data.join("admin"),
        false,
        &[],
    );
    issue(
        &data,
        &new_ca,
        "user",
        "approver",
        &data.join("approver"),
        false,
        &[],
    );
    write_and_read(&uri, 0x33);
    wait_for("every node reporting its new certificate", 60, || {
        every_node_issued_by(&data, &new_pin)
    });

    // Step three: the old root retired, with an approval; every process drops it.
    with_approval(&data, &["trust", "retire", &old_pin]);
    let bundle = fabricctl(&data, &["trust", "show"]);
    assert_eq!(bundle["roots"].as_array().unwrap().len(), 1, "{bundle}");
    assert_eq!(bundle["roots"][0]["pin"], new_pin.as_str());
    wait_for("every process trusting the new root only", 30, || {
        trust_files(&data).iter().all(|f| certificates_in(f) == 1)
    });
    write_and_read(&uri, 0x44);
    wait_for("no certificate drift left", 30, || {
        fabricctl(&data, &["drift"])
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["item"] != "tls" && d["item"] != "trust")
    });
    fabricctl(&data, &["volume", "create", "after", "--size", "16MiB"]);

    // The whole audit log, both keys and both steps of the trust change in it, verifies
    // with the old root (which certified the cell keys).
    let header = export_and_verify(&data, dir.path(), &old_ca).expect("the export verifies");
    assert_eq!(header["cell_keys"].as_array().unwrap().len(), 2);
    for verb in ["cell_key.rotate", "ca.rotate", "request.approve"] {
        let listed = fabricctl(
            &data,
            &["audit", "list", "--verb", verb, "--limit", "10000"],
        );
        assert!(!listed.as_array().unwrap().is_empty(), "no {verb} entry");
    }
}
