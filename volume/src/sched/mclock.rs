//! The mClock decision (Gulati, Merchant, Varman, OSDI 2010) for one disk, as a pure state
//! machine: requests wait in queues, each queue has a reservation, a weight and a limit, and
//! [`Mclock::next`] says which request goes to the disk now, or how long to wait. No clock,
//! no IO: the caller passes the time (nanoseconds on any monotonic scale) and does the IO.
//!
//! Every request gets three tags when it reaches the head of its queue:
//! - `R`, the time by which the reservation wants it served: the previous request's `R` plus
//!   this request's share of the reservation, but never before it arrived (an idle queue banks
//!   no credit);
//! - `L`, the earliest time the limit lets it go: the same sum against the limit, but never
//!   more than [`LIMIT_SLACK_NS`] before it arrived: a queue that ran dry for a moment (its
//!   client's requests all downstream, a hiccup of the host) may catch up on that much of its
//!   limit, so that jitter does not hold it under the limit, while over any span `T` it gets
//!   at most the limit times `T` plus the slack (a token bucket of that depth);
//! - `P`, its place in the proportional (weighted) share: the previous `P` plus its cost over
//!   the weight, but never behind the disk's virtual time (the `P` of the last request served
//!   by weight), so that a queue that was idle rejoins level with the others instead of
//!   claiming the time it was away.
//!
//! [`Mclock::next`] serves, first, the queue whose head is furthest behind its reservation
//! (`R <= now`, smallest `R`): reservations are met before anything else. Otherwise it serves,
//! among the queues whose head the limit allows (`L <= now`), the one with the smallest `P`.
//! Every service counts towards the reservation (`R` moves on whichever phase served it): a
//! queue is guaranteed at least its reservation, and beyond that shares by weight. When every
//! waiting head is over its limit, the answer is to wait until the first `L`. Nothing waits
//! while the limits allow something: spare capacity goes to whoever has work (a class with
//! nothing to do lends its share).
//!
//! Rates are given in IOs and bytes per second; a request uses its share of both, and the
//! larger one counts (a 1 MiB request against a limit of 1,000 IOPS and 100 MB/s is held by the
//! bytes; a 4 KiB one by the IOs).

use std::collections::{BTreeMap, VecDeque};

/// How far behind its arrival a request's limit tag may fall (see the module's `L`).
pub const LIMIT_SLACK_NS: u64 = 100_000_000;

/// Nanoseconds per second.
const NS_PER_SEC: u128 = 1_000_000_000;

/// Bytes that cost as much as one IO in the weighted share: a 4 KiB request costs about 1, a
/// 1 MiB copy about 9 (a transfer of this size takes about as long as a seek on the disks
/// Fabric runs on, SSDs and NVMe included).
pub const COST_BYTES_PER_IO: u64 = 128 * 1024;

/// A rate in IOs and bytes per second; 0 in a dimension means that dimension is not set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    pub iops: u64,
    pub bytes_per_sec: u64,
}

impl Rate {
    pub const NONE: Rate = Rate {
        iops: 0,
        bytes_per_sec: 0,
    };

    pub fn is_set(&self) -> bool {
        self.iops > 0 || self.bytes_per_sec > 0
    }

    /// How long a request of `len` bytes takes of this rate, in ns: the larger of its IO and
    /// its bytes. `None` if the rate is not set.
    fn span_ns(&self, len: u64) -> Option<u64> {
        if !self.is_set() {
            return None;
        }
        let by_ios = match self.iops {
            0 => 0,
            r => NS_PER_SEC / u128::from(r),
        };
        let by_bytes = match self.bytes_per_sec {
            0 => 0,
            r => u128::from(len) * NS_PER_SEC / u128::from(r),
        };
        Some(by_ios.max(by_bytes).min(u128::from(u64::MAX)) as u64)
    }
}

/// What a queue is promised and allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Served at least this fast whenever it has work (if the disk can).
    pub reservation: Rate,
    /// Its share of what is left after reservations, relative to the other queues' weights.
    pub weight: u32,
    /// Never served faster than this.
    pub limit: Rate,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            reservation: Rate::NONE,
            weight: 1,
            limit: Rate::NONE,
        }
    }
}

/// Why a spec cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("weight must be at least 1")]
    ZeroWeight,
    #[error("the reservation ({reservation}/s) is above the limit ({limit}/s) in {what}")]
    ReservationAboveLimit {
        what: &'static str,
        reservation: u64,
        limit: u64,
    },
}

impl Spec {
    /// A spec is usable when its weight is positive and no reservation exceeds the limit of
    /// the same dimension.
    pub fn check(&self) -> Result<(), SpecError> {
        if self.weight == 0 {
            return Err(SpecError::ZeroWeight);
        }
        for (what, reservation, limit) in [
            ("IOs", self.reservation.iops, self.limit.iops),
            (
                "bytes",
                self.reservation.bytes_per_sec,
                self.limit.bytes_per_sec,
            ),
        ] {
            if limit > 0 && reservation > limit {
                return Err(SpecError::ReservationAboveLimit {
                    what,
                    reservation,
                    limit,
                });
            }
        }
        Ok(())
    }
}

/// Which rule let a request go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Its queue was behind its reservation.
    Reservation,
    /// Its turn in the weighted share.
    Weight,
}

/// The answer of [`Mclock::next`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next<K, T> {
    /// Send this request to the disk now.
    Dispatch { queue: K, request: T, phase: Phase },
    /// Every waiting request is held by its limit: ask again at this time.
    WaitUntil(u64),
    /// Nothing waits.
    Idle,
}

struct Waiting<T> {
    request: T,
    len: u64,
    arrived: u64,
}

