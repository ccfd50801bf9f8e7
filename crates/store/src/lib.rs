//! Sources of manifests and the state trellis keeps.
//!
//! - [`dir`]: reads a Flux/kustomize tree into a [`model::Snapshot`].
//! - [`watch`]: re-reads the tree on change and hands out the newest good snapshot.
//! - [`lease`]: leases in the embedded state store (leader election per announced address).
//! - [`durable`]: the one way state files are written (temp file, fsync, rename, fsync dir).
//!
//! - [`kubernetes`]: the same snapshots from the API server (kube-rs watchers), status
//!   written back with server-side apply, a Lease-elected writer.
//! - [`state`]: the shared state seam (memory, etcd).

pub mod dir;
pub mod durable;
pub mod kubernetes;
pub mod lease;
pub mod state;
pub mod watch;

pub use dir::{Excluded, Load, Observed, Options, load};
