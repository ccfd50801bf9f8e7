//! Forwarding names outside every zone to upstream servers, with a cache.
//!
//! - Upstreams: a list, or the `nameserver` lines of a resolv.conf (CoreDNS's
//!   `forward . /etc/resolv.conf`). Tried in order; a failed or timed-out one is skipped.
//! - Each query goes out from a fresh socket (a random source port) with a random ID, and an
//!   answer counts only when its ID and question match. A truncated answer is asked again
//!   over TCP.
//! - Cache: positive answers for their smallest TTL, negative ones (NXDOMAIN, NODATA) for the
//!   SOA minimum, both capped by [`CACHE_TTL_MAX`]; [`CACHE_ENTRIES_MAX`] entries; an entry
//!   asked for again in the last tenth of its life is refreshed in the background (prefetch,
//!   one of the `max_concurrent` places while it is asked);
//! - Serve-stale (RFC 8767): when no upstream answers, or the one that does answers SERVFAIL
//!   or REFUSED, an entry whose TTL ran out at most [`STALE_MAX`] ago (or the window given to
//!   [`Forwarder::with_stale_max`]) is served with its TTLs set to [`STALE_TTL`] and counted
//!   (`coredns_cache_served_stale_total`); beyond the window the answer is SERVFAIL.
//! - Loops: an upstream that is this server's own address is refused at start-up.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub const CACHE_ENTRIES_MAX: usize = 10_000;
pub const CACHE_TTL_MAX: Duration = Duration::from_secs(3600);
/// How long after its TTL ran out a cached answer may still be served stale (RFC 8767
/// suggests one to three days).
pub const STALE_MAX: Duration = Duration::from_secs(86_400);
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries asked of the upstreams at once (CoreDNS forward's `max_concurrent`, whose default
/// this is); more are answered REFUSED at once, as CoreDNS does, and counted.
pub const FORWARD_CONCURRENT_MAX: usize = 1000;
/// TTL given to an answer served stale (RFC 8767's recommended 30 s): what marks it stale.
pub const STALE_TTL: u32 = 30;

/// Why forwarding could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream servers (give --forward ADDR or a resolv.conf with nameserver lines)")]
    NoUpstreams,
    #[error("upstream {0} is this server itself: queries would loop")]
    Loop(SocketAddr),
    #[error("cannot read {0}: {1}")]
    ResolvConf(String, std::io::Error),
}

/// The `nameserver` addresses of a resolv.conf, on port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

struct Entry {
    response: Message,
    stored: Instant,
    ttl: Duration,
    refreshing: bool,
}

/// A forwarder with its cache.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<(String, RecordType), Entry>>,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    /// One permit per query being asked of the upstreams.
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// How long past its TTL an entry may be served stale.
    stale_max: Duration,
}

/// A query's place among those asked of the upstreams at once ([`Forwarder::slot`]).
pub type Slot = tokio::sync::OwnedSemaphorePermit;

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

/// A random 16-bit number (query IDs, ICMP echo identifiers).
pub fn random_u16() -> u16 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (h.finish() & 0xffff) as u16
}

/// Seconds an answer may be cached for.
fn cache_ttl(m: &Message) -> Duration {
    let ttl = if m.answers.is_empty() {
        m.authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                _ => None,
            })
            .unwrap_or(0)
    } else {
        m.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
    };
    Duration::from_secs(u64::from(ttl)).min(CACHE_TTL_MAX)
}

