//! `fabricctl cell-key rotate` and `fabricctl trust ...`: replacing the cell key, and
//! replacing the root CA in three steps (add the new root, reissue every certificate under it,
//! retire the old root). Each change is guarded by the two-person rule.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use fabric::identity::load::CA_FILE;
use fabric::identity::trust_bundle;
use fabric::meta::client::Client;
use proto::meta as pb;
use serde_json::{Value, json};

use crate::reply::{Reply, rfc3339_ms};

/// `fabricctl cell-key ...`.
#[derive(Subcommand)]
pub enum CellKeyCmd {
    /// A new cell key signs attach capabilities and audit checkpoints from now on; the
    /// previous ones still verify (cell_key.rotate, guarded).
    Rotate,
}

/// `fabricctl trust ...`.
#[derive(Subcommand)]
pub enum TrustCmd {
    /// The root CAs every process trusts, and the root each node's certificate chains to.
    Show,
    /// Step one of replacing the root CA: every member, node and gateway trusts ROOT (the
    /// root.pem of a CA made with `fabricctl ca init`) beside the current roots (ca.rotate,
    /// guarded). Your own ca.pem gets it too.
    Add { root: std::path::PathBuf },
    /// Step three: no process trusts the root with this pin any more. Refused while a node's
    /// certificate still chains to it (ca.rotate, guarded).
    Retire { pin: String },
}

fn bundle_json(b: &pb::TrustBundle) -> Value {
    json!({
        "roots": b.roots.iter().map(|r| json!({
            "pin": r.pin,
            "subject": r.subject,
            "not_after": rfc3339_ms(r.not_after_ms),
        })).collect::<Vec<_>>(),
        "nodes": b.nodes.iter().map(|n| json!({
            "node": n.node,
            "issuer_pin": n.issuer_pin,
            "certificate": n.certificate,
        })).collect::<Vec<_>>(),
    })
}

/// `fabricctl cell-key ...`.
pub async fn cell_key(cmd: CellKeyCmd, client: &Client) -> anyhow::Result<Reply> {
    match cmd {
        CellKeyCmd::Rotate => {
            let keys = client
                .call(|mut c| async move { c.rotate_cell_key(pb::RotateCellKeyRequest {}).await })
                .await?;
            let keys: Vec<String> = keys
                .verifying_keys
                .iter()
                .map(|k| k.iter().map(|b| format!("{b:02x}")).collect())
                .collect();
            Ok(Reply::One(json!({
                "signing_key": keys.last(),
                "verifying_keys": keys,
            })))
        }
    }
}

/// `fabricctl trust ...`; `cert_dir` is the caller's certificate directory.
pub async fn trust(cmd: TrustCmd, client: &Client, cert_dir: &Path) -> anyhow::Result<Reply> {
    let own_ca = cert_dir.join(CA_FILE);
    let req = match cmd {
        TrustCmd::Show => {
            let b = client
                .call(|mut c| async move { c.get_trust(pb::GetTrustRequest {}).await })
                .await?;
            return Ok(Reply::One(bundle_json(&b)));
        }
        TrustCmd::Add { root } => {
            let pem = std::fs::read_to_string(&root)
                .with_context(|| format!("read {}", root.display()))?;
            trust_bundle::parse_root(&pem)
                .map_err(|e| anyhow::anyhow!("{}: {e}", root.display()))?;
            let own = std::fs::read_to_string(&own_ca)
                .with_context(|| format!("read {}", own_ca.display()))?;
            pb::ChangeTrustRequest {
                add_root_pem: pem,
                retire_pin: String::new(),
                current_roots_pem: trust_bundle::pem_blocks(&own),
            }
        }
        TrustCmd::Retire { pin } => pb::ChangeTrustRequest {
            add_root_pem: String::new(),
            retire_pin: pin,
            current_roots_pem: Vec::new(),
        },
    };
    let added = req.add_root_pem.clone();
    let b = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.change_trust(req).await }
        })
        .await?;
    if !added.is_empty() {
        // Members reissued under the new root must still be trusted by this tool.
        let roots = trust_bundle::with_existing_roots(&own_ca, &added);
        let tmp = own_ca.with_extension("pem.tmp");
        std::fs::write(&tmp, roots)
            .and_then(|()| std::fs::rename(&tmp, &own_ca))
            .with_context(|| format!("write {}", own_ca.display()))?;
    }
    Ok(Reply::One(bundle_json(&b)))
}
