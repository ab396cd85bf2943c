//! Where a connection's export comes from. [`Exports`] is the seam between the handshake and
//! whoever owns the volumes: a fixed list ([`FixedExports`], what `NbdServer::new` builds) or
//! a volume driver that attaches a volume when a client first asks for it and lets go of it
//! once the last connection has left.
//!
//! Opening is asynchronous and may fail in two ways the handshake tells apart:
//! `NBD_REP_ERR_UNKNOWN` (no such export, or not available now) and `NBD_REP_ERR_POLICY`
//! (it exists, but policy forbids this server to serve it, such as a volume another host
//! holds). The message goes to the client verbatim, so it should say what to do.

use std::any::Any;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::peer::Peer;
use super::proto::STRING_MAX_BYTES;
use super::server::{PAYLOAD_MAX_BYTES, PREFERRED_BLOCK_BYTES};
use crate::volume::BlockVolume;

/// Why an export cannot be described or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// No such export, or it cannot be served right now (`NBD_REP_ERR_UNKNOWN`).
    #[error("{0}")]
    Unavailable(String),
    /// The export exists but this server may not serve it to this client
    /// (`NBD_REP_ERR_POLICY`).
    #[error("{0}")]
    Refused(String),
}

/// An export as `NBD_OPT_LIST` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub description: String,
}

/// What `NBD_OPT_INFO` tells about an export without opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub name: String,
    pub description: String,
    pub size_bytes: u64,
    /// The advertised maximum block size.
    pub payload_max_bytes: u32,
}

/// An export one connection holds open, as it stood when opened (its size is the one the
/// connection serves). Whatever `lease` is, it is dropped when the connection ends: a driver
/// counts connections by it.
pub struct Opened {
    pub export: Described,
    pub volume: Arc<dyn BlockVolume>,
    pub lease: Option<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("export", &self.export)
            .field("leased", &self.lease.is_some())
            .finish()
    }
}

impl Described {
    /// `volume` exported under its own name, as it stands now.
    pub fn volume(volume: &dyn BlockVolume, payload_max_bytes: u32) -> Described {
        Described {
            name: volume.name().to_owned(),
            description: describe_volume(volume.name()),
            size_bytes: volume.size(),
            payload_max_bytes,
        }
    }
}

/// The exports a server offers. Names reach these methods as the client sent them, once
/// checked to be UTF-8 of at most [`STRING_MAX_BYTES`]; the empty name has already been
/// replaced by [`default_name`](Exports::default_name).
///
/// Every call names the [`Peer`] asking: its address, and once it has started TLS the
/// certificate chain the server's TLS configuration verified. Authorizing that client for
/// an export is the implementor's business (refuse with [`ExportError::Refused`]).
pub trait Exports: Send + Sync + 'static {
    /// The export an empty name selects, if there is one.
    fn default_name(&self) -> Option<String>;
    /// Every export `peer` may open, for `NBD_OPT_LIST`.
    fn list<'a>(&'a self, peer: &'a Peer) -> BoxFuture<'a, Result<Vec<Listed>, ExportError>>;
    /// Describes `name` for `NBD_OPT_INFO` and `NBD_OPT_*_META_CONTEXT`, without opening it.
    fn describe<'a>(
        &'a self,
        peer: &'a Peer,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Described, ExportError>>;
    /// Opens `name` for one connection of `peer` (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`).
    fn open<'a>(
        &'a self,
        peer: &'a Peer,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Opened, ExportError>>;

    /// Resolves once `peer` may no longer use export `name`, which it opened over TLS — its
    /// certificate was revoked, its permission withdrawn — and the server then closes its
    /// connection. The default never resolves.
    fn withdrawn(&self, peer: &Peer, name: &str) -> BoxFuture<'static, ()> {
        let _ = (peer, name);
        Box::pin(std::future::pending())
    }
}

