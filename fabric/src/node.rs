//! `fabricd node`: one node as its own process, configured from a TOML file and/or flags (flags
//! win). Raw input ([`NodeArgs`], [`NodeToml`]) is validated once into a [`NodeConfig`]; the
//! process then serves until SIGINT/SIGTERM.
//!
//! A node has one or both roles (`--roles meta,storage`):
//! - **meta**: a member of the metadata group, which has a small fixed voter set (3 or 5)
//!   chosen at bootstrap and changed only by an explicit command;
//! - **storage**: a storage node. It registers through the metadata API, heartbeats to the
//!   leader ([`crate::agent`]) and serves replicas on `--data-addr`; it is not a Raft member.
//!   Without `--data-addr` it registers its disk for placement and serves no data.
//!
//! The node's directory holds `LOCK` (flock'd while running), `meta/` (the Raft log file, sled
//! and the snapshot; meta role), `store/` (storage role) and `node.json` (id, gRPC address if
//! a member, pid) for discovery by `fabricctl` and tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;

use crate::agent::NODE_HEARTBEAT_INTERVAL_MS;
use crate::config::{Endpoint, local_dial};
use crate::identity::join::JoinToken;
use crate::identity::{PrincipalKind, Transport};
use crate::meta::client::{NODE_FILE, NodeFile};
use crate::meta::liveness::LivenessConfig;
use crate::meta::model::{DiskInfo, Location};
use crate::meta::pgmap::{DISK_BYTES_MAX, DISK_BYTES_MIN};
use crate::meta::server::{Formation, MemberConfig, RaftTuning};

/// Flags of `fabricd node`.
#[derive(Args, Debug, Clone, Default)]
pub struct NodeArgs {
    /// TOML file with any of the settings below (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Node id (non-zero, unique in the cluster).
    #[arg(long)]
    pub id: Option<u64>,
    /// What the node does: `meta` (a member of the metadata group), `storage` (a storage
    /// node), or both (the default).
    #[arg(long)]
    pub roles: Option<String>,
    /// Metadata members a storage node registers and heartbeats with, `IP:PORT,...`
    /// (required without the meta role; with it, the node's own member is asked first).
    #[arg(long)]
    pub meta: Option<String>,
    /// The node's own directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (Raft transport and metadata API), IP:PORT; meta role.
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
    /// While this member leads: how long a node stays down before it is marked out of
    /// placement and its PGs rebuilt elsewhere (default ten minutes).
    #[arg(long)]
    pub node_out_after_ms: Option<u64>,
    /// While this member leads, every PG of a volume no gateway serves is scrubbed (its
    /// blocks checked against their checksums on every replica) once in this many seconds
    /// (default a day; 0: only when asked with `fabricctl scrub start`).
    #[arg(long)]
    pub scrub_interval_s: Option<u64>,
    /// The same for deep scrubs, which also compare the replicas (default a week).
    #[arg(long)]
    pub deep_scrub_interval_s: Option<u64>,
    /// Serve Prometheus metrics at http://IP:PORT/metrics.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// The node's certificate directory (`chain.pem`, `key.pem`, `ca.pem`, as `fabricctl
    /// cert issue node ID` writes it); default DATA_DIR/tls. Every TCP port of the node
    /// takes mutual TLS only.
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// With --bootstrap: the principal that is cluster-admin of the new cluster
    /// (`fabric://CLUSTER/user/NAME`); everyone else starts with no rights.
    #[arg(long)]
    pub bootstrap_admin: Option<String>,
    /// With --bootstrap: `on` (the default) guards deleting volumes and pools, force-attach,
    /// voter changes, admin grants and shortening the audit log with the two-person rule;
    /// `off` starts with every guard off (a one-person sandbox, as `fabricd dev` is).
    #[arg(long)]
    pub two_person: Option<String>,
    /// With --bootstrap: a principal that starts with the approver role, the second person of
    /// the two-person rule (repeatable).
    #[arg(long = "bootstrap-approver")]
    pub bootstrap_approvers: Vec<String>,
    /// Meta role: a CA directory (`fabricctl ca init`; the intermediate's certificate and key,
    /// the root's certificate) with which this member signs the certificates of nodes that
    /// join with a token.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// A join token (`fabricctl join-token create`): on first start, with no certificate in
    /// --cert-dir yet, the node gets its certificate from the member at --join (default: the
    /// first --meta address), which must prove it holds the CA the token pins. A storage node
    /// then registers with that member unless --meta says otherwise.
    #[arg(long, env = "FABRIC_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The TOML form of the same settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeToml {
    pub id: Option<u64>,
    pub roles: Option<String>,
    pub meta: Option<String>,
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
    pub scrub_interval_s: Option<u64>,
    pub deep_scrub_interval_s: Option<u64>,
    pub metrics_listen: Option<String>,
    pub cert_dir: Option<PathBuf>,
    pub bootstrap_admin: Option<String>,
    pub ca_dir: Option<PathBuf>,
}

