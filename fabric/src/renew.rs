//! A storage node renewing its own certificate: when the leader names its `tls` drift item for
//! repair (expiring within `drift::TLS_EXPIRY_WARNING_DAYS`, or issued under a root older than
//! the trust bundle's newest), the node makes a new key and asks a member to sign it
//! (`RenewCertificate`) for the same principal and server names, then writes it over its
//! certificate directory, from where `identity::rotation` loads it without a restart. One
//! renewal at a time, and at most one per [`RENEW_RETRY_MS`], however often the leader asks.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use proto::meta as pb;

use crate::identity::Identity;
use crate::identity::join::{key_and_csr, write_renewed};
use crate::meta::client::Client;

/// Least time between two renewals a node starts.
pub const RENEW_RETRY_MS: u64 = 60_000;

/// Renews node `node`'s certificate in `cert_dir` when asked.
pub struct Renewer {
    node: u64,
    client: Arc<Client>,
    cert_dir: PathBuf,
    running: AtomicBool,
    last: std::sync::Mutex<Option<Instant>>,
}

impl Renewer {
    pub fn new(node: u64, client: Arc<Client>, cert_dir: PathBuf) -> Arc<Renewer> {
        Arc::new(Renewer {
            node,
            client,
            cert_dir,
            running: AtomicBool::new(false),
            last: std::sync::Mutex::new(None),
        })
    }

    /// Starts a renewal in the background, unless one runs or one started within
    /// [`RENEW_RETRY_MS`].
    pub fn request(self: &Arc<Self>) {
        {
            let mut last = self.last.lock().expect("renewal time");
            if last.is_some_and(|t| t.elapsed() < Duration::from_millis(RENEW_RETRY_MS)) {
                return;
            }
            if self.running.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            match this.renew().await {
                Ok(serial) => {
                    tracing::warn!(node = this.node, %serial, "certificate renewed")
                }
                Err(e) => {
                    tracing::warn!(node = this.node, error = %format!("{e:#}"), "certificate not renewed")
                }
            }
            this.running.store(false, Ordering::Release);
        });
    }

    /// Asks for a fresh certificate and writes it; its serial.
    async fn renew(&self) -> anyhow::Result<String> {
        let current = Identity::load(&self.cert_dir).context("load the current certificate")?;
        let server_names = server_names(&current.chain()[0])?;
        let (key, csr) = key_and_csr()?;
        let req = pb::RenewCertificateRequest {
            node: self.node,
            csr,
            server_names,
        };
        let reply = self
            .client
            .call(|mut c| {
                let req = req.clone();
                async move { c.renew_certificate(req).await }
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let renewed = write_renewed(
            &self.cert_dir,
            &reply.chain_pem,
            &key.serialize_pem(),
            &reply.ca_pem,
        )?;
        Ok(renewed.serial().to_owned())
    }
}

/// The IP addresses and DNS names a certificate names (what the renewed one names again).
fn server_names(leaf: &[u8]) -> anyhow::Result<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| anyhow::anyhow!("the current certificate: {e}"))?;
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| anyhow::anyhow!("the current certificate's names: {e}"))?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string()),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}
