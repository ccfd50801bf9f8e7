//! Reference resolution and validation: every object of a snapshot gets its conditions.
//!
//! Gateway API objects follow the spec's status model: GatewayClass and Gateway conditions,
//! per-listener conditions (Accepted, Conflicted, ResolvedRefs, Programmed) with
//! attachedRoutes, and per-parent route conditions (Accepted, ResolvedRefs) with the spec's
//! reasons. Policies follow GEP-713 (Accepted with TargetNotFound / Conflicted / Invalid).
//! Other kinds get Accepted (and ResolvedRefs where they point at something).
//!
//! This module only reads the snapshot and writes statuses; it never changes what is served.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::str::FromStr;

use gateway_api::gateways::{
    GatewayListenersAllowedRoutesNamespacesFrom as From, GatewayListenersTlsMode,
};

use crate::kinds::LabelSelector;
use crate::kinds::envoy::{Policy, SecurityPolicySpec, TargetRef};
use crate::kinds::routes::{BackendRef, ParentRef};
use crate::object::same_shape;
use crate::object::{
    Condition, ListenerStatus, ObjectKey, ObjectStatus, ParentRefOut, ParentStatus, RouteGroupKind,
    Status, cond, cond::reason,
};
use crate::snapshot::{Coll, Object, Snapshot, get};

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub const ENVOY_GROUP: &str = "gateway.envoyproxy.io";

/// The GatewayClass controller names trellis serves: its own, and Envoy Gateway's so that an
/// Envoy Gateway setup loads unchanged.
pub const CONTROLLER_NAMES: &[&str] = &[
    "trellis.dev/gateway-controller",
    "gateway.envoyproxy.io/gatewayclass-controller",
];

type Statuses = BTreeMap<ObjectKey, ObjectStatus>;

pub fn run(s: &mut Snapshot) {
    let mut st: Statuses = std::mem::take(&mut s.status);
    let classes = gateway_classes(s, &mut st);
    let mut listeners = gateways(s, &mut st, &classes);
    routes(s, &mut st, &mut listeners);
    write_listener_status(s, &mut st, &listeners);
    policies(s, &mut st);
    core(s, &mut st);
    cilium(s, &mut st);
    misc(s, &mut st);
    // Every object that was loaded and has no Accepted condition yet is accepted.
    for key in s.entries.keys() {
        let status = st.entry(key.clone()).or_default();
        if !status.conditions.iter().any(|c| c.type_ == cond::ACCEPTED) {
            let bad = status
                .first_invalid()
                .map(|p| format!("{}: {}", p.path, p.message));
            match bad {
                Some(m) => status.set(Condition::new(
                    cond::ACCEPTED,
                    Status::False,
                    reason::INVALID,
                    m,
                )),
                None => status.set(ok(cond::ACCEPTED, reason::ACCEPTED, "")),
            }
        }
    }
    s.status = st;
}

fn ok(type_: &str, reason: &str, message: impl Into<String>) -> Condition {
    Condition::new(type_, Status::True, reason, message)
}

fn bad(type_: &str, reason: &str, message: impl Into<String>) -> Condition {
    Condition::new(type_, Status::False, reason, message)
}

fn key_of<S>(o: &Object<S>, group: &str, kind: &str) -> ObjectKey {
    ObjectKey::new(group, kind, o.namespace(), o.name())
}

/// Records an invalid value at a field path and returns its message.
fn problem(st: &mut ObjectStatus, path: impl Into<String>, msg: impl Into<String>) -> String {
    let msg = msg.into();
    st.problem(path, msg.clone());
    msg
}

/// Records an unresolved reference at a field path and returns its message.
fn unresolved(st: &mut ObjectStatus, path: impl Into<String>, msg: impl Into<String>) -> String {
    let msg = msg.into();
    st.unresolved(path, msg.clone());
    msg
}

// ---------------------------------------------------------------------------------------------
// GatewayClass

fn gateway_classes(s: &Snapshot, st: &mut Statuses) -> BTreeSet<String> {
    let mut served = BTreeSet::new();
    for gc in s.gateway_classes.values() {
        let status = st
            .entry(key_of(gc, GATEWAY_GROUP, "GatewayClass"))
            .or_default();
        if !CONTROLLER_NAMES.contains(&gc.spec.controller_name.as_str()) {
            status.set(Condition::new(
                cond::ACCEPTED,
                Status::Unknown,
                reason::PENDING,
                format!(
                    "controllerName {} is not served by trellis (served: {})",
                    gc.spec.controller_name,
                    CONTROLLER_NAMES.join(", ")
                ),
            ));
            continue;
        }
        if let Some(p) = &gc.spec.parameters_ref {
            let ns = p.namespace.clone().unwrap_or_default();
            let found = p.group == ENVOY_GROUP
                && p.kind == "EnvoyProxy"
                && get(&s.envoy_proxies, &ns, &p.name).is_some();
            if !found {
                let m = problem(
                    status,
                    "spec.parametersRef",
                    format!(
                        "parametersRef {}/{} {}/{} not found",
                        p.group, p.kind, ns, p.name
                    ),
                );
                status.set(bad(cond::ACCEPTED, reason::INVALID_PARAMETERS, m));
                continue;
            }
        }
        status.set(ok(cond::ACCEPTED, reason::ACCEPTED, "served by trellis"));
        served.insert(gc.name().to_string());
    }
    served
}

// ---------------------------------------------------------------------------------------------
// Gateway and listeners

/// What routes need to know of one listener.
#[derive(Debug)]
pub struct ListenerInfo {
    pub name: String,
    pub port: i32,
    pub protocol: String,
    pub hostname: Option<String>,
    pub kinds: Vec<String>,
    pub from: From,
    pub selector: Option<LabelSelector>,
    /// False when the listener cannot take routes (invalid or conflicted).
    pub usable: bool,
    /// False when it also cannot serve (its certificate does not resolve).
    pub programmable: bool,
    pub attached: u32,
    pub conditions: Vec<Condition>,
    pub invalid_kinds: Vec<String>,
}

/// Listeners of the Gateways trellis serves, by Gateway key.
type Listeners = BTreeMap<ObjectKey, Vec<ListenerInfo>>;

fn default_kinds(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "HTTP" | "HTTPS" => &["HTTPRoute", "GRPCRoute"],
        "TLS" => &["TLSRoute"],
        "TCP" => &["TCPRoute"],
        "UDP" => &["UDPRoute"],
        _ => &[],
    }
}

/// Protocols that can share one port (they are told apart by SNI or Host).
fn port_family(protocol: &str) -> &'static str {
    match protocol {
        "HTTPS" | "TLS" => "tls",
        "HTTP" => "http",
        "TCP" => "tcp",
        "UDP" => "udp",
        _ => "other",
    }
}

