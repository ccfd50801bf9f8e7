//! Policy regeneration at scale: the whole policy compile (identities, ipcache, every local
//! endpoint's entries) with 1, 100 and 10,000 CiliumNetworkPolicies over 300 pods of 100
//! label sets on 3 nodes. The target: under 1 s at 10,000.

use std::hint::black_box;
use std::net::Ipv4Addr;

mod common;

use criterion::{Criterion, criterion_group, criterion_main};

fn snapshot(policies: usize) -> model::Snapshot {
    let mut text = String::new();
    for p in 0..300 {
        text.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{p}, namespace: apps, labels: {{app: a{}}}}}\n\
             spec: {{nodeName: n{}, containers: [{{name: c, image: x}}]}}\n\
             status: {{podIP: 10.69.{}.{}}}\n---\n",
            p % 100,
            p % 3,
            p % 3,
            p / 3 + 2
        ));
    }
    for i in 0..policies {
        text.push_str(&format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: pol{i}, namespace: apps}}\n\
             spec:\n  endpointSelector: {{matchLabels: {{app: a{}}}}}\n  ingress:\n  \
             - fromEndpoints: [{{matchLabels: {{app: a{}}}}}]\n    toPorts: [{{ports: [{{port: \"{}\"}}]}}]\n---\n",
            i % 100,
            (i + 1) % 100,
            8000 + i % 1000
        ));
    }
    common::snapshot_of(&text)
}

fn bench(c: &mut Criterion) {
    let nodes = (0..3)
        .map(|i| (format!("n{i}"), Ipv4Addr::new(10, 10, 30, 11 + i)))
        .collect();
    let mut group = c.benchmark_group("policy_compile");
    group.sample_size(10);
    for n in [1usize, 100, 10_000] {
        let s = snapshot(n);
        let plan = fabric::policy::compile(&s, "n0", &nodes, &Default::default());
        assert!(plan.over_bound.is_none(), "{:?}", plan.over_bound);
        assert_eq!(plan.endpoints.len(), 100);
        group.bench_function(format!("{n}_policies"), |b| {
            b.iter(|| {
                black_box(fabric::policy::compile(
                    black_box(&s),
                    "n0",
                    &nodes,
                    &Default::default(),
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
