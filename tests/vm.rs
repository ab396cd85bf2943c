//! Virtual machines booting from Fabric volumes: QEMU (TCG) runs a small Linux guest whose
//! root file system is a 3-replica volume served by a `fabricd gateway`, while a storage node
//! is killed under its writes and the gateway is restarted and killed under them. The guest
//! is built from the host's kernel and busybox (`fabric_suite::vm`), and reports on its serial
//! console; it must see no IO error, and everything it synced must read back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fabric_suite::vm::{Disk, Guest, GuestImage, Host, ROOT_SIZE_BYTES, last_round};
use fabric_suite::{DevNode, Gateway, fabricctl, node_pid, run, run_text, tools};

/// Boot, run a step and power off. The kernel boots in about ten seconds under TCG on two
/// cores shared with the cluster; the margin covers a loaded machine.
const STEP_TIMEOUT: Duration = Duration::from_secs(240);
/// For the stress step to report a number of further rounds, a gateway restart included.
const ROUNDS_TIMEOUT: Duration = Duration::from_secs(120);
/// Rounds (each a file written and synced) the guest must complete after each disruption.
const ROUNDS_AFTER_EACH_EVENT: u64 = 10;
/// How long QEMU waits for a gateway to come back before failing the guest's requests; a
/// restarted gateway attaches and listens within a few seconds.
const RECONNECT_DELAY_S: u32 = 20;
/// The client name the gateway attaches as, kept across its restarts.
const CLIENT: &str = "vm-host";

/// A cluster of three storage nodes, a volume holding the guest's root file system, and a
/// gateway serving it on a port it keeps across restarts.
struct Vm {
    _serial: std::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    data: PathBuf,
    dev: DevNode,
    host: Host,
    image: GuestImage,
    volume: String,
    /// `None` while the gateway is stopped or killed.
    gateway: Option<Gateway>,
    port: u16,
    gateway_args: Vec<String>,
}

impl Vm {
    /// `None` (skip) when QEMU, a kernel, busybox, e2fsprogs or qemu-img is missing. The
    /// gateway is started with `gateway_args` (e.g. `--volume NAME`, attached at start and held;
    /// without it, the volume is attached when a client first opens it).
    fn start(volume: &str, gateway_args: &[&str]) -> Option<Vm> {
        let host = Host::find()?;
        tools(&["qemu-img"])?;
        let serial = fabric_suite::one_cluster_at_a_time();
        let dir = tempfile::tempdir().unwrap();
        let image = GuestImage::build(&host, &dir.path().join("image")).expect("build the guest");
        let data = dir.path().join("data");
        let dev = DevNode::start_with(&data, "vol0:64MiB", &["--nodes", "3"]).expect("start dev");
        let size = format!("{}MiB", ROOT_SIZE_BYTES >> 20);
        fabricctl(&data, &["volume", "create", volume, "--size", &size]);
        let mut vm = Vm {
            _serial: serial,
            dir,
            data,
            dev,
            host,
            image,
            volume: volume.to_owned(),
            gateway: None,
            port: fabric_suite::free_port(),
            gateway_args: gateway_args.iter().map(|a| a.to_string()).collect(),
        };
        vm.start_gateway();
        run(Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&vm.image.root)
            .arg(vm.uri()))
        .expect("copy the guest's root file system into the volume");
        Some(vm)
    }

    /// `nbd://127.0.0.1:PORT/VOLUME` of the gateway, whether it runs or not.
    fn uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.port, self.volume)
    }

    /// Starts the gateway, again after a stop or a kill: same port, same client name.
    fn start_gateway(&mut self) {
        assert!(self.gateway.is_none(), "the gateway runs already");
        let args: Vec<&str> = self.gateway_args.iter().map(String::as_str).collect();
        let log = self.dir.path().join("gateway.log");
        self.gateway = Some(Gateway::start_on(
            &self.data, CLIENT, &args, &log, self.port,
        ));
    }

    /// SIGTERM, and the gateway's exit status.
    fn stop_gateway(&mut self) -> std::process::ExitStatus {
        self.gateway.take().expect("the gateway runs").stop()
    }

    fn kill9_gateway(&mut self) {
        self.gateway.take().expect("the gateway runs").kill9();
    }

    /// Boots the guest on `disk` to run `step`; its console goes to `console-NAME.log`.
    fn boot(&self, disk: &Disk, step: &str, name: &str) -> Guest {
        let log = self.dir.path().join(format!("console-{name}.log"));
        Guest::boot(&self.host, &self.image, disk, step, "", &log).expect("start QEMU")
    }

    /// Boots the guest to run `step` to its end, which must be clean.
    fn run_step(&self, disk: &Disk, step: &str, name: &str) -> Guest {
        let mut guest = self.boot(disk, step, name);
        guest
            .wait_powered_off(STEP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{step} step: {e:#}"));
        assert_no_io_error(&guest);
        guest
    }

    /// A copy of the volume in a raw file, taken through the gateway.
    fn copy_out(&self, name: &str) -> PathBuf {
        let copy = self.dir.path().join(name);
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(self.uri())
            .arg(&copy))
        .expect("copy the volume out");
        copy
    }

    /// Stops the gateway and the cluster; both must exit cleanly.
    fn stop(mut self) {
        let status = self.stop_gateway();
        assert!(status.success(), "gateway exit: {status}");
        assert_eq!(self.dev.stop().unwrap(), 0, "clean exit of the cluster");
    }
}

