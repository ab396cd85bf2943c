//! The leader's side of drift detection: what each node last reported about itself (kept in
//! memory, off the Raft log, like liveness) against its desired state in the replicated state.
//!
//! The desired state of a node is its first report (`SetDriftBaseline`; an item a node
//! reports for the first time is added to it); an item that differs from it afterwards is
//! drift. Two items are judged by a rule instead: the certificate (`tls`) must be valid for
//! more than `TLS_EXPIRY_WARNING_DAYS`, not revoked, and, while the cluster keeps a trust
//! bundle, issued under its newest root; the trusted roots (`trust`) must be the bundle's.
//! Drift is listed by `fabricctl drift` with its class
//! (`crate::drift::DriftClass`). An auto-repair item is sent back to the node as a repair in
//! every heartbeat reply until its report matches again. An operator's exception (node, item,
//! until a time) silences an item: it is listed as excepted and not repaired. A node's first
//! drift of an item and its end are written to the audit log by the caller.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::command::{Applied, CommandError, Outcome};
use super::model::NodeId;
use super::state::ClusterState;
use crate::drift::{DriftClass, ITEM_TLS, ITEM_TRUST, TLS_EXPIRY_WARNING_DAYS, TlsReport};
use crate::identity::trust_bundle::Root;

/// Most items one report may carry, and longest item value kept.
pub const ITEMS_MAX: usize = 32;
const VALUE_BYTES_MAX: usize = 256;

/// An operator's exception: item `item` of node `node` may differ until `until_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftException {
    pub node: NodeId,
    pub item: String,
    pub until_ms: u64,
    pub reason: String,
    pub by: String,
}

/// One drifted item, as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drifted {
    pub node: NodeId,
    pub item: String,
    pub class: DriftClass,
    pub desired: String,
    pub reported: String,
    pub since_ms: u64,
    /// Set when an exception covers it.
    pub excepted_until_ms: Option<u64>,
}

/// What the leader answers a node's report with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The digest the leader holds for the node: if it is not the node's, the node sends its
    /// items with its next heartbeat.
    pub known: String,
    /// Items the node is to put back.
    pub repair: Vec<String>,
    /// The node has no desired state yet: these items become it.
    pub baseline: Option<BTreeMap<String, String>>,
    /// Items that began (or ended) to differ with this report.
    pub detected: Vec<String>,
    pub cleared: Vec<String>,
}

#[derive(Default)]
struct NodeReport {
    digest: String,
    items: BTreeMap<String, String>,
    /// Differing items and when they were first seen differing.
    since: BTreeMap<String, u64>,
}

/// The latest report of every node, on the leader.
#[derive(Default)]
pub struct DriftTable {
    nodes: Mutex<BTreeMap<NodeId, NodeReport>>,
}

fn excepted(state: &ClusterState, node: NodeId, item: &str, now_ms: u64) -> Option<u64> {
    state
        .drift_exceptions
        .get(&format!("{node}/{item}"))
        .filter(|e| e.until_ms > now_ms)
        .map(|e| e.until_ms)
}

/// Whether `reported` is what is desired of `item`; if not, what is (as listed). `tls` and
/// `trust` follow their rules (against the revocations in `state` and its trust bundle,
/// `bundle`, parsed once by the caller), every other item the node's desired state.
fn judge(
    state: &ClusterState,
    bundle: &[Root],
    desired: &BTreeMap<String, String>,
    item: &str,
    reported: &str,
    now_ms: u64,
) -> Result<(), String> {
    match item {
        ITEM_TLS => {
            let wanted = match bundle.last() {
                Some(root) => format!(
                    "a valid certificate, not revoked, issued under root {}, expiring after \
                     {TLS_EXPIRY_WARNING_DAYS} days",
                    root.pin
                ),
                None => format!(
                    "a valid certificate, not revoked, expiring after {TLS_EXPIRY_WARNING_DAYS} \
                     days"
                ),
            };
            let tls: TlsReport = reported.parse().map_err(|_| wanted.clone())?;
            let left_ms = tls.expires.unix_timestamp().saturating_mul(1000) - now_ms as i64;
            let fine = left_ms > TLS_EXPIRY_WARNING_DAYS * 86_400_000
                && !state.revoked.contains_key(&tls.serial)
                && bundle.last().is_none_or(|root| root.pin == tls.issuer);
            if fine { Ok(()) } else { Err(wanted) }
        }
        ITEM_TRUST if !bundle.is_empty() => {
            let pins: Vec<&str> = bundle.iter().map(|r| r.pin.as_str()).collect();
            let wanted = pins.join(",");
            if reported == wanted {
                Ok(())
            } else {
                Err(wanted)
            }
        }
        _ => match desired.get(item) {
            Some(d) if d == reported => Ok(()),
            Some(d) => Err(d.clone()),
            // Not in the desired state yet: this report adds it.
            None => Ok(()),
        },
    }
}

