//! The ring of one disk: owns the ring, the registered file table and the buffer pool, turns
//! requests into SQEs and completions into answers.
//!
//! The engine has no thread of its own. Whoever holds its lock drives it: a caller starts its
//! request and submits it at once (`accept`), and the disk's reaper task, woken through the
//! eventfd registered with the ring, hands completions back (`reap`). A short read or write
//! is resubmitted for its remainder; a request is answered exactly once, when it is done or
//! has failed.
//!
//! Memory handed to the kernel (pool buffers, private aligned buffers, the caller's `Bytes`)
//! is owned by the engine until the completion of the request that uses it has been reaped.
//! That is the invariant behind every `unsafe` push below.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, RawFd};
use std::sync::Arc;

use bytes::Bytes;
use io_uring::{IoUring, opcode, squeue, types};

use super::FileSlot;
use super::UringConfig;
use super::link::{Counters, Request, RequestKind};
use super::pool::{BufferIndex, BufferPool};
use crate::io::portable::aligned::{self, AlignedBuf};
use crate::io::portable::sys::{self, AfterShortRead, STALLED_RETRIES_MAX};

/// Where the bytes of a read or write live while the kernel works on them.
enum OpBuf {
    /// A registered pool buffer (READ_FIXED / WRITE_FIXED).
    Pool(BufferIndex),
    /// A private aligned buffer (plain READ / WRITE).
    Heap(AlignedBuf),
    /// The caller's own `Bytes`, already suitable for the file (write only).
    Caller,
}

/// A request in the ring.
struct Op {
    request: Request,
    /// Bytes of the read or write done so far.
    done: usize,
    buf: Option<OpBuf>,
    /// Consecutive completions that made no progress.
    stalled: u32,
}

/// What a completion leads to.
enum Step {
    Resubmit,
    Finish(io::Result<()>),
    /// The completion belongs to no request; there is nothing to do.
    Ignore,
}

pub(super) struct Engine {
    name: String,
    // Field order matters: the ring is dropped before the memory it may still reference.
    ring: IoUring,
    pool: BufferPool,
    /// Requests in the ring, indexed by `user_data`; `queue_depth_max` entries.
    ops: Vec<Option<Op>>,
    free_ops: Vec<usize>,
    /// Requests accepted but not yet in the ring.
    backlog: VecDeque<Request>,
    free_slots: Vec<u32>,
    files_open_max: u32,
    completions: Vec<(u64, i32)>,
    /// Files let go of by answered requests, dropped by the lock holder once the lock is
    /// released: the last drop of a file clears its slot, which takes the lock again.
    retired: Vec<Arc<FileSlot>>,
    counters: Arc<Counters>,
}

impl Engine {
    /// Sets up the ring, its file table and its buffer pool; `wake` is the eventfd the
    /// kernel signals on every completion.
    pub(super) fn new(
        name: String,
        config: UringConfig,
        wake: RawFd,
        counters: Arc<Counters>,
    ) -> io::Result<Engine> {
        let entries = config.queue_depth_max.next_power_of_two();
        let ring = IoUring::new(entries)?;
        let submitter = ring.submitter();
        submitter.register_eventfd(wake)?;
        if submitter
            .register_files_sparse(config.files_open_max)
            .is_err()
        {
            // Kernels before 5.19 have no sparse registration; -1 entries mean the same.
            let empty = vec![-1; config.files_open_max as usize];
            submitter.register_files(&empty)?;
        }
        let pool = match BufferPool::register(
            &ring,
            config.pool_buffer_count,
            config.pool_buffer_size_bytes,
        ) {
            Ok(pool) => pool,
            Err(error) => {
                tracing::warn!(disk = %name, %error, "buffer pool not registered; every IO uses its own buffer");
                BufferPool::empty()
            }
        };
        let depth = config.queue_depth_max as usize;
        Ok(Engine {
            name,
            ring,
            pool,
            ops: (0..depth).map(|_| None).collect(),
            free_ops: (0..depth).rev().collect(),
            backlog: VecDeque::new(),
            free_slots: (0..config.files_open_max).rev().collect(),
            files_open_max: config.files_open_max,
            completions: Vec::with_capacity(2 * entries as usize),
            retired: Vec::new(),
            counters,
        })
    }

    /// Takes `request` and starts it if the ring has room; queued otherwise, and started
    /// when a completion makes room.
    pub(super) fn accept(&mut self, request: Request) {
        self.backlog.push_back(request);
        self.start_backlog();
        self.submit();
    }

