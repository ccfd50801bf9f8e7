//! Typed specs of the kinds trellis serves that the ecosystem crates do not define.
//!
//! Core kinds come from `k8s-openapi`; GatewayClass, Gateway, HTTPRoute, GRPCRoute and
//! ReferenceGrant from the `gateway-api` crate. Everything else (TLSRoute/TCPRoute/UDPRoute in
//! the shape every apiVersion accepts, the Envoy Gateway policies, the Cilium kinds,
//! DNSEndpoint, NetworkAttachmentDefinition, ScaledObject) is defined here, with the fields
//! trellis serves typed and the rest kept as JSON so they are neither lost nor warned about.

pub mod cilium;
pub mod envoy;
pub mod misc;
pub mod routes;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A label selector as Kubernetes writes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector. An empty selector matches everything.
    /// Unknown operators match nothing (validation reports them).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }

    /// Problems with the selector's operators, each with its sub-path.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, e) in self.match_expressions.iter().enumerate() {
            let ok = match e.operator.as_str() {
                "In" | "NotIn" => !e.values.is_empty(),
                "Exists" | "DoesNotExist" => e.values.is_empty(),
                _ => false,
            };
            if !ok {
                out.push((
                    format!("matchExpressions[{i}]"),
                    format!(
                        "operator {:?} with {} values is not valid (In/NotIn need values, Exists/DoesNotExist none)",
                        e.operator,
                        e.values.len()
                    ),
                ));
            }
        }
        out
    }
}
