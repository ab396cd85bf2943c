//! Inference commands against a real `ClusterState`: four nodes in four racks, a pool of three
//! replicas, an input volume of 16 extents and an output volume.

use super::command::{Assignment, InferCommand, ReadFrom};
use super::model::{
    ComputeDtype, InferModel, Job, JobSpec, JobState, ModelFile, OUTPUT_HEADER_BYTES, RecordFormat,
    TASK_ATTEMPTS_MAX, TaskOutput, TaskReport, TaskState, VectorDtype,
};
use crate::meta::command::{Applied, CommandError, CommandV1};
use crate::meta::model::{
    DiskInfo, Location, NodeId, NodeRegistration, PoolSpec, Rule, VolumeSpec,
};
use crate::meta::state::ClusterState;

pub(super) const INPUT_BYTES: u64 = 64 << 20;

pub(super) fn cluster() -> ClusterState {
    let mut s = ClusterState::default();
    for id in 1..=4u64 {
        let r = NodeRegistration {
            id,
            rpc_addr: format!("127.0.0.1:{}", 7000 + id),
            data_addr: format!("127.0.0.1:{}", 8000 + id),
            location: Location {
                levels: vec![("rack".into(), format!("r{id}"))],
            },
            disks: vec![DiskInfo {
                name: "data".into(),
                capacity_bytes: 1 << 40,
            }],
        };
        s.apply(&CommandV1::RegisterNode(r).into())
            .expect("register");
    }
    let pool = PoolSpec {
        name: "p".into(),
        rule: Rule {
            replicas: 3,
            min_replicas: 1,
            failure_domain: "rack".into(),
            tag_filter: vec![],
        },
        pg_count: 32,
    };
    s.apply(&CommandV1::CreatePool(pool).into()).expect("pool");
    for (name, size_bytes) in [("in", INPUT_BYTES), ("out", 16 << 20)] {
        let spec = VolumeSpec {
            name: name.into(),
            pool: "p".into(),
            size_bytes,
            extent_size_bytes: 4 << 20,
            request_id: String::new(),
        };
        s.apply(&CommandV1::CreateVolume(spec).into())
            .expect("volume");
    }
    s.apply(&infer(InferCommand::AddModel(model("m", 'a'))))
        .expect("model");
    s
}

pub(super) fn infer(c: InferCommand) -> crate::meta::command::Command {
    CommandV1::Infer(c).into()
}

fn model(name: &str, digit: char) -> InferModel {
    InferModel {
        name: name.into(),
        id: digit.to_string().repeat(64),
        dim: 384,
        files: vec![ModelFile {
            path: "model.safetensors".into(),
            sha256: "b".repeat(64),
            bytes: 90 << 20,
        }],
        added_ms: 1,
    }
}

pub(super) fn spec() -> JobSpec {
    JobSpec {
        input: "in".into(),
        output: "out".into(),
        model: "m".into(),
        format: RecordFormat::Lines,
        dtype: ComputeDtype::F32,
        out_dtype: VectorDtype::F16,
        cpu_share_pct: 25,
    }
}

pub(super) fn job_of(outcome: Result<Applied, CommandError>) -> Job {
    match outcome {
        Ok(Applied::InferJob(j)) => *j,
        other => panic!("{other:?}"),
    }
}

pub(super) fn start(s: &mut ClusterState) -> Job {
    job_of(s.apply(&infer(InferCommand::CreateJob {
        spec: spec(),
        at_ms: 10,
    })))
}

fn attach_output(s: &mut ClusterState) -> u64 {
    let attach = CommandV1::AttachVolume {
        name: "out".into(),
        client: "writer".into(),
        force: false,
    };
    s.apply(&attach.into()).expect("attach");
    s.volumes["out"].attach_epoch
}

fn assign(s: &mut ClusterState, job: u64, task: u32, node: NodeId, local: bool) -> Job {
    job_of(s.apply(&infer(InferCommand::Assign {
        job,
        assignments: vec![Assignment { task, node, local }],
        at_ms: 20,
    })))
}

fn complete(
    s: &mut ClusterState,
    job: &Job,
    task: u32,
    node: NodeId,
    epoch: u64,
) -> Result<Applied, CommandError> {
    let attempt = job.tasks[task as usize].attempts;
    s.apply(&infer(InferCommand::Complete {
        job: job.id,
        task,
        attempt,
        out_epoch: epoch,
        read_from: vec![ReadFrom {
            pg: job.tasks[task as usize].pg,
            node,
        }],
        output: TaskOutput {
            node,
            offset: s.infer.jobs[&job.id].out_next,
            bytes: 8192,
            report: TaskReport {
                records: 3,
                ..TaskReport::default()
            },
        },
        at_ms: 30,
    }))
}

