//! `fabricctl approve`, `deny` and `approvals`: the second person of the two-person rule.

use clap::Subcommand;
use fabric::meta::client::Client;
use proto::meta as pb;
use serde_json::{Value, json};

use crate::reply::{Reply, rfc3339_ms};

/// `fabricctl approvals ...`.
#[derive(Subcommand)]
pub enum ApprovalsCmd {
    /// Requests waiting for (or decided by) a second person, with the operation each holds.
    List,
    /// Which calls are guarded.
    Guards,
    /// Guards a kind of call (guard.set).
    GuardOn { guard: String },
    /// Stops guarding a kind of call (guard.set; this too needs a second person).
    GuardOff { guard: String },
    /// How long a request waits for its approval (guard.set), in seconds.
    Ttl { seconds: u64 },
}

fn info_json(r: &pb::ApprovalInfo) -> Value {
    json!({
        "id": r.id,
        "state": r.state,
        "guard": r.guard,
        "requester": r.requester,
        "target": r.target,
        "operation": r.operation,
        "op_sha256": r.op_sha256,
        "expires": rfc3339_ms(r.expires_at_ms),
        "decided_by": r.decided_by,
        "reason": r.reason,
    })
}

fn guards_json(a: &pb::Approvals) -> Value {
    json!({
        "on": a.guards_on,
        "off": a.guards.iter().filter(|g| !a.guards_on.contains(g)).collect::<Vec<_>>(),
        "approval_ttl_minutes": a.ttl_ms / 60_000,
    })
}

async fn list(client: &Client) -> anyhow::Result<pb::Approvals> {
    Ok(client
        .call(|mut c| async move { c.list_approvals(pb::ListApprovalsRequest {}).await })
        .await?)
}

/// `fabricctl approvals ...`.
pub async fn run(cmd: ApprovalsCmd, client: &Client) -> anyhow::Result<Reply> {
    match cmd {
        ApprovalsCmd::List => Ok(Reply::List(
            list(client).await?.requests.iter().map(info_json).collect(),
            &[
                "id",
                "state",
                "requester",
                "operation",
                "expires",
                "decided_by",
            ],
        )),
        ApprovalsCmd::Guards => Ok(Reply::One(guards_json(&list(client).await?))),
        ApprovalsCmd::GuardOn { guard } | ApprovalsCmd::GuardOff { guard } if guard.is_empty() => {
            anyhow::bail!("name a guard (fabricctl approvals guards lists them)")
        }
        ApprovalsCmd::GuardOn { guard } => set_guard(client, guard, true, 0).await,
        ApprovalsCmd::GuardOff { guard } => set_guard(client, guard, false, 0).await,
        ApprovalsCmd::Ttl { seconds } => {
            set_guard(client, String::new(), false, seconds.saturating_mul(1000)).await
        }
    }
}

async fn set_guard(client: &Client, guard: String, on: bool, ttl_ms: u64) -> anyhow::Result<Reply> {
    let req = pb::SetGuardRequest { guard, on, ttl_ms };
    let a = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.set_guard(req).await }
        })
        .await?;
    Ok(Reply::One(guards_json(&a)))
}

/// `fabricctl approve ID`: approves the operation request ID holds, or, with `op`, only if it
/// is the operation of that hash (what the approver reviewed).
pub async fn approve(client: &Client, id: String, op: Option<String>) -> anyhow::Result<Reply> {
    let op_sha256 = match op {
        Some(op) => op,
        None => list(client)
            .await?
            .requests
            .into_iter()
            .find(|r| r.id == id)
            .map(|r| r.op_sha256)
            .ok_or_else(|| anyhow::anyhow!("no approval request {id}"))?,
    };
    let req = pb::ApproveRequest { id, op_sha256 };
    let r = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.approve(req).await }
        })
        .await?;
    Ok(Reply::One(info_json(&r)))
}

/// `fabricctl deny ID --reason R`.
pub async fn deny(client: &Client, id: String, reason: String) -> anyhow::Result<Reply> {
    let req = pb::DenyApprovalRequest { id, reason };
    let r = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.deny_approval(req).await }
        })
        .await?;
    Ok(Reply::One(info_json(&r)))
}
