//! The endpoints a snapshot declares, as Gatus would probe them. Pure: a function of
//! `model::Snapshot`, no I/O.
//!
//! Three sources, with gatus-sidecar's conventions for the first two:
//! - **HTTPRoutes**: every route (`--auto-httproute`, as the corpus runs the sidecar) or only
//!   annotated ones; URL `https://<first hostname><first Exact/PathPrefix path>`, condition
//!   `[STATUS] == 200`; the `gatus.home-operations.com/endpoint` annotation of the route's
//!   first parent Gateway merged first, then the route's own (the child wins, maps merge).
//!   `guarded` turns the probe into a DNS query for the hostname at 1.1.1.1 that must find
//!   nothing (`len([BODY]) == 0`).
//! - **Services** with a gatus annotation: `<proto>://<name>.<ns>.svc.<domain>.:<first port>`,
//!   condition `[CONNECTED] == true`.
//! - **ConfigMaps labelled `gatus.io/enabled`**: each `*.yaml`/`*.yml` key is a Gatus config
//!   whose `endpoints:` are taken as written.
//!
//! An object with `gatus.home-operations.com/enabled` set to anything but a true value is
//! left out. Gateways make no endpoint of their own: their annotation is what their routes
//! inherit (that is how the corpus puts its external routes in the `external` group).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use model::object::Source;
use model::{ObjectKey, Snapshot};
use serde_json::{Map, Value};

use crate::condition::{Condition, parse_go_duration};

/// gatus-sidecar's template annotation.
pub const ANNOTATION_ENDPOINT: &str = "gatus.home-operations.com/endpoint";
/// gatus-sidecar's on/off annotation.
pub const ANNOTATION_ENABLED: &str = "gatus.home-operations.com/enabled";
/// The label k8s-sidecar watches for Gatus config in ConfigMaps.
pub const LABEL_CONFIG: &str = "gatus.io/enabled";
/// Gatus's defaults.
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Where a guarded probe asks (gatus-sidecar).
pub const GUARDED_RESOLVER: &str = "1.1.1.1";
/// The most endpoints one snapshot may declare; the rest are problems.
pub const ENDPOINTS_MAX: usize = 10_000;
/// The shortest interval accepted (a typo like `1ms` would otherwise flood a target).
pub const INTERVAL_MIN: Duration = Duration::from_secs(1);
/// The longest `client.timeout` accepted: a probe holds one of the bounded probe slots for
/// that long.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(300);

/// The keys of a Gatus endpoint trellis probes by. Anything else changes what Gatus would
/// probe (graphql, ssh, client.oauth2, client.proxy-url, ...) and is refused, so that an
/// endpoint is never reported healthy by a probe other than the one written.
const ENDPOINT_KEYS: &[&str] = &[
    "enabled",
    "name",
    "group",
    "url",
    "method",
    "conditions",
    "interval",
    "body",
    "headers",
    "dns",
    "client",
];
/// Keys taken and not acted on: they change how Gatus shows or alerts on a result, never the
/// result itself.
const PRESENTATION_KEYS: &[&str] = &["ui", "alerts", "extra-labels", "maintenance-windows"];
const CLIENT_KEYS: &[&str] = &["insecure", "ignore-redirect", "timeout", "dns-resolver"];
const DNS_KEYS: &[&str] = &["query-type", "query-name"];

/// The first key of `m` not in any of `known`, as an error naming `prefix.key`.
fn unknown_key(m: &Map<String, Value>, prefix: &str, known: &[&[&str]]) -> Result<(), String> {
    match m
        .keys()
        .find(|k| !known.iter().any(|list| list.contains(&k.as_str())))
    {
        None => Ok(()),
        Some(k) => Err(format!(
            "{prefix}{k}: not supported by trellis; the endpoint is left out rather than probed \
             other than as written"
        )),
    }
}

/// A text field of a map; absent or null is "".
fn text_field(m: &Map<String, Value>, prefix: &str, field: &str) -> Result<String, String> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(_) => Err(format!("{prefix}{field}: expected text")),
    }
}

