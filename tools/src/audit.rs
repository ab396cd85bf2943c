//! `fabricctl audit`: reading the cluster's audit log, exporting it, and checking an export
//! offline with nothing but the root CA (`verify` and `witness-key` ask no member).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use ed25519_dalek::SigningKey;
use fabric::audit::checkpoint::Checkpoint;
use fabric::audit::entry::AuditEntry;
use fabric::audit::verify::{ExportHeader, entry_line, verify};
use fabric::meta::client::Client;
use proto::meta as pb;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::reply::{Reply, parse_secs, rfc3339_ms};

/// `fabricctl audit ...`.
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Entries of the audit log, oldest first.
    List {
        /// Only entries since this time: RFC 3339, or an age such as 90s, 15m, 2h.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        verb: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// The log's size, what it holds, its newest checkpoint and its limits.
    Status,
    /// Signs a checkpoint of the whole log, then writes it and every entry held to FILE.
    Export { file: PathBuf },
    /// Checks an export offline: every entry against the checkpoints, every checkpoint against
    /// the cell key, the cell key against the root CA. Names the first bad entry.
    Verify {
        file: PathBuf,
        /// The cluster's root CA certificate (ca.pem).
        #[arg(long)]
        ca: PathBuf,
        /// A witness's public key (hex) that must have cosigned the newest checkpoint
        /// (repeatable).
        #[arg(long = "witness")]
        witnesses: Vec<String>,
    },
    /// How many entries are kept (0: all) and at most held; at capacity, calls are refused.
    Configure {
        #[arg(long)]
        retain: u64,
        #[arg(long)]
        capacity: u64,
    },
    /// Makes a witness key (ed25519) in FILE, mode 0600, and prints its public key.
    WitnessKey { file: PathBuf },
    /// Cosigns the newest checkpoint with a witness key, after checking it is signed by the
    /// cell key.
    WitnessSign {
        /// The witness key file (from `witness-key`).
        #[arg(long)]
        key: PathBuf,
        /// The witness's name, as verifiers will see it.
        #[arg(long)]
        name: String,
    },
}

impl AuditCmd {
    /// Whether the command works on local files only.
    pub fn is_local(&self) -> bool {
        matches!(self, AuditCmd::Verify { .. } | AuditCmd::WitnessKey { .. })
    }
}

/// Parses an RFC 3339 time or an age (`90s`, `15m`, `2h`, `3d`) into unix ms.
fn parse_since(s: &str) -> anyhow::Result<u64> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000).max(0) as u64);
    }
    let secs = parse_secs(s).map_err(|e| anyhow::anyhow!("--since: {e}, or a time in RFC 3339"))?;
    Ok(fabric::meta::clock::unix_ms().saturating_sub(secs.saturating_mul(1000)))
}

fn entry_json(text: &str) -> anyhow::Result<Value> {
    let e: AuditEntry = serde_json::from_str(text).context("an audit entry")?;
    Ok(json!({
        "index": e.index,
        "time": rfc3339_ms(e.call.time_ms),
        "principal": e.call.principal,
        "verb": e.call.verb,
        "target": e.call.target,
        "verdict": e.verdict,
        "detail": e.detail,
        "peer": e.call.peer,
    }))
}

fn head_json(head: &pb::AuditHead) -> anyhow::Result<(ExportHeader, Value)> {
    let header: ExportHeader = serde_json::from_str(&head.header_json).context("the audit head")?;
    let newest = header.checkpoints.last();
    let v = json!({
        "size": header.size,
        "first_index": header.first_index,
        "held": head.held,
        "retain": head.retain,
        "capacity": head.capacity,
        "checkpoint_size": newest.map(|c| c.size),
        "checkpoint_time": newest.map(|c| rfc3339_ms(c.time_ms)),
        "root": newest.map(|c| c.root.to_string()),
        "cosigned_by": newest.map(|c| c.cosignatures.iter().map(|w| w.witness.clone()).collect::<Vec<_>>()),
        "cell_key_certified": !header.cell_keys.is_empty(),
    });
    Ok((header, v))
}

/// Runs a command that asks no member.
pub fn run_local(cmd: AuditCmd) -> anyhow::Result<Reply> {
    match cmd {
        AuditCmd::Verify {
            file,
            ca,
            witnesses,
        } => {
            let pem = std::fs::read(&ca).with_context(|| format!("read {}", ca.display()))?;
            // Every root of the file: across a root CA's replacement, older checkpoints are
            // certified under the old root.
            let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .with_context(|| format!("{}: not PEM certificates", ca.display()))?;
            anyhow::ensure!(!roots.is_empty(), "{}: no certificate", ca.display());
            if let Some(reply) = verify_statement_file(&file, &roots)? {
                return Ok(reply);
            }
            let input =
                std::fs::File::open(&file).with_context(|| format!("open {}", file.display()))?;
            let started = std::time::Instant::now();
            let v = verify(std::io::BufReader::new(input), &roots, &witnesses)
                .map_err(|t| anyhow::anyhow!("{}: does not verify: {t}", file.display()))?;
            Ok(Reply::One(json!({
                "verified": true,
                "cluster": v.cluster,
                "first_index": v.first_index,
                "entries": v.entries,
                "size": v.size,
                "root": v.root.to_string(),
                "checkpoints": v.checkpoints,
                "signed_at": rfc3339_ms(v.signed_at_ms),
                "witnesses": v.witnesses,
                "seconds": started.elapsed().as_secs_f64(),
            })))
        }
        AuditCmd::WitnessKey { file } => {
            let mut secret = [0u8; 32];
            fabric::identity::tls::provider()
                .secure_random
                .fill(&mut secret)
                .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
            write_secret(&file, &fabric::hex::encode(&secret))?;
            let key = SigningKey::from_bytes(&secret);
            Ok(Reply::One(json!({
                "file": file.display().to_string(),
                "public_key": fabric::hex::encode(key.verifying_key().as_bytes()),
            })))
        }
        _ => unreachable!("only local commands"),
    }
}

