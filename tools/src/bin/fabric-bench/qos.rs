//! `fabric-bench --qos`: what a rebuild and a noisy neighbour do to a client's latency, with
//! the gateway's fixed resync pace and with recovery governed by the nodes' disk schedulers,
//! side by side in one run.
//!
//! For each pace, a fresh `fabricd dev --nodes 5` serving two volumes: `bench` (the data to
//! rebuild, `--size`) and `client` (256 MiB, the client's). The client runs fio 4 KiB randrw
//! 50/50 at depth 8 and its read and write p99 are taken: idle; from node 2 marked out until
//! `bench` is rebuilt (fio is interrupted then, so the figure covers the rebuild only); then
//! node 3 is marked out and `bench` rebuilds again with no client, for the rebuild's idle
//! rate. With the governed pace, last, the noisy neighbour (`neighbour.rs`): `bench` flooded
//! at depth 32 beside the client, without a limit and held to its QoS limit.
//!
//! With the governed pace, a control too: the client alone beside pure computation that keeps
//! busy half the cores the rebuild took alone (what a rebuild at half its idle rate would cost
//! the CPUs), at normal priority and at `SCHED_IDLE`, so the rebuild's figure can be read
//! against what any work of that size costs the client on this host; and beside plain IO on
//! a file of the same disk at the rate such a rebuild reads and writes, with no CPU work of
//! the cluster's, to tell the disk's share from the CPUs'.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tools::prometheus::{parse_prometheus_text, sample, scrape};

use super::burn::{Burner, Priority};
use super::client::{CLIENT_BYTES, Client, P99, nbd_args};
use super::neighbour::NeighbourRound;
use super::{Args, Server, fabricctl_json, fio, free_port, prefill, wait_listening};

struct Round {
    pace: &'static str,
    idle: P99,
    rebuilding: P99,
    /// How long the rebuild under load took (the client ran exactly as long).
    rebuild_ms: u64,
    rebuild_mib_s: f64,
    idle_rebuild_mib_s: f64,
    /// The host's CPUs busy (of all of them) while the client ran alone, while it ran beside
    /// the rebuild, and while the rebuild ran alone.
    cpu_idle: f64,
    cpu_rebuilding: f64,
    cpu_rebuild_alone: f64,
    control: Option<Control>,
    /// The noisy-neighbour rounds (with the governed pace, the default).
    neighbour: Option<Vec<NeighbourRound>>,
}

/// The client beside pure computation of `cores` cores (see the module docs).
struct Control {
    cores: f64,
    /// The client alone again, just before (two nodes are out by then).
    alone: P99,
    normal: P99,
    idle_priority: P99,
    /// The cores the computation got beside the client, at each priority.
    normal_cores: f64,
    idle_cores: f64,
    /// The client beside plain IO on a file of the same disk, at half the idle rebuild's
    /// rate read and as much written (what a rebuild at half its idle rate asks of the
    /// disk, with none of the cluster's CPU work), in 512 KiB requests.
    disk: P99,
    disk_mib_s: f64,
}

/// Busy and total jiffies of all the host's CPUs so far (/proc/stat).
fn cpu_jiffies() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    anyhow::ensure!(n.len() >= 5, "short cpu line in /proc/stat");
    let total: u64 = n.iter().sum();
    // idle and iowait
    Ok((total - n[3] - n[4], total))
}

/// The share of the host's CPUs busy while `f` ran, and what it returned.
fn cpu_busy<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, f64)> {
    let (b0, t0) = cpu_jiffies()?;
    let out = f()?;
    let (b1, t1) = cpu_jiffies()?;
    Ok((out, (b1 - b0) as f64 / (t1 - t0).max(1) as f64))
}

