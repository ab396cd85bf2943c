//! Moving data on purpose, with real processes and clients: a node drained under fio's
//! verifying writes, its PGs moved with no IO error and no copy lost on the way, and the
//! balancer's moves kept within their budget.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use fabric_suite::{
    DevNode, fabricctl, fio_report, fio_verify, qemu_io_ok, run, tools, workspace_bin,
};
use serde_json::Value;

/// `fabricctl --json --data-dir DATA ARGS...`: every JSON line it printed, once it succeeded.
fn fabricctl_lines(data: &Path, args: &[&str]) -> Vec<Value> {
    let out = Command::new(workspace_bin("fabricctl"))
        .args(["--json", "--data-dir"])
        .arg(data)
        .args(args)
        .output()
        .expect("run fabricctl");
    lines_of(args, &out)
}

fn lines_of(args: &[&str], out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "fabricctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// The first pool's PGs: every replica (primary first, leaving ones last) and the leaving ones.
fn pgs(data: &Path) -> (Vec<Vec<u64>>, Vec<Vec<u64>>) {
    let pool = &fabricctl(data, &["pool", "list"])[0];
    let lists = |key: &str| -> Vec<Vec<u64>> {
        pool[key]
            .as_array()
            .expect("PG lists")
            .iter()
            .map(|pg| {
                pg.as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_u64().unwrap())
                    .collect()
            })
            .collect()
    };
    (lists("pgs"), lists("leaving"))
}

#[test]
fn drain_under_fio_verify_then_balance_within_budget() {
    let Some(()) = tools(&["fio", "qemu-img", "qemu-io"]) else {
        return;
    };
    let _serial = fabric_suite::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut dev = DevNode::start_with(&data, "vol0:64MiB", &["--nodes", "5"]).expect("start dev");
    let uri = dev.uri();
    qemu_io_ok(&uri, "write -P 0x5a 0 4M");

    let (before, _) = pgs(&data);
    let held = before.iter().filter(|r| r.contains(&4)).count();
    assert!(held > 0, "node 4 holds replicas before its drain");

    // fio writes with checksums while node 4 drains.
    let mut fio = fio_verify(&uri, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_millis(500));
    let drain = Command::new(workspace_bin("fabricctl"))
        .args(["--json", "--data-dir"])
        .arg(&data)
        .args(["node", "drain", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the drain");
    assert!(
        fio.try_wait().expect("poll fio").is_none(),
        "fio finished before the drain began; the test would prove nothing"
    );
    let drained = lines_of(&["node", "drain", "4"], &drain.wait_with_output().unwrap());
    eprintln!(
        "drain: {} readings, first {}, last {}",
        drained.len(),
        drained[0],
        drained[drained.len() - 1]
    );
    let last = drained.last().expect("a final line");
    assert_eq!(last["drained"], 4, "{drained:?}");
    let first = &drained[0]["progress"];
    assert!(first["remaining"].as_u64().unwrap() > 0, "{drained:?}");
    fio_report(fio.wait_with_output().expect("fio ran"));

    // Node 4 holds nothing; every PG has three distinct nodes and nothing still leaving.
    let (after, leaving) = pgs(&data);
    for (pg, nodes) in after.iter().enumerate() {
        assert!(
            !nodes.contains(&4),
            "PG {pg} still on the drained node: {nodes:?}"
        );
        let mut distinct = nodes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "PG {pg}: {nodes:?}");
        assert!(leaving[pg].is_empty(), "PG {pg}: {leaving:?}");
    }
    let node4 = fabricctl(&data, &["node", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == 4)
        .cloned()
        .unwrap();
    assert_eq!(node4["draining"], true, "{node4}");
    fio_report(fio_verify(&uri, &["--verify_only"]).output().unwrap());
    qemu_io_ok(&uri, "read -P 0x5a 0 4M");

    // The node comes back: PGs return to it the same way, and settle.
    let undrained = fabricctl_lines(&data, &["node", "undrain", "4"]);
    assert_eq!(undrained.last().unwrap()["undrained"], 4, "{undrained:?}");
    let (back, leaving) = pgs(&data);
    assert!(
        back.iter().any(|r| r.contains(&4)),
        "node 4 takes PGs again"
    );
    assert!(leaving.iter().all(Vec::is_empty), "{leaving:?}");

    // The balancer's plan changes nothing; applying it moves at most the budget.
    let plan = &fabricctl_lines(&data, &["balance", "plan"])[0];
    let wanted = plan["moves_wanted"].as_u64().unwrap();
    assert_eq!(plan["rule_violations_after"], 0, "{plan}");
    assert!(wanted >= 2, "the balancer has moves to make here: {plan}");
    assert_eq!(pgs(&data).0, back, "a plan moves nothing");

    let applied = fabricctl_lines(&data, &["balance", "apply", "--max-moves", "1"]);
    let summary = &applied[0];
    eprintln!("plan: {plan}\nbalance --max-moves 1: {applied:?}");
    assert_eq!(summary["moves_planned"], 1, "{summary}");
    let moved_pg = summary["moves"][0]["pg"].as_u64().unwrap() as usize;
    let (now, leaving) = pgs(&data);
    let changed: Vec<usize> = (0..now.len()).filter(|&pg| now[pg] != back[pg]).collect();
    assert_eq!(changed, vec![moved_pg], "one PG moved: {summary}");
    assert!(
        leaving.iter().all(Vec::is_empty),
        "the move settled: {leaving:?}"
    );
    assert_eq!(applied.last().unwrap()["moves"], 1, "{applied:?}");

    let budget = 4u64 << 20;
    let applied = fabricctl_lines(
        &data,
        &[
            "balance",
            "apply",
            "--max-moves",
            "64",
            "--max-bytes",
            "4MiB",
        ],
    );
    let summary = &applied[0];
    let moves = summary["moves"].as_array().unwrap();
    let bytes: u64 = moves.iter().map(|m| m["bytes"].as_u64().unwrap()).sum();
    assert!(
        bytes <= budget,
        "{bytes} bytes moved over a {budget}-byte budget: {summary}"
    );
    assert_eq!(summary["bytes"], bytes, "{summary}");

    // Everything written still reads back and verifies.
    fio_report(fio_verify(&uri, &["--verify_only"]).output().unwrap());
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0x5a 0 4M"])
        .arg(&uri))
    .expect("data written before the moves reads back");
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}
