//! HTTP/3: QUIC (quinn, on the same rustls settings as the TCP side) on the UDP side of an
//! HTTPS listener port whose Gateway's ClientTrafficPolicy says `http3`.
//!
//! This module only moves bytes: a request read from a QUIC stream is handed to the same
//! handler as HTTP/2's ([`crate::proxy::handle`]), so routing, authentication, Lua, retries
//! and compression are the ones every other transport gets. Connections count as open for
//! the connection limit and for a drain; a drain sends GOAWAY, lets the requests in flight
//! finish and then closes.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::watch;

use crate::body::{Body, BoxError};
use crate::limits::{
    CLIENT_HELLO_TIMEOUT, HEADER_READ_TIMEOUT, HTTP3_STREAMS_MAX, REQUEST_BODY_BYTES_MAX,
    REQUEST_HEADER_BYTES_MAX,
};

use crate::proxy::{OpenConnection, State};

type SendStream = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvStream = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// The plan's QUIC settings with the process's bounds (idle timeout, streams at once).
pub(crate) fn with_bounds(
    mut config: quinn::ServerConfig,
    idle: std::time::Duration,
) -> quinn::ServerConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(HTTP3_STREAMS_MAX));
    config.transport_config(Arc::new(t));
    config
}

/// A QUIC endpoint on `socket` serving `config`.
pub(crate) fn endpoint(
    socket: std::net::UdpSocket,
    config: quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Accepts QUIC connections until `shutdown`; then refuses new ones (those open go on, and a
/// drain ends them).
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    port: u16,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.changed() => break,
        };
        let Some(incoming) = incoming else { break };
        if *state.open.borrow() >= state.connections_max {
            state.metrics.connections_refused.inc();
            incoming.refuse();
            continue;
        }
        let open = OpenConnection::new(&state);
        let state = state.clone();
        tokio::spawn(async move {
            let _open = open;
            connection(state, port, incoming).await;
        });
    }
    endpoint.set_server_config(None);
}

/// One QUIC connection: its requests, each on its own task, until the client or the idle
/// timeout closes it, or a drain ends it.
async fn connection(state: Arc<State>, port: u16, incoming: quinn::Incoming) {
    let conn = match tokio::time::timeout(CLIENT_HELLO_TIMEOUT, incoming).await {
        Ok(Ok(c)) => c,
        _ => {
            state.metrics.tls_handshake_errors.inc();
            return;
        }
    };
    state.metrics.http3_connections.inc();
    let peer = conn.remote_address();
    let quic = conn.clone();
    let built = h3::server::builder()
        .max_field_section_size(REQUEST_HEADER_BYTES_MAX as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await;
    let Ok(mut h3) = built else { return };
    let mut drain = state.draining.subscribe();
    let mut draining = *drain.borrow_and_update();
    let mut requests = tokio::task::JoinSet::new();
    // GOAWAY names the first stream not taken: every request taken so far is answered, a
    // later one is refused (the client may send it again elsewhere).
    if draining {
        let _ = h3.shutdown(1).await;
    }
    loop {
        if draining && requests.is_empty() {
            break;
        }
        tokio::select! {
            // Polled while draining too: that is how later streams are refused.
            r = h3.accept() => match r {
                Ok(Some(resolver)) => {
                    requests.spawn(request(state.clone(), port, peer, resolver));
                }
                // Closed by the client, by the idle timeout or by a protocol error.
                Ok(None) | Err(_) => break,
            },
            _ = drain.changed(), if !draining => {
                draining = true;
                let _ = h3.shutdown(1).await;
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    }
    while requests.join_next().await.is_some() {}
    if draining {
        // The answers are sent; give the client the drain's grace to close on its side, so
        // that they are not cut off in flight.
        let _ = tokio::time::timeout(state.drain_idle_grace, quic.closed()).await;
        quic.close(quinn::VarInt::from_u32(0x100), b"draining");
    }
}

/// One request: its head (within the header read timeout), its body, the shared handler, the
/// answer.
async fn request(state: Arc<State>, port: u16, peer: SocketAddr, resolver: Resolver) {
    // h3 resets the stream of a head it cannot read (H3_MESSAGE_ERROR): an invalid or
    // upper-case name, a value with CR, LF or NUL, no :method, :scheme or :path.
    let (req, mut stream) =
        match tokio::time::timeout(HEADER_READ_TIMEOUT, resolver.resolve_request()).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return,
            Err(_) => {
                state.metrics.http3_request_timeouts.inc();
                return;
            }
        };
    let length = match well_formed(req.headers()) {
        Ok(length) => length,
        Err(why) => {
            tracing::debug!(%peer, why, "malformed HTTP/3 request: stream reset");
            state.metrics.http3_malformed.inc();
            stream.stop_stream(h3::error::Code::H3_MESSAGE_ERROR);
            stream.stop_sending(h3::error::Code::H3_MESSAGE_ERROR);
            return;
        }
    };
    let (mut send, recv) = stream.split();
    let body = match tokio::time::timeout(HEADER_READ_TIMEOUT, request_body(recv, length)).await {
        Ok(Ok(b)) => b,
        Ok(Err(Malformed::Reset)) => return,
        Ok(Err(Malformed::Length(why))) => {
            tracing::debug!(%peer, why, "malformed HTTP/3 request: stream reset");
            state.metrics.http3_malformed.inc();
            send.stop_stream(h3::error::Code::H3_MESSAGE_ERROR);
            return;
        }
        Err(_) => {
            state.metrics.http3_request_timeouts.inc();
            return;
        }
    };
    let resp = crate::proxy::handle(&state, port, peer, "https", req.map(|()| body), None).await;
    let _ = respond(send, resp).await;
}

/// What HTTP/3 makes a request malformed (RFC 9114, 4.1.2 and 4.2) beyond what h3 checks:
/// a connection-specific field, `te` other than `trailers`, a `content-length` that is not
/// one number. `Ok` carries the declared length, which the body must then match.
fn well_formed(h: &http::HeaderMap) -> Result<Option<u64>, &'static str> {
    use http::header;
    const CONNECTION_SPECIFIC: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ];
    if CONNECTION_SPECIFIC.iter().any(|n| h.contains_key(*n)) {
        return Err("a connection-specific field");
    }
    if h.get_all(header::TE).iter().any(|v| v != "trailers") {
        return Err("te other than trailers");
    }
    let mut length = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        let n = v
            .to_str()
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or("a content-length that is not a number")?;
        if length.is_some_and(|l| l != n) {
            return Err("two different content-lengths");
        }
        length = Some(n);
    }
    Ok(length)
}

