//! Compiling one Gateway of a snapshot into what the proxy serves: per listener port, a
//! router of host groups, each an ordered list of route matches with their actions.
//!
//! Pure: no I/O, no clocks. The proxy swaps a whole new [`Plan`] in when the snapshot changes.
//!
//! Matching follows the Gateway API and Envoy Gateway: the request's host selects the most
//! specific host group (exact name, else the longest wildcard, else the catch-all), with no
//! fallback to a less specific group (as an Envoy virtual host); within the group, matches are
//! ordered by the spec's precedence: Exact path, then RegularExpression (Envoy Gateway's
//! choice; the spec leaves it open), then the longest PathPrefix; then a method match; then
//! more header matches; then more query matches; then route age (source order here) and
//! namespace/name; then rule and match order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use gateway_api::httproutes::{
    HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirectScheme as Scheme,
    HttpRouteRulesFiltersType as F, HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType as HT,
    HttpRouteRulesMatchesPathType as PT, HttpRouteRulesMatchesQueryParamsType as QT,
};
use model::ObjectKey;
use model::endpoints::{Endpoint, service_endpoints};
use model::resolution::PolicyTarget;
use model::snapshot::{Object, Snapshot, get};
use model::validate::{GATEWAY_GROUP, gateway_address, hostname_intersection, parse_duration};

use crate::tls::{self, Cert, CertStore, ClientTls, ListenerCerts};
use model::kinds::envoy::BackendTrafficPolicySpec;
use model::kinds::routes::BackendRef;
use model::object::same_shape;

pub use crate::backend::{Backend, Keepalive, Retry, Upstream, idempotent, now_ms};
pub use crate::headers::HeaderSource;
pub use crate::limits::DRAIN_TIMEOUT_DEFAULT;
use crate::lua::LuaFilter;

/// Everything one Gateway serves.
#[derive(Debug)]
pub struct Plan {
    pub gateway: ObjectKey,
    /// The address the Gateway asks for (spec.addresses or the LB-IPAM annotation).
    pub address: Option<IpAddr>,
    /// What each listener port serves.
    pub ports: BTreeMap<u16, Listen>,
    /// UDP listener ports (UDPRoute backends). Apart from `ports`: a Gateway may have a TCP
    /// and a UDP listener on the same port number.
    pub udp_ports: BTreeMap<u16, Arc<StreamPort>>,
    /// Listeners trellis does not serve (TLS with mode Terminate, unknown protocols), with
    /// the reason.
    pub unserved: Vec<(String, u16, String)>,
    /// Policies that could not be compiled (a Lua script that does not load), with why.
    pub problems: Vec<(ObjectKey, String)>,
    /// How long a drain may take: the EnvoyProxy's `shutdown.drainTimeout` (from the Gateway's
    /// infrastructure parametersRef, else its GatewayClass's), else [`DRAIN_TIMEOUT_DEFAULT`].
    pub drain_timeout: Duration,
    /// Keep-alive probing of accepted client connections (ClientTrafficPolicy `tcpKeepalive`).
    pub client_keepalive: Option<Keepalive>,
    /// ClientTrafficPolicy `http2.onInvalidMessage`: whether a malformed HTTP/2 request closes
    /// its connection (`TerminateConnection`, Envoy Gateway's default) rather than only its
    /// stream (`TerminateStream`).
    pub http2_terminate_on_invalid: bool,
}

/// Backends with their weights.
pub type Weighted = Vec<(u32, Arc<Backend>)>;

/// What one listener port serves.
#[derive(Clone, Debug)]
pub enum Listen {
    /// Plain HTTP (HTTP/1.1 and HTTP/2 with prior knowledge).
    Http(Arc<Router>),
    /// TLS: passthrough by SNI to TLSRoute backends, else terminated and routed as HTTPS.
    Tls(Arc<TlsPort>),
    /// Plain TCP to a TCPRoute's backends.
    Tcp(Arc<StreamPort>),
}

impl Listen {
    /// The HTTP router of the port, if it serves HTTP.
    pub fn router(&self) -> Option<&Arc<Router>> {
        match self {
            Listen::Http(r) => Some(r),
            Listen::Tls(t) => Some(&t.router),
            Listen::Tcp(_) => None,
        }
    }
}

#[derive(Debug)]
pub struct TlsPort {
    /// Routes of the HTTPS listeners of the port.
    pub router: Arc<Router>,
    /// Termination settings; `None` when the port only passes TLS through.
    pub config: Option<Arc<rustls::ServerConfig>>,
    /// TLSRoute backends by SNI.
    pub passthrough: HostTable<Vec<(u32, Arc<Backend>)>>,
    /// QUIC settings when the port also serves HTTP/3 on UDP (ClientTrafficPolicy `http3`).
    pub http3: Option<quinn::ServerConfig>,
}

/// The backends of a TCP or UDP listener port: the first attached route's.
#[derive(Debug, Default)]
pub struct StreamPort {
    pub backends: Vec<(u32, Arc<Backend>)>,
}

/// Values by hostname: exact names, wildcard suffixes, and a catch-all.
#[derive(Debug)]
pub struct HostTable<T> {
    pub exact: BTreeMap<String, T>,
    pub wildcard: BTreeMap<String, T>,
    pub any: Option<T>,
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        HostTable {
            exact: BTreeMap::new(),
            wildcard: BTreeMap::new(),
            any: None,
        }
    }
}

impl<T> HostTable<T> {
    /// The value for a name: exact, else the longest wildcard, else the catch-all.
    pub fn get(&self, host: &str) -> Option<&T> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(v) = self.wildcard.get(rest) {
                return Some(v);
            }
        }
        self.any.as_ref()
    }

    fn entry(&mut self, host: Option<&str>) -> &mut T
    where
        T: Default,
    {
        match host {
            None => self.any.get_or_insert_with(T::default),
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => self.wildcard.entry(suffix.to_string()).or_default(),
                None => self.exact.entry(h.to_string()).or_default(),
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_none()
    }
}

/// The routing table of one listener port.
#[derive(Debug, Default)]
pub struct Router {
    /// The listener port as the Gateway declares it (redirects use it).
    pub port: u16,
    /// "http" or "https": the scheme clients used.
    pub scheme: &'static str,
    /// How to find the client's address (ClientTrafficPolicy `clientIPDetection`).
    pub client_ip: Option<Arc<ClientIp>>,
    /// Exact hostnames.
    pub exact: BTreeMap<String, Vec<Entry>>,
    /// Wildcard suffixes (`example.com` for `*.example.com`).
    pub wildcard: BTreeMap<String, Vec<Entry>>,
    /// Routes without a hostname on a listener without a hostname.
    pub any: Vec<Entry>,
    /// The `alt-svc` that HTTP/1 and HTTP/2 answers carry when the port also serves HTTP/3.
    pub alt_svc: Option<http::HeaderValue>,
}

/// Precedence of a match, smaller first: path kind (exact, regex, prefix), longer path,
/// method given, more header matches, more query matches, route order, rule, match.
type Rank = (
    u8,
    Reverse<usize>,
    u8,
    Reverse<usize>,
    Reverse<usize>,
    usize,
    usize,
    usize,
);

