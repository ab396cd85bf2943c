//! `fabric-bench`: Fabric's data path against what users would run instead, in one run.
//!
//! Starts `fabricd dev` and `qemu-nbd` (serving a raw file on the same disk, O_DIRECT like
//! Fabric), prefills both so neither serves holes, then runs the same fio jobs through fio's
//! nbd engine against each, and fio's io_uring engine on a raw file as the local-disk ceiling.
//! Prints each figure and the ratio fabric / qemu-nbd. With `--replicated`, it also starts
//! `fabricd dev --nodes 3` (three storage processes and a gateway, every block written to three
//! replicas on the same disk) and reports it beside the others. Jobs alternate between targets
//! so that drift in the machine's load hits all alike; `--rounds N` repeats and reports medians.
//! `--rebuild` measures a rebuild instead, `--driver` the copy tools of a hypervisor host
//! (`driver.rs`), and `--tls` what mutual TLS on every hop costs (`tls.rs`).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::Value;
use tools::prometheus::{parse_prometheus_text, sample, scrape};

mod burn;
mod client;
mod cpu;
mod disk;
mod driver;
mod infer;
mod neighbour;
mod qos;
mod scrub;
mod tls;
mod verify;

use cpu::cpu_seconds;

#[derive(Parser, Debug)]
#[command(about = "Benchmark Fabric's NBD data path against qemu-nbd and the raw disk")]
struct Args {
    /// Scratch directory on the disk under test (default: a new directory under the current one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Bytes of the working set, e.g. 1GiB.
    #[arg(long, default_value = "1GiB")]
    size: String,
    /// Seconds per fio job.
    #[arg(long, default_value_t = 10)]
    runtime: u32,
    /// Repetitions of the whole job list (with `--rebuild`: of the rebuild); medians are reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// fabricd binary (default: beside this binary).
    #[arg(long)]
    fabricd: Option<PathBuf>,
    /// With `--rebuild`: keep each round's process logs in DIR/round-N (the cluster's data
    /// directory is removed after each round).
    #[arg(long, value_name = "DIR")]
    logs: Option<PathBuf>,
    /// Print the table as JSON as well.
    #[arg(long)]
    json: bool,
    /// Also measure a 3-replica volume on a local 3-node cluster (`fabricd dev --nodes 3`).
    #[arg(long)]
    replicated: bool,
    /// Instead of the IO jobs: fill a 3-replica volume on a 4-node cluster, mark a node out,
    /// and compare the rebuild rate with fio's 1 MiB sequential writes on the same disk.
    #[arg(long)]
    rebuild: bool,
    /// Instead of the fio jobs: what a hypervisor host's disk tools see. nbdcopy of a 1 GiB
    /// file into a 3-replica volume with 1 and 4 connections, qemu-img convert out of a 16 GiB
    /// volume holding 1 GiB (beside qemu-nbd serving the same layout), and the time from
    /// NBD_OPT_GO to the first read. `--size` and `--runtime` do not apply.
    #[arg(long, conflicts_with_all = ["rebuild", "replicated"])]
    driver: bool,
    /// Instead of the IO jobs: a 3-replica volume with mutual TLS on every hop against the
    /// plaintext build of `--baseline-fabricd`, a 1-replica volume over TLS against qemu-nbd
    /// with TLS, and the handshake cost of a connection.
    #[arg(long, conflicts_with_all = ["rebuild", "replicated", "driver"])]
    tls: bool,
    /// With `--tls`: a fabricd built from before TLS, to compare with.
    #[arg(long)]
    baseline_fabricd: Option<PathBuf>,
    /// Instead of the IO jobs: a client's 4 KiB p99 idle, during a rebuild (with the
    /// gateway's fixed resync pace, then with recovery governed by the nodes' schedulers), and
    /// beside a neighbour's flood with and without its QoS limit (`--rounds` rounds, at least
    /// 3); the rebuild's rate under load and idle. `--size` is the
    /// volume rebuilt.
    #[arg(long, conflicts_with_all = ["rebuild", "replicated", "driver", "tls"])]
    qos: bool,
    /// With `--qos`: hold the client to this many IOs a second (half reads, half writes)
    /// instead of letting depth 8 go as fast as it can, to see the scheduler on a host whose
    /// CPUs the client does not keep busy.
    #[arg(long, requires = "qos")]
    client_iops: Option<u32>,
    /// Instead of the IO jobs: a scrub of a 3-replica volume of `--size`, written whole, on
    /// an idle cluster against fio's sequential read of the same replica files.
    #[arg(long, conflicts_with_all = ["rebuild", "replicated", "driver", "tls", "qos"])]
    scrub: bool,
    /// Instead of the IO jobs: an embed job over `--size` of text on a 4-node cluster against
    /// the same model in one process reading the volume over NBD, and a client's 4 KiB p99
    /// with the job running against idle.
    #[arg(long, conflicts_with_all = ["rebuild", "replicated", "driver", "tls", "qos", "scrub"])]
    infer: bool,
    /// With `--infer`: the model store holding `minilm` (as `fabric-infer model import`
    /// makes it).
    #[arg(long, default_value = "target/models/store")]
    model_store: PathBuf,
}