/// Why a request body is not taken.
enum Malformed {
    /// The client reset the stream.
    Reset,
    /// The DATA frames do not add up to the declared `content-length`.
    Length(&'static str),
}

/// Counts the body against its declared length: `Err` once it goes past it, or ends short.
fn check_length(declared: Option<u64>, seen: u64, ended: bool) -> Result<(), &'static str> {
    match declared {
        Some(d) if seen > d => Err("a body longer than its content-length"),
        Some(d) if ended && seen < d => Err("a body shorter than its content-length"),
        _ => Ok(()),
    }
}

/// The request body: whole when it ends within [`REQUEST_BODY_BYTES_MAX`] (so that a request
/// without one can be retried, as on the other paths), else what was read followed by the
/// rest as it comes. It must add up to `declared` (the `content-length`): whole, it is
/// refused before anything goes upstream; streamed, the body fails where it stops matching,
/// and the upstream request with it.
async fn request_body(mut recv: RecvStream, declared: Option<u64>) -> Result<Body, Malformed> {
    let mut first: Vec<Bytes> = Vec::new();
    let mut size = 0;
    while size <= REQUEST_BODY_BYTES_MAX {
        match recv.recv_data().await {
            Ok(Some(mut b)) => {
                let b = b.copy_to_bytes(b.remaining());
                size += b.len();
                first.push(b);
                check_length(declared, size as u64, false).map_err(Malformed::Length)?;
            }
            Ok(None) => {
                check_length(declared, size as u64, true).map_err(Malformed::Length)?;
                let trailers = recv.recv_trailers().await.ok().flatten();
                return Ok(whole(first, trailers));
            }
            Err(_) => return Err(Malformed::Reset),
        }
    }
    let head =
        futures_util::stream::iter(first.into_iter().map(|b| Ok::<_, BoxError>(Frame::data(b))));
    let rest = futures_util::stream::unfold(Some((recv, size as u64)), move |state| async move {
        let (mut recv, seen) = state?;
        let malformed = |why: &'static str| Some((Err(BoxError::from(why)), None));
        match recv.recv_data().await {
            Ok(Some(mut b)) => {
                let b = b.copy_to_bytes(b.remaining());
                let seen = seen + b.len() as u64;
                if let Err(why) = check_length(declared, seen, false) {
                    return malformed(why);
                }
                Some((Ok(Frame::data(b)), Some((recv, seen))))
            }
            Ok(None) => {
                if let Err(why) = check_length(declared, seen, true) {
                    return malformed(why);
                }
                match recv.recv_trailers().await {
                    Ok(Some(t)) => Some((Ok(Frame::trailers(t)), None)),
                    Ok(None) => None,
                    Err(e) => Some((Err(Box::new(e) as BoxError), None)),
                }
            }
            Err(e) => Some((Err(Box::new(e) as BoxError), None)),
        }
    });
    Ok(BodyExt::boxed(StreamBody::new(
        futures_util::StreamExt::chain(head, rest),
    )))
}

