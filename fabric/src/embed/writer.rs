//! The one writer of every embed job's output volume: the leader attaches the output (as
//! `infer-writer@node-N`), writes each finished task's segment at the job's next free byte
//! and the volume header after it, flushes, and only then records the task done (the record
//! names the attach epoch, so a writer that lost the volume to a newer attach cannot record
//! anything). A segment written but not recorded is overwritten by the next one: the output
//! holds each task once. The volume grows as the job needs (it is thin, so its size costs
//! nothing until written): the leader resizes it as its own action, audited as
//! `member/ID volume.resize`, on the authority of the job's creator, who was allowed
//! `infer.job.create` on the output (the leader's node certificate may not resize volumes).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use proto::meta as pb;
use tokio::sync::{Mutex, MutexGuard};
use volume::BlockVolume;
use volume::client::ReplicaPool;

use super::segment::{self, Layout, SEGMENT_HEADER_BYTES, VolumeHeader};
use crate::gateway::{Attached, Opening, detach, open_volume, resync_round};
use crate::meta::client::Client;
use crate::meta::command::CommandV1;
use crate::meta::infer::command::{InferCommand, ReadFrom};
use crate::meta::infer::model::{Job, TaskOutput, TaskState};
use crate::meta::member::Member;

/// Longest a growing output waits for its replicas to hold the new size.
const GROW_WAIT_MS: u64 = 30_000;

/// The outputs the leader holds, by job.
pub struct Writer {
    client: Arc<Client>,
    pool: Arc<ReplicaPool>,
    me: String,
    outputs: Mutex<HashMap<u64, Attached>>,
}

/// A segment checked and written, and the command that records it.
pub struct Written {
    pub complete: InferCommand,
    pub records: u64,
}

impl Writer {
    pub fn new(client: Arc<Client>, pool: Arc<ReplicaPool>, node: u64) -> Writer {
        Writer {
            client,
            pool,
            me: format!("infer-writer@node-{node}"),
            outputs: Mutex::default(),
        }
    }

