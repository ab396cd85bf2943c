//! A storage node's inference worker: asks the leader for its tasks every half second, runs
//! each (at most [`SLOTS`] at once) and sends the output back.
//!
//! A task reads its extent from the node's own replica when the leader placed it there (the
//! store, behind a turn of the disk scheduler in the inference class: no network), else from a
//! current replica elsewhere (SCAN_READ), and reads on into the next extent while its last
//! record does. It cuts the records, embeds them on the node's inference threads (a pool of
//! its own, sized by the job's CPU share, never the threads that serve the replicas), pausing
//! while the disk's clients see their latency above target, and sends the vectors to the
//! leader as one segment, with every replica it read from: the leader records the task only
//! if those are all still current. Whatever fails releases the task, which runs again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use proto::meta as pb;
use tokio::sync::watch;
use tokio::task::JoinSet;
use volume::client::{PoolConfig, ReplicaPool};
use volume::replica::ReplicaServer;
use volume::sched::class::Class;
use volume::wire::VolumeId;

use super::embedders::Embedders;
use super::read::read_piece;
use super::records::{RECORD_BYTES_MAX, Window};
use super::segment::{Layout, VectorRecord, encode_segment};
use super::threads::InferThreads;
use crate::identity::Transport;
use crate::meta::client::Client;
use crate::meta::service::infer_convert::{dtype_in, format_in, model_in, out_dtype_in};

/// Tasks a node runs at once: one computes while the next reads.
pub const SLOTS: u32 = 2;
/// How often the worker asks for its tasks while it has any, in ms.
pub const POLL_INTERVAL_MS: u64 = 500;
/// How often it asks while it has none (within the leader's 15 s before it takes a worker for
/// silent): an idle cluster's nodes cost the leader a call each per 5 s.
pub const IDLE_POLL_INTERVAL_MS: u64 = 5_000;
/// Records embedded per batch: small enough that a pause for the clients' latency (checked
/// between batches) comes within a second or so even at a quarter of a core.
const BATCH_RECORDS: usize = 8;

/// What every task of this node shares.
struct Ctx {
    node: u64,
    server: Arc<ReplicaServer>,
    client: Arc<Client>,
    pool: Arc<ReplicaPool>,
    embedders: Arc<Embedders>,
    /// One task computes at a time: the inference threads are the job's CPU share, and CPU
    /// time is then each task's own.
    compute: tokio::sync::Mutex<()>,
    /// One model fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// Inference threads by count.
    threads: Mutex<HashMap<usize, Arc<InferThreads>>>,
}

type Key = (u64, u32, u32);

/// Runs node `node`'s worker until `stop`.
pub async fn run(
    node: u64,
    server: Arc<ReplicaServer>,
    dir: &Path,
    endpoints: Vec<String>,
    transport: Transport,
    mut stop: watch::Receiver<bool>,
) {
    let pool = match crate::replica_dial::replica_pool(&transport, PoolConfig::default()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "inference worker cannot start");
            return;
        }
    };
    let embedders = match Embedders::new(super::models::store_in(dir)) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "inference worker cannot start");
            return;
        }
    };
    let ctx = Arc::new(Ctx {
        node,
        server,
        client: Arc::new(Client::new(endpoints, transport)),
        pool,
        embedders,
        compute: tokio::sync::Mutex::new(()),
        fetching: tokio::sync::Mutex::new(()),
        threads: Mutex::default(),
    });
    let features = infer::Features::host();
    let fast = features.avx512f || features.amx_tile;
    let mut running: HashMap<Key, tokio::task::AbortHandle> = HashMap::new();
    let mut tasks: JoinSet<Key> = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_poll: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(Ok(done)) = tasks.join_next(), if !tasks.is_empty() => {
                running.remove(&done);
            }
            _ = stop.wait_for(|s| *s) => break,
        }
        let idle_wait = Duration::from_millis(IDLE_POLL_INTERVAL_MS);
        if running.is_empty() && last_poll.is_some_and(|at| at.elapsed() < idle_wait) {
            continue;
        }
        last_poll = Some(Instant::now());
        let poll = pb::PollInferWorkRequest {
            node,
            slots: SLOTS,
            fast,
        };
        let work = ctx
            .client
            .call_leader(|mut c| async move { c.poll_infer_work(poll).await })
            .await;
        let items = match work {
            Ok(w) => w.items,
            Err(e) => {
                tracing::debug!(error = %e.message(), "no inference work this time");
                continue;
            }
        };
        // Tasks no longer ours (released, cancelled) stop.
        let wanted: HashMap<Key, pb::InferWorkItem> = items
            .into_iter()
            .map(|i| ((i.job, i.task, i.attempt), i))
            .collect();
        running.retain(|key, handle| {
            let keep = wanted.contains_key(key);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (key, item) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let ctx = Arc::clone(&ctx);
            let handle = tasks.spawn(async move {
                let (job, task, attempt) = key;
                if let Err(e) = ctx.run_task(&item).await {
                    let reason = format!("{e:#}");
                    tracing::warn!(job, task, attempt, error = %reason, "inference task failed");
                    ctx.release(&item, reason).await;
                }
                key
            });
            running.insert(key, handle);
        }
    }
    tasks.shutdown().await;
}

