//! ExternalDNS's webhook provider protocol, both ends.
//!
//! - [`WebhookProvider`]: the client, as ExternalDNS's `--provider=webhook`: it negotiates
//!   with `GET /` (the answer is the provider's domain filter), lists with `GET /records`,
//!   applies with `POST /records` (204 when accepted) and adjusts with
//!   `POST /adjustendpoints`. So the webhook sidecars ExternalDNS users run (AdGuard Home,
//!   OPNsense Unbound, ...) work with `trellis sync` unchanged.
//! - [`serve`]: the server, backed by any [`Provider`], so ExternalDNS itself can drive one
//!   (`trellis dns --webhook-listen` serves the zone trellis answers).
//!
//! Every request and answer carries the media type [`MEDIA_TYPE`]. The JSON is ExternalDNS's:
//! `endpoint.Endpoint` (`dnsName`, `targets`, `recordType`, `setIdentifier`, `recordTTL`,
//! `labels`, `providerSpecific` of `{name, value}`), `plan.Changes` (`create`, `updateOld`,
//! `updateNew`, `delete`; Go's decoder ignores case, so the `Create`/`UpdateOld`/... that
//! ExternalDNS releases without JSON tags sent are read too) and `endpoint.DomainFilter`
//! (`include`, `exclude`, `regexInclude`, `regexExclude`). Only 5xx answers are retried (as
//! ExternalDNS does); every other non-2xx status is permanent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::http::{Client, Handler, Serving, respond};
use super::provider::{BoxFuture, Error, Failure, Provider, all_failed};
use super::{Changes, Endpoint};

/// The media type of every webhook request and answer.
pub const MEDIA_TYPE: &str = "application/external.dns.webhook+json;version=1";

/// A provider-specific property on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Property {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// `endpoint.Endpoint` on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireEndpoint {
    pub dns_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
    pub record_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_identifier: Option<String>,
    #[serde(rename = "recordTTL", default, skip_serializing_if = "Option::is_none")]
    pub record_ttl: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_specific: Option<Vec<Property>>,
}

/// The label ExternalDNS gives an endpoint for the object it came from.
const RESOURCE_LABEL: &str = "resource";

impl From<&Endpoint> for WireEndpoint {
    fn from(e: &Endpoint) -> Self {
        WireEndpoint {
            dns_name: e.name.clone(),
            targets: Some(e.targets.iter().cloned().collect()),
            record_type: e.record_type.clone(),
            set_identifier: None,
            record_ttl: e.ttl.map(i64::from),
            labels: (!e.resource.is_empty())
                .then(|| BTreeMap::from([(RESOURCE_LABEL.to_string(), e.resource.clone())])),
            provider_specific: (!e.provider_specific.is_empty()).then(|| {
                e.provider_specific
                    .iter()
                    .map(|(name, value)| Property {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect()
            }),
        }
    }
}

impl From<WireEndpoint> for Endpoint {
    fn from(w: WireEndpoint) -> Self {
        let cname = w.record_type == "CNAME";
        Endpoint {
            name: w.dns_name.trim_end_matches('.').to_ascii_lowercase(),
            targets: w
                .targets
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    if cname {
                        t.trim_end_matches('.').to_ascii_lowercase()
                    } else {
                        t
                    }
                })
                .collect::<BTreeSet<_>>(),
            record_type: w.record_type,
            ttl: w
                .record_ttl
                .filter(|t| *t > 0)
                .and_then(|t| u32::try_from(t).ok()),
            resource: w
                .labels
                .and_then(|mut l| l.remove(RESOURCE_LABEL))
                .unwrap_or_default(),
            provider_specific: w
                .provider_specific
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.name, p.value))
                .collect(),
        }
    }
}

/// `plan.Changes` on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChanges {
    #[serde(rename = "create", alias = "Create", default)]
    pub create: Option<Vec<WireEndpoint>>,
    #[serde(rename = "updateOld", alias = "UpdateOld", default)]
    pub update_old: Option<Vec<WireEndpoint>>,
    #[serde(rename = "updateNew", alias = "UpdateNew", default)]
    pub update_new: Option<Vec<WireEndpoint>>,
    #[serde(rename = "delete", alias = "Delete", default)]
    pub delete: Option<Vec<WireEndpoint>>,
}