/// One fio job shape.
struct Job {
    name: &'static str,
    rw: &'static str,
    bs: &'static str,
    iodepth: u32,
    /// Report p50 completion latency (µs) instead of throughput.
    latency: bool,
}

const JOBS: &[Job] = &[
    Job {
        name: "4k randwrite qd32",
        rw: "randwrite",
        bs: "4k",
        iodepth: 32,
        latency: false,
    },
    Job {
        name: "4k randread qd32",
        rw: "randread",
        bs: "4k",
        iodepth: 32,
        latency: false,
    },
    Job {
        name: "4k randwrite qd1 p50",
        rw: "randwrite",
        bs: "4k",
        iodepth: 1,
        latency: true,
    },
    Job {
        name: "1M seq write",
        rw: "write",
        bs: "1M",
        iodepth: 8,
        latency: false,
    },
    Job {
        name: "1M seq read",
        rw: "read",
        bs: "1M",
        iodepth: 8,
        latency: false,
    },
];

/// One thing fio runs against: a label and the fio arguments that reach it.
struct Target {
    label: &'static str,
    fio_args: Vec<String>,
    /// Environment fio runs with (libnbd finds TLS certificates under `$HOME/.pki/libnbd`).
    env: Vec<(String, String)>,
}

fn nbd_target(label: &'static str, port: u16) -> Target {
    Target {
        label,
        fio_args: vec![
            "--ioengine=nbd".into(),
            format!("--uri=nbd://127.0.0.1:{port}/bench"),
        ],
        env: Vec::new(),
    }
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not listen on port {port} within 30 s")
}

/// `qemu-nbd` serving the raw file `file` as export `name` on 127.0.0.1:`port` (O_DIRECT and
/// io_uring, as Fabric's stores do; many clients at once).
fn start_qemu_nbd(name: &str, port: u16, file: &Path) -> anyhow::Result<Server> {
    start_qemu_nbd_with(name, port, file, &[])
}