/// Why a volume cannot be exported under its name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportNameError {
    #[error("export name {0:?} is empty, contains NUL or exceeds {STRING_MAX_BYTES} bytes")]
    BadName(String),
    #[error(
        "export {name:?} accepts only {max_io_bytes} bytes per request; at least {PREFERRED_BLOCK_BYTES} are needed"
    )]
    MaxIoTooSmall { name: String, max_io_bytes: u32 },
}

/// Checks that `volume` can be exported and returns its advertised maximum block size.
pub fn payload_max_of(volume: &dyn BlockVolume) -> Result<u32, ExportNameError> {
    let name = volume.name();
    if name.is_empty() || name.len() > STRING_MAX_BYTES || name.contains('\0') {
        return Err(ExportNameError::BadName(name.to_owned()));
    }
    let max_io_bytes = volume.max_io_bytes();
    if max_io_bytes < PREFERRED_BLOCK_BYTES {
        return Err(ExportNameError::MaxIoTooSmall {
            name: name.to_owned(),
            max_io_bytes,
        });
    }
    Ok(max_io_bytes.min(PAYLOAD_MAX_BYTES))
}

/// The description an export of a volume carries.
pub fn describe_volume(name: &str) -> String {
    format!("Fabric volume {name}")
}

/// A fixed set of exports, opened for as long as the server runs. The first is the default.
pub struct FixedExports {
    entries: Vec<Entry>,
}

struct Entry {
    volume: Arc<dyn BlockVolume>,
    payload_max_bytes: u32,
}

impl FixedExports {
    /// Checks every volume's name and request size; names must be distinct.
    pub fn new(volumes: Vec<Arc<dyn BlockVolume>>) -> Result<FixedExports, FixedExportsError> {
        if volumes.is_empty() {
            return Err(FixedExportsError::NoExports);
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(volumes.len());
        for volume in volumes {
            let payload_max_bytes = payload_max_of(volume.as_ref())?;
            if entries.iter().any(|e| e.volume.name() == volume.name()) {
                return Err(FixedExportsError::DuplicateName(volume.name().to_owned()));
            }
            entries.push(Entry {
                volume,
                payload_max_bytes,
            });
        }
        Ok(FixedExports { entries })
    }

    fn find(&self, name: &str) -> Result<&Entry, ExportError> {
        self.entries
            .iter()
            .find(|e| e.volume.name() == name)
            .ok_or_else(|| ExportError::Unavailable(format!("no export named {name:?}")))
    }
}

/// Why [`FixedExports::new`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FixedExportsError {
    #[error("an NBD server needs at least one export")]
    NoExports,
    #[error("export name {0:?} is used twice")]
    DuplicateName(String),
    #[error(transparent)]
    Name(#[from] ExportNameError),
}

impl Exports for FixedExports {
    fn default_name(&self) -> Option<String> {
        self.entries.first().map(|e| e.volume.name().to_owned())
    }

    // A fixed set is served to whoever may connect: the listener's TLS policy is its only
    // gate, so the peer is not consulted.
    fn list<'a>(&'a self, _peer: &'a Peer) -> BoxFuture<'a, Result<Vec<Listed>, ExportError>> {
        let listed = self
            .entries
            .iter()
            .map(|e| Listed {
                name: e.volume.name().to_owned(),
                description: describe_volume(e.volume.name()),
            })
            .collect();
        Box::pin(std::future::ready(Ok(listed)))
    }

    fn describe<'a>(
        &'a self,
        _peer: &'a Peer,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Described, ExportError>> {
        let described = self
            .find(name)
            .map(|e| Described::volume(e.volume.as_ref(), e.payload_max_bytes));
        Box::pin(std::future::ready(described))
    }

    fn open<'a>(
        &'a self,
        _peer: &'a Peer,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Opened, ExportError>> {
        let opened = self.find(name).map(|e| Opened {
            export: Described::volume(e.volume.as_ref(), e.payload_max_bytes),
            volume: Arc::clone(&e.volume),
            lease: None,
        });
        Box::pin(std::future::ready(opened))
    }
}
