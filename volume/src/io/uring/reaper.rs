//! What callers of one disk share: the engine behind its lock, and the reaper task that hands
//! completions back.
//!
//! The reaper lives on the tokio runtime the disk was created in. The kernel signals an
//! eventfd registered with the ring whenever it posts a completion; the runtime's reactor
//! watches that eventfd beside the sockets, and the reaper answers the finished requests on
//! whichever worker the reactor woke. A depth-1 IO therefore never changes threads: the
//! caller's worker submits in place, sleeps in the reactor, and is woken by the completion
//! itself. A dedicated ring thread costs two cross-thread wake-ups per IO instead (doorbell
//! in, answer out), which on a virtual machine is a third of a 4 KiB write's latency.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::UringConfig;
use super::engine::Engine;
use super::link::{Counters, Request};

/// The engine of one disk and how to reach it.
pub(super) struct Shared {
    name: String,
    engine: Mutex<Engine>,
    pub(super) counters: Arc<Counters>,
    /// False once the reaper is gone (its runtime shut down): nothing would answer a new
    /// request, so it is refused instead.
    reaper_running: AtomicBool,
    /// Told when the last handle is gone; the reaper then exits.
    stop: Notify,
}

impl Shared {
    /// Creates the ring of disk `name` and spawns its reaper on the current tokio runtime.
    pub(super) fn start(name: &str, config: UringConfig) -> io::Result<Arc<Shared>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            io::Error::other(format!(
                "{name}: an io_uring disk is driven by a tokio runtime; create it inside one"
            ))
        })?;
        let wake = eventfd()?;
        let counters = Arc::new(Counters::default());
        let engine = Engine::new(
            name.to_owned(),
            config,
            wake.as_raw_fd(),
            Arc::clone(&counters),
        )?;
        let _entered = runtime.enter();
        // SAFETY: the AsyncFd owns the `OwnedFd`, which stays open and unchanged until the
        // AsyncFd (and the descriptor with it) is dropped.
        let wake = unsafe { AsyncFd::register_with_interest(wake, Interest::READABLE) }?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            engine: Mutex::new(engine),
            counters,
            reaper_running: AtomicBool::new(true),
            stop: Notify::new(),
        });
        runtime.spawn(reap(Arc::clone(&shared), wake));
        tracing::debug!(disk = %name, "io_uring engine started");
        Ok(shared)
    }

    /// Runs `work` on the engine under its lock. Files that answered requests let go of are
    /// dropped after the lock is released, because dropping the last reference to a file
    /// clears its slot, which takes the lock.
    pub(super) fn with_engine<R>(&self, work: impl FnOnce(&mut Engine) -> R) -> R {
        let (result, retired) = {
            let mut engine = self
                .engine
                .lock()
                .expect("io_uring engine lock poisoned by an earlier panic");
            let result = work(&mut engine);
            (result, engine.take_retired())
        };
        drop(retired);
        result
    }

    /// Starts `request` from the caller's thread.
    pub(super) fn accept(&self, request: Request) -> io::Result<()> {
        if !self.reaper_running.load(Ordering::Acquire) {
            return Err(super::engine_stopped());
        }
        self.with_engine(|engine| engine.accept(request));
        Ok(())
    }

    /// Lets the reaper exit. Called when the last handle is dropped, when no request can be
    /// in flight any more (each holds a handle through its file).
    pub(super) fn stop(&self) {
        self.stop.notify_one();
    }
}

/// Marks the reaper gone when its task ends, however it ends.
struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.reaper_running.store(false, Ordering::Release);
    }
}

async fn reap(shared: Arc<Shared>, wake: AsyncFd<OwnedFd>) {
    let running = Running(shared);
    let shared = &running.0;
    loop {
        tokio::select! {
            ready = wake.readable() => match ready {
                Ok(mut guard) => {
                    // Reset the counter before reaping: a completion posted after this read
                    // signals the eventfd again, so none is left behind unnoticed.
                    if !drain(guard.get_inner()) {
                        guard.clear_ready();
                    }
                    shared.with_engine(Engine::reap);
                }
                Err(error) => {
                    tracing::error!(disk = %shared.name, %error, "io_uring completion eventfd failed; the disk stops");
                    return;
                }
            },
            () = shared.stop.notified() => {
                if shared.with_engine(|engine| engine.is_idle()) {
                    break;
                }
                // A request in the ring holds a handle, so this is a bug; keep reaping so the
                // kernel never writes into memory that was given back.
                tracing::error!(disk = %shared.name, "io_uring engine told to stop with requests in flight");
            }
        }
    }
    tracing::debug!(disk = %shared.name, "io_uring engine stopped");
}

/// A non-blocking eventfd for the ring to signal.
fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new descriptor we now own.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Reads (and so resets) the eventfd's counter; false when it was already zero.
fn drain(fd: &OwnedFd) -> bool {
    let mut counter: u64 = 0;
    // SAFETY: reads 8 bytes into a live local from a live eventfd.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut counter).cast(), 8) };
    n == 8
}
