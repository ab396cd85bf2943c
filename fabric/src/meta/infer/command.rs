//! The commands of inference jobs, one variant of the log's `CommandV1::Infer`. Like every
//! command, their encoding is forever: a changed command is a new variant.

use serde::{Deserialize, Serialize};

use super::model::{InferModel, JobSpec, TaskOutput};
use crate::meta::model::NodeId;

/// A task given to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub task: u32,
    pub node: NodeId,
    /// The node holds a current replica of the task's range (else it reads from one that does).
    pub local: bool,
}

/// A replica a task read input from: `node`'s copy of the input's PG `pg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReadFrom {
    pub pg: u32,
    pub node: NodeId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InferCommand {
    /// Registers a model whose files the proposing member holds. Adding the same name with the
    /// same id again changes nothing; with another id it is refused.
    AddModel(InferModel),
    /// Forgets a model; refused while a running job uses it.
    RemoveModel { name: String },
    /// Starts a job: its input is split into one task per extent.
    CreateJob { spec: JobSpec, at_ms: u64 },
    /// The leader gives pending tasks of `job` to nodes.
    Assign {
        job: u64,
        assignments: Vec<Assignment>,
        at_ms: u64,
    },
    /// The `attempt`-th attempt of `task` on `node` ended without output (the node failed it,
    /// or died, or was taken out): the task waits for a node again, or the job fails once the
    /// task has had its attempts.
    Release {
        job: u64,
        task: u32,
        attempt: u32,
        node: NodeId,
        reason: String,
        at_ms: u64,
    },
    /// The output's writer, holding attach epoch `out_epoch` of the output volume, wrote the
    /// vectors of `task`'s `attempt` at `output.offset`. Refused (the task is then released)
    /// if any replica in `read_from` is no longer a current replica of its PG: the input it
    /// gave may lack a write.
    Complete {
        job: u64,
        task: u32,
        attempt: u32,
        out_epoch: u64,
        read_from: Vec<ReadFrom>,
        output: TaskOutput,
        at_ms: u64,
    },
    /// Stops a running job: no task is given out any more, and its output stays as it is.
    Cancel { job: u64, at_ms: u64 },
}

impl std::fmt::Display for InferCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InferCommand::AddModel(m) => write!(f, "add inference model {} ({})", m.name, m.id),
            InferCommand::RemoveModel { name } => write!(f, "remove inference model {name}"),
            InferCommand::CreateJob { spec, .. } => write!(
                f,
                "embed the {} records of volume {} with {} into volume {}",
                spec.format, spec.input, spec.model, spec.output
            ),
            InferCommand::Assign {
                job, assignments, ..
            } => write!(
                f,
                "give {} tasks of inference job {job} to nodes",
                assignments.len()
            ),
            InferCommand::Release {
                job,
                task,
                node,
                reason,
                ..
            } => write!(
                f,
                "task {task} of inference job {job} on node {node} ended: {reason}"
            ),
            InferCommand::Complete {
                job, task, output, ..
            } => write!(
                f,
                "task {task} of inference job {job} done on node {} ({} records)",
                output.node, output.report.records
            ),
            InferCommand::Cancel { job, .. } => write!(f, "cancel inference job {job}"),
        }
    }
}
