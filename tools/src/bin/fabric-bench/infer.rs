//! `fabric-bench --infer`: an embed job placed next to its data against shipping the data to
//! one process, and what the job costs a client, in one run.
//!
//! A fresh `fabricd dev --nodes 4` serving `text` (`--size` of generated sentences, 3
//! replicas) and `client` (256 MiB). First `fabricctl infer embed` runs over `text` alone, at
//! its CPU share (25 % of each node's cores: the four nodes share this host, so together they
//! may use all of it), for its throughput, locality and bytes moved. The baseline is the same
//! model in this process with every core, reading the whole volume over NBD (nbdcopy), cutting
//! the same records, and writing its vectors back over NBD to a volume of the same pool. Last,
//! the client's fio 4 KiB randrw 50/50 at depth 8 gives its read and write p99 alone, then for
//! as long again beside a second run of the job (cancelled after).
//!
//! Network bytes, counted alike for both: input read from another node's replica (the job's
//! remote reads; all of the baseline's, whose process holds no replica), the vectors sent to
//! the output's writer (the job's segments; none for the baseline, which is the writer), and
//! the output written to its three replicas.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, ensure};
use fabric::embed::records::Window;
use fabric::embed::segment::{Layout, VectorRecord, encode_segment};
use fabric::meta::infer::model::{RecordFormat, VectorDtype};

use super::client::{Client, P99};
use super::{Args, Server, fabricctl_json, free_port, wait_listening};

const OUTPUT_REPLICAS: f64 = 3.0;

