//! HTTP/1.1 to backends without hyper: raw keep-alive connections from one pool, response
//! heads parsed with httparse, bodies framed by length, chunks or the connection's end.
//!
//! The own HTTP/1 path ([`crate::h1`]) passes a response through with its framing. The
//! general path (hyper's HTTP/1 and HTTP/2 servers, HTTP/3) sends its requests without a body
//! here too ([`exchange`]): the request head is written from the task serving the request and
//! the response read back in it, where hyper's pooled client would hand each request to its
//! connection's task and the answer back. Both paths share the pool, so a connection one
//! opened serves the other.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::backend::{Backend, Keepalive, Pool, Upstream};
use crate::body::{Body, BoxError, full};
use crate::limits::{
    HEADERS_MAX, RESPONSE_HEADER_BYTES_MAX, UPSTREAM_CONNECT_TIMEOUT, UPSTREAM_READ_BYTES,
};
use crate::metrics::Metrics;

/// Turns on keep-alive probing of a connection with the given settings.
pub fn set_keepalive(stream: &TcpStream, k: &Keepalive) -> io::Result<()> {
    let params = socket2::TcpKeepalive::new()
        .with_time(k.idle)
        .with_interval(k.interval)
        .with_retries(k.probes);
    socket2::SockRef::from(stream).set_tcp_keepalive(&params)
}

/// A connection to `ep` of `backend`: a pooled one unless `fresh_only`, else a new one
/// (within the connect timeout), and whether it was pooled; why not, when it cannot be had
/// (its ejection is the caller's [`crate::backend::Tries`]').
pub(crate) async fn connect(
    pool: &Pool,
    metrics: &Metrics,
    backend: &Backend,
    ep: &Upstream,
    fresh_only: bool,
) -> Result<(TcpStream, bool), String> {
    if !fresh_only && let Some(s) = pool.take(ep.addr, backend.keepalive) {
        return Ok((s, true));
    }
    let made = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(ep.addr)).await;
    match made {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            if let Some(k) = &backend.keepalive
                && let Err(e) = set_keepalive(&s, k)
            {
                tracing::debug!(error = %e, upstream = %ep.addr, "cannot set keep-alive");
            }
            Ok((s, false))
        }
        Ok(Err(e)) => {
            metrics.upstream_connect_failures.inc();
            Err(format!("{}: {e}", ep.addr))
        }
        Err(_) => {
            metrics.upstream_connect_failures.inc();
            Err(format!("{}: connect timed out", ep.addr))
        }
    }
}

/// Reads what the socket has into `buf` (grown by `want` first). A read shorter than the
/// room it had means the socket is drained, so its readiness is cleared: the next wait goes
/// to the poller instead of costing a read that would block.
pub(crate) async fn read_some(s: &TcpStream, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
    buf.reserve(want);
    loop {
        // The socket's own reader slot, not a list of waiters: one task reads each socket.
        poll_fn(|cx| s.poll_read_ready(cx)).await?;
        let room = buf.capacity() - buf.len();
        let mut got = None;
        let r = s.try_io(Interest::READABLE, || {
            let n = s.try_read_buf(buf)?;
            got = Some(n);
            if n > 0 && n < room {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        match (r, got) {
            (Ok(n), _) | (Err(_), Some(n)) => return Ok(n),
            (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => {}
            (Err(e), None) => return Err(e),
        }
    }
}

/// Writes `a` then `b`, in one system call when the socket takes both.
pub(crate) async fn write_two(
    s: &mut (impl AsyncWrite + Unpin),
    mut a: &[u8],
    mut b: &[u8],
) -> io::Result<()> {
    while !a.is_empty() {
        let n = s
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    s.write_all(b).await
}

/// A Content-Length value: digits only.
pub(crate) fn content_length(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The comma-separated tokens of a header value, trimmed.
pub(crate) fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// How a response's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes; the client connection closes after it.
    Close,
}

/// Parses the response head at the start of `buf` into `resp`: its length, status and minor
/// version once it is whole, `None` while more bytes are needed. A head past
/// [`RESPONSE_HEADER_BYTES_MAX`] and a protocol switch (the gateway never asks for one) are
/// errors.
pub(crate) fn parse_response<'b>(
    resp: &mut httparse::Response<'_, 'b>,
    buf: &'b [u8],
) -> Result<Option<(usize, u16, u8)>, &'static str> {
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < RESPONSE_HEADER_BYTES_MAX => {
            return Ok(None);
        }
        Ok(httparse::Status::Partial) => return Err("response head too large"),
        Err(_) => return Err("malformed response head"),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err("malformed response head");
    };
    if status == 101 {
        return Err("unexpected protocol switch");
    }
    Ok(Some((len, status, version)))
}

/// How a response (not 1xx) of HTTP/1.`version` with `headers` is framed (RFC 9112, 6.3),
/// and whether its connection closes after it; an error for a response no one can frame
/// safely (two different lengths).
pub(crate) fn framing_of(
    headers: &[httparse::Header<'_>],
    version: u8,
    status: u16,
    head_request: bool,
) -> Result<(Framing, bool), &'static str> {
    let mut chunked = None;
    let mut length = None;
    let mut close = version == 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = Some(
                tokens(h.value)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
            );
        } else if h.name.eq_ignore_ascii_case("content-length") {
            match (content_length(h.value), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Err("invalid content-length in response"),
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if version == 0 && t.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::None
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(n)) => Framing::Length(n as u64),
            (None, None) => Framing::Close,
        }
    };
    Ok((framing, close || framing == Framing::Close))
}

