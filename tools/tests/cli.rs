//! The tools as an operator runs them: `placement-sim` output rechecked independently from its
//! dump, and `fabricctl` failing with one clear line when no member answers.

use std::collections::HashMap;
use std::process::Command;

#[test]
fn placement_sim_dump_rechecks_with_distinct_racks_and_no_violations() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("mapping.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_placement-sim"))
        .args([
            "--cells",
            "1",
            "--racks",
            "5",
            "--hosts",
            "20",
            "--disks-per-host",
            "2",
        ])
        .args(["--pgs", "2048", "--json", "--dump-mapping"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["violations"]["shared_domain"], 0);
    assert_eq!(report["violations"]["unusable_disk"], 0);

    // Recheck from the plain-text dumps alone: `disk DISK HOST RACK WEIGHT`, `pg PG DISK...`;
    // the second holds the PG map after the balancer's overrides.
    let mut balanced = dump.clone().into_os_string();
    balanced.push(".balanced");
    for (path, report_key) in [(dump.clone(), "balance"), (balanced.into(), "balanced")] {
        let text = std::fs::read_to_string(&path).unwrap();
        let counts = recheck(&text);
        assert_eq!(counts.len(), 40, "{}", path.display());
        let max = *counts.values().max().unwrap();
        let min = *counts.values().min().unwrap();
        assert_eq!(report[report_key]["max"], max, "{}", path.display());
        assert_eq!(report[report_key]["min"], min, "{}", path.display());
    }
    assert!(
        report["balanced"]["max_over_mean"].as_f64().unwrap()
            <= report["balance"]["max_over_mean"].as_f64().unwrap(),
        "the balancer does not make the balance worse"
    );
}

/// Checks a dump: 2048 PGs of 3 replicas in distinct racks. Returns each disk's replica count.
fn recheck(text: &str) -> HashMap<&str, u64> {
    let mut rack_of: HashMap<&str, &str> = HashMap::new();
    let mut counts: HashMap<&str, u64> = HashMap::new();
    let mut pgs = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first() {
            Some(&"disk") => {
                rack_of.insert(f[1], f[3]);
                counts.insert(f[1], 0);
            }
            Some(&"pg") => {
                pgs += 1;
                let racks: Vec<&str> = f[2..].iter().map(|d| rack_of[d]).collect();
                assert_eq!(racks.len(), 3, "{line}");
                assert!(
                    racks[0] != racks[1] && racks[1] != racks[2] && racks[0] != racks[2],
                    "{line}"
                );
                for d in &f[2..] {
                    *counts.get_mut(d).expect("a listed disk") += 1;
                }
            }
            _ => panic!("unexpected line {line:?}"),
        }
    }
    assert_eq!(pgs, 2048);
    counts
}

#[test]
fn fabricctl_without_a_cluster_fails_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let admin = fabric::identity::dev_pki::DevPki::ensure(dir.path())
        .unwrap()
        .ensure_admin()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fabricctl"))
        .args(["--endpoints", "127.0.0.1:1", "status", "--cert-dir"])
        .arg(&admin)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no member answered"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // Without a certificate it says which and how to get one.
    let out = Command::new(env!("CARGO_BIN_EXE_fabricctl"))
        .args(["--endpoints", "127.0.0.1:1", "status", "--cert-dir"])
        .arg(dir.path().join("nobody"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("fabricctl cert issue user"),
        "{stderr}"
    );
}
