//! The extent store through the `BlockVolume` interface, on real files: thin provisioning,
//! checksums on every read, restart, and random operation sequences checked against a model.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use volume::io::Disk;
use volume::io::portable::PortableDisk;
use volume::io::uring::UringDisk;
use volume::store::{ExtentStore, StoreError};
use volume::{BlockVolume, VolumeError, ZeroFlags};

const MIB: u64 = 1 << 20;

fn disks() -> Vec<(&'static str, Arc<dyn Disk>)> {
    vec![
        ("portable", Arc::new(PortableDisk::new("test"))),
        (
            "uring",
            Arc::new(UringDisk::new("test").expect("io_uring is available here")),
        ),
    ]
}

fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn pattern(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

#[tokio::test]
async fn a_new_volume_is_thin_and_reads_zeros_until_written_and_after_trim() {
    for (engine, disk) in disks() {
        let dir = tempfile::tempdir().unwrap();
        let store = ExtentStore::open(dir.path(), disk).await.unwrap();
        let vol = store.create_volume("thin", 64 * MIB).await.unwrap();
        let data_file = dir.path().join("volumes/thin/data");
        assert_eq!(
            allocated_bytes(&data_file),
            0,
            "{engine}: nothing allocated at create"
        );
        assert!(
            vol.read(10 * MIB, 1 << 16)
                .await
                .unwrap()
                .iter()
                .all(|&b| b == 0)
        );

        vol.write(8 * MIB, pattern(4 << 20, 1), false)
            .await
            .unwrap();
        assert!(
            allocated_bytes(&data_file) >= 4 * MIB,
            "{engine}: written range allocated"
        );
        assert_eq!(
            vol.read(8 * MIB, 4 << 20).await.unwrap(),
            pattern(4 << 20, 1)
        );

        vol.trim(8 * MIB, 4 * MIB, false).await.unwrap();
        assert!(
            allocated_bytes(&data_file) < MIB,
            "{engine}: trim frees space"
        );
        assert!(
            vol.read(8 * MIB, 4 << 20)
                .await
                .unwrap()
                .iter()
                .all(|&b| b == 0)
        );
    }
}

/// A replica writes wire payloads with the crc32c they came with and answers reads with the
/// crc32c of what it read, both derived from the block checksums: a payload that does not
/// match its crc changes nothing, and the crc of a read is that of the bytes returned.
#[tokio::test]
async fn payload_checksums_are_checked_on_write_and_derived_on_read() {
    use volume::checksum::block_crc;
    for (engine, disk) in disks() {
        let dir = tempfile::tempdir().unwrap();
        let store = ExtentStore::open(dir.path(), disk).await.unwrap();
        let vol = store.create_volume("crc", 16 * MIB).await.unwrap();
        let data = pattern(64 << 10, 3);
        let mut zeros_inside = data.to_vec();
        zeros_inside[8192..12288].fill(0);
        let zeros_inside = Bytes::from(zeros_inside);

        for (offset, payload) in [(0, &data), (MIB, &zeros_inside), (2 * MIB + 512, &data)] {
            let wrong = block_crc(payload) ^ 1;
            let refused = vol
                .write_checked(offset, payload.clone(), false, wrong)
                .await;
            assert!(
                matches!(refused, Err(VolumeError::PayloadCrc)),
                "{engine} at {offset}: {refused:?}"
            );
            let len = payload.len() as u32;
            let unchanged = vol.read(offset, len).await.unwrap();
            assert!(
                unchanged.iter().all(|&b| b == 0),
                "{engine}: nothing written"
            );

            vol.write_checked(offset, payload.clone(), false, block_crc(payload))
                .await
                .unwrap();
            let (got, crc) = vol.read_with_crc(offset, len).await.unwrap();
            assert_eq!(&got, payload, "{engine} at {offset}");
            let whole_blocks = offset % 4096 == 0;
            assert_eq!(
                crc,
                whole_blocks.then(|| block_crc(payload)),
                "{engine} at {offset}"
            );
        }
        // Blocks never written read as zeros, with the crc32c of zeros.
        let (zeros, crc) = vol.read_with_crc(8 * MIB, 3 * 4096).await.unwrap();
        assert_eq!(crc, Some(block_crc(&zeros)), "{engine}: unwritten blocks");
    }
}

#[tokio::test]
async fn block_status_reports_holes_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = ExtentStore::open(dir.path(), disks().remove(1).1)
        .await
        .unwrap();
    let vol = store.create_volume("map", 16 * MIB).await.unwrap();
    vol.write(4 * MIB, pattern(MIB as usize, 2), false)
        .await
        .unwrap();
    let map = vol.block_status(0, 16 * MIB).await.unwrap();
    let summary: Vec<(u64, bool)> = map.iter().map(|e| (e.len, e.state.hole)).collect();
    assert_eq!(
        summary,
        vec![(4 * MIB, true), (MIB, false), (11 * MIB, true)]
    );
    // WRITE_ZEROES that may trim punches; one that may not keeps the range allocated.
    vol.write_zeroes(
        4 * MIB,
        MIB / 2,
        ZeroFlags {
            may_trim: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    vol.write_zeroes(4 * MIB + MIB / 2, MIB / 2, ZeroFlags::default())
        .await
        .unwrap();
    // Both read as zeros; ext4 reports zero-range's unwritten extents as holes too, which is
    // allowed (a hole may be reported as data, never data as a hole).
    let map = vol.block_status(4 * MIB, MIB).await.unwrap();
    assert!(map.iter().all(|e| e.state.zero), "{map:?}");
    assert_eq!(map.iter().map(|e| e.len).sum::<u64>(), MIB);
    assert!(
        vol.read(4 * MIB, MIB as u32)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0)
    );
}

#[tokio::test]
async fn a_flipped_bit_fails_the_read_and_is_counted_while_neighbours_still_read() {
    for (engine, disk) in disks() {
        let dir = tempfile::tempdir().unwrap();
        let store = ExtentStore::open(dir.path(), disk).await.unwrap();
        let vol = store.create_volume("crc", 8 * MIB).await.unwrap();
        vol.write(0, pattern(MIB as usize, 3), true).await.unwrap();

        let path = dir.path().join("volumes/crc/data");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8192 + 17] ^= 0x80;
        std::fs::write(&path, &bytes).unwrap();

        match vol.read(0, MIB as u32).await {
            Err(VolumeError::Checksum { offset, .. }) => assert_eq!(offset, 8192, "{engine}"),
            other => panic!("{engine}: corrupt block must fail the read, got {other:?}"),
        }
        assert_eq!(store.stats().checksum_errors(), 1, "{engine}");
        assert_eq!(
            vol.read(0, 8192).await.unwrap(),
            pattern(MIB as usize, 3).slice(..8192)
        );
        assert!(vol.read(12288, 4096).await.is_ok());
        // A partial write into the bad block must not launder it either.
        assert!(matches!(
            vol.write(8192 + 100, Bytes::from_static(b"x"), false).await,
            Err(VolumeError::Checksum { .. })
        ));
        // A whole-block overwrite repairs it.
        vol.write(8192, pattern(4096, 9), false).await.unwrap();
        assert_eq!(vol.read(8192, 4096).await.unwrap(), pattern(4096, 9));
    }
}

