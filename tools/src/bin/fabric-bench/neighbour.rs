//! `fabric-bench --qos`, the noisy neighbour: the client's 4 KiB p99 alone, beside `bench`
//! flooded with 4 KiB random writes at depth 32 and no limit, and beside the same flood with
//! `bench` held to [`NEIGHBOUR_IOPS_LIMIT`] by its QoS (the client holding a reservation of
//! [`CLIENT_IOPS_RESERVATION`] throughout). The three phases run one after the other in each
//! of several rounds on one cluster, and each round's ratios are taken within it, so that the
//! host's neighbours move both sides of a ratio alike.

use std::time::Duration;

use anyhow::Context;

use super::client::{Client, P99, nbd_args};

/// The flooding volume's IOPS limit in the limited phase (the noisy neighbour).
pub(super) const NEIGHBOUR_IOPS_LIMIT: u64 = 1_000;
/// The client's IOPS reservation.
pub(super) const CLIENT_IOPS_RESERVATION: u64 = 1_000;
/// Rounds of the three phases, at least.
const ROUNDS_MIN: usize = 3;
/// How long a QoS change may take to reach the gateway holding the volume.
const QOS_FOLLOWED_WITHIN: Duration = Duration::from_secs(2);

/// One round of the three phases.
pub(super) struct NeighbourRound {
    pub(super) alone: P99,
    pub(super) unlimited: P99,
    pub(super) limited: P99,
    /// What the flood reached, without and with its limit.
    pub(super) unlimited_iops: f64,
    pub(super) limited_iops: f64,
}

/// The three phases, `rounds` times (at least [`ROUNDS_MIN`]), on the cluster `client` uses;
/// `ctl` runs fabricctl on it.
pub(super) fn neighbour(
    client: Client,
    runtime: u32,
    rounds: usize,
    flood_bytes: u64,
    ctl: &dyn Fn(&[&str]) -> anyhow::Result<serde_json::Value>,
) -> anyhow::Result<Vec<NeighbourRound>> {
    let qos = |volume: &str, field: &str, n: u64| -> anyhow::Result<()> {
        ctl(&["volume", "qos", "set", volume, field, &n.to_string()])
            .with_context(|| format!("set {field} {n} on {volume}"))?;
        std::thread::sleep(QOS_FOLLOWED_WITHIN);
        Ok(())
    };
    qos("client", "--iops-reservation", CLIENT_IOPS_RESERVATION)?;
    let mut out = Vec::new();
    for round in 1..=rounds.max(ROUNDS_MIN) {
        eprintln!("[neighbour {round}] client alone");
        let alone = client.run(runtime)?;
        eprintln!("[neighbour {round}] client beside bench flooded at depth 32, no limit");
        let (unlimited, unlimited_iops) = beside_flood(client, runtime, flood_bytes)?;
        qos("bench", "--iops-limit", NEIGHBOUR_IOPS_LIMIT)?;
        eprintln!(
            "[neighbour {round}] client beside the flood held to {NEIGHBOUR_IOPS_LIMIT} IOPS"
        );
        let (limited, limited_iops) = beside_flood(client, runtime, flood_bytes)?;
        qos("bench", "--iops-limit", 0)?;
        out.push(NeighbourRound {
            alone,
            unlimited,
            limited,
            unlimited_iops,
            limited_iops,
        });
    }
    Ok(out)
}

/// The client's p99 while fio floods `bench` with 4 KiB random writes at depth 32 (started a
/// second before the client and ended a second after it), and the flood's IOPS.
fn beside_flood(client: Client, runtime: u32, flood_bytes: u64) -> anyhow::Result<(P99, f64)> {
    let mut flood = nbd_args(client.port, "bench");
    flood.extend([
        "--name=flood".to_string(),
        "--rw=randwrite".into(),
        "--bs=4k".into(),
        "--iodepth=32".into(),
        format!("--size={flood_bytes}"),
    ]);
    let (p99, report) = client.run_beside(runtime, flood)?;
    let iops = report["jobs"][0]["write"]["iops"]
        .as_f64()
        .context("flood's write IOPS")?;
    Ok((p99, iops))
}

/// Prints the rounds and their medians.
pub(super) fn print(rounds: &[NeighbourRound], runtime: u32) {
    println!(
        "noisy neighbour: client 4k randrw 50/50 qd8 p99 (µs, read/write), {runtime} s runs, \
         reservation {CLIENT_IOPS_RESERVATION} IOPS; bench flooded with 4k randwrite qd32"
    );
    println!(
        "  {:<6} {:>15} {:>17} {:>7} {:>11} {:>17} {:>7} {:>11}",
        "round",
        "alone",
        "flood, no limit",
        "p99 ×",
        "flood IOPS",
        "flood, limited",
        "p99 ×",
        "× limit"
    );
    let limit = NEIGHBOUR_IOPS_LIMIT as f64;
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "  {:<6} {:>7.0}/{:<7.0} {:>8.0}/{:<8.0} {:>7.2} {:>11.0} {:>8.0}/{:<8.0} {:>7.2} {:>11.3}",
            i + 1,
            r.alone.read_us,
            r.alone.write_us,
            r.unlimited.read_us,
            r.unlimited.write_us,
            r.unlimited.worse() / r.alone.worse(),
            r.unlimited_iops,
            r.limited.read_us,
            r.limited.write_us,
            r.limited.worse() / r.alone.worse(),
            r.limited_iops / limit,
        );
    }
    let median_of = |f: &dyn Fn(&NeighbourRound) -> f64| {
        super::median(&mut rounds.iter().map(f).collect::<Vec<_>>())
    };
    println!(
        "  median p99 × alone: {:.2} beside the unlimited flood, {:.2} beside the flood at its \
         limit ({:.3} × its limit of {NEIGHBOUR_IOPS_LIMIT} IOPS)",
        median_of(&|r| r.unlimited.worse() / r.alone.worse()),
        median_of(&|r| r.limited.worse() / r.alone.worse()),
        median_of(&|r| r.limited_iops / limit),
    );
}
