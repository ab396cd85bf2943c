//! The checker: what every read may return, given the writes before and around it.
//!
//! The workload never has two writes of one block in flight at once, so the writes of a
//! block form a sequence. A read that starts at `t0` and ends at `t1` may return, per block,
//! the last write acknowledged before `t0` (zeros if there is none) or any later write that
//! had started before `t1`: one in flight, or one that failed, whose data may have reached
//! some replicas. Nothing older: that would be a lost acknowledged write.
//!
//! Block content names its block and write, repeated over the block so a torn write shows:
//! 256 copies of `(block u64, write u64)`, little endian. Write id 0 is never used: zeros
//! mean "never written".

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

/// Bytes per block of the workload (the client's and the store's block).
pub const BLOCK_BYTES: u64 = 4096;

/// One write of one block, in the order the block's writes started.
#[derive(Clone, Debug)]
struct WriteRecord {
    id: u64,
    client: u32,
    started: u64,
    acked: Option<u64>,
}

/// Every write of the run and what the reads saw.
#[derive(Default)]
pub struct History {
    /// Logical time: every start and end of an operation takes the next tick.
    now: u64,
    blocks: HashMap<u64, Vec<WriteRecord>>,
    next_id: u64,
    /// Writes of a client taken over by another one, started after its takeover, that were
    /// acknowledged: must stay zero.
    pub fenced_acks: Vec<String>,
    /// Per client, the tick from which it is fenced.
    fenced_from: HashMap<u32, u64>,
    pub writes_acked: u64,
    pub reads_checked: u64,
}

impl History {
    pub fn tick(&mut self) -> u64 {
        self.now += 1;
        self.now
    }

    /// The writes of `block` so far, oldest first, for the report of a failure: `id by client
    /// (started..acknowledged)`, with `-` for one never acknowledged.
    pub fn describe(&self, block: u64) -> String {
        let writes = self
            .blocks
            .get(&block)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let text: Vec<String> = writes
            .iter()
            .map(|w| {
                let acked = w.acked.map_or("-".to_owned(), |a| a.to_string());
                format!("{} by {} ({}..{acked})", w.id, w.client, w.started)
            })
            .collect();
        text.join(", ")
    }

    /// A write by `client` of `blocks` starts; returns its id and the data to write.
    pub fn start_write(&mut self, client: u32, first: u64, blocks: u64) -> (u64, u64, Bytes) {
        self.next_id += 1;
        let id = self.next_id;
        let started = self.tick();
        let mut data = BytesMut::with_capacity((blocks * BLOCK_BYTES) as usize);
        for b in first..first + blocks {
            self.blocks.entry(b).or_default().push(WriteRecord {
                id,
                client,
                started,
                acked: None,
            });
            data.extend_from_slice(&content(b, id));
        }
        (id, started, data.freeze())
    }

    /// The write `id` of `first..first + blocks` started at `started` was acknowledged.
    pub fn ack_write(&mut self, id: u64, client: u32, started: u64, first: u64, blocks: u64) {
        let at = self.tick();
        self.writes_acked += 1;
        if self.fenced_from.get(&client).is_some_and(|&f| started > f) {
            self.fenced_acks.push(format!(
                "client {client} was taken over, yet its write {id} of block {first} (+{blocks}) was acknowledged"
            ));
        }
        for b in first..first + blocks {
            let record = self
                .blocks
                .get_mut(&b)
                .and_then(|ws| ws.iter_mut().rev().find(|w| w.id == id))
                .expect("an acknowledged write was started");
            record.acked = Some(at);
        }
    }

    /// From now on, `client` is fenced: none of its writes that start later may be acked.
    pub fn fence(&mut self, client: u32) {
        let at = self.tick();
        self.fenced_from.insert(client, at);
    }

    /// Checks what a read of `first..` that started at `t0` returned; `t1` is now.
    pub fn check_read(&mut self, first: u64, data: &[u8], t0: u64) -> Result<(), String> {
        let t1 = self.tick();
        self.reads_checked += 1;
        for (i, block) in data.chunks(BLOCK_BYTES as usize).enumerate() {
            let b = first + i as u64;
            let seen = decode(b, block)?;
            let writes = self.blocks.get(&b).map(Vec::as_slice).unwrap_or_default();
            let last_acked = writes.iter().rposition(|w| w.acked.is_some_and(|a| a < t0));
            let base = match last_acked {
                Some(i) => writes[i].id,
                None => 0,
            };
            if seen == base {
                continue;
            }
            let later = &writes[last_acked.map_or(0, |i| i + 1)..];
            if later.iter().any(|w| w.id == seen && w.started < t1) {
                continue;
            }
            return Err(format!(
                "block {b}: read (ticks {t0}..{t1}) returned write {seen}, but the last write acknowledged before it is {base} and the later ones are {:?}",
                later
                    .iter()
                    .map(|w| (w.id, w.client, w.started, w.acked))
                    .collect::<Vec<_>>()
            ));
        }
        Ok(())
    }

    /// Every block ever written, in order.
    pub fn written_blocks(&self) -> Vec<u64> {
        let mut b: Vec<u64> = self.blocks.keys().copied().collect();
        b.sort_unstable();
        b
    }
}

/// The content of block `block` as written by write `id`.
pub fn content(block: u64, id: u64) -> [u8; BLOCK_BYTES as usize] {
    let mut out = [0u8; BLOCK_BYTES as usize];
    for pair in out.chunks_mut(16) {
        pair[..8].copy_from_slice(&block.to_le_bytes());
        pair[8..].copy_from_slice(&id.to_le_bytes());
    }
    out
}

/// The write id block `block` holds (0 for zeros), or why its content is none of ours.
pub fn decode(block: u64, data: &[u8]) -> Result<u64, String> {
    if data.iter().all(|&b| b == 0) {
        return Ok(0);
    }
    let id = u64::from_le_bytes(data[8..16].try_into().expect("16 bytes"));
    if data[..] != content(block, id)[..] {
        return Err(format!(
            "block {block}: content is neither zeros nor one whole write (torn or misplaced)"
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_older_than_the_last_acknowledged_write_is_caught() {
        let mut h = History::default();
        let (id1, s1, _) = h.start_write(0, 5, 1);
        h.ack_write(id1, 0, s1, 5, 1);
        let (id2, s2, _) = h.start_write(0, 5, 1);
        h.ack_write(id2, 0, s2, 5, 1);
        let t0 = h.tick();
        assert!(h.check_read(5, &content(5, id2), t0).is_ok());
        let t0 = h.tick();
        assert!(h.check_read(5, &content(5, id1), t0).is_err());
        let t0 = h.tick();
        assert!(h.check_read(5, &[0; 4096], t0).is_err());
    }

    #[test]
    fn an_in_flight_or_failed_write_may_be_seen_and_zeros_before_any_ack() {
        let mut h = History::default();
        let t0 = h.tick();
        let (id1, _, _) = h.start_write(0, 9, 1);
        assert!(h.check_read(9, &content(9, id1), t0).is_ok());
        let t0 = h.tick();
        assert!(h.check_read(9, &[0; 4096], t0).is_ok());
        assert!(
            h.check_read(9, &content(8, id1), t0).is_err(),
            "wrong block"
        );
    }

    #[test]
    fn a_fenced_clients_later_ack_is_recorded() {
        let mut h = History::default();
        h.fence(1);
        let (id, s, _) = h.start_write(1, 0, 1);
        h.ack_write(id, 1, s, 0, 1);
        assert_eq!(h.fenced_acks.len(), 1);
    }
}