/// Checks `file` as a residency statement, if it is one (`None`: it is not).
fn verify_statement_file(
    file: &Path,
    roots: &[CertificateDer<'_>],
) -> anyhow::Result<Option<Reply>> {
    use fabric::audit::residency::{STATEMENT_FORMAT, SignedStatement, verify_statement};
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?,
        ),
        &mut first,
    )?;
    let Ok(signed) = serde_json::from_str::<SignedStatement>(&first) else {
        return Ok(None);
    };
    if signed.format != STATEMENT_FORMAT {
        return Ok(None);
    }
    let (cluster, s) = verify_statement(&signed, roots)
        .map_err(|e| anyhow::anyhow!("{}: does not verify: {e}", file.display()))?;
    Ok(Some(Reply::One(json!({
        "verified": true,
        "kind": "residency statement",
        "cluster": cluster,
        "volume": s.volume,
        "pool": s.pool,
        "rule": s.rule,
        "inside": s.inside,
        "replicas": s.replicas.len(),
        "stated_at": rfc3339_ms(s.time_ms),
    }))))
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "create {} (an existing key is never replaced)",
                path.display()
            )
        })?;
    writeln!(f, "{text}")?;
    f.sync_all()?;
    Ok(())
}

fn read_witness_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let secret = fabric::hex::decode_array::<32>(text.trim())
        .with_context(|| format!("{}: not a witness key (64 hex digits)", path.display()))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Runs a command against the cluster.
pub async fn run(cmd: AuditCmd, client: &Client) -> anyhow::Result<Reply> {
    match cmd {
        AuditCmd::List {
            since,
            principal,
            verb,
            limit,
        } => {
            let req = pb::ListAuditRequest {
                from_index: 0,
                limit,
                since_ms: since.as_deref().map(parse_since).transpose()?.unwrap_or(0),
                principal: principal.unwrap_or_default(),
                verb: verb.unwrap_or_default(),
            };
            let r = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.list_audit(req).await }
                })
                .await?;
            let rows = r
                .entries
                .iter()
                .map(|t| entry_json(t))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Reply::List(
                rows,
                &[
                    "index",
                    "time",
                    "principal",
                    "verb",
                    "target",
                    "verdict",
                    "detail",
                ],
            ))
        }
        AuditCmd::Status => {
            let head = get_head(client, false).await?;
            Ok(Reply::One(head_json(&head)?.1))
        }
        AuditCmd::Export { file } => export(client, &file).await,
        AuditCmd::Configure { retain, capacity } => {
            let req = pb::ConfigureAuditRequest { retain, capacity };
            let head = client
                .call(|mut c| async move { c.configure_audit(req).await })
                .await?;
            Ok(Reply::One(head_json(&head)?.1))
        }
        AuditCmd::WitnessSign { key, name } => {
            let key = read_witness_key(&key)?;
            let head = get_head(client, true).await?;
            let (header, _) = head_json(&head)?;
            let newest: &Checkpoint = header
                .checkpoints
                .last()
                .context("the log has no checkpoint yet")?;
            newest
                .verify()
                .context("the newest checkpoint's cell key signature")?;
            let c = newest.cosign(&name, &key);
            let req = pb::CosignAuditRequest {
                size: newest.size,
                witness: c.witness,
                key: c.key,
                signature: c.signature,
            };
            let head = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.cosign_audit(req).await }
                })
                .await?;
            Ok(Reply::One(head_json(&head)?.1))
        }
        AuditCmd::Verify { .. } | AuditCmd::WitnessKey { .. } => {
            unreachable!("local commands ask no member")
        }
    }
}

async fn get_head(client: &Client, checkpoint: bool) -> anyhow::Result<pb::AuditHead> {
    Ok(client
        .call(|mut c| async move {
            c.get_audit_head(pb::GetAuditHeadRequest { checkpoint })
                .await
        })
        .await?)
}

async fn export(client: &Client, file: &Path) -> anyhow::Result<Reply> {
    let head = get_head(client, true).await?;
    let (header, _) = head_json(&head)?;
    let tmp = file.with_extension("partial");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?,
    );
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    let mut next = header.first_index;
    while next < header.size {
        let req = pb::ListAuditRequest {
            from_index: next,
            ..Default::default()
        };
        let page = client
            .call(|mut c| {
                let req = req.clone();
                async move { c.list_audit(req).await }
            })
            .await?;
        if page.first_index > next {
            bail!("the log was pruned past entry {next} during the export; export again");
        }
        if page.entries.is_empty() {
            bail!("the log ended at entry {next}, before its checkpoint's size");
        }
        for text in &page.entries {
            if next == header.size {
                break;
            }
            writeln!(out, "{}", entry_line(text))?;
            next += 1;
        }
    }
    out.flush()?;
    out.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, file).with_context(|| format!("rename to {}", file.display()))?;
    Ok(Reply::One(json!({
        "file": file.display().to_string(),
        "first_index": header.first_index,
        "size": header.size,
        "checkpoints": header.checkpoints.len(),
    })))
}
