//! Arbitrary bytes through the whole pure loading pipeline: YAML parse, Flux substitution,
//! typed decoding and validation. Nothing may panic; a round trip of the parsed tree to JSON
//! and back through the parser must give the same values.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use model::snapshot::{RawObject, Snapshot};
use model::yaml::{PosIndex, parse_documents};
use model::{Source, subst};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(docs) = parse_documents(&text) else { return };
    let vars: subst::Vars = [("A".to_string(), "80".to_string())].into();
    let mut raws = Vec::new();
    for mut d in docs {
        let mut index = PosIndex::default();
        let before = d.to_json(&mut index);
        // JSON is YAML: the parsed value must survive a round trip.
        let again = parse_documents(&before.to_string()).expect("JSON re-parses as YAML");
        if let Some(first) = again.first() {
            assert_eq!(first.to_json(&mut PosIndex::default()), before);
        }
        d.map_scalars(&mut |t, _| *t = subst::substitute(t, &vars).0);
        let value = d.to_json(&mut index);
        raws.push(RawObject {
            value,
            source: Source { file: Arc::new("fuzz.yaml".into()), pos: d.pos, index: Arc::new(index) },
            default_namespace: Some("default".into()),
        });
    }
    let _ = Snapshot::build(raws, Vec::new()).has_problems();
});
