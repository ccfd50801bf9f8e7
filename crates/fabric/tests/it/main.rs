//! The fabric's pure compile on real manifest trees (the corpus and the home-lab example), and
//! properties of the allocator and the Maglev table over generated inputs; `l2`: the
//! announcer over a torn lease file, in a network namespace (root); `shared`: agents racing
//! for the assignments on a real 3-member etcd.

mod l2;
mod props;
mod shared;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use fabric::assign::{Assignments, NODE_PORT_RANGE_DEFAULT, assign};
use fabric::plan::{FabricConfig, ServicePlan, compile};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(dir: &Path) -> model::Snapshot {
    assert!(dir.is_dir(), "{} not found", dir.display());
    let load = store::load(
        &[dir.to_path_buf()],
        &store::Options {
            default_namespace: "default".into(),
            ..Default::default()
        },
    );
    assert!(
        !load.snapshot.has_errors(),
        "{:?}",
        load.snapshot.diagnostics
    );
    load.snapshot
}

/// The lab's three nodes, seen from the first.
fn cfg() -> FabricConfig {
    FabricConfig::new(
        "trellis-node-1",
        (1..=3)
            .map(|i| {
                (
                    format!("trellis-node-{i}"),
                    Ipv4Addr::new(10, 10, 30, 10 + i),
                )
            })
            .collect(),
    )
}

fn compile_tree(dir: &Path) -> (Assignments, ServicePlan) {
    let s = load(dir);
    let cidr = "10.96.0.0/12".parse().expect("cidr");
    let a = assign(&s, &Assignments::default(), cidr, NODE_PORT_RANGE_DEFAULT);
    assert!(a.problems.is_empty(), "{:?}", a.problems);
    assert_eq!(assign(&s, &a, cidr, NODE_PORT_RANGE_DEFAULT), a, "stable");
    let plan = compile(&s, &cfg(), Some(&a));
    let again = compile(&s, &cfg(), Some(&a));
    assert_eq!(plan, again, "deterministic");
    assert!(ServicePlan::diff(&plan, &again).is_empty());
    (a, plan)
}

#[test]
fn the_home_lab_example_compiles() {
    let (_, plan) = compile_tree(&repo().join("examples/home-lab"));
    let text = plan.to_string();
    // The echo pods come from a Deployment, which only the lab turns into pods.
    assert!(
        text.contains("10.96.0.50:80/TCP ClusterIP apps/echo:http -> (none: refuse)"),
        "{text}"
    );
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
}

#[test]
fn the_corpus_compiles() {
    let (_, plan) = compile_tree(&repo().join("testdata/home-ops/kubernetes"));
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let text = plan.to_string();
    // The API server's LoadBalancer (an lbipam address, externalTrafficPolicy Local) and an
    // external service whose endpoints are written as an EndpointSlice.
    for line in [
        "10.10.30.30:6443/TCP LoadBalancer kube-system/kube-api policy=Local -> (none: refuse)",
        "/TCP NodePort@trellis-node-2 database/postgres-lb:postgres -> (none: refuse)",
        "/TCP ClusterIP network/nas:https -> 10.10.30.10:9090, 192.168.1.10:9090\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
}
