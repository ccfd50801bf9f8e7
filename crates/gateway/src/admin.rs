//! The admin endpoint: `/healthz`, `/ready`, `/status` (the Gateway's conditions and
//! listeners as `trellis check -o json` shows them, plus what is bound), `/metrics`.
//! `/ready` answers 503 while the status document has `"ready": false`.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// What `/status` shows; replaced on every reload.
pub type StatusDoc = ArcSwap<serde_json::Value>;

/// How long accepting pauses after an error (EMFILE, ENFILE), so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves the admin endpoint until the process ends. Returns the bound address.
pub async fn start(
    addr: SocketAddr,
    registry: Arc<Registry>,
    status: Arc<StatusDoc>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: pause rather than spin on the error.
                    tracing::warn!(error = %e, "admin: accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            let (registry, status) = (registry.clone(), status.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let (registry, status) = (registry.clone(), status.clone());
                        async move {
                            let (code, ctype, body) = match req.uri().path() {
                                "/healthz" | "/health" => {
                                    (StatusCode::OK, "text/plain", "ok\n".to_string())
                                }
                                // Not ready while the status says so (`trellis up` until
                                // every component has started); ready otherwise.
                                "/ready"
                                    if status.load().get("ready")
                                        == Some(&serde_json::Value::Bool(false)) =>
                                {
                                    (
                                        StatusCode::SERVICE_UNAVAILABLE,
                                        "text/plain",
                                        "not ready\n".to_string(),
                                    )
                                }
                                "/ready" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
                                "/status" => (
                                    StatusCode::OK,
                                    "application/json",
                                    format!("{:#}\n", status.load()),
                                ),
                                "/metrics" => {
                                    let mut out = String::new();
                                    match prometheus_client::encoding::text::encode(
                                        &mut out, &registry,
                                    ) {
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
                                    "try /healthz (or /health), /ready, /status or /metrics\n"
                                        .to_string(),
                                ),
                            };
                            let mut r = Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = code;
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static(ctype),
                            );
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}
