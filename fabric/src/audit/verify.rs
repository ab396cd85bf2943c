//! An export of the audit log, and its check with nothing but the root CA.
//!
//! The file is text. The first line is a JSON header: the index of the first entry held, the
//! Merkle frontier of the pruned prefix before it, the signed checkpoints, and the CA's
//! certificates of the cell keys that signed them. Every other line is one entry: its leaf
//! hash, a space, and its exact text. [`verify`] reads it once, front to back:
//!
//! - each cell key must be certified by the root (through the intermediate), and each
//!   checkpoint signed by such a key; a pruned prefix must end at a signed checkpoint whose
//!   root is the frontier's;
//! - each line must hold the next index (a missing, inserted or reordered entry is named),
//!   and its text must hash to its recorded leaf (a changed byte is named);
//! - the tree must reach every checkpoint's root at its size (a change whose recorded hash was
//!   rewritten too is caught there, and the range it lies in named), and the entries must end
//!   exactly at the newest checkpoint (a truncated or extended export is named).

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::entry::AuditEntry;
use super::log::AuditLog;
use super::merkle::{Frontier, Hash, leaf_hash};
use crate::identity::cell_cert::verify_cell_key;

/// The header's `format`.
pub const EXPORT_FORMAT: &str = "fabric-audit-export/1";

/// A cell key and the CA's certificate chain of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellKeyCert {
    pub key: String,
    pub chain_pem: String,
}

/// The first line of an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHeader {
    pub format: String,
    pub first_index: u64,
    pub base: Frontier,
    pub size: u64,
    pub checkpoints: Vec<Checkpoint>,
    pub cell_keys: Vec<CellKeyCert>,
}

/// One entry's line: its leaf hash, a space, its text.
pub fn entry_line(text: &str) -> String {
    format!("{} {text}", leaf_hash(text.as_bytes()))
}

impl ExportHeader {
    /// The header of an export of everything `log` holds, with the certificates `certs`
    /// (cell key hex → chain PEM).
    pub fn of(log: &AuditLog, certs: &BTreeMap<String, String>) -> ExportHeader {
        ExportHeader {
            format: EXPORT_FORMAT.into(),
            first_index: log.first_index(),
            base: log.base().clone(),
            size: log.size(),
            checkpoints: log.checkpoints().to_vec(),
            cell_keys: certs
                .iter()
                .map(|(key, chain_pem)| CellKeyCert {
                    key: key.clone(),
                    chain_pem: chain_pem.clone(),
                })
                .collect(),
        }
    }
}

/// Writes an export: `header`, then one line per entry text.
pub fn write_export<'a>(
    mut out: impl std::io::Write,
    header: &ExportHeader,
    texts: impl IntoIterator<Item = &'a str>,
) -> std::io::Result<()> {
    serde_json::to_writer(&mut out, header)?;
    out.write_all(b"\n")?;
    for text in texts {
        writeln!(out, "{}", entry_line(text))?;
    }
    out.flush()
}

/// What a good export proved.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    pub cluster: String,
    pub first_index: u64,
    pub entries: u64,
    pub size: u64,
    pub root: Hash,
    pub checkpoints: usize,
    /// The newest checkpoint's time, unix ms.
    pub signed_at_ms: u64,
    /// The witnesses asked for, each with the largest size it cosigned.
    pub witnesses: Vec<Witnessed>,
}

/// A witness's cosignature found in an export: it vouches for the log up to `size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Witnessed {
    pub witness: String,
    pub size: u64,
}

/// Why an export does not verify, and the first entry found bad (if the fault is an entry's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tampered {
    pub entry: Option<u64>,
    /// 1-based line of the file.
    pub line: Option<u64>,
    pub reason: String,
}

