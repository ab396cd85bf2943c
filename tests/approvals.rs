//! The two-person rule on a real cluster (`fabricd dev --nodes 3 --two-person`): a guarded
//! call waits as a request and runs once a second principal approves it; self-approval, an
//! expired request, an approval of another operation and an approval of a target that changed
//! since are each refused with their own reason, and everything is in the audit log.

use std::path::Path;
use std::process::Output;

use fabric_suite::{DevNode, approval_requested, fabricctl};
use serde_json::Value;

fn ctl(data: &Path, certs: &Path, args: &[&str]) -> Output {
    fabric_suite::fabricctl_as(data, Some(certs), args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

fn volumes(data: &Path) -> Vec<String> {
    fabricctl(data, &["volume", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect()
}

fn request(data: &Path, id: &str) -> Value {
    fabricctl(data, &["approvals", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no request {id}"))
}

#[test]
fn guarded_calls_wait_for_a_second_person_and_every_wrong_approval_is_refused_precisely() {
    let _serial = fabric_suite::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _dev = DevNode::start_with(&data, "vol0:64MiB", &["--nodes", "3", "--two-person"])
        .expect("start dev");
    let approver = data.join("approver");
    for v in ["doomed", "other", "changing", "late"] {
        fabricctl(&data, &["volume", "create", v, "--size", "16MiB"]);
    }

    // Requested, not run.
    let id = approval_requested(&data, &["volume", "delete", "doomed"]);
    assert!(volumes(&data).contains(&"doomed".to_string()));
    assert_eq!(request(&data, &id)["state"], "pending");

    // The requester cannot approve its own request.
    let out = ctl(&data, &data.join("admin"), &["approve", &id]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("may not approve it"),
        "{}",
        stderr(&out)
    );

    // An approval of another operation is refused.
    let other = approval_requested(&data, &["volume", "delete", "other"]);
    let other_op = request(&data, &other)["op_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = ctl(&data, &approver, &["approve", &id, "--op", &other_op]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the approval is for operation"),
        "{}",
        stderr(&out)
    );

    // The second person approves what the request holds: it runs.
    let out = ctl(&data, &approver, &["approve", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!volumes(&data).contains(&"doomed".to_string()));
    assert_eq!(request(&data, &id)["state"], "approved");
    let out = ctl(&data, &approver, &["approve", &id]);
    assert!(
        stderr(&out).contains("approved already"),
        "{}",
        stderr(&out)
    );

    // A target that changed since the request is not covered by an approval.
    let changing = approval_requested(&data, &["volume", "delete", "changing"]);
    fabricctl(&data, &["volume", "resize", "changing", "--size", "32MiB"]);
    let out = ctl(&data, &approver, &["approve", &changing]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("changed since request"),
        "{}",
        stderr(&out)
    );
    assert!(volumes(&data).contains(&"changing".to_string()));

    // An expired request cannot be approved.
    fabricctl(&data, &["approvals", "ttl", "1"]);
    let late = approval_requested(&data, &["volume", "delete", "late"]);
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let out = ctl(&data, &approver, &["approve", &late]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    assert!(volumes(&data).contains(&"late".to_string()));

    // A denied request stays denied.
    fabricctl(&data, &["approvals", "ttl", "3600"]);
    let denied = approval_requested(&data, &["volume", "delete", "late"]);
    let out = ctl(
        &data,
        &approver,
        &["deny", &denied, "--reason", "still in use"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ctl(&data, &approver, &["approve", &denied]);
    assert!(stderr(&out).contains("was denied"), "{}", stderr(&out));

    // Granting an admin role and turning a guard off are guarded too.
    approval_requested(
        &data,
        &["auth", "bind", "fabric://dev/user/mallory", "cluster-admin"],
    );
    approval_requested(&data, &["approvals", "guard-off", "volume.delete"]);

    // The audit log holds the request, the approved run (naming both people) and the
    // refused approvals.
    let log = fabricctl(&data, &["audit", "list", "--limit", "10000"]);
    let entries = log.as_array().unwrap();
    let ran = entries
        .iter()
        .find(|e| {
            e["verb"] == "volume.delete"
                && e["verdict"] == "done"
                && e["principal"]
                    .as_str()
                    .unwrap()
                    .contains("approved by fabric://dev/user/approver")
        })
        .unwrap_or_else(|| panic!("no approved delete in {log:#}"));
    assert!(ran["target"].as_str().unwrap().starts_with("volume/doomed"));
    let refused = entries
        .iter()
        .filter(|e| e["verb"] == "request.approve" && e["verdict"] == "failed")
        .count();
    assert!(refused >= 4, "{log:#}");
}
