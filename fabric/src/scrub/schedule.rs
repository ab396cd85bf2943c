//! When a volume's PGs are due for a scrub: a pure function of its scrub record, the time and
//! the intervals.
//!
//! Each volume has a phase within each interval, from a hash of its id, and each of its PGs is
//! due once per interval, from that phase on: so a cluster's volumes come due spread over the
//! interval instead of all at midnight, while one volume's PGs come due together (its writer
//! scrubs them in one pass, and the agent that scrubs a volume nobody serves attaches it once
//! per interval, not once per PG). A PG scrubbed late (its writer was down, or the scrub was
//! cut short) is due until it is scrubbed, and next due at its usual time. A PG never scrubbed
//! is due at its first slot after its writer began to follow the schedule (`since_ms`), so a
//! new cluster, or a gateway taking over many volumes, does not scrub everything at once; a
//! writer that comes and goes more often than the interval can delay a PG's first scrub, which
//! `fabricctl scrub start` makes at any time. An operator's request makes every PG due, at
//! the depth asked for.

use proto::meta as pb;

/// How often every PG is scrubbed: `light` checks checksums, `deep` also compares the copies.
/// Zero turns the scheduled scrubs of that kind off (requested ones still run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intervals {
    pub light_ms: u64,
    pub deep_ms: u64,
}

/// A day and a week.
pub const LIGHT_INTERVAL_DEFAULT_S: u64 = 24 * 3600;
pub const DEEP_INTERVAL_DEFAULT_S: u64 = 7 * 24 * 3600;

impl Default for Intervals {
    fn default() -> Intervals {
        Intervals {
            light_ms: LIGHT_INTERVAL_DEFAULT_S * 1000,
            deep_ms: DEEP_INTERVAL_DEFAULT_S * 1000,
        }
    }
}

/// A scrub to run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub deep: bool,
    /// In ascending order.
    pub pgs: Vec<u32>,
    /// The request it finishes (its time), if an operator asked for it.
    pub fulfils: Option<u64>,
}

/// What of volume `volume_id` (whose pool has `pg_count` PGs) is due at `now_ms`, given its
/// scrub record and when its writer began to follow the schedule (`since_ms`): a requested
/// scrub first, then deep scrubs, then light ones; `None` if nothing.
pub fn due(
    volume_id: u64,
    record: &pb::VolumeScrub,
    pg_count: u32,
    (since_ms, now_ms): (u64, u64),
    intervals: Intervals,
) -> Option<Due> {
    if record.requested_ms != 0 {
        return Some(Due {
            deep: record.requested_deep,
            pgs: (0..pg_count).collect(),
            fulfils: Some(record.requested_ms),
        });
    }
    let last: std::collections::BTreeMap<u32, &pb::PgScrub> =
        record.pgs.iter().map(|p| (p.pg, p)).collect();
    let due_of = |interval_ms: u64, last_of: fn(&pb::PgScrub) -> u64| -> Vec<u32> {
        if interval_ms == 0 {
            return Vec::new();
        }
        (0..pg_count)
            .filter(|pg| {
                let done = last.get(pg).map_or(0, |p| last_of(p));
                done.max(since_ms) < slot_start(now_ms, interval_ms, phase(volume_id, interval_ms))
            })
            .collect()
    };
    let deep = due_of(intervals.deep_ms, |p| p.last_deep_ms);
    if !deep.is_empty() {
        return Some(Due {
            deep: true,
            pgs: deep,
            fulfils: None,
        });
    }
    let light = due_of(intervals.light_ms, |p| p.last_ms);
    (!light.is_empty()).then_some(Due {
        deep: false,
        pgs: light,
        fulfils: None,
    })
}

/// The volume's offset within an interval: a hash of its id.
fn phase(volume_id: u64, interval_ms: u64) -> u64 {
    // splitmix64: cheap, and spreads neighbouring ids over the whole range.
    let mut x = volume_id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) % interval_ms
}

