//! `fabricctl drift`: what differs between each node and its desired state, and exceptions.

use clap::Subcommand;
use fabric::meta::client::Client;
use proto::meta as pb;
use serde_json::{Value, json};

use crate::reply::{Reply, parse_secs, rfc3339_ms};

/// `fabricctl drift [except|accept ...]`.
#[derive(Subcommand)]
pub enum DriftCmd {
    /// Takes what the node reports now for an item as its desired value (a second person
    /// approves it while the drift.accept guard is on).
    Accept { node: u64, item: String },
    /// Lets an item of a node differ for a while (it expires), with a reason.
    Except {
        node: u64,
        item: String,
        /// How long: seconds, or with m, h or d.
        #[arg(long = "for", value_parser = parse_secs)]
        for_seconds: u64,
        #[arg(long)]
        reason: String,
    },
}

fn rows(r: &pb::DriftReport) -> Vec<Value> {
    r.items
        .iter()
        .map(|d| {
            json!({
                "node": d.node,
                "item": d.item,
                "class": d.class,
                "desired": d.desired,
                "reported": d.reported,
                "since": rfc3339_ms(d.since_ms),
                "excepted_until": (d.excepted_until_ms != 0).then(|| rfc3339_ms(d.excepted_until_ms)),
            })
        })
        .collect()
}

const COLUMNS: &[&str] = &[
    "node",
    "item",
    "class",
    "desired",
    "reported",
    "since",
    "excepted_until",
];

pub async fn run(cmd: Option<DriftCmd>, client: &Client) -> anyhow::Result<Reply> {
    let report = match cmd {
        None => {
            client
                .call(|mut c| async move { c.list_drift(pb::ListDriftRequest {}).await })
                .await?
        }
        Some(DriftCmd::Accept { node, item }) => {
            let req = pb::AcceptDriftRequest { node, item };
            client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.accept_drift(req).await }
                })
                .await?
        }
        Some(DriftCmd::Except {
            node,
            item,
            for_seconds,
            reason,
        }) => {
            let req = pb::ExceptDriftRequest {
                node,
                item,
                for_seconds,
                reason,
            };
            client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.except_drift(req).await }
                })
                .await?
        }
    };
    Ok(Reply::List(rows(&report), COLUMNS))
}
