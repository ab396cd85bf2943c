//! The scheduler against a simulated disk: closed-loop clients keep a number of requests
//! outstanding, the disk serves a fixed number at a time, each in a time that grows with its
//! size. Reservations, weights, limits in both dimensions, idle lending, and no credit for
//! idle time, checked over simulated seconds.

use std::collections::BTreeMap;

use super::*;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

/// A client: requests of `len` bytes, `depth` outstanding, from `start` until `stop`.
#[derive(Clone, Copy)]
struct Client {
    len: u64,
    depth: u32,
    start: u64,
    stop: u64,
}

impl Client {
    fn flood(len: u64, depth: u32) -> Client {
        Client {
            len,
            depth,
            start: 0,
            stop: u64::MAX,
        }
    }
}

/// A disk serving `slots` requests at a time, each in `base_ns` plus `ns_per_kib` per KiB.
struct Disk {
    slots: usize,
    base_ns: u64,
    ns_per_kib: u64,
}

/// Per queue: requests completed in `[from, to)`.
fn run(
    disk: &Disk,
    specs: &[(&'static str, Spec)],
    clients: &[(&'static str, Client)],
    from: u64,
    to: u64,
) -> BTreeMap<&'static str, u64> {
    let mut s: Mclock<&'static str, ()> = Mclock::default();
    for (k, spec) in specs {
        s.set_spec(k, *spec).unwrap();
    }
    let mut now = 0;
    // (completion time, queue)
    let mut in_flight: Vec<(u64, &'static str)> = Vec::new();
    let mut done: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut started: BTreeMap<&'static str, bool> = BTreeMap::new();
    let client = |k: &str| clients.iter().find(|(c, _)| *c == k).unwrap().1;
    while now < to {
        for (k, c) in clients {
            if now >= c.start && now < c.stop && !started.get(k).copied().unwrap_or(false) {
                started.insert(k, true);
                for _ in 0..c.depth {
                    s.push(k, (), c.len, now);
                }
            }
        }
        let mut wake = u64::MAX;
        while in_flight.len() < disk.slots {
            match s.next(now) {
                Next::Dispatch { queue, .. } => {
                    let len = client(queue).len;
                    in_flight.push((now + disk.base_ns + disk.ns_per_kib * len / 1024, queue));
                }
                Next::WaitUntil(t) => {
                    assert!(t > now, "a wait must be in the future");
                    wake = t;
                    break;
                }
                Next::Idle => break,
            }
        }
        let next_start = clients
            .iter()
            .map(|(_, c)| c.start)
            .filter(|t| *t > now)
            .min()
            .unwrap_or(u64::MAX);
        let next_done = in_flight.iter().map(|(t, _)| *t).min().unwrap_or(u64::MAX);
        now = next_done.min(wake).min(next_start).min(to);
        let (finished, rest): (Vec<_>, Vec<_>) =
            in_flight.into_iter().partition(|(t, _)| *t <= now);
        in_flight = rest;
        for (t, k) in finished {
            if t >= from {
                *done.entry(k).or_default() += 1;
            }
            let c = client(k);
            if now < c.stop {
                s.push(k, (), c.len, now);
            }
        }
    }
    done
}

fn iops(n: u64) -> Rate {
    Rate {
        iops: n,
        bytes_per_sec: 0,
    }
}

/// An SSD-like disk: 8 at a time, 400 µs per 4 KiB IO: 20,000 IOPS of 4 KiB.
fn ssd() -> Disk {
    Disk {
        slots: 8,
        base_ns: 380_000,
        ns_per_kib: 5_000,
    }
}

fn within(got: u64, want: u64, pct: u64) -> bool {
    got * 100 >= want * (100 - pct) && got * 100 <= want * (100 + pct)
}

#[test]
fn a_limited_queue_gets_its_limit_and_no_more() {
    let limited = Spec {
        limit: iops(1_000),
        ..Spec::default()
    };
    let done = run(
        &ssd(),
        &[("a", limited)],
        &[("a", Client::flood(4096, 32))],
        SEC,
        3 * SEC,
    );
    assert!(within(done["a"], 2_000, 1), "{done:?}");
}

#[test]
fn a_byte_limit_holds_large_requests() {
    // 1 MiB/s of 64 KiB requests: 16 a second.
    let limited = Spec {
        limit: Rate {
            iops: 1_000,
            bytes_per_sec: 1 << 20,
        },
        ..Spec::default()
    };
    let done = run(
        &ssd(),
        &[("a", limited)],
        &[("a", Client::flood(64 << 10, 8))],
        SEC,
        5 * SEC,
    );
    assert!(within(done["a"], 64, 2), "{done:?}");
}

#[test]
fn one_queue_alone_uses_the_whole_disk() {
    let done = run(&ssd(), &[], &[("a", Client::flood(4096, 32))], SEC, 2 * SEC);
    // 8 slots of 400 µs.
    assert!(within(done["a"], 20_000, 1), "{done:?}");
}

#[test]
fn weights_share_a_busy_disk() {
    let w = |weight| Spec {
        weight,
        ..Spec::default()
    };
    let done = run(
        &ssd(),
        &[("a", w(3)), ("b", w(1))],
        &[
            ("a", Client::flood(4096, 32)),
            ("b", Client::flood(4096, 32)),
        ],
        SEC,
        3 * SEC,
    );
    let total = done["a"] + done["b"];
    assert!(within(total, 40_000, 1), "{done:?}");
    assert!(within(done["a"], 30_000, 2), "{done:?}");
}

#[test]
fn a_reservation_holds_against_a_heavier_flood() {
    // b weighs 1 against a's 100 (its share would be ~200 IOPS), but is reserved 5,000.
    let a = Spec {
        weight: 100,
        ..Spec::default()
    };
    let b = Spec {
        reservation: iops(5_000),
        weight: 1,
        limit: Rate::NONE,
    };
    let done = run(
        &ssd(),
        &[("a", a), ("b", b)],
        &[
            ("a", Client::flood(4096, 32)),
            ("b", Client::flood(4096, 32)),
        ],
        SEC,
        3 * SEC,
    );
    assert!(done["b"] >= 2 * 5_000 * 99 / 100, "{done:?}");
    assert!(done["b"] <= 2 * 5_000 * 110 / 100, "{done:?}");
    assert!(within(done["a"] + done["b"], 40_000, 1), "{done:?}");
}

#[test]
fn a_reserved_queue_that_wants_less_gets_all_it_wants() {
    let b = Spec {
        reservation: iops(5_000),
        ..Spec::default()
    };
    // b keeps only 1 request outstanding: at 400 µs each it wants 2,500 a second.
    let done = run(
        &ssd(),
        &[("b", b)],
        &[
            ("a", Client::flood(4096, 64)),
            ("b", Client::flood(4096, 1)),
        ],
        SEC,
        3 * SEC,
    );
    assert!(done["b"] >= 2 * 2_000, "{done:?}");
}

#[test]
fn an_idle_queue_banks_no_credit() {
    // b sleeps for 2 s while a runs alone, then both flood with equal weights: b must not get
    // the disk to itself to catch up.
    let done = run(
        &ssd(),
        &[],
        &[
            ("a", Client::flood(4096, 32)),
            (
                "b",
                Client {
                    start: 2 * SEC,
                    ..Client::flood(4096, 32)
                },
            ),
        ],
        2 * SEC + 100 * MS,
        3 * SEC,
    );
    assert!(within(done["a"], done["b"], 5), "{done:?}");
}

#[test]
fn a_limited_background_class_lends_and_borrows() {
    // Recovery weighs 1 against the client's 100 and may not pass 100 MiB/s of 1 MiB copies:
    // alone it runs at its limit; while the client floods, it keeps its share (about 1/101 of
    // the disk's cost units, some 20 copies a second) and no more.
    let recovery = Spec {
        weight: 1,
        limit: Rate {
            iops: 0,
            bytes_per_sec: 100 << 20,
        },
        ..Spec::default()
    };
    let client = Spec {
        weight: 100,
        ..Spec::default()
    };
    let busy = run(
        &ssd(),
        &[("client", client), ("recovery", recovery)],
        &[
            ("client", Client::flood(4096, 32)),
            ("recovery", Client::flood(1 << 20, 4)),
        ],
        SEC,
        3 * SEC,
    );
    let alone = run(
        &ssd(),
        &[("client", client), ("recovery", recovery)],
        &[
            (
                "client",
                Client {
                    stop: 0,
                    ..Client::flood(4096, 32)
                },
            ),
            ("recovery", Client::flood(1 << 20, 4)),
        ],
        SEC,
        3 * SEC,
    );
    assert!(within(alone["recovery"], 200, 2), "{alone:?}");
    // Cost units: a 4 KiB IO costs 1 + 4/128, a 1 MiB copy 1 + 1024/128.
    let client_units = busy["client"] * 132 / 128;
    let recovery_units = busy["recovery"] * 9;
    assert!(within(recovery_units * 100, client_units, 10), "{busy:?}");
}

#[test]
fn bad_specs_are_refused() {
    let mut s: Mclock<u32, ()> = Mclock::default();
    assert_eq!(
        s.set_spec(
            1,
            Spec {
                weight: 0,
                ..Spec::default()
            }
        ),
        Err(SpecError::ZeroWeight)
    );
    assert!(matches!(
        s.set_spec(
            1,
            Spec {
                reservation: iops(2_000),
                limit: iops(1_000),
                weight: 1
            }
        ),
        Err(SpecError::ReservationAboveLimit { .. })
    ));
    assert!(s.spec(&1).is_none());
}

#[test]
fn a_queue_held_by_its_limit_says_when_to_ask_again() {
    let mut s: Mclock<u32, u32> = Mclock::default();
    s.set_spec(
        1,
        Spec {
            limit: iops(10),
            ..Spec::default()
        },
    )
    .unwrap();
    s.push(1, 7, 4096, 0);
    s.push(1, 8, 4096, 0);
    assert!(matches!(s.next(0), Next::Dispatch { request: 7, .. }));
    assert_eq!(s.next(0), Next::WaitUntil(100 * MS));
    assert!(matches!(
        s.next(100 * MS),
        Next::Dispatch { request: 8, .. }
    ));
    assert_eq!(s.next(100 * MS), Next::Idle);
    assert!(s.remove_idle(&1));
}

#[test]
fn a_limited_queue_that_ran_dry_catches_up_on_its_slack_and_no_more() {
    let mut s: Mclock<u32, u32> = Mclock::default();
    s.set_spec(
        1,
        Spec {
            limit: iops(10),
            ..Spec::default()
        },
    )
    .unwrap();
    s.push(1, 1, 4096, 0);
    assert!(matches!(s.next(0), Next::Dispatch { request: 1, .. }));
    // Dry from 0 to 250 ms: of the 150 ms lost after the next tag was due, 100 ms (one IO at
    // 10 a second) is made up at once.
    for r in 2..=4 {
        s.push(1, r, 4096, 250 * MS);
    }
    assert!(matches!(
        s.next(250 * MS),
        Next::Dispatch { request: 2, .. }
    ));
    assert!(matches!(
        s.next(250 * MS),
        Next::Dispatch { request: 3, .. }
    ));
    assert_eq!(s.next(250 * MS), Next::WaitUntil(350 * MS));
    assert!(matches!(
        s.next(350 * MS),
        Next::Dispatch { request: 4, .. }
    ));
}