/// One match of one rule of one route.
#[derive(Debug)]
pub struct Entry {
    pub path: PathMatch,
    pub method: Option<String>,
    pub headers: Vec<(http::HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
    pub action: Arc<Action>,
    /// Precedence key: smaller sorts first.
    rank: Rank,
}

#[derive(Debug)]
pub enum PathMatch {
    Exact(String),
    /// A prefix with segment semantics: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    Regex(regex::Regex),
}

#[derive(Debug)]
pub enum ValueMatch {
    Exact(String),
    Regex(regex::Regex),
}

impl ValueMatch {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(x) => x == v,
            ValueMatch::Regex(r) => r.is_match(v),
        }
    }
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => {
                if p == "/" {
                    return true;
                }
                let p = p.trim_end_matches('/');
                path == p || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// What to do with a request a rule matched.
#[derive(Debug, Default)]
pub struct Action {
    /// `namespace/name` of the route and the rule index, for logs and metrics.
    pub route: String,
    pub rule: usize,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<Arc<Backend>>,
    pub backends: Vec<(u32, Arc<Backend>)>,
    /// The rule has backendRefs and none is usable: answer 500 (the spec's rule).
    pub all_invalid: bool,
    pub timeout_request: Option<Duration>,
    pub timeout_backend: Option<Duration>,
    /// The path prefix the rule matched, for ReplacePrefixMatch.
    pub matched_prefix: Option<String>,
    /// Retries from the BackendTrafficPolicy of the route (or of its Gateway).
    pub retry: Option<Retry>,
    /// Speak HTTP/2 (prior knowledge) to the backends: GRPCRoute.
    pub h2_upstream: bool,
    /// What the SecurityPolicy of the route (else of its Gateway) requires: checked before
    /// anything else; a policy that cannot be enforced refuses every request (500).
    pub security: Option<Arc<crate::auth::Security>>,
    /// Lua filters (EnvoyExtensionPolicy of the route, else of its Gateway), in order.
    pub lua: Vec<Arc<LuaFilter>>,
    /// Response encodings offered, in the policy's order of preference.
    pub compress: Vec<crate::compress::Encoding>,
    /// This route's request counters, fetched from the metrics on first use.
    pub counters: std::sync::OnceLock<crate::metrics::RouteCounters>,
}

#[derive(Debug, Default)]
pub struct HeaderEdits {
    pub set: Vec<(http::HeaderName, String)>,
    pub add: Vec<(http::HeaderName, String)>,
    pub remove: Vec<http::HeaderName>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: u16,
}

#[derive(Debug, Clone)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathRewrite>,
}

#[derive(Debug, Clone)]
pub enum PathRewrite {
    Full(String),
    Prefix(String),
}

/// Why a Gateway cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("gateway {0} not found in the manifests")]
    NotFound(String),
    #[error("gateway {0} is not accepted: {1}")]
    NotAccepted(String, String),
}