/// [`start_qemu_nbd`] with `extra` arguments (TLS credentials).
fn start_qemu_nbd_with(
    name: &str,
    port: u16,
    file: &Path,
    extra: &[String],
) -> anyhow::Result<Server> {
    let child = Command::new("qemu-nbd")
        .args(extra)
        .args(["-f", "raw", "--cache=none", "--aio=io_uring"])
        .args(["--persistent", "--shared=16"])
        .args(["-x", name, "-b", "127.0.0.1", "-p", &port.to_string()])
        .arg(file)
        .stdout(Stdio::null())
        .spawn()
        .context("start qemu-nbd (is qemu-utils installed?)")?;
    Ok(Server { child })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn fio(args: &[String], env: &[(String, String)]) -> anyhow::Result<Value> {
    let out = Command::new("fio")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--output-format=json")
        .output()
        .context("run fio (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "fio {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // fio may print notes before the JSON document.
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('{').context("fio printed no JSON")?;
    serde_json::from_str(&text[start..]).context("parse fio JSON")
}

/// Runs one job and returns IOPS (or MiB/s for 1M jobs, or p50 µs for latency jobs).
fn run_job(job: &Job, target: &Target, size: u64, runtime: u32) -> anyhow::Result<f64> {
    let base = &target.fio_args;
    let mut args = base.to_vec();
    args.extend([
        format!("--name={}", job.name.replace(' ', "_")),
        format!("--rw={}", job.rw),
        format!("--bs={}", job.bs),
        format!("--iodepth={}", job.iodepth),
        format!("--size={size}"),
        format!("--runtime={runtime}"),
        "--time_based=1".into(),
        "--ramp_time=1".into(),
        "--randrepeat=0".into(),
        "--norandommap=1".into(),
        "--group_reporting=1".into(),
    ]);
    let v = fio(&args, &target.env)?;
    let job_v = &v["jobs"][0];
    let side = if job.rw.contains("write") {
        "write"
    } else {
        "read"
    };
    let s = &job_v[side];
    if job.latency {
        let p50_ns = s["clat_ns"]["percentile"]["50.000000"]
            .as_f64()
            .context("fio p50 latency")?;
        Ok(p50_ns / 1000.0)
    } else if job.bs == "1M" {
        Ok(s["bw_bytes"].as_f64().context("fio bandwidth")? / (1024.0 * 1024.0))
    } else {
        s["iops"].as_f64().context("fio iops")
    }
}

fn prefill(target: &Target, size: u64) -> anyhow::Result<()> {
    let base = &target.fio_args;
    let mut args = base.to_vec();
    args.extend([
        "--name=prefill".to_string(),
        "--rw=write".into(),
        "--bs=1M".into(),
        "--iodepth=8".into(),
        format!("--size={size}"),
        "--buffer_compress_percentage=0".into(),
        "--refill_buffers=1".into(),
    ]);
    fio(&args, &target.env).map(|_| ())
}

/// `fabricctl --json --data-dir DATA WHAT`, which must succeed, as JSON.
fn fabricctl_json(fabricctl: &Path, data: &Path, what: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new(fabricctl)
        .arg("--json")
        .arg("--data-dir")
        .arg(data)
        .args(what)
        .output()
        .context("run fabricctl")?;
    anyhow::ensure!(
        out.status.success(),
        "fabricctl {what:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The median; of an even count, the mean of the two middle values.
fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "at least one round");
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = parse_size::Config::new()
        .with_binary()
        .parse_size(&args.size)
        .with_context(|| format!("--size {}", args.size))?;
    anyhow::ensure!(
        size % (1 << 20) == 0 && size > 0,
        "--size must be a multiple of 1 MiB"
    );
    let scratch = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./.fabric-bench"));
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("clear {}", scratch.display()))?;
    }
    std::fs::create_dir_all(&scratch)?;
    let fabricd = match &args.fabricd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("fabricd"),
    };
    anyhow::ensure!(
        fabricd.exists(),
        "{} not found; build it with `cargo build --release -p fabric`",
        fabricd.display()
    );

    if args.rebuild {
        let result = rebuild(&args, size, &scratch, &fabricd);
        std::fs::remove_dir_all(&scratch).ok();
        return result;
    }
    if args.driver {
        let result = driver::driver(&args, &scratch, &fabricd);
        std::fs::remove_dir_all(&scratch).ok();
        return result;
    }
    if args.tls {
        let result = tls::tls(&args, size, &scratch, &fabricd);
        std::fs::remove_dir_all(&scratch).ok();
        return result;
    }
    if args.qos {
        let result = qos::qos(&args, size, &scratch, &fabricd);
        std::fs::remove_dir_all(&scratch).ok();
        return result;
    }
    if args.infer {
        let result = infer::infer(&args, size, &scratch, &fabricd);
        std::fs::remove_dir_all(&scratch).ok();
        return result;
    }
    if args.scrub {
        let result = scrub::scrub(&args, size, &scratch, &fabricd);
        std::fs::remove_dir_all(&scratch).ok();
        return result;
    }

    let fport = free_port()?;
    let mut fabric = Server {
        child: Command::new(&fabricd)
            .args(["dev", "--data-dir"])
            .arg(scratch.join("fabric"))
            .args(["--nbd-listen", &format!("127.0.0.1:{fport}")])
            .args(["--volume", &format!("bench:{size}")])
            .env("FABRIC_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("start fabricd")?,
    };
    wait_listening(fport, &mut fabric.child, "fabricd")?;

    let raw_qemu = scratch.join("qemu.raw");
    std::fs::File::create(&raw_qemu)?.set_len(size)?;
    let qport = free_port()?;
    let mut qemu = start_qemu_nbd("bench", qport, &raw_qemu)?;
    wait_listening(qport, &mut qemu.child, "qemu-nbd")?;

    let mut replicated = None;
    let mut targets = vec![nbd_target("fabric", fport), nbd_target("qemu-nbd", qport)];
    if args.replicated {
        let rport = free_port()?;
        let mut cluster = Server {
            child: Command::new(&fabricd)
                .args(["dev", "--nodes", "3", "--data-dir"])
                .arg(scratch.join("fabric-3"))
                .args(["--nbd-listen", &format!("127.0.0.1:{rport}")])
                .args(["--volume", &format!("bench:{size}")])
                .env("FABRIC_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .context("start fabricd dev --nodes 3")?,
        };
        wait_listening(rport, &mut cluster.child, "fabricd dev --nodes 3")?;
        replicated = Some(cluster);
        targets.push(nbd_target("fabric 3-replica", rport));
    }
    targets.push(Target {
        label: "raw io_uring",
        fio_args: vec![
            "--ioengine=io_uring".into(),
            "--direct=1".into(),
            format!("--filename={}", scratch.join("fio.raw").display()),
        ],
        env: Vec::new(),
    });
    eprintln!("prefilling {} on each target", args.size);
    for t in &targets {
        prefill(t, size)?;
    }

    let mut results = vec![vec![Vec::new(); targets.len()]; JOBS.len()];
    for round in 0..args.rounds {
        for (j, job) in JOBS.iter().enumerate() {
            for (t, target) in targets.iter().enumerate() {
                let v = run_job(job, target, size, args.runtime)?;
                eprintln!(
                    "round {round}: {:<22} {:<16} {v:>10.1}",
                    job.name, target.label
                );
                results[j][t].push(v);
            }
        }
    }
    drop(fabric);
    drop(qemu);
    drop(replicated);

    // Ratios are to qemu-nbd, the second target.
    let mut header = format!("{:<26}", "job");
    for t in &targets {
        header += &format!(" {:>16}", t.label);
    }
    for t in targets.iter().filter(|t| t.label.starts_with("fabric")) {
        header += &format!(
            " {:>16}",
            format!("{}/qemu", t.label.replace("fabric ", ""))
        );
    }
    println!("{header}");
    let mut json_rows = Vec::new();
    for (j, job) in JOBS.iter().enumerate() {
        let m: Vec<f64> = results[j].iter_mut().map(|v| median(v)).collect();
        let unit = if job.latency {
            "us"
        } else if job.bs == "1M" {
            "MiB/s"
        } else {
            "IOPS"
        };
        let mut line = format!("{:<26}", format!("{} ({unit})", job.name));
        let mut row = serde_json::Map::new();
        row.insert("job".into(), job.name.into());
        row.insert("unit".into(), unit.into());
        for (t, target) in targets.iter().enumerate() {
            line += &format!(" {:>16.0}", m[t]);
            row.insert(target.label.into(), m[t].into());
        }
        for (t, target) in targets.iter().enumerate() {
            if target.label.starts_with("fabric") {
                line += &format!(" {:>16.2}", m[t] / m[1]);
                row.insert(format!("{} / qemu-nbd", target.label), (m[t] / m[1]).into());
            }
        }
        println!("{line}");
        json_rows.push(Value::Object(row));
    }
    println!("(latency rows: lower is better, so a ratio below 1 favours fabric)");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json_rows)?);
    }
    std::fs::remove_dir_all(&scratch).ok();
    Ok(())
}