struct Queue<T> {
    spec: Spec,
    waiting: VecDeque<Waiting<T>>,
    /// Tags of the last request served (`None` before the first).
    last_r: Option<u64>,
    last_l: Option<u64>,
    last_p: u128,
}

/// `span` after the last tag, but not before `arrived`; the first request's tag is its arrival.
fn after(last: Option<u64>, span: u64, arrived: u64) -> u64 {
    last.map_or(arrived, |t| t.saturating_add(span).max(arrived))
}

/// Tags of a queue's head.
#[derive(Clone, Copy)]
struct Tags {
    r: Option<u64>,
    l: u64,
    p: u128,
}

impl<T> Queue<T> {
    fn new(spec: Spec) -> Queue<T> {
        Queue {
            spec,
            waiting: VecDeque::new(),
            last_r: None,
            last_l: None,
            last_p: 0,
        }
    }

    fn head_tags(&self, vtime: u128) -> Option<Tags> {
        let head = self.waiting.front()?;
        let r = self
            .spec
            .reservation
            .span_ns(head.len)
            .map(|span| after(self.last_r, span, head.arrived));
        let l = match self.spec.limit.span_ns(head.len) {
            // The first request has no schedule to catch up on: its tag is its arrival.
            Some(span) => match self.last_l {
                None => head.arrived,
                Some(t) => after(Some(t), span, head.arrived.saturating_sub(LIMIT_SLACK_NS)),
            },
            None => 0,
        };
        let cost = u128::from(COST_BYTES_PER_IO + head.len) * NS_PER_SEC
            / u128::from(COST_BYTES_PER_IO)
            / u128::from(self.spec.weight);
        let p = (self.last_p + cost).max(vtime);
        Some(Tags { r, l, p })
    }
}

/// One disk's scheduler: queues by key `K`, requests of type `T`.
pub struct Mclock<K, T> {
    queues: BTreeMap<K, Queue<T>>,
    /// The `P` of the last request served by weight.
    vtime: u128,
}

impl<K: Ord + Clone, T> Default for Mclock<K, T> {
    fn default() -> Self {
        Mclock {
            queues: BTreeMap::new(),
            vtime: 0,
        }
    }
}

impl<K: Ord + Clone, T> Mclock<K, T> {
    /// Sets the spec of queue `key` (made if new); waiting requests keep their place and are
    /// tagged by the new spec from their turn on. Refuses an unusable spec.
    pub fn set_spec(&mut self, key: K, spec: Spec) -> Result<(), SpecError> {
        spec.check()?;
        self.queues
            .entry(key)
            .and_modify(|q| q.spec = spec)
            .or_insert_with(|| Queue::new(spec));
        Ok(())
    }

    /// The spec of queue `key`, if it exists.
    pub fn spec(&self, key: &K) -> Option<Spec> {
        self.queues.get(key).map(|q| q.spec)
    }

    /// Removes queue `key` if nothing waits in it; returns whether it is gone.
    pub fn remove_idle(&mut self, key: &K) -> bool {
        match self.queues.get(key) {
            Some(q) if q.waiting.is_empty() => {
                self.queues.remove(key);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Queues `request` of `len` bytes on `key` at time `now`; a queue not yet known gets the
    /// default spec (weight 1, no reservation, no limit).
    pub fn push(&mut self, key: K, request: T, len: u64, now: u64) {
        let q = self
            .queues
            .entry(key)
            .or_insert_with(|| Queue::new(Spec::default()));
        q.waiting.push_back(Waiting {
            request,
            len,
            arrived: now,
        });
    }

    /// What to send to the disk at time `now`.
    pub fn next(&mut self, now: u64) -> Next<K, T> {
        let vtime = self.vtime;
        let mut by_reservation: Option<(u64, &K)> = None;
        let mut by_weight: Option<(u128, &K)> = None;
        let mut first_allowed: Option<u64> = None;
        for (key, q) in &self.queues {
            let Some(tags) = q.head_tags(vtime) else {
                continue;
            };
            if let Some(r) = tags.r
                && r <= now
                && by_reservation.is_none_or(|(best, _)| r < best)
            {
                by_reservation = Some((r, key));
            }
            if tags.l <= now {
                if by_weight.is_none_or(|(best, _)| tags.p < best) {
                    by_weight = Some((tags.p, key));
                }
            } else if first_allowed.is_none_or(|t| tags.l < t) {
                first_allowed = Some(tags.l);
            }
        }
        let (key, phase) = match (by_reservation, by_weight) {
            (Some((_, key)), _) => (key.clone(), Phase::Reservation),
            (None, Some((_, key))) => (key.clone(), Phase::Weight),
            (None, None) => {
                return match first_allowed {
                    Some(t) => Next::WaitUntil(t),
                    None => Next::Idle,
                };
            }
        };
        let q = self.queues.get_mut(&key).expect("the queue just chosen");
        let tags = q.head_tags(vtime).expect("a head");
        let head = q.waiting.pop_front().expect("a head");
        // Every service counts towards the reservation and the limit.
        // Service beyond the reservation moves R no further than now: a queue served ahead of
        // its reservation by weight is owed it again from now on, not from the future.
        q.last_r = tags.r.map(|r| r.min(now));
        q.last_l = Some(tags.l.max(q.last_l.unwrap_or(0)));
        q.last_p = tags.p;
        if phase == Phase::Weight {
            self.vtime = self.vtime.max(tags.p);
        }
        Next::Dispatch {
            queue: key,
            request: head.request,
            phase,
        }
    }
}

#[cfg(test)]
#[path = "mclock_tests.rs"]
mod tests;
