//! Inference jobs in the replicated state (issue: inference near the data).
//!
//! A job embeds the records of one volume with a registered model and writes the vectors to
//! another. The state machine splits the input into one task per extent ([`state`]), the
//! leader gives each task to a node holding a current replica of it ([`plan`], pure), the node
//! reads its own replica, and the job's output writer records where each task's vectors went
//! ([`command::InferCommand::Complete`]), refusing input read from a replica that went stale
//! meanwhile. [`model`] holds the records.

pub mod command;
pub mod model;
pub mod plan;
mod state;
#[cfg(test)]
mod state_tests;
