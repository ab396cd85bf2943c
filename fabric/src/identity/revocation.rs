//! Revoked certificates, by serial number, as a process knows them: the set the cluster keeps
//! in its Raft state, copied here by whoever follows it (members from their own state, nodes
//! and gateways by asking a member every [`REVOCATIONS_REFRESH_MS`]).
//!
//! A revoked certificate is refused at the handshake (`tls::ClientTrust` asks
//! [`Revocations::is_revoked`] after the chain checks out), and a connection already open with
//! it is cut: its owner waits on [`Revocations::revoked`] beside its work. Both happen within
//! one refresh of the revocation reaching the process, well inside 5 s.

use std::collections::BTreeSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

/// How often a node or gateway asks for the revoked serials.
pub const REVOCATIONS_REFRESH_MS: u64 = 2_000;

/// The serial numbers (lowercase hex, as `fabricctl cert issue` prints them) refused now.
#[derive(Debug)]
pub struct Revocations {
    serials: ArcSwap<BTreeSet<String>>,
    /// Bumped by every change, so that open connections look again.
    changed: watch::Sender<u64>,
}

impl Default for Revocations {
    fn default() -> Revocations {
        Revocations {
            serials: ArcSwap::from_pointee(BTreeSet::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl Revocations {
    /// Takes `serials` as the revoked set; open connections are told if it changed.
    pub fn replace(&self, serials: BTreeSet<String>) {
        if **self.serials.load() == serials {
            return;
        }
        self.serials.store(Arc::new(serials));
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.serials.load().contains(serial)
    }

    /// How many serials are revoked.
    pub fn len(&self) -> usize {
        self.serials.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns once `serial` is revoked (at once if it is already).
    pub async fn revoked(&self, serial: &str) {
        let mut changed = self.changed.subscribe();
        loop {
            if self.is_revoked(serial) {
                return;
            }
            if changed.changed().await.is_err() {
                // The set is gone with its process: nothing will be revoked any more.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The serial of the certificate the peer of a finished handshake presented (empty if none,
/// which no revocation names).
pub fn peer_serial(conn: &rustls::CommonState) -> String {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(serial_of)
        .unwrap_or_default()
}

/// The serial number of `cert` as lowercase hex without separators, as revocations name it.
pub fn serial_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(serial_hex(&parsed))
}

/// [`serial_of`] a certificate already parsed.
pub fn serial_hex(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
    crate::hex::encode(cert.raw_serial())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiting_connection_learns_of_its_revocation() {
        let r = Arc::new(Revocations::default());
        let waiter = tokio::spawn({
            let r = Arc::clone(&r);
            async move { r.revoked("0a").await }
        });
        r.replace(["0b".to_owned()].into());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "another serial revoked");
        r.replace(["0a".to_owned(), "0b".to_owned()].into());
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert!(r.is_revoked("0a") && r.len() == 2);
    }
}
