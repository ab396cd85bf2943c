//! The engine's threads: a fixed team that runs one parallel loop at a time, the calling
//! thread taking tasks beside the team's workers.
//!
//! A forward pass is a chain of short parallel steps (a GEMM, a LayerNorm, a quantization),
//! each tens to hundreds of microseconds at a short batch. A worker that sleeps between them
//! must be woken by the kernel, and on a virtual machine waking an idle vCPU took 100–200 µs
//! here: as long as the step itself, so the second thread came too late to help
//! (BENCHMARKS.md). So a worker spins for a while after its last task before it sleeps, the
//! way OpenMP runtimes and ONNX Runtime's pool do, and the thread that starts a loop works on
//! it at once instead of waiting for a worker to wake.
//!
//! One loop at a time: a loop started while the team is busy (from another thread, or from
//! inside a task) runs on its caller alone, so nothing ever waits for a worker that is not
//! there.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a worker spins for the next loop after its last task, by default: longer than
/// any gap between the steps of a forward pass, short against a pause between batches.
pub const SPIN_DEFAULT: Duration = Duration::from_millis(2);

/// How a team's threads are made.
pub struct TeamBuilder {
    threads: usize,
    spin: Duration,
    name: String,
    on_start: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl TeamBuilder {
    /// `threads` in all, counting the thread that starts a loop (at least 1).
    pub fn new(threads: usize) -> TeamBuilder {
        TeamBuilder {
            threads: threads.max(1),
            spin: SPIN_DEFAULT,
            name: "infer".into(),
            on_start: None,
        }
    }

    pub fn spin(self, spin: Duration) -> TeamBuilder {
        TeamBuilder { spin, ..self }
    }

    /// Threads are named `NAME-I`.
    pub fn name(self, name: &str) -> TeamBuilder {
        TeamBuilder {
            name: name.into(),
            ..self
        }
    }

    /// Runs on every thread the team starts, before its first task.
    pub fn on_start(self, f: impl Fn() + Send + Sync + 'static) -> TeamBuilder {
        TeamBuilder {
            on_start: Some(Arc::new(f)),
            ..self
        }
    }

    pub fn build(self) -> std::io::Result<Team> {
        let shared = Arc::new(Shared {
            threads: self.threads,
            spin: self.spin,
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            dispatch: Mutex::new(()),
            stop: AtomicBool::new(false),
        });
        let mut workers = Vec::with_capacity(self.threads - 1);
        for i in 1..self.threads {
            let (mine, on_start) = (Arc::clone(&shared), self.on_start.clone());
            let handle = std::thread::Builder::new()
                .name(format!("{}-{i}", self.name))
                .spawn(move || {
                    if let Some(f) = on_start {
                        f();
                    }
                    mine.work();
                });
            match handle {
                Ok(h) => workers.push(h),
                Err(e) => {
                    shared.shut_down(&mut workers);
                    return Err(e);
                }
            }
        }
        Ok(Team { shared, workers })
    }
}

/// A team of threads for parallel loops (see the module's text). Dropping it ends its workers.
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Team {
    pub fn new(threads: usize) -> std::io::Result<Team> {
        TeamBuilder::new(threads).build()
    }

    /// Threads in all, the caller counted.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `f` on the calling thread with this team as the current one: the parallel loops
    /// of this module inside `f` use it.
    pub fn install<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Arc<Team>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| *c.borrow_mut() = self.0.take());
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(Arc::clone(self))));
        f()
    }

    /// CPU time the team's workers have used, in ns (the threads that start loops count
    /// their own).
    pub fn workers_cpu_ns(&self) -> u64 {
        use std::os::unix::thread::JoinHandleExt;
        self.workers
            .iter()
            .map(|w| {
                let mut clock: libc::clockid_t = 0;
                // SAFETY: the thread is alive until the team drops (its handle is joined only
                // then); `clock` is a valid out-parameter.
                if unsafe { libc::pthread_getcpuclockid(w.as_pthread_t(), &mut clock) } != 0 {
                    return 0;
                }
                clock_ns(clock)
            })
            .sum()
    }

    /// Runs `f(i)` for every `i < tasks`, on this team's threads and the caller's.
    pub fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let inline = || (0..tasks).for_each(f);
        if tasks <= 1 || self.shared.threads == 1 || IN_TASK.get() {
            return inline();
        }
        let Ok(_one_at_a_time) = self.shared.dispatch.try_lock() else {
            return inline();
        };
        let job = Job {
            f,
            tasks,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
        };
        let shared = &self.shared;
        shared
            .job
            .store((&raw const job).cast::<Job<'static>>().cast_mut(), Release);
        shared.state.fetch_add(1, SeqCst); // odd: open
        if shared.sleepers.load(SeqCst) > 0 {
            let _guard = shared.sleep.lock().unwrap_or_else(PoisonError::into_inner);
            shared.wake.notify_all();
        }
        job.run();
        while job.done.load(Acquire) < tasks {
            std::hint::spin_loop();
        }
        shared.state.fetch_add(1, SeqCst); // even: closed
        // A worker that entered before the close may still hold a reference to `job`.
        while shared.active.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        if let Some(payload) = job
            .panic
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
        {
            resume_unwind(payload);
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        let mut workers = std::mem::take(&mut self.workers);
        self.shared.shut_down(&mut workers);
    }
}