/// Reads a chunked body as its bytes pass by (RFC 9112, 7.1): where its end is, and which
/// bytes are chunk data.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// Size of the chunk being read.
    size: u64,
    /// The trailer section's bytes, when they are kept ([`Chunked::keeping_trailers`]).
    trailers: Option<Vec<u8>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk size's hex digits.
    #[default]
    Size,
    /// After the size: extensions until CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

impl Chunked {
    /// Feeds the next bytes of the body; returns the offset just past the body's end when it
    /// is in `data`.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, &'static str> {
        self.feed_data(data, |_| {})
    }

    /// A reader that keeps the trailer section (at most [`RESPONSE_HEADER_BYTES_MAX`]) for
    /// [`Chunked::trailers`]; the own path passes trailers through with the bytes instead.
    pub(crate) fn keeping_trailers() -> Chunked {
        Chunked {
            trailers: Some(Vec::new()),
            ..Chunked::default()
        }
    }

    /// The trailer fields read, once the body has ended; framing and routing fields, which a
    /// trailer may not carry (RFC 9110, 6.5.1), are left out.
    pub(crate) fn trailers(&self) -> Result<Option<HeaderMap>, &'static str> {
        let Some(raw) = self.trailers.as_ref().filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let mut text = raw.clone();
        text.extend_from_slice(b"\r\n");
        let mut slots = [httparse::EMPTY_HEADER; HEADERS_MAX];
        match httparse::parse_headers(&text, &mut slots) {
            Ok(httparse::Status::Complete((_, fields))) => {
                let mut out = HeaderMap::new();
                for f in fields {
                    let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(f.name.as_bytes()),
                        HeaderValue::from_bytes(f.value),
                    ) else {
                        return Err("malformed trailer");
                    };
                    if !NOT_IN_TRAILERS.contains(&name.as_str()) {
                        out.append(name, value);
                    }
                }
                Ok((!out.is_empty()).then_some(out))
            }
            _ => Err("malformed trailers"),
        }
    }

    /// [`Chunked::feed`], and `data_at` is told each run of chunk data in `data`, in order.
    pub(crate) fn feed_data(
        &mut self,
        data: &[u8],
        mut data_at: impl FnMut(std::ops::Range<usize>),
    ) -> Result<Option<usize>, &'static str> {
        use ChunkState as S;
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            let expect = |want: u8, next: ChunkState, why: &'static str| {
                if b == want { Ok(next) } else { Err(why) }
            };
            match self.state {
                S::Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(d)))
                            .ok_or("chunk size too large")?;
                    }
                    None if b == b'\r' => self.state = S::SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => self.state = S::Extension,
                    None => return Err("invalid chunk size"),
                },
                S::Extension => {
                    if b == b'\r' {
                        self.state = S::SizeLf;
                    }
                }
                S::SizeLf => {
                    if b != b'\n' {
                        return Err("invalid chunk size line");
                    }
                    self.state = if self.size == 0 {
                        S::TrailerStart
                    } else {
                        S::Data
                    };
                }
                S::Data => {
                    let take = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    data_at(i..i + take);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = S::DataCr;
                    }
                    continue;
                }
                S::DataCr => self.state = expect(b'\r', S::DataLf, "chunk data too long")?,
                S::DataLf => self.state = expect(b'\n', S::Size, "chunk data too long")?,
                S::TrailerStart => {
                    self.state = if b == b'\r' { S::EndLf } else { S::TrailerLine };
                    if self.state == S::TrailerLine {
                        self.keep(b)?;
                    }
                }
                S::TrailerLine => {
                    if b == b'\r' {
                        self.state = S::TrailerLf;
                    }
                    self.keep(b)?;
                }
                S::TrailerLf => {
                    self.state = expect(b'\n', S::TrailerStart, "invalid trailer line")?;
                    self.keep(b)?;
                }
                S::EndLf => {
                    expect(b'\n', S::EndLf, "invalid end of chunked body")?;
                    return Ok(Some(i + 1));
                }
            }
            i += 1;
        }
        Ok(None)
    }

    /// Keeps a byte of the trailer section, when trailers are kept.
    fn keep(&mut self, b: u8) -> Result<(), &'static str> {
        if let Some(t) = &mut self.trailers {
            if t.len() >= RESPONSE_HEADER_BYTES_MAX {
                return Err("trailers too large");
            }
            t.push(b);
        }
        Ok(())
    }
}

