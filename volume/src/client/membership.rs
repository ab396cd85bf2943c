//! [`Membership`]: the life of one replica in one group (PG) of a volume, as the volume's
//! writer sees it. Pure: events in, an [`Action`] out, time passed in as a value, so every
//! transition is tested from a table without a socket or a metadata service.
//!
//! ```text
//!            Failed                 RemovalCommitted / ListedStale
//!   Live ───────────▶ Removing ───────────────────────────────▶ Stale ◀──┐
//!    ▲                 │   ▲                                      │      │ ResyncEnded
//!    │   RemovalFailed │   │ RetryDue (unavailable)  ResyncStarted│      │
//!    │                 ▼   │ ProbeFailed, MustLeave (refused)     ▼      │
//!    └─ ProbeAnswered ─ Stuck                                 CatchingUp ┘
//!       (refused only)                                            │ Restored (missed nothing)
//!                                                                 ▼
//!                                                                Live
//! ```
//!
//! Why a failed replica must *leave* before the group takes writes again: a write is
//! acknowledged only when every member of the acting set holds it, and the acting set is what
//! the metadata service records, not what this client believes. So a replica that failed is
//! `Removing` until the metadata service committed its removal; when that cannot be committed
//! (no quorum, unreachable) it is `Stuck` and the removal is retried with a growing pause.
//! Meanwhile the group's writes wait, bounded, and then fail: acknowledging them would let a
//! member of the acting set miss them. When the metadata service *refuses* the removal (the
//! replica holds the group's last current copy) the replica stays a member: it returns to
//! `Live` only once it answers a probe, and until then the group cannot be written. It
//! tries to leave once more instead (`MustLeave`) when another member has become live
//! meanwhile, or when it lost acknowledged writes that a stale member still holds.
//!
//! A replica never returns to `Live` from `Removing` or an unavailable `Stuck` on its own,
//! even if it answers again: it may have missed writes that failed on it but landed on the
//! others, and only a resync makes the copies identical again.

use std::time::Duration;

use tokio::time::Instant;

/// First pause before a removal that could not be committed is tried again, in milliseconds.
pub const REMOVAL_RETRY_MS_MIN: u64 = 100;
/// Longest pause between two attempts of a removal, in milliseconds.
pub const REMOVAL_RETRY_MS_MAX: u64 = 5_000;

/// Why a removal attempt did not commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotRemoved {
    /// The metadata service could not be reached or had no quorum: try again later.
    Unavailable,
    /// The metadata service refused it (the replica holds the last current copy): it stays in
    /// the acting set.
    Refused,
}

/// Where one replica of one group stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// In the acting set: written, read, counted towards `min_replicas`.
    Live,
    /// Failed; attempt `attempt` of its removal from the acting set is under way. No IO goes
    /// to it and the group's writes wait.
    Removing { attempt: u32 },
    /// Failed, and attempt `attempt` of its removal did not commit (`cause`). The next step
    /// is due at `retry_at`. No IO goes to it and the group's writes wait.
    Stuck {
        attempt: u32,
        cause: NotRemoved,
        retry_at: Instant,
    },
    /// Out of the acting set, as the metadata service records: neither written nor read.
    Stale,
    /// Stale and under resync: gets every write of the group (not counted towards the
    /// acknowledgement) and serves no read. `missed`: a write or flush to it failed, so this
    /// resync cannot make it current.
    CatchingUp { missed: bool },
}

/// What happened to the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An IO to it failed (an error, a timeout, a damaged reply).
    Failed,
    /// The metadata service committed its removal.
    RemovalCommitted,
    /// A removal attempt ended without a commit, at `now`.
    RemovalFailed { cause: NotRemoved, now: Instant },
    /// `retry_at` of a `Stuck` replica has come.
    RetryDue,
    /// A probe of a replica whose removal was refused was answered.
    ProbeAnswered,
    /// That probe failed.
    ProbeFailed,
    /// That probe was answered, but the replica must leave all the same: another member is
    /// live again, or a stale one holds acknowledged writes this one lost. Its removal is
    /// tried again.
    MustLeave,
    /// The PG map lists the replica as stale in this group.
    ListedStale,
    /// A resync of the (stale) replica begins.
    ResyncStarted,
    /// The resync ended without bringing the replica back.
    ResyncEnded,
    /// The resync finished and the metadata service restored the replica.
    Restored,
}

/// What the runtime must do after a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing (also: the event does not apply in this state).
    None,
    /// Ask the metadata service to remove the replica; report the result as an event.
    Remove { attempt: u32 },
    /// Deliver [`Event::RetryDue`] at this time.
    RetryAt(Instant),
    /// Send the replica a probe; report [`Event::ProbeAnswered`] or [`Event::ProbeFailed`].
    Probe,
    /// The group can be written again (or has settled): wake the writes waiting on it.
    Wake,
}