/// The roles a node has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    pub meta: bool,
    pub storage: bool,
}

impl Roles {
    /// Parses `meta`, `storage` or both, comma-separated.
    pub fn parse(s: &str) -> anyhow::Result<Roles> {
        let mut roles = Roles {
            meta: false,
            storage: false,
        };
        for part in s.split(',').map(str::trim) {
            let seen = match part {
                "meta" => std::mem::replace(&mut roles.meta, true),
                "storage" => std::mem::replace(&mut roles.storage, true),
                other => {
                    bail!("--roles {s:?}: unknown role {other:?} (want meta, storage or both)")
                }
            };
            if seen {
                bail!("--roles {s:?}: {part} is given twice");
            }
        }
        Ok(roles)
    }
}

/// The storage role's validated settings.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// The replica server's socket; none: the node registers for placement and serves no data.
    pub data: Option<Endpoint>,
    pub location: Location,
    pub disks: Vec<DiskInfo>,
    /// Members to register and heartbeat with (after the node's own member, if it has one).
    pub meta: Vec<String>,
    /// What the node reports for drift detection.
    pub drift: crate::drift::DriftSource,
}

/// Validated configuration of one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    /// The meta role: this node's metadata member.
    pub member: Option<MemberConfig>,
    /// The storage role.
    pub storage: Option<StorageConfig>,
    /// Where to serve metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Mutual TLS with the node's own certificate, on every port and every dial.
    pub transport: Transport,
    /// How often the maintenance agent scrubs the volumes nobody serves.
    pub scrub: crate::scrub::Intervals,
}

impl TryFrom<NodeArgs> for NodeConfig {
    type Error = anyhow::Error;

