//! trellis's own HTTP/1.1 path for plain keep-alive proxying.
//!
//! Most requests through a gateway are plain: HTTP/1.1, a small body or none, a rule that
//! only forwards (optionally editing headers). For those, one task per client connection
//! parses the request in place (httparse), routes it with the same [`Router`] as everything
//! else, writes the upstream request head and body in one write, takes an upstream connection
//! from a pool of raw keep-alive sockets, and passes the response through with its own framing
//! (length, chunked or until close) without re-encoding it. Buffers exist only while a request
//! is being served: an idle keep-alive connection holds its socket and nothing else.
//!
//! Anything else — HTTP/1.0, HTTP/2 prior knowledge, chunked or large request bodies,
//! `Expect`, upgrades, a malformed or oversized head, no route, and rules with redirects,
//! rewrites, mirrors, timeouts, retries, Lua, external authorization, compression or an
//! unusable backend — is handed to the general path (hyper) together with the bytes already
//! read, and the connection stays there. So every rule and error behaves exactly as the
//! general path defines it; this path only makes the common case cheap.

use std::future::poll_fn;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::backend::Backend;
use crate::backend::{Next, Outcome, Tries};
use crate::compress::Encoding;
use crate::decide;
use crate::limits::{
    CLIENT_READ_BYTES, COMPRESS_BODY_BYTES_MAX, HEADER_READ_TIMEOUT, HEADERS_MAX,
    REQUEST_BODY_BYTES_MAX, REQUEST_HEADER_BYTES_MAX, UPSTREAM_READ_BYTES,
};
use crate::plan::{Action, HeaderEdits, Router};

use crate::proxy::{HOP_BY_HOP, LogFields, Prefixed, State, expand_value, host_without_port};
use crate::upstream::{
    Chunked, Framing, connect, content_length, framing_of, parse_response, read_some, tokens,
    write_two,
};

/// Serves a plain-text client connection until it closes, or hands it to the general path.
/// A client connection: plain TCP, or TLS over it.
pub(crate) trait Client: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Waits for the next request's first bytes and reads them into `buf` (empty while
    /// idle, so that a plain idle connection holds no buffer).
    fn read_idle(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
    /// Reads more of a request into `buf`.
    fn read_more(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
}

impl Client for TcpStream {
    async fn read_idle(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read_ready(cx)).await?;
        read_some(self, buf, CLIENT_READ_BYTES).await
    }
    async fn read_more(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        read_some(self, buf, CLIENT_READ_BYTES).await
    }
}

impl Client for tokio_rustls::server::TlsStream<Prefixed<TcpStream>> {
    async fn read_idle(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        self.read_more(buf).await
    }
    async fn read_more(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        buf.reserve(CLIENT_READ_BYTES);
        self.read_buf(buf).await
    }
}