/// Which objects make endpoints without opting in, and the sidecar's defaults.
#[derive(Clone, Debug)]
pub struct Discovery {
    /// Every HTTPRoute makes an endpoint (`--auto-httproute`); else only annotated ones.
    pub auto_httproute: bool,
    /// Every Service makes an endpoint (`--auto-service`); else only annotated ones.
    pub auto_service: bool,
    pub cluster_domain: String,
    pub interval: Duration,
}

impl Default for Discovery {
    /// As the corpus runs gatus-sidecar: `--auto-httproute --enable-httproute --enable-service`.
    fn default() -> Discovery {
        Discovery {
            auto_httproute: true,
            auto_service: false,
            cluster_domain: "cluster.local".into(),
            interval: INTERVAL_DEFAULT,
        }
    }
}

/// Gatus's endpoint types (the `type` label of its metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Http,
    Tcp,
    Udp,
    Icmp,
    Dns,
    Tls,
    StartTls,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "HTTP",
            Kind::Tcp => "TCP",
            Kind::Udp => "UDP",
            Kind::Icmp => "ICMP",
            Kind::Dns => "DNS",
            Kind::Tls => "TLS",
            Kind::StartTls => "STARTTLS",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsQuery {
    pub query_type: String,
    pub query_name: String,
}

/// `client.dns-resolver`: `udp://1.1.1.1:53` or `tcp://…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolver {
    pub tcp: bool,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub insecure: bool,
    pub ignore_redirect: bool,
    pub timeout: Duration,
    pub dns_resolver: Option<Resolver>,
}

impl Default for Client {
    fn default() -> Client {
        Client {
            insecure: false,
            ignore_redirect: false,
            timeout: TIMEOUT_DEFAULT,
            dns_resolver: None,
        }
    }
}

/// One endpoint to probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub name: String,
    pub group: String,
    pub url: String,
    pub kind: Kind,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub interval: Duration,
    pub conditions: Vec<Condition>,
    pub dns: Option<DnsQuery>,
    pub client: Client,
    /// The object that declared it.
    pub object: ObjectKey,
}

impl Endpoint {
    /// Gatus's key: `<group>_<name>`, each lowercased with `/ _ . , space # + &` made `-`.
    pub fn key(&self) -> String {
        fn sanitize(s: &str) -> String {
            s.trim()
                .to_lowercase()
                .chars()
                .map(|c| match c {
                    '/' | '_' | '.' | ',' | ' ' | '#' | '+' | '&' => '-',
                    c => c,
                })
                .collect()
        }
        format!("{}_{}", sanitize(&self.group), sanitize(&self.name))
    }

    /// As Gatus shows it: `group/name`, or `name` without a group.
    pub fn display_name(&self) -> String {
        if self.group.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.group, self.name)
        }
    }
}

/// Something that kept an endpoint from being made, on the object that declared it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectKey,
    /// `file:line:col` of the annotation or ConfigMap key.
    pub at: String,
    /// The field inside the endpoint's YAML (`conditions[1]`), then what is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} {}/{}: {}",
            self.at, self.object.kind, self.object.namespace, self.object.name, self.message
        )
    }
}

#[derive(Clone, Debug, Default)]
pub struct Endpoints {
    pub endpoints: Vec<Endpoint>,
    pub problems: Vec<Problem>,
}

