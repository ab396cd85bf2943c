//! `fabricctl join-token`: one-time tokens with which a new node gets its certificate.
//!
//! The secret is made here and only its SHA-256 is sent to the cluster; the token printed
//! carries the pin of the root CA in your own certificate directory, the one the new node is
//! to trust.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use fabric::identity::ca::spki_pin;
use fabric::identity::join::JoinToken;
use fabric::identity::load::CA_FILE;
use fabric::meta::client::Client;
use proto::meta as pb;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::reply::{Reply, parse_secs, rfc3339_ms};

/// `fabricctl join-token ...`.
#[derive(Subcommand)]
pub enum JoinTokenCmd {
    /// Makes a token for one new node and prints it with the root CA's pin. Give it to the
    /// node as `fabricd node --id ID --join ADDR --token TOKEN ...`; it is good for one join.
    Create {
        /// What the node becomes: storage.
        #[arg(long, default_value = "storage")]
        role: String,
        /// How long the token is valid: seconds, or with s, m or h (at most 24h).
        #[arg(long, default_value = "1h", value_parser = parse_secs)]
        ttl: u64,
    },
    /// Tokens not yet expired, and the node that used each.
    List,
}

fn info_json(t: &pb::JoinTokenInfo) -> Value {
    json!({
        "id": t.id,
        "role": t.role,
        "created_by": t.created_by,
        "expires": rfc3339_ms(t.expires_at_ms),
        "used_by_node": if t.used_by_node == 0 { Value::Null } else { json!(t.used_by_node) },
    })
}

/// Runs `cmd` against the cluster; `cert_dir` is the caller's certificate directory, whose
/// root the token pins.
pub async fn run(cmd: JoinTokenCmd, client: &Client, cert_dir: &Path) -> anyhow::Result<Reply> {
    match cmd {
        JoinTokenCmd::Create { role, ttl } => {
            let ca_path = cert_dir.join(CA_FILE);
            let ca_pem =
                std::fs::read(&ca_path).with_context(|| format!("read {}", ca_path.display()))?;
            let root = CertificateDer::from_pem_slice(&ca_pem)
                .with_context(|| format!("{}: no certificate", ca_path.display()))?;
            let pin = spki_pin(&root).map_err(|e| anyhow::anyhow!("{}: {e}", ca_path.display()))?;
            let token = JoinToken::generate(&pin)?;
            let req = pb::CreateJoinTokenRequest {
                id: token.id().to_owned(),
                secret_sha256: token.secret_digest(),
                role,
                ttl_seconds: ttl,
            };
            let info = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.create_join_token(req).await }
                })
                .await?;
            let mut out = info_json(&info);
            out["token"] = json!(token.to_string());
            out["root_pin"] = json!(pin);
            out["on_the_new_node"] = json!(format!(
                "fabricd node --id ID --roles storage --data-dir DIR --data-addr IP:PORT \
                 --join {} --token {token}",
                client
                    .endpoints()
                    .first()
                    .map_or("MEMBER:PORT", String::as_str)
            ));
            Ok(Reply::One(out))
        }
        JoinTokenCmd::List => {
            let r = client
                .call(|mut c| async move { c.list_join_tokens(pb::ListJoinTokensRequest {}).await })
                .await?;
            Ok(Reply::List(
                r.tokens.iter().map(info_json).collect(),
                &["id", "role", "created_by", "expires", "used_by_node"],
            ))
        }
    }
}