pub(crate) async fn serve<S: Client>(
    state: Arc<State>,
    port: u16,
    peer: SocketAddr,
    scheme: &'static str,
    mut stream: S,
    drain: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::new();
    // One wait for the drain for the connection's life (registered once, not per request).
    let mut drain_wait = drain.clone();
    let drained = drain_wait.changed();
    tokio::pin!(drained);
    // Whether the drain has been seen (the wait above completes once). Once it has, an idle
    // connection gets the drain's idle grace (`DRAIN_IDLE_GRACE`) to send one more request, which is answered with
    // `Connection: close`: a client that sent it as the drain began is not left unanswered.
    let mut drain_seen = *drain.borrow();
    // One idle timer for the connection's life, registered once: a keep-alive request costs
    // no timer and no clock read. When it fires after the connection answered requests, it
    // is moved one idle timeout on; when nothing was answered since it was set, the
    // connection is closed. So an idle connection closes between one and two idle timeouts
    // after its last answer (exactly one for a connection that never sends a request).
    let idle_timer = tokio::time::sleep(state.client_idle_timeout);
    tokio::pin!(idle_timer);
    let (mut answered, mut answered_when_set) = (0u64, 0u64);
    loop {
        // Until a whole request (head and body) is buffered.
        let mut deadline = None;
        let ex = loop {
            if !buf.is_empty() {
                let ports = state.ports.load();
                let Some(router) = ports.get(&port).and_then(|l| l.router()) else {
                    return;
                };
                match prepare(&state, router, peer, scheme, &buf) {
                    Prep::More => {}
                    Prep::Forward(ex) => break ex,
                    Prep::HandOff(decided) => {
                        drop(ports);
                        state.metrics.h1_handoffs.inc();
                        let io = Prefixed {
                            prefix: buf.freeze(),
                            inner: stream,
                        };
                        // Boxed: inline, every connection of this path would carry room
                        // for hyper's connection.
                        Box::pin(crate::proxy::serve_http(
                            state, port, peer, scheme, io, drain, decided,
                        ))
                        .await;
                        return;
                    }
                }
            }
            let read = if buf.is_empty() {
                // Idle: give the buffer back, wait for the next request or a drain.
                buf = BytesMut::new();
                // A connection that sends nothing (first request or next) is closed after
                // the idle timeout rather than held forever.
                // `None`: the drain began, and the drain's idle grace applies.
                let mut read = None;
                while !drain_seen && read.is_none() {
                    tokio::select! {
                        biased;
                        r = stream.read_idle(&mut buf) => read = Some(r),
                        _ = &mut drained => drain_seen = true,
                        () = &mut idle_timer => {
                            if answered == answered_when_set {
                                read = Some(Err(io::ErrorKind::TimedOut.into()));
                            } else {
                                answered_when_set = answered;
                                let next = tokio::time::Instant::now() + state.client_idle_timeout;
                                idle_timer.as_mut().reset(next);
                            }
                        }
                    }
                }
                match read {
                    Some(r) => r,
                    None => {
                        tokio::time::timeout(state.drain_idle_grace, stream.read_idle(&mut buf))
                            .await
                            .unwrap_or(Err(io::ErrorKind::TimedOut.into()))
                    }
                }
            } else {
                // Part of a request: the rest must come within the header read timeout.
                let d = *deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + HEADER_READ_TIMEOUT);
                tokio::time::timeout_at(d, stream.read_more(&mut buf))
                    .await
                    .unwrap_or(Err(io::ErrorKind::TimedOut.into()))
            };
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
        };
        // Counted before the answer goes out, so that whoever got it sees the count.
        state.metrics.h1_fast.inc();
        let closing = *drain.borrow();
        // One span per request (at debug level: free when not logged).
        let span = tracing::debug_span!(
            "request",
            client = %ex.client,
            route = %ex.action.route,
            backend = %ex.backend.name,
            path = "h1",
        );
        // Boxed per request: inline, an idle connection would carry room for the
        // exchange's state (retries, body passing) between its requests.
        let done = Box::pin(exchange(&state, &mut stream, &ex, closing).instrument(span)).await;
        let keep_alive = done.keep_alive;
        // The request stays at the start of the buffer until its record is made.
        let len = ex.len;
        finish(&state, port, peer, scheme, ex, &done, &buf);
        buf.advance(len);
        answered += 1;
        if !keep_alive {
            return;
        }
    }
}

/// What [`prepare`] made of the buffered bytes. (Moved once per request; boxing the large
/// variant would cost an allocation per request instead.)
#[allow(clippy::large_enum_variant)]
enum Prep {
    /// Not all of the request is here yet.
    More,
    /// Not a request this path serves: the general path takes the connection, with what this
    /// path decided of its first request once it routed it.
    HandOff(Option<Box<decide::Decided>>),
    Forward(Exchange),
}

/// A request ready to go upstream.
struct Exchange {
    /// Bytes of the client's buffer the request took (head and body).
    len: usize,
    /// The upstream request, head and body.
    upstream: Vec<u8>,
    action: Arc<Action>,
    backend: Arc<Backend>,
    head_request: bool,
    idempotent: bool,
    /// The client asked to close after this request.
    close: bool,
    /// The client after X-Forwarded-For handling.
    client: SocketAddr,
    started: Instant,
    /// The encoding the client accepts among the rule's compressors.
    encoding: Option<Encoding>,
    /// Kept only when an observer or the access log wants it.
    seen: Option<Seen>,
    /// The port's `alt-svc` when it also serves HTTP/3.
    alt_svc: Option<http::HeaderValue>,
}

