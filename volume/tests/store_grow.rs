//! Growing a volume in the extent store and on a replica: data kept, the new range reads as
//! zeros and takes writes, the size survives a reopen, IO in flight is unharmed, a shrink is
//! refused, and a grow cut short by a crash at any step leaves a volume that opens, at the
//! old size, and can be grown again.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use volume::io::Disk;
use volume::io::portable::PortableDisk;
use volume::io::sim::{FaultOp, SimDisk};
use volume::io::uring::UringDisk;
use volume::replica::{ReplicaConfig, ReplicaServer, store_volume_name};
use volume::store::catalog::{self, VolumeRecord};
use volume::store::{ExtentStore, StoreError};
use volume::wire::{EXTENT_SIZE_BYTES, VERSION_ENTRY_BYTES, VolumeId, WriteVersion};
use volume::{BlockVolume, VolumeError};

const MIB: u64 = 1 << 20;
/// Not a whole number of checksum pages (2 MiB of data each) nor of extents, so the page and
/// the extent at the old end are shared with the new range.
const OLD: u64 = 3 * MIB + 4096;
const NEW: u64 = 21 * MIB;

fn disks() -> Vec<(&'static str, Arc<dyn Disk>)> {
    vec![
        ("portable", Arc::new(PortableDisk::new("test"))),
        (
            "uring",
            Arc::new(UringDisk::new("test").expect("io_uring is available here")),
        ),
    ]
}

fn pattern(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect::<Vec<u8>>(),
    )
}

async fn assert_zeros(vol: &dyn BlockVolume, offset: u64, len: u32, what: &str) {
    let got = vol.read(offset, len).await.unwrap();
    assert!(got.iter().all(|&b| b == 0), "{what}: not zeros");
}

fn data_len(dir: &Path, name: &str) -> u64 {
    std::fs::metadata(dir.join("volumes").join(name).join("data"))
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_grown_volume_keeps_its_data_reads_zeros_past_the_old_end_and_reopens_grown() {
    for (engine, disk) in disks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = ExtentStore::open(dir.path(), Arc::clone(&disk))
                .await
                .unwrap();
            let vol = store.create_volume("v", OLD).await.unwrap();
            vol.write(0, pattern(MIB as usize, 1), false).await.unwrap();
            vol.write(OLD - 4096, pattern(4096, 2), false)
                .await
                .unwrap();
            assert!(
                matches!(
                    vol.read(OLD, 4096).await,
                    Err(VolumeError::OutOfRange { .. })
                ),
                "{engine}: past the end before the grow"
            );

            let grown = store.grow_volume("v", NEW).await.unwrap();
            assert!(Arc::ptr_eq(&grown, &vol), "{engine}: the same volume grew");
            assert_eq!(vol.size(), NEW, "{engine}");
            assert_eq!(data_len(dir.path(), "v"), NEW, "{engine}: data file");
            assert_eq!(
                vol.read(0, MIB as u32).await.unwrap(),
                pattern(MIB as usize, 1)
            );
            assert_eq!(vol.read(OLD - 4096, 4096).await.unwrap(), pattern(4096, 2));
            assert_zeros(&*vol, OLD, (NEW - OLD) as u32, engine).await;

            // Across the old end, and far into the new range.
            vol.write(OLD - 2048, pattern(8192, 3), false)
                .await
                .unwrap();
            vol.write(NEW - MIB, pattern(MIB as usize, 4), true)
                .await
                .unwrap();
            assert_eq!(vol.read(OLD - 2048, 8192).await.unwrap(), pattern(8192, 3));
            vol.flush().await.unwrap();

            // Growing to the size it has does nothing; a smaller size is refused.
            store.grow_volume("v", NEW).await.unwrap();
            let shrink = store.grow_volume("v", NEW - 4096).await;
            assert!(
                matches!(shrink, Err(StoreError::Shrink { size: NEW, .. })),
                "{engine}: {:?}",
                shrink.err()
            );
            assert!(matches!(
                store.grow_volume("nope", NEW).await,
                Err(StoreError::NotFound(_))
            ));
            assert!(matches!(
                store.grow_volume("v", NEW + 1).await,
                Err(StoreError::InvalidSize { .. })
            ));
        }
        let store = ExtentStore::open(dir.path(), disk).await.unwrap();
        let vol = store.volume("v").expect("the grown volume reopens");
        assert_eq!(vol.size(), NEW, "{engine}: the size survives a reopen");
        assert_eq!(
            vol.read(0, MIB as u32).await.unwrap(),
            pattern(MIB as usize, 1)
        );
        assert_eq!(vol.read(OLD - 2048, 8192).await.unwrap(), pattern(8192, 3));
        assert_eq!(
            vol.read(NEW - MIB, MIB as u32).await.unwrap(),
            pattern(MIB as usize, 4)
        );
        assert_zeros(&*vol, OLD + 8192, MIB as u32, engine).await;
    }
}

