//! Network partitions between real processes. Every storage node (`fabricd node`) and the
//! gateway run in a network namespace of their own, joined by veth pairs to a bridge that
//! lives in one more namespace (which also holds the observer address `fabricctl` runs from).
//! Links are cut by taking a bridge port down or with nft drop rules inside a namespace (one
//! way or both, per address and port).
//!
//! A client in the gateway's namespace writes 4 KiB blocks over NBD, each with a pattern of
//! its own, and records which writes were acknowledged. After the cluster healed and every
//! replica is current again, every replica's file must hold, for every block written, the
//! last acknowledged write or a write issued after it that was not acknowledged (never an
//! older one), and reads through the gateway must agree. Each scenario prints
//! `partition-stall scenario=N seconds=X`: the longest time between two acknowledged writes.
//!
//! Needs root and the `ip` and `nft` tools; without them the tests skip (and fail under
//! `FABRIC_REQUIRE_TOOLS=1`). Namespaces are removed when a test ends, also when it fails;
//! leftovers of a killed test run are removed by the next one. A failing test prints the end
//! of every process's log; with `FABRIC_PARTITION_LOGS=DIR` every test copies all of its logs
//! into DIR.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fabric_suite::{tool, tools_required, workspace_bin};
use serde_json::Value;

/// Prefix of every namespace these tests create; the test process's pid follows it.
const NETNS_PREFIX: &str = "fabp";
/// The lab's subnet; host `i` is `.i`, the gateway `.GATEWAY_HOST`, the observer `.254`.
const SUBNET: &str = "10.77.0";
const GATEWAY_HOST: u32 = 100;
const OBSERVER_IP: &str = "10.77.0.254";
/// Every node's gRPC port (each namespace has its own ports).
const RPC_PORT: u16 = 7000;
const NBD_PORT: u16 = 10809;
const VOLUME: &str = "vol0";
const VOLUME_BYTES: u64 = 256 << 20;
const BLOCK_BYTES: usize = 4096;
/// Blocks of the volume the client writes; a stride spreads consecutive writes over extents.
const BLOCKS: u64 = VOLUME_BYTES / BLOCK_BYTES as u64;
const BLOCK_STRIDE: u64 = 7919;
const PATTERN_MAGIC: &[u8; 8] = b"FABPART1";
/// Blocks read back through the gateway at the end (every replica's file is read in full).
const NBD_READBACK_BLOCKS_MAX: usize = 1_500;
/// A client request unanswered for this long is given up (the gateway fails a write within
/// its removal wait, 10 s, so this only catches a gateway that hangs).
const CLIENT_REQUEST_TIMEOUT_MS: u64 = 60_000;
/// Deadline of every wait for the cluster to converge.
const CONVERGE_TIMEOUT_MS: u64 = 60_000;
const POLL_MS: u64 = 200;

// ---------------------------------------------------------------------------------------------
// Network namespaces

/// Whether these tests can run here: root, `ip` and `nft`. Otherwise prints why they skip, or
/// fails under `FABRIC_REQUIRE_TOOLS=1`.
fn lab_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            !tools_required(),
            "partition tests need root (network namespaces) and FABRIC_REQUIRE_TOOLS=1"
        );
        eprintln!("SKIP: partition tests need root to create network namespaces");
        return false;
    }
    tool("ip").is_some() && tool("nft").is_some()
}

fn sh(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args));
}

/// Namespaces of one test: a bridge namespace and one namespace per host, each host with
/// `eth0` at `SUBNET.i`, its peer `p{i}` a port of the bridge. Removed on drop.
struct Lab {
    bridge: String,
    hosts: BTreeMap<u32, String>,
}

impl Lab {
    fn new(tag: &str, hosts: &[u32]) -> Lab {
        remove_leftovers();
        let base = format!("{NETNS_PREFIX}{}-{tag}", std::process::id());
        let mut lab = Lab {
            bridge: format!("{base}-br"),
            hosts: BTreeMap::new(),
        };
        ip(&["netns", "add", &lab.bridge]);
        let br = lab.bridge.clone();
        ip(&["-n", &br, "link", "set", "lo", "up"]);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &br,
            "addr",
            "add",
            &format!("{OBSERVER_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for &h in hosts {
            let ns = format!("{base}-h{h}");
            ip(&["netns", "add", &ns]);
            lab.hosts.insert(h, ns.clone());
            let port = format!("p{h}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &br,
            ]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{SUBNET}.{h}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"]);
        }
        lab
    }

    fn ns(&self, host: u32) -> &str {
        &self.hosts[&host]
    }

