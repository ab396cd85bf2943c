//! Attach capabilities: the proof, signed by the metadata service, that a client may use one
//! volume at one attach epoch.
//!
//! A replica fences a volume at the highest attach epoch it has seen (see
//! [`crate::replica::fence`]). If a request's epoch were taken on the frame's word, any client
//! able to reach a replica could fence a volume for ever with one FLUSH of a huge epoch, and
//! the real writer would get FENCED from then on. So the metadata service, which grants
//! epochs, signs a [`Capability`] with its ed25519 *cell key* for each attach: {volume, attach
//! epoch, client principal, expiry}. A client presents it once per connection and volume (the
//! CAPABILITY op of [`crate::wire`]), and the replica admits requests of that volume and epoch
//! only from a connection that presented a valid one naming the connection's authenticated
//! peer. The check costs one signature verification per connection and volume, none per IO.
//!
//! This module owns the capability, its signed binary form and its verification; it does no
//! IO. [`keys`] holds the set of verifying keys a replica accepts, swappable at run time so
//! the cell key can be rotated (old and new both valid for a while).
//!
//! ```text
//! signed capability, format 1 (integers little endian), 27 + n + 64 bytes:
//!  0 format u8 (1)
//!  1 volume id u64
//!  9 attach epoch u64
//! 17 expires at u64 (unix milliseconds)
//! 25 client principal length n u16 (1..=256)
//! 27 client principal, n bytes of UTF-8
//! 27 + n signature, 64 bytes: ed25519 over SIGNING_CONTEXT followed by bytes 0..27 + n
//! ```
//!
//! The signature covers a context string before the body, so no other message the cell key
//! signs can ever read as a capability.

mod codec;
pub mod keys;

#[cfg(test)]
mod tests;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::wire::VolumeId;

pub use keys::{CAPABILITY_KEYS_MAX, CapabilityKeys, KeysError};

/// Format byte of the encoding this build writes and reads.
pub const CAPABILITY_FORMAT: u8 = 1;
/// Longest client principal a capability may name, in bytes.
pub const PRINCIPAL_MAX_BYTES: usize = 256;
/// Bytes of the fields before the principal.
pub const CAPABILITY_FIXED_BYTES: usize = 27;
/// Size of an ed25519 signature, in bytes.
pub const SIGNATURE_BYTES: usize = 64;
/// Largest signed capability, in bytes.
pub const SIGNED_CAPABILITY_MAX_BYTES: usize =
    CAPABILITY_FIXED_BYTES + PRINCIPAL_MAX_BYTES + SIGNATURE_BYTES;
/// What a signature covers before the capability's bytes: keeps a capability's signature
/// apart from anything else the cell key signs.
pub const SIGNING_CONTEXT: &[u8] = b"fabric attach capability v1\0";

const _: () =
    assert!(SIGNED_CAPABILITY_MAX_BYTES <= crate::wire::CAPABILITY_PAYLOAD_MAX_BYTES as usize);
const _: () = assert!(PRINCIPAL_MAX_BYTES <= u16::MAX as usize);

/// What the metadata service grants at attach: `client` may use `volume` at `attach_epoch`
/// until `expires_at_unix_ms`. Built only through [`Capability::new`], so every capability
/// can be encoded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Capability {
    volume: VolumeId,
    attach_epoch: u64,
    client: String,
    expires_at_unix_ms: u64,
}

/// A [`Capability`] and the signature over it. Decoding checks the form only; what it claims
/// holds once [`SignedCapability::verify`] said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCapability {
    capability: Capability,
    signature: [u8; SIGNATURE_BYTES],
}

/// Why a capability was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    #[error("malformed capability: {0}")]
    Malformed(#[from] Malformed),
    /// No accepted key signed these bytes: forged, altered, or signed by a key no longer
    /// accepted.
    #[error("bad signature: no accepted cell key signed this capability")]
    BadSignature,
    /// Both in unix milliseconds.
    #[error("capability expired at {expired_at} (unix ms; now {now})")]
    Expired { expired_at: u64, now: u64 },
    #[error("capability is for client {capability_for:?}, not for the connection's peer {peer:?}")]
    WrongClient {
        capability_for: String,
        peer: String,
    },
}

