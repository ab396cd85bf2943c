//! Fabric's gRPC protocol, generated from `proto/*.proto` at build time.
//!
//! - [`raft`]: the messages Raft members exchange (vote, append, snapshot chunks). Raft's own
//!   payloads travel as opaque serialized bytes, so this crate does not depend on openraft.
//! - [`meta`]: the metadata service that `fabricctl`, drivers and agents speak.
//!
//! These are wire types only. Domain types live in `fabric`; conversion happens at the gRPC
//! edge with `TryFrom`, which is also where bad input is refused.

/// Raft transport between metadata members.
pub mod raft {
    tonic::include_proto!("fabric.raft.v1");
}

/// The cluster metadata service.
pub mod meta {
    tonic::include_proto!("fabric.meta.v1");
}