impl DriftTable {
    /// Takes node `node`'s report: its digest and, when it sent them, its items.
    pub fn observe(
        &self,
        state: &ClusterState,
        node: NodeId,
        digest: &str,
        items: Option<BTreeMap<String, String>>,
        now_ms: u64,
    ) -> Observed {
        let mut nodes = self.nodes.lock().expect("drift table");
        let report = nodes.entry(node).or_default();
        if let Some(items) = items.filter(|i| i.len() <= ITEMS_MAX) {
            report.digest = digest.to_owned();
            report.items = items
                .into_iter()
                .map(|(k, v)| (k, v.chars().take(VALUE_BYTES_MAX).collect()))
                .collect();
        }
        let mut out = Observed {
            known: report.digest.clone(),
            ..Observed::default()
        };
        if report.digest != digest || report.items.is_empty() {
            // Not known yet: the node sends its items next time.
            return out;
        }
        let Some(desired) = state.drift_desired.get(&node) else {
            out.baseline = Some(report.items.clone());
            return out;
        };
        let unknown: BTreeMap<String, String> = report
            .items
            .iter()
            .filter(|(k, _)| !desired.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !unknown.is_empty() {
            out.baseline = Some(unknown);
        }
        let bundle = state.trust_roots();
        let differing: Vec<&String> = report
            .items
            .iter()
            .filter(|(k, v)| judge(state, &bundle, desired, k, v, now_ms).is_err())
            .map(|(k, _)| k)
            .collect();
        for item in &differing {
            if !report.since.contains_key(*item) {
                report.since.insert((*item).clone(), now_ms);
                out.detected.push((*item).clone());
            }
            if DriftClass::of(item) == DriftClass::AutoRepair
                && excepted(state, node, item, now_ms).is_none()
            {
                out.repair.push((*item).clone());
            }
        }
        let before: Vec<String> = report.since.keys().cloned().collect();
        for item in before {
            if !differing.contains(&&item) {
                report.since.remove(&item);
                out.cleared.push(item);
            }
        }
        out
    }

    /// What node `node` last reported for `item`.
    pub fn reported(&self, node: NodeId, item: &str) -> Option<String> {
        let nodes = self.nodes.lock().expect("drift table");
        nodes.get(&node).and_then(|r| r.items.get(item).cloned())
    }

    /// Every drifted item of every node, against `state`'s desired states and exceptions.
    pub fn list(&self, state: &ClusterState, now_ms: u64) -> Vec<Drifted> {
        let nodes = self.nodes.lock().expect("drift table");
        let bundle = state.trust_roots();
        let mut out = Vec::new();
        for (node, report) in nodes.iter() {
            let Some(desired) = state.drift_desired.get(node) else {
                continue;
            };
            for (item, since) in &report.since {
                let reported = report.items.get(item).cloned().unwrap_or_default();
                out.push(Drifted {
                    node: *node,
                    item: item.clone(),
                    class: DriftClass::of(item),
                    desired: judge(state, &bundle, desired, item, &reported, now_ms)
                        .err()
                        .unwrap_or_default(),
                    reported,
                    since_ms: *since,
                    excepted_until_ms: excepted(state, *node, item, now_ms),
                });
            }
        }
        out
    }

    /// Forgets what this member saw (it stopped leading: the next leader starts afresh).
    pub fn clear(&self) {
        self.nodes.lock().expect("drift table").clear();
    }
}

impl ClusterState {
    /// Records node `node`'s desired state of the items it has none of yet.
    pub(super) fn set_drift_baseline(
        &mut self,
        node: NodeId,
        items: &BTreeMap<String, String>,
    ) -> Outcome {
        if !self.nodes.contains_key(&node) {
            return Err(CommandError::NotFound(format!("node {node}")));
        }
        if items.len() > ITEMS_MAX || items.values().any(|v| v.len() > VALUE_BYTES_MAX) {
            return Err(CommandError::InvalidArgument(
                "a drift baseline of too many or too long items".into(),
            ));
        }
        // Items already desired keep their value: only those the node never reported before
        // are added.
        let desired = self.drift_desired.entry(node).or_default();
        let added = items.keys().filter(|k| !desired.contains_key(*k)).count();
        if desired.len() + added > ITEMS_MAX {
            return Err(CommandError::InvalidArgument(
                "a drift baseline of too many items".into(),
            ));
        }
        for (item, value) in items {
            desired.entry(item.clone()).or_insert_with(|| value.clone());
        }
        Ok(Applied::Nothing)
    }

