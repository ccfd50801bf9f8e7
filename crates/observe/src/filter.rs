//! Hubble's flow filters: a flow passes a request when it matches any whitelist filter (or
//! none is given) and no blacklist filter. Inside one `FlowFilter` every field that is set
//! must match (AND); a field matches when any of its values does (OR).
//!
//! Filters are compiled once per request (CIDRs parsed, regexes built, selectors split), so
//! matching a flow does no parsing. A field trellis cannot evaluate is an error, never
//! ignored: ignoring it would show flows the client asked not to see.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

use crate::proto::flow::{
    Endpoint, EventTypeFilter, Flow, FlowFilter, Service, TcpFlags, Workload, layer4, layer7,
};

/// Patterns longer than this are refused (regexes and globs come from clients).
pub const PATTERN_BYTES_MAX: usize = 1024;
/// Values across the fields of one request's filters.
pub const FILTER_VALUES_MAX: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("{field}: {value:?} is not {expected}")]
    Invalid {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{0}: not supported by trellis")]
    Unsupported(&'static str),
    #[error("more than {FILTER_VALUES_MAX} filter values")]
    TooMany,
}

type Check = Box<dyn Fn(&Flow) -> bool + Send + Sync>;

/// One compiled `FlowFilter`: every check must pass.
struct Compiled(Vec<Check>);

impl Compiled {
    fn matches(&self, f: &Flow) -> bool {
        self.0.iter().all(|c| c(f))
    }
}

/// A request's whitelist and blacklist, compiled.
pub struct FilterSet {
    white: Vec<Compiled>,
    black: Vec<Compiled>,
}

impl std::fmt::Debug for FilterSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterSet")
            .field("whitelist", &self.white.len())
            .field("blacklist", &self.black.len())
            .finish()
    }
}

impl FilterSet {
    pub fn new(whitelist: &[FlowFilter], blacklist: &[FlowFilter]) -> Result<Self, FilterError> {
        let values: usize = whitelist.iter().chain(blacklist).map(value_count).sum();
        if values > FILTER_VALUES_MAX {
            return Err(FilterError::TooMany);
        }
        Ok(FilterSet {
            white: whitelist.iter().map(compile).collect::<Result<_, _>>()?,
            black: blacklist.iter().map(compile).collect::<Result<_, _>>()?,
        })
    }

    /// Passes everything.
    pub fn all() -> Self {
        FilterSet {
            white: Vec::new(),
            black: Vec::new(),
        }
    }

    pub fn matches(&self, f: &Flow) -> bool {
        (self.white.is_empty() || self.white.iter().any(|c| c.matches(f)))
            && !self.black.iter().any(|c| c.matches(f))
    }
}

fn value_count(f: &FlowFilter) -> usize {
    f.uuid.len()
        + f.source_ip.len()
        + f.source_pod.len()
        + f.source_fqdn.len()
        + f.source_label.len()
        + f.source_service.len()
        + f.source_workload.len()
        + f.destination_ip.len()
        + f.destination_pod.len()
        + f.destination_fqdn.len()
        + f.destination_label.len()
        + f.destination_service.len()
        + f.destination_workload.len()
        + f.traffic_direction.len()
        + f.verdict.len()
        + f.event_type.len()
        + f.http_status_code.len()
        + f.protocol.len()
        + f.source_port.len()
        + f.destination_port.len()
        + f.reply.len()
        + f.dns_query.len()
        + f.source_identity.len()
        + f.destination_identity.len()
        + f.http_method.len()
        + f.http_path.len()
        + f.tcp_flags.len()
        + f.node_name.len()
        + f.ip_version.len()
        + f.trace_id.len()
}

#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

fn endpoint(f: &Flow, side: Side) -> Option<&Endpoint> {
    match side {
        Side::Source => f.source.as_ref(),
        Side::Destination => f.destination.as_ref(),
    }
}