/// The rebuild benchmark: a node of a 4-node cluster is marked out with no client IO, and the
/// gateway rebuilds its PGs on the others. The rate is what the gateway's resync rounds copied
/// over the time they took (its `fabric_resync_bytes` and `fabric_resync_seconds` counters),
/// beside fio's 1 MiB sequential write rate on the disk.
fn rebuild(args: &Args, size: u64, scratch: &Path, fabricd: &Path) -> anyhow::Result<()> {
    let fabricctl = fabricd.with_file_name("fabricctl");
    anyhow::ensure!(
        fabricctl.exists(),
        "{} not found; build it with `cargo build --release -p tools`",
        fabricctl.display()
    );
    println!(
        "rebuild after node out, no client IO ({} volume, 4 nodes, 3 replicas)",
        args.size
    );
    println!(
        "  {:>5} {:>9} {:>9} {:>9} {:>9} {:>11} {:>14} {:>12} {:>10}",
        "round",
        "MiB",
        "resync ms",
        "wall ms",
        "MiB/s",
        "fio seq MiB/s",
        "copy ceiling",
        "rebuild/fio",
        "CPU s/GiB"
    );
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let dir = scratch.join(format!("round-{round}"));
        let r = rebuild_round(args, size, &dir, fabricd, &fabricctl)?;
        println!(
            "  {round:>5} {:>9.0} {:>9} {:>9} {:>9.0} {:>13.0} {:>14.0} {:>12.2} {:>10.2}",
            r.mib,
            r.resync_ms,
            r.wall.as_millis(),
            r.rebuild_mib_s,
            r.fio_mib_s,
            r.copy_mib_s,
            r.rebuild_mib_s / r.fio_mib_s,
            r.cpu_s_per_gib
        );
        rounds.push(r);
    }
    let med =
        |f: &dyn Fn(&RebuildRound) -> f64| median(&mut rounds.iter().map(f).collect::<Vec<_>>());
    println!("medians of {} round(s):", rounds.len());
    println!(
        "  rebuild rate            {:>10.0} MiB/s",
        med(&|r| r.rebuild_mib_s)
    );
    println!(
        "  fio 1M seq write, raw   {:>10.0} MiB/s",
        med(&|r| r.fio_mib_s)
    );
    println!(
        "  fio copy ceiling, raw   {:>10.0} MiB/s   (50/50 read+write, the smaller side)",
        med(&|r| r.copy_mib_s)
    );
    println!(
        "  rebuild / fio           {:>10.2}   (target >= 0.5; median of the rounds' ratios)",
        med(&|r| r.rebuild_mib_s / r.fio_mib_s)
    );
    println!(
        "  rebuild / copy ceiling  {:>10.2}",
        med(&|r| r.rebuild_mib_s / r.copy_mib_s)
    );
    println!(
        "  CPU per GiB rebuilt     {:>10.2} s   (launcher, nodes and gateway, user + system)",
        med(&|r| r.cpu_s_per_gib)
    );
    Ok(())
}

