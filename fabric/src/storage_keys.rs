//! The cell's verifying keys on a storage node: what its replica server checks attach
//! capabilities against. Asked of the metadata members (`GetCellKeys`) at start and every
//! [`KEYS_REFRESH_MS`], and kept in the store's directory (`cell-keys.json`), so that a node
//! restarting while the metadata service is away still admits the writer it had.
//!
//! A node that knows no key yet (a new one) waits for the cluster's before it registers
//! ([`first`]), so no writer is sent to it before it can admit one. Until it knows any key its
//! key set holds one key nobody has the secret of (made here and thrown away), so every
//! capability is refused rather than any accepted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use proto::meta as pb;
use tokio::sync::watch;
use volume::capability::CapabilityKeys;

use crate::meta::cell_key::{hex, unhex};
use crate::meta::client::Client;

/// How often the node asks for the cell's keys again (a rotation reaches it within this).
pub const KEYS_REFRESH_MS: u64 = 10_000;
/// The file the keys are kept in, under the store's directory.
pub const KEYS_FILE: &str = "cell-keys.json";

/// Pause between the asks of a node that knows no key yet.
const FIRST_KEYS_RETRY_MS: u64 = 200;

/// The node's key set: from its file if there is one, else one that admits nothing (and
/// false).
pub fn load(store_dir: &Path) -> (Arc<CapabilityKeys>, bool) {
    let keys = read(&store_dir.join(KEYS_FILE)).unwrap_or_default();
    let known = !keys.is_empty();
    let keys = match known {
        true => keys,
        false => vec![unusable_key()],
    };
    (
        Arc::new(CapabilityKeys::new(keys).expect("one to four keys")),
        known,
    )
}

/// Asks for the cluster's keys until it has them (or `stop`).
pub async fn first(
    keys: &CapabilityKeys,
    store_dir: &Path,
    client: &Client,
    stop: &mut watch::Receiver<bool>,
) {
    let mut asked = 0u64;
    while !refresh(keys, store_dir, client).await {
        asked += 1;
        if asked.is_multiple_of(50) {
            tracing::info!("waiting for the cluster's cell key before serving replicas");
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_millis(FIRST_KEYS_RETRY_MS)) => {}
        }
    }
}

/// Asks for the cluster's keys once and takes them if they changed; whether the node now
/// holds the cluster's keys.
async fn refresh(keys: &CapabilityKeys, store_dir: &Path, client: &Client) -> bool {
    let fetched = client
        .call(|mut c| async move { c.get_cell_keys(pb::GetCellKeysRequest {}).await })
        .await;
    let reply = match fetched {
        Ok(reply) => reply,
        Err(e) => {
            tracing::debug!(error = %e.message(), "cell keys not fetched");
            return false;
        }
    };
    let new: Vec<VerifyingKey> = reply
        .verifying_keys
        .iter()
        .filter_map(|k| VerifyingKey::try_from(k.as_slice()).ok())
        .collect();
    if new.is_empty() {
        return false;
    }
    if *keys.current() == new {
        return true;
    }
    match keys.replace(new.clone()) {
        Ok(()) => {
            tracing::info!(keys = new.len(), "cell keys for attach capabilities");
            if let Err(e) = write(&store_dir.join(KEYS_FILE), &new) {
                tracing::warn!(error = %e, "cell keys not kept on disk");
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cell keys refused");
            false
        }
    }
}

/// Keeps `keys` equal to the cluster's until `stop`, writing each change to the file.
pub async fn follow(
    keys: Arc<CapabilityKeys>,
    store_dir: PathBuf,
    client: Arc<Client>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        refresh(&keys, &store_dir, &client).await;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_millis(KEYS_REFRESH_MS)) => {}
        }
    }
}

/// A verifying key whose secret was never kept.
fn unusable_key() -> VerifyingKey {
    crate::meta::cell_key::CellKey::generate()
        .signing_key()
        .expect("a generated key")
        .verifying_key()
}

fn read(path: &Path) -> Option<Vec<VerifyingKey>> {
    let text = std::fs::read(path).ok()?;
    let hex: Vec<String> = serde_json::from_slice(&text).ok()?;
    hex.iter()
        .map(|h| VerifyingKey::try_from(unhex(h)?.as_slice()).ok())
        .collect()
}

fn write(path: &Path, keys: &[VerifyingKey]) -> std::io::Result<()> {
    let hex: Vec<String> = keys.iter().map(|k| hex(&k.to_bytes())).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&hex)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_a_restart_and_none_known_admits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (first, known) = load(dir.path());
        assert!(!known);
        assert_eq!(first.current().len(), 1, "a key nobody can sign with");
        let key = unusable_key();
        write(&dir.path().join(KEYS_FILE), &[key]).unwrap();
        let (loaded, known) = load(dir.path());
        assert!(known);
        assert_eq!(*loaded.current(), vec![key]);
    }
}
