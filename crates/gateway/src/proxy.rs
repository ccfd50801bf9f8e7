//! The HTTP proxy: listeners, per-request routing, filters, upstream selection.
//!
//! One accept loop per listener port. Each connection is served by hyper (HTTP/1.1, and
//! HTTP/2 with prior knowledge on the same plain port). Each request reads the current
//! routers (an `ArcSwap`, so a reload never blocks a request and requests in flight finish
//! on the router they started with), finds its rule and either answers itself (redirect,
//! 404, 500, 503, 504) or forwards upstream over a pool of keep-alive connections.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::Instrument as _;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use crate::backend::{Next, Outcome, Tries};
use crate::decide;
use crate::limits::{
    ACCESS_LOG_QUEUED_MAX, CLIENT_CONNECTIONS_MAX, CLIENT_IDLE_TIMEOUT, DRAIN_IDLE_GRACE,
    EXT_AUTH_TIMEOUT, HEADER_READ_TIMEOUT, HTTP2_STREAM_ERRORS_MAX, KEEPALIVE_POOLS_MAX,
    POOL_IDLE_PER_HOST_MAX, REQUEST_HEADER_BYTES_MAX, UPSTREAM_CONNECT_TIMEOUT,
    UPSTREAM_POOL_IDLE_TIMEOUT,
};
use crate::metrics::Metrics;
use crate::plan::{Action, Backend, HeaderEdits, Keepalive, Listen, Plan, Retry};

pub use crate::body::{Body, BoxError};
use crate::body::{boxed_incoming as box_incoming, full};

/// How to bind the Gateway's listeners.
#[derive(Clone, Debug, Default)]
pub struct Bind {
    /// The address to bind; `None` means the Gateway's own address, else 0.0.0.0.
    pub ip: Option<IpAddr>,
    /// Listener port -> port to bind (0 for any free port), for running without root or
    /// several gateways on one host.
    pub port_map: BTreeMap<u16, u16>,
    /// Where access log lines go (one JSON object per request), if anywhere.
    pub access_log: Option<AccessLog>,
    /// Who is told about every HTTP request (the binary makes flows of them), if anyone.
    pub observer: Option<crate::record::Observer>,
    /// Client connections open at once when not [`CLIENT_CONNECTIONS_MAX`].
    pub connections_max: Option<usize>,
    /// How long a client connection may be idle when not [`CLIENT_IDLE_TIMEOUT`].
    pub idle_timeout: Option<Duration>,
    /// How long an idle connection gets, once a drain begins, for one more request, when not
    /// [`DRAIN_IDLE_GRACE`].
    pub drain_idle_grace: Option<Duration>,
}

/// Access log lines queued for a writer thread, so that a slow stdout never slows requests;
/// when [`ACCESS_LOG_QUEUED_MAX`] lines wait, new ones are dropped and counted.
#[derive(Clone, Debug)]
pub struct AccessLog(std::sync::mpsc::SyncSender<String>);

impl AccessLog {
    /// Starts a thread writing lines to `out`.
    pub fn to_writer(mut out: impl std::io::Write + Send + 'static) -> AccessLog {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(ACCESS_LOG_QUEUED_MAX);
        std::thread::spawn(move || {
            while let Ok(line) = rx.recv() {
                let _ = writeln!(out, "{line}");
                // Write whatever else is waiting, then flush once.
                while let Ok(line) = rx.try_recv() {
                    let _ = writeln!(out, "{line}");
                }
                let _ = out.flush();
            }
        });
        AccessLog(tx)
    }
}

pub(crate) struct State {
    pub(crate) ports: ArcSwap<BTreeMap<u16, Listen>>,
    /// What each UDP listener serves (the UDP loops read it for every new session).
    pub(crate) udp_ports: Arc<ArcSwap<BTreeMap<u16, Arc<crate::plan::StreamPort>>>>,
    /// Keep-alive probing of accepted connections (ClientTrafficPolicy).
    pub(crate) client_keepalive: arc_swap::ArcSwapOption<Keepalive>,
    /// A malformed HTTP/2 request closes its connection (see
    /// [`Plan::http2_terminate_on_invalid`]).
    pub(crate) http2_terminate_on_invalid: std::sync::atomic::AtomicBool,
    client: Client<HttpConnector, Body>,
    /// HTTP/2 with prior knowledge, for GRPCRoute backends.
    client_h2: Client<HttpConnector, Body>,
    /// Pools for backends with keep-alive probing, by (HTTP/2, settings); at most
    /// [`KEEPALIVE_POOLS_MAX`].
    keepalive_clients: std::sync::Mutex<BTreeMap<(bool, Keepalive), Client<HttpConnector, Body>>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) access_log: Option<AccessLog>,
    pub(crate) observer: Option<crate::record::Observer>,
    pub(crate) next: AtomicU64,
    /// Idle upstream connections of the own HTTP/1 path.
    pub(crate) h1_pool: Arc<crate::backend::Pool>,
    /// Set once when draining: connections close when idle and after the request in flight.
    pub(crate) draining: watch::Sender<bool>,
    /// Client connections open (HTTP, TLS, TCPRoute, QUIC), for a drain to wait on and for
    /// the connection limit.
    pub(crate) open: watch::Sender<usize>,
    pub(crate) connections_max: usize,
    /// No request in flight for this long closes a client connection (both paths).
    pub(crate) client_idle_timeout: Duration,
    pub(crate) drain_idle_grace: Duration,
}

/// Counts a client connection as open for as long as it lives.
pub(crate) struct OpenConnection(Arc<State>);

impl OpenConnection {
    pub(crate) fn new(state: &Arc<State>) -> OpenConnection {
        state.open.send_modify(|n| *n += 1);
        OpenConnection(state.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// An upstream connection pool: HTTP/1.1 or HTTP/2 with prior knowledge, with keep-alive
/// probing on its connections or without.
fn upstream_client(h2: bool, keepalive: Option<Keepalive>) -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(UPSTREAM_CONNECT_TIMEOUT));
    if let Some(k) = keepalive {
        connector.set_keepalive(Some(k.idle));
        connector.set_keepalive_interval(Some(k.interval));
        connector.set_keepalive_retries(Some(k.probes));
    }
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(UPSTREAM_POOL_IDLE_TIMEOUT);
    if h2 {
        builder.http2_only(true);
    } else {
        builder.pool_max_idle_per_host(POOL_IDLE_PER_HOST_MAX);
    }
    builder.build(connector)
}

pub use crate::upstream::set_keepalive;

impl State {
    /// The state of one running gateway: the plan's ports, upstream pools, counters, the
    /// drain and connection bookkeeping, with `bind`'s settings.
    pub(crate) fn new(plan: &Plan, bind: &Bind, metrics: Arc<Metrics>) -> Arc<State> {
        Arc::new(State {
            ports: ArcSwap::from_pointee(plan.ports.clone()),
            udp_ports: Arc::new(ArcSwap::from_pointee(plan.udp_ports.clone())),
            client_keepalive: arc_swap::ArcSwapOption::from_pointee(plan.client_keepalive),
            http2_terminate_on_invalid: plan.http2_terminate_on_invalid.into(),
            client: upstream_client(false, None),
            client_h2: upstream_client(true, None),
            keepalive_clients: std::sync::Mutex::new(BTreeMap::new()),
            metrics,
            access_log: bind.access_log.clone(),
            observer: bind.observer.clone(),
            next: AtomicU64::new(0),
            h1_pool: Arc::default(),
            draining: watch::channel(false).0,
            open: watch::channel(0).0,
            connections_max: bind.connections_max.unwrap_or(CLIENT_CONNECTIONS_MAX),
            client_idle_timeout: bind.idle_timeout.unwrap_or(CLIENT_IDLE_TIMEOUT),
            drain_idle_grace: bind.drain_idle_grace.unwrap_or(DRAIN_IDLE_GRACE),
        })
    }

