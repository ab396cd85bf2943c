//! Raw configuration in, validated configuration out.
//!
//! Command-line flags arrive as strings ([`DevArgs`]); [`DevConfig::try_from`] checks every
//! field once, so the rest of the daemon works with values that are known to be valid.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// IO engine of a node's disks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IoEngine {
    /// io_uring with O_DIRECT and registered buffers (falls back to `portable` if the kernel
    /// refuses io_uring).
    Uring,
    /// pread/pwrite on a thread pool.
    Portable,
}

/// Flags of `fabricd dev`, as typed.
#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Directory holding all of the local cluster's state.
    #[arg(long, default_value = "./.fabric-dev")]
    pub data_dir: PathBuf,
    /// TCP address the NBD server listens on.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd_listen: String,
    /// Also serve NBD on this Unix socket.
    #[arg(long)]
    pub nbd_unix: Option<PathBuf>,
    /// Volume to serve, NAME:SIZE (SIZE like 8GiB, 512MiB or bytes). Repeatable.
    #[arg(long = "volume", default_value = "vol0:8GiB")]
    pub volumes: Vec<String>,
    /// IO engine for the node's disk.
    #[arg(long, value_enum, default_value_t = IoEngine::Uring)]
    pub io_engine: IoEngine,
    /// Run a local cluster instead: N `fabricd node` storage processes (1 to 16), of which
    /// the first 3 (5 once N ≥ 5) are also the metadata group's voters, and a gateway serving
    /// the volumes, 3-way replicated across racks, over NBD.
    #[arg(long)]
    pub nodes: Option<u32>,
    /// With --nodes: how many nodes share a rack (the default pool needs 3 racks).
    #[arg(long, default_value_t = 1)]
    pub nodes_per_rack: u32,
    /// With --nodes: how many of the nodes are voters of the metadata group (odd; default 3,
    /// or 5 once N ≥ 5, and never more than N).
    #[arg(long)]
    pub voters: Option<u32>,
    /// Serve Prometheus metrics at http://IP:PORT/metrics (with --nodes: the gateway's; each
    /// node serves its own on a free port of the same IP, recorded in its node.json).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// With --nodes: guard destructive calls with the two-person rule, as a production
    /// cluster does (a second principal must approve them; `DATA_DIR/approver` holds one).
    /// Off by default: a dev cluster is one person's sandbox.
    #[arg(long)]
    pub two_person: bool,
    /// With --nodes: how the gateway's resyncs keep from hurting clients (see `fabricd
    /// gateway --resync-pace`).
    #[arg(long, value_enum, default_value_t = crate::gateway::ResyncPace::Governed)]
    pub resync_pace: crate::gateway::ResyncPace,
}

/// A volume to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    pub size_bytes: u64,
}

/// Validated configuration of `fabricd dev`.
#[derive(Clone, Debug)]
pub struct DevConfig {
    pub data_dir: PathBuf,
    pub nbd_listen: SocketAddr,
    pub nbd_unix: Option<PathBuf>,
    pub volumes: Vec<VolumeSpec>,
    pub io_engine: IoEngine,
    /// Nodes of the local cluster, if one runs.
    pub nodes: Option<u32>,
    pub nodes_per_rack: u32,
    /// Voters of the local cluster's metadata group.
    pub voters: u32,
    pub metrics_listen: Option<SocketAddr>,
    pub two_person: bool,
    pub resync_pace: crate::gateway::ResyncPace,
}

impl TryFrom<DevArgs> for DevConfig {
    type Error = anyhow::Error;

