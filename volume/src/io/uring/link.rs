//! What callers hand to the engine: requests with the oneshot their answer goes to, and the
//! counters the engine publishes.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::FileSlot;

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
