//! A `fabricd node` whose Raft log is damaged where it was known synced refuses to start, with
//! exit code 4 and a message naming the file and the byte offset, instead of serving without
//! entries it acknowledged.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fabric::identity::Transport;
use fabric::identity::dev_pki::DevPki;
use fabric::meta::client::{Client, discover};
use proto::meta as pb;

/// How long a node may take to start serving, or to exit.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Where the records of `raft.log` begin, after its two 4 KiB mark slots.
const RECORDS_START: usize = 8192;

fn spawn(data_dir: &Path, stderr: &Path) -> Child {
    let pki = DevPki::ensure(data_dir.parent().expect("a parent")).expect("dev CA");
    pki.ensure_node(1).expect("node certificate");
    Command::new(env!("CARGO_BIN_EXE_fabricd"))
        .args([
            "node",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--bootstrap",
            "--bootstrap-admin",
            "fabric://dev/user/admin",
        ])
        .args(["--location", "rack=r1,host=h1", "--disk-capacity", "1TiB"])
        .arg("--data-dir")
        .arg(data_dir)
        .env("FABRIC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).expect("stderr file"))
        .spawn()
        .expect("spawn fabricd node")
}

/// Waits for `child` to exit; kills it and panics if it does not within [`TIMEOUT`].
fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: fabricd node did not exit within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The gRPC address the node wrote to its `node.json` once serving (found, as `fabricctl` finds
/// it, from the directory holding the node's data directory).
fn serving_addr(data_dir: &Path, child: &mut Child, stderr: &Path) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let parent = data_dir.parent().expect("parent of the data directory");
    loop {
        if let Ok(nodes) = discover(parent)
            && let Some(node) = nodes.first()
        {
            return node.rpc_addr.clone();
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            let log = std::fs::read_to_string(stderr).unwrap_or_default();
            panic!("fabricd node exited ({status}) before serving:\n{log}");
        }
        assert!(Instant::now() < deadline, "fabricd node did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `synced_to` of the valid mark of the highest sequence (the format of `mark.rs`).
fn synced_to(log: &[u8]) -> u64 {
    let word = |at: usize| u64::from_le_bytes(log[at..at + 8].try_into().unwrap());
    [0, 4096]
        .into_iter()
        .filter(|&slot| &log[slot..slot + 4] == b"FRLM")
        .map(|slot| (word(slot + 8), word(slot + 16)))
        .max()
        .expect("a mark")
        .1
}

#[test]
fn a_damaged_synced_record_stops_the_node_with_exit_code_4() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("node-1");
    let stderr = dir.path().join("stderr");
    let mut node = spawn(&data_dir, &stderr);
    let addr = serving_addr(&data_dir, &mut node, &stderr);

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let admin = DevPki::ensure(dir.path()).unwrap().ensure_admin().unwrap();
        let client = Client::new(vec![addr], Transport::load(&admin).unwrap());
        // The node registers its disk on its own agent's schedule: wait until it has.
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let nodes = client
                .call(|mut c| async move { c.list_nodes(pb::ListNodesRequest {}).await })
                .await
                .expect("list nodes");
            if !nodes.nodes.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the node never registered"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for i in 0..5 {
            let req = pb::CreatePoolRequest {
                name: format!("pool-{i}"),
                rule: Some(pb::Rule {
                    replicas: 1,
                    min_replicas: 1,
                    failure_domain: "host".into(),
                    tag_filter: Vec::new(),
                }),
                pg_count: 8,
            };
            client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.create_pool(req).await }
                })
                .await
                .expect("create pool");
        }
    });

    // SIGTERM: a clean stop.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(node.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_exit(&mut node, "SIGTERM");
    assert!(status.success(), "stop: {status}");

    // Damage the body of the first record, which the mark says was synced.
    let log_path: PathBuf = data_dir.join("meta").join("raft.log");
    let mut log = std::fs::read(&log_path).expect("read raft.log");
    let first_len =
        u32::from_le_bytes(log[RECORDS_START..RECORDS_START + 4].try_into().unwrap()) as usize;
    let synced = synced_to(&log);
    assert!(
        synced as usize >= RECORDS_START + 8 + first_len,
        "the first record is not marked synced (synced to {synced})"
    );
    log[RECORDS_START + 8 + first_len / 2] ^= 0x20;
    std::fs::write(&log_path, &log).expect("write raft.log");

    let mut node = spawn(&data_dir, &stderr);
    let status = wait_exit(&mut node, "restart");
    let message = std::fs::read_to_string(&stderr).expect("read stderr");
    assert_eq!(
        status.code(),
        Some(fabric::EXIT_METADATA_LOG_CORRUPT),
        "{message}"
    );
    assert!(
        message.contains(&log_path.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("offset {RECORDS_START}")),
        "{message}"
    );
    assert!(message.contains("crc32c"), "{message}");
    assert!(message.contains("fabricctl node remove 1"), "{message}");
    // The refused start left the file as it was.
    assert_eq!(std::fs::read(&log_path).expect("read raft.log"), log);
}
