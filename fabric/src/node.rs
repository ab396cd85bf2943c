//! `fabricd node`: one metadata member as its own process, configured from a TOML file and/or
//! flags (flags win). Raw input ([`NodeArgs`], [`NodeToml`]) is validated once into a
//! [`MemberConfig`]; the process then serves until SIGINT/SIGTERM.
//!
//! The member's directory holds `LOCK` (flock'd while running), `meta/` (the Raft log file,
//! sled and the snapshot) and `node.json` (id, gRPC address, pid) for discovery by `fabricctl`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;

use crate::config::{Endpoint, local_dial};
use crate::meta::client::{NODE_FILE, NodeFile};
use crate::meta::model::{DiskInfo, Location};
use crate::meta::pgmap::{DISK_BYTES_MAX, DISK_BYTES_MIN};
use crate::meta::server::{
    Formation, MemberConfig, NODE_HEARTBEAT_INTERVAL_MS, NODE_OUT_AFTER_MS_DEFAULT, RaftTuning,
};

/// Flags of `fabricd node`.
#[derive(Args, Debug, Clone, Default)]
pub struct NodeArgs {
    /// TOML file with any of the settings below (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Node id (non-zero, unique in the cluster).
    #[arg(long)]
    pub id: Option<u64>,
    /// The node's own directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (Raft transport and metadata API), IP:PORT.
    #[arg(long)]
    pub listen: Option<String>,
    /// The gRPC address other members, gateways and tools dial, IP:PORT (default: the
    /// --listen address; required when that is a wildcard; port 0 means the bound port).
    #[arg(long)]
    pub advertise_rpc: Option<String>,
    /// Listen address of the node's data path (the replica server), IP:PORT.
    #[arg(long)]
    pub data_addr: Option<String>,
    /// The data path address drivers dial, IP:PORT (default: the --data-addr address;
    /// required when that is a wildcard; port 0 means the bound port).
    #[arg(long)]
    pub advertise_data: Option<String>,
    /// Location in the fault-domain hierarchy, widest first: `row=r1,rack=r2,host=h3`.
    #[arg(long)]
    pub location: Option<String>,
    /// On a fresh store, initialize a new group whose voters are --peers (and this node).
    #[arg(long)]
    pub bootstrap: bool,
    /// Voters of a new group: `1=127.0.0.1:7001,2=127.0.0.1:7002`.
    #[arg(long)]
    pub peers: Option<String>,
    /// On a fresh store, join the group reachable at this address.
    #[arg(long)]
    pub join: Option<String>,
    /// Raft heartbeat interval.
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    /// Lower bound of the randomized election timeout.
    #[arg(long)]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper bound of the randomized election timeout.
    #[arg(long)]
    pub election_timeout_max_ms: Option<u64>,
    /// Build a snapshot after at least this many entries, more once the state has more records
    /// than that (and keep as many entries behind it).
    #[arg(long)]
    pub snapshot_logs: Option<u64>,
    /// Capacity of the node's disk as registered for placement (`500GiB`); default: the size
    /// of the filesystem holding --data-dir.
    #[arg(long)]
    pub disk_capacity: Option<String>,
    /// While this member leads: heartbeat silence after which a node is marked out of
    /// placement and its PGs rebuilt elsewhere (default ten minutes).
    #[arg(long)]
    pub node_out_after_ms: Option<u64>,
}

/// The TOML form of the same settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeToml {
    pub id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub advertise_rpc: Option<String>,
    pub data_addr: Option<String>,
    pub advertise_data: Option<String>,
    pub location: Option<String>,
    pub bootstrap: Option<bool>,
    pub peers: Option<String>,
    pub join: Option<String>,
    pub heartbeat_interval_ms: Option<u64>,
    pub election_timeout_min_ms: Option<u64>,
    pub election_timeout_max_ms: Option<u64>,
    pub snapshot_logs: Option<u64>,
    pub disk_capacity: Option<String>,
    pub node_out_after_ms: Option<u64>,
}

impl TryFrom<NodeArgs> for MemberConfig {
    type Error = anyhow::Error;

