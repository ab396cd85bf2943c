//! Join tokens: administrators make them (`CreateJoinToken`, verb `node.join_token`), and a
//! new node without a certificate redeems one for its certificate (the `Join` service, served
//! only to connections that asked to join; see `identity::join`).

use std::sync::Arc;

use proto::meta as pb;
use proto::meta::join_server::Join;
use tonic::{Request, Response, Status};

use super::MetadataService;
use super::convert::status_of;
use crate::identity::PrincipalKind;
use crate::identity::ca::CertificateAuthority;
use crate::identity::issue::{
    LEAF_VALIDITY_DAYS_DEFAULT, LeafRequest, SERVER_NAMES_MAX, ServerSan,
};
use crate::identity::join::{is_secret_digest, is_token_id, secret_digest};
use crate::meta::auth::Verb;
use crate::meta::clock::unix_ms as now_ms;
use crate::meta::command::CommandV1;
use crate::meta::member::Member;
use crate::meta::net::secure::Caller;
use crate::meta::state_join::{JOIN_TOKEN_TTL_MAX_MS, JoinRefused, JoinRole, JoinTokenRecord};

/// Largest CSR accepted, in bytes (a P-256 or P-384 request is a few hundred).
const CSR_BYTES_MAX: usize = 4096;

fn token_info(t: &JoinTokenRecord) -> pb::JoinTokenInfo {
    pb::JoinTokenInfo {
        id: t.id.clone(),
        role: t.role.name().into(),
        created_by: t.created_by.clone(),
        expires_at_ms: t.expires_at_ms,
        used_by_node: t.used_by.unwrap_or(0),
    }
}

impl MetadataService {
    pub(super) async fn create_join_token_call(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenInfo>, Status> {
        let auth = self.authorize_cluster(&req, Verb::NodeJoinToken).await?;
        let created_by = match &auth.caller {
            Caller::Principal(p) => p.to_string(),
            Caller::InProcess | Caller::Joiner => String::new(),
        };
        let pb::CreateJoinTokenRequest {
            id,
            secret_sha256,
            role,
            ttl_seconds,
        } = req.into_inner();
        let role: JoinRole = role.parse().map_err(Status::invalid_argument)?;
        if !is_token_id(&id) || !is_secret_digest(&secret_sha256) {
            return Err(Status::invalid_argument(
                "a join token's id is 16 and its secret's SHA-256 64 lowercase hex digits",
            ));
        }
        let ttl_ms = ttl_seconds.saturating_mul(1000);
        if ttl_ms == 0 || ttl_ms > JOIN_TOKEN_TTL_MAX_MS {
            return Err(Status::invalid_argument(format!(
                "ttl {ttl_seconds} s: a join token lives 1 s to {} s",
                JOIN_TOKEN_TTL_MAX_MS / 1000
            )));
        }
        let created_at_ms = now_ms();
        let record = JoinTokenRecord {
            id,
            secret_sha256,
            role,
            created_by,
            created_at_ms,
            expires_at_ms: created_at_ms + ttl_ms,
            used_by: None,
        };
        self.write(&auth, CommandV1::AddJoinToken(record.clone()))
            .await?;
        Ok(Response::new(token_info(&record)))
    }

    pub(super) async fn list_join_tokens_call(
        &self,
        req: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensReply>, Status> {
        self.authorize_cluster(&req, Verb::NodeJoinToken).await?;
        let now = now_ms();
        let tokens = self.member.sm.read(|s, _| {
            s.join_tokens
                .values()
                .filter(|t| t.expires_at_ms > now)
                .map(token_info)
                .collect()
        });
        Ok(Response::new(pb::ListJoinTokensReply { tokens }))
    }
}

/// What `signer` signs for node `node_id` over `csr`, naming `server_names`: a leaf of the
/// default validity (less if the intermediate expires sooner). Refuses a request out of its
/// limits, changing nothing.
pub(super) fn node_leaf_request(
    signer: &CertificateAuthority,
    node_id: u64,
    csr: &[u8],
    server_names: &[String],
) -> Result<LeafRequest, Status> {
    if node_id == 0 {
        return Err(Status::invalid_argument("node id 0: ids start at 1"));
    }
    if csr.len() > CSR_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "a certificate signing request of {} bytes: at most {CSR_BYTES_MAX}",
            csr.len()
        )));
    }
    if server_names.len() > SERVER_NAMES_MAX {
        return Err(Status::invalid_argument(format!(
            "{} server names: at most {SERVER_NAMES_MAX}",
            server_names.len()
        )));
    }
    let server_names = server_names
        .iter()
        .map(|n| n.parse::<ServerSan>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let now = time::OffsetDateTime::now_utc();
    let days = LEAF_VALIDITY_DAYS_DEFAULT
        .min((signer.intermediate_not_after() - now).whole_days().max(0) as u32);
    LeafRequest::for_days(PrincipalKind::Node(node_id), server_names, now, days.max(1))
        .map_err(|e| Status::failed_precondition(e.to_string()))
}

/// Serves the join call of one member: redeems tokens and signs with the CA it was given, if
/// any (a member without one refuses every join, naming why).
pub struct JoinService {
    pub member: Arc<Member>,
    pub signer: Option<Arc<CertificateAuthority>>,
}

fn refused(r: JoinRefused) -> Status {
    match r {
        JoinRefused::Unknown(_) | JoinRefused::WrongSecret(_) => {
            Status::unauthenticated(r.to_string())
        }
        _ => Status::failed_precondition(r.to_string()),
    }
}

#[tonic::async_trait]
impl Join for JoinService {
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        let remote = req
            .extensions()
            .get::<crate::meta::net::secure::PeerInfo>()
            .and_then(|p| p.remote);
        let pb::JoinRequest {
            token_id,
            secret,
            node_id,
            csr,
            server_names,
        } = req.into_inner();
        let signer = self.signer.as_ref().ok_or_else(|| {
            Status::failed_precondition(format!(
                "member {} holds no CA to sign with (fabricd node --ca-dir); join through a \
                 member that does",
                self.member.id
            ))
        })?;
        let request = node_leaf_request(signer, node_id, &csr, &server_names)?;
        let digest = secret_digest(&secret);
        let now = now_ms();
        // Checked here first, so that a wrong or spent token never reaches the log.
        self.member
            .sm
            .read(|s, _| {
                s.check_join_token(&token_id, &digest, node_id, now)
                    .map(|_| ())
            })
            .map_err(refused)?;
        let membership = self.member.metrics().membership_config.membership().clone();
        if membership.get_node(&node_id).is_some() {
            return Err(refused(JoinRefused::NodeTaken(node_id)));
        }
        // Signed before the token is spent, so that a bad request spends nothing; the
        // certificate is handed out only once the token is redeemed.
        let signed = signer
            .issue_for_csr(&request, &csr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let redeem = CommandV1::RedeemJoinToken {
            id: token_id.clone(),
            secret_sha256: digest,
            node: node_id,
            now_ms: now,
        };
        self.member
            .write_own("node.join", format!("node/{node_id}"), redeem)
            .await
            .map_err(status_of)?;
        tracing::info!(
            node = node_id,
            token = %token_id,
            serial = %signed.serial,
            remote = ?remote,
            "signed the certificate of a joining node"
        );
        Ok(Response::new(pb::JoinReply {
            chain_pem: signed.chain_pem,
            ca_pem: signer.root_pem().to_owned(),
        }))
    }
}