fn to_wire(list: &[Endpoint]) -> Option<Vec<WireEndpoint>> {
    (!list.is_empty()).then(|| list.iter().map(WireEndpoint::from).collect())
}

fn from_wire(list: Option<Vec<WireEndpoint>>) -> Vec<Endpoint> {
    list.unwrap_or_default()
        .into_iter()
        .map(Endpoint::from)
        .collect()
}

impl From<&Changes> for WireChanges {
    fn from(c: &Changes) -> Self {
        WireChanges {
            create: to_wire(&c.create),
            update_old: to_wire(&c.update_old),
            update_new: to_wire(&c.update_new),
            delete: to_wire(&c.delete),
        }
    }
}

impl From<WireChanges> for Changes {
    fn from(w: WireChanges) -> Self {
        Changes {
            create: from_wire(w.create),
            update_old: from_wire(w.update_old),
            update_new: from_wire(w.update_new),
            delete: from_wire(w.delete),
        }
    }
}

/// `endpoint.DomainFilter` on the wire (the answer to `GET /`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub regex_include: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub regex_exclude: String,
}

/// The client end: a webhook provider at a base URL (ExternalDNS's `--webhook-provider-url`,
/// `http://localhost:8888` for the sidecars).
pub struct WebhookProvider {
    base: String,
    client: Client,
    filter: Mutex<DomainFilter>,
    /// Sent as `Authorization: Bearer` when set (a `trellis dns` webhook asks for one).
    token: Option<String>,
}

impl std::fmt::Debug for WebhookProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookProvider")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl WebhookProvider {
    /// Negotiates with the webhook (`GET /`) and keeps the domain filter it answers.
    pub async fn connect(
        base: &str,
        client: Client,
        token: Option<String>,
    ) -> Result<WebhookProvider, Error> {
        let p = WebhookProvider {
            base: base.trim_end_matches('/').to_string(),
            client,
            filter: Mutex::new(DomainFilter::default()),
            token: token.filter(|t| !t.trim().is_empty()),
        };
        let filter: DomainFilter = p.get_json("/").await?;
        *p.filter.lock().unwrap_or_else(|e| e.into_inner()) = filter;
        Ok(p)
    }

    /// The domain filter the webhook answered when negotiating.
    pub fn negotiated(&self) -> DomainFilter {
        self.filter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn request(&self, method: http::Method, path: &str, body: Bytes) -> http::Request<Bytes> {
        let mut req = http::Request::new(body);
        *req.method_mut() = method.clone();
        *req.uri_mut() = format!("{}{path}", self.base).parse().unwrap_or_default();
        let h = req.headers_mut();
        h.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static(MEDIA_TYPE),
        );
        if method == http::Method::POST {
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(MEDIA_TYPE),
            );
        }
        if let Some(t) = &self.token
            && let Ok(mut v) = http::HeaderValue::from_str(&format!("Bearer {}", t.trim()))
        {
            v.set_sensitive(true);
            h.insert(http::header::AUTHORIZATION, v);
        }
        req
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> Result<super::http::Response, Error> {
        let what = format!("webhook {method} {}{path}", self.base);
        let resp = self.client.send(self.request(method, path, body)).await?;
        match resp.status {
            200..=299 => Ok(resp),
            // ExternalDNS retries 5xx only; anything else is the webhook refusing.
            500..=599 => Err(Error::Retryable(format!(
                "{what}: HTTP {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body).trim()
            ))),
            s => Err(Error::Permanent(format!(
                "{what}: HTTP {s}: {}",
                String::from_utf8_lossy(&resp.body).trim()
            ))),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let resp = self.call(http::Method::GET, path, Bytes::new()).await?;
        serde_json::from_slice(&resp.body)
            .map_err(|e| Error::Permanent(format!("webhook GET {}{path}: {e}", self.base)))
    }
}

