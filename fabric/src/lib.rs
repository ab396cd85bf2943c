//! Fabric's control plane and the `fabricd` daemon.
//!
//! - [`dev`]: `fabricd dev`, a local node serving volumes over NBD from one data directory.
//! - [`config`]: raw command-line input in, validated configuration out.
//! - [`meta`]: Raft-replicated cluster metadata (openraft + sled + tonic).
//! - [`node`]: `fabricd node`, one process with the roles it is given: a metadata member (a
//!   voter of the fixed Raft group) and/or a storage node.
//! - [`agent`]: a storage node's registration, heartbeats and probes.
//! - [`metrics`]: the Prometheus endpoint every process serves ([`metrics_listener`]: over
//!   mutual TLS off loopback).
//! - [`storage`]: a node's replica server and the agent that creates its volumes' replicas;
//!   [`replica_listener`]: its port over mutual TLS, for nodes and gateways only;
//!   [`replica_dial`]: how gateways and agents dial it; [`storage_keys`]: the cell keys its
//!   replica server checks attach capabilities against.
//! - [`gateway`]: `fabricd gateway`, the volume driver: NBD in front, replicas behind.
//! - [`identity`]: the cluster's certificate authority, certificates naming principals, and
//!   the mutual TLS 1.3 every TCP port takes.

pub mod agent;
pub mod audit;
pub mod config;
pub mod dev;
pub mod drift;
pub mod embed;
pub mod gateway;
pub mod hex;
pub mod identity;
pub mod join;
pub mod meta;
pub mod metrics;
pub mod metrics_listener;
pub mod node;
pub mod rebuild_agent;
pub mod renew;
pub mod replica_dial;
pub mod replica_listener;
pub mod scrub;
pub mod sim;
pub mod storage;
pub mod storage_keys;

/// Exit code for an environmental stop: the data directory is held by another process.
pub const EXIT_DATA_DIR_LOCKED: i32 = 3;
/// Exit code for invalid configuration.
pub const EXIT_BAD_CONFIG: i32 = 2;
/// Exit code for a member whose Raft log file is damaged where it was known synced: it would
/// serve without entries it acknowledged, so it does not start.
pub const EXIT_METADATA_LOG_CORRUPT: i32 = 4;
