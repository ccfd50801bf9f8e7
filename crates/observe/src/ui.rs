//! The web UI: one page (HTML, JS and CSS compiled into the binary, no outside URL) with a
//! live flow table and a service map, and the JSON API it reads, over the same
//! [`Observer`] the gRPC API serves.
//!
//! | path | what |
//! |---|---|
//! | `/` (`/ui.js`, `/ui.css`) | the page |
//! | `/api/flows?FILTERS` | Server-Sent Events: the last [`REPLAY_FLOWS_MAX`] flows that pass, then new ones (`event: flow`, `event: lost`) |
//! | `/api/map?FILTERS` | the service map of the flows in the buffer that pass ([`crate::map`]) |
//! | `/api/status` | node name, flows stored / seen, events lost |
//! | `/api/v1/endpoints/...` | health probe results in Gatus's API, where the process probes (`spawn`'s `health`); 404 elsewhere |
//!
//! FILTERS are the flags of `trellis observe` as query-string keys ([`crate::query`]), so
//! `?http-status=5%2B&from-pod=apps/` is `--http-status 5+ --from-pod apps/`. The flow
//! stream goes through [`crate::server::Service::open`], the code behind GetFlows, so what
//! the page shows is what `trellis observe` shows, losses included.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::hub::Observer;
use crate::map::ServiceMap;
use crate::proto::observer::{GetFlowsRequest, get_flows_response::ResponseTypes};
use crate::query::Query;
use crate::server::Service;

/// Flows a new flow stream starts with (the newest that pass its filters).
pub const REPLAY_FLOWS_MAX: u64 = 500;
/// A comment line on idle flow streams this often, so a closed page is noticed (and its
/// stream freed) without waiting for the next flow.
const KEEPALIVE_SECS: u64 = 15;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const UI_JS: &str = include_str!("../ui/ui.js");
const UI_CSS: &str = include_str!("../ui/ui.css");
/// Nothing from anywhere but this server: the page works offline and cannot leak.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'";

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

fn bad_request(message: impl std::fmt::Display) -> Response<Body> {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({"error": message.to_string()}),
    )
}

/// The filters of a request's query string, as a whitelist.
fn whitelist(query: Option<&str>) -> Result<Vec<crate::proto::flow::FlowFilter>, String> {
    Query::from_query_string(query.unwrap_or(""))
        .and_then(|q| q.whitelist())
        .map_err(|e| e.to_string())
}

fn status(observer: &Observer) -> Response<Body> {
    let s = observer.status();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "node_name": observer.hub.node_name,
            "num_flows": s.num_flows,
            "max_flows": s.max_flows,
            "seen_flows": s.seen_flows,
            "lost_events": s.lost_events,
            "uptime_ns": s.uptime_ns,
        }),
    )
}

