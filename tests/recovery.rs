//! Rebuild under load: `fabricd dev --nodes 4 --resync-pace governed` with fio at depth 8 on
//! one volume while a node is marked out and another volume (and this one) are rebuilt
//! elsewhere. The rebuild completes, and the client's p99 stays within its bound of the p99
//! it had alone.
//!
//! The bound is not the 1.2 × the gateway's governor aims for: on this host the four nodes,
//! the gateway and fio share two CPUs the client alone keeps busy, and each extent copy is a
//! burst of work its requests queue behind, even at the governor's floor (BENCHMARKS.md,
//! `fabric-bench --qos`: about 2 × with the rebuild at 0.01-0.12 × its idle rate; unpaced,
//! 50-400 ×). The test holds the governed pace to what this host gives, with room for a noisy
//! neighbour: within 5 × (1.9-2.1 × in three runs of the debug build).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fabric_suite::{DevNode, fabricctl, fio_report, tools};

/// The client's p99 during the rebuild may be this many times its p99 alone (see above).
const HOST_P99_BOUND: f64 = 5.0;

/// fio 4 KiB randrw 50/50 at depth 8 on `uri`, for `seconds`.
fn client(uri: &str, seconds: u32) -> Command {
    let mut fio = Command::new("fio");
    fio.args([
        "--name=client",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randrw",
        "--rwmixread=50",
        "--bs=4k",
        "--size=32M",
        "--iodepth=8",
        "--time_based",
        &format!("--runtime={seconds}"),
        "--output-format=json",
    ]);
    fio
}

/// The worse of the read and write p99 of a fio report, in µs.
fn p99_us(report: &serde_json::Value) -> f64 {
    ["read", "write"]
        .iter()
        .map(|side| {
            report["jobs"][0][side]["clat_ns"]["percentile"]["99.000000"]
                .as_f64()
                .expect("fio p99")
                / 1000.0
        })
        .fold(0.0, f64::max)
}

fn degraded(data: &std::path::Path) -> u64 {
    ["vol0", "bench"]
        .iter()
        .map(|v| {
            fabricctl(data, &["volume", "show", v])["replica_state"]["pgs_degraded"]
                .as_u64()
                .expect("pgs_degraded")
        })
        .sum()
}

#[test]
fn a_rebuild_under_client_load_completes_within_the_clients_latency_bound() {
    if tools(&["fio"]).is_none() {
        return;
    }
    let _serial = fabric_suite::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--nodes",
        "4",
        "--resync-pace",
        "governed",
        "--volume",
        "bench:256MiB",
    ];
    let mut dev = DevNode::start_with(&data, "vol0:64MiB", &args).expect("start dev");
    let uri = dev.uri();
    let bench = uri.replace("/vol0", "/bench");
    let fill = Command::new("fio")
        .args([
            "--name=fill",
            "--ioengine=nbd",
            &format!("--uri={bench}"),
            "--rw=write",
            "--bs=1M",
            "--iodepth=8",
            "--size=256M",
        ])
        .output()
        .expect("run fio");
    assert!(
        fill.status.success(),
        "{}",
        String::from_utf8_lossy(&fill.stderr)
    );

    let alone = p99_us(&fio_report(client(&uri, 8).output().expect("run fio")));
    let started = Instant::now();
    fabricctl(&data, &["node", "out", "4"]);
    let fio = client(&uri, 600)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_secs(1));
    while degraded(&data) > 0 {
        if started.elapsed() > Duration::from_secs(300) {
            let volumes = ["vol0", "bench"].map(|v| fabricctl(&data, &["volume", "show", v]));
            panic!("not rebuilt within 300 s\n{volumes:#?}\n{}", dev.report());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rebuild = started.elapsed();
    // SAFETY: signalling our own child by pid; fio reports what it saw when interrupted.
    unsafe { libc::kill(fio.id() as i32, libc::SIGINT) };
    // Interrupted, fio may not exit 0; its report is whole all the same.
    let out = fio.wait_with_output().expect("fio ran");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(&text[text.find('{').expect("fio JSON")..]).expect("fio JSON");
    assert_eq!(
        report["jobs"][0]["error"], 0,
        "fio saw an IO error: {report}"
    );
    let during = p99_us(&report);
    eprintln!(
        "client p99 alone {alone:.0} µs, during the rebuild {during:.0} µs ({:.2} x); rebuilt in {:.1} s",
        during / alone,
        rebuild.as_secs_f64()
    );
    assert!(
        during <= alone * HOST_P99_BOUND,
        "client p99 {during:.0} µs during the rebuild against {alone:.0} µs alone"
    );
}
