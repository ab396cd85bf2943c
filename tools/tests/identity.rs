//! `fabricctl ca init` and `fabricctl cert issue` as an operator runs them: the files they
//! write load as identities that complete a mutual TLS 1.3 handshake, OpenSSL (a peer that is
//! not ours) verifies the chains and handshakes with them, and bad input is refused with a
//! reason before anything is written.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fabric::identity::Identity;
use fabric::identity::tls::{ClientTls, ServerTls};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const TIMEOUT: Duration = Duration::from_secs(10);

fn fabricctl(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fabricctl"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Runs `fabricctl --json ARGS` in `dir`, which must succeed, and returns its JSON.
fn fabricctl_json(args: &[&str], dir: &Path) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = fabricctl(&all, dir);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `fabricctl ARGS` in `dir`, which must fail with exit code 1, and returns its stderr.
fn fabricctl_refused(args: &[&str], dir: &Path) -> String {
    let out = fabricctl(args, dir);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed a result");
    stderr
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A CA and two identities made by the CLI in a temporary directory: node 3 serving on
/// 127.0.0.1 and user alice.
fn cluster_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ca = fabricctl_json(
        &["ca", "init", "--dir", "ca", "--cluster", "prod"],
        dir.path(),
    );
    assert_eq!(ca["cluster"], "prod");
    let pin = ca["root_pin"].as_str().unwrap();
    assert!(pin.starts_with("sha256:") && pin.len() == 71, "{pin}");
    for key in ["root_key", "intermediate_key"] {
        assert_eq!(
            mode(&dir.path().join(ca[key].as_str().unwrap())),
            0o600,
            "{key}"
        );
    }

    let node = fabricctl_json(
        &[
            "cert", "issue", "node", "3", "--ca-dir", "ca", "--out", "node-3",
        ],
        dir.path(),
    );
    assert_eq!(node["principal"], "fabric://prod/node/3");
    let node = fabricctl_json(
        &[
            "cert",
            "issue",
            "node",
            "3",
            "--ca-dir",
            "ca",
            "--out",
            "node-3",
            "--san",
            "127.0.0.1",
            "--san",
            "node-3.prod",
            "--days",
            "30",
            "--overwrite",
        ],
        dir.path(),
    );
    assert_eq!(
        node["server_names"],
        serde_json::json!(["127.0.0.1", "node-3.prod"])
    );
    assert_eq!(node["root_pin"], ca["root_pin"]);
    assert_eq!(mode(&dir.path().join("node-3/key.pem")), 0o600);

    let alice = fabricctl_json(
        &[
            "cert", "issue", "user", "alice", "--ca-dir", "ca", "--out", "alice",
        ],
        dir.path(),
    );
    assert_eq!(alice["principal"], "fabric://prod/user/alice");
    assert!(alice["not_after"].as_str().unwrap() > node["not_after"].as_str().unwrap());
    dir
}

#[test]
fn issued_identities_complete_a_mutual_tls_handshake_and_the_server_learns_the_client() {
    let dir = cluster_files();
    let node = Identity::load(&dir.path().join("node-3")).unwrap();
    let alice = Identity::load(&dir.path().join("alice")).unwrap();
    let server = ServerTls::new(&node).unwrap();
    let client = ClientTls::new(&alice).unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (mut tls, principal) = server.accept(tcp, TIMEOUT).await.unwrap();
            tls.write_all(b"hello").await.unwrap();
            tls.shutdown().await.unwrap();
            principal
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut tls, server_principal) = client
            .connect(tcp, ServerName::IpAddress(LOOPBACK.into()), TIMEOUT)
            .await
            .unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        assert_eq!(server_principal.to_string(), "fabric://prod/node/3");
        let client_principal = serving.await.unwrap();
        assert_eq!(client_principal.to_string(), "fabric://prod/user/alice");
    });
}

/// OpenSSL, if installed (required under `FABRIC_REQUIRE_TOOLS=1`).
fn openssl() -> Option<&'static str> {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("FABRIC_REQUIRE_TOOLS").is_none(),
            "openssl is missing and FABRIC_REQUIRE_TOOLS is set"
        );
        eprintln!("skipped: openssl is not installed (apt-get install openssl)");
        return None;
    }
    Some("openssl")
}

/// Splits a chain file into the leaf and the intermediate, for OpenSSL's separate arguments.
fn split_chain(dir: &Path, name: &str) -> (String, String) {
    let text = std::fs::read_to_string(dir.join(name).join("chain.pem")).unwrap();
    let end = "-----END CERTIFICATE-----";
    let cut = text.find(end).unwrap() + end.len();
    let (leaf, intermediate) = text.split_at(cut);
    let leaf_path = dir.join(format!("{name}-leaf.pem"));
    let intermediate_path = dir.join(format!("{name}-intermediate.pem"));
    std::fs::write(&leaf_path, format!("{leaf}\n")).unwrap();
    std::fs::write(&intermediate_path, intermediate.trim_start()).unwrap();
    (
        leaf_path.to_str().unwrap().to_owned(),
        intermediate_path.to_str().unwrap().to_owned(),
    )
}

