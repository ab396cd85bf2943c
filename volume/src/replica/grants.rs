//! [`Grants`]: what one connection of the replica server may do, by the attach capabilities
//! (see [`crate::capability`]) it presented.
//!
//! A fenced request (one that passes its volume's [`Fence`](super::fence::Fence), which may
//! raise the volume's epoch for good) is admitted only for the volume and attach epoch that
//! this connection presented a valid capability for: an epoch is never taken on a frame's
//! word. The check is a map lookup; the signature was verified once, when the capability was
//! presented. The connection's reader consults and updates the grants in frame order, so a
//! presentation takes effect for every request read after it, and none read before.
//!
//! Without capability keys in the server's configuration, every request is admitted as
//! before and a presented capability is acknowledged unread (a client that presents works
//! against a replica that does not check).

use std::collections::HashMap;
use std::sync::Arc;

use crate::capability::{CapabilityError, CapabilityKeys, SignedCapability};
use crate::wire::{Op, Reply, Request, RequestHeader, Status, VolumeId};

/// Most volumes one connection holds capabilities for at once. A gateway multiplexes the
/// volumes it serves over one connection per replica server, so this is generous; it bounds
/// what one peer's presentations can make the server keep.
pub const VOLUMES_PER_CONNECTION_MAX: usize = 65_536;

const EACCES: u32 = libc::EACCES as u32;

/// Why a presentation or a request was refused: the reason an UNAUTHORIZED reply carries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the connection has no authenticated peer, so no capability can name it")]
    NoPeer,
    #[error(transparent)]
    Capability(#[from] CapabilityError),
    #[error(
        "the frame names volume {frame_volume} at epoch {frame_epoch}, the capability volume {volume} at epoch {epoch}"
    )]
    Mismatch {
        frame_volume: VolumeId,
        frame_epoch: u64,
        volume: VolumeId,
        epoch: u64,
    },
    #[error("the connection holds capabilities for {VOLUMES_PER_CONNECTION_MAX} volumes already")]
    TooManyVolumes,
    #[error("peer {peer} may not SCAN_READ: only storage nodes read replicas without an attach")]
    NotAScanReader { peer: String },
    #[error("this connection presented no capability for volume {volume}")]
    NotPresented { volume: VolumeId },
    #[error(
        "this connection's capability for volume {volume} is for attach epoch {granted}, not {epoch}"
    )]
    OtherEpoch {
        volume: VolumeId,
        granted: u64,
        epoch: u64,
    },
}

/// The capabilities one connection presented: per volume, the attach epoch it may use.
pub(super) struct Grants {
    /// `None`: capabilities are not checked.
    keys: Option<Arc<CapabilityKeys>>,
    /// The connection's authenticated principal (from its TLS certificate), if any.
    peer: Option<String>,
    /// Who may SCAN_READ (`None`: anyone).
    scan_readers: Option<fn(&str) -> bool>,
    epochs: HashMap<VolumeId, u64>,
    /// Requests refused so far; the first is logged as a warning, the rest quietly, so a
    /// misbehaving client cannot flood the log.
    refused: u64,
}

impl Grants {
    pub(super) fn new(
        keys: Option<Arc<CapabilityKeys>>,
        peer: Option<String>,
        scan_readers: Option<fn(&str) -> bool>,
    ) -> Grants {
        Grants {
            keys,
            peer,
            scan_readers,
            epochs: HashMap::new(),
            refused: 0,
        }
    }

    /// Answers a CAPABILITY request: verifies it and records the grant, or refuses it and
    /// changes nothing.
    pub(super) fn present(&mut self, req: &Request, now_unix_ms: u64) -> Reply {
        let h = &req.header;
        if !req.payload_intact() {
            return Reply::status(h.op, h.request_id, Status::PayloadCrc, 0, 0);
        }
        match self.try_present(h, &req.payload, now_unix_ms) {
            Ok(()) => Reply::ok(h.op, h.request_id, bytes::Bytes::new()),
            Err(refusal) => {
                tracing::warn!(
                    peer = self.peer_name(),
                    volume = %h.volume,
                    epoch = h.attach_epoch,
                    reason = %refusal,
                    "capability refused"
                );
                Reply::refused(
                    h.op,
                    h.request_id,
                    Status::Unauthorized,
                    EACCES,
                    &refusal.to_string(),
                )
            }
        }
    }

