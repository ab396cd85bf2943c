//! `meta-bench`: metadata commit throughput and leader failover on a 3-member loopback group.
//!
//! Prints, side by side: the disk's single-threaded `fdatasync` rate (the ceiling for one
//! client, since every commit waits for an fsync), commits per second with 1 and with 64
//! concurrent clients, and the time from `kill -9` of the leader to the first successful write.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fabric::meta::client::Client;
use proto::meta as pb;
use tools::group::Group;

#[derive(Parser)]
#[command(
    name = "meta-bench",
    about = "Benchmark Fabric's Raft metadata on loopback"
)]
struct Args {
    /// Directory for the members' data (on the disk to measure); removed afterwards.
    #[arg(long, default_value = "./.meta-bench")]
    dir: PathBuf,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent clients of the second run.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// fdatasync calls in the disk measurement.
    #[arg(long, default_value_t = 300)]
    fsyncs: u32,
}

/// Members of the benchmark group.
const MEMBERS: u64 = 3;
/// How long the group may take to form.
const FORM_TIMEOUT_MS: u64 = 60_000;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let fsync_rate = fdatasync_rate(&args.dir, args.fsyncs).context("measure fdatasync")?;
    let runtime = tokio::runtime::Runtime::new().context("start tokio")?;
    let mut group = Group::start(&args.dir, MEMBERS, &[])?;
    let result = runtime.block_on(bench(&args, &mut group));
    drop(group);
    let _ = std::fs::remove_dir_all(&args.dir);
    let r = result?;
    println!(
        "meta-bench: 3 members on loopback, data in {}",
        args.dir.display()
    );
    println!(
        "  disk fdatasync, 1 thread     {fsync_rate:>10.0} /s   (ceiling for 1 client), {:.0} us each",
        1e6 / fsync_rate
    );
    println!(
        "  gRPC round trip, no Raft     {:>10.0} us   (median Status call to the leader)",
        r.rpc_us
    );
    println!(
        "  commits, 1 client            {:>10.0} /s   {:.2} x fdatasync (target >= 0.8), {:.0} us each",
        r.one,
        r.one / fsync_rate,
        1e6 / r.one
    );
    println!(
        "  commits, {} clients          {:>10.0} /s   {:.1} x 1 client (target >= 20)",
        args.clients,
        r.many,
        r.many / r.one
    );
    println!(
        "  CPU per commit, {} clients   {:>10.0} us   (members and client, user + system)",
        args.clients, r.many_cpu_us
    );
    println!(
        "  failover, kill -9 leader     {:>10.0} ms   to the first successful write (target <= 3000)",
        r.failover.as_secs_f64() * 1e3
    );
    Ok(())
}

/// 4 KiB overwrite + fdatasync in a loop, one thread: syncs per second.
fn fdatasync_rate(dir: &Path, n: u32) -> anyhow::Result<f64> {
    let path = dir.join("fsync-probe");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let block = [0xa5u8; 4096];
    f.write_all_at(&block, 0)?;
    f.sync_all()?;
    let started = Instant::now();
    for i in 0..n {
        f.write_all_at(&block, u64::from(i % 16) * 4096)?;
        f.sync_data()?;
    }
    let rate = f64::from(n) / started.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

struct Results {
    rpc_us: f64,
    one: f64,
    many: f64,
    /// CPU time of the members and this client per commit in the many-client run.
    many_cpu_us: f64,
    failover: Duration,
}

async fn bench(args: &Args, group: &mut Group) -> anyhow::Result<Results> {
    let all = Client::new(group.addrs.clone(), group.admin.clone());
    let deadline = Instant::now() + Duration::from_millis(FORM_TIMEOUT_MS);
    loop {
        let nodes = all
            .call(|mut c| async move { c.list_nodes(pb::ListNodesRequest {}).await })
            .await;
        if nodes.is_ok_and(|n| n.nodes.len() == MEMBERS as usize) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the group did not form within {FORM_TIMEOUT_MS} ms");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pool = pb::CreatePoolRequest {
        name: "bench".into(),
        rule: Some(pb::Rule {
            replicas: 3,
            min_replicas: 2,
            failure_domain: "rack".into(),
            tag_filter: vec![],
        }),
        pg_count: 16,
    };
    all.call(|mut c| {
        let pool = pool.clone();
        async move { c.create_pool(pool).await }
    })
    .await?;
    let leader = all.leader_status().await?;
    // Leader first: no forwarding hop in the measurement.
    let mut ordered = vec![leader.rpc_addr.clone()];
    ordered.extend(
        group
            .addrs
            .iter()
            .filter(|a| **a != leader.rpc_addr)
            .cloned(),
    );
    let client = Arc::new(Client::new(ordered, group.admin.clone()));
    let rpc_us = status_round_trip_us(&client).await?;
    let counter = Arc::new(AtomicU64::new(0));
    let run = Duration::from_secs(args.seconds);
    let one = throughput(&client, &counter, 1, run).await?;
    let cpu_before = group_cpu(group)?;
    let many = throughput(&client, &counter, args.clients, run).await?;
    let cpu = group_cpu(group)? - cpu_before;
    let many_cpu_us = cpu.as_secs_f64() * 1e6 / (many * run.as_secs_f64());

    group.kill9(leader.id);
    let killed = Instant::now();
    let survivors: Vec<String> = group
        .addrs
        .iter()
        .filter(|a| **a != leader.rpc_addr)
        .cloned()
        .collect();
    let after = Client::new(survivors, group.admin.clone());
    after.create_volume(volume_request(u64::MAX)).await?;
    let failover = killed.elapsed();
    Ok(Results {
        rpc_us,
        one,
        many,
        many_cpu_us,
        failover,
    })
}

/// CPU time (user + system) used so far by the members and by this process.
fn group_cpu(group: &Group) -> anyhow::Result<Duration> {
    let mut ticks = process_cpu_ticks("self")?;
    for id in 1..=MEMBERS {
        if let Some(pid) = group.pid(id) {
            ticks += process_cpu_ticks(&pid.to_string())?;
        }
    }
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(per_sec > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(Duration::from_secs_f64(ticks as f64 / per_sec as f64))
}

/// utime + stime of `/proc/PID/stat`, in clock ticks.
fn process_cpu_ticks(pid: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .with_context(|| format!("{path}: field {n} missing"))?
            .parse()
            .with_context(|| format!("{path}: field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

/// Status calls timed one after another.
const STATUS_CALLS: usize = 2_000;

/// Median time of a `Status` call to the leader, in µs: one gRPC round trip on loopback that
/// touches neither Raft nor a disk, the floor under every hop a commit makes.
async fn status_round_trip_us(client: &Client) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(STATUS_CALLS);
    for _ in 0..STATUS_CALLS {
        let started = Instant::now();
        client
            .call(|mut c| async move { c.status(pb::StatusRequest {}).await })
            .await?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn volume_request(n: u64) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: format!("bench-{n}"),
        pool: "bench".into(),
        size_bytes: 1 << 30,
        extent_size_bytes: 0,
        request_id: String::new(),
    }
}

/// Commits per second with `clients` concurrent writers, each sending one create at a time.
async fn throughput(
    client: &Arc<Client>,
    counter: &Arc<AtomicU64>,
    clients: usize,
    run: Duration,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, counter, done) = (Arc::clone(client), Arc::clone(counter), Arc::clone(&done));
        tasks.spawn(async move {
            while started.elapsed() < run {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                client.create_volume(volume_request(n)).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let _ = std::io::stdout().flush();
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
