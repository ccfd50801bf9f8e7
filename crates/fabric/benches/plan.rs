//! The service plan compile at scale: N ClusterIP + NodePort Services, each selecting 3 pods
//! spread over 3 nodes (the datapath benchmark installs 10,000 services).

use std::hint::black_box;
use std::net::Ipv4Addr;

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use fabric::plan::{FabricConfig, compile};

fn snapshot(services: usize) -> model::Snapshot {
    let mut text = String::new();
    for i in 0..services {
        let ty = if i % 10 == 0 { "NodePort" } else { "ClusterIP" };
        text.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: apps}}\n\
             spec: {{type: {ty}, clusterIP: 10.96.{}.{}, selector: {{app: s{i}}}, \
             ports: [{{port: 80, targetPort: 8080, nodePort: {}}}]}}\n---\n",
            i / 250,
            i % 250 + 2,
            30000 + i % 2700,
        ));
        for p in 0..3 {
            text.push_str(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: s{i}-{p}, namespace: apps, labels: {{app: s{i}}}}}\n\
                 spec: {{nodeName: n{p}, containers: [{{name: c, image: x}}]}}\n\
                 status: {{podIP: 10.69.{p}.{}}}\n---\n",
                i % 250 + 2
            ));
        }
    }
    common::snapshot_of(&text)
}

fn bench(c: &mut Criterion) {
    let cfg = FabricConfig::new(
        "n0",
        (0..3)
            .map(|i| (format!("n{i}"), Ipv4Addr::new(10, 10, 30, 11 + i)))
            .collect(),
    );
    for n in [100, 1000, 10_000] {
        let s = snapshot(n);
        c.bench_function(&format!("compile services={n}"), |b| {
            b.iter(|| compile(black_box(&s), &cfg, None))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
