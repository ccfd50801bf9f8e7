//! How long planning a record sync takes: 10,000 desired records against a provider holding
//! 10,000 records and their 10,000 ownership TXT records, a tenth of them changed, a tenth
//! gone, a tenth new. Target: under 100 ms (issue 4).

use criterion::{Criterion, criterion_group, criterion_main};
use dns::sync::{Endpoint, SyncConfig, plan};

fn ep(i: usize, ip: &str) -> Endpoint {
    Endpoint::new(
        &format!("host-{i}.example.com"),
        "A",
        [ip],
        &format!("httproute/apps/r{i}"),
    )
}

fn sync_plan(c: &mut Criterion) {
    const N: usize = 10_000;
    let cfg = SyncConfig {
        owner_id: "trellis".into(),
        txt_prefix: "k8s.".into(),
        domain_filters: vec!["example.com".into()],
        ..SyncConfig::default()
    };
    // Current: records 0..N, owned. Desired: 1,000..N+1,000, every tenth with a new address.
    let mut current = Vec::with_capacity(2 * N);
    for i in 0..N {
        let e = ep(i, "10.0.0.1");
        current.push(cfg.txt_record(&e));
        current.push(e);
    }
    let desired: Vec<Endpoint> = (N / 10..N + N / 10)
        .map(|i| ep(i, if i % 10 == 0 { "10.0.0.2" } else { "10.0.0.1" }))
        .collect();
    let p = plan(&desired, &current, &cfg);
    assert_eq!((p.create.len(), p.delete.len()), (N / 10, N / 10));
    assert!(!p.update_new.is_empty() && p.conflicts.is_empty());
    c.bench_function("sync_plan_10k", |b| {
        b.iter(|| plan(&desired, &current, &cfg).changes(&cfg))
    });
}

criterion_group!(benches, sync_plan);
criterion_main!(benches);