/// The node and the data address of each of `holders`.
fn addresses(holders: &[pb::InferReplica]) -> Vec<(u64, std::net::SocketAddr)> {
    holders
        .iter()
        .filter_map(|h| Some((h.node, h.data_addr.parse().ok()?)))
        .collect()
}

/// What a task read, and from where.
#[derive(Default)]
struct Input {
    data: Vec<u8>,
    local_bytes: u64,
    remote_bytes: u64,
    read_from: Vec<pb::InferReadFrom>,
}

impl Ctx {
    async fn release(&self, item: &pb::InferWorkItem, reason: String) {
        let req = pb::ReleaseInferTaskRequest {
            job: item.job,
            task: item.task,
            attempt: item.attempt,
            node: self.node,
            reason,
        };
        let released = self
            .client
            .call_leader(|mut c| {
                let req = req.clone();
                async move { c.release_infer_task(req).await }
            })
            .await;
        if let Err(e) = released {
            tracing::debug!(job = item.job, task = item.task, error = %e.message(), "task not released (the leader takes it back if this node is gone)");
        }
    }

    /// Reads `[offset, offset + len)`, within one extent of PG `pg` whose current replicas are
    /// `holders`: from this node's replica if it is one, else from another.
    async fn read(
        &self,
        item: &pb::InferWorkItem,
        pg: u32,
        holders: &[pb::InferReplica],
        (offset, len): (u64, u64),
        into: &mut Input,
    ) -> anyhow::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if holders.iter().any(|h| h.node == self.node) {
            let data = self
                .server
                .read_local(
                    VolumeId(item.input_id),
                    offset,
                    len as u32,
                    Class::Inference,
                )
                .await
                .with_context(|| format!("read {offset}+{len} of this node's replica"))?;
            into.data.extend_from_slice(&data);
            into.local_bytes += len;
            into.read_from.push(pb::InferReadFrom {
                pg,
                node: self.node,
            });
            return Ok(());
        }
        let replicas = addresses(holders);
        let addrs: Vec<_> = replicas.iter().map(|(_, a)| *a).collect();
        let (data, from) =
            read_piece(&self.pool, &addrs, item.input_id, offset, len as u32).await?;
        into.data.extend_from_slice(&data);
        into.remote_bytes += len;
        if let Some((node, _)) = replicas.iter().find(|(_, a)| *a == from) {
            into.read_from.push(pb::InferReadFrom { pg, node: *node });
        }
        Ok(())
    }

    /// The task's range, and on into the next extent while its last record runs on.
    async fn read_input(&self, item: &pb::InferWorkItem) -> anyhow::Result<Input> {
        ensure!(
            item.start < item.end && item.end <= item.input_size,
            "task range {}..{} of a volume of {} bytes",
            item.start,
            item.end,
            item.input_size
        );
        let mut input = Input::default();
        let holders = if item.local {
            // Placed here: read here (the leader checked this node is a current holder).
            vec![pb::InferReplica {
                node: self.node,
                data_addr: String::new(),
            }]
        } else {
            item.holders.clone()
        };
        self.read(
            item,
            item.pg,
            &holders,
            (item.start, item.end - item.start),
            &mut input,
        )
        .await?;
        loop {
            let window = Window {
                buf: &input.data,
                start: item.start,
                end: item.end,
                at_volume_end: item.start + input.data.len() as u64 >= item.input_size,
            };
            if !window.needs_more() {
                break;
            }
            // The last record runs on into the next extent: read on, a block at a time as
            // far as 64 KiB, then the rest of the limit at once.
            let at = item.start + input.data.len() as u64;
            let past = at - item.end;
            let step = if past < 64 << 10 {
                64 << 10
            } else {
                RECORD_BYTES_MAX - past
            };
            let len = step.min(item.input_size - at);
            let next = item.next_holders.clone();
            self.read(item, item.next_pg, &next, (at, len), &mut input)
                .await?;
        }
        Ok(input)
    }

    /// The model, fetched from the members into this node's store if it lacks it.
    async fn ensure_model(&self, name: &str, id: &str) -> anyhow::Result<()> {
        let _one = self.fetching.lock().await;
        let store = self.embedders.store.clone();
        let models = self
            .client
            .call_leader(
                |mut c| async move { c.list_infer_models(pb::ListInferModelsRequest {}).await },
            )
            .await
            .map_err(|s| anyhow::anyhow!("list models: {}", s.message()))?;
        let model = models
            .models
            .into_iter()
            .find(|m| m.name == name && m.id == id)
            .map(model_in)
            .with_context(|| format!("model {name} ({id}) is not registered"))?;
        if super::models::holds(&store, &model) {
            return Ok(());
        }
        tracing::info!(model = name, "fetching the model's files from the members");
        let mut incoming = super::models::Incoming::begin(&store, model.clone())?;
        for file in &model.files {
            let req = pb::FetchInferModelFileRequest {
                name: name.to_owned(),
                path: file.path.clone(),
            };
            let mut stream = self
                .client
                .call_leader(|mut c| {
                    let req = req.clone();
                    async move { c.fetch_infer_model_file(req).await }
                })
                .await
                .map_err(|s| anyhow::anyhow!("fetch {}: {}", file.path, s.message()))?;
            while let Some(chunk) = stream.message().await? {
                incoming.write(&file.path, &chunk.data)?;
            }
        }
        tokio::task::spawn_blocking(move || incoming.finish()).await??;
        tracing::info!(model = name, "model fetched");
        Ok(())
    }

    /// `threads` inference threads, started once and kept.
    fn threads(&self, threads: usize) -> anyhow::Result<Arc<InferThreads>> {
        let mut all = self.threads.lock().expect("inference threads");
        if let Some(t) = all.get(&threads) {
            return Ok(Arc::clone(t));
        }
        let started = Arc::new(InferThreads::start(threads)?);
        all.insert(threads, Arc::clone(&started));
        Ok(started)
    }

    async fn run_task(&self, item: &pb::InferWorkItem) -> anyhow::Result<()> {
        let started = Instant::now();
        let dtype = dtype_in(&item.dtype).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let out_dtype =
            out_dtype_in(&item.out_dtype).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let format = format_in(&item.format).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        self.ensure_model(&item.model, &item.model_id).await?;
        let input = self.read_input(item).await?;
        let cut = Window {
            buf: &input.data,
            start: item.start,
            end: item.end,
            at_volume_end: true,
        }
        .cut(&format);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (cpus * item.cpu_share_pct as usize)
            .div_ceil(100)
            .clamp(1, cpus);
        // The share in cores; with fewer cores' worth than threads (a quarter of two cores is
        // half of one thread), each batch is followed by a pause that keeps the average there.
        let share_cores = cpus as f64 * f64::from(item.cpu_share_pct) / 100.0;
        let infer_threads = self.threads(threads)?;
        let embedders = Arc::clone(&self.embedders);
        let (model, id) = (item.model.clone(), item.model_id.clone());
        let embedder =
            tokio::task::spawn_blocking(move || embedders.get(&model, &id, dtype)).await??;
        ensure!(
            embedder.dims() == item.dim as usize,
            "model {} makes vectors of {} dimensions, the job {}",
            item.model,
            embedder.dims(),
            item.dim
        );
        let mut vectors: Vec<VectorRecord> = Vec::with_capacity(cut.records.len());
        let mut cpu_ns = 0u64;
        {
            let _computing = self.compute.lock().await;
            for batch in cut.records.chunks(BATCH_RECORDS) {
                // Client IO first: wait while the disk's clients are above their target.
                while self.server.scheduler().clients_over_target() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let texts: Vec<String> = batch.iter().map(|r| r.text.clone()).collect();
                let (embedder, embedders) = (Arc::clone(&embedder), Arc::clone(&self.embedders));
                let batch_started = Instant::now();
                let (flat, used) = infer_threads
                    .run(move || {
                        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                        embedder.embed(&embedders.engine, &refs)
                    })
                    .await?;
                cpu_ns += used;
                let at_share = Duration::from_secs_f64(used as f64 / 1e9 / share_cores);
                if let Some(pause) = at_share.checked_sub(batch_started.elapsed()) {
                    tokio::time::sleep(pause).await;
                }
                let flat = flat?;
                let dim = item.dim as usize;
                for (r, v) in batch.iter().zip(flat.chunks_exact(dim)) {
                    vectors.push(VectorRecord {
                        offset: r.offset,
                        len: r.len,
                        vector: v.to_vec(),
                    });
                }
            }
        }
        let layout = Layout {
            job: item.job,
            model_id: embedder.id().to_owned(),
            dim: item.dim,
            dtype: out_dtype,
        };
        let segment: Bytes = encode_segment(
            &layout,
            item.task,
            (item.start, item.end),
            cut.skipped,
            &vectors,
        );
        let report = pb::InferTaskReport {
            records: vectors.len() as u64,
            local_bytes: input.local_bytes,
            remote_bytes: input.remote_bytes,
            sent_bytes: segment.len() as u64,
            cpu_ms: cpu_ns / 1_000_000,
            elapsed_ms: started.elapsed().as_millis() as u64,
            skipped: cut.skipped,
        };
        let mut read_from = input.read_from;
        read_from.sort_by_key(|r| (r.pg, r.node));
        read_from.dedup();
        let req = pb::SubmitInferOutputRequest {
            job: item.job,
            task: item.task,
            attempt: item.attempt,
            node: self.node,
            segment: segment.to_vec(),
            read_from,
            report: Some(report),
        };
        self.client
            .call_leader(|mut c| {
                let req = req.clone();
                async move { c.submit_infer_output(req).await }
            })
            .await
            .map_err(|s| anyhow::anyhow!("submit: {}", s.message()))?;
        tracing::info!(
            job = item.job,
            task = item.task,
            records = vectors.len(),
            local_bytes = input.local_bytes,
            remote_bytes = input.remote_bytes,
            ms = started.elapsed().as_millis() as u64,
            "inference task done"
        );
        Ok(())
    }
}