    /// Takes `value` as the desired value of node `node`'s item `item` (what the node reports
    /// now, after a change an operator accepts).
    pub(super) fn accept_drift(&mut self, node: NodeId, item: &str, value: &str) -> Outcome {
        if item.len() > VALUE_BYTES_MAX || value.len() > VALUE_BYTES_MAX {
            return Err(CommandError::InvalidArgument(
                "an item and its value are at most 256 bytes".into(),
            ));
        }
        let desired = self
            .drift_desired
            .get_mut(&node)
            .ok_or_else(|| CommandError::NotFound(format!("a desired state of node {node}")))?;
        desired.insert(item.to_owned(), value.to_owned());
        Ok(Applied::Nothing)
    }

    pub(super) fn except_drift(&mut self, e: &DriftException) -> Outcome {
        if e.reason.len() > VALUE_BYTES_MAX || e.item.len() > VALUE_BYTES_MAX {
            return Err(CommandError::InvalidArgument(
                "an exception's item and reason are at most 256 bytes".into(),
            ));
        }
        if !self.nodes.contains_key(&e.node) {
            return Err(CommandError::NotFound(format!("node {}", e.node)));
        }
        self.drift_exceptions
            .insert(format!("{}/{}", e.node, e.item), e.clone());
        Ok(Applied::Nothing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::{ITEM_CONFIG, ITEM_DISK};

    fn items(config: &str, disk: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (ITEM_CONFIG.to_string(), config.to_string()),
            (ITEM_DISK.to_string(), disk.to_string()),
        ])
    }

    fn state_with_node() -> ClusterState {
        use crate::meta::model::{Health, NodeRecord, NodeRegistration, Participation};
        let mut s = ClusterState::default();
        let registration = NodeRegistration {
            id: 3,
            rpc_addr: String::new(),
            data_addr: String::new(),
            location: Default::default(),
            disks: Vec::new(),
        };
        s.nodes.insert(
            3,
            NodeRecord {
                registration,
                health: Health::Up,
                participation: Participation::In,
                draining: false,
                last_heartbeat_ms: 0,
            },
        );
        s
    }

    #[test]
    fn a_changed_item_is_detected_repaired_and_cleared() {
        let t = DriftTable::default();
        let mut s = state_with_node();
        let first = items("a", "100 GiB");
        let d = crate::drift::digest(&first);
        // Unknown digest without items: ask for them.
        assert_eq!(t.observe(&s, 3, &d, None, 0).known, "");
        let o = t.observe(&s, 3, &d, Some(first.clone()), 0);
        assert_eq!(o.baseline, Some(first.clone()));
        s.set_drift_baseline(3, &first).unwrap();
        assert!(t.observe(&s, 3, &d, None, 1).detected.is_empty());

        let edited = items("b", "90 GiB");
        let d2 = crate::drift::digest(&edited);
        assert_eq!(t.observe(&s, 3, &d2, None, 2).known, d);
        let o = t.observe(&s, 3, &d2, Some(edited), 3);
        assert_eq!(
            o.detected,
            vec![ITEM_CONFIG.to_string(), ITEM_DISK.to_string()]
        );
        assert_eq!(
            o.repair,
            vec![ITEM_CONFIG.to_string()],
            "a disk is not repaired"
        );
        let listed = t.list(&s, 4);
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].class, DriftClass::AutoRepair);
        assert_eq!(listed[0].since_ms, 3);

