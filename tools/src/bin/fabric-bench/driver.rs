//! `fabric-bench --driver`: Fabric as the disk tools of a hypervisor host use it, beside
//! qemu-nbd where a like-for-like peer exists. One `fabricd dev --nodes 3` cluster serves two
//! 3-replica volumes for the whole run:
//!
//! - `copy` (1 GiB): `nbdcopy --flush` of a file of random bytes into it, with one and with
//!   four connections (NBD multi-conn, which the gateway advertises; the run stops if it does
//!   not). The volume is trimmed before every copy, so each copy writes into empty space, and
//!   the first copy with each count is read back and compared byte for byte: a broken copy
//!   fails the run.
//! - `sparse` (16 GiB): the same 1 GiB laid out in ranges of 64 to 256 MiB with holes between.
//!   `qemu-img convert -O raw` copies it out to a local sparse file, beside the same from
//!   qemu-nbd serving a raw file of that layout (O_DIRECT, as Fabric's replicas read). Both
//!   answer BLOCK_STATUS with their holes, so convert reads only the data: `nbdinfo --map`
//!   checks both maps before the first round, and each output is checked once.
//! - the time from a fresh connection's `NBD_OPT_GO` to its first read
//!   ([`open_to_first_read`]): of the attached `sparse` volume (beside qemu-nbd), and of
//!   volumes that exist but no gateway holds (`cold-R-I`, created before the first round), whose
//!   first open attaches them: a fencing epoch through Raft, the replicas ready, the epoch
//!   installed. The target is 200 ms on a 3-node cluster.
//!
//! Beside each copy's rate it prints what could bound it: the cores the gateway, the nodes,
//! nbdcopy and the whole machine kept busy, the disk's write rate and busy time, and the
//! gateway's writes in flight and their latency (its metrics). That says whether more
//! connections can help.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::Value;
use tools::prometheus::{parse_prometheus_text, sample, scrape};
use volume::nbd::proto::NBD_STATE_HOLE;

use super::cpu::{MachineCpu, cluster_cpu, waited_children_cpu};
use super::disk::Disk;
use super::verify::{verify_copy, verify_output};
use super::{Args, Server, free_port, median, start_qemu_nbd, wait_listening};

pub(crate) const MIB: u64 = 1 << 20;
/// Bytes nbdcopy copies in, and bytes of data in the sparse volume.
pub(crate) const DATA_BYTES: u64 = 1 << 30;
/// The sparse volume's size.
pub(crate) const SPARSE_VOLUME_BYTES: u64 = 16 << 30;
/// Where the sparse volume's data lies, as (offset, length) in MiB: consecutive slices of the
/// random source file, with holes between and after them.
pub(crate) const DATA_RANGES_MIB: [(u64, u64); 7] = [
    (512, 256),
    (3072, 128),
    (5376, 64),
    (7168, 192),
    (9728, 256),
    (12288, 64),
    (15360, 64),
];
const _: () = {
    let mut i = 0;
    let mut end = 0;
    let mut sum = 0;
    while i < DATA_RANGES_MIB.len() {
        let (offset, len) = DATA_RANGES_MIB[i];
        assert!(offset > end, "ranges in order, a hole before each");
        assert!(len >= 64 && len <= 256);
        sum += len;
        end = offset + len;
        i += 1;
    }
    assert!(sum * MIB == DATA_BYTES);
    assert!(end * MIB < SPARSE_VOLUME_BYTES, "a hole at the end too");
};
/// nbdcopy's connection counts (each with as many threads: nbdcopy opens no more connections
/// than it runs threads, and its default is one thread per core). The ratio is second / first.
const CONNECTIONS: [u32; 2] = [1, 4];
/// Fresh connections timed per round for the open-to-first-read figure; the round's figure
/// is their median.
const OPENS_PER_ROUND: usize = 5;
/// Volumes not attached anywhere, opened once each per round: only a first open attaches.
const COLD_OPENS_PER_ROUND: usize = 5;
const COLD_VOLUME_SIZE: &str = "64MiB";
/// Time for the storage nodes to create the replicas of the volumes just created (their agents
/// look every 250 ms), so that an open measures an attach, not a creation.
const REPLICAS_CREATED_WAIT: Duration = Duration::from_secs(3);
/// How much more than the data written an allocation map may report: one 4 MiB extent per
/// range, as a server may report allocation at its own granularity.
const MAP_SLACK_BYTES: u64 = DATA_RANGES_MIB.len() as u64 * 4 * MIB;
const COPY_VOLUME: &str = "copy";
const SPARSE_VOLUME: &str = "sparse";
/// The clients and the peer server the run needs (Debian: libnbd-bin, qemu-utils).
const EXTERNAL_TOOLS: [&str; 5] = ["nbdcopy", "nbdinfo", "qemu-img", "qemu-io", "qemu-nbd"];

