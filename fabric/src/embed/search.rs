//! `fabricctl infer search`: the records nearest a query, over an embed job's output.
//!
//! The member embeds the query with the job's model and dtype, reads the output volume
//! segment by segment (SCAN_READ of its current replicas), scores every vector by cosine
//! similarity, keeps the best `k`, and reads their text back from the input volume.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use anyhow::{Context, ensure};
use bytes::{Buf, BytesMut};
use proto::meta as pb;

pub use super::read::VolumeReplicas;
use super::read::read_range;
use super::segment::{self, SEGMENT_HEADER_BYTES};
use crate::meta::infer::model::{Job, OUTPUT_HEADER_BYTES};
use volume::wire::EXTENT_SIZE_BYTES;

/// Cosine similarity of `a` and `b` (written so that it vectorises: eight lanes).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            dot[i] += x[i] * y[i];
            na[i] += x[i] * x[i];
            nb[i] += y[i] * y[i];
        }
    }
    let (mut d, mut p, mut q): (f32, f32, f32) =
        (dot.iter().sum(), na.iter().sum(), nb.iter().sum());
    for (x, y) in ra.iter().zip(rb) {
        d += x * y;
        p += x * x;
        q += y * y;
    }
    if p == 0.0 || q == 0.0 {
        return 0.0;
    }
    d / (p.sqrt() * q.sqrt())
}

/// A scored record, ordered so that the heap's top is the worst kept.
#[derive(PartialEq)]
struct Hit {
    score: f32,
    offset: u64,
    len: u32,
}

impl Eq for Hit {}

impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Hit {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.offset.cmp(&other.offset))
    }
}

/// The `k` records of `job`'s output nearest `query`.
pub async fn search(
    leader: &super::leader::InferLeader,
    job: &Job,
    input: &VolumeReplicas,
    output: &VolumeReplicas,
    query: &str,
    k: usize,
) -> anyhow::Result<pb::SearchVectorsReply> {
    let embedders = std::sync::Arc::clone(&leader.embedders);
    let (model, id, dtype, text) = (
        job.spec.model.clone(),
        job.model_id.clone(),
        job.spec.dtype,
        query.to_owned(),
    );
    let q: Vec<f32> = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<f32>> {
        let e = embedders.get(&model, &id, dtype)?;
        Ok(e.embed(&embedders.engine, &[text.as_str()])?)
    })
    .await??;
    let pool = &leader.pool;
    let head = read_range(pool, output, 0, OUTPUT_HEADER_BYTES).await?;
    let header = segment::decode_volume_header(&head).context("output volume header")?;
    ensure!(
        header.layout.job == job.id && header.layout.dim as usize == q.len(),
        "output volume {} holds job {} of dimension {}, not job {} of {}",
        job.spec.output,
        header.layout.job,
        header.layout.dim,
        job.id,
        q.len()
    );
    let mut kept: BinaryHeap<Hit> = BinaryHeap::new();
    let mut records = 0u64;
    let mut buf = BytesMut::new();
    let (mut at, mut read_to) = (OUTPUT_HEADER_BYTES, OUTPUT_HEADER_BYTES);
    while at < header.data_end {
        if buf.len() < SEGMENT_HEADER_BYTES {
            read_more(pool, output, &mut buf, &mut read_to, header.data_end).await?;
            continue;
        }
        let h = segment::decode_segment_header(&buf, at)?;
        let stride = h.stride() as usize;
        while buf.len() < stride {
            read_more(pool, output, &mut buf, &mut read_to, header.data_end).await?;
        }
        let body = &buf[SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + h.body_bytes as usize];
        for r in segment::decode_records(&h, body, at)? {
            records += 1;
            kept.push(Hit {
                score: cosine(&q, &r.vector),
                offset: r.offset,
                len: r.len,
            });
            if kept.len() > k {
                kept.pop();
            }
        }
        buf.advance(stride);
        at += stride as u64;
    }
    let mut best = kept.into_sorted_vec();
    best.truncate(k);
    let mut hits = Vec::with_capacity(best.len());
    for h in best {
        let text = read_range(pool, input, h.offset, u64::from(h.len)).await?;
        hits.push(pb::SearchHit {
            score: f64::from(h.score),
            offset: h.offset,
            len: h.len,
            text: String::from_utf8_lossy(&text).into_owned(),
        });
    }
    Ok(pb::SearchVectorsReply {
        hits,
        records,
        job: job.id,
        model: job.spec.model.clone(),
    })
}

/// Appends the next extent's worth of the output (up to `end`) to `buf`.
async fn read_more(
    pool: &volume::client::ReplicaPool,
    output: &VolumeReplicas,
    buf: &mut BytesMut,
    read_to: &mut u64,
    end: u64,
) -> anyhow::Result<()> {
    ensure!(*read_to < end, "the output ends inside a segment at {end}");
    let next = ((*read_to / EXTENT_SIZE_BYTES + 1) * EXTENT_SIZE_BYTES).min(end);
    let data = read_range(pool, output, *read_to, next - *read_to).await?;
    buf.extend_from_slice(&data);
    *read_to = next;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_is_the_angle_whatever_the_length_and_the_heap_keeps_the_best() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 - 9.0).collect();
        let b: Vec<f32> = a.iter().map(|x| 3.0 * x).collect();
        assert!((cosine(&a, &b) - 1.0).abs() < 1e-6);
        let c: Vec<f32> = a.iter().map(|x| -x).collect();
        assert!((cosine(&a, &c) + 1.0).abs() < 1e-6);
        assert_eq!(cosine(&a, &[0.0; 19]), 0.0);
        let mut kept = BinaryHeap::new();
        for (i, s) in [0.1f32, 0.9, 0.5, 0.7, 0.2].into_iter().enumerate() {
            kept.push(Hit {
                score: s,
                offset: i as u64,
                len: 1,
            });
            if kept.len() > 3 {
                kept.pop();
            }
        }
        let order: Vec<u64> = kept.into_sorted_vec().iter().map(|h| h.offset).collect();
        assert_eq!(order, [1, 3, 2]);
    }
}