impl fmt::Display for Tampered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.entry, self.line) {
            (Some(e), Some(l)) => write!(f, "entry {e} (line {l}): {}", self.reason),
            (Some(e), None) => write!(f, "entry {e}: {}", self.reason),
            (None, Some(l)) => write!(f, "line {l}: {}", self.reason),
            (None, None) => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for Tampered {}

fn bad(entry: Option<u64>, line: Option<u64>, reason: impl Into<String>) -> Tampered {
    Tampered {
        entry,
        line,
        reason: reason.into(),
    }
}

/// Checks an export read from `input` against `roots` (the cluster's root CA certificate, or
/// its roots across a replacement),
/// requiring a valid cosignature on the newest checkpoint from each key in `witnesses`
/// (hex ed25519 keys).
pub fn verify(
    input: impl BufRead,
    roots: &[CertificateDer<'_>],
    witnesses: &[String],
) -> Result<Verified, Tampered> {
    let mut lines = input.lines();
    let header_text = lines
        .next()
        .ok_or_else(|| bad(None, Some(1), "the file is empty"))?
        .map_err(|e| bad(None, Some(1), e.to_string()))?;
    let header: ExportHeader = serde_json::from_str(&header_text)
        .map_err(|e| bad(None, Some(1), format!("not an audit export header: {e}")))?;
    if header.format != EXPORT_FORMAT {
        return Err(bad(
            None,
            Some(1),
            format!("format {:?}, not {EXPORT_FORMAT}", header.format),
        ));
    }
    if !header.base.is_well_formed() || header.base.size() != header.first_index {
        return Err(bad(
            None,
            Some(1),
            "the pruned prefix's frontier does not fit its size",
        ));
    }
    let (cluster, checkpoints) = trusted_checkpoints(&header, roots)?;
    if header.first_index > 0 {
        let covered = checkpoints
            .get(&header.first_index)
            .is_some_and(|c| c.root == header.base.root());
        if !covered {
            return Err(bad(
                Some(header.first_index),
                Some(1),
                "the entries start after a pruned prefix that no signed checkpoint covers",
            ));
        }
    }
    let newest = checkpoints
        .values()
        .next_back()
        .ok_or_else(|| bad(None, Some(1), "the export holds no signed checkpoint"))?;
    let mut witnessed = Vec::new();
    for want in witnesses {
        let found = checkpoints.values().rev().find_map(|c| {
            c.cosignatures
                .iter()
                .find(|w| &w.key == want && c.verify_cosignature(w).is_ok())
                .map(|w| Witnessed {
                    witness: w.witness.clone(),
                    size: c.size,
                })
        });
        witnessed.push(found.ok_or_else(|| {
            bad(
                None,
                Some(1),
                format!("witness key {want} cosigned no checkpoint of the export"),
            )
        })?);
    }

    let mut tree = header.base.clone();
    let mut covered_from = header.first_index;
    for (i, line) in lines.enumerate() {
        let line_no = i as u64 + 2;
        let index = tree.size();
        let line = line.map_err(|e| bad(Some(index), Some(line_no), e.to_string()))?;
        let (leaf_hex, text) = line.split_once(' ').ok_or_else(|| {
            bad(
                Some(index),
                Some(line_no),
                "not an entry line (leaf hash, space, entry)",
            )
        })?;
        let entry: AuditEntry = serde_json::from_str(text)
            .map_err(|e| bad(Some(index), Some(line_no), format!("not an entry: {e}")))?;
        if entry.index != index {
            return Err(bad(
                Some(index),
                Some(line_no),
                format!(
                    "the line holds entry {} where entry {index} belongs: an entry was removed, \
                     inserted or moved",
                    entry.index
                ),
            ));
        }
        let leaf = leaf_hash(text.as_bytes());
        if Hash::from_hex(leaf_hex) != Some(leaf) {
            return Err(bad(
                Some(index),
                Some(line_no),
                "the entry was changed: its text does not hash to its recorded leaf",
            ));
        }
        tree.push(leaf);
        if let Some(c) = checkpoints.get(&tree.size()) {
            if c.root != tree.root() {
                return Err(bad(
                    Some(covered_from),
                    None,
                    format!(
                        "entries {covered_from} to {index} do not hash to the root signed at size \
                         {}: one of them was changed and its recorded hash rewritten; the first \
                         that may be bad is {covered_from}",
                        c.size
                    ),
                ));
            }
            covered_from = tree.size();
        }
    }
    let size = tree.size();
    if size < newest.size {
        return Err(bad(
            Some(size),
            None,
            format!(
                "the export ends before entry {size}, but the log's signed size is {}: the \
                 entries from {size} on were cut off",
                newest.size
            ),
        ));
    }
    if size > newest.size {
        return Err(bad(
            Some(newest.size),
            None,
            format!(
                "entries {} to {} are covered by no signed checkpoint: they were added to the \
                 export",
                newest.size,
                size - 1
            ),
        ));
    }
    Ok(Verified {
        cluster,
        first_index: header.first_index,
        entries: size - header.first_index,
        size,
        root: tree.root(),
        checkpoints: checkpoints.len(),
        signed_at_ms: newest.time_ms,
        witnesses: witnessed,
    })
}

/// The header's checkpoints by size, each signed by a cell key the root certified.
fn trusted_checkpoints<'h>(
    header: &'h ExportHeader,
    roots: &[CertificateDer<'_>],
) -> Result<(String, BTreeMap<u64, &'h Checkpoint>), Tampered> {
    let mut trusted: BTreeMap<&str, String> = BTreeMap::new();
    for c in &header.checkpoints {
        if trusted.contains_key(c.key.as_str()) {
            continue;
        }
        let cert = header
            .cell_keys
            .iter()
            .find(|k| k.key == c.key)
            .ok_or_else(|| {
                bad(
                    None,
                    Some(1),
                    format!(
                        "checkpoint of size {} is signed by key {}, which the export has no \
                         certificate of",
                        c.size, c.key
                    ),
                )
            })?;
        let cluster = verify_cell_key(&cert.chain_pem, &cert.key, roots, c.time_ms)
            .map_err(|e| bad(None, Some(1), format!("cell key {}: {e}", c.key)))?;
        trusted.insert(&c.key, cluster.as_str().to_owned());
    }
    let clusters: std::collections::BTreeSet<&String> = trusted.values().collect();
    if clusters.len() > 1 {
        return Err(bad(None, Some(1), "the cell keys name different clusters"));
    }
    let cluster = clusters.into_iter().next().cloned().unwrap_or_default();
    let mut by_size = BTreeMap::new();
    for c in &header.checkpoints {
        c.verify()
            .map_err(|e| bad(None, Some(1), format!("checkpoint of size {}: {e}", c.size)))?;
        if c.size < header.first_index || c.size > header.size {
            return Err(bad(
                None,
                Some(1),
                format!(
                    "checkpoint of size {} lies outside the export ({} to {})",
                    c.size, header.first_index, header.size
                ),
            ));
        }
        if by_size.insert(c.size, c).is_some() {
            return Err(bad(
                None,
                Some(1),
                format!("two checkpoints of size {}", c.size),
            ));
        }
    }
    Ok((cluster, by_size))
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
