//! What the fabric benchmarks share.

/// A snapshot of generated manifests, parsed one document at a time (the YAML reader bounds
/// the nodes of one file).
pub fn snapshot_of(text: &str) -> model::Snapshot {
    let raws = text
        .split_inclusive("---\n")
        .flat_map(|doc| {
            model::RawObject::from_yaml(doc, "gen.yaml", "apps").expect("generated YAML parses")
        })
        .collect();
    model::Snapshot::build(raws, Vec::new())
}
