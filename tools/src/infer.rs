//! `fabricctl infer ...`: models, embed jobs placed next to their data, and search.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use fabric::meta::client::Client;
use proto::meta as pb;
use serde_json::{Value, json};

use crate::reply::{Reply, rfc3339_ms};

/// `fabricctl infer ...`.
#[derive(Subcommand)]
pub enum InferCmd {
    /// Registered models (`add` uploads one from a local model store).
    #[command(subcommand)]
    Model(ModelCmd),
    /// Embeds every record of VOLUME with a registered model on the nodes that hold the
    /// volume's replicas, and writes the vectors to --out-volume (created if missing).
    Embed {
        #[arg(long)]
        volume: String,
        /// lines, or jsonl:FIELD (the record is the string in FIELD of each JSON line).
        #[arg(long, default_value = "lines")]
        format: String,
        #[arg(long)]
        model: String,
        #[arg(long)]
        out_volume: String,
        /// f32, bf16 or int8.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// How the vectors are stored: f32 or f16.
        #[arg(long, default_value = "f16")]
        out_dtype: String,
        /// Share of each node's cores the job may use, in percent (`25%` or `25`).
        #[arg(long, default_value = "25%")]
        cpu_share: String,
        /// Wait for the job to end, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// A job's progress and figures: records/s, locality, bytes moved, CPU time, per node.
    Status {
        job: u64,
        /// Wait for the job to end, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// Every job the cluster keeps.
    List,
    /// Stops a running job.
    Cancel { job: u64 },
    /// The records of an embed job's output nearest a query.
    Search {
        /// The job's output volume.
        #[arg(long)]
        vectors: String,
        #[arg(long)]
        query: String,
        #[arg(short = 'k', long, default_value_t = 10)]
        k: u32,
    },
}

#[derive(Subcommand)]
pub enum ModelCmd {
    /// Uploads model NAME from a local model store (as `fabric-infer model import` makes one)
    /// to the cluster; every node then fetches it.
    Add {
        name: String,
        #[arg(long)]
        store: PathBuf,
    },
    List,
}

pub async fn run(cmd: InferCmd, client: &Client, as_json: bool) -> anyhow::Result<Reply> {
    match cmd {
        InferCmd::Model(ModelCmd::Add { name, store }) => add_model(client, &name, store).await,
        InferCmd::Model(ModelCmd::List) => {
            let models = client
                .call(
                    |mut c| async move { c.list_infer_models(pb::ListInferModelsRequest {}).await },
                )
                .await?;
            let rows = models.models.iter().map(model_json).collect();
            Ok(Reply::List(rows, &["name", "id", "dim", "bytes", "added"]))
        }
        InferCmd::Embed {
            volume,
            format,
            model,
            out_volume,
            dtype,
            out_dtype,
            cpu_share,
            wait,
        } => {
            let share: u32 = cpu_share
                .trim_end_matches('%')
                .parse()
                .with_context(|| format!("--cpu-share {cpu_share}: want a percentage"))?;
            ensure_output(client, &volume, &out_volume).await?;
            let req = pb::CreateInferJobRequest {
                input: volume,
                output: out_volume,
                model,
                format,
                dtype,
                out_dtype,
                cpu_share_pct: share,
            };
            let job = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.create_infer_job(req).await }
                })
                .await?;
            if wait {
                return follow(client, job.id, as_json).await;
            }
            Ok(Reply::One(job_json(&job)))
        }
        InferCmd::Status { job, wait } => {
            if wait {
                return follow(client, job, as_json).await;
            }
            Ok(Reply::One(job_json(&get(client, job).await?)))
        }
        InferCmd::List => {
            let jobs = client
                .call(|mut c| async move { c.list_infer_jobs(pb::ListInferJobsRequest {}).await })
                .await?;
            let rows = jobs.jobs.iter().map(job_json).collect();
            Ok(Reply::List(
                rows,
                &[
                    "id", "state", "input", "output", "model", "tasks", "records", "locality",
                ],
            ))
        }
        InferCmd::Cancel { job } => {
            let req = pb::GetInferJobRequest { id: job };
            let j = client
                .call(|mut c| async move { c.cancel_infer_job(req).await })
                .await?;
            Ok(Reply::One(job_json(&j)))
        }
        InferCmd::Search { vectors, query, k } => {
            let req = pb::SearchVectorsRequest { vectors, query, k };
            let found = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.search_vectors(req).await }
                })
                .await?;
            let rows = found
                .hits
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    json!({
                        "rank": i + 1,
                        "score": (h.score * 1e4).round() / 1e4,
                        "offset": h.offset,
                        "len": h.len,
                        "text": h.text,
                    })
                })
                .collect();
            Ok(Reply::List(
                rows,
                &["rank", "score", "offset", "len", "text"],
            ))
        }
    }
}

async fn get(client: &Client, id: u64) -> anyhow::Result<pb::InferJob> {
    let req = pb::GetInferJobRequest { id };
    Ok(client
        .call(|mut c| async move { c.get_infer_job(req).await })
        .await?)
}

