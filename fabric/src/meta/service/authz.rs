//! Who is calling and whether they may: every metadata call names a verb and a target, and is
//! checked here before it runs.
//!
//! The caller is the principal its connection's certificate proved (see `net/secure.rs`).
//! Nodes hold the built-in `storage-node` role across the cluster without a binding — a node
//! certificate is only ever issued to a storage node of this cluster — and may speak for no
//! other node than themselves. Everyone else holds what the policy in the Raft state binds
//! to them, and nothing before it is initialized. The policy read is this member's applied
//! state: a change reaches a call as soon as the member applied it, which is within the
//! replication delay of its commit.

use proto::meta as pb;
use tonic::{Request, Status};

use sha2::{Digest, Sha256};

use super::MetadataService;
use crate::audit::entry::AuditCall;
use crate::audit::merkle::Hash;
use crate::identity::PrincipalKind;
use crate::meta::auth::{Denied, Policy, Scope, Target, Verb, role};
use crate::meta::command::CommandV1;
use crate::meta::member::Member;
use crate::meta::net::secure::{Caller, PeerInfo};
use crate::meta::refusals::{Admit, FLUSH_AFTER_MS, REFUSALS_PER_SEC};

/// The caller of a request, as its connection authenticated it.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    match req.extensions().get::<PeerInfo>().map(|p| &p.caller) {
        None => Err(Status::unauthenticated(
            "the connection carries no authenticated identity",
        )),
        Some(Caller::Joiner) => Err(Status::unauthenticated(
            "a node without a certificate may only join (with a join token)",
        )),
        Some(caller) => Ok(caller.clone()),
    }
}

/// Whether `caller` may `verb` on `target` under `policy`: the binding or rule that allows
/// it, or why nothing does.
pub fn decide(
    policy: &Policy,
    caller: &Caller,
    verb: Verb,
    target: &Target,
) -> Result<String, Denied> {
    let principal = match caller {
        Caller::InProcess => return Ok("an in-process caller is trusted".into()),
        Caller::Joiner => return Err(Denied::NoCertificate { verb }),
        Caller::Principal(p) => p,
    };
    if matches!(principal.kind(), PrincipalKind::Node(_))
        && role::built_in("storage-node").is_some_and(|v| v.contains(&verb))
    {
        return Ok(format!(
            "{principal} is a node of the cluster (storage-node)"
        ));
    }

    policy
        .check(&principal.to_string(), verb, target)
        .map(|b| format!("bound: {b}"))
}

/// Parses a target as `fabricctl auth can-i` and bindings write it; a volume's pool is
/// looked up in `state_pool_of`.
pub fn parse_target(
    text: &str,
    state_pool_of: impl Fn(&str) -> Option<String>,
) -> Result<Target, Status> {
    let scope: Scope = text
        .parse()
        .map_err(|e: crate::meta::auth::scope::BadScope| Status::invalid_argument(e.to_string()))?;
    Ok(match scope {
        Scope::Cluster => Target::Cluster,
        Scope::Pool(p) => Target::Pool(p),
        Scope::Volume(name) => Target::Volume {
            pool: state_pool_of(&name).unwrap_or_default(),
            name,
        },
    })
}

/// A call that passed its check: who made it, and the audit record its writes carry.
#[derive(Clone, Debug)]
pub struct Authorized {
    pub caller: Caller,
    pub call: AuditCall,
}

/// The audit record of a call to `verb` on `target` made with `req`, before it is decided.
pub fn audit_call<T: prost::Message>(
    req: &Request<T>,
    caller: Option<&Caller>,
    verb: Verb,
    target: &Target,
) -> AuditCall {
    let info = req.extensions().get::<PeerInfo>();
    AuditCall {
        time_ms: crate::meta::clock::unix_ms(),
        principal: match caller.or(info.map(|i| &i.caller)) {
            Some(Caller::Principal(p)) => p.to_string(),
            Some(Caller::InProcess) => "in-process".into(),
            Some(Caller::Joiner) | None => "unauthenticated".into(),
        },
        verb: verb.name().into(),
        target: target.to_string(),
        request_sha256: Hash(Sha256::digest(req.get_ref().encode_to_vec()).into()),
        peer: info
            .and_then(|i| i.remote)
            .map(|a| a.to_string())
            .unwrap_or_default(),
    }
}

/// Writes a refusal's audit entry.
async fn write_refusal(member: &Member, call: AuditCall, reason: String) {
    let command = CommandV1::AuditDenied { call, reason };
    if let Err(e) = member.write(command.into()).await {
        tracing::warn!(error = %e, "a refused call could not be written to the audit log");
    }
}

impl MetadataService {
    /// Checks that the caller of `req` may `verb` on `target`; PERMISSION_DENIED names the
    /// verb and the target that were missing. A refusal is written to the audit log before
    /// it is returned.
    pub(super) async fn authorize<T: prost::Message>(
        &self,
        req: &Request<T>,
        verb: Verb,
        target: Target,
    ) -> Result<Authorized, Status> {
        let caller = match caller(req) {
            Ok(c) => c,
            Err(status) => {
                let call = audit_call(req, None, verb, &target);
                return Err(self.refused(call, status).await);
            }
        };
        let call = audit_call(req, Some(&caller), verb, &target);
        let decided = self
            .member
            .sm
            .read(|s, _| decide(&s.policy, &caller, verb, &target));
        if let Err(denied) = decided {
            return Err(self
                .refused(call, Status::permission_denied(denied.to_string()))
                .await);
        }
        Ok(Authorized { caller, call })
    }