    fn try_from(args: DevArgs) -> anyhow::Result<Self> {
        // Destructured so that a new flag cannot be forgotten here.
        let DevArgs {
            data_dir,
            nbd_listen,
            nbd_unix,
            volumes,
            io_engine,
            nodes,
            nodes_per_rack,
            voters,
            metrics_listen,
            two_person,
            resync_pace,
        } = args;
        let metrics_listen = match metrics_listen {
            None => None,
            Some(a) => Some(
                a.parse::<SocketAddr>()
                    .map_err(|e| anyhow::anyhow!("--metrics-listen {a:?}: {e} (want IP:PORT)"))?,
            ),
        };
        if nodes_per_rack == 0 {
            anyhow::bail!("--nodes-per-rack must not be zero");
        }
        if nodes.is_none() && (voters.is_some() || nodes_per_rack != 1) {
            anyhow::bail!("--voters and --nodes-per-rack shape a cluster: give --nodes too");
        }
        if nodes.is_none() && two_person {
            anyhow::bail!("--two-person guards a cluster's calls: give --nodes too");
        }
        let mut voter_count = 1;
        if let Some(n) = nodes {
            let max = crate::meta::launch::DEV_NODES_MAX;
            if n == 0 || n > max {
                anyhow::bail!("--nodes {n}: want 1 to {max}");
            }
            if n >= 3 && n.div_ceil(nodes_per_rack) < 3 {
                anyhow::bail!(
                    "--nodes {n} with --nodes-per-rack {nodes_per_rack} makes fewer than the 3 \
                     racks the default pool places its replicas in"
                );
            }
            voter_count = voters.unwrap_or(crate::meta::launch::dev_voters(n));
            if voter_count == 0
                || voter_count > n
                || voter_count.is_multiple_of(2) && voter_count != n
            {
                anyhow::bail!(
                    "--voters {voter_count}: want an odd number of voters from 1 to --nodes ({n})"
                );
            }
            if nbd_unix.is_some() {
                anyhow::bail!("--nbd-unix is served by the single node only, not with --nodes");
            }
            if io_engine != IoEngine::Uring {
                anyhow::bail!("--io-engine is for the single node; cluster nodes use io_uring");
            }
        }
        let nbd_listen: SocketAddr = nbd_listen
            .parse()
            .map_err(|e| anyhow::anyhow!("--nbd-listen {nbd_listen:?}: {e} (want IP:PORT)"))?;
        let mut specs: Vec<VolumeSpec> = Vec::new();
        for v in &volumes {
            let spec = parse_volume(v)?;
            if specs.iter().any(|s| s.name == spec.name) {
                anyhow::bail!("--volume {v:?}: volume {} is given twice", spec.name);
            }
            specs.push(spec);
        }
        Ok(DevConfig {
            data_dir,
            nbd_listen,
            nbd_unix,
            volumes: specs,
            io_engine,
            nodes,
            nodes_per_rack,
            voters: voter_count,
            metrics_listen,
            two_person,
            resync_pace,
        })
    }
}

/// A listening socket of a node: where it binds, and what others dial to reach it.
///
/// The address a node registers in the cluster metadata (for other members, gateways and
/// tools to dial) is the advertised one. By default that is the bound address; a wildcard bind
/// (`0.0.0.0`, `::`) names no address anyone can dial, so it needs an explicit advertise
/// address. An advertised port of 0 stands for the port actually bound, so a node can bind
/// port 0 on every interface and advertise one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub bind: SocketAddr,
    advertise: Option<SocketAddr>,
}

impl Endpoint {
    /// Validates a bind address given with `bind_flag` and an advertise address given with
    /// `advertise_flag` (flag names are for the error messages).
    pub fn parse(
        bind_flag: &str,
        bind: &str,
        advertise_flag: &str,
        advertise: Option<&str>,
    ) -> anyhow::Result<Endpoint> {
        let bind_addr: SocketAddr = bind
            .parse()
            .map_err(|e| anyhow::anyhow!("{bind_flag} {bind:?}: {e} (want IP:PORT)"))?;
        let advertise = match advertise {
            None => None,
            Some(a) => {
                let addr: SocketAddr = a.parse().map_err(|e| {
                    anyhow::anyhow!(
                        "{advertise_flag} {a:?}: {e} (want IP:PORT, port 0 for the bound port)"
                    )
                })?;
                if addr.ip().is_unspecified() {
                    anyhow::bail!(
                        "{advertise_flag} {a:?}: a wildcard address cannot be dialed; give the address other nodes reach this one at"
                    );
                }
                Some(addr)
            }
        };
        if bind_addr.ip().is_unspecified() && advertise.is_none() {
            anyhow::bail!(
                "{bind_flag} {bind:?} binds every interface, which other nodes cannot dial: give {advertise_flag} IP:PORT, the address they reach this node at"
            );
        }
        Ok(Endpoint {
            bind: bind_addr,
            advertise,
        })
    }

    /// What others dial, once the socket is bound to `bound`.
    pub fn advertised(&self, bound: SocketAddr) -> SocketAddr {
        match self.advertise {
            None => bound,
            Some(a) if a.port() == 0 => SocketAddr::new(a.ip(), bound.port()),
            Some(a) => a,
        }
    }
}