/// What the record and the access log need of a request. The record's texts are where the
/// request has them, in the client's buffer (kept until the exchange is finished), so
/// nothing is copied for a record until the observer copies it.
struct Seen {
    method: Range<usize>,
    target: Range<usize>,
    /// The host as routed: in the buffer, or made lower case (`Err`).
    host: Result<Range<usize>, String>,
    log: Option<LogFields>,
}

/// Where `s`, a slice of `buf`, lies in it.
fn place(buf: &[u8], s: &str) -> Option<Range<usize>> {
    let start = s.as_ptr().addr().checked_sub(buf.as_ptr().addr())?;
    let end = start.checked_add(s.len())?;
    (end <= buf.len()).then_some(start..end)
}

impl Seen {
    /// The method, host and target of the request at the start of `buf`.
    fn texts<'a>(&'a self, buf: &'a [u8]) -> (&'a str, &'a str, &'a str) {
        let text = |r: &Range<usize>| {
            buf.get(r.clone())
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default()
        };
        let host = match &self.host {
            Ok(r) => text(r),
            Err(h) => h.as_str(),
        };
        (text(&self.method), host, text(&self.target))
    }
}

/// Parses a request at the start of `buf`, routes it and writes the upstream request.
fn prepare(
    state: &State,
    router: &Arc<Router>,
    peer: SocketAddr,
    scheme: &'static str,
    buf: &[u8],
) -> Prep {
    let started = Instant::now();
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < REQUEST_HEADER_BYTES_MAX => return Prep::More,
        _ => return Prep::HandOff(None),
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Prep::HandOff(None);
    };
    if !target.starts_with('/') {
        return Prep::HandOff(None);
    }
    let headers: &[httparse::Header<'_>] = req.headers;
    let mut host = None;
    let mut length = None;
    let mut close = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Prep::HandOff(None);
            }
            host = std::str::from_utf8(h.value).ok();
        } else if name.eq_ignore_ascii_case("content-length") {
            match (content_length(h.value), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Prep::HandOff(None),
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    return Prep::HandOff(None);
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Prep::HandOff(None);
        }
    }
    let body = length.unwrap_or(0);
    if body > REQUEST_BODY_BYTES_MAX {
        return Prep::HandOff(None);
    }
    let len = head_len + body;
    if buf.len() < len {
        return Prep::More;
    }
    let Some(host) = host.map(host_without_port) else {
        return Prep::HandOff(None);
    };
    let (path, query) = match target.bytes().position(|b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    let head = decide::Head {
        method,
        host: &host,
        path,
        query,
        headers,
    };
    // The rule, and whether anything but forwarding runs for it: then the general path
    // serves the request (and decides it the same way).
    let hand_off = |routed| {
        Prep::HandOff(Some(Box::new(decide::Decided {
            router: router.clone(),
            routed,
        })))
    };
    let routed = match decide::route(router, peer, &head) {
        Some(r) if r.only_forwards() => r,
        other => return hand_off(other),
    };
    let seq = state.next.fetch_add(1, Ordering::Relaxed);
    let (backend, encoding) = match decide::answer(router, &routed.action, &head, scheme, seq) {
        // Brotli streams, on the general path.
        decide::Answer::Forward {
            backend, encoding, ..
        } if encoding.is_none_or(|e| e == Encoding::Zstd || e == Encoding::Gzip) => {
            (backend, encoding)
        }
        // Answered by the gateway itself: on the general path, where every local answer is made.
        _ => return hand_off(Some(routed)),
    };
    let client = routed.client;
    let action = &*routed.action;

    let mut up = Vec::with_capacity(len + 128);
    up.extend_from_slice(method.as_bytes());
    up.push(b' ');
    up.extend_from_slice(target.as_bytes());
    up.extend_from_slice(b" HTTP/1.1\r\n");
    let edits = &action.request_headers;
    let named = connection_named(headers);
    let mut forwarded_for: Option<&[u8]> = None;
    let mut has_proto = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("x-forwarded-for") {
            // The first value is kept and the peer appended to it, as the general path does.
            forwarded_for.get_or_insert(h.value);
            continue;
        }
        has_proto |= h.name.eq_ignore_ascii_case("x-forwarded-proto");
        if is_hop_by_hop(h.name, &named) || edited(edits, h.name) {
            // Never without the body's length: upstream the body would be read as the next
            // request (smuggling). The general path frames the body itself.
            if h.name.eq_ignore_ascii_case("content-length") {
                return hand_off(Some(routed.clone()));
            }
            continue;
        }
        header_line(&mut up, h.name.as_bytes(), h.value);
    }
    if !edited(edits, "x-forwarded-for") {
        up.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = forwarded_for {
            up.extend_from_slice(prev);
            up.extend_from_slice(b", ");
        }
        push_ip(&mut up, peer.ip());
        up.extend_from_slice(b"\r\n");
    }
    if !has_proto && !edited(edits, "x-forwarded-proto") {
        header_line(&mut up, b"x-forwarded-proto", scheme.as_bytes());
    }
    write_edits(&mut up, edits, client);
    up.extend_from_slice(b"\r\n");
    up.extend_from_slice(&buf[head_len..len]);

    let seen = (state.observer.is_some() || state.access_log.is_some()).then(|| {
        let log = state.access_log.as_ref().map(|_| {
            LogFields::new(method, target, "HTTP/1.1", &host, |n| {
                headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(n))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::to_string)
            })
        });
        let host = match &host {
            std::borrow::Cow::Borrowed(h) => place(buf, h).ok_or_else(|| h.to_string()),
            std::borrow::Cow::Owned(h) => Err(h.clone()),
        };
        Seen {
            method: place(buf, method).unwrap_or_default(),
            target: place(buf, target).unwrap_or_default(),
            host,
            log,
        }
    });
    Prep::Forward(Exchange {
        len,
        upstream: up,
        action: routed.action,
        backend,
        head_request: method == "HEAD",
        idempotent: crate::plan::idempotent(method),
        close,
        client,
        started,
        encoding,
        seen,
        alt_svc: router.alt_svc.clone(),
    })
}