#[tokio::test]
async fn a_scrub_names_every_bad_block_of_a_range_and_nothing_else() {
    for (engine, disk) in disks() {
        let dir = tempfile::tempdir().unwrap();
        let store = ExtentStore::open(dir.path(), disk).await.unwrap();
        let vol = store.create_volume("scrubbed", 8 * MIB).await.unwrap();
        vol.write(0, pattern(2 * MIB as usize, 5), true)
            .await
            .unwrap();
        let data = pattern(2 * MIB as usize, 5);
        let clean = vol.scrub(0, 2 * MIB).await.unwrap();
        assert_eq!(clean.bad, Vec::<u64>::new());
        assert_eq!(
            clean.crc,
            Some(volume::wire::payload_crc(&data)),
            "{engine}"
        );
        let part = vol.scrub(100, 5000).await.unwrap();
        assert_eq!(
            part.crc,
            Some(volume::wire::payload_crc(&data[100..5100])),
            "{engine}"
        );
        assert!(vol.scrub(0, 8 * MIB).await.unwrap().bad.is_empty());

        let path = dir.path().join("volumes/scrubbed/data");
        let mut bytes = std::fs::read(&path).unwrap();
        for at in [4096 + 3, 20 * 4096 + 4095, MIB as usize + 1] {
            bytes[at] ^= 0x01;
        }
        std::fs::write(&path, &bytes).unwrap();

        let found = vol.scrub(0, 8 * MIB).await.unwrap();
        assert_eq!(found.bad, vec![4096, 20 * 4096, MIB], "{engine}");
        assert_eq!(found.crc, None, "{engine}");
        assert_eq!(store.stats().checksum_errors(), 3, "{engine}");
        assert!(vol.scrub(2 * MIB, MIB).await.unwrap().bad.is_empty());
        assert!(matches!(
            vol.scrub(8 * MIB, 4096).await,
            Err(VolumeError::OutOfRange { .. })
        ));
    }
}

