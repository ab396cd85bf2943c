//! `fabric-bench --tls`: what mutual TLS costs, in one run.
//!
//! - A 3-replica volume (`fabricd dev --nodes 3`) of this build, mutual TLS on every hop inside
//!   the cluster (gateway → replicas, gRPC), against the same cluster of a plaintext build from
//!   before TLS (`--baseline-fabricd`): fio's 4k random writes and reads at depth 32 through the
//!   gateway, which fio reaches over loopback as a hypervisor host's clients do (plaintext NBD
//!   on the host; fio's nbd engine cannot be given client certificates). The two builds
//!   alternate job by job.
//! - NBD itself over TLS: a 1-replica volume (`fabricd dev`, one process) against `qemu-nbd`
//!   with `--object tls-creds-x509`, both requiring a client certificate of one CA, driven by
//!   `nbdcopy` (libnbd, the only load generator here that takes client certificates) with 4 KiB
//!   requests, 32 in flight, one connection: a file of random bytes in, then the volume out to
//!   `null:`. The same with plaintext NBD shows what TLS costs each server.
//! - The handshake cost of one connection: mutual TLS 1.3 to a member's gRPC port beside a
//!   plain TCP connect to it, medians of many.
//!
//! Ratios are printed as TLS / plaintext and fabric / qemu-nbd; medians over `--rounds`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fabric::identity::ca::CertificateAuthority;
use fabric::identity::issue::{LeafRequest, ServerSan};
use fabric::identity::{ClusterTls, PrincipalKind};

use super::{
    Args, JOBS, Server, free_port, median, prefill, run_job, start_qemu_nbd_with, wait_listening,
};

/// The jobs the comparison runs: the data path's small random IO (what TLS costs most on),
/// and large sequential IO.
const TLS_JOBS: &[&str] = &["4k randwrite qd32", "4k randread qd32"];
/// Handshakes timed for the per-connection cost.
const HANDSHAKES: usize = 200;

/// One nbdcopy run: `from` to `to`, 4 KiB requests, 32 in flight, one connection; IOPS.
fn nbdcopy_iops(from: &str, to: &str, bytes: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = Command::new("nbdcopy")
        .args([
            "--connections=1",
            "--requests=32",
            "--request-size=4096",
            "--flush",
        ])
        .args([from, to])
        .output()
        .context("run nbdcopy (is libnbd-bin installed?)")?;
    if !out.status.success() {
        bail!(
            "nbdcopy {from} {to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(bytes as f64 / 4096.0 / started.elapsed().as_secs_f64())
}

fn start_dev(
    fabricd: &Path,
    dir: &Path,
    port: u16,
    size: u64,
    nodes: Option<u32>,
) -> anyhow::Result<Server> {
    let mut cmd = Command::new(fabricd);
    cmd.arg("dev");
    if let Some(n) = nodes {
        cmd.args(["--nodes", &n.to_string()]);
    }
    let mut server = Server {
        child: cmd
            .arg("--data-dir")
            .arg(dir)
            .args(["--nbd-listen", &format!("127.0.0.1:{port}")])
            .args(["--volume", &format!("bench:{size}")])
            .env("FABRIC_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", fabricd.display()))?,
    };
    wait_listening(port, &mut server.child, "fabricd dev")?;
    Ok(server)
}

/// Server credentials for qemu-nbd in gnutls's layout, signed by the CA in `ca_dir`.
fn qemu_server_creds(ca_dir: &Path, out: &Path) -> anyhow::Result<()> {
    let ca = CertificateAuthority::open(ca_dir)?;
    let leaf = ca.issue(&LeafRequest::for_days(
        PrincipalKind::Gateway("qemu-nbd".into()),
        vec![ServerSan::Ip(std::net::Ipv4Addr::LOCALHOST.into())],
        time::OffsetDateTime::now_utc(),
        30,
    )?)?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("server-cert.pem"), &leaf.chain_pem)?;
    std::fs::write(out.join("server-key.pem"), &leaf.key_pem)?;
    std::fs::write(out.join("ca-cert.pem"), leaf.gnutls_ca_pem())?;
    Ok(())
}

