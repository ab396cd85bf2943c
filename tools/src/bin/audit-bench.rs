//! `audit-bench`: how long `fabricctl audit verify` takes on a large export.
//!
//! Writes an export of N entries as a cluster would (entries like real calls, a checkpoint
//! signed with a CA-certified cell key every 1,024 entries and at the end), then verifies it
//! with the same code `fabricctl audit verify` runs, several times, and prints the median.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use ed25519_dalek::SigningKey;
use fabric::audit::checkpoint::Checkpoint;
use fabric::audit::entry::{AuditCall, AuditEntry, Verdict};
use fabric::audit::log::CHECKPOINT_EVERY;
use fabric::audit::merkle::{Frontier, leaf_hash};
use fabric::audit::verify::{CellKeyCert, EXPORT_FORMAT, ExportHeader, entry_line, verify};
use fabric::identity::ca::{self, CertificateAuthority};
use fabric::identity::principal::ClusterName;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

#[derive(Parser)]
#[command(
    name = "audit-bench",
    about = "Time the offline check of a large audit export"
)]
struct Args {
    /// Entries in the export.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Verifications to time.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where to write the export (and the CA); removed afterwards.
    #[arg(long, default_value = "./.audit-bench")]
    dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    fabric::identity::tls::install_default_provider();
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let result = run(&args);
    let _ = std::fs::remove_dir_all(&args.dir);
    result
}

fn run(args: &Args) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let ca_dir = args.dir.join("ca");
    ca::init(&ca_dir, &ClusterName::new("bench")?, now)?;
    let ca = CertificateAuthority::open(&ca_dir)?;
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let public = key.verifying_key().to_bytes();
    let root = CertificateDer::from_pem_slice(ca.root_pem().as_bytes())?;

    // Entries first (to learn the checkpoints), then the header and the entries again.
    let started = Instant::now();
    let body = args.dir.join("entries");
    let mut out = BufWriter::new(std::fs::File::create(&body)?);
    let mut tree = Frontier::default();
    let mut checkpoints = Vec::new();
    let time_ms = fabric::meta::clock::unix_ms();
    for index in 0..args.entries {
        let entry = AuditEntry {
            index,
            call: AuditCall {
                time_ms: time_ms + index,
                principal: format!("fabric://bench/user/operator{}", index % 7),
                verb: "volume.create".into(),
                target: format!("pool/gold/volume-{index}"),
                request_sha256: leaf_hash(&index.to_be_bytes()),
                peer: "10.20.30.40:51234".into(),
            },
            verdict: Verdict::Done,
            detail: String::new(),
            policy_epoch: 12,
        };
        let text = entry.text();
        tree.push(leaf_hash(text.as_bytes()));
        writeln!(out, "{}", entry_line(&text))?;
        if tree.size().is_multiple_of(CHECKPOINT_EVERY) || index + 1 == args.entries {
            checkpoints.push(Checkpoint::sign(
                tree.size(),
                tree.root(),
                time_ms + index,
                &key,
            ));
        }
    }
    out.flush()?;
    drop(out);
    let header = ExportHeader {
        format: EXPORT_FORMAT.into(),
        first_index: 0,
        base: Frontier::default(),
        size: args.entries,
        checkpoints,
        cell_keys: vec![CellKeyCert {
            key: fabric::hex::encode(&public),
            chain_pem: ca.certify_cell_key(&public, now)?,
        }],
    };
    let file = args.dir.join("audit.tlog");
    let mut export = BufWriter::new(std::fs::File::create(&file)?);
    serde_json::to_writer(&mut export, &header)?;
    export.write_all(b"\n")?;
    for line in std::io::BufReader::new(std::fs::File::open(&body)?).lines() {
        writeln!(export, "{}", line?)?;
    }
    export.flush()?;
    drop(export);
    let bytes = std::fs::metadata(&file)?.len();
    println!(
        "export: {} entries, {} checkpoints, {:.1} MiB, written in {:.2} s",
        args.entries,
        header.checkpoints.len(),
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );

    let mut seconds = Vec::new();
    for run in 1..=args.runs {
        let t = Instant::now();
        let input = std::io::BufReader::new(std::fs::File::open(&file)?);
        let v =
            verify(input, std::slice::from_ref(&root), &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
        let s = t.elapsed().as_secs_f64();
        anyhow::ensure!(v.size == args.entries, "verified {} entries", v.size);
        println!("verify run {run}: {s:.2} s");
        seconds.push(s);
    }
    seconds.sort_by(f64::total_cmp);
    let median = seconds[seconds.len() / 2];
    println!(
        "audit verify of {} entries: median {median:.2} s ({:.2} µs per entry; target ≤ 10 s)",
        args.entries,
        median * 1e6 / args.entries as f64
    );
    let _ = std::fs::remove_file(&body).context("remove the entries file");
    Ok(())
}
