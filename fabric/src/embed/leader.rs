//! The leader's side of embed jobs: it hears the nodes' workers ([`InferLeader::heard`]),
//! tells each its running tasks ([`work_for`]), and every half second gives out pending tasks
//! and takes back those of dead nodes ([`run`], the pure `meta::infer::plan` applied).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::meta as pb;
use tokio::sync::watch;

use crate::meta::command::CommandV1;
use crate::meta::infer::command::InferCommand;
use crate::meta::infer::model::TaskState;
use crate::meta::infer::plan::{PlanConfig, Worker, plan};
use crate::meta::member::Member;
use crate::meta::model::NodeId;
use crate::meta::state::ClusterState;

/// How often the leader plans, in ms.
pub const PLAN_INTERVAL_MS: u64 = 500;

/// What the leader heard from the workers, since it began leading.
pub struct InferLeader {
    workers: Mutex<BTreeMap<NodeId, Worker>>,
    /// The term the table is of, and when it started (ms).
    term: AtomicU64,
    since_ms: AtomicU64,
    pub writer: super::writer::Writer,
    /// The member's models (its node's store), for searches.
    pub embedders: Arc<super::embedders::Embedders>,
    /// Where searches read replicas.
    pub pool: Arc<volume::client::ReplicaPool>,
}

impl InferLeader {
    /// The leader side of member `node`, whose data directory is `dir`, reaching the members
    /// through `client` and the replicas through `pool`.
    pub fn new(
        node: u64,
        dir: &std::path::Path,
        client: Arc<crate::meta::client::Client>,
        pool: Arc<volume::client::ReplicaPool>,
    ) -> anyhow::Result<Arc<InferLeader>> {
        let embedders = super::embedders::Embedders::new(super::models::store_in(dir))?;
        Ok(Arc::new(InferLeader {
            workers: Mutex::default(),
            term: AtomicU64::new(0),
            since_ms: AtomicU64::new(0),
            writer: super::writer::Writer::new(client, Arc::clone(&pool), node),
            embedders: Arc::new(embedders),
            pool,
        }))
    }

    /// Starts a new table when `term` is not the table's (a new leadership hears everyone
    /// anew, and waits a silence before it takes anyone for dead).
    fn in_term(&self, term: u64, now_ms: u64) {
        if self.term.swap(term, Ordering::AcqRel) != term {
            self.workers.lock().expect("workers").clear();
            self.since_ms.store(now_ms, Ordering::Release);
        }
    }

    /// Node `node`'s worker asked for work.
    pub fn heard(&self, term: u64, node: NodeId, slots: u32, fast: bool, now_ms: u64) {
        self.in_term(term, now_ms);
        let worker = Worker {
            slots: slots.clamp(1, 64),
            fast,
            seen_ms: now_ms,
        };
        self.workers.lock().expect("workers").insert(node, worker);
    }

    fn table(&self) -> (BTreeMap<NodeId, Worker>, u64) {
        let workers = self.workers.lock().expect("workers").clone();
        (workers, self.since_ms.load(Ordering::Acquire))
    }
}

/// The current replicas of PG `pg` of `volume`, with their data addresses.
fn replicas(state: &ClusterState, volume: &str, pg: u32) -> Vec<pb::InferReplica> {
    state
        .current_holders(volume, pg)
        .into_iter()
        .filter_map(|n| {
            let record = state.nodes.get(&n)?;
            Some(pb::InferReplica {
                node: n,
                data_addr: record.registration.data_addr.clone(),
            })
        })
        .collect()
}

/// Volume `name` as a reader of its replicas finds it: its id, size, and the data addresses of
/// the current replicas of each PG of its pool.
pub fn volume_replicas(state: &ClusterState, name: &str) -> Option<super::read::VolumeReplicas> {
    let v = state.volumes.get(name)?;
    let pg_count = state.pools.get(&v.spec.pool)?.spec.pg_count;
    let holders = (0..pg_count)
        .map(|pg| {
            replicas(state, name, pg)
                .iter()
                .filter_map(|r| r.data_addr.parse().ok())
                .collect()
        })
        .collect();
    Some(super::read::VolumeReplicas {
        id: v.id,
        size: v.spec.size_bytes,
        holders,
    })
}

/// The tasks running on `node`, with what it needs to run them.
pub fn work_for(state: &ClusterState, node: NodeId) -> pb::InferWork {
    let mut items = Vec::new();
    for job in state.infer.jobs.values().filter(|j| j.running()) {
        let Some(input) = state.volumes.get(&job.spec.input) else {
            continue;
        };
        for (i, task) in job.tasks.iter().enumerate() {
            let TaskState::Running {
                node: on,
                attempt,
                local,
                ..
            } = task.state
            else {
                continue;
            };
            if on != node {
                continue;
            }
            let next_pg = job.tasks.get(i + 1).map(|t| t.pg);
            items.push(pb::InferWorkItem {
                job: job.id,
                task: i as u32,
                attempt,
                local,
                input_id: job.input_id,
                input_size: input.spec.size_bytes,
                start: task.start,
                end: task.end,
                extent_size: volume::wire::EXTENT_SIZE_BYTES,
                pg: task.pg,
                holders: replicas(state, &job.spec.input, task.pg),
                next_pg: next_pg.unwrap_or(0),
                next_holders: next_pg
                    .map(|pg| replicas(state, &job.spec.input, pg))
                    .unwrap_or_default(),
                model: job.spec.model.clone(),
                model_id: job.model_id.clone(),
                dtype: job.spec.dtype.name().into(),
                format: job.spec.format.to_string(),
                out_dtype: job.spec.out_dtype.name().into(),
                cpu_share_pct: job.spec.cpu_share_pct,
                dim: job.dim,
            });
        }
    }
    pb::InferWork { items }
}

/// Plans while `member` leads, until `stop`: releases the tasks of dead nodes, gives out
/// pending ones, and lets go of the outputs of jobs that ended.
pub async fn run(member: Arc<Member>, leader: Arc<InferLeader>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(PLAN_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let Some(term) = member.leading_term() else {
            continue;
        };
        let now = crate::meta::clock::unix_ms();
        leader.in_term(term, now);
        let (workers, since) = leader.table();
        let (planned, ended) = member.sm.read(|s, _| {
            let ended = s.infer.finished();
            (plan(s, &workers, since, now, PlanConfig::default()), ended)
        });
        leader.writer.let_go(&ended).await;
        for r in planned.release {
            let command = InferCommand::Release {
                job: r.job,
                task: r.task,
                attempt: r.attempt,
                node: r.node,
                reason: r.reason,
                at_ms: now,
            };
            propose(&member, r.job, command).await;
        }
        for (job, assignments) in planned.assign {
            let command = InferCommand::Assign {
                job,
                assignments,
                at_ms: now,
            };
            propose(&member, job, command).await;
        }
    }
}

async fn propose(member: &Member, job: u64, command: InferCommand) {
    let what = command.to_string();
    let written = member
        .write_own(
            "infer.work",
            format!("infer-job/{job}"),
            CommandV1::Infer(command),
        )
        .await;
    if let Err(e) = written {
        tracing::debug!(job, error = %e, "{what}: not written");
    }
}
