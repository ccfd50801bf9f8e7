//! Cilium's kinds (cilium.io): network policies, LB-IPAM pools and L2 announcement policies.
//! The BGP kinds are loaded as JSON and reported as not supported.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::LabelSelector;

/// Spec of CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy: one rule in `spec`, more in
/// `specs`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyDoc {
    #[serde(default)]
    pub spec: Option<PolicyRule>,
    #[serde(default)]
    pub specs: Vec<PolicyRule>,
    /// Written by Cilium; kept as it is.
    #[serde(default)]
    pub status: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    #[serde(default)]
    pub endpoint_selector: Option<LabelSelector>,
    #[serde(default)]
    pub node_selector: Option<LabelSelector>,
    #[serde(default)]
    pub ingress: Vec<IngressRule>,
    #[serde(default)]
    pub ingress_deny: Vec<IngressRule>,
    #[serde(default)]
    pub egress: Vec<EgressRule>,
    #[serde(default)]
    pub egress_deny: Vec<EgressRule>,
    #[serde(default)]
    pub enable_default_deny: Option<DefaultDeny>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: Vec<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DefaultDeny {
    #[serde(default)]
    pub ingress: Option<bool>,
    #[serde(default)]
    pub egress: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    #[serde(default)]
    pub from_endpoints: Vec<LabelSelector>,
    #[serde(default)]
    pub from_requires: Vec<LabelSelector>,
    #[serde(rename = "fromCIDR", default)]
    pub from_cidr: Vec<String>,
    #[serde(rename = "fromCIDRSet", default)]
    pub from_cidr_set: Vec<CidrRule>,
    #[serde(default)]
    pub from_entities: Vec<String>,
    #[serde(default)]
    pub from_nodes: Vec<LabelSelector>,
    #[serde(default)]
    pub from_groups: Vec<Value>,
    #[serde(default)]
    pub to_ports: Vec<PortRule>,
    #[serde(default)]
    pub icmps: Vec<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    #[serde(default)]
    pub to_endpoints: Vec<LabelSelector>,
    #[serde(default)]
    pub to_requires: Vec<LabelSelector>,
    #[serde(rename = "toCIDR", default)]
    pub to_cidr: Vec<String>,
    #[serde(rename = "toCIDRSet", default)]
    pub to_cidr_set: Vec<CidrRule>,
    #[serde(default)]
    pub to_entities: Vec<String>,
    #[serde(rename = "toFQDNs", default)]
    pub to_fqdns: Vec<FqdnSelector>,
    #[serde(default)]
    pub to_services: Vec<Value>,
    #[serde(default)]
    pub to_nodes: Vec<LabelSelector>,
    #[serde(default)]
    pub to_groups: Vec<Value>,
    #[serde(default)]
    pub to_ports: Vec<PortRule>,
    #[serde(default)]
    pub icmps: Vec<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CidrRule {
    #[serde(default)]
    pub cidr: Option<String>,
    #[serde(default)]
    pub cidr_group_ref: Option<String>,
    #[serde(default)]
    pub cidr_group_selector: Option<LabelSelector>,
    #[serde(default)]
    pub except: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FqdnSelector {
    #[serde(default)]
    pub match_name: Option<String>,
    #[serde(default)]
    pub match_pattern: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRule {
    #[serde(default)]
    pub ports: Vec<PortProtocol>,
    #[serde(default)]
    pub rules: Option<Value>,
    #[serde(default)]
    pub server_names: Vec<String>,
    #[serde(default)]
    pub terminating_tls: Option<Value>,
    #[serde(default)]
    pub originating_tls: Option<Value>,
    #[serde(default)]
    pub listener: Option<Value>,
}

/// Spec of a CiliumCIDRGroup: a named set of CIDRs that policies reference with
/// `cidrGroupRef` (and select with `cidrGroupSelector` by the group's labels).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CidrGroupSpec {
    #[serde(rename = "externalCIDRs", default)]
    pub external_cidrs: Vec<String>,
}

impl PortRule {
    /// The names `rules.dns` lets a pod ask, when `rules` holds DNS rules only and each has
    /// exactly one of `matchName` and `matchPattern` (Cilium's DNS proxy answers REFUSED for
    /// other names); `None` when there are no rules, or rules of another kind.
    pub fn dns_names(&self) -> Option<Vec<FqdnSelector>> {
        let obj = self.rules.as_ref()?.as_object()?;
        let list = obj.get("dns")?.as_array()?;
        if obj.len() != 1 {
            return None;
        }
        list.iter()
            .map(|r| {
                let sel: FqdnSelector = serde_json::from_value(r.clone()).ok()?;
                let o = r.as_object()?;
                (o.len() == 1 && (sel.match_name.is_some() != sel.match_pattern.is_some()))
                    .then_some(sel)
            })
            .collect()
    }

    /// The parts of this port rule trellis does not enforce, as (field, what): L7 rules (DNS
    /// rules are enforced on egress allows, through trellis dns), TLS interception, server
    /// names, listeners. An allow rule with any of them allows nothing (fail closed).
    pub fn unenforced(&self, egress_allow: bool) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if self.rules.is_some() && !(egress_allow && self.dns_names().is_some()) {
            out.push((
                "rules",
                "L7 rules (HTTP, Kafka; DNS rules other than egress allows of matchName or \
                 matchPattern)",
            ));
        }
        if !self.server_names.is_empty() {
            out.push(("serverNames", "TLS server names"));
        }
        if self.terminating_tls.is_some() || self.originating_tls.is_some() {
            out.push(("terminatingTLS", "TLS interception"));
        }
        if self.listener.is_some() {
            out.push(("listener", "Envoy listeners"));
        }
        out
    }
}

impl IngressRule {
    /// Peer selectors trellis does not enforce, as (field, what).
    pub fn unenforced_peers(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if !self.from_requires.is_empty() {
            out.push(("fromRequires", "fromRequires"));
        }
        if !self.from_nodes.is_empty() {
            out.push(("fromNodes", "node selectors"));
        }
        if !self.from_groups.is_empty() {
            out.push(("fromGroups", "cloud groups"));
        }
        out
    }
}

/// A `toServices` entry: a Service by name (`k8sService`) or Services by their labels
/// (`k8sServiceSelector`), in the namespace it names (`None`: the policy's).
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceRef {
    Name {
        name: String,
        namespace: Option<String>,
    },
    Selector {
        selector: super::LabelSelector,
        namespace: Option<String>,
    },
}

/// The pod selector of a Service `toServices` can name: its `spec.selector`, when it has one
/// that is not empty (a Service without one has backends that are not pods known by labels).
pub fn service_selector(
    svc: &crate::Object<k8s_openapi::api::core::v1::Service>,
) -> Option<&std::collections::BTreeMap<String, String>> {
    svc.spec
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

/// The `toServices` entries, `None` when one is neither form (or both).
pub fn service_refs(list: &[Value]) -> Option<Vec<ServiceRef>> {
    list.iter()
        .map(|v| {
            let o = v.as_object()?;
            let ns = |x: &Value| {
                x.get("namespace")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            match (o.get("k8sService"), o.get("k8sServiceSelector")) {
                (Some(s), None) => Some(ServiceRef::Name {
                    name: s.get("serviceName")?.as_str()?.to_string(),
                    namespace: ns(s),
                }),
                (None, Some(s)) => Some(ServiceRef::Selector {
                    selector: serde_json::from_value(s.get("selector")?.clone()).ok()?,
                    namespace: ns(s),
                }),
                _ => None,
            }
        })
        .collect()
}

impl EgressRule {
    /// Peer selectors trellis does not enforce, as (field, what). `toFQDNs` is enforced in
    /// allow rules (through trellis dns), not in deny rules.
    pub fn unenforced_peers(&self, deny: bool) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if deny && !self.to_fqdns.is_empty() {
            out.push(("toFQDNs", "toFQDNs in a deny rule"));
        }
        if !self.to_services.is_empty() && service_refs(&self.to_services).is_none() {
            out.push((
                "toServices",
                "toServices entries other than k8sService or k8sServiceSelector",
            ));
        }
        if !self.to_requires.is_empty() {
            out.push(("toRequires", "toRequires"));
        }
        if !self.to_nodes.is_empty() {
            out.push(("toNodes", "node selectors"));
        }
        if !self.to_groups.is_empty() {
            out.push(("toGroups", "cloud groups"));
        }
        out
    }
}

/// Cilium writes ports as strings ("443"), also names ("https"); numbers are accepted too.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortProtocol {
    pub port: Value,
    #[serde(default)]
    pub end_port: Option<i32>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIpPoolSpec {
    #[serde(default)]
    pub blocks: Vec<IpBlock>,
    /// "Yes" or "No" (a string in Cilium's schema).
    #[serde(rename = "allowFirstLastIPs", default)]
    pub allow_first_last_ips: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub service_selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IpBlock {
    #[serde(default)]
    pub cidr: Option<String>,
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub stop: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L2AnnouncementPolicySpec {
    #[serde(default)]
    pub service_selector: Option<LabelSelector>,
    #[serde(default)]
    pub node_selector: Option<LabelSelector>,
    /// Regular expressions over interface names.
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(rename = "externalIPs", default)]
    pub external_ips: bool,
    #[serde(rename = "loadBalancerIPs", default)]
    pub load_balancer_ips: bool,
}

/// An ICMP type as Cilium writes it: a number, or its name.
pub fn icmp_type(v: &Value) -> Option<u8> {
    if let Some(n) = v.as_u64().or_else(|| v.as_str()?.parse().ok()) {
        return u8::try_from(n).ok();
    }
    Some(match v.as_str()? {
        "EchoReply" => 0,
        "DestinationUnreachable" => 3,
        "Redirect" => 5,
        "Echo" | "EchoRequest" => 8,
        "RouterAdvertisement" => 9,
        "RouterSelection" => 10,
        "TimeExceeded" => 11,
        "ParameterProblem" => 12,
        "Timestamp" => 13,
        "TimestampReply" => 14,
        "Photuris" => 40,
        "ExtendedEchoRequest" => 42,
        "ExtendedEchoReply" => 43,
        _ => return None,
    })
}