impl Provider for WebhookProvider {
    fn records(&self) -> BoxFuture<'_, Result<Vec<Endpoint>, Error>> {
        Box::pin(async move {
            let list: Option<Vec<WireEndpoint>> = self.get_json("/records").await?;
            Ok(from_wire(list))
        })
    }

    fn apply<'a>(&'a self, changes: &'a Changes) -> BoxFuture<'a, Vec<Failure>> {
        Box::pin(async move {
            if changes.is_empty() {
                return Vec::new();
            }
            let body = match serde_json::to_vec(&WireChanges::from(changes)) {
                Ok(b) => b,
                Err(e) => return all_failed(changes, &Error::Permanent(e.to_string())),
            };
            match self.call(http::Method::POST, "/records", body.into()).await {
                Ok(_) => Vec::new(),
                // One request carries every change: they all failed with it.
                Err(e) => all_failed(changes, &e),
            }
        })
    }

    fn adjust_endpoints(
        &self,
        desired: Vec<Endpoint>,
    ) -> BoxFuture<'_, Result<Vec<Endpoint>, Error>> {
        Box::pin(async move {
            let wire: Vec<WireEndpoint> = desired.iter().map(WireEndpoint::from).collect();
            let body = serde_json::to_vec(&wire).map_err(|e| Error::Permanent(e.to_string()))?;
            let resp = self
                .call(http::Method::POST, "/adjustendpoints", body.into())
                .await?;
            let list: Option<Vec<WireEndpoint>> = serde_json::from_slice(&resp.body)
                .map_err(|e| Error::Permanent(format!("webhook /adjustendpoints: {e}")))?;
            Ok(from_wire(list))
        })
    }

    fn domain_filter(&self) -> Vec<String> {
        self.negotiated().include
    }
}

/// Whether a header value names the webhook media type (or accepts anything).
fn accepts(h: Option<&http::HeaderValue>, any_ok: bool) -> bool {
    let Some(v) = h.and_then(|v| v.to_str().ok()) else {
        return any_ok;
    };
    let norm = |s: &str| s.replace(' ', "").to_ascii_lowercase();
    v.split(',').any(|part| {
        let p = norm(part);
        p == MEDIA_TYPE
            || p.starts_with(&format!("{MEDIA_TYPE};"))
            || (any_ok && p.starts_with("*/*"))
    })
}

fn json(status: u16, value: &impl Serialize) -> http::Response<Bytes> {
    match serde_json::to_vec(value) {
        Ok(b) => respond(status, MEDIA_TYPE, b),
        Err(e) => respond(500, "text/plain", format!("{e}\n")),
    }
}