fn assert_no_io_error(guest: &Guest) {
    let errors = guest.errors();
    assert!(
        errors.is_empty(),
        "the guest saw IO errors:\n{}\n{}",
        errors.join("\n"),
        guest.tail()
    );
}

/// Waits for `more` rounds of the stress step after round `after`, the last one synced
/// before a disruption at `since`, and says how long the guest's writes stalled.
fn wait_rounds(guest: &mut Guest, since: Instant, after: u64, more: u64, what: &str) {
    guest
        .wait_until(
            &format!("the first round after {what}"),
            ROUNDS_TIMEOUT,
            |m| last_round(m) > after,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "{what}: the first round after round {after} synced {:?} after it",
        since.elapsed()
    );
    guest
        .wait_until(
            &format!("{more} rounds synced after {what}"),
            ROUNDS_TIMEOUT,
            |m| last_round(m) >= after + more,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Tells the stress step to stop and waits for the guest to power off cleanly; returns the
/// number of rounds it synced in all.
fn stop_stress(guest: &mut Guest) -> u64 {
    guest.send_line("stop").expect("tell the guest to stop");
    guest
        .wait_powered_off(STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("stress step: {e:#}"));
    assert_no_io_error(guest);
    guest
        .value("rounds")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rounds reported at stop\n{}", guest.tail()))
}

/// `e2fsck -fn` of a raw copy of the file system: forced full check, changing nothing; exit 0
/// means clean.
fn assert_fsck_clean(host: &Host, image: &Path) {
    let out = Command::new(&host.e2fsck)
        .args(["-f", "-n"])
        .arg(image)
        .output()
        .expect("run e2fsck");
    assert!(
        out.status.success(),
        "e2fsck -fn of the volume's file system: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sha256 of a file inside a raw ext4 image, read on the host with debugfs.
fn sha256_in_image(host: &Host, image: &Path, file: &str, scratch: &Path) -> String {
    run(Command::new(&host.debugfs)
        .arg("-R")
        .arg(format!("dump {file} {}", scratch.display()))
        .arg(image))
    .expect("debugfs dump");
    let sum = run_text(Command::new("sha256sum").arg(scratch)).expect("sha256sum");
    sum.split_whitespace().next().unwrap_or_default().to_owned()
}

/// The payload's hash the guest reported.
fn payload(guest: &Guest) -> String {
    guest
        .value("payload")
        .unwrap_or_else(|| panic!("no payload reported\n{}", guest.tail()))
}

/// The rounds the read step verified.
fn verified_rounds(guest: &Guest) -> u64 {
    guest
        .value("verified")
        .and_then(|v| v.strip_suffix(" rounds")?.parse().ok())
        .unwrap_or_else(|| panic!("no verified rounds reported\n{}", guest.tail()))
}

#[test]
fn a_vm_boots_from_a_volume_reads_its_file_back_and_writes_on_while_a_storage_node_dies() {
    // The gateway attaches the volume at start and holds it.
    let Some(vm) = Vm::start("vm1", &["--volume", "vm1"]) else {
        return;
    };
    let disk = Disk::Nbd { uri: vm.uri() };

    // First boot: the guest writes a file and its checksum, syncs and powers off. Second
    // boot: the file reads back from the volume with the same checksum.
    let written = payload(&vm.run_step(&disk, "write", "1-write"));
    assert_eq!(written.len(), 64, "a sha256: {written}");
    let read = vm.run_step(&disk, "read", "2-read");
    assert_eq!(payload(&read), written, "the payload read back differs");

    // Third boot: round after round of writes and syncs; storage node 2 is killed -9 while the
    // guest writes, and the guest goes on writing through the other two replicas.
    let mut guest = vm.boot(&disk, "stress", "3-stress");
    guest
        .wait_until("round 5", STEP_TIMEOUT, |m| last_round(m) >= 5)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let killed = Instant::now();
    run(Command::new("kill").args(["-9", &node_pid(&vm.data, 2).to_string()])).unwrap();
    let at_kill = guest.last_round();
    wait_rounds(
        &mut guest,
        killed,
        at_kill,
        ROUNDS_AFTER_EACH_EVENT,
        "storage node 2 was killed",
    );
    let rounds = stop_stress(&mut guest);
    let shown = fabricctl(&vm.data, &["volume", "show", "vm1"]);
    assert!(
        shown["replica_state"]["pgs_degraded"].as_u64().unwrap() >= 1,
        "node 2 missed writes of the volume, so some PG is degraded: {shown}"
    );

    // The file system on the volume is clean, and the payload read on the host, from a copy
    // of the volume, has the checksum the guest wrote.
    let copy = vm.copy_out("after-node-kill.raw");
    assert_fsck_clean(&vm.host, &copy);
    let scratch = vm.dir.path().join("payload");
    assert_eq!(
        sha256_in_image(&vm.host, &copy, "/data/payload", &scratch),
        written
    );

    // Fourth boot, node 2 still dead: the payload and every round's file verify.
    let read = vm.run_step(&disk, "read", "4-read");
    assert_eq!(payload(&read), written, "the payload read back differs");
    assert_eq!(
        verified_rounds(&read),
        rounds,
        "every synced round verifies"
    );
    vm.stop();
}

#[test]
fn a_vm_writes_on_through_a_gateway_restart_and_a_gateway_kill() {
    // The gateway attaches the volume when QEMU opens it, and again when QEMU reconnects to
    // a restarted gateway (same port) and resends what was in flight.
    let Some(mut vm) = Vm::start("vm2", &[]) else {
        return;
    };
    let disk = Disk::NbdReconnecting {
        port: vm.port,
        export: "vm2".into(),
        reconnect_delay_s: RECONNECT_DELAY_S,
    };
    let mut guest = vm.boot(&disk, "stress", "1-stress");
    guest
        .wait_until("round 5", STEP_TIMEOUT, |m| last_round(m) >= 5)
        .unwrap_or_else(|e| panic!("{e:#}"));

    // SIGTERM: the gateway finishes the requests in flight, flushes, detaches and exits;
    // started again with the same port and client name, it attaches the volume again when
    // QEMU reconnects.
    let stopped = Instant::now();
    let status = vm.stop_gateway();
    assert!(status.success(), "clean gateway exit: {status}");
    let before = guest.last_round();
    vm.start_gateway();
    wait_rounds(
        &mut guest,
        stopped,
        before,
        ROUNDS_AFTER_EACH_EVENT,
        "the gateway restarted after SIGTERM",
    );

    // kill -9: no flush, no detach; the attachment it leaves is its own client name's, which
    // the restarted gateway takes again.
    let killed = Instant::now();
    vm.kill9_gateway();
    let before = guest.last_round();
    vm.start_gateway();
    wait_rounds(
        &mut guest,
        killed,
        before,
        ROUNDS_AFTER_EACH_EVENT,
        "the gateway restarted after kill -9",
    );
    let rounds = stop_stress(&mut guest);
    let shown = fabricctl(&vm.data, &["volume", "show", "vm2"]);
    assert_eq!(shown["attached_to"], CLIENT, "{shown}");
    assert_eq!(
        shown["attach_epoch"], 3,
        "the first attach and one after each restart: {shown}"
    );

    // Everything synced before, between and after the restarts reads back, and the file
    // system is clean.
    let read = vm.run_step(&disk, "read", "2-read");
    assert_eq!(
        verified_rounds(&read),
        rounds,
        "every synced round verifies"
    );
    assert_fsck_clean(&vm.host, &vm.copy_out("after-gateway-restarts.raw"));
    vm.stop();
}