#[tokio::test]
async fn writes_and_reads_under_way_during_a_grow_are_unharmed() {
    let dir = tempfile::tempdir().unwrap();
    let store = ExtentStore::open(dir.path(), disks().remove(1).1)
        .await
        .unwrap();
    let vol = store.create_volume("busy", OLD).await.unwrap();
    let blocks = OLD / 4096;
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let vol = Arc::clone(&vol);
            tokio::spawn(async move {
                for round in 0..40u64 {
                    let block = (w * 97 + round * 13) % blocks;
                    let data = pattern(4096, (w * 40 + round) as u8);
                    vol.write(block * 4096, data.clone(), round % 4 == 0)
                        .await
                        .unwrap();
                    assert_eq!(vol.read(block * 4096, 4096).await.unwrap(), data);
                }
            })
        })
        .collect();
    for size in [OLD + 4096, 8 * MIB, NEW] {
        store.grow_volume("busy", size).await.unwrap();
    }
    for w in writers {
        w.await.expect("a writer failed during the grow");
    }
    assert_eq!(vol.size(), NEW);
    assert_zeros(&*vol, OLD, (NEW - OLD) as u32, "the new range").await;
}

/// The grow's steps on the simulated disk, cut short: a sync that fails, and a crash after the
/// files grew but before the catalog said so. Each leaves a volume that opens with its data
/// at the old size and grows again; a finished grow survives power loss.
#[tokio::test]
async fn a_grow_cut_short_by_a_crash_leaves_a_volume_that_opens_at_the_old_size() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(SimDisk::new("grow", 7));
    let reopen = || ExtentStore::open(dir.path(), Arc::clone(&disk) as Arc<dyn Disk>);
    {
        let store = reopen().await.unwrap();
        let vol = store.create_volume("v", OLD).await.unwrap();
        vol.write(OLD - 8192, pattern(8192, 5), true).await.unwrap();

        // The sync that makes the files' new lengths durable fails: the grow fails, the
        // volume serves its old size.
        disk.fail_next(FaultOp::Sync, 1);
        assert!(matches!(
            store.grow_volume("v", NEW).await,
            Err(StoreError::Io { .. })
        ));
        assert_eq!(vol.size(), OLD);
        assert!(matches!(
            vol.write(OLD, pattern(4096, 6), false).await,
            Err(VolumeError::OutOfRange { .. })
        ));
        disk.crash();
    }
    {
        let store = reopen().await.unwrap();
        let vol = store.volume("v").unwrap();
        assert_eq!(vol.size(), OLD, "after a failed grow and a crash");
        assert_eq!(vol.read(OLD - 8192, 8192).await.unwrap(), pattern(8192, 5));

        // The files grow, durably, and the crash comes before the catalog's replace: the
        // state a grow leaves between its last two steps.
        store.grow_volume("v", NEW).await.unwrap();
        catalog::store(
            &*disk,
            dir.path(),
            &[VolumeRecord {
                name: "v".into(),
                size_bytes: OLD,
            }],
        )
        .await
        .unwrap();
        disk.crash();
    }
    {
        let store = reopen().await.unwrap();
        let vol = store.volume("v").unwrap();
        assert_eq!(vol.size(), OLD, "the catalog's size wins");
        assert_eq!(vol.read(OLD - 8192, 8192).await.unwrap(), pattern(8192, 5));

        store.grow_volume("v", NEW).await.unwrap();
        assert_zeros(&*vol, OLD, (NEW - OLD) as u32, "grown again").await;
        vol.write(NEW - 4096, pattern(4096, 7), true).await.unwrap();
        disk.crash();
    }
    let store = reopen().await.unwrap();
    let vol = store.volume("v").unwrap();
    assert_eq!(vol.size(), NEW, "a finished grow survives power loss");
    assert_eq!(vol.read(OLD - 8192, 8192).await.unwrap(), pattern(8192, 5));
    assert_eq!(vol.read(NEW - 4096, 4096).await.unwrap(), pattern(4096, 7));
}

