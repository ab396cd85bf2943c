//! A storage node's side of drift detection: what it reports about itself with its
//! heartbeats, and the repairs it makes when the leader asks.
//!
//! Each item is a short text: the hash of the config file as it is on disk now, the software
//! version, its certificate (serial, issuing root, expiry), the roots it trusts, the TCP
//! ports it listens on, the data directory's file system, and the disk's size. The leader
//! compares them with the node's desired state in Raft (see `meta::drift`); the heartbeat
//! carries only the digest of all items, and the items themselves when the leader does not
//! know that digest yet. A node reports nothing until it serves everything it will
//! ([`DriftSource::serving`]), so its first report, its desired state, is complete.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

/// Items a node reports, and what each one's drift is.
pub const ITEM_CONFIG: &str = "config";
pub const ITEM_VERSION: &str = "version";
pub const ITEM_TLS: &str = "tls";
pub const ITEM_TRUST: &str = "trust";
pub const ITEM_LISTENERS: &str = "listeners";
pub const ITEM_FILESYSTEM: &str = "filesystem";
pub const ITEM_DISK: &str = "disk";
/// A certificate expiring within this many days is drift.
pub const TLS_EXPIRY_WARNING_DAYS: i64 = 14;

/// A node's certificate as its `tls` item states it:
/// `serial=HEX issuer=sha256:HEX expires=RFC3339`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsReport {
    pub serial: String,
    /// The pin of the root it chains to.
    pub issuer: String,
    pub expires: time::OffsetDateTime,
}

impl std::fmt::Display for TlsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "serial={} issuer={} expires={}",
            self.serial,
            self.issuer,
            crate::identity::ca::rfc3339(self.expires)
        )
    }
}

impl std::str::FromStr for TlsReport {
    type Err = String;

    fn from_str(s: &str) -> Result<TlsReport, String> {
        let fields: BTreeMap<&str, &str> = s
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .collect();
        let field = |k: &str| fields.get(k).copied().ok_or(format!("no {k} in {s:?}"));
        let expires = time::OffsetDateTime::parse(
            field("expires")?,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| format!("expires: {e}"))?;
        Ok(TlsReport {
            serial: field("serial")?.to_owned(),
            issuer: field("issuer")?.to_owned(),
            expires,
        })
    }
}

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
            // The config file is written back; a certificate is renewed (`crate::renew`).
            ITEM_CONFIG | ITEM_TLS => DriftClass::AutoRepair,
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
    /// Set once the node serves everything it will (its listeners are all bound): it reports
    /// nothing before.
    pub serving: Arc<AtomicBool>,
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
    /// A source of these files that reports once [`DriftSource::serving`] is set.
    pub fn new(config: Option<(PathBuf, String)>, cert_dir: PathBuf, data_dir: PathBuf) -> Self {
        DriftSource {
            config,
            cert_dir,
            data_dir,
            serving: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The items as they are now, or none before the node serves.
    pub fn report_when_serving(&self) -> Option<BTreeMap<String, String>> {
        self.serving.load(Ordering::Acquire).then(|| self.report())
    }

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
        let (tls, trust) = tls_state(&self.cert_dir);
        items.insert(ITEM_TLS.into(), tls);
        items.insert(ITEM_TRUST.into(), trust);
        items.insert(ITEM_LISTENERS.into(), listeners());
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

/// The `tls` item (the certificate's serial, issuing root and expiry) and the `trust` item
/// (the pins of the roots in `ca.pem`), or why the directory cannot be used.
fn tls_state(cert_dir: &Path) -> (String, String) {
    let identity = match crate::identity::Identity::load(cert_dir) {
        Ok(identity) => identity,
        Err(e) => {
            let unusable = format!("unusable: {e}");
            return (unusable.clone(), unusable);
        }
    };
    let report = TlsReport {
        serial: identity.serial().to_owned(),
        issuer: crate::identity::trust_bundle::identity_issuer_pin(&identity)
            .unwrap_or_else(|| "none".into()),
        expires: identity.not_after(),
    };
    (
        report.to_string(),
        crate::identity::trust_bundle::pins(identity.roots()),
    )
}

/// The TCP addresses this process listens on, sorted, joined by commas: each of its file
/// descriptors that is a listening stream socket of IPv4 or IPv6, by `getsockopt` and
/// `getsockname` (reading `/proc/net/tcp` instead walks every socket of the host).
fn listeners() -> String {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return "unknown".into();
    };
    let out: BTreeSet<String> = fds
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::c_int>().ok())
        .filter_map(listening_tcp)
        .map(|a| a.to_string())
        .collect();
    out.into_iter().collect::<Vec<_>>().join(",")
}

/// The address `fd` listens on, if it is a listening TCP socket.
fn listening_tcp(fd: libc::c_int) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
    let int_option = |option: libc::c_int| -> Option<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid out-parameters of the sizes given; a descriptor
        // that is not a socket (or no longer open) only makes the call fail.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    if int_option(libc::SO_ACCEPTCONN)? != 1 || int_option(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return None;
    }
    // SAFETY: a zeroed sockaddr_storage is a valid value, and `len` says its size.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is large enough for any address family, as `len` tells the kernel.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: libc::sockaddr_in =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::from((
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
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
        let source = DriftSource::new(
            Some((path.clone(), "id = 4\n".into())),
            dir.path().join("tls"),
            dir.path().to_path_buf(),
        );
        assert!(
            source.report_when_serving().is_none(),
            "nothing before serving"
        );
        source.serving.store(true, Ordering::Release);
        let before = source.report_when_serving().unwrap();
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

    #[test]
    fn listeners_are_this_process_listening_sockets() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0").ok();
        let connected = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let listed = listeners();
        assert!(
            listed.contains(&v4.local_addr().unwrap().to_string()),
            "{listed}"
        );
        if let Some(v6) = &v6 {
            assert!(
                listed.contains(&v6.local_addr().unwrap().to_string()),
                "{listed}"
            );
        }
        assert!(
            !listed.contains(&connected.local_addr().unwrap().to_string()),
            "a connection is no listener"
        );
        let closed = v4.local_addr().unwrap().to_string();
        drop(v4);
        assert!(!listeners().contains(&closed), "a closed listener is gone");
    }

    #[test]
    fn a_tls_report_reads_back() {
        let r = TlsReport {
            serial: "1a2b".into(),
            issuer: "sha256:00ff".into(),
            expires: time::macros::datetime!(2027-01-05 10:00:00 UTC),
        };
        assert_eq!(r.to_string().parse::<TlsReport>().unwrap(), r);
        assert!("unusable: no such file".parse::<TlsReport>().is_err());
    }
}
