//! The inference calls of the metadata service (see `meta::infer` and `crate::embed`).

use std::pin::Pin;

use futures::Stream;
use proto::meta as pb;
use tonic::{Request, Response, Status, Streaming};

use super::MetadataService;
use super::infer_convert::{job_out, job_spec_in, model_in, model_out};
use crate::embed::models::{CHUNK_BYTES, Incoming, served_file};
use crate::meta::auth::Verb;
use crate::meta::command::{Applied, CommandV1};
use crate::meta::infer::command::InferCommand;
use crate::meta::infer::model::Job;

pub type FileStream = Pin<Box<dyn Stream<Item = Result<pb::FileChunk, Status>> + Send + 'static>>;

fn infer(c: InferCommand) -> CommandV1 {
    CommandV1::Infer(c)
}

fn job_of(applied: Applied) -> Result<Job, Status> {
    match applied {
        Applied::InferJob(j) => Ok(*j),
        _ => Err(super::unexpected("inference job change")),
    }
}

impl MetadataService {
    /// The term this member leads in, or UNAVAILABLE naming the leader (the caller's client
    /// moves on to the next member).
    fn leading(&self) -> Result<u64, Status> {
        self.member.leading_term().ok_or_else(|| {
            Status::unavailable(format!(
                "not the leader (the leader is {})",
                self.member
                    .leader_addr()
                    .unwrap_or_else(|| "unknown".into())
            ))
        })
    }

    pub(super) async fn infer_add_model(
        &self,
        req: Request<Streaming<pb::InferModelChunk>>,
    ) -> Result<Response<pb::InferModel>, Status> {
        let (metadata, extensions, mut stream) = req.into_parts();
        let head = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty model upload"))?;
        let head_req = Request::from_parts(metadata, extensions, head.clone());
        let auth = self
            .authorize_cluster(&head_req, Verb::InferModelAdd)
            .await?;
        self.leading()?;
        let model = model_in(pb::InferModel {
            name: head.name,
            id: head.id,
            dim: head.dim,
            files: head.files,
            added_ms: crate::meta::clock::unix_ms(),
        });
        let refuse = |e: anyhow::Error| Status::invalid_argument(format!("{e:#}"));
        let mut incoming = Incoming::begin(&self.infer.embedders.store, model).map_err(refuse)?;
        while let Some(chunk) = stream.message().await? {
            if chunk.data.len() > CHUNK_BYTES {
                return Err(Status::invalid_argument(format!(
                    "a chunk of {} bytes: at most {CHUNK_BYTES}",
                    chunk.data.len()
                )));
            }
            incoming.write(&chunk.path, &chunk.data).map_err(refuse)?;
        }
        let model = tokio::task::spawn_blocking(move || incoming.finish())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(refuse)?;
        match self
            .write(&auth, infer(InferCommand::AddModel(model)))
            .await?
        {
            Applied::InferModel(m) => Ok(Response::new(model_out(&m))),
            _ => Err(super::unexpected("add model")),
        }
    }

    pub(super) async fn infer_list_models(
        &self,
        req: Request<pb::ListInferModelsRequest>,
    ) -> Result<Response<pb::InferModels>, Status> {
        self.authorize_cluster(&req, Verb::InferView).await?;
        let models = self
            .member
            .sm
            .read(|s, _| s.infer.models.values().map(model_out).collect());
        Ok(Response::new(pb::InferModels { models }))
    }

    pub(super) async fn infer_fetch_model_file(
        &self,
        req: Request<pb::FetchInferModelFileRequest>,
    ) -> Result<Response<FileStream>, Status> {
        self.authorize_cluster(&req, Verb::InferWork).await?;
        let r = req.into_inner();
        let path = served_file(&self.infer.embedders.store, &r.name, &r.path).ok_or_else(|| {
            Status::not_found(format!(
                "this member holds no file {} of model {}",
                r.path, r.name
            ))
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                    return;
                }
            };
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let chunk = pb::FileChunk {
                            data: buf[..n].to_vec(),
                        };
                        if tx.blocking_send(Ok(chunk)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    pub(super) async fn infer_create_job(
        &self,
        req: Request<pb::CreateInferJobRequest>,
    ) -> Result<Response<pb::InferJob>, Status> {
        let (input, output) = (&req.get_ref().input, &req.get_ref().output);
        let auth = self
            .authorize_volume(&req, Verb::InferJobCreate, input)
            .await?;
        self.authorize_volume(&req, Verb::InferJobCreate, output)
            .await?;
        let spec = job_spec_in(req.into_inner())?;
        let command = InferCommand::CreateJob {
            spec,
            at_ms: crate::meta::clock::unix_ms(),
        };
        let job = job_of(self.write(&auth, infer(command)).await?)?;
        Ok(Response::new(job_out(&job, true)))
    }

    pub(super) async fn infer_list_jobs(
        &self,
        req: Request<pb::ListInferJobsRequest>,
    ) -> Result<Response<pb::InferJobs>, Status> {
        self.authorize_cluster(&req, Verb::InferView).await?;
        let jobs = self
            .member
            .sm
            .read(|s, _| s.infer.jobs.values().map(|j| job_out(j, false)).collect());
        Ok(Response::new(pb::InferJobs { jobs }))
    }

    pub(super) async fn infer_get_job(
        &self,
        req: Request<pb::GetInferJobRequest>,
    ) -> Result<Response<pb::InferJob>, Status> {
        self.authorize_cluster(&req, Verb::InferView).await?;
        let id = req.get_ref().id;
        self.member
            .sm
            .read(|s, _| s.infer.jobs.get(&id).map(|j| job_out(j, true)))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("inference job {id} not found")))
    }

