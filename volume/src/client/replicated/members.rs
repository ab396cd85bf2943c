//! The runtime of [`Membership`]: the replicas of each group, the events their IO produces,
//! and the actions those events ask for — removals through the [`AclObserver`], retries on a
//! timer, probes — run by one driver task per failed replica, beside the IO that found the
//! failure.
//!
//! Reads never wait here: a read that fails on a replica reports it and moves on to the next.
//! Writes and flushes wait, at most `removal_wait_ms`, for the failed replica to leave the
//! acting set, because acknowledging them before would let a member of the acting set miss
//! them. A group with a replica that failed and has not left yet takes no new writes until it
//! has (or until the same bound, then EIO).
//!
//! [`AclObserver`]: crate::client::AclObserver

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::link::{Link, Outcome, outcome};
use crate::client::membership::{Action, Event, Membership, NotRemoved};
use crate::client::pool::ReplicaPool;
use crate::client::{RemovalError, ReplicaFailure};
use crate::volume::VolumeError;
use crate::wire::{Op, Request, WriteVersion};

use super::Inner;
use super::ledger::Ledger;

/// How often a write waiting for its group looks again even without a wake-up (a map change
/// or a resync that brings a replica back wakes it at once).
const WAIT_POLL_MS: u64 = 50;

/// One replica of one group.
pub(super) struct Replica {
    pub(super) link: Arc<Link>,
    /// The same server over the pool's background link: copies, digests and scrubs.
    pub(super) background: Arc<Link>,
    state: Mutex<Membership>,
    pub(super) ledger: Mutex<Ledger>,
}

/// Why an acknowledgement does not count: see [`super::ledger`].
const RESTARTED: &str = "answered with a new power epoch while it held unflushed writes: its machine restarted and lost them";

/// The replicas of one group at one moment. Swapped whole when the PG map changes; an IO works
/// on the snapshot it started with.
pub(super) type Members = Arc<Vec<Arc<Replica>>>;

/// Where one write of a group goes; see [`Inner::writable`].
pub(super) struct Writable {
    pub(super) live: Vec<Arc<Replica>>,
    pub(super) catching_up: Vec<Arc<Replica>>,
}

/// Why a group cannot take a write now.
pub(super) enum Blocked {
    /// A failed replica has not left the acting set: writing without it would acknowledge
    /// what a member of the acting set missed.
    Removing(String),
    /// Fewer than `min_replicas` live replicas; a resync may bring one back.
    BelowMin(String),
}

impl Blocked {
    pub(super) fn into_error(self) -> VolumeError {
        let (Blocked::Removing(why) | Blocked::BelowMin(why)) = self;
        VolumeError::Io(why)
    }
}

impl Replica {
    pub(super) fn new(pool: &ReplicaPool, addr: SocketAddr, stale: bool) -> Replica {
        Replica {
            link: pool.link(addr),
            background: pool.background_link(addr),
            state: Mutex::new(Membership::listed(stale)),
            ledger: Mutex::new(if stale {
                Ledger::history_unknown()
            } else {
                Ledger::default()
            }),
        }
    }

