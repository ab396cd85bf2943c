//! portable backend