/// The pause before attempt `attempt + 1` of a removal: doubling from
/// [`REMOVAL_RETRY_MS_MIN`] up to [`REMOVAL_RETRY_MS_MAX`].
pub fn retry_pause(attempt: u32) -> Duration {
    let ms = REMOVAL_RETRY_MS_MIN.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    Duration::from_millis(ms.min(REMOVAL_RETRY_MS_MAX))
}

impl Membership {
    /// A replica as the PG map first lists it.
    pub fn listed(stale: bool) -> Membership {
        if stale {
            Membership::Stale
        } else {
            Membership::Live
        }
    }

    /// Applies `event`; returns what the runtime must do. An event that does not apply in
    /// the current state changes nothing and asks for nothing.
    pub fn on_event(&mut self, event: Event) -> Action {
        use Membership::*;
        let (next, action) = match (*self, event) {
            (Live, Event::Failed) => (Removing { attempt: 1 }, Action::Remove { attempt: 1 }),
            (Removing { .. }, Event::RemovalCommitted) => (Stale, Action::Wake),
            (Stuck { .. }, Event::RemovalCommitted) => (Stale, Action::Wake),
            (Removing { attempt }, Event::RemovalFailed { cause, now }) => {
                let retry_at = now + retry_pause(attempt);
                let stuck = Stuck {
                    attempt,
                    cause,
                    retry_at,
                };
                (stuck, Action::RetryAt(retry_at))
            }
            (
                Stuck {
                    attempt,
                    cause: NotRemoved::Unavailable,
                    ..
                },
                Event::RetryDue,
            ) => {
                let attempt = attempt + 1;
                (Removing { attempt }, Action::Remove { attempt })
            }
            (
                s @ Stuck {
                    cause: NotRemoved::Refused,
                    ..
                },
                Event::RetryDue,
            ) => (s, Action::Probe),
            (
                Stuck {
                    cause: NotRemoved::Refused,
                    ..
                },
                Event::ProbeAnswered,
            ) => (Live, Action::Wake),
            (
                Stuck {
                    attempt,
                    cause: NotRemoved::Refused,
                    ..
                },
                Event::ProbeFailed | Event::MustLeave,
            ) => {
                // Perhaps the others are current again and the removal can go through now.
                let attempt = attempt + 1;
                (Removing { attempt }, Action::Remove { attempt })
            }
            (Live | Removing { .. } | Stuck { .. }, Event::ListedStale) => (Stale, Action::Wake),
            (Stale, Event::ResyncStarted) => (CatchingUp { missed: false }, Action::None),
            (CatchingUp { .. }, Event::Failed) => (CatchingUp { missed: true }, Action::None),
            (CatchingUp { .. }, Event::ResyncEnded) => (Stale, Action::None),
            (CatchingUp { missed: false }, Event::Restored) => (Live, Action::Wake),
            // The metadata service lists it current again, but it failed an IO meanwhile (a
            // flush, say): it must leave the acting set once more.
            (CatchingUp { missed: true }, Event::Restored) => {
                (Removing { attempt: 1 }, Action::Remove { attempt: 1 })
            }
            (s, _) => (s, Action::None),
        };
        *self = next;
        action
    }

    /// Serves reads and must acknowledge every write.
    pub fn is_live(&self) -> bool {
        matches!(self, Membership::Live)
    }

    /// Gets the group's writes without counting towards their acknowledgement.
    pub fn is_catching_up(&self) -> bool {
        matches!(self, Membership::CatchingUp { missed: false })
    }

    /// Out of the acting set as the metadata service records it (resynced later).
    pub fn is_stale(&self) -> bool {
        matches!(self, Membership::Stale | Membership::CatchingUp { .. })
    }