/// Every endpoint the snapshot declares, and every problem found on the way.
pub fn endpoints(s: &Snapshot, d: &Discovery) -> Endpoints {
    let mut out = Endpoints::default();
    let mut keys = BTreeSet::new();
    let mut add = |out: &mut Endpoints, e: Endpoint, at: String| {
        if out.endpoints.len() >= ENDPOINTS_MAX {
            out.problems.push(Problem {
                object: e.object,
                at,
                message: format!("more than {ENDPOINTS_MAX} endpoints; this one is left out"),
            });
        } else if !keys.insert(e.key()) {
            out.problems.push(Problem {
                object: e.object.clone(),
                at,
                message: format!(
                    "endpoint {:?} has the key {} of an earlier endpoint (Gatus keys are \
                     group_name); this one is left out",
                    e.display_name(),
                    e.key()
                ),
            });
        } else {
            out.endpoints.push(e);
        }
    };

    for ((ns, name), route) in &s.http_routes {
        let key = ObjectKey::new("gateway.networking.k8s.io", "HTTPRoute", ns, name);
        let ann = &route.meta.annotations;
        if !selected(ann, d.auto_httproute) {
            continue;
        }
        let spec = &route.spec;
        let Some(host) = spec.hostnames.as_ref().and_then(|h| h.first()) else {
            continue;
        };
        let at = locate(
            &route.source,
            &format!("metadata.annotations.{ANNOTATION_ENDPOINT}"),
        );
        let problem = |message: String| Problem {
            object: key.clone(),
            at: at.clone(),
            message,
        };
        // The parent's template first: the first parentRef, when it is a Gateway.
        let parent = spec
            .parent_refs
            .as_ref()
            .and_then(|p| p.first())
            .filter(|p| {
                p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
                    && p.group.as_deref().unwrap_or("gateway.networking.k8s.io")
                        == "gateway.networking.k8s.io"
            });
        let mut template = Map::new();
        if let Some(p) = parent {
            let gw_ns = p.namespace.as_deref().unwrap_or(ns);
            if let Some(gw) = model::snapshot::get(&s.gateways, gw_ns, &p.name)
                && let Some(text) = gw.meta.annotations.get(ANNOTATION_ENDPOINT)
            {
                match template_of(text) {
                    Ok(t) => template = t,
                    Err(e) => {
                        out.problems.push(Problem {
                            object: ObjectKey::new(
                                "gateway.networking.k8s.io",
                                "Gateway",
                                gw_ns,
                                &p.name,
                            ),
                            at: locate(
                                &gw.source,
                                &format!("metadata.annotations.{ANNOTATION_ENDPOINT}"),
                            ),
                            message: e,
                        });
                        continue;
                    }
                }
            }
        }
        if let Some(text) = ann.get(ANNOTATION_ENDPOINT) {
            match template_of(text) {
                Ok(t) => merge(&mut template, t),
                Err(e) => {
                    out.problems.push(problem(e));
                    continue;
                }
            }
        }
        let path = match template.get("path") {
            Some(Value::String(p)) => p.clone(),
            _ => first_path(spec).unwrap_or_default(),
        };
        let url = if host.starts_with("http://") || host.starts_with("https://") {
            format!("{host}{}", rooted(&path))
        } else {
            format!("https://{host}{}", rooted(&path))
        };
        let base = sidecar_base(name, &url, d, "[STATUS] == 200", &template, host);
        match from_template(base, template, &key, d.interval) {
            Ok(Some(e)) => add(&mut out, e, at.clone()),
            Ok(None) => {}
            Err(e) => out.problems.push(problem(e)),
        }
    }

    for ((ns, name), svc) in &s.services {
        let key = ObjectKey::new("", "Service", ns, name);
        let ann = &svc.meta.annotations;
        if !selected(ann, d.auto_service) {
            continue;
        }
        let Some(port) = svc
            .spec
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first())
        else {
            continue;
        };
        let at = locate(
            &svc.source,
            &format!("metadata.annotations.{ANNOTATION_ENDPOINT}"),
        );
        let template = match ann.get(ANNOTATION_ENDPOINT).map(|t| template_of(t)) {
            None => Map::new(),
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                out.problems.push(Problem {
                    object: key,
                    at,
                    message: e,
                });
                continue;
            }
        };
        let proto = port.protocol.as_deref().unwrap_or("TCP").to_lowercase();
        let domain = d.cluster_domain.trim_matches('.');
        let url = format!("{proto}://{name}.{ns}.svc.{domain}.:{}", port.port);
        // Services have no guarded mode in the sidecar.
        let mut template = template;
        template.remove("guarded");
        let base = sidecar_base(name, &url, d, "[CONNECTED] == true", &template, "");
        match from_template(base, template, &key, d.interval) {
            Ok(Some(e)) => add(&mut out, e, at),
            Ok(None) => {}
            Err(e) => out.problems.push(Problem {
                object: key,
                at,
                message: e,
            }),
        }
    }

    for ((ns, name), cm) in &s.config_maps {
        if !cm.meta.labels.contains_key(LABEL_CONFIG) {
            continue;
        }
        let key = ObjectKey::new("", "ConfigMap", ns, name);
        let Some(data) = cm.spec.data.as_ref() else {
            continue;
        };
        for (file, text) in data {
            if !(file.ends_with(".yaml") || file.ends_with(".yml")) {
                continue;
            }
            let at = locate(&cm.source, &format!("data.{file}"));
            let problem = |message: String| Problem {
                object: key.clone(),
                at: at.clone(),
                message: format!("{file}: {message}"),
            };
            let (list, problems) = parse_config(text, &key, d.interval);
            out.problems.extend(problems.into_iter().map(problem));
            for e in list {
                add(&mut out, e, at.clone());
            }
        }
    }
    out
}