    pub(super) fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("replica ledger")
    }

    /// Sends mutation `req` (a write, trim or zeroing) and keeps the ledger: a failure marks
    /// its extents missed, and an acknowledgement with a new power epoch, after writes that were
    /// not flushed, counts as a failure.
    pub(super) async fn mutation(&self, req: Request) -> Outcome {
        self.mutation_over(&self.link, req).await
    }

    /// [`Replica::mutation`] over the background link: a copy's write.
    pub(super) async fn background_mutation(&self, req: Request) -> Outcome {
        self.mutation_over(&self.background, req).await
    }

    async fn mutation_over(&self, link: &Link, req: Request) -> Outcome {
        let extents = req.header.extents();
        let answered = link.call_in_session(req).await;
        let power_epoch = answered.as_ref().ok().map(|(_, p)| *p);
        match outcome(answered.map(|(reply, _)| reply)) {
            Outcome::Acked(payload) => match power_epoch {
                Some(s) if self.ledger().acked(extents.clone(), s) => Outcome::Acked(payload),
                _ => {
                    self.ledger().failed(extents);
                    Outcome::Failed(RESTARTED.to_owned())
                }
            },
            Outcome::Fenced(current) => Outcome::Fenced(current),
            failed => {
                self.ledger().failed(extents);
                failed
            }
        }
    }

    /// Sends read `req`; an answer with a new power epoch, after writes that were not flushed,
    /// counts as a failure (the replica may hold older data than it acknowledged).
    pub(super) async fn read(&self, req: Request) -> Outcome {
        let answered = self.link.call_in_session(req).await;
        let power_epoch = answered.as_ref().ok().map(|(_, p)| *p);
        match outcome(answered.map(|(reply, _)| reply)) {
            Outcome::Acked(payload) => match power_epoch {
                Some(s) if self.ledger().read(s) => Outcome::Acked(payload),
                _ => Outcome::Failed(RESTARTED.to_owned()),
            },
            other => other,
        }
    }

    /// Sends flush `req`: see [`flush_places`].
    pub(super) async fn flush(self: &Arc<Self>, req: Request) -> Outcome {
        let mut outcomes = flush_places(&self.link, std::slice::from_ref(self), req).await;
        outcomes.pop().expect("one outcome per replica")
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.link.addr()
    }

    pub(super) fn state(&self) -> Membership {
        *self.state.lock().expect("replica state")
    }

    pub(super) fn is_live(&self) -> bool {
        self.state().is_live()
    }

    pub(super) fn is_stale(&self) -> bool {
        self.state().is_stale()
    }

    pub(super) fn is_catching_up(&self) -> bool {
        self.state().is_catching_up()
    }

    /// Applies `event`; the action it asks for, and whether the state changed.
    fn apply(&self, event: Event) -> (Action, bool) {
        let mut state = self.state.lock().expect("replica state");
        let before = *state;
        let action = state.on_event(event);
        (action, *state != before)
    }
}

/// Sends flush `req` over `link`, for `replicas` (the replicas of several groups that are one
/// server): the outcome for each, in order. A flush answered with a new power epoch does not make
/// durable what the replica acknowledged before it.
pub(super) async fn flush_places(
    link: &Link,
    replicas: &[Arc<Replica>],
    req: Request,
) -> Vec<Outcome> {
    let marks: Vec<_> = replicas.iter().map(|r| r.ledger().flush_sent()).collect();
    let answered = link.call_in_session(req).await;
    let power_epoch = answered.as_ref().ok().map(|(_, p)| *p);
    let result = outcome(answered.map(|(reply, _)| reply));
    replicas
        .iter()
        .zip(marks)
        .map(|(r, mark)| match (&result, power_epoch) {
            (Outcome::Acked(p), Some(s)) => {
                if r.ledger().flushed(mark, s) {
                    Outcome::Acked(p.clone())
                } else {
                    Outcome::Failed(RESTARTED.to_owned())
                }
            }
            (Outcome::Fenced(c), _) => Outcome::Fenced(*c),
            (other, _) => {
                r.ledger().failed(0..0);
                other.clone()
            }
        })
        .collect()
}

impl Inner {
    /// Delivers `event` to `replica` of `group` and runs what it asks for. `why` names the
    /// failure for the removal it may start. Never waits.
    pub(super) fn event(self: &Arc<Self>, group: usize, replica: &Arc<Replica>, event: Event) {
        self.event_because(group, replica, event, String::new());
    }

    /// `replica` of `group` failed an IO for reason `why`; its removal starts if it was live.
    pub(super) fn failed(self: &Arc<Self>, group: usize, replica: &Arc<Replica>, why: String) {
        self.event_because(group, replica, Event::Failed, why);
    }

    fn event_because(
        self: &Arc<Self>,
        group: usize,
        replica: &Arc<Replica>,
        event: Event,
        why: String,
    ) {
        let (action, changed) = replica.apply(event);
        if changed {
            self.group_changed[group].notify_waiters();
        }
        if let Action::Remove { .. } = action {
            tracing::warn!(volume = %self.config.volume, group, replica = %replica.addr(), reason = %why, "replica failed");
        }
        if !matches!(action, Action::None | Action::Wake) {
            let weak = Arc::downgrade(self);
            tokio::spawn(drive(weak, group, Arc::clone(replica), action, why));
        }
    }

