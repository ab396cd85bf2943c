//! `fabricctl auth`: the cluster's access policy — who holds which role at which scope — and
//! the question every operator asks before a change, `can-i`.

use clap::Subcommand;
use fabric::meta::client::Client;
use proto::meta as pb;
use serde_json::json;

use crate::reply::Reply;

/// `fabricctl auth ...`.
#[derive(Subcommand)]
pub enum AuthCmd {
    /// Grants ROLE to PRINCIPAL (fabric://CLUSTER/user/NAME, .../gateway/NAME, .../node/ID) at
    /// a scope. You can grant only what you hold yourself there.
    Bind {
        principal: String,
        role: String,
        /// cluster, pool/NAME or volume/NAME.
        #[arg(long, default_value = "cluster")]
        scope: String,
    },
    /// Removes a binding.
    Unbind {
        principal: String,
        role: String,
        #[arg(long, default_value = "cluster")]
        scope: String,
    },
    /// Every binding, and the policy's epoch.
    List,
    /// Every role, built in and custom, with its verbs.
    Roles,
    /// Defines (or redefines) a custom role as a list of verbs.
    DefineRole {
        name: String,
        /// Comma-separated verbs, e.g. volume.list,volume.get.
        #[arg(long, value_delimiter = ',', required = true)]
        verbs: Vec<String>,
    },
    /// Removes a custom role no binding uses.
    RemoveRole { name: String },
    /// Whether you (or --as PRINCIPAL) may call VERB on TARGET (cluster, pool/NAME or
    /// volume/NAME), and the binding that allows it or what is missing.
    CanI {
        verb: String,
        target: String,
        #[arg(long = "as")]
        as_principal: Option<String>,
    },
}

/// Runs `cmd` against the cluster.
pub async fn run(cmd: AuthCmd, client: &Client) -> anyhow::Result<Reply> {
    let change = |change: pb::policy_change::Change| pb::PolicyChange {
        change: Some(change),
    };
    let binding = |principal: String, role: String, scope: String| pb::Binding {
        principal,
        role,
        scope,
    };
    let policy = match cmd {
        AuthCmd::List => {
            client
                .call(|mut c| async move { c.get_policy(pb::GetPolicyRequest {}).await })
                .await?
        }
        AuthCmd::Roles => {
            let r = client
                .call(|mut c| async move { c.list_roles(pb::ListRolesRequest {}).await })
                .await?;
            return Ok(Reply::List(
                r.roles
                    .iter()
                    .map(|r| {
                        json!({
                            "role": r.name,
                            "built_in": r.built_in,
                            "verbs": r.verbs.join(","),
                        })
                    })
                    .collect(),
                &["role", "built_in", "verbs"],
            ));
        }
        AuthCmd::CanI {
            verb,
            target,
            as_principal,
        } => {
            let req = pb::CanIRequest {
                verb,
                target,
                principal: as_principal.unwrap_or_default(),
            };
            let r = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.can_i(req).await }
                })
                .await?;
            return Ok(Reply::One(json!({
                "allowed": r.allowed,
                "principal": r.principal,
                "verb": req.verb,
                "target": req.target,
                "reason": r.reason,
            })));
        }
        AuthCmd::Bind {
            principal,
            role,
            scope,
        } => {
            send(
                client,
                change(pb::policy_change::Change::Bind(binding(
                    principal, role, scope,
                ))),
            )
            .await?
        }
        AuthCmd::Unbind {
            principal,
            role,
            scope,
        } => {
            send(
                client,
                change(pb::policy_change::Change::Unbind(binding(
                    principal, role, scope,
                ))),
            )
            .await?
        }
        AuthCmd::DefineRole { name, verbs } => {
            send(
                client,
                change(pb::policy_change::Change::DefineRole(pb::Role {
                    name,
                    verbs,
                    built_in: false,
                })),
            )
            .await?
        }
        AuthCmd::RemoveRole { name } => {
            send(client, change(pb::policy_change::Change::RemoveRole(name))).await?
        }
    };
    Ok(Reply::List(
        policy
            .bindings
            .iter()
            .map(|b| {
                json!({
                    "principal": b.principal,
                    "role": b.role,
                    "scope": b.scope,
                    "epoch": policy.epoch,
                })
            })
            .collect(),
        &["principal", "role", "scope", "epoch"],
    ))
}

async fn send(client: &Client, change: pb::PolicyChange) -> anyhow::Result<pb::Policy> {
    Ok(client
        .call(|mut c| {
            let change = change.clone();
            async move { c.change_policy(change).await }
        })
        .await?)
}
