//! Which node runs which task: the leader's decision, pure (no IO, no clock; the caller gives
//! the time), so seeded simulations and tests drive it directly.
//!
//! A pending task goes to a node that holds a current replica of its extent's PG, is up, in
//! placement, has a free task slot and asked for work recently (its worker runs). Among those:
//! CPUs with AMX or AVX-512 first, then the least busy, then a spread that differs per task, so
//! a job's reads fall on every replica of a PG rather than on its primary. When every holder
//! is busy, the task waits for one (delay scheduling) as long as the job's longest task took so
//! far, between 30 s and 10 min, then goes to any free node, which reads the extent from a
//! holder over the network: a remote task. Tasks differ a hundredfold (an extent of zeros
//! takes a second, one of text minutes), so a short wait sends the long tasks' neighbours
//! remote whenever a node finished its short ones (a 16-task job lost 6 % of its locality to
//! one such task). Inference is background work at a CPU share: a node that idles a while
//! costs little, a remote read costs the network the job is placed to spare. Until one of the
//! job's tasks has finished, nothing says how long a holder stays busy (the first tasks also
//! load the model), so the wait is the longest. A task running on a node that is down, out,
//! gone, or whose worker fell silent is released, and runs again elsewhere.

use std::collections::BTreeMap;

use super::command::Assignment;
use super::model::TaskState;
use crate::meta::model::{Health, NodeId, Participation};
use crate::meta::state::ClusterState;

/// What a node's inference worker said when it last asked for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Worker {
    /// Tasks it runs at once.
    pub slots: u32,
    /// Its CPU has AMX or AVX-512.
    pub fast: bool,
    /// When it last asked (the leader's clock, ms).
    pub seen_ms: u64,
}

/// The planner's knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanConfig {
    /// How long a task waits for a busy holder before it may run remotely: the longest any of
    /// its job's tasks took so far (a holder is then likely free again within that), at least
    /// this, and the most (below) while none has finished...
    pub locality_wait_ms: u64,
    /// ...and at most this.
    pub locality_wait_max_ms: u64,
    /// A worker silent this long is taken for dead: its tasks are released.
    pub worker_silent_ms: u64,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            locality_wait_ms: 30_000,
            locality_wait_max_ms: 600_000,
            worker_silent_ms: 15_000,
        }
    }
}

/// A running task to give back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub job: u64,
    pub task: u32,
    pub attempt: u32,
    pub node: NodeId,
    pub reason: String,
}

/// What the leader proposes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per job, the tasks to give out.
    pub assign: BTreeMap<u64, Vec<Assignment>>,
    pub release: Vec<Release>,
}

