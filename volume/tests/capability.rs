//! Attach capabilities end to end, on real TCP over 127.0.0.1: replica servers that check
//! them, raw wire clients that try to raise a volume's epoch without a valid one, and the
//! replicated client presenting its own across reconnects and renewals.
//!
//! Plain TCP authenticates no one, so each node accepts on two listeners whose test accept
//! loops hand every connection a fixed principal, as the TLS accept loop does from the client
//! certificate: one for the legitimate gateway (`host-a`), one for another client (`host-b`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ed25519_dalek::SigningKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use volume::BlockVolume;
use volume::capability::{Capability, CapabilityKeys, SignedCapability, now_unix_ms};
use volume::client::{
    AclFuture, AclObserver, ActingSets, ClientConfig, PoolConfig, ReplicaFailure, ReplicaPool,
    ReplicatedVolume,
};
use volume::io::portable::PortableDisk;
use volume::replica::{ReplicaConfig, ReplicaServer};
use volume::store::ExtentStore;
use volume::wire::{
    EXTENT_SIZE_BYTES, Op, Reply, Request, RequestHeader, Status, VolumeId, WriteVersion,
    decode_reply,
};

const VOL: VolumeId = VolumeId(21);
const SIZE: u64 = 4 * EXTENT_SIZE_BYTES;
const GATEWAY: &str = "fabric://test/gateway/host-a";
const OTHER: &str = "fabric://test/gateway/host-b";
/// The epoch a rogue client tries to fence the volume at.
const HUGE_EPOCH: u64 = u64::MAX - 1;
/// How long the capabilities of these tests last, in milliseconds.
const VALID_FOR_MS: u64 = 10 * 60 * 1000;

fn cell_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn capability_for(client: &str, epoch: u64, expires_at_unix_ms: u64) -> Capability {
    Capability::new(VOL, epoch, client, expires_at_unix_ms).unwrap()
}

fn valid(client: &str, epoch: u64) -> SignedCapability {
    capability_for(client, epoch, now_unix_ms() + VALID_FOR_MS).sign(&cell_key())
}

// ---- Harness ------------------------------------------------------------------------------

