//! The scheduler of one disk as the replica server runs it: a request asks for a turn
//! ([`DiskScheduler::turn`]) before it touches the store and holds it while its IO runs. At
//! most `depth` turns are out at once, so the order the [`Mclock`] decides is the order the
//! disk sees: with no bound, every request would reach the ring at once and the disk's own
//! queue would decide. A request over its queue's limit waits here, before the ring; it is
//! slowed, never failed.
//!
//! A waiting request whose caller goes away (its connection closed) gives its place up when
//! its turn comes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::class::{Class, QueueKey};
use super::governor::{Governor, Window};
use super::mclock::{Mclock, Next, Phase, Rate, Spec, SpecError};

/// Turns out at once by default: enough to keep an NVMe disk's queue busy, few enough that a
/// client request waits behind at most this many background ones.
pub const DEPTH_DEFAULT: usize = 16;

/// IOs and bytes one class was given turns for, and how many of them came by reservation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounts {
    pub ios: u64,
    pub bytes: u64,
    pub by_reservation: u64,
}

/// A request waiting for its turn: where to send it, its size and when it asked.
type Waiting = (oneshot::Sender<Turn>, u64, Instant);

/// What the current window saw (see [`DiskScheduler::take_window`]).
#[derive(Default)]
struct WindowCounts {
    /// Latencies of client IOs, from asking for a turn to giving it back, in ns (at most
    /// [`LATENCY_SAMPLES_MAX`] kept).
    client_ns: Vec<u64>,
    client_ios: u64,
    recovery_ios: u64,
    recovery_bytes: u64,
}

/// Client latencies kept per window for its p99.
const LATENCY_SAMPLES_MAX: usize = 20_000;

struct State {
    mclock: Mclock<QueueKey, Waiting>,
    in_flight: usize,
    /// Client requests waiting for a turn or holding one.
    client_pending: u64,
    /// The time a wake-up is armed for, if one is.
    timer_at: Option<u64>,
    /// Specs of classes and volumes set by the operator; the rest use the class default.
    class_specs: BTreeMap<Class, Spec>,
    counts: BTreeMap<Class, ClassCounts>,
    window: WindowCounts,
    window_since: Instant,
}

/// One disk's scheduler. Shared by the requests of every connection to the disk.
pub struct DiskScheduler {
    state: Mutex<State>,
    depth: usize,
    started: Instant,
    /// The last judged window's client p99 was above the governor's target (see
    /// [`DiskScheduler::clients_over_target`]).
    over_target: std::sync::atomic::AtomicBool,
}

/// A request's turn at the disk: it holds one of the `depth` places until dropped.
pub struct Turn {
    sched: Option<Arc<DiskScheduler>>,
    class: Class,
    len: u64,
    asked: Instant,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(sched) = self.sched.take() {
            let mut s = sched.state.lock().expect("scheduler lock");
            s.in_flight -= 1;
            if self.class == Class::Client {
                s.client_pending -= 1;
            }
            let w = &mut s.window;
            match self.class {
                Class::Client => {
                    w.client_ios += 1;
                    if w.client_ns.len() < LATENCY_SAMPLES_MAX {
                        w.client_ns.push(self.asked.elapsed().as_nanos() as u64);
                    }
                }
                Class::Recovery => {
                    w.recovery_ios += 1;
                    w.recovery_bytes += self.len;
                }
                Class::Scrub | Class::Inference => {}
            }
            sched.pump(&mut s);
        }
    }
}

