//! uring backend
