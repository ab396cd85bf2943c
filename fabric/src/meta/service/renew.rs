//! A node's fresh certificate (`RenewCertificate`, verb `node.renew_certificate`): what the
//! node asks for when the leader names its certificate as drift (expiring, or issued under a
//! root older than the trust bundle's newest). Signed by the CA of this member's `--ca-dir`
//! over a key the node made, for the node's own principal only, and audited before it is
//! signed.

use proto::meta as pb;
use tonic::{Request, Response, Status};

use super::MetadataService;
use super::join::node_leaf_request;
use crate::identity::PrincipalKind;
use crate::meta::auth::Verb;
use crate::meta::command::CommandV1;
use crate::meta::net::secure::Caller;

impl MetadataService {
    pub(super) async fn renew_certificate_call(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::JoinReply>, Status> {
        let node = req.get_ref().node;
        let auth = self
            .authorize_node_itself(&req, Verb::NodeRenewCertificate, node)
            .await?;
        if !matches!(&auth.caller, Caller::Principal(p) if *p.kind() == PrincipalKind::Node(node)) {
            return Err(Status::permission_denied(format!(
                "only node {node} itself renews its certificate"
            )));
        }
        let signer = self.signer.as_ref().ok_or_else(|| {
            Status::failed_precondition(format!(
                "member {} holds no CA to sign with (fabricd node --ca-dir)",
                self.member.id
            ))
        })?;
        let newest = self
            .member
            .sm
            .read(|s, _| s.trust_roots().last().map(|r| r.pin.clone()));
        if let Some(newest) = newest.filter(|pin| pin != signer.root_pin()) {
            return Err(Status::failed_precondition(format!(
                "member {} signs under root {}, but the trust bundle's newest root is {newest}: \
                 give the members the new CA (fabricd node --ca-dir) or reissue by hand",
                self.member.id,
                signer.root_pin()
            )));
        }
        let pb::RenewCertificateRequest {
            node,
            csr,
            server_names,
        } = req.into_inner();
        let request = node_leaf_request(signer, node, &csr, &server_names)?;
        self.write(&auth, CommandV1::Noted).await?;
        let signed = signer
            .issue_for_csr(&request, &csr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(node, serial = %signed.serial, "renewed a node's certificate");
        Ok(Response::new(pb::JoinReply {
            chain_pem: signed.chain_pem,
            ca_pem: signer.root_pem().to_owned(),
        }))
    }
}