/// One rebuild and the disk's figures measured just before it.
struct RebuildRound {
    mib: f64,
    resync_ms: u64,
    wall: Duration,
    rebuild_mib_s: f64,
    fio_mib_s: f64,
    copy_mib_s: f64,
    /// CPU time the cluster's processes spent per GiB rebuilt: what a rebuild costs, which
    /// the other tenants of the machine disturb far less than its rate.
    cpu_s_per_gib: f64,
}

/// A fresh 4-node cluster in `dir`: fill the volume, measure the disk, mark node 2 out, and
/// time the rebuild from the gateway's metrics.
fn rebuild_round(
    args: &Args,
    size: u64,
    dir: &Path,
    fabricd: &Path,
    fabricctl: &Path,
) -> anyhow::Result<RebuildRound> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let data = dir.join("fabric-4");
    let port = free_port()?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut cluster = Server {
        child: Command::new(fabricd)
            .args(["dev", "--nodes", "4", "--data-dir"])
            .arg(&data)
            .args(["--nbd-listen", &format!("127.0.0.1:{port}")])
            .args(["--volume", &format!("bench:{size}")])
            .args(["--metrics-listen", &metrics])
            // Logs are kept with --logs; FABRIC_LOG chooses how much they say.
            .env(
                "FABRIC_LOG",
                std::env::var("FABRIC_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start fabricd dev --nodes 4")?,
    };
    wait_listening(port, &mut cluster.child, "fabricd dev --nodes 4")?;
    let nbd = nbd_target("fabric 3-replica", port);
    eprintln!("filling {} of a 3-replica volume", args.size);
    prefill(&nbd, size)?;

    let raw = Target {
        label: "raw io_uring",
        fio_args: vec![
            "--ioengine=io_uring".to_string(),
            "--direct=1".into(),
            format!("--filename={}", dir.join("fio.raw").display()),
        ],
        env: Vec::new(),
    };
    let seq_write = Job {
        name: "1M seq write",
        rw: "write",
        bs: "1M",
        iodepth: 8,
        latency: false,
    };
    let fio_mib_s = run_job(&seq_write, &raw, size, args.runtime)?;
    let copy_mib_s = copy_ceiling(&raw.fio_args, size, args.runtime)?;

    let ctl = |what: &[&str]| fabricctl_json(fabricctl, &data, what);
    eprintln!("marking node 2 out");
    let launcher = cluster.child.id();
    let cpu_before = cpu_seconds(launcher)?;
    ctl(&["node", "out", "2"])?;
    let started = Instant::now();
    loop {
        let shown = ctl(&["volume", "show", "bench"])?;
        if shown["replica_state"]["pgs_degraded"] == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "not rebuilt after 600 s: {shown}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let wall = started.elapsed();
    // The gateway counts a round once every resync of it has ended, a moment after the last
    // replica was restored: wait until its counters hold still for two resync intervals.
    let counters = || -> anyhow::Result<(u64, f64)> {
        let samples = parse_prometheus_text(&scrape(&metrics)?)?;
        let read = |name: &str| sample(&samples, &format!("{name}{{volume=\"bench\"}}"));
        Ok((
            read("fabric_resync_bytes_total").unwrap_or(0.0) as u64,
            read("fabric_resync_seconds_total").unwrap_or(0.0),
        ))
    };
    let mut last = counters()?;
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = counters()?;
        if now == last && now.0 > 0 {
            break;
        }
        last = now;
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the gateway's resync counters did not settle"
        );
    }
    let cpu = cpu_seconds(launcher)? - cpu_before;
    drop(cluster);

    let (bytes, seconds) = last;
    let ms = (seconds * 1000.0).round() as u64;
    anyhow::ensure!(bytes > 0 && ms > 0, "the gateway counted no rebuild");
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if let Some(logs) = &args.logs {
        let round = dir.file_name().unwrap_or_default();
        keep_logs(&data, &logs.join(round))?;
    }
    std::fs::remove_dir_all(dir).ok();
    Ok(RebuildRound {
        mib,
        resync_ms: ms,
        wall,
        rebuild_mib_s: mib / (ms as f64 / 1000.0),
        fio_mib_s,
        copy_mib_s,
        cpu_s_per_gib: cpu / (mib / 1024.0),
    })
}

