//! The NBD request parser, request checks and reply encoders, per message: the fixed cost the
//! server pays on every request before and after the volume does any work.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use volume::nbd::proto::{
    BlockDescriptor, NBD_CMD_READ, NBD_CMD_WRITE, NBD_EIO, RequestHeader, put_block_status_chunk,
    put_error_chunk, put_offset_data_header, put_simple_reply,
};
use volume::nbd::request::{Geometry, Negotiated, check_request};
use volume::nbd::{BLOCK_STATUS_DESCRIPTORS_MAX, block_descriptors};
use volume::{Extent, ExtentState};

/// Requests per batch, like a deeply pipelined client's burst.
const BATCH: u64 = 64;

fn request_batch() -> BytesMut {
    let mut buf = BytesMut::new();
    for i in 0..BATCH {
        let command = if i % 2 == 0 {
            NBD_CMD_READ
        } else {
            NBD_CMD_WRITE
        };
        RequestHeader {
            flags: 0,
            command,
            cookie: i,
            offset: i * 4096,
            len: 4096,
        }
        .encode(&mut buf);
    }
    buf
}

fn parse_and_check(c: &mut Criterion) {
    let batch = request_batch();
    let negotiated = Negotiated {
        structured_replies: true,
        base_allocation: Some(1),
    };
    let geometry = Geometry {
        size_bytes: 1 << 40,
        payload_max_bytes: 32 << 20,
    };
    let mut g = c.benchmark_group("nbd_request");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("parse", |b| {
        b.iter(|| {
            for frame in black_box(&batch[..]).chunks_exact(28) {
                black_box(RequestHeader::parse(frame).unwrap());
            }
        })
    });
    g.bench_function("parse_and_check", |b| {
        b.iter(|| {
            for frame in black_box(&batch[..]).chunks_exact(28) {
                let h = RequestHeader::parse(frame).unwrap();
                black_box(check_request(&h, &negotiated, &geometry).unwrap());
            }
        })
    });
    g.finish();
}

fn encode_replies(c: &mut Criterion) {
    let mut g = c.benchmark_group("nbd_reply");
    g.throughput(Throughput::Elements(BATCH));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    g.bench_function("simple", |b| {
        b.iter(|| {
            buf.clear();
            for cookie in 0..BATCH {
                put_simple_reply(&mut buf, black_box(cookie), 0);
            }
        })
    });
    g.bench_function("offset_data_header", |b| {
        b.iter(|| {
            buf.clear();
            for cookie in 0..BATCH {
                put_offset_data_header(&mut buf, black_box(cookie), cookie * 4096, 4096, true);
            }
        })
    });
    g.bench_function("error_chunk", |b| {
        b.iter(|| {
            buf.clear();
            for cookie in 0..BATCH {
                put_error_chunk(
                    &mut buf,
                    black_box(cookie),
                    NBD_EIO,
                    "checksum mismatch",
                    Some(cookie),
                );
            }
        })
    });
    g.finish();

    // A fragmented allocation map: alternating data and holes, capped per reply.
    let extents: Vec<Extent> = (0..4096)
        .map(|i| Extent {
            len: 4096,
            state: ExtentState {
                hole: i % 2 == 1,
                zero: i % 2 == 1,
            },
        })
        .collect();
    let mut g = c.benchmark_group("nbd_block_status");
    g.throughput(Throughput::Elements(BLOCK_STATUS_DESCRIPTORS_MAX as u64));
    g.bench_function("descriptors_and_chunk", |b| {
        b.iter(|| {
            buf.clear();
            let d: Vec<BlockDescriptor> = block_descriptors(black_box(&extents), u32::MAX, false);
            put_block_status_chunk(&mut buf, 1, 1, &d);
        })
    });
    g.finish();
}

criterion_group!(benches, parse_and_check, encode_replies);
criterion_main!(benches);
