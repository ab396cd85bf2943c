//! Identity and access on a real cluster (`fabricd dev --nodes 3`): every TCP port takes
//! mutual TLS only, a certificate of another CA or an expired one gets nowhere, and every
//! metadata call is checked against the policy in Raft — a refusal names the verb and the
//! target that were missing, and changes nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use fabric::identity::ca::CertificateAuthority;
use fabric::identity::issue::LeafRequest;
use fabric::identity::{ClusterName, PrincipalKind};
use fabric_suite::{fabricctl, issue_cert, workspace_bin};
use serde_json::Value;

/// `fabricctl --json --data-dir DATA --cert-dir CERTS ARGS`, whatever its outcome.
fn ctl_as(data: &Path, certs: &Path, args: &[&str]) -> Output {
    fabric_suite::fabricctl_as(data, Some(certs), args)
}

/// What a refused fabricctl run said; panics if it succeeded.
fn refusal(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a refusal, got {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("fabricctl JSON")
}

/// A user certificate for `name` in `DATA/users/NAME`.
fn user(data: &Path, name: &str) -> PathBuf {
    let dir = data.join("users").join(name);
    issue_cert(data, "user", name, &dir, &[]);
    dir
}

/// Sends `bytes` in plaintext and reads what comes back until the server closes: a TLS
/// server answers a non-TLS first record with at most an alert, never with what the
/// plaintext protocol would answer.
fn plaintext_answer(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn every_port_takes_mutual_tls_only_and_foreign_or_expired_certificates_are_refused() {
    let (_serial, dir, data, _dev) = fabric_suite::three_node_cluster();
    let cluster: Value =
        serde_json::from_slice(&std::fs::read(data.join("cluster.json")).unwrap()).unwrap();
    // An HTTP/2 client in plaintext gets no SETTINGS frame back from a member's gRPC port.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    for member in cluster["members"].as_array().unwrap() {
        let addr = member[1].as_str().unwrap();
        let answer = plaintext_answer(addr, preface);
        assert!(
            answer.len() <= 7 && answer.first().is_none_or(|b| *b == 0x15),
            "gRPC port {addr} answered plaintext with {answer:02x?}"
        );
    }
    // The replica port: a plaintext PING frame (any bytes) gets no reply frame.
    for node in cluster["data"].as_array().unwrap() {
        let addr = node[1].as_str().unwrap();
        let answer = plaintext_answer(addr, &[0u8; 64]);
        assert!(
            answer.len() <= 7 && answer.first().is_none_or(|b| *b == 0x15),
            "replica port {addr} answered plaintext with {answer:02x?}"
        );
    }

    // The administrator of another CA (same cluster name, other keys) is not let in.
    let other = dir.path().join("other");
    fabric_suite::cluster_ca(&other);
    let out = ctl_as(&data, &other.join("admin"), &["volume", "list"]);
    let why = refusal(&out);
    assert!(
        why.contains("certificate") || why.contains("Unknown"),
        "{why}"
    );

    // A certificate of the right CA that expired an hour ago is refused too.
    let expired = dir.path().join("expired");
    let ca = CertificateAuthority::open(&data.join("ca")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let leaf = ca
        .issue(&LeafRequest {
            kind: PrincipalKind::User("admin".into()),
            server_names: Vec::new(),
            not_before: now - time::Duration::days(2),
            not_after: now - time::Duration::hours(1),
        })
        .unwrap();
    leaf.write(&expired, true, ca.root_pin()).unwrap();
    let out = ctl_as(&data, &expired, &["volume", "list"]);
    let why = refusal(&out);
    assert!(why.contains("xpired"), "{why}");
    assert_eq!(ca.cluster(), &ClusterName::new("dev").unwrap());

    // The administrator's own certificate works, and the volume list is unchanged.
    let volumes = fabricctl(&data, &["volume", "list"]);
    assert_eq!(volumes.as_array().unwrap().len(), 1, "{volumes}");
}

#[test]
fn roles_at_scopes_decide_every_call_and_each_refusal_names_what_was_missing() {
    let (_serial, _dir, data, _dev) = fabric_suite::three_node_cluster();
    for pool in ["a", "b"] {
        fabricctl(&data, &["pool", "create", pool, "--pg-count", "8"]);
    }
    for (volume, pool) in [("va", "a"), ("vb", "b")] {
        fabricctl(
            &data,
            &[
                "volume", "create", volume, "--size", "64MiB", "--pool", pool,
            ],
        );
    }

    // A viewer reads and changes nothing.
    let bob = user(&data, "bob");
    fabricctl(&data, &["auth", "bind", "fabric://dev/user/bob", "viewer"]);
    let listed = ok_json(&ctl_as(&data, &bob, &["volume", "list"]));
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    let why = refusal(&ctl_as(
        &data,
        &bob,
        &["volume", "create", "x", "--size", "64MiB"],
    ));
    assert!(
        why.contains("PERMISSION_DENIED")
            && why.contains("volume.create")
            && why.contains("pool/default"),
        "{why}"
    );
    let why = refusal(&ctl_as(&data, &bob, &["volume", "delete", "va"]));
    assert!(
        why.contains("volume.delete") && why.contains("volume/va"),
        "{why}"
    );
    // Nobody grants what they do not hold: the viewer cannot make itself an admin.
    let why = refusal(&ctl_as(
        &data,
        &bob,
        &["auth", "bind", "fabric://dev/user/bob", "cluster-admin"],
    ));
    assert!(why.contains("auth.bind"), "{why}");
    let names: Vec<String> = fabricctl(&data, &["volume", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["va", "vb", "vol0"],
        "a refused call changed nothing"
    );

    // A volume-user of pool a uses a's volumes and nothing of pool b.
    let carol = user(&data, "carol");
    fabricctl(
        &data,
        &[
            "auth",
            "bind",
            "fabric://dev/user/carol",
            "volume-user",
            "--scope",
            "pool/a",
        ],
    );
    ok_json(&ctl_as(
        &data,
        &carol,
        &["volume", "attach", "va", "--client", "carol-host"],
    ));
    let why = refusal(&ctl_as(
        &data,
        &carol,
        &["volume", "attach", "vb", "--client", "carol-host"],
    ));
    assert!(
        why.contains("volume.attach") && why.contains("volume/vb (pool/b)"),
        "{why}"
    );
    assert!(
        fabricctl(&data, &["volume", "show", "vb"])["attachment"].is_null(),
        "the refused attach granted nothing"
    );
    let why = refusal(&ctl_as(
        &data,
        &carol,
        &["volume", "attach", "va", "--client", "other", "--force"],
    ));
    assert!(why.contains("volume.force_attach"), "{why}");

    // can-i answers for oneself, and (with auth.read) for others.
    let answer = ok_json(&ctl_as(
        &data,
        &carol,
        &["auth", "can-i", "volume.attach", "volume/vb"],
    ));
    assert_eq!(answer["allowed"], false, "{answer}");
    let answer = fabricctl(
        &data,
        &[
            "auth",
            "can-i",
            "volume.attach",
            "volume/va",
            "--as",
            "fabric://dev/user/carol",
        ],
    );
    assert_eq!(answer["allowed"], true, "{answer}");
    assert!(
        answer["reason"].as_str().unwrap().contains("pool/a"),
        "{answer}"
    );

    // The cluster-admin may do all of it.
    fabricctl(&data, &["volume", "attach", "vb", "--client", "admin-host"]);
    fabricctl(
        &data,
        &["auth", "unbind", "fabric://dev/user/bob", "viewer"],
    );
    let why = refusal(&ctl_as(&data, &bob, &["node", "list"]));
    assert!(
        why.contains("node.list"),
        "an unbound principal holds nothing: {why}"
    );
    let listed = ok_json(&ctl_as(&data, &bob, &["volume", "list"]));
    assert_eq!(listed, serde_json::json!([]), "lists only what it may list");
}

/// `nbdinfo ARGS` with libnbd's debug output, which carries the server's refusals.
fn nbdinfo(args: &[&str]) -> Output {
    Command::new("nbdinfo")
        .args(args)
        .env("LIBNBD_DEBUG", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run nbdinfo")
}

/// QEMU's `--object` and `--image-opts` for an export over TLS with the certificates in `dir`.
fn qemu_tls(dir: &Path, port: u16, export: &str) -> Vec<String> {
    vec![
        "--object".into(),
        format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={}",
            dir.display()
        ),
        "--image-opts".into(),
        format!("driver=nbd,host=127.0.0.1,port={port},export={export},tls-creds=tls0"),
    ]
}

#[test]
fn nbd_clients_use_tls_with_qemu_and_libnbd_and_are_held_to_the_policy() {
    if fabric_suite::tools(&["nbdinfo", "qemu-img", "qemu-io"]).is_none() {
        return;
    }
    let (_serial, dir, data, dev) = fabric_suite::three_node_cluster();
    let admin = data.join("admin");
    let port = dev.addr.port();

    // The dev gateway listens on loopback: TLS clients and the host's plaintext ones.
    let uri = format!(
        "nbds://127.0.0.1:{port}/vol0?tls-certificates={}",
        admin.display()
    );
    let out = nbdinfo(&["--json", &uri]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["TLS"], true, "{info}");
    let qemu = qemu_tls(&admin, port, "vol0");
    let out = Command::new("qemu-io")
        .args(&qemu)
        .args(["-c", "write -P 0x5a 1M 256k", "-c", "read -P 0x5a 1M 256k"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !text.contains("fail"), "{text}");
    let out = Command::new("qemu-img")
        .arg("info")
        .args(&qemu)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("64 MiB"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        nbdinfo(&[&dev.uri()]).status.success(),
        "plaintext on loopback"
    );

    // A gateway told to require TLS refuses plaintext and certificate-less clients (it
    // serves another volume: vol0 is the dev gateway's).
    fabricctl(&data, &["volume", "create", "tlsvol", "--size", "64MiB"]);
    let log = dir.path().join("gw-tls.log");
    let gw = fabric_suite::Gateway::start(&data, "gw-tls", &["--nbd-tls", "required"], &log);
    let out = nbdinfo(&[&gw.uri("tlsvol")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let no_cert = dir.path().join("no-cert");
    std::fs::create_dir_all(&no_cert).unwrap();
    std::fs::copy(admin.join("ca-cert.pem"), no_cert.join("ca-cert.pem")).unwrap();
    let tls_uri = |certs: &Path| {
        format!(
            "nbds://127.0.0.1:{}/tlsvol?tls-certificates={}",
            gw.port,
            certs.display()
        )
    };
    assert!(
        !nbdinfo(&[&tls_uri(&no_cert)]).status.success(),
        "no client certificate"
    );

    // A user with a certificate but no binding is refused by name; once bound to the volume,
    // it uses it.
    let eve = user(&data, "eve");
    let out = nbdinfo(&[&tls_uri(&eve)]);
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains("fabric://dev/user/eve may not volume.") && why.contains("volume/tlsvol"),
        "{why}"
    );
    fabricctl(
        &data,
        &[
            "auth",
            "bind",
            "fabric://dev/user/eve",
            "volume-user",
            "--scope",
            "volume/tlsvol",
        ],
    );
    let out = Command::new("qemu-io")
        .args(qemu_tls(&eve, gw.port, "tlsvol"))
        .args(["-c", "write -P 0x3c 0 64k", "-c", "read -P 0x3c 0 64k"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !text.contains("fail"), "{text}");
    gw.stop();
}

/// Sends `req` over `stream` and reads its reply.
async fn call<S>(
    stream: &mut S,
    buf: &mut bytes::BytesMut,
    req: volume::wire::Request,
) -> volume::wire::Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(&req.encode_header()).await.unwrap();
    stream.write_all(&req.payload).await.unwrap();
    loop {
        if let Some(reply) = volume::wire::decode_reply(buf).unwrap() {
            return reply;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(buf))
            .await
            .expect("a reply in time")
            .unwrap();
        assert!(n > 0, "the replica closed the connection");
    }
}

#[test]
fn a_forged_capability_with_a_huge_epoch_fences_nothing_and_the_gateway_writes_on() {
    use volume::capability::{Capability, now_unix_ms};
    use volume::wire::{Op, Request, RequestHeader, Status, VolumeId, WriteVersion};

    if fabric_suite::tools(&["qemu-io"]).is_none() {
        return;
    }
    let (_serial, dir, data, dev) = fabric_suite::three_node_cluster();
    let io = |cmds: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw", &dev.uri()]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !text.contains("fail"), "{text}");
    };
    io(&["write -P 0x11 0 1M"]);
    let before = fabricctl(&data, &["volume", "show", "vol0"]);
    let id = VolumeId(before["id"].as_u64().unwrap());
    let epoch = before["attach_epoch"].as_u64().unwrap();

    // Mallory holds a real gateway certificate of the cluster, so the replica port lets it
    // speak the wire; it has no attachment, so no capability the cell key signed.
    let mallory = dir.path().join("mallory");
    issue_cert(&data, "gateway", "mallory", &mallory, &[]);
    let tls = fabric::identity::ClusterTls::load(&mallory).unwrap();
    let huge = u64::MAX - 7;
    let forged = Capability::new(
        id,
        huge,
        "fabric://dev/gateway/mallory",
        now_unix_ms() + 60_000,
    )
    .unwrap()
    .sign(&ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]))
    .encode();
    let cluster: Value =
        serde_json::from_slice(&std::fs::read(data.join("cluster.json")).unwrap()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for node in cluster["data"].as_array().unwrap() {
        let addr: std::net::SocketAddr = node[1].as_str().unwrap().parse().unwrap();
        runtime.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = fabric::identity::transport::server_name(&addr.to_string()).unwrap();
            let (mut s, _) = tls
                .client
                .connect(tcp, name, Duration::from_secs(10))
                .await
                .expect("a gateway certificate is let onto the replica port");
            let mut buf = bytes::BytesMut::new();
            let presented = call(
                &mut s,
                &mut buf,
                Request::capability(1, id, huge, forged.clone()),
            )
            .await;
            assert_eq!(
                presented.header.status,
                Status::Unauthorized,
                "forged capability at {addr}"
            );
            let header = RequestHeader {
                op: Op::Flush,
                flags: 0,
                request_id: 2,
                volume: id,
                offset: 0,
                len: 0,
                payload_crc: 0,
                attach_epoch: huge,
                version: WriteVersion::NONE,
            };
            let flush = call(&mut s, &mut buf, Request::new(header)).await;
            assert_eq!(flush.header.status, Status::Unauthorized, "flush at {addr}");
        });
    }

    // The gateway's writes go on at its epoch, and the volume's epoch did not move.
    io(&[
        "write -P 0x22 1M 1M",
        "read -P 0x11 0 1M",
        "read -P 0x22 1M 1M",
    ]);
    let after = fabricctl(&data, &["volume", "show", "vol0"]);
    assert_eq!(after["attach_epoch"].as_u64(), Some(epoch), "{after}");
}

/// Issues a certificate with `fabricctl cert issue --json` and returns its serial.
fn issue_serial(data: &Path, kind: &str, name: &str, out: &Path, sans: &[&str]) -> String {
    let mut cmd = Command::new(workspace_bin("fabricctl"));
    cmd.args(["--json", "cert", "issue", kind, name, "--overwrite"])
        .arg("--ca-dir")
        .arg(data.join("ca"))
        .arg("--out")
        .arg(out);
    for san in sans {
        cmd.args(["--san", san]);
    }
    let issued = ok_json(&cmd.output().unwrap());
    issued["serial"].as_str().expect("serial").to_owned()
}

/// An `nbdsh` session over TLS that reads every 100 ms for up to 30 s and prints `CUT <unix
/// seconds>` when a read fails (or `HELD` if none did).
fn held_session(uri: &str) -> std::process::Child {
    let script = format!(
        "import time\n\
        h.set_uri_allow_local_file(True)\n\
        h.connect_uri({uri:?})\n\
        t0 = time.time()\n\
        while time.time() - t0 < 30:\n\
        \x20   try:\n\
        \x20       h.pread(4096, 0)\n\
        \x20   except Exception as e:\n\
        \x20       print('CUT', time.time(), e, flush=True)\n\
        \x20       raise SystemExit(0)\n\
        \x20   time.sleep(0.1)\n\
        print('HELD', flush=True)\n"
    );
    // nbdsh is Python with libnbd's module, which is the system Python's: ahead of any other
    // python3 on PATH.
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    Command::new("nbdsh")
        .env("PATH", path)
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start nbdsh")
}

/// Seconds from `since` (unix seconds) to the cut `session` printed; panics if it held.
fn cut_after(session: std::process::Child, since: f64) -> f64 {
    let out = session.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let at: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("CUT ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "the session was not cut: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    at - since
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn revocations_and_withdrawn_bindings_cut_open_sessions_within_5_s_and_refuse_new_ones() {
    if fabric_suite::tools(&["nbdsh", "nbdinfo"]).is_none() {
        return;
    }
    let (_serial, dir, data, dev) = fabric_suite::three_node_cluster();
    let port = dev.addr.port();
    let uri = |certs: &Path| {
        format!(
            "nbds://127.0.0.1:{port}/vol0?tls-certificates={}",
            certs.display()
        )
    };
    let bind_eve = [
        "auth",
        "bind",
        "fabric://dev/user/eve",
        "volume-user",
        "--scope",
        "volume/vol0",
    ];

    // Eve's binding is removed while her session reads: the session is cut.
    let eve = data.join("users/eve");
    let eve_serial = issue_serial(&data, "user", "eve", &eve, &[]);
    fabricctl(&data, &bind_eve);
    let session = held_session(&uri(&eve));
    std::thread::sleep(Duration::from_secs(2));
    let unbound = unix_now();
    let mut unbind = bind_eve;
    unbind[1] = "unbind";
    fabricctl(&data, &unbind);
    let after = cut_after(session, unbound);
    eprintln!("session cut {after:.2} s after the unbind");
    assert!(after < 5.0, "cut {after:.1} s after the unbind");
    assert!(
        !nbdinfo(&[&uri(&eve)]).status.success(),
        "no binding, no session"
    );

    // Bound again, then her certificate is revoked: cut, and refused at the next handshake.
    fabricctl(&data, &bind_eve);
    let session = held_session(&uri(&eve));
    std::thread::sleep(Duration::from_secs(2));
    let revoked = unix_now();
    fabricctl(
        &data,
        &[
            "cert",
            "revoke",
            &eve_serial,
            "--principal",
            "fabric://dev/user/eve",
            "--reason",
            "laptop lost",
        ],
    );
    let after = cut_after(session, revoked);
    eprintln!("session cut {after:.2} s after the revocation");
    assert!(after < 5.0, "cut {after:.1} s after the revocation");
    let out = nbdinfo(&[&uri(&eve)]);
    assert!(
        !out.status.success(),
        "a revoked certificate gets no session"
    );
    let listed = fabricctl(&data, &["cert", "revoked"]);
    assert_eq!(listed[0]["serial"], eve_serial.as_str(), "{listed}");

    // A revoked user's certificate gets nothing from the metadata service either.
    let bob = dir.path().join("bob");
    let bob_serial = issue_serial(&data, "user", "bob", &bob, &[]);
    fabricctl(&data, &["auth", "bind", "fabric://dev/user/bob", "viewer"]);
    ok_json(&ctl_as(&data, &bob, &["volume", "list"]));
    fabricctl(&data, &["cert", "revoke", &bob_serial]);
    // Within 5 s the members refuse the certificate at the handshake. The client's own words
    // for that vary with when the alert overtakes its first request ("received fatal alert:
    // CertificateRevoked", or a closed connection), so the members' logs say why.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let refused_as_revoked = || {
        (1..=3).any(|id| {
            std::fs::read_to_string(data.join(format!("node-{id}/fabricd.log")))
                .is_ok_and(|log| log.contains("peer certificate refused: Revoked"))
        })
    };
    loop {
        let out = ctl_as(&data, &bob, &["volume", "list"]);
        let why = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() && refused_as_revoked() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "5 s after the revocation: {why}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_node_certificate_rotates_while_fio_verifies_and_an_open_replica_link_of_a_revoked_gateway_is_cut()
 {
    use volume::wire::{Op, Request, RequestHeader, Status, VolumeId, WriteVersion};

    if fabric_suite::tools(&["fio"]).is_none() {
        return;
    }
    let (_serial, dir, data, dev) = fabric_suite::three_node_cluster();
    let fio = Command::new("fio")
        .args([
            "--name=rotate",
            "--ioengine=nbd",
            &format!("--uri={}", dev.uri()),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=32M",
            "--time_based=1",
            "--runtime=14",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            // No verify state file left in the working directory.
            "--verify_state_save=0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_secs(3));

    // Node 2 gets a new certificate in its directory, and is told with SIGHUP.
    let serial = issue_serial(
        &data,
        "node",
        "2",
        &data.join("node-2/tls"),
        &["127.0.0.1", "localhost"],
    );
    let pid = fabric_suite::node_pid(&data, 2);
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_secs(1));
    let cluster: Value =
        serde_json::from_slice(&std::fs::read(data.join("cluster.json")).unwrap()).unwrap();
    let node2: std::net::SocketAddr = cluster["data"][1][1].as_str().unwrap().parse().unwrap();
    let mallory = dir.path().join("mallory");
    let mallory_serial = issue_serial(&data, "gateway", "mallory", &mallory, &[]);
    let tls = fabric::identity::ClusterTls::load(&mallory).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (presented, link_cut_after) = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(node2).await.unwrap();
        let name = fabric::identity::transport::server_name(&node2.to_string()).unwrap();
        let (mut s, _) = tls
            .client
            .connect(tcp, name, Duration::from_secs(10))
            .await
            .unwrap();
        let leaf = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        let presented = fabric::identity::revocation::serial_of(&leaf).unwrap();
        // An open link of a gateway whose certificate is then revoked is cut.
        let ping = |id| {
            Request::new(RequestHeader {
                op: Op::Ping,
                flags: 0,
                request_id: id,
                volume: VolumeId(0),
                offset: 0,
                len: 0,
                payload_crc: 0,
                attach_epoch: 0,
                version: WriteVersion::NONE,
            })
        };
        let mut buf = bytes::BytesMut::new();
        assert_eq!(
            call(&mut s, &mut buf, ping(1)).await.header.status,
            Status::Ok
        );
        let revoked = std::time::Instant::now();
        tokio::task::spawn_blocking({
            let data = data.clone();
            move || fabricctl(&data, &["cert", "revoke", &mallory_serial])
        })
        .await
        .unwrap();
        let mut id = 2;
        let cut = loop {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let req = ping(id);
            id += 1;
            let sent = s.write_all(&req.encode_header()).await;
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(1), s.read(&mut byte)).await;
            if sent.is_err() || matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
                break revoked.elapsed();
            }
            buf.clear();
            assert!(
                revoked.elapsed() < Duration::from_secs(10),
                "the link was never cut"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        (presented, cut)
    });
    assert_eq!(
        presented, serial,
        "node 2 presents its new certificate to new connections"
    );
    eprintln!("revoked gateway's replica link cut after {link_cut_after:?}");
    assert!(
        link_cut_after < Duration::from_secs(5),
        "the revoked gateway's link was cut after {link_cut_after:?}"
    );

    let out = fio.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fio: {text}");
    assert!(
        !text.contains("verify") || !text.contains("bad"),
        "fio verify: {text}"
    );
}