/// Who may use a webhook server.
///
/// - A bearer token, when set, is required on every request but `/healthz`
///   (`Authorization: Bearer TOKEN`); compared in constant time.
/// - The Host header must be an IP address or `localhost` (with the listen port, if any): a
///   web page whose name was rebound to the server's address (DNS rebinding) sends its own
///   name and is refused.
#[derive(Clone, Default)]
pub struct Access {
    token: Option<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Access {
    /// Requires `token` (trimmed; an empty one is no token).
    pub fn token(token: &str) -> Access {
        let t = token.trim();
        Access {
            token: (!t.is_empty()).then(|| t.to_string()),
        }
    }

    /// The refusal for a request, if it is refused.
    fn check(&self, req: &http::Request<Bytes>, port: u16) -> Option<http::Response<Bytes>> {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !host_allowed(host, port) {
            return Some(respond(
                421,
                "text/plain",
                "Host must be an IP address or localhost\n",
            ));
        }
        let Some(want) = &self.token else {
            return None;
        };
        let got = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .and_then(|v| {
                v.get(..7)
                    .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
                    .map(|_| v[7..].trim_ascii())
            })
            .unwrap_or_default();
        let same: bool = subtle::ConstantTimeEq::ct_eq(got, want.as_bytes()).into();
        if same {
            None
        } else {
            let mut r = respond(401, "text/plain", "a bearer token is required\n");
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            Some(r)
        }
    }
}

/// Whether a Host header names the server by address (or as localhost), on its port.
fn host_allowed(host: &str, port: u16) -> bool {
    let (name, p) = match host.rsplit_once(':') {
        // `[v6]:port` or `v4:port` or `name:port`; a bare IPv6 literal has more colons.
        Some((n, p)) if !n.contains(':') || n.ends_with(']') => (n, Some(p)),
        _ => (host, None),
    };
    let port_ok = match p {
        Some(p) => p.parse::<u16>().ok() == Some(port),
        None => port == 80,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    port_ok && (name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok())
}

/// One webhook request, answered from `provider`. (Public for the fuzz targets only.)
#[doc(hidden)]
pub async fn handle(
    provider: Arc<dyn Provider>,
    access: &Access,
    port: u16,
    req: http::Request<Bytes>,
) -> http::Response<Bytes> {
    use http::Method;
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/healthz" {
        return respond(200, "text/plain", "ok\n");
    }
    if let Some(refused) = access.check(&req, port) {
        return refused;
    }
    if !accepts(req.headers().get(http::header::ACCEPT), true) {
        return respond(406, "text/plain", format!("accept {MEDIA_TYPE}\n"));
    }
    if method == Method::POST && !accepts(req.headers().get(http::header::CONTENT_TYPE), false) {
        return respond(415, "text/plain", format!("send {MEDIA_TYPE}\n"));
    }
    match (method, path.as_str()) {
        (Method::GET, "/") => json(
            200,
            &DomainFilter {
                include: provider.domain_filter(),
                ..DomainFilter::default()
            },
        ),
        (Method::GET, "/records") => match provider.records().await {
            Ok(list) => json(
                200,
                &list.iter().map(WireEndpoint::from).collect::<Vec<_>>(),
            ),
            Err(e) => respond(500, "text/plain", format!("{e}\n")),
        },
        (Method::POST, "/records") => {
            let changes: Changes = match serde_json::from_slice::<WireChanges>(req.body()) {
                Ok(w) => w.into(),
                Err(e) => return respond(400, "text/plain", format!("changes: {e}\n")),
            };
            let failures = provider.apply(&changes).await;
            if failures.is_empty() {
                return respond(204, MEDIA_TYPE, Bytes::new());
            }
            let text: String = failures.iter().map(|f| format!("{f}\n")).collect();
            let status = if failures.iter().any(|f| f.error.is_retryable()) {
                500
            } else {
                400
            };
            respond(status, "text/plain", text)
        }
        (Method::POST, "/adjustendpoints") => {
            let list: Vec<WireEndpoint> = match serde_json::from_slice(req.body()) {
                Ok(l) => l,
                Err(e) => return respond(400, "text/plain", format!("endpoints: {e}\n")),
            };
            let eps = list.into_iter().map(Endpoint::from).collect();
            match provider.adjust_endpoints(eps).await {
                Ok(list) => json(
                    200,
                    &list.iter().map(WireEndpoint::from).collect::<Vec<_>>(),
                ),
                Err(e) => respond(
                    if e.is_retryable() { 500 } else { 400 },
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        (_, "/" | "/records" | "/adjustendpoints") => {
            respond(405, "text/plain", "method not allowed\n")
        }
        _ => respond(
            404,
            "text/plain",
            "try GET /, GET|POST /records, POST /adjustendpoints, GET /healthz\n",
        ),
    }
}

/// Serves the webhook API on `addr`, backed by `provider`, until the result is dropped.
pub async fn serve(
    addr: std::net::SocketAddr,
    provider: Arc<dyn Provider>,
    access: Access,
) -> std::io::Result<Serving> {
    serve_counted(addr, provider, access, Default::default()).await
}

/// [`serve`], counting the server's bounds hit in `counters`.
pub async fn serve_counted(
    addr: std::net::SocketAddr,
    provider: Arc<dyn Provider>,
    access: Access,
    counters: super::http::ServerCounters,
) -> std::io::Result<Serving> {
    // Bound first: the Host header must carry the bound port (port 0 picks one).
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let port = listener.local_addr()?.port();
    let access = Arc::new(access);
    let handler: Handler = Arc::new(move |req| {
        let provider = provider.clone();
        let access = access.clone();
        Box::pin(async move { handle(provider, &access, port, req).await })
    });
    super::http::serve_counted(listener, handler, counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_by_address_only() {
        for (host, ok) in [
            ("127.0.0.1:8888", true),
            ("localhost:8888", true),
            ("[::1]:8888", true),
            ("10.1.2.3:8888", true),
            ("127.0.0.1:9999", false),
            ("127.0.0.1", false),
            ("attacker.example:8888", false),
            ("", false),
        ] {
            assert_eq!(host_allowed(host, 8888), ok, "{host}");
        }
        assert!(host_allowed("localhost", 80));
    }
}