fn gateways(s: &Snapshot, st: &mut Statuses, classes: &BTreeSet<String>) -> Listeners {
    let mut out = Listeners::new();
    for gw in s.gateways.values() {
        let key = key_of(gw, GATEWAY_GROUP, "Gateway");
        let status = st.entry(key.clone()).or_default();
        let class = &gw.spec.gateway_class_name;
        if get(&s.gateway_classes, "", class).is_none() {
            status.set(Condition::new(
                cond::ACCEPTED,
                Status::Unknown,
                reason::PENDING,
                format!("GatewayClass {class} not found"),
            ));
            continue;
        }
        if !classes.contains(class) {
            status.set(Condition::new(
                cond::ACCEPTED,
                Status::Unknown,
                reason::PENDING,
                format!("GatewayClass {class} is not served by trellis"),
            ));
            continue;
        }
        let mut gw_problems = Vec::new();
        for (i, a) in gw.spec.addresses.iter().flatten().enumerate() {
            let t = a.r#type.as_deref().unwrap_or("IPAddress");
            let v = a.value.as_deref().unwrap_or("");
            if t != "IPAddress" {
                gw_problems.push((
                    format!("spec.addresses[{i}].type"),
                    format!("address type {t} is not supported (use IPAddress)"),
                ));
            } else if v.parse::<IpAddr>().is_err() {
                gw_problems.push((
                    format!("spec.addresses[{i}].value"),
                    format!("{v:?} is not an IP address"),
                ));
            }
        }
        if let Some(ips) = lbipam_ips(
            gw.spec
                .infrastructure
                .as_ref()
                .and_then(|i| i.annotations.as_ref()),
        ) {
            for ip in ips.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                if ip.parse::<IpAddr>().is_err() {
                    gw_problems.push((
                        "spec.infrastructure.annotations".into(),
                        format!("lbipam.cilium.io/ips: {ip:?} is not an IP address"),
                    ));
                }
            }
        }
        let mut infos: Vec<ListenerInfo> = Vec::new();
        for (i, l) in gw.spec.listeners.iter().enumerate() {
            let path = format!("spec.listeners[{i}]");
            let mut conds = Vec::new();
            let mut usable = true;
            let mut unprogrammable = false;
            let protocol = l.protocol.clone();
            let supported = matches!(protocol.as_str(), "HTTP" | "HTTPS" | "TLS" | "TCP" | "UDP");
            if !supported {
                let m = problem(
                    status,
                    format!("{path}.protocol"),
                    format!("listener {}: protocol {protocol} is not supported", l.name),
                );
                conds.push(bad(cond::ACCEPTED, reason::UNSUPPORTED_PROTOCOL, m));
                usable = false;
            } else if !(1..=65535).contains(&l.port) {
                let m = problem(
                    status,
                    format!("{path}.port"),
                    format!("listener {}: port {} is out of range", l.name, l.port),
                );
                conds.push(bad(cond::ACCEPTED, "PortUnavailable", m));
                usable = false;
            } else if infos.iter().any(|x| x.name == l.name) {
                let m = problem(
                    status,
                    format!("{path}.name"),
                    format!("listener name {} is used twice", l.name),
                );
                conds.push(bad(cond::ACCEPTED, reason::INVALID, m));
                usable = false;
            }
            if let Some(h) = &l.hostname
                && let Err(e) = check_hostname(h)
            {
                let m = problem(
                    status,
                    format!("{path}.hostname"),
                    format!("listener {}: hostname {h:?}: {e}", l.name),
                );
                conds.push(bad(cond::ACCEPTED, reason::INVALID, m));
                usable = false;
            }
            // Route kinds.
            let allowed = default_kinds(&protocol);
            let mut kinds = Vec::new();
            let mut invalid_kinds = Vec::new();
            match l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
                Some(list) if !list.is_empty() => {
                    for k in list {
                        let group_ok = k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP;
                        if group_ok && allowed.contains(&k.kind.as_str()) {
                            kinds.push(k.kind.clone());
                        } else {
                            invalid_kinds.push(k.kind.clone());
                        }
                    }
                }
                _ => kinds.extend(allowed.iter().map(|k| k.to_string())),
            }
            let mut resolved: Result<(), (String, String)> = Ok(());
            if !invalid_kinds.is_empty() {
                let m = problem(
                    status,
                    format!("{path}.allowedRoutes.kinds"),
                    format!(
                        "listener {}: route kinds {} are not supported on protocol {protocol}",
                        l.name,
                        invalid_kinds.join(", ")
                    ),
                );
                resolved = Err((reason::INVALID_ROUTE_KINDS.into(), m));
            }
            // TLS.
            let mode = l
                .tls
                .as_ref()
                .and_then(|t| t.mode.clone())
                .unwrap_or(GatewayListenersTlsMode::Terminate);
            let terminates = match protocol.as_str() {
                "HTTPS" => {
                    if mode == GatewayListenersTlsMode::Passthrough {
                        let m = problem(
                            status,
                            format!("{path}.tls.mode"),
                            format!(
                                "listener {}: HTTPS listeners terminate TLS; use protocol TLS for Passthrough",
                                l.name
                            ),
                        );
                        conds.push(bad(cond::ACCEPTED, reason::UNSUPPORTED_VALUE, m));
                        usable = false;
                    }
                    true
                }
                "TLS" => mode == GatewayListenersTlsMode::Terminate,
                _ => false,
            };
            if terminates && resolved.is_ok() {
                let refs = l
                    .tls
                    .as_ref()
                    .and_then(|t| t.certificate_refs.clone())
                    .unwrap_or_default();
                if refs.is_empty() {
                    let m = problem(
                        status,
                        format!("{path}.tls.certificateRefs"),
                        format!(
                            "listener {}: a TLS-terminating listener needs certificateRefs",
                            l.name
                        ),
                    );
                    resolved = Err((reason::INVALID_CERTIFICATE_REF.into(), m));
                }
                for (j, c) in refs.iter().enumerate() {
                    let cpath = format!("{path}.tls.certificateRefs[{j}]");
                    let group = c.group.as_deref().unwrap_or("");
                    let kind = c.kind.as_deref().unwrap_or("Secret");
                    let ns = c
                        .namespace
                        .clone()
                        .unwrap_or_else(|| gw.namespace().to_string());
                    let err = if !group.is_empty() || kind != "Secret" {
                        Some((
                            reason::INVALID_CERTIFICATE_REF,
                            format!(
                                "certificateRef kind {group}/{kind} is not supported (use a Secret)"
                            ),
                        ))
                    } else if ns != gw.namespace()
                        && !granted(
                            s,
                            (GATEWAY_GROUP, "Gateway", gw.namespace()),
                            ("", "Secret", &ns, &c.name),
                        )
                    {
                        Some((
                            reason::REF_NOT_PERMITTED,
                            format!(
                                "secret {ns}/{} is in another namespace and no ReferenceGrant in {ns} allows it",
                                c.name
                            ),
                        ))
                    } else {
                        match get(&s.secrets, &ns, &c.name) {
                            None => Some((
                                reason::INVALID_CERTIFICATE_REF,
                                format!("secret {ns}/{} not found", c.name),
                            )),
                            Some(sec) => tls_secret_problem(&sec.spec).map(|p| {
                                (
                                    reason::INVALID_CERTIFICATE_REF,
                                    format!("secret {} {p}", c.name),
                                )
                            }),
                        }
                    };
                    if let Some((r, m)) = err {
                        let m = unresolved(status, cpath, format!("listener {}: {m}", l.name));
                        if resolved.is_ok() {
                            resolved = Err((r.to_string(), m));
                        }
                    }
                }
            }
            let ns_cfg = l
                .allowed_routes
                .as_ref()
                .and_then(|a| a.namespaces.as_ref());
            let from = ns_cfg.and_then(|n| n.from.clone()).unwrap_or(From::Same);
            let selector = ns_cfg
                .and_then(|n| n.selector.as_ref())
                .map(|sel| LabelSelector {
                    match_labels: sel.match_labels.clone().unwrap_or_default(),
                    match_expressions: sel
                        .match_expressions
                        .iter()
                        .flatten()
                        .map(|e| crate::kinds::LabelSelectorRequirement {
                            key: e.key.clone(),
                            operator: e.operator.clone(),
                            values: e.values.clone().unwrap_or_default(),
                        })
                        .collect(),
                });
            if from == From::Selector && selector.is_none() {
                let m = problem(
                    status,
                    format!("{path}.allowedRoutes.namespaces.selector"),
                    format!("listener {}: from: Selector needs a selector", l.name),
                );
                conds.push(bad(cond::ACCEPTED, reason::INVALID, m));
                usable = false;
            }
            match resolved {
                Ok(()) => conds.push(ok(cond::RESOLVED_REFS, reason::RESOLVED_REFS, "")),
                Err((r, m)) => {
                    conds.push(bad(cond::RESOLVED_REFS, &r, m));
                    // Routes still attach to a listener whose certificate does not resolve (as
                    // in Envoy Gateway), but it cannot be programmed.
                    if r != reason::INVALID_ROUTE_KINDS {
                        unprogrammable = true;
                    }
                }
            }
            infos.push(ListenerInfo {
                name: l.name.clone(),
                port: l.port,
                protocol,
                hostname: l.hostname.clone(),
                kinds,
                from,
                selector,
                usable,
                programmable: usable && !unprogrammable,
                attached: 0,
                conditions: conds,
                invalid_kinds,
            });
        }
        // Conflicts: protocols that cannot share a port, or the same hostname twice.
        let n = infos.len();
        for i in 0..n {
            let mut conflict: Option<(&str, String)> = None;
            for j in 0..n {
                if i == j || infos[i].port != infos[j].port {
                    continue;
                }
                let (a, b) = (&infos[i], &infos[j]);
                let (fa, fb) = (port_family(&a.protocol), port_family(&b.protocol));
                let transport_differs = (fa == "udp") != (fb == "udp");
                if transport_differs {
                    continue;
                }
                if fa != fb {
                    conflict = Some((
                        reason::PROTOCOL_CONFLICT,
                        format!(
                            "listener {} ({}) and listener {} ({}) cannot share port {}",
                            a.name, a.protocol, b.name, b.protocol, a.port
                        ),
                    ));
                    break;
                }
                if a.hostname == b.hostname && (a.protocol == b.protocol || fa == "tls") {
                    let h = a.hostname.as_deref().unwrap_or("(any)");
                    conflict = Some((
                        reason::HOSTNAME_CONFLICT,
                        format!(
                            "listeners {} and {} both take hostname {h} on port {}",
                            a.name, b.name, a.port
                        ),
                    ));
                    break;
                }
            }
            let info = &mut infos[i];
            match conflict {
                Some((r, m)) => {
                    let path = format!("spec.listeners[{i}]");
                    problem(status, path, m.clone());
                    info.conditions
                        .push(Condition::new(cond::CONFLICTED, Status::True, r, m));
                    info.usable = false;
                    info.programmable = false;
                }
                None => info.conditions.push(Condition::new(
                    cond::CONFLICTED,
                    Status::False,
                    reason::NO_CONFLICTS,
                    "",
                )),
            }
        }
        for info in &mut infos {
            if !info.conditions.iter().any(|c| c.type_ == cond::ACCEPTED) {
                let accepted = !info
                    .conditions
                    .iter()
                    .any(|c| c.type_ == cond::CONFLICTED && c.status == Status::True);
                if accepted {
                    info.conditions
                        .insert(0, ok(cond::ACCEPTED, reason::ACCEPTED, ""));
                } else {
                    info.conditions.insert(
                        0,
                        bad(
                            cond::ACCEPTED,
                            reason::INVALID,
                            "listener conflicts with another listener",
                        ),
                    );
                }
            }
            let p = if info.programmable {
                ok(cond::PROGRAMMED, reason::PROGRAMMED, "")
            } else if info.usable {
                bad(
                    cond::PROGRAMMED,
                    reason::INVALID,
                    "listener references do not resolve",
                )
            } else {
                bad(cond::PROGRAMMED, reason::INVALID, "listener is not valid")
            };
            info.conditions.push(p);
        }
        for (path, m) in &gw_problems {
            problem(status, path.clone(), m.clone());
        }
        if !gw_problems.is_empty() {
            status.set(bad(
                cond::ACCEPTED,
                "UnsupportedAddress",
                gw_problems
                    .iter()
                    .map(|p| p.1.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        } else if infos.iter().all(|l| !l.usable) && !infos.is_empty() {
            status.set(bad(
                cond::ACCEPTED,
                "ListenersNotValid",
                "no listener is valid",
            ));
        } else {
            status.set(ok(cond::ACCEPTED, reason::ACCEPTED, ""));
        }
        let address = gateway_address(gw);
        let msg = match &address {
            Some(a) => format!("address {a}"),
            None => "no address assigned; listeners bind 0.0.0.0".to_string(),
        };
        if infos.iter().any(|l| l.programmable) {
            status.set(ok(cond::PROGRAMMED, reason::PROGRAMMED, &msg));
        } else {
            status.set(bad(
                cond::PROGRAMMED,
                reason::INVALID,
                "no listener is valid",
            ));
        }
        out.insert(key, infos);
    }
    out
}

fn lbipam_ips(annotations: Option<&BTreeMap<String, String>>) -> Option<&str> {
    annotations?.get("lbipam.cilium.io/ips").map(String::as_str)
}

/// The address a Gateway asks for: `spec.addresses`, else the Cilium LB-IPAM annotation on its
/// infrastructure (what the corpus uses).
pub fn gateway_address(gw: &Object<gateway_api::gateways::GatewaySpec>) -> Option<String> {
    if let Some(a) = gw
        .spec
        .addresses
        .iter()
        .flatten()
        .find_map(|a| a.value.clone())
    {
        return Some(a);
    }
    lbipam_ips(
        gw.spec
            .infrastructure
            .as_ref()
            .and_then(|i| i.annotations.as_ref()),
    )
    .or_else(|| {
        gw.meta
            .annotations
            .get("lbipam.cilium.io/ips")
            .map(String::as_str)
    })
    .map(|s| s.split(',').next().unwrap_or("").trim().to_string())
}

/// What is wrong with a Secret used as a TLS certificate, if anything.
pub fn tls_secret_problem(secret: &k8s_openapi::api::core::v1::Secret) -> Option<String> {
    let has = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .is_some_and(|v| !v.0.is_empty())
            || secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(k))
                .is_some_and(|v| !v.is_empty())
    };
    let pem = |k: &str| {
        let text = secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(k)).cloned())
            .unwrap_or_default();
        text.contains("-----BEGIN ")
    };
    let ty = secret.type_.as_deref().unwrap_or("Opaque");
    if ty != "kubernetes.io/tls" {
        return Some(format!("has type {ty}, not kubernetes.io/tls"));
    }
    for k in ["tls.crt", "tls.key"] {
        if !has(k) {
            return Some(format!("has no {k}"));
        }
        if !pem(k) {
            return Some(format!("{k} is not PEM"));
        }
    }
    None
}

fn write_listener_status(s: &Snapshot, st: &mut Statuses, listeners: &Listeners) {
    for (key, infos) in listeners {
        let status = st.entry(key.clone()).or_default();
        status.listeners = infos
            .iter()
            .map(|l| ListenerStatus {
                name: l.name.clone(),
                attached_routes: l.attached,
                supported_kinds: l
                    .kinds
                    .iter()
                    .map(|k| RouteGroupKind {
                        group: GATEWAY_GROUP.into(),
                        kind: k.clone(),
                    })
                    .collect(),
                conditions: l.conditions.clone(),
            })
            .collect();
    }
    let _ = s;
}

// ---------------------------------------------------------------------------------------------
// Routes

/// The parts of any route kind that attachment and reference resolution need.
struct RouteView {
    kind: &'static str,
    key: ObjectKey,
    namespace: String,
    hostnames: Vec<String>,
    parents: Vec<ParentRef>,
    /// Backend references with their field paths.
    backends: Vec<(String, BackendRef)>,
}

fn routes(s: &Snapshot, st: &mut Statuses, listeners: &mut Listeners) {
    let mut views = Vec::new();
    for r in s.http_routes.values() {
        let key = key_of(r, GATEWAY_GROUP, "HTTPRoute");
        http_route_rules(r, st.entry(key.clone()).or_default());
        let mut backends = Vec::new();
        for (i, rule) in r.spec.rules.iter().flatten().enumerate() {
            for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
                backends.push((
                    format!("spec.rules[{i}].backendRefs[{j}]"),
                    same_shape::<_, BackendRef>(b),
                ));
            }
            for (j, f) in rule.filters.iter().flatten().enumerate() {
                if let Some(m) = &f.request_mirror {
                    let b = &m.backend_ref;
                    backends.push((
                        format!("spec.rules[{i}].filters[{j}].requestMirror.backendRef"),
                        same_shape::<_, BackendRef>(b),
                    ));
                }
            }
        }
        views.push(RouteView {
            kind: "HTTPRoute",
            key,
            namespace: r.namespace().into(),
            hostnames: r.spec.hostnames.clone().unwrap_or_default(),
            parents: r
                .spec
                .parent_refs
                .iter()
                .flatten()
                .map(same_shape::<_, ParentRef>)
                .collect(),
            backends,
        });
    }
    for r in s.grpc_routes.values() {
        let key = key_of(r, GATEWAY_GROUP, "GRPCRoute");
        let mut backends = Vec::new();
        for (i, rule) in r.spec.rules.iter().flatten().enumerate() {
            for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
                backends.push((
                    format!("spec.rules[{i}].backendRefs[{j}]"),
                    same_shape::<_, BackendRef>(b),
                ));
            }
        }
        views.push(RouteView {
            kind: "GRPCRoute",
            key,
            namespace: r.namespace().into(),
            hostnames: r.spec.hostnames.clone().unwrap_or_default(),
            parents: r
                .spec
                .parent_refs
                .iter()
                .flatten()
                .map(same_shape::<_, ParentRef>)
                .collect(),
            backends,
        });
    }
    for (kind, coll) in [
        ("TLSRoute", &s.tls_routes),
        ("TCPRoute", &s.tcp_routes),
        ("UDPRoute", &s.udp_routes),
    ] {
        for r in coll.values() {
            let key = key_of(r, GATEWAY_GROUP, kind);
            let status = st.entry(key.clone()).or_default();
            if kind != "TLSRoute" && !r.spec.hostnames.is_empty() {
                problem(
                    status,
                    "spec.hostnames",
                    format!("{kind} has no hostnames; only TLSRoute matches on SNI"),
                );
            }
            for (i, h) in r.spec.hostnames.iter().enumerate() {
                if let Err(e) = check_hostname(h) {
                    problem(
                        status,
                        format!("spec.hostnames[{i}]"),
                        format!("hostname {h:?}: {e}"),
                    );
                }
            }
            let backends =
                r.spec
                    .rules
                    .iter()
                    .enumerate()
                    .flat_map(|(i, rule)| {
                        rule.backend_refs.iter().enumerate().map(move |(j, b)| {
                            (format!("spec.rules[{i}].backendRefs[{j}]"), b.clone())
                        })
                    })
                    .collect();
            views.push(RouteView {
                kind,
                key,
                namespace: r.namespace().into(),
                hostnames: r.spec.hostnames.clone(),
                parents: r.spec.parent_refs.clone(),
                backends,
            });
        }
    }
    for v in views {
        route(s, st, listeners, v);
    }
}

