//! Real NBD clients against a running `fabricd dev`: QEMU's qemu-img and qemu-io, libnbd's
//! nbdinfo and nbdcopy, and fio's nbd engine with verification.
//!
//! Each test starts its own node on its own port and data directory.

use std::process::Command;

use fabric_suite::{DevNode, run, run_text, tools};

fn random_file(path: &std::path::Path, len: usize, seed: u64) {
    // xorshift: incompressible, reproducible contents without a dependency.
    let mut x = seed | 1;
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
    std::fs::write(path, buf).expect("write test file");
}

#[test]
fn qemu_img_info_convert_in_and_out_and_compare() {
    let Some(()) = tools(&["qemu-img"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = DevNode::start(&dir.path().join("data"), "vol0:64MiB").unwrap();

    let info =
        run_text(Command::new("qemu-img").args(["info", "--output=json", &node.uri()])).unwrap();
    assert!(
        info.contains("\"virtual-size\": 67108864"),
        "qemu-img info: {info}"
    );

    let src = dir.path().join("src.raw");
    random_file(&src, 24 << 20, 7);
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(node.uri()))
    .unwrap();
    let out = dir.path().join("out.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(node.uri())
        .arg(&out))
    .unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 64 << 20);
    // qemu-img compares a shorter image as if padded with zeros: the first 24 MiB must be the
    // source and the rest of the volume, never written, zeros.
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(node.uri()))
    .unwrap();
    // Strict mode sees the size difference, so it must fail: the compare is not vacuous.
    run(Command::new("qemu-img")
        .args(["compare", "-s", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(node.uri()))
    .expect_err("strict compare of images of different sizes must fail");
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&out)
        .arg(node.uri()))
    .unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes[..24 << 20], std::fs::read(&src).unwrap()[..]);
    assert!(bytes[24 << 20..].iter().all(|&b| b == 0));
}

#[test]
fn qemu_io_patterns_fua_zeroes_discard_and_unaligned_writes() {
    let Some(()) = tools(&["qemu-io"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = DevNode::start(&dir.path().join("data"), "vol0:16MiB").unwrap();
    let qemu_io = |cmds: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        c.arg(node.uri());
        let out = run_text(&mut c).unwrap();
        assert!(
            !out.contains("Pattern verification failed"),
            "{cmds:?}: {out}"
        );
        assert!(!out.contains("error"), "{cmds:?}: {out}");
        out
    };
    qemu_io(&["write -P 0xaa 0 1M", "read -P 0xaa 0 1M"]);
    // FUA writes (-f) and a read-back in a new connection.
    qemu_io(&["write -f -P 0xbb 1M 64k"]);
    qemu_io(&["read -P 0xbb 1M 64k", "read -P 0xaa 0 1M"]);
    // write -z: zeroes, with and without permission to unmap.
    qemu_io(&["write -z 2M 1M", "read -P 0 2M 1M"]);
    qemu_io(&[
        "write -P 0xcc 3M 1M",
        "write -z -u 3M 512k",
        "read -P 0 3M 512k",
        "read -P 0xcc 3584k 512k",
    ]);
    // discard punches a hole that reads back as zeros.
    qemu_io(&["write -P 0xdd 4M 1M", "discard 4M 1M", "read -P 0 4M 1M"]);
    // A 512-byte write inside a 4 KiB block leaves its neighbours alone.
    qemu_io(&["write -P 0xee 5M 8k", "write -P 0x11 5121k 512"]);
    qemu_io(&[
        "read -P 0xee 5M 1k",
        "read -P 0x11 5121k 512",
        "read -P 0xee 5244416 6656",
    ]);
}

#[test]
fn nbdinfo_reports_size_and_map_shows_holes() {
    let Some(()) = tools(&["nbdinfo", "qemu-io"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = DevNode::start(&dir.path().join("data"), "vol0:32MiB").unwrap();
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x5a 8M 1M"])
        .arg(node.uri()))
    .unwrap();

    let json = run_text(Command::new("nbdinfo").args(["--json", &node.uri()])).unwrap();
    assert!(json.contains("\"export-size\": 33554432"), "{json}");
    assert!(json.contains("base:allocation"), "{json}");
    assert!(json.contains("\"can_multi_conn\": true"), "{json}");

    let map = run_text(Command::new("nbdinfo").args(["--map", &node.uri()])).unwrap();
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // offset length type description
    let data: Vec<_> = lines.iter().filter(|l| l.last() == Some(&"data")).collect();
    let holes: Vec<_> = lines
        .iter()
        .filter(|l| l.last() == Some(&"hole,zero"))
        .collect();
    assert_eq!(data.len(), 1, "one data extent: {map}");
    assert_eq!(data[0][0], "8388608", "{map}");
    assert_eq!(data[0][1], "1048576", "{map}");
    assert_eq!(holes.len(), 2, "holes before and after the data: {map}");
}

#[test]
fn nbdcopy_both_ways_with_checksums() {
    let Some(()) = tools(&["nbdcopy", "sha256sum"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = DevNode::start(&dir.path().join("data"), "vol0:32MiB").unwrap();
    let src = dir.path().join("src.raw");
    random_file(&src, 32 << 20, 11);
    run(Command::new("nbdcopy").arg(&src).arg(node.uri())).unwrap();
    let out = dir.path().join("out.raw");
    run(Command::new("nbdcopy").arg(node.uri()).arg(&out)).unwrap();
    let sums = run_text(Command::new("sha256sum").arg(&src).arg(&out)).unwrap();
    let sums: Vec<&str> = sums
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(sums[0], sums[1], "copy out differs from copy in");
}

#[test]
fn fio_nbd_engine_random_writes_verify_crc32c() {
    let Some(()) = tools(&["fio"]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let node = DevNode::start(&dir.path().join("data"), "vol0:64MiB").unwrap();
    let out = run_text(Command::new("fio").args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", node.uri()),
        "--rw=randwrite",
        "--bs=4k",
        "--size=32M",
        "--iodepth=16",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--do_verify=1",
        "--output-format=normal",
    ]))
    .unwrap();
    assert!(out.contains("err= 0"), "fio reported errors:\n{out}");
}

#[test]
fn the_unix_socket_serves_the_same_volume_as_tcp() {
    let Some(()) = tools(&["nbdinfo", "qemu-io"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nbd.sock");
    let node = DevNode::start_with(
        &dir.path().join("data"),
        "vol0:16MiB",
        &["--nbd-unix", socket.to_str().unwrap()],
    )
    .unwrap();
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x42 0 64k"])
        .arg(node.uri()))
    .unwrap();
    let unix_uri = format!("nbd+unix:///vol0?socket={}", socket.display());
    let info = run_text(Command::new("nbdinfo").args(["--size", &unix_uri])).unwrap();
    assert_eq!(info.trim(), "16777216");
    let out = run_text(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", "read -P 0x42 0 64k"])
            .arg(&unix_uri),
    )
    .unwrap();
    assert!(!out.contains("Pattern verification failed"), "{out}");
}