    /// True when no request is queued or in the ring.
    pub(super) fn is_idle(&self) -> bool {
        self.backlog.is_empty() && self.free_ops.len() == self.ops.len()
    }

    /// The files answered requests let go of; see `retired`.
    pub(super) fn take_retired(&mut self) -> Vec<Arc<FileSlot>> {
        std::mem::take(&mut self.retired)
    }

    pub(super) fn register_file(&mut self, fd: RawFd) -> io::Result<u32> {
        let Some(slot) = self.free_slots.pop() else {
            return Err(io::Error::other(format!(
                "{}: files_open_max of {} files reached",
                self.name, self.files_open_max
            )));
        };
        match self.ring.submitter().register_files_update(slot, &[fd]) {
            Ok(_) => Ok(slot),
            Err(error) => {
                self.free_slots.push(slot);
                Err(error)
            }
        }
    }

    pub(super) fn unregister_file(&mut self, slot: u32) {
        assert!(slot < self.files_open_max);
        if let Err(error) = self.ring.submitter().register_files_update(slot, &[-1]) {
            // The slot still holds the old file; the next open replaces it, so reuse is safe.
            tracing::warn!(disk = %self.name, slot, %error, "could not clear a registered file slot");
        }
        self.free_slots.push(slot);
    }

    fn start_backlog(&mut self) {
        while !self.backlog.is_empty() {
            let Some(index) = self.free_ops.pop() else {
                return;
            };
            let Some(request) = self.backlog.pop_front() else {
                return;
            };
            assert!(self.ops[index].is_none());
            self.ops[index] = Some(Op {
                request,
                done: 0,
                buf: None,
                stalled: 0,
            });
            self.push_op(index);
        }
    }

