//! Joining with a token on a real cluster (`fabricd dev --nodes 3`, whose members sign with
//! the cluster's CA): a new storage node with no key files gets its certificate from a member
//! and serves, while a reused, expired, wrongly pinned or unauthorised token gets nothing —
//! and a connection without a certificate reaches nothing but the join call.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fabric_suite::{fabricctl, issue_cert, node_up, workspace_bin};
use serde_json::Value;

/// The gRPC address of the first member, from the cluster's description.
fn member_addr(data: &Path) -> String {
    let cluster: Value =
        serde_json::from_slice(&std::fs::read(data.join("cluster.json")).unwrap()).unwrap();
    cluster["members"][0][1].as_str().unwrap().to_owned()
}

fn token(data: &Path, ttl: &str) -> String {
    let made = fabricctl(
        data,
        &["join-token", "create", "--role", "storage", "--ttl", ttl],
    );
    made["token"].as_str().expect("a token").to_owned()
}

/// What `join-token list` says of `token`.
fn listed(data: &Path, token: &str) -> Value {
    let tokens = fabricctl(data, &["join-token", "list"]);
    let id = token.split('.').nth(1).unwrap();
    tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("token {id} is not listed: {tokens}"))
}

/// `fabricd node` for storage node `id` joining through `member` with `token`.
fn join_cmd(dir: &Path, id: u64, member: &str, token: &str) -> Command {
    let mut cmd = Command::new(workspace_bin("fabricd"));
    cmd.args(["node", "--id", &id.to_string(), "--roles", "storage"])
        .arg("--data-dir")
        .arg(dir.join(format!("node-{id}")))
        .args(["--data-addr", "127.0.0.1:0"])
        .args(["--location", &format!("rack=rack{id},host=host{id}")])
        .args(["--join", member, "--token", token]);
    cmd
}

/// A join that must fail: what the node said, and that it wrote no key.
fn refused_join(dir: &Path, id: u64, member: &str, token: &str) -> String {
    let out: Output = join_cmd(dir, id, member, token).output().unwrap();
    assert!(!out.status.success(), "node {id} joined with {token}");
    let key = dir.join(format!("node-{id}/tls/key.pem"));
    assert!(!key.exists(), "a refused join left {}", key.display());
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_node_joins_with_a_token_once_and_reused_expired_or_mispinned_tokens_get_nothing() {
    let (_serial, dir, data, _dev) = fabric_suite::three_node_cluster();
    let member = member_addr(&data);

    // Joining with a fresh token: the node makes its key, gets its certificate, registers.
    let good = token(&data, "10m");
    let log = std::fs::File::create(dir.path().join("node-4.log")).unwrap();
    let node = Killed(
        join_cmd(dir.path(), 4, &member, &good)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node_up(&data, 4) {
        assert!(Instant::now() < deadline, "node 4 did not register");
        std::thread::sleep(Duration::from_millis(200));
    }
    let tls = dir.path().join("node-4/tls");
    let mode = |f: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(tls.join(f)).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode("key.pem"), 0o600);
    let identity = fabric::identity::Identity::load(&tls).unwrap();
    assert_eq!(identity.principal().to_string(), "fabric://dev/node/4");
    assert_eq!(listed(&data, &good)["used_by_node"], 4);

    // The same token again, for another node: refused, nothing written.
    let why = refused_join(dir.path(), 5, &member, &good);
    assert!(why.contains("used already (by node 4)"), "{why}");

    // A token past its time.
    let short = token(&data, "1s");
    std::thread::sleep(Duration::from_millis(2_100));
    let why = refused_join(dir.path(), 5, &member, &short);
    assert!(why.contains("expired"), "{why}");

    // A token whose pin is not the cluster's root: the node stops at the TLS handshake, before
    // it sends the secret, and the token stays unused.
    let pinned = token(&data, "10m");
    let mut fields: Vec<String> = pinned.split('.').map(str::to_owned).collect();
    fields[3] = "0".repeat(64);
    let why = refused_join(dir.path(), 5, &member, &fields.join("."));
    assert!(why.contains("root key the join token pins"), "{why}");
    let why = refused_join(dir.path(), 1, &member, &pinned);
    assert!(
        why.contains("node 1 is known to the cluster already"),
        "{why}"
    );
    // The same token with a wrong secret.
    fields = pinned.split('.').map(str::to_owned).collect();
    fields[2] = "0".repeat(32);
    let why = refused_join(dir.path(), 5, &member, &fields.join("."));
    assert!(why.contains("wrong secret"), "{why}");
    // None of these spent it.
    assert_eq!(listed(&data, &pinned)["used_by_node"], Value::Null);

    // Only principals granted node.join_token make tokens.
    let viewer = data.join("users/vera");
    issue_cert(&data, "user", "vera", &viewer, &[]);
    fabricctl(&data, &["auth", "bind", "fabric://dev/user/vera", "viewer"]);
    let out = Command::new(workspace_bin("fabricctl"))
        .args(["--json", "--data-dir"])
        .arg(&data)
        .arg("--cert-dir")
        .arg(&viewer)
        .args(["join-token", "create"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("node.join_token"), "{why}");

    // A connection without a certificate reaches the join call and nothing else.
    let pin = pinned.split('.').nth(3).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(async {
        let (channel, server) = fabric::join::connect(&member, &format!("sha256:{pin}"))
            .await
            .unwrap();
        assert!(matches!(
            server.kind(),
            fabric::identity::PrincipalKind::Node(_)
        ));
        proto::meta::metadata_client::MetadataClient::new(channel)
            .list_volumes(proto::meta::ListVolumesRequest::default())
            .await
            .unwrap_err()
            .code()
    });
    assert_eq!(code, tonic::Code::Unimplemented);
    assert_eq!(
        fabricctl(&data, &["volume", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Every node's probes and links to the joined node went over TLS.
    drop(node);
    for log in std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("fabricd.log"))
        .chain([dir.path().join("node-4.log")])
        .filter(|p| p.exists())
    {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !text.contains("spoke plaintext"),
            "{} shows a plaintext dial",
            log.display()
        );
    }
}
