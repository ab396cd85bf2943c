//! A storage node's side of drift detection: what it reports about itself with its
//! heartbeats, and the repairs it makes when the leader asks.
//!
//! Each item is a short text: the hash of the config file as it is on disk now, the software
//! version, the state of the node's certificate, the data directory's file system, and the
//! disk's size. The leader compares them with the node's desired state in Raft (see
//! `meta::drift`); the heartbeat carries only the digest of all items, and the items
//! themselves when the leader does not know that digest yet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Items a node reports, and what each one's drift is.
pub const ITEM_CONFIG: &str = "config";
pub const ITEM_VERSION: &str = "version";
pub const ITEM_TLS: &str = "tls";
pub const ITEM_FILESYSTEM: &str = "filesystem";
pub const ITEM_DISK: &str = "disk";
/// A certificate expiring within this many days is drift.
pub const TLS_EXPIRY_WARNING_DAYS: i64 = 14;

/// How a drifted item is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriftClass {
    /// The node puts it back itself when the leader asks.
    AutoRepair,
    /// Hardware or the host: an operator must look.
    AlertOnly,
    /// Taking the new value as desired needs a second person.
    NeedsApproval,
}

impl DriftClass {
    pub fn of(item: &str) -> DriftClass {
        match item {
            ITEM_CONFIG => DriftClass::AutoRepair,
            ITEM_VERSION => DriftClass::NeedsApproval,
            _ => DriftClass::AlertOnly,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DriftClass::AutoRepair => "auto-repair",
            DriftClass::AlertOnly => "alert-only",
            DriftClass::NeedsApproval => "needs-approval",
        }
    }
}

/// What a node reports and repairs.
#[derive(Clone, Debug)]
pub struct DriftSource {
    /// The node's config file and its text when the node started (what it runs with).
    pub config: Option<(PathBuf, String)>,
    pub cert_dir: PathBuf,
    pub data_dir: PathBuf,
}

/// The digest of a set of items: what heartbeats carry.
pub fn digest(items: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in items {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    crate::hex::encode(&h.finalize())
}

fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(bytes))
}

impl DriftSource {
    /// The items as they are now.
    pub fn report(&self) -> BTreeMap<String, String> {
        let mut items = BTreeMap::new();
        let config = match &self.config {
            None => "none".to_string(),
            Some((path, _)) => match std::fs::read(path) {
                Ok(bytes) => sha256_hex(&bytes),
                Err(e) => format!("unreadable: {}", e.kind()),
            },
        };
        items.insert(ITEM_CONFIG.into(), config);
        items.insert(ITEM_VERSION.into(), env!("CARGO_PKG_VERSION").into());
        items.insert(ITEM_TLS.into(), tls_state(&self.cert_dir));
        items.insert(ITEM_FILESYSTEM.into(), filesystem_of(&self.data_dir));
        items.insert(ITEM_DISK.into(), disk_of(&self.data_dir));
        items
    }

    /// Puts `item` back as the node started with it; only the config file can be.
    pub fn repair(&self, item: &str) -> Result<(), String> {
        match (item, &self.config) {
            (ITEM_CONFIG, Some((path, text))) => {
                let tmp = path.with_extension("repair.tmp");
                std::fs::write(&tmp, text)
                    .and_then(|()| std::fs::rename(&tmp, path))
                    .map_err(|e| format!("restore {}: {e}", path.display()))
            }
            _ => Err(format!("{item} is not repaired by the node")),
        }
    }
}

/// `ok` while the certificate is valid for more than [`TLS_EXPIRY_WARNING_DAYS`], else when it
/// expires (or why it cannot be read).
fn tls_state(cert_dir: &Path) -> String {
    match crate::identity::Identity::load(cert_dir) {
        Err(e) => format!("unusable: {e}"),
        Ok(identity) => {
            let left = identity.not_after() - time::OffsetDateTime::now_utc();
            if left.whole_days() > TLS_EXPIRY_WARNING_DAYS {
                "ok".into()
            } else {
                format!("expires in {} days", left.whole_days())
            }
        }
    }
}

/// The file system type and the mount point holding `dir`, from `/proc/self/mountinfo`.
fn filesystem_of(dir: &Path) -> String {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return "missing".into();
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "unknown".into();
    };
    // Fields: id parent major:minor root mount-point options ... - fstype source super-options
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mount), Some(dash)) = (fields.get(4), fields.iter().position(|f| *f == "-"))
        else {
            continue;
        };
        let Some(fstype) = fields.get(dash + 1) else {
            continue;
        };
        if dir.starts_with(mount) && best.as_ref().is_none_or(|(len, _)| mount.len() > *len) {
            best = Some((mount.len(), format!("{fstype} on {mount}")));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, s)| s)
}

/// The size of the file system holding `dir`, in GiB.
fn disk_of(dir: &Path) -> String {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    format!("{} GiB", (st.f_blocks as u64 * st.f_frsize as u64) >> 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edited_config_file_is_reported_and_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "id = 4\n").unwrap();
        let source = DriftSource {
            config: Some((path.clone(), "id = 4\n".into())),
            cert_dir: dir.path().join("tls"),
            data_dir: dir.path().to_path_buf(),
        };
        let before = source.report();
        assert!(before[ITEM_TLS].starts_with("unusable"));
        assert_ne!(before[ITEM_FILESYSTEM], "missing");
        std::fs::write(&path, "id = 4\nlocation = \"rack=r9\"\n").unwrap();
        let edited = source.report();
        assert_ne!(edited[ITEM_CONFIG], before[ITEM_CONFIG]);
        assert_ne!(digest(&edited), digest(&before));
        source.repair(ITEM_CONFIG).unwrap();
        assert_eq!(source.report()[ITEM_CONFIG], before[ITEM_CONFIG]);
        assert!(source.repair(ITEM_DISK).is_err());
        assert_eq!(DriftClass::of(ITEM_CONFIG), DriftClass::AutoRepair);
        assert_eq!(DriftClass::of(ITEM_DISK), DriftClass::AlertOnly);
    }
}