fn ip(f: &Flow, side: Side) -> Option<IpAddr> {
    let ip = f.ip.as_ref()?;
    match side {
        Side::Source => ip.source.parse().ok(),
        Side::Destination => ip.destination.parse().ok(),
    }
}

fn ports(f: &Flow) -> Option<(u32, u32)> {
    match f.l4.as_ref()?.protocol.as_ref()? {
        layer4::Protocol::Tcp(t) => Some((t.source_port, t.destination_port)),
        layer4::Protocol::Udp(u) => Some((u.source_port, u.destination_port)),
        layer4::Protocol::Sctp(s) => Some((s.source_port, s.destination_port)),
        _ => None,
    }
}

fn http(f: &Flow) -> Option<&crate::proto::flow::Http> {
    match f.l7.as_ref()?.record.as_ref()? {
        layer7::Record::Http(h) => Some(h),
        layer7::Record::Dns(_) => None,
    }
}

fn dns(f: &Flow) -> Option<&crate::proto::flow::Dns> {
    match f.l7.as_ref()?.record.as_ref()? {
        layer7::Record::Dns(d) => Some(d),
        layer7::Record::Http(_) => None,
    }
}

/// The path of an HTTP flow's URL (`http://host/a/b?q` -> `/a/b`).
pub fn url_path(url: &str) -> &str {
    let rest = match url.find("://") {
        Some(i) => {
            let after = &url[i + 3..];
            after.find('/').map_or("", |j| &after[j..])
        }
        None => url,
    };
    rest.split(['?', '#']).next().unwrap_or(rest)
}

/// The protocols a flow speaks, lower case (`tcp`, `udp`, `icmpv4`, `http`, `dns`, ...).
pub fn protocols(f: &Flow) -> [Option<&'static str>; 2] {
    let l4 =
        f.l4.as_ref()
            .and_then(|l| l.protocol.as_ref())
            .map(|p| match p {
                layer4::Protocol::Tcp(_) => "tcp",
                layer4::Protocol::Udp(_) => "udp",
                layer4::Protocol::IcmPv4(_) => "icmpv4",
                layer4::Protocol::IcmPv6(_) => "icmpv6",
                layer4::Protocol::Sctp(_) => "sctp",
            });
    let l7 =
        f.l7.as_ref()
            .and_then(|l| l.record.as_ref())
            .map(|r| match r {
                layer7::Record::Http(_) => "http",
                layer7::Record::Dns(_) => "dns",
            });
    [l4, l7]
}

fn pattern<'a>(field: &'static str, v: &'a str) -> Result<&'a str, FilterError> {
    if v.len() > PATTERN_BYTES_MAX {
        return Err(FilterError::Invalid {
            field,
            value: v.chars().take(40).collect(),
            expected: "at most 1024 bytes",
        });
    }
    Ok(v)
}

fn regexes(field: &'static str, vs: &[String]) -> Result<Vec<Regex>, FilterError> {
    vs.iter()
        .map(|v| {
            Regex::new(pattern(field, v)?).map_err(|_| FilterError::Invalid {
                field,
                value: v.clone(),
                expected: "a regular expression",
            })
        })
        .collect()
}

/// `*` matches any run of characters, case-insensitively, anchored at both ends.
fn globs(field: &'static str, vs: &[String]) -> Result<Vec<Regex>, FilterError> {
    vs.iter()
        .map(|v| {
            let parts: Vec<String> = pattern(field, v)?.split('*').map(regex::escape).collect();
            Regex::new(&format!("(?i)^{}$", parts.join(".*"))).map_err(|_| FilterError::Invalid {
                field,
                value: v.clone(),
                expected: "a name pattern",
            })
        })
        .collect()
}

/// `namespace/name-prefix`, `name-prefix` (any namespace) or `namespace/` (all of it).
fn name_selectors(vs: &[String]) -> Vec<(Option<String>, String)> {
    vs.iter()
        .map(|v| match v.split_once('/') {
            Some((ns, prefix)) => (Some(ns.to_string()), prefix.to_string()),
            None => (None, v.clone()),
        })
        .collect()
}

