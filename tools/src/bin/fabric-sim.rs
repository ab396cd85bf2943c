//! `fabric-sim`: runs seeds of the whole-cluster simulation and reports what they found.
//!
//! Each seed builds a cluster of 3 to 9 replica servers on simulated disks, a volume driver
//! and the cluster state machine in one process, runs a checked workload under a seeded
//! schedule of crashes, partitions, metadata outages and disk faults, heals, and verifies
//! every acknowledged write. A failing seed prints itself with its fault log; rerun it with
//! `--seed S` and pin it as a test.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use fabric::sim::{SimOptions, run_seed};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Log lines carry the simulated time of their run, so equal seeds give equal logs.
struct SimulatedTime;

impl FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        match fabric::sim::simulated_elapsed() {
            Some(t) => write!(w, "{:>11.6}", t.as_secs_f64()),
            None => write!(w, "{:>11}", "-"),
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "fabric-sim",
    about = "Seeded whole-cluster simulation of Fabric"
)]
struct Args {
    /// Number of seeds to run, starting at --first-seed.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of the range.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Run only this seed (and print its fault schedule).
    #[arg(long)]
    seed: Option<u64>,
    /// Simulated seconds of workload under faults, per seed.
    #[arg(long, default_value_t = 30)]
    sim_seconds: u64,
    /// Storage nodes per cluster (3 to 9); default: chosen by each seed.
    #[arg(long)]
    nodes: Option<usize>,
    /// Scrub under the faults, with bit rot on replicas, and deep-scrub every PG after heal.
    #[arg(long)]
    scrub: bool,
    /// Threads running seeds side by side (each seed runs on one thread).
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    threads: usize,
}

fn main() -> ExitCode {
    // Quiet unless asked: the simulated faults make the driver log warnings by design.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FABRIC_LOG").unwrap_or_else(|_| EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .with_timer(SimulatedTime)
        .init();
    let args = Args::parse();
    if args.sim_seconds == 0 || args.threads == 0 {
        eprintln!("fabric-sim: --sim-seconds and --threads must be positive");
        return ExitCode::from(2);
    }
    if args.nodes.is_some_and(|n| !(3..=9).contains(&n)) {
        eprintln!("fabric-sim: --nodes takes 3 to 9");
        return ExitCode::from(2);
    }
    let options = SimOptions {
        sim_seconds: args.sim_seconds,
        nodes: args.nodes,
        scrub: args.scrub,
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let reports = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..args.threads.min(seeds.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { break };
                    let report = run_seed(seed, &options);
                    if let Some(failure) = &report.failure {
                        eprintln!("seed {seed} FAILED: {failure}");
                        eprintln!(
                            "  rerun: fabric-sim --seed {seed} --sim-seconds {}",
                            options.sim_seconds
                        );
                    }
                    reports.lock().expect("reports").push(report);
                }
            });
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let mut reports = reports.into_inner().expect("reports");
    reports.sort_by_key(|r| r.seed);
    if args.seed.is_some() {
        for r in &reports {
            for f in &r.faults {
                println!("  {f}");
            }
            println!(
                "seed {}: trace {:016x}, reads checked {}, simulated {:.1} s",
                r.seed,
                r.trace,
                r.reads_checked,
                r.simulated.as_secs_f64()
            );
        }
    }
    let failures = reports.iter().filter(|r| r.failure.is_some()).count();
    let writes: u64 = reports.iter().map(|r| r.writes_checked).sum();
    let simulated: f64 = reports.iter().map(|r| r.simulated.as_secs_f64()).sum();
    println!(
        "seeds {}, failures {failures}, acknowledged writes checked {writes}, simulated seconds per wall second {:.1}",
        reports.len(),
        simulated / wall.max(f64::EPSILON)
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