fn route(s: &Snapshot, st: &mut Statuses, listeners: &mut Listeners, v: RouteView) {
    let status = st.entry(v.key.clone()).or_default();
    // Rule-level problems found earlier make the route not Accepted on any parent.
    let invalid_rules = status
        .first_invalid()
        .map(|p| format!("{}: {}", p.path, p.message));

    // Backend references: one ResolvedRefs for the route, shared by its parents.
    let mut resolved: Option<(String, String)> = None;
    for (path, b) in &v.backends {
        if let Err((r, m)) = resolve_backend(s, (GATEWAY_GROUP, v.kind, &v.namespace), b, true) {
            let m = unresolved(status, path.clone(), m);
            if resolved.is_none() {
                resolved = Some((r.to_string(), m));
            }
        }
    }
    let resolved_cond = match &resolved {
        None => ok(cond::RESOLVED_REFS, reason::RESOLVED_REFS, ""),
        Some((r, m)) => bad(cond::RESOLVED_REFS, r, m.clone()),
    };

    for (i, p) in v.parents.iter().enumerate() {
        let path = format!("spec.parentRefs[{i}]");
        let group = p.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        let ns = p.namespace.clone().unwrap_or_else(|| v.namespace.clone());
        let out = ParentRefOut {
            kind: kind.into(),
            namespace: ns.clone(),
            name: p.name.clone(),
            section_name: p.section_name.clone(),
            port: p.port,
        };
        let mut conds = Vec::new();
        let mut attached_to: Vec<String> = Vec::new();
        let gw_key = ObjectKey::new(GATEWAY_GROUP, "Gateway", &ns, &p.name);
        let accepted: Condition = if group != GATEWAY_GROUP || kind != "Gateway" {
            let m = unresolved(
                status,
                path.clone(),
                format!("parentRef kind {group}/{kind} is not supported (use a Gateway)"),
            );
            bad(cond::ACCEPTED, reason::NO_MATCHING_PARENT, m)
        } else if get(&s.gateways, &ns, &p.name).is_none() {
            let m = unresolved(
                status,
                path.clone(),
                format!("gateway {ns}/{} not found", p.name),
            );
            bad(cond::ACCEPTED, reason::NO_MATCHING_PARENT, m)
        } else if let Some(infos) = listeners.get_mut(&gw_key) {
            match attach(s, &v, p, infos) {
                Ok(names) if invalid_rules.is_none() => {
                    let m = format!(
                        "attached to listener(s) {} of gateway {ns}/{}",
                        names.join(", "),
                        p.name
                    );
                    attached_to = names;
                    ok(cond::ACCEPTED, reason::ACCEPTED, m)
                }
                Ok(_) => bad(
                    cond::ACCEPTED,
                    reason::UNSUPPORTED_VALUE,
                    invalid_rules.clone().unwrap_or_default(),
                ),
                Err((r, m)) => {
                    let m = unresolved(status, path.clone(), m);
                    bad(cond::ACCEPTED, r, m)
                }
            }
        } else {
            // The Gateway exists but is not served by trellis (or not accepted).
            Condition::new(
                cond::ACCEPTED,
                Status::Unknown,
                reason::PENDING,
                format!("gateway {ns}/{} is not accepted", p.name),
            )
        };
        conds.push(accepted);
        conds.push(resolved_cond.clone());
        status.parents.push(ParentStatus {
            parent_ref: out,
            conditions: conds,
            listeners: attached_to,
        });
    }
    if v.parents.is_empty() {
        unresolved(
            status,
            "spec.parentRefs",
            "route has no parentRefs; it attaches to nothing",
        );
        status.set(bad(
            cond::ACCEPTED,
            reason::NO_MATCHING_PARENT,
            "route has no parentRefs",
        ));
    } else {
        // The object-level summary: accepted when accepted by at least one parent.
        let any = status.parents.iter().any(|p| {
            p.conditions
                .iter()
                .any(|c| c.type_ == cond::ACCEPTED && c.status == Status::True)
        });
        let first_bad = status
            .parents
            .iter()
            .flat_map(|p| &p.conditions)
            .find(|c| c.type_ == cond::ACCEPTED && c.status != Status::True)
            .cloned();
        match (any, first_bad) {
            (true, _) | (false, None) => status.set(ok(cond::ACCEPTED, reason::ACCEPTED, "")),
            (false, Some(c)) => status.set(c),
        }
        status.set(resolved_cond);
    }
}

/// Attaches a route to the listeners of one parentRef. Returns how many listeners took it,
/// or the reason none did.
fn attach(
    s: &Snapshot,
    v: &RouteView,
    p: &ParentRef,
    infos: &mut [ListenerInfo],
) -> Result<Vec<String>, (&'static str, String)> {
    let gw = format!(
        "{}/{}",
        p.namespace.as_deref().unwrap_or(&v.namespace),
        p.name
    );
    let candidates: Vec<usize> = infos
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            p.section_name.as_ref().is_none_or(|sn| *sn == l.name)
                && p.port.is_none_or(|port| port == l.port)
        })
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        let what = match (&p.section_name, p.port) {
            (Some(sn), _) => format!("listener {sn}"),
            (None, Some(port)) => format!("a listener on port {port}"),
            _ => "any listener".into(),
        };
        return Err((
            reason::NO_MATCHING_PARENT,
            format!("gateway {gw} has no {what}"),
        ));
    }
    let ns_labels = s.namespace_labels(&v.namespace);
    let gw_ns = p.namespace.clone().unwrap_or_else(|| v.namespace.clone());
    let mut attached = Vec::new();
    let mut why_not: Vec<(&'static str, String)> = Vec::new();
    for i in candidates {
        let l = &mut infos[i];
        if !l.usable {
            why_not.push((
                reason::NOT_ALLOWED_BY_LISTENERS,
                format!("listener {} is not valid", l.name),
            ));
            continue;
        }
        if !l.kinds.iter().any(|k| k == v.kind) {
            why_not.push((
                reason::NOT_ALLOWED_BY_LISTENERS,
                format!(
                    "listener {} does not allow kind {} (allows {})",
                    l.name,
                    v.kind,
                    l.kinds.join(", ")
                ),
            ));
            continue;
        }
        let ns_ok = match l.from {
            From::All => true,
            From::Same => v.namespace == gw_ns,
            From::Selector => l
                .selector
                .as_ref()
                .is_some_and(|sel| sel.matches(&ns_labels)),
        };
        if !ns_ok {
            let rule = match l.from {
                From::Same => format!("only routes from namespace {gw_ns}"),
                _ => "only namespaces matching its selector".to_string(),
            };
            why_not.push((
                reason::NOT_ALLOWED_BY_LISTENERS,
                format!("listener {} allows {rule}, not {}", l.name, v.namespace),
            ));
            continue;
        }
        let uses_hostnames = matches!(l.protocol.as_str(), "HTTP" | "HTTPS" | "TLS");
        if uses_hostnames
            && let Some(lh) = &l.hostname
            && !v.hostnames.is_empty()
            && !v.hostnames.iter().any(|h| hostnames_intersect(h, lh))
        {
            why_not.push((
                reason::NO_MATCHING_LISTENER_HOSTNAME,
                format!(
                    "none of the route's hostnames ({}) matches listener {} hostname {lh}",
                    v.hostnames.join(", "),
                    l.name
                ),
            ));
            continue;
        }
        l.attached += 1;
        attached.push(l.name.clone());
    }
    if !attached.is_empty() {
        return Ok(attached);
    }
    // Prefer the hostname reason: it says the route was otherwise allowed.
    let pick = why_not
        .iter()
        .find(|w| w.0 == reason::NO_MATCHING_LISTENER_HOSTNAME)
        .or(why_not.first())
        .cloned()
        .unwrap_or((
            reason::NOT_ALLOWED_BY_LISTENERS,
            "no listener allows the route".into(),
        ));
    let all = why_not
        .iter()
        .map(|w| w.1.clone())
        .collect::<Vec<_>>()
        .join("; ");
    Err((pick.0, format!("gateway {gw}: {all}")))
}

/// Whether a route hostname and a listener hostname intersect (both may be wildcards).
pub fn hostnames_intersect(route: &str, listener: &str) -> bool {
    hostname_intersection(route, listener).is_some()
}

/// The hostnames a route hostname and a listener hostname both match, as one hostname: the
/// more specific of the two (`foo.example.com` and `*.example.com` give `foo.example.com`).
pub fn hostname_intersection(route: &str, listener: &str) -> Option<String> {
    let (r, l) = (route.to_ascii_lowercase(), listener.to_ascii_lowercase());
    // `*.x` matches names with at least one more label than `x`.
    let covers = |suffix: &str, name: &str| {
        name.len() > suffix.len() + 1 && name.ends_with(&format!(".{suffix}"))
    };
    match (r.strip_prefix("*."), l.strip_prefix("*.")) {
        (None, None) => (r == l).then_some(r),
        (None, Some(ls)) => covers(ls, &r).then_some(r),
        (Some(rs), None) => covers(rs, &l).then_some(l),
        (Some(rs), Some(ls)) => {
            if rs == ls || rs.ends_with(&format!(".{ls}")) {
                Some(r)
            } else if ls.ends_with(&format!(".{rs}")) {
                Some(l)
            } else {
                None
            }
        }
    }
}

/// Checks a Gateway API hostname: RFC 1123 labels, an optional leading `*.`, no IPs.
pub fn check_hostname(h: &str) -> Result<(), String> {
    if let Some(var) = undefined_variable(h) {
        return Err(format!(
            "holds the undefined variable {var}; pass it with --vars FILE"
        ));
    }
    if h.parse::<IpAddr>().is_ok() {
        return Err("IP addresses are not hostnames".into());
    }
    let rest = h.strip_prefix("*.").unwrap_or(h);
    if rest.is_empty() || rest.len() > 253 {
        return Err("empty or longer than 253 characters".into());
    }
    for label in rest.split('.') {
        let okay = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !okay {
            return Err(format!(
                "label {label:?} is not a valid DNS label (wildcards only as a leading `*.`)"
            ));
        }
    }
    Ok(())
}

/// The first `${VAR}` left in a value by substitution, if any.
pub fn undefined_variable(v: &str) -> Option<&str> {
    let start = v.find("${")?;
    let end = v[start..].find('}')? + start + 1;
    Some(&v[start..end])
}

/// Whether a ReferenceGrant in the target's namespace allows `from` to refer to `to`.
pub fn granted(s: &Snapshot, from: (&str, &str, &str), to: (&str, &str, &str, &str)) -> bool {
    let (fg, fk, fns) = from;
    let (tg, tk, tns, tname) = to;
    s.reference_grants
        .values()
        .filter(|g| g.namespace() == tns)
        .any(|g| {
            g.spec
                .from
                .iter()
                .any(|f| f.group == fg && f.kind == fk && f.namespace == fns)
                && g.spec.to.iter().any(|t| {
                    t.group == tg && t.kind == tk && t.name.as_deref().is_none_or(|n| n == tname)
                })
        })
}

/// Resolves one backend reference: kind, namespace permission, existence and port.
fn resolve_backend(
    s: &Snapshot,
    from: (&str, &str, &str),
    b: &BackendRef,
    port_required: bool,
) -> Result<(), (&'static str, String)> {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    let ns = b.namespace.clone().unwrap_or_else(|| from.2.to_string());
    let is_service = group.is_empty() && kind == "Service";
    let is_backend = group == ENVOY_GROUP && kind == "Backend";
    if !is_service && !is_backend {
        return Err((
            reason::INVALID_KIND,
            format!(
                "backendRef kind {group}/{kind} is not supported (use a Service or an Envoy Gateway Backend)"
            ),
        ));
    }
    if ns != from.2 && !granted(s, from, (group, kind, &ns, &b.name)) {
        return Err((
            reason::REF_NOT_PERMITTED,
            format!(
                "{} {ns}/{} is in another namespace and no ReferenceGrant in {ns} allows {} from {}",
                kind, b.name, from.1, from.2
            ),
        ));
    }
    if is_backend {
        return match get(&s.envoy_backends, &ns, &b.name) {
            Some(_) => Ok(()),
            None => Err((
                reason::BACKEND_NOT_FOUND,
                format!("Backend {ns}/{} not found", b.name),
            )),
        };
    }
    let Some(svc) = get(&s.services, &ns, &b.name) else {
        return Err((
            reason::BACKEND_NOT_FOUND,
            format!("service {ns}/{} not found", b.name),
        ));
    };
    match b.port {
        None if port_required => Err((
            reason::BACKEND_NOT_FOUND,
            format!("backendRef to service {ns}/{} needs a port", b.name),
        )),
        None => Ok(()),
        Some(port) => {
            let spec = svc.spec.spec.as_ref();
            let is_external_name = spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName");
            let has = spec
                .and_then(|s| s.ports.as_ref())
                .is_some_and(|ps| ps.iter().any(|sp| sp.port == port));
            if has || is_external_name {
                Ok(())
            } else {
                Err((
                    reason::BACKEND_NOT_FOUND,
                    format!("service {ns}/{} has no port {port}", b.name),
                ))
            }
        }
    }
}