    fn try_from(args: NodeArgs) -> anyhow::Result<NodeConfig> {
        let NodeArgs {
            config,
            id,
            roles,
            meta,
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
            scrub_interval_s,
            deep_scrub_interval_s,
            metrics_listen,
            cert_dir,
            bootstrap_admin,
            ca_dir,
            token,
            two_person,
            bootstrap_approvers,
        } = args;
        // The config file's text as the node starts with it: what drift detection puts back.
        let mut config_text = None;
        let file = match &config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--config {}", path.display()))?;
                let parsed = toml::from_str::<NodeToml>(&text)
                    .with_context(|| format!("--config {}", path.display()))?;
                config_text = Some((path.clone(), text));
                parsed
            }
            None => NodeToml::default(),
        };
        let NodeToml {
            id: f_id,
            roles: f_roles,
            meta: f_meta,
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
            scrub_interval_s: f_scrub,
            deep_scrub_interval_s: f_deep_scrub,
            metrics_listen: f_metrics,
            cert_dir: f_cert_dir,
            bootstrap_admin: f_admin,
            ca_dir: f_ca_dir,
        } = file;

        let id = id.or(f_id).context("--id is required")?;
        if id == 0 {
            bail!("--id must not be zero");
        }
        let data_dir = data_dir.or(f_data_dir).context("--data-dir is required")?;
        let roles = Roles::parse(roles.or(f_roles).as_deref().unwrap_or("meta,storage"))?;
        let mut meta_endpoints = parse_endpoints(meta.or(f_meta).as_deref().unwrap_or(""))?;
        let token = token
            .map(|t| t.parse::<JoinToken>())
            .transpose()
            .context("--token")?;
        let mut join = join.or(f_join);
        // With a token, --join names the member the certificate comes from; a storage node
        // also registers there unless --meta names other members.
        let cert_from = match &token {
            None => None,
            Some(_) => Some(
                join.clone()
                    .or_else(|| meta_endpoints.first().cloned())
                    .context("--token needs --join ADDR, the member to join through")?,
            ),
        };
        if let Some(from) = &cert_from
            && !roles.meta
        {
            from.parse::<SocketAddr>()
                .with_context(|| format!("--join {from:?}: want IP:PORT"))?;
            if meta_endpoints.is_empty() {
                meta_endpoints.push(from.clone());
            }
            join = None;
        }
        let raft = RaftFlags {
            listen: listen.or(f_listen),
            advertise_rpc: advertise_rpc.or(f_advertise_rpc),
            bootstrap: bootstrap || f_bootstrap.unwrap_or(false),
            peers: peers.or(f_peers),
            join,
            heartbeat_interval_ms: heartbeat_interval_ms.or(f_hb),
            election_timeout_min_ms: election_timeout_min_ms.or(f_emin),
            election_timeout_max_ms: election_timeout_max_ms.or(f_emax),
            snapshot_logs: snapshot_logs.or(f_snap),
            node_out_after_ms: node_out_after_ms.or(f_out),
            bootstrap_admin: bootstrap_admin.or(f_admin),
            ca_dir: ca_dir.or(f_ca_dir),
            two_person,
            bootstrap_approvers,
        };
        let member = if roles.meta {
            Some(member_config(id, &data_dir, raft)?)
        } else {
            raft.refuse_without_meta()?;
            None
        };
        let storage = if roles.storage {
            if member.is_none() && meta_endpoints.is_empty() {
                bail!("a node without the meta role needs --meta, the members to register with");
            }
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
            if member.is_none() && data.is_none() {
                bail!("a node without the meta role needs --data-addr, the replica server it runs");
            }
            let location = parse_location(&location.or(f_location).unwrap_or_default())?;
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
            // One disk per node for now: the data directory's.
            let disks = vec![DiskInfo {
                name: DEFAULT_DISK_NAME.into(),
                capacity_bytes,
            }];
            Some(StorageConfig {
                data,
                location,
                disks,
                meta: meta_endpoints,
                // The certificate directory is set below, once it is known.
                drift: crate::drift::DriftSource::new(
                    config_text,
                    PathBuf::new(),
                    data_dir.clone(),
                ),
            })
        } else {
            let storage_flags = [
                ("--data-addr", data_addr.or(f_data_addr).is_some()),
                (
                    "--advertise-data",
                    advertise_data.or(f_advertise_data).is_some(),
                ),
                ("--location", location.or(f_location).is_some()),
                ("--disk-capacity", disk_capacity.or(f_disk).is_some()),
                ("--meta", !meta_endpoints.is_empty()),
            ];
            if let Some((flag, _)) = storage_flags.iter().find(|(_, given)| *given) {
                bail!("{flag} is a setting of the storage role, which this node does not have");
            }
            None
        };
        if member.is_none() && storage.is_none() {
            bail!("--roles names no role");
        }
        let metrics_listen = match metrics_listen.or(f_metrics) {
            None => None,
            Some(a) => Some(
                a.parse::<SocketAddr>()
                    .map_err(|e| anyhow::anyhow!("--metrics-listen {a:?}: {e} (want IP:PORT)"))?,
            ),
        };
        let cert_dir = cert_dir
            .or(f_cert_dir)
            .unwrap_or_else(|| data_dir.join(NODE_CERT_DIR));
        if let (Some(token), Some(from)) = (&token, &cert_from) {
            if cert_dir.join(crate::identity::load::CHAIN_FILE).exists() {
                tracing::info!(
                    dir = %cert_dir.display(),
                    "the node has a certificate already; --token is not used"
                );
            } else {
                let mut names: Vec<String> = Vec::new();
                let endpoints = member
                    .iter()
                    .map(|m| &m.rpc)
                    .chain(storage.iter().filter_map(|s| s.data.as_ref()));
                for e in endpoints {
                    for ip in [e.advertised(e.bind).ip(), local_dial(e.bind).ip()] {
                        if !names.contains(&ip.to_string()) {
                            names.push(ip.to_string());
                        }
                    }
                }
                crate::join::obtain_certificate_blocking(from, token, id, names, &cert_dir)
                    .with_context(|| format!("join with token {}", token.id()))?;
            }
        }
        let transport = node_transport(id, &cert_dir)?;
        let storage = storage.map(|mut s| {
            s.drift.cert_dir = cert_dir.clone();
            s
        });
        if let Some(ca) = member.as_ref().and_then(|m| m.signer.as_ref()) {
            let own = transport.tls().expect("loaded");
            if ca.cluster() != own.cluster() {
                bail!(
                    "--ca-dir is the CA of cluster {}, this node's certificate of cluster {}",
                    ca.cluster().as_str(),
                    own.cluster().as_str()
                );
            }
        }
        let member = member.map(|m| MemberConfig {
            transport: transport.clone(),
            ..m
        });
        let defaults = crate::scrub::Intervals::default();
        let scrub = crate::scrub::Intervals {
            light_ms: scrub_interval_s
                .or(f_scrub)
                .map_or(defaults.light_ms, |s| s.saturating_mul(1000)),
            deep_ms: deep_scrub_interval_s
                .or(f_deep_scrub)
                .map_or(defaults.deep_ms, |s| s.saturating_mul(1000)),
        };
        Ok(NodeConfig {
            id,
            data_dir,
            member,
            storage,
            metrics_listen,
            transport,
            scrub,
        })
    }
}

