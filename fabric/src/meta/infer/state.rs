//! Applying inference commands: pure and deterministic like the rest of `ClusterState::apply`;
//! a refused command changes nothing.

use super::command::{Assignment, InferCommand};
use super::model::{
    FINISHED_JOBS_KEPT, InferModel, JSONL_FIELD_LEN_MAX, Job, JobSpec, JobState, MODEL_FILES_MAX,
    MODEL_NAME_LEN_MAX, OUTPUT_ALIGN_BYTES, OUTPUT_HEADER_BYTES, REASON_LEN_MAX, RecordFormat,
    TASK_ATTEMPTS_MAX, TASK_FAILURES_KEPT, TASKS_PER_JOB_MAX, Task, TaskState,
};
use crate::meta::command::{Applied, CommandError, Outcome};
use crate::meta::model::{Health, NodeId, Participation};
use crate::meta::state::ClusterState;

fn invalid(message: String) -> CommandError {
    CommandError::InvalidArgument(message)
}

fn precondition(message: String) -> CommandError {
    CommandError::FailedPrecondition(message)
}

fn job_applied(job: &Job) -> Outcome {
    Ok(Applied::InferJob(Box::new(job.clone())))
}

impl ClusterState {
    pub(in crate::meta) fn apply_infer(&mut self, c: &InferCommand) -> Outcome {
        match c {
            InferCommand::AddModel(m) => self.add_model(m),
            InferCommand::RemoveModel { name } => self.remove_model(name),
            InferCommand::CreateJob { spec, at_ms } => self.create_job(spec, *at_ms),
            InferCommand::Assign {
                job,
                assignments,
                at_ms,
            } => self.assign_tasks(*job, assignments, *at_ms),
            InferCommand::Release {
                job,
                task,
                attempt,
                node,
                reason,
                at_ms,
            } => self.release_task(*job, *task, *attempt, *node, reason, *at_ms),
            InferCommand::Complete { .. } => self.complete_task(c),
            InferCommand::Cancel { job, at_ms } => self.cancel_job(*job, *at_ms),
        }
    }

    /// The nodes holding a current replica of PG `pg` of volume `volume`: the PG's replicas
    /// (leaving ones included: they take every write until they go) but for those the volume
    /// marks stale there.
    pub fn current_holders(&self, volume: &str, pg: u32) -> Vec<NodeId> {
        let Some(v) = self.volumes.get(volume) else {
            return Vec::new();
        };
        let Some(pool) = self.pools.get(&v.spec.pool) else {
            return Vec::new();
        };
        let stale = v.stale.get(&pg);
        pool.map
            .pgs
            .get(pg as usize)
            .into_iter()
            .flatten()
            .copied()
            .filter(|n| stale.is_none_or(|s| !s.contains(n)))
            .collect()
    }

