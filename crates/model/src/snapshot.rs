//! The snapshot: every served object of one load, typed, with its status.
//!
//! [`Snapshot::build`] takes the raw documents a source produced (JSON values with their
//! positions and default namespace), decodes each into its kind's type, and runs validation
//! ([`crate::validate`]) so every object carries conditions. The kind table below is the one
//! place that says which kinds and apiVersions trellis serves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::kinds::cilium::{
    CidrGroupSpec, L2AnnouncementPolicySpec, LoadBalancerIpPoolSpec,
    NetworkPolicyDoc as CiliumPolicyDoc,
};
use crate::kinds::envoy::{
    BackendSpec, BackendTrafficPolicySpec, ClientTrafficPolicySpec, EnvoyExtensionPolicySpec,
    EnvoyProxySpec, SecurityPolicySpec,
};
use crate::kinds::misc::{
    DnsEndpointSpec, DnsRewriteSpec, DnsViewSpec, NetworkAttachmentSpec, ScaledObjectSpec,
};
use crate::kinds::routes::StreamRouteSpec;
use crate::object::{Condition, Meta, ObjectKey, ObjectStatus, Source, Status, cond};
use crate::yaml::Pos;
use gateway_api::gatewayclasses::GatewayClassSpec;
use gateway_api::gateways::GatewaySpec;
use gateway_api::grpcroutes::GrpcRouteSpec;
use gateway_api::httproutes::HttpRouteSpec;
use gateway_api::referencegrants::ReferenceGrantSpec;

/// One loaded object: metadata, typed content and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Object<S> {
    pub api_version: String,
    pub meta: Meta,
    /// For custom resources the `spec`; for core kinds the whole k8s-openapi object.
    pub spec: S,
    pub source: Source,
}

impl<S> Object<S> {
    pub fn name(&self) -> &str {
        &self.meta.name
    }
    /// The object's namespace ("" for cluster-scoped kinds).
    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or("")
    }
}

/// Objects of one kind by (namespace, name).
pub type Coll<S> = BTreeMap<(String, String), Object<S>>;

/// Looks up an object by namespace and name.
pub fn get<'a, S>(coll: &'a Coll<S>, namespace: &str, name: &str) -> Option<&'a Object<S>> {
    coll.get(&(namespace.to_string(), name.to_string()))
}

/// A raw document from a source, before typing.
#[derive(Clone, Debug)]
pub struct RawObject {
    pub value: serde_json::Value,
    pub source: Source,
    /// The namespace the source infers for the document when it names none.
    pub default_namespace: Option<String>,
}

