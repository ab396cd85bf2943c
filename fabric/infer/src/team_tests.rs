use super::*;
use std::sync::atomic::AtomicU32;

fn team(threads: usize) -> Arc<Team> {
    Arc::new(Team::new(threads).expect("team"))
}

/// Runs a loop of `tasks` on `team` and returns how often each index ran.
fn counts(team: &Arc<Team>, tasks: usize) -> Vec<u32> {
    let seen: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
    team.install(|| for_each(tasks, |i| _ = seen[i].fetch_add(1, Relaxed)));
    seen.into_iter().map(AtomicU32::into_inner).collect()
}

#[test]
fn every_task_runs_exactly_once_whatever_the_threads_and_tasks() {
    for threads in 1..=4 {
        let t = team(threads);
        for tasks in [0, 1, 2, 3, 7, 64, 1000] {
            for _ in 0..20 {
                assert!(
                    counts(&t, tasks).iter().all(|c| *c == 1),
                    "{threads} threads, {tasks} tasks"
                );
            }
        }
    }
}

#[test]
fn chunks_cover_the_slice_and_map_keeps_the_order() {
    let t = team(3);
    t.install(|| {
        let mut data = vec![0usize; 1001];
        chunks_mut(&mut data, 64, |i, chunk| {
            assert!(chunk.len() == 64 || (i == 15 && chunk.len() == 41));
            chunk.iter_mut().for_each(|v| *v += i + 1);
        });
        assert!(data.iter().enumerate().all(|(j, v)| *v == j / 64 + 1));
        assert_eq!(
            map(100, |i| i * i),
            (0..100).map(|i| i * i).collect::<Vec<_>>()
        );
    });
}

#[test]
fn a_loop_inside_a_task_runs_on_that_task_s_thread() {
    let t = team(2);
    let total = AtomicUsize::new(0);
    t.install(|| {
        for_each(8, |_| {
            assert_eq!(threads(), 1, "a nested loop has one thread");
            for_each(8, |_| _ = total.fetch_add(1, Relaxed));
        })
    });
    assert_eq!(total.into_inner(), 64);
    assert_eq!(t.install(threads), 2);
}

#[test]
fn loops_from_several_threads_at_once_all_finish() {
    let t = team(2);
    std::thread::scope(|s| {
        for _ in 0..4 {
            let t = Arc::clone(&t);
            s.spawn(move || {
                for tasks in 0..200 {
                    assert!(counts(&t, tasks).iter().all(|c| *c == 1));
                }
            });
        }
    });
}

#[test]
fn a_task_s_panic_reaches_the_caller_and_the_team_goes_on() {
    let t = team(2);
    let caught = catch_unwind(AssertUnwindSafe(|| {
        t.install(|| {
            for_each(16, |i| {
                if i == 5 {
                    panic!("task five");
                }
            })
        })
    }));
    let payload = caught.expect_err("the panic reaches the caller");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"task five"));
    assert!(counts(&t, 100).iter().all(|c| *c == 1));
}

#[test]
fn sleeping_workers_wake_for_the_next_loop_and_a_dropped_team_ends_them() {
    let t = Arc::new(
        TeamBuilder::new(3)
            .spin(Duration::from_micros(100))
            .name("sleepy")
            .build()
            .expect("team"),
    );
    let ran_on = Mutex::new(std::collections::HashSet::new());
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(20)); // past the spin: the workers sleep
        t.install(|| {
            for_each(64, |i| {
                ran_on.lock().unwrap().insert(std::thread::current().id());
                // Long enough (about 64 ms a loop) for a woken worker to come back even on a
                // busy host (2-8 ms on these machines).
                if i % 2 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        });
    }
    assert!(
        ran_on.into_inner().unwrap().len() > 1,
        "the workers took tasks"
    );
    assert!(t.workers_cpu_ns() > 0);
    drop(t); // joins its workers: returns only if they end
}

#[test]
fn on_start_runs_on_every_worker() {
    let started = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&started);
    let t = TeamBuilder::new(4)
        .on_start(move || _ = s.fetch_add(1, SeqCst))
        .build()
        .expect("team");
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.load(SeqCst) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(started.load(SeqCst), 3, "three workers beside the caller");
    drop(t);
}
