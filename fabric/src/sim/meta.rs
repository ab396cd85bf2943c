//! The simulated metadata service: the real [`ClusterState::apply`] behind a seam that can be
//! slow, unavailable, or lose the answer to a command it committed.
//!
//! A call waits for the service to be up for at most [`CALL_DEADLINE_MS`] (the real client's
//! retry deadline), then fails as unavailable. A command is applied the moment it reaches the
//! service; the answer then travels back, and if the service went down meanwhile it is lost:
//! the caller sees `Unavailable` for a command that did commit, as a real client does when the
//! leader fails between commit and reply.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use super::signal::Signal;
use crate::meta::command::{
    Applied, Command, CommandError, CommandV1, FENCED_WORDS, fencing_epoch,
};
use crate::meta::state::ClusterState;
use volume::client::RemovalError;

/// How long a call waits for an unavailable service, in milliseconds: the real metadata
/// client's retry deadline.
pub const CALL_DEADLINE_MS: u64 = 30_000;
/// Most one-way latency of a call, in milliseconds.
const LATENCY_MAX_MS: u64 = 3;

/// Why a call did not return an outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaError {
    /// No answer: the service was down for the whole deadline, or the answer was lost.
    Unavailable,
    /// The state machine refused the command (it changed nothing).
    Refused(CommandError),
}

impl MetaError {
    /// What a failed removal means to the volume client, as the gateway maps a gRPC status.
    pub fn removal_error(&self, what: &str) -> RemovalError {
        match self {
            MetaError::Unavailable => RemovalError::Unavailable(format!("{what}: unavailable")),
            MetaError::Refused(CommandError::FailedPrecondition(m)) if m.contains(FENCED_WORDS) => {
                match fencing_epoch(m) {
                    Some(current) => RemovalError::Fenced { current },
                    None => RemovalError::Refused(format!("{what}: {m}")),
                }
            }
            MetaError::Refused(e) => RemovalError::Refused(format!("{what}: {e}")),
        }
    }
}

/// The metadata service of one simulation; share it as `Arc<SimMeta>`.
pub struct SimMeta {
    state: Mutex<ClusterState>,
    up: Signal<bool>,
    rng: Mutex<ChaCha8Rng>,
}

impl SimMeta {
    pub fn new(seed: u64, state: ClusterState) -> Arc<SimMeta> {
        Arc::new(SimMeta {
            state: Mutex::new(state),
            up: Signal::new(true),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        })
    }

    /// The state as applied so far.
    pub fn state(&self) -> MutexGuard<'_, ClusterState> {
        self.state.lock().expect("cluster state")
    }

    /// Makes the service available or not (no quorum, unreachable).
    pub fn set_up(&self, up: bool) {
        self.up.update(|u| *u = up);
    }

    pub fn is_up(&self) -> bool {
        self.up.with(|&u| u)
    }

    fn latency(&self) -> Duration {
        let ms = self
            .rng
            .lock()
            .expect("meta rng")
            .random_range(0..=LATENCY_MAX_MS);
        Duration::from_millis(ms)
    }

    /// Proposes `command`, as a client of the real service does.
    pub async fn apply(&self, command: CommandV1) -> Result<Applied, MetaError> {
        let latency = self.latency();
        tracing::debug!(?command, ?latency, "metadata call");
        tokio::time::sleep(latency).await;
        let deadline = Duration::from_millis(CALL_DEADLINE_MS);
        if tokio::time::timeout(deadline, self.up.wait_for(|&u| u))
            .await
            .is_err()
        {
            return Err(MetaError::Unavailable);
        }
        let outcome = self.state().apply(&Command::V1(command));
        tokio::time::sleep(self.latency()).await;
        if !self.is_up() {
            return Err(MetaError::Unavailable);
        }
        outcome.map_err(MetaError::Refused)
    }
}