#[test]
fn a_job_has_one_task_per_extent_in_the_pg_each_extent_is_placed_in() {
    let mut s = cluster();
    let job = start(&mut s);
    assert_eq!(job.tasks.len(), 16);
    assert_eq!(job.out_next, OUTPUT_HEADER_BYTES);
    assert_eq!(job.model_id, "a".repeat(64));
    let input = volume::wire::VolumeId(s.volumes["in"].id);
    for (e, t) in job.tasks.iter().enumerate() {
        assert_eq!(
            (t.start, t.end),
            (e as u64 * (4 << 20), (e as u64 + 1) * (4 << 20))
        );
        assert_eq!(t.pg as usize, volume::client::pg_of(input, e as u64, 32));
        assert_eq!(t.state, TaskState::Pending { since_ms: 10 });
    }
}

#[test]
fn bad_jobs_are_refused_and_change_nothing() {
    let mut s = cluster();
    start(&mut s);
    let before = s.clone();
    let mut cases: Vec<(JobSpec, &str)> = Vec::new();
    cases.push((
        JobSpec {
            model: "nope".into(),
            ..spec()
        },
        "model nope not found",
    ));
    cases.push((
        JobSpec {
            input: "nope".into(),
            ..spec()
        },
        "volume nope not found",
    ));
    cases.push((
        JobSpec {
            output: "in".into(),
            ..spec()
        },
        "both the input and the output",
    ));
    cases.push((
        JobSpec {
            cpu_share_pct: 0,
            ..spec()
        },
        "CPU share of 0%",
    ));
    cases.push((
        JobSpec {
            cpu_share_pct: 101,
            ..spec()
        },
        "CPU share of 101%",
    ));
    cases.push((
        JobSpec {
            format: RecordFormat::Jsonl {
                field: String::new(),
            },
            ..spec()
        },
        "jsonl field name of 0 bytes",
    ));
    // The first job still runs and writes "out".
    cases.push((spec(), "running job 1 writes volume out"));
    for (bad, words) in cases {
        let e = s
            .apply(&infer(InferCommand::CreateJob {
                spec: bad,
                at_ms: 11,
            }))
            .expect_err(words);
        assert!(e.to_string().contains(words), "{e} (want {words})");
        assert_eq!(s, before);
    }
}

#[test]
fn bad_models_are_refused_and_a_second_add_of_the_same_model_changes_nothing() {
    let mut s = cluster();
    let before = s.clone();
    // The same name and id: accepted, nothing new.
    s.apply(&infer(InferCommand::AddModel(model("m", 'a'))))
        .expect("again");
    assert_eq!(s.infer, before.infer);
    let mut bad = vec![model("m", 'c'), model("", 'a'), model("a/b", 'a')];
    let mut traversal = model("t", 'a');
    traversal.files[0].path = "../etc/passwd".into();
    bad.push(traversal);
    let mut short_id = model("s", 'a');
    short_id.id = "abc".into();
    bad.push(short_id);
    for m in bad {
        let name = m.name.clone();
        s.apply(&infer(InferCommand::AddModel(m))).expect_err(&name);
        assert_eq!(s.infer, before.infer, "{name}");
    }
}

#[test]
fn a_task_goes_locally_only_to_a_current_holder_and_to_nodes_that_are_up_and_in() {
    let mut s = cluster();
    let job = start(&mut s);
    let pg = job.tasks[0].pg;
    let holders = s.current_holders("in", pg);
    assert_eq!(holders.len(), 3);
    let other = (1..=4)
        .find(|n| !holders.contains(n))
        .expect("a fourth node");
    let before = s.clone();
    let e = s
        .apply(&infer(InferCommand::Assign {
            job: job.id,
            assignments: vec![Assignment {
                task: 0,
                node: other,
                local: true,
            }],
            at_ms: 20,
        }))
        .expect_err("not a holder");
    assert!(e.to_string().contains("holds no current replica"), "{e}");
    assert_eq!(s, before);
    // A holder whose replica is stale is no holder.
    s.volumes
        .get_mut("in")
        .unwrap()
        .stale
        .entry(pg)
        .or_default()
        .insert(holders[0]);
    assert!(!s.current_holders("in", pg).contains(&holders[0]));
    s.apply(&infer(InferCommand::Assign {
        job: job.id,
        assignments: vec![Assignment {
            task: 0,
            node: holders[0],
            local: true,
        }],
        at_ms: 20,
    }))
    .expect_err("stale holder");
    // Remote, it may run anywhere that is up.
    let job = assign(&mut s, job.id, 0, other, false);
    assert!(matches!(
        job.tasks[0].state,
        TaskState::Running { node, attempt: 1, local: false, .. } if node == other
    ));
    // A task already running is not given again.
    s.apply(&infer(InferCommand::Assign {
        job: job.id,
        assignments: vec![Assignment {
            task: 0,
            node: holders[1],
            local: true,
        }],
        at_ms: 21,
    }))
    .expect_err("running");
}

