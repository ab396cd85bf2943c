//! The recovery pace of one driver process, judged on what its clients see.
//!
//! Every extent copy a resync makes waits here for its bytes ([`RecoveryPace::take`]), at the
//! rate a governor last set ([`RecoveryPace::set_limit`]; none: copies go at once), and every
//! client read and write of every volume notes its latency ([`RecoveryPace::client_done`]). A
//! governor (`crate::sched::governor`, the same rule the storage nodes apply to their disks)
//! takes the window ([`RecoveryPace::take_window`]) twice a second: the clients' p99 from
//! the driver's side of every hop (the links, the replicas' CPU and disks, the range locks a
//! volume's own resync holds) against their p99 with no recovery, and sets the rate.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::sched::governor::Window;

/// Most client latencies one window keeps (a p99 of more is no better an estimate).
const SAMPLES_MAX: usize = 20_000;
/// The bucket holds this much time at the limit, and at least one extent.
const BURST: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct State {
    /// Bytes per second; `None`: no limit.
    limit: Option<u64>,
    tokens: f64,
    refilled: Instant,
    window_start: Instant,
    latencies_ns: Vec<u64>,
    /// Client IOs started and not finished (or given up).
    client_in_flight: u64,
    client_ios: u64,
    recovery_bytes: u64,
}

/// See the module docs. Shared by every volume of a driver (it lives in the `ReplicaPool`).
#[derive(Debug)]
pub struct RecoveryPace {
    state: Mutex<State>,
    /// Set once a governor takes a window: until then client IO is not timed at all.
    observed: AtomicBool,
}

impl Default for RecoveryPace {
    fn default() -> Self {
        let now = Instant::now();
        RecoveryPace {
            state: Mutex::new(State {
                limit: None,
                tokens: 0.0,
                refilled: now,
                window_start: now,
                latencies_ns: Vec::new(),
                client_in_flight: 0,
                client_ios: 0,
                recovery_bytes: 0,
            }),
            observed: AtomicBool::new(false),
        }
    }
}

impl RecoveryPace {
    /// Sets the rate copies may go at (`None`: no limit).
    pub fn set_limit(&self, limit: Option<u64>) {
        let mut s = self.state.lock().expect("pace");
        if s.limit.is_none() && limit.is_some() {
            // A new limit starts with an empty bucket: what went before was unpaced.
            s.tokens = 0.0;
            s.refilled = Instant::now();
        }
        s.limit = limit.map(|l| l.max(1));
    }

    pub fn limit(&self) -> Option<u64> {
        self.state.lock().expect("pace").limit
    }

    /// Waits until `bytes` of recovery may go, and counts them.
    pub async fn take(&self, bytes: u64) {
        loop {
            let wait = {
                let mut s = self.state.lock().expect("pace");
                let Some(limit) = s.limit else {
                    s.recovery_bytes += bytes;
                    return;
                };
                let now = Instant::now();
                let depth = (limit as f64 * BURST.as_secs_f64()).max(bytes as f64);
                let earned = now.duration_since(s.refilled).as_secs_f64() * limit as f64;
                s.tokens = (s.tokens + earned).min(depth);
                s.refilled = now;
                if s.tokens >= bytes as f64 {
                    s.tokens -= bytes as f64;
                    s.recovery_bytes += bytes;
                    return;
                }
                Duration::from_secs_f64((bytes as f64 - s.tokens) / limit as f64)
            };
            // Looked at again after the wait: the limit may have moved meanwhile.
            tokio::time::sleep(wait.min(BURST)).await;
        }
    }

    /// Whether a governor looks at the client latencies (see [`RecoveryPace::client_io`]).
    pub fn observed(&self) -> bool {
        self.observed.load(Ordering::Relaxed)
    }