/// A replica server checking capabilities signed by the cell key, accepting as `host-a` on
/// `addr` and as `host-b` on `other_addr`.
struct Node {
    _dir: tempfile::TempDir,
    server: Arc<ReplicaServer>,
    addr: SocketAddr,
    other_addr: SocketAddr,
    accepting: JoinHandle<()>,
    _other: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let store = ExtentStore::open(dir.path(), Arc::new(PortableDisk::new("test")))
            .await
            .unwrap();
        let keys = CapabilityKeys::new(vec![cell_key().verifying_key()]).unwrap();
        let config = ReplicaConfig {
            capabilities: Some(Arc::new(keys)),
            // Here the gateway `host-a` stands for the storage nodes that may read replicas
            // without an attach.
            scan_readers: Some(|peer| peer == GATEWAY),
            ..ReplicaConfig::default()
        };
        let server = ReplicaServer::new(Arc::new(store), config);
        server.ensure_volume(VOL, SIZE).await.unwrap();
        let (tx, rx) = watch::channel(false);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = tokio::spawn(accept_as(
            listener,
            Arc::clone(&server),
            GATEWAY,
            rx.clone(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other_addr = listener.local_addr().unwrap();
        let other = tokio::spawn(accept_as(listener, Arc::clone(&server), OTHER, rx));
        Node {
            _dir: dir,
            server,
            addr,
            other_addr,
            accepting,
            _other: other,
            shutdown: tx,
        }
    }

    /// Drops every connection accepted as `host-a` and accepts anew on the same address:
    /// clients must open new sessions, and present their capabilities again.
    async fn cut_connections(&mut self) {
        self.accepting.abort();
        let _ = (&mut self.accepting).await;
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let rx = self.shutdown.subscribe();
        self.accepting = tokio::spawn(accept_as(listener, Arc::clone(&self.server), GATEWAY, rx));
    }

    async fn epoch(&self) -> u64 {
        self.server
            .volume(VOL)
            .await
            .unwrap()
            .unwrap()
            .fence
            .highest()
    }
}

/// The test's accept loop: every connection is served as authenticated as `principal`.
/// Aborting it drops its connections.
async fn accept_as(
    listener: TcpListener,
    server: Arc<ReplicaServer>,
    principal: &'static str,
    shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let server = Arc::clone(&server);
        let stop = shutdown.clone();
        connections.spawn(async move {
            server
                .serve_connection(stream, Some(principal.to_owned()), stop)
                .await;
        });
    }
}

async fn three_nodes() -> Vec<Node> {
    vec![
        Node::start().await,
        Node::start().await,
        Node::start().await,
    ]
}

/// Counts what the client reports.
#[derive(Default)]
struct Recorder {
    failures: Mutex<Vec<ReplicaFailure>>,
    fenced: AtomicBool,
}

impl AclObserver for Recorder {
    fn replica_failed(&self, failure: ReplicaFailure) -> AclFuture {
        self.failures.lock().unwrap().push(failure);
        Box::pin(async { Ok(()) })
    }
    fn fenced(&self, _volume: VolumeId, _our_epoch: u64, _current: u64) {
        self.fenced.store(true, Ordering::SeqCst);
    }
}

impl Recorder {
    fn failures(&self) -> Vec<String> {
        let failures = self.failures.lock().unwrap();
        failures.iter().map(|f| f.reason.clone()).collect()
    }
}

/// The replicated client of `VOL` at `epoch` over `nodes`, as `host-a`, and its pool.
fn client(nodes: &[Node], epoch: u64) -> (ReplicatedVolume, Arc<ReplicaPool>, Arc<Recorder>) {
    let pool = ReplicaPool::tcp(PoolConfig {
        request_timeout_ms: 10_000,
        ..PoolConfig::default()
    })
    .unwrap();
    let recorder = Arc::new(Recorder::default());
    let config = ClientConfig {
        name: "capable".into(),
        volume: VOL,
        size_bytes: SIZE,
        attach_epoch: epoch,
        min_replicas: 2,
        below_min_wait_ms: 300,
        removal_wait_ms: 2_000,
        resync_pace_bytes_per_sec: volume::client::RESYNC_BYTES_PER_SEC_MAX,
    };
    let acting = ActingSets::single(nodes.iter().map(|n| n.addr).collect());
    let observer = Arc::clone(&recorder) as Arc<dyn AclObserver>;
    let vol = ReplicatedVolume::new(config, acting, observer, Arc::clone(&pool)).unwrap();
    (vol, pool, recorder)
}

fn pattern(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

// ---- A raw wire client --------------------------------------------------------------------

struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u64,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            next_id: 1,
        }
    }

    async fn send(&mut self, mut req: Request) -> Reply {
        req.header.request_id = self.next_id;
        self.next_id += 1;
        self.stream.write_all(&req.encode_header()).await.unwrap();
        self.stream.write_all(&req.payload).await.unwrap();
        loop {
            if let Some(reply) = decode_reply(&mut self.buf).unwrap() {
                assert_eq!(reply.header.request_id, req.header.request_id);
                return reply;
            }
            let n =
                tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("reply in time")
                    .unwrap();
            assert!(n > 0, "connection closed before the reply");
        }
    }

    /// Presents `bytes` as a capability for `VOL` at `epoch`.
    async fn present(&mut self, epoch: u64, bytes: Bytes) -> Reply {
        self.send(Request::capability(0, VOL, epoch, bytes)).await
    }

    async fn write_and_flush(&mut self, epoch: u64) -> (Reply, Reply) {
        let header = RequestHeader {
            op: Op::Write,
            flags: 0,
            request_id: 0,
            volume: VOL,
            offset: 0,
            len: 0,
            payload_crc: 0,
            attach_epoch: epoch,
            version: WriteVersion { epoch, seq: 1 },
        };
        let write = self.send(Request::write(header, pattern(4096, 0xee))).await;
        let flush = Request::new(RequestHeader {
            op: Op::Flush,
            version: WriteVersion::NONE,
            ..header
        });
        (write, self.send(flush).await)
    }
}

