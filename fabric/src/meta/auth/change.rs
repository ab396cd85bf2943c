//! A change of the policy as the Raft log carries it: who asks, and what. Applying it runs the
//! policy's own checks (no escalation, known roles, valid principals), so every member
//! accepts or refuses the same change alike.

use super::policy::{Binding, Policy, PolicyError};

/// One change of the policy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PolicyChange {
    Bind(Binding),
    Unbind(Binding),
    DefineRole { name: String, verbs: Vec<String> },
    RemoveRole(String),
}

impl Policy {
    /// Applies `change` on behalf of `by`; false when it changed nothing (bound already, not
    /// bound, the same definition).
    pub fn apply_change(
        &mut self,
        by: &str,
        change: &PolicyChange,
        pool_of: &dyn Fn(&str) -> Option<String>,
    ) -> Result<bool, PolicyError> {
        match change {
            PolicyChange::Bind(b) => self.bind(by, b.clone(), pool_of),
            PolicyChange::Unbind(b) => self.unbind(by, b),
            PolicyChange::DefineRole { name, verbs } => {
                let before = self.epoch;
                self.define_role(by, name, verbs)?;
                Ok(self.epoch != before)
            }
            PolicyChange::RemoveRole(name) => self.remove_role(by, name),
        }
    }
}

impl std::fmt::Display for PolicyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyChange::Bind(b) => write!(f, "bind {b}"),
            PolicyChange::Unbind(b) => write!(f, "unbind {b}"),
            PolicyChange::DefineRole { name, verbs } => {
                write!(f, "define role {name} as {}", verbs.join(","))
            }
            PolicyChange::RemoveRole(name) => write!(f, "remove role {name}"),
        }
    }
}
