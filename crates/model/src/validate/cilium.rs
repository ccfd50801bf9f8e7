//! Cilium's kinds and NetworkPolicies: selectors, entities, CIDRs and CIDR groups, ports.

use super::*;

pub(super) const ENTITIES: &[&str] = &[
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

pub(super) fn cilium(s: &Snapshot, st: &mut Statuses) {
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
                        icmps(status, &ip, deny, &ing.icmps, &ing.to_ports);
                        unenforced_rule(
                            status,
                            &ip,
                            deny,
                            false,
                            &ing.unenforced_peers(),
                            &ing.to_ports,
                        );
                    }
                }
                for (field, deny, list) in [
                    ("egress", false, &r.egress),
                    ("egressDeny", true, &r.egress_deny),
                ] {
                    for (i, eg) in list.iter().enumerate() {
                        let ep = format!("{rp}.{field}[{i}]");
                        cidrs(status, &ep, "toCIDR", &eg.to_cidr);
                        to_services(s, status, &ep, p.meta.namespace.as_deref(), deny, eg);
                        for (j, c) in eg.to_cidr_set.iter().enumerate() {
                            let at = format!("{ep}.toCIDRSet[{j}]");
                            cidr_rule(s, status, &mut unresolved, &at, c);
                        }
                        entities(status, &ep, "toEntities", &eg.to_entities);
                        ports(status, &ep, &eg.to_ports);
                        icmps(status, &ep, deny, &eg.icmps, &eg.to_ports);
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
                            true,
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

pub(super) fn cidrs(status: &mut ObjectStatus, base: &str, field: &str, list: &[String]) {
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
pub(super) fn network_policies(s: &Snapshot, st: &mut Statuses) {
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

pub(super) fn cidr_rule(
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

/// `toServices` by name: a Service that is not there, or that has no selector (its backends
/// are not pods known by labels), is a problem: an allow of it allows nobody, a deny of it
/// denies its ports to everyone.
fn to_services(
    s: &Snapshot,
    status: &mut ObjectStatus,
    base: &str,
    policy_ns: Option<&str>,
    deny: bool,
    eg: &crate::kinds::cilium::EgressRule,
) {
    use crate::kinds::cilium::ServiceRef;
    let effect = if deny {
        "this deny rule denies its ports to every peer"
    } else {
        "it allows nobody"
    };
    for (j, r) in crate::kinds::cilium::service_refs(&eg.to_services)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let ServiceRef::Name { name, namespace } = r else {
            continue;
        };
        let at = format!("{base}.toServices[{j}].k8sService");
        let Some(ns) = namespace.as_deref().or(policy_ns) else {
            problem(status, at, format!("names no namespace: {effect}"));
            continue;
        };
        match crate::snapshot::get(&s.services, ns, name) {
            None => {
                problem(
                    status,
                    at,
                    format!("Service {ns}/{name} not found: {effect}"),
                );
            }
            Some(svc) if crate::kinds::cilium::service_selector(svc).is_none() => {
                problem(
                    status,
                    at,
                    format!("Service {ns}/{name} has no selector: {effect}"),
                );
            }
            Some(_) => {}
        }
    }
}

/// Marks the parts of a policy rule trellis does not enforce (fail closed: an allow rule with
/// them allows nothing through them, a deny rule with them denies its ports to every peer).
pub(super) fn unenforced_rule(
    status: &mut ObjectStatus,
    base: &str,
    deny: bool,
    egress: bool,
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
        for (field, what) in p.unenforced(egress && !deny) {
            problem(
                status,
                format!("{base}.toPorts[{i}].{field}"),
                format!("{what} are not enforced by trellis yet: {effect}"),
            );
        }
    }
}

pub(super) fn entities(status: &mut ObjectStatus, base: &str, field: &str, list: &[String]) {
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

/// A rule's `icmps`: with `toPorts` beside them (Cilium refuses the rule), an ICMPv6 type
/// (this datapath checks IPv4 only) or a type that is not one are problems; the compile makes
/// an allow of them allow nothing and a deny of them deny the whole protocol.
pub(super) fn icmps(
    status: &mut ObjectStatus,
    base: &str,
    deny: bool,
    list: &[serde_json::Value],
    to_ports: &[crate::kinds::cilium::PortRule],
) {
    let what = if deny {
        "denies all of it"
    } else {
        "allows nothing"
    };
    if !list.is_empty() && !to_ports.is_empty() {
        problem(
            status,
            format!("{base}.icmps"),
            "icmps and toPorts cannot be in one rule (Cilium refuses it)",
        );
    }
    for (i, rule) in list.iter().enumerate() {
        let fields = rule.get("fields").and_then(serde_json::Value::as_array);
        for (j, f) in fields.into_iter().flatten().enumerate() {
            let at = format!("{base}.icmps[{i}].fields[{j}]");
            let family = f
                .get("family")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("IPv4");
            if family != "IPv4" {
                problem(
                    status,
                    format!("{at}.family"),
                    format!(
                        "{family} ICMP types are not checked by trellis's datapath: the rule {what}"
                    ),
                );
            } else if f
                .get("type")
                .and_then(crate::kinds::cilium::icmp_type)
                .is_none()
            {
                problem(
                    status,
                    format!("{at}.type"),
                    format!(
                        "{} is not an ICMP type: the rule {what}",
                        f.get("type").unwrap_or(&serde_json::Value::Null)
                    ),
                );
            }
        }
    }
}

pub(super) fn ports(
    status: &mut ObjectStatus,
    base: &str,
    rules: &[crate::kinds::cilium::PortRule],
) {
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
