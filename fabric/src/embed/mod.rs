//! Embed jobs on the nodes: what a task reads ([`records`]) and what it writes
//! ([`segment`]). The jobs' records live in the replicated state (`meta::infer`).

pub mod records;
pub mod segment;