/// The endpoints of a Gatus `config.yaml` (its `endpoints:` list), and a message per entry
/// that could not be taken (`endpoints[2].conditions[0] …: column 5: …`).
pub fn parse_config(
    text: &str,
    object: &ObjectKey,
    interval: Duration,
) -> (Vec<Endpoint>, Vec<String>) {
    let (mut list, mut problems) = (Vec::new(), Vec::new());
    let config = match template_of(text) {
        Ok(c) => c,
        Err(e) => return (list, vec![e]),
    };
    match config.get("endpoints") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let Value::Object(m) = item else {
                    problems.push(format!("endpoints[{i}]: not a map"));
                    continue;
                };
                match gatus_endpoint(m, object, interval) {
                    Ok(Some(e)) => list.push(e),
                    Ok(None) => {}
                    Err(e) => problems.push(format!("endpoints[{i}].{e}")),
                }
            }
        }
        Some(_) => problems.push("endpoints: not a list".into()),
    }
    (list, problems)
}

fn locate(source: &Source, path: &str) -> String {
    source.locate(path)
}

/// Whether gatus-sidecar would emit this object: not explicitly disabled, and either in auto
/// mode or opted in by one of its annotations.
fn selected(ann: &std::collections::BTreeMap<String, String>, auto: bool) -> bool {
    if let Some(v) = ann.get(ANNOTATION_ENABLED)
        && go_bool(v) != Some(true)
    {
        return false;
    }
    auto || ann.contains_key(ANNOTATION_ENABLED) || ann.contains_key(ANNOTATION_ENDPOINT)
}

