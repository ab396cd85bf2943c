//! Replicated volumes end to end, on real TCP over 127.0.0.1: three replica servers, each on
//! its own extent store in a temporary directory, and the replicated client in front of them.
//! A "killed" replica is one whose server task was aborted: its listener and every
//! connection close at once, as they would if the process died.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use volume::client::{
    AclFuture, AclObserver, ActingSets, ClientConfig, PoolConfig, RemovalError, ReplicaFailure,
    ReplicaPool, ReplicatedVolume,
};
use volume::io::portable::PortableDisk;
use volume::nbd::{NbdConfig, NbdServer};
use volume::replica::{ReplicaConfig, ReplicaServer, store_volume_name};
use volume::store::{ExtentStore, LocalVolume};
use volume::wire::{
    EXTENT_SIZE_BYTES, Op, Request, RequestHeader, Status, VolumeId, WriteVersion, decode_reply,
};
use volume::{BlockVolume, VolumeError};

const VOL: VolumeId = VolumeId(7);
const SIZE: u64 = 16 * EXTENT_SIZE_BYTES;
const EXTENT: u64 = EXTENT_SIZE_BYTES;
/// Request timeout of the scenarios that are not about timeouts: generous, so a slow fsync on
/// a busy machine does not get a healthy replica removed.
const SLOW_DISK_TIMEOUT_MS: u64 = 10_000;
/// How long writes wait below `min_replicas` in these scenarios: short, to keep them quick.
const BELOW_MIN_WAIT_MS: u64 = 300;
/// How long writes wait for a failed replica's removal to commit in these scenarios: the
/// removal runs in the failed call's task, which a machine busy with the other tests may not
/// poll for a while (500 ms once failed a write that was only waiting for it).
const REMOVAL_WAIT_MS: u64 = 2_000;

// ---- Harness ------------------------------------------------------------------------------

/// One storage node: an extent store in a temporary directory and a replica server on it.
struct Node {
    dir: tempfile::TempDir,
    store: Arc<ExtentStore>,
    addr: SocketAddr,
    task: JoinHandle<()>,
    _shutdown: watch::Sender<bool>,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        Node::start_in(dir).await
    }

    async fn start_in(dir: tempfile::TempDir) -> Node {
        Node::start_at(dir, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Stops the server and starts a new one on the same directory and address: a restart
    /// of the process, as the client sees it.
    async fn restart(self) -> Node {
        let (dir, addr) = self.stop().await;
        Node::start_at(dir, addr).await
    }

    /// Restarts the node as after a restart of its machine: the replica's power record names
    /// another boot, so the replica counts what was not durable as lost (the data itself stays,
    /// as this machine did not really restart).
    async fn restart_machine(self) -> Node {
        let (dir, addr) = self.stop().await;
        let record = dir.path().join("replica").join("power");
        let text = std::fs::read_to_string(&record).unwrap();
        let epoch = text.lines().nth(1).unwrap();
        std::fs::write(&record, format!("an-earlier-boot\n{epoch}\n")).unwrap();
        Node::start_at(dir, addr).await
    }

    /// Kills the server and waits until its store is let go; returns where it lived.
    async fn stop(self) -> (tempfile::TempDir, SocketAddr) {
        self.kill().await;
        let Node {
            dir, store, addr, ..
        } = self;
        drop(store);
        wait_for_unlock(dir.path()).await;
        (dir, addr)
    }

    async fn start_at(dir: tempfile::TempDir, at: SocketAddr) -> Node {
        let store = Arc::new(
            ExtentStore::open(dir.path(), Arc::new(PortableDisk::new("test")))
                .await
                .unwrap(),
        );
        let server = ReplicaServer::new(Arc::clone(&store), ReplicaConfig::default());
        server.ensure_volume(VOL, SIZE).await.unwrap();
        let listener = TcpListener::bind(at).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(server.serve(listener, rx));
        Node {
            dir,
            store,
            addr,
            task,
            _shutdown: tx,
        }
    }

    /// Aborts the server and waits until it is gone: its listener and every connection are
    /// closed, so nothing sent afterwards is served. (An abort lands at the task's next poll;
    /// a request sent meanwhile could still be answered.)
    async fn kill(&self) {
        self.task.abort();
        // The server and its connections hold the store: once they are gone, only this does.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.store) > 1 {
            assert!(
                Instant::now() < deadline,
                "the server never let go of its store"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The volume as this node's store holds it, read without any replication in between.
    fn local(&self) -> Arc<LocalVolume> {
        self.store.volume(&store_volume_name(VOL)).unwrap()
    }

    fn data_file(&self) -> PathBuf {
        self.dir
            .path()
            .join("volumes")
            .join(store_volume_name(VOL))
            .join("data")
    }
}

async fn three_nodes() -> Vec<Node> {
    vec![
        Node::start().await,
        Node::start().await,
        Node::start().await,
    ]
}

/// Records everything the client reports. Removals are accepted at once, unless the
/// metadata service is made unavailable (`down`), removals are held (`hold`) or refused
/// (`refuse`).
#[derive(Default)]
struct Recorder {
    failures: Mutex<Vec<ReplicaFailure>>,
    fenced: Mutex<Vec<(u64, u64)>>,
    corrupt: Mutex<Vec<(SocketAddr, u64)>>,
    /// While set, every removal fails as "not committed".
    down: std::sync::atomic::AtomicBool,
    /// While set, every removal is refused, as one of a group's last current copy is.
    refuse: std::sync::atomic::AtomicBool,
    /// While set, removals wait for a permit of this semaphore before they commit.
    hold: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    committed: Arc<std::sync::atomic::AtomicUsize>,
}

impl AclObserver for Recorder {
    fn replica_failed(&self, failure: ReplicaFailure) -> AclFuture {
        use std::sync::atomic::Ordering::SeqCst;
        self.failures.lock().unwrap().push(failure);
        if self.down.load(SeqCst) {
            return Box::pin(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(RemovalError::Unavailable("no quorum".into()))
            });
        }
        if self.refuse.load(SeqCst) {
            return Box::pin(async {
                Err(RemovalError::Refused(
                    "holds the last current replica".into(),
                ))
            });
        }
        let held = self.hold.lock().unwrap().clone();
        let committed = Arc::clone(&self.committed);
        Box::pin(async move {
            if let Some(held) = held {
                let _ = held.acquire().await;
            }
            committed.fetch_add(1, SeqCst);
            Ok(())
        })
    }
    fn fenced(&self, _volume: VolumeId, our_epoch: u64, current: u64) {
        self.fenced.lock().unwrap().push((our_epoch, current));
    }
    fn block_corrupt(&self, _volume: VolumeId, replica: SocketAddr, offset: u64) {
        self.corrupt.lock().unwrap().push((replica, offset));
    }
}

impl Recorder {
    fn failed_replicas(&self) -> Vec<SocketAddr> {
        self.failures
            .lock()
            .unwrap()
            .iter()
            .map(|f| f.replica)
            .collect()
    }
}

/// A client of the test volume over `acting`, recording what it reports.
fn client_over(
    acting: ActingSets,
    epoch: u64,
    min_replicas: usize,
    timeout_ms: u64,
    below_min_wait_ms: u64,
) -> (ReplicatedVolume, Arc<Recorder>) {
    let pool = ReplicaPool::tcp(PoolConfig {
        request_timeout_ms: timeout_ms,
        requests_in_flight_per_replica_max: 64,
        ..PoolConfig::default()
    })
    .unwrap();
    client_in(pool, acting, epoch, min_replicas, below_min_wait_ms)
}

/// A client of the test volume over `acting` whose links come from `pool`.
fn client_in(
    pool: Arc<ReplicaPool>,
    acting: ActingSets,
    epoch: u64,
    min_replicas: usize,
    below_min_wait_ms: u64,
) -> (ReplicatedVolume, Arc<Recorder>) {
    client_waiting(
        pool,
        acting,
        epoch,
        min_replicas,
        below_min_wait_ms,
        REMOVAL_WAIT_MS,
    )
}

fn client_waiting(
    pool: Arc<ReplicaPool>,
    acting: ActingSets,
    epoch: u64,
    min_replicas: usize,
    below_min_wait_ms: u64,
    removal_wait_ms: u64,
) -> (ReplicatedVolume, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let config = ClientConfig {
        name: "replicated".into(),
        volume: VOL,
        size_bytes: SIZE,
        attach_epoch: epoch,
        min_replicas,
        below_min_wait_ms,
        removal_wait_ms,
        resync_pace_bytes_per_sec: volume::client::RESYNC_BYTES_PER_SEC_MAX,
    };
    let observer = Arc::clone(&recorder) as Arc<dyn AclObserver>;
    let vol = ReplicatedVolume::new(config, acting, observer, pool).unwrap();
    (vol, recorder)
}

fn client_with(
    replicas: &[SocketAddr],
    epoch: u64,
    min_replicas: usize,
    timeout_ms: u64,
) -> (ReplicatedVolume, Arc<Recorder>) {
    let acting = ActingSets::single(replicas.to_vec());
    client_over(acting, epoch, min_replicas, timeout_ms, BELOW_MIN_WAIT_MS)
}

/// A client of one group whose acting set is nodes 0 and 1 (`min_replicas` 2), with node 2
/// stale: it gets nothing until resynced.
fn client_with_node_2_stale(
    nodes: &[Node],
    below_min_wait_ms: u64,
) -> (ReplicatedVolume, Arc<Recorder>) {
    let acting = ActingSets {
        groups: vec![vec![nodes[0].addr, nodes[1].addr]],
        stale: vec![vec![nodes[2].addr]],
    };
    client_over(acting, 1, 2, SLOW_DISK_TIMEOUT_MS, below_min_wait_ms)
}

fn client(nodes: &[Node], epoch: u64, min_replicas: usize) -> (ReplicatedVolume, Arc<Recorder>) {
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    client_with(&addrs, epoch, min_replicas, SLOW_DISK_TIMEOUT_MS)
}

fn pattern(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 12) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Compares bytes without printing megabytes of them when they differ.
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at}");
    }
}

