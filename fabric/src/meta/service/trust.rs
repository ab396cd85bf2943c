//! Key rotation at the API: the cell key (`cell_key.rotate`) and the trust bundle's root CAs
//! (`ca.rotate`), both guarded by the two-person rule.
//!
//! A trust change is refused unless the certificate of every registered node that is not
//! marked out chains to a root the new bundle keeps, as the nodes last reported to this
//! leader: retiring a root that still issues a node's certificate would cut that node off.
//! The check runs when the change is asked for and again when it is approved.

use proto::meta as pb;
use tonic::{Request, Response, Status};

use super::MetadataService;
use crate::drift::{ITEM_TLS, TlsReport};
use crate::identity::trust_bundle::{Root, parse_root};
use crate::meta::auth::Verb;
use crate::meta::cell_key::{CELL_KEY_TARGET, CellKey};
use crate::meta::command::CommandV1;
use crate::meta::model::Participation;
use crate::meta::state_trust::TRUST_TARGET;

fn root_out(r: &Root) -> pb::TrustRoot {
    pb::TrustRoot {
        pin: r.pin.clone(),
        subject: r.subject.clone(),
        not_after_ms: (r.not_after.unix_timestamp().max(0) as u64) * 1000,
    }
}

impl MetadataService {
    pub(super) async fn rotate_cell_key_call(
        &self,
        req: Request<pb::RotateCellKeyRequest>,
    ) -> Result<Response<pb::CellKeys>, Status> {
        let mut auth = self.authorize_cluster(&req, Verb::CellKeyRotate).await?;
        auth.call.target = CELL_KEY_TARGET.into();
        let add = CommandV1::AddCellKey(CellKey::generate());
        self.guarded_write(&auth, "cell_key.rotate", String::new(), add)
            .await?;
        let keys = self.member.sm.read(|s, _| s.verifying_keys());
        Ok(Response::new(pb::CellKeys {
            verifying_keys: keys.iter().map(|k| k.to_bytes().to_vec()).collect(),
        }))
    }

    /// The bundle, and each node's certificate as it last reported it to this member (the
    /// leader).
    fn trust_bundle(&self) -> pb::TrustBundle {
        let (roots, nodes) = self.member.sm.read(|s, _| {
            let nodes: Vec<u64> = s.nodes.keys().copied().collect();
            (s.trust_roots(), nodes)
        });
        pb::TrustBundle {
            roots: roots.iter().map(root_out).collect(),
            nodes: nodes
                .into_iter()
                .map(|node| {
                    let certificate = self.drift.reported(node, ITEM_TLS).unwrap_or_default();
                    let issuer_pin = certificate
                        .parse::<TlsReport>()
                        .map(|t| t.issuer)
                        .unwrap_or_default();
                    pb::NodeTrust {
                        node,
                        certificate,
                        issuer_pin,
                    }
                })
                .collect(),
        }
    }

    pub(super) async fn get_trust_call(
        &self,
        req: Request<pb::GetTrustRequest>,
    ) -> Result<Response<pb::TrustBundle>, Status> {
        self.authorize_cluster(&req, Verb::ClusterStatus).await?;
        self.leader_only()?;
        Ok(Response::new(self.trust_bundle()))
    }

    pub(super) async fn change_trust_call(
        &self,
        req: Request<pb::ChangeTrustRequest>,
    ) -> Result<Response<pb::TrustBundle>, Status> {
        let mut auth = self.authorize_cluster(&req, Verb::CaRotate).await?;
        auth.call.target = TRUST_TARGET.into();
        let pb::ChangeTrustRequest {
            add_root_pem,
            retire_pin,
            current_roots_pem,
        } = req.into_inner();
        let mut roots = self.member.sm.read(|s, _| s.trust_roots.clone());
        match (add_root_pem.is_empty(), retire_pin.is_empty()) {
            (false, true) => {
                let new = parse_root(&add_root_pem)
                    .map_err(|e| Status::invalid_argument(format!("the new root: {e}")))?;
                if roots.is_empty() {
                    roots = current_roots_pem;
                }
                let pins = pins_of(&roots)?;
                if pins.contains(&new.pin) {
                    return Err(Status::already_exists(format!(
                        "root {} is in the trust bundle already",
                        new.pin
                    )));
                }
                roots.push(new.pem);
            }
            (true, false) => {
                if roots.is_empty() {
                    return Err(Status::failed_precondition(
                        "the cluster keeps no trust bundle yet: add the new root first \
                         (fabricctl trust add)",
                    ));
                }
                let before = roots.len();
                roots.retain(|pem| parse_root(pem).map_or(true, |r| r.pin != retire_pin));
                if roots.len() == before {
                    return Err(Status::not_found(format!(
                        "root {retire_pin} is not in the trust bundle"
                    )));
                }
            }
            _ => {
                return Err(Status::invalid_argument(
                    "give either a root to add or the pin of a root to retire",
                ));
            }
        }
        self.check_bundle_covers_nodes(&roots)?;
        let set = CommandV1::SetTrustRoots { roots };
        self.guarded_write(&auth, "ca.rotate", String::new(), set)
            .await?;
        Ok(Response::new(self.trust_bundle()))
    }

    /// Refuses a bundle of `roots` unless every registered node that is in (not marked out)
    /// reported (to this leader) a certificate chaining to one of them.
    pub(super) fn check_bundle_covers_nodes(&self, roots: &[String]) -> Result<(), Status> {
        self.leader_only()?;
        let pins = pins_of(roots)?;
        let nodes: Vec<u64> = self.member.sm.read(|s, _| {
            s.nodes
                .iter()
                .filter(|(_, n)| n.participation == Participation::In)
                .map(|(id, _)| *id)
                .collect()
        });
        for node in nodes {
            let reported = self
                .drift
                .reported(node, ITEM_TLS)
                .and_then(|t| t.parse::<TlsReport>().ok());
            match reported {
                None => {
                    return Err(Status::failed_precondition(format!(
                        "node {node} has not reported its certificate to the leader: the trust \
                         bundle changes once every node that is in has (fabricctl node out \
                         {node}, if it is gone)"
                    )));
                }
                Some(t) if !pins.contains(&t.issuer) => {
                    return Err(Status::failed_precondition(format!(
                        "node {node}'s certificate (serial {}) chains to root {}, which the \
                         trust bundle would no longer hold: reissue it under a root the bundle \
                         keeps (fabricctl cert issue ... --overwrite) first",
                        t.serial, t.issuer
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// The pins of PEM roots; a root that does not parse is refused.
fn pins_of(roots: &[String]) -> Result<Vec<String>, Status> {
    roots
        .iter()
        .map(|pem| parse_root(pem).map(|r| r.pin))
        .collect::<Result<_, _>>()
        .map_err(|e| Status::invalid_argument(format!("a current root: {e}")))
}