const VOL: VolumeId = VolumeId(3);

async fn replica_server(dir: &Path) -> Arc<ReplicaServer> {
    let store = ExtentStore::open(dir, Arc::new(PortableDisk::new("test")))
        .await
        .unwrap();
    ReplicaServer::new(Arc::new(store), ReplicaConfig::default())
}

/// The storage agent's call: the replica follows the record's size up, never down, and its
/// version and intent tables grow with it.
#[tokio::test]
async fn a_replica_grows_with_its_tables_and_refuses_to_shrink() {
    let dir = tempfile::tempdir().unwrap();
    {
        let server = replica_server(dir.path()).await;
        server.ensure_volume(VOL, OLD).await.unwrap();
        let replica = server.volume(VOL).await.unwrap().unwrap();
        assert_eq!(replica.extent_count(), 1);
        replica
            .versions
            .record(0, 1, WriteVersion { epoch: 1, seq: 9 })
            .await
            .unwrap();

        let local = server.ensure_volume(VOL, NEW).await.unwrap();
        assert_eq!(local.size(), NEW);
        assert_eq!(replica.extent_count(), NEW.div_ceil(EXTENT_SIZE_BYTES));
        assert_eq!(
            replica.extent_versions(0, 8),
            [
                vec![WriteVersion { epoch: 1, seq: 9 }],
                vec![WriteVersion::NONE; 5]
            ]
            .concat(),
            "versions kept, the new extents never written"
        );
        assert_eq!(replica.intent.suspect(0, 6), vec![false; 6]);

        let shrink = server.ensure_volume(VOL, OLD).await;
        assert!(
            matches!(
                shrink,
                Err(StoreError::Shrink {
                    size: NEW,
                    requested: OLD,
                    ..
                })
            ),
            "{:?}",
            shrink.err()
        );
        assert_eq!(local.size(), NEW, "never shrunk");

        // A grow that stops after the tables grew, before the store did.
        replica.versions.grow(2 * NEW).await.unwrap();
        replica.intent.grow(2 * NEW).await.unwrap();
    }
    let server = replica_server(dir.path()).await;
    let replica = server
        .volume(VOL)
        .await
        .unwrap()
        .expect("the replica opens");
    assert_eq!(replica.local.size(), NEW);
    assert_eq!(replica.extent_count(), NEW.div_ceil(EXTENT_SIZE_BYTES));
    assert_eq!(
        replica.extent_versions(0, 1),
        vec![WriteVersion { epoch: 1, seq: 9 }]
    );
    let name = store_volume_name(VOL);
    assert_eq!(data_len(dir.path(), &name), NEW);
    let versions = std::fs::metadata(dir.path().join("replica").join(&name).join("versions"))
        .unwrap()
        .len();
    assert_eq!(
        versions,
        NEW.div_ceil(EXTENT_SIZE_BYTES) * VERSION_ENTRY_BYTES as u64,
        "the unfinished grow of the table is undone"
    );
    // And it grows again from there.
    server.ensure_volume(VOL, 2 * NEW).await.unwrap();
    assert_eq!(
        replica.extent_count(),
        (2 * NEW).div_ceil(EXTENT_SIZE_BYTES)
    );
}
