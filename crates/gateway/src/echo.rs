//! A JSON echo server: answers every request with what it received. The backend of the
//! gateway's tests and benchmarks, and (later) the lab's stand-in workload.
//!
//! `GET /status/NNN` answers status NNN; `?delay=2s` waits first (bounded by
//! [`DELAY_MAX`]); `?size=N` pads the answer to at least N bytes (for compression tests).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpListener;

/// Longest `?delay=` honoured.
pub const DELAY_MAX: Duration = Duration::from_secs(60);
/// Largest `?size=` honoured.
pub const SIZE_MAX: usize = 8 * 1024 * 1024;
/// Requests remembered for tests ([`Echo::seen`]); older ones are dropped.
pub const SEEN_MAX: usize = 4096;

/// What the echo server saw of one request.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Seen {
    pub backend: String,
    pub namespace: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub host: String,
    pub headers: BTreeMap<String, String>,
    pub source: String,
    pub protocol: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub padding: String,
}

/// A running echo server.
#[derive(Clone, Debug)]
pub struct Echo {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Bumped on every request, so tests can wait for one without polling.
    count: tokio::sync::watch::Receiver<u64>,
}

impl Echo {
    /// Requests received so far (the newest [`SEEN_MAX`]).
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until a request matching `pred` has been seen, or `timeout` passes.
    pub async fn wait_for(&self, pred: impl Fn(&Seen) -> bool, timeout: Duration) -> bool {
        let mut rx = self.count.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.seen().iter().any(&pred) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.seen().iter().any(&pred),
            }
        }
    }
}

/// Starts an echo server on `addr` that names itself `namespace/name` in its answers.
pub async fn start(addr: SocketAddr, namespace: &str, name: &str) -> std::io::Result<Echo> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (ns, name) = (namespace.to_string(), name.to_string());
    let log = seen.clone();
    let (count_tx, count) = tokio::sync::watch::channel(0u64);
    let count_tx = Arc::new(count_tx);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (ns, name, log, count_tx) =
                (ns.clone(), name.clone(), log.clone(), count_tx.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (ns, name, log, count_tx) =
                        (ns.clone(), name.clone(), log.clone(), count_tx.clone());
                    async move {
                        let r = answer(req, peer, &ns, &name, &log).await;
                        count_tx.send_modify(|n| *n += 1);
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(Echo { addr, seen, count })
}

fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
}

async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    ns: &str,
    name: &str,
    log: &Mutex<Vec<Seen>>,
) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or("").to_string();
    if let Some(d) = param(&query, "delay").and_then(|d| model::validate::parse_duration(&d).ok()) {
        tokio::time::sleep(d.min(DELAY_MAX)).await;
    }
    let mut headers = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|x: &mut String| {
                x.push(',');
                x.push_str(&v);
            })
            .or_insert(v);
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| headers.get("host").cloned())
        .unwrap_or_default();
    let size = param(&query, "size")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0)
        .min(SIZE_MAX);
    let mut seen = Seen {
        backend: name.to_string(),
        namespace: ns.to_string(),
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: query.clone(),
        host,
        headers,
        source: peer.to_string(),
        protocol: format!("{:?}", req.version()),
        padding: String::new(),
    };
    let status = req
        .uri()
        .path()
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    // Drain the body so keep-alive works for requests that carry one.
    let _ = req.into_body().collect().await;
    if let Ok(mut l) = log.lock() {
        if l.len() >= SEEN_MAX {
            l.remove(0);
        }
        l.push(seen.clone());
    }
    let mut body = serde_json::to_vec(&seen).unwrap_or_default();
    if body.len() < size {
        seen.padding = "x".repeat(size - body.len());
        body = serde_json::to_vec(&seen).unwrap_or_default();
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    // `X-Echo-Set-Header: Name:value,Name:value` asks for response headers (as the Gateway
    // API conformance echo server does), for response header modifier tests.
    if let Some(spec) = seen.headers.get("x-echo-set-header") {
        for pair in spec.split(',') {
            if let Some((n, v)) = pair.split_once(':')
                && let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(n.trim().as_bytes()),
                    http::HeaderValue::from_str(v.trim()),
                )
            {
                r.headers_mut().append(n, v);
            }
        }
    }
    r
}