/// Compiles Gateway `namespace/name` of a snapshot.
pub fn compile(s: &Snapshot, namespace: &str, name: &str) -> Result<Plan, CompileError> {
    let gw = get(&s.gateways, namespace, name)
        .ok_or_else(|| CompileError::NotFound(format!("{namespace}/{name}")))?;
    let key = ObjectKey::new(GATEWAY_GROUP, "Gateway", namespace, name);
    let listeners = s
        .resolution
        .gateway(&key)
        .map_err(|why| CompileError::NotAccepted(format!("{namespace}/{name}"), why))?;
    let usable: BTreeSet<&str> = listeners.usable.iter().map(String::as_str).collect();
    let address = gateway_address(gw).and_then(|a| a.parse().ok());
    let mut plan = Plan {
        gateway: key.clone(),
        address,
        ports: BTreeMap::new(),
        udp_ports: BTreeMap::new(),
        unserved: Vec::new(),
        problems: Vec::new(),
        drain_timeout: drain_timeout(s, gw),
        client_keepalive: None,
        http2_terminate_on_invalid: true,
    };

    // Listener ports by family.
    let mut routers: BTreeMap<u16, Router> = BTreeMap::new();
    let mut tls_ports: BTreeMap<u16, (Vec<ListenerCerts>, HostTable<Weighted>)> = BTreeMap::new();
    let mut tcp_ports: BTreeMap<u16, StreamPort> = BTreeMap::new();
    let mut udp_ports: BTreeMap<u16, StreamPort> = BTreeMap::new();
    // A ClientTrafficPolicy validation refused (client certificates trellis does not verify,
    // path normalisation it does not do...) keeps its Gateway's listeners from being served,
    // rather than serving them without what it asks for (fail closed).
    let client_refused = |listener: &str| {
        let chain = [
            PolicyTarget::section(key.clone(), listener),
            PolicyTarget::whole(key.clone()),
        ];
        let pkey = s.resolution.applying("ClientTrafficPolicy", &chain)?;
        let why = s.resolution.refused(pkey)?;
        Some(format!(
            "its ClientTrafficPolicy {} is refused ({why}): the listener is not served until \
             the policy is fixed or removed",
            pkey.ns_name()
        ))
    };
    // The listeners set up below: routes attach through these only.
    let mut served: BTreeSet<&str> = BTreeSet::new();
    // Every usable listener by port and kind (HTTP or HTTPS; TLS passthrough), served or not:
    // a request belongs to the most specific listener whose hostname matches it.
    let mut http_listeners: BTreeMap<u16, Vec<(&str, Option<String>)>> = BTreeMap::new();
    let mut passthrough_listeners: BTreeMap<u16, Vec<(&str, Option<String>)>> = BTreeMap::new();
    let mut named: BTreeSet<&str> = BTreeSet::new();
    for l in &gw.spec.listeners {
        let Ok(port) = u16::try_from(l.port) else {
            continue;
        };
        // Only listeners validation accepted and found no conflict for; of two with one name,
        // the first (validation refuses the later one, and routes attach by name).
        if !usable.contains(l.name.as_str()) || !named.insert(l.name.as_str()) {
            continue;
        }
        let passthrough = l.tls.as_ref().and_then(|t| t.mode.clone())
            == Some(gateway_api::gateways::GatewayListenersTlsMode::Passthrough);
        let kind = match (l.protocol.as_str(), passthrough) {
            ("HTTP" | "HTTPS", _) => Some(&mut http_listeners),
            ("TLS", true) => Some(&mut passthrough_listeners),
            _ => None,
        };
        if let Some(by_port) = kind {
            let hostname = l.hostname.as_ref().map(|h| h.to_ascii_lowercase());
            by_port
                .entry(port)
                .or_default()
                .push((l.name.as_str(), hostname));
        }
        if let Some(why) = client_refused(&l.name) {
            plan.unserved.push((l.name.clone(), port, why));
            continue;
        }
        match (l.protocol.as_str(), passthrough) {
            ("HTTP", _) => {
                routers.entry(port).or_insert_with(|| Router {
                    port,
                    scheme: "http",
                    ..Router::default()
                });
                served.insert(l.name.as_str());
            }
            ("HTTPS", _) => {
                routers.entry(port).or_insert_with(|| Router {
                    port,
                    scheme: "https",
                    ..Router::default()
                });
                // Certificates validation did not resolve (not there, not valid, or in
                // another namespace without a ReferenceGrant) are never loaded.
                let certs = match listeners.unresolved.get(&l.name) {
                    Some(why) => Err(why.clone()),
                    None => listener_certs(s, gw, l),
                };
                match certs {
                    Ok(certs) => {
                        tls_ports.entry(port).or_default().0.push(ListenerCerts {
                            hostname: l.hostname.clone(),
                            certs,
                        });
                        served.insert(l.name.as_str());
                    }
                    Err(why) => {
                        tls_ports.entry(port).or_default();
                        plan.unserved.push((l.name.clone(), port, why));
                    }
                }
            }
            ("TLS", true) => {
                tls_ports.entry(port).or_default();
                served.insert(l.name.as_str());
            }
            ("TCP", _) => {
                tcp_ports.entry(port).or_default();
                served.insert(l.name.as_str());
            }
            ("UDP", _) => {
                udp_ports.entry(port).or_default();
                served.insert(l.name.as_str());
            }
            (other, _) => {
                let extra = if other == "TLS" {
                    " with mode Terminate"
                } else {
                    ""
                };
                plan.unserved.push((
                    l.name.clone(),
                    port,
                    format!("protocol {other}{extra} is not served yet"),
                ));
            }
        }
    }

    let lua = lua_filters(s, &mut plan.problems);
    let auth = crate::auth::security_policies(
        s,
        &|ns, b| resolve(s, "SecurityPolicy", ns, b),
        &mut plan.problems,
    );
    // GRPCRoutes are HTTPRoutes whose matches are on `/service/method` and whose backends
    // speak HTTP/2.
    let grpc: Vec<Object<gateway_api::httproutes::HttpRouteSpec>> =
        s.grpc_routes.values().map(grpc_as_http).collect();
    let routes = s
        .http_routes
        .values()
        .map(|r| ("HTTPRoute", r))
        .chain(grpc.iter().map(|r| ("GRPCRoute", r)));
    let mut order = 0usize;
    for (kind, route) in routes {
        order += 1;
        for l in attached_listeners(s, gw, kind, route.namespace(), route.name(), &served) {
            let Ok(port) = u16::try_from(l.port) else {
                continue;
            };
            let Some(router) = routers.get_mut(&port) else {
                continue;
            };
            let mut hosts = effective_hostnames(
                route.spec.hostnames.as_deref().unwrap_or_default(),
                l.hostname.as_deref(),
            );
            // A name a more specific listener on the port matches is that listener's.
            let on_port = http_listeners
                .get(&port)
                .map(Vec::as_slice)
                .unwrap_or_default();
            hosts.retain(|h| most_specific_listener(on_port, h.as_deref()) == Some(&l.name));
            let rkey = ObjectKey::new(GATEWAY_GROUP, kind, route.namespace(), route.name());
            // Each rule's policies: the most specific target that has one (GEP-713).
            let policies = |rule: Option<&str>| {
                let chain = policy_chain(&rkey, rule, &key, &l.name);
                Policies {
                    kind,
                    backend: backend_policy(s, &chain),
                    lua: first_in(&lua, &chain).cloned().unwrap_or_default(),
                    security: first_in(&auth, &chain).cloned(),
                }
            };
            add_route(s, router, route, &hosts, order, &policies);
        }
    }
    // Routes a SecurityPolicy or an EnvoyExtensionPolicy targets, with the policy: on an L4
    // route their connections are refused.
    let key_of_policy = |kind: &str, filter_name: &str| {
        // A script is named `ns/name[i]`.
        let ns_name = filter_name.split('[').next().unwrap_or(filter_name);
        let (ns, name) = ns_name.split_once('/').unwrap_or(("", ns_name));
        ObjectKey::new(model::validate::ENVOY_GROUP, kind, ns, name)
    };
    let guarded: BTreeMap<PolicyTarget, ObjectKey> = auth
        .iter()
        .map(|(t, sec)| (t.clone(), key_of_policy("SecurityPolicy", &sec.policy)))
        .chain(lua.iter().filter_map(|(t, filters)| {
            let f = filters.first()?;
            Some((t.clone(), key_of_policy("EnvoyExtensionPolicy", &f.name)))
        }))
        .collect();
    for route in s.tls_routes.values() {
        for l in attached_listeners(s, gw, "TLSRoute", route.namespace(), route.name(), &served) {
            let Ok(port) = u16::try_from(l.port) else {
                continue;
            };
            let Some((_, table)) = tls_ports.get_mut(&port) else {
                continue;
            };
            let at = L4At {
                gateway: &key,
                listener: &l.name,
                kind: "TLSRoute",
            };
            let backends = stream_backends(s, &at, route, &guarded, &mut plan.problems);
            let on_port = passthrough_listeners
                .get(&port)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for h in effective_hostnames(&route.spec.hostnames, l.hostname.as_deref()) {
                if most_specific_listener(on_port, h.as_deref()) != Some(&l.name) {
                    continue;
                }
                let slot = table.entry(h.as_deref());
                if slot.is_empty() {
                    *slot = backends.clone();
                }
            }
        }
    }
    for (kind, routes, ports) in [
        ("TCPRoute", &s.tcp_routes, &mut tcp_ports),
        ("UDPRoute", &s.udp_routes, &mut udp_ports),
    ] {
        for route in routes.values() {
            for l in attached_listeners(s, gw, kind, route.namespace(), route.name(), &served) {
                let Ok(port) = u16::try_from(l.port) else {
                    continue;
                };
                if let Some(t) = ports.get_mut(&port)
                    && t.backends.is_empty()
                {
                    let at = L4At {
                        gateway: &key,
                        listener: &l.name,
                        kind,
                    };
                    t.backends = stream_backends(s, &at, route, &guarded, &mut plan.problems);
                }
            }
        }
    }

    let client_tls = client_tls(s, &key);
    plan.http2_terminate_on_invalid = gateway_client_policy(s, &key)
        .and_then(|p| p.spec.http2.as_ref()?.on_invalid_message.as_deref())
        != Some("TerminateStream");
    plan.client_keepalive = gateway_client_policy(s, &key)
        .and_then(|p| p.spec.tcp_keepalive.as_ref())
        .map(Keepalive::from_policy);
    let client_ip = client_ip(s, &key).map(Arc::new);
    let http3 = http3_policy(s, &key);
    // Each HTTP listener's own name keeps the requests it matches (listener isolation): with
    // no route of its own for them, they are answered 404, not taken by a less specific
    // listener's routes (its policies are not theirs, and it may not be served). A TLS
    // passthrough listener's name does not: as in Envoy Gateway, a name no TLSRoute claims
    // is terminated by the port's HTTPS listeners.
    for (port, on_port) in &http_listeners {
        if let Some(r) = routers.get_mut(port) {
            for (_, h) in on_port.iter().filter(|(_, h)| h.is_some()) {
                r.group_mut(h.as_deref());
            }
        }
    }
    for (port, mut r) in routers {
        r.client_ip = client_ip.clone();
        for list in r.exact.values_mut().chain(r.wildcard.values_mut()) {
            list.sort_by_key(|e| e.rank);
        }
        r.any.sort_by_key(|e| e.rank);
        match tls_ports.remove(&port) {
            Some((certs, passthrough)) => {
                let config = if certs.is_empty() {
                    None
                } else {
                    match tls::server_config(CertStore { listeners: certs }, &client_tls) {
                        Ok(c) => Some(Arc::new(c)),
                        Err(e) => {
                            plan.unserved
                                .push((String::new(), port, format!("TLS settings: {e}")));
                            None
                        }
                    }
                };
                // HTTP/3 on the port's UDP side when the ClientTrafficPolicy asks for it and
                // the port terminates TLS (QUIC carries its own TLS 1.3 handshake).
                let quic = match (&http3, &config) {
                    (Some(policy), Some(c)) => match tls::quic_server_config(c, &client_tls) {
                        Ok(q) => Some(q),
                        // TLS capped at 1.2: validation's Supported=False says so; the policy
                        // is not refused for it (`trellis check` turns problems into refusals).
                        Err(_) if client_tls.max_version == "1.2" => None,
                        Err(e) => {
                            plan.problems.push((
                                policy.clone(),
                                format!("spec.http3: not served on port {port}: {e}"),
                            ));
                            None
                        }
                    },
                    _ => None,
                };
                if quic.is_some() {
                    r.alt_svc = Some(alt_svc(port));
                }
                plan.ports.insert(
                    port,
                    Listen::Tls(Arc::new(TlsPort {
                        router: Arc::new(r),
                        config,
                        passthrough,
                        http3: quic,
                    })),
                );
            }
            None => {
                plan.ports.insert(port, Listen::Http(Arc::new(r)));
            }
        }
    }
    for (port, (_, passthrough)) in tls_ports {
        let router = Arc::new(Router {
            port,
            scheme: "https",
            ..Router::default()
        });
        plan.ports.insert(
            port,
            Listen::Tls(Arc::new(TlsPort {
                router,
                config: None,
                passthrough,
                http3: None,
            })),
        );
    }
    for (port, t) in tcp_ports {
        plan.ports.insert(port, Listen::Tcp(Arc::new(t)));
    }
    plan.udp_ports = udp_ports
        .into_iter()
        .map(|(port, t)| (port, Arc::new(t)))
        .collect();
    Ok(plan)
}

