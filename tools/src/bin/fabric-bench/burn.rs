//! A control load for `fabric-bench --qos`: pure computation, no IO and no locks shared with
//! the cluster, taking a chosen number of cores on average. The client's p99 beside it says
//! what CPU work of that size costs a client on this host whatever the work is, so the
//! governed rebuild's figure can be read against it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One duty cycle: busy for a share of it, asleep for the rest.
const PERIOD: Duration = Duration::from_millis(4);

/// How the burner's threads are scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Priority {
    /// As any other thread (`SCHED_OTHER`, nice 0).
    Normal,
    /// Only when no other thread wants the CPU (`SCHED_IDLE`).
    Idle,
}

/// Burner threads, one per core, running until [`Burner::finish`] (or dropped).
pub(crate) struct Burner {
    stop: Arc<AtomicBool>,
    started: Instant,
    /// Each returns the CPU time its thread got, in seconds.
    threads: Vec<JoinHandle<f64>>,
}

impl Burner {
    /// Starts threads that keep `cores` cores busy on average (spread over every core).
    pub fn start(cores: f64, priority: Priority) -> anyhow::Result<Burner> {
        let n = std::thread::available_parallelism()?.get();
        let duty = (cores / n as f64).clamp(0.0, 1.0);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(n);
        for _ in 0..n {
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                if priority == Priority::Idle {
                    let param = libc::sched_param { sched_priority: 0 };
                    // SAFETY: sets this thread's own policy from a valid parameter.
                    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
                    assert_eq!(rc, 0, "SCHED_IDLE: {}", std::io::Error::last_os_error());
                }
                spin(&stop, duty);
                thread_cpu_seconds()
            }));
        }
        Ok(Burner {
            stop,
            started: Instant::now(),
            threads,
        })
    }

    /// Stops the threads; returns the cores they got on average. At `SCHED_IDLE` this is
    /// what the other threads of the host left, which may be less than asked for.
    pub fn finish(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let seconds: f64 = self.threads.drain(..).filter_map(|t| t.join().ok()).sum();
        seconds / self.started.elapsed().as_secs_f64()
    }
}

/// The CPU time the calling thread has used, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the calling thread's CPU clock into a valid timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID");
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Busy for `duty` of every period until `stop`.
fn spin(stop: &AtomicBool, duty: f64) {
    let busy = PERIOD.mul_f64(duty);
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        while start.elapsed() < busy {
            for _ in 0..256 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
        }
        std::hint::black_box(x);
        if let Some(rest) = PERIOD.checked_sub(start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().ok();
        }
    }
}