    fn add_model(&mut self, m: &InferModel) -> Outcome {
        if m.name.is_empty()
            || m.name.len() > MODEL_NAME_LEN_MAX
            || !m
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(format!(
                "model name {:?}: 1 to {MODEL_NAME_LEN_MAX} letters, digits, '-', '_' or '.'",
                m.name
            )));
        }
        let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex64(&m.id) {
            return Err(invalid(format!(
                "model {}: id {:?} is not a hex SHA-256",
                m.name, m.id
            )));
        }
        if m.dim == 0 || m.files.is_empty() || m.files.len() > MODEL_FILES_MAX {
            return Err(invalid(format!(
                "model {}: {} files of dimension {}; want 1 to {MODEL_FILES_MAX} files and a dimension",
                m.name,
                m.files.len(),
                m.dim
            )));
        }
        for f in &m.files {
            let safe = !f.path.is_empty()
                && !f.path.starts_with('/')
                && f.path
                    .split('/')
                    .all(|p| !p.is_empty() && p != "." && p != "..");
            if !safe || !hex64(&f.sha256) {
                return Err(invalid(format!(
                    "model {}: file {:?} needs a relative path inside the model and a hex SHA-256",
                    m.name, f.path
                )));
            }
        }
        if let Some(have) = self.infer.models.get(&m.name) {
            if have.id == m.id {
                return Ok(Applied::InferModel(Box::new(have.clone())));
            }
            return Err(CommandError::AlreadyExists(format!(
                "model {} (as {}; remove it first to register {})",
                m.name, have.id, m.id
            )));
        }
        self.infer.models.insert(m.name.clone(), m.clone());
        Ok(Applied::InferModel(Box::new(m.clone())))
    }

    fn remove_model(&mut self, name: &str) -> Outcome {
        if !self.infer.models.contains_key(name) {
            return Err(CommandError::NotFound(format!("model {name}")));
        }
        if let Some(job) = self
            .infer
            .jobs
            .values()
            .find(|j| j.running() && j.spec.model == name)
        {
            return Err(precondition(format!(
                "model {name} is used by running job {}",
                job.id
            )));
        }
        self.infer.models.remove(name);
        Ok(Applied::Deleted)
    }

    fn create_job(&mut self, spec: &JobSpec, at_ms: u64) -> Outcome {
        let model = self
            .infer
            .models
            .get(&spec.model)
            .ok_or_else(|| CommandError::NotFound(format!("model {}", spec.model)))?;
        if !(1..=100).contains(&spec.cpu_share_pct) {
            return Err(invalid(format!(
                "a CPU share of {}%: want 1 to 100",
                spec.cpu_share_pct
            )));
        }
        if let RecordFormat::Jsonl { field } = &spec.format
            && (field.is_empty() || field.len() > JSONL_FIELD_LEN_MAX)
        {
            return Err(invalid(format!(
                "a jsonl field name of {} bytes: want 1 to {JSONL_FIELD_LEN_MAX}",
                field.len()
            )));
        }
        if spec.input == spec.output {
            return Err(invalid(format!(
                "volume {} cannot be both the input and the output",
                spec.input
            )));
        }
        let input = self
            .volumes
            .get(&spec.input)
            .ok_or_else(|| CommandError::NotFound(format!("volume {}", spec.input)))?;
        let output = self
            .volumes
            .get(&spec.output)
            .ok_or_else(|| CommandError::NotFound(format!("volume {}", spec.output)))?;
        for j in self.infer.jobs.values().filter(|j| j.running()) {
            if j.spec.output == spec.output || j.spec.output == spec.input {
                return Err(precondition(format!(
                    "running job {} writes volume {}",
                    j.id, j.spec.output
                )));
            }
            if j.spec.input == spec.output {
                return Err(precondition(format!(
                    "running job {} reads volume {}",
                    j.id, j.spec.input
                )));
            }
        }
        let pg_count = self
            .pools
            .get(&input.spec.pool)
            .map(|p| p.spec.pg_count)
            .ok_or_else(|| CommandError::NotFound(format!("pool {}", input.spec.pool)))?;
        // The data path's extent (what `pg_of` places), whatever the volume's record says.
        let extent = volume::wire::EXTENT_SIZE_BYTES;
        let extents = input.spec.size_bytes.div_ceil(extent);
        if extents > TASKS_PER_JOB_MAX {
            return Err(invalid(format!(
                "volume {} has {extents} extents; a job takes at most {TASKS_PER_JOB_MAX}",
                spec.input
            )));
        }
        let volume_id = volume::wire::VolumeId(input.id);
        let tasks = (0..extents)
            .map(|e| Task {
                start: e * extent,
                end: ((e + 1) * extent).min(input.spec.size_bytes),
                pg: volume::client::pg_of(volume_id, e, pg_count as usize) as u32,
                state: TaskState::Pending { since_ms: at_ms },
                attempts: 0,
                failures: Vec::new(),
            })
            .collect();
        let id = self.infer.next_job_id.max(1);
        let job = Job {
            id,
            spec: spec.clone(),
            model_id: model.id.clone(),
            dim: model.dim,
            input_id: input.id,
            output_id: output.id,
            created_ms: at_ms,
            finished_ms: None,
            state: JobState::Running,
            tasks,
            out_next: OUTPUT_HEADER_BYTES,
        };
        self.infer.next_job_id = id + 1;
        self.infer.jobs.insert(id, job.clone());
        self.forget_old_jobs();
        job_applied(&job)
    }

    /// Keeps at most [`FINISHED_JOBS_KEPT`] finished jobs, dropping the oldest.
    fn forget_old_jobs(&mut self) {
        let finished = self.infer.finished();
        let excess = finished.len().saturating_sub(FINISHED_JOBS_KEPT);
        for id in finished.into_iter().take(excess) {
            self.infer.jobs.remove(&id);
        }
    }

    fn running_job(&self, id: u64) -> Result<&Job, CommandError> {
        let job = self
            .infer
            .jobs
            .get(&id)
            .ok_or_else(|| CommandError::NotFound(format!("inference job {id}")))?;
        if !job.running() {
            return Err(precondition(format!(
                "inference job {id} is {}",
                job.state.name()
            )));
        }
        Ok(job)
    }

    fn assign_tasks(&mut self, id: u64, assignments: &[Assignment], at_ms: u64) -> Outcome {
        let job = self.running_job(id)?;
        let mut seen = std::collections::BTreeSet::new();
        for a in assignments {
            let task = job
                .tasks
                .get(a.task as usize)
                .ok_or_else(|| invalid(format!("inference job {id} has no task {}", a.task)))?;
            if !seen.insert(a.task) || !matches!(task.state, TaskState::Pending { .. }) {
                return Err(precondition(format!(
                    "task {} of inference job {id} is not waiting for a node",
                    a.task
                )));
            }
            let node = self
                .nodes
                .get(&a.node)
                .ok_or_else(|| CommandError::NotFound(format!("node {}", a.node)))?;
            if node.health != Health::Up || node.participation != Participation::In {
                return Err(precondition(format!(
                    "node {} is {:?} and {:?}: it takes no task",
                    a.node, node.health, node.participation
                )));
            }
            if a.local
                && !self
                    .current_holders(&job.spec.input, task.pg)
                    .contains(&a.node)
            {
                return Err(precondition(format!(
                    "node {} holds no current replica of PG {} of volume {}",
                    a.node, task.pg, job.spec.input
                )));
            }
        }
        let job = self.infer.jobs.get_mut(&id).expect("looked up above");
        for a in assignments {
            let task = &mut job.tasks[a.task as usize];
            task.attempts += 1;
            task.state = TaskState::Running {
                node: a.node,
                attempt: task.attempts,
                local: a.local,
                since_ms: at_ms,
            };
        }
        job_applied(job)
    }

    /// The running task `task` of job `id`, as attempt `attempt` on `node`.
    fn running_task(
        &self,
        id: u64,
        task: u32,
        attempt: u32,
        node: NodeId,
    ) -> Result<(&Job, &Task), CommandError> {
        let job = self.running_job(id)?;
        let t = job
            .tasks
            .get(task as usize)
            .ok_or_else(|| invalid(format!("inference job {id} has no task {task}")))?;
        match t.state {
            TaskState::Running {
                node: on,
                attempt: a,
                ..
            } if on == node && a == attempt => Ok((job, t)),
            _ => Err(precondition(format!(
                "task {task} of inference job {id} is not running as attempt {attempt} on node {node}"
            ))),
        }
    }

    fn release_task(
        &mut self,
        id: u64,
        task: u32,
        attempt: u32,
        node: NodeId,
        reason: &str,
        at_ms: u64,
    ) -> Outcome {
        self.running_task(id, task, attempt, node)?;
        let reason: String = reason.chars().take(REASON_LEN_MAX).collect();
        let job = self.infer.jobs.get_mut(&id).expect("looked up above");
        let t = &mut job.tasks[task as usize];
        t.failures
            .push(format!("attempt {attempt} on node {node}: {reason}"));
        let excess = t.failures.len().saturating_sub(TASK_FAILURES_KEPT);
        t.failures.drain(..excess);
        t.state = TaskState::Pending { since_ms: at_ms };
        if t.attempts >= TASK_ATTEMPTS_MAX {
            job.state = JobState::Failed(format!(
                "task {task} failed {} times; the last: {reason}",
                t.attempts
            ));
            job.finished_ms = Some(at_ms);
        }
        let out = job.clone();
        self.forget_old_jobs();
        job_applied(&out)
    }

    fn complete_task(&mut self, c: &InferCommand) -> Outcome {
        let &InferCommand::Complete {
            job: id,
            task,
            attempt,
            out_epoch,
            ref read_from,
            ref output,
            at_ms,
        } = c
        else {
            unreachable!("complete_task is given a Complete");
        };
        let (job, _) = self.running_task(id, task, attempt, output.node)?;
        self.check_attach_epoch(&job.spec.output, out_epoch)?;
        if output.offset != job.out_next
            || output.bytes == 0
            || !output.bytes.is_multiple_of(OUTPUT_ALIGN_BYTES)
        {
            return Err(precondition(format!(
                "inference job {id}: a segment of {} bytes at {} (the output's next segment goes at {}, aligned to {OUTPUT_ALIGN_BYTES})",
                output.bytes, output.offset, job.out_next
            )));
        }
        for r in read_from {
            if !self
                .current_holders(&job.spec.input, r.pg)
                .contains(&r.node)
            {
                return Err(precondition(format!(
                    "task {task} of inference job {id} read PG {} of volume {} from node {}, whose replica is no longer current",
                    r.pg, job.spec.input, r.node
                )));
            }
        }
        let job = self.infer.jobs.get_mut(&id).expect("looked up above");
        job.tasks[task as usize].state = TaskState::Done(*output);
        job.out_next = output.offset + output.bytes;
        if job
            .tasks
            .iter()
            .all(|t| matches!(t.state, TaskState::Done(_)))
        {
            job.state = JobState::Done;
            job.finished_ms = Some(at_ms);
        }
        let out = job.clone();
        self.forget_old_jobs();
        job_applied(&out)
    }

    fn cancel_job(&mut self, id: u64, at_ms: u64) -> Outcome {
        self.running_job(id)?;
        let job = self.infer.jobs.get_mut(&id).expect("looked up above");
        job.state = JobState::Cancelled;
        job.finished_ms = Some(at_ms);
        let out = job.clone();
        self.forget_old_jobs();
        job_applied(&out)
    }
}