/// The meta role's raw settings.
struct RaftFlags {
    listen: Option<String>,
    advertise_rpc: Option<String>,
    bootstrap: bool,
    peers: Option<String>,
    join: Option<String>,
    heartbeat_interval_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    snapshot_logs: Option<u64>,
    node_out_after_ms: Option<u64>,
    bootstrap_admin: Option<String>,
    ca_dir: Option<PathBuf>,
    two_person: Option<String>,
    bootstrap_approvers: Vec<String>,
}

impl RaftFlags {
    /// Refuses meta settings on a node that is not a member, naming the first one given.
    fn refuse_without_meta(&self) -> anyhow::Result<()> {
        let given = [
            ("--listen", self.listen.is_some()),
            ("--advertise-rpc", self.advertise_rpc.is_some()),
            ("--bootstrap", self.bootstrap),
            ("--peers", self.peers.is_some()),
            ("--join", self.join.is_some()),
            (
                "--heartbeat-interval-ms",
                self.heartbeat_interval_ms.is_some(),
            ),
            (
                "--election-timeout-min-ms",
                self.election_timeout_min_ms.is_some(),
            ),
            (
                "--election-timeout-max-ms",
                self.election_timeout_max_ms.is_some(),
            ),
            ("--snapshot-logs", self.snapshot_logs.is_some()),
            ("--node-out-after-ms", self.node_out_after_ms.is_some()),
            ("--bootstrap-admin", self.bootstrap_admin.is_some()),
            ("--ca-dir", self.ca_dir.is_some()),
            ("--two-person", self.two_person.is_some()),
            ("--bootstrap-approver", !self.bootstrap_approvers.is_empty()),
        ];
        match given.iter().find(|(_, g)| *g) {
            Some((flag, _)) => {
                bail!("{flag} is a setting of the meta role, which this node does not have")
            }
            None => Ok(()),
        }
    }
}

fn member_config(id: u64, data_dir: &Path, f: RaftFlags) -> anyhow::Result<MemberConfig> {
    let listen = f.listen.context("--listen is required for the meta role")?;
    let rpc = Endpoint::parse(
        "--listen",
        &listen,
        "--advertise-rpc",
        f.advertise_rpc.as_deref(),
    )?;
    let formation = match (f.bootstrap, f.join) {
        (true, Some(_)) => bail!("--bootstrap and --join exclude each other"),
        (true, None) => Formation::Bootstrap(parse_peers(f.peers.as_deref().unwrap_or(""))?),
        (false, Some(seed)) => Formation::Join(seed),
        (false, None) => Formation::Existing,
    };
    if let Formation::Bootstrap(voters) = &formation
        && voters.len() > VOTERS_MAX
    {
        bail!(
            "--peers names {} voters; a metadata group has at most {VOTERS_MAX} (storage nodes \
             join with --roles storage)",
            voters.len()
        );
    }
    let signer = match &f.ca_dir {
        None => None,
        Some(dir) => Some(std::sync::Arc::new(
            crate::identity::ca::CertificateAuthority::open(dir)
                .with_context(|| format!("--ca-dir {}", dir.display()))?,
        )),
    };
    let d = RaftTuning::default();
    let tuning = RaftTuning {
        heartbeat_interval_ms: f.heartbeat_interval_ms.unwrap_or(d.heartbeat_interval_ms),
        election_timeout_min_ms: f
            .election_timeout_min_ms
            .unwrap_or(d.election_timeout_min_ms),
        election_timeout_max_ms: f
            .election_timeout_max_ms
            .unwrap_or(d.election_timeout_max_ms),
        snapshot_logs: f.snapshot_logs.unwrap_or(d.snapshot_logs),
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
    let mut liveness = LivenessConfig::default();
    if let Some(out_after_ms) = f.node_out_after_ms {
        if out_after_ms < 2 * NODE_HEARTBEAT_INTERVAL_MS {
            bail!(
                "--node-out-after-ms {out_after_ms} is below two heartbeat intervals ({} ms)",
                2 * NODE_HEARTBEAT_INTERVAL_MS
            );
        }
        liveness.out_after_ms = out_after_ms;
    }
    let bootstrap_admin = match (f.bootstrap_admin, &formation) {
        (Some(admin), Formation::Bootstrap(_)) => {
            crate::meta::auth::Policy::bootstrap(&admin)
                .with_context(|| format!("--bootstrap-admin {admin:?}"))?;
            Some(admin)
        }
        (Some(_), _) => bail!("--bootstrap-admin is a setting of --bootstrap"),
        (None, _) => None,
    };
    let guards_off = match (f.two_person.as_deref(), &formation) {
        (None | Some("on"), Formation::Bootstrap(_)) => false,
        (Some("off"), Formation::Bootstrap(_)) => true,
        (Some(other), Formation::Bootstrap(_)) => {
            bail!("--two-person {other:?}: want on or off")
        }
        (Some(_), _) => bail!("--two-person is a setting of --bootstrap"),
        (None, _) => false,
    };
    if !f.bootstrap_approvers.is_empty() && !matches!(formation, Formation::Bootstrap(_)) {
        bail!("--bootstrap-approver is a setting of --bootstrap");
    }
    Ok(MemberConfig {
        id,
        data_dir: data_dir.to_path_buf(),
        rpc,
        formation,
        tuning,
        liveness,
        bootstrap_admin,
        guards_off,
        bootstrap_approvers: f.bootstrap_approvers,
        signer,
        // Set once the node's certificate is loaded.
        transport: Transport::InProcessPlaintext,
    })
}

/// The certificate directory under a node's data directory, when --cert-dir is not given.
pub const NODE_CERT_DIR: &str = "tls";

/// Loads the node's identity from `cert_dir` and checks that it is node `id`'s.
fn node_transport(id: u64, cert_dir: &Path) -> anyhow::Result<Transport> {
    let transport = Transport::load(cert_dir).with_context(|| {
        format!(
            "load the node's certificate from {} (issue one with `fabricctl cert issue node {id} \
             --ca-dir CA --out {} --san ADDRESS`; fabricd node takes TLS only)",
            cert_dir.display(),
            cert_dir.display()
        )
    })?;
    let principal = transport.tls().expect("loaded").principal();
    if principal.kind() != &PrincipalKind::Node(id) {
        bail!(
            "{} holds the certificate of {principal}, not of node {id}",
            cert_dir.display()
        );
    }
    Ok(transport)
}

/// Most voters a metadata group is bootstrapped with.
pub const VOTERS_MAX: usize = 7;

/// Parses `ip:port,ip:port`.
fn parse_endpoints(s: &str) -> anyhow::Result<Vec<String>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|a| {
            a.parse::<SocketAddr>()
                .map(|_| a.to_string())
                .with_context(|| format!("--meta {s:?}: bad address {a:?}"))
        })
        .collect()
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

