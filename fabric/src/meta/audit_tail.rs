//! While this member leads: signs a checkpoint of the audit log's tail every
//! [`AUDIT_CHECKPOINT_MS`] when entries came since the newest checkpoint, so that recent
//! entries are under a signature within seconds, not only at every 1,024th entry.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::command::CommandV1;
use super::member::Member;

/// How often the tail of the audit log is checkpointed.
pub const AUDIT_CHECKPOINT_MS: u64 = 10_000;

/// Whether the log holds entries no checkpoint covers.
fn uncovered(member: &Member) -> bool {
    member.sm.read(|s, _| {
        let size = s.audit.size();
        size > 0 && s.audit.checkpoints().last().is_none_or(|c| c.size < size)
    })
}

/// Asks for a checkpoint of the current size now (an export does, so that everything it
/// holds is signed). Returns the log index it committed at.
pub async fn checkpoint_now(member: &Member) -> Result<u64, super::member::MetaError> {
    let command = CommandV1::AuditCheckpoint {
        time_ms: super::clock::unix_ms(),
    };
    member.write(command.into()).await.map(|(_, index)| index)
}

pub async fn run(member: Arc<Member>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(AUDIT_CHECKPOINT_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if member.leading_term().is_some()
            && uncovered(&member)
            && let Err(e) = checkpoint_now(&member).await
        {
            tracing::debug!(error = %e, "checkpoint the audit log");
        }
    }
}