fn round(
    args: &Args,
    size: u64,
    dir: &Path,
    fabricd: &Path,
    pace: &'static str,
) -> anyhow::Result<Round> {
    std::fs::create_dir_all(dir)?;
    let data = dir.join("fabric-5");
    let port = free_port()?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut cluster = Server {
        child: Command::new(fabricd)
            .args(["dev", "--nodes", "5", "--resync-pace", pace, "--data-dir"])
            .arg(&data)
            .args(["--nbd-listen", &format!("127.0.0.1:{port}")])
            .args(["--volume", &format!("bench:{size}")])
            .args(["--volume", &format!("client:{CLIENT_BYTES}")])
            .args(["--metrics-listen", &metrics])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start fabricd dev --nodes 5")?,
    };
    wait_listening(port, &mut cluster.child, "fabricd dev --nodes 5")?;
    let client = Client {
        port,
        iops: args.client_iops,
    };
    let target = |volume: &str| super::Target {
        label: "fabric",
        fio_args: nbd_args(port, volume),
        env: Vec::new(),
    };
    eprintln!(
        "[{pace}] filling {} of bench and 256 MiB of client",
        args.size
    );
    prefill(&target("bench"), size)?;
    prefill(&target("client"), CLIENT_BYTES)?;

    let fabricctl = fabricd.with_file_name("fabricctl");
    let ctl = |what: &[&str]| fabricctl_json(&fabricctl, &data, what);
    let resync = || -> anyhow::Result<(f64, f64)> {
        let samples = parse_prometheus_text(&scrape(&metrics)?)?;
        let read = |name: &str| sample(&samples, &format!("{name}{{volume=\"bench\"}}"));
        Ok((
            read("fabric_resync_bytes_total").unwrap_or(0.0),
            read("fabric_resync_seconds_total").unwrap_or(0.0),
        ))
    };
    let rebuilt = |started: Instant| -> anyhow::Result<()> {
        loop {
            let shown = ctl(&["volume", "show", "bench"])?;
            if shown["replica_state"]["pgs_degraded"] == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(900),
                "not rebuilt after 900 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // The gateway counts a resync once it ended: wait for its counters to hold still.
    let settled = |from: (f64, f64)| -> anyhow::Result<(f64, f64)> {
        let mut last = resync()?;
        loop {
            std::thread::sleep(Duration::from_secs(2));
            let now = resync()?;
            if now == last && now.0 > from.0 {
                return Ok((now.0 - from.0, now.1 - from.1));
            }
            last = now;
        }
    };

    eprintln!("[{pace}] client alone");
    let (idle, cpu_idle) = cpu_busy(|| client.run(args.runtime))?;

    eprintln!("[{pace}] client while node 2 is out and bench rebuilds");
    let before = resync()?;
    ctl(&["node", "out", "2"])?;
    let started = Instant::now();
    let (rebuilding, cpu_rebuilding) = cpu_busy(|| client.run_while(|| rebuilt(started)))?;
    let rebuild_ms = started.elapsed().as_millis() as u64;
    let (bytes, seconds) = settled(before)?;
    let rebuild_mib_s = bytes / f64::from(1 << 20) / seconds.max(1e-3);

    eprintln!("[{pace}] node 3 out, bench rebuilds with no client");
    let before = resync()?;
    ctl(&["node", "out", "3"])?;
    let cluster_before = super::cpu::cluster_cpu(cluster.child.id())?;
    let alone_started = Instant::now();
    let ((), cpu_rebuild_alone) = cpu_busy(|| rebuilt(alone_started))?;
    let rebuild_cores = super::cpu::cluster_cpu(cluster.child.id())?
        .since(&cluster_before)
        .total()
        / alone_started.elapsed().as_secs_f64();
    let (bytes, seconds) = settled(before)?;
    let idle_rebuild_mib_s = bytes / f64::from(1 << 20) / seconds.max(1e-3);

    let control = if pace == "governed" {
        let cores = rebuild_cores / 2.0;
        eprintln!("[{pace}] client beside pure computation on {cores:.2} cores");
        let beside = |priority| -> anyhow::Result<(P99, f64)> {
            let burn = Burner::start(cores, priority)?;
            let p99 = client.run(args.runtime)?;
            Ok((p99, burn.finish()))
        };
        let alone = client.run(args.runtime)?;
        let (normal, normal_cores) = beside(Priority::Normal)?;
        let (idle_priority, idle_cores) = beside(Priority::Idle)?;
        let disk_mib_s = idle_rebuild_mib_s / 2.0;
        eprintln!("[{pace}] client beside plain file IO at {disk_mib_s:.0} MiB/s read and written");
        let disk = beside_disk_io(&client, args.runtime, dir, disk_mib_s)?;
        Some(Control {
            cores,
            alone,
            normal,
            idle_priority,
            normal_cores,
            idle_cores,
            disk,
            disk_mib_s,
        })
    } else {
        None
    };

    let neighbour = if pace == "governed" {
        Some(super::neighbour::neighbour(
            client,
            args.runtime,
            args.rounds,
            size,
            &ctl,
        )?)
    } else {
        None
    };
    drop(cluster);
    std::fs::remove_dir_all(dir).ok();
    Ok(Round {
        pace,
        idle,
        rebuilding,
        rebuild_ms,
        rebuild_mib_s,
        idle_rebuild_mib_s,
        cpu_idle,
        cpu_rebuilding,
        cpu_rebuild_alone,
        control,
        neighbour,
    })
}

/// The client's p99 beside fio reading and writing 512 KiB blocks at random in a file of
/// `dir`, at `mib_s` MiB/s each way, depth 4, O_DIRECT through io_uring.
fn beside_disk_io(client: &Client, runtime: u32, dir: &Path, mib_s: f64) -> anyhow::Result<P99> {
    let file = dir.join("plain-io.dat");
    let common = [
        "--name=plain".to_string(),
        format!("--filename={}", file.display()),
        "--size=1GiB".into(),
        "--bs=512k".into(),
        "--direct=1".into(),
        "--ioengine=io_uring".into(),
        "--iodepth=4".into(),
    ];
    let mut lay_out = common.to_vec();
    lay_out.push("--rw=write".into());
    fio(&lay_out, &[])?;
    let mut load = common.to_vec();
    load.extend([
        "--rw=randrw".into(),
        format!("--rate={}k", (mib_s * 1024.0).max(1.0) as u64),
    ]);
    let p99 = client.run_beside(runtime, load);
    std::fs::remove_file(&file).ok();
    Ok(p99?.0)
}

pub(crate) fn qos(args: &Args, size: u64, scratch: &Path, fabricd: &Path) -> anyhow::Result<()> {
    let mut rounds = Vec::new();
    for pace in ["fixed", "governed"] {
        rounds.push(round(args, size, &scratch.join(pace), fabricd, pace)?);
    }
    println!(
        "client 4k randrw 50/50 qd8{} p99 (µs, read/write), {} s runs; rebuild of {} after node out",
        args.client_iops
            .map(|n| format!(" held to {n} IOPS"))
            .unwrap_or_default(),
        args.runtime,
        args.size
    );
    println!(
        "  {:<9} {:>13} {:>17} {:>9} {:>12} {:>11} {:>9}",
        "pace", "idle", "during rebuild", "p99 ×", "rebuild ms", "MiB/s", "× idle",
    );
    for r in &rounds {
        println!(
            "  {:<9} {:>6.0}/{:<6.0} {:>8.0}/{:<8.0} {:>9.2} {:>12} {:>11.0} {:>9.2}",
            r.pace,
            r.idle.read_us,
            r.idle.write_us,
            r.rebuilding.read_us,
            r.rebuilding.write_us,
            r.rebuilding.worse() / r.idle.worse(),
            r.rebuild_ms,
            r.rebuild_mib_s,
            r.rebuild_mib_s / r.idle_rebuild_mib_s,
        );
    }
    println!(
        "host CPUs busy (share of all): client alone / client beside the rebuild / rebuild alone"
    );
    for r in &rounds {
        println!(
            "  {:<9} {:>5.0} % / {:>5.0} % / {:>5.0} %",
            r.pace,
            r.cpu_idle * 100.0,
            r.cpu_rebuilding * 100.0,
            r.cpu_rebuild_alone * 100.0
        );
    }
    for r in &rounds {
        if let Some(c) = &r.control {
            println!(
                "control ({}): client beside pure computation asking for {:.2} cores (half the \
                 idle rebuild's): p99 {:.2} x alone at normal priority (it got {:.2} cores), \
                 {:.2} x at SCHED_IDLE (it got {:.2} cores); alone {:.0} µs",
                r.pace,
                c.cores,
                c.normal.worse() / c.alone.worse(),
                c.normal_cores,
                c.idle_priority.worse() / c.alone.worse(),
                c.idle_cores,
                c.alone.worse(),
            );
            println!(
                "control ({}): client beside plain file IO on the same disk, {:.0} MiB/s read \
                 and as much written in 512 KiB requests (half the idle rebuild's rate, none of \
                 its CPU work): p99 {:.2} x alone",
                r.pace,
                c.disk_mib_s,
                c.disk.worse() / c.alone.worse(),
            );
        }
    }
    for r in &rounds {
        if let Some(n) = &r.neighbour {
            super::neighbour::print(n, args.runtime);
        }
    }
    println!(
        "targets: p99 during rebuild <= 1.2 x idle while the rebuild keeps >= 0.5 x its idle rate; \
         p99 beside a flooding neighbour <= 1.5 x alone (the worse of read and write)"
    );
    Ok(())
}
