//! What a `fabricctl` subcommand kept in this crate prints: one record, or rows under columns.

use serde_json::Value;

pub enum Reply {
    One(Value),
    List(Vec<Value>, &'static [&'static str]),
}