/// Header names a Connection header lists (hop-by-hop for this message).
fn connection_named<'a>(headers: &[httparse::Header<'a>]) -> Vec<&'a [u8]> {
    let mut named = Vec::new();
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection") {
            named.extend(tokens(h.value).filter(|t| !t.is_empty()));
        }
    }
    named
}

fn is_hop_by_hop(name: &str, named: &[&[u8]]) -> bool {
    HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n))
        || named
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
}

/// Whether a header modifier sets or removes `name` (the original values are dropped).
fn edited(e: &HeaderEdits, name: &str) -> bool {
    e.set
        .iter()
        .any(|(n, _)| name.eq_ignore_ascii_case(n.as_str()))
        || e.remove
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_str()))
}

fn write_edits(out: &mut Vec<u8>, e: &HeaderEdits, client: SocketAddr) {
    for (n, v) in e.set.iter().chain(&e.add) {
        let v = expand_value(v, client);
        // The same rule as the general path: values that are not valid header values are
        // skipped.
        if http::HeaderValue::from_str(&v).is_ok() {
            header_line(out, n.as_str().as_bytes(), v.as_bytes());
        }
    }
}

/// Writes a number in decimal without the formatting machinery.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, u64::from(o));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A response head, parsed and rewritten for the client.
struct Head {
    len: usize,
    status: u16,
    framing: Framing,
    /// The upstream connection cannot be reused.
    upstream_close: bool,
    /// The client connection closes after this response.
    client_close: bool,
    /// The head for the client; without its final empty line when compressing (the
    /// compressed length goes after it).
    bytes: Vec<u8>,
    /// The body is compressed whole with this encoding.
    compress: Option<Encoding>,
}

enum Parsed {
    More,
    /// A 1xx response of this many bytes, dropped (the client sent no `Expect`).
    Informational(usize),
    Head(Head),
}

