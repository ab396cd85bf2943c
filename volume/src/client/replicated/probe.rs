//! Probing the live replicas that hold unflushed writes.
//!
//! A replica whose machine restarts forgets the writes it acknowledged but had not made
//! durable; the [`Ledger`](super::ledger) notices when the replica next answers, with a new
//! power epoch. A busy
//! volume talks to every replica all the time, but an idle one may not until a reader arrives,
//! and meanwhile the replicas of a group hold different data while all count as current. So
//! the writer pings, now and then, each live replica it holds unflushed writes on: one that
//! answers with a new power epoch, or not at all, fails as a read to it would, leaves the acting set
//! and is resynced. A replica with nothing unflushed costs nothing.

use crate::client::link::Outcome;
use crate::volume::VolumeError;
use crate::wire::{Op, Request, WriteVersion};

use super::ReplicatedVolume;

impl ReplicatedVolume {
    /// Pings every live replica that holds writes acknowledged since its last flush (see the
    /// module docs); returns how many failed the ping and were reported.
    pub async fn probe_unflushed(&self) -> Result<usize, VolumeError> {
        let inner = &self.inner;
        inner.check_open()?;
        let mut failed = 0;
        for group in 0..inner.groups.len() {
            let suspects: Vec<_> = inner
                .members(group)
                .iter()
                .filter(|r| r.is_live() && r.ledger().holds_unflushed())
                .cloned()
                .collect();
            for replica in suspects {
                let ping = inner.header(Op::Ping, 0, 0, 0, WriteVersion::NONE);
                match replica.read(Request::new(ping)).await {
                    Outcome::Acked(_) | Outcome::Corrupt => {}
                    Outcome::Fenced(current) => return Err(inner.fence(current)),
                    Outcome::Failed(why) => {
                        failed += 1;
                        inner.failed(group, &replica, why);
                    }
                }
            }
        }
        Ok(failed)
    }
}