impl Forwarder {
    /// `own` is the address this server answers on, to refuse forwarding to itself.
    pub fn new(
        upstreams: Vec<SocketAddr>,
        own: Option<SocketAddr>,
    ) -> Result<Forwarder, ForwardError> {
        if upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        if let Some(own) = own
            && let Some(u) = upstreams.iter().find(|u| {
                **u == own
                    || (u.port() == own.port()
                        && (u.ip().is_loopback() || u.ip().is_unspecified())
                        && own.ip().is_unspecified())
            })
        {
            return Err(ForwardError::Loop(*u));
        }
        Ok(Forwarder {
            upstreams,
            cache: Mutex::new(HashMap::new()),
            metrics: None,
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(FORWARD_CONCURRENT_MAX)),
            stale_max: STALE_MAX,
        })
    }

    /// At most `n` queries asked of the upstreams at once (instead of
    /// [`FORWARD_CONCURRENT_MAX`]).
    pub fn with_max_concurrent(mut self, n: usize) -> Forwarder {
        self.slots = std::sync::Arc::new(tokio::sync::Semaphore::new(n));
        self
    }

    /// Serves an expired entry for at most `window` past its TTL (instead of [`STALE_MAX`]);
    /// `Duration::ZERO` turns serve-stale off.
    pub fn with_stale_max(mut self, window: Duration) -> Forwarder {
        self.stale_max = window;
        self
    }

    /// A place for one more query to the upstreams, or `None` (counted) when
    /// `max_concurrent` are under way: the query is then answered with [`Forwarder::refused`].
    pub fn slot(&self) -> Option<Slot> {
        let slot = self.slots.clone().try_acquire_owned().ok();
        if slot.is_none()
            && let Some(m) = &self.metrics
        {
            m.forward_max_concurrent_rejects.inc();
        }
        slot
    }

    /// The answer to a query refused for want of a [`Slot`].
    pub fn refused(req: &Message) -> Message {
        let mut out = reply_to(req);
        out.metadata.response_code = ResponseCode::Refused;
        out
    }

    /// Counts cache hits and misses and upstream latency in `m`.
    pub fn with_metrics(mut self, m: std::sync::Arc<crate::metrics::Metrics>) -> Forwarder {
        self.metrics = Some(m);
        self
    }

    /// Answers a query that no zone holds: from the cache, else from an upstream, else stale.
    /// The answer from the cache when it holds a fresh one (counted as a hit; a popular name
    /// close to expiry is refreshed in the background). Needs the runtime.
    pub fn from_cache(self: &std::sync::Arc<Self>, req: &Message) -> Option<Message> {
        let q = req.queries.first()?;
        let key = (q.name().to_lowercase().to_ascii(), q.query_type());
        let now = Instant::now();
        let (fresh, prefetch) = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let e = cache
                .get_mut(&key)
                .filter(|e| now.duration_since(e.stored) < e.ttl)?;
            let left = e.ttl - now.duration_since(e.stored);
            // A prefetch is a query to the upstreams like any other: it needs a place among
            // the `max_concurrent`, and is left out (not counted) when there is none.
            let prefetch = (left < e.ttl / 10 && !e.refreshing)
                .then(|| self.slots.clone().try_acquire_owned().ok())
                .flatten();
            if prefetch.is_some() {
                e.refreshing = true;
            }
            (aged(&e.response, now.duration_since(e.stored)), prefetch)
        };
        if let Some(m) = &self.metrics {
            m.cache_hits.inc();
        }
        if let Some(slot) = prefetch {
            let me = self.clone();
            let q = q.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let _ = me.ask_upstreams(&q).await;
            });
        }
        Some(finish(reply_to(req), fresh))
    }

    pub async fn resolve(self: &std::sync::Arc<Self>, req: &Message) -> Message {
        if let Some(r) = self.from_cache(req) {
            return r;
        }
        match self.slot() {
            Some(slot) => self.resolve_missed(req, slot).await,
            None => Forwarder::refused(req),
        }
    }

    /// [`Forwarder::resolve`] for a query [`Forwarder::from_cache`] just did not answer:
    /// asks the upstreams (a stale cached answer when none answers) without looking again,
    /// holding its `slot` until then.
    pub async fn resolve_missed(&self, req: &Message, _slot: Slot) -> Message {
        let mut out = reply_to(req);
        let Some(q) = req.queries.first() else {
            out.metadata.response_code = ResponseCode::FormErr;
            return out;
        };
        if let Some(m) = &self.metrics {
            m.cache_misses.inc();
        }
        let key = (q.name().to_lowercase().to_ascii(), q.query_type());
        let now = Instant::now();
        let answer = self.ask_upstreams(q).await;
        // An upstream that answers SERVFAIL or REFUSED (a resolver whose authorities are
        // gone) has failed as much as one that does not answer (RFC 8767, section 5).
        let failed = answer.as_ref().is_none_or(|r| {
            matches!(
                r.metadata.response_code,
                ResponseCode::ServFail | ResponseCode::Refused
            )
        });
        if failed && let Some(stale) = self.stale(&key, now) {
            if let Some(m) = &self.metrics {
                m.cache_served_stale.inc();
            }
            return finish(out, stale);
        }
        match answer {
            Some(r) => finish(out, r),
            None => {
                out.metadata.response_code = ResponseCode::ServFail;
                out
            }
        }
    }

    /// The cached answer for `key` when its TTL ran out less than `stale_max` before `now`,
    /// with every TTL set to [`STALE_TTL`].
    fn stale(&self, key: &(String, RecordType), now: Instant) -> Option<Message> {
        let mut r = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(key)
                .filter(|e| now.duration_since(e.stored) < e.ttl + self.stale_max)
                .map(|e| e.response.clone())?
        };
        for rec in r.answers.iter_mut().chain(r.authorities.iter_mut()) {
            rec.ttl = STALE_TTL;
        }
        Some(r)
    }

    /// Asks the upstreams in order; caches and returns the first answer.
    async fn ask_upstreams(&self, q: &Query) -> Option<Message> {
        for u in &self.upstreams {
            let started = Instant::now();
            let answer = ask(*u, q).await;
            if let Some(m) = &self.metrics {
                m.observe_forward(started.elapsed());
            }
            if let Some(r) = answer {
                let key = (q.name().to_lowercase().to_ascii(), q.query_type());
                let ttl = cache_ttl(&r);
                if r.metadata.response_code == ResponseCode::NoError
                    || r.metadata.response_code == ResponseCode::NXDomain
                {
                    let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.len() >= CACHE_ENTRIES_MAX {
                        // Drop the entry closest to expiry to make room.
                        let now = Instant::now();
                        if let Some(k) = cache
                            .iter()
                            .min_by_key(|(_, e)| (e.stored + e.ttl).saturating_duration_since(now))
                            .map(|(k, _)| k.clone())
                        {
                            cache.remove(&k);
                        }
                    }
                    cache.insert(
                        key,
                        Entry {
                            response: r.clone(),
                            stored: Instant::now(),
                            ttl,
                            refreshing: false,
                        },
                    );
                }
                return Some(r);
            }
        }
        None
    }

    /// Number of cached answers.
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// The cached answer with TTLs lowered by its age.
fn aged(r: &Message, age: Duration) -> Message {
    let mut r = r.clone();
    let age = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
    for rec in r.answers.iter_mut().chain(r.authorities.iter_mut()) {
        rec.ttl = rec.ttl.saturating_sub(age);
    }
    r
}