thread_local! {
    /// The team `Team::install` made current on this thread.
    static CURRENT: RefCell<Option<Arc<Team>>> = const { RefCell::new(None) };
    /// Whether this thread is running a task of a loop (a loop inside runs inline).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// The team loops on this thread use: the installed one, else one per process with a thread
/// per CPU.
pub fn current() -> Arc<Team> {
    static GLOBAL: OnceLock<Arc<Team>> = OnceLock::new();
    CURRENT.with(|c| c.borrow().clone()).unwrap_or_else(|| {
        Arc::clone(GLOBAL.get_or_init(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            Arc::new(Team::new(cpus).expect("start the inference threads"))
        }))
    })
}

/// Threads a loop started here would use: 1 inside a task (a nested loop runs inline).
pub fn threads() -> usize {
    if IN_TASK.get() {
        1
    } else {
        current().threads()
    }
}

/// `f(i)` for every `i < tasks`, in parallel on the current team.
pub fn for_each(tasks: usize, f: impl Fn(usize) + Sync) {
    if tasks <= 1 || IN_TASK.get() {
        return (0..tasks).for_each(f);
    }
    current().for_each(tasks, &f);
}

/// `f(i, chunk)` for each `size`-long chunk of `data` (the last may be shorter), in parallel.
pub fn chunks_mut<T: Send>(data: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let size = size.max(1);
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    for_each(len.div_ceil(size), |i| {
        let start = i * size;
        let end = (start + size).min(len);
        let base = &base;
        // SAFETY: chunk i is `start..end` of `data`, inside it, and no other task touches it;
        // `data` stays borrowed mutably until every task has returned.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), end - start) };
        f(i, chunk);
    });
}

/// `[f(0), …, f(n - 1)]`, computed in parallel.
pub fn map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    chunks_mut(&mut out, 1, |i, slot| slot[0] = Some(f(i)));
    out.into_iter()
        .map(|r| r.expect("every task wrote its slot"))
        .collect()
}

/// `[f(0, chunk 0), f(1, chunk 1), …]` over the `size`-long chunks of `data`, in parallel.
pub fn map_chunks_mut<T: Send, R: Send>(
    data: &mut [T],
    size: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync,
) -> Vec<R> {
    let size = size.max(1);
    let mut out: Vec<Option<R>> = (0..data.len().div_ceil(size)).map(|_| None).collect();
    let slots = SendPtr(out.as_mut_ptr());
    chunks_mut(data, size, |i, chunk| {
        let r = f(i, chunk);
        let slots = &slots;
        // SAFETY: slot i is inside `out` (one per chunk) and only task i writes it.
        unsafe { *slots.0.add(i) = Some(r) };
    });
    out.into_iter()
        .map(|r| r.expect("every task wrote its slot"))
        .collect()
}

/// A pointer that tasks share, each using a disjoint part of what it points at.
struct SendPtr<T>(*mut T);
// SAFETY: tasks touch disjoint elements (see `chunks_mut`), and T: Send.
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// One parallel loop: its body, and the count of tasks handed out and finished.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job<'_> {
    /// Takes tasks until none are left.
    fn run(&self) {
        IN_TASK.set(true);
        loop {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= self.tasks {
                break;
            }
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (self.f)(i))) {
                let mut slot = self.panic.lock().unwrap_or_else(PoisonError::into_inner);
                slot.get_or_insert(payload);
            }
            self.done.fetch_add(1, Release);
        }
        IN_TASK.set(false);
    }
}

struct Shared {
    threads: usize,
    spin: Duration,
    /// Bumped when a loop opens (odd) and when it closes (even).
    state: AtomicU64,
    /// The open loop's job, on its caller's stack.
    job: AtomicPtr<Job<'static>>,
    /// Workers inside the open loop (see `work`).
    active: AtomicUsize,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    /// Held by the thread whose loop is open.
    dispatch: Mutex<()>,
    stop: AtomicBool,
}

impl Shared {
    /// A worker's life: wait for a loop to open, take its tasks, and again.
    fn work(&self) {
        let mut seen = self.state.load(SeqCst);
        loop {
            let state = self.wait_change(seen);
            if self.stop.load(SeqCst) {
                return;
            }
            seen = state;
            if state.is_multiple_of(2) {
                continue;
            }
            // Enter, then check the loop is still open: the caller closes it and then waits
            // for `active` to drain, so either it sees this worker or this worker sees the
            // close (both sides use SeqCst), and a closed loop's job is never touched.
            self.active.fetch_add(1, SeqCst);
            if self.state.load(SeqCst) == state {
                // SAFETY: the loop is open, so its job lives until `active` drains.
                let job = unsafe { &*self.job.load(Acquire) };
                job.run();
            }
            self.active.fetch_sub(1, SeqCst);
        }
    }

    /// Spins until `state` moves from `seen`, then sleeps until it does; its new value.
    fn wait_change(&self, seen: u64) -> u64 {
        let until = Instant::now() + self.spin;
        let mut spins = 0u32;
        loop {
            let state = self.state.load(SeqCst);
            if state != seen || self.stop.load(Relaxed) {
                return state;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && Instant::now() >= until {
                break;
            }
        }
        let mut guard = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
        self.sleepers.fetch_add(1, SeqCst);
        let state = loop {
            let state = self.state.load(SeqCst);
            if state != seen || self.stop.load(SeqCst) {
                break state;
            }
            guard = self
                .wake
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        };
        self.sleepers.fetch_sub(1, SeqCst);
        state
    }

    fn shut_down(&self, workers: &mut Vec<JoinHandle<()>>) {
        self.stop.store(true, SeqCst);
        {
            let _guard = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
            self.wake.notify_all();
        }
        for w in workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The CPU clock `clock` in ns (0 if it cannot be read).
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// CPU time the calling thread has used, in ns.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

#[cfg(test)]
#[path = "team_tests.rs"]
mod tests;