    /// Hands what is queued in the submission ring to the kernel, without waiting; no syscall
    /// when nothing is queued (a request that went to the backlog, a reap that started nothing).
    fn submit(&mut self) {
        if self.ring.submission().is_empty() {
            return;
        }
        match self.ring.submit() {
            Ok(_) => {}
            // The completion ring is full or the kernel is short of memory: the entries stay
            // queued and go with the next submission, after the reaper has made room.
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) => {}
            Err(error) => tracing::error!(disk = %self.name, %error, "io_uring_enter failed"),
        }
    }

    /// Answers every request whose completion has arrived, then starts queued requests in
    /// the room that made.
    pub(super) fn reap(&mut self) {
        let mut completions = std::mem::take(&mut self.completions);
        completions.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
        for &(user_data, result) in &completions {
            self.on_completion(user_data as usize, result);
        }
        completions.clear();
        self.completions = completions;
        self.start_backlog();
        self.submit();
    }

    fn on_completion(&mut self, index: usize, result: i32) {
        match self.advance(index, result) {
            Step::Resubmit => {
                Counters::bump(&self.counters.resubmits);
                self.push_op(index);
            }
            Step::Finish(outcome) => self.finish(index, outcome),
            Step::Ignore => {}
        }
    }

    /// Accounts for one completion of op `index`.
    fn advance(&mut self, index: usize, result: i32) -> Step {
        let Some(op) = self.ops.get_mut(index).and_then(Option::as_mut) else {
            // Not a request of ours: a kernel or engine bug, and nothing to answer.
            tracing::error!(disk = %self.name, index, "completion for an unknown request");
            return Step::Ignore;
        };
        if result < 0 {
            let errno = -result;
            if matches!(errno, libc::EAGAIN | libc::EINTR) && op.stalled < STALLED_RETRIES_MAX {
                op.stalled += 1;
                return Step::Resubmit;
            }
            return Step::Finish(Err(io::Error::from_raw_os_error(errno)));
        }
        let transferred = result as usize;
        match &op.request.kind {
            RequestKind::Read { offset, len, .. } => {
                if transferred == 0 {
                    // End of file: the rest reads as zeros (filled in `finish`).
                    return Step::Finish(Ok(()));
                }
                let reached = op.done + transferred;
                if reached > *len {
                    return Step::Finish(Err(io::Error::other(format!(
                        "kernel read {reached} bytes of {len}"
                    ))));
                }
                if reached == *len {
                    op.done = reached;
                    return Step::Finish(Ok(()));
                }
                let fd = op.request.file.fd.as_fd();
                match sys::after_short_read(op.request.direct, *offset, reached, || {
                    sys::file_len(fd)
                }) {
                    Err(error) => Step::Finish(Err(error)),
                    Ok(AfterShortRead::EndOfFile) => {
                        op.done = reached;
                        Step::Finish(Ok(()))
                    }
                    Ok(AfterShortRead::ResumeAt(resume)) => op.resume(resume),
                }
            }
            RequestKind::Write { offset, data, .. } => {
                if transferred == 0 {
                    let at = offset + op.done as u64;
                    return Step::Finish(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("write at {at} accepted no bytes"),
                    )));
                }
                let reached = op.done + transferred;
                if reached > data.len() {
                    return Step::Finish(Err(io::Error::other(format!(
                        "kernel wrote {reached} bytes of {}",
                        data.len()
                    ))));
                }
                if reached == data.len() {
                    op.done = reached;
                    return Step::Finish(Ok(()));
                }
                op.resume(sys::resume_short_write(op.request.direct, reached))
            }
            RequestKind::Sync { .. } | RequestKind::Fallocate { .. } => Step::Finish(Ok(())),
        }
    }

    /// Answers op `index` and frees what it held.
    fn finish(&mut self, index: usize, outcome: io::Result<()>) {
        let Some(op) = self.ops.get_mut(index).and_then(Option::take) else {
            return;
        };
        self.free_ops.push(index);
        Counters::bump(&self.counters.requests_answered);
        let Op {
            request, done, buf, ..
        } = op;
        let Request {
            file,
            kind,
            _permit: permit,
            ..
        } = request;
        // Let go of the file and the admission permit before answering: a caller that sees the
        // answer may at once send another request, or drop the file and expect its slot back
        // (which the lock holder gives once it has released the lock).
        self.retired.push(file);
        drop(permit);
        match kind {
            RequestKind::Read { len, reply, .. } => {
                let data = match outcome {
                    Ok(()) => self.read_result(buf, done, len),
                    Err(error) => {
                        self.release(buf);
                        Err(error)
                    }
                };
                let _ = reply.send(data);
            }
            RequestKind::Write { reply, .. }
            | RequestKind::Sync { reply }
            | RequestKind::Fallocate { reply, .. } => {
                self.release(buf);
                let _ = reply.send(outcome);
            }
        }
    }

    fn release(&mut self, buf: Option<OpBuf>) {
        if let Some(OpBuf::Pool(buffer)) = buf {
            self.pool.release(buffer);
        }
    }

    /// The bytes of a finished read: what the kernel filled, then zeros up to `len`.
    fn read_result(&mut self, buf: Option<OpBuf>, done: usize, len: usize) -> io::Result<Bytes> {
        assert!(done <= len);
        match buf {
            Some(OpBuf::Pool(buffer)) => {
                let slice = self.pool.slice_mut(buffer, len);
                slice[done..].fill(0);
                let data = Bytes::copy_from_slice(slice);
                self.pool.release(buffer);
                Ok(data)
            }
            Some(OpBuf::Heap(mut heap)) => {
                assert_eq!(heap.len(), len);
                heap.as_mut_slice()[done..].fill(0);
                Ok(heap.into_bytes())
            }
            Some(OpBuf::Caller) | None => Err(io::Error::other("read finished without a buffer")),
        }
    }

    /// Pushes the SQE for the remainder of op `index`.
    fn push_op(&mut self, index: usize) {
        let entry = self.build_entry(index).user_data(index as u64);
        self.push(entry);
    }

    fn build_entry(&mut self, index: usize) -> squeue::Entry {
        let Engine {
            ops,
            pool,
            counters,
            ..
        } = self;
        let op = ops[index]
            .as_mut()
            .expect("a started request is in the slab");
        let fd = types::Fixed(op.request.file.slot);
        let done = op.done;
        let direct = op.request.direct;
        match &op.request.kind {
            RequestKind::Read { offset, len, .. } => {
                let len = *len;
                let buf = op.buf.get_or_insert_with(|| match pool.take(len) {
                    Some(buffer) => {
                        Counters::bump(&counters.pool_buffer_ios);
                        OpBuf::Pool(buffer)
                    }
                    None => {
                        Counters::bump(&counters.own_buffer_ios);
                        // `read_result` zeroes whatever the kernel does not fill.
                        OpBuf::Heap(AlignedBuf::for_overwrite(len))
                    }
                });
                let remaining = (len - done) as u32;
                let position = offset + done as u64;
                match buf {
                    OpBuf::Pool(buffer) => {
                        // SAFETY (pointer arithmetic): `done < len <= buffer size`.
                        let start = unsafe { pool.ptr(*buffer).add(done) };
                        opcode::ReadFixed::new(fd, start, remaining, buffer.0)
                            .offset(position)
                            .build()
                    }
                    OpBuf::Heap(heap) => {
                        // SAFETY (pointer arithmetic): `done < len == heap.len()`.
                        let start = unsafe { heap.as_mut_ptr().add(done) };
                        opcode::Read::new(fd, start, remaining)
                            .offset(position)
                            .build()
                    }
                    OpBuf::Caller => unreachable!("reads never use the caller's memory"),
                }
            }
            RequestKind::Write {
                offset,
                data,
                durable,
                ..
            } => {
                let buf = op.buf.get_or_insert_with(|| {
                    let Some(buffer) = pool.take(data.len()) else {
                        Counters::bump(&counters.own_buffer_ios);
                        return if !direct || aligned::is_aligned(data) {
                            OpBuf::Caller
                        } else {
                            OpBuf::Heap(AlignedBuf::copy_of(data))
                        };
                    };
                    Counters::bump(&counters.pool_buffer_ios);
                    pool.slice_mut(buffer, data.len()).copy_from_slice(data);
                    OpBuf::Pool(buffer)
                });
                let remaining = (data.len() - done) as u32;
                let position = offset + done as u64;
                let rw_flags = if *durable { libc::RWF_DSYNC } else { 0 };
                match buf {
                    OpBuf::Pool(buffer) => {
                        // SAFETY (pointer arithmetic): `done < data.len() <= buffer size`.
                        let start = unsafe { pool.ptr(*buffer).add(done) };
                        opcode::WriteFixed::new(fd, start, remaining, buffer.0)
                            .offset(position)
                            .rw_flags(rw_flags)
                            .build()
                    }
                    OpBuf::Heap(heap) => {
                        // SAFETY (pointer arithmetic): `done < data.len() == heap.len()`.
                        let start = unsafe { heap.as_ptr().add(done) };
                        opcode::Write::new(fd, start, remaining)
                            .offset(position)
                            .rw_flags(rw_flags)
                            .build()
                    }
                    OpBuf::Caller => {
                        let start = data[done..].as_ptr();
                        opcode::Write::new(fd, start, remaining)
                            .offset(position)
                            .rw_flags(rw_flags)
                            .build()
                    }
                }
            }
            RequestKind::Sync { .. } => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            RequestKind::Fallocate {
                mode, offset, len, ..
            } => opcode::Fallocate::new(fd, *len)
                .offset(*offset)
                .mode(*mode)
                .build(),
        }
    }

    fn push(&mut self, entry: squeue::Entry) {
        // SAFETY: every buffer an entry points to is owned by the engine (pool or op slab) and
        // stays at its address until the entry's completion is reaped.
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            return;
        }
        // The ring has room for every op, so a full queue only means entries are waiting to
        // be handed to the kernel.
        if let Err(error) = self.ring.submit() {
            tracing::warn!(disk = %self.name, %error, "io_uring submit failed");
        }
        // SAFETY: as above.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        assert!(
            pushed.is_ok(),
            "submission queue full although sized for every request"
        );
    }
}

impl Op {
    /// Continues at `resume` bytes into the request, counting attempts that gained nothing.
    fn resume(&mut self, resume: usize) -> Step {
        if resume > self.done {
            self.stalled = 0;
        } else {
            self.stalled += 1;
            if self.stalled > STALLED_RETRIES_MAX {
                return Step::Finish(Err(io::Error::other(format!(
                    "IO made no progress after {STALLED_RETRIES_MAX} retries"
                ))));
            }
        }
        self.done = resume;
        Step::Resubmit
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Only a panic, or a runtime shut down under a live disk, leaves requests in the ring. The kernel may still write into their
        // buffers after the ring is closed, so leak them rather than free memory under it.
        let in_flight: Vec<Op> = self.ops.iter_mut().filter_map(Option::take).collect();
        if !in_flight.is_empty() {
            tracing::error!(disk = %self.name, count = in_flight.len(), "engine stopped with requests in flight");
            std::mem::forget(in_flight);
            // The pool's pages stay pinned for the kernel; freed, they could be handed out
            // again by the allocator while a request still lands in them.
            std::mem::forget(std::mem::replace(&mut self.pool, BufferPool::empty()));
        }
    }
}