/// The time from a client's first `NBD_OPT_GO` for `uri` to its first completed read (4 KiB
/// at offset 0), on a connection of its own. For a volume no gateway holds, that includes the
/// attach; only the first open of a volume pays for it.
pub(crate) fn open_to_first_read(uri: &str) -> anyhow::Result<Duration> {
    tools::nbd_probe::first_read_after_go(uri)
}

/// What was busy while one nbdcopy ran: cores kept busy on average, the disk, and the
/// gateway's writes (NaN where the disk under the scratch directory is not known).
#[derive(Clone, Copy, Debug, Default)]
struct CopyLoad {
    gateway: f64,
    nodes: f64,
    nbdcopy: f64,
    machine: f64,
    disk_mib_s: f64,
    disk_busy: f64,
    writes_in_flight: f64,
    write_ms: f64,
}

/// One round's figures; the copy arrays follow [`CONNECTIONS`].
struct Round {
    copy_mib_s: [f64; 2],
    copy_load: [CopyLoad; 2],
    convert_fabric_s: f64,
    convert_qemu_s: f64,
    open_fabric_ms: f64,
    open_qemu_ms: f64,
    /// Median over the round's volumes not attached before their open.
    open_cold_ms: f64,
}

/// What one round works on.
struct Setup<'a> {
    source: &'a Path,
    output: &'a Path,
    copy_uri: String,
    fabric_sparse_uri: String,
    qemu_sparse_uri: String,
    /// The dev cluster's launcher, whose children are the gateway and the nodes.
    launcher: u32,
    /// The gateway's Prometheus endpoint.
    metrics: String,
    /// `nbd://GATEWAY/` (a volume name follows).
    gateway_uri: String,
    /// The disk under the scratch directory, which the replicas and qemu-nbd share.
    disk: Option<Disk>,
}

