//! The CustomResourceDefinitions of trellis's own kinds (`trellis.dev`: DNSView, DNSRewrite),
//! generated from the Rust types the snapshot decodes them into, so the API server validates
//! exactly what trellis reads. `trellis crds` prints them; `deploy/kubernetes/crds.yaml` is
//! that output (a test keeps the two equal).

use model::kinds::misc::{DnsRewriteSpec, DnsViewSpec};
use schemars::JsonSchema;
use serde_json::{Value, json};

pub const GROUP: &str = "trellis.dev";
pub const VERSION: &str = "v1alpha1";

/// Every CRD, in a stable order.
pub fn definitions() -> Vec<Value> {
    vec![
        definition::<DnsViewSpec>(
            "DNSView",
            "dnsviews",
            "One view of split-horizon DNS: the clients it answers and what it publishes.",
        ),
        definition::<DnsRewriteSpec>(
            "DNSRewrite",
            "dnsrewrites",
            "CoreDNS rewrite rules applied to every query before it is answered or forwarded.",
        ),
    ]
}

/// The CRDs as one multi-document YAML stream.
pub fn yaml() -> String {
    let mut out = String::new();
    for d in definitions() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&d).unwrap_or_default());
    }
    out
}

fn definition<T: JsonSchema>(kind: &str, plural: &str, description: &str) -> Value {
    let mut settings = schemars::generate::SchemaSettings::openapi3();
    // The API server takes no `$ref`: every subschema inline, no meta-schema.
    settings.inline_subschemas = true;
    settings.meta_schema = None;
    let mut spec = settings
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    if let Some(m) = spec.as_object_mut() {
        m.remove("title");
        m.remove("$schema");
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        // The label the kustomize base and the Helm chart put on everything they ship.
        "metadata": {
            "name": format!("{plural}.{GROUP}"),
            "labels": { "app.kubernetes.io/part-of": "trellis" },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_ascii_lowercase(),
            },
            "scope": "Cluster",
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "description": description,
                    "properties": {
                        "apiVersion": { "type": "string" },
                        "kind": { "type": "string" },
                        "metadata": { "type": "object" },
                        "spec": spec,
                    },
                    "required": ["spec"],
                } },
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API server refuses a schema with references or without types (a structural
    /// schema); every node here must say its type.
    #[test]
    fn the_schemas_are_structural() {
        fn walk(v: &Value, path: &str) {
            if let Some(m) = v.as_object() {
                assert!(!m.contains_key("$ref"), "{path}: $ref");
                assert!(
                    !m.contains_key("$defs") && !m.contains_key("definitions"),
                    "{path}"
                );
                if let Some(props) = m.get("properties").and_then(Value::as_object) {
                    for (k, p) in props {
                        assert!(p.get("type").is_some(), "{path}.{k} has no type");
                        walk(p, &format!("{path}.{k}"));
                    }
                }
                if let Some(items) = m.get("items") {
                    assert!(items.get("type").is_some(), "{path}[] has no type");
                    walk(items, &format!("{path}[]"));
                }
            }
        }
        for d in definitions() {
            let schema = &d["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            walk(
                schema,
                d["spec"]["names"]["kind"].as_str().unwrap_or_default(),
            );
        }
        let view = &definitions()[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"];
        assert_eq!(view["required"], json!(["clients"]));
    }
}