    /// Records a refused call and returns its status: as an entry, or, past its principal's
    /// budget, in the count a later entry carries (`meta/refusals.rs`). If the refusal cannot
    /// be recorded (the log is full, no leader), the caller still gets the refusal; the member
    /// logs the gap.
    pub(super) async fn refused(&self, call: AuditCall, status: Status) -> Status {
        let reason = status.message().to_owned();
        match self.member.refusals.admit(&call.principal, call.time_ms) {
            Admit::Write { counted_before } => {
                let reason = match counted_before {
                    0 => reason,
                    n => format!(
                        "{reason} (and {n} earlier refused calls of {}, counted since its \
                         previous entry)",
                        call.principal
                    ),
                };
                write_refusal(&self.member, call, reason).await;
            }
            Admit::Count { flush_due } => {
                self.member
                    .audit_refusals_counted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if flush_due {
                    let member = std::sync::Arc::clone(&self.member);
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(FLUSH_AFTER_MS)).await;
                        let n = member.refusals.flush(&call.principal);
                        if n > 0 {
                            let reason = format!(
                                "{n} refused calls of {} counted, not written one by one (at \
                                 most {REFUSALS_PER_SEC} a second are); the first: {reason}",
                                call.principal
                            );
                            write_refusal(&member, call, reason).await;
                        }
                    });
                }
            }
        }
        status
    }

    /// [`MetadataService::authorize`] for a cluster-level verb.
    pub(super) async fn authorize_cluster<T: prost::Message>(
        &self,
        req: &Request<T>,
        verb: Verb,
    ) -> Result<Authorized, Status> {
        self.authorize(req, verb, Target::Cluster).await
    }

    /// [`MetadataService::authorize`] for a verb on volume `name` (found in its pool).
    pub(super) async fn authorize_volume<T: prost::Message>(
        &self,
        req: &Request<T>,
        verb: Verb,
        name: &str,
    ) -> Result<Authorized, Status> {
        let pool = self
            .member
            .sm
            .read(|s, _| s.pool_of(name))
            .unwrap_or_default();
        self.authorize(
            req,
            verb,
            Target::Volume {
                pool,
                name: name.to_owned(),
            },
        )
        .await
    }

    /// A node may register and heartbeat as itself only.
    pub(super) async fn authorize_node_itself<T: prost::Message>(
        &self,
        req: &Request<T>,
        verb: Verb,
        node: u64,
    ) -> Result<Authorized, Status> {
        let auth = self.authorize_cluster(req, verb).await?;
        match &auth.caller {
            Caller::Principal(p) if matches!(p.kind(), PrincipalKind::Node(id) if *id != node) => {
                let status = Status::permission_denied(format!(
                    "{p} may not {verb} as node {node}: a node speaks for itself only"
                ));
                Err(self.refused(auth.call, status).await)
            }
            _ => Ok(auth),
        }
    }
}

/// The policy as the API shows it.
pub fn policy_out(policy: &Policy) -> pb::Policy {
    pb::Policy {
        bindings: policy.bindings.iter().map(binding_out).collect(),
        custom_roles: policy
            .roles
            .iter()
            .map(|(name, verbs)| pb::Role {
                name: name.clone(),
                verbs: verbs.iter().cloned().collect(),
                built_in: false,
            })
            .collect(),
        epoch: policy.epoch,
    }
}

pub fn binding_out(b: &crate::meta::auth::Binding) -> pb::Binding {
    pb::Binding {
        principal: b.principal.clone(),
        role: b.role.clone(),
        scope: b.scope.to_string(),
    }
}

pub fn binding_in(b: pb::Binding) -> Result<crate::meta::auth::Binding, Status> {
    let pb::Binding {
        principal,
        role,
        scope,
    } = b;
    let scope: Scope = scope
        .parse()
        .map_err(|e: crate::meta::auth::scope::BadScope| Status::invalid_argument(e.to_string()))?;
    Ok(crate::meta::auth::Binding {
        principal,
        role,
        scope,
    })
}

/// How often an open watch stream's permission is checked again.
pub const STREAM_RECHECK_MS: u64 = 2_000;

/// `inner`, ended with PERMISSION_DENIED once `caller` no longer holds `verb` on the cluster
/// (checked before every event and every [`STREAM_RECHECK_MS`]), so that a binding removed
/// while a watch is open stops it within seconds.
pub fn while_allowed<S>(
    inner: S,
    sm: crate::meta::store::StateMachineStore,
    caller: Caller,
    verb: Verb,
) -> tokio_stream::wrappers::ReceiverStream<Result<pb::WatchEvent, Status>>
where
    S: futures::Stream<Item = Result<pb::WatchEvent, Status>> + Send + 'static,
{
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut inner = std::pin::pin!(inner);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(STREAM_RECHECK_MS));
        loop {
            let item = tokio::select! {
                item = inner.next() => item,
                _ = tick.tick() => {
                    if let Err(denied) = sm.read(|s, _| decide(&s.policy, &caller, verb, &Target::Cluster)) {
                        let _ = tx.send(Err(Status::permission_denied(denied.to_string()))).await;
                        return;
                    }
                    continue;
                }
                () = tx.closed() => return,
            };
            let Some(item) = item else { return };
            if let Err(denied) = sm.read(|s, _| decide(&s.policy, &caller, verb, &Target::Cluster))
            {
                let _ = tx
                    .send(Err(Status::permission_denied(denied.to_string())))
                    .await;
                return;
            }
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
