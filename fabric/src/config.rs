//! Raw configuration in, validated configuration out.
//!
//! Command-line flags arrive as strings ([`DevArgs`]); [`DevConfig::try_from`] checks every
//! field once, so the rest of the daemon works with values that are known to be valid.

use std::net::SocketAddr;
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
    /// Run a local cluster instead: N `fabricd node` processes (storage and metadata, one rack
    /// each; 1 to 7) and a gateway serving the volumes, 3-way replicated, over NBD.
    #[arg(long)]
    pub nodes: Option<u32>,
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
    /// Size of the local metadata group, if one runs.
    pub nodes: Option<u32>,
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
        } = args;
        if let Some(n) = nodes {
            let max = crate::meta::launch::DEV_NODES_MAX;
            if n == 0 || n > max {
                anyhow::bail!("--nodes {n}: want 1 to {max}");
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
        })
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
}
