//! Integration tests of the directory source: manifests on disk to a validated snapshot.
//!
//! `cases.rs` runs the data-driven cases in `tests/cases/`: each YAML file states, in comment
//! directives, the exact diagnostics, problems and conditions its manifests must produce.

mod cases;
mod corpus;
mod etcd_cluster;
mod fake_api;
mod kube_api;
mod state;
mod tree;
mod watch;