    /// The pool for a backend: the shared ones, or one with the backend's keep-alive.
    fn client_for(&self, h2: bool, backend: &Backend) -> Client<HttpConnector, Body> {
        let shared = || {
            if h2 {
                self.client_h2.clone()
            } else {
                self.client.clone()
            }
        };
        let Some(k) = backend.keepalive else {
            return shared();
        };
        let Ok(mut pools) = self.keepalive_clients.lock() else {
            return shared();
        };
        if let Some(c) = pools.get(&(h2, k)) {
            return c.clone();
        }
        if pools.len() >= KEEPALIVE_POOLS_MAX {
            self.metrics.keepalive_pools_exhausted.inc();
            return shared();
        }
        pools
            .entry((h2, k))
            .or_insert_with(|| upstream_client(h2, Some(k)))
            .clone()
    }
}

/// Requests on one connection: for a drain to wait for the next, and for the idle timeout
/// (no request in flight for that long).
struct RequestSeen {
    count: AtomicU64,
    /// Someone (a drain) waits in [`RequestSeen::next`]: only then is `notify` woken, so a
    /// request does not take its lock.
    watched: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
    active: AtomicU64,
    /// When the last request arrived or ended, in ms since `since`.
    last_ms: AtomicU64,
    since: Instant,
}

impl RequestSeen {
    fn new() -> RequestSeen {
        RequestSeen {
            count: AtomicU64::new(0),
            watched: std::sync::atomic::AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
            active: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            since: Instant::now(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn arrived(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.touch();
        self.count.fetch_add(1, Ordering::SeqCst);
        if self.watched.load(Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    fn ended(&self) {
        self.touch();
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Completes when a request arrives after this call.
    async fn next(&self) {
        let before = self.count.load(Ordering::SeqCst);
        self.watched.store(true, Ordering::SeqCst);
        loop {
            let wake = self.notify.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if self.count.load(Ordering::SeqCst) != before {
                return;
            }
            wake.await;
        }
    }

    /// Completes once no request has been in flight for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.since.elapsed().saturating_sub(last);
            if self.active.load(Ordering::Relaxed) == 0 && quiet >= limit {
                return;
            }
            tokio::time::sleep(limit.saturating_sub(quiet).max(Duration::from_millis(1))).await;
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 on one connection (plain or TLS) with hyper: the general path.
pub(crate) async fn serve_http<S>(
    state: Arc<State>,
    port: u16,
    peer: SocketAddr,
    scheme: &'static str,
    stream: S,
    mut drain: watch::Receiver<bool>,
    first: Option<Box<decide::Decided>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Told of every request: when a drain begins, the connection gets the drain's idle grace
    // for one more to arrive before it is shut down gracefully.
    let requests = Arc::new(RequestSeen::new());
    let seen = requests.clone();
    let idle_timeout = state.client_idle_timeout;
    let grace = state.drain_idle_grace;
    // Under `TerminateConnection`, h2 closes the connection (GOAWAY) at the first stream it
    // has to reset for the client's protocol error.
    let stream_errors_max = if state.http2_terminate_on_invalid.load(Ordering::Relaxed) {
        0
    } else {
        HTTP2_STREAM_ERRORS_MAX
    };
    // The request's future is boxed: the connection keeps room for its service's future
    // inline, and this one is large (routing, retries, compression), so an idle keep-alive
    // connection would carry it for nothing.
    // The own HTTP/1 path's decision of the connection's first request, when it handed the
    // connection over after routing that request: that request is not routed again.
    let first = std::sync::Mutex::new(first);
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        seen.arrived();
        let seen = seen.clone();
        let decided = first.lock().ok().and_then(|mut f| f.take());
        Box::pin(async move {
            let resp = handle(&state, port, peer, scheme, req.map(box_incoming), decided).await;
            seen.ended();
            Ok::<_, Infallible>(resp)
        })
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // A client that closes its sending side after its request still gets the answer
        // (as on the own path).
        .half_close(true)
        .max_buf_size(REQUEST_HEADER_BYTES_MAX.max(8192))
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .max_header_list_size(u32::try_from(REQUEST_HEADER_BYTES_MAX).unwrap_or(u32::MAX))
        .max_local_error_reset_streams(stream_errors_max);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    // A drain lets the requests in flight finish and closes the connection after them, once
    // one more request has come or the grace has passed.
    let draining = async {
        if !*drain.borrow_and_update() {
            let _ = drain.changed().await;
        }
    };
    // Stopped by a drain (true) or by the idle timeout (false).
    let ended = tokio::select! {
        r = conn.as_mut() => Ok(r),
        _ = draining => Err(true),
        _ = requests.idle(idle_timeout) => Err(false),
    };
    let ended = match ended {
        Ok(r) => r,
        Err(false) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        Err(true) => {
            let next = requests.next();
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = next => None,
                _ = tokio::time::sleep(grace) => None,
            };
            match ended {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// A stream that yields some already-read bytes before reading from the inner stream.
pub(crate) struct Prefixed<S> {
    pub(crate) prefix: Bytes,
    pub(crate) inner: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A response trellis makes itself, with a plain-text body saying why.
fn local(status: StatusCode, why: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{why}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
}

/// The request's host without port, lowercased.
/// What the decision reads of a hyper request whose host, path and query were taken apart.
fn head_of<'a, B>(
    req: &'a Request<B>,
    host: &'a str,
    path: &'a str,
    query: Option<&'a str>,
) -> decide::Head<'a, HeaderMap> {
    decide::Head {
        method: req.method().as_str(),
        host,
        path,
        query,
        headers: req.headers(),
    }
}

/// A request's host (without its port, lower case), path and query, owned: the request goes
/// on to be taken apart.
fn host_path_query<B>(req: &Request<B>) -> (String, String, Option<String>) {
    (
        request_host(req),
        req.uri().path().to_string(),
        req.uri().query().map(str::to_string),
    )
}

fn request_host<B>(req: &Request<B>) -> String {
    let raw = match req.uri().authority() {
        Some(a) => a.host(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default(),
    };
    host_without_port(raw).into_owned()
}

/// A Host value without its port, lower case (borrowed when it already is).
pub(crate) fn host_without_port(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |i| &raw[..=i])
    } else {
        raw.rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(raw, |(h, _)| h)
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

pub(crate) async fn handle(
    state: &State,
    port: u16,
    peer: SocketAddr,
    scheme: &'static str,
    req: Request<Body>,
    decided: Option<Box<decide::Decided>>,
) -> Response<Body> {
    // One span per request (at debug level: free when not logged).
    let span = tracing::debug_span!(
        "request",
        %peer,
        port,
        method = %req.method(),
        uri = %req.uri(),
        path = "hyper",
    );
    // The router the own path routed this request with, when it did (and its rule).
    let (router, routed) = match decided.map(|d| *d) {
        Some(decide::Decided { router, routed }) => (Some(router), Some(routed)),
        None => (
            state
                .ports
                .load()
                .get(&port)
                .and_then(|l| l.router().cloned()),
            None,
        ),
    };
    // HTTP/1 and HTTP/2 answers on a port that also serves HTTP/3 say so.
    let alt_svc = router
        .as_ref()
        .and_then(|r| r.alt_svc.clone())
        .filter(|_| req.version() != http::Version::HTTP_3);
    let Some(observer) = &state.observer else {
        let mut resp = handle_inner(state, router, routed, peer, scheme, req)
            .instrument(span)
            .await;
        if let Some(v) = alt_svc {
            resp.headers_mut().insert(header::ALT_SVC, v);
        }
        return resp;
    };
    // Observed: keep what the record needs before the request is consumed.
    let started = Instant::now();
    let started_at = crate::record::wall_clock(started);
    let method = req.method().clone();
    let version = crate::record::version_text(req.version());
    let (text, host_len) = crate::record::target(
        &request_host(&req),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
    );
    let mut resp = handle_inner(state, router, routed, peer, scheme, req)
        .instrument(span)
        .await;
    if let Some(v) = alt_svc {
        resp.headers_mut().insert(header::ALT_SVC, v);
    }
    let seen = resp
        .extensions_mut()
        .remove::<crate::record::Seen>()
        .unwrap_or_default();
    observer.0.request(&crate::record::RequestRecord {
        started: started_at,
        latency: started.elapsed(),
        method: method.as_str(),
        version,
        scheme,
        host: text.get(..host_len).unwrap_or_default(),
        path_and_query: text.get(host_len..).unwrap_or_default(),
        status: resp.status().as_u16(),
        client: seen.client.unwrap_or(peer),
        peer,
        listener_port: port,
        route: seen.action.as_deref().map(|a| a.route.as_str()),
        backend: seen.backend.as_deref().map(|b| b.name.as_str()),
        upstream: seen.upstream,
    });
    resp
}

/// Notes the route and client of an observed request on its response.
fn seen(state: &State, resp: &mut Response<Body>, action: &Arc<Action>, client: SocketAddr) {
    if state.observer.is_some() {
        let s = resp
            .extensions_mut()
            .get_or_insert_default::<crate::record::Seen>();
        s.action = Some(action.clone());
        s.client = Some(client);
    }
}

/// `routed`: the rule the own HTTP/1 path found for this request (`Some(None)`: none), when it
/// routed it before handing it over.
async fn handle_inner(
    state: &State,
    router: Option<Arc<crate::plan::Router>>,
    routed: Option<Option<decide::Routed>>,
    peer: SocketAddr,
    scheme: &'static str,
    req: Request<Body>,
) -> Response<Body> {
    let started = Instant::now();
    let Some(router) = router else {
        return local(StatusCode::NOT_FOUND, "no listener on this port");
    };
    let (host, path, query) = host_path_query(&req);
    let head = head_of(&req, &host, &path, query.as_deref());
    let routed = routed.unwrap_or_else(|| decide::route(&router, peer, &head));
    let Some(decide::Routed { action, client }) = routed else {
        state.metrics.request("", 404, started.elapsed());
        return local(StatusCode::NOT_FOUND, &format!("no route for {host}{path}"));
    };
    let log_fields = state
        .access_log
        .as_ref()
        .map(|_| LogFields::of(&req, &host));
    let counters = action
        .counters
        .get_or_init(|| state.metrics.route_counters(&action.route));
    // CORS first: the origin is noted for the answer, a preflight answered here.
    let cors = action.security.as_ref().and_then(|s| s.cors.as_ref());
    let origin = cors.and_then(|c| c.allowed(req.headers()).cloned());
    if let (Some(c), None) = (
        cors,
        action.security.as_ref().and_then(|s| s.refused.as_ref()),
    ) && let Some(headers) = c.preflight(req.method(), req.headers())
    {
        let mut reply = Response::new(full(Bytes::new()));
        *reply.headers_mut() = headers;
        state.metrics.observe(counters, 200, started.elapsed());
        seen(state, &mut reply, &action, client);
        return reply;
    }
    // The SecurityPolicy runs first (Envoy Gateway's filter order), then Lua.
    let req = match &action.security {
        Some(sec) => {
            match authenticate(
                state,
                sec,
                req,
                &host,
                &path,
                query.as_deref(),
                scheme,
                client,
            )
            .await
            {
                Ok(r) => r,
                Err(mut reply) => {
                    if let (Some(c), Some(o)) = (cors, &origin) {
                        c.decorate(o, reply.headers_mut());
                    }
                    state
                        .metrics
                        .observe(counters, reply.status().as_u16(), started.elapsed());
                    seen(state, &mut reply, &action, client);
                    return reply;
                }
            }
        }
        None => req,
    };
    let (req, path, query) = if action.lua.iter().any(|f| f.has_request()) {
        match lua_request(state, &action, req, &path, query.as_deref(), scheme, client) {
            Ok(x) => x,
            Err(mut reply) => {
                state
                    .metrics
                    .observe(counters, reply.status().as_u16(), started.elapsed());
                seen(state, &mut reply, &action, client);
                return reply;
            }
        }
    } else {
        (req, path, query)
    };
    let mut resp = respond(
        state,
        &router,
        &action,
        scheme,
        peer,
        client,
        req,
        &host,
        &path,
        query.as_deref(),
    )
    .await;
    if action.lua.iter().any(|f| f.has_response())
        && !lua_response(state, &action, &mut resp, client)
    {
        // A response its script did not pass is not sent as it came (fail closed).
        resp = local(
            StatusCode::INTERNAL_SERVER_ERROR,
            "a Lua script of this route failed on the response",
        );
    }
    if let (Some(c), Some(o)) = (cors, &origin) {
        c.decorate(o, resp.headers_mut());
    }
    edit_headers(resp.headers_mut(), &action.response_headers, client);
    if let Some(log) = &state.access_log {
        access_log_line(
            state,
            log,
            &action.route,
            &log_fields,
            resp.status().as_u16(),
            started,
            client,
        );
    }
    state
        .metrics
        .observe(counters, resp.status().as_u16(), started.elapsed());
    seen(state, &mut resp, &action, client);
    resp
}

type Split = (Request<Body>, String, Option<String>);

/// What the access log needs of a request, taken before the request is consumed.
pub(crate) struct LogFields {
    start_time: String,
    method: String,
    path: String,
    protocol: String,
    authority: String,
    user_agent: Option<String>,
    forwarded_for: Option<String>,
    request_id: Option<String>,
}

impl LogFields {
    fn of(req: &Request<Body>, host: &str) -> LogFields {
        LogFields::new(
            req.method().as_str(),
            req.uri().path_and_query().map_or("", |p| p.as_str()),
            &format!("{:?}", req.version()),
            host,
            |n| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            },
        )
    }

    /// From a request's parts; `header` gives the first value of a header.
    pub(crate) fn new(
        method: &str,
        path_and_query: &str,
        protocol: &str,
        host: &str,
        header: impl Fn(&str) -> Option<String>,
    ) -> LogFields {
        LogFields {
            start_time: httpkit::rfc3339(SystemTime::now()),
            method: method.to_string(),
            path: path_and_query.to_string(),
            protocol: protocol.to_string(),
            authority: host.to_string(),
            user_agent: header("user-agent"),
            forwarded_for: header("x-forwarded-for"),
            request_id: header("x-request-id"),
        }
    }
}

/// One JSON access log line with Envoy's default fields.
pub(crate) fn access_log_line(
    state: &State,
    log: &AccessLog,
    route: &str,
    f: &Option<LogFields>,
    status: u16,
    started: Instant,
    client: SocketAddr,
) {
    let Some(f) = f else { return };
    let line = serde_json::json!({
        "start_time": f.start_time,
        "method": f.method,
        "x-envoy-origin-path": f.path,
        "protocol": f.protocol,
        "response_code": status,
        "duration": started.elapsed().as_millis() as u64,
        "x-forwarded-for": f.forwarded_for,
        "user-agent": f.user_agent,
        "x-request-id": f.request_id,
        ":authority": f.authority,
        "downstream_remote_address": client.to_string(),
        "route_name": route,
    });
    if log.0.try_send(line.to_string()).is_err() {
        state.metrics.access_log_dropped.inc();
    }
}

/// Applies a route's SecurityPolicy to a request, in Envoy Gateway's filter order (external
/// authorization, then basic authentication). Returns the request to go on with, or the
/// answer instead: 500 when the policy cannot be enforced, 401 for missing or wrong
/// credentials, the authorization service's own answer when it denies.
#[allow(clippy::result_large_err, clippy::too_many_arguments)]
async fn authenticate(
    state: &State,
    sec: &crate::auth::Security,
    mut req: Request<Body>,
    host: &str,
    path: &str,
    query: Option<&str>,
    scheme: &'static str,
    client: SocketAddr,
) -> Result<Request<Body>, Response<Body>> {
    if let Some(why) = &sec.refused {
        state.metrics.security_policy_refused.inc();
        tracing::debug!(policy = %sec.policy, reason = %why, "refused: security policy cannot be enforced");
        return Err(local(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the security policy of this route cannot be enforced",
        ));
    }
    if let Some(ext) = &sec.ext {
        req = check_ext_auth(state, ext, req, path, query, scheme, client).await?;
    }
    if let Some(basic) = &sec.basic {
        match basic.check(req.headers(), client.ip()).await {
            Ok(user) => {
                if let Some(h) = &basic.forward_username_header
                    && let Ok(v) = HeaderValue::from_str(&user)
                {
                    req.headers_mut().insert(h.clone(), v);
                }
            }
            Err(crate::auth::BasicDenied::Busy) => {
                state.metrics.basic_auth_busy.inc();
                return Err(local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    crate::auth::BasicDenied::Busy.message(),
                ));
            }
            Err(crate::auth::BasicDenied::TooMany) => {
                state.metrics.basic_auth_throttled.inc();
                let mut r = local(
                    StatusCode::TOO_MANY_REQUESTS,
                    crate::auth::BasicDenied::TooMany.message(),
                );
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(crate::limits::BASIC_AUTH_FAILURE_WINDOW.as_secs()),
                );
                return Err(r);
            }
            Err(denied) => {
                state.metrics.basic_auth_denied.inc();
                let mut r = local(StatusCode::UNAUTHORIZED, denied.message());
                // The realm names the host asked for, as Envoy's basic_auth does.
                if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"http://{host}\"")) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                return Err(r);
            }
        }
    }
    if let Some(keys) = &sec.api_keys {
        match keys.check(req.headers(), query) {
            Some(client) => {
                if keys.sanitize {
                    keys.sanitize(req.headers_mut());
                }
                if let Some(h) = &keys.forward_client_id_header
                    && let Ok(v) = HeaderValue::from_str(&client)
                {
                    req.headers_mut().insert(h.clone(), v);
                }
            }
            None => {
                state.metrics.api_key_denied.inc();
                return Err(local(StatusCode::UNAUTHORIZED, crate::auth::API_KEY_DENIED));
            }
        }
    }
    if let Some(oidc) = &sec.oidc {
        let authority = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(req.uri().authority().map(|a| a.as_str()))
            .unwrap_or(host)
            .to_string();
        match oidc
            .check(req.uri(), req.headers(), scheme, &authority)
            .await
        {
            crate::oidc::Outcome::Pass(bearer) => {
                oidc.strip_cookies(req.headers_mut());
                if let Some(v) = bearer.and_then(|b| HeaderValue::from_str(&b).ok()) {
                    req.headers_mut().insert(header::AUTHORIZATION, v);
                }
            }
            crate::oidc::Outcome::Reply(r) => {
                if r.status() == StatusCode::UNAUTHORIZED {
                    state.metrics.oidc_denied.inc();
                }
                return Err(r.map(full));
            }
        }
    }
    let mut verified = None;
    if let Some(jwt) = &sec.jwt {
        match jwt.check(req.headers(), query).await {
            Ok(v) => {
                for (h, v) in v.iter().flat_map(|v| v.headers.iter()) {
                    req.headers_mut().insert(h.clone(), v.clone());
                }
                verified = v;
            }
            Err(denied) => {
                state.metrics.jwt_denied.inc();
                let mut r = local(StatusCode::UNAUTHORIZED, denied.message());
                let realm = format!("{scheme}://{host}{path}");
                if let Ok(v) = HeaderValue::from_str(&denied.www_authenticate(&realm)) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                return Err(r);
            }
        }
    }
    if let Some(authz) = &sec.authorization
        && !authz.allows(req.method(), client.ip(), req.headers(), verified.as_ref())
    {
        state.metrics.authorization_denied.inc();
        return Err(local(StatusCode::FORBIDDEN, crate::auth::FORBIDDEN));
    }
    Ok(req)
}

/// Whether an upstream request failed because the client's own body did not parse: hyper
/// reports a downstream body error (a bad chunk: invalid input) through the upstream request
/// as a user error whose cause is a body error.
fn client_body_malformed(e: &(dyn std::error::Error + 'static)) -> bool {
    let (mut user, mut invalid) = (false, false);
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            user |= h.is_user() || h.is_parse();
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            invalid |= matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            );
        }
        cause = c.source();
    }
    user && invalid
}

/// Counts and logs an authorization service that could not be asked.
fn ext_auth_unavailable(state: &State, why: &str) {
    state.metrics.ext_auth_errors.inc();
    tracing::warn!(error = %why, "external authorization unavailable");
}

/// Asks a gRPC authorization service (`envoy.service.auth.v3.Authorization/Check`) about a
/// request, as Envoy's ext_authz filter does: the request's method, path with query, host,
/// scheme, protocol and headers (lower-case, repeated ones joined with `,`), the client's and
/// the gateway's addresses. Status OK allows it, with the answer's header edits applied;
/// anything else answers with the denial's status (403 when it names none), headers and body.
/// When the service cannot be asked: 403, or the request goes on with `failOpen`.
#[allow(clippy::result_large_err, clippy::too_many_arguments)]
async fn check_grpc_auth(
    state: &State,
    auth: &crate::auth::ExtAuth,
    channels: &crate::auth::GrpcChannels,
    ep: Option<&crate::plan::Upstream>,
    mut req: Request<Body>,
    path: &str,
    query: Option<&str>,
    scheme: &'static str,
    client: SocketAddr,
) -> Result<Request<Body>, Response<Body>> {
    use crate::auth::ext_authz_proto as pb;
    let unavailable = |why: String| {
        ext_auth_unavailable(state, &why);
        if auth.fail_open {
            Ok(())
        } else {
            Err(local(
                StatusCode::FORBIDDEN,
                "external authorization is unavailable",
            ))
        }
    };
    let channel = match (&auth.backend.invalid, ep) {
        (Some(why), _) => return unavailable(why.clone()).map(|_| req),
        (None, None) => {
            return unavailable(format!("no endpoint for {}", auth.backend.name)).map(|_| req);
        }
        (None, Some(ep)) => match channels.get(ep.addr) {
            Some(c) => c,
            None => return unavailable(format!("{}: not a gRPC address", ep.addr)).map(|_| req),
        },
    };
    let mut headers = std::collections::HashMap::<String, String>::new();
    for (name, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
        .to_string();
    let peer = |a: SocketAddr| pb::attribute_context::Peer {
        address: Some(pb::Address {
            socket_address: Some(pb::SocketAddress {
                address: a.ip().to_string(),
                port_value: u32::from(a.port()),
            }),
        }),
    };
    let check = pb::CheckRequest {
        attributes: Some(pb::AttributeContext {
            source: Some(peer(client)),
            destination: None,
            request: Some(pb::attribute_context::Request {
                http: Some(pb::attribute_context::HttpRequest {
                    id: String::new(),
                    method: req.method().as_str().to_string(),
                    headers,
                    path: match query {
                        Some(q) => format!("{path}?{q}"),
                        None => path.to_string(),
                    },
                    host,
                    scheme: scheme.to_string(),
                    size: -1,
                    protocol: format!("{:?}", req.version()),
                }),
            }),
            context_extensions: Default::default(),
        }),
    };
    let mut client_ = pb::authorization_client::AuthorizationClient::new(channel);
    let answer = match tokio::time::timeout(EXT_AUTH_TIMEOUT, client_.check(check)).await {
        Ok(Ok(a)) => a.into_inner(),
        Ok(Err(e)) => return unavailable(format!("{}: {e}", auth.backend.name)).map(|_| req),
        Err(_) => {
            return unavailable(format!(
                "{}: no answer within {EXT_AUTH_TIMEOUT:?}",
                auth.backend.name
            ))
            .map(|_| req);
        }
    };
    let header_of = |o: &pb::HeaderValueOption| {
        let h = o.header.as_ref()?;
        let name = http::HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?;
        let value = if h.raw_value.is_empty() {
            HeaderValue::from_str(&h.value).ok()?
        } else {
            HeaderValue::from_bytes(&h.raw_value).ok()?
        };
        Some((name, value, o.append.unwrap_or(false)))
    };
    let allowed = answer.status.as_ref().is_none_or(|s| s.code == 0);
    if allowed {
        if let Some(pb::check_response::HttpResponse::OkResponse(ok)) = &answer.http_response {
            for (name, value, append) in ok.headers.iter().filter_map(header_of) {
                if append {
                    req.headers_mut().append(name, value);
                } else {
                    req.headers_mut().insert(name, value);
                }
            }
            for name in &ok.headers_to_remove {
                // The Host header may not be removed (the request would be malformed).
                if let Ok(n) = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    && n != header::HOST
                {
                    req.headers_mut().remove(n);
                }
            }
        }
        return Ok(req);
    }
    state.metrics.ext_auth_denied.inc();
    let (status, headers, body) = match &answer.http_response {
        Some(pb::check_response::HttpResponse::DeniedResponse(d)) => (
            d.status
                .as_ref()
                .and_then(|s| u16::try_from(s.code).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::FORBIDDEN),
            d.headers.iter().filter_map(header_of).collect::<Vec<_>>(),
            d.body.clone(),
        ),
        _ => (StatusCode::FORBIDDEN, Vec::new(), String::new()),
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    for (name, value, _) in headers {
        resp.headers_mut().append(name, value);
    }
    Err(resp)
}

/// Asks the SecurityPolicy's authorization service about a request, as Envoy's HTTP
/// ext_authz does: same method, the policy's path prefixed to the request's path, the
/// request's Host and Authorization plus `headersToExtAuth`, no body. A 2xx allows the
/// request and copies `headersToBackend` from the answer onto it; any other answer goes
/// back to the client as it is (an Authentik login redirect, say). When the service cannot
/// be asked: 403, or the request goes on with `failOpen`.
#[allow(clippy::result_large_err)]
async fn check_ext_auth(
    state: &State,
    auth: &crate::auth::ExtAuth,
    mut req: Request<Body>,
    path: &str,
    query: Option<&str>,
    scheme: &'static str,
    client: SocketAddr,
) -> Result<Request<Body>, Response<Body>> {
    let unavailable = |why: String| {
        ext_auth_unavailable(state, &why);
        why
    };
    let ep = auth
        .backend
        .endpoints
        .iter()
        .find(|u| !u.is_ejected(crate::plan::now_ms()))
        .or(auth.backend.endpoints.first());
    if let Some(channels) = &auth.grpc {
        return check_grpc_auth(state, auth, channels, ep, req, path, query, scheme, client).await;
    }
    let outcome: Result<Response<Incoming>, String> = match (&auth.backend.invalid, ep) {
        (Some(why), _) => Err(unavailable(why.clone())),
        (None, None) => Err(unavailable(format!(
            "no endpoint for {}",
            auth.backend.name
        ))),
        (None, Some(ep)) => {
            let pq = match query {
                Some(q) => format!("{}{path}?{q}", auth.path),
                None => format!("{}{path}", auth.path),
            };
            let mut check = Request::builder()
                .method(req.method().clone())
                .uri(format!("http://{}{pq}", ep.addr));
            let h = req.headers();
            for name in [header::HOST, header::AUTHORIZATION]
                .iter()
                .chain(auth.headers_to_auth.iter())
            {
                for v in h.get_all(name) {
                    check = check.header(name, v);
                }
            }
            // Envoy sets X-Forwarded-Proto on every request before its filters run.
            if !h.contains_key("x-forwarded-proto") {
                check = check.header("x-forwarded-proto", scheme);
            }
            check = check.header("x-forwarded-for", client.ip().to_string());
            match check.body(full(Bytes::new())) {
                Err(e) => Err(unavailable(e.to_string())),
                Ok(check) => {
                    match tokio::time::timeout(EXT_AUTH_TIMEOUT, state.client.request(check)).await
                    {
                        Ok(Ok(resp)) => Ok(resp),
                        Ok(Err(e)) => Err(unavailable(format!("{}: {e}", ep.addr))),
                        Err(_) => Err(unavailable(format!(
                            "{}: no answer within {EXT_AUTH_TIMEOUT:?}",
                            ep.addr
                        ))),
                    }
                }
            }
        }
    };
    match outcome {
        Ok(resp) if resp.status().is_success() => {
            for name in &auth.headers_to_backend {
                let values: Vec<HeaderValue> =
                    resp.headers().get_all(name).iter().cloned().collect();
                if !values.is_empty() {
                    req.headers_mut().remove(name);
                    for v in values {
                        req.headers_mut().append(name.clone(), v);
                    }
                }
            }
            Ok(req)
        }
        Ok(mut resp) => {
            state.metrics.ext_auth_denied.inc();
            strip_hop_by_hop(resp.headers_mut());
            Err(resp.map(box_incoming))
        }
        Err(_) if auth.fail_open => Ok(req),
        Err(_) => Err(local(
            StatusCode::FORBIDDEN,
            "external authorization is unavailable",
        )),
    }
}

/// Runs the route's Lua `envoy_on_request` functions. Returns the request to go on with
/// (headers, path and authority as the scripts left them), or the reply to send instead: the
/// script's `respond`, or a 500 when a script fails (as Envoy does).
#[allow(clippy::result_large_err)]
fn lua_request(
    state: &State,
    action: &Action,
    req: Request<Body>,
    path: &str,
    query: Option<&str>,
    scheme: &str,
    peer: SocketAddr,
) -> Result<Split, Response<Body>> {
    let (mut parts, body) = req.into_parts();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut msg = crate::lua::Message {
        headers: std::mem::take(&mut parts.headers),
        pseudo: vec![
            (":method", parts.method.to_string()),
            (":path", path_and_query.clone()),
            (":authority", authority.clone()),
            (":scheme", scheme.to_string()),
        ],
        protocol: format!("{:?}", parts.version),
        sni: None,
        remote: peer.to_string(),
    };
    for f in action.lua.iter().filter(|f| f.has_request()) {
        match f.run(false, &mut msg) {
            Ok(out) => {
                if let Some(r) = out.respond {
                    let mut resp = Response::new(full(r.body));
                    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
                    for (k, v) in r.headers {
                        if let (Ok(k), Ok(v)) = (
                            HeaderName::from_bytes(k.as_bytes()),
                            HeaderValue::from_str(&v),
                        ) {
                            resp.headers_mut().append(k, v);
                        }
                    }
                    return Err(resp);
                }
            }
            Err(e) => {
                state.metrics.lua_errors.inc();
                tracing::warn!(script = %f.name, error = %e, "lua script failed");
                return Err(local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "lua script failed",
                ));
            }
        }
    }
    parts.headers = msg.headers;
    let get = |n: &str| {
        msg.pseudo
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let new_pq = get(":path");
    let new_authority = get(":authority");
    if new_authority != authority
        && let Ok(v) = HeaderValue::from_str(&new_authority)
    {
        parts.headers.insert(header::HOST, v);
    }
    if let Ok(m) = http::Method::from_bytes(get(":method").as_bytes()) {
        parts.method = m;
    }
    let (p, q) = match new_pq.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (new_pq, None),
    };
    Ok((Request::from_parts(parts, body), p, q))
}

/// Runs the route's Lua `envoy_on_response` functions on the response headers; false when
/// one failed (the response must not go out as it is).
fn lua_response(
    state: &State,
    action: &Action,
    resp: &mut Response<Body>,
    peer: SocketAddr,
) -> bool {
    let mut msg = crate::lua::Message {
        headers: std::mem::take(resp.headers_mut()),
        pseudo: vec![(":status", resp.status().as_u16().to_string())],
        protocol: String::new(),
        sni: None,
        remote: peer.to_string(),
    };
    for f in action.lua.iter().filter(|f| f.has_response()) {
        if let Err(e) = f.run(true, &mut msg) {
            state.metrics.lua_errors.inc();
            tracing::warn!(script = %f.name, error = %e, "lua script failed on the response");
            return false;
        }
    }
    if let Some(code) = msg
        .pseudo
        .first()
        .and_then(|(_, v)| v.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        *resp.status_mut() = code;
    }
    *resp.headers_mut() = msg.headers;
    true
}

#[allow(clippy::too_many_arguments)]
async fn respond(
    state: &State,
    router: &crate::plan::Router,
    action: &Action,
    scheme: &'static str,
    peer: SocketAddr,
    client: SocketAddr,
    req: Request<Body>,
    host: &str,
    path: &str,
    query: Option<&str>,
) -> Response<Body> {
    let head = head_of(&req, host, path, query);
    let seq = state.next.fetch_add(1, Ordering::Relaxed);
    let (backend, rewritten, encoding) = match decide::answer(router, action, &head, scheme, seq) {
        decide::Answer::Redirect { status, location } => {
            let mut resp = Response::new(full(Bytes::new()));
            *resp.status_mut() = status;
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            return resp;
        }
        decide::Answer::Local { status, why } => return local(status, &why),
        decide::Answer::Forward {
            backend,
            rewritten,
            encoding,
        } => (backend, rewritten, encoding),
    };
    let backend = &backend;

    let (mut parts, body) = req.into_parts();
    let path_and_query = upstream_head(
        action,
        &mut parts,
        scheme,
        peer,
        client,
        rewritten.as_deref().unwrap_or(path),
        query,
    );

    for m in &action.mirrors {
        mirror(state, m, &parts, &path_and_query);
    }

    let replayable = hyper::body::Body::is_end_stream(&body);
    let method = parts.method.clone();
    // A request without a body to an HTTP/1.1 backend is written from this task on the raw
    // pool; one with a body (streamed as it comes), or to an HTTP/2 backend, goes through
    // hyper's client.
    let client;
    let via = if !action.h2_upstream && replayable && method != http::Method::CONNECT {
        let Some(head) = crate::upstream::request_head(&method, &path_and_query, &parts.headers)
        else {
            return local(StatusCode::BAD_REQUEST, "request path cannot be forwarded");
        };
        Via::Raw {
            head,
            head_request: method == http::Method::HEAD,
        }
    } else {
        client = state.client_for(action.h2_upstream, backend);
        Via::Hyper(&client)
    };
    let attempt = forward(
        state,
        backend,
        parts,
        body,
        replayable,
        &path_and_query,
        action.timeout_backend,
        action.retry.as_ref(),
        &via,
    );
    let result = match action.timeout_request {
        Some(t) => match tokio::time::timeout(t, attempt).await {
            Ok(r) => r,
            Err(_) => return local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
        },
        None => attempt.await,
    };
    match result {
        Ok(mut resp) => {
            strip_hop_by_hop(resp.headers_mut());
            if state.observer.is_some() {
                resp.extensions_mut()
                    .get_or_insert_default::<crate::record::Seen>()
                    .backend = Some(backend.clone());
            }
            match encoding {
                Some(e) if crate::compress::compressible(&method, &resp) => {
                    state.metrics.compressed.inc();
                    crate::compress::compress(e, resp)
                }
                _ => resp,
            }
        }
        Err(e) => e,
    }
}

/// Turns a client's request head into the upstream one, as the rule's filters say: hop-by-hop
/// headers dropped, URLRewrite applied, Host kept, X-Forwarded-* appended, the header
/// modifier applied, the upstream HTTP version set. Returns the upstream path and query.
fn upstream_head(
    action: &Action,
    parts: &mut http::request::Parts,
    scheme: &'static str,
    peer: SocketAddr,
    client: SocketAddr,
    path: &str,
    query: Option<&str>,
) -> String {
    strip_hop_by_hop(&mut parts.headers);
    if let Some(h) = action.rewrite.as_ref().and_then(|rw| rw.hostname.as_ref())
        && let Ok(v) = HeaderValue::from_str(h)
    {
        parts.headers.insert(header::HOST, v);
    }
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    append_forwarded(&mut parts.headers, peer, scheme);
    edit_headers(&mut parts.headers, &action.request_headers, client);
    // Upstream connections are HTTP/1.1 whatever the client spoke; HTTP/2 for GRPCRoutes.
    parts.version = if action.h2_upstream {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    if action.h2_upstream {
        // gRPC needs `te: trailers` end to end; it is the one TE value HTTP/2 allows.
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

/// What routing and the request filters make of a request, before any I/O.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// No rule matches: 404.
    NoRoute,
    /// A RequestRedirect answers.
    Redirect {
        status: StatusCode,
        location: String,
    },
    /// The request goes upstream (unless the rule's backends are unusable) with this path and
    /// query; the request head was edited into the upstream one.
    Forward {
        route: String,
        rule: usize,
        path_and_query: String,
    },
}

/// Routes a request head through `router` and applies the matched rule's request filters
/// (header modifiers, redirect, URL rewrite), as a request from `peer` would be served; Lua,
/// external authorization and everything upstream are left out. Pure: the fuzz target and
/// the property tests drive the proxy's routing through it.
pub fn decide(router: &crate::plan::Router, peer: SocketAddr, req: &mut Request<()>) -> Decision {
    let (host, path, query) = host_path_query(req);
    let head = head_of(req, &host, &path, query.as_deref());
    let Some(decide::Routed { action, client }) = decide::route(router, peer, &head) else {
        return Decision::NoRoute;
    };
    let rewritten = match decide::answer(router, &action, &head, router.scheme, 0) {
        decide::Answer::Redirect { status, location } => {
            return Decision::Redirect { status, location };
        }
        decide::Answer::Forward { rewritten, .. } => rewritten,
        // The rule's backends cannot be used: it would be answered here, but with the
        // request edited as if it went upstream (what the property test checks).
        decide::Answer::Local { .. } => action
            .rewrite
            .as_ref()
            .and_then(|rw| rw.path.as_ref())
            .map(|p| decide::rewrite_path(p, action.matched_prefix.as_deref(), &path)),
    };
    let (mut parts, ()) = std::mem::take(req).into_parts();
    let path_and_query = upstream_head(
        &action,
        &mut parts,
        router.scheme,
        peer,
        client,
        rewritten.as_deref().unwrap_or(&path),
        query.as_deref(),
    );
    *req = Request::from_parts(parts, ());
    Decision::Forward {
        route: action.route.clone(),
        rule: action.rule,
        path_and_query,
    }
}

/// How a request goes upstream.
enum Via<'a> {
    /// hyper's pooled client: a request with a body, or HTTP/2 to the backend.
    Hyper(&'a Client<HttpConnector, Body>),
    /// A request without a body to an HTTP/1.1 backend: its head, written on the raw pool
    /// ([`crate::upstream::exchange`]).
    Raw {
        head: crate::upstream::RequestHead,
        head_request: bool,
    },
}

/// Why one try did not get a response.
enum TryFailed {
    /// No connection: nothing was sent. Why, with the endpoint.
    Connect(String),
    /// Sent, or maybe, and no usable response: why.
    Broken(String),
    /// Nothing to send again (a body that went with an earlier try): the tries end here.
    Spent,
    /// The path cannot go on a request line.
    BadPath,
}

/// Sends the request upstream: to one endpoint after another (skipping ejected ones) when
/// connections are refused, and again when the route's retry policy says so. A request is
/// sent again only when it can be: its body was empty, and for anything but a refused
/// connection its method is idempotent.
#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &State,
    backend: &Backend,
    parts: http::request::Parts,
    body: Body,
    replayable: bool,
    path_and_query: &str,
    per_try: Option<Duration>,
    retry: Option<&Retry>,
    via: &Via<'_>,
) -> Result<Response<Body>, Response<Body>> {
    let idempotent = crate::plan::idempotent(parts.method.as_str());
    let mut tries = Tries::new(backend, retry, idempotent && replayable);
    let per_try = retry.and_then(|r| r.per_try).or(per_try);
    // Keep a copy of the request head only when another try is possible at all.
    let may_retry = replayable && tries.may_try_again();
    let mut body = Some(body);
    let mut parts = Some(parts);
    let mut last_err = String::new();
    while let Some(ep) = tries.endpoint() {
        let attempt = async {
            match via {
                Via::Raw { head, head_request } => crate::upstream::exchange(
                    &state.h1_pool,
                    &state.metrics,
                    backend,
                    ep,
                    head,
                    idempotent,
                    *head_request,
                )
                .await
                .map_err(|f| match f {
                    crate::upstream::Failed::Connect(why) => TryFailed::Connect(why),
                    crate::upstream::Failed::Broken(why) => TryFailed::Broken(why),
                }),
                Via::Hyper(client) => {
                    let uri: Uri = format!("http://{}{path_and_query}", ep.addr)
                        .parse()
                        .map_err(|_| TryFailed::BadPath)?;
                    let b = body.take().ok_or(TryFailed::Spent)?;
                    let head = if may_retry {
                        parts.clone()
                    } else {
                        parts.take()
                    };
                    let head = head.ok_or(TryFailed::Spent)?;
                    let mut req = Request::from_parts(head, b);
                    *req.uri_mut() = uri;
                    match client.request(req).await {
                        Ok(resp) => Ok(resp.map(box_incoming)),
                        Err(e) if e.is_connect() => {
                            state.metrics.upstream_connect_failures.inc();
                            Err(TryFailed::Connect(format!("{}: {e}", ep.addr)))
                        }
                        Err(e) if client_body_malformed(&e) => {
                            Err(TryFailed::Broken(CLIENT_BODY_MALFORMED.to_string()))
                        }
                        Err(e) => Err(TryFailed::Broken(e.to_string())),
                    }
                }
            }
        };
        let sent = match per_try {
            Some(t) => match tokio::time::timeout(t, attempt).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(local(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream request timeout",
                    ));
                }
            },
            None => attempt.await,
        };
        let outcome = match &sent {
            Ok(resp) => Outcome::Status(resp.status().as_u16()),
            Err(TryFailed::Spent) => break,
            Err(TryFailed::BadPath) => {
                return Err(local(
                    StatusCode::BAD_REQUEST,
                    "request path cannot be forwarded",
                ));
            }
            Err(TryFailed::Connect(why)) => {
                last_err = why.clone();
                Outcome::ConnectFailed
            }
            Err(TryFailed::Broken(why)) if why == CLIENT_BODY_MALFORMED => {
                // The client's body did not parse (a bad chunk): the client's fault, not the
                // upstream's; never retried.
                return Err(local(StatusCode::BAD_REQUEST, CLIENT_BODY_MALFORMED));
            }
            Err(TryFailed::Broken(why)) => {
                last_err = format!("{}: {why}", ep.addr);
                Outcome::Reset
            }
        };
        match (tries.after(outcome), sent) {
            (Next::Stop, Ok(mut resp)) => {
                if state.observer.is_some() {
                    resp.extensions_mut()
                        .get_or_insert_default::<crate::record::Seen>()
                        .upstream = Some(ep.addr);
                }
                return Ok(resp);
            }
            (Next::Stop, Err(TryFailed::Broken(why))) => {
                return Err(local(
                    StatusCode::BAD_GATEWAY,
                    &format!("upstream {} failed: {why}", ep.addr),
                ));
            }
            (Next::Stop, Err(_)) => break,
            (Next::Again { backoff, counted }, sent) => {
                if let Ok(resp) = &sent {
                    last_err = format!("{}: status {}", ep.addr, resp.status().as_u16());
                }
                drop(sent);
                if counted {
                    state.metrics.retries.inc();
                }
                // Sent again only when it had no body.
                body = replayable.then(|| full(Bytes::new()));
                if let Some(d) = backoff {
                    tokio::time::sleep(d).await;
                }
            }
        }
    }
    Err(local(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("upstream connect error or retries exhausted: {last_err}"),
    ))
}

/// What answers a request whose body did not parse on its way upstream.
const CLIENT_BODY_MALFORMED: &str = "the request body is malformed";

/// Sends a copy of the request (without its body) to a mirror backend; the answer is dropped.
fn mirror(
    state: &State,
    backend: &Arc<Backend>,
    parts: &http::request::Parts,
    path_and_query: &str,
) {
    let Some(ep) = backend.endpoints.first().map(|u| u.addr) else {
        return;
    };
    let Ok(uri) = format!("http://{ep}{path_and_query}").parse::<Uri>() else {
        return;
    };
    let mut req = Request::from_parts(parts.clone(), full(Bytes::new()));
    req.headers_mut().remove(header::CONTENT_LENGTH);
    *req.uri_mut() = uri;
    let client = state.client.clone();
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        match client.request(req).await {
            Ok(resp) => {
                let _ = resp.into_body().collect().await;
            }
            Err(_) => {
                metrics.mirror_failures.inc();
            }
        }
    });
}

fn append_forwarded(h: &mut HeaderMap, peer: SocketAddr, scheme: &'static str) {
    let ip = peer.ip().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    if !h.contains_key("x-forwarded-proto") {
        h.insert("x-forwarded-proto", HeaderValue::from_static(scheme));
    }
}

/// Expands the Envoy command operators that header values in real manifests use.
pub(crate) fn expand_value(v: &str, peer: SocketAddr) -> String {
    if !v.contains('%') {
        return v.to_string();
    }
    v.replace(
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        &peer.ip().to_string(),
    )
    .replace("%DOWNSTREAM_REMOTE_ADDRESS%", &peer.to_string())
    .replace(
        "%START_TIME%",
        &SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default(),
    )
}

fn edit_headers(h: &mut HeaderMap, e: &HeaderEdits, peer: SocketAddr) {
    if e.is_empty() {
        return;
    }
    for (n, v) in &e.set {
        if let Ok(v) = HeaderValue::from_str(&expand_value(v, peer)) {
            h.insert(n.clone(), v);
        }
    }
    for (n, v) in &e.add {
        if let Ok(v) = HeaderValue::from_str(&expand_value(v, peer)) {
            h.append(n.clone(), v);
        }
    }
    for n in &e.remove {
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keepalive_settings_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let k = Keepalive {
            idle: Duration::from_secs(1234),
            interval: Duration::from_secs(17),
            probes: 4,
        };
        set_keepalive(&stream, &k).expect("set");
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(sock.tcp_keepalive_time().expect("TCP_KEEPIDLE"), k.idle);
        assert_eq!(
            sock.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            k.interval
        );
        assert_eq!(sock.tcp_keepalive_retries().expect("TCP_KEEPCNT"), 4);
    }
}
