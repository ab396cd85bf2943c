//! `fabricctl drift`: what differs between each node and its desired state, and exceptions.

use clap::Subcommand;
use fabric::meta::client::Client;
use proto::meta as pb;
use serde_json::{Value, json};

use crate::reply::{Reply, rfc3339_ms};

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
        #[arg(long = "for", value_parser = parse_for)]
        for_seconds: u64,
        #[arg(long)]
        reason: String,
    },
}

fn parse_for(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: want a number with s, m, h or d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    Ok(n.saturating_mul(scale))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_for("90"), Ok(90));
        assert_eq!(parse_for("72h"), Ok(72 * 3600));
        assert_eq!(parse_for("2d"), Ok(2 * 86_400));
        assert!(parse_for("1w").is_err());
    }
}