/// Creates the output volume in the input's pool if it does not exist: as large as the
/// input (at least 64 MiB; thin, and the job grows it if the vectors need more).
async fn ensure_output(client: &Client, input: &str, output: &str) -> anyhow::Result<()> {
    let get = |name: &str| {
        let req = pb::GetVolumeRequest { name: name.into() };
        async move {
            client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.get_volume(req).await }
                })
                .await
        }
    };
    match get(output).await {
        Ok(_) => return Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(s.into()),
    }
    let input = get(input).await?;
    let size = input.size_bytes.max(64 << 20);
    client
        .create_volume(pb::CreateVolumeRequest {
            name: output.into(),
            pool: input.pool,
            size_bytes: size,
            ..pb::CreateVolumeRequest::default()
        })
        .await
        .with_context(|| format!("create output volume {output}"))?;
    Ok(())
}

/// Uploads model `name` of the store at `store` to the leader.
async fn add_model(client: &Client, name: &str, store: PathBuf) -> anyhow::Result<Reply> {
    let store = infer::store::Store::new(store);
    let model = fabric::embed::models::describe(&store, name)?;
    let opened = store.open(name)?;
    let mut messages = vec![pb::InferModelChunk {
        name: model.name.clone(),
        id: model.id.clone(),
        dim: model.dim,
        files: fabric::meta::service::infer_convert::model_out(&model).files,
        ..pb::InferModelChunk::default()
    }];
    for f in &model.files {
        let data = std::fs::read(opened.path(&f.path))?;
        for piece in data.chunks(fabric::embed::models::CHUNK_BYTES) {
            messages.push(pb::InferModelChunk {
                path: f.path.clone(),
                data: piece.to_vec(),
                ..pb::InferModelChunk::default()
            });
        }
    }
    let leader = client.leader_status().await?;
    let mut c = client.endpoint(&leader.rpc_addr)?;
    let added = c
        .add_infer_model(tokio_stream::iter(messages))
        .await?
        .into_inner();
    Ok(Reply::One(model_json(&added)))
}

fn model_json(m: &pb::InferModel) -> Value {
    json!({
        "name": m.name,
        "id": m.id,
        "dim": m.dim,
        "bytes": m.files.iter().map(|f| f.bytes).sum::<u64>(),
        "added": rfc3339_ms(m.added_ms),
    })
}

/// A job's figures: totals, rates, locality, and per node.
pub fn job_json(j: &pb::InferJob) -> Value {
    let t = j.totals.unwrap_or_default();
    let read = t.local_bytes + t.remote_bytes;
    let end = if j.finished_ms > 0 {
        j.finished_ms
    } else {
        fabric::meta::clock::unix_ms()
    };
    let secs = end.saturating_sub(j.created_ms) as f64 / 1e3;
    let mut per_node = std::collections::BTreeMap::<u64, (u64, u64, u64, u64, u64)>::new();
    for task in j.tasks.iter().filter(|t| t.state == "done") {
        let r = task.report.unwrap_or_default();
        let e = per_node.entry(task.node).or_default();
        *e = (
            e.0 + 1,
            e.1 + r.records,
            e.2 + r.local_bytes,
            e.3 + r.remote_bytes,
            e.4 + r.cpu_ms,
        );
    }
    let nodes: Vec<Value> = per_node
        .iter()
        .map(|(n, (tasks, records, local, remote, cpu))| {
            json!({"node": n, "tasks": tasks, "records": records, "local_bytes": local,
                   "remote_bytes": remote, "cpu_s": *cpu as f64 / 1e3})
        })
        .collect();
    let running: Vec<Value> = j
        .tasks
        .iter()
        .filter(|t| t.state == "running")
        .map(|t| json!({"task": t.index, "node": t.node, "local": t.local, "attempt": t.attempt}))
        .collect();
    json!({
        "id": j.id,
        "state": j.state,
        "running": running,
        "reason": j.reason,
        "input": j.input,
        "output": j.output,
        "model": j.model,
        "dtype": j.dtype,
        "out_dtype": j.out_dtype,
        "tasks": format!("{}/{}", j.tasks_done, j.task_count),
        "records": t.records,
        "records_per_s": if secs > 0.0 { (t.records as f64 / secs).round() } else { 0.0 },
        "mib_per_s": if secs > 0.0 { ((read as f64 / (1 << 20) as f64 / secs) * 100.0).round() / 100.0 } else { 0.0 },
        "locality": if read > 0 { ((t.local_bytes as f64 / read as f64) * 1e4).round() / 1e4 } else { 1.0 },
        "local_bytes": t.local_bytes,
        "remote_bytes": t.remote_bytes,
        "sent_bytes": t.sent_bytes,
        "network_bytes": t.remote_bytes + t.sent_bytes,
        "output_bytes": j.out_next,
        "cpu_s": t.cpu_ms as f64 / 1e3,
        "elapsed_s": secs,
        "nodes": nodes,
        "created": rfc3339_ms(j.created_ms),
    })
}

/// Follows job `id` until it ends, with a bar of its tasks (none with --json).
async fn follow(client: &Client, id: u64, as_json: bool) -> anyhow::Result<Reply> {
    let bar = (!as_json).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} tasks  {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar
    });
    loop {
        let j = get(client, id).await?;
        if let Some(bar) = &bar {
            let t = j.totals.unwrap_or_default();
            bar.set_length(u64::from(j.task_count));
            bar.set_position(u64::from(j.tasks_done));
            bar.set_message(format!("{} records", t.records));
        }
        if j.state != "running" {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            if j.state == "failed" {
                bail!("inference job {id} failed: {}", j.reason);
            }
            return Ok(Reply::One(job_json(&j)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
