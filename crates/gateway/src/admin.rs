//! The admin endpoint: `/healthz`, `/ready`, `/status` (the Gateway's conditions and
//! listeners as `trellis check -o json` shows them, plus what is bound), `/metrics`.
//! `/ready` answers 503 while the status document has `"ready": false`.
//!
//! Served by `httpkit`'s server loop, with its bounds: 64 connections at once (more wait in
//! the kernel's backlog), 10 s for a request head, 30 s and 8 MiB for a body.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::StatusCode;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// What `/status` shows; replaced on every reload.
pub type StatusDoc = ArcSwap<serde_json::Value>;

/// One admin request's answer: status, content type, body.
fn answer(
    path: &str,
    registry: &Registry,
    status: &StatusDoc,
) -> (StatusCode, &'static str, String) {
    match path {
        "/healthz" | "/health" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        // Not ready while the status says so (`trellis up` until every component has
        // started); ready otherwise.
        "/ready" if status.load().get("ready") == Some(&serde_json::Value::Bool(false)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".to_string(),
        ),
        "/ready" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/status" => (
            StatusCode::OK,
            "application/json",
            format!("{:#}\n", status.load()),
        ),
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, registry) {
                Ok(()) => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /healthz (or /health), /ready, /status or /metrics\n".to_string(),
        ),
    }
}

/// Serves the admin endpoint until the process ends. Returns the bound address. `more`
/// answers the paths the admin endpoint does not know itself (a component's own API, such as
/// health's Gatus-shaped `/api/v1/endpoints/...`).
pub async fn start(
    addr: SocketAddr,
    registry: Arc<Registry>,
    status: Arc<StatusDoc>,
    more: Option<httpkit::Handler>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let handler: httpkit::Handler = Arc::new(move |req| {
        let (code, ctype, body) = answer(req.uri().path(), &registry, &status);
        match &more {
            Some(more) if code == StatusCode::NOT_FOUND => more(req),
            _ => Box::pin(async move { httpkit::respond(code.as_u16(), ctype, body) }),
        }
    });
    Ok(httpkit::serve_on(listener, handler)?.detach())
}
