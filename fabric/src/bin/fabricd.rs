//! `fabricd`: the Fabric daemon.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fabric::config::{DevArgs, DevConfig};
use fabric::dev::DevError;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "fabricd", version, about = "Fabric storage daemon")]
struct Cli {
    /// Threads running network, request and io_uring completion tasks (default: one less than
    /// the CPUs, at least one).
    #[arg(long, global = true)]
    worker_threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

/// Builds the runtime. The default leaves a core to the kernel's own IO work (interrupts,
/// io_uring's async workers) and to the processes beside the daemon.
fn runtime(worker_threads: Option<usize>) -> tokio::runtime::Runtime {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = worker_threads.unwrap_or(cpus.saturating_sub(1)).max(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("start tokio runtime")
}

#[derive(Subcommand)]
enum Command {
    /// Run a local node that serves volumes over NBD.
    Dev(DevArgs),
    /// Run one node: a metadata member (Raft over gRPC) and, with --data-addr, a replica
    /// server; from a TOML file and/or flags.
    Node(Box<fabric::node::NodeArgs>),
    /// Run the volume driver: attach volumes and serve them over NBD from their replicas.
    Gateway(fabric::gateway::GatewayArgs),
}

fn main() -> ExitCode {
    fabric::identity::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FABRIC_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Node(args) => run_node(*args, cli.worker_threads),
        Command::Gateway(args) => {
            match runtime(cli.worker_threads).block_on(fabric::gateway::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dev(args) => {
            let config = match DevConfig::try_from(args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("fabricd dev: {e:#}");
                    return ExitCode::from(fabric::EXIT_BAD_CONFIG as u8);
                }
            };
            match runtime(cli.worker_threads).block_on(fabric::dev::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(DevError::DataDirLocked(e)) => {
                    tracing::error!("{e}");
                    ExitCode::from(fabric::EXIT_DATA_DIR_LOCKED as u8)
                }
                Err(DevError::Other(e)) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_node(args: fabric::node::NodeArgs, worker_threads: Option<usize>) -> ExitCode {
    use fabric::node::NodeError;
    let config = match fabric::node::NodeConfig::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fabricd node: {e:#}");
            return ExitCode::from(fabric::EXIT_BAD_CONFIG as u8);
        }
    };
    match runtime(worker_threads).block_on(fabric::node::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ NodeError::DataDirLocked(_)) => {
            tracing::error!("{e}");
            ExitCode::from(fabric::EXIT_DATA_DIR_LOCKED as u8)
        }
        Err(e @ NodeError::MetadataLogCorrupt { .. }) => {
            // Printed whatever FABRIC_LOG filters: the operator has to act on it.
            eprintln!("fabricd node: {e}");
            ExitCode::from(fabric::EXIT_METADATA_LOG_CORRUPT as u8)
        }
        Err(NodeError::Other(e)) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
