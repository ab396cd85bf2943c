//! Reading a process's Prometheus endpoint: one scrape over plain HTTP, and a strict parse of
//! the text format, for the benchmarks and the process tests.

use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};

/// The body of `GET http://addr/metrics`.
pub fn scrape(addr: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .context("an HTTP reply with a body")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("metrics endpoint answered {head}");
    }
    Ok(body.to_string())
}

/// Parses the Prometheus text format (0.0.4) strictly: every line a `# HELP`/`# TYPE` comment
/// or a sample `name{label="value",...} value`. Returns the samples as (name with its labels
/// as written, value).
pub fn parse_prometheus_text(text: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: &str| anyhow::anyhow!("line {}: {why}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next(), parts.next());
            match (kind, name) {
                (Some("HELP"), Some(n)) if name_ok(n) => {}
                (Some("TYPE"), Some(n)) if name_ok(n) => {
                    let t = parts.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(bad("unknown type"));
                    }
                }
                _ => return Err(bad("malformed comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("value is not a number"))?,
        };
        let name = match series.split_once('{') {
            None => series,
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .ok_or_else(|| bad("unclosed labels"))?;
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let (l, v) = pair.split_once("=\"").ok_or_else(|| bad("bad label"))?;
                    if !name_ok(l) || v.trim_end_matches('"').contains('"') {
                        return Err(bad("bad label"));
                    }
                }
                name
            }
        };
        if !name_ok(name) {
            return Err(bad("bad metric name"));
        }
        samples.push((series.to_string(), value));
    }
    Ok(samples)
}

/// The value of the sample written exactly `series` (name and labels), if present.
pub fn sample(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}