#[test]
fn completion_allocates_the_output_in_order_and_finishes_the_job_with_every_task() {
    let mut s = cluster();
    let job = start(&mut s);
    let epoch = attach_output(&mut s);
    let mut offsets = Vec::new();
    for t in 0..job.tasks.len() as u32 {
        let node = s.current_holders("in", job.tasks[t as usize].pg)[0];
        let job = assign(&mut s, job.id, t, node, true);
        let done = job_of(complete(&mut s, &job, t, node, epoch));
        let TaskState::Done(out) = done.tasks[t as usize].state else {
            panic!("task {t} not done");
        };
        offsets.push(out.offset);
    }
    let expect: Vec<u64> = (0..16).map(|i| OUTPUT_HEADER_BYTES + i * 8192).collect();
    assert_eq!(offsets, expect);
    let job = &s.infer.jobs[&job.id];
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.finished_ms, Some(30));
    assert_eq!(job.totals().1.records, 48);
    // Done: nothing more completes or is assigned.
    s.apply(&infer(InferCommand::Cancel {
        job: job.id,
        at_ms: 40,
    }))
    .expect_err("finished");
}

#[test]
fn a_completion_is_refused_if_its_input_replica_went_stale_or_its_writer_was_fenced() {
    let mut s = cluster();
    let job = start(&mut s);
    let epoch = attach_output(&mut s);
    let pg = job.tasks[0].pg;
    let node = s.current_holders("in", pg)[0];
    let job = assign(&mut s, job.id, 0, node, true);
    // The replica missed a write while the task read it.
    s.volumes
        .get_mut("in")
        .unwrap()
        .stale
        .entry(pg)
        .or_default()
        .insert(node);
    let before = s.clone();
    let e = complete(&mut s, &job, 0, node, epoch).expect_err("stale");
    assert!(e.to_string().contains("no longer current"), "{e}");
    assert_eq!(s, before);
    s.volumes.get_mut("in").unwrap().stale.clear();
    // A newer attach of the output fences the old writer.
    let newer = attach_output(&mut s);
    assert!(newer > epoch);
    let e = complete(&mut s, &job, 0, node, epoch).expect_err("fenced");
    assert!(matches!(e, CommandError::FailedPrecondition(_)), "{e}");
    // A segment anywhere but at the output's next byte is refused.
    let e = s
        .apply(&infer(InferCommand::Complete {
            job: job.id,
            task: 0,
            attempt: 1,
            out_epoch: newer,
            read_from: vec![],
            output: TaskOutput {
                node,
                offset: OUTPUT_HEADER_BYTES + 4096,
                bytes: 4096,
                report: TaskReport::default(),
            },
            at_ms: 30,
        }))
        .expect_err("misplaced");
    assert!(e.to_string().contains("next segment goes at"), "{e}");
    complete(&mut s, &job, 0, node, newer).expect("current writer, current replica");
}

#[test]
fn a_released_task_runs_again_and_fails_its_job_after_its_last_attempt() {
    let mut s = cluster();
    let job = start(&mut s);
    let node = s.current_holders("in", job.tasks[3].pg)[0];
    for attempt in 1..=TASK_ATTEMPTS_MAX {
        let job = assign(&mut s, job.id, 3, node, true);
        assert_eq!(job.tasks[3].attempts, attempt);
        // A release of another attempt is refused.
        s.apply(&infer(InferCommand::Release {
            job: job.id,
            task: 3,
            attempt: attempt + 1,
            node,
            reason: "no".into(),
            at_ms: 50,
        }))
        .expect_err("other attempt");
        let job = job_of(s.apply(&infer(InferCommand::Release {
            job: job.id,
            task: 3,
            attempt,
            node,
            reason: format!("read failed {attempt}"),
            at_ms: 50,
        })));
        assert!(job.tasks[3].failures.len() <= 3);
        if attempt < TASK_ATTEMPTS_MAX {
            assert_eq!(job.state, JobState::Running);
            assert_eq!(job.tasks[3].state, TaskState::Pending { since_ms: 50 });
        } else {
            let JobState::Failed(why) = &job.state else {
                panic!("{:?}", job.state);
            };
            assert!(why.contains("read failed 5"), "{why}");
        }
    }
}

#[test]
fn a_model_in_use_stays_and_jobs_survive_a_snapshot_round_trip() {
    let mut s = cluster();
    let job = start(&mut s);
    s.apply(&infer(InferCommand::RemoveModel { name: "m".into() }))
        .expect_err("in use");
    let bytes = serde_json::to_vec(&s).expect("encode");
    let back: ClusterState = serde_json::from_slice(&bytes).expect("decode");
    assert_eq!(back.infer, s.infer);
    s.apply(&infer(InferCommand::Cancel {
        job: job.id,
        at_ms: 40,
    }))
    .expect("cancel");
    s.apply(&infer(InferCommand::RemoveModel { name: "m".into() }))
        .expect("no running job uses it");
}