/// The latest time at or before `now_ms` that is `phase_ms` past a multiple of `interval_ms`
/// (0 if there is none yet).
fn slot_start(now_ms: u64, interval_ms: u64, phase_ms: u64) -> u64 {
    if now_ms < phase_ms {
        return 0;
    }
    now_ms - (now_ms - phase_ms) % interval_ms
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    const DAY: u64 = 24 * 3600 * 1000;

    fn record(pgs: &[(u32, u64, u64)]) -> pb::VolumeScrub {
        pb::VolumeScrub {
            pgs: pgs
                .iter()
                .map(|&(pg, last_ms, last_deep_ms)| pb::PgScrub {
                    pg,
                    last_ms,
                    last_deep_ms,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_request_makes_every_pg_due_at_its_depth() {
        let r = pb::VolumeScrub {
            requested_ms: 5,
            requested_deep: true,
            ..record(&[(0, 100, 100)])
        };
        assert_eq!(
            due(1, &r, 4, (150, 200), Intervals::default()),
            Some(Due {
                deep: true,
                pgs: vec![0, 1, 2, 3],
                fulfils: Some(5)
            })
        );
    }

    #[test]
    fn a_volumes_pgs_come_due_together_once_per_interval_and_volumes_spread() {
        let iv = Intervals {
            light_ms: DAY,
            deep_ms: 7 * DAY,
        };
        let now = 1000 * DAY;
        // A writer that starts now scrubs nothing at once...
        assert_eq!(due(9, &record(&[]), 3, (now, now), iv), None);
        // ...and within a day each volume's never scrubbed PGs come due, all of a volume's
        // together, and within the week deep.
        let mut first = BTreeMap::new();
        let mut deep = BTreeSet::new();
        for volume in 1..=8 {
            let mut t = now;
            while t <= now + 7 * DAY {
                if let Some(d) = due(volume, &record(&[]), 3, (now, t), iv) {
                    assert_eq!(d.pgs, [0, 1, 2]);
                    first.entry(volume).or_insert(t);
                    if d.deep {
                        deep.insert(volume);
                    }
                }
                t += 600_000;
            }
        }
        assert!(first.values().all(|&t| t <= now + DAY), "{first:?}");
        assert_eq!(deep.len(), 8);
        let times: BTreeSet<u64> = first.values().copied().collect();
        assert!(
            times.len() >= 6,
            "volumes spread, not all at once: {first:?}"
        );
        // All scrubbed deep just now: nothing is due until the next slot, then every PG is,
        // once; a PG the last pass missed is due at once.
        let done = record(&[(0, now, now), (1, now, now), (2, now, now)]);
        assert_eq!(due(9, &done, 3, (0, now + 1), iv), None);
        let next = (now..=now + DAY)
            .step_by(60_000)
            .find(|&t| due(9, &done, 3, (0, t), iv).is_some())
            .expect("due within a day");
        assert_eq!(
            due(9, &done, 3, (0, next), iv).map(|d| d.pgs),
            Some(vec![0, 1, 2])
        );
        let partly = record(&[(0, next, next), (1, next, next), (2, 0, now)]);
        assert_eq!(
            due(9, &partly, 3, (0, next + 1), iv).map(|d| d.pgs),
            Some(vec![2])
        );
    }

    #[test]
    fn a_late_scrub_keeps_the_pgs_slot_and_zero_turns_a_kind_off() {
        let iv = Intervals {
            light_ms: DAY,
            deep_ms: 0,
        };
        let phase0 = phase(3, DAY);
        let slot = 50 * DAY + phase0;
        // Scrubbed late in its slot: next due at the next slot, not a day after the scrub.
        let late = record(&[(0, slot + DAY / 2, 0)]);
        assert_eq!(due(3, &late, 1, (0, slot + DAY - 1), iv), None);
        assert!(due(3, &late, 1, (0, slot + DAY), iv).is_some());
        // No deep scrubs are scheduled, and with light ones off too, nothing is.
        let off = Intervals {
            light_ms: 0,
            deep_ms: 0,
        };
        assert_eq!(due(3, &record(&[]), 4, (0, slot), off), None);
    }
}