    /// A client IO starts: timed, and counted as in flight until the guard goes, while a
    /// governor looks (`None` otherwise: no one would read the time).
    pub fn client_io(&self) -> Option<ClientIo<'_>> {
        if !self.observed() {
            return None;
        }
        self.state.lock().expect("pace").client_in_flight += 1;
        Some(ClientIo {
            pace: self,
            started: Instant::now(),
            done: false,
        })
    }

    /// What the window since the last call saw, and a new window.
    pub fn take_window(&self) -> Window {
        self.observed.store(true, Ordering::Relaxed);
        let mut s = self.state.lock().expect("pace");
        let now = Instant::now();
        let mut latencies = std::mem::take(&mut s.latencies_ns);
        let p99 = if latencies.is_empty() {
            0
        } else {
            let at = (latencies.len() * 99).div_ceil(100) - 1;
            *latencies.select_nth_unstable(at).1
        };
        let w = Window {
            span_ns: now.duration_since(s.window_start).as_nanos() as u64,
            client_in_flight: s.client_in_flight,
            client_ios: s.client_ios,
            client_p99_ns: p99,
            recovery_ios: u64::from(s.recovery_bytes > 0),
            recovery_bytes: s.recovery_bytes,
        };
        s.window_start = now;
        s.client_ios = 0;
        s.recovery_bytes = 0;
        w
    }
}

/// One client IO, from [`RecoveryPace::client_io`]: in flight until dropped, and its latency
/// is one of the window's once [`ClientIo::done`].
#[derive(Debug)]
pub struct ClientIo<'a> {
    pace: &'a RecoveryPace,
    started: Instant,
    done: bool,
}

impl ClientIo<'_> {
    /// The IO finished (well or not): its latency counts.
    pub fn done(mut self) {
        self.done = true;
    }
}

impl Drop for ClientIo<'_> {
    fn drop(&mut self) {
        let mut s = self.pace.state.lock().expect("pace");
        s.client_in_flight -= 1;
        if self.done {
            s.client_ios += 1;
            if s.latencies_ns.len() < SAMPLES_MAX {
                s.latencies_ns
                    .push(self.started.elapsed().as_nanos() as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn copies_keep_to_the_limit_and_go_at_once_without_one() {
        let pace = RecoveryPace::default();
        let t0 = Instant::now();
        for _ in 0..8 {
            pace.take(4 << 20).await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "no limit, no wait");
        pace.set_limit(Some(16 << 20));
        let t0 = Instant::now();
        for _ in 0..8 {
            pace.take(4 << 20).await;
        }
        // 32 MiB at 16 MiB/s, from an empty bucket.
        let took = t0.elapsed().as_secs_f64();
        assert!((1.9..2.2).contains(&took), "{took}");
        let w = pace.take_window();
        assert_eq!(w.recovery_bytes, 64 << 20);
        pace.set_limit(None);
        let t0 = Instant::now();
        pace.take(4 << 20).await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_reports_the_clients_p99_those_in_flight_and_starts_afresh() {
        let pace = RecoveryPace::default();
        assert!(
            pace.client_io().is_none(),
            "not timed before a governor looks"
        );
        pace.take_window();
        let stuck = pace.client_io().expect("timed");
        for _ in 1..=1000 {
            let io = pace.client_io().expect("timed");
            tokio::time::advance(Duration::from_micros(1)).await;
            io.done();
        }
        let w = pace.take_window();
        assert_eq!(w.client_ios, 1000);
        assert_eq!(w.client_in_flight, 1);
        // The i-th IO took 1 µs; the p99 is the 990th smallest.
        assert_eq!(w.client_p99_ns, 1_000);
        assert_eq!(w.recovery_bytes, 0);
        // One given up (its caller went away): no latency, no longer in flight.
        let gone = pace.client_io().expect("timed");
        drop(gone);
        let next = pace.take_window();
        assert_eq!((next.client_ios, next.client_p99_ns), (0, 0));
        assert_eq!(next.client_in_flight, 1);
        stuck.done();
        assert_eq!(pace.take_window().client_in_flight, 0);
    }
}
