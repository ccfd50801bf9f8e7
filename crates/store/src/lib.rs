//! Sources of manifests and the state trellis keeps.
//!
//! - [`dir`]: reads a Flux/kustomize tree into a [`model::Snapshot`].
//! - [`watch`]: re-reads the tree on change and hands out the newest good snapshot.
//! - [`lease`]: leases in the embedded state store (leader election per announced address).
//! - [`durable`]: the one way state files are written (temp file, fsync, rename, fsync dir).
//!
//! The Kubernetes source (kube-rs watchers) and the state store arrive with the issues that
//! need them; they will produce the same `RawObject`s so that everything downstream is shared.

pub mod dir;
pub mod durable;
pub mod lease;
pub mod state;
pub mod watch;

pub use dir::{Excluded, Load, Options, load};