/// The listeners of Gateway `gw` that accepted route `kind ns/name`, of those `served`.
fn attached_listeners<'a>(
    s: &Snapshot,
    gw: &'a Object<gateway_api::gateways::GatewaySpec>,
    kind: &str,
    ns: &str,
    name: &str,
    served: &BTreeSet<&str>,
) -> Vec<&'a gateway_api::gateways::GatewayListeners> {
    let rkey = ObjectKey::new(GATEWAY_GROUP, kind, ns, name);
    let gkey = ObjectKey::new(GATEWAY_GROUP, "Gateway", gw.namespace(), gw.name());
    s.resolution
        .attached(&rkey, &gkey)
        .iter()
        .filter(|n| served.contains(n.as_str()))
        .filter_map(|n| gw.spec.listeners.iter().find(|l| &l.name == n))
        .collect()
}

/// The policy of `kind` (in `coll`) that applies where `chain` says (most specific target
/// first): the one validation gave the first target that has one.
fn owning<'a, S>(
    s: &Snapshot,
    coll: &'a model::snapshot::Coll<S>,
    kind: &str,
    chain: &[PolicyTarget],
) -> Option<&'a Object<S>> {
    let k = s.resolution.applying(kind, chain)?;
    get(coll, &k.namespace, &k.name)
}

/// The ClientTrafficPolicy of Gateway `gw` as a whole (client settings are per port, so one
/// on a single listener is refused by validation, and that listener is not served).
fn gateway_client_policy<'a>(
    s: &'a Snapshot,
    gw: &ObjectKey,
) -> Option<&'a Object<model::kinds::envoy::ClientTrafficPolicySpec>> {
    owning(
        s,
        &s.client_traffic_policies,
        "ClientTrafficPolicy",
        &[PolicyTarget::whole(gw.clone())],
    )
}

/// Where a route rule's policies may come from, most specific first (GEP-713): the rule
/// (when named), the route, the listener it attached through, the Gateway.
fn policy_chain(
    route: &ObjectKey,
    rule: Option<&str>,
    gateway: &ObjectKey,
    listener: &str,
) -> Vec<PolicyTarget> {
    rule.map(|r| PolicyTarget::section(route.clone(), r))
        .into_iter()
        .chain([
            PolicyTarget::whole(route.clone()),
            PolicyTarget::section(gateway.clone(), listener),
            PolicyTarget::whole(gateway.clone()),
        ])
        .collect()
}

/// The value of the first target of `chain` that `map` has.
fn first_in<'m, V>(map: &'m BTreeMap<PolicyTarget, V>, chain: &[PolicyTarget]) -> Option<&'m V> {
    chain.iter().find_map(|t| map.get(t))
}

/// Of `listeners` (name, lower-case hostname) on one port, the one a route's effective
/// hostname `host` belongs to: the most specific whose hostname covers it (an exact name, then
/// the longest wildcard, then none). Listeners of one port have distinct hostnames
/// (validation refuses the others).
fn most_specific_listener<'l>(
    listeners: &'l [(&'l str, Option<String>)],
    host: Option<&str>,
) -> Option<&'l str> {
    let covers = |l: Option<&str>| match (l, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(l), Some(h)) => hostname_intersection(h, l).as_deref() == Some(h),
    };
    let specificity = |l: Option<&str>| match l {
        None => (0, 0),
        Some(w) if w.starts_with("*.") => (1, w.len()),
        Some(e) => (2, e.len()),
    };
    listeners
        .iter()
        .filter(|(_, l)| covers(l.as_deref()))
        .max_by_key(|(_, l)| specificity(l.as_deref()))
        .map(|(n, _)| *n)
}

/// An L4 route as attached through one listener.
struct L4At<'a> {
    gateway: &'a ObjectKey,
    listener: &'a str,
    kind: &'static str,
}

/// The backends of a TLSRoute, TCPRoute or UDPRoute: its first rule's (one rule is what these
/// kinds use), with the route's (else the Gateway's) BackendTrafficPolicy keep-alive.
fn stream_backends(
    s: &Snapshot,
    at: &L4At<'_>,
    route: &Object<model::kinds::routes::StreamRouteSpec>,
    guarded: &BTreeMap<PolicyTarget, ObjectKey>,
    problems: &mut Vec<(ObjectKey, String)>,
) -> Vec<(u32, Arc<Backend>)> {
    let Some(rule) = route.spec.rules.first() else {
        return Vec::new();
    };
    let kind = at.kind;
    let rkey = ObjectKey::new(GATEWAY_GROUP, kind, route.namespace(), route.name());
    // A SecurityPolicy or EnvoyExtensionPolicy on an L4 route, or on the listener it came
    // through, asks for something this path does not do (there is no HTTP request to
    // authenticate or script): its connections are refused, never carried without it. (One
    // on the whole Gateway is for its HTTP listeners, as in Envoy Gateway.)
    let listener = PolicyTarget::section(at.gateway.clone(), at.listener);
    if let Some((t, policy)) = guarded
        .iter()
        .find(|(t, _)| t.object == rkey || **t == listener)
    {
        let why = format!(
            "{} {} targets {t}: not enforced on L4 routes, so the connections of {kind} {} are \
             refused",
            policy.kind,
            policy.ns_name(),
            rkey.ns_name()
        );
        problems.push((policy.clone(), why.clone()));
        return vec![(1, refusing_backend(rkey.ns_name(), why))];
    }
    // A BackendTrafficPolicy on one section of an L4 route is refused by validation (it
    // would apply to the whole route): the route is refused with it.
    if let Some((p, why)) = s
        .resolution
        .owners_within("BackendTrafficPolicy", &rkey)
        .filter(|(t, _)| t.section.is_some())
        .find_map(|(_, p)| Some((p, s.resolution.refused(p)?)))
    {
        let why = format!("BackendTrafficPolicy {} is refused ({why})", p.ns_name());
        return vec![(1, refusing_backend(rkey.ns_name(), why))];
    }
    let chain = [
        PolicyTarget::whole(rkey.clone()),
        listener,
        PolicyTarget::whole(at.gateway.clone()),
    ];
    let keepalive = match backend_policy(s, &chain) {
        Ok(p) => p.and_then(upstream_keepalive),
        Err(why) => return vec![(1, refusing_backend(rkey.ns_name(), why))],
    };
    rule.backend_refs
        .iter()
        .map(|b| {
            let w = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
            let mut backend = resolve(s, kind, route.namespace(), b);
            backend.keepalive = keepalive;
            (w, Arc::new(backend))
        })
        .collect()
}

/// The certificates of an HTTPS listener, parsed from its Secrets.
fn listener_certs(
    s: &Snapshot,
    gw: &Object<gateway_api::gateways::GatewaySpec>,
    l: &gateway_api::gateways::GatewayListeners,
) -> Result<Vec<Cert>, String> {
    let mut out = Vec::new();
    for r in l
        .tls
        .as_ref()
        .and_then(|t| t.certificate_refs.as_ref())
        .into_iter()
        .flatten()
    {
        let ns = r.namespace.as_deref().unwrap_or(gw.namespace());
        if get(&s.secrets, ns, &r.name).is_none() {
            return Err(format!("secret {ns}/{} not found", r.name));
        }
        let field = |k: &str| crate::auth::secret_field(s, ns, &r.name, k);
        let (Some(crt), Some(key)) = (field("tls.crt"), field("tls.key")) else {
            return Err(format!("secret {ns}/{} lacks tls.crt or tls.key", r.name));
        };
        out.push(Cert::from_pem(&crt, &key).map_err(|e| format!("secret {ns}/{}: {e}", r.name))?);
    }
    if out.is_empty() {
        return Err("no usable certificate".into());
    }
    Ok(out)
}

