//! Response compression (BackendTrafficPolicy `compressor`), with Envoy's rules.
//!
//! The encoding is the one the client's `Accept-Encoding` prefers by q-value among the
//! configured compressors (ties go to the order the policy lists them; `*` matches any;
//! `q=0` refuses). A response is compressed only when: it has a body (not HEAD, not 1xx,
//! 204 or 304), is not already encoded, does not say `Cache-Control: no-transform`, has a
//! compressible content type, and is at least [`MIN_CONTENT_LENGTH`] bytes (or of unknown
//! length). Compressed responses lose Content-Length, gain `Vary: Accept-Encoding`, and a
//! strong ETag becomes weak.

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::body::{Body, BoxError};
use crate::headers::HeaderSource;

/// Envoy's default minimum length for compression.
pub const MIN_CONTENT_LENGTH: u64 = 30;

/// Envoy's default compressible content types.
const CONTENT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/x-javascript",
    "text/ecmascript",
    "text/js",
    "text/jscript",
    "text/x-js",
    "application/ecmascript",
    "application/x-json",
    "application/xml",
    "application/json",
    "image/svg+xml",
    "text/xml",
    "application/xhtml+xml",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Zstd,
    Brotli,
    Gzip,
}

impl Encoding {
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }

    /// From a BackendTrafficPolicy compressor `type`.
    pub fn from_policy(t: &str) -> Option<Encoding> {
        match t {
            "Zstd" => Some(Encoding::Zstd),
            "Brotli" => Some(Encoding::Brotli),
            "Gzip" => Some(Encoding::Gzip),
            _ => None,
        }
    }
}

/// Picks the encoding for a request, from the configured ones in preference order.
pub fn negotiate(
    request: &(impl HeaderSource + ?Sized),
    configured: &[Encoding],
) -> Option<Encoding> {
    if configured.is_empty() {
        return None;
    }
    let mut offers: Vec<(String, f32)> = Vec::new();
    request.any_value(&header::ACCEPT_ENCODING, &mut |v| {
        for item in v.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if token.is_empty() {
                continue;
            }
            let q = parts
                .filter_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .or_else(|| p.trim().strip_prefix("Q="))
                })
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            offers.push((token, q));
        }
        false
    });
    let q_of = |e: Encoding| -> f32 {
        offers
            .iter()
            .find(|(t, _)| t == e.token())
            .or_else(|| offers.iter().find(|(t, _)| t == "*"))
            .map_or(0.0, |(_, q)| *q)
    };
    let mut best: Option<(Encoding, f32)> = None;
    for &e in configured {
        let q = q_of(e);
        if q > 0.0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((e, q));
        }
    }
    best.map(|(e, _)| e)
}

/// Whether a response may be compressed (see the module docs).
pub fn compressible<B>(method: &Method, resp: &Response<B>) -> bool {
    compressible_head(*method == Method::HEAD, resp.status(), resp.headers())
}

/// [`compressible`] from a response's parts: whether the request was HEAD, the status, the
/// headers.
pub fn compressible_head(
    head_request: bool,
    s: StatusCode,
    h: &(impl HeaderSource + ?Sized),
) -> bool {
    if head_request
        || s.is_informational()
        || s == StatusCode::NO_CONTENT
        || s == StatusCode::NOT_MODIFIED
        || s == StatusCode::PARTIAL_CONTENT
    {
        return false;
    }
    if h.any_value(&header::CONTENT_ENCODING, &mut |v| v != "identity")
        || h.any_value(&header::CACHE_CONTROL, &mut |v| {
            v.to_ascii_lowercase().contains("no-transform")
        })
    {
        return false;
    }
    let mut ctype = None;
    h.any_value(&header::CONTENT_TYPE, &mut |v| {
        ctype = Some(
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase(),
        );
        true
    });
    if !ctype.is_some_and(|c| CONTENT_TYPES.contains(&c.as_str())) {
        return false;
    }
    let mut len = None;
    h.any_value(&header::CONTENT_LENGTH, &mut |v| {
        len = v.parse::<u64>().ok();
        true
    });
    len.is_none_or(|l| l >= MIN_CONTENT_LENGTH)
}