    fn try_from(args: NodeArgs) -> anyhow::Result<MemberConfig> {
        let NodeArgs {
            config,
            id,
            data_dir,
            listen,
            advertise_rpc,
            data_addr,
            advertise_data,
            location,
            bootstrap,
            peers,
            join,
            heartbeat_interval_ms,
            election_timeout_min_ms,
            election_timeout_max_ms,
            snapshot_logs,
            disk_capacity,
            node_out_after_ms,
        } = args;
        let file = match &config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--config {}", path.display()))?;
                toml::from_str::<NodeToml>(&text)
                    .with_context(|| format!("--config {}", path.display()))?
            }
            None => NodeToml::default(),
        };
        let NodeToml {
            id: f_id,
            data_dir: f_data_dir,
            listen: f_listen,
            advertise_rpc: f_advertise_rpc,
            data_addr: f_data_addr,
            advertise_data: f_advertise_data,
            location: f_location,
            bootstrap: f_bootstrap,
            peers: f_peers,
            join: f_join,
            heartbeat_interval_ms: f_hb,
            election_timeout_min_ms: f_emin,
            election_timeout_max_ms: f_emax,
            snapshot_logs: f_snap,
            disk_capacity: f_disk,
            node_out_after_ms: f_out,
        } = file;

        let id = id.or(f_id).context("--id is required")?;
        if id == 0 {
            bail!("--id must not be zero");
        }
        let data_dir = data_dir.or(f_data_dir).context("--data-dir is required")?;
        let listen = listen.or(f_listen).context("--listen is required")?;
        let rpc = Endpoint::parse(
            "--listen",
            &listen,
            "--advertise-rpc",
            advertise_rpc.or(f_advertise_rpc).as_deref(),
        )?;
        let advertise_data = advertise_data.or(f_advertise_data);
        let data = match data_addr.or(f_data_addr).filter(|a| !a.is_empty()) {
            Some(bind) => Some(Endpoint::parse(
                "--data-addr",
                &bind,
                "--advertise-data",
                advertise_data.as_deref(),
            )?),
            None if advertise_data.is_some() => {
                bail!("--advertise-data is given without --data-addr")
            }
            None => None,
        };
        let location = parse_location(&location.or(f_location).unwrap_or_default())?;
        let bootstrap = bootstrap || f_bootstrap.unwrap_or(false);
        let peers = peers.or(f_peers);
        let join = join.or(f_join);
        let formation = match (bootstrap, join) {
            (true, Some(_)) => bail!("--bootstrap and --join exclude each other"),
            (true, None) => Formation::Bootstrap(parse_peers(peers.as_deref().unwrap_or(""))?),
            (false, Some(seed)) => Formation::Join(seed),
            (false, None) => Formation::Existing,
        };
        let d = RaftTuning::default();
        let tuning = RaftTuning {
            heartbeat_interval_ms: heartbeat_interval_ms
                .or(f_hb)
                .unwrap_or(d.heartbeat_interval_ms),
            election_timeout_min_ms: election_timeout_min_ms
                .or(f_emin)
                .unwrap_or(d.election_timeout_min_ms),
            election_timeout_max_ms: election_timeout_max_ms
                .or(f_emax)
                .unwrap_or(d.election_timeout_max_ms),
            snapshot_logs: snapshot_logs.or(f_snap).unwrap_or(d.snapshot_logs),
        };
        if tuning.heartbeat_interval_ms == 0
            || tuning.heartbeat_interval_ms >= tuning.election_timeout_min_ms
        {
            bail!("the heartbeat interval must be non-zero and below the election timeout");
        }
        if tuning.election_timeout_min_ms >= tuning.election_timeout_max_ms {
            bail!("--election-timeout-min-ms must be below --election-timeout-max-ms");
        }
        if tuning.snapshot_logs == 0 {
            bail!("--snapshot-logs must not be zero");
        }
        let capacity_bytes = match disk_capacity.or(f_disk) {
            Some(s) => parse_size::Config::new()
                .with_binary()
                .parse_size(&s)
                .map_err(|e| anyhow::anyhow!("--disk-capacity {s:?}: {e}"))?,
            None => filesystem_bytes(&data_dir)?,
        };
        if !(DISK_BYTES_MIN..=DISK_BYTES_MAX).contains(&capacity_bytes) {
            bail!(
                "disk capacity {capacity_bytes} bytes is outside {DISK_BYTES_MIN}..={DISK_BYTES_MAX}"
            );
        }
        let node_out_after_ms = node_out_after_ms
            .or(f_out)
            .unwrap_or(NODE_OUT_AFTER_MS_DEFAULT);
        if node_out_after_ms < 2 * NODE_HEARTBEAT_INTERVAL_MS {
            bail!(
                "--node-out-after-ms {node_out_after_ms} is below two heartbeat intervals ({} ms)",
                2 * NODE_HEARTBEAT_INTERVAL_MS
            );
        }
        // One disk per node for now: the data directory's.
        let disks = vec![DiskInfo {
            name: DEFAULT_DISK_NAME.into(),
            capacity_bytes,
        }];
        Ok(MemberConfig {
            id,
            data_dir,
            rpc,
            data,
            location,
            disks,
            formation,
            tuning,
            node_out_after_ms,
        })
    }
}