/// Client address detection from the ClientTrafficPolicy that targets this Gateway.
fn client_ip(s: &Snapshot, gw: &ObjectKey) -> Option<ClientIp> {
    gateway_client_policy(s, gw)
        .and_then(|p| {
            p.spec
                .client_ip_detection
                .as_ref()?
                .x_forwarded_for
                .as_ref()
        })
        .map(|x| ClientIp {
            trusted: x
                .trusted_cidrs
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            num_trusted_hops: x.num_trusted_hops,
        })
}

/// How long a client may remember that a port serves HTTP/3 (Envoy's `alt-svc` max age).
pub const ALT_SVC_MAX_AGE_SECS: u32 = 86_400;

/// The `alt-svc` value HTTP/1 and HTTP/2 answers carry on a listener port serving HTTP/3.
pub fn alt_svc(port: u16) -> http::HeaderValue {
    http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma={ALT_SVC_MAX_AGE_SECS}"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("clear"))
}

/// The ClientTrafficPolicy of this Gateway (the one validation gave it), when it asks for
/// HTTP/3.
fn http3_policy(s: &Snapshot, gw: &ObjectKey) -> Option<ObjectKey> {
    gateway_client_policy(s, gw)
        .filter(|p| p.spec.http3.is_some())
        .map(|p| {
            ObjectKey::new(
                model::validate::ENVOY_GROUP,
                "ClientTrafficPolicy",
                p.namespace(),
                p.name(),
            )
        })
}

/// TLS settings from the ClientTrafficPolicy that targets this Gateway.
fn client_tls(s: &Snapshot, gw: &ObjectKey) -> ClientTls {
    let mut out = ClientTls::default();
    let Some(t) = gateway_client_policy(s, gw).and_then(|p| p.spec.tls.as_ref()) else {
        return out;
    };
    if let Some(v) = &t.min_version {
        out.min_version = v.clone();
    }
    if let Some(v) = &t.max_version {
        out.max_version = v.clone();
    }
    if !t.alpn_protocols.is_empty() {
        out.alpn = t
            .alpn_protocols
            .iter()
            .map(|a| a.as_bytes().to_vec())
            .collect();
    }
    // Validation refuses a list naming what is not a suite (and so its Gateway is not served).
    if let Ok(suites) = t.cipher_suites()
        && !suites.is_empty()
    {
        out.tls12_suites = Some(suites.iter().map(|(_, code, _)| *code).collect());
    }
    out
}

/// The drain timeout of the EnvoyProxy that parameterises a Gateway.
fn drain_timeout(s: &Snapshot, gw: &Object<gateway_api::gateways::GatewaySpec>) -> Duration {
    let from_infra = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
        .filter(|p| p.kind == "EnvoyProxy")
        .and_then(|p| get(&s.envoy_proxies, gw.namespace(), &p.name));
    let from_class = get(&s.gateway_classes, "", &gw.spec.gateway_class_name)
        .and_then(|c| c.spec.parameters_ref.as_ref())
        .filter(|p| p.kind == "EnvoyProxy")
        .and_then(|p| {
            get(
                &s.envoy_proxies,
                p.namespace.as_deref().unwrap_or_default(),
                &p.name,
            )
        });
    from_infra
        .or(from_class)
        .and_then(|p| p.spec.shutdown.as_ref())
        .and_then(|sh| sh.drain_timeout.as_deref())
        .and_then(|d| parse_duration(d).ok())
        .unwrap_or(DRAIN_TIMEOUT_DEFAULT)
}

/// The hostnames a route serves on a listener: its hostnames intersected with the listener's
/// (the more specific of each pair); `None` in the result means "any host".
fn effective_hostnames(route: &[String], listener: Option<&str>) -> Vec<Option<String>> {
    match (route.is_empty(), listener) {
        (true, None) => vec![None],
        (true, Some(l)) => vec![Some(l.to_ascii_lowercase())],
        (false, None) => route.iter().map(|h| Some(h.to_ascii_lowercase())).collect(),
        (false, Some(l)) => route
            .iter()
            .filter_map(|h| hostname_intersection(h, l))
            .map(Some)
            .collect(),
    }
}

fn add_route<'a>(
    s: &Snapshot,
    router: &mut Router,
    route: &Object<gateway_api::httproutes::HttpRouteSpec>,
    hosts: &[Option<String>],
    order: usize,
    policies: &dyn Fn(Option<&str>) -> Policies<'a>,
) {
    let route_name = format!("{}/{}", route.namespace(), route.name());
    let default_rule = [HttpRouteRules::default()];
    let rules: &[HttpRouteRules] = match route.spec.rules.as_deref() {
        Some(r) if !r.is_empty() => r,
        _ => &default_rule,
    };
    for (ri, rule) in rules.iter().enumerate() {
        let policies = policies(rule.name.as_deref());
        let default_match = [HttpRouteRulesMatches::default()];
        let matches: &[HttpRouteRulesMatches] = match rule.matches.as_deref() {
            Some(m) if !m.is_empty() => m,
            _ => &default_match,
        };
        for (mi, m) in matches.iter().enumerate() {
            let (path, path_rank, path_len) = path_match(m);
            let matched_prefix = match &path {
                PathMatch::Prefix(p) => Some(p.clone()),
                _ => None,
            };
            let action = Arc::new(action(
                s,
                route,
                ri,
                rule,
                matched_prefix,
                &route_name,
                &policies,
            ));
            let headers: Vec<(http::HeaderName, ValueMatch)> = m
                .headers
                .iter()
                .flatten()
                .filter_map(|h| {
                    let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                        .ok()?;
                    let vm = match h.r#type {
                        Some(HT::RegularExpression) => ValueMatch::Regex(anchored(&h.value)?),
                        _ => ValueMatch::Exact(h.value.clone()),
                    };
                    Some((name, vm))
                })
                .collect();
            let query: Vec<(String, ValueMatch)> = m
                .query_params
                .iter()
                .flatten()
                .filter_map(|q| {
                    let vm = match q.r#type {
                        Some(QT::RegularExpression) => ValueMatch::Regex(anchored(&q.value)?),
                        _ => ValueMatch::Exact(q.value.clone()),
                    };
                    Some((q.name.clone(), vm))
                })
                .collect();
            let method = m.method.as_ref().map(|x| {
                serde_json::to_value(x)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            });
            for host in hosts {
                let entry = Entry {
                    path: clone_path(&path),
                    method: method.clone(),
                    headers: headers
                        .iter()
                        .map(|(n, v)| (n.clone(), clone_value(v)))
                        .collect(),
                    query: query
                        .iter()
                        .map(|(n, v)| (n.clone(), clone_value(v)))
                        .collect(),
                    action: action.clone(),
                    rank: (
                        path_rank,
                        Reverse(path_len),
                        u8::from(method.is_none()),
                        Reverse(headers.len()),
                        Reverse(query.len()),
                        order,
                        ri,
                        mi,
                    ),
                };
                router.group_mut(host.as_deref()).push(entry);
            }
        }
    }
}

fn clone_path(p: &PathMatch) -> PathMatch {
    match p {
        PathMatch::Exact(x) => PathMatch::Exact(x.clone()),
        PathMatch::Prefix(x) => PathMatch::Prefix(x.clone()),
        PathMatch::Regex(r) => PathMatch::Regex(r.clone()),
    }
}

fn clone_value(v: &ValueMatch) -> ValueMatch {
    match v {
        ValueMatch::Exact(x) => ValueMatch::Exact(x.clone()),
        ValueMatch::Regex(r) => ValueMatch::Regex(r.clone()),
    }
}

