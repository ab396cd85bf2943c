//! A running guest: QEMU (TCG, so no KVM is needed) booting the [`GuestImage`] from a Fabric
//! volume over NBD, its serial console read line by line into a log file and into memory,
//! where the test waits for the guest's markers.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{GuestImage, Host};

/// What every marker line of the guest starts with.
pub const MARKER: &str = "FABRIC-VM: ";
/// Memory of the guest, in MiB.
pub const GUEST_MEMORY_MIB: u32 = 256;
/// Console lines shown when the test fails.
pub const CONSOLE_TAIL_LINES: usize = 40;

/// What the guest's kernel prints when a disk request or the file system fails. None may
/// appear while Fabric loses a node or a gateway restarts.
pub const CONSOLE_ERRORS: [&str; 6] = [
    "I/O error",
    "blk_update_request",
    "EXT4-fs error",
    "Aborting journal",
    "Remounting filesystem read-only",
    "FABRIC-VM: FAIL",
];

/// The last round the stress step reported synced in `markers`, 0 before the first.
pub fn last_round(markers: &[String]) -> u64 {
    markers
        .iter()
        .filter_map(|m| m.strip_prefix("round ")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// How QEMU reaches the volume.
#[derive(Debug, Clone)]
pub enum Disk {
    /// `-drive file=nbd://...,if=virtio`: one connection; a dropped one fails the guest's IO.
    Nbd { uri: String },
    /// `-blockdev driver=nbd,...,reconnect-delay=S` behind a virtio-blk device: when the
    /// connection drops, QEMU reconnects and resends what was in flight; requests wait up to
    /// `reconnect_delay_s` for the server to come back before they fail.
    NbdReconnecting {
        port: u16,
        export: String,
        reconnect_delay_s: u32,
    },
}

impl Disk {
    fn qemu_args(&self) -> Vec<String> {
        match self {
            Disk::Nbd { uri } => vec![
                "-drive".into(),
                format!("file={uri},format=raw,if=virtio,cache=none"),
            ],
            Disk::NbdReconnecting {
                port,
                export,
                reconnect_delay_s,
            } => vec![
                "-blockdev".into(),
                format!(
                    "driver=nbd,node-name=fabric0,server.type=inet,server.host=127.0.0.1,\
                     server.port={port},export={export},reconnect-delay={reconnect_delay_s}"
                ),
                "-device".into(),
                "virtio-blk-pci,drive=fabric0".into(),
            ],
        }
    }
}

/// A booted guest; killed when dropped.
pub struct Guest {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<Mutex<Vec<String>>>,
    /// The threads copying QEMU's stdout and stderr; they end when QEMU does.
    readers: Vec<JoinHandle<()>>,
    log: PathBuf,
    step: String,
}

impl Guest {
    /// Boots the guest on `disk` to run `step` (see `guest-init.sh`) with more kernel
    /// parameters `append`; the console goes to `log` as well.
    pub fn boot(
        host: &Host,
        image: &GuestImage,
        disk: &Disk,
        step: &str,
        append: &str,
        log: &Path,
    ) -> anyhow::Result<Guest> {
        let file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let file = Arc::new(Mutex::new(file));
        let mut child = Command::new(&host.qemu)
            .args(["-machine", "accel=tcg", "-m", &GUEST_MEMORY_MIB.to_string()])
            // The serial port on stdin and stdout, no monitor, no network, and an exit rather
            // than a reboot when the guest powers off or panics.
            .args([
                "-nographic",
                "-serial",
                "stdio",
                "-monitor",
                "none",
                "-nic",
                "none",
            ])
            .arg("-no-reboot")
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=1 fabric.step={step} {append}"))
            .args(disk.qemu_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start qemu-system-x86_64")?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let streams: [(Box<dyn std::io::Read + Send>, &str); 2] = [
            (Box::new(child.stdout.take().expect("piped")), ""),
            (Box::new(child.stderr.take().expect("piped")), "[qemu] "),
        ];
        let mut readers = Vec::new();
        for (stream, prefix) in streams {
            let (file, console) = (Arc::clone(&file), Arc::clone(&console));
            readers.push(std::thread::spawn(move || {
                // The serial console ends lines with "\r\n", and may carry bytes that are not
                // UTF-8 (a garbled line is still worth keeping).
                for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                    let text = String::from_utf8_lossy(&line);
                    let line = format!("{prefix}{}", text.trim_end_matches('\r'));
                    let _ = writeln!(
                        file.lock().unwrap_or_else(PoisonError::into_inner),
                        "{line}"
                    );
                    console
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            }));
        }
        Ok(Guest {
            stdin: child.stdin.take(),
            child,
            console,
            readers,
            log: log.to_path_buf(),
            step: step.to_owned(),
        })
    }

    /// Every console line so far.
    pub fn console(&self) -> Vec<String> {
        self.console
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The payloads of the marker lines so far (what follows [`MARKER`]).
    pub fn markers(&self) -> Vec<String> {
        self.console()
            .iter()
            .filter_map(|l| l.split_once(MARKER).map(|(_, m)| m.to_owned()))
            .collect()
    }

    /// What follows `name` in the last marker line of that name: `value("payload")` of
    /// "FABRIC-VM: payload 3f2a..." is "3f2a...".
    pub fn value(&self, name: &str) -> Option<String> {
        self.markers()
            .iter()
            .rev()
            .find_map(|m| m.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
    }

    /// The last round the stress step reported synced, 0 before the first.
    pub fn last_round(&self) -> u64 {
        last_round(&self.markers())
    }

    /// The console lines that report a failed disk request or file system error.
    pub fn errors(&self) -> Vec<String> {
        self.console()
            .into_iter()
            .filter(|l| CONSOLE_ERRORS.iter().any(|e| l.contains(e)))
            .collect()
    }

    /// The last [`CONSOLE_TAIL_LINES`] console lines, for failure messages.
    pub fn tail(&self) -> String {
        let lines = self.console();
        let from = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
        format!(
            "--- console of the {} step ({}), last {} lines:\n{}",
            self.step,
            self.log.display(),
            lines.len() - from,
            lines[from..].join("\n")
        )
    }

    /// Waits until `done` holds for the marker lines so far. Fails, with the console's tail,
    /// after `timeout`, when the guest reports a failure, or when QEMU exits first.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[String]) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let markers = self.markers();
            if done(&markers) {
                return Ok(());
            }
            if let Some(failed) = markers.iter().find(|m| m.starts_with("FAIL")) {
                bail!(
                    "the guest failed ({failed}) waiting for {what}\n{}",
                    self.tail()
                );
            }
            if let Some(status) = self.exited()? {
                if done(&self.markers()) {
                    return Ok(());
                }
                bail!("QEMU exited ({status}) before {what}\n{}", self.tail());
            }
            if Instant::now() > deadline {
                bail!("no {what} within {timeout:?}\n{}", self.tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a marker line equal to `marker`, or starting with it followed by a space.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until(&format!("\"{marker}\""), timeout, |markers| {
            markers
                .iter()
                .any(|m| m == marker || m.strip_prefix(marker).is_some_and(|r| r.starts_with(' ')))
        })
    }

    /// QEMU's exit status once it has exited, with every line it printed collected.
    fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let status = self.child.try_wait().context("poll qemu")?;
        if status.is_some() {
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
        }
        Ok(status)
    }

    /// Types a line on the guest's console.
    pub fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the console's input is closed")?;
        writeln!(stdin, "{line}").context("write to the guest's console")?;
        stdin.flush().context("write to the guest's console")
    }

    /// Waits for the guest to print "done" and power off (QEMU exits with status 0).
    pub fn wait_powered_off(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for("done", timeout)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                if !status.success() {
                    bail!("QEMU exited with {status}\n{}", self.tail());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the guest said done but did not power off within {timeout:?}\n{}",
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