/// Name of the disk a node registers by default.
pub const DEFAULT_DISK_NAME: &str = "data";

/// Total size of the filesystem holding `dir` (or its nearest existing ancestor): stable for a
/// given filesystem, so a restarted node registers the same weight.
fn filesystem_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("."));
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())
        .context("data dir path has a NUL byte")?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", probe.display()));
    }
    Ok(st.f_blocks as u64 * st.f_frsize as u64)
}

/// Parses `level=name,level=name` (widest first).
pub fn parse_location(s: &str) -> anyhow::Result<Location> {
    let mut levels: Vec<(String, String)> = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (level, name) = part.split_once('=').with_context(|| {
            format!("--location {s:?}: want level=name,... e.g. rack=r1,host=h1")
        })?;
        if level.is_empty() || name.is_empty() || levels.iter().any(|(l, _)| l == level) {
            bail!("--location {s:?}: empty or repeated level in {part:?}");
        }
        levels.push((level.to_string(), name.to_string()));
    }
    Ok(Location { levels })
}

/// Parses `id=ip:port,id=ip:port`.
pub fn parse_peers(s: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .with_context(|| format!("--peers {s:?}: want id=ip:port,..."))?;
        let id: u64 = id
            .parse()
            .with_context(|| format!("--peers {s:?}: bad id {id:?}"))?;
        addr.parse::<SocketAddr>()
            .with_context(|| format!("--peers {s:?}: bad address {addr:?}"))?;
        if id == 0 || peers.insert(id, addr.to_string()).is_some() {
            bail!("--peers {s:?}: zero or repeated id {id}");
        }
    }
    Ok(peers)
}

/// Why `run` stopped, for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data directory {0} is in use by another process")]
    DataDirLocked(PathBuf),
    #[error(
        "{log}. It holds entries this member acknowledged as durable, so the member does not \
         start without them. If the group has other members: remove this one (fabricctl node \
         remove {id}), move {dir} aside (keep it for inspection), and start this node again with \
         --join <a member's address>, so that it catches up from a peer's snapshot. Otherwise \
         restore {dir} from a backup.",
        dir = meta_dir(log)
    )]
    MetadataLogCorrupt {
        id: u64,
        log: crate::meta::store::LogCorrupt,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Runs the member until SIGINT or SIGTERM.
pub async fn run(cfg: MemberConfig) -> Result<(), NodeError> {
    let mut stop = crate::dev::StopSignals::install();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("create {}", cfg.data_dir.display()))?;
    let _lock = lock_dir(&cfg.data_dir)?;
    let id = cfg.id;
    let dir = cfg.data_dir.clone();
    // The data socket is bound before the member registers the node, so that the address it
    // registers carries the port actually bound.
    let data = match cfg.data {
        Some(endpoint) => {
            let listener = tokio::net::TcpListener::bind(endpoint.bind)
                .await
                .with_context(|| format!("listen for replica traffic on {}", endpoint.bind))?;
            let advertised =
                endpoint.advertised(listener.local_addr().context("local data address")?);
            Some((listener, advertised))
        }
        None => None,
    };
    let data_addr = data.as_ref().map_or(String::new(), |(_, a)| a.to_string());
    let running = crate::meta::server::start(cfg, data_addr)
        .await
        .map_err(|e| match e.log_corrupt() {
            Some(log) => NodeError::MetadataLogCorrupt {
                id,
                log: log.clone(),
            },
            None => NodeError::Other(anyhow::Error::new(e).context("start metadata member")),
        })?;
    let storage = match data {
        None => None,
        Some((listener, advertised)) => {
            let storage = crate::storage::Storage::start(
                &dir.join("store"),
                listener,
                id,
                local_dial(running.bound),
            )
            .await
            .context("start the replica server")?;
            println!(
                "fabricd node {id} serving replicas at {} (advertised as {advertised})",
                storage.data_addr
            );
            Some(storage)
        }
    };
    write_node_file(
        &dir,
        &NodeFile {
            id,
            rpc_addr: running.addr.to_string(),
            pid: std::process::id(),
        },
    )
    .context("write node.json")?;
    println!(
        "fabricd node {id} serving metadata at {} (advertised as {})",
        running.bound, running.addr
    );
    stop.wait().await;
    tracing::info!(id, "stopping");
    if let Some(storage) = storage {
        storage.stop().await;
    }
    running.stop().await;
    Ok(())
}