/// Parses the upstream's response head and writes the client's.
fn response_head(ub: &[u8], ex: &Exchange, closing: bool) -> Result<Parsed, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut resp = httparse::Response::new(&mut headers);
    let Some((len, status, version)) = parse_response(&mut resp, ub)? else {
        return Ok(Parsed::More);
    };
    if (100..200).contains(&status) {
        return Ok(Parsed::Informational(len));
    }
    let headers: &[httparse::Header<'_>] = resp.headers;
    let (framing, upstream_close) = framing_of(headers, version, status, ex.head_request)?;
    let has_te = headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let client_close = ex.close || closing || framing == Framing::Close;
    // Compressed whole when its length is known and small enough to hold; larger or
    // unframed bodies pass through as they are.
    let compress = ex.encoding.filter(|_| {
        matches!(framing, Framing::Length(n) if n <= COMPRESS_BODY_BYTES_MAX)
            && crate::compress::compressible_head(
                ex.head_request,
                http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK),
                headers,
            )
    });
    let mut out = Vec::with_capacity(len + 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(&mut out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let named = connection_named(headers);
    let edits = &ex.action.response_headers;
    let mut vary = false;
    for h in headers {
        let keep_te =
            framing == Framing::Chunked && h.name.eq_ignore_ascii_case("transfer-encoding");
        if !keep_te && (is_hop_by_hop(h.name, &named) || edited(edits, h.name)) {
            continue;
        }
        if ex.alt_svc.is_some() && h.name.eq_ignore_ascii_case("alt-svc") {
            // The gateway's own takes its place, as on the general path.
            continue;
        }
        if has_te && h.name.eq_ignore_ascii_case("content-length") {
            // Transfer-Encoding decides the length; passing both on would let the next hop
            // choose differently.
            continue;
        }
        if compress.is_some() {
            if h.name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            if h.name.eq_ignore_ascii_case("etag") && !h.value.starts_with(b"W/") {
                // The compressed body is another representation: a strong tag turns weak.
                out.extend_from_slice(b"etag: W/");
                out.extend_from_slice(h.value);
                out.extend_from_slice(b"\r\n");
                continue;
            }
            vary |= h.name.eq_ignore_ascii_case("vary")
                && h.value
                    .to_ascii_lowercase()
                    .windows(15)
                    .any(|w| w == b"accept-encoding");
        }
        header_line(&mut out, h.name.as_bytes(), h.value);
    }
    write_edits(&mut out, edits, ex.client);
    if let Some(v) = &ex.alt_svc {
        header_line(&mut out, b"alt-svc", v.as_bytes());
    }
    if client_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if let Some(e) = compress {
        header_line(&mut out, b"content-encoding", e.token().as_bytes());
        if !vary {
            out.extend_from_slice(b"vary: Accept-Encoding\r\n");
        }
    } else {
        out.extend_from_slice(b"\r\n");
    }
    Ok(Parsed::Head(Head {
        len,
        status,
        framing,
        upstream_close: upstream_close || framing == Framing::Close,
        client_close,
        bytes: out,
        compress,
    }))
}

/// How an exchange ended.
struct Done {
    status: u16,
    /// From the request head to the response head.
    latency: Duration,
    /// The endpoint that answered; `None` when the gateway answered itself.
    upstream: Option<SocketAddr>,
    /// The client connection can serve another request.
    keep_alive: bool,
}

/// Sends the request upstream and the response to the client.
async fn exchange(state: &State, client: &mut impl Client, ex: &Exchange, closing: bool) -> Done {
    let local = |status: u16, keep_alive: bool| Done {
        status,
        latency: ex.started.elapsed(),
        upstream: None,
        keep_alive,
    };
    let backend = &ex.backend;
    // The whole request is buffered, so it can always be sent again when its method allows.
    let mut tries = Tries::new(backend, ex.action.retry.as_ref(), ex.idempotent);
    // Another try when the outcome asks for one (after its backoff, counted when the retry
    // policy's); false when it is time to answer.
    let again = async |tries: &mut Tries<'_>, outcome: Outcome| match tries.after(outcome) {
        Next::Stop => false,
        Next::Again { backoff, counted } => {
            if counted {
                state.metrics.retries.inc();
            }
            if let Some(d) = backoff {
                tokio::time::sleep(d).await;
            }
            true
        }
    };
    let mut fresh_only = false;
    'attempt: loop {
        let Some(ep) = tries.endpoint() else {
            let keep = answer(client, 503, "no healthy upstream", ex.close || closing).await;
            return local(503, keep);
        };
        let (mut up, reused) =
            match connect(&state.h1_pool, &state.metrics, backend, ep, fresh_only).await {
                Ok(x) => x,
                Err(why) => {
                    if again(&mut tries, Outcome::ConnectFailed).await {
                        continue 'attempt;
                    }
                    let why = format!("upstream connect error or retries exhausted: {why}");
                    let keep = answer(client, 503, &why, ex.close || closing).await;
                    return local(503, keep);
                }
            };
        let failed = |e: &dyn std::fmt::Display| format!("upstream {} failed: {e}", ep.addr);
        if let Err(e) = up.write_all(&ex.upstream).await {
            if reused {
                // A pooled connection the upstream had closed: nothing was received.
                fresh_only = true;
                continue 'attempt;
            }
            if again(&mut tries, Outcome::Reset).await {
                continue 'attempt;
            }
            let keep = answer(client, 502, &failed(&e), ex.close || closing).await;
            return local(502, keep);
        }
        let mut ub = BytesMut::new();
        let head = loop {
            let read = read_some(&up, &mut ub, UPSTREAM_READ_BYTES).await;
            let why = match read {
                Ok(0) => "connection closed before the response".to_string(),
                Err(e) => e.to_string(),
                Ok(_) => match response_head(&ub, ex, closing) {
                    Ok(Parsed::Head(h)) => break h,
                    Ok(Parsed::More) => continue,
                    Ok(Parsed::Informational(n)) => {
                        ub.advance(n);
                        if ub.is_empty() {
                            continue;
                        }
                        match response_head(&ub, ex, closing) {
                            Ok(Parsed::Head(h)) => break h,
                            Ok(_) => continue,
                            Err(e) => e.to_string(),
                        }
                    }
                    Err(e) => e.to_string(),
                },
            };
            if reused && ub.is_empty() && ex.idempotent {
                // Closed while the request was on its way: safe to send again.
                fresh_only = true;
                continue 'attempt;
            }
            if again(&mut tries, Outcome::Reset).await {
                continue 'attempt;
            }
            let keep = answer(client, 502, &failed(&why), ex.close || closing).await;
            return local(502, keep);
        };
        // Nothing went to the client yet: an answer the policy retries is dropped (with its
        // connection).
        if again(&mut tries, Outcome::Status(head.status)).await {
            continue 'attempt;
        }
        let latency = ex.started.elapsed();
        if head.compress.is_some() {
            state.metrics.compressed.inc();
        }
        let body = &ub[head.len..];
        let sent = pass_body(client, &mut up, &head, body).await;
        let (complete, extra) = match sent {
            Ok(extra) => (true, extra),
            Err(_) => (false, true),
        };
        if complete && !extra && !head.upstream_close {
            state.h1_pool.put(ep.addr, backend.keepalive, up);
        }
        return Done {
            status: head.status,
            latency,
            upstream: Some(ep.addr),
            keep_alive: complete && !head.client_close,
        };
    }
}

