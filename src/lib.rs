//! Test harness shared by the workspace-level integration tests: starting and killing real
//! `fabricd` processes, finding external clients (qemu-img, nbdinfo, fio, ...) and running them,
//! and booting a small Linux guest from a volume ([`vm`]).
//!
//! External tools are optional on a developer machine: a test that needs a missing tool prints
//! why it skips. With `FABRIC_REQUIRE_TOOLS=1` (as CI runs) a missing tool fails the test.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod vm;

/// How long a starting `fabricd` may take to start serving. Longer than the launcher's own
/// limit on forming a cluster (60 s), so that a slow start ends in the launcher's specific error.
pub const START_TIMEOUT_MS: u64 = 90_000;
/// Lines of each child's log file shown when a start (or a test) fails.
const FAILURE_LOG_LINES: usize = 40;

/// The workspace's own directory (for files the tests check, like the dashboard).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a built binary of this workspace (they sit beside the test's own `deps/` directory).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// Whether missing external tools fail tests instead of skipping them.
pub fn tools_required() -> bool {
    std::env::var("FABRIC_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Finds `tool` on PATH, or in the system directories a user's PATH often lacks (`mke2fs` and
/// `e2fsck` live in `/usr/sbin`). When it is missing: panics under `FABRIC_REQUIRE_TOOLS=1`,
/// otherwise prints why the calling test skips and returns `None`.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|p| p.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        unavailable(&format!("{name} is not installed"));
    }
    found
}

/// The skip/fail rule for anything else a test needs from the machine (a kernel to boot, a
/// static busybox): panics with `why` under `FABRIC_REQUIRE_TOOLS=1`, otherwise prints that
/// the calling test skips, and why.
pub fn unavailable(why: &str) {
    assert!(
        !tools_required(),
        "{why} and FABRIC_REQUIRE_TOOLS=1 (install the packages in .ci/run)"
    );
    eprintln!("SKIP: {why}");
}

/// Finds all of `names`, or returns `None` (after the skip/fail rule of [`tool`]).
pub fn tools(names: &[&str]) -> Option<()> {
    let mut ok = true;
    for n in names {
        ok &= tool(n).is_some();
    }
    ok.then_some(())
}

/// Held by a test while its cluster of processes runs, so that the tests of one binary run
/// their clusters one at a time: several clusters of four or five processes on two cores turn
/// timeouts into false failures, and ports picked by [`free_port`] (bind, read, release) can be
/// taken by another cluster's process before they are used.
pub fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed while holding the lock poisons it; the next one may still run.
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A free TCP port on loopback (bound and released; good enough for tests), never one this
/// process was given before: the kernel may hand a just-released port out again, and two
/// members of one test given the same port would leave one unable to listen.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Runs a command, failing with its output if it exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs a command and returns its stdout as text.
pub fn run_text(cmd: &mut Command) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&run(cmd)?.stdout).into_owned())
}

/// A `fabricd dev` process serving one volume on loopback.
pub struct DevNode {
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
    pub volume: String,
    pub size_spec: String,
    pub extra_args: Vec<String>,
    child: Option<Child>,
    log: mpsc::Receiver<String>,
    log_lines: Vec<String>,
}

/// A `fabricd dev --nodes 3` cluster serving `vol0` (64 MiB) from a new temporary directory's
/// `data`, holding the one-cluster-at-a-time lock while it runs.
pub fn three_node_cluster() -> (
    std::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    PathBuf,
    DevNode,
) {
    let serial = one_cluster_at_a_time();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let dev = DevNode::start_with(&data, "vol0:64MiB", &["--nodes", "3"]).expect("start dev");
    (serial, dir, data, dev)
}

impl DevNode {
    /// Starts `fabricd dev` on a fresh port, serving `volume` (`NAME:SIZE`) from `data_dir`.
    pub fn start(data_dir: &Path, volume: &str) -> anyhow::Result<DevNode> {
        Self::start_with(data_dir, volume, &[])
    }

