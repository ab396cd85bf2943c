//! The extent store.
