//! The client whose latency `--qos` and `--infer` watch: fio 4 KiB randrw 50/50 at depth 8
//! on the volume `client` over NBD, at full speed or held to a rate, and its p99.

use std::process::{Command, Stdio};

use anyhow::Context;
use serde_json::Value;

use super::fio;

/// Bytes of the client's volume.
pub(super) const CLIENT_BYTES: u64 = 256 << 20;

/// p99 completion latencies of a client run, in µs.
#[derive(Clone, Copy, Debug)]
pub(super) struct P99 {
    pub(super) read_us: f64,
    pub(super) write_us: f64,
}

impl P99 {
    pub(super) fn worse(&self) -> f64 {
        self.read_us.max(self.write_us)
    }
}

/// fio's arguments for NBD export `volume` of the server at `port` on loopback.
pub(super) fn nbd_args(port: u16, volume: &str) -> Vec<String> {
    vec![
        "--ioengine=nbd".into(),
        format!("--uri=nbd://127.0.0.1:{port}/{volume}"),
    ]
}

/// The client of the NBD server at `port`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Client {
    pub(super) port: u16,
    /// IOs a second in all, half reads and half writes; `None`: as many as depth 8 gives.
    pub(super) iops: Option<u32>,
}

impl Client {
    /// A run of `runtime` s.
    pub(super) fn run(&self, runtime: u32) -> anyhow::Result<P99> {
        p99_of(&fio(&self.args(runtime), &[])?)
    }

    /// A run from now until `done` returns, then stopped (fio reports what it saw when
    /// interrupted): latency while something else runs, and only then.
    pub(super) fn run_while(
        &self,
        done: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<P99> {
        let child = Command::new("fio")
            .args(self.args(3600))
            .arg("--output-format=json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run fio")?;
        let waited = done();
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().context("wait for fio")?;
        waited?;
        let text = String::from_utf8_lossy(&out.stdout);
        let start = text.find('{').context("fio printed no JSON")?;
        p99_of(&serde_json::from_str(&text[start..]).context("parse fio JSON")?)
    }

    /// A run of `runtime` s beside fio running `load` (its job options, without a runtime),
    /// started a second before the client and ended a second after it; the load's report.
    pub(super) fn run_beside(
        &self,
        runtime: u32,
        mut load: Vec<String>,
    ) -> anyhow::Result<(P99, Value)> {
        load.extend([
            format!("--runtime={}", runtime + 2),
            "--time_based=1".into(),
        ]);
        let load = std::thread::spawn(move || fio(&load, &[]));
        std::thread::sleep(std::time::Duration::from_secs(1));
        let p99 = self.run(runtime);
        let report = load.join().expect("fio thread")?;
        Ok((p99?, report))
    }

    fn args(&self, runtime: u32) -> Vec<String> {
        let mut args = nbd_args(self.port, "client");
        args.extend([
            "--name=client".to_string(),
            "--rw=randrw".into(),
            "--rwmixread=50".into(),
            "--bs=4k".into(),
            "--iodepth=8".into(),
            format!("--size={CLIENT_BYTES}"),
            format!("--runtime={runtime}"),
            "--time_based=1".into(),
            "--randrepeat=0".into(),
            "--norandommap=1".into(),
        ]);
        if let Some(iops) = self.iops {
            // One figure applies to reads and to writes each.
            args.push(format!("--rate_iops={}", (iops / 2).max(1)));
        }
        args
    }
}

fn p99_of(v: &Value) -> anyhow::Result<P99> {
    let p99 = |side: &str| -> anyhow::Result<f64> {
        v["jobs"][0][side]["clat_ns"]["percentile"]["99.000000"]
            .as_f64()
            .map(|ns| ns / 1000.0)
            .with_context(|| format!("fio {side} p99"))
    };
    Ok(P99 {
        read_us: p99("read")?,
        write_us: p99("write")?,
    })
}