    /// `ip netns exec NS program`.
    fn exec(&self, ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Takes host's bridge port down (`up == false`) or up: cut off from everyone.
    fn set_link(&self, host: u32, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.bridge,
            "link",
            "set",
            &format!("p{host}"),
            state,
        ]);
    }

    /// Adds nft drop rules in host's namespace: each is `(chain, match)`, chain `input` or
    /// `output`, e.g. `("output", "ip daddr 10.77.0.1 tcp dport 7000")`.
    fn drop_rules(&self, host: u32, rules: &[(&str, String)]) {
        let mut script = String::from(
            "table inet cut {\n\
             chain input { type filter hook input priority 0; policy accept; }\n\
             chain output { type filter hook output priority 0; policy accept; }\n}\n",
        );
        for (chain, m) in rules {
            script.push_str(&format!("add rule inet cut {chain} {m} drop\n"));
        }
        let path = std::env::temp_dir().join(format!("{}-nft-{host}", self.bridge));
        std::fs::write(&path, script).unwrap();
        sh(Command::new("ip")
            .args(["netns", "exec", self.ns(host), "nft", "-f"])
            .arg(&path));
        let _ = std::fs::remove_file(path);
    }

    /// Removes every nft rule of host's namespace.
    fn clear_rules(&self, host: u32) {
        sh(Command::new("ip").args(["netns", "exec", self.ns(host), "nft", "flush", "ruleset"]));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.hosts.values().chain(std::iter::once(&self.bridge)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Deletes namespaces left by test processes that no longer run (killed before their drop).
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Moves the calling thread into network namespace `ns` (for sockets it opens from then on).
fn enter_netns(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the namespace");
    // SAFETY: setns on a file descriptor we own; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

// ---------------------------------------------------------------------------------------------
// The cluster

fn host_ip(h: u32) -> String {
    format!("{SUBNET}.{h}")
}

fn rpc_addr(h: u32) -> String {
    format!("{}:{RPC_PORT}", host_ip(h))
}

/// N storage nodes (all metadata members, node 1 bootstraps) and a gateway serving `vol0`,
/// each in its own namespace. Processes are killed and namespaces removed on drop.
struct Cluster {
    nodes: BTreeMap<u32, Child>,
    /// Id of `vol0`, which names its files in the stores.
    volume_id: u64,
    gateway: Option<Child>,
    dir: tempfile::TempDir,
    lab: Lab,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    fn start(tag: &str, n: u32, gateway_args: &[&str]) -> Cluster {
        let serial = fabric_suite::one_cluster_at_a_time();
        let hosts: Vec<u32> = (1..=n).chain([GATEWAY_HOST]).collect();
        let lab = Lab::new(tag, &hosts);
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            volume_id: 0,
            gateway: None,
            dir: tempfile::tempdir().unwrap(),
            lab,
            _serial: serial,
        };
        let peers: Vec<String> = (1..=n).map(|i| format!("{i}={}", rpc_addr(i))).collect();
        fabric_suite::cluster_ca(c.dir.path());
        for i in 1..=n {
            let dir = c.node_dir(i);
            std::fs::create_dir_all(&dir).unwrap();
            // The node serves on its host's address and dials its own member on loopback.
            let ip = host_ip(i).to_string();
            fabric_suite::issue_cert(
                c.dir.path(),
                "node",
                &i.to_string(),
                &dir.join("tls"),
                &[&ip, "127.0.0.1"],
            );
            let log = std::fs::File::create(dir.join("fabricd.log")).unwrap();
            let mut cmd = c.lab.exec(c.lab.ns(i), &workspace_bin("fabricd"));
            // Wildcard binds with advertised addresses; the data path binds port 0, so the
            // address the node registers must carry the port it got.
            cmd.args(["node", "--id", &i.to_string()])
                .arg("--data-dir")
                .arg(&dir)
                .args(["--listen", &format!("0.0.0.0:{RPC_PORT}")])
                .args(["--advertise-rpc", &rpc_addr(i)])
                .args(["--data-addr", "0.0.0.0:0"])
                .args(["--advertise-data", &format!("{}:0", host_ip(i))])
                .args(["--location", &format!("rack=r{i},host=h{i}")])
                .args(["--disk-capacity", "64GiB"])
                .env("FABRIC_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            if i == 1 {
                cmd.args(["--bootstrap", "--peers", &peers.join(",")])
                    .args(["--bootstrap-admin", fabric_suite::ADMIN_PRINCIPAL])
                    .args(["--two-person", "off"]);
            }
            c.nodes.insert(i, cmd.spawn().expect("start fabricd node"));
        }
        let all: Vec<u32> = (1..=n).collect();
        c.wait_until("every node registered", |c| {
            let nodes = c.ctl(&all, &["node", "list"]).ok()?;
            (nodes.as_array()?.len() == n as usize).then_some(())
        });
        // The registered data addresses are the advertised IPs with the ports actually bound.
        for node in c.ctl(&all, &["node", "list"]).unwrap().as_array().unwrap() {
            let id = node["id"].as_u64().unwrap() as u32;
            let data = node["data_addr"].as_str().unwrap();
            assert!(
                data.starts_with(&format!("{}:", host_ip(id))) && !data.ends_with(":0"),
                "node {id} registered data address {data}"
            );
            assert_eq!(node["rpc_addr"], rpc_addr(id), "{node}");
        }
        c.ctl(
            &all,
            &[
                "pool",
                "create",
                "default",
                "--replicas",
                "3",
                "--min-replicas",
                "2",
                "--failure-domain",
                "rack",
            ],
        )
        .expect("create the pool");
        let created = c
            .ctl(&all, &["volume", "create", VOLUME, "--size", "256MiB"])
            .expect("create the volume");
        assert_eq!(created["size_bytes"], VOLUME_BYTES, "{created}");
        c.volume_id = created["id"].as_u64().expect("volume id");
        c.start_gateway(n, gateway_args);
        c
    }

    fn start_gateway(&mut self, n: u32, extra: &[&str]) {
        let dir = self.dir.path().join("gateway");
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("fabricd.log")).unwrap();
        let endpoints: Vec<String> = (1..=n).map(rpc_addr).collect();
        let cert_dir = dir.join("tls");
        fabric_suite::issue_cert(self.dir.path(), "gateway", "gw", &cert_dir, &[]);
        let all: Vec<u32> = (1..=n).collect();
        self.ctl(
            &all,
            &["auth", "bind", "fabric://dev/gateway/gw", "volume-user"],
        )
        .expect("let the gateway use volumes");
        let gateway = self
            .lab
            .exec(self.lab.ns(GATEWAY_HOST), &workspace_bin("fabricd"))
            .args(["gateway", "--volume", VOLUME, "--client-name", "gw"])
            .args(["--endpoints", &endpoints.join(",")])
            .arg("--cert-dir")
            .arg(&cert_dir)
            .args(["--nbd-listen", &format!("0.0.0.0:{NBD_PORT}")])
            // The clients of this test speak plaintext NBD across the namespaces' bridge.
            .args(["--nbd-tls", "plaintext"])
            .args(extra)
            .env("FABRIC_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the gateway");
        self.gateway = Some(gateway);
        self.wait_until("the gateway to serve", |c| {
            c.log("gateway")
                .contains("gateway serving replicated volume")
                .then_some(())
        });
    }

    fn node_dir(&self, i: u32) -> PathBuf {
        self.dir.path().join(format!("node-{i}"))
    }

    fn log(&self, who: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(who).join("fabricd.log")).unwrap_or_default()
    }

    fn pid(&self, node: u32) -> i32 {
        self.nodes[&node].id() as i32
    }

    fn signal(&self, node: u32, sig: i32) {
        // SAFETY: signalling our own child by pid.
        let rc = unsafe { libc::kill(self.pid(node), sig) };
        assert_eq!(rc, 0, "signal node {node}");
    }

    /// `fabricctl --json --endpoints (nodes) ARGS` from the observer address.
    fn ctl(&self, nodes: &[u32], args: &[&str]) -> Result<Value, String> {
        let endpoints: Vec<String> = nodes.iter().map(|&i| rpc_addr(i)).collect();
        let out = self
            .lab
            .exec(&self.lab.bridge, Path::new("timeout"))
            .arg("40")
            .arg(workspace_bin("fabricctl"))
            .args(["--json", "--endpoints", &endpoints.join(",")])
            .arg("--cert-dir")
            .arg(self.dir.path().join("admin"))
            .args(args)
            .output()
            .expect("run fabricctl");
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).expect("fabricctl prints JSON"))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn wait_until<T>(&self, what: &str, mut probe: impl FnMut(&Cluster) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_millis(CONVERGE_TIMEOUT_MS);
        loop {
            if let Some(v) = probe(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {CONVERGE_TIMEOUT_MS} ms waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
    }

    /// The volume's replica state (`fabricctl volume show`), asked of `nodes`.
    fn replica_state(&self, nodes: &[u32]) -> Option<Value> {
        let shown = self.ctl(nodes, &["volume", "show", VOLUME]).ok()?;
        Some(shown["replica_state"].clone())
    }

    fn wait_fully_redundant(&self, nodes: &[u32]) {
        self.wait_until("every replica current again", |c| {
            let state = c.replica_state(nodes)?;
            (state["pgs_degraded"] == 0).then_some(())
        });
    }

    /// `(leader id, term)` as the members in `nodes` see it, once one of them leads.
    fn leader_among(&self, nodes: &[u32]) -> (u32, u64) {
        self.wait_until("a leader", |c| {
            let status = c.ctl(nodes, &["status"]).ok()?;
            let leader = status["leader_id"].as_u64()? as u32;
            let entry = status["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["id"] == leader && n["role"] == "leader")?
                .clone();
            (nodes.contains(&leader)).then(|| (leader, entry["term"].as_u64().unwrap_or(0)))
        })
    }

    /// Member `id`'s own status, asked of it alone.
    fn member_status(&self, id: u32) -> Option<Value> {
        let status = self.ctl(&[id], &["status"]).ok()?;
        status["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == id && n["reachable"] == true)
            .cloned()
    }

    /// The data file of `vol0` on node `i`.
    fn replica_file(&self, i: u32) -> PathBuf {
        let name = volume::replica::store_volume_name(volume::wire::VolumeId(self.volume_id));
        self.node_dir(i)
            .join("store/volumes")
            .join(name)
            .join("data")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.gateway.iter_mut().chain(self.nodes.values_mut()) {
            // SIGKILL ends a stopped process too.
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(keep) = std::env::var_os("FABRIC_PARTITION_LOGS") {
            let to = Path::new(&keep).join(&self.lab.bridge);
            let _ = std::fs::create_dir_all(&to);
            for w in std::iter::once("gateway".to_string())
                .chain(self.nodes.keys().map(|i| format!("node-{i}")))
            {
                let _ = std::fs::write(to.join(format!("{w}.log")), self.log(&w));
            }
        }
        if std::thread::panicking() {
            let mut who: Vec<String> = vec!["gateway".into()];
            who.extend(self.nodes.keys().map(|i| format!("node-{i}")));
            for w in who {
                // Warnings and errors say what went wrong; the last lines where it stopped.
                let log = self.log(&w);
                let lines: Vec<&str> = log.lines().collect();
                let warnings: Vec<&str> = lines
                    .iter()
                    .copied()
                    .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                    .collect();
                let warnings = &warnings[warnings.len().saturating_sub(40)..];
                let tail = &lines[lines.len().saturating_sub(15)..];
                eprintln!(
                    "--- {w}: last {} warnings\n{}\n--- {w}: last {} lines\n{}",
                    warnings.len(),
                    warnings.join("\n"),
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The acknowledged-write checker: a minimal NBD client (fixed newstyle, simple replies).

const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const NBD_CMD_READ: u16 = 0;
const NBD_CMD_WRITE: u16 = 1;
const NBD_CMD_FLUSH: u16 = 3;

struct Nbd {
    sock: TcpStream,
    handle: u64,
}

impl Nbd {
    fn connect() -> std::io::Result<Nbd> {
        let sock = TcpStream::connect(("127.0.0.1", NBD_PORT))?;
        sock.set_read_timeout(Some(Duration::from_millis(CLIENT_REQUEST_TIMEOUT_MS)))?;
        sock.set_nodelay(true)?;
        let mut nbd = Nbd { sock, handle: 0 };
        let mut greeting = [0u8; 18];
        nbd.sock.read_exact(&mut greeting)?;
        if &greeting[..16] != b"NBDMAGICIHAVEOPT" {
            return Err(std::io::Error::other("not an NBD server"));
        }
        // Fixed newstyle, no zeroes; then NBD_OPT_EXPORT_NAME.
        let mut hello = Vec::new();
        hello.extend_from_slice(&3u32.to_be_bytes());
        hello.extend_from_slice(b"IHAVEOPT");
        hello.extend_from_slice(&1u32.to_be_bytes());
        hello.extend_from_slice(&(VOLUME.len() as u32).to_be_bytes());
        hello.extend_from_slice(VOLUME.as_bytes());
        nbd.sock.write_all(&hello)?;
        let mut export = [0u8; 10];
        nbd.sock.read_exact(&mut export)?;
        let size = u64::from_be_bytes(export[..8].try_into().unwrap());
        assert_eq!(size, VOLUME_BYTES, "export size");
        Ok(nbd)
    }

    /// Sends one request and waits for its reply; `Ok(Err(errno))` is an error reply.
    fn request(
        &mut self,
        cmd: u16,
        offset: u64,
        len: u32,
        data: &[u8],
        read_into: &mut [u8],
    ) -> std::io::Result<Result<(), u32>> {
        self.handle += 1;
        let mut req = Vec::with_capacity(28 + data.len());
        req.extend_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&cmd.to_be_bytes());
        req.extend_from_slice(&self.handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(data);
        self.sock.write_all(&req)?;
        let mut reply = [0u8; 16];
        self.sock.read_exact(&mut reply)?;
        let magic = u32::from_be_bytes(reply[..4].try_into().unwrap());
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        let handle = u64::from_be_bytes(reply[8..].try_into().unwrap());
        if magic != NBD_SIMPLE_REPLY_MAGIC || handle != self.handle {
            return Err(std::io::Error::other("unexpected NBD reply"));
        }
        if error != 0 {
            return Ok(Err(error));
        }
        if cmd == NBD_CMD_READ {
            self.sock.read_exact(read_into)?;
        }
        Ok(Ok(()))
    }
}

/// The contents of write `seq` to `block`: a header naming both, then bytes derived from seq.
fn pattern(seq: u64, block: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(BLOCK_BYTES);
    buf.extend_from_slice(PATTERN_MAGIC);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&block.to_le_bytes());
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while buf.len() < BLOCK_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(BLOCK_BYTES);
    buf
}

/// What a block holds: nothing ever written, one intact write, or anything else.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Zeros,
    Write(u64),
    Garbage,
}

fn decode(block: u64, bytes: &[u8]) -> Found {
    if bytes.iter().all(|&b| b == 0) {
        return Found::Zeros;
    }
    let seq = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    if bytes[..8] == PATTERN_MAGIC[..] && pattern(seq, block) == bytes {
        Found::Write(seq)
    } else {
        Found::Garbage
    }
}

/// One write the client issued.
#[derive(Clone, Debug)]
struct Issued {
    block: u64,
    seq: u64,
    /// When the acknowledgement came, if it did.
    acked_at: Option<Instant>,
}

/// The client writing in the gateway's namespace until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<Issued>>>,
}

impl Writer {
    fn start(ns: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (s, a, ns) = (Arc::clone(&stop), Arc::clone(&acked), ns.to_string());
        let thread = std::thread::spawn(move || {
            enter_netns(&ns);
            write_loop(&s, &a)
        });
        Writer {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `more` writes beyond the count now were acknowledged (or fails).
    fn wait_acks(&self, more: u64, what: &str) {
        let target = self.acked() + more;
        let deadline = Instant::now() + Duration::from_millis(CONVERGE_TIMEOUT_MS);
        while self.acked() < target {
            assert!(Instant::now() < deadline, "no acknowledged writes: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> Vec<Issued> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("writer thread")
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn write_loop(stop: &AtomicBool, acked: &AtomicU64) -> Vec<Issued> {
    let mut issued: Vec<Issued> = Vec::new();
    let mut conn: Option<Nbd> = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let nbd = match conn.as_mut() {
            Some(n) => n,
            None => match Nbd::connect() {
                Ok(n) => conn.insert(n),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        seq += 1;
        let block = (seq * BLOCK_STRIDE) % BLOCKS;
        let data = pattern(seq, block);
        let mut write = Issued {
            block,
            seq,
            acked_at: None,
        };
        match nbd.request(
            NBD_CMD_WRITE,
            block * BLOCK_BYTES as u64,
            BLOCK_BYTES as u32,
            &data,
            &mut [],
        ) {
            Ok(Ok(())) => {
                write.acked_at = Some(Instant::now());
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(_errno)) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => conn = None,
        }
        issued.push(write);
    }
    issued
}

/// Longest time between two acknowledged writes.
fn longest_stall(issued: &[Issued]) -> Duration {
    let acks: Vec<Instant> = issued.iter().filter_map(|w| w.acked_at).collect();
    acks.windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// Per block: the writes a reader may find, given what was acknowledged.
struct Expected {
    /// block → (last acknowledged seq, seqs of unacknowledged writes issued after it).
    blocks: BTreeMap<u64, (Option<u64>, Vec<u64>)>,
}

impl Expected {
    fn new(issued: &[Issued]) -> Expected {
        let mut blocks: BTreeMap<u64, (Option<u64>, Vec<u64>)> = BTreeMap::new();
        for w in issued {
            let e = blocks.entry(w.block).or_default();
            if w.acked_at.is_some() {
                *e = (Some(w.seq), Vec::new());
            } else {
                e.1.push(w.seq);
            }
        }
        Expected { blocks }
    }

    fn allows(&self, block: u64, found: &Found) -> bool {
        let (acked, later) = &self.blocks[&block];
        match found {
            Found::Zeros => acked.is_none(),
            Found::Write(seq) => acked == &Some(*seq) || later.contains(seq),
            Found::Garbage => false,
        }
    }
}

/// Checks every replica file and a sample of reads through the gateway against the writes
/// the client issued; returns how many blocks were checked.
fn verify(cluster: &Cluster, nodes: &[u32], issued: &[Issued]) -> usize {
    let expected = Expected::new(issued);
    let files: Vec<(u32, std::fs::File)> = nodes
        .iter()
        .map(|&i| (i, std::fs::File::open(cluster.replica_file(i)).unwrap()))
        .collect();
    let mut lost = Vec::new();
    let mut divergent = 0usize;
    for &block in expected.blocks.keys() {
        let mut holders = 0;
        let mut seen = Vec::new();
        for (i, f) in &files {
            let mut buf = vec![0u8; BLOCK_BYTES];
            // A short read is past the end of the thin file: zeros.
            let n = f.read_at(&mut buf, block * BLOCK_BYTES as u64).unwrap();
            buf[n..].fill(0);
            let found = decode(block, &buf);
            match &found {
                Found::Zeros => {}
                f if expected.allows(block, f) => holders += 1,
                other => lost.push(format!("node {i} block {block}: {other:?}")),
            }
            seen.push(found);
        }
        if expected.blocks[&block].0.is_some() && holders < 3 {
            lost.push(format!(
                "block {block}: acknowledged write {:?} on {holders} replicas: {seen:?}",
                expected.blocks[&block].0
            ));
        }
        seen.retain(|f| *f != Found::Zeros);
        seen.dedup();
        if seen.len() > 1 {
            divergent += 1;
        }
    }
    assert!(
        lost.is_empty(),
        "{} blocks break the acknowledged writes: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    if divergent > 0 {
        eprintln!("{divergent} blocks hold different unacknowledged writes on different replicas");
    }

    // Reads through the gateway: every block with an unacknowledged write, then a spread.
    let mut sample: Vec<u64> = expected
        .blocks
        .iter()
        .filter(|(_, (_, later))| !later.is_empty())
        .map(|(b, _)| *b)
        .collect();
    let step = (expected.blocks.len() / NBD_READBACK_BLOCKS_MAX).max(1);
    sample.extend(expected.blocks.keys().step_by(step).copied());
    sample.sort_unstable();
    sample.dedup();
    let ns = cluster.lab.ns(GATEWAY_HOST).to_string();
    let bad = std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(&ns);
            let mut nbd = Nbd::connect().expect("connect to the gateway");
            let mut bad = Vec::new();
            for &block in &sample {
                let mut buf = vec![0u8; BLOCK_BYTES];
                nbd.request(
                    NBD_CMD_READ,
                    block * BLOCK_BYTES as u64,
                    BLOCK_BYTES as u32,
                    &[],
                    &mut buf,
                )
                .expect("read through the gateway")
                .expect("read succeeds");
                let found = decode(block, &buf);
                if !expected.allows(block, &found) {
                    bad.push((block, found));
                }
            }
            nbd.request(NBD_CMD_FLUSH, 0, 0, &[], &mut [])
                .expect("flush")
                .expect("flush succeeds");
            bad
        })
        .join()
        .expect("reader thread")
    });
    assert!(bad.is_empty(), "reads through the gateway: {bad:?}");
    eprintln!(
        "verified {} blocks on {} replica files, {} of them read through the gateway",
        expected.blocks.len(),
        files.len(),
        sample.len()
    );
    expected.blocks.len()
}

fn report(scenario: u32, issued: &[Issued]) -> Duration {
    let stall = longest_stall(issued);
    let acked = issued.iter().filter(|w| w.acked_at.is_some()).count();
    eprintln!(
        "scenario {scenario}: {} writes issued, {acked} acknowledged",
        issued.len()
    );
    println!(
        "partition-stall scenario={scenario} seconds={:.2}",
        stall.as_secs_f64()
    );
    stall
}

/// Acknowledged writes between `from` and `to`.
fn acked_between(issued: &[Issued], from: Instant, to: Instant) -> usize {
    issued
        .iter()
        .filter(|w| w.acked_at.is_some_and(|t| t > from && t < to))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// Scenario 1: a storage node (not the leader) loses its link; writes go on with the other
/// two, and when the link is back the gateway resyncs it until it is current again.
#[test]
fn a_node_cut_off_from_everyone_is_left_behind_and_resynced_on_heal() {
    if !lab_available() {
        return;
    }
    let cluster = Cluster::start("s1", 3, &[]);
    let (leader, _) = cluster.leader_among(&[1, 2, 3]);
    let cut = (1..=3).find(|&i| i != leader).unwrap();
    let others: Vec<u32> = (1..=3).filter(|&i| i != cut).collect();
    let writer = Writer::start(cluster.lab.ns(GATEWAY_HOST));
    writer.wait_acks(200, "before the cut");

    cluster.lab.set_link(cut, false);
    let cut_at = Instant::now();
    writer.wait_acks(500, "with a node cut off");
    let state = cluster.replica_state(&others).expect("volume state");
    assert!(
        state["pgs_degraded"].as_u64().unwrap() >= 1,
        "node {cut} is stale: {state}"
    );
    std::thread::sleep(Duration::from_secs(2));

    cluster.lab.set_link(cut, true);
    let healed_at = Instant::now();
    cluster.wait_fully_redundant(&[1, 2, 3]);
    eprintln!(
        "node {cut} current again {:?} after the heal",
        healed_at.elapsed()
    );
    writer.wait_acks(100, "after the heal");
    let issued = writer.finish();
    assert!(acked_between(&issued, cut_at, healed_at) >= 500);
    let stall = report(1, &issued);
    assert!(stall < Duration::from_secs(15), "stall {stall:?}");
    verify(&cluster, &[1, 2, 3], &issued);
}

/// Scenario 2: the gateway stops reaching the metadata leader's gRPC port and, at the same
/// moment, one follower's replica server (both one way: the gateway's packets are dropped).
/// The replica must leave the acting sets through the other follower, which forwards to the
/// leader, before a write is acknowledged without it; while the leader is still cut off, the
/// replica, reachable again, is resynced and restored the same way; then everything heals.
#[test]
fn a_gateway_cut_off_from_the_leader_acknowledges_only_writes_every_live_replica_has() {
    if !lab_available() {
        return;
    }
    let cluster = Cluster::start("s2", 3, &[]);
    let all = [1, 2, 3];
    let (leader, _) = cluster.leader_among(&all);
    let follower = all.iter().copied().find(|&i| i != leader).unwrap();
    let nodes = cluster.ctl(&all, &["node", "list"]).expect("node list");
    let data_addr = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == follower)
        .and_then(|n| n["data_addr"].as_str())
        .unwrap()
        .to_string();
    let data_port = data_addr.rsplit(':').next().unwrap();
    let to_leader = format!("ip daddr {} tcp dport {RPC_PORT}", host_ip(leader));
    let to_replica = format!("ip daddr {} tcp dport {data_port}", host_ip(follower));
    let writer = Writer::start(cluster.lab.ns(GATEWAY_HOST));
    writer.wait_acks(200, "before the cut");

    cluster.lab.drop_rules(
        GATEWAY_HOST,
        &[("output", to_leader.clone()), ("output", to_replica)],
    );
    let cut_at = Instant::now();
    writer.wait_acks(300, "with a replica and the leader unreachable");
    let state = cluster.replica_state(&all).expect("volume state");
    assert!(
        state["pgs_degraded"].as_u64().unwrap() >= 1,
        "node {follower} left the acting sets: {state}"
    );

    // The replica is reachable again, the leader still is not.
    cluster.lab.clear_rules(GATEWAY_HOST);
    cluster
        .lab
        .drop_rules(GATEWAY_HOST, &[("output", to_leader)]);
    cluster.wait_fully_redundant(&all);
    eprintln!(
        "node {follower} current again with leader {leader} still cut off, {:?} after the cut",
        cut_at.elapsed()
    );

    cluster.lab.clear_rules(GATEWAY_HOST);
    let healed_at = Instant::now();
    writer.wait_acks(100, "after the heal");
    let issued = writer.finish();
    assert!(acked_between(&issued, cut_at, healed_at) >= 300);
    let failed = issued.iter().filter(|w| w.acked_at.is_none()).count();
    let stall = report(2, &issued);
    // The replica's request timeout (5 s) and one metadata attempt on the leader (3 s) before
    // the next member commits the removal: within the write's removal wait (10 s).
    assert!(
        stall < Duration::from_secs(12),
        "stall {stall:?} ({failed} writes failed)"
    );
    verify(&cluster, &all, &issued);
}

/// Scenario 3: the Raft leader loses its links to the other members (the gateway and the
/// observer still reach it). The others elect a new leader and commit; the old leader commits
/// nothing, a create sent to it is not acknowledged and does not appear later; on heal it
/// rejoins as a follower and catches up. Client writes go on throughout.
#[test]
fn an_isolated_leader_commits_nothing_and_rejoins_on_heal() {
    if !lab_available() {
        return;
    }
    let cluster = Cluster::start("s3", 3, &[]);
    let all = [1, 2, 3];
    let (old, old_term) = cluster.leader_among(&all);
    let others: Vec<u32> = all.iter().copied().filter(|&i| i != old).collect();
    let writer = Writer::start(cluster.lab.ns(GATEWAY_HOST));
    writer.wait_acks(200, "before the cut");

    let mut rules = Vec::new();
    for &o in &others {
        rules.push(("output", format!("ip daddr {}", host_ip(o))));
        rules.push(("input", format!("ip saddr {}", host_ip(o))));
    }
    cluster.lab.drop_rules(old, &rules);
    let cut_at = Instant::now();
    let (new, new_term) = cluster.leader_among(&others);
    eprintln!(
        "node {new} leads term {new_term} {:?} after node {old} (term {old_term}) was isolated",
        cut_at.elapsed()
    );
    assert!(new_term > old_term);
    let applied_old = cluster.member_status(old).expect("old leader answers")["last_applied_index"]
        .as_u64()
        .unwrap();

    // A create sent to the old leader alone is not acknowledged.
    let ghost = cluster
        .lab
        .exec(&cluster.lab.bridge, Path::new("timeout"))
        .arg("5")
        .arg(workspace_bin("fabricctl"))
        .args(["--endpoints", &rpc_addr(old)])
        .args(["volume", "create", "ghost", "--size", "1MiB"])
        .output()
        .expect("run fabricctl");
    assert!(
        !ghost.status.success(),
        "the isolated leader acknowledged a create: {}",
        String::from_utf8_lossy(&ghost.stdout)
    );
    // The majority commits.
    cluster
        .ctl(
            &others,
            &["volume", "create", "during-cut", "--size", "1MiB"],
        )
        .expect("create through the new leader");
    writer.wait_acks(300, "with the leader isolated");
    let status = cluster.member_status(old).expect("old leader answers");
    assert_eq!(
        status["last_applied_index"].as_u64().unwrap(),
        applied_old,
        "the isolated member applied nothing: {status}"
    );

    cluster.lab.clear_rules(old);
    let healed_at = Instant::now();
    let target = cluster.member_status(new).expect("new leader")["last_applied_index"]
        .as_u64()
        .unwrap();
    cluster.wait_until("the old leader to rejoin as a follower", |c| {
        let s = c.member_status(old)?;
        (s["role"] == "follower" && s["last_applied_index"].as_u64()? >= target).then_some(())
    });
    eprintln!(
        "node {old} rejoined {:?} after the heal",
        healed_at.elapsed()
    );
    let names: Vec<String> = cluster
        .ctl(&all, &["volume", "list"])
        .expect("volume list")
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    assert!(names.contains(&"during-cut".to_string()), "{names:?}");
    assert!(!names.contains(&"ghost".to_string()), "{names:?}");
    writer.wait_acks(100, "after the heal");
    let issued = writer.finish();
    assert!(acked_between(&issued, cut_at, healed_at) >= 300);
    report(3, &issued);
    cluster.wait_fully_redundant(&all);
    verify(&cluster, &all, &issued);
}

/// Metadata calls of the gateway in scenario 4 give up after this long, so a short freeze
/// already outlasts them.
const SHORT_RETRY_DEADLINE_MS: u64 = 4_000;
/// How long the majority stays frozen: past the retry deadline, the replica request timeout
/// (5 s) and the write's removal wait (10 s) together.
const FREEZE_MS: u64 = 16_000;

/// Scenario 4: five nodes; three of them (the leader among them) are frozen with SIGSTOP, so
/// the metadata group has no quorum for longer than the gateway's metadata retry deadline,
/// while the client writes. After SIGCONT the same gateway takes writes again within 60 s,
/// and no acknowledged write, from before or after, is lost.
#[test]
fn after_a_metadata_outage_longer_than_the_retry_deadline_the_same_gateway_writes_again() {
    if !lab_available() {
        return;
    }
    let deadline = SHORT_RETRY_DEADLINE_MS.to_string();
    let cluster = Cluster::start(
        "s4",
        5,
        &["--metadata-retry-deadline-ms", deadline.as_str()],
    );
    let all = [1, 2, 3, 4, 5];
    let (leader, _) = cluster.leader_among(&all);
    let mut frozen = vec![leader];
    frozen.extend(all.iter().copied().filter(|&i| i != leader).take(2));
    let writer = Writer::start(cluster.lab.ns(GATEWAY_HOST));
    writer.wait_acks(200, "before the outage");

    for &i in &frozen {
        cluster.signal(i, libc::SIGSTOP);
    }
    let frozen_at = Instant::now();
    std::thread::sleep(Duration::from_millis(FREEZE_MS));
    for &i in &frozen {
        cluster.signal(i, libc::SIGCONT);
    }
    let thawed_at = Instant::now();
    let acks = writer.acked();
    while writer.acked() < acks + 10 {
        assert!(
            thawed_at.elapsed() < Duration::from_secs(60),
            "the gateway took no writes within 60 s of the thaw"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "writes acknowledged again {:?} after the thaw (frozen {:?})",
        thawed_at.elapsed(),
        thawed_at - frozen_at
    );
    writer.wait_acks(200, "after the thaw");
    cluster.wait_fully_redundant(&all);
    let issued = writer.finish();
    let stall = report(4, &issued);
    assert!(
        stall < Duration::from_millis(FREEZE_MS) + Duration::from_secs(60),
        "stall {stall:?}"
    );
    verify(&cluster, &all, &issued);
}
