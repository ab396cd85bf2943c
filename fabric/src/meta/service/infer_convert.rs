//! The gRPC edge of inference: wire requests to domain specs (refusing bad input with
//! INVALID_ARGUMENT) and domain records to wire answers.

use proto::meta as pb;
use tonic::Status;

use crate::meta::infer::model::{
    ComputeDtype, InferModel, Job, JobSpec, ModelFile, RecordFormat, TaskReport, TaskState,
    VectorDtype,
};

/// CPU share of a job that names none, in percent.
pub const CPU_SHARE_PCT_DEFAULT: u32 = 25;

pub fn format_in(s: &str) -> Result<RecordFormat, Status> {
    match s {
        "" | "lines" => Ok(RecordFormat::Lines),
        _ => match s.strip_prefix("jsonl:") {
            Some(field) => Ok(RecordFormat::Jsonl {
                field: field.to_owned(),
            }),
            None => Err(Status::invalid_argument(format!(
                "record format {s:?}: want lines or jsonl:FIELD"
            ))),
        },
    }
}

pub fn dtype_in(s: &str) -> Result<ComputeDtype, Status> {
    match s {
        "" | "f32" => Ok(ComputeDtype::F32),
        "bf16" => Ok(ComputeDtype::Bf16),
        "int8" => Ok(ComputeDtype::Int8),
        _ => Err(Status::invalid_argument(format!(
            "dtype {s:?}: want f32, bf16 or int8"
        ))),
    }
}

pub fn out_dtype_in(s: &str) -> Result<VectorDtype, Status> {
    match s {
        "" | "f16" => Ok(VectorDtype::F16),
        "f32" => Ok(VectorDtype::F32),
        _ => Err(Status::invalid_argument(format!(
            "output dtype {s:?}: want f32 or f16"
        ))),
    }
}

pub fn job_spec_in(r: pb::CreateInferJobRequest) -> Result<JobSpec, Status> {
    Ok(JobSpec {
        format: format_in(&r.format)?,
        dtype: dtype_in(&r.dtype)?,
        out_dtype: out_dtype_in(&r.out_dtype)?,
        cpu_share_pct: match r.cpu_share_pct {
            0 => CPU_SHARE_PCT_DEFAULT,
            n => n,
        },
        input: r.input,
        output: r.output,
        model: r.model,
    })
}

pub fn model_out(m: &InferModel) -> pb::InferModel {
    pb::InferModel {
        name: m.name.clone(),
        id: m.id.clone(),
        dim: m.dim,
        files: m
            .files
            .iter()
            .map(|f| pb::InferModelFile {
                path: f.path.clone(),
                sha256: f.sha256.clone(),
                bytes: f.bytes,
            })
            .collect(),
        added_ms: m.added_ms,
    }
}

pub fn model_in(m: pb::InferModel) -> InferModel {
    InferModel {
        name: m.name,
        id: m.id,
        dim: m.dim,
        files: m
            .files
            .into_iter()
            .map(|f| ModelFile {
                path: f.path,
                sha256: f.sha256,
                bytes: f.bytes,
            })
            .collect(),
        added_ms: m.added_ms,
    }
}

pub fn report_out(r: &TaskReport, skipped: u64) -> pb::InferTaskReport {
    pb::InferTaskReport {
        records: r.records,
        local_bytes: r.local_bytes,
        remote_bytes: r.remote_bytes,
        sent_bytes: r.sent_bytes,
        cpu_ms: r.cpu_ms,
        elapsed_ms: r.elapsed_ms,
        skipped,
    }
}

pub fn report_in(r: &pb::InferTaskReport) -> TaskReport {
    TaskReport {
        records: r.records,
        local_bytes: r.local_bytes,
        remote_bytes: r.remote_bytes,
        sent_bytes: r.sent_bytes,
        cpu_ms: r.cpu_ms,
        elapsed_ms: r.elapsed_ms,
    }
}

/// A job on the wire; with its tasks, or (in a list) only their counts and totals.
pub fn job_out(j: &Job, with_tasks: bool) -> pb::InferJob {
    let (done, totals) = j.totals();
    let tasks = if with_tasks {
        j.tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut out = pb::InferTask {
                    index: i as u32,
                    start: t.start,
                    end: t.end,
                    pg: t.pg,
                    attempts: t.attempts,
                    failures: t.failures.clone(),
                    ..pb::InferTask::default()
                };
                match t.state {
                    TaskState::Pending { .. } => out.state = "pending".into(),
                    TaskState::Running {
                        node,
                        attempt,
                        local,
                        ..
                    } => {
                        out.state = "running".into();
                        (out.node, out.attempt, out.local) = (node, attempt, local);
                    }
                    TaskState::Done(o) => {
                        out.state = "done".into();
                        out.node = o.node;
                        out.out_offset = o.offset;
                        out.out_bytes = o.bytes;
                        out.report = Some(report_out(&o.report, 0));
                    }
                }
                out
            })
            .collect()
    } else {
        Vec::new()
    };
    pb::InferJob {
        id: j.id,
        input: j.spec.input.clone(),
        output: j.spec.output.clone(),
        model: j.spec.model.clone(),
        model_id: j.model_id.clone(),
        dim: j.dim,
        format: j.spec.format.to_string(),
        dtype: j.spec.dtype.name().into(),
        out_dtype: j.spec.out_dtype.name().into(),
        cpu_share_pct: j.spec.cpu_share_pct,
        state: j.state.name().into(),
        reason: match &j.state {
            crate::meta::infer::model::JobState::Failed(why) => why.clone(),
            _ => String::new(),
        },
        created_ms: j.created_ms,
        finished_ms: j.finished_ms.unwrap_or(0),
        tasks,
        out_next: j.out_next,
        input_id: j.input_id,
        output_id: j.output_id,
        task_count: j.tasks.len() as u32,
        tasks_done: done as u32,
        totals: Some(report_out(&totals, 0)),
    }
}
