//! The audit log: every mutating call and every refused call, as an entry of an append-only
//! Merkle tree (RFC 6962) kept in the replicated state, written in the same Raft entry as the
//! change it records, and refused with it when it cannot be written.
//!
//! [`merkle`] is the tree, [`entry`] one entry and its canonical text, [`checkpoint`] the
//! signed tree heads (cell key, and witnesses), [`log`] the log as the state holds it, and
//! [`verify`] the offline check of an export.

pub mod checkpoint;
pub mod entry;
pub mod log;
pub mod merkle;
pub mod residency;
pub mod verify;