/// Gateway API regular expressions match the whole value.
fn anchored(re: &str) -> Option<regex::Regex> {
    regex::Regex::new(&format!("^(?:{re})$")).ok()
}

/// The path match of a match, with its precedence rank and length.
fn path_match(m: &HttpRouteRulesMatches) -> (PathMatch, u8, usize) {
    let (ty, value) = m
        .path
        .as_ref()
        .map(|p| {
            (
                p.r#type.clone().unwrap_or(PT::PathPrefix),
                p.value.clone().unwrap_or_else(|| "/".into()),
            )
        })
        .unwrap_or((PT::PathPrefix, "/".into()));
    match ty {
        PT::Exact => {
            let len = value.len();
            (PathMatch::Exact(value), 0, len)
        }
        PT::RegularExpression => match anchored(&value) {
            Some(r) => (PathMatch::Regex(r), 1, value.len()),
            // Validation rejects such routes; never match if one gets here.
            None => (PathMatch::Exact(String::from("\u{0}")), 3, 0),
        },
        PT::PathPrefix => {
            let len = value.trim_end_matches('/').len();
            (PathMatch::Prefix(value), 2, len)
        }
    }
}

fn action(
    s: &Snapshot,
    route: &Object<gateway_api::httproutes::HttpRouteSpec>,
    ri: usize,
    rule: &HttpRouteRules,
    matched_prefix: Option<String>,
    route_name: &str,
    policies: &Policies<'_>,
) -> Action {
    let mut a = Action {
        route: route_name.to_string(),
        rule: ri,
        matched_prefix,
        ..Action::default()
    };
    for f in rule.filters.iter().flatten() {
        apply_filter(s, route, policies.kind, f, &mut a);
    }
    let refs = rule.backend_refs.as_deref().unwrap_or_default();
    for b in refs {
        let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
        let mut backend = resolve(s, policies.kind, route.namespace(), &same_shape(b));
        backend.keepalive = policies
            .backend
            .as_ref()
            .ok()
            .copied()
            .flatten()
            .and_then(upstream_keepalive);
        a.backends.push((weight, Arc::new(backend)));
    }
    a.all_invalid = !refs.is_empty() && a.backends.iter().all(|(_, b)| b.invalid.is_some());
    if let Some(t) = &rule.timeouts {
        a.timeout_request = t
            .request
            .as_deref()
            .and_then(|v| parse_duration(v).ok())
            .filter(|d| !d.is_zero());
        a.timeout_backend = t
            .backend_request
            .as_deref()
            .and_then(|v| parse_duration(v).ok())
            .filter(|d| !d.is_zero());
    }
    a.lua = policies.lua.clone();
    a.h2_upstream = policies.kind == "GRPCRoute";
    a.security = policies.security.clone();
    let p = match &policies.backend {
        Ok(p) => *p,
        Err(why) => {
            // Fail closed: the rule answers 500 rather than run without its policy.
            a.redirect = None;
            a.backends = vec![(1, refusing_backend(route_name.to_string(), why.clone()))];
            a.all_invalid = true;
            return a;
        }
    };
    if let Some(p) = p {
        if a.timeout_request.is_none() {
            a.timeout_request = p
                .timeout
                .as_ref()
                .and_then(|t| t.http.as_ref())
                .and_then(|h| h.request_timeout.as_deref())
                .and_then(|v| parse_duration(v).ok())
                .filter(|d| !d.is_zero());
        }
        a.retry = p.retry.as_ref().map(retry_policy);
        a.compress = p
            .compressor
            .iter()
            .filter_map(|c| crate::compress::Encoding::from_policy(&c.type_))
            .collect();
    }
    a
}

/// Envoy Gateway's retry semantics: 2 retries, 25 ms base backoff, max 10x base; without
/// `retryOn`, retry resets, refused connections and 503s.
fn retry_policy(r: &model::kinds::envoy::Retry) -> Retry {
    let base = r
        .per_retry
        .as_ref()
        .and_then(|p| p.back_off.as_ref())
        .and_then(|b| b.base_interval.as_deref())
        .and_then(|v| parse_duration(v).ok())
        .unwrap_or(Duration::from_millis(25));
    let max = r
        .per_retry
        .as_ref()
        .and_then(|p| p.back_off.as_ref())
        .and_then(|b| b.max_interval.as_deref())
        .and_then(|v| parse_duration(v).ok())
        .unwrap_or(base * 10);
    let (triggers, codes) = match &r.retry_on {
        Some(on) => (on.triggers.clone(), on.http_status_codes.clone()),
        None => (
            vec![
                "reset".into(),
                "connect-failure".into(),
                "retriable-status-codes".into(),
            ],
            vec![503],
        ),
    };
    let has = |t: &str| triggers.iter().any(|x| x == t);
    Retry {
        num_retries: r.num_retries.unwrap_or(2),
        reset: has("reset") || has("reset-before-request") || has("refused-stream"),
        connect_failure: has("connect-failure"),
        five_xx: has("5xx"),
        gateway_error: has("gateway-error"),
        status_codes: if has("retriable-status-codes") {
            codes
        } else {
            Vec::new()
        },
        base,
        max,
        per_try: r
            .per_retry
            .as_ref()
            .and_then(|p| p.timeout.as_deref())
            .and_then(|v| parse_duration(v).ok()),
    }
}

/// A GRPCRoute as the HTTPRoute it is equivalent to: each method match becomes a path match
/// on `/service/method` (Exact, a `/service` prefix, or a regular expression), everything else
/// (hostnames, parents, header matches, filters, backendRefs) has the same shape.
fn grpc_as_http(
    g: &Object<gateway_api::grpcroutes::GrpcRouteSpec>,
) -> Object<gateway_api::httproutes::HttpRouteSpec> {
    let mut v = serde_json::to_value(&g.spec).unwrap_or_default();
    for rule in v
        .get_mut("rules")
        .and_then(|r| r.as_array_mut())
        .into_iter()
        .flatten()
    {
        for m in rule
            .get_mut("matches")
            .and_then(|m| m.as_array_mut())
            .into_iter()
            .flatten()
        {
            let Some(obj) = m.as_object_mut() else {
                continue;
            };
            let Some(method) = obj.remove("method") else {
                continue;
            };
            let service = method.get("service").and_then(|x| x.as_str());
            let name = method.get("method").and_then(|x| x.as_str());
            let regex = method.get("type").and_then(|x| x.as_str()) == Some("RegularExpression");
            let path = match (regex, service, name) {
                (false, Some(svc), Some(m)) => {
                    serde_json::json!({"type": "Exact", "value": format!("/{svc}/{m}")})
                }
                (false, Some(svc), None) => {
                    serde_json::json!({"type": "PathPrefix", "value": format!("/{svc}")})
                }
                (false, None, Some(m)) => {
                    serde_json::json!({"type": "RegularExpression", "value": format!("/[^/]+/{}", regex::escape(m))})
                }
                (true, svc, m) => {
                    serde_json::json!({"type": "RegularExpression", "value": format!("/{}/{}", svc.unwrap_or("[^/]+"), m.unwrap_or("[^/]+"))})
                }
                (false, None, None) => serde_json::json!({"type": "PathPrefix", "value": "/"}),
            };
            obj.insert("path".into(), path);
        }
    }
    Object {
        api_version: g.api_version.clone(),
        meta: g.meta.clone(),
        spec: serde_json::from_value(v).unwrap_or_default(),
        source: g.source.clone(),
    }
}

/// The policies that shape one route's actions.
struct Policies<'a> {
    /// HTTPRoute or GRPCRoute (GRPCRoute backends are spoken to in HTTP/2).
    kind: &'static str,
    /// `Err(why)`: the BackendTrafficPolicy is refused, and the route's rules answer 500.
    backend: Result<Option<&'a BackendTrafficPolicySpec>, String>,
    lua: Vec<Arc<LuaFilter>>,
    security: Option<Arc<crate::auth::Security>>,
}