    pub fn start_with(data_dir: &Path, volume: &str, extra: &[&str]) -> anyhow::Result<DevNode> {
        let (name, _) = volume.split_once(':').context("volume is NAME:SIZE")?;
        let (tx, rx) = mpsc::channel();
        drop(tx);
        let mut node = DevNode {
            data_dir: data_dir.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            volume: name.to_string(),
            size_spec: volume.to_string(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            log: rx,
            log_lines: Vec::new(),
        };
        node.spawn()?;
        Ok(node)
    }

    /// `nbd://ADDR/VOLUME`.
    pub fn uri(&self) -> String {
        format!("nbd://{}/{}", self.addr, self.volume)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The pid of the gateway process the cluster runs (a child started as `fabricd gateway`).
    pub fn gateway_pid(&self) -> u32 {
        let parent = self.pid();
        let child_of = |pid: u32| -> Option<u32> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`: the command may hold spaces, so split after it.
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().nth(1)?.parse().ok()
        };
        std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|&pid| {
                child_of(pid) == Some(parent)
                    && std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"gateway"))
            })
            .unwrap_or_else(|| panic!("no gateway child of {parent}"))
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(workspace_bin("fabricd"))
            .arg("dev")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--nbd-listen")
            .arg(self.addr.to_string())
            .arg("--volume")
            .arg(&self.size_spec)
            .args(&self.extra_args)
            .env("FABRIC_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, which the nodes and the gateway it starts join: a kill
            // reaches all of them at once (see `kill9`).
            .process_group(0)
            .spawn()
            .context("spawn fabricd")?;
        // Collect both streams; tests look for log lines (checksum errors, shutdown).
        let (tx, rx) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        self.log = rx;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        while Instant::now() < deadline {
            if TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "fabricd exited during start with {status}:\n{}",
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "fabricd did not start listening within {START_TIMEOUT_MS} ms:\n{}",
            self.report()
        )
    }

    /// What a failure leaves to read: the launcher's output and the tail of the log file of
    /// every child it started (`node-ID/fabricd.log`, `gateway/fabricd.log`).
    pub fn report(&mut self) -> String {
        let mut report = self.logs().join("\n");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.data_dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path().join("fabricd.log"))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(FAILURE_LOG_LINES)..];
            report.push_str(&format!(
                "\n--- {} (last {} lines)\n",
                file.display(),
                tail.len()
            ));
            report.push_str(&tail.join("\n"));
        }
        report
    }

    /// Everything the process printed so far.
    pub fn logs(&mut self) -> &[String] {
        while let Ok(line) = self.log.try_recv() {
            self.log_lines.push(line);
        }
        &self.log_lines
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of the launcher and every process it started: no chance to flush anything.
    /// (Killing only the launcher would leave its children to stop on their own, which takes
    /// a gateway whose nodes are gone tens of seconds of retries.) Returns once all are gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let group = c.id() as i32;
            // SAFETY: signalling the process group our own child leads.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = c.wait();
            let deadline = Instant::now() + Duration::from_secs(10);
            // SAFETY: signal 0 only asks whether any member of the group is left.
            while unsafe { libc::kill(-group, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> anyhow::Result<i32> {
        let Some(mut c) = self.child.take() else {
            bail!("not running");
        };
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = c.wait().context("wait for fabricd")?;
        Ok(status.code().unwrap_or(-1))
    }

    /// Starts the process again with the same data directory and address.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        assert!(self.child.is_none(), "stop or kill the node first");
        self.log_lines.clear();
        self.spawn()
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A command running libnbd's `nbdsh`. Its Python module is installed for the system Python, so
/// `/usr/bin` goes first on PATH in case another `python3` shadows it.
pub fn nbdsh() -> Command {
    let mut c = Command::new("nbdsh");
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("/usr/bin:{path}"));
    c
}

/// `fabricctl --json --data-dir DATA_DIR ARGS...`, parsed; panics (naming the command and its
/// error output) if it fails.
/// `fabricctl --json --data-dir DATA [--cert-dir CERTS] ARGS`, whatever its outcome (the
/// administrator's certificate when `certs` is `None`).
pub fn fabricctl_as(data_dir: &Path, certs: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(workspace_bin("fabricctl"));
    cmd.args(["--json", "--data-dir"]).arg(data_dir);
    if let Some(certs) = certs {
        cmd.arg("--cert-dir").arg(certs);
    }
    cmd.args(args).output().expect("run fabricctl")
}

/// Makes a guarded call as a dev cluster's administrator (`DATA/admin`); it must be refused
/// as waiting for a second person. Returns the id of the request it became.
pub fn approval_requested(data_dir: &Path, args: &[&str]) -> String {
    let out = fabricctl_as(data_dir, Some(&data_dir.join("admin")), args);
    assert!(!out.status.success(), "{args:?} ran without an approval");
    let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert!(why.contains("needs a second person"), "{why}");
    why.split("request ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no request id in {why}"))
        .to_owned()
}

pub fn fabricctl(data_dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = fabricctl_as(data_dir, None, args);
    assert!(
        out.status.success(),
        "fabricctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("fabricctl JSON")
}

/// The principal of the administrator of a dev cluster (and of every cluster these tests
/// make with [`cluster_ca`]).
pub const ADMIN_PRINCIPAL: &str = "fabric://dev/user/admin";

/// A CA for a cluster named `dev` in `dir/ca` (made once) and the administrator's certificate
/// in `dir/admin`, as `fabricd dev` makes them: for tests that start `fabricd node`s
/// themselves. Pass `--bootstrap-admin` [`ADMIN_PRINCIPAL`] to the bootstrapping node.
pub fn cluster_ca(dir: &Path) {
    if !dir.join("ca").join("ca.json").exists() {
        let out = Command::new(workspace_bin("fabricctl"))
            .args(["--json", "ca", "init", "--cluster", "dev", "--dir"])
            .arg(dir.join("ca"))
            .output()
            .expect("run fabricctl ca init");
        assert!(
            out.status.success(),
            "fabricctl ca init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !dir.join("admin").join("chain.pem").exists() {
        issue_cert(dir, "user", "admin", &dir.join("admin"), &[]);
    }
}

/// Signs a certificate of `kind` (node, gateway, user) for `name` with the CA in
/// `data_dir/ca`, naming the server addresses `sans`, into `out`.
pub fn issue_cert(data_dir: &Path, kind: &str, name: &str, out: &Path, sans: &[&str]) {
    let mut cmd = Command::new(workspace_bin("fabricctl"));
    cmd.args(["--json", "cert", "issue", kind, name, "--overwrite"])
        .arg("--ca-dir")
        .arg(data_dir.join("ca"))
        .arg("--out")
        .arg(out);
    for san in sans {
        cmd.args(["--san", san]);
    }
    let done = cmd.output().expect("run fabricctl cert issue");
    assert!(
        done.status.success(),
        "issue {kind} {name}'s certificate: {}",
        String::from_utf8_lossy(&done.stderr)
    );
}

/// A certificate for gateway `name`, signed by the dev cluster's CA in `data_dir` (made once),
/// and the right to use every volume (`volume-user` at the cluster): what an operator does
/// before a hypervisor host's gateway first starts. Returns the certificate directory.
pub fn gateway_identity(data_dir: &Path, name: &str) -> PathBuf {
    gateway_identity_as(data_dir, name, "volume-user")
}

/// [`gateway_identity`] with another role: `volume-admin` for a gateway started with
/// `--force`, which takes volumes from others.
pub fn gateway_identity_as(data_dir: &Path, name: &str, role: &str) -> PathBuf {
    let dir = data_dir.join("gateways").join(name);
    if !dir.join("chain.pem").exists() {
        issue_cert(data_dir, "gateway", name, &dir, &["127.0.0.1"]);
    }
    fabricctl(
        data_dir,
        &[
            "auth",
            "bind",
            &format!("fabric://dev/gateway/{name}"),
            role,
        ],
    );
    dir
}

/// Whether node `id` of the cluster in `data_dir` is up, as the cluster sees it.
pub fn node_up(data_dir: &Path, id: u64) -> bool {
    fabricctl(data_dir, &["node", "list"])
        .as_array()
        .expect("node list")
        .iter()
        .any(|n| n["id"] == id && n["health"] == "up")
}

/// The command line process `pid` was started with (to start it again the same way).
pub fn command_line(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_else(|e| panic!("command line of {pid}: {e}"));
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The pid of node `id` of the cluster in `data_dir`, from the `node.json` it writes into its
/// directory (storage-only nodes have no metadata address to ask).
pub fn node_pid(data_dir: &Path, id: u64) -> u32 {
    let path = data_dir.join(format!("node-{id}/node.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let node: serde_json::Value = serde_json::from_str(&text).expect("node.json");
    node["pid"].as_u64().expect("pid") as u32
}

pub use tools::prometheus::{parse_prometheus_text, sample, scrape};

/// fio's random 4 KiB writes with crc32c verification over 48 MiB of the volume; with
/// `--verify_only` the same job only reads back and checks what the first run wrote.
pub fn fio_verify(uri: &str, extra: &[&str]) -> Command {
    let mut fio = Command::new("fio");
    fio.args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--offset=8M",
        "--size=48M",
        "--iodepth=16",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--do_verify=1",
        "--output-format=json",
    ])
    .args(extra);
    fio
}

/// fio's JSON report of a run that must have succeeded with no IO error.
pub fn fio_report(out: std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&text[text.find('{').expect("fio JSON")..]).unwrap();
    assert_eq!(
        report["jobs"][0]["error"], 0,
        "fio saw an IO error: {report}"
    );
    report
}

/// `qemu-io -f raw -c CMD URI`, which must succeed: exit 0, and no error or failed pattern
/// check in its output (qemu-io reports some failures on stdout only).
pub fn qemu_io_ok(uri: &str, cmd: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd, uri])
        .stdin(Stdio::null())
        .output()
        .expect("run qemu-io");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("error") && !text.contains("Pattern verification"),
        "qemu-io {cmd:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `fabricd gateway` process of the cluster in a data directory, serving on a port of its
/// own; killed when dropped.
pub struct Gateway {
    child: Child,
    pub port: u16,
    pub client_name: String,
    pub log: PathBuf,
}

impl Gateway {
    /// Starts a gateway attaching as `client_name`, with `extra` flags (`--volume`,
    /// `--detach-grace-ms`, ...), its output in `log`; returns once it accepts connections.
    pub fn start(data_dir: &Path, client_name: &str, extra: &[&str], log: &Path) -> Gateway {
        Self::start_on(data_dir, client_name, extra, log, free_port())
    }

    /// The same on a given port (a restart takes the port of the gateway it replaces).
    pub fn start_on(
        data_dir: &Path,
        client_name: &str,
        extra: &[&str],
        log: &Path,
        port: u16,
    ) -> Gateway {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("gateway log");
        let cert_dir = gateway_identity(data_dir, client_name);
        let child = Command::new(workspace_bin("fabricd"))
            .args(["gateway", "--client-name", client_name])
            .arg("--cert-dir")
            .arg(&cert_dir)
            .args(["--endpoints", &endpoints(data_dir).join(",")])
            .args(["--nbd-listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(out.try_clone().expect("gateway log"))
            .stderr(out)
            .spawn()
            .expect("start a gateway");
        let mut gateway = Gateway {
            child,
            port,
            client_name: client_name.to_owned(),
            log: log.to_path_buf(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!(
                    "gateway {client_name} exited ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gateway {client_name} never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        gateway
    }

    /// `nbd://127.0.0.1:PORT/VOLUME`.
    pub fn uri(&self, volume: &str) -> String {
        format!("nbd://127.0.0.1:{}/{volume}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and the exit status once it has flushed and detached.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait for the gateway")
    }

    /// SIGKILL: no flush, no detach.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The metadata members' gRPC addresses of the cluster in `data_dir`.
pub fn endpoints(data_dir: &Path) -> Vec<String> {
    let cluster: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data_dir.join("cluster.json")).expect("cluster.json"),
    )
    .expect("cluster.json is JSON");
    cluster["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m[1].as_str().expect("member address").to_owned())
        .collect()
}
