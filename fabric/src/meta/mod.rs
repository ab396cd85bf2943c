//! Raft-replicated cluster metadata: nodes, pools, volumes, PG maps and fencing epochs.
//!
//! Start with [`command`] (the one versioned enum of changes) and [`state`] (the pure,
//! deterministic apply). Around that core:
//!
//! - [`model`]: domain types; [`query`]: reads of the state; [`pgmap`]: the placement seam;
//!   [`changes`]: which records recent commands changed, for `Watch` deltas.
//! - [`types`]: the openraft type configuration.
//! - [`store`]: the log in its own file and the vote in sled (both fsynced), the state machine
//!   with durable snapshots.
//! - [`net`]: Raft over gRPC (cached channel per peer, chunked snapshots, leader forwarding).
//! - [`member`]: a running member, where writes and linearizable reads enter.
//! - [`service`]: the metadata gRPC service, with wire ↔ domain conversion at its edge.
//! - [`server`]: starting a member: storage, Raft, gRPC server, bootstrap, registration.
//! - [`client`]: the client `fabricctl`, the dev launcher and the benchmark use; [`watcher`]:
//!   following `Watch` from the client side.
//! - [`launch`]: `fabricd dev --nodes N`, a local group of child processes.
//!
//! Architecture invariant: prost types never cross into [`state`], [`command`] or [`model`].

pub mod audit_tail;
pub mod auth;
pub mod balance;
pub mod cell_key;
pub mod changes;
pub mod client;
pub mod clock;
pub mod command;
pub mod detector;
pub mod drift;
pub mod handover;
pub mod infer;
pub mod launch;
pub mod liveness;
pub mod member;
pub mod model;
pub mod net;
pub mod pgmap;
pub mod query;
pub mod refusals;
pub mod server;
pub mod service;
pub mod snapshots;
pub mod state;
pub mod state_approval;
pub mod state_audit;
pub mod state_join;
#[cfg(test)]
mod state_placement_test;
mod state_policy;
#[cfg(test)]
mod state_prop_test;
pub mod state_qos;
pub mod state_residency;
#[cfg(test)]
mod state_residency_test;
pub mod state_revoked;
pub mod state_scrub;
#[cfg(test)]
mod state_sim_test;
pub mod state_trust;
pub mod store;
pub mod trust_follow;
pub mod types;
pub mod watcher;
