//! A volume's QoS under `fabricd dev --nodes 3` with fio as the client: an IOPS limit set
//! with `fabricctl volume qos set` holds a depth-32 flood to within 5 % of it, a raised limit
//! applies while the gateway holds the volume (no reattach), and bad settings are refused by
//! name and change nothing. A volume with a reservation keeps it while its neighbour floods.
//!
//! The limit is 1,000 IOPS, as the issue asks, on a host whose cluster does at least 2,850
//! unlimited (two shared cores did about 2,500, and half that on a busy day); on a slower one
//! it is 35 % of what the cluster did unlimited just before, so that a host that cannot keep
//! up does not pass for a limiter that holds too much back. The tolerance stays 5 %.

use std::process::Command;

use fabric_suite::{fabricctl, fabricctl_as, fio_report, three_node_cluster, tools};

/// fio writing 4 KiB blocks at `depth` to `uri` for `seconds`.
fn fio_writes(uri: &str, depth: u32, seconds: u32) -> Command {
    let mut fio = Command::new("fio");
    fio.args([
        "--name=writes",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--size=32M",
        &format!("--iodepth={depth}"),
        "--time_based",
        &format!("--runtime={seconds}"),
        "--output-format=json",
    ]);
    fio
}

fn write_iops(out: std::process::Output) -> f64 {
    let report = fio_report(out);
    report["jobs"][0]["write"]["iops"]
        .as_f64()
        .expect("fio write iops")
}

/// IOPS fio reached writing 4 KiB blocks at depth 32 to `uri` for `seconds`.
fn flood_iops(uri: &str, seconds: u32) -> f64 {
    write_iops(fio_writes(uri, 32, seconds).output().expect("run fio"))
}

/// How long the gateway holding a volume may take to follow a change of its QoS (a watch
/// event, then its next read of the volume's record).
const FOLLOWED_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The IOPS limit to test with on this host: 1,000, or 35 % of what a depth-32 flood of
/// `uri` reaches unlimited now if that is less (in tens).
fn limit_for(uri: &str) -> u64 {
    let unlimited = flood_iops(uri, 4);
    let limit = ((unlimited * 0.35) as u64 / 10 * 10).min(1_000);
    eprintln!("unlimited: {unlimited:.0} IOPS; testing a limit of {limit}");
    assert!(
        limit >= 100,
        "the cluster did only {unlimited} IOPS unlimited"
    );
    limit
}

fn within(got: f64, want: f64, fraction: f64) -> bool {
    (got - want).abs() <= want * fraction
}

#[test]
fn an_iops_limit_holds_a_flood_and_follows_a_change_live() {
    if tools(&["fio"]).is_none() {
        return;
    }
    let (_serial, _dir, data, dev) = three_node_cluster();
    let uri = dev.uri();
    let limit = limit_for(&uri);
    let limit_text = limit.to_string();

    let set = fabricctl(
        &data,
        &["volume", "qos", "set", "vol0", "--iops-limit", &limit_text],
    );
    assert_eq!(set["iops_limit"], limit, "{set}");
    assert_eq!(set["weight"], 100, "{set}");
    std::thread::sleep(FOLLOWED_WITHIN);
    let iops = flood_iops(&uri, 5);
    eprintln!("limited to {limit}: {iops:.0} IOPS");
    assert!(
        within(iops, limit as f64, 0.05),
        "{iops} IOPS against a limit of {limit}"
    );

    // Raised by half while the gateway holds the volume: its next IO follows.
    let raised = limit * 3 / 2;
    fabricctl(
        &data,
        &[
            "volume",
            "qos",
            "set",
            "vol0",
            "--iops-limit",
            &raised.to_string(),
        ],
    );
    std::thread::sleep(FOLLOWED_WITHIN);
    let iops = flood_iops(&uri, 5);
    eprintln!("limited to {raised}: {iops:.0} IOPS");
    // Past the old limit, and not past the new one: the change applied. (How close to the
    // new one depends on how much of two shared cores the three nodes, the gateway and fio
    // get.)
    assert!(
        iops > limit as f64 * 1.2 && iops <= raised as f64 * 1.05,
        "{iops} IOPS after the limit was raised from {limit} to {raised}"
    );

    // A reservation above the limit, and an unknown volume, are refused by name; the QoS
    // stays as it was.
    for (args, why) in [
        (
            vec!["volume", "qos", "set", "vol0", "--iops-reservation", "5000"],
            "above the IOPS limit",
        ),
        (
            vec!["volume", "qos", "set", "nothing", "--weight", "5"],
            "volume nothing",
        ),
        (
            vec!["volume", "qos", "set", "vol0", "--weight", "20000"],
            "weight 20000",
        ),
    ] {
        let out = fabricctl_as(&data, None, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was taken");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    let shown = fabricctl(&data, &["volume", "qos", "show", "vol0"]);
    assert_eq!(shown["iops_limit"], raised, "{shown}");
    assert_eq!(
        shown["iops_reservation"],
        serde_json::Value::Null,
        "{shown}"
    );

    // Cleared.
    fabricctl(
        &data,
        &["volume", "qos", "set", "vol0", "--iops-limit", "0"],
    );
    let shown = fabricctl(&data, &["volume", "qos", "show", "vol0"]);
    assert_eq!(shown["iops_limit"], serde_json::Value::Null, "{shown}");
}

#[test]
fn a_reserved_volume_keeps_its_reservation_while_a_limited_neighbour_floods() {
    if tools(&["fio"]).is_none() {
        return;
    }
    let (_serial, _dir, data, dev) = three_node_cluster();
    fabricctl(&data, &["volume", "create", "quiet", "--size", "64MiB"]);
    let noisy = dev.uri();
    let quiet = noisy.replace("/vol0", "/quiet");
    let limit = limit_for(&noisy);
    // 400 IOPS beside a neighbour held to 1,000; scaled with the limit on a slower host.
    let reservation = limit * 2 / 5;
    fabricctl(
        &data,
        &[
            "volume",
            "qos",
            "set",
            "vol0",
            "--iops-limit",
            &limit.to_string(),
        ],
    );
    fabricctl(
        &data,
        &[
            "volume",
            "qos",
            "set",
            "quiet",
            "--iops-reservation",
            &reservation.to_string(),
            "--weight",
            "1",
        ],
    );
    std::thread::sleep(FOLLOWED_WITHIN);
    let mut flood = fio_writes(&noisy, 32, 6);
    let flood = std::thread::spawn(move || flood.output());
    let kept = write_iops(fio_writes(&quiet, 8, 6).output().expect("run fio"));
    let flooded = write_iops(flood.join().expect("fio thread").expect("run fio"));
    eprintln!(
        "noisy (limit {limit}): {flooded:.0} IOPS; quiet (reservation {reservation}): {kept:.0} IOPS"
    );
    assert!(
        within(flooded, limit as f64, 0.05),
        "{flooded} IOPS against a limit of {limit}"
    );
    assert!(
        kept >= reservation as f64 * 0.95,
        "{kept} IOPS against a reservation of {reservation}"
    );
}
