//! `fabricctl topology` (labels of locations) and `fabricctl volume residency` (a signed
//! statement of where a volume's replicas sit).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use fabric::audit::residency::SignedStatement;
use fabric::meta::client::Client;
use proto::meta as pb;
use serde_json::json;

use crate::reply::Reply;

/// `fabricctl topology ...`.
#[derive(Subcommand)]
pub enum TopologyCmd {
    /// Labels a location (`row=r1`, `cell=fra1`) with key=value pairs, such as
    /// jurisdiction=de; with none, removes its labels. Guarded by the two-person rule.
    Label {
        location: String,
        labels: Vec<String>,
    },
    /// Every labelled location.
    Labels,
}

fn labels_rows(l: &pb::Labels) -> Vec<serde_json::Value> {
    l.locations
        .iter()
        .map(|loc| {
            let mut labels: Vec<String> =
                loc.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            json!({"location": loc.location, "labels": labels.join(",")})
        })
        .collect()
}

pub async fn run(cmd: TopologyCmd, client: &Client) -> anyhow::Result<Reply> {
    let out = match cmd {
        TopologyCmd::Label { location, labels } => {
            let mut map = HashMap::new();
            for l in &labels {
                let (k, v) = l
                    .split_once('=')
                    .with_context(|| format!("label {l:?}: want key=value"))?;
                map.insert(k.to_owned(), v.to_owned());
            }
            let req = pb::SetLabelsRequest {
                location,
                labels: map,
            };
            client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.set_labels(req).await }
                })
                .await?
        }
        TopologyCmd::Labels => {
            client
                .call(|mut c| async move { c.list_labels(pb::ListLabelsRequest {}).await })
                .await?
        }
    };
    Ok(Reply::List(labels_rows(&out), &["location", "labels"]))
}

/// The signed statement of where volume `name`'s replicas sit; written to `out` if given.
pub async fn statement(client: &Client, name: &str, out: Option<&Path>) -> anyhow::Result<Reply> {
    let req = pb::GetVolumeRequest { name: name.into() };
    let r = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.volume_residency(req).await }
        })
        .await?;
    let signed: SignedStatement =
        serde_json::from_str(&r.statement_json).context("the residency statement")?;
    if let Some(out) = out {
        std::fs::write(out, format!("{}\n", r.statement_json))
            .with_context(|| format!("write {}", out.display()))?;
    }
    let statement: serde_json::Value = serde_json::from_str(&signed.statement)?;
    Ok(Reply::One(json!({
        "volume": statement["volume"],
        "pool": statement["pool"],
        "rule": statement["rule"],
        "inside": statement["inside"],
        "replicas": statement["replicas"].as_array().map_or(0, |r| r.len()),
        "jurisdictions": jurisdictions(&statement),
        "signed_by": signed.key,
        "file": out.map(|p| p.display().to_string()),
    })))
}

/// The distinct jurisdictions the replicas sit in.
fn jurisdictions(statement: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = statement["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            r["labels"][fabric::meta::state_residency::JURISDICTION]
                .as_str()
                .unwrap_or("(none)")
                .to_owned()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