pub(crate) fn driver(args: &Args, scratch: &Path, fabricd: &Path) -> anyhow::Result<()> {
    for tool in EXTERNAL_TOOLS {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ensure!(
            found,
            "{tool} is not installed (Debian: apt-get install libnbd-bin qemu-utils)"
        );
    }
    let source = scratch.join("source.raw");
    let layout = scratch.join("layout.raw");
    eprintln!("writing 1 GiB of random bytes, and the sparse layout of 16 GiB");
    write_random(&source, DATA_BYTES)?;
    write_layout(&source, &layout)?;

    let port = free_port()?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut cluster = Server {
        child: Command::new(fabricd)
            .args(["dev", "--nodes", "3", "--data-dir"])
            .arg(scratch.join("cluster"))
            .args(["--nbd-listen", &format!("127.0.0.1:{port}")])
            .args(["--volume", &format!("{COPY_VOLUME}:{DATA_BYTES}")])
            .args([
                "--volume",
                &format!("{SPARSE_VOLUME}:{SPARSE_VOLUME_BYTES}"),
            ])
            .args(["--metrics-listen", &metrics])
            .env("FABRIC_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("start fabricd dev --nodes 3")?,
    };
    wait_listening(port, &mut cluster.child, "fabricd dev --nodes 3")?;
    let qport = free_port()?;
    let mut qemu = start_qemu_nbd(SPARSE_VOLUME, qport, &layout)?;
    wait_listening(qport, &mut qemu.child, "qemu-nbd")?;
    let setup = Setup {
        source: &source,
        output: &scratch.join("convert.raw"),
        copy_uri: format!("nbd://127.0.0.1:{port}/{COPY_VOLUME}"),
        fabric_sparse_uri: format!("nbd://127.0.0.1:{port}/{SPARSE_VOLUME}"),
        qemu_sparse_uri: format!("nbd://127.0.0.1:{qport}/{SPARSE_VOLUME}"),
        launcher: cluster.child.id(),
        metrics,
        gateway_uri: format!("nbd://127.0.0.1:{port}/"),
        disk: Disk::of(scratch)?,
    };

    let info = nbdinfo(&["--json", &setup.copy_uri])?;
    ensure!(
        info["exports"][0]["can_multi_conn"] == true,
        "{} does not advertise multi-conn, so nbdcopy would open one connection however many \
         it is given: {info}",
        setup.copy_uri
    );
    eprintln!("writing the layout's data into {}", setup.fabric_sparse_uri);
    run(Command::new("nbdcopy")
        .args(["--destination-is-zero", "--flush"])
        .arg(&layout)
        .arg(&setup.fabric_sparse_uri))?;
    for uri in [&setup.fabric_sparse_uri, &setup.qemu_sparse_uri] {
        let data = data_bytes(uri)?;
        ensure!(
            (DATA_BYTES..=DATA_BYTES + MAP_SLACK_BYTES).contains(&data),
            "nbdinfo --map {uri} shows {data} bytes of data where {DATA_BYTES} were written: \
             convert would not see the holes as holes"
        );
        eprintln!(
            "nbdinfo --map {uri}: {} MiB of data in {} MiB",
            data / MIB,
            SPARSE_VOLUME_BYTES / MIB
        );
    }

    let fabricctl = fabricd.with_file_name("fabricctl");
    for round in 1..=args.rounds {
        for i in 0..COLD_OPENS_PER_ROUND {
            run(Command::new(&fabricctl)
                .arg("--data-dir")
                .arg(scratch.join("cluster"))
                .args(["volume", "create", &cold_volume(round, i)])
                .args(["--size", COLD_VOLUME_SIZE, "--pool", "default"]))?;
        }
    }
    std::thread::sleep(REPLICAS_CREATED_WAIT);

    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let r = driver_round(round, &setup)?;
        eprintln!(
            "round {round}: nbdcopy {:.0} / {:.0} MiB/s ({:.2}), convert fabric {:.3} s, \
             qemu-nbd {:.3} s ({:.2}), open to first read fabric {:.3} ms, qemu-nbd {:.3} ms, \
             fabric not attached {:.1} ms",
            r.copy_mib_s[0],
            r.copy_mib_s[1],
            r.copy_mib_s[1] / r.copy_mib_s[0],
            r.convert_fabric_s,
            r.convert_qemu_s,
            r.convert_fabric_s / r.convert_qemu_s,
            r.open_fabric_ms,
            r.open_qemu_ms,
            r.open_cold_ms,
        );
        rounds.push(r);
    }
    drop(cluster);
    drop(qemu);
    print_table(args, &rounds)
}

/// The name of the `i`th volume round `round` opens without it being attached.
fn cold_volume(round: usize, i: usize) -> String {
    format!("cold-{round}-{i}")
}