/// How the bytes of a capability break the format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("{len} bytes, shorter than the fixed fields")]
    Short { len: usize },
    #[error("unknown format {0} (this build reads {CAPABILITY_FORMAT})")]
    Format(u8),
    #[error("client principal of {len} bytes (must be 1 to {PRINCIPAL_MAX_BYTES})")]
    PrincipalLength { len: usize },
    #[error("{actual} bytes where the principal's length makes {expected}")]
    Length { expected: usize, actual: usize },
    #[error("client principal is not UTF-8")]
    PrincipalNotUtf8,
}

impl Capability {
    /// A capability for `client` on `volume` at `attach_epoch`, valid until
    /// `expires_at_unix_ms`. Refuses a principal that is empty or longer than
    /// [`PRINCIPAL_MAX_BYTES`].
    pub fn new(
        volume: VolumeId,
        attach_epoch: u64,
        client: impl Into<String>,
        expires_at_unix_ms: u64,
    ) -> Result<Capability, Malformed> {
        let client = client.into();
        if client.is_empty() || client.len() > PRINCIPAL_MAX_BYTES {
            return Err(Malformed::PrincipalLength { len: client.len() });
        }
        Ok(Capability {
            volume,
            attach_epoch,
            client,
            expires_at_unix_ms,
        })
    }

    pub fn volume(&self) -> VolumeId {
        self.volume
    }

    pub fn attach_epoch(&self) -> u64 {
        self.attach_epoch
    }

    /// The principal of the one client that may present it, e.g.
    /// `fabric://CLUSTER/gateway/NAME`.
    pub fn client(&self) -> &str {
        &self.client
    }

    pub fn expires_at_unix_ms(&self) -> u64 {
        self.expires_at_unix_ms
    }

    /// Signs the capability with the cell key.
    pub fn sign(&self, key: &SigningKey) -> SignedCapability {
        let signature = key.sign(&codec::signed_message(self)).to_bytes();
        SignedCapability {
            capability: self.clone(),
            signature,
        }
    }
}

impl SignedCapability {
    /// What the capability claims, *not yet verified*: for logs and for routing it to its
    /// volume, never for a decision.
    pub fn claims(&self) -> &Capability {
        &self.capability
    }

    /// The bytes that travel (see the module docs for the layout).
    pub fn encode(&self) -> bytes::Bytes {
        codec::encode(self)
    }

    /// Reads a signed capability off `bytes`, which must hold exactly one. Checks the form
    /// only; never panics, allocates at most [`PRINCIPAL_MAX_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<SignedCapability, Malformed> {
        codec::decode(bytes)
    }

    /// Checks the capability: signed by one of `keys`, not expired at `now_unix_ms`, and
    /// naming `peer` (the connection's authenticated principal) as its client, in that order.
    /// Returns the capability it proves.
    pub fn verify(
        &self,
        keys: &[VerifyingKey],
        now_unix_ms: u64,
        peer: &str,
    ) -> Result<Capability, CapabilityError> {
        let message = codec::signed_message(&self.capability);
        let signature = Signature::from_bytes(&self.signature);
        // Strict: no malleable signatures, no weak keys.
        if !keys
            .iter()
            .any(|k| k.verify_strict(&message, &signature).is_ok())
        {
            return Err(CapabilityError::BadSignature);
        }
        let c = &self.capability;
        if now_unix_ms >= c.expires_at_unix_ms {
            return Err(CapabilityError::Expired {
                expired_at: c.expires_at_unix_ms,
                now: now_unix_ms,
            });
        }
        if c.client != peer {
            return Err(CapabilityError::WrongClient {
                capability_for: c.client.clone(),
                peer: peer.to_owned(),
            });
        }
        Ok(c.clone())
    }
}

/// Now, in unix milliseconds, as capabilities count time (the wall clock: the metadata
/// service sets expiries by its own, so the two must agree to within the margin it leaves).
/// A clock set before 1970 reads as 0.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