/// Go's `strconv.ParseBool`.
fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The first Exact or PathPrefix path of the route worth probing (not "" or "/").
fn first_path(spec: &model::gateway_api::httproutes::HttpRouteSpec) -> Option<String> {
    use model::gateway_api::httproutes::HttpRouteRulesMatchesPathType as T;
    spec.rules
        .iter()
        .flatten()
        .flat_map(|r| r.matches.iter().flatten())
        .filter_map(|m| m.path.as_ref())
        .filter(|p| !matches!(p.r#type, Some(T::RegularExpression)))
        .filter_map(|p| p.value.clone())
        .find(|v| v.starts_with('/') && v != "/")
}

fn rooted(path: &str) -> String {
    if path.is_empty() || path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// A YAML fragment (an annotation, a ConfigMap value) as a JSON map; an empty text is an
/// empty map.
fn template_of(text: &str) -> Result<Map<String, Value>, String> {
    let docs = model::yaml::parse_documents(text).map_err(|e| format!("YAML: {e}"))?;
    let Some(doc) = docs.first() else {
        return Ok(Map::new());
    };
    match doc.to_json(&mut model::yaml::PosIndex::default()) {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        other => Err(format!("expected a map, found {other}")),
    }
}

/// Deep merge: `child`'s scalars and lists win, maps merge.
fn merge(parent: &mut Map<String, Value>, child: Map<String, Value>) {
    for (k, v) in child {
        match (parent.get_mut(&k), v) {
            (Some(Value::Object(p)), Value::Object(c)) => merge(p, c),
            (_, v) => {
                parent.insert(k, v);
            }
        }
    }
}

/// The endpoint gatus-sidecar makes before applying the template.
fn sidecar_base(
    name: &str,
    url: &str,
    d: &Discovery,
    condition: &str,
    template: &Map<String, Value>,
    guard_host: &str,
) -> Map<String, Value> {
    let mut base = Map::new();
    base.insert("name".into(), Value::String(name.into()));
    base.insert("url".into(), Value::String(url.into()));
    base.insert(
        "interval".into(),
        Value::String(format!("{}s", d.interval.as_secs())),
    );
    if template.get("guarded").and_then(Value::as_bool) == Some(true) && !guard_host.is_empty() {
        base.insert("url".into(), Value::String(GUARDED_RESOLVER.into()));
        base.insert(
            "dns".into(),
            serde_json::json!({"query-name": guard_host, "query-type": "A"}),
        );
        base.insert("conditions".into(), serde_json::json!(["len([BODY]) == 0"]));
    } else {
        base.insert("conditions".into(), serde_json::json!([condition]));
    }
    base
}

/// Applies a sidecar template over `base`: `name`, `group`, `url`, `interval` replace,
/// `conditions` replaces (a string or a list), `dns`/`client`/`ui` merge, `guarded` and
/// `path` were used already, anything else is taken as written.
fn from_template(
    mut base: Map<String, Value>,
    template: Map<String, Value>,
    key: &ObjectKey,
    interval: Duration,
) -> Result<Option<Endpoint>, String> {
    for (k, v) in template {
        match k.as_str() {
            "guarded" | "path" => {}
            "conditions" => {
                let list = match v {
                    Value::String(s) => Value::Array(vec![Value::String(s)]),
                    other => other,
                };
                base.insert(k, list);
            }
            "dns" | "client" | "ui" => match (base.get_mut(&k), v) {
                (Some(Value::Object(b)), Value::Object(t)) => b.extend(t),
                (_, v) => {
                    base.insert(k, v);
                }
            },
            _ => {
                base.insert(k, v);
            }
        }
    }
    gatus_endpoint(&base, key, interval)
}

/// A Gatus `endpoints[]` entry. `Ok(None)` for `enabled: false`. Errors name the field.
fn gatus_endpoint(
    m: &Map<String, Value>,
    key: &ObjectKey,
    interval_default: Duration,
) -> Result<Option<Endpoint>, String> {
    unknown_key(m, "", &[ENDPOINT_KEYS, PRESENTATION_KEYS])?;
    let string = |field: &str| text_field(m, "", field);
    match m.get("enabled") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Ok(None),
        Some(_) => return Err("enabled: expected true or false".into()),
    }
    let name = string("name")?;
    if name.is_empty() {
        return Err("name: required".into());
    }
    let group = string("group")?;
    let url = string("url")?;
    if url.is_empty() {
        return Err("url: required".into());
    }
    let method = match string("method")? {
        m if m.is_empty() => "GET".to_string(),
        m => m.to_uppercase(),
    };
    http::Method::from_bytes(method.as_bytes()).map_err(|_| format!("method: {method:?}"))?;
    let mut headers = Vec::new();
    match m.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("headers.{k}: not a header name"))?;
                http::HeaderValue::from_str(&v)
                    .map_err(|_| format!("headers.{k}: not a header value"))?;
                headers.push((k.clone(), v));
            }
        }
        Some(_) => return Err("headers: expected a map".into()),
    }
    let body = string("body")?;
    let interval = match string("interval")? {
        s if s.is_empty() => interval_default,
        s => {
            let ms = parse_go_duration(&s)
                .filter(|ms| *ms > 0)
                .ok_or_else(|| format!("interval: {s:?} is not a duration (e.g. 30s, 1m)"))?;
            Duration::from_millis(ms as u64).max(INTERVAL_MIN)
        }
    };
    let conditions = match m.get("conditions") {
        Some(Value::Array(list)) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let text = c
                    .as_str()
                    .ok_or_else(|| format!("conditions[{i}]: expected text"))?;
                Condition::parse(text).map_err(|e| format!("conditions[{i}] {text:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err("conditions: at least one is required".into()),
    };
    let dns = match m.get("dns") {
        None | Some(Value::Null) => None,
        Some(Value::Object(d)) => {
            unknown_key(d, "dns.", &[DNS_KEYS])?;
            let query_type = text_field(d, "dns.", "query-type")?.to_uppercase();
            let query_name = text_field(d, "dns.", "query-name")?;
            if query_name.is_empty() {
                return Err("dns.query-name: required".into());
            }
            if query_type.parse::<hickory_proto::rr::RecordType>().is_err() {
                return Err(format!(
                    "dns.query-type: {query_type:?} is not a record type"
                ));
            }
            Some(DnsQuery {
                query_type,
                query_name,
            })
        }
        Some(_) => return Err("dns: expected a map".into()),
    };
    let mut client = Client::default();
    match m.get("client") {
        None | Some(Value::Null) => {}
        Some(Value::Object(c)) => {
            unknown_key(c, "client.", &[CLIENT_KEYS])?;
            let flag = |f: &str| -> Result<bool, String> {
                match c.get(f) {
                    None | Some(Value::Null) => Ok(false),
                    Some(Value::Bool(b)) => Ok(*b),
                    Some(_) => Err(format!("client.{f}: expected true or false")),
                }
            };
            client.insecure = flag("insecure")?;
            client.ignore_redirect = flag("ignore-redirect")?;
            let t = text_field(c, "client.", "timeout")?;
            if !t.is_empty() {
                let timeout = parse_go_duration(&t)
                    .filter(|ms| *ms > 0)
                    .map(|ms| Duration::from_millis(ms as u64))
                    .ok_or_else(|| format!("client.timeout: {t:?} is not a duration"))?;
                if timeout > TIMEOUT_MAX {
                    return Err(format!(
                        "client.timeout: {t} is longer than the {}s trellis allows",
                        TIMEOUT_MAX.as_secs()
                    ));
                }
                client.timeout = timeout;
            }
            let r = text_field(c, "client.", "dns-resolver")?;
            if !r.is_empty() {
                client.dns_resolver = Some(parse_resolver(&r).map_err(|e| {
                    format!(
                        "client.dns-resolver: {r:?}: {e} (expected udp://IP:PORT or tcp://IP:PORT)"
                    )
                })?);
            }
        }
        Some(_) => return Err("client: expected a map".into()),
    }
    let kind = if dns.is_some() {
        Kind::Dns
    } else {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "http" | "https" => Kind::Http,
            "tcp" => Kind::Tcp,
            "udp" => Kind::Udp,
            "icmp" => Kind::Icmp,
            "tls" => Kind::Tls,
            "starttls" => Kind::StartTls,
            _ => {
                return Err(format!(
                    "url: {url:?}: unknown endpoint type (http(s)://, tcp://, udp://, icmp://, \
                     tls://, starttls://, or a dns: section)"
                ));
            }
        }
    };
    Ok(Some(Endpoint {
        name,
        group,
        url,
        kind,
        method,
        headers,
        body,
        interval,
        conditions,
        dns,
        client,
        object: key.clone(),
    }))
}