#[test]
fn openssl_verifies_the_chains_for_their_purposes() {
    let Some(openssl) = openssl() else { return };
    let dir = cluster_files();
    let ca = dir.path().join("ca/ca.pem");
    let verify = |name: &str, purpose: &str| {
        let (leaf, intermediate) = split_chain(dir.path(), name);
        let out = Command::new(openssl)
            .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
            .arg(&ca)
            .args(["-untrusted", &intermediate, &leaf])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    for (name, purpose) in [
        ("node-3", "sslserver"),
        ("node-3", "sslclient"),
        ("alice", "sslclient"),
    ] {
        let (ok, text) = verify(name, purpose);
        assert!(ok, "{name} as {purpose}: {text}");
    }
    // A user certificate is a client's only.
    let (ok, text) = verify("alice", "sslserver");
    assert!(
        !ok && text.contains("unsuitable certificate purpose"),
        "{text}"
    );
}

#[test]
fn openssl_s_client_completes_a_mutual_tls13_handshake_with_a_node() {
    let Some(openssl) = openssl() else { return };
    let dir = cluster_files();
    let (leaf, intermediate) = split_chain(dir.path(), "alice");
    let node = Identity::load(&dir.path().join("node-3")).unwrap();
    let server = ServerTls::new(&node).unwrap();

    // The server runs on the runtime's worker while this thread waits for openssl.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime.block_on(TcpListener::bind((LOOPBACK, 0))).unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = runtime.spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut tls, principal) = server.accept(tcp, TIMEOUT).await?;
        tls.write_all(b"hello from node 3\n").await.unwrap();
        tls.shutdown().await.unwrap();
        Ok::<_, fabric::identity::handshake::HandshakeError>(principal)
    });
    let client = Command::new(openssl)
        .args([
            "s_client",
            // Read on after stdin's end of file, until the node closes, so that its greeting is
            // read rather than raced by s_client's own exit.
            "-ign_eof",
            "-tls1_3",
            "-verify_return_error",
            "-verify_ip",
            "127.0.0.1",
        ])
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(dir.path().join("ca/ca.pem"))
        .args(["-cert", &leaf, "-cert_chain", &intermediate])
        .arg("-key")
        .arg(dir.path().join("alice/key.pem"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&client.stdout);
    let principal = runtime.block_on(serving).unwrap();
    assert_eq!(
        principal.unwrap().to_string(),
        "fabric://prod/user/alice",
        "{stdout}\n{}",
        String::from_utf8_lossy(&client.stderr)
    );
    assert!(stdout.contains("TLSv1.3"), "{stdout}");
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    assert!(stdout.contains("hello from node 3"), "{stdout}");
}

#[test]
fn bad_input_is_refused_with_a_reason_and_writes_nothing() {
    let dir = cluster_files();
    let d = dir.path();
    for (args, reason) in [
        (
            vec!["ca", "init", "--dir", "ca", "--cluster", "prod"],
            "refusing to overwrite an existing CA",
        ),
        (
            vec!["ca", "init", "--dir", "ca2", "--cluster", "Prod_1"],
            "invalid cluster name \"Prod_1\"",
        ),
        (
            vec![
                "cert", "issue", "user", "Alice", "--ca-dir", "ca", "--out", "x",
            ],
            "invalid user name \"Alice\"",
        ),
        (
            vec![
                "cert", "issue", "gateway", "../hv", "--ca-dir", "ca", "--out", "x",
            ],
            "invalid gateway name",
        ),
        (
            vec!["cert", "issue", "node", "0", "--ca-dir", "ca", "--out", "x"],
            "invalid node id \"0\"",
        ),
        (
            vec![
                "cert", "issue", "node", "x1", "--ca-dir", "ca", "--out", "x",
            ],
            "invalid node id",
        ),
        (
            vec![
                "cert", "issue", "user", "bob", "--ca-dir", "ca", "--out", "x", "--san", "10.0.0.1",
            ],
            "takes no --san",
        ),
        (
            vec![
                "cert", "issue", "node", "4", "--ca-dir", "ca", "--out", "x", "--san", "bad name",
            ],
            "invalid --san \"bad name\"",
        ),
        (
            vec![
                "cert", "issue", "node", "4", "--ca-dir", "ca", "--out", "x", "--days", "0",
            ],
            "--days 0: want 1 to 730",
        ),
        (
            vec![
                "cert", "issue", "node", "4", "--ca-dir", "nowhere", "--out", "x",
            ],
            "nowhere/ca.json",
        ),
        (
            vec![
                "cert", "issue", "user", "alice", "--ca-dir", "ca", "--out", "alice",
            ],
            "give --overwrite to replace it",
        ),
    ] {
        let stderr = fabricctl_refused(&args, d);
        assert!(stderr.starts_with("fabricctl: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(reason),
            "{args:?}: want {reason:?} in {stderr}"
        );
    }
    assert!(!d.join("x").exists(), "a refused issue writes nothing");
    assert!(!d.join("ca2").exists(), "a refused init writes nothing");
    // The refused re-issue left alice's identity as it was.
    Identity::load(&d.join("alice")).unwrap();
}