/// Copies the log of every process of the cluster in `data` (`node-ID/fabricd.log`,
/// `gateway/fabricd.log`) into `to`, named after its directory, before the round's data goes.
fn keep_logs(data: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
    for entry in std::fs::read_dir(data)?.filter_map(Result::ok) {
        let log = entry.path().join("fabricd.log");
        if log.is_file() {
            let name = format!("{}.log", entry.file_name().to_string_lossy());
            std::fs::copy(&log, to.join(name))
                .with_context(|| format!("keep {}", log.display()))?;
        }
    }
    Ok(())
}

/// What the disk can copy onto itself: fio reading and writing 1 MiB blocks half and half at
/// depth 8, the smaller of the two rates. A rebuild on one disk reads every byte it writes.
fn copy_ceiling(raw: &[String], size: u64, runtime: u32) -> anyhow::Result<f64> {
    let mut args = raw.to_vec();
    args.extend([
        "--name=copy_ceiling".to_string(),
        "--rw=rw".into(),
        "--rwmixread=50".into(),
        "--bs=1M".into(),
        "--iodepth=8".into(),
        format!("--size={size}"),
        format!("--runtime={runtime}"),
        "--time_based=1".into(),
        "--ramp_time=1".into(),
    ]);
    let v = fio(&args, &[])?;
    let job = &v["jobs"][0];
    let mib_s = |side: &str| -> anyhow::Result<f64> {
        Ok(job[side]["bw_bytes"]
            .as_f64()
            .with_context(|| format!("fio {side} bandwidth"))?
            / (1024.0 * 1024.0))
    };
    Ok(mib_s("read")?.min(mib_s("write")?))
}
