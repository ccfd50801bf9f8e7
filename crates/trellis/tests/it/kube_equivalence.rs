//! The same reconcile code driven from the directory source and from the API's watch stream
//! gives the same answers: every corpus object is served by the mock API server, read back
//! through `store::kubernetes`, and the two snapshots give identical conditions, gateway plans,
//! service plans and policy plans. The same for the example home lab.

use std::collections::BTreeMap;

use model::snapshot::kind_info;
use serde_json::Value;

use crate::fake_api::FakeApi;

fn corpus() -> std::path::PathBuf {
    crate::repo().join("testdata/home-ops/kubernetes")
}

/// What one snapshot decides, as comparable text: conditions (type, status, reason) of every
/// object, every Gateway's plan, the node's service plan and policy plan.
fn decisions(s: &model::Snapshot) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (key, st) in &s.status {
        let conds: Vec<String> = st
            .all_conditions()
            .map(|c| format!("{} {} {}", c.type_, c.status, c.reason))
            .collect();
        out.insert(format!("status {key}"), conds.join(", "));
    }
    for gw in s.gateways.values() {
        let plan = gateway::compile(s, gw.namespace(), gw.name());
        out.insert(
            format!("gateway {}/{}", gw.namespace(), gw.name()),
            without_addresses(&format!("{plan:?}")),
        );
    }
    let cfg = fabric::FabricConfig::new("node-1", BTreeMap::new());
    out.insert(
        "services".into(),
        format!("{:?}", fabric::compile(s, &cfg, None)),
    );
    let policy = fabric::policy::compile(s, "node-1", &BTreeMap::new(), &Default::default());
    out.insert(
        "policy".into(),
        format!(
            "{:?} {:?} {:?}",
            policy.identities, policy.ipcache, policy.endpoints
        ),
    );
    out
}

/// A plan's text without the memory addresses of its Lua states (`Lua(0x7f...)`).
fn without_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("Lua(0x") {
        out.push_str(&rest[..i]);
        out.push_str("Lua(_)");
        rest = &rest[i..];
        rest = &rest[rest.find(')').map_or(rest.len(), |j| j + 1)..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_corpus_read_from_the_api_decides_what_the_directory_decides() {
    equivalent(
        &corpus(),
        &store::Options {
            default_namespace: "default".into(),
            ..Default::default()
        },
        50,
    );
}

#[test]
fn the_example_read_from_the_api_decides_what_the_directory_decides() {
    let vars =
        std::fs::read_to_string(crate::repo().join("examples/home-lab/vars.yaml")).expect("vars");
    equivalent(
        &crate::repo().join("examples/home-lab"),
        &store::Options {
            vars: model::subst::parse_vars(&vars).expect("vars parse"),
            default_namespace: "default".into(),
            ..Default::default()
        },
        20,
    );
}

/// Serves `root`'s served objects (at least `at_least`) from the mock API and compares.
fn equivalent(root: &std::path::Path, opts: &store::Options, at_least: usize) {
    let docs = store::dir::documents(&[root.to_path_buf()], opts);
    // Each object as the API server would hold it: its namespace set, once per key.
    let mut collections: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut keys = std::collections::BTreeSet::new();
    let mut raws = Vec::new();
    for raw in docs.raws {
        let v = &raw.value;
        let (Some(api_version), Some(kind)) = (v["apiVersion"].as_str(), v["kind"].as_str()) else {
            continue;
        };
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let Some(info) = kind_info(group, kind) else {
            continue;
        };
        if !model::snapshot::KINDS
            .iter()
            .any(|k| k.kind == info.kind && k.group == info.group)
        {
            continue;
        }
        let mut value = raw.value.clone();
        let ns = if info.namespaced {
            let ns = value["metadata"]["namespace"]
                .as_str()
                .map(str::to_string)
                .or(raw.default_namespace.clone())
                .unwrap_or_else(|| "default".into());
            value["metadata"]["namespace"] = Value::String(ns.clone());
            ns
        } else {
            String::new()
        };
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !keys.insert((group.to_string(), kind.to_string(), ns, name)) {
            continue;
        }
        let path = store::kubernetes::Resource::new(info, version).collection_path(None);
        collections.entry(path).or_default().push(value.clone());
        raws.push(model::RawObject {
            value,
            source: raw.source,
            default_namespace: None,
        });
    }
    assert!(raws.len() > at_least, "{} served objects", raws.len());
    let from_dir = model::Snapshot::build(raws, Vec::new());
    // What the objects served decide is what the directory decides (the kinds trellis does
    // not watch, such as Cilium's BGP kinds, left out of both).
    let whole = decisions(&store::load(&[root.to_path_buf()], opts).snapshot);
    let served = decisions(&from_dir);
    let watched = |k: &String| {
        !k.starts_with("status ")
            || model::snapshot::KINDS
                .iter()
                .any(|i| k.starts_with(&format!("status {} ", i.kind)))
    };
    // A tree can define an object twice (Conflicted); an API server holds it once.
    let whole: BTreeMap<&String, &String> = whole
        .iter()
        .filter(|(k, v)| watched(k) && !v.contains("Conflicted True"))
        .collect();
    let served: BTreeMap<&String, &String> = served
        .iter()
        .filter(|(k, _)| whole.contains_key(k))
        .collect();
    assert!(
        served.len() + 5 >= decisions(&from_dir).len(),
        "few objects left out"
    );
    assert_eq!(
        whole.keys().collect::<Vec<_>>(),
        served.keys().collect::<Vec<_>>()
    );
    for (k, v) in &whole {
        if v != &served[k] {
            let at = v
                .bytes()
                .zip(served[k].bytes())
                .take_while(|(a, b)| a == b)
                .count();
            panic!(
                "{k}: the directory itself differs at {at}:\n{}\n{}",
                &v[at.saturating_sub(200)..(at + 200).min(v.len())],
                &served[k][at.saturating_sub(200)..(at + 200).min(served[k].len())]
            );
        }
    }

    let (fake, mock, handle) = FakeApi::new();
    for (path, items) in collections {
        fake.serve_collection(&path, items);
    }
    let _rt = fake.start(handle);
    let watch = store::kubernetes::watch_with(
        move || async move { Ok(kube::Client::new(mock, "default")) },
        &store::Options::default(),
        std::time::Duration::from_secs(30),
    )
    .expect("first sync");
    let from_api = watch.current();

    let (a, b) = (decisions(&from_dir), decisions(&from_api.snapshot));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (k, v) in &a {
        assert_eq!(v, &b[k], "{k} differs");
    }
    assert!(fake.unexpected().is_empty(), "{:?}", fake.unexpected());
}
