//! The gateway as a hypervisor host's volume driver: it serves any volume of the cluster, the
//! first client's `NBD_OPT_GO` attaching it and the last one's leaving detaching it after a
//! grace period; it lists the cluster's volumes; and it refuses a volume another gateway holds
//! until the operator moves it. Real clients (nbdinfo, qemu-io) against real processes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fabric_suite::{DevNode, Gateway, fabricctl, qemu_io_ok, tools};
use serde_json::Value;

/// `fabricd dev --nodes 3` (its own gateway serving `vol0`) from a fresh directory.
fn cluster() -> Option<(
    std::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    std::path::PathBuf,
    DevNode,
)> {
    tools(&["nbdinfo", "qemu-io"])?;
    let serial = fabric_suite::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = DevNode::start_with(&data, "vol0:64MiB", &["--nodes", "3"]).expect("start dev");
    Some((serial, dir, data, dev))
}

fn create(data: &Path, name: &str, size: &str) {
    fabricctl(
        data,
        &[
            "volume", "create", name, "--size", size, "--pool", "default",
        ],
    );
}

fn show(data: &Path, name: &str) -> Value {
    fabricctl(data, &["volume", "show", name])
}

/// `nbdinfo --json URI`, which must succeed.
fn nbdinfo(uri: &str) -> Value {
    let out = Command::new("nbdinfo")
        .args(["--json", uri])
        .stdin(Stdio::null())
        .output()
        .expect("run nbdinfo");
    assert!(
        out.status.success(),
        "nbdinfo {uri}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("nbdinfo JSON")
}

/// Why `nbdinfo URI` fails, with libnbd's debug output (which carries the server's message).
fn nbdinfo_refusal(uri: &str) -> String {
    let out = Command::new("nbdinfo")
        .arg(uri)
        .env("LIBNBD_DEBUG", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run nbdinfo");
    assert!(!out.status.success(), "nbdinfo {uri} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until `volume show NAME` satisfies `ok`.
fn wait_show(data: &Path, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = show(data, name);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} never {what}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_volume_created_after_the_gateway_started_is_served_on_first_open_and_let_go_when_idle() {
    let Some((_serial, dir, data, _dev)) = cluster() else {
        return;
    };
    let gw = Gateway::start(
        &data,
        "host-a",
        &["--detach-grace-ms", "1500"],
        &dir.path().join("gateway-a.log"),
    );
    create(&data, "vm1", "64MiB");
    assert_eq!(show(&data, "vm1")["state"], "available");

    // The first open attaches; the export is the volume, multi-connection capable.
    let info = nbdinfo(&gw.uri("vm1"));
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], 64 << 20, "{info}");
    assert_eq!(export["can_multi_conn"], true, "{info}");
    let attached = show(&data, "vm1");
    assert_eq!(attached["attached_to"], "host-a", "{attached}");
    let epoch = attached["attach_epoch"].as_u64().unwrap();

    // Clients that follow one another within the grace period share that attachment.
    qemu_io_ok(&gw.uri("vm1"), "write -P 0x5a 1M 2M");
    qemu_io_ok(&gw.uri("vm1"), "read -P 0x5a 1M 2M");
    assert_eq!(show(&data, "vm1")["attach_epoch"], epoch);

    // Nobody left: flushed and detached after the grace period.
    wait_show(&data, "vm1", "was detached", |v| v["state"] == "available");
    // Opened again: attached anew, and the data is there.
    qemu_io_ok(&gw.uri("vm1"), "read -P 0x5a 1M 2M");
    let again = show(&data, "vm1");
    assert!(again["attach_epoch"].as_u64().unwrap() > epoch, "{again}");

    // NBD_OPT_LIST shows the cluster's volumes, served here or not.
    let listed = nbdinfo_list(&gw.uri(""));
    for name in ["vol0", "vm1"] {
        assert!(listed.contains(&name.to_owned()), "{listed:?}");
    }
    // A volume the cluster does not have is refused, and the gateway serves on.
    let refusal = nbdinfo_refusal(&gw.uri("nosuch"));
    assert!(refusal.contains("no volume named"), "{refusal}");
    qemu_io_ok(&gw.uri("vm1"), "read -P 0x5a 1M 2M");

    // `volume map` prints a URI that opens the volume.
    let map = fabricctl(
        &data,
        &[
            "volume",
            "map",
            "vm1",
            "--gateway",
            &format!("127.0.0.1:{}", gw.port),
        ],
    );
    assert_eq!(map["uri"], gw.uri("vm1"));
    assert!(
        map["qemu"].as_str().unwrap().contains("export=vm1"),
        "{map}"
    );
    nbdinfo(map["uri"].as_str().unwrap());
}

/// The export names `nbdinfo --list` shows.
fn nbdinfo_list(uri: &str) -> Vec<String> {
    let out = Command::new("nbdinfo")
        .args(["--list", "--json", uri])
        .stdin(Stdio::null())
        .output()
        .expect("run nbdinfo --list");
    assert!(
        out.status.success(),
        "nbdinfo --list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).expect("nbdinfo JSON");
    listed["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .map(|e| e["export-name"].as_str().expect("name").to_owned())
        .collect()
}

#[test]
fn a_volume_another_gateway_holds_is_refused_until_the_operator_moves_it() {
    let Some((_serial, dir, data, _dev)) = cluster() else {
        return;
    };
    create(&data, "vm1", "64MiB");
    create(&data, "other", "64MiB");
    // Host A holds `other` from its start and `vm1` from its first client on.
    let a = Gateway::start(
        &data,
        "host-a",
        &["--volume", "other", "--detach-grace-ms", "600000"],
        &dir.path().join("gateway-a.log"),
    );
    let b = Gateway::start(&data, "host-b", &[], &dir.path().join("gateway-b.log"));
    qemu_io_ok(&a.uri("vm1"), "write -P 0x11 0 4M");

    let refusal = nbdinfo_refusal(&b.uri("vm1"));
    assert!(
        refusal.contains("attached to host-a")
            && refusal.contains("fabricctl volume attach vm1 --client host-b --force"),
        "{refusal}"
    );

    // The operator moves it; host B serves it, and host A's writes are fenced.
    fabricctl(
        &data,
        &["volume", "attach", "vm1", "--client", "host-b", "--force"],
    );
    qemu_io_ok(&b.uri("vm1"), "read -P 0x11 0 4M");
    qemu_io_ok(&b.uri("vm1"), "write -P 0x22 0 2M");
    let fenced = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x33 0 4M", &a.uri("vm1")])
        .stdin(Stdio::null())
        .output()
        .expect("run qemu-io");
    let text = String::from_utf8_lossy(&fenced.stdout);
    assert!(
        !fenced.status.success() || text.contains("error"),
        "a write through the superseded gateway succeeded: {text}"
    );
    qemu_io_ok(&b.uri("vm1"), "read -P 0x22 0 2M");
    qemu_io_ok(&b.uri("vm1"), "read -P 0x11 2M 2M");

    // The other volume on host A is untouched by vm1's fencing.
    qemu_io_ok(&a.uri("other"), "write -P 0x44 0 1M");
    qemu_io_ok(&a.uri("other"), "read -P 0x44 0 1M");
    // And the empty name selects host A's first --volume.
    assert_eq!(nbdinfo(&a.uri(""))["exports"][0]["export-name"], "other");
}

#[test]
fn limits_refuse_the_connection_or_volume_past_them_and_nothing_else() {
    let Some((_serial, dir, data, _dev)) = cluster() else {
        return;
    };
    if tools(&["nbdsh"]).is_none() {
        return;
    }
    create(&data, "vm1", "64MiB");
    create(&data, "vm2", "64MiB");
    let metrics_port = fabric_suite::free_port();
    let gw = Gateway::start(
        &data,
        "host-a",
        &[
            "--volumes-max",
            "1",
            "--connections-per-volume-max",
            "1",
            "--detach-grace-ms",
            "500",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        &dir.path().join("gateway.log"),
    );
    // One client holds vm1 open for a while.
    let mut holder = fabric_suite::nbdsh()
        .args([
            "-c",
            &format!(
                "h = nbd.NBD(); h.connect_uri('{}'); print('open', flush=True); import time; time.sleep(6)",
                gw.uri("vm1")
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run nbdsh");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "open");
    let text = fabric_suite::scrape(&format!("127.0.0.1:{metrics_port}")).unwrap();
    let samples = fabric_suite::parse_prometheus_text(&text).unwrap();
    for series in [
        "fabric_volume_connections{volume=\"vm1\"}",
        "fabric_volume_attached{volume=\"vm1\"}",
        "fabric_volume_attach_seconds_count",
    ] {
        assert_eq!(
            fabric_suite::sample(&samples, series),
            Some(1.0),
            "{series}"
        );
    }

    let refusal = nbdinfo_refusal(&gw.uri("vm1"));
    assert!(refusal.contains("connections on this gateway"), "{refusal}");
    let refusal = nbdinfo_refusal(&gw.uri("vm2"));
    assert!(refusal.contains("volumes already"), "{refusal}");

    // Once the holder leaves and the grace period ends, vm2 fits.
    assert!(holder.wait().unwrap().success());
    wait_show(&data, "vm1", "was detached", |v| v["state"] == "available");
    qemu_io_ok(&gw.uri("vm2"), "write -P 0x7 0 1M");
}

#[test]
fn a_volume_that_loses_its_only_replica_fails_alone_and_the_gateways_other_volumes_serve_on() {
    let Some((_serial, _dir, data, dev)) = cluster() else {
        return;
    };
    fabricctl(
        &data,
        &[
            "pool",
            "create",
            "single",
            "--replicas",
            "1",
            "--min-replicas",
            "1",
            "--pg-count",
            "1",
        ],
    );
    fabricctl(
        &data,
        &[
            "volume", "create", "s1", "--size", "16MiB", "--pool", "single",
        ],
    );
    create(&data, "vm1", "64MiB");
    let uri = |name: &str| format!("nbd://{}/{name}", dev.addr);
    qemu_io_ok(&uri("s1"), "write -P 0x1 0 1M");
    qemu_io_ok(&uri("vm1"), "write -P 0x2 0 1M");

    // The node holding s1's only replica dies.
    let pools = fabricctl(&data, &["pool", "list"]);
    let single = pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "single")
        .expect("pool single");
    let node = single["pgs"][0][0].as_u64().expect("the PG's node");
    let pid = fabric_suite::node_pid(&data, node);
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );

    // s1's writes fail (below min_replicas, after the wait for a replica to return)...
    let s1 = uri("s1");
    let failing = std::thread::spawn(move || {
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 0x3 0 1M", &s1])
            .stdin(Stdio::null())
            .output()
            .expect("run qemu-io")
    });
    std::thread::sleep(Duration::from_millis(500));
    // ...while vm1, on the same gateway, writes and reads on, and opens anew.
    qemu_io_ok(&uri("vm1"), "write -P 0x4 1M 1M");
    qemu_io_ok(&uri("vm1"), "read -P 0x2 0 1M");
    qemu_io_ok(&uri("vm1"), "read -P 0x4 1M 1M");
    // s1's write waits up to 10 s for a replica to come back: vm1 did not wait behind it.
    assert!(
        !failing.is_finished(),
        "vm1's IO took as long as s1's wait for a replica"
    );
    let out = failing.join().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() || said.contains("error"),
        "a write to a volume without a replica succeeded: {said}"
    );
    qemu_io_ok(&uri("vm1"), "read -P 0x4 1M 1M");
}

/// A gateway whose cluster is gone cannot flush or detach on SIGTERM and keeps retrying; a
/// second signal ends that at once, with a failing exit status and the reason in its log.
#[test]
fn a_second_stop_signal_ends_a_gateway_stuck_flushing_to_a_cluster_that_is_gone() {
    let Some((_serial, dir, data, mut dev)) = cluster() else {
        return;
    };
    create(&data, "vm1", "64MiB");
    let log = dir.path().join("gateway-a.log");
    let gw = Gateway::start(&data, "host-a", &["--volume", "vm1"], &log);
    qemu_io_ok(&gw.uri("vm1"), "write -P 0x5a 0 1M");
    dev.kill9();
    let pid = gw.pid() as i32;
    // SAFETY: signalling the gateway child by pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    std::thread::sleep(Duration::from_secs(2));
    let still = std::fs::read_to_string(&log).unwrap();
    assert!(still.contains("gateway stopping"), "{still}");
    let second = Instant::now();
    let status = gw.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "{:?} after the second signal: {text}",
        second.elapsed()
    );
    assert!(!status.success(), "{status}: {text}");
    assert!(text.contains("second stop signal"), "{text}");
}