impl DiskScheduler {
    pub fn new(depth: usize) -> Arc<DiskScheduler> {
        assert!(depth > 0, "a disk takes at least one IO at a time");
        Arc::new(DiskScheduler {
            state: Mutex::new(State {
                mclock: Mclock::default(),
                in_flight: 0,
                client_pending: 0,
                timer_at: None,
                class_specs: BTreeMap::new(),
                counts: BTreeMap::new(),
                window: WindowCounts::default(),
                window_since: Instant::now(),
            }),
            depth,
            started: Instant::now(),
            over_target: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Sets what a background class gets; for [`Class::Client`], the spec of volumes that
    /// have none of their own.
    pub fn set_class_spec(&self, class: Class, spec: Spec) -> Result<(), SpecError> {
        spec.check()?;
        let mut s = self.state.lock().expect("scheduler lock");
        s.class_specs.insert(class, spec);
        match class {
            Class::Client => {}
            other => s.mclock.set_spec(QueueKey::Background(other), spec)?,
        }
        Ok(())
    }

    /// The spec a class has now.
    pub fn class_spec(&self, class: Class) -> Spec {
        let s = self.state.lock().expect("scheduler lock");
        s.class_specs
            .get(&class)
            .copied()
            .unwrap_or_else(|| class.default_spec())
    }

    /// Sets the QoS of a volume's client IO on this disk; applies from its next request on.
    pub fn set_volume_spec(&self, volume: u64, spec: Spec) -> Result<(), SpecError> {
        let mut s = self.state.lock().expect("scheduler lock");
        s.mclock.set_spec(QueueKey::Volume(volume), spec)
    }

    /// What the disk saw since the last call (or the start): client IOs and their p99
    /// latency, recovery IOs and bytes; starts the next window.
    pub fn take_window(&self) -> Window {
        let mut s = self.state.lock().expect("scheduler lock");
        let w = std::mem::take(&mut s.window);
        let pending = s.client_pending;
        let span = std::mem::replace(&mut s.window_since, Instant::now()).elapsed();
        drop(s);
        let mut ns = w.client_ns;
        let p99 = if ns.is_empty() {
            0
        } else {
            let at = (ns.len() * 99).div_ceil(100) - 1;
            *ns.select_nth_unstable(at).1
        };
        Window {
            span_ns: span.as_nanos() as u64,
            client_in_flight: pending,
            client_ios: w.client_ios,
            client_p99_ns: p99,
            recovery_ios: w.recovery_ios,
            recovery_bytes: w.recovery_bytes,
        }
    }

    /// Keeps the recovery class within what `governor` allows, judged every `every`, until
    /// `stop`. The recovery spec's other fields stay as set.
    pub async fn govern_recovery(
        self: Arc<Self>,
        mut governor: Governor,
        every: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        self.take_window();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let window = self.take_window();
            let before = governor.limit();
            let limit = governor.observe(&window);
            let over = governor.over_target(&window);
            self.over_target
                .store(over, std::sync::atomic::Ordering::Relaxed);
            if limit != before {
                tracing::debug!(?limit, client_p99_us = window.client_p99_ns / 1000, target_us = ?governor.target_ns().map(|t| t / 1000), "recovery limit");
            }
            let spec = Spec {
                limit: Rate {
                    iops: 0,
                    bytes_per_sec: limit.unwrap_or(0),
                },
                ..self.class_spec(Class::Recovery)
            };
            if let Err(e) = self.set_class_spec(Class::Recovery, spec) {
                tracing::warn!(error = %e, "recovery limit not applied");
            }
        }
    }

    /// Whether clients' latency on this disk was above the governor's target in the last
    /// window it judged: background work that yields to clients (inference) pauses while so.
    pub fn clients_over_target(&self) -> bool {
        self.over_target.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The recovery class's limit in bytes per second, as its governor sets it (`None`: none).
    pub fn recovery_limit(&self) -> Option<u64> {
        Some(self.class_spec(Class::Recovery).limit.bytes_per_sec).filter(|&l| l > 0)
    }

    /// Forgets the queue of a volume the disk no longer holds (kept while requests wait).
    pub fn forget_volume(&self, volume: u64) {
        let mut s = self.state.lock().expect("scheduler lock");
        s.mclock.remove_idle(&QueueKey::Volume(volume));
    }

    /// Counts per class since the start.
    pub fn counts(&self) -> BTreeMap<Class, ClassCounts> {
        self.state.lock().expect("scheduler lock").counts.clone()
    }

    /// Waits for a turn for an IO of `len` bytes of `class` on `volume`.
    pub async fn turn(self: &Arc<Self>, class: Class, volume: u64, len: u64) -> Turn {
        let key = QueueKey::of(class, volume);
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.state.lock().expect("scheduler lock");
            if s.mclock.spec(&key).is_none() {
                let spec = s
                    .class_specs
                    .get(&class)
                    .copied()
                    .unwrap_or_else(|| class.default_spec());
                s.mclock
                    .set_spec(key, spec)
                    .expect("class specs are checked when set");
            }
            if class == Class::Client {
                s.client_pending += 1;
            }
            let now = self.now();
            s.mclock.push(key, (tx, len, Instant::now()), len, now);
            self.pump(&mut s);
        }
        rx.await
            .expect("the scheduler answers every request it holds")
    }

    /// Hands out turns while places are free, and arms a wake-up for the first request a
    /// limit holds.
    fn pump(self: &Arc<Self>, s: &mut State) {
        while s.in_flight < self.depth {
            let now = self.now();
            match s.mclock.next(now) {
                Next::Dispatch {
                    queue,
                    request: (tx, len, asked),
                    phase,
                } => {
                    s.in_flight += 1;
                    let turn = Turn {
                        sched: Some(Arc::clone(self)),
                        class: queue.class(),
                        len,
                        asked,
                    };
                    match tx.send(turn) {
                        Ok(()) => {
                            let c = s.counts.entry(queue.class()).or_default();
                            c.ios += 1;
                            c.bytes += len;
                            if phase == Phase::Reservation {
                                c.by_reservation += 1;
                            }
                        }
                        // The caller went away: its place goes to the next one.
                        Err(mut turn) => {
                            turn.sched = None;
                            s.in_flight -= 1;
                            if turn.class == Class::Client {
                                s.client_pending -= 1;
                            }
                        }
                    }
                }
                Next::WaitUntil(at) => {
                    if s.timer_at.is_none_or(|armed| armed > at) {
                        s.timer_at = Some(at);
                        let sched = Arc::clone(self);
                        let when = self.started + std::time::Duration::from_nanos(at);
                        tokio::spawn(async move {
                            tokio::time::sleep_until(when).await;
                            let mut s = sched.state.lock().expect("scheduler lock");
                            if s.timer_at == Some(at) {
                                s.timer_at = None;
                            }
                            sched.pump(&mut s);
                        });
                    }
                    return;
                }
                Next::Idle => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn at_most_depth_turns_are_out_and_a_dropped_one_frees_its_place() {
        let sched = DiskScheduler::new(2);
        let a = sched.turn(Class::Client, 1, 4096).await;
        let _b = sched.turn(Class::Client, 1, 4096).await;
        let third = tokio::spawn({
            let sched = Arc::clone(&sched);
            async move { sched.turn(Class::Client, 2, 4096).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!third.is_finished(), "a third turn while two are out");
        drop(a);
        let _c = third.await.unwrap();
        assert_eq!(sched.counts()[&Class::Client].ios, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_goes_away_gives_its_place_up() {
        let sched = DiskScheduler::new(1);
        let a = sched.turn(Class::Client, 1, 4096).await;
        let gone = tokio::spawn({
            let sched = Arc::clone(&sched);
            async move { sched.turn(Class::Client, 1, 4096).await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        gone.abort();
        let _ = gone.await;
        drop(a);
        // The place of the aborted caller is free again.
        let _next =
            tokio::time::timeout(Duration::from_secs(1), sched.turn(Class::Client, 1, 4096))
                .await
                .expect("a turn");
    }

    #[tokio::test(start_paused = true)]
    async fn a_limited_class_waits_before_the_disk_and_is_never_failed() {
        let sched = DiskScheduler::new(8);
        sched
            .set_class_spec(
                Class::Scrub,
                Spec {
                    limit: Rate {
                        iops: 10,
                        bytes_per_sec: 0,
                    },
                    ..Class::Scrub.default_spec()
                },
            )
            .unwrap();
        let started = Instant::now();
        for _ in 0..5 {
            drop(sched.turn(Class::Scrub, 0, 1 << 20).await);
        }
        // The first at once, then one every 100 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(400));
        // A volume's own spec: a client of another volume is not held by it.
        sched
            .set_volume_spec(
                9,
                Spec {
                    limit: Rate {
                        iops: 1,
                        bytes_per_sec: 0,
                    },
                    ..Spec::default()
                },
            )
            .unwrap();
        let started = Instant::now();
        drop(sched.turn(Class::Client, 9, 4096).await);
        drop(sched.turn(Class::Client, 3, 4096).await);
        drop(sched.turn(Class::Client, 9, 4096).await);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(
            sched
                .set_class_spec(
                    Class::Recovery,
                    Spec {
                        weight: 0,
                        ..Spec::default()
                    }
                )
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_counts_the_clients_still_waiting_or_at_the_disk() {
        let sched = DiskScheduler::new(1);
        let held = sched.turn(Class::Client, 1, 4096).await;
        // A second client waits behind the first (one place); a third gives up waiting.
        let waiting = tokio::spawn({
            let sched = Arc::clone(&sched);
            async move { drop(sched.turn(Class::Client, 2, 4096).await) }
        });
        let gone = tokio::spawn({
            let sched = Arc::clone(&sched);
            async move { drop(sched.turn(Class::Client, 3, 4096).await) }
        });
        tokio::task::yield_now().await;
        gone.abort();
        let w = sched.take_window();
        assert_eq!((w.client_ios, w.client_in_flight), (0, 3));
        drop(held);
        waiting.await.unwrap();
        let w = sched.take_window();
        assert_eq!((w.client_ios, w.client_in_flight), (2, 0));
    }

    /// Runs client IOs of `client_ms` each (and, with `recovery`, 1 MiB recovery IOs of 2 ms
    /// each beside them) until `until`.
    /// The two go side by side, neither waiting for the other.
    async fn load(sched: &Arc<DiskScheduler>, until: Instant, client_ms: u64, recovery: bool) {
        let clients = async {
            while Instant::now() < until {
                let _t = sched.turn(Class::Client, 1, 4096).await;
                tokio::time::sleep(Duration::from_millis(client_ms)).await;
            }
        };
        let copies = async {
            while recovery && Instant::now() < until {
                let _t = sched.turn(Class::Recovery, 1, 1 << 20).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::join!(clients, copies);
    }

    #[tokio::test(start_paused = true)]
    async fn the_governor_limits_recovery_while_clients_suffer_and_frees_it_when_they_leave() {
        let sched = DiskScheduler::new(8);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let config = crate::sched::governor::GovernorConfig {
            min_client_ios: 10,
            ..Default::default()
        };
        let governor = tokio::spawn(Arc::clone(&sched).govern_recovery(
            Governor::new(config),
            Duration::from_millis(100),
            stop,
        ));
        // Quiet: clients at 1 ms make the baseline; recovery, should it start, starts at the
        // floor.
        load(
            &sched,
            Instant::now() + Duration::from_millis(450),
            1,
            false,
        )
        .await;
        assert_eq!(sched.recovery_limit(), Some(8 << 20));
        // Recovery beside clients that now take 3 ms: over 1.2 x the baseline, limited.
        load(&sched, Instant::now() + Duration::from_millis(450), 3, true).await;
        let limit = sched.recovery_limit().expect("a recovery limit");
        assert!(limit >= 8 << 20, "{limit}");
        assert_eq!(
            sched.class_spec(Class::Recovery).limit.bytes_per_sec,
            limit,
            "the limit is the recovery class's"
        );
        // Clients leave: recovery runs free again.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(sched.recovery_limit(), None);
        assert_eq!(sched.class_spec(Class::Recovery).limit, Rate::NONE);
        stop_tx.send(true).unwrap();
        governor.await.unwrap();
    }
}