    pub(super) async fn infer_cancel_job(
        &self,
        req: Request<pb::GetInferJobRequest>,
    ) -> Result<Response<pb::InferJob>, Status> {
        let auth = self.authorize_cluster(&req, Verb::InferJobCancel).await?;
        let command = InferCommand::Cancel {
            job: req.get_ref().id,
            at_ms: crate::meta::clock::unix_ms(),
        };
        let job = job_of(self.write(&auth, infer(command)).await?)?;
        Ok(Response::new(job_out(&job, false)))
    }

    pub(super) async fn infer_poll(
        &self,
        req: Request<pb::PollInferWorkRequest>,
    ) -> Result<Response<pb::InferWork>, Status> {
        let node = req.get_ref().node;
        self.authorize_node_itself(&req, Verb::InferWork, node)
            .await?;
        let term = self.leading()?;
        let r = req.into_inner();
        self.infer
            .heard(term, node, r.slots, r.fast, crate::meta::clock::unix_ms());
        let work = self
            .member
            .sm
            .read(|s, _| crate::embed::leader::work_for(s, node));
        Ok(Response::new(work))
    }

    pub(super) async fn infer_submit(
        &self,
        req: Request<pb::SubmitInferOutputRequest>,
    ) -> Result<Response<pb::InferJob>, Status> {
        let node = req.get_ref().node;
        let auth = self
            .authorize_node_itself(&req, Verb::InferWork, node)
            .await?;
        self.leading()?;
        let r = req.into_inner();
        let mut outputs = self.infer.writer.lock().await;
        let job = self
            .member
            .sm
            .read(|s, _| s.infer.jobs.get(&r.job).cloned())
            .ok_or_else(|| Status::not_found(format!("inference job {} not found", r.job)))?;
        if !job.running() || !crate::embed::writer::runs(&job, r.task, r.attempt, node) {
            return Err(Status::failed_precondition(format!(
                "task {} of inference job {} does not run as attempt {} on node {node} (any more)",
                r.task, r.job, r.attempt
            )));
        }
        let header = crate::embed::writer::Writer::check(&job, &r)
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        // An output that cannot be attached or written now may be later: the node retries.
        let written = self
            .infer
            .writer
            .write(&self.member, &mut outputs, &job, &r, &header)
            .await
            .map_err(|e| Status::unavailable(format!("{e:#}")))?;
        match self.write(&auth, infer(written.complete)).await {
            Ok(applied) => {
                let job = job_of(applied)?;
                Ok(Response::new(job_out(&job, false)))
            }
            Err(status) => {
                if status.code() == tonic::Code::FailedPrecondition {
                    // Its input replica went stale, or this writer was fenced: the output
                    // is written again by the task's next attempt.
                    outputs.remove(&r.job);
                    let release = InferCommand::Release {
                        job: r.job,
                        task: r.task,
                        attempt: r.attempt,
                        node,
                        reason: status.message().to_owned(),
                        at_ms: crate::meta::clock::unix_ms(),
                    };
                    let _ = self.write(&auth, infer(release)).await;
                }
                Err(status)
            }
        }
    }

    pub(super) async fn infer_release(
        &self,
        req: Request<pb::ReleaseInferTaskRequest>,
    ) -> Result<Response<pb::InferJob>, Status> {
        let node = req.get_ref().node;
        let auth = self
            .authorize_node_itself(&req, Verb::InferWork, node)
            .await?;
        let r = req.into_inner();
        let command = InferCommand::Release {
            job: r.job,
            task: r.task,
            attempt: r.attempt,
            node,
            reason: r.reason,
            at_ms: crate::meta::clock::unix_ms(),
        };
        let job = job_of(self.write(&auth, infer(command)).await?)?;
        Ok(Response::new(job_out(&job, false)))
    }

    pub(super) async fn infer_search(
        &self,
        req: Request<pb::SearchVectorsRequest>,
    ) -> Result<Response<pb::SearchVectorsReply>, Status> {
        let vectors = req.get_ref().vectors.clone();
        self.authorize_volume(&req, Verb::InferSearch, &vectors)
            .await?;
        let r = req.into_inner();
        let found = self.member.sm.read(|s, _| {
            let job = s
                .infer
                .jobs
                .values()
                .rev()
                .find(|j| j.spec.output == r.vectors)?;
            let input = crate::embed::leader::volume_replicas(s, &job.spec.input)?;
            let output = crate::embed::leader::volume_replicas(s, &job.spec.output)?;
            Some((job.clone(), input, output))
        });
        let (job, input, output) = found.ok_or_else(|| {
            Status::not_found(format!(
                "no inference job wrote volume {} (or its input is gone)",
                r.vectors
            ))
        })?;
        let k = r.k.clamp(1, 1000) as usize;
        // Every failure is this search's (a replica that does not answer, an output that does
        // not decode): reported, not retried on another member.
        let found = crate::embed::search::search(&self.infer, &job, &input, &output, &r.query, k)
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(found))
    }
}
