//! The NBD server against a raw protocol client written here, and against real clients
//! (`nbdinfo`, `qemu-io`) when they are installed.
//!
//! The served volume is an in-memory [`BlockVolume`] with a 4 KiB allocation map. Requests
//! touching its last MiB ("the slow region") take [`SLOW_MS`] to complete, which is how the
//! scenarios below make replies come back out of order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use volume::nbd::proto::*;
use volume::nbd::{NbdConfig, NbdServer, OPTION_DATA_MAX_BYTES};
use volume::volume::VolFuture;
use volume::{BlockVolume, Extent, ExtentState, VolumeError, ZeroFlags};

const SIZE: u64 = 4 << 20;
const MAX_IO: u32 = 1 << 20;
const BLOCK: u64 = 4096;
const SLOW_START: u64 = 3 << 20;
const SLOW_MS: u64 = 300;
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

// ---- An in-memory volume ------------------------------------------------------------------

#[derive(Default)]
struct Counters {
    flushes: AtomicU64,
    fua_writes: AtomicU64,
    running: AtomicUsize,
    running_max: AtomicUsize,
}

struct Mem {
    name: String,
    fast_zero: bool,
    data: Mutex<(Vec<u8>, Vec<bool>)>, // bytes, allocated per 4 KiB block
    counters: Counters,
}

#[derive(Clone)]
struct MemVolume(Arc<Mem>);

impl MemVolume {
    fn new(name: &str, fast_zero: bool) -> Self {
        MemVolume(Arc::new(Mem {
            name: name.to_owned(),
            fast_zero,
            data: Mutex::new((vec![0; SIZE as usize], vec![false; (SIZE / BLOCK) as usize])),
            counters: Counters::default(),
        }))
    }

    /// Runs `f` after the slow-region delay, counting concurrency.
    fn op<T: Send + 'static>(
        &self,
        offset: u64,
        f: impl FnOnce(&Mem) -> Result<T, VolumeError> + Send + 'static,
    ) -> VolFuture<T> {
        let mem = Arc::clone(&self.0);
        Box::pin(async move {
            let now = mem.counters.running.fetch_add(1, Ordering::SeqCst) + 1;
            mem.counters.running_max.fetch_max(now, Ordering::SeqCst);
            if offset >= SLOW_START {
                tokio::time::sleep(Duration::from_millis(SLOW_MS)).await;
            }
            let r = f(&mem);
            mem.counters.running.fetch_sub(1, Ordering::SeqCst);
            r
        })
    }
}

fn check(offset: u64, len: u64) -> Result<(), VolumeError> {
    match offset.checked_add(len) {
        Some(end) if end <= SIZE => Ok(()),
        _ => Err(VolumeError::OutOfRange {
            offset,
            len,
            size: SIZE,
        }),
    }
}

/// Zeros `[offset, offset + len)` and sets the allocation of the blocks it wholly covers.
fn zero_range(m: &Mem, offset: u64, len: u64, allocated: bool) {
    let mut g = m.data.lock().unwrap();
    g.0[offset as usize..(offset + len) as usize].fill(0);
    let first = offset.div_ceil(BLOCK);
    let end = (offset + len) / BLOCK;
    for b in first..end {
        g.1[b as usize] = allocated;
    }
}