fn flip_bit(path: &std::path::Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x04;
    f.write_all_at(&byte, offset).unwrap();
    f.sync_all().unwrap();
}

// ---- Scenarios ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_across_an_extent_boundary_lands_on_every_replica() {
    let nodes = three_nodes().await;
    let (vol, _) = client(&nodes, 1, 2);
    // Unaligned at both ends and crossing from extent 0 into extent 1.
    let at = EXTENT - 1000;
    let data = pattern(10_000, 3);
    vol.write(at, data.clone(), false).await.unwrap();
    vol.write(5 * EXTENT, pattern(4096, 9), true).await.unwrap();
    vol.flush().await.unwrap();

    same(&vol.read(at, 10_000).await.unwrap(), &data, "client read");
    for (i, node) in nodes.iter().enumerate() {
        let local = node.local();
        same(
            &local.read(at, 10_000).await.unwrap(),
            &data,
            &format!("replica {i}"),
        );
        same(
            &local.read(5 * EXTENT, 4096).await.unwrap(),
            &pattern(4096, 9),
            &format!("replica {i}, FUA write"),
        );
        assert!(
            local
                .read(at - 4096, 4096)
                .await
                .unwrap()
                .iter()
                .all(|&b| b == 0),
            "replica {i}: nothing written before the range"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_is_removed_writes_go_on_with_two_and_fail_with_one() {
    let nodes = three_nodes().await;
    let (vol, recorder) = client(&nodes, 1, 2);

    // 64 writes of 64 KiB in flight at once; the third replica dies while they run.
    let mut writes = Vec::new();
    for i in 0..64u64 {
        let vol = vol.clone();
        writes.push(tokio::spawn(async move {
            vol.write(i * 65536, pattern(65536, i as u8), false).await
        }));
        if i == 20 {
            nodes[2].kill().await;
        }
    }
    for (i, w) in writes.into_iter().enumerate() {
        w.await
            .unwrap()
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
    }
    // Writes issued after the kill notice it too, whichever way the timing went above.
    vol.write(10 * EXTENT, pattern(4096, 1), true)
        .await
        .unwrap();
    assert_eq!(recorder.failed_replicas(), vec![nodes[2].addr]);
    assert_eq!(vol.live_replicas(0), vec![nodes[0].addr, nodes[1].addr]);

    for i in 0..64u64 {
        let want = pattern(65536, i as u8);
        same(
            &vol.read(i * 65536, 65536).await.unwrap(),
            &want,
            &format!("write {i}"),
        );
        for node in &nodes[..2] {
            let got = node.local().read(i * 65536, 65536).await.unwrap();
            same(&got, &want, &format!("write {i} on {}", node.addr));
        }
    }

    // Down to one replica: below min_replicas 2, writes fail with an IO error.
    nodes[1].kill().await;
    let err = vol.write(0, pattern(4096, 2), false).await.unwrap_err();
    assert!(matches!(err, VolumeError::Io(_)), "{err}");
    assert!(recorder.failed_replicas().contains(&nodes[1].addr));
    let err = vol.write(0, pattern(4096, 2), false).await.unwrap_err();
    assert!(err.to_string().contains("min_replicas"), "{err}");
    // Reads still work from the replica that has every acknowledged write. (The failed write
    // may have landed on it: an unacknowledged write may leave old or new data.)
    same(
        &vol.read(65536, 65536).await.unwrap(),
        &pattern(65536, 1),
        "after the failure",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_prefer_the_first_replica_and_fail_over_when_it_dies() {
    let nodes = three_nodes().await;
    let (vol, recorder) = client(&nodes, 1, 2);
    let data = pattern(8192, 4);
    vol.write(EXTENT, data.clone(), true).await.unwrap();
    same(
        &vol.read(EXTENT, 8192).await.unwrap(),
        &data,
        "from the first",
    );
    assert!(recorder.failures.lock().unwrap().is_empty());

    nodes[0].kill().await;
    same(
        &vol.read(EXTENT, 8192).await.unwrap(),
        &data,
        "after failover",
    );
    assert_eq!(recorder.failed_replicas(), vec![nodes[0].addr]);
    assert_eq!(vol.live_replicas(0), vec![nodes[1].addr, nodes[2].addr]);
}

/// The PG map is the authority on staleness: a replica it lists as stale serves no read and
/// is offered for resync, even if this client never saw it fail (a stale replica the client
/// kept as live was never rebuilt, and the PG stayed degraded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_the_map_lists_as_stale_leaves_the_live_set_and_is_resynced() {
    let nodes = three_nodes().await;
    let (vol, _recorder) = client(&nodes, 1, 2);
    let data = pattern(8192, 9);
    vol.write(EXTENT, data.clone(), true).await.unwrap();
    vol.follow(&ActingSets {
        groups: vec![vec![nodes[1].addr, nodes[2].addr]],
        stale: vec![vec![nodes[0].addr]],
    })
    .unwrap();
    assert_eq!(vol.live_replicas(0), vec![nodes[1].addr, nodes[2].addr]);
    assert_eq!(vol.stale_replicas(), vec![(0, nodes[0].addr)]);
    same(
        &vol.read(EXTENT, 8192).await.unwrap(),
        &data,
        "from a live replica",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_a_dead_replica_misses_removes_it_and_succeeds_on_the_rest() {
    let nodes = three_nodes().await;
    let (vol, recorder) = client(&nodes, 1, 2);
    vol.write(0, pattern(4096, 1), false).await.unwrap();
    nodes[1].kill().await;
    vol.flush().await.unwrap();
    assert_eq!(recorder.failed_replicas(), vec![nodes[1].addr]);
    vol.write(0, pattern(4096, 2), false).await.unwrap();
    nodes[2].kill().await;
    // Below min_replicas the flush still succeeds once the dead replica has left: the one
    // left holds every acknowledged write. Writes are what a group below min refuses.
    vol.flush().await.unwrap();
    assert_eq!(
        recorder.failed_replicas(),
        vec![nodes[1].addr, nodes[2].addr]
    );
    let err = vol.write(0, pattern(4096, 3), false).await.unwrap_err();
    assert!(err.to_string().contains("min_replicas"), "{err}");
    same(
        &vol.read(0, 4096).await.unwrap(),
        &pattern(4096, 2),
        "the last acknowledged write",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_stale_epoch_is_fenced_and_reports_it() {
    let nodes = three_nodes().await;
    let (old, old_recorder) = client(&nodes, 1, 2);
    old.write(0, pattern(4096, 1), false).await.unwrap();

    // Another gateway attaches with a newer epoch and writes.
    let (new, _) = client(&nodes, 2, 2);
    new.write(0, pattern(4096, 2), true).await.unwrap();

    let err = old.write(0, pattern(4096, 3), false).await.unwrap_err();
    assert!(err.to_string().contains("fenced"), "{err}");
    assert_eq!(old.fenced_by(), Some(2));
    assert_eq!(*old_recorder.fenced.lock().unwrap(), vec![(1, 2)]);
    assert!(
        old_recorder.failures.lock().unwrap().is_empty(),
        "fencing removes no replica"
    );
    // The stale client refuses everything from now on, reads included.
    assert!(old.read(0, 4096).await.is_err());
    assert!(old.flush().await.is_err());

    for node in &nodes {
        let got = node.local().read(0, 4096).await.unwrap();
        same(&got, &pattern(4096, 2), "the newer gateway's write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoch_and_extent_versions_survive_a_replica_restart() {
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().to_path_buf();
    let node = Node::start_in(dir).await;
    let (vol, _) = client_with(&[node.addr], 5, 1, SLOW_DISK_TIMEOUT_MS);
    vol.write(3 * EXTENT, pattern(8192, 1), true).await.unwrap();
    let before = vol.extent_versions(node.addr, 0, 4).await.unwrap();
    assert_eq!(before[3].version.epoch, 5);
    // The process restarts on the same machine: nothing is lost, nothing is suspect.
    assert!(before[3].recent && !before[3].suspect);
    drop(vol);

    // Stop it and open the same directory again.
    node.kill().await;
    let Node { dir, store, .. } = node;
    drop(store);
    wait_for_unlock(&kept).await;
    let again = Node::start_in(dir).await;

    let (vol, _) = client_with(&[again.addr], 5, 1, SLOW_DISK_TIMEOUT_MS);
    assert_eq!(vol.extent_versions(again.addr, 0, 4).await.unwrap(), before);
    same(
        &vol.read(3 * EXTENT, 8192).await.unwrap(),
        &pattern(8192, 1),
        "after restart",
    );
    let (stale, _) = client_with(&[again.addr], 4, 1, SLOW_DISK_TIMEOUT_MS);
    let err = stale.read(0, 4096).await.unwrap_err();
    assert!(err.to_string().contains("fenced"), "{err}");
}

/// Waits until the data directory's lock is free (every reference to the store is gone).
async fn wait_for_unlock(dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ExtentStore::open(dir, Arc::new(PortableDisk::new("probe"))).await {
            Ok(store) => {
                drop(store);
                return;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "store still locked: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_block_on_one_replica_is_read_from_another_and_repaired() {
    let nodes = three_nodes().await;
    let (vol, recorder) = client(&nodes, 1, 2);
    let data = pattern(65536, 7);
    vol.write(0, data.clone(), true).await.unwrap();

    // Flip one bit in the first replica's copy of the third block.
    flip_bit(&nodes[0].data_file(), 8192 + 5);
    assert!(nodes[0].local().read(8192, 4096).await.is_err());

    same(
        &vol.read(0, 65536).await.unwrap(),
        &data,
        "read around the bad block",
    );
    let corrupt = recorder.corrupt.lock().unwrap().clone();
    assert_eq!(corrupt, vec![(nodes[0].addr, 0)]);
    assert_eq!(
        vol.live_replicas(0).len(),
        3,
        "a bad block removes no replica"
    );

    // The bad copy is rewritten from a good one, in the background.
    let mut repaired = None;
    for _ in 0..100 {
        if let Ok(block) = nodes[0].local().read(8192, 4096).await {
            repaired = Some(block);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let block = repaired.expect("the bad block is repaired within 5 s");
    same(&block, &data.slice(8192..12288), "the repaired block");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extent_versions_follow_the_writes() {
    let nodes = three_nodes().await;
    let (vol, _) = client(&nodes, 3, 2);
    vol.write(0, pattern(4096, 1), false).await.unwrap(); // seq 1, extent 0
    vol.write(100, pattern(100, 2), false).await.unwrap(); // seq 2, extent 0
    vol.write(2 * EXTENT + 4096, pattern(4096, 3), false)
        .await
        .unwrap(); // seq 3, extent 2
    vol.trim(5 * EXTENT, EXTENT, false).await.unwrap(); // seq 4, extent 5

    let want = vec![
        WriteVersion { epoch: 3, seq: 2 },
        WriteVersion::NONE,
        WriteVersion { epoch: 3, seq: 3 },
        WriteVersion::NONE,
        WriteVersion::NONE,
        WriteVersion { epoch: 3, seq: 4 },
    ];
    for node in &nodes {
        let got = vol.extent_versions(node.addr, 0, 6).await.unwrap();
        let versions: Vec<WriteVersion> = got.iter().map(|e| e.version).collect();
        assert_eq!(versions, want);
        // The written extents are marked recent, and nothing is suspect.
        let recent: Vec<bool> = got.iter().map(|e| e.recent).collect();
        assert_eq!(recent, [true, false, true, false, false, true]);
        assert!(got.iter().all(|e| !e.suspect));
    }
    // Asking past the end of the volume is refused, not clamped.
    assert!(vol.extent_versions(nodes[0].addr, 15, 2).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_is_removed_after_the_timeout_and_the_write_completes() {
    let nodes = three_nodes().await;
    // Accepts connections and never answers, like a SIGSTOPped process.
    let frozen = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let frozen_addr = frozen.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = frozen.accept().await {
            held.push(s);
        }
    });
    // The timeout leaves room for a slow fsync on a busy machine: a healthy replica that
    // misses it is removed too.
    const TIMEOUT_MS: u64 = 1_000;
    let replicas = [nodes[0].addr, nodes[1].addr, frozen_addr];
    let (vol, recorder) = client_with(&replicas, 1, 2, TIMEOUT_MS);

    let started = Instant::now();
    vol.write(0, pattern(4096, 1), true).await.unwrap();
    let stall = started.elapsed();
    assert!(stall >= Duration::from_millis(TIMEOUT_MS), "{stall:?}");
    assert!(stall < Duration::from_secs(5), "stall bounded: {stall:?}");
    println!("write stalled {stall:?} by a frozen replica (timeout {TIMEOUT_MS} ms)");
    let failures = recorder.failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].replica, frozen_addr);
    assert!(
        failures[0].reason.contains("no reply"),
        "{}",
        failures[0].reason
    );

    // Later writes do not wait for it any more.
    let started = Instant::now();
    vol.write(4096, pattern(4096, 2), true).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(TIMEOUT_MS));
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_frame_closes_only_its_connection_and_bad_ranges_get_errors() {
    let nodes = three_nodes().await;
    let (vol, _) = client(&nodes, 1, 2);
    vol.write(0, pattern(4096, 1), false).await.unwrap();

    // A raw client asks for a range past the end: an error reply, and the stream goes on.
    let mut raw = TcpStream::connect(nodes[0].addr).await.unwrap();
    let past_end = Request::new(header(Op::Read, SIZE - 4096, 8192));
    raw.write_all(&past_end.encode_header()).await.unwrap();
    assert_eq!(read_reply_status(&mut raw).await, Status::OutOfRange);
    let unknown = Request::new(RequestHeader {
        volume: VolumeId(999),
        ..header(Op::Read, 0, 4096)
    });
    raw.write_all(&unknown.encode_header()).await.unwrap();
    assert_eq!(read_reply_status(&mut raw).await, Status::NoVolume);

    // A write whose payload does not match its crc is refused, and the stream goes on.
    let mut damaged = Request::write(
        RequestHeader {
            version: WriteVersion { epoch: 1, seq: 99 },
            ..header(Op::Write, 0, 0)
        },
        pattern(4096, 5),
    );
    damaged.payload = pattern(4096, 6);
    raw.write_all(&damaged.encode_header()).await.unwrap();
    raw.write_all(&damaged.payload).await.unwrap();
    assert_eq!(read_reply_status(&mut raw).await, Status::PayloadCrc);
    let got = nodes[0].local().read(0, 4096).await.unwrap();
    same(&got, &pattern(4096, 1), "the damaged write did not land");

    // Garbage: the server closes this connection...
    raw.write_all(&[0xEE; 100]).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(_))), "connection closed: {closed:?}");

    // ...and everyone else carries on.
    vol.write(4096, pattern(4096, 2), false).await.unwrap();
    assert_eq!(vol.read(0, 8192).await.unwrap().len(), 8192);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_arriving_in_pieces_land_and_one_cut_short_closes_only_its_connection() {
    let nodes = three_nodes().await;
    let (vol, _) = client(&nodes, 1, 2);
    let len = 1 << 20;
    let frame = |seed| {
        let write = Request::write(
            RequestHeader {
                version: WriteVersion { epoch: 1, seq: 5 },
                ..header(Op::Write, 0, 0)
            },
            pattern(len, seed),
        );
        let mut frame = write.encode_header().to_vec();
        frame.extend_from_slice(&write.payload);
        frame
    };

    // A 1 MiB write in uneven pieces: part of the payload arrives with the header, the rest
    // is read straight into the payload's own buffer.
    let mut raw = TcpStream::connect(nodes[0].addr).await.unwrap();
    for piece in frame(7).chunks(100_003) {
        raw.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(read_reply_status(&mut raw).await, Status::Ok);
    let got = nodes[0].local().read(0, len as u32).await.unwrap();
    same(&got, &pattern(len, 7), "the large write landed whole");

    // A stream that ends inside a large payload: no reply, nothing written, the connection
    // closes...
    let mut cut = TcpStream::connect(nodes[0].addr).await.unwrap();
    let whole = frame(8);
    cut.write_all(&whole[..whole.len() / 2]).await.unwrap();
    cut.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), cut.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "closed with no reply: {closed:?}"
    );
    let got = nodes[0].local().read(0, len as u32).await.unwrap();
    same(&got, &pattern(len, 7), "the cut-short write did not land");

    // ...and the other clients carry on, large replies included.
    vol.write(EXTENT, pattern(len, 9), false).await.unwrap();
    let got = vol.read(EXTENT, len as u32).await.unwrap();
    same(
        &got,
        &pattern(len, 9),
        "a large write and read through the client",
    );
}

/// A request header from a raw test client of volume `VOL` at attach epoch 1.
fn header(op: Op, offset: u64, len: u32) -> RequestHeader {
    RequestHeader {
        op,
        flags: 0,
        request_id: 9,
        volume: VOL,
        offset,
        len,
        payload_crc: 0,
        attach_epoch: 1,
        version: WriteVersion::NONE,
    }
}

async fn read_reply_status(s: &mut TcpStream) -> Status {
    let mut buf = BytesMut::new();
    loop {
        if let Some(reply) = decode_reply(&mut buf).unwrap() {
            return reply.header.status;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(n > 0, "connection closed before the reply");
    }
}

// ---- A real NBD client through the replicated volume --------------------------------------

/// Whether an external tool can be used (the workspace harness's skip-or-fail rule).
fn tool_available(tool: &str) -> bool {
    fabric_suite::tool(tool).is_some()
}

/// Serves `vol` over NBD on a loopback port: its URI, and the sender that stops the server.
async fn serve_nbd(vol: &ReplicatedVolume) -> (String, watch::Sender<bool>) {
    let server = Arc::new(
        NbdServer::new(
            vec![Arc::new(vol.clone()) as Arc<dyn BlockVolume>],
            NbdConfig::default(),
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("nbd://{}", listener.local_addr().unwrap());
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(server.serve_tcp(listener, stop_rx));
    (uri, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_writes_and_reads_through_nbd_over_three_replicas() {
    if !tool_available("qemu-io") {
        return;
    }
    let nodes = three_nodes().await;
    let (vol, _) = client(&nodes, 1, 2);
    let (url, _stop) = serve_nbd(&vol).await;

    // 64 KiB straddling the boundary of extents 0 and 1, then read back through NBD.
    let at = (EXTENT - 32 * 1024).to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("qemu-io")
            .args(["-f", "raw", &url])
            .args(["-c", &format!("write -P 0xab {at} 64k")])
            .args(["-c", "flush"])
            .args(["-c", &format!("read -P 0xab {at} 64k")])
            .output(),
    )
    .await
    .expect("qemu-io finished in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-io: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("Pattern verification failed"), "{stdout}");

    for node in &nodes {
        let got = node.local().read(EXTENT - 32 * 1024, 65536).await.unwrap();
        assert!(
            got.iter().all(|&b| b == 0xab),
            "every replica holds the write"
        );
    }
}

#[tokio::test]
async fn resync_under_concurrent_writes_leaves_the_stale_replica_identical() {
    let nodes = three_nodes().await;
    let (vol, recorder) = client_with_node_2_stale(&nodes, BELOW_MIN_WAIT_MS);
    assert_eq!(vol.stale_replicas(), vec![(0, nodes[2].addr)]);

    // Half the volume written while node 2 is stale: it gets none of it.
    for e in 0..8 {
        vol.write(e * EXTENT, pattern(EXTENT as usize, e as u8 + 1), false)
            .await
            .unwrap();
    }

    // A writer keeps going over the whole volume while the resync runs.
    let writer = {
        let vol = vol.clone();
        tokio::spawn(async move {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for i in 0..300u32 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let block = x % (SIZE / 4096);
                vol.write(block * 4096, pattern(4096, (i % 250) as u8), false)
                    .await
                    .unwrap();
            }
        })
    };
    let restored = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reports = Mutex::new(Vec::new());
    let progress = |done, total| reports.lock().unwrap().push((done, total));
    let report = vol
        .resync(0, nodes[2].addr, progress, {
            let restored = Arc::clone(&restored);
            async move {
                restored.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .expect("resync");
    let reports = reports.into_inner().unwrap();
    let (_, total) = reports[0];
    assert_eq!(reports[0], (0, total), "progress starts at zero");
    assert!(
        total >= 8 * EXTENT,
        "the 8 written extents at least: {total}"
    );
    assert!(
        reports
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[1].1 == total),
        "progress only grows: {reports:?}"
    );
    assert_eq!(reports.last().unwrap().0, total, "and ends complete");
    writer.await.unwrap();
    assert!(restored.load(std::sync::atomic::Ordering::SeqCst));
    assert!(report.extents_copied >= 8, "{report:?}");
    assert!(vol.stale_replicas().is_empty());
    assert!(vol.live_replicas(0).contains(&nodes[2].addr));

    // Writes after the resync reach node 2 too; then all three hold the same bytes.
    vol.write(SIZE - 4096, pattern(4096, 0xee), false)
        .await
        .unwrap();
    for e in 0..SIZE / EXTENT {
        let want = nodes[0]
            .local()
            .read(e * EXTENT, EXTENT as u32)
            .await
            .unwrap();
        for node in &nodes[1..] {
            let got = node.local().read(e * EXTENT, EXTENT as u32).await.unwrap();
            assert!(got == want, "replica {} differs in extent {e}", node.addr);
        }
    }
    assert!(recorder.failed_replicas().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_being_resynced_gets_the_writes_made_meanwhile() {
    let nodes = three_nodes().await;
    let (vol, recorder) = client_with_node_2_stale(&nodes, BELOW_MIN_WAIT_MS);
    for e in 0..4 {
        vol.write(e * EXTENT, pattern(EXTENT as usize, e as u8 + 1), false)
            .await
            .unwrap();
    }

    // Once the resync has compared versions (its first progress report), a write lands on
    // extent 10, which no replica held before; the resync waits for it before it copies.
    let started = Arc::new(tokio::sync::Notify::new());
    let (written_tx, written_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let (vol, started) = (vol.clone(), Arc::clone(&started));
        tokio::spawn(async move {
            started.notified().await;
            vol.write(10 * EXTENT, pattern(4096, 0x5a), false)
                .await
                .unwrap();
            written_tx.send(()).unwrap();
        })
    };
    let first = std::sync::atomic::AtomicBool::new(true);
    let progress = |_, _| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            started.notify_one();
            written_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the write during the resync completes");
        }
    };
    let report = vol
        .resync(0, nodes[2].addr, progress, async { Ok(()) })
        .await
        .expect("resync");
    writer.await.unwrap();

    // Only the four extents written before were copied: the write made during the resync
    // reached node 2 directly, so extent 10's versions already matched at the end.
    assert_eq!(report.extents_copied, 4, "{report:?}");
    let got = nodes[2].local().read(10 * EXTENT, 4096).await.unwrap();
    same(
        &got,
        &pattern(4096, 0x5a),
        "the write made during the resync on node 2",
    );
    assert!(recorder.failed_replicas().is_empty());
}

#[tokio::test]
async fn below_min_replicas_a_write_waits_for_a_resynced_replica_then_succeeds() {
    let nodes = three_nodes().await;
    let (vol, _) = client_with_node_2_stale(&nodes, 30_000);
    vol.write(0, pattern(4096, 1), false).await.unwrap();
    nodes[1].kill().await;
    // The write in flight when node 1 dies cannot reach two replicas.
    assert!(vol.write(0, pattern(4096, 2), false).await.is_err());

    // The next one waits; node 2 catches up meanwhile and the write lands on it.
    let waiting = {
        let vol = vol.clone();
        tokio::spawn(async move { vol.write(4096, pattern(4096, 3), false).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "below min_replicas the write waits");
    vol.resync(0, nodes[2].addr, |_, _| {}, async { Ok(()) })
        .await
        .expect("resync node 2");
    waiting
        .await
        .unwrap()
        .expect("the write completes once two replicas are live");
    let got = nodes[2].local().read(4096, 4096).await.unwrap();
    same(&got, &pattern(4096, 3), "the waiting write on node 2");
}

// ---- The metadata service slow or away ----------------------------------------------------

/// A removal that cannot commit (no quorum) makes the group's writes fail, never acknowledged
/// without the failed replica; the client keeps retrying it, and once the metadata service
/// answers again the same client takes writes again, with nothing acknowledged lost. (Before,
/// the group refused every write until the process restarted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_that_cannot_commit_blocks_the_group_until_the_metadata_answers_again() {
    use std::sync::atomic::Ordering::SeqCst;
    let nodes = three_nodes().await;
    let (vol, recorder) = client(&nodes, 1, 2);
    let before = pattern(65536, 11);
    vol.write(0, before.clone(), true).await.unwrap();

    recorder.down.store(true, SeqCst);
    nodes[2].kill().await;
    for i in 0..3u64 {
        let err = vol
            .write(EXTENT + i * 4096, pattern(4096, 12), false)
            .await
            .unwrap_err();
        assert!(matches!(err, VolumeError::Io(_)), "{err}");
    }
    // Reads go on from the replicas that answer.
    same(
        &vol.read(0, 65536).await.unwrap(),
        &before,
        "read during the outage",
    );
    let attempts = recorder.failures.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        recorder.failures.lock().unwrap().len() > attempts,
        "the removal is retried while the metadata service is away"
    );

    recorder.down.store(false, SeqCst);
    let started = Instant::now();
    let after = pattern(65536, 13);
    loop {
        match vol.write(2 * EXTENT, after.clone(), true).await {
            Ok(()) => break,
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                tracing::debug!(error = %e, "not yet writable");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the group never took writes again: {e}"),
        }
    }
    assert_eq!(vol.live_replicas(0), vec![nodes[0].addr, nodes[1].addr]);
    assert_eq!(vol.stale_replicas(), vec![(0, nodes[2].addr)]);
    same(
        &vol.read(0, 65536).await.unwrap(),
        &before,
        "written before",
    );
    same(
        &vol.read(2 * EXTENT, 65536).await.unwrap(),
        &after,
        "written after",
    );
    for node in &nodes[..2] {
        same(
            &node.local().read(0, 65536).await.unwrap(),
            &before,
            "replica, before",
        );
    }
}

/// A read that fails on one replica is served by the next at once; the failed replica's
/// removal runs beside it. (Before, the read waited for the removal's Raft round trip.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_fails_over_at_once_while_the_removal_is_still_pending() {
    use std::sync::atomic::Ordering::SeqCst;
    let nodes = three_nodes().await;
    // Writes would wait a minute for a removal: the read must not wait at all.
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let pool = ReplicaPool::tcp(PoolConfig::default()).unwrap();
    let acting = ActingSets::single(addrs);
    let (vol, recorder) = client_waiting(pool, acting, 1, 2, BELOW_MIN_WAIT_MS, 60_000);
    let data = pattern(8192, 5);
    vol.write(EXTENT, data.clone(), true).await.unwrap();

    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    *recorder.hold.lock().unwrap() = Some(Arc::clone(&hold));
    nodes[0].kill().await;
    let read = tokio::time::timeout(Duration::from_secs(5), vol.read(EXTENT, 8192))
        .await
        .expect("the read waited for the removal");
    same(&read.unwrap(), &data, "after failover");
    assert_eq!(recorder.failed_replicas(), vec![nodes[0].addr]);
    assert_eq!(
        recorder.committed.load(SeqCst),
        0,
        "the removal is still held"
    );

    // Writes of the group wait for it, and go on once it commits.
    let write = tokio::spawn({
        let vol = vol.clone();
        async move { vol.write(0, pattern(4096, 6), false).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!write.is_finished(), "a write waits for the removal");
    hold.add_permits(1);
    write.await.unwrap().unwrap();
    assert_eq!(recorder.committed.load(SeqCst), 1);
    assert_eq!(vol.stale_replicas(), vec![(0, nodes[0].addr)]);
}

/// A stream whose reads each take `delay` more: a replica that answers slowly.
struct SlowReader {
    inner: tokio::net::tcp::OwnedReadHalf,
    delay: Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl tokio::io::AsyncRead for SlowReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let delay = self.delay;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
        std::task::ready!(sleep.as_mut().poll(cx));
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() {
            self.sleep = None;
        }
        polled
    }
}

/// Connects over TCP, with every reply delayed by `delay`.
struct SlowConnector {
    delay: Duration,
}

impl volume::client::Connector for SlowConnector {
    fn connect(&self, addr: SocketAddr) -> volume::client::ConnectFuture {
        let delay = self.delay;
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            let r = SlowReader {
                inner: r,
                delay,
                sleep: None,
            };
            Ok((
                Box::new(r) as volume::client::StreamReader,
                Box::new(w) as volume::client::StreamWriter,
            ))
        })
    }
}

/// Waiting for one of a link's in-flight permits is queueing in the client, not silence of
/// the replica: a replica that answers every request in time is never removed, however long
/// requests queue for a permit. (Before, the wait counted against the reply timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queueing_for_a_link_permit_does_not_count_against_the_reply_timeout() {
    let nodes = three_nodes().await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let config = PoolConfig {
        request_timeout_ms: 1_000,
        requests_in_flight_per_replica_max: 1,
        ..PoolConfig::default()
    };
    let connector = Arc::new(SlowConnector {
        delay: Duration::from_millis(300),
    });
    let pool = ReplicaPool::new(config, connector).unwrap();
    let (vol, recorder) = client_in(pool, ActingSets::single(addrs), 1, 2, BELOW_MIN_WAIT_MS);
    // Eight writes at once through one permit per replica: the last waits ~2 s for it, each
    // call itself takes ~0.3 s.
    let writes: Vec<_> = (0..8u64)
        .map(|i| {
            let vol = vol.clone();
            tokio::spawn(async move { vol.write(i * 4096, pattern(4096, i as u8), false).await })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    assert!(
        recorder.failures.lock().unwrap().is_empty(),
        "no replica was taken for failed: {:?}",
        recorder.failed_replicas()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_writer_reconciles_replicas_that_an_unacknowledged_write_left_different() {
    let nodes = three_nodes().await;
    let (old, _) = client(&nodes, 1, 2);
    old.write(0, pattern(8192, 1), true).await.unwrap();
    // The old writer's last writes reached the first replica only before the writer died
    // (played by a client of that replica alone, under the same epoch; its second write
    // carries a newer version than the write all three replicas have).
    let (partial, _) = client_with(&[nodes[0].addr], 1, 1, SLOW_DISK_TIMEOUT_MS);
    partial.write(0, pattern(4096, 4), false).await.unwrap();
    partial.write(0, pattern(4096, 2), true).await.unwrap();
    drop((old, partial));

    let (new, _) = client(&nodes, 2, 2);
    new.flush().await.unwrap();
    let copied = new.reconcile().await.unwrap();
    assert!(copied > 0, "the replicas differed in extent 0");
    assert_eq!(
        new.reconcile().await.unwrap(),
        0,
        "a second pass finds nothing"
    );
    // The new writer's writes to the same extent raise every replica's version alike; the
    // replicas must agree on the rest of the extent too.
    new.write(4096, pattern(4096, 3), true).await.unwrap();
    let first = nodes[0].local().read(0, EXTENT as u32).await.unwrap();
    for node in &nodes[1..] {
        let got = node.local().read(0, EXTENT as u32).await.unwrap();
        same(&got, &first, "extent 0 after reconciling");
    }
    same(
        &first[..4096],
        &pattern(4096, 2),
        "the newest version's block",
    );
    same(
        &first[4096..8192],
        &pattern(4096, 3),
        "the new writer's block",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_writer_finds_a_replica_whose_machine_restarted_holding_unflushed_writes() {
    let mut nodes = three_nodes().await;
    let (vol, recorder) = client(&nodes, 1, 2);
    vol.write(0, pattern(4096, 1), false).await.unwrap();
    assert_eq!(vol.probe_unflushed().await.unwrap(), 0, "nobody restarted");

    // Node 1's process restarts while the volume is idle: the kernel kept the unflushed write,
    // the power epoch is the same, and the replica stays in the acting set.
    let restarted = nodes.remove(1).restart().await;
    assert_eq!(vol.probe_unflushed().await.unwrap(), 0);
    assert!(vol.live_replicas(0).contains(&restarted.addr));

    // Node 0's machine restarts while the volume is idle: it lost the unflushed write.
    let restarted = nodes.remove(0).restart_machine().await;
    assert_eq!(vol.probe_unflushed().await.unwrap(), 1);
    assert_eq!(recorder.failed_replicas(), vec![restarted.addr]);
    assert!(!vol.live_replicas(0).contains(&restarted.addr));

    // Once everything is flushed, a machine restart loses nothing and the probe leaves it
    // alone.
    vol.flush().await.unwrap();
    let restarted = nodes.remove(0).restart_machine().await;
    assert_eq!(vol.probe_unflushed().await.unwrap(), 0);
    assert!(vol.live_replicas(0).contains(&restarted.addr));
}

/// Waits up to 10 s for `done`.
async fn wait_until(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A write acknowledged by one replica while another's removal was pending counts only if the
/// first still answers in the power epoch it acknowledged in: its machine may have restarted
/// meanwhile and lost the write, while the replica being removed was the one that held it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_not_acknowledged_by_a_replica_whose_machine_restarted_while_it_waited() {
    let mut nodes = vec![Node::start().await, Node::start().await];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let pool = ReplicaPool::tcp(PoolConfig::default()).unwrap();
    let (vol, recorder) = client_waiting(
        pool,
        ActingSets::single(addrs),
        1,
        1,
        BELOW_MIN_WAIT_MS,
        60_000,
    );
    vol.write(0, pattern(4096, 1), true).await.unwrap();

    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    *recorder.hold.lock().unwrap() = Some(Arc::clone(&hold));
    // Gone for good before the write: its store let go, so no session of it serves any more.
    let _gone = nodes.remove(1).stop().await;
    let write = tokio::spawn({
        let vol = vol.clone();
        async move { vol.write(0, pattern(4096, 2), false).await }
    });
    // Node 0 acks at once; node 1 fails and its removal waits. Then node 0's machine restarts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!write.is_finished(), "the write waits for node 1's removal");
    let restarted = nodes.remove(0).restart_machine().await;
    hold.add_permits(1);
    let err = write.await.unwrap().unwrap_err();
    assert!(matches!(err, VolumeError::Io(_)), "{err}");
    assert!(
        recorder.failed_replicas().contains(&restarted.addr),
        "node 0 leaves too: {:?}",
        recorder.failed_replicas()
    );
}

/// The group's last current copy loses power with writes it had not flushed; the replica
/// removed just before it holds every acknowledged write. That one is brought back without a
/// copy, the other leaves and is resynced from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replica_holding_every_acknowledged_write_outranks_a_last_copy_that_lost_power() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut nodes = vec![Node::start().await, Node::start().await];
    let (vol, recorder) = client(&nodes, 1, 1);
    let data = pattern(65536, 7);
    vol.write(0, data.clone(), false).await.unwrap();

    // Node 1's process dies (it keeps what it acknowledged) and it leaves the acting set.
    let (dir, addr) = nodes.remove(1).stop().await;
    assert_eq!(vol.probe_unflushed().await.unwrap(), 1);
    wait_until(|| vol.stale_replicas() == [(0, addr)], "node 1 leaves").await;
    assert_eq!(vol.live_replicas(0), vec![nodes[0].addr]);
    // Node 0's machine restarts: its unflushed write is gone. The metadata service refuses
    // to remove the last current copy.
    recorder.refuse.store(true, SeqCst);
    let power_lost = nodes.remove(0).restart_machine().await;
    assert_eq!(vol.probe_unflushed().await.unwrap(), 1);
    // It answers again, but is not taken back: node 1 holds what it lost.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        vol.live_replicas(0).is_empty(),
        "{:?}",
        vol.live_replicas(0)
    );

    let holder = Node::start_at(dir, addr).await;
    let report = vol
        .resync(0, holder.addr, |_, _| {}, async { Ok(()) })
        .await
        .unwrap();
    assert_eq!(report.bytes_copied, 0, "brought back without a copy");
    assert_eq!(vol.live_replicas(0), vec![holder.addr]);
    same(&vol.read(0, 65536).await.unwrap(), &data, "from node 1");

    // Now node 0's removal goes through, and its resync copies the write back to it.
    recorder.refuse.store(false, SeqCst);
    wait_until(
        || vol.stale_replicas() == [(0, power_lost.addr)],
        "node 0 leaves",
    )
    .await;
    vol.resync(0, power_lost.addr, |_, _| {}, async { Ok(()) })
        .await
        .unwrap();
    same(
        &power_lost.local().read(0, 65536).await.unwrap(),
        &data,
        "node 0 after its resync",
    );
}

/// The last current copy loses power and comes back with its written extents suspect; the
/// stale replica missed a write of extent 1 but none of extent 0. Its resync keeps its own
/// copy of extent 0 (written over the live one, under a fresh version) and takes extent 1
/// from the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_keeps_the_stale_copy_of_an_extent_the_live_one_cannot_vouch_for() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut nodes = vec![Node::start().await, Node::start().await];
    let (vol, recorder) = client(&nodes, 1, 1);
    let first = pattern(8192, 3);
    vol.write(0, first.clone(), false).await.unwrap();

    let (dir, addr) = nodes.remove(1).stop().await;
    assert_eq!(vol.probe_unflushed().await.unwrap(), 1);
    wait_until(|| vol.stale_replicas() == [(0, addr)], "node 1 leaves").await;
    let second = pattern(4096, 4);
    vol.write(EXTENT, second.clone(), false).await.unwrap();

    // Node 0's machine restarts; as the last current copy it stays, with both extents
    // suspect. (Node 1 missed a write, so it cannot be brought back whole.)
    recorder.refuse.store(true, SeqCst);
    let power_lost = nodes.remove(0).restart_machine().await;
    assert_eq!(vol.probe_unflushed().await.unwrap(), 1);
    wait_until(
        || vol.live_replicas(0) == [power_lost.addr],
        "node 0 serves again",
    )
    .await;
    let before = vol.extent_versions(power_lost.addr, 0, 2).await.unwrap();
    assert!(before[0].suspect && before[1].suspect, "{before:?}");

    let holder = Node::start_at(dir, addr).await;
    vol.resync(0, holder.addr, |_, _| {}, async { Ok(()) })
        .await
        .unwrap();
    let live = vol.extent_versions(power_lost.addr, 0, 2).await.unwrap();
    let stale = vol.extent_versions(holder.addr, 0, 2).await.unwrap();
    assert!(!live[0].suspect, "extent 0 was rewritten whole on node 0");
    assert_eq!(live[0].version, stale[0].version);
    assert!(
        live[0].version > before[0].version,
        "node 1's copy of extent 0 went out under a fresh version: {live:?} {before:?}"
    );
    assert_eq!(
        stale[1].version, before[1].version,
        "extent 1 came from node 0"
    );
    for n in [&power_lost, &holder] {
        same(&n.local().read(0, 8192).await.unwrap(), &first, "extent 0");
        same(
            &n.local().read(EXTENT, 4096).await.unwrap(),
            &second,
            "extent 1",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_writer_copies_every_written_extent_to_a_replica_stale_under_another_writer() {
    let nodes = three_nodes().await;
    let (first, _) = client(&nodes, 1, 2);
    first.write(0, pattern(4096, 1), true).await.unwrap();
    // Node 2 misses a write of extent 0 (it was out of the acting set)...
    let (two, _) = client_with(&[nodes[0].addr, nodes[1].addr], 1, 2, SLOW_DISK_TIMEOUT_MS);
    two.write(4096, pattern(4096, 2), true).await.unwrap();
    two.write(4096, pattern(4096, 2), true).await.unwrap();
    // ...and then gets later writes of the same extent, as a resync of the old writer that
    // never finished would send it: its version of extent 0 ends equal to the others'.
    let (all, _) = client(&nodes, 1, 2);
    all.write(8192, pattern(4096, 3), true).await.unwrap();
    all.write(8192, pattern(4096, 3), true).await.unwrap();
    let versions: Vec<_> = {
        let mut v = Vec::new();
        for n in &nodes {
            v.push(all.extent_versions(n.addr, 0, 1).await.unwrap()[0]);
        }
        v
    };
    assert!(versions.iter().all(|&v| v == versions[0]), "{versions:?}");
    drop((first, two, all));

    // A new writer attaches with node 2 listed stale, and resyncs it.
    let acting = ActingSets {
        groups: vec![vec![nodes[0].addr, nodes[1].addr]],
        stale: vec![vec![nodes[2].addr]],
    };
    let (new, _) = client_over(acting, 2, 2, SLOW_DISK_TIMEOUT_MS, BELOW_MIN_WAIT_MS);
    new.flush().await.unwrap();
    let report = new
        .resync(0, nodes[2].addr, |_, _| {}, async { Ok(()) })
        .await
        .unwrap();
    assert_eq!(
        report.extents_copied, 1,
        "extent 0, though its versions agreed"
    );
    let want = nodes[0].local().read(0, 3 * 4096).await.unwrap();
    same(
        &want[4096..8192],
        &pattern(4096, 2),
        "the write node 2 missed",
    );
    same(
        &nodes[2].local().read(0, 3 * 4096).await.unwrap(),
        &want,
        "node 2 after its resync",
    );
}

/// `CAN_MULTI_CONN`: the writes one NBD connection had acknowledged are made durable by a
/// flush on another connection of the same volume, since every connection shares one
/// replicated volume whose flush reaches every replica. Each replica's machine then restarts
/// (losing what it had not flushed) and none counts a write as lost. Without that flush, the
/// same restart loses a write: the check can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_on_one_nbd_connection_makes_every_connections_writes_durable() {
    if !tool_available("nbdsh") {
        return;
    }
    let mut nodes = three_nodes().await;
    let (vol, recorder) = client(&nodes, 1, 2);
    let (uri, _stop) = serve_nbd(&vol).await;

    // Connection a writes into two extents, connection b flushes, both leave without more.
    let script = |flush: bool| {
        format!(
            "a = nbd.NBD(); a.connect_uri('{uri}')\n\
             b = nbd.NBD(); b.connect_uri('{uri}')\n\
             assert a.can_multi_conn() and b.can_multi_conn()\n\
             a.pwrite(b'\\x5a' * 65536, 0)\n\
             a.pwrite(b'\\x5b' * 65536, {EXTENT})\n\
             {}\n\
             a.shutdown(); b.shutdown()\n",
            if flush { "b.flush()" } else { "pass" }
        )
    };
    let run = |script: String| async move {
        // nbdsh is Debian's, for Debian's python3 with the libnbd module.
        let path = std::env::var("PATH").unwrap_or_default();
        let out = tokio::process::Command::new("nbdsh")
            .env("PATH", format!("/usr/bin:{path}"))
            .args(["-c", &script])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "nbdsh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(script(true)).await;
    for i in 0..nodes.len() {
        let node = nodes.remove(i);
        nodes.insert(i, node.restart_machine().await);
    }
    assert_eq!(
        vol.probe_unflushed().await.unwrap(),
        0,
        "a flushed write was lost"
    );
    assert!(recorder.failed_replicas().is_empty());

    run(script(false)).await;
    let node = nodes.remove(0);
    nodes.insert(0, node.restart_machine().await);
    assert_eq!(
        vol.probe_unflushed().await.unwrap(),
        1,
        "without the flush, the restarted replica lost the writes"
    );
}

/// BLOCK_STATUS on a replicated volume covers many extents in one answer, each asked of its
/// group's replicas: holes where nothing was written, data where something was, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_status_spans_extents_and_reports_each_ones_holes() {
    let nodes = three_nodes().await;
    let (vol, _) = client(&nodes, 1, 2);
    vol.write(EXTENT + 8192, pattern(4096, 3), false)
        .await
        .unwrap();
    vol.write(3 * EXTENT, pattern(8192, 4), false)
        .await
        .unwrap();
    let map = vol.block_status(4096, 4 * EXTENT).await.unwrap();
    let mut at = 4096;
    let mut data = Vec::new();
    for e in &map {
        if !e.state.hole {
            data.push((at, e.len));
        }
        at += e.len;
    }
    assert_eq!(
        at,
        4 * EXTENT + 4096,
        "the answer covers the whole range: {map:?}"
    );
    assert_eq!(data, [(EXTENT + 8192, 4096), (3 * EXTENT, 8192)], "{map:?}");
}

// ---- Scrub --------------------------------------------------------------------------------

/// Scrubs every group of `vol`, and returns the tally over all of them.
async fn scrub_all(vol: &ReplicatedVolume, deep: bool) -> volume::client::ScrubTally {
    let mut total = volume::client::ScrubTally::default();
    for g in 0..vol.group_count() {
        total.add(&vol.scrub_group(g, deep).await.unwrap());
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrub_finds_bad_blocks_nobody_reads_and_repairs_each_from_a_good_copy() {
    let nodes = three_nodes().await;
    let (vol, recorder) = client(&nodes, 1, 2);
    let data = pattern(2 * EXTENT as usize, 3);
    vol.write(0, data.clone(), true).await.unwrap();
    flip_bit(&nodes[0].data_file(), 8192 + 5);
    flip_bit(&nodes[1].data_file(), 3 * 4096 + 100);
    flip_bit(&nodes[2].data_file(), EXTENT + 4095);
    // A block bad on every replica has no good copy to come from.
    for n in &nodes {
        flip_bit(&n.data_file(), EXTENT + 40 * 4096);
    }

    let found = scrub_all(&vol, false).await;
    assert_eq!(found.extents, SIZE / EXTENT);
    assert_eq!(found.bytes_checked, 3 * SIZE);
    assert_eq!(found.bad_blocks, 6, "{found:?}");
    assert_eq!((found.repaired, found.unrepaired), (3, 3), "{found:?}");
    assert_eq!(found.unchecked, 0);
    assert!(
        recorder.failed_replicas().is_empty(),
        "a bad block removes no replica"
    );
    for n in &nodes {
        let local = n.local();
        same(
            &local.read(0, 40960).await.unwrap(),
            &data[..40960],
            "extent 0",
        );
        same(
            &local.read(EXTENT, 40 * 4096).await.unwrap(),
            &data[EXTENT as usize..EXTENT as usize + 40 * 4096],
            "extent 1 before the block bad everywhere",
        );
        assert!(local.read(EXTENT + 40 * 4096, 4096).await.is_err());
    }

    let again = scrub_all(&vol, false).await;
    assert_eq!(
        (again.bad_blocks, again.repaired, again.unrepaired),
        (3, 0, 3),
        "only the block with no good copy is found again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_scrub_resolves_copies_that_differ_to_the_newest_version_and_the_majority() {
    let nodes = three_nodes().await;
    let (vol, _) = client(&nodes, 1, 2);
    vol.write(0, pattern(8192, 1), true).await.unwrap();
    vol.write(EXTENT, pattern(8192, 1), true).await.unwrap();
    // Extent 0: a later write reached nodes 0 and 1 only, so node 2 holds an older version
    // with older contents while the writer still counts it current (a lost write nobody
    // noticed).
    let (partial, _) = client_with(&[nodes[0].addr, nodes[1].addr], 1, 2, SLOW_DISK_TIMEOUT_MS);
    partial.write(0, pattern(4096, 9), true).await.unwrap();
    // Extent 1: node 1's contents changed behind the replica's back, checksums and all, so
    // no block fails; its version is the others'.
    nodes[1]
        .local()
        .write(EXTENT + 4096, pattern(4096, 5), true)
        .await
        .unwrap();

    let light = scrub_all(&vol, false).await;
    assert_eq!(
        light.errors(),
        0,
        "every block matches its checksum: {light:?}"
    );

    let deep = scrub_all(&vol, true).await;
    assert_eq!(
        (deep.divergent, deep.repaired, deep.unrepaired),
        (2, 2, 0),
        "{deep:?}"
    );
    for n in &nodes {
        let local = n.local();
        same(
            &local.read(0, 4096).await.unwrap(),
            &pattern(4096, 9),
            "the newest write",
        );
        same(
            &local.read(EXTENT, 8192).await.unwrap(),
            &pattern(8192, 1),
            "the majority's contents",
        );
    }
    let versions: Vec<_> =
        futures::future::join_all(nodes.iter().map(|n| vol.extent_versions(n.addr, 0, 2)))
            .await
            .into_iter()
            .map(|v| v.unwrap().iter().map(|e| e.version).collect::<Vec<_>>())
            .collect();
    assert!(versions.windows(2).all(|w| w[0] == w[1]), "{versions:?}");
    assert_eq!(
        scrub_all(&vol, true).await.errors(),
        0,
        "a second pass finds nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrub_never_repairs_from_a_stale_replica() {
    let nodes = three_nodes().await;
    // Node 2 holds the block intact, but it is stale: it may lack acknowledged writes.
    let (old, _) = client(&nodes, 1, 2);
    old.write(0, pattern(8192, 1), true).await.unwrap();
    drop(old);
    let (vol, _) = client_with_node_2_stale(&nodes, BELOW_MIN_WAIT_MS);
    vol.write(0, pattern(4096, 2), true).await.unwrap();
    flip_bit(&nodes[0].data_file(), 4096 + 1);
    flip_bit(&nodes[1].data_file(), 4096 + 2);

    let found = scrub_all(&vol, true).await;
    assert_eq!(
        found.bytes_checked,
        2 * SIZE,
        "the stale replica is not scrubbed"
    );
    assert_eq!(
        (found.bad_blocks, found.repaired, found.unrepaired),
        (2, 0, 2)
    );
    for n in &nodes[..2] {
        assert!(
            n.local().read(4096, 4096).await.is_err(),
            "left bad, not taken from node 2"
        );
    }
    same(
        &nodes[2].local().read(0, 4096).await.unwrap(),
        &pattern(4096, 1),
        "the stale replica untouched",
    );
}
