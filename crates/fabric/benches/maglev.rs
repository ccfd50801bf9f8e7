//! Maglev table builds at Cilium's default size and at the largest size near Katran's, with
//! 100 backends (issue 5's target: M = 16381, 100 backends, well under 5 ms).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fabric::maglev::{MaglevBackend, SEED_DEFAULT, maglev_table};

fn backends(n: usize) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| MaglevBackend::new(format!("10.69.{}.{}:8080/TCP", i % 3, i + 2)))
        .collect()
}

fn build(c: &mut Criterion) {
    let b = backends(100);
    for m in [16381, 65521] {
        c.bench_function(&format!("maglev_table m={m} backends=100"), |bench| {
            bench.iter(|| maglev_table(black_box(&b), m, SEED_DEFAULT).expect("valid"))
        });
    }
}

criterion_group!(benches, build);
criterion_main!(benches);