fn service_map(observer: &Observer, query: Option<&str>) -> Response<Body> {
    let filters = match whitelist(query)
        .and_then(|w| crate::FilterSet::new(&w, &[]).map_err(|e| e.to_string()))
    {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    let (entries, _) = observer.hub.snapshot();
    let map: ServiceMap = entries
        .iter()
        .filter_map(|e| e.flow().filter(|f| filters.matches(f)))
        .collect();
    json(StatusCode::OK, &map.to_json())
}

/// One Server-Sent Event: `event: KIND`, the JSON on one `data:` line.
fn sse_event(kind: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

fn flow_event(seq: u64, r: &crate::proto::observer::GetFlowsResponse) -> Option<Bytes> {
    match r.response_types.as_ref()? {
        ResponseTypes::Flow(f) => {
            let row = crate::format::row(f);
            Some(sse_event(
                "flow",
                &serde_json::json!({
                    "id": seq,
                    "time": row.time,
                    "node": f.node_name,
                    "source": row.source,
                    "destination": row.destination,
                    "type": row.r#type,
                    "verdict": row.verdict,
                    "summary": row.summary,
                }),
            ))
        }
        ResponseTypes::LostEvents(l) => Some(sse_event(
            "lost",
            &serde_json::json!({"id": seq, "text": crate::format::lost_text(l)}),
        )),
        ResponseTypes::NodeStatus(_) => None,
    }
}

fn flows(service: &Service, query: Option<&str>) -> Response<Body> {
    let whitelist = match whitelist(query) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let rx = match service.open(GetFlowsRequest {
        number: REPLAY_FLOWS_MAX,
        follow: true,
        whitelist,
        ..Default::default()
    }) {
        Ok(rx) => rx,
        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": s.message()}),
            );
        }
        Err(s) => return bad_request(s.message()),
    };
    let keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + std::time::Duration::from_secs(KEEPALIVE_SECS),
        std::time::Duration::from_secs(KEEPALIVE_SECS),
    );
    let events =
        futures_util::stream::unfold((rx, keepalive, 0u64), |(mut rx, mut ka, seq)| async move {
            loop {
                let bytes = tokio::select! {
                    item = rx.recv() => match item? {
                        Ok(r) => match flow_event(seq, &r) {
                            Some(b) => b,
                            None => continue,
                        },
                        Err(s) => sse_event("problem", &serde_json::json!({"error": s.message()})),
                    },
                    _ = ka.tick() => Bytes::from_static(b": keepalive\n\n"),
                };
                let frame: Result<Frame<Bytes>, Infallible> = Ok(Frame::data(bytes));
                return Some((frame, (rx, ka, seq + 1)));
            }
        });
    let mut r = Response::new(StreamBody::new(events).boxed());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Where the page reads health results (Gatus's API), when the process probes.
pub type Health = Option<httpkit::Handler>;

async fn handle(
    req: http::Request<hyper::body::Incoming>,
    observer: Observer,
    service: Service,
    health: Health,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(full(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n",
        ));
    }
    let query = req.uri().query();
    Ok(match req.uri().path() {
        "/" | "/index.html" => full(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        "/ui.js" => full(StatusCode::OK, "text/javascript; charset=utf-8", UI_JS),
        "/ui.css" => full(StatusCode::OK, "text/css; charset=utf-8", UI_CSS),
        "/api/status" => status(&observer),
        "/api/map" => service_map(&observer, query),
        "/api/flows" => flows(&service, query),
        p if p.starts_with("/api/v1/endpoints/") => match &health {
            Some(h) => {
                let mut inner = http::Request::new(Bytes::new());
                *inner.uri_mut() = req.uri().clone();
                let answer = h(inner).await;
                let status = answer.status();
                let ctype = if status.is_success() {
                    "application/json"
                } else {
                    "text/plain"
                };
                full(status, ctype, answer.into_body())
            }
            None => full(
                StatusCode::NOT_FOUND,
                "text/plain",
                "no health probes in this process\n",
            ),
        },
        _ => full(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /, /api/flows, /api/map or /api/status\n",
        ),
    })
}

/// Binds `addr` and serves the UI there in a task; returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    observer: &Observer,
    health: Health,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let observer = observer.clone();
    // Its own stream budget: pages left open cannot starve gRPC clients, nor the reverse.
    let service = Service::new(&observer, local.to_string());
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors, most likely: wait instead of spinning.
                    tracing::warn!(error = %e, "ui: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (observer, service, health) = (observer.clone(), service.clone(), health.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    handle(req, observer.clone(), service.clone(), health.clone())
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_no_outside_url() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("ui.js", UI_JS),
            ("ui.css", UI_CSS),
        ] {
            // The SVG namespace is a name, not a URL that is fetched.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for needle in ["http://", "https://", "//cdn", "@import", "@font-face"] {
                assert!(!text.contains(needle), "{name} contains {needle:?}");
            }
            // `url(` only for references inside the page (`url(#arrow-...)`).
            for (i, _) in text.match_indices("url(") {
                let rest = &text[i + 4..];
                assert!(
                    rest.starts_with('#'),
                    "{name}: url({})",
                    &rest[..rest.len().min(20)]
                );
            }
        }
    }

    #[test]
    fn filter_inputs_are_query_keys_the_parser_takes() {
        // Every `name="..."` input of the form is a key Query accepts.
        let names: Vec<&str> = INDEX_HTML
            .split("name=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .collect();
        assert!(names.len() >= 12, "{names:?}");
        for n in names {
            let value = match n {
                "verdict" => "FORWARDED",
                "type" => "l7",
                _ => "1",
            };
            let q = Query::from_query_string(&format!("{n}={value}"));
            assert!(q.is_ok(), "input {n}: {q:?}");
        }
    }
}