#[tokio::test]
async fn volumes_and_their_data_survive_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = ExtentStore::open(dir.path(), disks().remove(1).1)
            .await
            .unwrap();
        let vol = store.create_volume("keep", 8 * MIB).await.unwrap();
        vol.write(100, pattern(10_000, 4), false).await.unwrap();
        vol.flush().await.unwrap();
        store.create_volume("gone", 4 * MIB).await.unwrap();
        store.delete_volume("gone").await.unwrap();
        assert!(matches!(
            ExtentStore::open(dir.path(), disks().remove(0).1).await,
            Err(StoreError::DataDirLocked(_))
        ));
    }
    let store = ExtentStore::open(dir.path(), disks().remove(1).1)
        .await
        .unwrap();
    let names: Vec<String> = store
        .volumes()
        .iter()
        .map(|v| v.name().to_string())
        .collect();
    assert_eq!(names, vec!["keep".to_string()]);
    let vol = store.volume("keep").unwrap();
    assert_eq!(vol.read(100, 10_000).await.unwrap(), pattern(10_000, 4));
    assert!(vol.read(0, 100).await.unwrap().iter().all(|&b| b == 0));
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = ExtentStore::open(dir.path(), disks().remove(0).1)
        .await
        .unwrap();
    assert!(matches!(
        store.create_volume("bad/name", MIB).await,
        Err(StoreError::InvalidName(_))
    ));
    assert!(matches!(
        store.create_volume("odd", 1000).await,
        Err(StoreError::InvalidSize { .. })
    ));
    let vol = store.create_volume("v", MIB).await.unwrap();
    assert!(matches!(
        store.create_volume("v", MIB).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        vol.read(MIB - 10, 20).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        vol.write(u64::MAX - 1, pattern(4, 0), false).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        vol.trim(MIB, 1, false).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        vol.block_status(MIB, 1).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        vol.read(0, 64 << 20).await,
        Err(VolumeError::TooLarge { .. })
    ));
    assert!(
        vol.read(0, MIB as u32)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0)
    );
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        offset: u64,
        len: usize,
        seed: u8,
        fua: bool,
    },
    Trim {
        offset: u64,
        len: u64,
    },
    Zero {
        offset: u64,
        len: u64,
        may_trim: bool,
    },
    Flush,
}

const MODEL_SIZE: u64 = 256 * 1024;

fn op() -> impl Strategy<Value = Op> {
    let range = (0..MODEL_SIZE).prop_flat_map(|o| (Just(o), 1..=(MODEL_SIZE - o).min(40_000)));
    prop_oneof![
        4 => (range.clone(), any::<u8>(), any::<bool>())
            .prop_map(|((offset, len), seed, fua)| Op::Write { offset, len: len as usize, seed, fua }),
        1 => range.clone().prop_map(|(offset, len)| Op::Trim { offset, len }),
        1 => (range, any::<bool>()).prop_map(|((offset, len), may_trim)| Op::Zero { offset, len, may_trim }),
        1 => Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any sequence of unaligned writes, trims and zeroes reads back like a plain byte array,
    /// before and after reopening the store.
    #[test]
    fn random_operations_read_back_like_a_byte_array(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut model = vec![0u8; MODEL_SIZE as usize];
            {
                let store = ExtentStore::open(dir.path(), disks().remove(1).1).await.unwrap();
                let vol = store.create_volume("m", MODEL_SIZE).await.unwrap();
                for op in &ops {
                    match *op {
                        Op::Write { offset, len, seed, fua } => {
                            let data = pattern(len, seed);
                            model[offset as usize..offset as usize + len].copy_from_slice(&data);
                            vol.write(offset, data, fua).await.unwrap();
                        }
                        Op::Trim { offset, len } => {
                            model[offset as usize..(offset + len) as usize].fill(0);
                            vol.trim(offset, len, false).await.unwrap();
                        }
                        Op::Zero { offset, len, may_trim } => {
                            model[offset as usize..(offset + len) as usize].fill(0);
                            vol.write_zeroes(offset, len, ZeroFlags { may_trim, ..Default::default() }).await.unwrap();
                        }
                        Op::Flush => vol.flush().await.unwrap(),
                    }
                }
                assert_eq!(&vol.read(0, MODEL_SIZE as u32).await.unwrap()[..], &model[..]);
                vol.flush().await.unwrap();
            }
            let store = ExtentStore::open(dir.path(), disks().remove(0).1).await.unwrap();
            let vol = store.volume("m").unwrap();
            assert_eq!(&vol.read(0, MODEL_SIZE as u32).await.unwrap()[..], &model[..]);
        });
    }
}

/// Partial writes to different bytes of the same block, all in flight at once, lose nothing:
/// each is a read-modify-write of the whole block, so they must not interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_partial_writes_to_one_block_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let store = ExtentStore::open(dir.path(), disks().remove(1).1)
        .await
        .unwrap();
    let vol = store.create_volume("rmw", MIB).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let vol = Arc::clone(&vol);
        tasks.push(tokio::spawn(async move {
            vol.write(4096 + i * 64, Bytes::from(vec![i as u8 + 1; 64]), false)
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let block = vol.read(4096, 4096).await.unwrap();
    for i in 0..64usize {
        assert!(
            block[i * 64..(i + 1) * 64]
                .iter()
                .all(|&b| b == i as u8 + 1),
            "slice {i} lost"
        );
    }
}
