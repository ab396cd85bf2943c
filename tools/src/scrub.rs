//! `fabricctl scrub ...`: asking for a volume's scrub, and what each PG's scrubs found.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Subcommand;
use fabric::meta::client::Client;
use proto::meta as pb;
use serde_json::{Value, json};

use crate::reply::{Reply, parse_secs, rfc3339_ms};

/// `fabricctl scrub ...`.
#[derive(Subcommand)]
pub enum ScrubCmd {
    /// Scrubs every PG of the volume now (volume.scrub): each replica checks every block
    /// against its checksum, and a bad block is rewritten from a good copy; with `--deep` the
    /// replicas' versions and contents are compared too. The volume's gateway runs it, or,
    /// for a volume nobody serves, the maintenance agent of the leader's node.
    Start {
        volume: String,
        #[arg(long)]
        deep: bool,
        /// Wait until every PG is scrubbed, then print what was found.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (seconds, or with s, m, h or d).
        #[arg(long, default_value = "1h", value_parser = parse_secs)]
        timeout: u64,
    },
    /// Per PG of every volume (or of the one given): its last scrub and deep scrub, what the
    /// last one found, repaired and left, and the totals over all its scrubs.
    Status { volume: Option<String> },
}

const COLUMNS: &[&str] = &[
    "volume",
    "pg",
    "last_scrub",
    "last_deep_scrub",
    "errors",
    "repaired",
    "unrepaired",
    "errors_total",
    "repaired_total",
    "requested",
];

pub async fn run(cmd: ScrubCmd, client: &Client) -> anyhow::Result<Reply> {
    match cmd {
        ScrubCmd::Start {
            volume,
            deep,
            wait,
            timeout,
        } => {
            let req = pb::StartScrubRequest {
                volume: volume.clone(),
                deep,
            };
            let v = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.start_scrub(req).await }
                })
                .await?;
            if !wait {
                return Ok(Reply::One(request_json(&v)));
            }
            let deadline = Instant::now() + Duration::from_secs(timeout);
            loop {
                let v = get(client, &volume).await?;
                if v.scrub.as_ref().is_none_or(|s| s.requested_ms == 0) {
                    return status(client, Some(volume)).await;
                }
                if Instant::now() >= deadline {
                    bail!("volume {volume}: the scrub did not finish within {timeout} s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        ScrubCmd::Status { volume } => status(client, volume).await,
    }
}

async fn get(client: &Client, name: &str) -> anyhow::Result<pb::Volume> {
    let req = pb::GetVolumeRequest { name: name.into() };
    Ok(client
        .call(|mut c| {
            let req = req.clone();
            async move { c.get_volume(req).await }
        })
        .await?)
}

fn request_json(v: &pb::Volume) -> Value {
    let s = v.scrub.clone().unwrap_or_default();
    json!({
        "volume": v.name,
        "requested": requested(&s),
        "requested_at": rfc3339_ms(s.requested_ms),
    })
}

/// The pending request: "deep", "light" or "" for none.
fn requested(s: &pb::VolumeScrub) -> &'static str {
    match (s.requested_ms, s.requested_deep) {
        (0, _) => "",
        (_, true) => "deep",
        (_, false) => "light",
    }
}

async fn status(client: &Client, volume: Option<String>) -> anyhow::Result<Reply> {
    let volumes = match volume {
        Some(name) => vec![get(client, &name).await?],
        None => {
            client
                .call(|mut c| async move { c.list_volumes(pb::ListVolumesRequest {}).await })
                .await?
                .volumes
        }
    };
    let pools = client
        .call(|mut c| async move { c.list_pools(pb::ListPoolsRequest {}).await })
        .await?
        .pools;
    let never = |ms: u64| {
        if ms == 0 {
            json!("never")
        } else {
            json!(rfc3339_ms(ms))
        }
    };
    let mut rows = Vec::new();
    for v in &volumes {
        let s = v.scrub.clone().unwrap_or_default();
        let pg_count = pools
            .iter()
            .find(|p| p.name == v.pool)
            .map_or(0, |p| p.pg_count);
        for pg in 0..pg_count {
            let p = s
                .pgs
                .iter()
                .find(|p| p.pg == pg)
                .cloned()
                .unwrap_or_default();
            rows.push(json!({
                "volume": v.name,
                "pg": pg,
                "last_scrub": never(p.last_ms),
                "last_deep_scrub": never(p.last_deep_ms),
                "errors": p.errors,
                "repaired": p.repaired,
                "unrepaired": p.unrepaired,
                "errors_total": p.errors_total,
                "repaired_total": p.repaired_total,
                "requested": requested(&s),
            }));
        }
    }
    Ok(Reply::List(rows, COLUMNS))
}
