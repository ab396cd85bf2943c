//! Shared helpers of the tools binaries.

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod drift;
pub mod group;
pub mod identity;
pub mod infer;
pub mod join_token;
pub mod movement;
pub mod nbd_probe;
pub mod prometheus;
pub mod qos;
pub mod reply;
pub mod residency;
pub mod rotation;
pub mod scrub;
pub mod volume_map;
