//! Property tests of the codec: round trips, arbitrary input never panics, and each kind of
//! damage is refused with its own error.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn op() -> impl Strategy<Value = Op> {
    (1u8..=12).prop_map(|v| Op::from_u8(v).expect("1..=12 are ops"))
}

fn status() -> impl Strategy<Value = Status> {
    (0u8..=8).prop_map(|v| Status::from_u8(v).expect("0..=8 are statuses"))
}

fn request() -> impl Strategy<Value = Request> {
    (
        op(),
        any::<u8>(),
        any::<[u64; 6]>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..4096),
    )
        .prop_map(|(op, flags, n, len, data)| {
            let header = RequestHeader {
                op,
                flags,
                request_id: n[0],
                volume: VolumeId(n[1]),
                offset: n[2],
                len,
                payload_crc: 0,
                attach_epoch: n[3],
                version: WriteVersion {
                    epoch: n[4],
                    seq: n[5],
                },
            };
            if op == Op::Write {
                Request::write(header, Bytes::from(data))
            } else if op == Op::Capability {
                let mut data = data;
                data.truncate(CAPABILITY_PAYLOAD_MAX_BYTES as usize);
                Request::capability(n[0], VolumeId(n[1]), n[3], Bytes::from(data))
            } else {
                Request::new(header)
            }
        })
}

fn encode_request(r: &Request) -> BytesMut {
    let mut b = BytesMut::from(&r.encode_header()[..]);
    b.extend_from_slice(&r.payload);
    b
}

fn sample_request() -> Request {
    Request::write(
        RequestHeader {
            op: Op::Write,
            flags: FLAG_FUA,
            request_id: 7,
            volume: VolumeId(3),
            offset: 4096,
            len: 0,
            payload_crc: 0,
            attach_epoch: 2,
            version: WriteVersion { epoch: 2, seq: 9 },
        },
        Bytes::from_static(b"hello replica"),
    )
}