/// Compresses a whole body at once with a compressor kept per thread (no context set up per
/// response); `None` for encodings without one (Brotli, which streams).
pub fn one_shot(e: Encoding, body: &[u8]) -> Option<std::io::Result<Vec<u8>>> {
    use std::cell::RefCell;
    thread_local! {
        static ZSTD: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
        static DEFLATE: RefCell<Option<flate2::Compress>> = const { RefCell::new(None) };
    }
    match e {
        Encoding::Zstd => Some(ZSTD.with(|z| {
            let mut z = z.borrow_mut();
            let c = match &mut *z {
                Some(c) => c,
                None => z.insert(zstd::bulk::Compressor::new(1)?),
            };
            c.compress(body)
        })),
        Encoding::Gzip => Some(DEFLATE.with(|d| {
            let mut d = d.borrow_mut();
            let c =
                d.get_or_insert_with(|| flate2::Compress::new(flate2::Compression::fast(), false));
            c.reset();
            gzip(c, body)
        })),
        Encoding::Brotli => None,
    }
}

/// A gzip member (RFC 1952): the fixed header, raw deflate, CRC-32 and length.
fn gzip(c: &mut flate2::Compress, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() / 2 + 64);
    // No name, no time, "fast" (XFL 4), OS unknown.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255]);
    loop {
        let before = c.total_in();
        let consumed = usize::try_from(before).unwrap_or(usize::MAX);
        out.reserve(4096);
        let status = c
            .compress_vec(
                body.get(consumed..).unwrap_or_default(),
                &mut out,
                flate2::FlushCompress::Finish,
            )
            .map_err(std::io::Error::other)?;
        if status == flate2::Status::StreamEnd {
            break;
        }
    }
    let mut crc = flate2::Crc::new();
    crc.update(body);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    Ok(out)
}

/// Compresses a response body with `e`, streaming.
pub fn compress(e: Encoding, resp: Response<Body>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let stream: Body = match e {
        Encoding::Zstd => boxed(ReaderStream::new(ZstdEncoder::with_quality(
            reader,
            Level::Precise(1),
        ))),
        Encoding::Brotli => boxed(ReaderStream::new(BrotliEncoder::with_quality(
            reader,
            Level::Precise(1),
        ))),
        Encoding::Gzip => boxed(ReaderStream::new(GzipEncoder::with_quality(
            reader,
            Level::Precise(1),
        ))),
    };
    let h = &mut parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(e.token()),
    );
    let has_vary = h.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
    });
    if !has_vary {
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if let Some(etag) = h
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.starts_with("W/"))
        .map(str::to_string)
        && let Ok(v) = HeaderValue::from_str(&format!("W/{etag}"))
    {
        h.insert(header::ETAG, v);
    }
    Response::from_parts(parts, stream)
}

fn boxed<S>(s: S) -> Body
where
    S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
{
    StreamBody::new(
        s.map_ok(hyper::body::Frame::data)
            .map_err(|e| Box::new(e) as BoxError),
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(v).expect("valid"),
        );
        h
    }

    const ALL: &[Encoding] = &[Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];

    #[test]
    fn one_shot_bodies_decode_to_the_original() {
        use std::io::Read;
        let body: Vec<u8> = (0..50_000u32)
            .flat_map(|i| format!("{{\"n\":{i}}},").into_bytes())
            .collect();
        // Twice each: the kept contexts must start clean for the next response.
        for _ in 0..2 {
            let z = one_shot(Encoding::Zstd, &body)
                .expect("zstd")
                .expect("compresses");
            assert_eq!(
                zstd::bulk::decompress(&z, body.len()).expect("zstd decodes"),
                body
            );
            let g = one_shot(Encoding::Gzip, &body)
                .expect("gzip")
                .expect("compresses");
            assert!(g.len() < body.len() / 2);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&g[..])
                .read_to_end(&mut back)
                .expect("gzip decodes");
            assert_eq!(back, body);
        }
        assert!(one_shot(Encoding::Brotli, &body).is_none());
    }

    #[test]
    fn q_values_and_order() {
        assert_eq!(
            negotiate(&accept("gzip, deflate, br, zstd"), ALL),
            Some(Encoding::Zstd)
        );
        assert_eq!(
            negotiate(&accept("gzip;q=1.0, br;q=0.5"), ALL),
            Some(Encoding::Gzip)
        );
        assert_eq!(
            negotiate(&accept("br;q=0.9, gzip;q=0.8, zstd;q=0"), ALL),
            Some(Encoding::Brotli)
        );
        assert_eq!(negotiate(&accept("*"), ALL), Some(Encoding::Zstd));
        assert_eq!(
            negotiate(&accept("*;q=0.1, gzip"), ALL),
            Some(Encoding::Gzip)
        );
        assert_eq!(negotiate(&accept("identity"), ALL), None);
        assert_eq!(negotiate(&accept("gzip;q=0"), ALL), None);
        assert_eq!(negotiate(&HeaderMap::new(), ALL), None);
        assert_eq!(negotiate(&accept("zstd"), &[Encoding::Gzip]), None);
    }
}
