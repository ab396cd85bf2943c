//! The policy: custom roles and bindings (principal, role, scope), deny by default. A call is
//! allowed when some binding of its caller has a role listing the verb at a scope covering the
//! target; the refusal otherwise names the verb and the target, so that the caller knows what
//! to ask for. Every change bumps the policy epoch, by which open sessions learn that what
//! they were allowed may have changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::role;
use super::scope::{Scope, Target};
use super::verb::Verb;

/// One grant: `principal` holds `role` at `scope`.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Binding {
    /// A certificate identity, `fabric://CLUSTER/KIND/NAME`.
    pub principal: String,
    pub role: String,
    pub scope: Scope,
}

/// Custom roles and every binding.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// Custom roles: name → verb names.
    pub roles: BTreeMap<String, BTreeSet<String>>,
    pub bindings: BTreeSet<Binding>,
    /// Bumped by every change.
    pub epoch: u64,
}

/// Why a call was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "{principal} may not {verb} on {target}: no binding grants {verb} at a scope covering it"
    )]
    NoBinding {
        principal: String,
        verb: Verb,
        target: String,
    },
    #[error("a caller without a certificate may not {verb}")]
    NoCertificate { verb: Verb },
    #[error("{verb} acts on a {expected:?}-level target, not on {target}")]
    WrongTarget {
        verb: Verb,
        expected: super::verb::Level,
        target: String,
    },
}

/// Why a change of the policy was refused; the policy is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("no role named {0:?}")]
    UnknownRole(String),
    #[error(
        "{0:?} is not a principal (fabric://CLUSTER/node/ID, .../gateway/NAME or .../user/NAME)"
    )]
    BadPrincipal(String),
    #[error("{by} may not bind {role} at {scope}: it does not hold {verb} there itself")]
    Escalation {
        by: String,
        role: String,
        scope: Scope,
        verb: Verb,
    },
    #[error("role {0:?} is built in and cannot be redefined")]
    BuiltIn(String),
    #[error("role name {0:?} must be 1 to 64 lowercase letters, digits or '-'")]
    BadRoleName(String),
    #[error(transparent)]
    UnknownVerb(#[from] super::verb::UnknownVerb),
    #[error("role {role:?} is bound ({binding}); unbind it first")]
    RoleInUse { role: String, binding: String },
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as {} at {}", self.principal, self.role, self.scope)
    }
}

impl Policy {
    /// A policy whose one binding makes `admin` cluster-admin: what a new cluster starts with.
    pub fn bootstrap(admin: &str) -> Result<Policy, PolicyError> {
        check_principal(admin)?;
        let mut policy = Policy::default();
        policy.bindings.insert(Binding {
            principal: admin.to_owned(),
            role: "cluster-admin".into(),
            scope: Scope::Cluster,
        });
        policy.epoch = 1;
        Ok(policy)
    }

    /// The verbs of `role`, built in or custom.
    pub fn role_verbs(&self, role: &str) -> Option<BTreeSet<Verb>> {
        role::built_in(role).or_else(|| {
            let names = self.roles.get(role)?;
            Some(names.iter().filter_map(|n| n.parse().ok()).collect())
        })
    }

    /// The binding that allows `principal` to `verb` on `target`, or why none does.
    pub fn check(&self, principal: &str, verb: Verb, target: &Target) -> Result<&Binding, Denied> {
        if verb.level() != target.level() {
            return Err(Denied::WrongTarget {
                verb,
                expected: verb.level(),
                target: target.to_string(),
            });
        }
        self.bindings
            .iter()
            .filter(|b| b.principal == principal && b.scope.covers(target))
            .find(|b| self.role_verbs(&b.role).is_some_and(|v| v.contains(&verb)))
            .ok_or_else(|| Denied::NoBinding {
                principal: principal.to_owned(),
                verb,
                target: target.to_string(),
            })
    }

    /// Whether `principal` holds `verb` everywhere inside `scope`.
    pub fn holds(
        &self,
        principal: &str,
        verb: Verb,
        scope: &Scope,
        pool_of: &dyn Fn(&str) -> Option<String>,
    ) -> bool {
        self.bindings.iter().any(|b| {
            b.principal == principal
                && b.scope.contains(scope, pool_of)
                && self.role_verbs(&b.role).is_some_and(|v| v.contains(&verb))
        })
    }

