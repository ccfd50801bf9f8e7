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