/// HTTPRoute rule checks that make a route not Accepted (reason UnsupportedValue).
fn http_route_rules(r: &Object<gateway_api::httproutes::HttpRouteSpec>, status: &mut ObjectStatus) {
    use gateway_api::httproutes::{
        HttpRouteRulesFiltersType as F, HttpRouteRulesMatchesPathType as P,
    };
    for (i, h) in r.spec.hostnames.iter().flatten().enumerate() {
        if let Err(e) = check_hostname(h) {
            problem(
                status,
                format!("spec.hostnames[{i}]"),
                format!("hostname {h:?}: {e}"),
            );
        }
    }
    for (i, rule) in r.spec.rules.iter().flatten().enumerate() {
        let rp = format!("spec.rules[{i}]");
        let mut all_prefix = true;
        for (j, m) in rule.matches.iter().flatten().enumerate() {
            let mp = format!("{rp}.matches[{j}]");
            let (ty, value) = m
                .path
                .as_ref()
                .map(|p| {
                    (
                        p.r#type.clone().unwrap_or(P::PathPrefix),
                        p.value.clone().unwrap_or_else(|| "/".into()),
                    )
                })
                .unwrap_or((P::PathPrefix, "/".into()));
            if ty != P::PathPrefix {
                all_prefix = false;
            }
            match ty {
                P::Exact | P::PathPrefix => {
                    if !value.starts_with('/') {
                        problem(
                            status,
                            format!("{mp}.path.value"),
                            format!("path {value:?} must start with /"),
                        );
                    }
                }
                P::RegularExpression => {
                    if let Err(e) = regex::Regex::new(&value) {
                        problem(
                            status,
                            format!("{mp}.path.value"),
                            format!(
                                "path regex {value:?} does not compile: {}",
                                first_line(&e.to_string())
                            ),
                        );
                    }
                }
            }
            for (k, h) in m.headers.iter().flatten().enumerate() {
                if h.r#type == Some(gateway_api::httproutes::HttpRouteRulesMatchesHeadersType::RegularExpression)
                    && let Err(e) = regex::Regex::new(&h.value) {
                        problem(status, format!("{mp}.headers[{k}].value"), format!("header regex {:?} does not compile: {}", h.value, first_line(&e.to_string())));
                    }
            }
            for (k, q) in m.query_params.iter().flatten().enumerate() {
                if q.r#type == Some(gateway_api::httproutes::HttpRouteRulesMatchesQueryParamsType::RegularExpression)
                    && let Err(e) = regex::Regex::new(&q.value) {
                        problem(status, format!("{mp}.queryParams[{k}].value"), format!("query regex {:?} does not compile: {}", q.value, first_line(&e.to_string())));
                    }
            }
        }
        if rule.matches.as_ref().is_none_or(Vec::is_empty) {
            all_prefix = true;
        }
        let filters = rule.filters.as_deref().unwrap_or_default();
        let has = |t: F| filters.iter().any(|f| f.r#type == t);
        if has(F::RequestRedirect) && has(F::UrlRewrite) {
            problem(
                status,
                format!("{rp}.filters"),
                "RequestRedirect and URLRewrite cannot be used in the same rule",
            );
        }
        for (j, f) in filters.iter().enumerate() {
            let fp = format!("{rp}.filters[{j}]");
            let present = match f.r#type {
                F::RequestHeaderModifier => f.request_header_modifier.is_some(),
                F::ResponseHeaderModifier => f.response_header_modifier.is_some(),
                F::RequestMirror => f.request_mirror.is_some(),
                F::RequestRedirect => f.request_redirect.is_some(),
                F::UrlRewrite => f.url_rewrite.is_some(),
                F::ExtensionRef => f.extension_ref.is_some(),
                F::Cors => f.cors.is_some(),
            };
            if !present {
                problem(
                    status,
                    fp.clone(),
                    format!("filter type {:?} needs its matching field", f.r#type),
                );
            }
            if f.r#type == F::ExtensionRef {
                problem(
                    status,
                    fp.clone(),
                    "ExtensionRef filters are not supported by trellis",
                );
            }
            if let Some(rr) = &f.request_redirect {
                if let Some(code) = rr.status_code
                    && ![301, 302, 303, 307, 308].contains(&code)
                {
                    problem(
                        status,
                        format!("{fp}.requestRedirect.statusCode"),
                        format!("redirect status {code} is not one of 301, 302, 303, 307, 308"),
                    );
                }
                if let Some(p) = &rr.path
                    && p.replace_prefix_match.is_some()
                    && !all_prefix
                {
                    problem(
                        status,
                        format!("{fp}.requestRedirect.path"),
                        "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
                    );
                }
            }
            if let Some(uw) = &f.url_rewrite
                && let Some(p) = &uw.path
                && p.replace_prefix_match.is_some()
                && !all_prefix
            {
                problem(
                    status,
                    format!("{fp}.urlRewrite.path"),
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
                );
            }
        }
        if let Some(t) = &rule.timeouts {
            let parse = |v: &Option<String>,
                         field: &str,
                         status: &mut ObjectStatus|
             -> Option<std::time::Duration> {
                let v = v.as_ref()?;
                match parse_duration(v) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        problem(
                            status,
                            format!("{rp}.timeouts.{field}"),
                            format!("duration {v:?}: {e}"),
                        );
                        None
                    }
                }
            };
            let req = parse(&t.request, "request", status);
            let be = parse(&t.backend_request, "backendRequest", status);
            if let (Some(req), Some(be)) = (req, be)
                && !req.is_zero()
                && be > req
            {
                problem(
                    status,
                    format!("{rp}.timeouts.backendRequest"),
                    "backendRequest must not be longer than request",
                );
            }
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Envoy Gateway policies

fn policies(s: &Snapshot, st: &mut Statuses) {
    // Which (policy kind, target) pairs are taken, for Conflicted.
    let mut taken: BTreeMap<(&'static str, ObjectKey), ObjectKey> = BTreeMap::new();
    policy_kind(
        s,
        st,
        &mut taken,
        "BackendTrafficPolicy",
        &s.backend_traffic_policies,
        &|_, spec, status| {
            for (i, c) in spec.compressor.iter().enumerate() {
                if !matches!(c.type_.as_str(), "Gzip" | "Brotli" | "Zstd") {
                    problem(
                        status,
                        format!("spec.compressor[{i}].type"),
                        format!("compressor {:?} is not one of Gzip, Brotli, Zstd", c.type_),
                    );
                }
            }
            if let Some(r) = &spec.retry {
                const TRIGGERS: &[&str] = &[
                    "5xx",
                    "gateway-error",
                    "reset",
                    "reset-before-request",
                    "connect-failure",
                    "retriable-4xx",
                    "refused-stream",
                    "retriable-status-codes",
                    "cancelled",
                    "deadline-exceeded",
                    "internal",
                    "resource-exhausted",
                    "unavailable",
                ];
                for (i, t) in r
                    .retry_on
                    .iter()
                    .flat_map(|o| o.triggers.iter())
                    .enumerate()
                {
                    if !TRIGGERS.contains(&t.as_str()) {
                        problem(
                            status,
                            format!("spec.retry.retryOn.triggers[{i}]"),
                            format!("retry trigger {t:?} is not known"),
                        );
                    }
                }
                if let Some(b) = r.per_retry.as_ref().and_then(|p| p.back_off.as_ref()) {
                    check_duration(
                        status,
                        "spec.retry.perRetry.backOff.baseInterval",
                        &b.base_interval,
                    );
                    check_duration(
                        status,
                        "spec.retry.perRetry.backOff.maxInterval",
                        &b.max_interval,
                    );
                }
                check_duration(
                    status,
                    "spec.retry.perRetry.timeout",
                    &r.per_retry.as_ref().and_then(|p| p.timeout.clone()),
                );
            }
            if let Some(t) = spec.timeout.as_ref().and_then(|t| t.http.as_ref()) {
                check_duration(
                    status,
                    "spec.timeout.http.requestTimeout",
                    &t.request_timeout,
                );
                check_duration(
                    status,
                    "spec.timeout.http.connectionIdleTimeout",
                    &t.connection_idle_timeout,
                );
            }
            if let Some(k) = &spec.tcp_keepalive {
                check_duration(status, "spec.tcpKeepalive.idleTime", &k.idle_time);
                check_duration(status, "spec.tcpKeepalive.interval", &k.interval);
            }
        },
    );
    policy_kind(
        s,
        st,
        &mut taken,
        "ClientTrafficPolicy",
        &s.client_traffic_policies,
        &|_, spec, status| {
            for t in spec.target_refs() {
                if t.kind != "Gateway" {
                    problem(
                        status,
                        "spec.targetRefs",
                        format!("ClientTrafficPolicy targets Gateways, not {}", t.kind),
                    );
                }
            }
            if let Some(x) = spec
                .client_ip_detection
                .as_ref()
                .and_then(|c| c.x_forwarded_for.as_ref())
            {
                for (i, c) in x.trusted_cidrs.iter().enumerate() {
                    if c.parse::<ipnet::IpNet>().is_err() {
                        problem(
                            status,
                            format!("spec.clientIPDetection.xForwardedFor.trustedCIDRs[{i}]"),
                            format!("{c:?} is not a CIDR"),
                        );
                    }
                }
            }
            if let Some(m) = spec
                .http2
                .as_ref()
                .and_then(|h| h.on_invalid_message.as_ref())
                && !matches!(m.as_str(), "TerminateConnection" | "TerminateStream")
            {
                problem(
                    status,
                    "spec.http2.onInvalidMessage",
                    format!("{m:?} is not TerminateConnection or TerminateStream"),
                );
            }
            // Fields that are parsed and kept but cannot be served as asked: say so in one
            // Supported condition, without making the policy invalid (the rest applies).
            let mut unsupported = Vec::new();
            if spec
                .http2
                .as_ref()
                .and_then(|h| h.on_invalid_message.as_deref())
                == Some("TerminateConnection")
            {
                // The HTTP/2 server (h2 under hyper) resets just the stream of a malformed
                // request and offers no hook to close the connection instead.
                unsupported.push(
                    "spec.http2.onInvalidMessage: TerminateConnection is not served: an invalid \
                     HTTP/2 message resets only its stream (TerminateStream)",
                );
            }
            if !unsupported.is_empty() {
                status.set(Condition::new(
                    "Supported",
                    Status::False,
                    reason::UNSUPPORTED,
                    format!("{}; the rest of the policy applies", unsupported.join("; ")),
                ));
            }
            if let Some(tls) = &spec.tls {
                for (field, v) in [
                    ("minVersion", &tls.min_version),
                    ("maxVersion", &tls.max_version),
                ] {
                    if let Some(v) = v
                        && !matches!(v.as_str(), "Auto" | "1.0" | "1.1" | "1.2" | "1.3")
                    {
                        problem(
                            status,
                            format!("spec.tls.{field}"),
                            format!("TLS version {v:?} is not one of Auto, 1.0, 1.1, 1.2, 1.3"),
                        );
                    }
                }
                // TLS is rustls's: 1.2 and 1.3. An older minimum is met more strictly; an
                // older maximum cannot be.
                if let Some(v @ ("1.0" | "1.1")) = tls.max_version.as_deref() {
                    problem(
                        status,
                        "spec.tls.maxVersion",
                        format!(
                            "TLS maxVersion {v} cannot be honoured: trellis speaks TLS 1.2 and 1.3 only"
                        ),
                    );
                }
                if tls.min_version.as_deref() == Some("1.3")
                    && tls.max_version.as_deref() == Some("1.2")
                {
                    problem(status, "spec.tls", "minVersion 1.3 is above maxVersion 1.2");
                }
                for (i, a) in tls.alpn_protocols.iter().enumerate() {
                    if !matches!(a.as_str(), "h2" | "http/1.1" | "http/1.0") {
                        problem(
                            status,
                            format!("spec.tls.alpnProtocols[{i}]"),
                            format!("ALPN protocol {a:?} is not one of h2, http/1.1, http/1.0"),
                        );
                    }
                }
            }
        },
    );
    policy_kind(
        s,
        st,
        &mut taken,
        "EnvoyExtensionPolicy",
        &s.envoy_extension_policies,
        &|p, spec, status| {
            for (i, l) in spec.lua.iter().enumerate() {
                let path = format!("spec.lua[{i}]");
                match (l.type_.as_str(), &l.inline, &l.value_ref) {
                    ("Inline", Some(_), _) => {}
                    ("ValueRef", _, Some(r)) => {
                        if let Err(m) = config_map_value(s, p.namespace(), r, "lua") {
                            unresolved(status, format!("{path}.valueRef"), m);
                            status.set(bad(
                                cond::RESOLVED_REFS,
                                reason::INVALID_VALUE_REF,
                                format!(
                                    "{path}.valueRef: {}",
                                    status
                                        .problems
                                        .last()
                                        .map(|x| x.message.clone())
                                        .unwrap_or_default()
                                ),
                            ));
                        }
                    }
                    (t, _, _) => {
                        problem(
                            status,
                            path,
                            format!(
                                "lua type {t:?} needs its field (Inline needs inline, ValueRef needs valueRef)"
                            ),
                        );
                    }
                }
            }
            l4_targets_refused(s, p.namespace(), spec, status, "an EnvoyExtensionPolicy");
            if spec.wasm.is_some() || spec.ext_proc.is_some() {
                problem(
                    status,
                    "spec",
                    "wasm and extProc extensions are not supported by trellis (lua is)",
                );
            }
        },
    );
    policy_kind(
        s,
        st,
        &mut taken,
        "SecurityPolicy",
        &s.security_policies,
        &|p, spec, status| {
            let from = (ENVOY_GROUP, "SecurityPolicy", p.namespace());
            let key = key_of(p, ENVOY_GROUP, "SecurityPolicy");
            for (path, what) in security_unenforced(spec) {
                problem(
                    status,
                    path,
                    format!(
                        "{what} is not enforced by trellis yet: what this policy targets \
                         answers 500 until it is (a route is never served without its \
                         authentication)"
                    ),
                );
            }
            for f in s.unknown_fields(&key) {
                problem(
                    status,
                    f,
                    format!(
                        "field `{f}` is not known to trellis: the policy is refused rather than \
                         enforced without it, and what it targets answers 500"
                    ),
                );
            }
            if let Some(jwt) = &spec.jwt {
                for (path, m) in jwt_problems(s, p.namespace(), jwt) {
                    problem(status, path, m);
                }
            }
            if let Some(a) = &spec.authorization {
                for (path, m) in authorization_problems(spec, a) {
                    problem(status, path, m);
                }
            }
            if let Some(h) = spec.ext_auth.as_ref().and_then(|e| e.http.as_ref())
                && h.backend_ref.is_none()
                && h.backend_refs.is_empty()
            {
                problem(
                    status,
                    "spec.extAuth.http",
                    "extAuth.http needs backendRef or backendRefs: without an authorization \
                     service every request is refused (500)",
                );
            }
            let mut refs_bad: Option<(String, String)> = None;
            if let Some(ea) = &spec.ext_auth {
                let backends: Vec<(String, &BackendRef)> =
                    match (&ea.http, &ea.grpc) {
                        (Some(h), _) => {
                            h.backend_ref
                                .iter()
                                .map(|b| ("spec.extAuth.http.backendRef".to_string(), b))
                                .chain(h.backend_refs.iter().enumerate().map(|(i, b)| {
                                    (format!("spec.extAuth.http.backendRefs[{i}]"), b)
                                }))
                                .collect()
                        }
                        (None, Some(g)) => {
                            g.backend_ref
                                .iter()
                                .map(|b| ("spec.extAuth.grpc.backendRef".to_string(), b))
                                .chain(g.backend_refs.iter().enumerate().map(|(i, b)| {
                                    (format!("spec.extAuth.grpc.backendRefs[{i}]"), b)
                                }))
                                .collect()
                        }
                        (None, None) => {
                            problem(status, "spec.extAuth", "extAuth needs http or grpc");
                            Vec::new()
                        }
                    };
                for (path, b) in backends {
                    if let Err((r, m)) = resolve_backend(s, from, b, true) {
                        let m = unresolved(status, path, m);
                        refs_bad.get_or_insert((r.to_string(), m));
                    }
                }
            }
            if let Some(o) = &spec.oidc {
                if o.client_id.as_deref().unwrap_or_default().is_empty() {
                    problem(
                        status,
                        "spec.oidc.clientID",
                        "an OIDC client needs its clientID",
                    );
                }
                if o.client_secret.is_none() {
                    problem(
                        status,
                        "spec.oidc.clientSecret",
                        "an OIDC client needs its clientSecret (a Secret with client-secret)",
                    );
                }
                if let Some(cs) = &o.client_secret {
                    let ns = cs
                        .namespace
                        .clone()
                        .unwrap_or_else(|| p.namespace().to_string());
                    if get(&s.secrets, &ns, &cs.name).is_none() {
                        let m = unresolved(
                            status,
                            "spec.oidc.clientSecret",
                            format!("secret {ns}/{} not found", cs.name),
                        );
                        refs_bad.get_or_insert((reason::INVALID_KIND.to_string(), m));
                    }
                }
                if !o.provider.issuer.starts_with("https://")
                    && !o.provider.issuer.starts_with("http://")
                {
                    problem(
                        status,
                        "spec.oidc.provider.issuer",
                        format!("issuer {:?} is not a URL", o.provider.issuer),
                    );
                }
            }
            l4_targets_refused(s, p.namespace(), spec, status, "a SecurityPolicy");
            if let Some(c) = &spec.cors {
                check_duration(status, "spec.cors.maxAge", &c.max_age);
                if c.allow_origins.is_empty() {
                    problem(status, "spec.cors.allowOrigins", "names no origin");
                }
            }
            if let Some(k) = &spec.api_key_auth {
                if k.credential_refs.is_empty() {
                    problem(
                        status,
                        "spec.apiKeyAuth.credentialRefs",
                        "names no Secret of keys",
                    );
                }
                let places = |e: &crate::kinds::envoy::ApiKeyExtractFrom| {
                    e.headers.len() + e.params.len() + e.cookies.len()
                };
                if k.sanitize == Some(true) && k.extract_from.iter().any(|e| !e.params.is_empty()) {
                    problem(
                        status,
                        "spec.apiKeyAuth.sanitize",
                        "sanitize cannot take a key out of a query parameter (the query goes \
                         upstream as it came): refused rather than leak the key",
                    );
                }
                if k.extract_from.iter().map(places).sum::<usize>() == 0 {
                    problem(
                        status,
                        "spec.apiKeyAuth.extractFrom",
                        "names no header, parameter or cookie to take the key from",
                    );
                }
                for (i, r) in k.credential_refs.iter().enumerate() {
                    let ns = r.namespace.as_deref().unwrap_or(p.namespace());
                    if get(&s.secrets, ns, &r.name).is_none() {
                        let m = unresolved(
                            status,
                            format!("spec.apiKeyAuth.credentialRefs[{i}]"),
                            format!("secret {ns}/{} not found", r.name),
                        );
                        refs_bad.get_or_insert((reason::INVALID_KIND.to_string(), m));
                    }
                }
            }
            if let Some(b) = &spec.basic_auth
                && get(&s.secrets, p.namespace(), &b.users.name).is_none()
            {
                let m = unresolved(
                    status,
                    "spec.basicAuth.users",
                    format!("secret {}/{} not found", p.namespace(), b.users.name),
                );
                refs_bad.get_or_insert((reason::INVALID_KIND.to_string(), m));
            }
            match refs_bad {
                None => status.set(ok(cond::RESOLVED_REFS, reason::RESOLVED_REFS, "")),
                Some((r, m)) => {
                    let r = if r == reason::INVALID_KIND && m.contains("secret") {
                        "SecretNotFound".to_string()
                    } else {
                        r
                    };
                    status.set(bad(cond::RESOLVED_REFS, &r, m));
                }
            }
        },
    );
}

/// The parts of a SecurityPolicy trellis does not enforce (yet), each with its field path and
/// what it is. Validation makes each a problem (`Accepted=False`, reason Invalid), and the
/// gateway answers 500 on whatever such a policy targets: a route is never served without the
/// authentication its policy asks for.
pub fn security_unenforced(spec: &SecurityPolicySpec) -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = Vec::new();
    let mut push = |path: &str, what| out.push((path.to_string(), what));
    if spec
        .ext_auth
        .as_ref()
        .is_some_and(|ea| ea.body_to_ext_auth.is_some())
    {
        push(
            "spec.extAuth.bodyToExtAuth",
            "sending the request body to the authorization service",
        );
    }
    for (i, p) in spec.jwt.iter().flat_map(|j| j.providers.iter()).enumerate() {
        let at = |f: &str| format!("spec.jwt.providers[{i}].{f}");
        if p.recompute_route == Some(true) {
            out.push((at("recomputeRoute"), "routing again on claim headers"));
        }
        if let Some(r) = &p.remote_jwks {
            if r.backend_ref.is_some() || !r.backend_refs.is_empty() {
                out.push((
                    at("remoteJWKS.backendRefs"),
                    "fetching a JWKS through a backend (the URI's host is asked directly)",
                ));
            }
            if r.backend_settings.is_some() {
                out.push((at("remoteJWKS.backendSettings"), "JWKS backend settings"));
            }
        }
    }
    out
}

/// A policy that only HTTP requests can honour (a SecurityPolicy, an EnvoyExtensionPolicy)
/// targeting an L4 route: a problem, and the gateway refuses the route's connections.
fn l4_targets_refused<S: Policy>(
    s: &Snapshot,
    ns: &str,
    spec: &S,
    status: &mut ObjectStatus,
    what: &str,
) {
    for t in policy_targets(s, ns, spec) {
        if matches!(t.kind.as_str(), "TCPRoute" | "TLSRoute" | "UDPRoute") {
            problem(
                status,
                "spec.targetRefs",
                format!(
                    "{} {} is an L4 route: {what} is not enforced there, so its connections \
                     are refused",
                    t.kind,
                    t.ns_name()
                ),
            );
        }
    }
}

/// What is wrong in a SecurityPolicy's `authorization` (path, message): an action that is
/// not Allow or Deny, a rule about nobody, a CIDR or method that does not parse, a JWT
/// principal naming a provider the policy's `jwt` does not have.
pub fn authorization_problems(
    spec: &SecurityPolicySpec,
    a: &crate::kinds::envoy::Authorization,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let action = |v: &str| matches!(v, "Allow" | "Deny");
    if let Some(d) = &a.default_action
        && !action(d)
    {
        out.push((
            "spec.authorization.defaultAction".to_string(),
            format!("{d:?} is not Allow or Deny"),
        ));
    }
    for (i, r) in a.rules.iter().enumerate() {
        let at = |f: &str| format!("spec.authorization.rules[{i}]{f}");
        if !action(&r.action) {
            out.push((
                at(".action"),
                format!("{:?} is not Allow or Deny", r.action),
            ));
        }
        let p = &r.principal;
        if p.client_cidrs.is_empty() && p.jwt.is_none() && p.headers.is_empty() {
            out.push((
                at(".principal"),
                "needs clientCIDRs, jwt or headers".to_string(),
            ));
        }
        for (k, c) in p.client_cidrs.iter().enumerate() {
            if c.parse::<ipnet::IpNet>().is_err() {
                out.push((
                    at(&format!(".principal.clientCIDRs[{k}]")),
                    format!("{c:?} is not a CIDR"),
                ));
            }
        }
        for (k, m) in r
            .operation
            .iter()
            .flat_map(|o| o.methods.iter())
            .enumerate()
        {
            if http_method(m).is_none() {
                out.push((
                    at(&format!(".operation.methods[{k}]")),
                    format!("{m:?} is not an HTTP method"),
                ));
            }
        }
        if let Some(j) = &p.jwt {
            let known = spec
                .jwt
                .iter()
                .flat_map(|x| x.providers.iter())
                .any(|pr| pr.name == j.provider);
            if !known {
                out.push((
                    at(".principal.jwt.provider"),
                    format!(
                        "provider {:?} is not one of this policy's jwt providers",
                        j.provider
                    ),
                ));
            }
            if j.claims.is_empty() && j.scopes.is_empty() {
                out.push((at(".principal.jwt"), "needs claims or scopes".to_string()));
            }
            for (k, c) in j.claims.iter().enumerate() {
                if !matches!(
                    c.value_type.as_deref(),
                    None | Some("String" | "StringArray")
                ) {
                    out.push((
                        at(&format!(".principal.jwt.claims[{k}].valueType")),
                        "is not String or StringArray".to_string(),
                    ));
                }
            }
        }
    }
    out
}

/// The methods an authorization rule may name (the Gateway API's `HTTPMethod`).
pub fn http_method(m: &str) -> Option<&'static str> {
    [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ]
    .into_iter()
    .find(|x| *x == m)
}

