//! Test harness shared by the workspace-level integration tests.
