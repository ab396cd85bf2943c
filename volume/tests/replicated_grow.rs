//! A replicated volume follows a resize: three replica servers on real TCP, grown one by one
//! as their storage agents would, and the client in front of them, which takes the new size
//! only once every live replica holds it, then writes and reads the new range on all three.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;
use volume::client::{
    ActingSets, ClientConfig, Growth, LoggingObserver, PoolConfig, ReplicaPool, ReplicatedVolume,
};
use volume::io::portable::PortableDisk;
use volume::replica::{ReplicaConfig, ReplicaServer, store_volume_name};
use volume::store::ExtentStore;
use volume::wire::{EXTENT_SIZE_BYTES, VolumeId};
use volume::{BlockVolume, VolumeError};

const VOL: VolumeId = VolumeId(11);
const OLD: u64 = 3 * EXTENT_SIZE_BYTES + 8192;
const NEW: u64 = 9 * EXTENT_SIZE_BYTES;

/// One storage node: a replica server on a store in a temporary directory.
struct Node {
    _dir: tempfile::TempDir,
    server: Arc<ReplicaServer>,
    addr: SocketAddr,
    _shutdown: watch::Sender<bool>,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = ExtentStore::open(dir.path(), Arc::new(PortableDisk::new("test")))
        .await
        .unwrap();
    let server = ReplicaServer::new(Arc::new(store), ReplicaConfig::default());
    server.ensure_volume(VOL, OLD).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(Arc::clone(&server).serve(listener, rx));
    Node {
        _dir: dir,
        server,
        addr,
        _shutdown: tx,
    }
}

fn client(nodes: &[Node]) -> ReplicatedVolume {
    let config = ClientConfig {
        name: "grown".into(),
        volume: VOL,
        size_bytes: OLD,
        attach_epoch: 1,
        min_replicas: 2,
        below_min_wait_ms: 1_000,
        removal_wait_ms: 2_000,
        resync_pace_bytes_per_sec: volume::client::RESYNC_BYTES_PER_SEC_MAX,
    };
    let acting = ActingSets::single(nodes.iter().map(|n| n.addr).collect());
    let pool = ReplicaPool::tcp(PoolConfig::default()).unwrap();
    ReplicatedVolume::new(config, acting, Arc::new(LoggingObserver), pool).unwrap()
}

fn pattern(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) | 1)
            .collect::<Vec<u8>>(),
    )
}

#[tokio::test]
async fn three_replicas_grown_one_by_one_then_the_volume_serves_the_new_range_on_all_three() {
    let nodes = vec![node().await, node().await, node().await];
    let vol = client(&nodes);
    vol.flush().await.unwrap();
    vol.write(OLD - 8192, pattern(8192, 1), false)
        .await
        .unwrap();
    assert!(matches!(
        vol.write(OLD, pattern(4096, 2), false).await,
        Err(VolumeError::OutOfRange { .. })
    ));

    // No replica holds the new size yet, then one still does not: the volume waits.
    assert!(matches!(
        vol.grow(NEW).await.unwrap(),
        Growth::Waiting { .. }
    ));
    for n in &nodes[..2] {
        n.server.ensure_volume(VOL, NEW).await.unwrap();
    }
    assert_eq!(
        vol.grow(NEW).await.unwrap(),
        Growth::Waiting {
            replica: nodes[2].addr
        }
    );
    assert_eq!(vol.size(), OLD, "not grown while a replica is short");

    nodes[2].server.ensure_volume(VOL, NEW).await.unwrap();
    assert_eq!(vol.grow(NEW).await.unwrap(), Growth::Grown);
    assert_eq!(vol.size(), NEW);
    assert!(vol.grow(OLD).await.is_err(), "a shrink is refused");

    // The old data, the new range, and a write across the old end and in the last extent,
    // on every replica.
    assert_eq!(vol.read(OLD - 8192, 8192).await.unwrap(), pattern(8192, 1));
    let zeros = vol.read(OLD, (NEW - OLD) as u32).await.unwrap();
    assert!(
        zeros.iter().all(|&b| b == 0),
        "the new range reads as zeros"
    );
    vol.write(OLD - 4096, pattern(8192, 3), false)
        .await
        .unwrap();
    vol.write(
        NEW - EXTENT_SIZE_BYTES,
        pattern(EXTENT_SIZE_BYTES as usize, 4),
        true,
    )
    .await
    .unwrap();
    vol.flush().await.unwrap();
    for n in &nodes {
        let local = n.server.store().volume(&store_volume_name(VOL)).unwrap();
        assert_eq!(local.size(), NEW);
        assert_eq!(
            local.read(OLD - 4096, 8192).await.unwrap(),
            pattern(8192, 3)
        );
        assert_eq!(
            local
                .read(NEW - EXTENT_SIZE_BYTES, EXTENT_SIZE_BYTES as u32)
                .await
                .unwrap(),
            pattern(EXTENT_SIZE_BYTES as usize, 4)
        );
        let replica = n.server.volume(VOL).await.unwrap().unwrap();
        assert!(
            replica.extent_versions(8, 1)[0] != volume::wire::WriteVersion::NONE,
            "the last extent's version is recorded"
        );
    }
    assert_eq!(vol.live_replicas(0).len(), 3, "no replica left the group");
}