    /// Adds `binding` on behalf of `by`, who must hold `auth.bind` and, so that nobody grants
    /// more than they have, every verb of the role at a scope holding the binding's. Binding
    /// what is bound already changes nothing (and returns false).
    pub fn bind(
        &mut self,
        by: &str,
        binding: Binding,
        pool_of: &dyn Fn(&str) -> Option<String>,
    ) -> Result<bool, PolicyError> {
        check_principal(&binding.principal)?;
        let verbs = self
            .role_verbs(&binding.role)
            .ok_or_else(|| PolicyError::UnknownRole(binding.role.clone()))?;
        let needed = std::iter::once(Verb::AuthBind).chain(verbs);
        for verb in needed {
            let scope = if verb == Verb::AuthBind {
                Scope::Cluster
            } else {
                binding.scope.clone()
            };
            if !self.holds(by, verb, &scope, pool_of) {
                return Err(PolicyError::Escalation {
                    by: by.to_owned(),
                    role: binding.role,
                    scope: binding.scope,
                    verb,
                });
            }
        }
        if !self.bindings.insert(binding) {
            return Ok(false);
        }
        self.epoch += 1;
        Ok(true)
    }

    /// Removes `binding` on behalf of `by`, who must hold `auth.bind`. Removing what is not
    /// bound changes nothing (and returns false).
    pub fn unbind(&mut self, by: &str, binding: &Binding) -> Result<bool, PolicyError> {
        if !self.holds(by, Verb::AuthBind, &Scope::Cluster, &|_| None) {
            return Err(PolicyError::Escalation {
                by: by.to_owned(),
                role: binding.role.clone(),
                scope: binding.scope.clone(),
                verb: Verb::AuthBind,
            });
        }
        if !self.bindings.remove(binding) {
            return Ok(false);
        }
        self.epoch += 1;
        Ok(true)
    }

    /// Defines (or redefines) custom role `name` as `verbs`; `by` must hold `auth.bind` and
    /// every verb it lists, across the cluster.
    pub fn define_role(
        &mut self,
        by: &str,
        name: &str,
        verbs: &[String],
    ) -> Result<(), PolicyError> {
        if role::built_in(name).is_some() {
            return Err(PolicyError::BuiltIn(name.to_owned()));
        }
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(PolicyError::BadRoleName(name.to_owned()));
        }
        let parsed: Vec<Verb> = verbs
            .iter()
            .map(|v| v.parse::<Verb>())
            .collect::<Result<_, _>>()?;
        for verb in std::iter::once(Verb::AuthBind).chain(parsed.iter().copied()) {
            if !self.holds(by, verb, &Scope::Cluster, &|_| None) {
                return Err(PolicyError::Escalation {
                    by: by.to_owned(),
                    role: name.to_owned(),
                    scope: Scope::Cluster,
                    verb,
                });
            }
        }
        let names = parsed.iter().map(|v| v.name().to_owned()).collect();
        if self.roles.get(name) != Some(&names) {
            self.roles.insert(name.to_owned(), names);
            self.epoch += 1;
        }
        Ok(())
    }

    /// Removes custom role `name`, which no binding may use.
    pub fn remove_role(&mut self, by: &str, name: &str) -> Result<bool, PolicyError> {
        if role::built_in(name).is_some() {
            return Err(PolicyError::BuiltIn(name.to_owned()));
        }
        if !self.holds(by, Verb::AuthBind, &Scope::Cluster, &|_| None) {
            return Err(PolicyError::Escalation {
                by: by.to_owned(),
                role: name.to_owned(),
                scope: Scope::Cluster,
                verb: Verb::AuthBind,
            });
        }
        if let Some(b) = self.bindings.iter().find(|b| b.role == name) {
            return Err(PolicyError::RoleInUse {
                role: name.to_owned(),
                binding: b.to_string(),
            });
        }
        let removed = self.roles.remove(name).is_some();
        self.epoch += u64::from(removed);
        Ok(removed)
    }
}

/// A principal is `fabric://CLUSTER/KIND/NAME` with KIND node, gateway or user.
fn check_principal(p: &str) -> Result<(), PolicyError> {
    let bad = || PolicyError::BadPrincipal(p.to_owned());
    let rest = p.strip_prefix("fabric://").ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [cluster, "node" | "gateway" | "user", name]
            if !cluster.is_empty() && !name.is_empty() && name.len() <= 128 =>
        {
            Ok(())
        }
        _ => Err(bad()),
    }
}
