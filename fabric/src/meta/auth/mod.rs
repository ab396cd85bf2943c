//! Who may do what: local role-based access control with scopes, as pure data and decisions
//! (no IO). Principals are certificate identities (`fabric://CLUSTER/user/alice`); a
//! [`policy::Policy`] binds roles ([`role`], sets of [`verb::Verb`]s) to principals at a
//! [`scope::Scope`] (the cluster, a pool, a volume); every call names a verb and a target and is
//! checked before it runs, deny by default.
//!
//! The policy lives in the Raft state (`ClusterState::policy`, changed by `InitPolicy` and
//! `ChangePolicy` commands); the metadata service checks every call against it
//! (`meta/service/authz.rs`).

pub mod change;
pub mod policy;
pub mod role;
pub mod scope;
pub mod verb;

#[cfg(test)]
mod policy_test;

pub use change::PolicyChange;
pub use policy::{Binding, Denied, Policy, PolicyError};
pub use scope::{Scope, Target};
pub use verb::{Level, Verb};