fn assert_unauthorized(reply: &Reply, reason_has: &str, what: &str) {
    assert_eq!(reply.header.status, Status::Unauthorized, "{what}");
    assert_eq!(reply.header.errno, libc::EACCES as u32, "{what}");
    let reason = reply.reason().unwrap_or_default();
    assert!(
        reason.contains(reason_has),
        "{what}: reason {reason:?} lacks {reason_has:?}"
    );
}

// ---- Scenarios ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rogue_client_raises_the_epoch_and_the_writer_carries_on() {
    let nodes = three_nodes().await;
    let (vol, pool, recorder) = client(&nodes, 1);
    pool.capabilities().set(&valid(GATEWAY, 1));
    vol.write(0, pattern(8192, 1), false).await.unwrap();
    vol.flush().await.unwrap();
    let node = &nodes[0];
    assert_eq!(node.epoch().await, 1);

    // Without any capability.
    let mut raw = Raw::connect(node.other_addr).await;
    let (write, flush) = raw.write_and_flush(HUGE_EPOCH).await;
    assert_unauthorized(
        &write,
        "presented no capability",
        "a write without capability",
    );
    assert_unauthorized(
        &flush,
        "presented no capability",
        "a flush without capability",
    );

    // Each bad capability is refused when presented, and admits nothing after.
    let forged = capability_for(OTHER, HUGE_EPOCH, now_unix_ms() + VALID_FOR_MS)
        .sign(&SigningKey::from_bytes(&[7; 32]));
    let mut altered = valid(GATEWAY, 1).encode().to_vec();
    altered[9..17].copy_from_slice(&HUGE_EPOCH.to_le_bytes()); // the attach epoch
    let expired = capability_for(OTHER, HUGE_EPOCH, now_unix_ms() - 1).sign(&cell_key());
    let cases = [
        ("forged", forged.encode(), "bad signature"),
        ("altered", Bytes::from(altered), "bad signature"),
        ("expired", expired.encode(), "expired"),
        (
            "another client's",
            valid(GATEWAY, HUGE_EPOCH).encode(),
            "not for the connection's peer",
        ),
        (
            "garbage",
            Bytes::from_static(b"not a capability"),
            "malformed",
        ),
    ];
    for (what, bytes, reason) in cases {
        let mut raw = Raw::connect(node.other_addr).await;
        let presented = raw.present(HUGE_EPOCH, bytes).await;
        assert_unauthorized(&presented, reason, &format!("the {what} capability"));
        let (write, flush) = raw.write_and_flush(HUGE_EPOCH).await;
        assert_unauthorized(&write, "presented no capability", what);
        assert_unauthorized(&flush, "presented no capability", what);
    }

    // A valid capability does not make a connection's frames of another epoch admissible.
    let mut raw = Raw::connect(node.other_addr).await;
    let presented = raw.present(1, valid(OTHER, 1).encode()).await;
    assert_eq!(presented.header.status, Status::Ok);
    let (write, flush) = raw.write_and_flush(HUGE_EPOCH).await;
    assert_unauthorized(&write, "is for attach epoch 1", "a write of another epoch");
    assert_unauthorized(&flush, "is for attach epoch 1", "a flush of another epoch");

    // Nothing was fenced nor written: the writer goes on at its epoch.
    for n in &nodes {
        assert_eq!(n.epoch().await, 1, "the replica's epoch is unchanged");
    }
    let got = node
        .server
        .store()
        .volume(&volume::replica::store_volume_name(VOL))
        .unwrap();
    assert_eq!(got.read(0, 8192).await.unwrap(), pattern(8192, 1));
    vol.write(4096, pattern(4096, 2), true).await.unwrap();
    vol.flush().await.unwrap();
    let mut want = pattern(8192, 1).to_vec();
    want[4096..].copy_from_slice(&pattern(4096, 2));
    assert_eq!(vol.read(0, 8192).await.unwrap(), want);
    assert!(recorder.failures().is_empty(), "{:?}", recorder.failures());
    assert!(!recorder.fenced.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicated_client_presents_again_on_every_new_session() {
    let mut nodes = three_nodes().await;
    let (vol, pool, recorder) = client(&nodes, 1);
    pool.capabilities().set(&valid(GATEWAY, 1));
    vol.write(EXTENT_SIZE_BYTES - 4096, pattern(8192, 3), false)
        .await
        .unwrap();
    vol.flush().await.unwrap();

    for round in 0..2u8 {
        for n in &mut nodes {
            n.cut_connections().await;
        }
        // Let the links see their sessions end, so the next IO opens new ones rather than
        // failing on the dead ones.
        tokio::time::sleep(Duration::from_millis(200)).await;
        vol.write(0, pattern(4096, 10 + round), true).await.unwrap();
        vol.flush().await.unwrap();
        assert_eq!(vol.read(0, 4096).await.unwrap(), pattern(4096, 10 + round));
    }
    assert_eq!(
        vol.read(EXTENT_SIZE_BYTES - 4096, 8192).await.unwrap(),
        pattern(8192, 3)
    );
    assert!(recorder.failures().is_empty(), "{:?}", recorder.failures());
    for n in &nodes {
        assert_eq!(n.epoch().await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_while_io_runs_costs_no_io_and_serves_the_next_sessions() {
    let mut nodes = three_nodes().await;
    let (vol, pool, recorder) = client(&nodes, 1);
    // Valid for a short while only: the sessions opened after it expired get in only with
    // the renewal.
    let short_ms = 1_500;
    let first = capability_for(GATEWAY, 1, now_unix_ms() + short_ms).sign(&cell_key());
    pool.capabilities().set(&first);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (vol, stop) = (vol.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut ios = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let seed = ios as u8;
                let at = (ios % 64) * 4096;
                vol.write(at, pattern(4096, seed), false).await.unwrap();
                if ios.is_multiple_of(8) {
                    vol.flush().await.unwrap();
                }
                ios += 1;
            }
            ios
        })
    };
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.capabilities().set(&valid(GATEWAY, 1));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::SeqCst);
    let ios = writer.await.unwrap();
    assert!(ios > 0);

    // Once the first capability has expired, new sessions get in with the renewal.
    tokio::time::sleep(Duration::from_millis(short_ms)).await;
    for n in &mut nodes {
        n.cut_connections().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    vol.write(64 * 4096, pattern(4096, 77), true).await.unwrap();
    vol.flush().await.unwrap();
    assert_eq!(vol.read(64 * 4096, 4096).await.unwrap(), pattern(4096, 77));
    assert!(recorder.failures().is_empty(), "{:?}", recorder.failures());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_capability_fails_its_io_without_being_fenced() {
    let nodes = three_nodes().await;
    let (vol, _pool, recorder) = client(&nodes, 1);
    let err = vol.write(0, pattern(4096, 1), false).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO as u32, "{err}");
    assert!(
        !recorder.fenced.load(Ordering::SeqCst),
        "refused, not fenced"
    );
    let failures = recorder.failures();
    assert!(!failures.is_empty());
    assert!(
        failures.iter().all(|f| f.contains("Unauthorized")),
        "{failures:?}"
    );
    for n in &nodes {
        assert_eq!(n.epoch().await, 0, "nothing was admitted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capability_for_a_newer_epoch_lets_a_new_writer_fence_the_old_one() {
    let nodes = three_nodes().await;
    let (old, old_pool, old_seen) = client(&nodes, 1);
    old_pool.capabilities().set(&valid(GATEWAY, 1));
    old.write(0, pattern(4096, 1), false).await.unwrap();
    old.flush().await.unwrap();

    let (new, new_pool, _) = client(&nodes, 2);
    new_pool.capabilities().set(&valid(GATEWAY, 2));
    new.write(0, pattern(4096, 2), false).await.unwrap();
    new.flush().await.unwrap();
    for n in &nodes {
        assert_eq!(n.epoch().await, 2);
    }
    assert!(old.write(0, pattern(4096, 3), false).await.is_err());
    assert!(
        old_seen.fenced.load(Ordering::SeqCst),
        "the old writer is fenced"
    );
    assert_eq!(new.read(0, 4096).await.unwrap(), pattern(4096, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presentation_takes_effect_for_the_frames_pipelined_behind_it() {
    let node = Node::start().await;
    let mut raw = Raw::connect(node.addr).await;
    let present = Request::capability(1, VOL, 1, valid(GATEWAY, 1).encode());
    let header = RequestHeader {
        op: Op::Write,
        flags: 0,
        request_id: 2,
        volume: VOL,
        offset: 0,
        len: 0,
        payload_crc: 0,
        attach_epoch: 1,
        version: WriteVersion { epoch: 1, seq: 1 },
    };
    let write = Request::write(header, pattern(4096, 5));
    // One buffer, so the replica reads both frames before it answers either.
    let mut frames = present.encode_header().to_vec();
    frames.extend_from_slice(&present.payload);
    frames.extend_from_slice(&write.encode_header());
    frames.extend_from_slice(&write.payload);
    raw.stream.write_all(&frames).await.unwrap();
    let mut statuses = Vec::new();
    while statuses.len() < 2 {
        if let Some(reply) = decode_reply(&mut raw.buf).unwrap() {
            statuses.push((reply.header.request_id, reply.header.status));
            continue;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), raw.stream.read_buf(&mut raw.buf))
            .await
            .expect("replies in time")
            .unwrap();
        assert!(n > 0, "connection closed before the replies");
    }
    statuses.sort_by_key(|&(id, _)| id);
    assert_eq!(statuses, [(1, Status::Ok), (2, Status::Ok)]);
    assert_eq!(node.epoch().await, 1);
}

/// A SCAN_READ of `[offset, offset + len)` of `VOL`, at no epoch.
fn scan_read(offset: u64, len: u32) -> Request {
    Request::new(RequestHeader {
        op: Op::ScanRead,
        flags: volume::sched::class::Class::Inference.flags(),
        request_id: 0,
        volume: VOL,
        offset,
        len,
        payload_crc: 0,
        attach_epoch: 0,
        version: WriteVersion::NONE,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_reads_need_no_attach_but_only_admitted_peers_make_them() {
    let nodes = three_nodes().await;
    let (vol, pool, _recorder) = client(&nodes, 1);
    pool.capabilities().set(&valid(GATEWAY, 1));
    vol.write(8192, pattern(8192, 7), false).await.unwrap();
    vol.flush().await.unwrap();
    let node = &nodes[1];
    // An admitted peer reads without presenting anything, and fences nobody.
    let mut reader = Raw::connect(node.addr).await;
    let reply = reader.send(scan_read(8192, 8192)).await;
    assert_eq!(reply.header.status, Status::Ok);
    assert_eq!(reply.payload, pattern(8192, 7));
    assert_eq!(node.epoch().await, 1);
    // Out of the volume, or across an extent boundary: refused, and the connection lives on.
    for (offset, len) in [(SIZE - 4096, 8192), (EXTENT_SIZE_BYTES - 4096, 8192)] {
        let reply = reader.send(scan_read(offset, len)).await;
        assert_eq!(reply.header.status, Status::OutOfRange, "{offset}+{len}");
    }
    // Anyone else is refused, with the reason.
    let mut other = Raw::connect(node.other_addr).await;
    let reply = other.send(scan_read(8192, 4096)).await;
    assert_unauthorized(&reply, "may not SCAN_READ", "scan read by host-b");
    // The writer goes on.
    vol.write(0, pattern(4096, 9), true).await.unwrap();
    let reply = reader.send(scan_read(0, 4096)).await;
    assert_eq!(reply.payload, pattern(4096, 9));
}
