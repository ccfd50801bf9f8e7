//! Gateway API: GatewayClasses, Gateways and their listeners, routes and their attachment,
//! backend references and ReferenceGrants.

use super::*;

pub(super) fn gateway_classes(s: &Snapshot, st: &mut Statuses) -> BTreeSet<String> {
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
    /// Why its references do not resolve, when that is why it cannot serve.
    pub unresolved: Option<String>,
    pub attached: u32,
    pub conditions: Vec<Condition>,
    pub invalid_kinds: Vec<String>,
}

/// Listeners of the Gateways trellis serves, by Gateway key.
pub(super) type Listeners = BTreeMap<ObjectKey, Vec<ListenerInfo>>;

pub(super) fn default_kinds(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "HTTP" | "HTTPS" => &["HTTPRoute", "GRPCRoute"],
        "TLS" => &["TLSRoute"],
        "TCP" => &["TCPRoute"],
        "UDP" => &["UDPRoute"],
        _ => &[],
    }
}

/// Protocols that can share one port (they are told apart by SNI or Host).
pub(super) fn port_family(protocol: &str) -> &'static str {
    match protocol {
        "HTTPS" | "TLS" => "tls",
        "HTTP" => "http",
        "TCP" => "tcp",
        "UDP" => "udp",
        _ => "other",
    }
}

pub(super) fn gateways(
    s: &Snapshot,
    st: &mut Statuses,
    res: &mut Resolution,
    classes: &BTreeSet<String>,
) -> Listeners {
    let mut out = Listeners::new();
    for gw in s.gateways.values() {
        let key = key_of(gw, GATEWAY_GROUP, "Gateway");
        let status = st.entry(key.clone()).or_default();
        let class = &gw.spec.gateway_class_name;
        let pending = if get(&s.gateway_classes, "", class).is_none() {
            Some(format!("GatewayClass {class} not found"))
        } else if !classes.contains(class) {
            Some(format!("GatewayClass {class} is not served by trellis"))
        } else {
            None
        };
        if let Some(m) = pending {
            status.set(Condition::new(
                cond::ACCEPTED,
                Status::Unknown,
                reason::PENDING,
                m.clone(),
            ));
            res.gateways.insert(key, GatewayVerdict::NotAccepted(m));
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
            let mut refs_unresolved: Option<String> = None;
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
                    // Routes still attach to a listener whose certificate does not resolve (as
                    // in Envoy Gateway), but it cannot be programmed.
                    if r != reason::INVALID_ROUTE_KINDS {
                        refs_unresolved = Some(m.clone());
                    }
                    conds.push(bad(cond::RESOLVED_REFS, &r, m));
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
                programmable: usable && refs_unresolved.is_none(),
                unresolved: refs_unresolved,
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
        let verdict = if !gw_problems.is_empty() {
            let m = gw_problems
                .iter()
                .map(|p| p.1.clone())
                .collect::<Vec<_>>()
                .join("; ");
            status.set(bad(cond::ACCEPTED, "UnsupportedAddress", m.clone()));
            GatewayVerdict::NotAccepted(m)
        } else if infos.iter().all(|l| !l.usable) && !infos.is_empty() {
            let m = "no listener is valid";
            status.set(bad(cond::ACCEPTED, "ListenersNotValid", m));
            GatewayVerdict::NotAccepted(m.into())
        } else {
            status.set(ok(cond::ACCEPTED, reason::ACCEPTED, ""));
            let usable = infos.iter().filter(|l| l.usable);
            GatewayVerdict::Accepted(GatewayListeners {
                usable: usable.clone().map(|l| l.name.clone()).collect(),
                unresolved: usable
                    .filter_map(|l| Some((l.name.clone(), l.unresolved.clone()?)))
                    .collect(),
            })
        };
        res.gateways.insert(key.clone(), verdict);
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

pub(super) fn lbipam_ips(annotations: Option<&BTreeMap<String, String>>) -> Option<&str> {
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

pub(super) fn write_listener_status(s: &Snapshot, st: &mut Statuses, listeners: &Listeners) {
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
pub(super) struct RouteView {
    kind: &'static str,
    key: ObjectKey,
    namespace: String,
    hostnames: Vec<String>,
    parents: Vec<ParentRef>,
    /// Backend references with their field paths.
    backends: Vec<(String, BackendRef)>,
}

pub(super) fn routes(
    s: &Snapshot,
    st: &mut Statuses,
    res: &mut Resolution,
    listeners: &mut Listeners,
) {
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
            for (j, f) in rule.filters.iter().flatten().enumerate() {
                if let Some(m) = &f.request_mirror {
                    backends.push((
                        format!("spec.rules[{i}].filters[{j}].requestMirror.backendRef"),
                        same_shape::<_, BackendRef>(&m.backend_ref),
                    ));
                }
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
        route(s, st, res, listeners, v);
    }
}

pub(super) fn route(
    s: &Snapshot,
    st: &mut Statuses,
    res: &mut Resolution,
    listeners: &mut Listeners,
    v: RouteView,
) {
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
        if !attached_to.is_empty() {
            // Two parentRefs may name listeners of the same Gateway: one attachment each.
            let list = res.attachments.entry(v.key.clone()).or_default();
            match list.iter_mut().find(|a| a.gateway == gw_key) {
                Some(a) => a.listeners.extend(attached_to.iter().cloned()),
                None => list.push(Attachment {
                    gateway: gw_key.clone(),
                    listeners: attached_to.clone(),
                }),
            }
        }
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
pub(super) fn attach(
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
pub(super) fn resolve_backend(
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
pub(super) fn http_route_rules(
    r: &Object<gateway_api::httproutes::HttpRouteSpec>,
    status: &mut ObjectStatus,
) {
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
