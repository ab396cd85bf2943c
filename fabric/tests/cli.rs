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
            vec!["--nodes", "6", "--voters", "4"],
            "want an odd number of voters",
        ),
        (
            vec!["--nodes", "3", "--voters", "5"],
            "want an odd number of voters",
        ),
        (
            vec!["--nodes", "6", "--nodes-per-rack", "3"],
            "fewer than the 3 racks",
        ),
        (vec!["--voters", "3"], "give --nodes too"),
        (vec!["--metrics-listen", "nowhere"], "want IP:PORT"),
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

#[test]
fn a_node_binding_a_wildcard_without_an_advertise_address_is_refused() {
    for (args, reason) in [
        (vec!["--listen", "0.0.0.0:0"], "give --advertise-rpc"),
        (
            vec!["--listen", "127.0.0.1:0", "--data-addr", "0.0.0.0:0"],
            "give --advertise-data",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = fabricd()
            .args(["node", "--id", "1", "--disk-capacity", "1TiB"])
            .arg("--data-dir")
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(
            stderr.contains("binds every interface"),
            "{args:?}: {stderr}"
        );
    }
}
