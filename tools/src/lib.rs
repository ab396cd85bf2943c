//! Shared helpers of the tools binaries.

pub mod group;
