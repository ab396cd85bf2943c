//! Following PG movements to their end, for `fabricctl node drain` and `balance apply`: what is
//! left is read from the metadata service every half second and shown as a bar (or, with
//! `--json`, as one JSON line per reading) until nothing is left to move.
//!
//! A PG is still moving while a replica leaves it or one of its targets is stale for some
//! volume: either way its data is not yet where placement wants it.

use std::collections::BTreeSet;
use std::time::Duration;

use fabric::meta::client::Client;
use proto::meta as pb;
use serde_json::json;

/// How often progress is read.
const POLL_INTERVAL_MS: u64 = 500;

/// What a movement waits for.
#[derive(Clone, Debug)]
pub enum Movement {
    /// The node holds no replica of any PG (target or leaving).
    Drain(u64),
    /// The listed PGs of a pool are where placement wants them.
    Pool { pool: String, pgs: BTreeSet<u32> },
    /// Every PG of every pool is where placement wants it.
    Settle,
}

/// One reading of how far a movement has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reading {
    /// PGs still to move.
    pub remaining: u64,
    /// PGs that cannot move: placement still puts a draining node's replica there (the rule
    /// has no other place for it).
    pub stuck: u64,
    /// Replicas staying in a PG until their successor is current.
    pub leaving: u64,
    /// Rebuild progress reported by the volumes' writers, summed.
    pub rebuild_done_bytes: u64,
    pub rebuild_total_bytes: u64,
}

impl Movement {
    /// Reads where the movement stands.
    pub async fn read(&self, client: &Client) -> anyhow::Result<Reading> {
        let pools = client
            .call(|mut c| async move { c.list_pools(pb::ListPoolsRequest {}).await })
            .await?
            .pools;
        let volumes = client
            .call(|mut c| async move { c.list_volumes(pb::ListVolumesRequest {}).await })
            .await?
            .volumes;
        let mut r = Reading::default();
        for pool in &pools {
            let pool_volumes: Vec<&pb::Volume> =
                volumes.iter().filter(|v| v.pool == pool.name).collect();
            for pg in &pool.pgs {
                let targets: Vec<u64> = pg
                    .replicas
                    .iter()
                    .copied()
                    .filter(|n| !pg.leaving.contains(n))
                    .collect();
                let stale_target = pool_volumes.iter().any(|v| {
                    v.stale
                        .iter()
                        .any(|s| s.pg == pg.pg && s.nodes.iter().any(|n| targets.contains(n)))
                });
                let counts = match self {
                    Movement::Drain(node) => {
                        if targets.contains(node) {
                            r.stuck += 1;
                        }
                        pg.replicas.contains(node)
                    }
                    Movement::Pool { pool: name, pgs } => {
                        *name == pool.name
                            && pgs.contains(&pg.pg)
                            && (!pg.leaving.is_empty() || stale_target)
                    }
                    Movement::Settle => !pg.leaving.is_empty() || stale_target,
                };
                if counts {
                    r.remaining += 1;
                    r.leaving += pg.leaving.len() as u64;
                }
            }
            for v in &pool_volumes {
                for b in &v.rebuilding {
                    r.rebuild_done_bytes += b.done_bytes;
                    r.rebuild_total_bytes += b.total_bytes;
                }
            }
        }
        Ok(r)
    }

    /// Reads progress until nothing remains, showing a bar (or JSON lines); an error if PGs
    /// cannot move at all.
    pub async fn follow(&self, client: &Client, as_json: bool) -> anyhow::Result<Reading> {
        let first = self.read(client).await?;
        let bar = (!as_json).then(|| {
            let bar = indicatif::ProgressBar::new(first.remaining);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} PGs moved  {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        let mut reading = first;
        loop {
            let total = first.remaining.max(reading.remaining);
            let moved = total - reading.remaining;
            match &bar {
                Some(bar) => {
                    bar.set_length(total);
                    bar.set_position(moved);
                    bar.set_message(format!(
                        "rebuilt {} of {} MiB",
                        reading.rebuild_done_bytes >> 20,
                        reading.rebuild_total_bytes >> 20
                    ));
                }
                None => println!(
                    "{}",
                    json!({"progress": reading, "total": total, "moved": moved})
                ),
            }
            if reading.remaining == reading.stuck {
                break;
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
            reading = self.read(client).await?;
        }
        if let Some(bar) = bar {
            bar.finish();
        }
        if reading.stuck > 0 {
            anyhow::bail!(
                "{} PGs cannot move: their pool's rule has no other place for the replicas \
                 (add capacity in another failure domain, or end the drain)",
                reading.stuck
            );
        }
        Ok(reading)
    }
}