    /// Waits until `replica` of `group`, which failed, has left the acting set: `true` once
    /// it is stale, `false` if `removal_wait_ms` passed first or it became live again (it
    /// answered after its removal was refused, and missed what the caller sent).
    pub(super) async fn removed(&self, group: usize, replica: &Replica) -> bool {
        let deadline = Instant::now() + Duration::from_millis(self.config.removal_wait_ms);
        loop {
            let changed = self.group_changed[group].notified();
            let state = replica.state();
            if state.is_stale() {
                return true;
            }
            if state.is_live() || Instant::now() >= deadline {
                return false;
            }
            let poll = Instant::now() + Duration::from_millis(WAIT_POLL_MS);
            let _ = tokio::time::timeout_at(poll.min(deadline), changed).await;
        }
    }

    /// The replicas a write of `group` goes to: the live ones, which must all hold it before
    /// it is acknowledged, and those catching up, which get it but do not count towards the
    /// acknowledgement. Or why the group cannot take a write. One snapshot of the members, so a
    /// replica that catches up cannot miss a write through a concurrent map change.
    pub(super) fn writable(&self, group: usize) -> Result<Writable, VolumeError> {
        let replicas = self.members(group);
        if let Some(blocked) = self.blocked(group, &replicas) {
            return Err(blocked.into_error());
        }
        Ok(Writable {
            live: replicas.iter().filter(|r| r.is_live()).cloned().collect(),
            catching_up: replicas
                .iter()
                .filter(|r| r.is_catching_up())
                .cloned()
                .collect(),
        })
    }

    /// Why `group`, with members `replicas`, cannot take a write now, if it cannot.
    pub(super) fn blocked(&self, group: usize, replicas: &[Arc<Replica>]) -> Option<Blocked> {
        if let Some(r) = replicas.iter().find(|r| r.state().blocks_writes()) {
            return Some(Blocked::Removing(format!(
                "replica {} of group {group} failed and has not left its acting set: {:?}",
                r.addr(),
                r.state()
            )));
        }
        let live = replicas.iter().filter(|r| r.is_live()).count();
        (live < self.config.min_replicas).then(|| {
            Blocked::BelowMin(format!(
                "group {group} has {live} live replicas, fewer than min_replicas {}",
                self.config.min_replicas
            ))
        })
    }

    /// Waits while `group` cannot take a write: up to `removal_wait_ms` for a failed replica
    /// to leave, up to `below_min_wait_ms` for a replica to come back.
    pub(super) async fn wait_writable(&self, group: usize) -> Result<(), VolumeError> {
        self.wait_unblocked(group, true).await
    }

    /// Waits, up to `removal_wait_ms`, until no replica of `group` that failed is still in its
    /// acting set; a group below `min_replicas` does not hold this up. What a flush needs: a
    /// group that cannot take writes has no acknowledged write that its live replicas lack.
    pub(super) async fn wait_removals(&self, group: usize) -> Result<(), VolumeError> {
        self.wait_unblocked(group, false).await
    }

    async fn wait_unblocked(&self, group: usize, need_min: bool) -> Result<(), VolumeError> {
        let start = Instant::now();
        let removal_deadline = start + Duration::from_millis(self.config.removal_wait_ms);
        let below_min_deadline = start + Duration::from_millis(self.config.below_min_wait_ms);
        loop {
            let changed = self.group_changed[group].notified();
            let deadline = match self.blocked(group, &self.members(group)) {
                None => return Ok(()),
                Some(Blocked::BelowMin(_)) if !need_min => return Ok(()),
                Some(Blocked::Removing(_)) if Instant::now() < removal_deadline => removal_deadline,
                Some(Blocked::BelowMin(_)) if Instant::now() < below_min_deadline => {
                    below_min_deadline
                }
                Some(blocked) => return Err(blocked.into_error()),
            };
            let poll = Instant::now() + Duration::from_millis(WAIT_POLL_MS);
            let _ = tokio::time::timeout_at(poll.min(deadline), changed).await;
        }
    }
}