impl RawObject {
    /// Every document of one YAML text, as a source hands them over (tests, benchmarks,
    /// generated manifests): positions kept, `default_namespace` for documents naming none.
    pub fn from_yaml(
        text: &str,
        file: &str,
        default_namespace: &str,
    ) -> Result<Vec<RawObject>, crate::yaml::SyntaxError> {
        let file = std::sync::Arc::new(std::path::PathBuf::from(file));
        Ok(crate::yaml::parse_documents(text)?
            .into_iter()
            .map(|d| {
                let mut index = crate::yaml::PosIndex::default();
                let value = d.to_json(&mut index);
                RawObject {
                    value,
                    source: Source {
                        file: file.clone(),
                        pos: d.pos,
                        index: std::sync::Arc::new(index),
                    },
                    default_namespace: Some(default_namespace.to_string()),
                }
            })
            .collect())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    /// The input cannot be read (bad YAML, unreadable file): exit code 2.
    Error,
}

/// A message about the input at a place in a file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    #[serde(serialize_with = "crate::object::serialize_path")]
    pub file: Arc<PathBuf>,
    pub pos: Pos,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectKey>,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{}:{}: {sev}: ", self.file.display(), self.pos)?;
        if let Some(o) = &self.object {
            write!(f, "{o}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// What the snapshot knows of every object, valid or not: for listing and status output.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub api_version: String,
    pub source: Source,
    /// A digest of the document's content, to tell identical redefinitions from conflicting ones.
    pub digest: u64,
}

/// Whether trellis acts on a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    Served,
    /// Parsed and reported as not supported, with the reason.
    Unsupported(&'static str),
}

/// A kind trellis reads.
#[derive(Clone, Copy, Debug)]
pub struct KindInfo {
    pub group: &'static str,
    pub kind: &'static str,
    /// Served versions, newest first.
    pub versions: &'static [&'static str],
    pub namespaced: bool,
    pub support: Support,
}

/// How a kind's document becomes its type: the whole document (k8s-openapi types, Cilium
/// policies), or only its `spec` (custom resources).
enum Shape {
    Whole,
    Spec,
}

macro_rules! kinds {
    ($( $field:ident : $ty:ty = $group:literal / $kind:literal [$($ver:literal),+] $scope:ident $shape:ident; )*) => {
        /// Every served object of one load, by kind.
        #[derive(Clone, Debug, Default)]
        pub struct Snapshot {
            $( pub $field: Coll<$ty>, )*
            /// Kinds trellis parses but does not act on (Cilium BGP), by key.
            pub unsupported: BTreeMap<ObjectKey, serde_json::Value>,
            /// Every object seen, valid or not.
            pub entries: BTreeMap<ObjectKey, Entry>,
            /// Conditions of every object.
            pub status: BTreeMap<ObjectKey, ObjectStatus>,
            /// What validation decided, typed: what components read instead of `status`.
            pub resolution: crate::resolution::Resolution,
            /// Documents of kinds trellis does not serve, counted by `group/Kind`.
            pub skipped: BTreeMap<String, usize>,
            pub diagnostics: Vec<Diagnostic>,
        }

        /// The kinds trellis reads, in the order `trellis check` lists them.
        pub const KINDS: &[KindInfo] = &[
            $( KindInfo {
                group: $group, kind: $kind, versions: &[$($ver),+],
                namespaced: kinds!(@ns $scope), support: Support::Served,
            }, )*
        ];

        impl Snapshot {
            fn decode_served(&mut self, info: &KindInfo, key: &ObjectKey, doc: Doc) -> Result<(), Vec<(String, String)>> {
                match (info.group, info.kind) {
                    $( ($group, $kind) => {
                        let spec: $ty = decode_typed(&doc, Shape::$shape, &mut self.diagnostics, key)?;
                        self.$field.insert(
                            (key.namespace.clone(), key.name.clone()),
                            Object { api_version: doc.api_version, meta: doc.meta, spec, source: doc.source },
                        );
                        Ok(())
                    } )*
                    _ => Err(vec![(String::new(), format!("no decoder for {}", info.kind))]),
                }
            }
        }
    };
    (@ns namespaced) => { true };
    (@ns cluster) => { false };
}

const BGP_KINDS: &[&str] = &[
    "CiliumBGPClusterConfig",
    "CiliumBGPPeerConfig",
    "CiliumBGPAdvertisement",
    "CiliumBGPNodeConfig",
    "CiliumBGPNodeConfigOverride",
    "CiliumBGPPeeringPolicy",
];
const BGP_REASON: &str = "the BGP control plane is not supported by trellis; LoadBalancer addresses are announced with L2 (ARP) announcements (CiliumL2AnnouncementPolicy)";

kinds! {
    namespaces: Namespace = "" / "Namespace" ["v1"] cluster Whole;
    services: Service = "" / "Service" ["v1"] namespaced Whole;
    endpoints: Endpoints = "" / "Endpoints" ["v1"] namespaced Whole;
    endpoint_slices: EndpointSlice = "discovery.k8s.io" / "EndpointSlice" ["v1"] namespaced Whole;
    pods: Pod = "" / "Pod" ["v1"] namespaced Whole;
    nodes: Node = "" / "Node" ["v1"] cluster Whole;
    secrets: Secret = "" / "Secret" ["v1"] namespaced Whole;
    config_maps: ConfigMap = "" / "ConfigMap" ["v1"] namespaced Whole;
    deployments: Deployment = "apps" / "Deployment" ["v1"] namespaced Whole;
    network_policies: NetworkPolicy = "networking.k8s.io" / "NetworkPolicy" ["v1"] namespaced Whole;
    gateway_classes: GatewayClassSpec = "gateway.networking.k8s.io" / "GatewayClass" ["v1", "v1beta1"] cluster Spec;
    gateways: GatewaySpec = "gateway.networking.k8s.io" / "Gateway" ["v1", "v1beta1"] namespaced Spec;
    http_routes: HttpRouteSpec = "gateway.networking.k8s.io" / "HTTPRoute" ["v1", "v1beta1"] namespaced Spec;
    grpc_routes: GrpcRouteSpec = "gateway.networking.k8s.io" / "GRPCRoute" ["v1", "v1alpha2"] namespaced Spec;
    tls_routes: StreamRouteSpec = "gateway.networking.k8s.io" / "TLSRoute" ["v1", "v1alpha3", "v1alpha2"] namespaced Spec;
    tcp_routes: StreamRouteSpec = "gateway.networking.k8s.io" / "TCPRoute" ["v1alpha2"] namespaced Spec;
    udp_routes: StreamRouteSpec = "gateway.networking.k8s.io" / "UDPRoute" ["v1alpha2"] namespaced Spec;
    reference_grants: ReferenceGrantSpec = "gateway.networking.k8s.io" / "ReferenceGrant" ["v1", "v1beta1", "v1alpha2"] namespaced Spec;
    envoy_proxies: EnvoyProxySpec = "gateway.envoyproxy.io" / "EnvoyProxy" ["v1alpha1"] namespaced Spec;
    backend_traffic_policies: BackendTrafficPolicySpec = "gateway.envoyproxy.io" / "BackendTrafficPolicy" ["v1alpha1"] namespaced Spec;
    client_traffic_policies: ClientTrafficPolicySpec = "gateway.envoyproxy.io" / "ClientTrafficPolicy" ["v1alpha1"] namespaced Spec;
    envoy_extension_policies: EnvoyExtensionPolicySpec = "gateway.envoyproxy.io" / "EnvoyExtensionPolicy" ["v1alpha1"] namespaced Spec;
    security_policies: SecurityPolicySpec = "gateway.envoyproxy.io" / "SecurityPolicy" ["v1alpha1"] namespaced Spec;
    envoy_backends: BackendSpec = "gateway.envoyproxy.io" / "Backend" ["v1alpha1"] namespaced Spec;
    cilium_network_policies: CiliumPolicyDoc = "cilium.io" / "CiliumNetworkPolicy" ["v2"] namespaced Whole;
    cilium_clusterwide_network_policies: CiliumPolicyDoc = "cilium.io" / "CiliumClusterwideNetworkPolicy" ["v2"] cluster Whole;
    cidr_groups: CidrGroupSpec = "cilium.io" / "CiliumCIDRGroup" ["v2", "v2alpha1"] cluster Spec;
    lb_ip_pools: LoadBalancerIpPoolSpec = "cilium.io" / "CiliumLoadBalancerIPPool" ["v2", "v2alpha1"] cluster Spec;
    l2_announcement_policies: L2AnnouncementPolicySpec = "cilium.io" / "CiliumL2AnnouncementPolicy" ["v2alpha1"] cluster Spec;
    dns_endpoints: DnsEndpointSpec = "externaldns.k8s.io" / "DNSEndpoint" ["v1alpha1"] namespaced Spec;
    network_attachments: NetworkAttachmentSpec = "k8s.cni.cncf.io" / "NetworkAttachmentDefinition" ["v1"] namespaced Spec;
    scaled_objects: ScaledObjectSpec = "keda.sh" / "ScaledObject" ["v1alpha1"] namespaced Spec;
    dns_views: DnsViewSpec = "trellis.dev" / "DNSView" ["v1alpha1"] cluster Spec;
    dns_rewrites: DnsRewriteSpec = "trellis.dev" / "DNSRewrite" ["v1alpha1"] cluster Spec;
}

/// Looks a kind up in the table, BGP kinds included.
pub fn kind_info(group: &str, kind: &str) -> Option<KindInfo> {
    if let Some(k) = KINDS.iter().find(|k| k.group == group && k.kind == kind) {
        return Some(*k);
    }
    if group == "cilium.io" && BGP_KINDS.contains(&kind) {
        let kind = BGP_KINDS.iter().copied().find(|k| *k == kind)?;
        return Some(KindInfo {
            group: "cilium.io",
            kind,
            versions: &["v2", "v2alpha1"],
            namespaced: false,
            support: Support::Unsupported(BGP_REASON),
        });
    }
    None
}

/// A document with its identity read, ready for typed decoding.
struct Doc {
    api_version: String,
    meta: Meta,
    value: serde_json::Value,
    source: Source,
}

fn decode_typed<T: DeserializeOwned>(
    doc: &Doc,
    shape: Shape,
    diagnostics: &mut Vec<Diagnostic>,
    key: &ObjectKey,
) -> Result<T, Vec<(String, String)>> {
    let (value, prefix) = match shape {
        // Status is kept: a Pod's podIP or a Service's load-balancer address in manifests
        // (or from the API server) is what the cluster has.
        Shape::Whole => (doc.value.clone(), ""),
        Shape::Spec => (
            doc.value
                .get("spec")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({})),
            "spec",
        ),
    };
    let mut unknown = Vec::new();
    let result: Result<T, _> = {
        let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
        let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
        serde_path_to_error::deserialize(de)
    };
    for path in unknown {
        let full = join_path(prefix, &path);
        // Fields every object has, that typed specs do not model.
        if matches!(full.as_str(), "apiVersion" | "kind" | "metadata")
            || full.starts_with("metadata.")
        {
            continue;
        }
        diagnostics.push(Diagnostic {
            severity: Severity::Warning,
            file: doc.source.file.clone(),
            pos: doc.source.index.find(&full).unwrap_or(doc.source.pos),
            object: Some(key.clone()),
            message: unknown_field_message(&full),
        });
    }
    result.map_err(|e| {
        let path = join_path(prefix, &e.path().to_string());
        let path = if path == "." { String::new() } else { path };
        vec![(path, e.into_inner().to_string())]
    })
}