/// Loads the Lua scripts of every EnvoyExtensionPolicy, by the objects they target. A script
/// that does not load is a problem of its policy and is left out.
fn lua_filters(
    s: &Snapshot,
    problems: &mut Vec<(ObjectKey, String)>,
) -> BTreeMap<PolicyTarget, Vec<Arc<LuaFilter>>> {
    let mut out: BTreeMap<PolicyTarget, Vec<Arc<LuaFilter>>> = BTreeMap::new();
    for p in s.envoy_extension_policies.values() {
        let pkey = ObjectKey::new(
            model::validate::ENVOY_GROUP,
            "EnvoyExtensionPolicy",
            p.namespace(),
            p.name(),
        );
        let name = pkey.ns_name();
        let mut filters = Vec::new();
        let mut refused = s.resolution.refused(&pkey);
        for (i, l) in p.spec.lua.iter().enumerate() {
            // One script that cannot run refuses the whole policy: the rest need not load.
            if refused.is_some() {
                break;
            }
            let source = match (&l.inline, &l.value_ref) {
                (Some(src), _) if l.type_ == "Inline" => Ok(src.clone()),
                (_, Some(r)) => model::validate::config_map_value(s, p.namespace(), r, "lua"),
                _ => Err(format!("spec.lua[{i}] has no script")),
            };
            let loaded = source.and_then(|src| {
                LuaFilter::load(&format!("{}/{}[{i}]", p.namespace(), p.name()), &src)
            });
            match loaded {
                Ok(f) => filters.push(Arc::new(f)),
                Err(e) => {
                    let why = format!("spec.lua[{i}]: the script does not load: {e}");
                    problems.push((pkey.clone(), why.clone()));
                    refused = Some(why);
                }
            }
        }
        // Fail closed: a route is not served without a filter its policy names.
        if let Some(why) = refused {
            tracing::warn!(policy = %name, reason = %why,
                "extension policy cannot run: what it targets answers 500");
            filters = vec![Arc::new(LuaFilter::refusing(&name, why))];
        }
        // Validation's owner of each target (GEP-713's order) runs there.
        for t in s.resolution.targets(&pkey) {
            if s.resolution.owner("EnvoyExtensionPolicy", t) == Some(&pkey) {
                out.insert(t.clone(), filters.clone());
            }
        }
    }
    out
}

/// The upstream keep-alive a BackendTrafficPolicy asks for.
fn upstream_keepalive(p: &BackendTrafficPolicySpec) -> Option<Keepalive> {
    p.tcp_keepalive.as_ref().map(Keepalive::from_policy)
}

/// The BackendTrafficPolicy that applies where `chain` says (the rule's or route's own, else
/// its listener's or Gateway's); `Err(why)` when validation refused it (what it targets is
/// then refused, never served without it).
fn backend_policy<'a>(
    s: &'a Snapshot,
    chain: &[PolicyTarget],
) -> Result<Option<&'a BackendTrafficPolicySpec>, String> {
    let Some(p) = owning(
        s,
        &s.backend_traffic_policies,
        "BackendTrafficPolicy",
        chain,
    ) else {
        return Ok(None);
    };
    let pkey = ObjectKey::new(
        model::validate::ENVOY_GROUP,
        "BackendTrafficPolicy",
        p.namespace(),
        p.name(),
    );
    match s.resolution.refused(&pkey) {
        Some(why) => Err(format!(
            "BackendTrafficPolicy {} is refused ({why})",
            pkey.ns_name()
        )),
        None => Ok(Some(&p.spec)),
    }
}

/// A backend that is never used, and why: what answers 500 (HTTP) or refuses its
/// connections (L4) in place of a route's real backends.
fn refusing_backend(name: String, why: String) -> Arc<Backend> {
    Arc::new(Backend {
        name,
        endpoints: Vec::new(),
        invalid: Some(why),
        keepalive: None,
        turn: AtomicU64::new(0),
    })
}

/// `kind`: the route's own kind (a GRPCRoute is compiled as an HTTPRoute), for the
/// ReferenceGrant a mirror into another namespace needs.
fn apply_filter(
    s: &Snapshot,
    route: &Object<gateway_api::httproutes::HttpRouteSpec>,
    kind: &str,
    f: &HttpRouteRulesFilters,
    a: &mut Action,
) {
    match f.r#type {
        F::RequestHeaderModifier => {
            if let Some(m) = &f.request_header_modifier {
                edits(&mut a.request_headers, &same_shape(m));
            }
        }
        F::ResponseHeaderModifier => {
            if let Some(m) = &f.response_header_modifier {
                edits(&mut a.response_headers, &same_shape(m));
            }
        }
        F::RequestRedirect => {
            if let Some(r) = &f.request_redirect {
                a.redirect = Some(Redirect {
                    scheme: r.scheme.as_ref().map(|s| match s {
                        Scheme::Http => "http".to_string(),
                        Scheme::Https => "https".to_string(),
                    }),
                    hostname: r.hostname.clone(),
                    port: r.port.and_then(|p| u16::try_from(p).ok()),
                    path: r.path.as_ref().and_then(|p| {
                        p.replace_full_path
                            .clone()
                            .map(PathRewrite::Full)
                            .or_else(|| p.replace_prefix_match.clone().map(PathRewrite::Prefix))
                    }),
                    status: r
                        .status_code
                        .and_then(|c| u16::try_from(c).ok())
                        .unwrap_or(302),
                });
            }
        }
        F::UrlRewrite => {
            if let Some(r) = &f.url_rewrite {
                a.rewrite = Some(Rewrite {
                    hostname: r.hostname.clone(),
                    path: r.path.as_ref().and_then(|p| {
                        p.replace_full_path
                            .clone()
                            .map(PathRewrite::Full)
                            .or_else(|| p.replace_prefix_match.clone().map(PathRewrite::Prefix))
                    }),
                });
            }
        }
        F::RequestMirror => {
            if let Some(m) = &f.request_mirror {
                let b = &m.backend_ref;
                a.mirrors.push(Arc::new(resolve(
                    s,
                    kind,
                    route.namespace(),
                    &same_shape(b),
                )));
            }
        }
        // Validation rejects ExtensionRef; CORS is parsed, not served yet.
        F::ExtensionRef | F::Cors => {}
    }
}