proptest! {
    #[test]
    fn requests_round_trip_even_when_split_anywhere(r in request(), cut in 0usize..5000) {
        let whole = encode_request(&r);
        let cut = cut.min(whole.len());
        let mut buf = BytesMut::from(&whole[..cut]);
        if cut < whole.len() {
            prop_assert_eq!(decode_request(&mut buf), Ok(None));
            buf.extend_from_slice(&whole[cut..]);
        }
        let back = decode_request(&mut buf).unwrap().unwrap();
        prop_assert!(back.payload_intact());
        prop_assert_eq!(back, r);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn replies_round_trip(
        op in op(), st in status(), id: u64, errno: u32, epoch: u64,
        data in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let reply = if st == Status::Ok {
            Reply::ok(op, id, Bytes::from(data))
        } else if st == Status::Unauthorized {
            Reply::refused(op, id, st, errno, &String::from_utf8_lossy(&data))
        } else {
            Reply::status(op, id, st, errno, epoch)
        };
        let mut buf = BytesMut::from(&reply.encode_header()[..]);
        buf.extend_from_slice(&reply.payload);
        let back = decode_reply(&mut buf).unwrap().unwrap();
        prop_assert!(back.payload_intact());
        prop_assert_eq!(back, reply);
    }

    #[test]
    fn arbitrary_bytes_never_panic_either_decoder(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut a = BytesMut::from(&data[..]);
        let _ = decode_request(&mut a);
        let mut b = BytesMut::from(&data[..]);
        let _ = decode_reply(&mut b);
        let _ = decode_versions(&data);
        let _ = decode_extent_versions(&data);
        let mut c = BytesMut::from(&data[..]);
        let _ = take_large_request_header(&mut c);
        let mut d = BytesMut::from(&data[..]);
        let _ = take_large_reply_header(&mut d);
    }

    #[test]
    fn any_flipped_header_bit_is_refused(bit in 0usize..REQUEST_HEADER_BYTES * 8) {
        let mut buf = encode_request(&sample_request());
        buf[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(decode_request(&mut buf).is_err());
    }

    #[test]
    fn versions_round_trip(v in proptest::collection::vec(any::<(u64, u64)>(), 0..512)) {
        let v: Vec<WriteVersion> = v.into_iter().map(|(epoch, seq)| WriteVersion { epoch, seq }).collect();
        prop_assert_eq!(decode_versions(&encode_versions(&v)), Some(v));
    }

    #[test]
    fn extent_versions_round_trip(v in proptest::collection::vec(any::<(u64, u64, bool, bool)>(), 0..512)) {
        let v: Vec<ExtentVersion> = v
            .into_iter()
            .map(|(epoch, seq, suspect, recent)| ExtentVersion { version: WriteVersion { epoch, seq }, suspect, recent })
            .collect();
        prop_assert_eq!(decode_extent_versions(&encode_extent_versions(&v)), Some(v));
    }

    #[test]
    fn an_unknown_extent_flag_is_refused(flags in 4u8..) {
        let mut b = encode_extent_versions(&[ExtentVersion::default()]).to_vec();
        b[VERSION_ENTRY_BYTES] = flags;
        prop_assert_eq!(decode_extent_versions(&b), None);
    }
}

#[test]
fn bad_magic_version_and_crc_get_their_own_errors() {
    let good = encode_request(&sample_request());

    let mut bad = good.clone();
    bad[0] ^= 0xff;
    assert!(matches!(
        decode_request(&mut bad),
        Err(WireError::BadMagic(_))
    ));

    let mut bad = good.clone();
    let other = PROTOCOL_VERSION + 1;
    bad[4..6].copy_from_slice(&other.to_le_bytes());
    assert_eq!(decode_request(&mut bad), Err(WireError::BadVersion(other)));

    let mut bad = good.clone();
    bad[30] ^= 1; // inside the offset
    assert!(matches!(
        decode_request(&mut bad),
        Err(WireError::HeaderCrc { .. })
    ));
}

#[test]
fn a_damaged_payload_is_framed_but_reported_as_not_intact() {
    let mut buf = encode_request(&sample_request());
    let last = buf.len() - 1;
    buf[last] ^= 0x10;
    let r = decode_request(&mut buf).unwrap().unwrap();
    assert!(!r.payload_intact());
}

#[test]
fn an_oversized_write_is_refused_before_its_payload_arrives() {
    let mut h = sample_request().header;
    h.len = PAYLOAD_MAX_BYTES + 1;
    let mut buf = BytesMut::from(&h.encode()[..]);
    assert_eq!(
        decode_request(&mut buf),
        Err(WireError::PayloadTooLarge {
            len: PAYLOAD_MAX_BYTES + 1,
            max: PAYLOAD_MAX_BYTES
        })
    );
}

#[test]
fn a_fenced_reply_carries_the_replicas_epoch() {
    let r = Reply::status(Op::Write, 1, Status::Fenced, 0, 42);
    let mut buf = BytesMut::from(&r.encode_header()[..]);
    let back = decode_reply(&mut buf).unwrap().unwrap();
    assert_eq!(back.header.status, Status::Fenced);
    assert_eq!(back.header.epoch, 42);
}

#[test]
fn write_versions_order_by_epoch_first() {
    let older = WriteVersion { epoch: 1, seq: 900 };
    let newer = WriteVersion { epoch: 2, seq: 1 };
    assert!(older < newer);
    assert!(WriteVersion::NONE < older);
}

#[test]
fn a_large_payload_still_arriving_has_its_header_taken_and_its_first_bytes_kept() {
    let data = Bytes::from(vec![0x5a; DIRECT_PAYLOAD_MIN_BYTES as usize]);
    let large = Request::write(
        RequestHeader {
            len: 0,
            ..sample_request().header
        },
        data.clone(),
    );
    let whole = encode_request(&large);
    let cut = REQUEST_HEADER_BYTES + 100;

    // Part of the payload is buffered: the decoder waits without growing the buffer to the
    // frame, and the header comes off with the payload's first bytes left in place.
    let mut buf = BytesMut::from(&whole[..cut]);
    assert_eq!(decode_request(&mut buf), Ok(None));
    assert!(
        buf.capacity() < whole.len(),
        "no room reserved for a large payload"
    );
    let header = take_large_request_header(&mut buf).unwrap().unwrap();
    assert_eq!(header, large.header);
    assert_eq!(&buf[..], &data[..100]);

    // The whole frame is buffered, or the payload is small: nothing is taken.
    let mut buf = whole.clone();
    assert_eq!(take_large_request_header(&mut buf), Ok(None));
    assert_eq!(buf.len(), whole.len());
    let mut small = encode_request(&sample_request());
    small.truncate(REQUEST_HEADER_BYTES + 1);
    assert_eq!(take_large_request_header(&mut small), Ok(None));
    assert_eq!(small.len(), REQUEST_HEADER_BYTES + 1);

    // A damaged header is refused here as in the decoder.
    let mut bad = BytesMut::from(&whole[..cut]);
    bad[8] ^= 1;
    assert!(matches!(
        take_large_request_header(&mut bad),
        Err(WireError::HeaderCrc { .. })
    ));
}

#[test]
fn a_large_reply_payload_still_arriving_has_its_header_taken() {
    let data = Bytes::from(vec![0xa5; DIRECT_PAYLOAD_MIN_BYTES as usize]);
    let reply = Reply::ok(Op::Read, 4, data.clone());
    let mut buf = BytesMut::from(&reply.encode_header()[..]);
    buf.extend_from_slice(&data[..10]);
    assert_eq!(decode_reply(&mut buf), Ok(None));
    let header = take_large_reply_header(&mut buf).unwrap().unwrap();
    assert_eq!(header, reply.header);
    assert_eq!(&buf[..], &data[..10]);
}

#[test]
fn a_capability_frame_carries_its_payload_and_an_oversized_one_is_refused_early() {
    let signed = Bytes::from_static(b"a signed capability");
    let r = Request::capability(5, VolumeId(3), 9, signed.clone());
    let mut buf = encode_request(&r);
    let back = decode_request(&mut buf).unwrap().unwrap();
    assert_eq!(back.header.op, Op::Capability);
    assert_eq!(
        (back.header.volume, back.header.attach_epoch),
        (VolumeId(3), 9)
    );
    assert_eq!(back.payload, signed);
    assert!(back.payload_intact());
    assert!(buf.is_empty());

    // A header that claims more than a capability can be is refused before its payload.
    let mut h = r.header;
    h.len = CAPABILITY_PAYLOAD_MAX_BYTES + 1;
    let mut buf = BytesMut::from(&h.encode()[..]);
    assert_eq!(
        decode_request(&mut buf),
        Err(WireError::PayloadTooLarge {
            len: CAPABILITY_PAYLOAD_MAX_BYTES + 1,
            max: CAPABILITY_PAYLOAD_MAX_BYTES
        })
    );
}

#[test]
fn an_unauthorized_reply_carries_its_reason_cut_at_a_character() {
    let r = Reply::refused(Op::Flush, 2, Status::Unauthorized, 13, "no capability");
    let mut buf = BytesMut::from(&r.encode_header()[..]);
    buf.extend_from_slice(&r.payload);
    let back = decode_reply(&mut buf).unwrap().unwrap();
    assert_eq!(back.header.status, Status::Unauthorized);
    assert_eq!(back.header.errno, 13);
    assert_eq!(back.reason().as_deref(), Some("no capability"));

    let long = "é".repeat(REASON_MAX_BYTES);
    let cut = Reply::refused(Op::Flush, 2, Status::Unauthorized, 13, &long);
    assert!(cut.payload.len() <= REASON_MAX_BYTES);
    assert!(std::str::from_utf8(&cut.payload).is_ok());
    assert!(Reply::ok(Op::Flush, 2, Bytes::new()).reason().is_none());
}

#[test]
fn only_the_ops_that_pass_the_fence_are_fenced() {
    let fenced: Vec<Op> = (1..=12)
        .filter_map(Op::from_u8)
        .filter(|op| op.fenced())
        .collect();
    assert_eq!(
        fenced,
        [Op::Read, Op::Write, Op::Flush, Op::Trim, Op::WriteZeroes]
    );
    assert_eq!(Op::from_u8(13), None);
}
