//! The planner against the state machine: it only proposes what `apply` accepts, places
//! tasks on current holders, spreads them, waits a bounded time for a busy holder, and
//! releases the tasks of dead nodes. A seeded run drives whole jobs to the end under node
//! deaths and stale replicas.

use std::collections::{BTreeMap, BTreeSet};

use super::super::command::{InferCommand, ReadFrom};
use super::super::model::{JobState, TaskOutput, TaskReport, TaskState};
use super::super::state_tests::{cluster, infer, start};
use super::*;
use crate::meta::command::CommandV1;
use crate::meta::model::Health;

fn workers(nodes: &[NodeId], slots: u32, seen_ms: u64) -> BTreeMap<NodeId, Worker> {
    nodes
        .iter()
        .map(|&n| {
            let w = Worker {
                slots,
                fast: false,
                seen_ms,
            };
            (n, w)
        })
        .collect()
}

fn apply_plan(s: &mut ClusterState, p: &Plan, at_ms: u64) {
    for r in &p.release {
        s.apply(&infer(InferCommand::Release {
            job: r.job,
            task: r.task,
            attempt: r.attempt,
            node: r.node,
            reason: r.reason.clone(),
            at_ms,
        }))
        .expect("release");
    }
    for (job, assignments) in &p.assign {
        s.apply(&infer(InferCommand::Assign {
            job: *job,
            assignments: assignments.clone(),
            at_ms,
        }))
        .expect("the planner proposes only what apply accepts");
    }
}

#[test]
fn with_free_slots_every_task_runs_locally_and_the_holders_share_them() {
    let mut s = cluster();
    let job = start(&mut s);
    let p = plan(
        &s,
        &workers(&[1, 2, 3, 4], 8, 100),
        0,
        100,
        PlanConfig::default(),
    );
    let given = &p.assign[&job.id];
    assert_eq!(given.len(), 16);
    let mut per_node: BTreeMap<NodeId, u32> = BTreeMap::new();
    for a in given {
        assert!(a.local);
        assert!(
            s.current_holders("in", job.tasks[a.task as usize].pg)
                .contains(&a.node)
        );
        *per_node.entry(a.node).or_default() += 1;
    }
    // Least busy first: 16 tasks over 4 nodes that each hold 3/4 of the PGs, so within one
    // or two of 4 each (greedy: a task's holders may all be the busier ones).
    let (min, max) = (per_node.values().min(), per_node.values().max());
    assert_eq!(per_node.len(), 4, "{per_node:?}");
    assert!(max.unwrap() - min.unwrap() <= 2, "{per_node:?}");
    apply_plan(&mut s, &p, 100);
}

#[test]
fn fast_cpus_are_preferred_among_holders() {
    let mut s = cluster();
    let job = start(&mut s);
    let mut w = workers(&[1, 2, 3, 4], 16, 100);
    w.get_mut(&2).unwrap().fast = true;
    let p = plan(&s, &w, 0, 100, PlanConfig::default());
    for a in &p.assign[&job.id] {
        let holders = s.current_holders("in", job.tasks[a.task as usize].pg);
        assert_eq!(a.node == 2, holders.contains(&2), "task {}", a.task);
    }
}