/// The warning for a field the typed spec does not model is `UNKNOWN_FIELD.0`, the path,
/// `UNKNOWN_FIELD.1`; [`Snapshot::unknown_fields`] reads the path back.
const UNKNOWN_FIELD: (&str, &str) = ("unknown field `", "` (ignored)");

fn unknown_field_message(path: &str) -> String {
    format!("{}{path}{}", UNKNOWN_FIELD.0, UNKNOWN_FIELD.1)
}

fn join_path(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty() || path == ".") {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => {
            let p = ignored_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

impl Snapshot {
    /// Types every raw document and validates the result. Never fails: bad documents become
    /// diagnostics and objects with `Accepted=False`.
    pub fn build(raws: Vec<RawObject>, diagnostics: Vec<Diagnostic>) -> Snapshot {
        let mut s = Snapshot {
            diagnostics,
            ..Snapshot::default()
        };
        for raw in raws {
            s.add(raw);
        }
        crate::validate::run(&mut s);
        s
    }

    fn add(&mut self, raw: RawObject) {
        let RawObject {
            value,
            source,
            default_namespace,
        } = raw;
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let kind = value
            .get("kind")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let (api_version, kind) = match (api_version, kind) {
            (Some(a), Some(k)) => (a, k),
            (None, None) => {
                // Not a Kubernetes object (a config file beside manifests).
                *self
                    .skipped
                    .entry("(not a Kubernetes object)".into())
                    .or_default() += 1;
                return;
            }
            (a, k) => {
                let missing = if a.is_none() { "apiVersion" } else { "kind" };
                self.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: source.file.clone(),
                    pos: source.pos,
                    object: None,
                    message: format!(
                        "document has {} but no `{missing}` (kind {:?})",
                        if a.is_none() {
                            "a kind"
                        } else {
                            "an apiVersion"
                        },
                        k.as_deref().unwrap_or("?")
                    ),
                });
                return;
            }
        };
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.clone()),
        };
        let Some(info) = kind_info(&group, &kind) else {
            let label = if group.is_empty() {
                kind
            } else {
                format!("{group}/{kind}")
            };
            *self.skipped.entry(label).or_default() += 1;
            return;
        };
        let meta_value = value
            .get("metadata")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let meta: Meta = serde_json::from_value::<Option<Meta>>(meta_value)
            .ok()
            .flatten()
            .unwrap_or_default();
        let namespace = if info.namespaced {
            meta.namespace
                .clone()
                .or(default_namespace)
                .unwrap_or_else(|| "default".to_string())
        } else {
            String::new()
        };
        let key = ObjectKey::new(info.group, info.kind, &namespace, &meta.name);
        let mut meta = meta;
        meta.namespace = info.namespaced.then(|| namespace.clone());

        let mut problems: Vec<(String, String)> = Vec::new();
        if meta.name.is_empty() {
            problems.push(("metadata.name".into(), "metadata.name is required".into()));
        }
        if !info.versions.contains(&version.as_str()) {
            problems.push((
                "apiVersion".into(),
                format!(
                    "apiVersion {api_version} is not served for {}; use {} (served: {})",
                    info.kind,
                    full_api_version(info.group, info.versions[0]),
                    info.versions.join(", ")
                ),
            ));
        }
        let digest = content_digest(&value);
        if let Some(prev) = self.entries.get(&key) {
            let here = format!("{}:{}", source.file.display(), source.pos);
            let there = format!("{}:{}", prev.source.file.display(), prev.source.pos);
            // The first definition is served. An identical second one is harmless (Flux applies
            // the same object twice); a different one means one of them silently loses.
            let same = prev.digest == digest;
            self.diagnostics.push(Diagnostic {
                severity: Severity::Warning,
                file: source.file.clone(),
                pos: source.pos,
                object: Some(key.clone()),
                message: if same {
                    format!("defined again with the same content (first at {there})")
                } else {
                    format!("defined again with different content (first at {there}); the first is served")
                },
            });
            if !same {
                let st = self.status.entry(key.clone()).or_default();
                st.set(Condition::new(
                    cond::CONFLICTED,
                    Status::True,
                    cond::reason::DUPLICATE,
                    format!("defined twice with different content: {there} (served) and {here}"),
                ));
            }
            return;
        }
        self.entries.insert(
            key.clone(),
            Entry {
                api_version: api_version.clone(),
                source: source.clone(),
                digest,
            },
        );
        let doc = Doc {
            api_version,
            meta,
            value,
            source,
        };

        if problems.is_empty() {
            let result = match info.support {
                Support::Served => self.decode_served(&info, &key, doc),
                Support::Unsupported(reason) => {
                    self.unsupported.insert(key.clone(), doc.value);
                    let st = self.status.entry(key.clone()).or_default();
                    st.set(Condition::new(
                        cond::ACCEPTED,
                        Status::False,
                        cond::reason::UNSUPPORTED,
                        reason,
                    ));
                    return;
                }
            };
            if let Err(p) = result {
                problems = p;
            }
        }
        if !problems.is_empty() {
            let st = self.status.entry(key.clone()).or_default();
            let message = problems
                .iter()
                .map(|(path, msg)| {
                    if path.is_empty() {
                        msg.clone()
                    } else {
                        format!("{path}: {msg}")
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            st.set(Condition::new(
                cond::ACCEPTED,
                Status::False,
                cond::reason::INVALID,
                message,
            ));
            for (path, msg) in problems {
                st.problem(path, msg);
            }
        }
    }

    /// The status of an object (empty if it has none).
    pub fn status_of(&self, key: &ObjectKey) -> Option<&ObjectStatus> {
        self.status.get(key)
    }

    /// The paths of the fields of an object that its typed spec does not model (each also a
    /// warning). Kinds where an ignored field could weaken security (SecurityPolicy) refuse
    /// the object instead of ignoring them.
    pub fn unknown_fields<'a>(&'a self, key: &'a ObjectKey) -> impl Iterator<Item = &'a str> {
        self.diagnostics.iter().filter_map(move |d| {
            if d.object.as_ref() != Some(key) {
                return None;
            }
            d.message
                .strip_prefix(UNKNOWN_FIELD.0)
                .and_then(|m| m.strip_suffix(UNKNOWN_FIELD.1))
        })
    }

    /// Whether any document could not be read at all (exit code 2 in `trellis check`).
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// Whether any object is not Accepted, has unresolved references or conflicts.
    pub fn has_problems(&self) -> bool {
        self.status.values().any(ObjectStatus::has_problem)
    }

    /// Labels of a namespace (with the `kubernetes.io/metadata.name` label Kubernetes adds to
    /// every namespace, also when the namespace is not among the manifests).
    pub fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        let mut labels = get(&self.namespaces, "", name)
            .and_then(|n| n.spec.metadata.labels.clone())
            .unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), name.to_string());
        labels
    }
}

fn content_digest(value: &serde_json::Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut h);
    h.finish()
}

/// `group/version`, or `version` for the core group.
pub fn full_api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}
