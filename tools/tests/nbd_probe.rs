//! The first-read probe against a real server, qemu-nbd: it times a whole handshake and read,
//! and an export the server does not have is an error, not a time. Skips (or fails, with
//! `FABRIC_REQUIRE_TOOLS=1`) when qemu-nbd is not installed.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tools::nbd_probe::first_read_after_go;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_nbd_installed() -> bool {
    let found = Command::new("qemu-nbd")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("FABRIC_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "qemu-nbd is not installed and FABRIC_REQUIRE_TOOLS=1"
        );
        eprintln!("SKIP: qemu-nbd is not installed");
    }
    found
}

#[test]
fn the_probe_times_a_handshake_and_a_read_and_refuses_an_unknown_export() {
    if !qemu_nbd_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, vec![0x5au8; 1 << 20]).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Killed(
        Command::new("qemu-nbd")
            .args([
                "-f",
                "raw",
                "--persistent",
                "-x",
                "disk",
                "--bind",
                "127.0.0.1",
            ])
            .args(["-p", &port.to_string()])
            .arg(&image)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "qemu-nbd never listened");
        std::thread::sleep(Duration::from_millis(20));
    }

    let took = first_read_after_go(&format!("nbd://127.0.0.1:{port}/disk")).unwrap();
    assert!(
        took > Duration::ZERO && took < Duration::from_secs(10),
        "{took:?}"
    );
    let refused = first_read_after_go(&format!("nbd://127.0.0.1:{port}/other"));
    assert!(refused.is_err(), "an unknown export was timed: {refused:?}");
    // The server still serves after the refusal.
    first_read_after_go(&format!("nbd://127.0.0.1:{port}/disk")).unwrap();
}