#[test]
fn a_task_waits_for_a_busy_holder_then_runs_remotely() {
    let mut s = cluster();
    let job = start(&mut s);
    let holders = s.current_holders("in", job.tasks[0].pg);
    let other = (1..=4).find(|n| !holders.contains(n)).unwrap();
    // Every holder of task 0's PG is busy with one slot; the fourth node is free.
    let mut w = workers(&[1, 2, 3, 4], 1, 100);
    // The free node has slots to spare after it took the pending tasks it holds itself.
    w.get_mut(&other).unwrap().slots = 16;
    let cfg = PlanConfig::default();
    // Fill the holders with other tasks whose PG they hold.
    let mut busy = BTreeSet::new();
    for (i, t) in job.tasks.iter().enumerate().skip(1) {
        let hs = s.current_holders("in", t.pg);
        if let Some(&h) = hs
            .iter()
            .find(|h| holders.contains(h) && !busy.contains(*h))
        {
            s.apply(&infer(InferCommand::Assign {
                job: job.id,
                assignments: vec![super::super::command::Assignment {
                    task: i as u32,
                    node: h,
                    local: true,
                }],
                at_ms: 10,
            }))
            .expect("assign");
            busy.insert(h);
        }
    }
    assert_eq!(busy.len(), 3, "every holder busy");
    // No task of the job has finished, so nothing says how long a holder stays busy: task 0
    // waits the longest wait, not the shortest.
    let wait = cfg.locality_wait_max_ms;
    for at in [10 + cfg.locality_wait_ms, 10 + wait - 1] {
        w.values_mut().for_each(|x| x.seen_ms = at);
        let early = plan(&s, &w, 0, at, cfg);
        let early_0 = early
            .assign
            .get(&job.id)
            .into_iter()
            .flatten()
            .find(|a| a.task == 0);
        assert!(early_0.is_none_or(|a| a.local), "at {at}: {early_0:?}");
    }
    // After the wait, it may run remotely on the free node.
    w.values_mut().for_each(|x| x.seen_ms = 10 + wait);
    let late = plan(&s, &w, 0, 10 + wait, cfg);
    let remote: Vec<_> = late.assign[&job.id].iter().filter(|a| !a.local).collect();
    assert!(remote.iter().all(|a| a.node == other), "{remote:?}");
    assert!(remote.iter().any(|a| a.task == 0), "{remote:?}");
    // It took the tasks it holds locally first.
    let own = late.assign[&job.id]
        .iter()
        .filter(|a| a.local && a.node == other)
        .count();
    assert!(own > 0);
    apply_plan(&mut s, &late, 10 + wait);
}

#[test]
fn the_wait_for_a_holder_is_the_longest_finished_task_within_its_bounds() {
    let mut s = cluster();
    let job = start(&mut s);
    let cfg = PlanConfig::default();
    let mut job = s.infer.jobs[&job.id].clone();
    assert_eq!(
        locality_wait(&job, cfg),
        cfg.locality_wait_max_ms,
        "none finished"
    );
    let finished = |elapsed_ms| {
        TaskState::Done(TaskOutput {
            node: 1,
            offset: 0,
            bytes: 0,
            report: TaskReport {
                elapsed_ms,
                ..TaskReport::default()
            },
        })
    };
    job.tasks[0].state = finished(50_000);
    job.tasks[1].state = finished(70_000);
    assert_eq!(locality_wait(&job, cfg), 70_000);
    job.tasks[1].state = finished(100);
    assert_eq!(locality_wait(&job, cfg), 50_000);
    job.tasks[0].state = finished(10);
    assert_eq!(locality_wait(&job, cfg), cfg.locality_wait_ms, "at least");
    job.tasks[2].state = finished(3_600_000);
    assert_eq!(
        locality_wait(&job, cfg),
        cfg.locality_wait_max_ms,
        "at most"
    );
}

#[test]
fn tasks_of_a_down_node_or_a_silent_worker_are_released() {
    let mut s = cluster();
    let job = start(&mut s);
    let w = workers(&[1, 2, 3, 4], 8, 100);
    let p = plan(&s, &w, 0, 100, PlanConfig::default());
    apply_plan(&mut s, &p, 100);
    s.apply(
        &CommandV1::SetHealth {
            node: 2,
            health: Health::Down,
        }
        .into(),
    )
    .expect("down");
    let cfg = PlanConfig::default();
    let p = plan(&s, &w, 0, 200, cfg);
    assert_eq!(p.release.len(), 4);
    assert!(
        p.release
            .iter()
            .all(|r| r.node == 2 && r.reason.contains("down"))
    );
    apply_plan(&mut s, &p, 200);
    // Node 1's worker falls silent; a leader that just started waits one silence first.
    let mut w = workers(&[2, 3, 4], 8, 100);
    w.insert(
        1,
        Worker {
            slots: 8,
            fast: false,
            seen_ms: 100,
        },
    );
    let heard_since = 50_000;
    let quiet = plan(&s, &w, heard_since, heard_since + 1, cfg);
    assert!(quiet.release.is_empty(), "{quiet:?}");
    let silent = plan(&s, &w, 0, 100 + cfg.worker_silent_ms + 1, cfg);
    assert!(
        silent
            .release
            .iter()
            .any(|r| r.node == 1 && r.reason.contains("silent"))
    );
    let _ = job;
}

/// A seeded run: the planner, nodes that finish or fail tasks, nodes that die and come back,
/// and replicas that go stale; every job ends done, each task's output recorded exactly once,
/// and no completion ever stands on a replica that was stale when it completed.
#[test]
fn seeded_runs_finish_every_job_with_each_task_written_once() {
    for seed in 1..=40u64 {
        run(seed);
    }
}

