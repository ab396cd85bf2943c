//! Certificates rotate without a restart: a process reloads its certificate directory when
//! its files change (looked at every [`ROTATION_CHECK_MS`]) or at once on SIGHUP. Handshakes
//! from then on present the new certificate; connections open keep the one they began with,
//! so IO never pauses for a rotation. A directory that does not load (half written, a key of
//! another certificate, another principal) is logged and the old certificate stays.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::ClusterTls;
use super::load::{CA_FILE, CHAIN_FILE, KEY_FILE};

/// How often the certificate files are looked at.
pub const ROTATION_CHECK_MS: u64 = 5_000;

/// The modification times of a certificate directory's three files.
pub(crate) fn stamps(dir: &Path) -> Vec<Option<SystemTime>> {
    [CHAIN_FILE, KEY_FILE, CA_FILE]
        .iter()
        .map(|f| {
            std::fs::metadata(dir.join(f))
                .and_then(|m| m.modified())
                .ok()
        })
        .collect()
}

/// Reloads `tls` from its directory whenever its files change or SIGHUP arrives, for as long
/// as the task runs. Does nothing for an identity not loaded from a directory.
pub async fn follow_files(tls: Arc<ClusterTls>) {
    let Some(dir) = tls.dir().map(Path::to_path_buf) else {
        return;
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = stamps(&dir);
    loop {
        let signalled = tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ROTATION_CHECK_MS)) => false,
            Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => None } } => true,
        };
        let now = stamps(&dir);
        if !signalled && now == seen {
            continue;
        }
        match tls.reload() {
            Ok(()) => {
                seen = now;
                tracing::info!(dir = %dir.display(), principal = %tls.principal(), "certificate reloaded: new handshakes present it");
            }
            // Tried again at the next change or signal (a half-written directory settles).
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "certificate not reloaded; the current one stays")
            }
        }
    }
}
