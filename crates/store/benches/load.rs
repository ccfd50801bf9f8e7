//! How long loading the corpus takes: read every file, parse, substitute, type, validate.
//! Target: under 50 ms for `../shared/corpus/home-ops/kubernetes`.

use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/home-ops/kubernetes")
}

fn load(c: &mut Criterion) {
    let opts = store::Options {
        default_namespace: "default".into(),
        ..Default::default()
    };
    let roots = vec![corpus()];
    let check = store::load(&roots, &opts);
    assert!(check.snapshot.entries.len() > 80, "corpus loaded");
    c.bench_function("load_corpus", |b| b.iter(|| store::load(&roots, &opts)));
    let example = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/home-lab")];
    c.bench_function("load_example", |b| b.iter(|| store::load(&example, &opts)));
}

criterion_group!(benches, load);
criterion_main!(benches);
