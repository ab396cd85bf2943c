//! `fabric-bench --tls`: what mutual TLS on every hop costs, in one run.
//!
//! - A 3-replica volume (`fabricd dev --nodes 3`) with TLS on every hop (fio → gateway over
//!   `nbds://`, gateway → replicas, gRPC) against the same cluster of a plaintext build from
//!   before TLS (`--baseline-fabricd`), the two builds alternating job by job.
//! - A 1-replica volume (`fabricd dev`, one process) over `nbds://` against `qemu-nbd` with
//!   `--object tls-creds-x509` serving a raw file on the same disk, both requiring a client
//!   certificate of the same CA.
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
    Args, JOBS, Server, Target, free_port, median, prefill, run_job, start_qemu_nbd_with,
    wait_listening,
};

/// The jobs the comparison runs: the data path's small random IO (what TLS costs most on),
/// and large sequential IO.
const TLS_JOBS: &[&str] = &["4k randwrite qd32", "4k randread qd32", "1M seq write"];
/// Handshakes timed for the per-connection cost.
const HANDSHAKES: usize = 200;

fn nbds_target(label: &'static str, port: u16, certs: &Path) -> Target {
    Target {
        label,
        fio_args: vec![
            "--ioengine=nbd".into(),
            format!(
                "--uri=nbds://127.0.0.1:{port}/bench?tls-certificates={}",
                certs.display()
            ),
        ],
    }
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
    let begin = "-----BEGIN CERTIFICATE-----";
    let intermediate = leaf
        .chain_pem
        .match_indices(begin)
        .nth(1)
        .map_or("", |(at, _)| &leaf.chain_pem[at..]);
    std::fs::write(out.join("server-cert.pem"), &leaf.chain_pem)?;
    std::fs::write(out.join("server-key.pem"), &leaf.key_pem)?;
    std::fs::write(
        out.join("ca-cert.pem"),
        format!("{}{intermediate}", leaf.ca_pem),
    )?;
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

    let targets = [
        super::nbd_target("3-replica plaintext (before)", plain_port),
        nbds_target("3-replica mTLS", tls_port, &tls_dir.join("admin")),
        nbds_target(
            "1-replica fabric TLS",
            single_port,
            &single_dir.join("admin"),
        ),
        nbds_target("qemu-nbd TLS", qemu_port, &single_dir.join("admin")),
    ];
    eprintln!("prefilling {} on each target", args.size);
    for t in &targets {
        prefill(&t.fio_args, size)?;
    }
    let jobs: Vec<_> = JOBS.iter().filter(|j| TLS_JOBS.contains(&j.name)).collect();
    let mut results = vec![vec![Vec::new(); targets.len()]; jobs.len()];
    for round in 0..args.rounds {
        for (j, job) in jobs.iter().enumerate() {
            for (t, target) in targets.iter().enumerate() {
                let v = run_job(job, &target.fio_args, size, args.runtime)?;
                eprintln!(
                    "round {round}: {:<22} {:<28} {v:>10.1}",
                    job.name, target.label
                );
                results[j][t].push(v);
            }
        }
    }
    let cluster: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tls_dir.join("cluster.json"))?)?;
    let member = cluster["members"][0][1]
        .as_str()
        .context("a member address")?
        .to_owned();
    let (tcp_ms, tls_ms) = handshake_ms(&member, &tls_dir.join("admin"))?;
    drop((plain, mtls, single, qemu));

    println!(
        "{:<26} {:>14} {:>14} {:>10} {:>14} {:>14} {:>10}",
        "job", "3r plain", "3r mTLS", "mTLS/pl", "1r fabricTLS", "qemu-nbd TLS", "fab/qemu"
    );
    for (j, job) in jobs.iter().enumerate() {
        let m: Vec<f64> = results[j].iter_mut().map(|v| median(v)).collect();
        let unit = if job.bs == "1M" { "MiB/s" } else { "IOPS" };
        println!(
            "{:<26} {:>14.0} {:>14.0} {:>10.2} {:>14.0} {:>14.0} {:>10.2}",
            format!("{} ({unit})", job.name),
            m[0],
            m[1],
            m[1] / m[0],
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
