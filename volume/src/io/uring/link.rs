//! The link between callers and an engine thread: the messages they send, the doorbell
//! that wakes the engine, and the counters it publishes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::FileSlot;

/// A message from callers to the engine.
pub(super) enum Msg {
    /// Register `fd` in a free slot of the file table; the descriptor stays open (owned by the
    /// caller) until the answer arrives.
    Open {
        fd: RawFd,
        reply: mpsc::SyncSender<io::Result<u32>>,
    },
    /// Clear `slot`: its file has been dropped and no request refers to it any more.
    Close { slot: u32 },
    /// One IO request.
    Io(Request),
    /// The last handle is gone: finish what was accepted, then exit.
    Shutdown,
}

/// One IO request, with everything it needs to be answered.
pub(super) struct Request {
    pub(super) file: Arc<FileSlot>,
    pub(super) direct: bool,
    pub(super) kind: RequestKind,
    /// Held, never read: dropped with the answer, which makes room for the next request.
    pub(super) _permit: OwnedSemaphorePermit,
}

/// What a request asks for, with the oneshot its answer goes to.
pub(super) enum RequestKind {
    Read {
        offset: u64,
        len: usize,
        reply: oneshot::Sender<io::Result<Bytes>>,
    },
    Write {
        offset: u64,
        data: Bytes,
        durable: bool,
        reply: oneshot::Sender<io::Result<()>>,
    },
    Sync {
        reply: oneshot::Sender<io::Result<()>>,
    },
    Fallocate {
        mode: i32,
        offset: u64,
        len: u64,
        reply: oneshot::Sender<io::Result<()>>,
    },
}

/// Wakes the engine when a message is waiting: an eventfd whose read the engine keeps armed
/// in the ring, so new work and completions wake the same `io_uring_enter`.
pub(super) struct Doorbell {
    pub(super) fd: OwnedFd,
    /// Set by the first caller to ring since the engine last answered the doorbell; later
    /// callers skip the `write` syscall because a wake-up is already on its way.
    pub(super) rung: AtomicBool,
}

impl Doorbell {
    pub(super) fn new() -> io::Result<Doorbell> {
        // SAFETY: plain syscall; a non-negative result is a new descriptor we now own.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Doorbell {
            fd,
            rung: AtomicBool::new(false),
        })
    }

    /// Wakes the engine. Call after the message is in the channel: the engine clears `rung`
    /// before it drains the channel, so either it sees the message in that drain or this
    /// call sees `rung` clear and writes.
    pub(super) fn ring(&self) {
        if !self.rung.swap(true, Ordering::SeqCst) {
            self.write();
        }
    }

    /// Writes to the eventfd unconditionally.
    pub(super) fn write(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to a live eventfd. The only possible
        // failure (counter overflow) still leaves the eventfd readable, which is all we need.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

/// Counters the engine keeps and callers read (`UringDisk::stats`).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) pool_buffer_ios: AtomicU64,
    pub(super) own_buffer_ios: AtomicU64,
    pub(super) resubmits: AtomicU64,
    pub(super) requests_answered: AtomicU64,
}

impl Counters {
    pub(super) fn bump(counter: &AtomicU64) {
        // Statistics only: no ordering with anything else is needed.
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What callers share with a running engine.
pub(super) struct EngineLink {
    pub(super) tx: mpsc::Sender<Msg>,
    pub(super) doorbell: Arc<Doorbell>,
    pub(super) counters: Arc<Counters>,
}