fn name_matches(sel: &[(Option<String>, String)], namespace: &str, name: &str) -> bool {
    sel.iter().any(|(ns, prefix)| {
        ns.as_deref().is_none_or(|n| n == namespace)
            && (name.starts_with(prefix.as_str()) && (!name.is_empty() || ns.is_some()))
    })
}

/// One requirement of a Kubernetes label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Parses `app=web,tier!=db,env in (a,b),!legacy,team` (the Kubernetes selector syntax).
fn parse_selector(s: &str) -> Option<Vec<Requirement>> {
    // Split on commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    let set = |v: &str| -> Option<Vec<String>> {
        let inner = v.trim().strip_prefix('(')?.strip_suffix(')')?;
        Some(inner.split(',').map(|x| x.trim().to_string()).collect())
    };
    parts
        .into_iter()
        .map(|p| {
            let p = p.trim();
            if p.is_empty() {
                return None;
            }
            if let Some((k, v)) = p.split_once("!=") {
                return Some(Requirement::NotEquals(k.trim().into(), v.trim().into()));
            }
            if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                return Some(Requirement::Equals(k.trim().into(), v.trim().into()));
            }
            if let Some((k, v)) = p.split_once(" notin ") {
                return Some(Requirement::NotIn(k.trim().into(), set(v)?));
            }
            if let Some((k, v)) = p.split_once(" in ") {
                return Some(Requirement::In(k.trim().into(), set(v)?));
            }
            if let Some(k) = p.strip_prefix('!') {
                return Some(Requirement::NotExists(k.trim().into()));
            }
            Some(Requirement::Exists(p.into()))
        })
        .collect()
}

/// The value of label `key` on an endpoint. Labels are `key=value`, possibly with a source
/// prefix (`k8s:app=web`) that a selector without one ignores.
fn label_value<'a>(labels: &'a [String], key: &str) -> Option<&'a str> {
    labels.iter().find_map(|l| {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        let bare = match k.split_once(':') {
            Some((_, rest)) if !key.contains(':') => rest,
            _ => k,
        };
        (bare == key).then_some(v)
    })
}

fn selector_matches(reqs: &[Requirement], labels: &[String]) -> bool {
    reqs.iter().all(|r| match r {
        Requirement::Equals(k, v) => label_value(labels, k) == Some(v.as_str()),
        Requirement::NotEquals(k, v) => label_value(labels, k) != Some(v.as_str()),
        Requirement::In(k, vs) => label_value(labels, k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::NotIn(k, vs) => {
            label_value(labels, k).is_none_or(|x| !vs.iter().any(|v| v == x))
        }
        Requirement::Exists(k) => label_value(labels, k).is_some(),
        Requirement::NotExists(k) => label_value(labels, k).is_none(),
    })
}

fn nets(field: &'static str, vs: &[String]) -> Result<Vec<IpNet>, FilterError> {
    vs.iter()
        .map(|v| {
            v.parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| FilterError::Invalid {
                    field,
                    value: v.clone(),
                    expected: "an IP address or CIDR",
                })
        })
        .collect()
}

fn port_list(field: &'static str, vs: &[String]) -> Result<Vec<u32>, FilterError> {
    vs.iter()
        .map(|v| {
            v.parse::<u16>()
                .map(u32::from)
                .map_err(|_| FilterError::Invalid {
                    field,
                    value: v.clone(),
                    expected: "a port number",
                })
        })
        .collect()
}

/// `404` (exactly) or `4+` / `40+` (any code starting so).
fn status_patterns(vs: &[String]) -> Result<Vec<(String, bool)>, FilterError> {
    vs.iter()
        .map(|v| {
            let (digits, prefix) = match v.strip_suffix('+') {
                Some(d) => (d, true),
                None => (v.as_str(), false),
            };
            let ok = !digits.is_empty()
                && digits.len() <= 3
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (prefix || digits.len() == 3);
            if !ok {
                return Err(FilterError::Invalid {
                    field: "http_status_code",
                    value: v.clone(),
                    expected: "a status code (404) or a prefix (4+, 40+)",
                });
            }
            Ok((digits.to_string(), prefix))
        })
        .collect()
}