/// A body read whole.
fn whole(parts: Vec<Bytes>, trailers: Option<http::HeaderMap>) -> Body {
    let data = match parts.len() {
        0 => Bytes::new(),
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => parts.concat().into(),
    };
    let body = crate::body::full(data);
    match trailers {
        None => body,
        Some(t) => body.with_trailers(async move { Some(Ok(t)) }).boxed(),
    }
}

/// Sends an answer: head, body frames as they come, trailers, end of stream. A body that
/// fails upstream resets the stream (the client must not take a cut body for a whole one).
async fn respond(mut send: SendStream, resp: Response<Body>) -> Result<(), h3::error::StreamError> {
    let (mut parts, mut body) = resp.into_parts();
    // Connection-specific fields are not allowed in HTTP/3 (RFC 9114, 4.2).
    crate::proxy::strip_hop_by_hop(&mut parts.headers);
    parts.version = http::Version::HTTP_3;
    send.send_response(Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => match f.into_data() {
                Ok(data) => {
                    if !data.is_empty() {
                        send.send_data(data).await?;
                    }
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        send.send_trailers(t).await?;
                        break;
                    }
                }
            },
            Err(_) => {
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Ok(());
            }
        }
    }
    send.finish().await
}

/// An HTTP/3 client on the same crates (Debian's curl does not speak HTTP/3): the tests and
/// `trellis bench-h3` use it. Requests may be sent at once from clones of one client; they
/// share its QUIC connection.
#[derive(Clone)]
pub struct Client {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    inner: Arc<ClientInner>,
}

struct ClientInner {
    driver: tokio::task::JoinHandle<()>,
    endpoint: quinn::Endpoint,
    authority: String,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.driver.abort();
        self.endpoint.close(quinn::VarInt::from_u32(0x100), b"");
    }
}

impl Client {
    /// Connects to `addr` as `server_name`, trusting `roots`; the connection closes after
    /// `idle` without traffic (and a handshake that does not finish in it fails).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        roots: &[rustls_pki_types::CertificateDer<'static>],
        idle: std::time::Duration,
    ) -> Result<Client, BoxError> {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(r.clone())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(store)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
        config.transport_config(Arc::new(t));
        let local = SocketAddr::new(
            if addr.is_ipv6() {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            },
            0,
        );
        let mut endpoint = quinn::Endpoint::client(local)?;
        endpoint.set_default_client_config(config);
        let conn = endpoint.connect(addr, server_name)?.await?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Client {
            send,
            inner: Arc::new(ClientInner {
                driver,
                endpoint,
                authority: format!("{server_name}:{}", addr.port()),
            }),
        })
    }

    /// `https://server_name:port` followed by `path`.
    pub fn uri(&self, path: &str) -> String {
        format!("https://{}{path}", self.inner.authority)
    }

    /// Sends one request and reads its whole answer.
    pub async fn request(&self, req: http::Request<Bytes>) -> Result<Response<Bytes>, BoxError> {
        let (parts, body) = req.into_parts();
        let mut send = self.send.clone();
        let mut stream = send
            .send_request(http::Request::from_parts(parts, ()))
            .await?;
        if !body.is_empty() {
            stream.send_data(body).await?;
        }
        stream.finish().await?;
        let resp = stream.recv_response().await?;
        let mut out = bytes::BytesMut::new();
        while let Some(mut b) = stream.recv_data().await? {
            out.extend_from_slice(&b.copy_to_bytes(b.remaining()));
        }
        Ok(resp.map(|()| out.freeze()))
    }
}
