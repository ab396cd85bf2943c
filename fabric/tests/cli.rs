//! `fabricd` refuses bad configuration with a one-line reason and exit code 2.

use std::process::Command;

fn fabricd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fabricd"))
}

#[test]
fn bad_flags_are_refused_with_a_reason() {
    for (args, reason) in [
        (vec!["--volume", "vol0"], "want NAME:SIZE"),
        (vec!["--volume", "vol0:3000"], "multiple of 4096"),
        (vec!["--volume", "../x:1GiB"], "invalid volume name"),
        (vec!["--nbd-listen", "localhost"], "want IP:PORT"),
        (
            vec!["--volume", "a:1MiB", "--volume", "a:2MiB"],
            "given twice",
        ),
        (vec!["--nodes", "0"], "want 1 to"),
        (
            vec!["--nodes", "3", "--nbd-unix", "x.sock"],
            "single node only",
        ),
        (
            vec!["--nodes", "3", "--io-engine", "portable"],
            "cluster nodes use io_uring",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = fabricd()
            .arg("dev")
            .arg("--data-dir")
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}
