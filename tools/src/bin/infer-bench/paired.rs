//! Paired rounds against ONNX Runtime: each shape timed by us, then at once by ONNX Runtime
//! (a `tools/scripts/ort_minilm.py` process kept serving), round after round, and the ratio
//! taken within each round. On a shared host whose speed moves by half within seconds, a
//! ratio of two timings taken a minute apart says more about the neighbours than about the
//! engines; two taken back to back, repeated, do not.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{Context, Result, bail};

/// A running `ort_minilm.py --serve`.
pub(crate) struct OrtServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl OrtServer {
    /// Starts the script on `request` (with `"serve": true` added) and waits until it is
    /// ready; the lines it printed before, for the caller to read.
    pub(crate) fn start(
        script: &str,
        mut request: serde_json::Value,
    ) -> Result<(OrtServer, Vec<String>)> {
        request["serve"] = true.into();
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("python3")?;
        let mut stdin = child.stdin.take().context("piped")?;
        let stdout = BufReader::new(child.stdout.take().context("piped")?);
        writeln!(stdin, "{request}")?;
        stdin.flush()?;
        let mut server = OrtServer {
            child,
            stdin,
            stdout,
        };
        let mut before = Vec::new();
        loop {
            let line = server.line()?;
            if line.contains("\"ready\"") {
                return Ok((server, before));
            }
            before.push(line);
        }
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("ort_minilm.py ended ({status}) before answering");
        }
        Ok(line)
    }

    /// ONNX Runtime's median seconds for `runs` runs of `batch × tokens` in `kind`.
    pub(crate) fn time(
        &mut self,
        kind: &str,
        (batch, tokens): (usize, usize),
        runs: usize,
    ) -> Result<f64> {
        let cmd = serde_json::json!({
            "kind": kind, "batch": batch, "tokens": tokens, "runs": runs, "warmup": 1,
        });
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let v: serde_json::Value = serde_json::from_str(&self.line()?)?;
        v["median_s"].as_f64().context("no median_s in the answer")
    }
}

impl Drop for OrtServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The median and range of `ratios`.
pub(crate) fn summary(ratios: &[f64]) -> String {
    let mut r = ratios.to_vec();
    r.sort_by(f64::total_cmp);
    match (r.first(), r.last()) {
        (Some(lo), Some(hi)) => format!("{:.2} ({lo:.2}–{hi:.2})", r[r.len() / 2]),
        _ => "-".into(),
    }
}
