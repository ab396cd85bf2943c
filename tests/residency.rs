//! Residency on a real cluster (`fabricd dev --nodes 5`, a node a rack): racks 1–4 are
//! labelled `jurisdiction=de` and rack 5 `fr`; a pool requiring `residency=de` keeps every
//! replica in `de` when one of its nodes is taken out and its PGs rebuilt, a relabel that would
//! break the rule is refused, and the signed residency statement verifies offline.

use std::path::Path;

use fabric_suite::{DevNode, fabricctl, fabricctl_as, qemu_io_ok, tools};
use serde_json::Value;

/// The statement's replicas: (pg, node, jurisdiction, leaving).
fn replicas(
    data: &Path,
    volume: &str,
    out: Option<&Path>,
) -> (Value, Vec<(u64, u64, String, bool)>) {
    let mut args = vec!["volume", "residency", volume];
    let out_s;
    if let Some(out) = out {
        out_s = out.to_str().unwrap().to_owned();
        args.extend_from_slice(&["--out", &out_s]);
    }
    let summary = fabricctl(data, &args);
    let file = match out {
        Some(f) => std::fs::read_to_string(f).unwrap(),
        None => {
            let tmp = data.join("statement.json");
            fabricctl(
                data,
                &[
                    "volume",
                    "residency",
                    volume,
                    "--out",
                    tmp.to_str().unwrap(),
                ],
            );
            std::fs::read_to_string(tmp).unwrap()
        }
    };
    let signed: Value = serde_json::from_str(&file).unwrap();
    let statement: Value = serde_json::from_str(signed["statement"].as_str().unwrap()).unwrap();
    let rows = statement["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["pg"].as_u64().unwrap(),
                r["node"].as_u64().unwrap(),
                r["labels"]["jurisdiction"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                r["leaving"].as_bool().unwrap(),
            )
        })
        .collect();
    (summary, rows)
}

fn wait_redundant(data: &Path, volume: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let shown = fabricctl(data, &["volume", "show", volume]);
        if shown["replica_state"]["pgs_degraded"] == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still degraded after 90 s: {shown}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn a_node_out_in_a_residency_pool_rebuilds_only_inside_its_jurisdiction() {
    if tools(&["qemu-io"]).is_none() {
        return;
    }
    let _serial = fabric_suite::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = DevNode::start_with(&data, "vol0:64MiB", &["--nodes", "5"]).expect("start dev");
    for rack in 1..=4 {
        fabricctl(
            &data,
            &[
                "topology",
                "label",
                &format!("rack=rack{rack}"),
                "jurisdiction=de",
            ],
        );
    }
    fabricctl(
        &data,
        &["topology", "label", "rack=rack5", "jurisdiction=fr"],
    );
    fabricctl(
        &data,
        &[
            "pool",
            "create",
            "gold",
            "--replicas",
            "3",
            "--residency",
            "de",
        ],
    );
    fabricctl(
        &data,
        &[
            "volume", "create", "g1", "--pool", "gold", "--size", "32MiB",
        ],
    );
    let uri = format!("nbd://{}/g1", dev.addr);
    qemu_io_ok(&uri, "write -P 0x5a 0 16M");

    let (summary, before) = replicas(&data, "g1", None);
    assert_eq!(summary["inside"], true, "{summary}");
    assert!(before.iter().all(|(_, node, j, _)| *node != 5 && j == "de"));
    let out = before[0].1;

    // Node `out` leaves placement; its PGs are rebuilt, and only onto de nodes.
    fabricctl(&data, &["node", "out", &out.to_string()]);
    wait_redundant(&data, "g1");
    let file = dir.path().join("g1.residency");
    let (summary, after) = replicas(&data, "g1", Some(&file));
    assert_eq!(summary["inside"], true, "{summary}");
    for (pg, node, j, leaving) in &after {
        assert!(*node != 5, "PG {pg} has a replica on the fr node");
        assert_eq!(j, "de", "PG {pg} node {node}");
        assert!(
            *node != out || *leaving,
            "PG {pg} still placed on node {out}"
        );
    }
    // Each PG that lost node `out` has three placed replicas again, on the other de nodes.
    let moved: std::collections::BTreeSet<u64> = before
        .iter()
        .filter(|(_, n, _, _)| *n == out)
        .map(|(pg, ..)| *pg)
        .collect();
    assert!(!moved.is_empty());
    for pg in &moved {
        let placed: Vec<u64> = after
            .iter()
            .filter(|(p, _, _, leaving)| p == pg && !leaving)
            .map(|(_, n, _, _)| *n)
            .collect();
        assert_eq!(placed.len(), 3, "PG {pg}: {placed:?}");
        assert!(
            placed.iter().all(|n| *n != out && *n != 5),
            "PG {pg}: {placed:?}"
        );
    }
    qemu_io_ok(&uri, "read -P 0x5a 0 16M");

    // The statement verifies offline with the root certificate.
    let ca = data.join("ca/ca.pem");
    let verified = fabricctl(
        &data,
        &[
            "audit",
            "verify",
            file.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ],
    );
    assert_eq!(verified["kind"], "residency statement");
    assert_eq!(verified["inside"], true);
    // A statement edited to claim another placement does not.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replacen("\\\"de\\\"", "\\\"nl\\\"", 1);
    std::fs::write(&file, text).unwrap();
    let forged = fabricctl_as(
        &data,
        None,
        &[
            "audit",
            "verify",
            file.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ],
    );
    assert!(!forged.status.success());

    // With node `out` gone, three de racks remain: relabelling one of them would leave the
    // pool two, and is refused naming the pool; nothing changes.
    let other = (1..=4).find(|r| *r != out).unwrap();
    let refused = fabricctl_as(
        &data,
        None,
        &[
            "topology",
            "label",
            &format!("rack=rack{other}"),
            "jurisdiction=fr",
        ],
    );
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("pool gold requires residency=de"), "{why}");
    let labels = fabricctl(&data, &["topology", "labels"]);
    let still = labels
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["location"] == format!("rack=rack{other}"))
        .unwrap();
    assert_eq!(still["labels"], "jurisdiction=de");
}