fn parse_resolver(s: &str) -> Result<Resolver, String> {
    let (proto, rest) = s.split_once("://").ok_or("no protocol")?;
    let tcp = match proto {
        "tcp" => true,
        "udp" => false,
        other => return Err(format!("protocol {other:?}")),
    };
    let addr = rest
        .parse::<SocketAddr>()
        .map_err(|_| "not IP:PORT".to_string())?;
    Ok(Resolver { tcp, addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(yaml: &str) -> Result<Option<Endpoint>, String> {
        let m = template_of(yaml).expect("yaml");
        gatus_endpoint(
            &m,
            &ObjectKey::new("", "ConfigMap", "ns", "x"),
            INTERVAL_DEFAULT,
        )
    }

    #[test]
    fn gatus_fields() {
        let e = one(
            "name: api\ngroup: core\nurl: https://x/health\nmethod: post\nbody: '{}'\n\
             headers: {X-A: b}\ninterval: 30s\nconditions: ['[STATUS] == 200']\n\
             client: {insecure: true, ignore-redirect: true, timeout: 2s, dns-resolver: 'tcp://127.0.0.1:53'}",
        )
        .expect("valid")
        .expect("enabled");
        assert_eq!(e.kind, Kind::Http);
        assert_eq!(e.method, "POST");
        assert_eq!(e.interval, Duration::from_secs(30));
        assert_eq!(e.headers, vec![("X-A".to_string(), "b".to_string())]);
        assert!(e.client.insecure && e.client.ignore_redirect);
        assert_eq!(e.client.timeout, Duration::from_secs(2));
        assert_eq!(
            e.client.dns_resolver,
            Some(Resolver {
                tcp: true,
                addr: "127.0.0.1:53".parse().expect("addr")
            })
        );
        assert_eq!(e.key(), "core_api");
        assert_eq!(e.display_name(), "core/api");
    }

    #[test]
    fn gatus_errors_name_the_field() {
        let err = |y: &str| one(y).expect_err("invalid");
        assert_eq!(
            err("url: http://x\nconditions: ['[STATUS] == 200']"),
            "name: required"
        );
        assert!(err("name: a\nurl: http://x\n").starts_with("conditions:"));
        assert!(
            err("name: a\nurl: ftp://x\nconditions: ['[STATUS] == 200']")
                .contains("unknown endpoint type")
        );
        assert_eq!(
            err("name: a\nurl: http://x\nconditions: ['[STATUS] == 200', '[STATSU] == 1']"),
            "conditions[1] \"[STATSU] == 1\": column 1: unknown placeholder [STATSU]: expected \
             [STATUS], [RESPONSE_TIME], [IP], [BODY], [CONNECTED], [CERTIFICATE_EXPIRATION] or \
             [DNS_RCODE]"
        );
        assert!(
            err("name: a\nurl: http://x\ninterval: often\nconditions: ['[STATUS] == 200']")
                .starts_with("interval:")
        );
        // What would change the probe, and values of the wrong type, are refused, never
        // ignored.
        assert!(
            err("name: a\nurl: http://x\ngraphql: true\nconditions: ['[STATUS] == 200']")
                .starts_with("graphql: not supported")
        );
        assert!(
            err("name: a\nurl: http://x\nclient: {proxy-url: 'http://p'}\nconditions: ['[STATUS] == 200']")
                .starts_with("client.proxy-url: not supported")
        );
        assert!(
            err("name: a\nurl: http://x\ndns: {query-name: x, query-type: A, qclass: CH}\nconditions: ['[STATUS] == 200']")
                .starts_with("dns.qclass: not supported")
        );
        assert_eq!(
            err("name: a\nurl: http://x\nclient: {timeout: [1]}\nconditions: ['[STATUS] == 200']"),
            "client.timeout: expected text"
        );
        assert_eq!(
            err("name: a\nurl: http://x\nclient: {timeout: 1h}\nconditions: ['[STATUS] == 200']"),
            "client.timeout: 1h is longer than the 300s trellis allows"
        );
        assert_eq!(
            err("name: a\nurl: http://x\nenabled: 'no'\nconditions: ['[STATUS] == 200']"),
            "enabled: expected true or false"
        );
        assert!(
            err("name: a\nurl: http://x\nconditions: ['[DOMAIN_EXPIRATION] > 720h']")
                .contains("WHOIS")
        );
        // Display and alerting keys (the corpus's smtp-relay has both) change no result.
        assert!(
            one(
                "name: a\nurl: tcp://x:1\nui: {hide-url: true}\nalerts: [{type: pushover}]\n\
                 conditions: ['[CONNECTED] == true']"
            )
            .expect("valid")
            .is_some()
        );
        assert!(
            one("name: a\nurl: http://x\nenabled: false\nconditions: ['[STATUS] == 200']")
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn keys_as_gatus_makes_them() {
        let mut e = one("name: My Site.v2\nurl: tcp://x:1\nconditions: ['[CONNECTED] == true']")
            .expect("valid")
            .expect("enabled");
        assert_eq!(e.key(), "_my-site-v2");
        e.group = "A/B_c".into();
        assert_eq!(e.key(), "a-b-c_my-site-v2");
    }

    #[test]
    fn templates_merge_child_over_parent() {
        let mut p = template_of("group: external\nclient:\n  dns-resolver: tcp://1.1.1.1:53\n")
            .expect("yaml");
        merge(
            &mut p,
            template_of("client:\n  timeout: 5s\nconditions: ['[STATUS] == 404']").expect("yaml"),
        );
        assert_eq!(
            Value::Object(p),
            serde_json::json!({"group": "external", "client": {"dns-resolver": "tcp://1.1.1.1:53", "timeout": "5s"}, "conditions": ["[STATUS] == 404"]})
        );
    }
}
