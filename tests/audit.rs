//! The audit log on a real cluster (`fabricd dev --nodes 3`): calls and refusals become
//! entries, an export verifies offline against the root CA alone and stops verifying when it
//! is tampered with, a witness cosigns, and a full log refuses calls without changing anything.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use fabric_suite::{fabricctl, issue_cert};
use serde_json::Value;

fn ctl(data: &Path, certs: Option<&Path>, args: &[&str]) -> Output {
    fabric_suite::fabricctl_as(data, certs, args)
}

/// Keeps every entry (no retention) and holds at most `capacity`.
fn keep_all(data: &Path, capacity: &str) {
    fabricctl(
        data,
        &[
            "audit",
            "configure",
            "--retain",
            "0",
            "--capacity",
            capacity,
        ],
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

fn verify(data: &Path, file: &Path, extra: &[&str]) -> Output {
    let ca = data.join("ca/ca.pem");
    let mut args = vec![
        "audit",
        "verify",
        file.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ctl(data, None, &args)
}

/// Waits until a member certified the cell key, so that exports verify from the root CA.
fn wait_certified(data: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while fabricctl(data, &["audit", "status"])["cell_key_certified"] != true {
        assert!(Instant::now() < deadline, "the cell key was not certified");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(file: &Path, lines: &[String]) {
    std::fs::write(file, lines.join("\n") + "\n").unwrap();
}

#[test]
fn calls_and_refusals_are_audited_and_an_export_verifies_until_it_is_tampered_with() {
    let (_serial, dir, data, _dev) = fabric_suite::three_node_cluster();
    fabricctl(&data, &["volume", "create", "audited", "--size", "16MiB"]);
    let viewer: PathBuf = data.join("users/vera");
    issue_cert(&data, "user", "vera", &viewer, &[]);
    fabricctl(&data, &["auth", "bind", "fabric://dev/user/vera", "viewer"]);
    let out = ctl(&data, Some(&viewer), &["volume", "delete", "audited"]);
    assert!(!out.status.success());

    // The create, the binding and the refused delete are entries, in order, with their callers.
    let entries = fabricctl(&data, &["audit", "list", "--limit", "10000"]);
    let entries = entries.as_array().unwrap();
    let find = |verb: &str, verdict: &str, target: &str| {
        entries
            .iter()
            .rposition(|e| {
                e["verb"] == verb
                    && e["verdict"] == verdict
                    && e["target"].as_str().unwrap().starts_with(target)
            })
            .unwrap_or_else(|| panic!("no {verdict} {verb} on {target} in {entries:#?}"))
    };
    let create = find("volume.create", "done", "pool/default");
    let bind = find("auth.bind", "done", "cluster");
    let denied = find("volume.delete", "denied", "volume/audited");
    assert!(create < bind && bind < denied);
    assert_eq!(entries[create]["principal"], "fabric://dev/user/admin");
    assert_eq!(entries[denied]["principal"], "fabric://dev/user/vera");
    assert_eq!(entries[denied]["target"], "volume/audited (pool/default)");
    let filtered = fabricctl(
        &data,
        &["audit", "list", "--principal", "fabric://dev/user/vera"],
    );
    assert_eq!(filtered.as_array().unwrap().len(), 1, "{filtered}");
    // A member's own actions are audited too (it made the cell key).
    assert!(entries.iter().any(|e| e["verb"] == "cell_key.add"));

    // An export verifies offline, from the root certificate alone.
    wait_certified(&data);
    let file = dir.path().join("audit.tlog");
    fabricctl(&data, &["audit", "export", file.to_str().unwrap()]);
    let out = verify(&data, &file, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["cluster"], "dev");
    let size = report["size"].as_u64().unwrap();
    assert!(size as usize >= entries.len());

    // Tampered copies: each fails and names the first bad entry.
    let good = lines(&file);
    let mut flipped = good.clone();
    let at = 1 + denied; // line 0 is the header; entry i is line i + 1
    flipped[at] = flipped[at].replacen("vera", "vara", 1);
    let tampered = dir.path().join("flipped.tlog");
    write_lines(&tampered, &flipped);
    let out = verify(&data, &tampered, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("entry {denied} ")),
        "{}",
        stderr(&out)
    );
    let mut cut = good.clone();
    cut.truncate(good.len() - 2);
    write_lines(&tampered, &cut);
    let out = verify(&data, &tampered, &[]);
    assert!(
        stderr(&out).contains(&format!("entry {}", size - 2)),
        "{}",
        stderr(&out)
    );
    let mut swapped = good.clone();
    swapped.swap(2, 3);
    write_lines(&tampered, &swapped);
    let out = verify(&data, &tampered, &[]);
    assert!(stderr(&out).contains("entry 1 "), "{}", stderr(&out));

    // A root of another CA proves nothing.
    let other = dir.path().join("other");
    fabric_suite::cluster_ca(&other);
    let out = ctl(
        &data,
        None,
        &[
            "audit",
            "verify",
            file.to_str().unwrap(),
            "--ca",
            other.join("ca/ca.pem").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not lead to the root"),
        "{}",
        stderr(&out)
    );

    // A witness with the auditor role cosigns; a verifier can require its signature.
    let auditor = data.join("users/otto");
    issue_cert(&data, "user", "otto", &auditor, &[]);
    fabricctl(
        &data,
        &["auth", "bind", "fabric://dev/user/otto", "auditor"],
    );
    let key_file = dir.path().join("otto.key");
    let key = fabricctl(&data, &["audit", "witness-key", key_file.to_str().unwrap()]);
    let public = key["public_key"].as_str().unwrap().to_owned();
    let out = ctl(
        &data,
        Some(&auditor),
        &[
            "audit",
            "witness-sign",
            "--key",
            key_file.to_str().unwrap(),
            "--name",
            "otto",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let signed = dir.path().join("signed.tlog");
    fabricctl(&data, &["audit", "export", signed.to_str().unwrap()]);
    let out = verify(&data, &signed, &["--witness", &public]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["witnesses"][0]["witness"], "otto", "{report}");
    // The export made before the cosignature has none.
    let out = verify(&data, &file, &["--witness", &public]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cosigned no checkpoint"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_full_audit_log_refuses_calls_and_changes_nothing() {
    let (_serial, _dir, data, _dev) = fabric_suite::three_node_cluster();
    // The members write a few entries of their own after the start (the cell key's
    // certificate, each node's drift baseline); the capacity below leaves room for ours only.
    wait_certified(&data);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fabricctl(&data, &["audit", "list", "--verb", "drift.baseline"])
        .as_array()
        .unwrap()
        .len()
        < 3
    {
        assert!(Instant::now() < deadline, "the nodes' drift baselines");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = fabricctl(&data, &["audit", "status"]);
    let held = status["held"].as_u64().unwrap();
    // Room for the configure call's own entry and one more.
    let capacity = (held + 2).to_string();
    keep_all(&data, &capacity);
    fabricctl(&data, &["volume", "create", "fits", "--size", "16MiB"]);
    let out = ctl(
        &data,
        None,
        &["volume", "create", "refused", "--size", "16MiB"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("audit log is full"),
        "{}",
        stderr(&out)
    );
    let volumes = fabricctl(&data, &["volume", "list"]);
    let names: Vec<&str> = volumes
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"fits") && !names.contains(&"refused"),
        "{names:?}"
    );

    // Raising the capacity is let through the reserve, and calls work again.
    keep_all(&data, "100000");
    fabricctl(&data, &["volume", "create", "refused", "--size", "16MiB"]);
}
