//! A seeded whole-cluster simulation in one process: real replica servers on simulated disks,
//! real volume drivers, the real cluster state machine behind a simulated metadata service,
//! and a simulated network, all on one current-thread runtime with paused time.
//!
//! Every source of nondeterminism the code under test has goes through a seam that the
//! simulation fills: disks ([`volume::io::sim::SimDisk`]), the network
//! ([`net::SimNet`] behind the volume client's `Connector` and the replica server's
//! `serve_connection`), the clock (tokio's, paused: time advances only when every task
//! waits), the metadata service ([`meta::SimMeta`]). One seed picks the cluster's size, the
//! workload and the fault schedule.
//!
//! Code map: [`world`] runs one seed (start there); [`node`] is a storage node that crashes
//! and restarts; [`client`] a driver with its gateway duties; [`check`] what a read may
//! return; [`net`] and [`meta`] the simulated network and metadata service.

pub mod check;
pub mod client;
pub mod meta;
pub mod net;
pub mod node;
pub mod signal;
pub mod world;

pub use world::{SimOptions, SimReport, run_seed, simulated_elapsed};
