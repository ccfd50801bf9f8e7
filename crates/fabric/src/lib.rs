//! The node agent's pure core: Services and their endpoints compiled to what the datapath
//! programs, and the Maglev tables behind external traffic.
//!
//! - [`maglev`]: Maglev lookup tables (Cilium's table sizes, a seeded stable hash).
//! - [`plan`]: `compile(&Snapshot, &FabricConfig, assignments) -> ServicePlan`, a sorted map of
//!   frontends (address, port, protocol) to backends, and the diff between two plans.
//! - [`assign`]: cluster IPs and node ports for Services whose manifests leave them out, kept
//!   stable across calls.
//! - [`lbipam`]: LoadBalancer addresses from CiliumLoadBalancerIPPools (Cilium's LB-IPAM),
//!   computed inside [`assign()`] and kept in the same [`Assignments`].
//!
//! - [`shared`]: the assignments kept in the state backend, updated by compare-and-swap by
//!   every agent with the same function.
//! - [`lower`]: the plans lowered to the eBPF maps' contents (`datapath::Desired`), with
//!   frontend and backend ids kept stable across syncs and agent restarts.
//!
//! Nothing here touches the kernel: the plan is plain data (`Ipv4Addr`, `u16`, protocol
//! numbers, `u32` table entries), and reading and writing the maps is `datapath`'s job.

pub mod agent;
pub mod assign;
pub mod l2;
pub mod lbipam;
pub mod lower;
pub mod maglev;
pub mod plan;
pub mod policy;
pub mod shared;

pub use assign::{Assignments, ServiceAssignment, assign};
pub use maglev::{MaglevBackend, MaglevError, maglev_table};
pub use plan::{
    Backend, FabricConfig, Frontend, FrontendKey, FrontendKind, PlanDiff, Problem, Scope,
    ServicePlan, compile,
};

/// Snapshots from YAML text for the unit tests, read the way `store` reads a file.
#[cfg(test)]
pub(crate) mod testing {
    use model::snapshot::{RawObject, Snapshot};

    pub fn snapshot(text: &str) -> Snapshot {
        let raws = RawObject::from_yaml(text, "fixture.yaml", "apps").expect("fixture YAML parses");
        let s = Snapshot::build(raws, Vec::new());
        assert!(!s.has_errors(), "fixture loads: {:?}", s.diagnostics);
        s
    }
}
