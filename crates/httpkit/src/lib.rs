//! The small HTTP trellis's control plane speaks (record-sync providers and the webhook API,
//! JWKS and OpenID endpoints of SecurityPolicies): a one-request-per-connection HTTP/1.1
//! client (plain, or TLS with the system's CA bundle) and a small server loop, both over
//! hyper. Bodies are bounded both ways ([`BODY_BYTES_MAX`]) and every request has a deadline
//! ([`REQUEST_TIMEOUT`]). Errors say whether trying again can help ([`Error`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use std::future::Future;
use std::pin::Pin;

/// A boxed future (handlers and providers chosen at run time).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Worth trying again later (server errors, rate limits, timeouts, unreachable servers).
    #[error("{0} (retryable)")]
    Retryable(String),
    /// Trying again will not help until something changes (client errors, refusals).
    #[error("{0}")]
    Permanent(String),
}

impl Error {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Retryable(_))
    }

    /// Classifies an HTTP status: 5xx and 429 are retryable, everything else permanent.
    pub fn from_status(status: u16, what: impl std::fmt::Display) -> Error {
        let msg = format!("{what}: HTTP {status}");
        if status >= 500 || status == 429 {
            Error::Retryable(msg)
        } else {
            Error::Permanent(msg)
        }
    }
}

/// The largest body read (a 10,000-record listing is about 2 MB of JSON).
pub const BODY_BYTES_MAX: usize = 64 << 20;
/// Connect, send and read the whole answer within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// What the server loop ([`serve`]) allows: its connections at once (more wait in the
/// kernel's backlog), the time to send a request head (nginx's `client_header_timeout`,
/// 10 s; Envoy has none by default), the time to send its body, and the largest body.
pub const SERVER_CONNECTIONS_MAX: usize = 64;
pub const SERVER_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const SERVER_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// ExternalDNS sends its changes of one loop in one request: a few thousand records.
pub const SERVER_BODY_BYTES_MAX: usize = 8 << 20;
/// How long accepting pauses after an error (EMFILE, ENFILE): the loop must not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Where Debian and most distributions keep the system's CA certificates.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The usable certificates of a PEM bundle; an error when it cannot be read or holds none
/// rustls can use (a bundle may hold some it cannot; the rest still count).
pub fn root_store(pem: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem).map_err(|e| e.to_string())? {
        let _ = roots.add(cert.map_err(|e| e.to_string())?);
    }
    if roots.is_empty() {
        return Err("no usable certificate".into());
    }
    Ok(roots)
}

/// A TLS client configuration (ring, the safe default versions) trusting `roots`.
pub fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Sends requests to `http://` URLs, and to `https://` ones when built with CA roots.
#[derive(Clone, Default)]
pub struct Client {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Client {
    /// A client that trusts the CA certificates of a PEM bundle (for `https://` URLs).
    pub fn with_roots(pem: &Path) -> Result<Client, Error> {
        let bad = |e: String| Error::Permanent(format!("CA bundle {}: {e}", pem.display()));
        let cfg = client_config(root_store(pem).map_err(bad)?).map_err(bad)?;
        Ok(Client {
            tls: Some(Arc::new(cfg)),
        })
    }

    /// Sends one request and reads the whole answer. Connection failures and timeouts are
    /// retryable; a status is returned as it came (callers classify it).
    pub async fn send(&self, mut req: http::Request<Bytes>) -> Result<Response, Error> {
        let uri = req.uri().clone();
        let what = format!("{} {uri}", req.method());
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(Error::Permanent(format!("{what}: not an http(s) URL"))),
        };
        let host = uri
            .host()
            .ok_or_else(|| Error::Permanent(format!("{what}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if !req.headers().contains_key(http::header::HOST) {
            let value = match uri.port() {
                Some(p) => format!("{}:{p}", uri.host().unwrap_or_default()),
                None => uri.host().unwrap_or_default().to_string(),
            };
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        // HTTP/1.1 sends the path, not the absolute URI.
        if let Some(pq) = uri.path_and_query() {
            *req.uri_mut() = pq.as_str().parse().unwrap_or_default();
        }
        let exchange = async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| Error::Retryable(format!("{what}: {e}")))?;
            if !https {
                return exchange(tcp, req, &what).await;
            }
            let cfg = self.tls.clone().ok_or_else(|| {
                Error::Permanent(format!("{what}: https needs a CA bundle (none loaded)"))
            })?;
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| Error::Permanent(format!("{what}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| Error::Retryable(format!("{what}: TLS: {e}")))?;
            exchange(tls, req, &what).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| Error::Retryable(format!("{what}: no answer in {REQUEST_TIMEOUT:?}")))?
    }
}

async fn exchange<S>(io: S, req: http::Request<Bytes>, what: &str) -> Result<Response, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    exchange_on(io, req, what, BODY_BYTES_MAX).await
}

/// One request on a connection the caller made (its own resolver, TLS settings, certificate
/// checks: the health probes), reading at most `body_bytes_max` of the body. The request's
/// URI is sent as it is (give the path) and it must carry its `Host`. No deadline here: the
/// caller bounds the whole exchange.
pub async fn exchange_on<S>(
    io: S,
    req: http::Request<Bytes>,
    what: &str,
    body_bytes_max: usize,
) -> Result<Response, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |e: &dyn std::fmt::Display| Error::Retryable(format!("{what}: {e}"));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| failed(&e))?;
    tokio::spawn(conn);
    let resp = send
        .send_request(req.map(Full::new))
        .await
        .map_err(|e| failed(&e))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, body_bytes_max)
        .collect()
        .await
        .map_err(|e| failed(&e))?
        .to_bytes();
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// Handles one request (its body read whole, bounded) and returns the response.
pub type Handler =
    Arc<dyn Fn(http::Request<Bytes>) -> BoxFuture<'static, http::Response<Bytes>> + Send + Sync>;