/// Runs the node's roles until SIGINT or SIGTERM.
pub async fn run(cfg: NodeConfig) -> Result<(), NodeError> {
    let mut stop = crate::dev::StopSignals::install();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("create {}", cfg.data_dir.display()))?;
    let _lock = lock_dir(&cfg.data_dir)?;
    let NodeConfig {
        id,
        data_dir: dir,
        member,
        storage,
        metrics_listen,
        transport,
        scrub,
    } = cfg;
    if let Some(tls) = transport.tls() {
        tokio::spawn(crate::identity::rotation::follow_files(
            std::sync::Arc::clone(tls),
        ));
    }
    let running =
        match member {
            None => None,
            Some(member) => {
                Some(crate::meta::server::start(member).await.map_err(
                    |e| match e.log_corrupt() {
                        Some(log) => NodeError::MetadataLogCorrupt {
                            id,
                            log: log.clone(),
                        },
                        None => {
                            NodeError::Other(anyhow::Error::new(e).context("start metadata member"))
                        }
                    },
                )?)
            }
        };
    // The rebuild agent heals idle volumes while this node's member leads.
    let (stop_rebuild, rebuild_stopped) = tokio::sync::watch::channel(false);
    let mut rebuild = None;
    if let Some(running) = &running {
        println!(
            "fabricd node {id} serving metadata at {} (advertised as {})",
            running.bound, running.addr
        );
        rebuild = Some(tokio::spawn(crate::rebuild_agent::run(
            id,
            local_dial(running.bound),
            transport.clone(),
            scrub,
            rebuild_stopped,
        )));
    }
    let drift_serving = storage
        .as_ref()
        .map(|s| std::sync::Arc::clone(&s.drift.serving));
    let storage = match storage {
        None => None,
        Some(cfg) => {
            // The member (if any) is asked first: it forwards to the leader like any member.
            let mut endpoints: Vec<String> = running
                .iter()
                .map(|r| local_dial(r.bound).to_string())
                .collect();
            endpoints.extend(cfg.meta.iter().cloned());
            let own_rpc = running.as_ref().map(|r| r.addr.to_string());
            Some(start_storage(id, &dir, cfg, endpoints, own_rpc, transport.clone()).await?)
        }
    };
    let metrics_addr = match metrics_listen {
        None => None,
        Some(listen) => {
            let metrics = crate::metrics::Metrics::new();
            if let Some(running) = &running {
                watch_member(&metrics, running);
            }
            if let Some(storage) = &storage {
                watch_storage(&metrics, storage);
            }
            let bound = crate::metrics::serve(metrics, listen, transport.tls().cloned())
                .await
                .with_context(|| format!("serve metrics on {listen}"))?;
            println!("fabricd node {id} serving metrics at http://{bound}/metrics");
            Some(bound.to_string())
        }
    };
    write_node_file(
        &dir,
        &NodeFile {
            id,
            rpc_addr: running
                .as_ref()
                .map_or(String::new(), |r| r.addr.to_string()),
            pid: std::process::id(),
            metrics_addr,
        },
    )
    .context("write node.json")?;
    // Every listener is bound: the node's drift report is complete from now on.
    if let Some(serving) = drift_serving {
        serving.store(true, std::sync::atomic::Ordering::Release);
    }
    stop.wait().await;
    tracing::info!(id, "stopping");
    let _ = stop_rebuild.send(true);
    if let Some(rebuild) = rebuild {
        let _ = rebuild.await;
    }
    if let Some(storage) = storage {
        storage.stop().await;
    }
    if let Some(running) = running {
        running.stop().await;
    }
    Ok(())
}