/// Plans for every running job of `state`. `workers` is what the leader heard from nodes'
/// workers since `heard_since_ms` (when it started listening: a worker it never heard from
/// is silent only once that is `worker_silent_ms` ago).
pub fn plan(
    state: &ClusterState,
    workers: &BTreeMap<NodeId, Worker>,
    heard_since_ms: u64,
    now_ms: u64,
    cfg: PlanConfig,
) -> Plan {
    let mut out = Plan::default();
    let usable = |node: NodeId| -> Result<(), String> {
        let Some(record) = state.nodes.get(&node) else {
            return Err(format!("node {node} is gone"));
        };
        if record.health != Health::Up {
            return Err(format!("node {node} is down"));
        }
        if record.participation != Participation::In {
            return Err(format!("node {node} is out"));
        }
        let seen = workers.get(&node).map_or(heard_since_ms, |w| w.seen_ms);
        if now_ms.saturating_sub(seen.max(heard_since_ms)) > cfg.worker_silent_ms {
            return Err(format!("node {node}'s inference worker is silent"));
        }
        Ok(())
    };
    let mut busy: BTreeMap<NodeId, u32> = BTreeMap::new();
    for job in state.infer.jobs.values().filter(|j| j.running()) {
        for (i, task) in job.tasks.iter().enumerate() {
            if let TaskState::Running { node, attempt, .. } = task.state {
                match usable(node) {
                    Ok(()) => *busy.entry(node).or_default() += 1,
                    Err(reason) => out.release.push(Release {
                        job: job.id,
                        task: i as u32,
                        attempt,
                        node,
                        reason,
                    }),
                }
            }
        }
    }
    // Nodes that may take a task now: usable and heard from.
    let free: Vec<(NodeId, Worker)> = workers
        .iter()
        .filter(|(n, _)| usable(**n).is_ok())
        .map(|(n, w)| (*n, *w))
        .collect();
    // Two passes: every pending task that a free holder can take, first; only then remote
    // tasks, on the slots left. In one pass, a node freeing a slot took the first task that
    // had waited, remotely, though a later one was its own (a job's locality fell to 0.81).
    let pending: Vec<(&super::model::Job, usize, u64, Vec<NodeId>)> = state
        .infer
        .jobs
        .values()
        .filter(|j| j.running())
        .flat_map(|job| {
            job.tasks
                .iter()
                .enumerate()
                .filter_map(move |(i, task)| match task.state {
                    TaskState::Pending { since_ms } => Some((job, i, since_ms, task.pg)),
                    _ => None,
                })
        })
        .map(|(job, i, since, pg)| (job, i, since, state.current_holders(&job.spec.input, pg)))
        .collect();
    // Each job's wait, once: it scans the job's tasks.
    let waits: BTreeMap<u64, u64> = state
        .infer
        .jobs
        .values()
        .filter(|j| j.running())
        .map(|j| (j.id, locality_wait(j, cfg)))
        .collect();
    // Indices into `pending` of the tasks no holder took, for the remote pass.
    let mut left = Vec::new();
    for local in [true, false] {
        let round: Vec<usize> = if local {
            (0..pending.len()).collect()
        } else {
            std::mem::take(&mut left)
        };
        for at in round {
            let (job, i, since_ms, ref holders) = pending[at];
            let has_slot = |n: NodeId, w: &Worker| busy.get(&n).copied().unwrap_or(0) < w.slots;
            let pick = free
                .iter()
                .filter(|(n, w)| has_slot(*n, w) && holders.contains(n) == local)
                .min_by_key(|(n, w)| {
                    let load = busy.get(n).copied().unwrap_or(0);
                    (!w.fast, load, spread(job.id, i as u32, *n))
                })
                .map(|(n, _)| *n);
            // Remote only once it waited, or while no holder could take it at all.
            let holder_alive = free.iter().any(|(n, _)| holders.contains(n));
            let waited = now_ms.saturating_sub(since_ms) >= waits[&job.id];
            let chosen = match pick {
                Some(n) if local || waited || !holder_alive => Some(n),
                _ => None,
            };
            match chosen {
                Some(node) => {
                    *busy.entry(node).or_default() += 1;
                    out.assign.entry(job.id).or_default().push(Assignment {
                        task: i as u32,
                        node,
                        local,
                    });
                }
                None if local => left.push(at),
                None => {}
            }
        }
    }
    for given in out.assign.values_mut() {
        given.sort_by_key(|a| a.task);
    }
    out
}

/// How long `job`'s pending tasks wait for a holder (see [`PlanConfig`]).
fn locality_wait(job: &super::model::Job, cfg: PlanConfig) -> u64 {
    job.tasks
        .iter()
        .filter_map(|t| match t.state {
            TaskState::Done(o) => Some(o.report.elapsed_ms),
            _ => None,
        })
        .max()
        .map_or(cfg.locality_wait_max_ms, |longest| {
            longest.clamp(cfg.locality_wait_ms, cfg.locality_wait_max_ms)
        })
}

/// A tie-break that differs per task, so equally loaded holders share a job's tasks.
fn spread(job: u64, task: u32, node: NodeId) -> u64 {
    placement::hash::mix64(placement::hash::mix64(job ^ (u64::from(task) << 32)) ^ node)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
