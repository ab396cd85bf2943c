//! Criterion benches of the extent store: 4 KiB and 1 MiB writes and reads through
//! `BlockVolume` on the io_uring and portable engines, and the block checksum itself.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use volume::BlockVolume;
use volume::checksum::block_crc;
use volume::io::Disk;
use volume::io::portable::PortableDisk;
use volume::io::uring::UringDisk;
use volume::store::ExtentStore;

const VOLUME_BYTES: u64 = 256 << 20;

fn checksum(c: &mut Criterion) {
    let block = vec![0x5au8; 4096];
    let mut g = c.benchmark_group("checksum");
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("crc32c 4 KiB", |b| {
        b.iter(|| block_crc(std::hint::black_box(&block)))
    });
    g.finish();
}

fn store_io(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The io_uring disk's completions are served by the runtime it is created in.
    let _entered = rt.enter();
    let engines: Vec<(&str, Arc<dyn Disk>)> = vec![
        (
            "uring",
            Arc::new(UringDisk::new("bench").expect("io_uring")),
        ),
        ("portable", Arc::new(PortableDisk::new("bench"))),
    ];
    for (engine, disk) in engines {
        // On the disk under test, not tmpfs: the current directory.
        let dir = tempfile::tempdir_in(".").unwrap();
        let (_store, vol) = rt.block_on(async {
            let store = ExtentStore::open(dir.path(), disk).await.unwrap();
            let vol = store.create_volume("bench", VOLUME_BYTES).await.unwrap();
            // Prefill so reads hit allocated blocks, not holes.
            let chunk = Bytes::from(vec![0xa5u8; 4 << 20]);
            for off in (0..VOLUME_BYTES).step_by(4 << 20) {
                vol.write(off, chunk.clone(), false).await.unwrap();
            }
            vol.flush().await.unwrap();
            (store, vol)
        });
        let mut g = c.benchmark_group(format!("store/{engine}"));
        for size in [4096usize, 1 << 20] {
            let data = Bytes::from(vec![0x3cu8; size]);
            let slots = VOLUME_BYTES / size as u64;
            g.throughput(Throughput::Bytes(size as u64));
            let mut i = 0u64;
            g.bench_with_input(BenchmarkId::new("write", size), &size, |b, _| {
                b.iter(|| {
                    i = (i + 7919) % slots;
                    rt.block_on(vol.write(i * size as u64, data.clone(), false))
                        .unwrap();
                })
            });
            g.bench_with_input(BenchmarkId::new("read", size), &size, |b, _| {
                b.iter(|| {
                    i = (i + 7919) % slots;
                    rt.block_on(vol.read(i * size as u64, size as u32)).unwrap();
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, checksum, store_io);
criterion_main!(benches);