/// Fields a trailer section may not carry (framing, routing, connection handling): dropped.
const NOT_IN_TRAILERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Methods whose request without a body still says so (`content-length: 0`), as hyper's
/// client writes them.
const BODY_METHODS: &[&str] = &["POST", "PUT", "PATCH"];

/// The HTTP/1.1 head of a request without a body, without its final empty line (the caller
/// may add a `host` line first): the request line, `headers` as they are (the caller made
/// them the upstream's) but for the framing ones, which only this head decides:
/// `content-length: 0` where the method expects a body or the request said a length, never
/// `transfer-encoding`. `None` for a target that is not an origin-form path (or `*`), which
/// must not reach a request line: a Lua `:path` or a rewrite can be any string. Header names
/// and values cannot hold CR, LF or NUL (`HeaderName`, `HeaderValue`).
pub(crate) fn request_head(
    method: &http::Method,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Option<RequestHead> {
    let target: http::uri::PathAndQuery = path_and_query.parse().ok()?;
    if !(target.as_str().starts_with('/')
        || (target.as_str() == "*" && method == http::Method::OPTIONS))
    {
        return None;
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut length = BODY_METHODS.contains(&method.as_str());
    for (name, value) in headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            length |= name == http::header::CONTENT_LENGTH;
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if length {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    Some(RequestHead {
        bytes: out,
        has_host: headers.contains_key(http::header::HOST),
    })
}

/// A request head from [`request_head`], without its final empty line.
pub(crate) struct RequestHead {
    bytes: Vec<u8>,
    has_host: bool,
}

/// Why one [`exchange`] failed.
pub(crate) enum Failed {
    /// No connection could be had (counted in `upstream_connect_failures`): nothing was sent.
    /// Why, with the endpoint's address.
    Connect(String),
    /// The request was sent, or may have been, and no usable response came: why.
    Broken(String),
}

/// A response head read from upstream.
struct Head {
    /// Its length in the buffer.
    len: usize,
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    close: bool,
}

/// Parses a response head at the start of `buf`, skipping 1xx ones; `None` when more bytes
/// are needed.
fn response_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, &'static str> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut resp = httparse::Response::new(&mut slots);
        let Some((len, code, version)) = parse_response(&mut resp, buf)? else {
            return Ok(None);
        };
        if (100..200).contains(&code) {
            buf.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| "malformed response status")?;
        let (framing, close) = framing_of(resp.headers, version, code, head_request)?;
        let mut headers = HeaderMap::with_capacity(resp.headers.len());
        for h in resp.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| "malformed response header name")?;
            let value =
                HeaderValue::from_bytes(h.value).map_err(|_| "malformed response header value")?;
            headers.append(name, value);
        }
        if matches!(framing, Framing::Chunked | Framing::Close) {
            // The body's length is unknown to whoever serves it on.
            headers.remove(http::header::CONTENT_LENGTH);
        }
        return Ok(Some(Head {
            len,
            status,
            headers,
            framing,
            close,
        }));
    }
}

