//! The trust bundle in the replicated state: the root CAs every member, node and gateway
//! trusts (see `identity::trust_bundle`). Empty until an operator first changes it: until
//! then each process trusts the roots of its own `ca.pem`.
//!
//! A change names the whole new bundle, so an approval binds to exactly the roots that will
//! be trusted; it is refused if it would leave no root or repeat one. Whether a retired root
//! still issues a node's certificate is checked by the leader before the change is written
//! (it alone hears the nodes' reports): the state cannot know.

use super::command::{Applied, CommandError, Outcome};
use super::state::ClusterState;
use crate::identity::trust_bundle::{Root, TRUST_ROOTS_MAX, parse_root};

/// The target an approval of a trust change is bound to.
pub const TRUST_TARGET: &str = "trust";

impl ClusterState {
    /// The bundle's roots, parsed (a root that does not parse was never admitted).
    pub fn trust_roots(&self) -> Vec<Root> {
        self.trust_roots
            .iter()
            .filter_map(|pem| parse_root(pem).ok())
            .collect()
    }

    pub(super) fn set_trust_roots(&mut self, roots: &[String]) -> Outcome {
        if roots.is_empty() {
            return Err(CommandError::FailedPrecondition(
                "a trust bundle of no root would make every certificate untrusted".into(),
            ));
        }
        if roots.len() > TRUST_ROOTS_MAX {
            return Err(CommandError::FailedPrecondition(format!(
                "a trust bundle holds at most {TRUST_ROOTS_MAX} roots; retire one first"
            )));
        }
        let mut pins = Vec::new();
        for pem in roots {
            let root = parse_root(pem)
                .map_err(|e| CommandError::InvalidArgument(format!("a trust root: {e}")))?;
            if pins.contains(&root.pin) {
                return Err(CommandError::InvalidArgument(format!(
                    "root {} is in the bundle twice",
                    root.pin
                )));
            }
            pins.push(root.pin);
        }
        self.trust_roots = roots.to_vec();
        Ok(Applied::Nothing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ClusterName;
    use crate::identity::ca::{self, CertificateAuthority};

    fn root_pem(dir: &std::path::Path) -> String {
        let cluster = ClusterName::new("prod").unwrap();
        ca::init(dir, &cluster, time::OffsetDateTime::now_utc()).unwrap();
        CertificateAuthority::open(dir)
            .unwrap()
            .root_pem()
            .to_owned()
    }

    #[test]
    fn a_bundle_holds_distinct_roots_and_never_none() {
        let tmp = tempfile::tempdir().unwrap();
        let a = root_pem(&tmp.path().join("a"));
        let b = root_pem(&tmp.path().join("b"));
        let mut s = ClusterState::default();
        assert!(s.trust_roots().is_empty());
        s.set_trust_roots(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(s.trust_roots().len(), 2);
        let before = s.clone();
        assert!(matches!(
            s.set_trust_roots(&[]),
            Err(CommandError::FailedPrecondition(_))
        ));
        assert!(matches!(
            s.set_trust_roots(&[a.clone(), a.clone()]),
            Err(CommandError::InvalidArgument(_))
        ));
        assert!(s.set_trust_roots(&["not a certificate".into()]).is_err());
        assert_eq!(s, before, "a refused change changes nothing");
        s.set_trust_roots(std::slice::from_ref(&b)).unwrap();
        assert_eq!(s.trust_roots()[0].pem.trim(), b.trim());
    }
}