fn tcp_flags_of(f: &Flow) -> Option<&TcpFlags> {
    match f.l4.as_ref()?.protocol.as_ref()? {
        layer4::Protocol::Tcp(t) => t.flags.as_ref(),
        _ => None,
    }
}

/// Every flag set in `want` is set in `have`.
fn flags_contain(have: &TcpFlags, want: &TcpFlags) -> bool {
    let bits = |t: &TcpFlags| [t.fin, t.syn, t.rst, t.psh, t.ack, t.urg, t.ece, t.cwr, t.ns];
    bits(want).iter().zip(bits(have)).all(|(w, h)| !w || h)
}

fn workload_matches(want: &[Workload], ep: Option<&Endpoint>) -> bool {
    ep.is_some_and(|ep| {
        ep.workloads.iter().any(|w| {
            want.iter().any(|x| {
                (x.name.is_empty() || x.name == w.name) && (x.kind.is_empty() || x.kind == w.kind)
            })
        })
    })
}

fn service_of(f: &Flow, side: Side) -> Option<&Service> {
    match side {
        Side::Source => f.source_service.as_ref(),
        Side::Destination => f.destination_service.as_ref(),
    }
}

fn event_type_matches(want: &[EventTypeFilter], f: &Flow) -> bool {
    let Some(et) = &f.event_type else {
        return false;
    };
    want.iter()
        .any(|w| w.r#type == et.r#type && (!w.match_sub_type || w.sub_type == et.sub_type))
}

fn compile(ff: &FlowFilter) -> Result<Compiled, FilterError> {
    let mut checks: Vec<Check> = Vec::new();
    if !ff.trace_id.is_empty() {
        return Err(FilterError::Unsupported("trace_id"));
    }
    if !ff.uuid.is_empty() {
        let v = ff.uuid.clone();
        checks.push(Box::new(move |f| v.contains(&f.uuid)));
    }
    for (side, vs, field) in [
        (Side::Source, &ff.source_ip, "source_ip"),
        (Side::Destination, &ff.destination_ip, "destination_ip"),
    ] {
        if !vs.is_empty() {
            let n = nets(field, vs)?;
            checks.push(Box::new(move |f| {
                ip(f, side).is_some_and(|a| n.iter().any(|n| n.contains(&a)))
            }));
        }
    }
    for (side, vs) in [
        (Side::Source, &ff.source_pod),
        (Side::Destination, &ff.destination_pod),
    ] {
        if !vs.is_empty() {
            let sel = name_selectors(vs);
            checks.push(Box::new(move |f| {
                endpoint(f, side).is_some_and(|e| name_matches(&sel, &e.namespace, &e.pod_name))
            }));
        }
    }
    for (side, vs) in [
        (Side::Source, &ff.source_service),
        (Side::Destination, &ff.destination_service),
    ] {
        if !vs.is_empty() {
            let sel = name_selectors(vs);
            checks.push(Box::new(move |f| {
                service_of(f, side).is_some_and(|s| name_matches(&sel, &s.namespace, &s.name))
            }));
        }
    }
    for (side, vs, field) in [
        (Side::Source, &ff.source_fqdn, "source_fqdn"),
        (Side::Destination, &ff.destination_fqdn, "destination_fqdn"),
    ] {
        if !vs.is_empty() {
            let g = globs(field, vs)?;
            checks.push(Box::new(move |f| {
                let names = match side {
                    Side::Source => &f.source_names,
                    Side::Destination => &f.destination_names,
                };
                names
                    .iter()
                    .any(|n| g.iter().any(|g| g.is_match(n.trim_end_matches('.'))))
            }));
        }
    }
    for (side, vs, field) in [
        (Side::Source, &ff.source_label, "source_label"),
        (
            Side::Destination,
            &ff.destination_label,
            "destination_label",
        ),
    ] {
        if !vs.is_empty() {
            let sels = vs
                .iter()
                .map(|v| {
                    parse_selector(pattern(field, v)?).ok_or_else(|| FilterError::Invalid {
                        field,
                        value: v.clone(),
                        expected: "a label selector (app=web,tier in (a,b),!legacy)",
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            checks.push(Box::new(move |f| {
                endpoint(f, side)
                    .is_some_and(|e| sels.iter().any(|s| selector_matches(s, &e.labels)))
            }));
        }
    }
    for (side, vs) in [
        (Side::Source, &ff.source_workload),
        (Side::Destination, &ff.destination_workload),
    ] {
        if !vs.is_empty() {
            let w = vs.clone();
            checks.push(Box::new(move |f| workload_matches(&w, endpoint(f, side))));
        }
    }
    for (side, vs) in [
        (Side::Source, &ff.source_identity),
        (Side::Destination, &ff.destination_identity),
    ] {
        if !vs.is_empty() {
            let ids = vs.clone();
            checks.push(Box::new(move |f| {
                endpoint(f, side).is_some_and(|e| ids.contains(&e.identity))
            }));
        }
    }
    if !ff.traffic_direction.is_empty() {
        let v = ff.traffic_direction.clone();
        checks.push(Box::new(move |f| v.contains(&f.traffic_direction)));
    }
    if !ff.verdict.is_empty() {
        let v = ff.verdict.clone();
        checks.push(Box::new(move |f| v.contains(&f.verdict)));
    }
    if !ff.event_type.is_empty() {
        let v = ff.event_type.clone();
        checks.push(Box::new(move |f| event_type_matches(&v, f)));
    }
    if !ff.http_status_code.is_empty() {
        let pats = status_patterns(&ff.http_status_code)?;
        checks.push(Box::new(move |f| {
            http(f).is_some_and(|h| {
                let code = h.code.to_string();
                pats.iter().any(|(d, prefix)| {
                    if *prefix {
                        code.len() == 3 && code.starts_with(d.as_str())
                    } else {
                        code == *d
                    }
                })
            })
        }));
    }
    if !ff.protocol.is_empty() {
        let want: Vec<String> = ff.protocol.iter().map(|p| p.to_ascii_lowercase()).collect();
        checks.push(Box::new(move |f| {
            protocols(f).into_iter().flatten().any(|p| {
                want.iter()
                    .any(|w| w == p || (w == "icmp" && p.starts_with("icmp")))
            })
        }));
    }
    for (is_source, vs, field) in [
        (true, &ff.source_port, "source_port"),
        (false, &ff.destination_port, "destination_port"),
    ] {
        if !vs.is_empty() {
            let p = port_list(field, vs)?;
            checks.push(Box::new(move |f| {
                ports(f).is_some_and(|(s, d)| p.contains(if is_source { &s } else { &d }))
            }));
        }
    }
    if !ff.reply.is_empty() {
        let v = ff.reply.clone();
        checks.push(Box::new(move |f| {
            f.is_reply.is_some_and(|r| v.contains(&r))
        }));
    }
    if !ff.dns_query.is_empty() {
        let r = regexes("dns_query", &ff.dns_query)?;
        checks.push(Box::new(move |f| {
            dns(f).is_some_and(|d| r.iter().any(|r| r.is_match(&d.query)))
        }));
    }
    if !ff.http_method.is_empty() {
        let v = ff.http_method.clone();
        checks.push(Box::new(move |f| {
            http(f).is_some_and(|h| v.iter().any(|m| m.eq_ignore_ascii_case(&h.method)))
        }));
    }
    if !ff.http_path.is_empty() {
        let r = regexes("http_path", &ff.http_path)?;
        checks.push(Box::new(move |f| {
            http(f).is_some_and(|h| r.iter().any(|r| r.is_match(url_path(&h.url))))
        }));
    }
    if !ff.tcp_flags.is_empty() {
        let v = ff.tcp_flags.clone();
        checks.push(Box::new(move |f| {
            tcp_flags_of(f).is_some_and(|have| v.iter().any(|w| flags_contain(have, w)))
        }));
    }
    if !ff.node_name.is_empty() {
        let g = globs("node_name", &ff.node_name)?;
        checks.push(Box::new(move |f| {
            g.iter().any(|g| g.is_match(&f.node_name))
        }));
    }
    if !ff.ip_version.is_empty() {
        let v = ff.ip_version.clone();
        checks.push(Box::new(move |f| {
            f.ip.as_ref().is_some_and(|i| v.contains(&i.ip_version))
        }));
    }
    Ok(Compiled(checks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::flow::{
        CiliumEventType, Dns, FlowType, Http, Ip, IpVersion, Layer4, Layer7, Tcp, Udp, Verdict,
    };

    fn ep(ns: &str, pod: &str, labels: &[&str]) -> Option<Endpoint> {
        Some(Endpoint {
            namespace: ns.into(),
            pod_name: pod.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    /// A recorded set: two HTTP requests through the gateway, a DNS query, a drop.
    fn recorded() -> Vec<Flow> {
        let http = |src: &str, dst: &str, method: &str, url: &str, code: u32, pod: &str| Flow {
            verdict: Verdict::Forwarded as i32,
            r#type: FlowType::L7 as i32,
            ip: Some(Ip {
                source: src.into(),
                destination: dst.into(),
                ip_version: IpVersion::IPv4 as i32,
                ..Default::default()
            }),
            l4: Some(Layer4 {
                protocol: Some(layer4::Protocol::Tcp(Tcp {
                    source_port: 40000,
                    destination_port: 8080,
                    flags: None,
                })),
            }),
            source: ep("", "", &["reserved:world"]),
            destination: ep("default", pod, &["k8s:app=echo", "tier=web"]),
            destination_service: Some(Service {
                name: "echo".into(),
                namespace: "default".into(),
            }),
            event_type: Some(CiliumEventType {
                r#type: 129,
                sub_type: 0,
            }),
            l7: Some(Layer7 {
                r#type: 2,
                latency_ns: 1_000_000,
                record: Some(layer7::Record::Http(Http {
                    code,
                    method: method.into(),
                    url: url.into(),
                    protocol: "HTTP/1.1".into(),
                    headers: vec![],
                })),
            }),
            node_name: "node-a".into(),
            ..Default::default()
        };
        vec![
            http(
                "203.0.113.7",
                "10.0.0.5",
                "GET",
                "http://echo.example/api/v1?x=1",
                200,
                "echo-1",
            ),
            http(
                "198.51.100.2",
                "10.0.0.6",
                "POST",
                "http://echo.example/login",
                503,
                "echo-2",
            ),
            Flow {
                verdict: Verdict::Forwarded as i32,
                r#type: FlowType::L7 as i32,
                ip: Some(Ip {
                    source: "10.0.1.9".into(),
                    destination: "10.0.0.10".into(),
                    ip_version: IpVersion::IPv4 as i32,
                    ..Default::default()
                }),
                l4: Some(Layer4 {
                    protocol: Some(layer4::Protocol::Udp(Udp {
                        source_port: 53000,
                        destination_port: 53,
                    })),
                }),
                source: ep("kube-system", "coredns-abc", &["k8s:k8s-app=kube-dns"]),
                event_type: Some(CiliumEventType {
                    r#type: 129,
                    sub_type: 0,
                }),
                l7: Some(Layer7 {
                    r#type: 2,
                    latency_ns: 10_000,
                    record: Some(layer7::Record::Dns(Dns {
                        query: "echo.default.svc.cluster.local.".into(),
                        ips: vec!["10.0.0.5".into()],
                        rcode: 0,
                        qtypes: vec!["A".into()],
                        ..Default::default()
                    })),
                }),
                node_name: "node-b".into(),
                ..Default::default()
            },
            Flow {
                verdict: Verdict::Dropped as i32,
                r#type: FlowType::L3L4 as i32,
                ip: Some(Ip {
                    source: "10.0.2.1".into(),
                    destination: "fd00::1".into(),
                    ip_version: IpVersion::IPv6 as i32,
                    ..Default::default()
                }),
                l4: Some(Layer4 {
                    protocol: Some(layer4::Protocol::Tcp(Tcp {
                        source_port: 1234,
                        destination_port: 22,
                        flags: Some(TcpFlags {
                            syn: true,
                            ..Default::default()
                        }),
                    })),
                }),
                source: ep("lab", "client-0", &["app=client"]),
                event_type: Some(CiliumEventType {
                    r#type: 1,
                    sub_type: 133,
                }),
                is_reply: Some(false),
                ..Default::default()
            },
        ]
    }

    /// Indices of the recorded flows that pass.
    fn check(white: &[FlowFilter], black: &[FlowFilter]) -> Vec<usize> {
        let set = FilterSet::new(white, black).expect("filters compile");
        recorded()
            .iter()
            .enumerate()
            .filter(|(_, f)| set.matches(f))
            .map(|(i, _)| i)
            .collect()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn no_filters_pass_everything() {
        assert_eq!(check(&[], &[]), vec![0, 1, 2, 3]);
    }

    #[test]
    fn ip_exact_and_cidr() {
        let f = FlowFilter {
            source_ip: s(&["203.0.113.7", "10.0.0.0/8"]),
            ..Default::default()
        };
        assert_eq!(check(&[f], &[]), vec![0, 2, 3]);
        let f = FlowFilter {
            destination_ip: s(&["fd00::/64"]),
            ..Default::default()
        };
        assert_eq!(check(&[f], &[]), vec![3]);
    }

    #[test]
    fn pods_by_namespace_and_prefix() {
        let by = |v: &[&str]| FlowFilter {
            destination_pod: s(v),
            ..Default::default()
        };
        assert_eq!(check(&[by(&["default/echo-"])], &[]), vec![0, 1]);
        assert_eq!(check(&[by(&["echo-2"])], &[]), vec![1]);
        assert_eq!(check(&[by(&["default/"])], &[]), vec![0, 1]);
        assert_eq!(check(&[by(&["other/echo"])], &[]), Vec::<usize>::new());
        let src = FlowFilter {
            source_pod: s(&["kube-system/"]),
            ..Default::default()
        };
        assert_eq!(check(&[src], &[]), vec![2]);
    }

    #[test]
    fn labels_use_selector_syntax_and_ignore_source_prefixes() {
        let by = |v: &str| FlowFilter {
            destination_label: s(&[v]),
            ..Default::default()
        };
        assert_eq!(check(&[by("app=echo")], &[]), vec![0, 1]);
        assert_eq!(check(&[by("app=echo,tier in (web,api)")], &[]), vec![0, 1]);
        assert_eq!(
            check(&[by("app=echo,tier notin (web)")], &[]),
            Vec::<usize>::new()
        );
        assert_eq!(check(&[by("k8s:app=echo")], &[]), vec![0, 1]);
        assert_eq!(check(&[by("!app")], &[]), Vec::<usize>::new());
        let src = FlowFilter {
            source_label: s(&["reserved:world", "app=client"]),
            ..Default::default()
        };
        assert_eq!(check(&[src], &[]), vec![0, 1, 3]);
    }

    #[test]
    fn fields_and_values_combine_as_hubble_says() {
        // Within a field: OR. Across fields: AND.
        let f = FlowFilter {
            http_method: s(&["get", "POST"]),
            http_status_code: s(&["5+"]),
            ..Default::default()
        };
        assert_eq!(check(&[f], &[]), vec![1]);
        // Across whitelist filters: OR; a blacklist removes.
        let http = FlowFilter {
            protocol: s(&["http"]),
            ..Default::default()
        };
        let dropped = FlowFilter {
            verdict: vec![Verdict::Dropped as i32],
            ..Default::default()
        };
        assert_eq!(check(&[http.clone(), dropped.clone()], &[]), vec![0, 1, 3]);
        let errors = FlowFilter {
            http_status_code: s(&["50+"]),
            ..Default::default()
        };
        assert_eq!(check(&[http, dropped.clone()], &[errors]), vec![0, 3]);
        // Blacklist only.
        assert_eq!(check(&[], &[dropped]), vec![0, 1, 2]);
    }

    #[test]
    fn l4_and_l7_details() {
        let one = |f: FlowFilter| check(&[f], &[]);
        assert_eq!(
            one(FlowFilter {
                protocol: s(&["UDP"]),
                ..Default::default()
            }),
            vec![2]
        );
        assert_eq!(
            one(FlowFilter {
                destination_port: s(&["22", "53"]),
                ..Default::default()
            }),
            vec![2, 3]
        );
        assert_eq!(
            one(FlowFilter {
                http_path: s(&["^/api/"]),
                ..Default::default()
            }),
            vec![0]
        );
        assert_eq!(
            one(FlowFilter {
                http_status_code: s(&["200"]),
                ..Default::default()
            }),
            vec![0]
        );
        assert_eq!(
            one(FlowFilter {
                dns_query: s(&["svc\\.cluster"]),
                ..Default::default()
            }),
            vec![2]
        );
        assert_eq!(
            one(FlowFilter {
                event_type: vec![EventTypeFilter {
                    r#type: 1,
                    match_sub_type: true,
                    sub_type: 133
                }],
                ..Default::default()
            }),
            vec![3]
        );
        assert_eq!(
            one(FlowFilter {
                event_type: vec![EventTypeFilter {
                    r#type: 129,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            vec![0, 1, 2]
        );
        assert_eq!(
            one(FlowFilter {
                tcp_flags: vec![TcpFlags {
                    syn: true,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            vec![3]
        );
        assert_eq!(
            one(FlowFilter {
                reply: vec![false],
                ..Default::default()
            }),
            vec![3]
        );
        assert_eq!(
            one(FlowFilter {
                node_name: s(&["node-*"]),
                ip_version: vec![IpVersion::IPv4 as i32],
                ..Default::default()
            }),
            vec![0, 1, 2]
        );
        assert_eq!(
            one(FlowFilter {
                destination_service: s(&["default/echo"]),
                ..Default::default()
            }),
            vec![0, 1]
        );
    }

    #[test]
    fn bad_values_are_errors_that_name_the_field() {
        let bad = |f: FlowFilter| FilterSet::new(&[f], &[]).expect_err("rejected");
        assert_eq!(
            bad(FlowFilter {
                source_ip: s(&["10.0.0.300"]),
                ..Default::default()
            })
            .to_string(),
            "source_ip: \"10.0.0.300\" is not an IP address or CIDR"
        );
        assert!(matches!(
            bad(FlowFilter {
                http_status_code: s(&["4x"]),
                ..Default::default()
            }),
            FilterError::Invalid {
                field: "http_status_code",
                ..
            }
        ));
        assert!(matches!(
            bad(FlowFilter {
                http_path: s(&["("]),
                ..Default::default()
            }),
            FilterError::Invalid {
                field: "http_path",
                ..
            }
        ));
        assert_eq!(
            bad(FlowFilter {
                trace_id: s(&["abc"]),
                ..Default::default()
            }),
            FilterError::Unsupported("trace_id")
        );
    }

    #[test]
    fn url_paths() {
        assert_eq!(url_path("http://h/a/b?x=1"), "/a/b");
        assert_eq!(url_path("http://h"), "");
        assert_eq!(url_path("/a#f"), "/a");
    }
}
