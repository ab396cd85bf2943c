//! A residency statement: where each replica of a volume sits and under which jurisdiction,
//! signed with the cell key, so that an auditor can keep it and check it later with nothing
//! but the root CA (`fabricctl audit verify STATEMENT --ca ROOT`).

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::checkpoint::verify as verify_signature;
use crate::identity::cell_cert::verify_cell_key;

/// The `format` of a signed statement file.
pub const STATEMENT_FORMAT: &str = "fabric-residency-statement/1";

/// One replica's place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaPlace {
    pub pg: u32,
    pub node: u64,
    /// `cell=..,row=..,rack=..,host=..` as the node registered it.
    pub location: String,
    /// The labels its location carries (`jurisdiction=de`).
    pub labels: BTreeMap<String, String>,
    /// Moving away (a handover in progress): still holds data, no longer placed there.
    pub leaving: bool,
}

/// What the cluster states about a volume's replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub volume: String,
    pub pool: String,
    /// The pool's rule: `residency=de`, other required labels, or empty.
    pub rule: String,
    /// Unix ms, by the member's clock.
    pub time_ms: u64,
    /// The cluster's epoch the statement was read at.
    pub cluster_epoch: u64,
    pub replicas: Vec<ReplicaPlace>,
    /// Whether every replica's location carries every label the rule requires.
    pub inside: bool,
}

/// A statement as written to a file: its exact JSON text, the cell key's signature over it,
/// and the CA's certificate chain of that key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedStatement {
    pub format: String,
    pub statement: String,
    pub key: String,
    pub signature: String,
    pub chain_pem: String,
}

impl Statement {
    pub fn sign(&self, key: &SigningKey, chain_pem: String) -> SignedStatement {
        let statement = serde_json::to_string(self).expect("a statement serializes");
        SignedStatement {
            format: STATEMENT_FORMAT.into(),
            key: crate::hex::encode(key.verifying_key().as_bytes()),
            signature: crate::hex::encode(&key.sign(statement.as_bytes()).to_bytes()),
            statement,
            chain_pem,
        }
    }
}

/// Checks a signed statement against `roots`: the signature by the cell key, the key's
/// certificate up to one of the roots. Returns the cluster and the statement.
pub fn verify_statement(
    signed: &SignedStatement,
    roots: &[CertificateDer<'_>],
) -> Result<(String, Statement), String> {
    if signed.format != STATEMENT_FORMAT {
        return Err(format!(
            "format {:?}, not {STATEMENT_FORMAT}",
            signed.format
        ));
    }
    verify_signature(&signed.key, &signed.signature, signed.statement.as_bytes())
        .map_err(|e| format!("the statement's signature: {e}"))?;
    let statement: Statement =
        serde_json::from_str(&signed.statement).map_err(|e| format!("the statement: {e}"))?;
    let cluster = verify_cell_key(&signed.chain_pem, &signed.key, roots, statement.time_ms)?;
    Ok((cluster.as_str().to_owned(), statement))
}
