//! Inference jobs as the replicated state holds them: the models registered in the cluster, and
//! each embed job with its tasks (see `meta::infer`).

use serde::{Deserialize, Serialize};

use crate::meta::model::NodeId;

/// Longest model name, in bytes.
pub const MODEL_NAME_LEN_MAX: usize = 64;
/// Most files a model is made of.
pub const MODEL_FILES_MAX: usize = 16;
/// Most tasks a job is split into: one per extent of its input, so a job covers at most
/// 256 GiB of input at the default 4 MiB extents.
pub const TASKS_PER_JOB_MAX: u64 = 65_536;
/// Attempts a task gets before its job fails.
pub const TASK_ATTEMPTS_MAX: u32 = 5;
/// Failure reasons a task keeps (the latest).
pub const TASK_FAILURES_KEPT: usize = 3;
/// Finished jobs the state keeps; the oldest finished one is forgotten first.
pub const FINISHED_JOBS_KEPT: usize = 64;
/// Longest JSON field name of a `jsonl:FIELD` format.
pub const JSONL_FIELD_LEN_MAX: usize = 128;
/// Longest failure reason kept, in bytes.
pub const REASON_LEN_MAX: usize = 512;
/// The output volume's first block holds the job's header; segments follow.
pub const OUTPUT_HEADER_BYTES: u64 = 4096;
/// Output segments start on this boundary, so every write of one is block-aligned.
pub const OUTPUT_ALIGN_BYTES: u64 = 4096;

/// One file of a registered model, as its digest names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    /// Path inside the model's directory (`model.safetensors`, `tokenizer.json`, ...).
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// A model every node can fetch and run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferModel {
    pub name: String,
    /// The model store's id of the f32 model (hex SHA-256 over its files and settings).
    pub id: String,
    /// Length of the vectors it makes.
    pub dim: u32,
    pub files: Vec<ModelFile>,
    /// When it was added, by the proposing member's clock.
    pub added_ms: u64,
}

/// How a job's input volume is cut into records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordFormat {
    /// One record per line; empty lines are skipped.
    Lines,
    /// One JSON object per line; the record is the string in field `field`.
    Jsonl { field: String },
}

impl std::fmt::Display for RecordFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordFormat::Lines => f.write_str("lines"),
            RecordFormat::Jsonl { field } => write!(f, "jsonl:{field}"),
        }
    }
}

/// The numbers the model computes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ComputeDtype {
    F32,
    Bf16,
    Int8,
}

impl ComputeDtype {
    pub fn name(self) -> &'static str {
        match self {
            ComputeDtype::F32 => "f32",
            ComputeDtype::Bf16 => "bf16",
            ComputeDtype::Int8 => "int8",
        }
    }
}

/// How the vectors are stored in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VectorDtype {
    F32,
    F16,
}

impl VectorDtype {
    pub fn name(self) -> &'static str {
        match self {
            VectorDtype::F32 => "f32",
            VectorDtype::F16 => "f16",
        }
    }

    /// Bytes of one element.
    pub fn bytes(self) -> u32 {
        match self {
            VectorDtype::F32 => 4,
            VectorDtype::F16 => 2,
        }
    }
}

/// A job as asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The volume whose records are embedded.
    pub input: String,
    /// The volume the vectors are written to (it exists, and no running job writes it).
    pub output: String,
    pub model: String,
    pub format: RecordFormat,
    pub dtype: ComputeDtype,
    pub out_dtype: VectorDtype,
    /// Share of each node's cores its tasks may use, in percent (1–100).
    pub cpu_share_pct: u32,
}

/// Where a job stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Running,
    Done,
    Cancelled,
    /// A task failed [`TASK_ATTEMPTS_MAX`] times, or the job could not go on; why.
    Failed(String),
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Cancelled => "cancelled",
            JobState::Failed(_) => "failed",
        }
    }
}

/// What a task's node did, as the job's output writer recorded it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Records embedded.
    pub records: u64,
    /// Bytes of input read from the node's own replica.
    pub local_bytes: u64,
    /// Bytes of input read from another node's replica (a remote task, or the tail of a
    /// record that runs into an extent the node does not hold).
    pub remote_bytes: u64,
    /// Bytes the node sent to the output's writer.
    pub sent_bytes: u64,
    /// CPU time its model threads used, in ms.
    pub cpu_ms: u64,
    /// Wall time from its start to its output, in ms.
    pub elapsed_ms: u64,
}

/// A finished task: where its vectors are in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutput {
    pub node: NodeId,
    /// Its segment's place in the output volume (offset aligned, length in bytes).
    pub offset: u64,
    pub bytes: u64,
    pub report: TaskReport,
}

/// Where a task stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting for a node, since `since_ms` (the proposer's clock).
    Pending {
        since_ms: u64,
    },
    /// Running on `node` (its `attempt`-th attempt); `local` when the node holds a current
    /// replica of the task's range.
    Running {
        node: NodeId,
        attempt: u32,
        local: bool,
        since_ms: u64,
    },
    Done(TaskOutput),
}

/// One extent of the input. A record that starts in it is its task's, read whole even where
/// it runs on into the next extent; one that started in the extent before is not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The input range: `start..end`, one extent.
    pub start: u64,
    pub end: u64,
    /// The input's PG this extent is placed in.
    pub pg: u32,
    pub state: TaskState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Why its last attempts failed, latest last.
    pub failures: Vec<String>,
}

/// An embed job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub spec: JobSpec,
    /// The registered model's id and dimension when the job was made.
    pub model_id: String,
    pub dim: u32,
    /// Volume ids of the input and the output.
    pub input_id: u64,
    pub output_id: u64,
    pub created_ms: u64,
    /// When it reached a final state.
    pub finished_ms: Option<u64>,
    pub state: JobState,
    pub tasks: Vec<Task>,
    /// The output's next free byte: the next finished task's segment goes there.
    pub out_next: u64,
}

impl Job {
    pub fn running(&self) -> bool {
        self.state == JobState::Running
    }

    /// Tasks done, and their totals.
    pub fn totals(&self) -> (usize, TaskReport) {
        let mut sum = TaskReport::default();
        let mut done = 0;
        for t in &self.tasks {
            if let TaskState::Done(out) = &t.state {
                done += 1;
                let r = out.report;
                sum.records += r.records;
                sum.local_bytes += r.local_bytes;
                sum.remote_bytes += r.remote_bytes;
                sum.sent_bytes += r.sent_bytes;
                sum.cpu_ms += r.cpu_ms;
                sum.elapsed_ms += r.elapsed_ms;
            }
        }
        (done, sum)
    }
}

/// The inference part of the cluster state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferState {
    /// Registered models by name.
    pub models: std::collections::BTreeMap<String, InferModel>,
    /// Jobs by id: every running one, and the latest finished ones.
    pub jobs: std::collections::BTreeMap<u64, Job>,
    pub next_job_id: u64,
}

impl InferState {
    /// The ids of the jobs that ended, oldest first.
    pub fn finished(&self) -> Vec<u64> {
        self.jobs
            .values()
            .filter(|j| !j.running())
            .map(|j| j.id)
            .collect()
    }
}
