//! Arbitrary bytes, arbitrary YAML trees and mutated real manifests go through the whole
//! pipeline (parse, substitute, type, validate) without a panic.

use std::sync::Arc;

use model::snapshot::{RawObject, Snapshot};
use model::yaml::{PosIndex, parse_documents};
use model::{Source, subst};
use proptest::prelude::*;

/// The whole pure pipeline on one text.
fn pipeline(text: &str) {
    let Ok(docs) = parse_documents(text) else {
        return;
    };
    let vars: subst::Vars = [("A".to_string(), "80".to_string())].into();
    let mut raws = Vec::new();
    for mut d in docs {
        d.map_scalars(&mut |t, _| *t = subst::substitute(t, &vars).0);
        let mut index = PosIndex::default();
        let value = d.to_json(&mut index);
        raws.push(RawObject {
            value,
            source: Source {
                file: Arc::new("prop.yaml".into()),
                pos: d.pos,
                index: Arc::new(index),
            },
            default_namespace: Some("default".into()),
        });
    }
    let s = Snapshot::build(raws, Vec::new());
    let _ = s.has_problems();
}

/// Kinds and field names that reach deep into validation.
fn words() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("apiVersion".to_string()),
        Just("kind".to_string()),
        Just("metadata".to_string()),
        Just("name".to_string()),
        Just("namespace".to_string()),
        Just("spec".to_string()),
        Just("listeners".to_string()),
        Just("parentRefs".to_string()),
        Just("rules".to_string()),
        Just("backendRefs".to_string()),
        Just("hostnames".to_string()),
        Just("port".to_string()),
        Just("protocol".to_string()),
        Just("gatewayClassName".to_string()),
        Just("targetRefs".to_string()),
        Just("endpoints".to_string()),
        Just("config".to_string()),
        Just("Gateway".to_string()),
        Just("HTTPRoute".to_string()),
        Just("gateway.networking.k8s.io/v1".to_string()),
        Just("HTTPS".to_string()),
        Just("${A}".to_string()),
        "[a-z*.]{0,12}".prop_map(|s| s),
        any::<i32>().prop_map(|n| n.to_string()),
    ]
}

fn yaml_tree() -> impl Strategy<Value = serde_json::Value> {
    let leaf = words().prop_map(serde_json::Value::String);
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(words(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const CORPUS_SAMPLE: &str = include_str!("../../../../examples/home-lab/network/gateway.yaml");

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        pipeline(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_yaml_never_panics(tree in yaml_tree(), kind in words(), api in words()) {
        let mut doc = serde_json::json!({"apiVersion": api, "kind": kind});
        if let (Some(d), serde_json::Value::Object(extra)) = (doc.as_object_mut(), tree) {
            d.extend(extra);
        }
        pipeline(&serde_json::to_string(&doc).expect("json"));
    }

    #[test]
    fn mutated_manifests_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = CORPUS_SAMPLE.as_bytes().to_vec();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        pipeline(&String::from_utf8_lossy(&bytes));
    }
}