/// The most providers one `jwt` may list (Envoy Gateway's CRD bound).
pub const JWT_PROVIDERS_MAX: usize = 4;

/// What is wrong in the shape of a SecurityPolicy's `jwt` (path, message): no provider, a
/// provider with no or two key sources, a JWKS that is not a JWKS, a URI that is not http(s).
pub fn jwt_problems(
    s: &Snapshot,
    ns: &str,
    jwt: &crate::kinds::envoy::Jwt,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if jwt.providers.is_empty() || jwt.providers.len() > JWT_PROVIDERS_MAX {
        out.push((
            "spec.jwt.providers".to_string(),
            format!("needs 1 to {JWT_PROVIDERS_MAX} providers"),
        ));
    }
    for (i, p) in jwt.providers.iter().enumerate() {
        let at = |f: &str| format!("spec.jwt.providers[{i}]{f}");
        if p.name.is_empty() {
            out.push((at(".name"), "a provider needs a name".into()));
        }
        match (&p.remote_jwks, &p.local_jwks) {
            (Some(_), Some(_)) | (None, None) => out.push((
                at(""),
                "exactly one of remoteJWKS and localJWKS is needed".into(),
            )),
            (Some(r), None) => {
                if !(r.uri.starts_with("https://") || r.uri.starts_with("http://")) {
                    out.push((
                        at(".remoteJWKS.uri"),
                        format!("{:?} is not an http(s) URI", r.uri),
                    ));
                }
            }
            (None, Some(l)) => {
                if let Err(e) = local_jwks(s, ns, l) {
                    out.push((at(".localJWKS"), e));
                }
            }
        }
    }
    out
}

