//! Core kinds (Services, EndpointSlices, Secrets, ConfigMaps, Namespaces), the DNS kinds
//! (DNSEndpoint, trellis's DNSView and DNSRewrite) and what refers between them.

use super::*;

pub(super) fn core(s: &Snapshot, st: &mut Statuses) {
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

pub(super) fn misc(s: &Snapshot, st: &mut Statuses) {
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