/// The member's metadata directory, which holds the damaged log file.
fn meta_dir(log: &crate::meta::store::LogCorrupt) -> String {
    log.path.parent().unwrap_or(&log.path).display().to_string()
}

fn lock_dir(dir: &Path) -> Result<std::fs::File, NodeError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(NodeError::DataDirLocked(dir.to_path_buf()));
    }
    Ok(file)
}

fn write_node_file(dir: &Path, node: &NodeFile) -> std::io::Result<()> {
    let tmp = dir.join(format!("{NODE_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(node)?)?;
    std::fs::rename(&tmp, dir.join(NODE_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_peers_parse_and_nonsense_is_refused() {
        let loc = parse_location("rack=r1,host=h1").unwrap();
        assert_eq!(loc.at("rack"), Some("r1"));
        assert_eq!(loc.to_string(), "rack=r1,host=h1");
        for bad in ["rack", "rack=", "=r1", "rack=a,rack=b"] {
            assert!(parse_location(bad).is_err(), "{bad}");
        }
        let peers = parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002").unwrap();
        assert_eq!(peers.len(), 2);
        for bad in [
            "1",
            "x=127.0.0.1:1",
            "0=127.0.0.1:1",
            "1=nowhere",
            "1=127.0.0.1:1,1=127.0.0.1:2",
        ] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
    }

    fn args(listen: &str) -> NodeArgs {
        NodeArgs {
            id: Some(1),
            data_dir: Some(PathBuf::from("node-1")),
            listen: Some(listen.into()),
            disk_capacity: Some("1TiB".into()),
            ..NodeArgs::default()
        }
    }

    #[test]
    fn a_wildcard_listen_or_data_addr_without_advertise_is_refused() {
        let e = MemberConfig::try_from(args("0.0.0.0:7000")).unwrap_err();
        assert!(format!("{e:#}").contains("give --advertise-rpc"), "{e:#}");
        let e = MemberConfig::try_from(NodeArgs {
            data_addr: Some("[::]:7100".into()),
            ..args("127.0.0.1:7000")
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("give --advertise-data"), "{e:#}");
        let e = MemberConfig::try_from(NodeArgs {
            advertise_data: Some("10.0.0.1:7100".into()),
            ..args("127.0.0.1:7000")
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("without --data-addr"), "{e:#}");
    }

    #[test]
    fn advertise_addresses_are_taken_from_flags_and_default_to_the_binds() {
        let cfg = MemberConfig::try_from(NodeArgs {
            advertise_rpc: Some("10.0.0.1:7000".into()),
            data_addr: Some("0.0.0.0:0".into()),
            advertise_data: Some("10.0.0.1:0".into()),
            ..args("0.0.0.0:7000")
        })
        .unwrap();
        assert_eq!(cfg.rpc.bind, "0.0.0.0:7000".parse().unwrap());
        let bound = "0.0.0.0:7000".parse().unwrap();
        assert_eq!(cfg.rpc.advertised(bound), "10.0.0.1:7000".parse().unwrap());
        let data = cfg.data.expect("a data endpoint");
        assert_eq!(
            data.advertised("0.0.0.0:40001".parse().unwrap()),
            "10.0.0.1:40001".parse().unwrap()
        );
        let cfg = MemberConfig::try_from(args("127.0.0.1:7000")).unwrap();
        assert_eq!(
            cfg.rpc.advertised(bound),
            bound,
            "default: the bound address"
        );
        assert!(cfg.data.is_none(), "no data path without --data-addr");
    }
}