/// Registers a member's metrics; Raft progress and node counts are read at scrape time.
fn watch_member(metrics: &crate::metrics::Metrics, running: &crate::meta::server::RunningMember) {
    use crate::metrics::StateLabels;
    let m = running.detector.metrics.clone();
    metrics.register_member(&m);
    let member = std::sync::Arc::clone(&running.member);
    let drift = std::sync::Arc::clone(&running.drift);
    metrics.on_scrape(move || {
        let raft = member.metrics();
        let set = |g: &prometheus_client::metrics::gauge::Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&m.term, raft.current_term);
        set(&m.last_log_index, raft.last_log_index.unwrap_or(0));
        set(
            &m.commit_index,
            raft.cluster_committed.as_ref().map_or(0, |l| l.index()),
        );
        set(
            &m.applied_index,
            raft.last_applied.as_ref().map_or(0, |l| l.index()),
        );
        set(
            &m.snapshot_index,
            raft.snapshot.as_ref().map_or(0, |l| l.index()),
        );
        set(&m.leader, u64::from(raft.current_leader == Some(member.id)));
        let (mut up, mut down, mut out) = (0, 0, 0);
        member.sm.read(|state, _| {
            for n in state.nodes.values() {
                match (n.participation, n.health) {
                    (crate::meta::model::Participation::Out, _) => out += 1,
                    (_, crate::meta::model::Health::Down) => down += 1,
                    (_, crate::meta::model::Health::Up) => up += 1,
                }
            }
        });
        member.sm.read(|state, _| {
            let log = &state.audit;
            set(&m.audit_entries, log.size());
            set(&m.audit_held, log.held());
            if let Some(c) = log.checkpoints().last() {
                set(&m.audit_checkpoint_size, c.size);
                set(&m.audit_checkpoint_time, c.time_ms / 1000);
            }
        });
        let drifted = member
            .sm
            .read(|state, _| drift.list(state, crate::meta::clock::unix_ms()));
        for class in [
            crate::drift::DriftClass::AutoRepair,
            crate::drift::DriftClass::AlertOnly,
            crate::drift::DriftClass::NeedsApproval,
        ] {
            let count = drifted.iter().filter(|d| d.class == class).count();
            m.drift
                .get_or_create(&crate::metrics::ClassLabels {
                    class: class.name().into(),
                })
                .set(count as i64);
        }
        set(
            &m.audit_refused_full,
            member
                .audit_refused_full
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        set(
            &m.audit_refusals_counted,
            member
                .audit_refusals_counted
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        for (state, count) in [("up", up), ("down", down), ("out", out)] {
            m.nodes
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .set(count);
        }
    });
}

/// Registers a storage node's metrics, read at scrape time.
fn watch_storage(metrics: &crate::metrics::Metrics, role: &StorageRole) {
    let m = crate::metrics::StorageMetrics::default();
    metrics.register_storage(&m);
    let beats = std::sync::Arc::clone(&role.beats);
    let server = role
        .storage
        .as_ref()
        .map(|s| std::sync::Arc::clone(&s.server));
    metrics.on_scrape(move || {
        let accepted = beats.accepted.load(std::sync::atomic::Ordering::Relaxed);
        m.heartbeats
            .set(i64::try_from(accepted).unwrap_or(i64::MAX));
        if let Some(server) = &server {
            let errors = server.store().stats().checksum_errors();
            m.checksum_errors
                .set(i64::try_from(errors).unwrap_or(i64::MAX));
            m.volumes.set(server.volume_ids().len() as i64);
            let sched = server.scheduler();
            let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            for (class, counts) in sched.counts() {
                let labels = crate::metrics::ClassLabels {
                    class: class.name().to_owned(),
                };
                m.sched_ios.get_or_create(&labels).set(gauge(counts.ios));
                m.sched_bytes
                    .get_or_create(&labels)
                    .set(gauge(counts.bytes));
                m.sched_reserved_ios
                    .get_or_create(&labels)
                    .set(gauge(counts.by_reservation));
            }
            m.recovery_limit
                .set(gauge(sched.recovery_limit().unwrap_or(0)));
        }
    });
}

/// The storage role at work: its replica server (if it serves data) and its agent.
struct StorageRole {
    storage: Option<crate::storage::Storage>,
    beats: std::sync::Arc<crate::agent::Beats>,
    stop: tokio::sync::watch::Sender<bool>,
    agent: tokio::task::JoinHandle<()>,
}

impl StorageRole {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.agent.await;
        if let Some(storage) = self.storage {
            storage.stop().await;
        }
    }
}

