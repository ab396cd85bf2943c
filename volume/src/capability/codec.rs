//! The binary form of a signed capability (layout in the module docs of
//! [`crate::capability`]). Decoding takes arbitrary bytes from the network: it checks every
//! length before it slices, and the one allocation, the principal, is bounded.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CAPABILITY_FIXED_BYTES, CAPABILITY_FORMAT, Capability, Malformed, PRINCIPAL_MAX_BYTES,
    SIGNATURE_BYTES, SIGNING_CONTEXT, SignedCapability,
};
use crate::wire::VolumeId;

/// The capability's bytes, without the signature.
fn body(c: &Capability) -> BytesMut {
    let mut b = BytesMut::with_capacity(CAPABILITY_FIXED_BYTES + c.client.len() + SIGNATURE_BYTES);
    b.put_u8(CAPABILITY_FORMAT);
    b.put_u64_le(c.volume.0);
    b.put_u64_le(c.attach_epoch);
    b.put_u64_le(c.expires_at_unix_ms);
    // `Capability::new` bounded the principal, so its length fits.
    b.put_u16_le(c.client.len() as u16);
    b.put_slice(c.client.as_bytes());
    b
}

/// What the cell key signs: the context, then the body.
pub(super) fn signed_message(c: &Capability) -> Vec<u8> {
    let body = body(c);
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(&body);
    m
}

pub(super) fn encode(s: &SignedCapability) -> Bytes {
    let mut b = body(&s.capability);
    b.put_slice(&s.signature);
    b.freeze()
}

pub(super) fn decode(bytes: &[u8]) -> Result<SignedCapability, Malformed> {
    let Some(fixed) = bytes.get(..CAPABILITY_FIXED_BYTES) else {
        return Err(Malformed::Short { len: bytes.len() });
    };
    if fixed[0] != CAPABILITY_FORMAT {
        return Err(Malformed::Format(fixed[0]));
    }
    let u64_at = |at: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&fixed[at..at + 8]);
        u64::from_le_bytes(v)
    };
    let principal_len = usize::from(u16::from_le_bytes([fixed[25], fixed[26]]));
    if principal_len == 0 || principal_len > PRINCIPAL_MAX_BYTES {
        return Err(Malformed::PrincipalLength { len: principal_len });
    }
    let expected = CAPABILITY_FIXED_BYTES + principal_len + SIGNATURE_BYTES;
    if bytes.len() != expected {
        return Err(Malformed::Length {
            expected,
            actual: bytes.len(),
        });
    }
    let principal = &bytes[CAPABILITY_FIXED_BYTES..CAPABILITY_FIXED_BYTES + principal_len];
    let client = std::str::from_utf8(principal)
        .map_err(|_| Malformed::PrincipalNotUtf8)?
        .to_owned();
    let mut signature = [0u8; SIGNATURE_BYTES];
    signature.copy_from_slice(&bytes[expected - SIGNATURE_BYTES..]);
    Ok(SignedCapability {
        capability: Capability {
            volume: VolumeId(u64_at(1)),
            attach_epoch: u64_at(9),
            expires_at_unix_ms: u64_at(17),
            client,
        },
        signature,
    })
}
