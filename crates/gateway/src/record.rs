//! What the gateway tells an observer about each HTTP request it answered: one
//! [`RequestRecord`] per request, handed to the [`RequestObserver`] of the [`crate::Bind`].
//!
//! The gateway does not know what a flow is (engines do not depend on each other); the binary
//! turns records into flows. The record borrows what the request's handling had already
//! computed (the host and target, the matched route and backend), and nothing is recorded at
//! all when no observer is set. The observer runs on the request's task: it must not block
//! (copy, queue, return).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::plan::{Action, Backend};

/// One request, after its response headers. It borrows what the request's handling already
/// holds; an observer copies what it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestRecord<'a> {
    /// When the request headers were read.
    pub started: SystemTime,
    /// From request headers to response headers.
    pub latency: Duration,
    pub method: &'a str,
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`, `HTTP/3`, as Hubble writes them.
    pub version: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The request host, lower case, without port.
    pub host: &'a str,
    /// Path and query as the client sent them.
    pub path_and_query: &'a str,
    pub status: u16,
    /// The client after X-Forwarded-For handling (the ClientTrafficPolicy's trusted hops).
    pub client: SocketAddr,
    /// The connection's peer (the client, or the last proxy in front of the gateway).
    pub peer: SocketAddr,
    /// The Gateway listener port the request came in on.
    pub listener_port: u16,
    /// `namespace/name` of the route that matched; `None` when none did.
    pub route: Option<&'a str>,
    /// `namespace/name:port` of the backend picked; `None` when nothing was forwarded.
    pub backend: Option<&'a str>,
    /// The endpoint that answered; `None` when the gateway answered itself.
    pub upstream: Option<SocketAddr>,
}

/// The host and target of a request as the general path keeps them until the record (one
/// string, the host's length).
pub(crate) fn target(host: &str, path_and_query: &str) -> (String, usize) {
    let mut text = String::with_capacity(host.len() + path_and_query.len());
    text.push_str(host);
    text.push_str(path_and_query);
    (text, host.len())
}

/// Receives a record per request.
pub trait RequestObserver: Send + Sync {
    fn request(&self, record: &RequestRecord<'_>);
}

impl<F: Fn(&RequestRecord<'_>) + Send + Sync> RequestObserver for F {
    fn request(&self, record: &RequestRecord<'_>) {
        self(record)
    }
}

/// A shareable observer, for [`crate::Bind`].
#[derive(Clone)]
pub struct Observer(pub Arc<dyn RequestObserver>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// What the request's handling learned, carried to the end in the response's extensions
/// (set only when an observer is present).
#[derive(Clone, Default)]
pub(crate) struct Seen {
    pub action: Option<Arc<Action>>,
    pub client: Option<SocketAddr>,
    pub backend: Option<Arc<Backend>>,
    pub upstream: Option<SocketAddr>,
}

/// The wall-clock time of a monotonic instant, without reading the wall clock per request:
/// each thread keeps an anchor pair and renews it once a second (so clock adjustments are
/// followed within a second).
pub(crate) fn wall_clock(at: std::time::Instant) -> SystemTime {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local! {
        static ANCHOR: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
    }
    ANCHOR.with(|a| {
        let (mono, wall) = match a.get() {
            Some((mono, wall))
                if at >= mono && at.duration_since(mono) < Duration::from_secs(1) =>
            {
                (mono, wall)
            }
            _ => {
                let pair = (Instant::now(), SystemTime::now());
                a.set(Some(pair));
                pair
            }
        };
        match at.checked_duration_since(mono) {
            Some(d) => wall + d,
            None => wall - mono.duration_since(at),
        }
    })
}

/// An HTTP version as Hubble writes it.
pub fn version_text(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}