/// One round: both copies, both converts, the opens. Each pair runs in the other order in
/// the next round, so that drift in the machine's load hits both alike; the first round
/// also checks what each copy and convert produced.
fn driver_round(round: usize, s: &Setup) -> anyhow::Result<Round> {
    let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
    let mut copy_mib_s = [0.0; 2];
    let mut copy_load = [CopyLoad::default(); 2];
    for i in order {
        trim(&s.copy_uri)?;
        (copy_mib_s[i], copy_load[i]) = timed_copy(s, CONNECTIONS[i])?;
        if round == 1 {
            verify_copy(&s.copy_uri, s.source)?;
        }
    }

    let mut convert_s = [0.0; 2];
    for i in order {
        let uri = [&s.fabric_sparse_uri, &s.qemu_sparse_uri][i];
        remove_if_there(s.output)?;
        let started = Instant::now();
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(uri)
            .arg(s.output))?;
        convert_s[i] = started.elapsed().as_secs_f64();
        if round == 1 {
            verify_output(s.output, s.source).with_context(|| format!("convert of {uri}"))?;
        }
        remove_if_there(s.output)?;
    }

    let mut open_ms = [0.0; 2];
    for i in order {
        let uri = [&s.fabric_sparse_uri, &s.qemu_sparse_uri][i];
        let mut ms = Vec::with_capacity(OPENS_PER_ROUND);
        for _ in 0..OPENS_PER_ROUND {
            ms.push(open_to_first_read(uri)?.as_secs_f64() * 1000.0);
        }
        open_ms[i] = median(&mut ms);
    }
    let mut cold_ms = (0..COLD_OPENS_PER_ROUND)
        .map(|i| {
            let uri = format!("{}{}", s.gateway_uri, cold_volume(round, i));
            Ok(open_to_first_read(&uri)?.as_secs_f64() * 1000.0)
        })
        .collect::<anyhow::Result<Vec<f64>>>()?;
    Ok(Round {
        copy_mib_s,
        copy_load,
        convert_fabric_s: convert_s[0],
        convert_qemu_s: convert_s[1],
        open_fabric_ms: open_ms[0],
        open_qemu_ms: open_ms[1],
        open_cold_ms: median(&mut cold_ms),
    })
}

/// `nbdcopy --flush` of the source into the copy volume: MiB/s, and what was busy meanwhile.
fn timed_copy(s: &Setup, connections: u32) -> anyhow::Result<(f64, CopyLoad)> {
    let writes_before = gateway_writes(s)?;
    let cluster_before = cluster_cpu(s.launcher)?;
    let machine_before = MachineCpu::now()?;
    let disk_before = s.disk.as_ref().map(Disk::counters).transpose()?;
    let nbdcopy_before = waited_children_cpu();
    let started = Instant::now();
    run(Command::new("nbdcopy")
        .arg(format!("--connections={connections}"))
        .arg(format!("--threads={connections}"))
        .arg("--flush")
        .arg(s.source)
        .arg(&s.copy_uri))?;
    let elapsed = started.elapsed();
    let seconds = elapsed.as_secs_f64();
    let nbdcopy = waited_children_cpu() - nbdcopy_before;
    let cluster = cluster_cpu(s.launcher)?.since(&cluster_before);
    let machine = MachineCpu::now()?.cores_busy_since(&machine_before, elapsed);
    let (disk_mib_s, disk_busy) = match (&s.disk, disk_before) {
        (Some(disk), Some(before)) => {
            let now = disk.counters()?;
            (
                now.mib_s_written_since(&before, elapsed),
                now.busy_since(&before, elapsed),
            )
        }
        _ => (f64::NAN, f64::NAN),
    };
    let writes = gateway_writes(s)?;
    let (count, latency_s) = (writes.0 - writes_before.0, writes.1 - writes_before.1);
    ensure!(count > 0.0, "the gateway counted no write during the copy");
    let mib_s = (DATA_BYTES / MIB) as f64 / seconds;
    Ok((
        mib_s,
        CopyLoad {
            gateway: cluster.gateway / seconds,
            nodes: cluster.nodes / seconds,
            nbdcopy: nbdcopy / seconds,
            machine,
            disk_mib_s,
            disk_busy,
            // Little's law: the time writes spent in the gateway over the wall time.
            writes_in_flight: latency_s / seconds,
            write_ms: latency_s / count * 1000.0,
        },
    ))
}