    /// Submissions are written one at a time: each goes at the output's next free byte,
    /// which the last recorded one moved.
    pub(crate) async fn lock(&self) -> MutexGuard<'_, HashMap<u64, Attached>> {
        self.outputs.lock().await
    }

    /// Checks `req`'s segment against `job`: whole, every crc32c right, and the task's. A
    /// segment refused here is bad input; nothing was written.
    pub(crate) fn check(
        job: &Job,
        req: &pb::SubmitInferOutputRequest,
    ) -> anyhow::Result<segment::SegmentHeader> {
        let seg = &req.segment;
        let h = segment::decode_segment_header(seg, 0)?;
        let body = seg
            .get(SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + h.body_bytes as usize)
            .context("segment shorter than its header says")?;
        segment::decode_records(&h, body, 0)?;
        let report = req.report.unwrap_or_default();
        ensure!(
            h.layout.job == job.id
                && h.task == req.task
                && h.layout.dim == job.dim
                && h.layout.dtype == job.spec.out_dtype
                && u64::from(h.records) == report.records
                && seg.len() as u64 == h.stride(),
            "segment of job {} task {} ({} records of dimension {}, {} bytes) does not fit task {} of job {} ({} records reported, dimension {})",
            h.layout.job,
            h.task,
            h.records,
            h.layout.dim,
            seg.len(),
            req.task,
            job.id,
            report.records,
            job.dim
        );
        Ok(h)
    }

    /// Writes `req`'s segment (checked by [`Writer::check`], whose header is `h`) at the job's
    /// next free byte, then the volume header; returns the command that records it.
    pub(crate) async fn write(
        &self,
        member: &Member,
        outputs: &mut HashMap<u64, Attached>,
        job: &Job,
        req: &pb::SubmitInferOutputRequest,
        h: &segment::SegmentHeader,
    ) -> anyhow::Result<Written> {
        let seg = &req.segment;
        let report = req.report.unwrap_or_default();
        let attached = self.attached(outputs, job).await?;
        let offset = job.out_next;
        let end = offset + seg.len() as u64;
        self.grow(member, &attached, end).await?;
        let (done, totals) = job.totals();
        let header = VolumeHeader {
            layout: Layout {
                job: job.id,
                model_id: h.layout.model_id.clone(),
                dim: job.dim,
                dtype: job.spec.out_dtype,
            },
            segments: done as u32 + 1,
            records: totals.records + report.records,
            data_end: end,
        };
        let volume = &attached.volume;
        let written = async {
            volume
                .write(offset, Bytes::copy_from_slice(seg), false)
                .await?;
            volume
                .write(0, segment::encode_volume_header(&header), false)
                .await?;
            volume.flush().await
        };
        if let Err(e) = written.await {
            outputs.remove(&job.id);
            bail!("write to output volume {}: {e}", job.spec.output);
        }
        Ok(Written {
            complete: InferCommand::Complete {
                job: job.id,
                task: req.task,
                attempt: req.attempt,
                out_epoch: attached.attach_epoch,
                read_from: req
                    .read_from
                    .iter()
                    .map(|r| ReadFrom {
                        pg: r.pg,
                        node: r.node,
                    })
                    .collect(),
                output: TaskOutput {
                    node: req.node,
                    offset,
                    bytes: seg.len() as u64,
                    report: crate::meta::service::infer_convert::report_in(&report),
                },
                at_ms: crate::meta::clock::unix_ms(),
            },
            records: report.records,
        })
    }

    /// The job's output, attached by this writer (again, if it lost it).
    async fn attached(
        &self,
        outputs: &mut HashMap<u64, Attached>,
        job: &Job,
    ) -> anyhow::Result<Attached> {
        if let Some(a) = outputs.get(&job.id)
            && a.volume.fenced_by().is_none()
            && a.superseded.refusal().is_none()
        {
            // Follows the map (a node out, a resize) and brings back stale replicas.
            resync_round(a, &self.client, true).await;
            return Ok(a.clone());
        }
        let opening = Opening {
            attach_as: &self.me,
            force: false,
            metrics: Default::default(),
            resync_pace_bytes_per_sec: volume::client::RESYNC_BYTES_PER_SEC_MAX,
        };
        let a = open_volume(&self.client, &self.pool, &job.spec.output, opening)
            .await
            .with_context(|| format!("attach output volume {}", job.spec.output))?;
        outputs.insert(job.id, a.clone());
        Ok(a)
    }

    /// Grows the output to hold `end` bytes: at least doubling, in whole extents.
    async fn grow(&self, member: &Member, attached: &Attached, end: u64) -> anyhow::Result<()> {
        let size = attached.volume.size();
        if end <= size {
            return Ok(());
        }
        let extent = volume::wire::EXTENT_SIZE_BYTES;
        let want = end.max(size.saturating_mul(2)).div_ceil(extent) * extent;
        let resize = CommandV1::ResizeVolume {
            name: attached.name.clone(),
            size_bytes: want,
        };
        member
            .write_own("volume.resize", format!("volume/{}", attached.name), resize)
            .await
            .with_context(|| format!("grow output volume {} to {want} bytes", attached.name))?;
        let started = Instant::now();
        while attached.volume.size() < end {
            ensure!(
                started.elapsed() < Duration::from_millis(GROW_WAIT_MS),
                "output volume {}: its replicas did not grow to {want} bytes within {GROW_WAIT_MS} ms",
                attached.name
            );
            resync_round(attached, &self.client, true).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Detaches the outputs of jobs in `ended`.
    pub async fn let_go(&self, ended: &[u64]) {
        let mut outputs = self.outputs.lock().await;
        for job in ended {
            if let Some(a) = outputs.remove(job) {
                if let Err(e) = a.volume.flush().await {
                    tracing::warn!(volume = %a.name, error = %e, "output not flushed at the end of its job");
                }
                detach(&self.client, &a, &self.me).await;
            }
        }
    }
}

/// Whether task `task` of `job` runs as `attempt` on `node`.
pub fn runs(job: &Job, task: u32, attempt: u32, node: u64) -> bool {
    matches!(
        job.tasks.get(task as usize).map(|t| &t.state),
        Some(TaskState::Running { node: n, attempt: a, .. }) if *n == node && *a == attempt
    )
}