async fn start_storage(
    id: u64,
    dir: &Path,
    cfg: StorageConfig,
    endpoints: Vec<String>,
    own_rpc: Option<String>,
    transport: Transport,
) -> Result<StorageRole, NodeError> {
    // The data socket is bound before the node registers, so that the address it registers
    // carries the port actually bound.
    let (storage, data_addr) = match cfg.data {
        None => (None, String::new()),
        Some(endpoint) => {
            let listener = tokio::net::TcpListener::bind(endpoint.bind)
                .await
                .with_context(|| format!("listen for replica traffic on {}", endpoint.bind))?;
            let advertised =
                endpoint.advertised(listener.local_addr().context("local data address")?);
            let storage = crate::storage::Storage::start(
                id,
                dir,
                &dir.join("store"),
                listener,
                endpoints.clone(),
                transport.clone(),
            )
            .await
            .context("start the replica server")?;
            println!(
                "fabricd node {id} serving replicas at {} (advertised as {advertised})",
                storage.data_addr
            );
            (Some(storage), advertised.to_string())
        }
    };
    let registration = proto::meta::RegisterNodeRequest {
        id,
        // A storage-only node serves no gRPC.
        rpc_addr: own_rpc.unwrap_or_default(),
        data_addr,
        location: Some((&cfg.location).into()),
        disks: cfg.disks.iter().map(Into::into).collect(),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let beats = std::sync::Arc::new(crate::agent::Beats::default());
    let agent = tokio::spawn(crate::agent::run(
        registration,
        std::sync::Arc::new(crate::meta::client::Client::new(
            endpoints,
            transport.clone(),
        )),
        std::sync::Arc::new(crate::agent::ReplicaProber::new(&transport)),
        std::sync::Arc::clone(&beats),
        Some(cfg.drift.clone()),
        stopped,
    ));
    Ok(StorageRole {
        storage,
        beats,
        stop,
        agent,
    })
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

    /// Node 1's certificate directory, made once for these tests by a dev CA.
    fn node_1_certs() -> PathBuf {
        static PKI: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        let dir = PKI.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let pki = crate::identity::dev_pki::DevPki::ensure(dir.path()).unwrap();
            pki.ensure_node(1).unwrap();
            pki.ensure_gateway("gw").unwrap();
            dir
        });
        crate::identity::dev_pki::DevPki::ensure(dir.path())
            .unwrap()
            .node_dir(1)
    }

    fn args(listen: &str) -> NodeArgs {
        NodeArgs {
            id: Some(1),
            data_dir: Some(PathBuf::from("node-1")),
            listen: Some(listen.into()),
            disk_capacity: Some("1TiB".into()),
            cert_dir: Some(node_1_certs()),
            ..NodeArgs::default()
        }
    }

    #[test]
    fn a_node_takes_tls_only_and_only_with_its_own_certificate() {
        let missing = tempfile::tempdir().unwrap();
        let e = NodeConfig::try_from(NodeArgs {
            cert_dir: Some(missing.path().to_path_buf()),
            ..args("127.0.0.1:7000")
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("fabricctl cert issue node 1") && msg.contains("TLS only"),
            "{msg}"
        );
        let gateway = node_1_certs()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("gateways/gw");
        let e = NodeConfig::try_from(NodeArgs {
            cert_dir: Some(gateway),
            ..args("127.0.0.1:7000")
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("not of node 1"), "{e:#}");
        let e = NodeConfig::try_from(NodeArgs {
            bootstrap_admin: Some("fabric://dev/user/alice".into()),
            ..args("127.0.0.1:7000")
        })
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("a setting of --bootstrap"),
            "{e:#}"
        );
        let cfg = NodeConfig::try_from(NodeArgs {
            bootstrap: true,
            bootstrap_admin: Some("fabric://dev/user/alice".into()),
            ..args("127.0.0.1:7000")
        })
        .unwrap();
        assert!(cfg.transport.tls().is_some());
        let member = cfg.member.expect("meta");
        assert_eq!(
            member.bootstrap_admin.as_deref(),
            Some("fabric://dev/user/alice")
        );
        assert!(
            member.transport.tls().is_some(),
            "the member dials and serves over TLS"
        );
    }

    #[test]
    fn a_wildcard_listen_or_data_addr_without_advertise_is_refused() {
        let e = NodeConfig::try_from(args("0.0.0.0:7000")).unwrap_err();
        assert!(format!("{e:#}").contains("give --advertise-rpc"), "{e:#}");
        let e = NodeConfig::try_from(NodeArgs {
            data_addr: Some("[::]:7100".into()),
            ..args("127.0.0.1:7000")
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("give --advertise-data"), "{e:#}");
        let e = NodeConfig::try_from(NodeArgs {
            advertise_data: Some("10.0.0.1:7100".into()),
            ..args("127.0.0.1:7000")
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("without --data-addr"), "{e:#}");
    }

    #[test]
    fn advertise_addresses_are_taken_from_flags_and_default_to_the_binds() {
        let cfg = NodeConfig::try_from(NodeArgs {
            advertise_rpc: Some("10.0.0.1:7000".into()),
            data_addr: Some("0.0.0.0:0".into()),
            advertise_data: Some("10.0.0.1:0".into()),
            ..args("0.0.0.0:7000")
        })
        .unwrap();
        let member = cfg.member.expect("the meta role by default");
        assert_eq!(member.rpc.bind, "0.0.0.0:7000".parse().unwrap());
        let bound = "0.0.0.0:7000".parse().unwrap();
        assert_eq!(
            member.rpc.advertised(bound),
            "10.0.0.1:7000".parse().unwrap()
        );
        let data = cfg.storage.and_then(|s| s.data).expect("a data endpoint");
        assert_eq!(
            data.advertised("0.0.0.0:40001".parse().unwrap()),
            "10.0.0.1:40001".parse().unwrap()
        );
        let cfg = NodeConfig::try_from(args("127.0.0.1:7000")).unwrap();
        assert_eq!(
            cfg.member.expect("meta").rpc.advertised(bound),
            bound,
            "default: the bound address"
        );
        assert!(
            cfg.storage.expect("storage by default").data.is_none(),
            "no data path without --data-addr"
        );
    }

    #[test]
    fn roles_choose_what_a_node_runs_and_refuse_settings_of_a_role_it_lacks() {
        let storage_only = NodeArgs {
            roles: Some("storage".into()),
            meta: Some("127.0.0.1:7001,127.0.0.1:7002".into()),
            data_addr: Some("127.0.0.1:0".into()),
            listen: None,
            ..args("127.0.0.1:7000")
        };
        let cfg = NodeConfig::try_from(storage_only.clone()).unwrap();
        assert!(cfg.member.is_none());
        assert_eq!(cfg.storage.expect("storage").meta.len(), 2);

        let meta_only = NodeArgs {
            roles: Some("meta".into()),
            disk_capacity: None,
            ..args("127.0.0.1:7000")
        };
        let cfg = NodeConfig::try_from(meta_only).unwrap();
        assert!(cfg.member.is_some() && cfg.storage.is_none());

        for (bad, want) in [
            (
                NodeArgs {
                    meta: None,
                    ..storage_only.clone()
                },
                "needs --meta",
            ),
            (
                NodeArgs {
                    listen: Some("127.0.0.1:7000".into()),
                    ..storage_only.clone()
                },
                "--listen is a setting of the meta role",
            ),
            (
                NodeArgs {
                    roles: Some("meta".into()),
                    ..args("127.0.0.1:7000")
                },
                "--disk-capacity is a setting of the storage role",
            ),
            (
                NodeArgs {
                    roles: Some("storage,disk".into()),
                    ..storage_only.clone()
                },
                "unknown role \"disk\"",
            ),
            (
                NodeArgs {
                    roles: Some("meta,meta".into()),
                    ..args("127.0.0.1:7000")
                },
                "given twice",
            ),
            (
                NodeArgs {
                    meta: Some("nowhere".into()),
                    ..storage_only.clone()
                },
                "bad address",
            ),
            (
                NodeArgs {
                    bootstrap: true,
                    peers: Some(
                        (1..=9)
                            .map(|i| format!("{i}=127.0.0.1:{}", 7000 + i))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    ..args("127.0.0.1:7000")
                },
                "at most 7",
            ),
        ] {
            let e = NodeConfig::try_from(bad).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{e:#} lacks {want:?}");
        }
    }
}