/// The gateway's count of NBD writes to the copy volume and the seconds they took, summed.
fn gateway_writes(s: &Setup) -> anyhow::Result<(f64, f64)> {
    let samples = parse_prometheus_text(&scrape(&s.metrics)?)?;
    let read = |name: &str| {
        let series = format!("{name}{{volume=\"{COPY_VOLUME}\",op=\"write\"}}");
        sample(&samples, &series).with_context(|| format!("no {series} in the gateway's metrics"))
    };
    Ok((
        read("fabric_volume_latency_seconds_count")?,
        read("fabric_volume_latency_seconds_sum")?,
    ))
}

/// Trims the whole copy volume, so the next copy writes into empty space, and checks that
/// its map shows no data left.
fn trim(uri: &str) -> anyhow::Result<()> {
    let out = run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", &format!("discard 0 {DATA_BYTES}")])
        .arg(uri))?;
    let text = String::from_utf8_lossy(&out);
    ensure!(
        text.contains(&format!("discard {DATA_BYTES}/{DATA_BYTES} bytes")),
        "qemu-io discard of {uri}: {text}"
    );
    let left = data_bytes(uri)?;
    ensure!(
        left == 0,
        "{uri} holds {left} bytes of data after a discard"
    );
    Ok(())
}

fn remove_if_there(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Runs a command to its end; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

fn nbdinfo(args: &[&str]) -> anyhow::Result<Value> {
    let out = run(Command::new("nbdinfo").args(args))?;
    serde_json::from_slice(&out).with_context(|| format!("parse the JSON of nbdinfo {args:?}"))
}

/// Bytes the server's `base:allocation` map reports as data (not holes).
fn data_bytes(uri: &str) -> anyhow::Result<u64> {
    let map = nbdinfo(&["--map", "--json", uri])?;
    let extents = map
        .as_array()
        .with_context(|| format!("nbdinfo --map --json {uri}: {map}"))?;
    let mut data = 0;
    for e in extents {
        let kind = e["type"].as_u64().context("an extent's type")?;
        let len = e["length"].as_u64().context("an extent's length")?;
        if kind & u64::from(NBD_STATE_HOLE) == 0 {
            data += len;
        }
    }
    Ok(data)
}

/// Random bytes from the kernel: incompressible, and made once per run.
fn write_random(path: &Path, len: u64) -> anyhow::Result<()> {
    let mut random = File::open("/dev/urandom")?.take(len);
    let mut out = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let copied = std::io::copy(&mut random, &mut out)?;
    ensure!(copied == len, "read {copied} random bytes of {len}");
    out.flush()?;
    Ok(())
}

/// A sparse raw file of [`SPARSE_VOLUME_BYTES`] holding consecutive slices of `source` at
/// [`DATA_RANGES_MIB`], synced so that an O_DIRECT reader sees it.
fn write_layout(source: &Path, layout: &Path) -> anyhow::Result<()> {
    let src = File::open(source)?;
    let out = File::create(layout).with_context(|| format!("create {}", layout.display()))?;
    out.set_len(SPARSE_VOLUME_BYTES)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut from = 0;
    for (offset, len) in DATA_RANGES_MIB {
        for mib in 0..len {
            src.read_exact_at(&mut buf, from)?;
            out.write_all_at(&buf, (offset + mib) * MIB)?;
            from += MIB;
        }
    }
    out.sync_all()?;
    Ok(())
}

fn print_table(args: &Args, rounds: &[Round]) -> anyhow::Result<()> {
    let med = |f: &dyn Fn(&Round) -> f64| median(&mut rounds.iter().map(f).collect::<Vec<_>>());
    let copy = [med(&|r| r.copy_mib_s[0]), med(&|r| r.copy_mib_s[1])];
    let convert = [med(&|r| r.convert_fabric_s), med(&|r| r.convert_qemu_s)];
    let open = [med(&|r| r.open_fabric_ms), med(&|r| r.open_qemu_ms)];
    let cold = med(&|r| r.open_cold_ms);
    let [one, many] = CONNECTIONS;
    println!(
        "driver benchmark, medians of {} round(s): 3-replica volumes of fabricd dev --nodes 3; \
         qemu-nbd --cache=none --aio=io_uring",
        rounds.len()
    );
    println!(
        "{:<58} {:>10} {:>10} {:>8}",
        "figure", "fabric", "qemu-nbd", "ratio"
    );
    println!(
        "{:<58} {:>10.0} {:>10} {:>8}",
        format!("nbdcopy --flush 1 GiB in, --connections {one} (MiB/s)"),
        copy[0],
        "-",
        "-"
    );
    println!(
        "{:<58} {:>10.0} {:>10} {:>8.2}   ({many} / {one} connections)",
        format!("nbdcopy --flush 1 GiB in, --connections {many} (MiB/s)"),
        copy[1],
        "-",
        copy[1] / copy[0]
    );
    println!(
        "{:<58} {:>10.3} {:>10.3} {:>8.2}   (fabric / qemu-nbd)",
        "qemu-img convert -O raw out, 16 GiB holding 1 GiB (s)",
        convert[0],
        convert[1],
        convert[0] / convert[1]
    );
    // Two significant digits at least: qemu-nbd's open can take hundreds of times Fabric's.
    let open_ratio = open[0] / open[1];
    let open_ratio = if open_ratio < 0.1 {
        format!("{open_ratio:.4}")
    } else {
        format!("{open_ratio:.2}")
    };
    println!(
        "{:<58} {:>10.3} {:>10.3} {:>8}   (fabric / qemu-nbd)",
        "NBD_OPT_GO to first 4 KiB read, attached (ms)", open[0], open[1], open_ratio
    );
    println!(
        "{:<58} {:>10.1} {:>10} {:>8}   (target <= 200 ms)",
        "NBD_OPT_GO to first 4 KiB read, not attached (ms)", cold, "-", "-"
    );
    println!(
        "while nbdcopy ran (medians): cores busy (gateway, nodes, nbdcopy, whole machine), \
         disk (MiB/s written, share of time busy), gateway writes (in flight, mean ms)"
    );
    let mut load_rows = Vec::new();
    for (i, connections) in CONNECTIONS.iter().enumerate() {
        let l = CopyLoad {
            gateway: med(&|r| r.copy_load[i].gateway),
            nodes: med(&|r| r.copy_load[i].nodes),
            nbdcopy: med(&|r| r.copy_load[i].nbdcopy),
            machine: med(&|r| r.copy_load[i].machine),
            disk_mib_s: med(&|r| r.copy_load[i].disk_mib_s),
            disk_busy: med(&|r| r.copy_load[i].disk_busy),
            writes_in_flight: med(&|r| r.copy_load[i].writes_in_flight),
            write_ms: med(&|r| r.copy_load[i].write_ms),
        };
        println!(
            "  --connections {connections:<3} cores {:.2} {:.2} {:.2} {:.2}   disk {:.0} MiB/s, \
             {:.0} % busy   writes {:.0} in flight, {:.1} ms",
            l.gateway,
            l.nodes,
            l.nbdcopy,
            l.machine,
            l.disk_mib_s,
            l.disk_busy * 100.0,
            l.writes_in_flight,
            l.write_ms
        );
        load_rows.push(serde_json::json!({
            "connections": connections,
            "cores_gateway": l.gateway,
            "cores_nodes": l.nodes,
            "cores_nbdcopy": l.nbdcopy,
            "cores_machine": l.machine,
            "disk_mib_s_written": l.disk_mib_s,
            "disk_busy": l.disk_busy,
            "gateway_writes_in_flight": l.writes_in_flight,
            "gateway_write_ms": l.write_ms,
        }));
    }
    if args.json {
        let report = serde_json::json!({
            "rounds": rounds.len(),
            "nbdcopy_mib_s": [
                { "connections": one, "mib_s": copy[0] },
                { "connections": many, "mib_s": copy[1] },
            ],
            "nbdcopy_ratio": copy[1] / copy[0],
            "convert_s": { "fabric": convert[0], "qemu-nbd": convert[1] },
            "convert_ratio": convert[0] / convert[1],
            "open_to_first_read_ms": { "fabric": open[0], "qemu-nbd": open[1] },
            "open_to_first_read_not_attached_ms": cold,
            "while_copying": load_rows,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