/// `size` bytes of lines of 20 to 200 words (about 170 tokens on average), zero padded.
fn corpus(size: u64) -> Vec<u8> {
    let words = [
        "storage",
        "replica",
        "volume",
        "cluster",
        "node",
        "disk",
        "network",
        "consensus",
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
        "the",
        "of",
        "and",
        "a",
        "to",
        "in",
        "is",
        "that",
        "for",
        "it",
        "with",
        "as",
        "was",
        "on",
        "data",
        "fault",
        "domain",
        "latency",
        "throughput",
        "operator",
        "hardware",
        "recovery",
        "model",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut out = Vec::with_capacity(size as usize);
    loop {
        let n = 20 + next(181);
        let line: Vec<&str> = (0..n).map(|_| words[next(words.len())]).collect();
        let line = line.join(" ") + ".\n";
        if (out.len() + line.len()) as u64 > size {
            break;
        }
        out.extend_from_slice(line.as_bytes());
    }
    out.resize(size as usize, 0);
    out
}

fn nbdcopy(from: &str, to: &str) -> anyhow::Result<()> {
    let status = Command::new("nbdcopy")
        .args([from, to])
        .status()
        .context("run nbdcopy")?;
    ensure!(status.success(), "nbdcopy {from} {to}: {status}");
    Ok(())
}

pub(crate) fn infer(args: &Args, size: u64, dir: &Path, fabricd: &Path) -> anyhow::Result<()> {
    let data = dir.join("fabric-4");
    let port = free_port()?;
    let _cluster = {
        let mut child = Command::new(fabricd)
            .args(["dev", "--nodes", "4", "--data-dir"])
            .arg(&data)
            .args(["--nbd-listen", &format!("127.0.0.1:{port}")])
            .args(["--volume", &format!("text:{size}")])
            .args(["--volume", "client:256MiB"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start fabricd dev --nodes 4")?;
        wait_listening(port, &mut child, "fabricd dev --nodes 4")?;
        Server { child }
    };
    let fabricctl = fabricd.with_file_name("fabricctl");
    let ctl = |what: &[&str]| fabricctl_json(&fabricctl, &data, what);
    let uri = |volume: &str| format!("nbd://127.0.0.1:{port}/{volume}");
    let text = corpus(size);
    let file = dir.join("text.img");
    std::fs::write(&file, &text)?;
    eprintln!("writing {} of text", args.size);
    nbdcopy(file.to_str().context("path")?, &uri("text"))?;
    let store = args.model_store.to_str().context("model store path")?;
    ctl(&["infer", "model", "add", "minilm", "--store", store])?;
    // Fill the client's volume so its reads hit data.
    super::prefill(
        &super::Target {
            label: "client",
            fio_args: vec!["--ioengine=nbd".into(), format!("--uri={}", uri("client"))],
            env: Vec::new(),
        },
        256 << 20,
    )?;

    eprintln!("the embed job, alone");
    let embed = |out: &str, wait: bool| {
        let mut what = vec![
            "infer",
            "embed",
            "--volume",
            "text",
            "--model",
            "minilm",
            "--out-volume",
            out,
        ];
        if wait {
            what.push("--wait");
        }
        ctl(&what)
    };
    let job = embed("text.vec", true)?;
    ensure!(job["state"] == "done", "the job did not finish: {job}");

    eprintln!("baseline: the same model in this process, over NBD");
    let base = baseline(args, &uri, dir)?;

    eprintln!("client alone for {} s", args.runtime);
    let client = Client { port, iops: None };
    let idle = client.run(args.runtime)?;
    eprintln!("client beside the embed job for {} s", args.runtime);
    let second = embed("text.vec2", false)?;
    let second_id = second["id"].to_string();
    let busy = client.run_while(|| {
        std::thread::sleep(std::time::Duration::from_secs(u64::from(args.runtime)));
        Ok(())
    })?;
    let during = ctl(&["infer", "status", &second_id])?;
    ctl(&["infer", "cancel", &second_id]).ok();

    let num = |k: &str| job[k].as_f64().unwrap_or(0.0);
    let job_network =
        num("remote_bytes") + num("sent_bytes") + OUTPUT_REPLICAS * num("output_bytes");
    let job_secs = num("elapsed_s");
    let records = num("records");
    println!(
        "embed job over {} of text ({} records) on fabricd dev --nodes 4, 3 replicas, against one process reading over NBD",
        args.size, records
    );
    println!(
        "  job:      {:.1} records/s, {:.2} MiB/s, locality {:.4}, network {:.1} MiB (remote input {:.2} MiB, segments {:.1} MiB, output x3 {:.1} MiB), CPU {:.0} s",
        records / job_secs,
        size as f64 / f64::from(1 << 20) / job_secs,
        num("locality"),
        job_network / f64::from(1 << 20),
        num("remote_bytes") / f64::from(1 << 20),
        num("sent_bytes") / f64::from(1 << 20),
        OUTPUT_REPLICAS * num("output_bytes") / f64::from(1 << 20),
        num("cpu_s"),
    );
    println!(
        "  baseline: {:.1} records/s, {:.2} MiB/s, network {:.1} MiB (input {:.1} MiB, output x3 {:.1} MiB); read {:.1} s, embed {:.1} s, write {:.1} s",
        base.records as f64 / base.secs,
        size as f64 / f64::from(1 << 20) / base.secs,
        base.network() / f64::from(1 << 20),
        size as f64 / f64::from(1 << 20),
        OUTPUT_REPLICAS * base.output_bytes as f64 / f64::from(1 << 20),
        base.read_secs,
        base.embed_secs,
        base.write_secs,
    );
    ensure!(
        base.records as f64 == records,
        "the job embedded {records} records, the baseline {}",
        base.records
    );
    println!(
        "  ratios: throughput {:.2} x the baseline; network {:.2} x the baseline (target <= 0.5); input over the network {:.4} x",
        (records / job_secs) / (base.records as f64 / base.secs),
        job_network / base.network(),
        num("remote_bytes") / size as f64,
    );
    let p = |x: P99| format!("read {:.0} us, write {:.0} us", x.read_us, x.write_us);
    println!(
        "  client 4k randrw p99: idle {}; with the job {}: {:.2} x read, {:.2} x write (target <= 1.1); the job meanwhile: {} records, {:.0} CPU s",
        p(idle),
        p(busy),
        busy.read_us / idle.read_us,
        busy.write_us / idle.write_us,
        during["records"],
        during["cpu_s"].as_f64().unwrap_or(0.0),
    );
    Ok(())
}

struct Baseline {
    records: usize,
    output_bytes: u64,
    input_bytes: u64,
    secs: f64,
    read_secs: f64,
    embed_secs: f64,
    write_secs: f64,
}

impl Baseline {
    fn network(&self) -> f64 {
        self.input_bytes as f64 + OUTPUT_REPLICAS * self.output_bytes as f64
    }
}

/// Reads `text` over NBD, embeds its records with every core, writes the vectors to a new
/// volume over NBD.
fn baseline(args: &Args, uri: &dyn Fn(&str) -> String, dir: &Path) -> anyhow::Result<Baseline> {
    let started = Instant::now();
    let input = dir.join("text.read");
    nbdcopy(&uri("text"), input.to_str().context("path")?)?;
    let bytes = std::fs::read(&input)?;
    let read_secs = started.elapsed().as_secs_f64();
    let embed_started = Instant::now();
    let cut = Window {
        buf: &bytes,
        start: 0,
        end: bytes.len() as u64,
        at_volume_end: true,
    }
    .cut(&RecordFormat::Lines);
    let store = infer::store::Store::new(&args.model_store);
    let model = store.open("minilm")?;
    let engine = infer::Engine::detect()?;
    let embedder = infer::embedder::Embedder::open(&model, &engine, infer::bert::Dtype::F32)?;
    let mut vectors = Vec::with_capacity(cut.records.len());
    for batch in cut.records.chunks(32) {
        let texts: Vec<&str> = batch.iter().map(|r| r.text.as_str()).collect();
        let flat = embedder.embed(&engine, &texts)?;
        for (r, v) in batch.iter().zip(flat.chunks_exact(embedder.dims())) {
            vectors.push(VectorRecord {
                offset: r.offset,
                len: r.len,
                vector: v.to_vec(),
            });
        }
    }
    let embed_secs = embed_started.elapsed().as_secs_f64();
    let write_started = Instant::now();
    let layout = Layout {
        job: 0,
        model_id: embedder.id().to_owned(),
        dim: embedder.dims() as u32,
        dtype: VectorDtype::F16,
    };
    let segment = encode_segment(&layout, 0, (0, bytes.len() as u64), cut.skipped, &vectors);
    let out = dir.join("base.vec");
    let mut image = vec![0u8; 4096];
    image.extend_from_slice(&segment);
    let volume_bytes = (image.len() as u64).div_ceil(1 << 20) << 20;
    image.resize(volume_bytes as usize, 0);
    std::fs::write(&out, &image)?;
    let fabricctl = args
        .fabricd
        .clone()
        .unwrap_or_else(|| {
            std::env::current_exe()
                .expect("exe")
                .with_file_name("fabricd")
        })
        .with_file_name("fabricctl");
    let data = dir.join("fabric-4");
    fabricctl_json(
        &fabricctl,
        &data,
        &[
            "volume",
            "create",
            "base.vec",
            "--size",
            &volume_bytes.to_string(),
        ],
    )?;
    nbdcopy(out.to_str().context("path")?, &uri("base.vec"))?;
    let write_secs = write_started.elapsed().as_secs_f64();
    Ok(Baseline {
        records: vectors.len(),
        output_bytes: segment.len() as u64,
        input_bytes: bytes.len() as u64,
        secs: started.elapsed().as_secs_f64(),
        read_secs,
        embed_secs,
        write_secs,
    })
}