    /// Failed but not (yet) out of the acting set: the group cannot take writes.
    pub fn blocks_writes(&self) -> bool {
        matches!(self, Membership::Removing { .. } | Membership::Stuck { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::Membership::*;
    use super::*;

    const UNAVAILABLE: NotRemoved = NotRemoved::Unavailable;
    const REFUSED: NotRemoved = NotRemoved::Refused;

    fn stuck(attempt: u32, cause: NotRemoved, at: Instant) -> Membership {
        Stuck {
            attempt,
            cause,
            retry_at: at,
        }
    }

    /// Every state against every event: the whole transition table, written out.
    #[test]
    fn the_transition_table() {
        let now = Instant::now();
        let at = now + retry_pause(2);
        let failed = |cause| Event::RemovalFailed { cause, now };
        let states = [
            Live,
            Removing { attempt: 2 },
            stuck(2, UNAVAILABLE, at),
            stuck(2, REFUSED, at),
            Stale,
            CatchingUp { missed: false },
            CatchingUp { missed: true },
        ];
        #[rustfmt::skip]
        let table: Vec<(Membership, Event, Membership, Action)> = vec![
            (Live, Event::Failed, Removing { attempt: 1 }, Action::Remove { attempt: 1 }),
            (Live, Event::ListedStale, Stale, Action::Wake),
            (Removing { attempt: 2 }, Event::RemovalCommitted, Stale, Action::Wake),
            (Removing { attempt: 2 }, failed(UNAVAILABLE), stuck(2, UNAVAILABLE, at), Action::RetryAt(at)),
            (Removing { attempt: 2 }, failed(REFUSED), stuck(2, REFUSED, at), Action::RetryAt(at)),
            (Removing { attempt: 2 }, Event::ListedStale, Stale, Action::Wake),
            (stuck(2, UNAVAILABLE, at), Event::RemovalCommitted, Stale, Action::Wake),
            (stuck(2, UNAVAILABLE, at), Event::RetryDue, Removing { attempt: 3 }, Action::Remove { attempt: 3 }),
            (stuck(2, UNAVAILABLE, at), Event::ListedStale, Stale, Action::Wake),
            (stuck(2, REFUSED, at), Event::RemovalCommitted, Stale, Action::Wake),
            (stuck(2, REFUSED, at), Event::RetryDue, stuck(2, REFUSED, at), Action::Probe),
            (stuck(2, REFUSED, at), Event::ProbeAnswered, Live, Action::Wake),
            (stuck(2, REFUSED, at), Event::ProbeFailed, Removing { attempt: 3 }, Action::Remove { attempt: 3 }),
            (stuck(2, REFUSED, at), Event::MustLeave, Removing { attempt: 3 }, Action::Remove { attempt: 3 }),
            (stuck(2, REFUSED, at), Event::ListedStale, Stale, Action::Wake),
            (Stale, Event::ResyncStarted, CatchingUp { missed: false }, Action::None),
            (CatchingUp { missed: false }, Event::Failed, CatchingUp { missed: true }, Action::None),
            (CatchingUp { missed: true }, Event::Failed, CatchingUp { missed: true }, Action::None),
            (CatchingUp { missed: false }, Event::ResyncEnded, Stale, Action::None),
            (CatchingUp { missed: true }, Event::ResyncEnded, Stale, Action::None),
            (CatchingUp { missed: false }, Event::Restored, Live, Action::Wake),
            (CatchingUp { missed: true }, Event::Restored, Removing { attempt: 1 }, Action::Remove { attempt: 1 }),
        ];
        let events = [
            Event::Failed,
            Event::RemovalCommitted,
            failed(UNAVAILABLE),
            failed(REFUSED),
            Event::RetryDue,
            Event::ProbeAnswered,
            Event::ProbeFailed,
            Event::MustLeave,
            Event::ListedStale,
            Event::ResyncStarted,
            Event::ResyncEnded,
            Event::Restored,
        ];
        for from in states {
            for event in events {
                let mut s = from;
                let action = s.on_event(event);
                let want = table
                    .iter()
                    .find(|(f, e, _, _)| *f == from && *e == event)
                    .map(|(_, _, to, a)| (*to, *a))
                    .unwrap_or((from, Action::None));
                assert_eq!((s, action), want, "{from:?} on {event:?}");
            }
        }
    }

    #[test]
    fn a_removal_that_keeps_failing_is_retried_ever_later_up_to_the_cap() {
        let mut s = Live;
        let mut now = Instant::now();
        assert_eq!(s.on_event(Event::Failed), Action::Remove { attempt: 1 });
        let mut pauses = Vec::new();
        for _ in 0..10 {
            let cause = UNAVAILABLE;
            let Action::RetryAt(at) = s.on_event(Event::RemovalFailed { cause, now }) else {
                panic!("a failed removal is retried");
            };
            pauses.push((at - now).as_millis() as u64);
            now = at;
            assert!(
                s.blocks_writes(),
                "a stuck replica blocks the group's writes"
            );
            assert!(matches!(s.on_event(Event::RetryDue), Action::Remove { .. }));
        }
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        assert_eq!(s.on_event(Event::RemovalCommitted), Action::Wake);
        assert_eq!(s, Stale);
    }

    #[test]
    fn a_failed_replica_that_answers_again_stays_out_until_resynced() {
        let mut s = Live;
        s.on_event(Event::Failed);
        let now = Instant::now();
        let cause = UNAVAILABLE;
        s.on_event(Event::RemovalFailed { cause, now });
        assert_eq!(s.on_event(Event::ProbeAnswered), Action::None);
        assert!(!s.is_live() && s.blocks_writes());
    }

    #[test]
    fn a_replica_that_missed_a_write_while_catching_up_cannot_be_restored() {
        let mut s = Stale;
        s.on_event(Event::ResyncStarted);
        assert!(s.is_catching_up() && s.is_stale() && !s.is_live());
        s.on_event(Event::Failed);
        assert!(!s.is_catching_up(), "it gets no further writes");
        assert_eq!(s.on_event(Event::ResyncEnded), Action::None);
        assert_eq!(s, Stale);
    }

    #[test]
    fn a_replica_restored_after_it_missed_a_flush_is_removed_again() {
        let mut s = CatchingUp { missed: false };
        s.on_event(Event::Failed);
        // The metadata service committed the restore before the client saw the failure.
        assert_eq!(s.on_event(Event::Restored), Action::Remove { attempt: 1 });
        assert!(!s.is_live() && s.blocks_writes());
    }
}
