//! Capabilities: the encoding round trips and survives any bytes; each way a capability can be
//! wrong is refused with its own error; a key set can be rotated.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;

use super::*;

const PEER: &str = "fabric://cell-a/gateway/host-a";
const NOW_UNIX_MS: u64 = 1_800_000_000_000;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn capability() -> Capability {
    Capability::new(VolumeId(7), 3, PEER, NOW_UNIX_MS + 60_000).unwrap()
}

fn principal() -> impl Strategy<Value = String> {
    // Any UTF-8 up to the limit, multi-byte characters included.
    proptest::collection::vec(any::<char>(), 1..=64)
        .prop_map(|c| c.into_iter().collect::<String>())
        .prop_filter("within the limit", |s| s.len() <= PRINCIPAL_MAX_BYTES)
}

proptest! {
    #[test]
    fn decode_of_encode_is_the_signed_capability(
        volume: u64, epoch: u64, expires: u64, client in principal(), seed: u8,
    ) {
        let signed = Capability::new(VolumeId(volume), epoch, client, expires)
            .unwrap()
            .sign(&key(seed));
        let bytes = signed.encode();
        prop_assert!(bytes.len() <= SIGNED_CAPABILITY_MAX_BYTES);
        prop_assert_eq!(SignedCapability::decode(&bytes), Ok(signed));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(signed) = SignedCapability::decode(&data) {
            // Whatever decodes is canonical, and a random signature is never valid.
            prop_assert_eq!(&signed.encode()[..], &data[..]);
            prop_assert_eq!(
                signed.verify(&[key(1).verifying_key()], NOW_UNIX_MS, PEER),
                Err(CapabilityError::BadSignature)
            );
        }
    }

    #[test]
    fn any_flipped_bit_is_refused(bit in 0usize..(CAPABILITY_FIXED_BYTES + PEER.len() + SIGNATURE_BYTES) * 8) {
        let mut bytes = capability().sign(&key(1)).encode().to_vec();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let verdict = SignedCapability::decode(&bytes)
            .map_err(CapabilityError::from)
            .and_then(|s| s.verify(&[key(1).verifying_key()], NOW_UNIX_MS, PEER));
        prop_assert!(verdict.is_err(), "bit {} flipped and still accepted", bit);
    }
}

#[test]
fn a_valid_capability_verifies_to_what_it_says() {
    let c = capability();
    let signed = c.sign(&key(1));
    assert_eq!(
        signed.verify(&[key(1).verifying_key()], NOW_UNIX_MS, PEER),
        Ok(c)
    );
}

#[test]
fn a_capability_signed_by_another_key_is_a_bad_signature() {
    let signed = capability().sign(&key(2));
    assert_eq!(
        signed.verify(&[key(1).verifying_key()], NOW_UNIX_MS, PEER),
        Err(CapabilityError::BadSignature)
    );
}

#[test]
fn a_capability_altered_after_signing_is_a_bad_signature() {
    let mut bytes = capability().sign(&key(1)).encode().to_vec();
    bytes[9..17].copy_from_slice(&u64::MAX.to_le_bytes()); // the attach epoch
    let altered = SignedCapability::decode(&bytes).unwrap();
    assert_eq!(altered.claims().attach_epoch(), u64::MAX);
    assert_eq!(
        altered.verify(&[key(1).verifying_key()], NOW_UNIX_MS, PEER),
        Err(CapabilityError::BadSignature)
    );
}

#[test]
fn an_expired_capability_is_refused_from_its_expiry_on() {
    let c = Capability::new(VolumeId(7), 3, PEER, NOW_UNIX_MS).unwrap();
    let signed = c.sign(&key(1));
    let keys = [key(1).verifying_key()];
    assert!(signed.verify(&keys, NOW_UNIX_MS - 1, PEER).is_ok());
    assert_eq!(
        signed.verify(&keys, NOW_UNIX_MS, PEER),
        Err(CapabilityError::Expired {
            expired_at: NOW_UNIX_MS,
            now: NOW_UNIX_MS
        })
    );
}

#[test]
fn a_capability_for_another_client_is_refused() {
    let signed = capability().sign(&key(1));
    let other = "fabric://cell-a/gateway/host-b";
    assert_eq!(
        signed.verify(&[key(1).verifying_key()], NOW_UNIX_MS, other),
        Err(CapabilityError::WrongClient {
            capability_for: PEER.into(),
            peer: other.into()
        })
    );
}

#[test]
fn malformed_capabilities_say_how() {
    let good = capability().sign(&key(1)).encode().to_vec();
    assert_eq!(
        SignedCapability::decode(&good[..10]),
        Err(Malformed::Short { len: 10 })
    );
    let mut b = good.clone();
    b[0] = 2;
    assert_eq!(SignedCapability::decode(&b), Err(Malformed::Format(2)));
    let mut b = good.clone();
    b[25..27].copy_from_slice(&(PRINCIPAL_MAX_BYTES as u16 + 1).to_le_bytes());
    assert_eq!(
        SignedCapability::decode(&b),
        Err(Malformed::PrincipalLength {
            len: PRINCIPAL_MAX_BYTES + 1
        })
    );
    let mut b = good.clone();
    b.push(0);
    assert!(matches!(
        SignedCapability::decode(&b),
        Err(Malformed::Length { .. })
    ));
    let mut b = good.clone();
    b[CAPABILITY_FIXED_BYTES] = 0xff;
    assert_eq!(
        SignedCapability::decode(&b),
        Err(Malformed::PrincipalNotUtf8)
    );
    assert_eq!(
        Capability::new(VolumeId(1), 1, "", 1),
        Err(Malformed::PrincipalLength { len: 0 })
    );
    let long = "x".repeat(PRINCIPAL_MAX_BYTES + 1);
    assert!(Capability::new(VolumeId(1), 1, long, 1).is_err());
}

#[test]
fn a_rotation_accepts_old_and_new_keys_then_only_the_new() {
    let (old, new) = (key(1), key(2));
    let keys = CapabilityKeys::new(vec![old.verifying_key()]).unwrap();
    let by_old = capability().sign(&old);
    let by_new = capability().sign(&new);
    assert!(keys.verify(&by_old, NOW_UNIX_MS, PEER).is_ok());
    assert_eq!(
        keys.verify(&by_new, NOW_UNIX_MS, PEER),
        Err(CapabilityError::BadSignature)
    );

    keys.replace(vec![old.verifying_key(), new.verifying_key()])
        .unwrap();
    assert!(keys.verify(&by_old, NOW_UNIX_MS, PEER).is_ok());
    assert!(keys.verify(&by_new, NOW_UNIX_MS, PEER).is_ok());

    keys.replace(vec![new.verifying_key()]).unwrap();
    assert_eq!(
        keys.verify(&by_old, NOW_UNIX_MS, PEER),
        Err(CapabilityError::BadSignature)
    );
    assert!(keys.verify(&by_new, NOW_UNIX_MS, PEER).is_ok());

    assert_eq!(keys.replace(vec![]), Err(KeysError::Empty));
    let many = (0..=CAPABILITY_KEYS_MAX as u8)
        .map(|s| key(s).verifying_key())
        .collect();
    assert_eq!(
        keys.replace(many),
        Err(KeysError::TooMany {
            count: CAPABILITY_KEYS_MAX + 1
        })
    );
    assert_eq!(keys.current().len(), 1, "a refused set changes nothing");
}