/// The response header and question for `req`.
fn reply_to(req: &Message) -> Message {
    let mut out = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    out.metadata.recursion_desired = req.metadata.recursion_desired;
    out.metadata.recursion_available = true;
    out.queries = req.queries.clone();
    out
}

fn finish(mut out: Message, upstream: Message) -> Message {
    out.metadata.response_code = upstream.metadata.response_code;
    out.answers = upstream.answers;
    out.authorities = upstream.authorities;
    out.additionals = upstream.additionals;
    out
}

/// The upstream's answer in `bytes` when it answers query `id` for `q`; anything else is
/// ignored (spoofing, stragglers).
fn upstream_answer(bytes: &[u8], id: u16, q: &Query) -> Option<Message> {
    Message::from_vec(bytes).ok().filter(|r| {
        r.metadata.id == id
            && r.metadata.message_type == MessageType::Response
            && r.queries.first() == Some(q)
    })
}

/// What the forwarder makes of an upstream's answer `bytes` to `req`, sent upstream as query
/// `id`: how long it would be cached, and the response a client gets from the cache `age`
/// later; `None` when the answer is ignored. (Public for the fuzz targets only.)
#[doc(hidden)]
pub fn from_upstream(
    req: &Message,
    id: u16,
    bytes: &[u8],
    age: Duration,
) -> Option<(Duration, Message)> {
    let r = upstream_answer(bytes, id, req.queries.first()?)?;
    Some((cache_ttl(&r), finish(reply_to(req), aged(&r, age))))
}