/// One try of a request without a body to `ep`: `head` (from [`request_head`], ended here)
/// written on a pooled or new connection, the response head read, its body handed on as it comes (whole,
/// when it came with the head). A pooled connection the upstream had closed is replaced by a
/// new one when nothing came back (and, once the request may have arrived, only for an
/// `idempotent` one).
pub(crate) async fn exchange(
    pool: &Arc<Pool>,
    metrics: &Metrics,
    backend: &Backend,
    ep: &Upstream,
    head: &RequestHead,
    idempotent: bool,
    head_request: bool,
) -> Result<Response<Body>, Failed> {
    // The head ends here (written with it in one call), with a `host` of the endpoint when
    // the request had none (as hyper's client adds one: HTTP/1.1 requires it).
    let end = if head.has_host {
        b"\r\n".to_vec()
    } else {
        format!("host: {}\r\n\r\n", ep.addr).into_bytes()
    };
    let mut fresh_only = false;
    loop {
        let (mut up, reused) = connect(pool, metrics, backend, ep, fresh_only)
            .await
            .map_err(Failed::Connect)?;
        let broken = |e: &dyn std::fmt::Display| Failed::Broken(e.to_string());
        if let Err(e) = write_two(&mut up, &head.bytes, &end).await {
            if reused {
                fresh_only = true;
                continue;
            }
            return Err(broken(&e));
        }
        let mut buf = BytesMut::new();
        let parsed = loop {
            match read_some(&up, &mut buf, UPSTREAM_READ_BYTES).await {
                Ok(0) => break Err("connection closed before the response".to_string()),
                Err(e) => break Err(e.to_string()),
                Ok(_) => match response_head(&mut buf, head_request) {
                    Ok(Some(h)) => break Ok(h),
                    Ok(None) => {}
                    Err(e) => break Err(e.to_string()),
                },
            }
        };
        let h = match parsed {
            Ok(h) => h,
            Err(_) if reused && buf.is_empty() && idempotent => {
                // Closed while the request was on its way: safe to send again.
                fresh_only = true;
                continue;
            }
            Err(why) => return Err(broken(&why)),
        };
        buf.advance(h.len);
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = h.status;
        *resp.headers_mut() = h.headers;
        let reader = BodyReader {
            up: Some(up),
            buf,
            framing: h.framing,
            left: match h.framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunks: Chunked::keeping_trailers(),
            reuse: !h.close,
            trailers: None,
            pool: pool.clone(),
            addr: ep.addr,
            keepalive: backend.keepalive,
        };
        *resp.body_mut() = reader.into_body();
        return Ok(resp);
    }
}

/// A response body read from its connection, which goes back to the pool at the body's end
/// when nothing came after it and the response allowed it.
struct BodyReader {
    /// `None` once the body has ended.
    up: Option<TcpStream>,
    /// Bytes read and not handed on yet.
    buf: BytesMut,
    framing: Framing,
    /// For a length: how much is left to hand on.
    left: u64,
    chunks: Chunked,
    reuse: bool,
    pool: Arc<Pool>,
    addr: SocketAddr,
    keepalive: Option<Keepalive>,
    /// A chunked body's trailers, handed on after its data.
    trailers: Option<HeaderMap>,
}

impl BodyReader {
    /// The body: whole when it is all in hand already (the common small response), else a
    /// stream, with a chunked body's trailers after its data.
    fn into_body(mut self) -> Body {
        let mut first = Vec::new();
        match self.step(&mut first) {
            Ok(true) if self.trailers.is_none() => full(concat(first)),
            Ok(ended) => {
                let first = concat(first);
                let head = (!first.is_empty()).then_some(Ok(Frame::data(first)));
                let rest =
                    futures_util::stream::unfold((self, ended), |(mut r, ended)| async move {
                        if ended {
                            return r
                                .trailers
                                .take()
                                .map(|t| (Ok(Frame::trailers(t)), (r, true)));
                        }
                        match r.next_data().await {
                            Ok(Some(b)) => Some((Ok(Frame::data(b)), (r, false))),
                            Ok(None) => r
                                .trailers
                                .take()
                                .map(|t| (Ok(Frame::trailers(t)), (r, true))),
                            Err(e) => {
                                r.up = None;
                                Some((Err(e), (r, true)))
                            }
                        }
                    });
                BodyExt::boxed(StreamBody::new(futures_util::StreamExt::chain(
                    futures_util::stream::iter(head),
                    rest,
                )))
            }
            Err(e) => {
                let fail = futures_util::stream::iter([Err::<Frame<Bytes>, BoxError>(e)]);
                BodyExt::boxed(StreamBody::new(fail))
            }
        }
    }

    /// Hands on (into `out`) the body bytes in `buf`; true when the body has ended, and its
    /// connection is then back in the pool or closed (and a chunked body's trailers taken).
    fn step(&mut self, out: &mut Vec<Bytes>) -> Result<bool, BoxError> {
        let ended = match self.framing {
            Framing::None => true,
            Framing::Length(_) => {
                let take = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                if take > 0 {
                    out.push(self.buf.split_to(take).freeze());
                }
                self.left -= take as u64;
                self.left == 0
            }
            Framing::Chunked => {
                let mut runs = Vec::new();
                let end = self
                    .chunks
                    .feed_data(&self.buf, |r| runs.push(r))
                    .map_err(BoxError::from)?;
                let all = self.buf.split_to(end.unwrap_or(self.buf.len())).freeze();
                out.extend(runs.into_iter().map(|r| all.slice(r)));
                if end.is_some() {
                    self.trailers = self.chunks.trailers().map_err(BoxError::from)?;
                }
                end.is_some()
            }
            Framing::Close => {
                if !self.buf.is_empty() {
                    out.push(self.buf.split().freeze());
                }
                false
            }
        };
        if ended && let Some(up) = self.up.take() {
            // Bytes past the end: the connection is not in a known state.
            if self.reuse && self.buf.is_empty() {
                self.pool.put(self.addr, self.keepalive, up);
            }
        }
        Ok(ended)
    }

