//! Persistence and integrity of a real `fabricd dev` process: clean restarts, `kill -9` after
//! acknowledged flushes and FUA writes, a bit flipped on disk, a second process on the same data
//! directory, and malformed input that must not disturb other clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use fabric_suite::{DevNode, nbdsh, run, run_text, tools, workspace_bin};

fn qemu_io(node: &DevNode, cmds: &[&str]) -> anyhow::Result<String> {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(node.uri());
    let out = run_text(&mut c)?;
    anyhow::ensure!(
        !out.contains("Pattern verification failed") && !out.contains("error"),
        "{cmds:?}: {out}"
    );
    Ok(out)
}

#[test]
fn data_survives_a_clean_restart() {
    let Some(()) = tools(&["qemu-io"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut node = DevNode::start(&dir.path().join("data"), "vol0:16MiB").unwrap();
    qemu_io(&node, &["write -P 0x61 0 2M", "write -P 0x62 10M 1M"]).unwrap();
    assert_eq!(node.stop().unwrap(), 0, "SIGTERM is a clean stop");
    node.restart().unwrap();
    qemu_io(
        &node,
        &[
            "read -P 0x61 0 2M",
            "read -P 0x62 10M 1M",
            "read -P 0 2M 8M",
        ],
    )
    .unwrap();
}

#[test]
fn flushed_and_fua_writes_survive_kill_9() {
    let Some(()) = tools(&["qemu-io"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut node = DevNode::start(&dir.path().join("data"), "vol0:16MiB").unwrap();
    for round in 0..4u8 {
        let pattern = 0x30 + round;
        let at = format!("{}M", round * 2);
        // qemu-io flushes before it exits; the FUA write is durable on its own reply.
        qemu_io(&node, &[&format!("write -P {pattern} {at} 1M"), "flush"]).unwrap();
        qemu_io(&node, &[&format!("write -f -P {} {at} 4k", pattern + 0x10)]).unwrap();
        node.kill9();
        node.restart().unwrap();
        for r in 0..=round {
            let p = 0x30 + r;
            qemu_io(
                &node,
                &[
                    &format!("read -P {} {}M 4k", p + 0x10, r * 2),
                    &format!("read -P {p} {} 1020k", u64::from(r) * 2 * 1048576 + 4096),
                ],
            )
            .unwrap();
        }
    }
}

#[test]
fn a_flipped_bit_on_disk_fails_the_read_and_is_reported() {
    let Some(()) = tools(&["qemu-io"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut node = DevNode::start(&data_dir, "vol0:16MiB").unwrap();
    qemu_io(&node, &["write -P 0x77 0 1M"]).unwrap();
    assert_eq!(node.stop().unwrap(), 0);

    let file = data_dir.join("node-0/volumes/vol0/data");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[524_288 + 100] ^= 0x04;
    std::fs::write(&file, &bytes).unwrap();

    node.restart().unwrap();
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0x77 0 1M"])
        .arg(node.uri())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Input/output error"),
        "the read must fail, got: {text}"
    );
    assert!(
        !text.contains("read 1048576/1048576"),
        "no bad data returned: {text}"
    );
    assert!(
        node.wait_for_log("offset=524288", Duration::from_secs(5)),
        "the mismatch is logged with its offset: {:?}",
        node.logs()
    );
    // The blocks around the bad one still read fine.
    qemu_io(&node, &["read -P 0x77 0 512k", "read -P 0x77 516k 508k"]).unwrap();
}

#[test]
fn a_second_process_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let _node = DevNode::start(&data_dir, "vol0:16MiB").unwrap();
    let out = Command::new(workspace_bin("fabricd"))
        .args(["dev", "--nbd-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));
}

#[test]
fn malformed_and_out_of_range_requests_leave_other_clients_served() {
    let Some(()) = tools(&["qemu-io", "nbdsh"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = DevNode::start(&dir.path().join("data"), "vol0:16MiB").unwrap();
    qemu_io(&node, &["write -P 0x99 0 64k"]).unwrap();

    // A client that sends an option with a bad magic number gets its connection closed.
    let mut bad = TcpStream::connect(node.addr).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 18];
    bad.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    bad.write_all(&1u32.to_be_bytes()).unwrap(); // NBD_FLAG_C_FIXED_NEWSTYLE
    bad.write_all(b"NOTMAGIC\0\0\0\x01\0\0\0\0").unwrap();
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest);

    // A request past the end gets an error; the server keeps serving.
    // Strict mode off, so that libnbd sends what it would otherwise refuse itself.
    let script = "\
import nbd
h.set_strict_mode(0)
try:
    h.pread(4096, 16 * 1024 * 1024)
    print('no error')
except nbd.Error as e:
    print('refused', e.errno)
try:
    h.pwrite(b'x' * 4096, 16 * 1024 * 1024 - 2048)
    print('no error')
except nbd.Error as e:
    print('refused', e.errno)
";
    let out = run_text(nbdsh().args(["-u", &node.uri(), "-c", script])).unwrap();
    assert!(
        out.contains("refused EINVAL") && out.contains("refused ENOSPC"),
        "{out}"
    );
    qemu_io(&node, &["read -P 0x99 0 64k"]).unwrap();
    run(nbdsh().args([
        "-u",
        &node.uri(),
        "-c",
        "assert h.pread(4, 0) == b'\\x99' * 4",
    ]))
    .unwrap();
}

/// A client that keeps its connection across a daemon crash: QEMU's NBD driver with
/// `reconnect-delay` rides out a kill -9 and restart, and its writes before and after land.
#[test]
fn qemu_reconnects_across_a_kill_9_and_restart() {
    let Some(()) = tools(&["qemu-io"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut node = DevNode::start(&dir.path().join("data"), "vol0:16MiB").unwrap();
    let opts = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export=vol0,reconnect-delay=30",
        node.addr.port()
    );
    let client = Command::new("qemu-io")
        .args(["--image-opts", &opts])
        .args([
            "-c",
            "write -P 0x21 0 64k",
            "-c",
            "flush",
            "-c",
            "sleep 3000",
        ])
        .args(["-c", "write -P 0x22 64k 64k", "-c", "flush"])
        .args(["-c", "read -P 0x21 0 64k", "-c", "read -P 0x22 64k 64k"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Crash the daemon while the client sleeps between its writes, then bring it back.
    std::thread::sleep(Duration::from_millis(1000));
    node.kill9();
    std::thread::sleep(Duration::from_millis(500));
    node.restart().unwrap();
    let out = client.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("Pattern verification failed") && !text.contains("error"),
        "{text}"
    );
    assert_eq!(text.matches("read 65536/65536").count(), 2, "{text}");
    assert!(
        node.wait_for_log("nbd connection opened", Duration::from_secs(5)),
        "the restarted daemon must have served the reconnected client"
    );
    qemu_io(&node, &["read -P 0x21 0 64k", "read -P 0x22 64k 64k"]).unwrap();
}