/// A header modifier filter, whichever generated type it came in.
#[derive(Debug, Default, serde::Deserialize)]
struct HeaderModifier {
    #[serde(default)]
    set: Vec<NameValue>,
    #[serde(default)]
    add: Vec<NameValue>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct NameValue {
    name: String,
    value: String,
}

fn edits(out: &mut HeaderEdits, m: &HeaderModifier) {
    let name = |n: &str| http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok();
    out.set.extend(
        m.set
            .iter()
            .filter_map(|h| Some((name(&h.name)?, h.value.clone()))),
    );
    out.add.extend(
        m.add
            .iter()
            .filter_map(|h| Some((name(&h.name)?, h.value.clone()))),
    );
    out.remove.extend(m.remove.iter().filter_map(|n| name(n)));
}

/// Resolves a backendRef to its endpoints, or says why it cannot be used.
fn resolve(s: &Snapshot, route_kind: &str, route_ns: &str, b: &BackendRef) -> Backend {
    let (group, kind, namespace, name, port) = (
        b.group.as_deref(),
        b.kind.as_deref(),
        b.namespace.as_deref(),
        b.name.as_str(),
        b.port,
    );
    let ns = namespace.unwrap_or(route_ns);
    // The referring kind's group, for ReferenceGrants: routes, or Envoy Gateway's policies.
    let from_group = if route_kind.ends_with("Route") {
        GATEWAY_GROUP
    } else {
        model::validate::ENVOY_GROUP
    };
    let group = group.unwrap_or("");
    let kind = kind.unwrap_or("Service");
    let label = format!(
        "{ns}/{name}:{}",
        port.map(|p| p.to_string()).unwrap_or_default()
    );
    let invalid = |why: String| Backend {
        name: label.clone(),
        endpoints: Vec::new(),
        invalid: Some(why),
        keepalive: None,
        turn: AtomicU64::new(0),
    };
    if ns != route_ns
        && !model::validate::granted(
            s,
            (from_group, route_kind, route_ns),
            (group, kind, ns, name),
        )
    {
        return invalid(format!(
            "{kind} {ns}/{name} is in another namespace and no ReferenceGrant allows it"
        ));
    }
    match (group, kind) {
        ("", "Service") => {
            let Some(port) = port else {
                return invalid("backendRef needs a port".into());
            };
            match service_endpoints(s, ns, name, port) {
                Ok(eps) => Backend {
                    name: label,
                    endpoints: eps
                        .iter()
                        .filter(|e| e.ready)
                        .map(|e: &Endpoint| Upstream::new(SocketAddr::new(e.ip, e.port)))
                        .collect(),
                    invalid: None,
                    keepalive: None,
                    turn: AtomicU64::new(0),
                },
                Err(e) => invalid(e.to_string()),
            }
        }
        (model::validate::ENVOY_GROUP, "Backend") => match get(&s.envoy_backends, ns, name) {
            None => invalid(format!("Backend {ns}/{name} not found")),
            Some(b) => Backend {
                name: label,
                endpoints: b
                    .spec
                    .endpoints
                    .iter()
                    .filter_map(|e| e.ip.as_ref())
                    .filter_map(|ip| {
                        Some(Upstream::new(SocketAddr::new(
                            ip.address.parse().ok()?,
                            ip.port,
                        )))
                    })
                    .collect(),
                invalid: None,
                keepalive: None,
                turn: AtomicU64::new(0),
            },
        },
        _ => invalid(format!("backendRef kind {group}/{kind} is not supported")),
    }
}

/// ClientTrafficPolicy `clientIPDetection.xForwardedFor`, with Envoy's semantics: when the
/// peer is trusted, the client is the right-most X-Forwarded-For address that is not
/// trusted (or, with `numTrustedHops`, the address that many hops from the right).
#[derive(Debug, Default)]
pub struct ClientIp {
    pub trusted: Vec<ipnet::IpNet>,
    pub num_trusted_hops: Option<u32>,
}

impl ClientIp {
    pub fn client(&self, peer: SocketAddr, headers: &(impl HeaderSource + ?Sized)) -> SocketAddr {
        let mut xff: Vec<IpAddr> = Vec::new();
        headers.any_value(
            &http::HeaderName::from_static("x-forwarded-for"),
            &mut |v| {
                xff.extend(v.split(',').filter_map(|a| a.trim().parse::<IpAddr>().ok()));
                false
            },
        );
        if let Some(hops) = self.num_trusted_hops {
            let hops = usize::try_from(hops).unwrap_or(usize::MAX);
            return match xff.len().checked_sub(hops.max(1)) {
                Some(i) => SocketAddr::new(xff[i], 0),
                None => peer,
            };
        }
        let trusted = |ip: &IpAddr| self.trusted.iter().any(|n| n.contains(ip));
        if !trusted(&peer.ip()) {
            return peer;
        }
        match xff.iter().rev().find(|ip| !trusted(ip)).or(xff.first()) {
            Some(ip) => SocketAddr::new(*ip, 0),
            None => peer,
        }
    }
}

impl Router {
    /// The client's address for a request arriving from `peer`.
    pub fn client_address(
        &self,
        peer: SocketAddr,
        headers: &(impl HeaderSource + ?Sized),
    ) -> SocketAddr {
        match &self.client_ip {
            Some(c) => c.client(peer, headers),
            None => peer,
        }
    }

    /// The group of a route's effective hostname (`*.x` a wildcard, none the catch-all),
    /// made when missing.
    fn group_mut(&mut self, host: Option<&str>) -> &mut Vec<Entry> {
        match host {
            None => &mut self.any,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => self.wildcard.entry(suffix.to_string()).or_default(),
                None => self.exact.entry(h.to_string()).or_default(),
            },
        }
    }

    /// The entries for a request host (without port), most specific group first, no fallback.
    pub fn group(&self, host: &str) -> &[Entry] {
        if let Some(e) = self.exact.get(host) {
            return e;
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(e) = self.wildcard.get(rest) {
                return e;
            }
        }
        &self.any
    }

    /// The first entry matching the request, in precedence order.
    pub fn find(
        &self,
        host: &str,
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &(impl HeaderSource + ?Sized),
    ) -> Option<&Entry> {
        let group = self.group(host);
        group.iter().find(|e| {
            e.path.matches(path)
                && e.method.as_deref().is_none_or(|m| m == method)
                && e.headers
                    .iter()
                    .all(|(n, vm)| headers.any_value(n, &mut |v| vm.matches(v)))
                && e.query
                    .iter()
                    .all(|(n, vm)| query_value(query, n).is_some_and(|v| vm.matches(&v)))
        })
    }

    /// Number of match entries, for status output.
    pub fn len(&self) -> usize {
        self.any.len()
            + self.exact.values().map(Vec::len).sum::<usize>()
            + self.wildcard.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The first value of a query parameter (names match exactly, values percent-decoded).
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(x) => {
                        out.push(x);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_has_segment_semantics() {
        let p = PathMatch::Prefix("/foo".into());
        assert!(p.matches("/foo") && p.matches("/foo/") && p.matches("/foo/bar"));
        assert!(!p.matches("/foobar") && !p.matches("/fo"));
        let p = PathMatch::Prefix("/foo/".into());
        assert!(p.matches("/foo") && p.matches("/foo/bar") && !p.matches("/foobar"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
    }

    #[test]
    fn regex_matches_the_whole_path() {
        let p = PathMatch::Regex(anchored("/v[0-9]+/.*|/a|/ab").expect("valid"));
        assert!(p.matches("/ab"), "alternation must match the whole path");
        assert!(p.matches("/v2/x"));
        assert!(!p.matches("/api/v2/x"));
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_value(Some("a=1&b=two%20words&c"), "b").as_deref(),
            Some("two words")
        );
        assert_eq!(query_value(Some("a=1&c"), "c").as_deref(), Some(""));
        assert_eq!(query_value(Some("a=%zz"), "a").as_deref(), Some("%zz"));
        assert_eq!(query_value(None, "a"), None);
    }

    #[test]
    fn client_address_from_trusted_forwarded_for() {
        let c = ClientIp {
            trusted: vec!["10.69.0.0/16".parse().expect("cidr")],
            num_trusted_hops: None,
        };
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.7, 10.69.1.5".parse().expect("value"),
        );
        let tunnel: SocketAddr = "10.69.3.3:5000".parse().expect("addr");
        let outsider: SocketAddr = "198.51.100.1:5000".parse().expect("addr");
        assert_eq!(c.client(tunnel, &h).ip().to_string(), "203.0.113.7");
        // An untrusted peer cannot claim another address.
        assert_eq!(c.client(outsider, &h), outsider);
        let hops = ClientIp {
            trusted: Vec::new(),
            num_trusted_hops: Some(1),
        };
        assert_eq!(hops.client(outsider, &h).ip().to_string(), "10.69.1.5");
    }

    #[test]
    fn effective_hostnames_intersect_with_the_listener() {
        assert_eq!(effective_hostnames(&[], None), vec![None]);
        assert_eq!(
            effective_hostnames(&[], Some("*.example.com")),
            vec![Some("*.example.com".into())]
        );
        let r = vec!["foo.example.com".to_string(), "other.net".to_string()];
        assert_eq!(
            effective_hostnames(&r, Some("*.example.com")),
            vec![Some("foo.example.com".into())]
        );
    }
}
