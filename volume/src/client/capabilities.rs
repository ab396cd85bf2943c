//! [`Capabilities`]: the attach capabilities the volume client presents to replicas, per
//! volume, shared by every [`Link`](super::Link) of a [`ReplicaPool`](super::ReplicaPool).
//!
//! Whoever attaches a volume (the gateway, from the metadata service's answer) sets its
//! capability here, and sets it again to renew it before it expires or when a new attach
//! grants a newer epoch. A link presents a volume's capability on each session before the
//! session's first request of that volume, and again after each change, lazily: the next
//! request of the volume carries the change, with no pause of the requests in flight (a
//! replica verifies a capability once, when it is presented, so a session that already
//! presented one needs nothing more until the capability changes).

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;

use crate::capability::SignedCapability;
use crate::wire::VolumeId;

/// One volume's capability as the links use it.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    /// Raised by every [`Capabilities::set`], so a session knows whether it presented this
    /// one.
    pub(crate) serial: u64,
    pub(crate) attach_epoch: u64,
    /// The encoded capability, the CAPABILITY frame's payload.
    pub(crate) encoded: Bytes,
}

/// The capabilities the client holds, per volume; updatable at run time.
#[derive(Debug, Default)]
pub struct Capabilities {
    held: RwLock<HashMap<VolumeId, Held>>,
    next_serial: std::sync::atomic::AtomicU64,
}

impl Capabilities {
    /// Holds `signed` for the volume it names, replacing any capability held for it: a
    /// renewal or a newer epoch. Sessions present it before their next request of the volume.
    pub fn set(&self, signed: &SignedCapability) {
        let claims = signed.claims();
        let serial = 1 + self
            .next_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let held = Held {
            serial,
            attach_epoch: claims.attach_epoch(),
            encoded: signed.encode(),
        };
        self.held
            .write()
            .expect("capabilities")
            .insert(claims.volume(), held);
    }

    /// Forgets the capability of `volume` (on detach): nothing more is presented for it.
    pub fn remove(&self, volume: VolumeId) {
        self.held.write().expect("capabilities").remove(&volume);
    }

    /// The capability held for `volume`, decoded.
    pub fn get(&self, volume: VolumeId) -> Option<SignedCapability> {
        let held = self.held(volume)?;
        Some(SignedCapability::decode(&held.encoded).expect("held capabilities were encoded here"))
    }

    pub(crate) fn held(&self, volume: VolumeId) -> Option<Held> {
        self.held
            .read()
            .expect("capabilities")
            .get(&volume)
            .cloned()
    }

    /// The serial of what is held for `volume`: the fast check of a request's path.
    pub(crate) fn serial(&self, volume: VolumeId) -> Option<u64> {
        self.held
            .read()
            .expect("capabilities")
            .get(&volume)
            .map(|h| h.serial)
    }
}
