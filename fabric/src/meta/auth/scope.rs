//! Scopes a binding grants at, and the targets a call acts on. A binding at a scope covers
//! every target inside it: the cluster covers everything, a pool its volumes, a volume itself.

use std::fmt;

use super::verb::Level;

/// Where a binding applies.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Scope {
    Cluster,
    Pool(String),
    Volume(String),
}

/// What one call acts on. A volume target carries its pool, so that a binding at the pool
/// covers it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Cluster,
    Pool(String),
    Volume { pool: String, name: String },
}

impl Scope {
    /// Whether a binding at this scope applies to `target`.
    pub fn covers(&self, target: &Target) -> bool {
        match (self, target) {
            (Scope::Cluster, _) => true,
            (Scope::Pool(p), Target::Pool(q)) => p == q,
            (Scope::Pool(p), Target::Volume { pool, .. }) => p == pool,
            (Scope::Volume(v), Target::Volume { name, .. }) => v == name,
            _ => false,
        }
    }

    /// Whether this scope holds all of `inner` (a binding here reaches wherever one there
    /// does); `pool_of` names a volume's pool.
    pub fn contains(&self, inner: &Scope, pool_of: &dyn Fn(&str) -> Option<String>) -> bool {
        match (self, inner) {
            (Scope::Cluster, _) => true,
            (Scope::Pool(p), Scope::Pool(q)) => p == q,
            (Scope::Pool(p), Scope::Volume(v)) => pool_of(v).as_deref() == Some(p.as_str()),
            (Scope::Volume(v), Scope::Volume(w)) => v == w,
            _ => false,
        }
    }
}

impl Target {
    /// The level of the target, to be matched with a verb's.
    pub fn level(&self) -> Level {
        match self {
            Target::Cluster => Level::Cluster,
            Target::Pool(_) => Level::Pool,
            Target::Volume { .. } => Level::Volume,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Cluster => f.write_str("cluster"),
            Scope::Pool(p) => write!(f, "pool/{p}"),
            Scope::Volume(v) => write!(f, "volume/{v}"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Cluster => f.write_str("cluster"),
            Target::Pool(p) => write!(f, "pool/{p}"),
            Target::Volume { pool, name } => write!(f, "volume/{name} (pool/{pool})"),
        }
    }
}

/// A scope written as `cluster`, `pool/NAME` or `volume/NAME` that is none of them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("scope {0:?} is not cluster, pool/NAME or volume/NAME")]
pub struct BadScope(pub String);

impl std::str::FromStr for Scope {
    type Err = BadScope;

    fn from_str(s: &str) -> Result<Scope, BadScope> {
        let bad = || BadScope(s.to_owned());
        match s.split_once('/') {
            None if s == "cluster" => Ok(Scope::Cluster),
            Some(("pool", p)) if !p.is_empty() => Ok(Scope::Pool(p.to_owned())),
            Some(("volume", v)) if !v.is_empty() => Ok(Scope::Volume(v.to_owned())),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(pool: &str, name: &str) -> Target {
        Target::Volume {
            pool: pool.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_scope_covers_what_is_inside_it_and_nothing_else() {
        let a = Scope::Pool("a".into());
        assert!(Scope::Cluster.covers(&vol("b", "v")));
        assert!(a.covers(&Target::Pool("a".into())));
        assert!(a.covers(&vol("a", "v")));
        assert!(!a.covers(&vol("b", "v")));
        assert!(!a.covers(&Target::Cluster));
        assert!(Scope::Volume("v".into()).covers(&vol("a", "v")));
        assert!(!Scope::Volume("v".into()).covers(&Target::Pool("a".into())));
        assert!(!Scope::Volume("v".into()).covers(&vol("a", "w")));
    }

    #[test]
    fn scopes_parse_and_print_alike() {
        for s in ["cluster", "pool/a", "volume/vm1"] {
            assert_eq!(s.parse::<Scope>().unwrap().to_string(), s);
        }
        for s in ["", "pool/", "volume", "node/3", "clusters"] {
            assert!(s.parse::<Scope>().is_err(), "{s}");
        }
    }
}