fn run(seed: u64) {
    let mut rng = seed;
    let mut next = move |n: u64| {
        rng = placement::hash::mix64(rng.wrapping_add(0x9e37_79b9_7f4a_7c15));
        rng % n
    };
    let mut s = cluster();
    let job = start(&mut s);
    s.apply(
        &CommandV1::AttachVolume {
            name: "out".into(),
            client: "writer".into(),
            force: false,
        }
        .into(),
    )
    .expect("attach");
    let epoch = s.volumes["out"].attach_epoch;
    let cfg = PlanConfig::default();
    let mut written = BTreeSet::new();
    for step in 0..2_000u64 {
        let now = 1_000 + step * 100;
        // Faults: a node goes down or comes back; a replica goes stale or is restored.
        match next(20) {
            0 => {
                let node = 1 + next(4);
                let health = if next(2) == 0 {
                    Health::Down
                } else {
                    Health::Up
                };
                s.apply(&CommandV1::SetHealth { node, health }.into()).ok();
            }
            1 => {
                let pg = next(32) as u32;
                let holders = s.current_holders("in", pg);
                let v = s.volumes.get_mut("in").unwrap();
                if next(2) == 0 && holders.len() > 1 {
                    v.stale.entry(pg).or_default().insert(holders[0]);
                } else {
                    v.stale.remove(&pg);
                }
            }
            _ => {}
        }
        let up: Vec<NodeId> = (1..=4)
            .filter(|n| s.nodes[n].health == Health::Up)
            .collect();
        let w = workers(&up, 2, now);
        let p = plan(&s, &w, 0, now, cfg);
        apply_plan(&mut s, &p, now);
        // Running tasks finish, fail, or keep running.
        let running: Vec<(u32, NodeId, u32, bool)> = s.infer.jobs[&job.id]
            .tasks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t.state {
                TaskState::Running {
                    node,
                    attempt,
                    local,
                    ..
                } => Some((i as u32, node, attempt, local)),
                _ => None,
            })
            .collect();
        for (task, node, attempt, local) in running {
            let pg = s.infer.jobs[&job.id].tasks[task as usize].pg;
            let read_from = if local {
                node
            } else {
                match s.current_holders("in", pg).first() {
                    Some(&h) => h,
                    None => continue,
                }
            };
            match next(4) {
                0 => {
                    let offset = s.infer.jobs[&job.id].out_next;
                    let done = s.apply(&infer(InferCommand::Complete {
                        job: job.id,
                        task,
                        attempt,
                        out_epoch: epoch,
                        read_from: vec![ReadFrom {
                            pg,
                            node: read_from,
                        }],
                        output: TaskOutput {
                            node,
                            offset,
                            bytes: 4096,
                            report: TaskReport::default(),
                        },
                        at_ms: now,
                    }));
                    let current = s.current_holders("in", pg).contains(&read_from);
                    assert_eq!(done.is_ok(), current, "seed {seed}: {done:?}");
                    if done.is_ok() {
                        assert!(
                            written.insert(task),
                            "seed {seed}: task {task} written twice"
                        );
                    } else {
                        s.apply(&infer(InferCommand::Release {
                            job: job.id,
                            task,
                            attempt,
                            node,
                            reason: "its replica went stale".into(),
                            at_ms: now,
                        }))
                        .expect("release");
                    }
                }
                // A failure now and then, never so many that the task runs out of attempts
                // (down nodes and stale replicas cost attempts too).
                1 if attempt < 2 && next(8) == 0 => {
                    s.apply(&infer(InferCommand::Release {
                        job: job.id,
                        task,
                        attempt,
                        node,
                        reason: "failed".into(),
                        at_ms: now,
                    }))
                    .expect("release");
                }
                _ => {}
            }
        }
        if !s.infer.jobs[&job.id].running() {
            break;
        }
    }
    let job = &s.infer.jobs[&job.id];
    assert_eq!(job.state, JobState::Done, "seed {seed}");
    assert_eq!(written.len(), 16, "seed {seed}");
    let mut offsets: Vec<u64> = job
        .tasks
        .iter()
        .map(|t| match t.state {
            TaskState::Done(o) => o.offset,
            _ => unreachable!(),
        })
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), 16, "seed {seed}: segments overlap");
}