/// Runs `action` for `replica` of `group`, then whatever the resulting events ask for, until
/// nothing is left to do: the removal's attempts, the pauses between them, the probes. Holds
/// the volume weakly: a volume dropped meanwhile ends it.
async fn drive(
    volume: Weak<Inner>,
    group: usize,
    replica: Arc<Replica>,
    mut action: Action,
    why: String,
) {
    loop {
        let event = match action {
            Action::None | Action::Wake => return,
            Action::RetryAt(at) => {
                tokio::time::sleep_until(at).await;
                Event::RetryDue
            }
            Action::Remove { attempt } => {
                let Some(inner) = volume.upgrade() else {
                    return;
                };
                inner.remove_once(group, &replica, attempt, &why).await
            }
            Action::Probe => {
                let Some(inner) = volume.upgrade() else {
                    return;
                };
                let probe = inner.header(Op::GetExtentVersions, 0, 1, 0, WriteVersion::NONE);
                match replica.link.probe_in_session(Request::new(probe)).await {
                    Ok((_, power_epoch)) => {
                        // An answer in a new power epoch tells the ledger what was lost.
                        replica.ledger().read(power_epoch);
                        if inner.must_leave(group, &replica) {
                            Event::MustLeave
                        } else {
                            Event::ProbeAnswered
                        }
                    }
                    Err(_) => Event::ProbeFailed,
                }
            }
        };
        let Some(inner) = volume.upgrade() else {
            return;
        };
        if inner.fenced_by().is_some() {
            return;
        }
        let (next, changed) = replica.apply(event);
        if changed {
            inner.group_changed[group].notify_waiters();
            tracing::info!(volume = %inner.config.volume, group, replica = %replica.addr(), state = ?replica.state(), "replica membership changed");
        }
        action = next;
    }
}

impl Inner {
    /// Whether `replica` of `group`, whose removal was refused and which answers again, must
    /// leave all the same: another member is live again (the removal can go through now, and
    /// the replica may lack writes that failed on it), or it lost acknowledged writes while a
    /// stale member holds every one, as far as this client's ledgers know (that member's
    /// resync checks its power epoch before it is brought back without a copy).
    fn must_leave(&self, group: usize, replica: &Arc<Replica>) -> bool {
        let members = self.members(group);
        let mut others = members.iter().filter(|r| !Arc::ptr_eq(r, replica));
        let lost_acked = replica.ledger().lost_acked();
        others.any(|r| {
            r.is_live() || (lost_acked && r.is_stale() && r.ledger().missed_no_acked_write())
        })
    }

    /// One attempt at removing `replica` from `group`'s acting set, as the event it ends in.
    async fn remove_once(&self, group: usize, replica: &Replica, attempt: u32, why: &str) -> Event {
        let failure = ReplicaFailure {
            volume: self.volume(),
            group,
            replica: replica.addr(),
            attach_epoch: self.config.attach_epoch,
            reason: why.to_owned(),
        };
        let result = self.observer.replica_failed(failure).await;
        let now = Instant::now();
        let (volume, addr) = (self.config.volume, replica.addr());
        match result {
            Ok(()) => {
                if attempt > 1 {
                    tracing::info!(%volume, group, replica = %addr, attempt, "replica removal committed after retries");
                }
                Event::RemovalCommitted
            }
            Err(RemovalError::Unavailable(e)) => {
                tracing::warn!(%volume, group, replica = %addr, attempt, error = %e, "replica removal not committed; the group's writes wait and it is retried");
                Event::RemovalFailed {
                    cause: NotRemoved::Unavailable,
                    now,
                }
            }
            Err(RemovalError::Refused(e)) => {
                tracing::error!(%volume, group, replica = %addr, attempt, error = %e, "replica removal refused; the group takes no writes until the replica answers");
                Event::RemovalFailed {
                    cause: NotRemoved::Refused,
                    now,
                }
            }
            Err(RemovalError::Fenced { current }) => {
                let _ = self.fence(current);
                Event::RemovalFailed {
                    cause: NotRemoved::Refused,
                    now,
                }
            }
        }
    }
}