/// An address the node itself can dial to reach its socket bound to `bound`: the bound
/// address, with a wildcard IP replaced by loopback (an advertised address may be one that
/// only other hosts can reach, such as a NAT's).
pub fn local_dial(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bound.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), bound.port())
        }
        _ => bound,
    }
}

/// Parses `NAME:SIZE`.
pub fn parse_volume(s: &str) -> anyhow::Result<VolumeSpec> {
    let (name, size) = s
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("--volume {s:?}: want NAME:SIZE, e.g. vol0:8GiB"))?;
    volume::store::validate_name(name).map_err(|e| anyhow::anyhow!("--volume {s:?}: {e}"))?;
    let size_bytes = parse_size::Config::new()
        .with_binary()
        .parse_size(size)
        .map_err(|e| anyhow::anyhow!("--volume {s:?}: size {size:?}: {e}"))?;
    let block = volume::store::BLOCK_SIZE_BYTES;
    if size_bytes == 0 || size_bytes % block != 0 {
        anyhow::bail!("--volume {s:?}: size must be a non-zero multiple of {block} bytes");
    }
    Ok(VolumeSpec {
        name: name.to_string(),
        size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_specs_parse_binary_units_and_reject_nonsense() {
        assert_eq!(parse_volume("vol0:8GiB").unwrap().size_bytes, 8 << 30);
        assert_eq!(parse_volume("a:1M").unwrap().size_bytes, 1 << 20);
        assert_eq!(parse_volume("a:4096").unwrap().size_bytes, 4096);
        for bad in [
            "vol0", "vol0:", ":1GiB", "a/b:1GiB", "a:0", "a:1000", "a:lots",
        ] {
            assert!(parse_volume(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn a_wildcard_bind_needs_an_advertise_address() {
        for bind in ["0.0.0.0:7000", "[::]:7000"] {
            let e = Endpoint::parse("--listen", bind, "--advertise-rpc", None).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains("--advertise-rpc"), "{msg}");
            assert!(msg.contains("binds every interface"), "{msg}");
        }
        let ep = Endpoint::parse(
            "--listen",
            "0.0.0.0:7000",
            "--advertise-rpc",
            Some("10.1.2.3:7000"),
        )
        .unwrap();
        let bound: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        assert_eq!(ep.advertised(bound), "10.1.2.3:7000".parse().unwrap());
        assert_eq!(local_dial(bound), "127.0.0.1:7000".parse().unwrap());
        let v6: SocketAddr = "[::]:7000".parse().unwrap();
        assert_eq!(local_dial(v6), "[::1]:7000".parse().unwrap());
    }

    #[test]
    fn the_advertised_address_defaults_to_the_bound_one_and_port_0_follows_the_bind() {
        let ep = Endpoint::parse("--data-addr", "127.0.0.1:0", "--advertise-data", None).unwrap();
        let bound: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        assert_eq!(ep.advertised(bound), bound, "the bound port, not 0");
        assert_eq!(local_dial(bound), bound);
        let ep = Endpoint::parse(
            "--data-addr",
            "0.0.0.0:0",
            "--advertise-data",
            Some("10.1.2.3:0"),
        )
        .unwrap();
        assert_eq!(
            ep.advertised("0.0.0.0:41234".parse().unwrap()),
            "10.1.2.3:41234".parse().unwrap()
        );
        // An explicit port is kept as given (a forwarded port, say).
        let ep = Endpoint::parse(
            "--data-addr",
            "0.0.0.0:0",
            "--advertise-data",
            Some("10.1.2.3:9000"),
        )
        .unwrap();
        assert_eq!(
            ep.advertised("0.0.0.0:41234".parse().unwrap()),
            "10.1.2.3:9000".parse().unwrap()
        );
    }

    #[test]
    fn bad_bind_and_advertise_addresses_are_refused() {
        for (bind, advertise, reason) in [
            ("localhost:7000", None, "want IP:PORT"),
            ("127.0.0.1:7000", Some("somewhere"), "want IP:PORT"),
            ("0.0.0.0:7000", Some("0.0.0.0:7000"), "cannot be dialed"),
            ("0.0.0.0:7000", Some("[::]:7000"), "cannot be dialed"),
        ] {
            let e = Endpoint::parse("--listen", bind, "--advertise-rpc", advertise).unwrap_err();
            assert!(
                format!("{e:#}").contains(reason),
                "{bind} {advertise:?}: {e:#}"
            );
        }
    }
}
