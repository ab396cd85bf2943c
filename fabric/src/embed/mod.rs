//! Embed jobs on the nodes: what a task reads ([`records`]) and what it writes
//! ([`segment`]). The jobs' records live in the replicated state (`meta::infer`).

pub mod embedders;
pub mod leader;
pub mod models;
pub mod read;
pub mod records;
pub mod search;
pub mod segment;
pub mod threads;
pub mod worker;
pub mod writer;