    /// The next data of the body, or `None` at its end.
    async fn next_data(&mut self) -> Result<Option<Bytes>, BoxError> {
        loop {
            let Some(up) = &self.up else { return Ok(None) };
            let want = match self.framing {
                Framing::Length(n) => usize::try_from(n).unwrap_or(usize::MAX).min(64 * 1024) + 1,
                _ => 64 * 1024,
            };
            let got = read_some(up, &mut self.buf, want).await?;
            if got == 0 {
                self.up = None;
                return match self.framing {
                    Framing::Close => Ok(None),
                    _ => Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                };
            }
            let mut out = Vec::new();
            let ended = self.step(&mut out)?;
            if !out.is_empty() {
                return Ok(Some(concat(out)));
            }
            if ended {
                return Ok(None);
            }
        }
    }
}

/// The pieces as one buffer (no copy for one piece).
fn concat(mut parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => parts.concat().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any body, chunked any way (sizes, extensions, trailers) and read in any pieces:
        /// the data runs the reader names are the body, and the end is found where it is.
        #[test]
        fn chunked_data_runs_are_the_body(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            sizes in proptest::collection::vec(1usize..40, 1..20),
            cuts in proptest::collection::vec(0usize..400, 0..6),
            extension in proptest::bool::ANY,
            trailer in proptest::bool::ANY,
        ) {
            let mut encoded = Vec::new();
            let mut rest = &body[..];
            for n in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*n).min(rest.len());
                let ext = if extension { ";a=b" } else { "" };
                encoded.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                encoded.extend_from_slice(&rest[..n]);
                encoded.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            encoded.extend_from_slice(b"0\r\n");
            if trailer {
                encoded.extend_from_slice(b"x-sum: 1\r\n");
            }
            encoded.extend_from_slice(b"\r\n");
            let total = encoded.len();
            encoded.extend_from_slice(b"NEXT");
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(encoded.len())).collect();
            cuts.sort_unstable();
            cuts.push(encoded.len());
            let mut reader = Chunked::keeping_trailers();
            let (mut data, mut start, mut end) = (Vec::new(), 0, None);
            for cut in cuts {
                if end.is_some() {
                    break;
                }
                let piece = &encoded[start..cut];
                let found = reader
                    .feed_data(piece, |r| data.extend_from_slice(&piece[r]))
                    .expect("a valid chunked body");
                end = found.map(|e| start + e);
                start = cut;
            }
            proptest::prop_assert_eq!(end, Some(total));
            proptest::prop_assert_eq!(data, body);
            let trailers = reader.trailers().expect("well-formed trailers");
            proptest::prop_assert_eq!(
                trailers.and_then(|t| t.get("x-sum").cloned()),
                trailer.then(|| HeaderValue::from_static("1"))
            );
        }
    }

    #[test]
    fn a_request_head_keeps_its_framing_and_refuses_what_is_not_a_path() {
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, HeaderValue::from_static("a.example"));
        h.insert(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let head = request_head(&http::Method::GET, "/p?q=1", &h).expect("a path");
        let text = String::from_utf8(head.bytes).expect("text");
        assert_eq!(
            text,
            "GET /p?q=1 HTTP/1.1\r\nhost: a.example\r\ncontent-length: 0\r\n"
        );
        assert!(head.has_host);
        let post = request_head(&http::Method::POST, "/", &HeaderMap::new()).expect("a path");
        assert!(post.bytes.ends_with(b"content-length: 0\r\n") && !post.has_host);
        for bad in [
            "/x HTTP/1.1\r\nhost: a",
            "/a b",
            "relative",
            "",
            "http://a/",
        ] {
            assert!(
                request_head(&http::Method::GET, bad, &h).is_none(),
                "{bad:?}"
            );
        }
        assert!(request_head(&http::Method::OPTIONS, "*", &h).is_some());
        assert!(request_head(&http::Method::GET, "*", &h).is_none());
    }
}