/// Writes the response head and body to the client. Returns whether the upstream sent bytes
/// past the response's end (then its connection is not reused); an error when either side
/// failed before the end.
async fn pass_body(
    client: &mut impl Client,
    up: &mut TcpStream,
    head: &Head,
    first: &[u8],
) -> io::Result<bool> {
    match head.framing {
        Framing::None => {
            client.write_all(&head.bytes).await?;
            Ok(!first.is_empty())
        }
        Framing::Length(n) if head.compress.is_some() => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            let mut body = BytesMut::with_capacity(n);
            body.extend_from_slice(&first[..first.len().min(n)]);
            let extra = first.len() > n;
            while body.len() < n {
                // One byte more than is left, so that reading what is left is a short read
                // (which clears the socket's readiness).
                let want = n - body.len() + 1;
                if read_some(up, &mut body, want).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            let extra = extra || body.len() > n;
            body.truncate(n);
            let e = head.compress.unwrap_or(Encoding::Gzip);
            let packed = crate::compress::one_shot(e, &body)
                .unwrap_or_else(|| Err(io::Error::other("no one-shot compressor")))?;
            let mut h = Vec::with_capacity(head.bytes.len() + 32);
            h.extend_from_slice(&head.bytes);
            h.extend_from_slice(b"content-length: ");
            push_decimal(&mut h, packed.len() as u64);
            h.extend_from_slice(b"\r\n\r\n");
            write_two(client, &h, &packed).await?;
            Ok(extra)
        }
        Framing::Length(n) => {
            let have = first.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            write_two(client, &head.bytes, &first[..have]).await?;
            let mut rest = n - have as u64;
            let extra = first.len() > have;
            let mut ub = BytesMut::new();
            while rest > 0 {
                ub.clear();
                let want = usize::try_from(rest).unwrap_or(usize::MAX).min(64 * 1024) + 1;
                let got = read_some(up, &mut ub, want).await?;
                if got == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let take = got.min(usize::try_from(rest).unwrap_or(usize::MAX));
                client.write_all(&ub[..take]).await?;
                rest -= take as u64;
                if got > take {
                    return Ok(true);
                }
            }
            Ok(extra)
        }
        Framing::Chunked => {
            let mut chunks = Chunked::default();
            let end = chunks.feed(first).map_err(invalid_chunk)?;
            write_two(client, &head.bytes, &first[..end.unwrap_or(first.len())]).await?;
            if let Some(end) = end {
                return Ok(end < first.len());
            }
            let mut ub = BytesMut::new();
            loop {
                ub.clear();
                if read_some(up, &mut ub, 64 * 1024).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let end = chunks.feed(&ub).map_err(invalid_chunk)?;
                client.write_all(&ub[..end.unwrap_or(ub.len())]).await?;
                if let Some(end) = end {
                    return Ok(end < ub.len());
                }
            }
        }
        Framing::Close => {
            write_two(client, &head.bytes, first).await?;
            let mut ub = BytesMut::new();
            loop {
                ub.clear();
                if read_some(up, &mut ub, 64 * 1024).await? == 0 {
                    return Ok(false);
                }
                client.write_all(&ub).await?;
            }
        }
    }
}