        // Excepted: listed as such, not repaired.
        s.except_drift(&DriftException {
            node: 3,
            item: ITEM_CONFIG.into(),
            until_ms: 100,
            reason: "testing a setting".into(),
            by: "fabric://prod/user/alice".into(),
        })
        .unwrap();
        assert!(t.observe(&s, 3, &d2, None, 5).repair.is_empty());
        assert_eq!(t.list(&s, 6)[0].excepted_until_ms, Some(100));
        assert_eq!(
            t.observe(&s, 3, &d2, None, 200).repair,
            vec![ITEM_CONFIG.to_string()]
        );

        // Put back: cleared.
        let o = t.observe(&s, 3, &d, Some(first), 300);
        assert_eq!(
            o.cleared,
            vec![ITEM_CONFIG.to_string(), ITEM_DISK.to_string()]
        );
        assert!(t.list(&s, 301).is_empty());
    }

    #[test]
    fn a_certificate_is_judged_by_expiry_revocation_and_issuer_and_trust_by_the_bundle() {
        use crate::identity::ClusterName;
        use crate::identity::ca::{self, CertificateAuthority};
        let tmp = tempfile::tempdir().unwrap();
        let root = |name: &str| {
            let dir = tmp.path().join(name);
            let cluster = ClusterName::new("prod").unwrap();
            ca::init(&dir, &cluster, time::OffsetDateTime::now_utc()).unwrap();
            CertificateAuthority::open(&dir)
                .unwrap()
                .root_pem()
                .to_owned()
        };
        let (old, new) = (root("old"), root("new"));
        let mut s = state_with_node();
        let desired = BTreeMap::new();
        let now_ms: u64 = 1_800_000_000_000;
        let tls = |serial: &str, issuer: &str, days: i64| {
            TlsReport {
                serial: serial.into(),
                issuer: issuer.into(),
                expires: time::OffsetDateTime::from_unix_timestamp(
                    (now_ms / 1000) as i64 + days * 86_400,
                )
                .unwrap(),
            }
            .to_string()
        };
        let judged = |s: &ClusterState, item: &str, v: &str| {
            judge(s, &s.trust_roots(), &desired, item, v, now_ms)
        };

        // No bundle: valid long enough and not revoked.
        assert!(judged(&s, ITEM_TLS, &tls("0a", "sha256:aa", 90)).is_ok());
        assert!(
            judged(&s, ITEM_TLS, &tls("0a", "sha256:aa", 7)).is_err(),
            "expiring"
        );
        assert!(judged(&s, ITEM_TLS, "unusable: no such file").is_err());
        s.revoke_certificate(&crate::meta::state_revoked::Revoked {
            serial: "0a".into(),
            principal: "fabric://prod/node/3".into(),
            reason: "lost".into(),
        })
        .unwrap();
        assert!(
            judged(&s, ITEM_TLS, &tls("0a", "sha256:aa", 90)).is_err(),
            "revoked"
        );

        // A bundle: issued under its newest root, trusting exactly its roots.
        s.set_trust_roots(&[old.clone(), new.clone()]).unwrap();
        let pins: Vec<String> = s.trust_roots().iter().map(|r| r.pin.clone()).collect();
        assert!(judged(&s, ITEM_TLS, &tls("0b", &pins[1], 90)).is_ok());
        let under_old = judged(&s, ITEM_TLS, &tls("0b", &pins[0], 90)).unwrap_err();
        assert!(under_old.contains(&pins[1]), "{under_old}");
        assert!(judged(&s, ITEM_TRUST, &pins.join(",")).is_ok());
        assert_eq!(judged(&s, ITEM_TRUST, &pins[0]), Err(pins.join(",")));

        // Other items follow the desired state; one never desired yet is not drift.
        let desired = BTreeMap::from([(ITEM_CONFIG.to_string(), "a".to_string())]);
        let bundle = s.trust_roots();
        assert!(judge(&s, &bundle, &desired, ITEM_CONFIG, "a", now_ms).is_ok());
        assert_eq!(
            judge(&s, &bundle, &desired, ITEM_CONFIG, "b", now_ms),
            Err("a".into())
        );
        assert!(judge(&s, &bundle, &desired, "listeners", "127.0.0.1:7000", now_ms).is_ok());
    }
}
