//! Placement: which ordered list of disks holds a placement group. No IO, no tokio, no tonic.
