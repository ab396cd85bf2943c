//! The IO scheduler of one disk: every read and write a node makes on a disk waits its turn
//! here, tagged with the class of work it belongs to and, for client IO, its volume.
//!
//! - [`mclock`]: the decision, a pure state machine (reservation, weight, limit per queue);
//! - [`disk`]: the scheduler a replica server runs per disk: turns handed out in that order,
//!   a bounded number at a time;
//! - [`governor`]: the recovery limit that keeps clients' p99 latency within a target;
//! - [`class`]: the classes of work (client, recovery, scrub, inference), their default specs,
//!   and how a request says which one it belongs to.

pub mod class;
pub mod disk;
pub mod governor;
pub mod mclock;