/// A running server; dropping it stops accepting.
#[derive(Debug)]
pub struct Serving {
    pub addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Serving {
    /// Keeps serving for the life of the runtime; returns the bound address.
    pub fn detach(mut self) -> SocketAddr {
        self.task = None;
        self.addr
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// A response with a status, a content type and a body.
pub fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> http::Response<Bytes> {
    let mut r = http::Response::new(body.into());
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// Serves HTTP/1.1 on `addr` with `handler` until the returned value is dropped, within the
/// `SERVER_*` bounds: a slow head or body is cut (408), a larger body refused (413).
pub async fn serve(addr: SocketAddr, handler: Handler) -> std::io::Result<Serving> {
    serve_on(TcpListener::bind(addr).await?, handler)
}

/// How often the server loop's bounds were hit: bodies refused as too large, requests cut
/// for a slow head or body, connections that waited for one of the
/// [`SERVER_CONNECTIONS_MAX`] slots.
#[derive(Clone, Debug, Default)]
pub struct ServerCounters {
    pub too_large: Counter,
    pub timeouts: Counter,
    pub connections_waited: Counter,
}

impl ServerCounters {
    /// Registers the counters (`<prefix>_body_too_large_total`, `..._timeouts_total`,
    /// `..._connections_waited_total`).
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "body_too_large",
            "Requests refused because their body was over the cap (413)",
            self.too_large.clone(),
        );
        r.register(
            "timeouts",
            "Requests cut because their head or body did not come in time",
            self.timeouts.clone(),
        );
        r.register(
            "connections_waited",
            "Connections that waited because the most allowed were open",
            self.connections_waited.clone(),
        );
    }
}

/// [`serve`] on a listener already bound (for a handler that needs the bound address).
pub fn serve_on(listener: TcpListener, handler: Handler) -> std::io::Result<Serving> {
    serve_counted(listener, handler, ServerCounters::default())
}

/// [`serve_on`], counting the bounds hit in `counters`.
pub fn serve_counted(
    listener: TcpListener,
    handler: Handler,
    counters: ServerCounters,
) -> std::io::Result<Serving> {
    let addr = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(SERVER_CONNECTIONS_MAX));
    let task = tokio::spawn(async move {
        loop {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    counters.connections_waited.inc();
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    slot
                }
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, %addr, "http server: accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            let handler = handler.clone();
            let counters = counters.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let in_service = counters.clone();
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let counters = in_service.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            // A declared length over the cap is refused before any is read.
                            let declared = parts
                                .headers
                                .get(http::header::CONTENT_LENGTH)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<u64>().ok());
                            if declared.is_some_and(|n| n > SERVER_BODY_BYTES_MAX as u64) {
                                counters.too_large.inc();
                                let r = respond(
                                    413,
                                    "text/plain",
                                    format!("body over {SERVER_BODY_BYTES_MAX} bytes\n"),
                                );
                                return Ok(r.map(Full::new));
                            }
                            let body = tokio::time::timeout(
                                SERVER_BODY_TIMEOUT,
                                Limited::new(body, SERVER_BODY_BYTES_MAX).collect(),
                            )
                            .await;
                            let resp = match body {
                                Ok(Ok(b)) => {
                                    handler(http::Request::from_parts(parts, b.to_bytes())).await
                                }
                                Ok(Err(e)) => {
                                    counters.too_large.inc();
                                    respond(413, "text/plain", format!("{e}\n"))
                                }
                                Err(_) => {
                                    counters.timeouts.inc();
                                    respond(
                                        408,
                                        "text/plain",
                                        format!(
                                            "body not received within {SERVER_BODY_TIMEOUT:?}\n"
                                        ),
                                    )
                                }
                            };
                            Ok::<_, std::convert::Infallible>(resp.map(Full::new))
                        }
                    });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(SERVER_HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                if served.is_err_and(|e| e.is_timeout()) {
                    counters.timeouts.inc();
                }
            });
        }
    });
    Ok(Serving {
        addr,
        task: Some(task),
    })
}

/// (year, month 1-12, day 1-31) of a day number counted from 1970-01-01 (Howard Hinnant's
/// civil-from-days algorithm; no date library).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// A time as RFC 3339 UTC with milliseconds (`2026-12-06T23:21:57.123Z`), without a date
/// library; times before 1970 read as 1970.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil(i64::try_from(days).unwrap_or(0));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}