/// One query to one upstream: UDP from a fresh socket, TCP when truncated; `None` when no
/// answer came within [`UPSTREAM_TIMEOUT`] per step.
async fn ask(upstream: SocketAddr, q: &Query) -> Option<Message> {
    exchange(upstream, q, Transport::Udp, UPSTREAM_TIMEOUT)
        .await
        .ok()
}

/// How [`exchange`] reaches the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP, then TCP when the answer is truncated.
    Udp,
    /// TCP only.
    Tcp,
}

/// Why [`exchange`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("query {0}: {1}")]
    Encode(String, String),
    #[error("{0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("{0}: no answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("{0}: the answer over TCP is not an answer to the query")]
    Mismatch(SocketAddr),
}

/// One query (recursion desired, a random ID, from a fresh socket) to `upstream`. An answer
/// counts only when its ID and question match; over UDP anything else is skipped until the
/// step's `timeout` ends. Each step (UDP wait, TCP connect, TCP reads) gets `timeout`.
pub async fn exchange(
    upstream: SocketAddr,
    q: &Query,
    transport: Transport,
    timeout: Duration,
) -> Result<Message, ExchangeError> {
    let id = random_u16();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries.push(q.clone());
    let bytes = m
        .to_vec()
        .map_err(|e| ExchangeError::Encode(q.name().to_ascii(), e.to_string()))?;
    let io = |e| ExchangeError::Io(upstream, e);
    let timed_out = |_| ExchangeError::Timeout(upstream, timeout);
    if transport == Transport::Udp {
        let bind: SocketAddr = if upstream.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let sock = UdpSocket::bind(bind).await.map_err(io)?;
        sock.connect(upstream).await.map_err(io)?;
        sock.send(&bytes).await.map_err(io)?;
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + timeout;
        let r = loop {
            let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
                .await
                .map_err(timed_out)?
                .map_err(io)?;
            if let Some(r) = upstream_answer(&buf[..n], id, q) {
                break r;
            }
        };
        if !r.metadata.truncation {
            return Ok(r);
        }
    }
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(upstream))
        .await
        .map_err(timed_out)?
        .map_err(io)?;
    let mut framed = u16::try_from(bytes.len())
        .map_err(|_| ExchangeError::Encode(q.name().to_ascii(), "longer than 65535".into()))?
        .to_be_bytes()
        .to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await.map_err(io)?;
    let mut len = [0u8; 2];
    tokio::time::timeout(timeout, stream.read_exact(&mut len))
        .await
        .map_err(timed_out)?
        .map_err(io)?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tokio::time::timeout(timeout, stream.read_exact(&mut body))
        .await
        .map_err(timed_out)?
        .map_err(io)?;
    upstream_answer(&body, id, q).ok_or(ExchangeError::Mismatch(upstream))
}

/// The A records `upstream` answers for `name`: one query as [`exchange`] sends it (UDP, TCP
/// when truncated). For tools that measure a server.
pub async fn lookup_a(
    upstream: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<std::net::Ipv4Addr>, ExchangeError> {
    let mut n = hickory_proto::rr::Name::from_ascii(name)
        .map_err(|e| ExchangeError::Encode(name.to_string(), e.to_string()))?;
    // A name given without its final dot is still absolute.
    n.set_fqdn(true);
    let m = exchange(
        upstream,
        &Query::query(n, RecordType::A),
        Transport::Udp,
        timeout,
    )
    .await?;
    Ok(m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let t = "# comment\nnameserver 10.0.0.1\nsearch x\nnameserver ::1\nnameserver bogus\n";
        assert_eq!(
            parse_resolv_conf(t),
            vec![
                "10.0.0.1:53".parse::<SocketAddr>().expect("a"),
                "[::1]:53".parse().expect("b")
            ]
        );
    }

    #[test]
    fn loops_and_empty_lists_are_refused() {
        let own: SocketAddr = "127.0.0.1:5353".parse().expect("addr");
        assert!(matches!(
            Forwarder::new(vec![own], Some(own)),
            Err(ForwardError::Loop(_))
        ));
        assert!(matches!(
            Forwarder::new(Vec::new(), None),
            Err(ForwardError::NoUpstreams)
        ));
        assert!(Forwarder::new(vec!["127.0.0.1:53".parse().expect("addr")], Some(own)).is_ok());
    }
}