impl BlockVolume for MemVolume {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn size(&self) -> u64 {
        SIZE
    }
    fn max_io_bytes(&self) -> u32 {
        MAX_IO
    }
    fn read(&self, offset: u64, len: u32) -> VolFuture<Bytes> {
        self.op(offset, move |m| {
            check(offset, u64::from(len))?;
            let g = m.data.lock().unwrap();
            Ok(Bytes::copy_from_slice(
                &g.0[offset as usize..offset as usize + len as usize],
            ))
        })
    }
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> VolFuture<()> {
        self.op(offset, move |m| {
            check(offset, data.len() as u64)?;
            let mut g = m.data.lock().unwrap();
            g.0[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
            for b in offset / BLOCK..(offset + data.len() as u64).div_ceil(BLOCK) {
                g.1[b as usize] = true;
            }
            if fua {
                m.counters.fua_writes.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        })
    }
    fn flush(&self) -> VolFuture<()> {
        self.op(0, |m| {
            m.counters.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
    fn trim(&self, offset: u64, len: u64, _fua: bool) -> VolFuture<()> {
        self.op(offset, move |m| {
            check(offset, len)?;
            zero_range(m, offset, len, false);
            Ok(())
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> VolFuture<()> {
        self.op(offset, move |m| {
            check(offset, len)?;
            if flags.fast && !m.fast_zero {
                return Err(VolumeError::FastZeroUnsupported);
            }
            zero_range(m, offset, len, !flags.may_trim);
            Ok(())
        })
    }
    fn block_status(&self, offset: u64, len: u64) -> VolFuture<Vec<Extent>> {
        self.op(offset, move |m| {
            check(offset, len)?;
            let g = m.data.lock().unwrap();
            let mut out: Vec<Extent> = Vec::new();
            let mut at = offset;
            while at < offset + len {
                let allocated = g.1[(at / BLOCK) as usize];
                let run = (BLOCK - at % BLOCK).min(offset + len - at);
                let state = ExtentState {
                    hole: !allocated,
                    zero: !allocated,
                };
                match out.last_mut() {
                    Some(last) if last.state == state => last.len += run,
                    _ => out.push(Extent { len: run, state }),
                }
                at += run;
            }
            Ok(out)
        })
    }
}

// ---- A raw protocol client ---------------------------------------------------------------

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

#[derive(Debug)]
struct OptReply {
    kind: u32,
    data: Vec<u8>,
}

#[derive(Debug, PartialEq)]
enum Reply {
    Simple {
        cookie: u64,
        error: u32,
        data: Option<Vec<u8>>,
    },
    Chunk {
        cookie: u64,
        flags: u16,
        kind: u16,
        payload: Vec<u8>,
    },
}

impl Reply {
    fn cookie(&self) -> u64 {
        match self {
            Reply::Simple { cookie, .. } | Reply::Chunk { cookie, .. } => *cookie,
        }
    }
    /// The error of a simple reply or an error chunk; zero for success.
    fn error(&self) -> u32 {
        match self {
            Reply::Simple { error, .. } => *error,
            Reply::Chunk { kind, payload, .. } if kind & 0x8000 != 0 => {
                u32::from_be_bytes(payload[..4].try_into().unwrap())
            }
            Reply::Chunk { .. } => 0,
        }
    }
}

struct Client {
    r: Reader,
    w: Writer,
    /// Lengths of simple-reply reads in flight: their replies carry data of that length.
    simple_reads: HashMap<u64, u32>,
    structured: bool,
}

impl Client {
    async fn tcp(addr: SocketAddr) -> Client {
        Self::tcp_with_flags(addr, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).await
    }

    async fn tcp_with_flags(addr: SocketAddr, flags: u32) -> Client {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        Self::over(Box::new(r), Box::new(w), flags).await
    }

    async fn over(r: Reader, w: Writer, flags: u32) -> Client {
        let mut c = Client {
            r,
            w,
            simple_reads: HashMap::new(),
            structured: false,
        };
        let mut greeting = [0u8; GREETING_BYTES];
        c.r.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting[..8], &NBD_MAGIC.to_be_bytes());
        assert_eq!(&greeting[8..16], &NBD_OPTS_MAGIC.to_be_bytes());
        assert_eq!(
            u16::from_be_bytes([greeting[16], greeting[17]]),
            NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES
        );
        c.w.write_all(&flags.to_be_bytes()).await.unwrap();
        c
    }

    async fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut buf = BytesMut::new();
        OptionHeader {
            option,
            len: data.len() as u32,
        }
        .encode(&mut buf);
        buf.extend_from_slice(data);
        self.w.write_all(&buf).await.unwrap();
    }

    async fn option_reply(&mut self) -> OptReply {
        let mut h = [0u8; OPTION_REPLY_HEADER_BYTES];
        tokio::time::timeout(REPLY_TIMEOUT, self.r.read_exact(&mut h))
            .await
            .expect("no option reply")
            .unwrap();
        assert_eq!(&h[..8], &NBD_REP_MAGIC.to_be_bytes());
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut data = vec![0; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        self.r.read_exact(&mut data).await.unwrap();
        OptReply { kind, data }
    }

    /// Sends an option and collects replies up to the final one (an ACK or an error).
    async fn option(&mut self, option: u32, data: &[u8]) -> Vec<OptReply> {
        self.send_option(option, data).await;
        let mut replies = Vec::new();
        loop {
            let reply = self.option_reply().await;
            let last = reply.kind == NBD_REP_ACK || reply.kind & NBD_REP_FLAG_ERROR != 0;
            replies.push(reply);
            if last {
                return replies;
            }
        }
    }

    async fn structured_replies(&mut self) {
        let r = self.option(NBD_OPT_STRUCTURED_REPLY, &[]).await;
        assert_eq!(r[0].kind, NBD_REP_ACK);
        self.structured = true;
    }

    /// GO on `export`; returns the export size and transmission flags.
    async fn go(&mut self, export: &str) -> (u64, u16) {
        let replies = self.option(NBD_OPT_GO, &info_request(export, &[])).await;
        assert_eq!(
            replies.last().unwrap().kind,
            NBD_REP_ACK,
            "GO {export:?} failed: {replies:?}"
        );
        let info = replies
            .iter()
            .find(|r| r.kind == NBD_REP_INFO && r.data[..2] == [0, 0])
            .expect("NBD_INFO_EXPORT");
        (
            u64::from_be_bytes(info.data[2..10].try_into().unwrap()),
            u16::from_be_bytes([info.data[10], info.data[11]]),
        )
    }

    async fn send(
        &mut self,
        flags: u16,
        command: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        if command == NBD_CMD_READ && !self.structured {
            self.simple_reads.insert(cookie, len);
        }
        let mut buf = BytesMut::new();
        RequestHeader {
            flags,
            command,
            cookie,
            offset,
            len,
        }
        .encode(&mut buf);
        buf.extend_from_slice(payload);
        self.w.write_all(&buf).await.unwrap();
    }

    async fn reply(&mut self) -> Reply {
        tokio::time::timeout(REPLY_TIMEOUT, self.read_reply())
            .await
            .expect("no reply from the server")
    }

    async fn read_reply(&mut self) -> Reply {
        let magic = self.r.read_u32().await.expect("reply magic");
        match magic {
            NBD_SIMPLE_REPLY_MAGIC => {
                let error = self.r.read_u32().await.unwrap();
                let cookie = self.r.read_u64().await.unwrap();
                let len = self.simple_reads.remove(&cookie);
                let data = match (error, len) {
                    (0, Some(len)) => {
                        let mut d = vec![0; len as usize];
                        self.r.read_exact(&mut d).await.unwrap();
                        Some(d)
                    }
                    _ => None,
                };
                Reply::Simple {
                    cookie,
                    error,
                    data,
                }
            }
            NBD_STRUCTURED_REPLY_MAGIC => {
                let flags = self.r.read_u16().await.unwrap();
                let kind = self.r.read_u16().await.unwrap();
                let cookie = self.r.read_u64().await.unwrap();
                let mut payload = vec![0; self.r.read_u32().await.unwrap() as usize];
                self.r.read_exact(&mut payload).await.unwrap();
                Reply::Chunk {
                    cookie,
                    flags,
                    kind,
                    payload,
                }
            }
            other => panic!("unexpected reply magic {other:#x}"),
        }
    }

    async fn call(
        &mut self,
        flags: u16,
        command: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Reply {
        self.send(flags, command, 77, offset, len, payload).await;
        let reply = self.reply().await;
        assert_eq!(reply.cookie(), 77);
        reply
    }

    async fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        self.call(0, NBD_CMD_WRITE, offset, data.len() as u32, data)
            .await
            .error()
    }

    /// Reads `len` bytes; structured reads must come as one final OFFSET_DATA chunk.
    async fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        match self.call(0, NBD_CMD_READ, offset, len, &[]).await {
            Reply::Simple { error: 0, data, .. } => Ok(data.unwrap()),
            Reply::Chunk {
                flags,
                kind: NBD_REPLY_TYPE_OFFSET_DATA,
                payload,
                ..
            } => {
                assert_eq!(flags, NBD_REPLY_FLAG_DONE);
                assert_eq!(&payload[..8], &offset.to_be_bytes());
                Ok(payload[8..].to_vec())
            }
            other => Err(other.error()),
        }
    }

    async fn expect_closed(&mut self) {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(REPLY_TIMEOUT, self.r.read(&mut byte))
            .await
            .expect("connection stayed open")
        {
            Ok(0) | Err(_) => {}
            Ok(_) => panic!("unexpected byte {:#x} instead of end of stream", byte[0]),
        }
    }
}

fn info_request(export: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = (export.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    infos
        .iter()
        .for_each(|i| v.extend_from_slice(&i.to_be_bytes()));
    v
}

fn meta_request(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = (export.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

fn descriptors(reply: &Reply) -> Vec<(u32, u32)> {
    let Reply::Chunk {
        kind: NBD_REPLY_TYPE_BLOCK_STATUS,
        payload,
        flags,
        ..
    } = reply
    else {
        panic!("expected a block status chunk, got {reply:?}");
    };
    assert_eq!(*flags, NBD_REPLY_FLAG_DONE);
    payload[4..]
        .chunks(8)
        .map(|d| {
            (
                u32::from_be_bytes(d[..4].try_into().unwrap()),
                u32::from_be_bytes(d[4..].try_into().unwrap()),
            )
        })
        .collect()
}

// ---- Running a server --------------------------------------------------------------------

struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn serve_on(listener: TcpListener, volumes: &[MemVolume], config: NbdConfig) -> Running {
    let exports: Vec<Arc<dyn BlockVolume>> = volumes
        .iter()
        .map(|v| Arc::new(v.clone()) as Arc<dyn BlockVolume>)
        .collect();
    let server = Arc::new(NbdServer::new(exports, config).unwrap());
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(server.serve_tcp(listener, stopped));
    Running { addr, stop, task }
}

async fn serve(volumes: &[MemVolume], config: NbdConfig) -> Running {
    serve_on(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        volumes,
        config,
    )
    .await
}

async fn serve_default() -> (Running, MemVolume) {
    let vol = MemVolume::new("vol0", true);
    (
        serve(
            &[vol.clone(), MemVolume::new("vol1", true)],
            NbdConfig::default(),
        )
        .await,
        vol,
    )
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---- Configuration -----------------------------------------------------------------------

#[test]
fn the_server_refuses_export_sets_and_limits_it_cannot_serve() {
    use volume::nbd::NbdConfigError;
    let arc = |v: MemVolume| Arc::new(v) as Arc<dyn BlockVolume>;
    let new = |exports: Vec<Arc<dyn BlockVolume>>, config| NbdServer::new(exports, config).err();
    assert_eq!(
        new(vec![], NbdConfig::default()),
        Some(NbdConfigError::NoExports)
    );
    assert_eq!(
        new(
            vec![
                arc(MemVolume::new("a", true)),
                arc(MemVolume::new("a", true))
            ],
            NbdConfig::default()
        ),
        Some(NbdConfigError::DuplicateName("a".into()))
    );
    assert_eq!(
        new(vec![arc(MemVolume::new("", true))], NbdConfig::default()),
        Some(NbdConfigError::BadName(String::new()))
    );
    let zero_in_flight = NbdConfig {
        requests_in_flight_max: 0,
        ..NbdConfig::default()
    };
    assert_eq!(
        new(vec![arc(MemVolume::new("a", true))], zero_in_flight),
        Some(NbdConfigError::InFlight(0))
    );
}

// ---- Handshake ---------------------------------------------------------------------------

#[tokio::test]
async fn handshake_lists_describes_and_refuses_what_it_does_not_know() {
    let (srv, _vol) = serve_default().await;
    let mut c = Client::tcp(srv.addr).await;

    let list = c.option(NBD_OPT_LIST, &[]).await;
    let names: Vec<_> = list
        .iter()
        .filter(|r| r.kind == NBD_REP_SERVER)
        .map(|r| String::from_utf8_lossy(&r.data[4..8]).into_owned())
        .collect();
    assert_eq!(names, ["vol0", "vol1"]);
    assert_eq!(
        c.option(NBD_OPT_LIST, b"junk").await[0].kind,
        NBD_REP_ERR_INVALID
    );

    // INFO on the default export, asking for everything.
    let info = c
        .option(
            NBD_OPT_INFO,
            &info_request(
                "",
                &[NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE],
            ),
        )
        .await;
    assert_eq!(info.last().unwrap().kind, NBD_REP_ACK);
    let by_type: HashMap<u16, &[u8]> = info
        .iter()
        .filter(|r| r.kind == NBD_REP_INFO)
        .map(|r| (u16::from_be_bytes([r.data[0], r.data[1]]), &r.data[2..]))
        .collect();
    assert_eq!(by_type[&NBD_INFO_NAME], b"vol0");
    assert!(String::from_utf8_lossy(by_type[&NBD_INFO_DESCRIPTION]).contains("vol0"));
    let sizes: Vec<u32> = by_type[&NBD_INFO_BLOCK_SIZE]
        .chunks(4)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(sizes, [1, 4096, MAX_IO]);
    assert_eq!(&by_type[&NBD_INFO_EXPORT][..8], &SIZE.to_be_bytes());

    // Block sizes are sent even when not asked for; name and description only when asked.
    let info = c.option(NBD_OPT_INFO, &info_request("vol1", &[])).await;
    let types: Vec<u16> = info
        .iter()
        .filter(|r| r.kind == NBD_REP_INFO)
        .map(|r| u16::from_be_bytes([r.data[0], r.data[1]]))
        .collect();
    assert_eq!(types, [NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE]);

    assert_eq!(
        c.option(NBD_OPT_INFO, &info_request("nope", &[])).await[0].kind,
        NBD_REP_ERR_UNKNOWN
    );
    assert_eq!(
        c.option(NBD_OPT_GO, &info_request("nope", &[])).await[0].kind,
        NBD_REP_ERR_UNKNOWN
    );
    assert_eq!(
        c.option(NBD_OPT_INFO, &[0, 0, 0, 9]).await[0].kind,
        NBD_REP_ERR_INVALID
    );
    assert_eq!(
        c.option(0x7777, b"whatever").await[0].kind,
        NBD_REP_ERR_UNSUP
    );
    // NOTLS by policy: this server could speak TLS, but was not given a configuration.
    assert_eq!(
        c.option(NBD_OPT_STARTTLS, &[]).await[0].kind,
        NBD_REP_ERR_POLICY
    );
    assert_eq!(
        c.option(NBD_OPT_EXTENDED_HEADERS, &[]).await[0].kind,
        NBD_REP_ERR_UNSUP
    );

    // After all that, GO still works and so does IO, with simple replies.
    let (size, flags) = c.go("vol1").await;
    assert_eq!(size, SIZE);
    for f in [
        NBD_FLAG_HAS_FLAGS,
        NBD_FLAG_SEND_FLUSH,
        NBD_FLAG_SEND_FUA,
        NBD_FLAG_SEND_TRIM,
        NBD_FLAG_SEND_WRITE_ZEROES,
        NBD_FLAG_SEND_FAST_ZERO,
        NBD_FLAG_CAN_MULTI_CONN,
    ] {
        assert_ne!(flags & f, 0, "flag {f:#x} missing from {flags:#x}");
    }
    assert_eq!(flags & NBD_FLAG_SEND_DF, 0, "DF needs structured replies");
    assert_eq!(c.write(0, b"hello").await, 0);
    assert_eq!(c.read(0, 5).await.unwrap(), b"hello");
}

#[tokio::test]
async fn export_name_ends_the_handshake_with_or_without_zero_padding() {
    let (srv, vol) = serve_default().await;
    vol.0.data.lock().unwrap().0[..4].copy_from_slice(b"abcd");
    for (flags, padding) in [
        (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES, 0),
        (NBD_FLAG_C_FIXED_NEWSTYLE, 124),
    ] {
        let mut c = Client::tcp_with_flags(srv.addr, flags).await;
        c.send_option(NBD_OPT_EXPORT_NAME, b"").await; // the default export
        let mut reply = vec![0u8; 10 + padding];
        c.r.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply[..8], &SIZE.to_be_bytes());
        assert!(reply[10..].iter().all(|b| *b == 0));
        assert_eq!(c.read(0, 4).await.unwrap(), b"abcd", "padding {padding}");
    }
}

#[tokio::test]
async fn handshake_violations_close_the_connection() {
    let (srv, _vol) = serve_default().await;

    let mut c = Client::tcp(srv.addr).await;
    c.send_option(NBD_OPT_EXPORT_NAME, b"missing").await; // no error reply exists for this
    c.expect_closed().await;

    let mut c = Client::tcp(srv.addr).await;
    let mut header = BytesMut::new();
    OptionHeader {
        option: NBD_OPT_GO,
        len: OPTION_DATA_MAX_BYTES + 1,
    }
    .encode(&mut header);
    c.w.write_all(&header).await.unwrap();
    assert_eq!(c.option_reply().await.kind, NBD_REP_ERR_TOO_BIG);
    c.expect_closed().await;

    let mut c = Client::tcp_with_flags(srv.addr, 1 << 7).await; // a client flag nobody offered
    c.expect_closed().await;

    let mut c = Client::tcp(srv.addr).await;
    assert_eq!(c.option(NBD_OPT_ABORT, &[]).await[0].kind, NBD_REP_ACK);
    c.expect_closed().await;

    // The server is unharmed.
    let mut c = Client::tcp(srv.addr).await;
    c.go("vol0").await;
    assert_eq!(c.write(4096, b"still here").await, 0);
}

#[tokio::test]
async fn block_status_needs_structured_replies_and_a_context_for_the_same_export() {
    let (srv, _vol) = serve_default().await;
    let mut c = Client::tcp(srv.addr).await;
    assert_eq!(
        c.option(
            NBD_OPT_SET_META_CONTEXT,
            &meta_request("vol0", &["base:allocation"])
        )
        .await[0]
            .kind,
        NBD_REP_ERR_INVALID
    );
    c.structured_replies().await;

    // LIST without queries shows everything; "base:" is a wildcard when listing.
    for queries in [
        &[][..],
        &["base:"][..],
        &["base:allocation", "qemu:dirty-bitmap:x"][..],
    ] {
        let list = c
            .option(NBD_OPT_LIST_META_CONTEXT, &meta_request("vol0", queries))
            .await;
        assert_eq!(list.len(), 2, "{queries:?}");
        assert_eq!(list[0].kind, NBD_REP_META_CONTEXT);
        assert_eq!(&list[0].data[4..], BASE_ALLOCATION.as_bytes());
    }
    assert_eq!(
        c.option(NBD_OPT_LIST_META_CONTEXT, &meta_request("nope", &[]))
            .await[0]
            .kind,
        NBD_REP_ERR_UNKNOWN
    );

    // Selecting for vol1 and going to vol0 leaves block status off.
    let set = c
        .option(
            NBD_OPT_SET_META_CONTEXT,
            &meta_request("vol1", &["base:allocation"]),
        )
        .await;
    assert_eq!(set[0].kind, NBD_REP_META_CONTEXT);
    let (_, flags) = c.go("vol0").await;
    assert_ne!(flags & NBD_FLAG_SEND_DF, 0);
    assert_eq!(
        c.call(0, NBD_CMD_BLOCK_STATUS, 0, 4096, &[]).await.error(),
        NBD_EINVAL
    );
}

// ---- Transmission ------------------------------------------------------------------------

/// Connects with structured replies and `base:allocation` on vol0.
async fn rich_client(addr: SocketAddr) -> (Client, u32) {
    let mut c = Client::tcp(addr).await;
    c.structured_replies().await;
    let set = c
        .option(
            NBD_OPT_SET_META_CONTEXT,
            &meta_request("vol0", &["base:", "base:allocation", "x-other:thing"]),
        )
        .await;
    assert_eq!(set.len(), 2, "exactly base:allocation is selected: {set:?}");
    let context = u32::from_be_bytes(set[0].data[..4].try_into().unwrap());
    c.go("vol0").await;
    (c, context)
}

#[tokio::test]
async fn pipelined_requests_are_answered_out_of_order() {
    let (srv, _vol) = serve_default().await;
    let (mut c, _) = rich_client(srv.addr).await;
    let data = pattern(8192, 3);
    c.send(0, NBD_CMD_READ, 1, SLOW_START, 4096, &[]).await; // slow
    c.send(0, NBD_CMD_WRITE, 2, 0, 8192, &data).await;
    c.send(0, NBD_CMD_READ, 3, 65536, 4096, &[]).await;
    c.send(0, NBD_CMD_FLUSH, 4, 0, 0, &[]).await;

    let mut order = Vec::new();
    for _ in 0..4 {
        let r = c.reply().await;
        assert_eq!(r.error(), 0, "{r:?}");
        order.push(r.cookie());
    }
    assert_eq!(
        order.last(),
        Some(&1),
        "the slow read finishes last: {order:?}"
    );
    assert_eq!(c.read(0, 8192).await.unwrap(), data);
}

#[tokio::test]
async fn fua_and_flush_reach_the_volume_and_multi_conn_follows_the_config() {
    let (srv, vol) = serve_default().await;
    let mut c = Client::tcp(srv.addr).await;
    c.go("vol0").await;
    assert_eq!(
        c.call(NBD_CMD_FLAG_FUA, NBD_CMD_WRITE, 0, 4, b"durr")
            .await
            .error(),
        0
    );
    assert_eq!(c.call(0, NBD_CMD_FLUSH, 0, 0, &[]).await.error(), 0);
    assert_eq!(
        c.call(0, NBD_CMD_FLUSH, 4096, 0, &[]).await.error(),
        NBD_EINVAL
    );
    assert_eq!(vol.0.counters.fua_writes.load(Ordering::SeqCst), 1);
    assert_eq!(vol.0.counters.flushes.load(Ordering::SeqCst), 1);

    let single = serve(
        &[MemVolume::new("solo", true)],
        NbdConfig {
            multi_conn: false,
            ..NbdConfig::default()
        },
    )
    .await;
    let mut c = Client::tcp(single.addr).await;
    assert_eq!(c.go("solo").await.1 & NBD_FLAG_CAN_MULTI_CONN, 0);
}

#[tokio::test]
async fn trim_and_write_zeroes_read_back_as_zeros_and_show_in_block_status() {
    let (srv, _vol) = serve_default().await;
    let (mut c, context) = rich_client(srv.addr).await;
    assert_eq!(c.write(0, &pattern(64 * 1024, 9)).await, 0);

    let status = c.call(0, NBD_CMD_BLOCK_STATUS, 0, 128 * 1024, &[]).await;
    let Reply::Chunk { payload, .. } = &status else {
        unreachable!()
    };
    assert_eq!(&payload[..4], &context.to_be_bytes());
    assert_eq!(
        descriptors(&status),
        [(65536, 0), (65536, NBD_STATE_HOLE | NBD_STATE_ZERO)]
    );

    assert_eq!(
        c.call(NBD_CMD_FLAG_FUA, NBD_CMD_TRIM, 0, 16384, &[])
            .await
            .error(),
        0
    );
    assert_eq!(
        c.call(NBD_CMD_FLAG_NO_HOLE, NBD_CMD_WRITE_ZEROES, 16384, 8192, &[])
            .await
            .error(),
        0
    );
    assert_eq!(
        c.call(
            NBD_CMD_FLAG_FAST_ZERO,
            NBD_CMD_WRITE_ZEROES,
            24576,
            8192,
            &[]
        )
        .await
        .error(),
        0
    );
    assert_eq!(c.read(0, 32768).await.unwrap(), vec![0; 32768]);
    let status = c.call(0, NBD_CMD_BLOCK_STATUS, 0, 65536, &[]).await;
    assert_eq!(
        descriptors(&status),
        [(16384, 3), (8192, 0), (8192, 3), (32768, 0)]
    );
    let one = c
        .call(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 0, 65536, &[])
        .await;
    assert_eq!(descriptors(&one), [(16384, 3)]);
}

#[tokio::test]
async fn fast_zero_on_a_volume_that_cannot_is_enotsup_and_leaves_data_alone() {
    let vol = MemVolume::new("slowzero", false);
    let srv = serve(std::slice::from_ref(&vol), NbdConfig::default()).await;
    let mut c = Client::tcp(srv.addr).await;
    c.go("").await;
    assert_eq!(c.write(0, b"keep").await, 0);
    assert_eq!(
        c.call(NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_WRITE_ZEROES, 0, 4096, &[])
            .await
            .error(),
        NBD_ENOTSUP
    );
    assert_eq!(c.read(0, 4).await.unwrap(), b"keep");
    assert_eq!(
        c.call(0, NBD_CMD_WRITE_ZEROES, 0, 4096, &[]).await.error(),
        0
    );
    assert_eq!(c.read(0, 4).await.unwrap(), [0; 4]);
}

#[tokio::test]
async fn bad_requests_get_errors_and_the_connection_stays_usable() {
    let (srv, _vol) = serve_default().await;
    for structured in [false, true] {
        let mut c = Client::tcp(srv.addr).await;
        if structured {
            c.structured_replies().await;
        }
        c.go("vol0").await;
        assert_eq!(c.read(SIZE - 512, 1024).await, Err(NBD_EINVAL));
        assert_eq!(c.read(u64::MAX - 10, 512).await, Err(NBD_EINVAL));
        assert_eq!(
            c.write(SIZE - 2, b"four").await,
            NBD_ENOSPC,
            "payload consumed, stream in step"
        );
        assert_eq!(c.read(0, 0).await, Err(NBD_EINVAL));
        assert_eq!(c.call(0, NBD_CMD_TRIM, 0, 0, &[]).await.error(), NBD_EINVAL);
        assert_eq!(c.call(0, 42, 0, 4096, &[]).await.error(), NBD_EINVAL);
        assert_eq!(
            c.call(0, NBD_CMD_CACHE, 0, 4096, &[]).await.error(),
            NBD_EINVAL
        );
        assert_eq!(
            c.call(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_WRITE, 0, 4, b"flag")
                .await
                .error(),
            NBD_EINVAL
        );
        assert_eq!(
            c.call(NBD_CMD_FLAG_NO_HOLE, NBD_CMD_READ, 0, 4, &[])
                .await
                .error(),
            NBD_EINVAL
        );
        assert_eq!(
            c.call(0, NBD_CMD_BLOCK_STATUS, 0, 4096, &[]).await.error(),
            NBD_EINVAL
        );
        // Over the advertised maximum: refused, the payload skipped.
        assert_eq!(c.read(0, MAX_IO + 1).await, Err(NBD_EINVAL));
        assert_eq!(
            c.write(0, &vec![7; MAX_IO as usize + 4096]).await,
            NBD_EINVAL
        );
        // A structured error carries a message for humans.
        if structured {
            let Reply::Chunk {
                kind,
                payload,
                flags,
                ..
            } = c.call(0, NBD_CMD_READ, SIZE, 1, &[]).await
            else {
                panic!()
            };
            assert_eq!((kind, flags), (NBD_REPLY_TYPE_ERROR, NBD_REPLY_FLAG_DONE));
            let msg_len = u16::from_be_bytes([payload[4], payload[5]]) as usize;
            assert!(msg_len > 0 && payload.len() == 6 + msg_len);
        }
        assert_eq!(c.write(8192, b"fine").await, 0);
        assert_eq!(c.read(8192, 4).await.unwrap(), b"fine");
    }
}

#[tokio::test]
async fn a_write_too_large_to_skip_is_answered_then_the_connection_closes() {
    let (srv, _vol) = serve_default().await;
    let mut c = Client::tcp(srv.addr).await;
    c.go("vol0").await;
    c.send(0, NBD_CMD_WRITE, 5, 0, 128 << 20, &[]).await; // the payload never follows
    let r = c.reply().await;
    assert_eq!((r.cookie(), r.error()), (5, NBD_EINVAL));
    c.expect_closed().await;
}

#[tokio::test]
async fn bad_magic_closes_only_that_connection() {
    let (srv, _vol) = serve_default().await;
    let mut good = Client::tcp(srv.addr).await;
    good.go("vol0").await;
    let mut bad = Client::tcp(srv.addr).await;
    bad.go("vol0").await;

    bad.w.write_all(&[0xde, 0xad, 0xbe, 0xef]).await.unwrap();
    bad.w
        .write_all(&[0; REQUEST_HEADER_BYTES - 4])
        .await
        .unwrap();
    bad.expect_closed().await;

    assert_eq!(good.write(0, b"unaffected").await, 0);
    assert_eq!(good.read(0, 10).await.unwrap(), b"unaffected");
}

#[tokio::test]
async fn clients_vanishing_mid_request_harm_nobody() {
    let (srv, vol) = serve_default().await;
    let mut witness = Client::tcp(srv.addr).await;
    witness.go("vol0").await;

    // Half a header, then gone.
    let mut c = Client::tcp(srv.addr).await;
    c.go("vol0").await;
    c.w.write_all(&NBD_REQUEST_MAGIC.to_be_bytes())
        .await
        .unwrap();
    drop(c);

    // A header and half its payload, then gone: nothing may be written.
    let mut c = Client::tcp(srv.addr).await;
    c.go("vol0").await;
    let mut buf = BytesMut::new();
    RequestHeader {
        flags: 0,
        command: NBD_CMD_WRITE,
        cookie: 1,
        offset: 0,
        len: 8192,
    }
    .encode(&mut buf);
    buf.extend_from_slice(&[0xee; 4096]);
    c.w.write_all(&buf).await.unwrap();
    drop(c);

    // Slow requests in flight, then gone: their replies have nowhere to go.
    let mut c = Client::tcp(srv.addr).await;
    c.go("vol0").await;
    for cookie in 0..4 {
        c.send(0, NBD_CMD_READ, cookie, SLOW_START, 4096, &[]).await;
    }
    drop(c);

    tokio::time::sleep(Duration::from_millis(SLOW_MS + 100)).await;
    assert!(vol.0.data.lock().unwrap().0[..8192].iter().all(|b| *b == 0));
    assert_eq!(witness.write(0, b"ok").await, 0);
    let mut fresh = Client::tcp(srv.addr).await;
    fresh.go("vol0").await;
    assert_eq!(fresh.read(0, 2).await.unwrap(), b"ok");
}

#[tokio::test]
async fn disc_finishes_in_flight_requests_before_closing() {
    let (srv, vol) = serve_default().await;
    let mut c = Client::tcp(srv.addr).await;
    c.go("vol0").await;
    c.send(0, NBD_CMD_WRITE, 1, SLOW_START, 4, b"last").await;
    c.send(0, NBD_CMD_DISC, 2, 0, 0, &[]).await;
    let r = c.reply().await;
    assert_eq!((r.cookie(), r.error()), (1, 0));
    c.expect_closed().await;
    assert_eq!(
        &vol.0.data.lock().unwrap().0[SLOW_START as usize..SLOW_START as usize + 4],
        b"last"
    );
}

#[tokio::test]
async fn requests_in_flight_per_connection_are_bounded() {
    let vol = MemVolume::new("vol0", true);
    let srv = serve(
        std::slice::from_ref(&vol),
        NbdConfig {
            requests_in_flight_max: 2,
            ..NbdConfig::default()
        },
    )
    .await;
    let mut c = Client::tcp(srv.addr).await;
    c.go("vol0").await;
    let started = Instant::now();
    for cookie in 0..6 {
        c.send(
            0,
            NBD_CMD_READ,
            cookie,
            SLOW_START + cookie * 4096,
            4096,
            &[],
        )
        .await;
    }
    let mut cookies: Vec<u64> = Vec::new();
    for _ in 0..6 {
        cookies.push(c.reply().await.cookie());
    }
    cookies.sort();
    assert_eq!(cookies, [0, 1, 2, 3, 4, 5]);
    assert_eq!(vol.0.counters.running_max.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(3 * SLOW_MS),
        "six slow reads, two at a time"
    );
}

#[tokio::test]
async fn unix_socket_serves_the_same_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let exports: Vec<Arc<dyn BlockVolume>> = vec![Arc::new(MemVolume::new("vol0", true))];
    let server = Arc::new(NbdServer::new(exports, NbdConfig::default()).unwrap());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(server.serve_unix(listener, stopped));

    let (r, w) = tokio::net::UnixStream::connect(&path)
        .await
        .unwrap()
        .into_split();
    let mut c = Client::over(Box::new(r), Box::new(w), NBD_FLAG_C_FIXED_NEWSTYLE).await;
    c.structured_replies().await;
    c.go("").await;
    assert_eq!(c.write(512, b"over unix").await, 0);
    assert_eq!(c.read(512, 9).await.unwrap(), b"over unix");

    stop.send(true).unwrap();
    c.expect_closed().await;
    tokio::time::timeout(REPLY_TIMEOUT, task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_a_restarted_server_takes_clients_back() {
    let vol = MemVolume::new("vol0", true);
    let srv = serve(std::slice::from_ref(&vol), NbdConfig::default()).await;
    let mut c = Client::tcp(srv.addr).await;
    c.go("vol0").await;
    c.send(0, NBD_CMD_WRITE, 1, SLOW_START, 7, b"durable").await;
    // Shut down only once the write is inside the volume, so it is truly in flight.
    let waiting_since = Instant::now();
    while vol.0.counters.running.load(Ordering::SeqCst) == 0 {
        assert!(
            waiting_since.elapsed() < REPLY_TIMEOUT,
            "the write never reached the volume"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    srv.stop.send(true).unwrap();
    let r = c.reply().await;
    assert_eq!(
        (r.cookie(), r.error()),
        (1, 0),
        "in-flight write completes across shutdown"
    );
    c.expect_closed().await;
    tokio::time::timeout(REPLY_TIMEOUT, srv.task)
        .await
        .expect("serve_tcp returns after shutdown")
        .unwrap();

    // Same address, same volume: the client reconnects and finds its data.
    let again = serve_on(
        TcpListener::bind(srv.addr).await.unwrap(),
        &[vol],
        NbdConfig::default(),
    )
    .await;
    let mut c = Client::tcp(again.addr).await;
    c.go("vol0").await;
    assert_eq!(c.read(SLOW_START, 7).await.unwrap(), b"durable");
}

// ---- Real clients ------------------------------------------------------------------------

/// Whether an external tool can be used (the workspace harness's skip-or-fail rule).
fn tool_available(tool: &str) -> bool {
    fabric_suite::tool(tool).is_some()
}

async fn run_tool(tool: &str, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(tool).args(args).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{tool} {args:?} timed out"))
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_and_qemu_io_interoperate() {
    if !tool_available("nbdinfo") || !tool_available("qemu-io") {
        return;
    }
    let (srv, _vol) = serve_default().await;
    let url = format!("nbd://{}", srv.addr);

    let json: serde_json::Value =
        serde_json::from_str(&run_tool("nbdinfo", &["--json", &url]).await).unwrap();
    let export = &json["exports"][0];
    assert_eq!(export["export-size"], SIZE);
    assert_eq!(export["block_size_maximum"], MAX_IO);
    assert_eq!(export["can_multi_conn"], true);

    let io = run_tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            &url,
            "-c",
            "write -P 0xab 0 64k",
            "-c",
            "read -P 0xab 0 64k",
        ],
    )
    .await;
    assert!(!io.contains("Pattern verification failed"), "{io}");

    let map = run_tool("nbdinfo", &["--map", &url]).await;
    let kinds: Vec<&str> = map
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(kinds.first(), Some(&"data"), "{map}");
    assert!(kinds.iter().any(|k| k.contains("hole")), "{map}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_round_trips_a_sparse_image_over_several_connections() {
    if !tool_available("nbdcopy") {
        return;
    }
    let (srv, vol) = serve_default().await;
    let url = format!("nbd://{}", srv.addr);
    let dir = tempfile::tempdir().unwrap();
    let (src, back) = (dir.path().join("src.img"), dir.path().join("back.img"));
    // Data, a hole, more data: nbdcopy zeroes or skips the hole and writes the rest.
    let mut image = vec![0u8; SIZE as usize];
    image[..1 << 20].copy_from_slice(&pattern(1 << 20, 1));
    image[2 << 20..3 << 20].copy_from_slice(&pattern(1 << 20, 2));
    std::fs::write(&src, &image).unwrap();

    // Several connections (the server offers multi-conn) and many requests in flight.
    run_tool(
        "nbdcopy",
        &[
            "--connections=4",
            "--requests=32",
            src.to_str().unwrap(),
            &url,
        ],
    )
    .await;
    assert!(
        vol.0.data.lock().unwrap().0 == image,
        "the export holds the image"
    );
    run_tool(
        "nbdcopy",
        &["--connections=4", &url, back.to_str().unwrap()],
    )
    .await;
    assert!(
        std::fs::read(&back).unwrap() == image,
        "the image reads back"
    );
}

// ---- Exports opened on demand ------------------------------------------------------------

/// Exports as a volume driver has them: `vol0` opens (counting opens and the leases held),
/// `held` is refused by policy, anything else does not exist. No default export.
struct OnDemand {
    volume: MemVolume,
    opens: AtomicUsize,
    leases: Arc<AtomicUsize>,
}

/// Gives its count back when the connection holding it ends.
struct CountedLease(Arc<AtomicUsize>);

impl Drop for CountedLease {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl OnDemand {
    fn check(name: &str) -> Result<(), volume::nbd::ExportError> {
        match name {
            "vol0" => Ok(()),
            "held" => Err(volume::nbd::ExportError::Refused(
                "held by host-x; move it first".into(),
            )),
            _ => Err(volume::nbd::ExportError::Unavailable(format!(
                "no volume {name}"
            ))),
        }
    }
}

impl volume::nbd::Exports for OnDemand {
    fn default_name(&self) -> Option<String> {
        None
    }

    fn list<'a>(
        &'a self,
        _peer: &'a volume::nbd::Peer,
    ) -> futures::future::BoxFuture<'a, Result<Vec<volume::nbd::Listed>, volume::nbd::ExportError>>
    {
        Box::pin(async {
            Ok(vec![volume::nbd::Listed {
                name: "vol0".into(),
                description: "the only one".into(),
            }])
        })
    }

    fn describe<'a>(
        &'a self,
        _peer: &'a volume::nbd::Peer,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<volume::nbd::Described, volume::nbd::ExportError>>
    {
        Box::pin(async move {
            Self::check(name)?;
            Ok(volume::nbd::Described {
                name: name.into(),
                description: "the only one".into(),
                size_bytes: SIZE,
                payload_max_bytes: MAX_IO,
            })
        })
    }

    fn open<'a>(
        &'a self,
        _peer: &'a volume::nbd::Peer,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<volume::nbd::Opened, volume::nbd::ExportError>> {
        Box::pin(async move {
            Self::check(name)?;
            self.opens.fetch_add(1, Ordering::SeqCst);
            self.leases.fetch_add(1, Ordering::SeqCst);
            Ok(volume::nbd::Opened {
                export: volume::nbd::Described {
                    name: name.into(),
                    description: "the only one".into(),
                    size_bytes: SIZE,
                    payload_max_bytes: MAX_IO,
                },
                volume: Arc::new(self.volume.clone()),
                lease: Some(Box::new(CountedLease(Arc::clone(&self.leases)))),
            })
        })
    }
}

#[tokio::test]
async fn exports_opened_on_demand_hold_a_lease_per_connection_and_refusals_say_why() {
    let exports = Arc::new(OnDemand {
        volume: MemVolume::new("vol0", true),
        opens: AtomicUsize::new(0),
        leases: Arc::new(AtomicUsize::new(0)),
    });
    let server = NbdServer::with_exports(
        Arc::clone(&exports) as Arc<dyn volume::nbd::Exports>,
        NbdConfig::default(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = watch::channel(false);
    tokio::spawn(Arc::new(server).serve_tcp(listener, stopped));

    let mut c = Client::tcp(addr).await;
    let list = c.option(NBD_OPT_LIST, &[]).await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].kind, NBD_REP_SERVER);
    // INFO describes without opening; there is no default export to describe.
    let info = c.option(NBD_OPT_INFO, &info_request("vol0", &[])).await;
    assert_eq!(info.last().unwrap().kind, NBD_REP_ACK);
    assert_eq!(
        c.option(NBD_OPT_INFO, &info_request("", &[])).await[0].kind,
        NBD_REP_ERR_UNKNOWN
    );
    assert_eq!(exports.opens.load(Ordering::SeqCst), 0);
    // A refusal by policy carries the reason.
    let held = c.option(NBD_OPT_GO, &info_request("held", &[])).await;
    assert_eq!(held[0].kind, NBD_REP_ERR_POLICY);
    assert_eq!(held[0].data, b"held by host-x; move it first");
    assert_eq!(
        c.option(NBD_OPT_GO, &info_request("other", &[])).await[0].kind,
        NBD_REP_ERR_UNKNOWN
    );

    // Two connections, two leases; each is given back when its connection ends.
    let (size, _) = c.go("vol0").await;
    assert_eq!(size, SIZE);
    let mut d = Client::tcp(addr).await;
    d.go("vol0").await;
    assert_eq!(exports.leases.load(Ordering::SeqCst), 2);
    assert_eq!(c.write(0, b"lease").await, 0);
    assert_eq!(d.read(0, 5).await.unwrap(), b"lease");
    c.send(0, NBD_CMD_DISC, 1, 0, 0, &[]).await;
    c.expect_closed().await;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while exports.leases.load(Ordering::SeqCst) != 1 {
        assert!(Instant::now() < deadline, "the lease was not given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(d);
    while exports.leases.load(Ordering::SeqCst) != 0 {
        assert!(Instant::now() < deadline, "the lease was not given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // EXPORT_NAME has no error reply: a refused export ends the connection.
    let mut e = Client::tcp(addr).await;
    e.send_option(NBD_OPT_EXPORT_NAME, b"held").await;
    e.expect_closed().await;
    assert_eq!(exports.opens.load(Ordering::SeqCst), 2);
}