    fn try_present(
        &mut self,
        h: &RequestHeader,
        payload: &[u8],
        now_unix_ms: u64,
    ) -> Result<(), Refusal> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let peer = self.peer.as_deref().ok_or(Refusal::NoPeer)?;
        let signed = SignedCapability::decode(payload).map_err(CapabilityError::from)?;
        let granted = keys.verify(&signed, now_unix_ms, peer)?;
        let (volume, epoch) = (granted.volume(), granted.attach_epoch());
        // The frame's volume and epoch are what the logs and the client go by: they must be
        // the capability's.
        if (h.volume, h.attach_epoch) != (volume, epoch) {
            return Err(Refusal::Mismatch {
                frame_volume: h.volume,
                frame_epoch: h.attach_epoch,
                volume,
                epoch,
            });
        }
        if self.epochs.len() >= VOLUMES_PER_CONNECTION_MAX && !self.epochs.contains_key(&volume) {
            return Err(Refusal::TooManyVolumes);
        }
        // A renewal or a newer epoch replaces what the volume had; requests already admitted
        // under the old one run on.
        self.epochs.insert(volume, epoch);
        tracing::debug!(peer, %volume, epoch, expires_at_unix_ms = granted.expires_at_unix_ms(), "capability accepted");
        Ok(())
    }

    /// The UNAUTHORIZED reply to a request this connection may not make, if it may not.
    pub(super) fn refuse(&mut self, h: &RequestHeader) -> Option<Reply> {
        let refusal = self.admits(h).err()?;
        self.refused += 1;
        if self.refused == 1 {
            tracing::warn!(peer = self.peer_name(), volume = %h.volume, epoch = h.attach_epoch, op = ?h.op, reason = %refusal, "request refused: no capability for its epoch (later refusals on this connection are logged at debug)");
        } else {
            tracing::debug!(peer = self.peer_name(), volume = %h.volume, epoch = h.attach_epoch, op = ?h.op, reason = %refusal, "request refused");
        }
        Some(Reply::refused(
            h.op,
            h.request_id,
            Status::Unauthorized,
            EACCES,
            &refusal.to_string(),
        ))
    }

    fn admits(&self, h: &RequestHeader) -> Result<(), Refusal> {
        if h.op == Op::ScanRead
            && let Some(may) = self.scan_readers
            && !self.peer.as_deref().is_some_and(may)
        {
            return Err(Refusal::NotAScanReader {
                peer: self.peer_name().to_owned(),
            });
        }
        if self.keys.is_none() || !h.op.fenced() {
            return Ok(());
        }
        debug_assert_ne!(h.op, Op::Capability);
        match self.epochs.get(&h.volume) {
            Some(&granted) if granted == h.attach_epoch => Ok(()),
            Some(&granted) => Err(Refusal::OtherEpoch {
                volume: h.volume,
                granted,
                epoch: h.attach_epoch,
            }),
            None => Err(Refusal::NotPresented { volume: h.volume }),
        }
    }

    fn peer_name(&self) -> &str {
        self.peer.as_deref().unwrap_or("(unauthenticated)")
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::capability::{Capability, now_unix_ms};
    use crate::wire::WriteVersion;

    const PEER: &str = "fabric://cell-a/gateway/host-a";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    fn grants(peer: Option<&str>) -> Grants {
        let keys = CapabilityKeys::new(vec![key().verifying_key()]).unwrap();
        Grants::new(Some(Arc::new(keys)), peer.map(str::to_owned), None)
    }

    fn present(g: &mut Grants, volume: u64, epoch: u64, signed: &SignedCapability) -> Reply {
        let req = Request::capability(1, VolumeId(volume), epoch, signed.encode());
        g.present(&req, now_unix_ms())
    }

    fn signed(volume: u64, epoch: u64) -> SignedCapability {
        Capability::new(VolumeId(volume), epoch, PEER, now_unix_ms() + 60_000)
            .unwrap()
            .sign(&key())
    }

    fn flush(volume: u64, epoch: u64) -> RequestHeader {
        RequestHeader {
            op: Op::Flush,
            flags: 0,
            request_id: 2,
            volume: VolumeId(volume),
            offset: 0,
            len: 0,
            payload_crc: 0,
            attach_epoch: epoch,
            version: WriteVersion::NONE,
        }
    }

    #[test]
    fn only_the_presented_volume_and_epoch_are_admitted() {
        let mut g = grants(Some(PEER));
        assert!(g.refuse(&flush(7, 3)).is_some(), "nothing presented yet");
        assert_eq!(
            present(&mut g, 7, 3, &signed(7, 3)).header.status,
            Status::Ok
        );
        assert!(g.refuse(&flush(7, 3)).is_none());
        let other_epoch = g.refuse(&flush(7, 4)).unwrap();
        assert_eq!(other_epoch.header.status, Status::Unauthorized);
        assert_eq!(other_epoch.header.errno, EACCES);
        assert!(other_epoch.reason().unwrap().contains("epoch 3, not 4"));
        assert!(g.refuse(&flush(8, 3)).is_some(), "another volume");

        // A newer epoch replaces the old one for that volume.
        assert_eq!(
            present(&mut g, 7, 4, &signed(7, 4)).header.status,
            Status::Ok
        );
        assert!(g.refuse(&flush(7, 4)).is_none());
        assert!(g.refuse(&flush(7, 3)).is_some());
    }

    #[test]
    fn unfenced_ops_need_no_capability() {
        let mut g = grants(Some(PEER));
        for op in [
            Op::Ping,
            Op::GetExtentVersions,
            Op::Digest,
            Op::BlockStatus,
            Op::Scrub,
        ] {
            assert!(g.refuse(&RequestHeader { op, ..flush(7, 3) }).is_none());
        }
    }

    #[test]
    fn a_refused_presentation_changes_nothing() {
        let mut g = grants(Some(PEER));
        assert_eq!(
            present(&mut g, 7, 3, &signed(7, 3)).header.status,
            Status::Ok
        );
        // Signed for 7 at 5, sent as if for 7 at 6.
        let reply = present(&mut g, 7, 6, &signed(7, 5));
        assert_eq!(reply.header.status, Status::Unauthorized);
        assert!(reply.reason().unwrap().contains("the capability volume"));
        let forged = Capability::new(VolumeId(7), 6, PEER, now_unix_ms() + 60_000)
            .unwrap()
            .sign(&SigningKey::from_bytes(&[1; 32]));
        let reply = present(&mut g, 7, 6, &forged);
        assert!(reply.reason().unwrap().contains("bad signature"));
        let garbage = Request::capability(1, VolumeId(7), 6, Bytes::from_static(b"junk"));
        let reply = g.present(&garbage, now_unix_ms());
        assert!(reply.reason().unwrap().contains("malformed"));
        assert!(g.refuse(&flush(7, 3)).is_none(), "the earlier grant stands");
        assert!(g.refuse(&flush(7, 6)).is_some());
    }

    #[test]
    fn a_connection_without_a_peer_holds_nothing() {
        let mut g = grants(None);
        let reply = present(&mut g, 7, 3, &signed(7, 3));
        assert_eq!(reply.reason().unwrap(), Refusal::NoPeer.to_string());
        assert!(g.refuse(&flush(7, 3)).is_some());
    }

    #[test]
    fn without_keys_everything_is_admitted_as_before() {
        let mut g = Grants::new(None, None, None);
        assert!(g.refuse(&flush(7, u64::MAX)).is_none());
        let junk = Request::capability(1, VolumeId(7), 3, Bytes::from_static(b"junk"));
        assert_eq!(g.present(&junk, 0).header.status, Status::Ok);
    }
}
