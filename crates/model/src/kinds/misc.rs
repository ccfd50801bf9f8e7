//! ExternalDNS's DNSEndpoint, Multus's NetworkAttachmentDefinition and KEDA's ScaledObject.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsEndpointSpec {
    #[serde(default)]
    pub endpoints: Vec<DnsRecord>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsRecord {
    pub dns_name: String,
    #[serde(default)]
    pub record_type: String,
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(rename = "recordTTL", default)]
    pub record_ttl: Option<u32>,
    #[serde(default)]
    pub set_identifier: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub provider_specific: Vec<ProviderSpecific>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderSpecific {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// A NetworkAttachmentDefinition: its `config` is a CNI network configuration in JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkAttachmentSpec {
    #[serde(default)]
    pub config: String,
}

/// The parsed `config` of a NetworkAttachmentDefinition (a CNI conf or conflist).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniConfig {
    #[serde(default)]
    pub cni_version: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// A single-plugin config has `type`; a conflist has `plugins`.
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    #[serde(default)]
    pub plugins: Vec<Value>,
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    pub scale_target_ref: ScaleTargetRef,
    #[serde(default)]
    pub polling_interval: Option<u32>,
    #[serde(default)]
    pub cooldown_period: Option<u32>,
    #[serde(default)]
    pub idle_replica_count: Option<u32>,
    #[serde(default)]
    pub min_replica_count: Option<u32>,
    #[serde(default)]
    pub max_replica_count: Option<u32>,
    #[serde(default)]
    pub fallback: Option<Fallback>,
    #[serde(default)]
    pub advanced: Option<Value>,
    #[serde(default)]
    pub triggers: Vec<Trigger>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub env_source_container_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    pub failure_threshold: u32,
    pub replicas: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
    #[serde(default)]
    pub metric_type: Option<String>,
    #[serde(default)]
    pub authentication_ref: Option<Value>,
    #[serde(default)]
    pub use_cached_metrics: Option<bool>,
}

/// trellis's own kind (`trellis.dev/v1alpha1` `DNSView`): one view of split-horizon DNS.
/// Views are tried in ascending `order`; the first whose `clients` contain the querier's
/// address answers. A view is authoritative for its `zones`: a name under them that the view
/// does not publish is NXDOMAIN there, whatever other views publish (the no-leak rule).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsViewSpec {
    #[serde(default)]
    pub order: i32,
    /// Client networks, as CIDRs (`0.0.0.0/0` and `::/0` for everyone).
    pub clients: Vec<String>,
    /// Domains the view answers for.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Gateways whose routes' hostnames the view publishes, and with which answer.
    #[serde(default)]
    pub gateways: Vec<ViewGateway>,
    /// Publish the records of DNSEndpoints that fall under the view's zones.
    #[serde(default)]
    pub dns_endpoints: bool,
    /// Also answer the cluster zone (`cluster.local`).
    #[serde(default)]
    pub cluster: bool,
    /// Also answer the records written through `trellis dns`'s webhook API (its dynamic
    /// zones). Off unless set: a record pushed by a sync client reaches only the views that
    /// opt in (and the clients no view matches).
    #[serde(default)]
    pub dynamic_records: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ViewGateway {
    pub name: String,
    pub namespace: String,
    /// `Address`: the Gateway's own address (spec.addresses or its LoadBalancer address).
    /// `Target`: its `external-dns.alpha.kubernetes.io/target` annotation, as ExternalDNS
    /// would publish (an address gives A/AAAA, a name gives a CNAME).
    #[serde(default = "default_answer")]
    pub answer: String,
}

fn default_answer() -> String {
    "Address".into()
}

/// trellis's own kind (`trellis.dev/v1alpha1` `DNSRewrite`): CoreDNS `rewrite` rules, written
/// as CoreDNS writes them, applied to every query before it is answered or forwarded.
/// Supported: `name exact FROM TO` and `name regex REGEX REPLACEMENT` (with `{1}`-style
/// groups), optionally followed by `answer auto` (on the same line or the next); the first
/// matching rule wins, as with CoreDNS's `stop`. Clients always see the name they asked for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsRewriteSpec {
    #[serde(default)]
    pub order: i32,
    pub rules: Vec<String>,
}
