//! Identity: the cluster's own certificate authority, the certificates it signs, and the mutual
//! TLS that proves who is on the other end of a connection.
//!
//! Start at [`principal`] (what an identity is: `fabric://CLUSTER/node/3`), then [`ca`] and
//! [`issue`] (`fabricctl ca init` and `fabricctl cert issue`), [`load`] (a process's own
//! certificate directory), [`tls`] (rustls configurations with swappable certificates and
//! trust) and [`handshake`] (one authenticated connection and its peer's principal).
//!
//! Architecture invariants: a certificate says who its holder is and nothing more; what a
//! principal may do is decided elsewhere, never written into certificates. Every TLS
//! configuration is built from [`tls::provider`], the one crypto provider. Private keys are
//! written with mode 0600 from the moment their file exists, and a CA's keys are never
//! overwritten.
//! [`transport`] is what a process secures its connections with, [`dev_pki`] the
//! certificates a `fabricd dev` cluster makes for itself, and [`join`] how a new node gets its
//! certificate with a one-time token. [`trust_bundle`] is the set of root CAs the cluster keeps
//! in Raft and every process writes to its `ca.pem` (how a root CA is replaced).

pub mod ca;
pub mod cell_cert;
pub mod dev_pki;
pub mod error;
mod files;
pub mod handshake;
pub mod issue;
pub mod join;
pub mod load;
pub mod principal;
pub mod revocation;
pub mod rotation;
pub mod tls;
pub mod transport;
pub mod trust_bundle;

#[cfg(test)]
mod handshake_tests;

pub use error::IdentityError;
pub use load::Identity;
pub use principal::{ClusterName, Principal, PrincipalError, PrincipalKind};
pub use transport::{ClusterTls, Transport};
