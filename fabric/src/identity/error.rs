//! Errors of the CA, of issuing and of loading identities. Each names the file it concerns, so
//! an operator can tell which of a directory's PEM files to fix.

use std::path::PathBuf;

use super::principal::PrincipalError;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} already exists; refusing to overwrite {what}", path.display())]
    Exists { path: PathBuf, what: &'static str },
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("{}: the private key does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: {source}", path.display())]
    Principal {
        path: PathBuf,
        source: PrincipalError,
    },
    #[error("{}: not trusted by {}: {reason}", chain.display(), ca.display())]
    Untrusted {
        chain: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Invalid(#[from] PrincipalError),
    #[error("{0}")]
    Request(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
}
