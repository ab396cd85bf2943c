//! Fabric control plane.