/// Median milliseconds of a TCP connect and of a full mutual TLS handshake to `addr`.
fn handshake_ms(addr: &str, admin: &Path) -> anyhow::Result<(f64, f64)> {
    let tls = ClusterTls::load(admin)?;
    let name = fabric::identity::transport::server_name(addr)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (mut tcp_ms, mut tls_ms) = (Vec::new(), Vec::new());
        for _ in 0..HANDSHAKES {
            let t = Instant::now();
            let s = tokio::net::TcpStream::connect(addr).await?;
            tcp_ms.push(t.elapsed().as_secs_f64() * 1e3);
            drop(s);
            let t = Instant::now();
            let s = tokio::net::TcpStream::connect(addr).await?;
            let _ = tls
                .client
                .connect(s, name.clone(), Duration::from_secs(10))
                .await
                .map_err(|e| anyhow::anyhow!("handshake with {addr}: {e}"))?;
            tls_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok((median(&mut tcp_ms), median(&mut tls_ms)))
    })
}

pub fn tls(args: &Args, size: u64, scratch: &Path, fabricd: &Path) -> anyhow::Result<()> {
    let Some(baseline) = &args.baseline_fabricd else {
        bail!("--tls needs --baseline-fabricd, a fabricd built from before TLS (plaintext)");
    };
    anyhow::ensure!(baseline.exists(), "{} not found", baseline.display());
    let (plain_port, tls_port, single_port, qemu_port) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let plain = start_dev(baseline, &scratch.join("plain"), plain_port, size, Some(3))?;
    let tls_dir = scratch.join("tls");
    let mtls = start_dev(fabricd, &tls_dir, tls_port, size, Some(3))?;
    let single_dir = scratch.join("single");
    let single = start_dev(fabricd, &single_dir, single_port, size, None)?;
    let creds = scratch.join("qemu-tls");
    qemu_server_creds(&single_dir.join("ca"), &creds)?;
    let raw = scratch.join("qemu.raw");
    std::fs::File::create(&raw)?.set_len(size)?;
    let mut qemu = start_qemu_nbd_with(
        "bench",
        qemu_port,
        &raw,
        &[
            "--object".into(),
            format!(
                "tls-creds-x509,id=tls0,endpoint=server,dir={},verify-peer=on",
                creds.display()
            ),
            "--tls-creds".into(),
            "tls0".into(),
        ],
    )?;
    wait_listening(qemu_port, &mut qemu.child, "qemu-nbd")?;

    // Plaintext NBD beside TLS on the same two servers, for what TLS costs each.
    let (plain_single, plain_qemu) = (free_port()?, free_port()?);
    let single_plain = start_dev(
        fabricd,
        &scratch.join("single-plain"),
        plain_single,
        size,
        None,
    )?;
    let raw_plain = scratch.join("qemu-plain.raw");
    std::fs::File::create(&raw_plain)?.set_len(size)?;
    let mut qemu_plain = super::start_qemu_nbd("bench", plain_qemu, &raw_plain)?;
    wait_listening(plain_qemu, &mut qemu_plain.child, "qemu-nbd")?;

    let fio_targets = [
        super::nbd_target("3-replica plaintext (before)", plain_port),
        super::nbd_target("3-replica mTLS", tls_port),
    ];
    eprintln!("prefilling {} on each 3-replica volume", args.size);
    for t in &fio_targets {
        prefill(t, size)?;
    }
    let certs = single_dir.join("admin");
    let tls_uri = |port: u16| {
        format!(
            "nbds://127.0.0.1:{port}/bench?tls-certificates={}",
            certs.display()
        )
    };
    let nbd_servers = [
        ("fabric TLS", tls_uri(single_port)),
        ("qemu-nbd TLS", tls_uri(qemu_port)),
        (
            "fabric plain",
            format!("nbd://127.0.0.1:{plain_single}/bench"),
        ),
        (
            "qemu-nbd plain",
            format!("nbd://127.0.0.1:{plain_qemu}/bench"),
        ),
    ];
    let random = scratch.join("random.raw");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&random)?;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..size >> 20 {
            for chunk in block.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes());
            }
            f.write_all(&block)?;
        }
    }
    let random = random.display().to_string();
    let jobs: Vec<_> = JOBS.iter().filter(|j| TLS_JOBS.contains(&j.name)).collect();
    let mut fio_results = vec![vec![Vec::new(); fio_targets.len()]; jobs.len()];
    // [write, read] × server
    let mut copy_results = vec![vec![Vec::new(); nbd_servers.len()]; 2];
    for round in 0..args.rounds {
        for (j, job) in jobs.iter().enumerate() {
            // A, B in even rounds and B, A in odd ones: a job right after another job's
            // writes may find the disk still busy with them, and neither build should always
            // be the one that does.
            let mut order: Vec<usize> = (0..fio_targets.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for t in order {
                let target = &fio_targets[t];
                let v = run_job(job, target, size, args.runtime)?;
                eprintln!(
                    "round {round}: {:<22} {:<28} {v:>10.1}",
                    job.name, target.label
                );
                fio_results[j][t].push(v);
            }
        }
        for (s, (label, uri)) in nbd_servers.iter().enumerate() {
            let w = nbdcopy_iops(&random, uri, size)?;
            let r = nbdcopy_iops(uri, "null:", size)?;
            eprintln!(
                "round {round}: nbdcopy 4k qd32 {label:<16} write {w:>8.0} read {r:>8.0} IOPS"
            );
            copy_results[0][s].push(w);
            copy_results[1][s].push(r);
        }
    }
    let cluster: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tls_dir.join("cluster.json"))?)?;
    let member = cluster["members"][0][1]
        .as_str()
        .context("a member address")?
        .to_owned();
    let (tcp_ms, tls_ms) = handshake_ms(&member, &tls_dir.join("admin"))?;
    drop((plain, mtls, single, qemu, single_plain, qemu_plain));

    println!(
        "{:<26} {:>14} {:>14} {:>10}",
        "3-replica, fio", "plain (before)", "mTLS", "mTLS/plain"
    );
    for (j, job) in jobs.iter().enumerate() {
        let m: Vec<f64> = fio_results[j].iter_mut().map(|v| median(v)).collect();
        let unit = if job.bs == "1M" { "MiB/s" } else { "IOPS" };
        println!(
            "{:<26} {:>14.0} {:>14.0} {:>10.2}",
            format!("{} ({unit})", job.name),
            m[0],
            m[1],
            m[1] / m[0]
        );
    }
    println!(
        "{:<26} {:>12} {:>12} {:>9} {:>12} {:>12} {:>9}",
        "NBD, nbdcopy 4k qd32 IOPS",
        "fabric TLS",
        "qemu TLS",
        "fab/qemu",
        "fabric pl",
        "qemu pl",
        "fab/qemu"
    );
    for (k, what) in ["write", "read"].iter().enumerate() {
        let m: Vec<f64> = copy_results[k].iter_mut().map(|v| median(v)).collect();
        println!(
            "{:<26} {:>12.0} {:>12.0} {:>9.2} {:>12.0} {:>12.0} {:>9.2}",
            what,
            m[0],
            m[1],
            m[0] / m[1],
            m[2],
            m[3],
            m[2] / m[3]
        );
    }
    println!(
        "handshake to a member's gRPC port (median of {HANDSHAKES}): TCP connect {tcp_ms:.3} ms, \
         TCP + mutual TLS 1.3 {tls_ms:.3} ms (TLS adds {:.3} ms per connection)",
        tls_ms - tcp_ms
    );
    Ok(())
}