/// The JWKS text of a `localJWKS` (inline or from its ConfigMap), checked to be a JSON object
/// with a `keys` array (what each key holds is read by the gateway).
pub fn local_jwks(
    s: &Snapshot,
    ns: &str,
    l: &crate::kinds::envoy::LocalJwks,
) -> Result<String, String> {
    let text = match (
        l.type_.as_deref().unwrap_or("Inline"),
        &l.inline,
        &l.value_ref,
    ) {
        ("Inline", Some(t), None) => t.clone(),
        ("ValueRef", None, Some(r)) => config_map_value(s, ns, r, "jwks")?,
        (t, _, _) => {
            return Err(format!(
                "type {t:?} needs exactly its field (Inline: inline, ValueRef: valueRef)"
            ));
        }
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    if !v.get("keys").is_some_and(|k| k.is_array()) {
        return Err("the JWKS has no `keys` array".into());
    }
    Ok(text)
}

/// Parses a Gateway API duration (GEP-2257: `1h`, `300s`, `500ms`, `0s`).
pub fn parse_duration(v: &str) -> Result<std::time::Duration, String> {
    let d = gateway_api::Duration::from_str(v).map_err(|e| e.to_string())?;
    Ok(std::time::Duration::new(d.as_secs(), d.subsec_nanos()))
}

fn check_duration(status: &mut ObjectStatus, path: &str, v: &Option<String>) {
    if let Some(v) = v
        && let Err(e) = parse_duration(v)
    {
        problem(status, path, format!("duration {v:?}: {e}"));
    }
}

/// The value a policy's `valueRef` names: the ConfigMap's `key` (`lua` for a Lua script,
/// `jwks` for a JWKS), else its only key.
pub fn config_map_value(
    s: &Snapshot,
    namespace: &str,
    r: &crate::kinds::envoy::LocalObjectRef,
    key: &str,
) -> Result<String, String> {
    let kind = r.kind.as_deref().unwrap_or("ConfigMap");
    if kind != "ConfigMap" {
        return Err(format!(
            "valueRef kind {kind} is not supported (use a ConfigMap)"
        ));
    }
    let Some(cm) = get(&s.config_maps, namespace, &r.name) else {
        return Err(format!("configmap {namespace}/{} not found", r.name));
    };
    let data = cm.spec.data.clone().unwrap_or_default();
    if let Some(v) = data.get(key) {
        return Ok(v.clone());
    }
    let mut values = data.values();
    match (values.next(), values.next()) {
        (Some(v), None) => Ok(v.clone()),
        (None, _) => Err(format!("configmap {namespace}/{} has no data", r.name)),
        (Some(_), Some(_)) => Err(format!(
            "configmap {namespace}/{} has several keys and none is named {key}",
            r.name
        )),
    }
}

fn policy_kind<S: Policy, F: Fn(&Object<S>, &S, &mut ObjectStatus)>(
    s: &Snapshot,
    st: &mut Statuses,
    taken: &mut BTreeMap<(&'static str, ObjectKey), ObjectKey>,
    kind: &'static str,
    coll: &Coll<S>,
    check: &F,
) {
    for p in coll.values() {
        let key = key_of(p, ENVOY_GROUP, kind);
        let status = st.entry(key.clone()).or_default();
        check(p, &p.spec, status);
        let mut targets: Vec<ObjectKey> = Vec::new();
        let mut missing: Vec<String> = Vec::new();
        for (i, t) in p.spec.target_refs().into_iter().enumerate() {
            match target_key(s, p.namespace(), t) {
                Some(k) => targets.push(k),
                None => {
                    missing.push(unresolved(
                        status,
                        format!("spec.targetRefs[{i}]"),
                        format!("target {} {}/{} not found", t.kind, p.namespace(), t.name),
                    ));
                }
            }
        }
        for (i, sel) in p.spec.target_selectors().iter().enumerate() {
            let selector = sel.selector();
            let found = select_targets(s, p.namespace(), &sel.kind, &selector);
            if found.is_empty() {
                missing.push(unresolved(
                    status,
                    format!("spec.targetSelectors[{i}]"),
                    format!(
                        "no {} in namespace {} matches targetSelectors[{i}]",
                        sel.kind,
                        p.namespace()
                    ),
                ));
            }
            targets.extend(found);
        }
        if p.spec.target_refs().is_empty() && p.spec.target_selectors().is_empty() {
            missing.push(unresolved(
                status,
                "spec",
                "policy has no targetRefs or targetSelectors",
            ));
        }
        let invalid = status.first_invalid().cloned();
        let mut conflicts = Vec::new();
        for t in &targets {
            if let Some(owner) = taken.get(&(kind, t.clone())) {
                conflicts.push(format!("{t} already has {kind} {}", owner.ns_name()));
            } else {
                taken.insert((kind, t.clone()), key.clone());
            }
        }
        let accepted = if let Some(pr) = invalid {
            bad(
                cond::ACCEPTED,
                reason::INVALID,
                format!("{}: {}", pr.path, pr.message),
            )
        } else if targets.is_empty() {
            bad(cond::ACCEPTED, reason::TARGET_NOT_FOUND, missing.join("; "))
        } else if !conflicts.is_empty() && conflicts.len() == targets.len() {
            bad(cond::ACCEPTED, reason::CONFLICTED, conflicts.join("; "))
        } else {
            let mut m = format!(
                "applies to {}",
                targets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if !missing.is_empty() {
                m.push_str(&format!(" (not found: {})", missing.join("; ")));
            }
            ok(cond::ACCEPTED, reason::ACCEPTED, &m)
        };
        status.set(accepted);
        if !missing.is_empty() && !targets.is_empty() {
            // Some targets exist, some do not: the missing ones are unresolved references.
            status.set(bad(
                cond::RESOLVED_REFS,
                reason::TARGET_NOT_FOUND,
                missing.join("; "),
            ));
        }
    }
}

/// The objects a policy in namespace `ns` applies to, through targetRefs and targetSelectors.
pub fn policy_targets<S: Policy>(s: &Snapshot, ns: &str, spec: &S) -> Vec<ObjectKey> {
    let mut out: Vec<ObjectKey> = spec
        .target_refs()
        .into_iter()
        .filter_map(|t| target_key(s, ns, t))
        .collect();
    for sel in spec.target_selectors() {
        out.extend(select_targets(s, ns, &sel.kind, &sel.selector()));
    }
    out
}

fn target_key(s: &Snapshot, ns: &str, t: &TargetRef) -> Option<ObjectKey> {
    let group = if t.group.is_empty() {
        GATEWAY_GROUP
    } else {
        t.group.as_str()
    };
    if group != GATEWAY_GROUP {
        return None;
    }
    let exists = match t.kind.as_str() {
        "Gateway" => get(&s.gateways, ns, &t.name).is_some(),
        "HTTPRoute" => get(&s.http_routes, ns, &t.name).is_some(),
        "GRPCRoute" => get(&s.grpc_routes, ns, &t.name).is_some(),
        "TLSRoute" => get(&s.tls_routes, ns, &t.name).is_some(),
        "TCPRoute" => get(&s.tcp_routes, ns, &t.name).is_some(),
        "UDPRoute" => get(&s.udp_routes, ns, &t.name).is_some(),
        _ => false,
    };
    exists.then(|| ObjectKey::new(GATEWAY_GROUP, &t.kind, ns, &t.name))
}

fn select_targets(s: &Snapshot, ns: &str, kind: &str, sel: &LabelSelector) -> Vec<ObjectKey> {
    fn pick<S>(coll: &Coll<S>, ns: &str, kind: &str, sel: &LabelSelector) -> Vec<ObjectKey> {
        coll.values()
            .filter(|o| o.namespace() == ns && sel.matches(&o.meta.labels))
            .map(|o| key_of(o, GATEWAY_GROUP, kind))
            .collect()
    }
    match kind {
        "Gateway" => pick(&s.gateways, ns, kind, sel),
        "HTTPRoute" => pick(&s.http_routes, ns, kind, sel),
        "GRPCRoute" => pick(&s.grpc_routes, ns, kind, sel),
        "TLSRoute" => pick(&s.tls_routes, ns, kind, sel),
        "TCPRoute" => pick(&s.tcp_routes, ns, kind, sel),
        "UDPRoute" => pick(&s.udp_routes, ns, kind, sel),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Core kinds

fn core(s: &Snapshot, st: &mut Statuses) {
    network_policies(s, st);
    for sec in s.secrets.values() {
        if sec.spec.type_.as_deref() == Some("kubernetes.io/tls")
            && let Some(p) = tls_secret_problem(&sec.spec)
        {
            let status = st.entry(key_of(sec, "", "Secret")).or_default();
            let m = problem(status, "data", format!("TLS secret {p}"));
            status.set(bad(cond::ACCEPTED, reason::INVALID, m));
        }
    }
    for es in s.endpoint_slices.values() {
        let status = st
            .entry(key_of(es, "discovery.k8s.io", "EndpointSlice"))
            .or_default();
        let v4 = es.spec.address_type == "IPv4";
        let v6 = es.spec.address_type == "IPv6";
        if !v4 && !v6 && es.spec.address_type != "FQDN" {
            problem(
                status,
                "addressType",
                format!(
                    "addressType {} is not IPv4, IPv6 or FQDN",
                    es.spec.address_type
                ),
            );
        }
        for (i, e) in es.spec.endpoints.iter().flatten().enumerate() {
            for (j, a) in e.addresses.iter().enumerate() {
                let okay = match a.parse::<IpAddr>() {
                    Ok(IpAddr::V4(_)) => v4,
                    Ok(IpAddr::V6(_)) => v6,
                    Err(_) => !v4 && !v6,
                };
                if !okay {
                    problem(
                        status,
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!("{a:?} is not an {} address", es.spec.address_type),
                    );
                }
            }
        }
        match es.meta.labels.get("kubernetes.io/service-name") {
            None => status.set(bad(
                cond::RESOLVED_REFS,
                "NoServiceName",
                "EndpointSlice has no kubernetes.io/service-name label",
            )),
            Some(svc) => match get(&s.services, es.namespace(), svc) {
                Some(_) => status.set(ok(
                    cond::RESOLVED_REFS,
                    reason::RESOLVED_REFS,
                    format!("endpoints of service {}/{svc}", es.namespace()),
                )),
                None => {
                    let m = unresolved(
                        status,
                        "metadata.labels",
                        format!("service {}/{svc} not found", es.namespace()),
                    );
                    status.set(bad(cond::RESOLVED_REFS, reason::BACKEND_NOT_FOUND, m));
                }
            },
        }
    }
    for svc in s.services.values() {
        let status = st.entry(key_of(svc, "", "Service")).or_default();
        if let Some(ips) = svc.meta.annotations.get("lbipam.cilium.io/ips") {
            for ip in ips.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                if ip.parse::<IpAddr>().is_err() {
                    problem(
                        status,
                        "metadata.annotations",
                        format!("lbipam.cilium.io/ips: {ip:?} is not an IP address"),
                    );
                }
            }
        }
        let Some(spec) = &svc.spec.spec else { continue };
        let mut seen = BTreeSet::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            if !(1..=65535).contains(&p.port) {
                problem(
                    status,
                    format!("spec.ports[{i}].port"),
                    format!("port {} is out of range", p.port),
                );
            }
            if !seen.insert((p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into()))) {
                problem(
                    status,
                    format!("spec.ports[{i}]"),
                    format!("port {} is listed twice", p.port),
                );
            }
        }
        if let Some(ip) = &spec.cluster_ip
            && ip != "None"
            && !ip.is_empty()
            && ip.parse::<IpAddr>().is_err()
        {
            problem(
                status,
                "spec.clusterIP",
                format!("clusterIP {ip:?} is not an IP address or None"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cilium

const ENTITIES: &[&str] = &[
    "all",
    "world",
    "cluster",
    "host",
    "remote-node",
    "kube-apiserver",
    "init",
    "health",
    "unmanaged",
    "ingress",
    "none",
    "world-ipv4",
    "world-ipv6",
];

fn cilium(s: &Snapshot, st: &mut Statuses) {
    for (kind, coll) in [
        ("CiliumNetworkPolicy", &s.cilium_network_policies),
        (
            "CiliumClusterwideNetworkPolicy",
            &s.cilium_clusterwide_network_policies,
        ),
    ] {
        for p in coll.values() {
            let status = st.entry(key_of(p, "cilium.io", kind)).or_default();
            let rules: Vec<(String, &crate::kinds::cilium::PolicyRule)> = p
                .spec
                .spec
                .iter()
                .map(|r| ("spec".to_string(), r))
                .chain(
                    p.spec
                        .specs
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (format!("specs[{i}]"), r)),
                )
                .collect();
            if rules.is_empty() {
                problem(status, "spec", "policy has neither spec nor specs");
            }
            let mut unresolved = Vec::new();
            for (rp, r) in rules {
                if r.endpoint_selector.is_none() && r.node_selector.is_none() {
                    problem(
                        status,
                        rp.clone(),
                        "a rule needs endpointSelector or nodeSelector",
                    );
                }
                if r.node_selector.is_some() {
                    // A host policy: trellis enforces policy at pods' interfaces only.
                    problem(
                        status,
                        format!("{rp}.nodeSelector"),
                        "host policies (nodeSelector) are not enforced by trellis yet: the \
                         node's own traffic is not restricted by this rule",
                    );
                }
                for (path, sel) in r
                    .endpoint_selector
                    .iter()
                    .map(|x| (format!("{rp}.endpointSelector"), x))
                {
                    for (sub, m) in sel.problems() {
                        problem(status, format!("{path}.{sub}"), m);
                    }
                }
                for (field, deny, list) in [
                    ("ingress", false, &r.ingress),
                    ("ingressDeny", true, &r.ingress_deny),
                ] {
                    for (i, ing) in list.iter().enumerate() {
                        let ip = format!("{rp}.{field}[{i}]");
                        cidrs(status, &ip, "fromCIDR", &ing.from_cidr);
                        for (j, c) in ing.from_cidr_set.iter().enumerate() {
                            let at = format!("{ip}.fromCIDRSet[{j}]");
                            cidr_rule(s, status, &mut unresolved, &at, c);
                        }
                        entities(status, &ip, "fromEntities", &ing.from_entities);
                        ports(status, &ip, &ing.to_ports);
                        unenforced_rule(status, &ip, deny, &ing.unenforced_peers(), &ing.to_ports);
                    }
                }
                for (field, deny, list) in [
                    ("egress", false, &r.egress),
                    ("egressDeny", true, &r.egress_deny),
                ] {
                    for (i, eg) in list.iter().enumerate() {
                        let ep = format!("{rp}.{field}[{i}]");
                        cidrs(status, &ep, "toCIDR", &eg.to_cidr);
                        for (j, c) in eg.to_cidr_set.iter().enumerate() {
                            let at = format!("{ep}.toCIDRSet[{j}]");
                            cidr_rule(s, status, &mut unresolved, &at, c);
                        }
                        entities(status, &ep, "toEntities", &eg.to_entities);
                        ports(status, &ep, &eg.to_ports);
                        for (j, f) in eg.to_fqdns.iter().enumerate() {
                            if f.match_name.is_none() == f.match_pattern.is_none() {
                                problem(
                                    status,
                                    format!("{ep}.toFQDNs[{j}]"),
                                    "toFQDNs entries need exactly one of matchName and matchPattern",
                                );
                            }
                        }
                        unenforced_rule(
                            status,
                            &ep,
                            deny,
                            &eg.unenforced_peers(deny),
                            &eg.to_ports,
                        );
                    }
                }
            }
            match unresolved.first() {
                None => status.set(ok(cond::RESOLVED_REFS, reason::RESOLVED_REFS, "")),
                Some(m) => status.set(bad(cond::RESOLVED_REFS, "CIDRGroupNotFound", m.clone())),
            }
        }
    }
    let mut ranges: Vec<(ObjectKey, ipnet::IpNet)> = Vec::new();
    for pool in s.lb_ip_pools.values() {
        let key = key_of(pool, "cilium.io", "CiliumLoadBalancerIPPool");
        let status = st.entry(key.clone()).or_default();
        if let Some(v) = &pool.spec.allow_first_last_ips
            && v != "Yes"
            && v != "No"
        {
            problem(
                status,
                "spec.allowFirstLastIPs",
                format!("{v:?} is not Yes or No"),
            );
        }
        for (i, b) in pool.spec.blocks.iter().enumerate() {
            let path = format!("spec.blocks[{i}]");
            match (&b.cidr, &b.start, &b.stop) {
                (Some(c), None, None) => match c.parse::<ipnet::IpNet>() {
                    Ok(net) => {
                        for (other, o) in &ranges {
                            if o.contains(&net.network()) || net.contains(&o.network()) {
                                let m = problem(
                                    status,
                                    format!("{path}.cidr"),
                                    format!("{c} overlaps {o} of {}", other.ns_name()),
                                );
                                if other != &key {
                                    status.set(Condition::new(
                                        cond::CONFLICTED,
                                        Status::True,
                                        reason::CONFLICTED,
                                        m,
                                    ));
                                }
                            }
                        }
                        ranges.push((key.clone(), net));
                    }
                    Err(_) => {
                        problem(
                            status,
                            format!("{path}.cidr"),
                            format!("{c:?} is not a CIDR"),
                        );
                    }
                },
                (None, Some(a), stop) => {
                    let start: Result<IpAddr, _> = a.parse();
                    let stop: Result<IpAddr, _> = stop.as_deref().unwrap_or(a).parse();
                    match (start, stop) {
                        (Ok(x), Ok(y)) if x.is_ipv4() == y.is_ipv4() && x <= y => {}
                        _ => {
                            problem(
                                status,
                                path,
                                format!(
                                    "start {a:?} / stop {:?} is not an address range",
                                    b.stop.as_deref().unwrap_or("")
                                ),
                            );
                        }
                    }
                }
                _ => {
                    problem(
                        status,
                        path,
                        "a block needs either cidr, or start (and stop)",
                    );
                }
            }
        }
    }
    for l2 in s.l2_announcement_policies.values() {
        let status = st
            .entry(key_of(l2, "cilium.io", "CiliumL2AnnouncementPolicy"))
            .or_default();
        for (i, re) in l2.spec.interfaces.iter().enumerate() {
            if let Err(e) = regex::Regex::new(re) {
                problem(
                    status,
                    format!("spec.interfaces[{i}]"),
                    format!(
                        "interface regex {re:?} does not compile: {}",
                        first_line(&e.to_string())
                    ),
                );
            }
        }
        if !l2.spec.load_balancer_ips && !l2.spec.external_ips {
            problem(
                status,
                "spec",
                "policy announces nothing: set loadBalancerIPs and/or externalIPs",
            );
        }
    }
}

fn cidrs(status: &mut ObjectStatus, base: &str, field: &str, list: &[String]) {
    for (i, c) in list.iter().enumerate() {
        if c.parse::<ipnet::IpNet>().is_err() && c.parse::<IpAddr>().is_err() {
            problem(
                status,
                format!("{base}.{field}[{i}]"),
                format!("{c:?} is not a CIDR"),
            );
        }
    }
}

/// Kubernetes NetworkPolicy: what the API server's validation would refuse (trellis has none
/// in front of it), at field paths.
fn network_policies(s: &Snapshot, st: &mut Statuses) {
    for np in s.network_policies.values() {
        let status = st
            .entry(key_of(np, "networking.k8s.io", "NetworkPolicy"))
            .or_default();
        let Some(spec) = &np.spec.spec else {
            continue;
        };
        for (i, t) in spec.policy_types.iter().flatten().enumerate() {
            if t != "Ingress" && t != "Egress" {
                problem(
                    status,
                    format!("spec.policyTypes[{i}]"),
                    format!("{t:?} is not Ingress or Egress"),
                );
            }
        }
        let rules = spec
            .ingress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                (
                    format!("spec.ingress[{i}]"),
                    "from",
                    r.from.as_deref(),
                    r.ports.as_deref(),
                )
            })
            .chain(spec.egress.iter().flatten().enumerate().map(|(i, r)| {
                (
                    format!("spec.egress[{i}]"),
                    "to",
                    r.to.as_deref(),
                    r.ports.as_deref(),
                )
            }))
            .collect::<Vec<_>>();
        for (base, field, peers, ports) in rules {
            for (j, peer) in peers.unwrap_or_default().iter().enumerate() {
                let at = format!("{base}.{field}[{j}]");
                if let Some(b) = &peer.ip_block {
                    if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
                        problem(
                            status,
                            at.clone(),
                            "ipBlock cannot be combined with podSelector or namespaceSelector",
                        );
                    }
                    match b.cidr.parse::<ipnet::IpNet>() {
                        Err(_) => {
                            problem(
                                status,
                                format!("{at}.ipBlock.cidr"),
                                format!("{:?} is not a CIDR", b.cidr),
                            );
                        }
                        Ok(net) => {
                            for (k, e) in b.except.iter().flatten().enumerate() {
                                let inside = e
                                    .parse::<ipnet::IpNet>()
                                    .is_ok_and(|x| net.contains(&x) && x != net);
                                if !inside {
                                    problem(
                                        status,
                                        format!("{at}.ipBlock.except[{k}]"),
                                        format!("{e:?} is not a CIDR strictly inside {net}"),
                                    );
                                }
                            }
                        }
                    }
                }
            }
            for (j, p) in ports.unwrap_or_default().iter().enumerate() {
                let at = format!("{base}.ports[{j}]");
                if let Some(proto) = &p.protocol
                    && !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP")
                {
                    problem(
                        status,
                        format!("{at}.protocol"),
                        format!("protocol {proto:?} is not TCP, UDP or SCTP"),
                    );
                }
                use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
                match (&p.port, p.end_port) {
                    (Some(IntOrString::Int(n)), end) => {
                        if !(1..=65535).contains(n) {
                            problem(
                                status,
                                format!("{at}.port"),
                                format!("port {n} is not 1-65535"),
                            );
                        }
                        if let Some(e) = end
                            && (e < *n || e > 65535)
                        {
                            problem(
                                status,
                                format!("{at}.endPort"),
                                format!("endPort {e} is not between port {n} and 65535"),
                            );
                        }
                    }
                    (Some(IntOrString::String(name)), end) => {
                        if name.is_empty() || name.len() > 15 {
                            problem(
                                status,
                                format!("{at}.port"),
                                format!("port name {name:?} is not 1-15 characters"),
                            );
                        }
                        if end.is_some() {
                            problem(
                                status,
                                format!("{at}.endPort"),
                                "endPort needs a numeric port",
                            );
                        }
                    }
                    (None, Some(_)) => {
                        problem(status, format!("{at}.endPort"), "endPort needs a port");
                    }
                    (None, None) => {}
                }
            }
        }
    }
}

fn cidr_rule(
    s: &Snapshot,
    status: &mut ObjectStatus,
    unresolved: &mut Vec<String>,
    path: &str,
    c: &crate::kinds::cilium::CidrRule,
) {
    match (&c.cidr, &c.cidr_group_ref, &c.cidr_group_selector) {
        (Some(cidr), None, None) => cidrs(status, path, "cidr", std::slice::from_ref(cidr)),
        (None, Some(group), None) => match crate::snapshot::get(&s.cidr_groups, "", group) {
            Some(g) => cidrs(
                status,
                &format!("{path}.cidrGroupRef({group})"),
                "externalCIDRs",
                &g.spec.external_cidrs,
            ),
            None => unresolved.push(self::unresolved(
                status,
                format!("{path}.cidrGroupRef"),
                format!(
                    "CiliumCIDRGroup {group} not found: the rule selects no address until it \
                     exists (an allow allows nothing, a deny denies every peer)"
                ),
            )),
        },
        (None, None, Some(sel)) => {
            for (sub, m) in sel.problems() {
                problem(status, format!("{path}.cidrGroupSelector.{sub}"), m);
            }
        }
        _ => {
            problem(
                status,
                path,
                "use exactly one of cidr, cidrGroupRef, cidrGroupSelector",
            );
        }
    }
    cidrs(status, path, "except", &c.except);
}

/// Marks the parts of a policy rule trellis does not enforce (fail closed: an allow rule with
/// them allows nothing through them, a deny rule with them denies its ports to every peer).
fn unenforced_rule(
    status: &mut ObjectStatus,
    base: &str,
    deny: bool,
    peers: &[(&'static str, &'static str)],
    ports: &[crate::kinds::cilium::PortRule],
) {
    let effect = if deny {
        "this deny rule denies its ports to every peer instead"
    } else {
        "the traffic it would allow is denied"
    };
    for (field, what) in peers {
        problem(
            status,
            format!("{base}.{field}"),
            format!("{what} is not enforced by trellis yet: {effect}"),
        );
    }
    for (i, p) in ports.iter().enumerate() {
        for (field, what) in p.unenforced() {
            problem(
                status,
                format!("{base}.toPorts[{i}].{field}"),
                format!("{what} are not enforced by trellis yet: {effect}"),
            );
        }
    }
}

fn entities(status: &mut ObjectStatus, base: &str, field: &str, list: &[String]) {
    for (i, e) in list.iter().enumerate() {
        if !ENTITIES.contains(&e.as_str()) {
            problem(
                status,
                format!("{base}.{field}[{i}]"),
                format!("entity {e:?} is not one of {}", ENTITIES.join(", ")),
            );
        }
    }
}

fn ports(status: &mut ObjectStatus, base: &str, rules: &[crate::kinds::cilium::PortRule]) {
    for (i, r) in rules.iter().enumerate() {
        for (j, p) in r.ports.iter().enumerate() {
            let path = format!("{base}.toPorts[{i}].ports[{j}]");
            let port_ok = match &p.port {
                serde_json::Value::Number(n) => n.as_u64().is_some_and(|n| n <= 65535),
                serde_json::Value::String(s) => {
                    s.parse::<u16>().is_ok()
                        || (!s.is_empty()
                            && s.bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
                }
                _ => false,
            };
            if !port_ok {
                problem(
                    status,
                    format!("{path}.port"),
                    format!("port {} is not a number or a port name", p.port),
                );
            }
            if let Some(proto) = &p.protocol
                && !matches!(
                    proto.as_str(),
                    "TCP" | "UDP" | "SCTP" | "ICMP" | "ICMPv6" | "ANY"
                )
            {
                problem(
                    status,
                    format!("{path}.protocol"),
                    format!("protocol {proto:?} is not one of TCP, UDP, SCTP, ANY"),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DNSEndpoint, NetworkAttachmentDefinition, ScaledObject

/// One CoreDNS rewrite rule, parsed.
#[derive(Clone, Debug)]
pub enum RewriteRule {
    Exact {
        from: String,
        to: String,
    },
    Regex {
        re: regex::Regex,
        replacement: String,
    },
}

impl RewriteRule {
    /// The rewritten name (lowercase, trailing dot), if the rule matches.
    pub fn apply(&self, name: &str) -> Option<String> {
        let dotted = |n: &str| {
            if n.ends_with('.') {
                n.to_string()
            } else {
                format!("{n}.")
            }
        };
        match self {
            RewriteRule::Exact { from, to } => (dotted(&from.to_ascii_lowercase()) == name)
                .then(|| dotted(&to.to_ascii_lowercase())),
            RewriteRule::Regex { re, replacement } => {
                let caps = re.captures(name)?;
                let mut out = replacement.clone();
                for i in (1..caps.len()).rev() {
                    out = out.replace(&format!("{{{i}}}"), caps.get(i).map_or("", |m| m.as_str()));
                }
                Some(dotted(&out.to_ascii_lowercase()))
            }
        }
    }
}

/// Parses `name exact FROM TO` or `name regex RE REPL` (an `answer auto` after it is accepted:
/// answers always carry the client's own name).
pub fn parse_rewrite(rule: &str) -> Result<RewriteRule, String> {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let (head, tail) = words.split_at(words.len().min(4));
    if !(tail.is_empty()
        || tail == ["answer", "auto"]
        || tail == ["answer", "name"]
        || tail.first() == Some(&"answer"))
    {
        return Err(format!(
            "rule {rule:?}: unexpected {:?} after the rule",
            tail.join(" ")
        ));
    }
    match head {
        ["name", "exact", from, to] => Ok(RewriteRule::Exact {
            from: from.to_string(),
            to: to.to_string(),
        }),
        ["name", "regex", re, repl] => regex::Regex::new(&format!("(?i){re}"))
            .map(|re| RewriteRule::Regex {
                re,
                replacement: repl.to_string(),
            })
            .map_err(|e| {
                format!(
                    "rule {rule:?}: regex does not compile: {}",
                    first_line(&e.to_string())
                )
            }),
        ["name", kind, ..] => Err(format!(
            "rule {rule:?}: name {kind} rewrites are not supported (exact and regex are)"
        )),
        _ => Err(format!(
            "rule {rule:?}: write `name exact FROM TO` or `name regex REGEX REPLACEMENT`"
        )),
    }
}

/// CNI plugins a NetworkAttachmentDefinition may name: the reference plugins.
pub const CNI_PLUGINS: &[&str] = &[
    "macvlan",
    "ipvlan",
    "bridge",
    "host-device",
    "ptp",
    "vlan",
    "tap",
    "dummy",
    "sbr",
    "tuning",
    "portmap",
    "bandwidth",
    "firewall",
    "vrf",
    "static",
    "host-local",
    "dhcp",
];

/// The highest CNI spec version the reference plugins (Debian's containernetworking-plugins
/// 1.1) speak.
pub const CNI_VERSION_MAX: &str = "1.0.0";

/// What is wrong with a NetworkAttachmentDefinition's `spec.config`, each at its field path
/// (`spec.config.plugins[0].master`; a single configuration is `spec.config.type`).
pub fn cni_config_problems(config: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut bad = |path: String, msg: String| out.push((path, msg));
    let cfg = match serde_json::from_str::<crate::kinds::misc::CniConfig>(config) {
        Ok(c) => c,
        Err(e) => {
            bad(
                "spec.config".into(),
                format!("config is not valid CNI JSON: {e}"),
            );
            return out;
        }
    };
    match cfg.cni_version.as_deref() {
        None => bad(
            "spec.config.cniVersion".into(),
            "cniVersion is required".into(),
        ),
        Some(v) if !version_at_most(v, CNI_VERSION_MAX) => bad(
            "spec.config.cniVersion".into(),
            format!("cniVersion {v:?}: the reference plugins speak up to {CNI_VERSION_MAX}"),
        ),
        Some(_) => {}
    }
    let (plugins, prefix): (Vec<serde_json::Value>, Box<dyn Fn(usize) -> String>) =
        if cfg.plugins.is_empty() {
            let mut single = serde_json::Map::new();
            if let Some(t) = &cfg.type_ {
                single.insert("type".into(), t.clone().into());
            }
            single.extend(cfg.rest.clone());
            (
                vec![serde_json::Value::Object(single)],
                Box::new(|_| "spec.config".to_string()),
            )
        } else {
            (
                cfg.plugins.clone(),
                Box::new(|i| format!("spec.config.plugins[{i}]")),
            )
        };
    for (i, p) in plugins.iter().enumerate() {
        let path = prefix(i);
        let ty = p.get("type").and_then(|t| t.as_str()).unwrap_or("");
        if !CNI_PLUGINS.contains(&ty) {
            bad(
                format!("{path}.type"),
                format!(
                    "plugin type {ty:?} is not a reference CNI plugin ({})",
                    CNI_PLUGINS.join(", ")
                ),
            );
        }
        if ty == "macvlan" {
            let mode = p.get("mode").and_then(|m| m.as_str()).unwrap_or("bridge");
            if !matches!(mode, "bridge" | "private" | "vepa" | "passthru") {
                bad(
                    format!("{path}.mode"),
                    format!("macvlan mode {mode:?} is not bridge, private, vepa or passthru"),
                );
            }
        }
        let Some(ipam) = p.get("ipam") else {
            continue;
        };
        let list = |k: &str| {
            ipam.get(k)
                .and_then(|a| a.as_array())
                .cloned()
                .unwrap_or_default()
        };
        for (j, a) in list("addresses").iter().enumerate() {
            let addr = a.get("address").and_then(|x| x.as_str()).unwrap_or("");
            if addr.parse::<ipnet::IpNet>().is_err() {
                bad(
                    format!("{path}.ipam.addresses[{j}].address"),
                    format!("{addr:?} is not an address with its prefix (10.10.33.254/24)"),
                );
            }
        }
        for (j, r) in list("routes").iter().enumerate() {
            let dst = r.get("dst").and_then(|x| x.as_str()).unwrap_or("");
            if dst.parse::<ipnet::IpNet>().is_err() {
                bad(
                    format!("{path}.ipam.routes[{j}].dst"),
                    format!("{dst:?} is not a CIDR"),
                );
            }
        }
    }
    out
}

/// Whether the version `v` (x.y.z) is at most `max`.
fn version_at_most(v: &str, max: &str) -> bool {
    let parse = |v: &str| -> Option<Vec<u32>> { v.split('.').map(|p| p.parse().ok()).collect() };
    match (parse(v), parse(max)) {
        (Some(a), Some(b)) => a <= b,
        _ => false,
    }
}

/// Pods' and Deployments' `k8s.v1.cni.cncf.io/networks`: it must parse, and every
/// NetworkAttachmentDefinition it names must exist (an unresolved reference otherwise: the
/// pod would not start).
fn multus_annotations(s: &Snapshot, st: &mut Statuses) {
    use crate::multus::{ANNOTATION_NETWORKS, parse_networks};
    let mut check = |key: ObjectKey, path: &str, annotations: Option<&BTreeMap<String, String>>| {
        let Some(text) = annotations.and_then(|a| a.get(ANNOTATION_NETWORKS)) else {
            return;
        };
        let status = st.entry(key.clone()).or_default();
        let path = format!("{path}[{ANNOTATION_NETWORKS}]");
        match parse_networks(text, &key.namespace) {
            Err(e) => {
                problem(status, path, e);
            }
            Ok(list) => {
                for (i, sel) in list.iter().enumerate() {
                    if get(&s.network_attachments, &sel.namespace, &sel.name).is_none() {
                        let m = unresolved(
                            status,
                            format!("{path}[{i}]"),
                            format!(
                                "NetworkAttachmentDefinition {}/{} not found: the pod would \
                                 not start",
                                sel.namespace, sel.name
                            ),
                        );
                        status.set(bad(cond::RESOLVED_REFS, reason::TARGET_NOT_FOUND, m));
                    }
                }
            }
        }
    };
    for d in s.deployments.values() {
        let template = d
            .spec
            .spec
            .as_ref()
            .and_then(|t| t.template.metadata.as_ref());
        check(
            key_of(d, "apps", "Deployment"),
            "spec.template.metadata.annotations",
            template.and_then(|m| m.annotations.as_ref()),
        );
    }
    for p in s.pods.values() {
        check(
            key_of(p, "", "Pod"),
            "metadata.annotations",
            p.spec.metadata.annotations.as_ref(),
        );
    }
}

fn misc(s: &Snapshot, st: &mut Statuses) {
    for d in s.dns_endpoints.values() {
        let status = st
            .entry(key_of(d, "externaldns.k8s.io", "DNSEndpoint"))
            .or_default();
        for (i, e) in d.spec.endpoints.iter().enumerate() {
            let path = format!("spec.endpoints[{i}]");
            let name = e.dns_name.trim_end_matches('.');
            if let Err(m) = check_hostname(name) {
                problem(
                    status,
                    format!("{path}.dnsName"),
                    format!("dnsName {:?}: {m}", e.dns_name),
                );
            }
            if e.targets.is_empty() {
                problem(status, format!("{path}.targets"), "endpoint has no targets");
            }
            for (j, t) in e.targets.iter().enumerate() {
                let tp = format!("{path}.targets[{j}]");
                let bad_target = match e.record_type.as_str() {
                    "A" => t
                        .parse::<std::net::Ipv4Addr>()
                        .err()
                        .map(|_| "is not an IPv4 address".to_string()),
                    "AAAA" => t
                        .parse::<std::net::Ipv6Addr>()
                        .err()
                        .map(|_| "is not an IPv6 address".to_string()),
                    "CNAME" | "NS" | "PTR" => check_hostname(t.trim_end_matches('.')).err(),
                    "TXT" | "SRV" | "MX" | "CAA" | "NAPTR" => None,
                    other => Some(format!("record type {other:?} is not supported")),
                };
                if let Some(m) = bad_target {
                    problem(status, tp, format!("{} target {t:?}: {m}", e.record_type));
                }
            }
            if e.record_type == "CNAME" && e.targets.len() > 1 {
                problem(
                    status,
                    format!("{path}.targets"),
                    "a CNAME has exactly one target",
                );
            }
        }
    }
    for n in s.network_attachments.values() {
        let status = st
            .entry(key_of(n, "k8s.cni.cncf.io", "NetworkAttachmentDefinition"))
            .or_default();
        for (path, msg) in cni_config_problems(&n.spec.config) {
            problem(status, path, msg);
        }
    }
    multus_annotations(s, st);
    for v in s.dns_views.values() {
        let status = st.entry(key_of(v, "trellis.dev", "DNSView")).or_default();
        if v.spec.clients.is_empty() {
            problem(
                status,
                "spec.clients",
                "a view needs at least one client network (0.0.0.0/0 for everyone)",
            );
        }
        for (i, c) in v.spec.clients.iter().enumerate() {
            if c.parse::<ipnet::IpNet>().is_err() {
                problem(
                    status,
                    format!("spec.clients[{i}]"),
                    format!("{c:?} is not a CIDR"),
                );
            }
        }
        for (i, z) in v.spec.zones.iter().enumerate() {
            if let Err(e) = check_hostname(z.trim_end_matches('.')) {
                problem(
                    status,
                    format!("spec.zones[{i}]"),
                    format!("zone {z:?}: {e}"),
                );
            }
        }
        let mut missing = None;
        for (i, g) in v.spec.gateways.iter().enumerate() {
            if !matches!(g.answer.as_str(), "Address" | "Target") {
                problem(
                    status,
                    format!("spec.gateways[{i}].answer"),
                    format!("answer {:?} is not Address or Target", g.answer),
                );
            }
            if get(&s.gateways, &g.namespace, &g.name).is_none() {
                missing.get_or_insert(unresolved(
                    status,
                    format!("spec.gateways[{i}]"),
                    format!("gateway {}/{} not found", g.namespace, g.name),
                ));
            }
        }
        match missing {
            None => status.set(ok(cond::RESOLVED_REFS, reason::RESOLVED_REFS, "")),
            Some(m) => status.set(bad(cond::RESOLVED_REFS, reason::BACKEND_NOT_FOUND, m)),
        }
    }
    for r in s.dns_rewrites.values() {
        let status = st
            .entry(key_of(r, "trellis.dev", "DNSRewrite"))
            .or_default();
        for (i, rule) in r.spec.rules.iter().enumerate() {
            if let Err(e) = parse_rewrite(rule) {
                problem(status, format!("spec.rules[{i}]"), e);
            }
        }
    }
    for so in s.scaled_objects.values() {
        let status = st.entry(key_of(so, "keda.sh", "ScaledObject")).or_default();
        if let (Some(min), Some(max)) = (so.spec.min_replica_count, so.spec.max_replica_count)
            && min > max
        {
            problem(
                status,
                "spec.minReplicaCount",
                format!("minReplicaCount {min} is above maxReplicaCount {max}"),
            );
        }
        if so.spec.triggers.is_empty() {
            problem(
                status,
                "spec.triggers",
                "a ScaledObject needs at least one trigger",
            );
        }
        let t = &so.spec.scale_target_ref;
        let kind = t.kind.as_deref().unwrap_or("Deployment");
        if kind == "Deployment" {
            match get(&s.deployments, so.namespace(), &t.name) {
                Some(_) => status.set(ok(cond::RESOLVED_REFS, reason::RESOLVED_REFS, "")),
                None => {
                    let m = unresolved(
                        status,
                        "spec.scaleTargetRef",
                        format!("deployment {}/{} not found", so.namespace(), t.name),
                    );
                    status.set(bad(cond::RESOLVED_REFS, reason::BACKEND_NOT_FOUND, m));
                }
            }
        }
    }
}
