//! A bound on the audit entries of refused calls. Each entry is a Raft commit, so a caller that
//! may do nothing could otherwise keep the log, and every member's disk, busy by calling in a
//! loop. Each principal (all unauthenticated callers count as one) may have
//! [`REFUSALS_BURST`] refusals written at once and [`REFUSALS_PER_SEC`] a second after that;
//! beyond it a refusal is counted instead, and the principal's next written entry says how many
//! were counted since the last. A count left when a flood stops is written by a flush
//! [`FLUSH_AFTER_MS`] later. Every refusal is thus an entry or part of one's count; the caller
//! is refused either way.
//!
//! Pure: the caller passes the time and writes what [`Limiter::admit`] and
//! [`Limiter::flush`] say.

use std::collections::HashMap;
use std::sync::Mutex;

/// Refusals of one principal written at once.
pub const REFUSALS_BURST: u32 = 20;
/// Refusals of one principal written a second, once the burst is spent.
pub const REFUSALS_PER_SEC: u32 = 5;
/// How long after the first counted refusal its count is written, if no entry carried it.
pub const FLUSH_AFTER_MS: u64 = 1_000;
/// Most principals tracked; the quietest are forgotten first (each with nothing counted).
pub const PRINCIPALS_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Refusals that may be written now, in thousandths.
    tokens_milli: u64,
    at_ms: u64,
    /// Refusals counted and not yet written.
    counted: u64,
}

/// What to do with a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write its entry, saying that `counted_before` refusals of the principal were counted
    /// since its last one.
    Write { counted_before: u64 },
    /// Count it; when `flush_due` is set, this is the first of a run, and the caller asks
    /// [`Limiter::flush`] after [`FLUSH_AFTER_MS`].
    Count { flush_due: bool },
}

/// The per-principal budgets of one member.
#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

const FULL_MILLI: u64 = REFUSALS_BURST as u64 * 1000;

impl Limiter {
    /// Decides about one refusal of `principal` at `now_ms`.
    pub fn admit(&self, principal: &str, now_ms: u64) -> Admit {
        let mut buckets = self.buckets.lock().expect("refusal buckets");
        if !buckets.contains_key(principal) && buckets.len() >= PRINCIPALS_MAX {
            forget_quietest(&mut buckets, now_ms);
        }
        let b = buckets.entry(principal.to_owned()).or_insert(Bucket {
            tokens_milli: FULL_MILLI,
            at_ms: now_ms,
            counted: 0,
        });
        refill(b, now_ms);
        if b.tokens_milli >= 1000 {
            b.tokens_milli -= 1000;
            let counted_before = std::mem::take(&mut b.counted);
            return Admit::Write { counted_before };
        }
        b.counted += 1;
        Admit::Count {
            flush_due: b.counted == 1,
        }
    }

    /// The count of `principal` not yet written (taken: the caller writes it).
    pub fn flush(&self, principal: &str) -> u64 {
        let mut buckets = self.buckets.lock().expect("refusal buckets");
        buckets
            .get_mut(principal)
            .map_or(0, |b| std::mem::take(&mut b.counted))
    }
}

fn refill(b: &mut Bucket, now_ms: u64) {
    let elapsed = now_ms.saturating_sub(b.at_ms);
    b.tokens_milli = (b.tokens_milli + elapsed * u64::from(REFUSALS_PER_SEC)).min(FULL_MILLI);
    b.at_ms = b.at_ms.max(now_ms);
}

/// Drops the tenth of the buckets with nothing counted that were refilled longest ago.
fn forget_quietest(buckets: &mut HashMap<String, Bucket>, now_ms: u64) {
    let mut quiet: Vec<(u64, String)> = buckets
        .iter_mut()
        .filter(|(_, b)| b.counted == 0)
        .map(|(p, b)| {
            refill(b, now_ms);
            (b.at_ms, p.clone())
        })
        .collect();
    quiet.sort();
    for (_, p) in quiet.into_iter().take(PRINCIPALS_MAX / 10 + 1) {
        buckets.remove(&p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_written_at_the_rate_and_every_refusal_is_accounted_for() {
        let l = Limiter::default();
        let mut written = 0u64;
        let mut counted_in_entries = 0u64;
        let mut flushes = 0;
        // 1,000 refusals in 2 s, one every 2 ms.
        for i in 0..1000u64 {
            match l.admit("fabric://prod/user/mallory", i * 2) {
                Admit::Write { counted_before } => {
                    written += 1;
                    counted_in_entries += counted_before;
                }
                Admit::Count { flush_due } => flushes += u64::from(flush_due),
            }
        }
        // The burst, then about five a second.
        assert!(
            (u64::from(REFUSALS_BURST) + 9..=u64::from(REFUSALS_BURST) + 11).contains(&written),
            "{written} written"
        );
        let left = l.flush("fabric://prod/user/mallory");
        assert_eq!(
            written + counted_in_entries + left,
            1000,
            "none unaccounted"
        );
        assert!(flushes >= 1);
        assert_eq!(l.flush("fabric://prod/user/mallory"), 0, "taken once");

        // Another principal has its own budget; after a quiet spell the burst is back.
        assert_eq!(
            l.admit("fabric://prod/user/alice", 2000),
            Admit::Write { counted_before: 0 }
        );
        for i in 0..u64::from(REFUSALS_BURST) {
            assert!(matches!(
                l.admit("fabric://prod/user/mallory", 60_000 + i),
                Admit::Write { .. }
            ));
        }
    }

    #[test]
    fn principals_tracked_are_bounded() {
        let l = Limiter::default();
        for i in 0..(PRINCIPALS_MAX as u64 + 50) {
            l.admit(&format!("fabric://prod/user/u{i}"), i);
        }
        assert!(l.buckets.lock().unwrap().len() <= PRINCIPALS_MAX);
    }
}