fn invalid_chunk(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Counts, logs and records a finished exchange (its request at the start of `buf`).
fn finish(
    state: &State,
    port: u16,
    peer: SocketAddr,
    scheme: &'static str,
    ex: Exchange,
    done: &Done,
    buf: &[u8],
) {
    let counters = ex
        .action
        .counters
        .get_or_init(|| state.metrics.route_counters(&ex.action.route));
    state.metrics.observe(counters, done.status, done.latency);
    let Some(seen) = ex.seen else { return };
    if let Some(log) = &state.access_log {
        crate::proxy::access_log_line(
            state,
            log,
            &ex.action.route,
            &seen.log,
            done.status,
            ex.started,
            ex.client,
        );
    }
    if let Some(observer) = &state.observer {
        let (method, host, path_and_query) = seen.texts(buf);
        observer.0.request(&crate::record::RequestRecord {
            started: crate::record::wall_clock(ex.started),
            latency: done.latency,
            method,
            version: "HTTP/1.1",
            scheme,
            host,
            path_and_query,
            status: done.status,
            client: ex.client,
            peer,
            listener_port: port,
            route: Some(&ex.action.route),
            backend: done.upstream.map(|_| ex.backend.name.as_str()),
            upstream: done.upstream,
        });
    }
}

/// Answers the client itself (the upstream failed); returns whether the connection stays.
async fn answer(client: &mut impl Client, status: u16, why: &str, close: bool) -> bool {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let body = format!("{why}\n");
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\n{}\r\n",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    );
    write_two(client, head.as_bytes(), body.as_bytes())
        .await
        .is_ok()
        && !close
}

/// The request parser and the chunked reader without sockets, for the fuzz targets in
/// `fuzz/`. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::{Chunked, Prep, prepare};

    /// What the own path makes of the bytes a client sent.
    #[derive(Debug)]
    pub enum Request {
        More,
        HandOff,
        /// Served here: the client bytes the request took, and the request sent upstream.
        Forward {
            len: usize,
            upstream: Vec<u8>,
        },
    }

    /// [`prepare`] of `buf` on a gateway started from a plan without listeners.
    pub fn request(
        gateway: &crate::Running,
        router: &std::sync::Arc<crate::plan::Router>,
        peer: std::net::SocketAddr,
        buf: &[u8],
    ) -> Request {
        match prepare(&gateway.state, router, peer, "http", buf) {
            Prep::More => Request::More,
            Prep::HandOff(_) => Request::HandOff,
            Prep::Forward(ex) => Request::Forward {
                len: ex.len,
                upstream: ex.upstream,
            },
        }
    }

    /// Feeds `pieces` to one chunked reader: the piece and offset where the body ends.
    pub fn chunked_end(pieces: &[&[u8]]) -> Result<Option<(usize, usize)>, &'static str> {
        chunked_data(pieces).map(|(end, _)| end)
    }

    /// [`chunked_end`], and the chunk data the reader named up to there (what the general
    /// path's raw upstream hands on as the body).
    #[allow(clippy::type_complexity)]
    pub fn chunked_data(
        pieces: &[&[u8]],
    ) -> Result<(Option<(usize, usize)>, Vec<u8>), &'static str> {
        let mut c = Chunked::default();
        let mut data = Vec::new();
        for (k, p) in pieces.iter().enumerate() {
            if let Some(end) = c.feed_data(p, |r| data.extend_from_slice(&p[r]))? {
                return Ok((Some((k, end)), data));
            }
        }
        Ok((None, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(parts: &[&[u8]]) -> Option<(usize, usize)> {
        let mut c = Chunked::default();
        for (k, p) in parts.iter().enumerate() {
            if let Some(end) = c.feed(p).expect("valid chunked body") {
                return Some((k, end));
            }
        }
        None
    }

    #[test]
    fn chunked_end_is_found_across_reads() {
        let body: &[u8] = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\n\r\nNEXT";
        assert_eq!(end_of(&[body]), Some((0, body.len() - 4)));
        // Split at every byte boundary: the end is found in the right piece, at the right place.
        for cut in 1..body.len() - 4 {
            let (a, b) = body.split_at(cut);
            assert_eq!(
                end_of(&[a, b]),
                Some((1, body.len() - 4 - cut)),
                "cut at {cut}"
            );
        }
        assert_eq!(end_of(&[b"5\r\nhel"]), None);
    }

    proptest::proptest! {
        /// Any bytes, fed in any two pieces: no panic, and the same verdict (error, or the
        /// end at the same offset, or not ended) as when fed whole.
        #[test]
        fn chunked_reader_does_not_depend_on_how_bytes_arrive(
            data in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"0123456789abcdefABCDEF;\r\n x=".to_vec()),
                    proptest::num::u8::ANY,
                ],
                0..200,
            ),
            cut in 0usize..200,
        ) {
            let whole = Chunked::default().feed(&data);
            let cut = cut.min(data.len());
            let mut c = Chunked::default();
            let split = match c.feed(&data[..cut]) {
                Err(e) => Err(e),
                Ok(Some(end)) => Ok(Some(end)),
                Ok(None) => c.feed(&data[cut..]).map(|end| end.map(|e| e + cut)),
            };
            match (whole, split) {
                (Err(_), Err(_)) => {}
                (a, b) => proptest::prop_assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn chunked_trailers_and_errors() {
        let t: &[u8] = b"0\r\nx-checksum: 1\r\nx-other: 2\r\n\r\n";
        assert_eq!(end_of(&[t]), Some((0, t.len())));
        assert!(Chunked::default().feed(b"zz\r\n").is_err());
        assert!(Chunked::default().feed(b"2\r\nabc\r\n").is_err());
        assert!(Chunked::default().feed(b"fffffffffffffffff0\r\n").is_err());
    }

    #[test]
    fn numbers_and_addresses_are_written_as_display_would() {
        for n in [0u64, 7, 10, 204, 65535, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
        for ip in ["10.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "fe80::1:2"] {
            let ip: std::net::IpAddr = ip.parse().expect("ip");
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().into_bytes());
        }
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length(b"42"), Some(42));
        assert_eq!(content_length(b"+42"), None);
        assert_eq!(content_length(b""), None);
        assert_eq!(content_length(b"4 2"), None);
    }
}
