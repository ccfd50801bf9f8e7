//! trellis's model of the user's manifests: typed objects, their references resolved, every
//! object carrying Kubernetes-style conditions.
//!
//! - [`yaml`]: a YAML reader that keeps line and column for every field.
//! - [`subst`]: Flux post-build variable substitution.
//! - [`kinds`]: typed specs for the kinds the ecosystem crates lack.
//! - [`snapshot`]: the kind table and [`Snapshot`], the typed result of one load.
//! - [`validate`]: reference resolution and conditions (Gateway API status semantics).
//! - [`resolution`]: what validation decided, typed, for the components to read.
//! - [`endpoints`]: the endpoints behind a Service port, shared by every component.
//!
//! No I/O happens here beyond what a caller hands in: sources (a directory, the Kubernetes
//! API) live in the `store` crate and produce [`RawObject`]s.

pub mod endpoints;
pub mod kinds;
pub mod multus;
pub mod object;
pub mod resolution;
pub mod snapshot;
pub mod subst;
pub mod validate;
pub mod yaml;

pub use object::{Condition, ObjectKey, ObjectStatus, Source, Status};
pub use resolution::Resolution;
pub use snapshot::{Diagnostic, Object, RawObject, Severity, Snapshot};

// Re-exported so that components use the same versions of the ecosystem types.
pub use gateway_api;
pub use k8s_openapi;
