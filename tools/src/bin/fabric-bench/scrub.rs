//! `fabric-bench --scrub`: how fast a scrub checks an idle cluster's data against the disk's
//! own sequential read rate, in one run.
//!
//! A fresh `fabricd dev --nodes 3` serving `bench` (`--size`, written whole), so each node
//! holds a replica of every extent and the three replica files share this machine's disk. A
//! round reads the three data files with fio (4 MiB sequential reads, O_DIRECT, one job per
//! file at once: what the disk gives sequential readers), then times `fabricctl scrub start
//! bench --wait` (which reads and checks the same bytes on the three replicas). Three
//! alternated rounds; the ratio of the medians is the figure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;

use super::{Args, Server, fabricctl_json, fio, free_port, prefill, wait_listening};

const ROUNDS: usize = 3;

pub(crate) fn scrub(args: &Args, size: u64, dir: &Path, fabricd: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let data = dir.join("fabric-3");
    let port = free_port()?;
    let _cluster = {
        let mut child = Command::new(fabricd)
            .args(["dev", "--nodes", "3", "--data-dir"])
            .arg(&data)
            .args(["--nbd-listen", &format!("127.0.0.1:{port}")])
            .args(["--volume", &format!("bench:{size}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start fabricd dev --nodes 3")?;
        wait_listening(port, &mut child, "fabricd dev --nodes 3")?;
        Server { child }
    };
    let target = super::Target {
        label: "fabric",
        fio_args: vec![
            "--ioengine=nbd".into(),
            format!("--uri=nbd://127.0.0.1:{port}/bench"),
        ],
        env: Vec::new(),
    };
    eprintln!("filling {} of bench", args.size);
    prefill(&target, size)?;
    let fabricctl = fabricd.with_file_name("fabricctl");
    let ctl = |what: &[&str]| fabricctl_json(&fabricctl, &data, what);
    let id = ctl(&["volume", "show", "bench"])?["id"]
        .as_u64()
        .context("volume id")?;
    let files: Vec<PathBuf> = (1..=3)
        .map(|n| data.join(format!("node-{n}/store/volumes/r-{id:016x}/data")))
        .collect();
    for f in &files {
        anyhow::ensure!(f.exists(), "{} is missing", f.display());
    }
    let bytes = 3 * size;
    let (mut disk, mut scrubbed) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        eprintln!("round {round}: fio reads the three replica files");
        disk.push(sequential_read_mib_s(&files, size)?);
        eprintln!("round {round}: scrub start bench --wait");
        let started = Instant::now();
        ctl(&["scrub", "start", "bench", "--wait", "--timeout", "1h"])?;
        let seconds = started.elapsed().as_secs_f64();
        scrubbed.push(bytes as f64 / f64::from(1 << 20) / seconds);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "scrub of {} on 3 replicas ({} MiB checked) against fio's sequential read of the same files, {ROUNDS} rounds",
        args.size,
        bytes >> 20
    );
    println!(
        "  disk sequential read MiB/s: {}",
        disk.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  scrub MiB/s:                {}",
        scrubbed
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let (d, s) = (median(&mut disk), median(&mut scrubbed));
    println!(
        "  medians: disk {d:.0}, scrub {s:.0}: scrub {:.2} x the disk (target >= 0.8)",
        s / d
    );
    Ok(())
}

/// fio reading `files` (each `size` bytes) sequentially at once, 4 MiB blocks, O_DIRECT:
/// their summed rate in MiB/s.
fn sequential_read_mib_s(files: &[PathBuf], size: u64) -> anyhow::Result<f64> {
    let mut args = vec![
        "--rw=read".to_string(),
        "--bs=4M".into(),
        "--direct=1".into(),
        "--ioengine=io_uring".into(),
        "--iodepth=4".into(),
        format!("--size={size}"),
        "--group_reporting=1".into(),
    ];
    for (i, f) in files.iter().enumerate() {
        args.push(format!("--name=replica{i}"));
        args.push(format!("--filename={}", f.display()));
    }
    let report = fio(&args, &[])?;
    let kib_s = report["jobs"][0]["read"]["bw"]
        .as_f64()
        .context("fio read bandwidth")?;
    Ok(kib_s / 1024.0)
}
