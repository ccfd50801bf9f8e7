//! Backends at run time: endpoints with their passive-ejection state (kept beside the plan,
//! so that a reload does not forget that an endpoint is down), the order endpoints are
//! tried in, weighted choice among a rule's backends, the retry policy and keep-alive
//! settings. Both HTTP paths, the TCP and the UDP proxies use these.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use model::validate::parse_duration;
use tokio::net::TcpStream;

use crate::limits::{
    CONNECT_ATTEMPTS_MAX, EJECT_MS, POOL_IDLE_PER_HOST_MAX, UPSTREAM_POOL_IDLE_TIMEOUT,
};

/// TCP keep-alive probing of a connection (Envoy Gateway's `tcpKeepalive`). A field the policy
/// leaves out takes Envoy Gateway's default, which is Linux's: 7200 s idle, 75 s apart, 9
/// probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub probes: u32,
}

impl Keepalive {
    pub fn from_policy(k: &model::kinds::envoy::TcpKeepalive) -> Keepalive {
        let duration = |v: &Option<String>, default: u64| {
            v.as_deref()
                .and_then(|v| parse_duration(v).ok())
                // The kernel takes whole seconds, at least one.
                .map(|d| d.max(Duration::from_secs(1)))
                .unwrap_or(Duration::from_secs(default))
        };
        Keepalive {
            idle: duration(&k.idle_time, 7200),
            interval: duration(&k.interval, 75),
            probes: k.probes.unwrap_or(9).max(1),
        }
    }
}

/// One upstream endpoint, with its passive-ejection state (kept until the next plan).
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// Milliseconds (of [`now_ms`]) until which the endpoint is skipped. Runtime state beside
    /// the plan: shared by every plan's `Upstream` of the same address ([`ejection_of`]), so
    /// that a reload does not forget that an endpoint is down.
    ejected_until_ms: std::sync::Arc<AtomicU64>,
}

/// The ejection deadline of an address, one per address in the process while any plan
/// holds it.
fn ejection_of(addr: SocketAddr) -> std::sync::Arc<AtomicU64> {
    use std::sync::{Arc, LazyLock, Mutex, Weak};
    static ALL: LazyLock<Mutex<BTreeMap<SocketAddr, Weak<AtomicU64>>>> =
        LazyLock::new(Default::default);
    let mut all = ALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = all.get(&addr).and_then(Weak::upgrade) {
        return a;
    }
    if all.len() > 4096 {
        all.retain(|_, w| w.strong_count() > 0);
    }
    let a = Arc::new(AtomicU64::new(0));
    all.insert(addr, Arc::downgrade(&a));
    a
}

impl Upstream {
    pub fn new(addr: SocketAddr) -> Upstream {
        Upstream {
            addr,
            ejected_until_ms: ejection_of(addr),
        }
    }
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }
    pub fn eject(&self, until_ms: u64) {
        self.ejected_until_ms.store(until_ms, Ordering::Relaxed);
    }
}

/// Milliseconds since the process started (a monotonic clock for ejection deadlines).
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// A retry policy (BackendTrafficPolicy `retry`), with Envoy Gateway's defaults.
#[derive(Clone, Debug)]
pub struct Retry {
    pub num_retries: u32,
    pub reset: bool,
    pub connect_failure: bool,
    pub five_xx: bool,
    pub gateway_error: bool,
    pub status_codes: Vec<u16>,
    pub base: Duration,
    pub max: Duration,
    pub per_try: Option<Duration>,
}

impl Retry {
    /// Whether a response status asks for another try.
    pub fn on_status(&self, code: u16) -> bool {
        (self.five_xx && code >= 500)
            || (self.gateway_error && matches!(code, 502..=504))
            || self.status_codes.contains(&code)
    }

    /// Exponential backoff from `base`, capped at `max`, with jitter.
    pub fn backoff(&self, attempt: usize) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(16));
        let cap = exp.min(self.max);
        // Jitter: a cheap hash of the attempt and the clock, within [cap/2, cap].
        let nanos = u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        );
        let half = cap / 2;
        half + Duration::from_nanos(nanos % u64::try_from(half.as_nanos()).unwrap_or(1).max(1))
    }
}

/// A backend of a rule: its endpoints, or why it cannot be used.
#[derive(Debug)]
pub struct Backend {
    /// `namespace/name:port`.
    pub name: String,
    pub endpoints: Vec<Upstream>,
    /// Set when the reference does not resolve: requests picked for it get a 500.
    pub invalid: Option<String>,
    /// Keep-alive probing of upstream connections (the route's BackendTrafficPolicy
    /// `tcpKeepalive`).
    pub keepalive: Option<Keepalive>,
    /// This backend's own round-robin turn: apart from the counter that picks among a rule's
    /// backends, so that the two never move in step (with one shared counter advanced twice
    /// per request, a backend with an even number of endpoints always started at the same
    /// ones).
    pub turn: AtomicU64,
}

impl Backend {
    /// [`Backend::try_order`] at this backend's next turn.
    pub fn next_order(&self) -> Vec<usize> {
        self.try_order(self.turn.fetch_add(1, Ordering::Relaxed))
    }

    /// Indices of the endpoints to try, in turn from `seq` (which spreads requests), skipping
    /// ejected ones; all of them when every one is ejected (trying beats failing untried).
    pub fn try_order(&self, seq: u64) -> Vec<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return Vec::new();
        }
        let start = usize::try_from(seq).unwrap_or(0) % n;
        // No clock read while no endpoint was ever ejected (the common case).
        let ever_ejected = self
            .endpoints
            .iter()
            .any(|e| e.ejected_until_ms.load(Ordering::Relaxed) != 0);
        let now = if ever_ejected { now_ms() } else { 0 };
        let turn = (0..n).map(|i| (start + i) % n);
        let order: Vec<usize> = turn
            .clone()
            .filter(|&i| !self.endpoints[i].is_ejected(now))
            .collect();
        if order.is_empty() {
            turn.collect()
        } else {
            order
        }
    }
}

/// Whether a request method may be sent again (RFC 9110's idempotent methods).
pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

/// Picks a backend by weight; `seq` spreads picks evenly and deterministically.
pub(crate) fn pick_weighted(backends: &[(u32, Arc<Backend>)], seq: u64) -> Option<&Arc<Backend>> {
    let total: u64 = backends.iter().map(|(w, _)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    // A multiplicative hash of the sequence number: even over any window, no shared RNG.
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    let mut r = x % total;
    for (w, b) in backends {
        let w = u64::from(*w);
        if r < w {
            return Some(b);
        }
        r -= w;
    }
    None
}

/// Idle upstream connections by endpoint and keep-alive setting.
#[derive(Default)]
pub(crate) struct Pool(std::sync::Mutex<PoolMap>);

/// Idle connections by endpoint and keep-alive settings, each with when it went idle, oldest
/// first.
type PoolMap = BTreeMap<(SocketAddr, Option<Keepalive>), Vec<(TcpStream, std::time::Instant)>>;

impl Pool {
    /// An idle connection to `addr` that is still usable, if any.
    pub(crate) fn take(&self, addr: SocketAddr, keepalive: Option<Keepalive>) -> Option<TcpStream> {
        let mut map = self.0.lock().ok()?;
        let idle = map.get_mut(&(addr, keepalive))?;
        while let Some((s, since)) = idle.pop() {
            if since.elapsed() > UPSTREAM_POOL_IDLE_TIMEOUT {
                // Everything below is older still.
                idle.clear();
                return None;
            }
            // Readable while idle means the upstream closed it (or sent garbage). (A noop
            // waker: the next real wait replaces it.)
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match s.poll_read_ready(&mut cx) {
                std::task::Poll::Pending => return Some(s),
                // The readiness may be left from a read that filled its buffer exactly:
                // look (and clear it) before giving up on the connection.
                std::task::Poll::Ready(Ok(())) => match s.try_read(&mut [0u8; 1]) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(s),
                    _ => {}
                },
                std::task::Poll::Ready(Err(_)) => {}
            }
        }
        None
    }

    /// Keeps `s`, idle from now, for the next request to `addr`.
    pub(crate) fn put(&self, addr: SocketAddr, keepalive: Option<Keepalive>, s: TcpStream) {
        let now = std::time::Instant::now();
        if let Ok(mut map) = self.0.lock() {
            let idle = map.entry((addr, keepalive)).or_default();
            // Connections idle past the timeout are closed (the newest are used first, so
            // the oldest would otherwise stay open as long as traffic goes on).
            let expired = idle
                .iter()
                .take_while(|(_, since)| {
                    now.saturating_duration_since(*since) > UPSTREAM_POOL_IDLE_TIMEOUT
                })
                .count();
            idle.drain(..expired);
            if idle.len() < POOL_IDLE_PER_HOST_MAX {
                idle.push((s, now));
            }
        }
    }
}

/// What became of one try of a request upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No connection to the endpoint: nothing was sent.
    ConnectFailed,
    /// Sent, but the connection failed before a whole response head came back.
    Reset,
    /// A response head with this status came back.
    Status(u16),
}

/// What to do after a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Try again (on [`Tries::endpoint`]), after `backoff` when there is one; `counted` when
    /// it is one of the retry policy's retries.
    Again {
        backoff: Option<Duration>,
        counted: bool,
    },
    /// Stop: pass the response on, or answer the failure.
    Stop,
}

/// The tries of one request: which endpoint next, and after each outcome whether to try
/// again. Without I/O (the ejection of an endpoint that refused is an atomic store beside the
/// plan): both HTTP paths drive their upstream I/O with it, so they retry, fail over and back
/// off alike.
///
/// An endpoint that refuses a connection is ejected for [`EJECT_MS`] and the next one is
/// tried at once (nothing was sent, so this is always safe), up to
/// [`CONNECT_ATTEMPTS_MAX`] endpoints; after that, a retry policy with `connect-failure`
/// starts another round, after its backoff. A reset or a status the policy names is tried
/// again only when the request may be sent again (an idempotent method, a body that can be
/// replayed) and the policy has retries left.
pub struct Tries<'a> {
    backend: &'a Backend,
    order: Vec<usize>,
    retry: Option<&'a Retry>,
    /// The request may be sent twice (idempotent, its body replayable).
    resendable: bool,
    retries_left: u32,
    /// Connect failures since the last round began.
    refused: usize,
    /// Tries so far (the index of the endpoint of the next).
    tries: usize,
    /// Policy retries so far (for the backoff).
    retried: usize,
}

impl<'a> Tries<'a> {
    pub fn new(backend: &'a Backend, retry: Option<&'a Retry>, resendable: bool) -> Tries<'a> {
        Tries {
            order: backend.next_order(),
            backend,
            retry,
            resendable,
            retries_left: retry.map_or(0, |r| r.num_retries),
            refused: 0,
            tries: 0,
            retried: 0,
        }
    }

    /// The endpoint of the next try; `None` when the backend has none.
    pub fn endpoint(&self) -> Option<&'a Upstream> {
        let i = *self.order.get(self.tries % self.order.len().max(1))?;
        self.backend.endpoints.get(i)
    }

    /// Whether another try could follow this one at all (so that the request is kept).
    pub fn may_try_again(&self) -> bool {
        self.order.len() > 1 || self.retry.is_some()
    }

    /// Takes the outcome of the try on [`Tries::endpoint`]; says what comes next.
    pub fn after(&mut self, outcome: Outcome) -> Next {
        let ep = self.endpoint();
        self.tries += 1;
        let policy = |f: fn(&Retry) -> bool| self.retry.is_some_and(f);
        match outcome {
            Outcome::ConnectFailed => {
                if let Some(ep) = ep {
                    ep.eject(now_ms() + EJECT_MS);
                }
                self.refused += 1;
                if self.refused < CONNECT_ATTEMPTS_MAX.min(self.order.len()) {
                    return Next::Again {
                        backoff: None,
                        counted: false,
                    };
                }
                if policy(|r| r.connect_failure) && self.retries_left > 0 {
                    self.refused = 0;
                    return self.retry_counted();
                }
                Next::Stop
            }
            Outcome::Reset if policy(|r| r.reset) && self.resendable && self.retries_left > 0 => {
                self.retry_counted()
            }
            Outcome::Status(code)
                if self.retry.is_some_and(|r| r.on_status(code))
                    && self.resendable
                    && self.retries_left > 0 =>
            {
                self.retry_counted()
            }
            Outcome::Reset | Outcome::Status(_) => Next::Stop,
        }
    }

    fn retry_counted(&mut self) -> Next {
        self.retries_left -= 1;
        self.retried += 1;
        Next::Again {
            backoff: self.retry.map(|r| r.backoff(self.retried)),
            counted: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_followed() {
        let b = |n: &str| {
            Arc::new(Backend {
                name: n.into(),
                endpoints: Vec::new(),
                invalid: None,
                keepalive: None,
                turn: Default::default(),
            })
        };
        let set = vec![(70, b("a")), (30, b("b")), (0, b("c"))];
        let mut counts = BTreeMap::new();
        for i in 0..10_000 {
            *counts
                .entry(pick_weighted(&set, i).expect("weights").name.clone())
                .or_insert(0) += 1;
        }
        assert!((6_800..7_200).contains(&counts["a"]), "{counts:?}");
        assert!(!counts.contains_key("c"));
    }

    fn backend(endpoints: usize) -> Backend {
        Backend {
            name: "ns/b:80".into(),
            endpoints: (0..endpoints)
                .map(|i| Upstream::new(SocketAddr::from(([127, 0, 0, 1], 40_000 + i as u16))))
                .collect(),
            invalid: None,
            keepalive: None,
            turn: AtomicU64::new(0),
        }
    }

    fn policy(num_retries: u32) -> Retry {
        Retry {
            num_retries,
            reset: true,
            connect_failure: true,
            five_xx: true,
            gateway_error: false,
            status_codes: vec![],
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
            per_try: None,
        }
    }

    const FREE: Next = Next::Again {
        backoff: None,
        counted: false,
    };

    #[test]
    fn refused_endpoints_are_failed_over_then_the_policy_decides() {
        // Without a policy: the other endpoints at once (nothing was sent), then stop.
        let b = backend(5);
        let mut t = Tries::new(&b, None, true);
        let first = t.endpoint().expect("endpoint").addr;
        assert_eq!(t.after(Outcome::ConnectFailed), FREE);
        assert_ne!(t.endpoint().expect("endpoint").addr, first);
        assert!(b.endpoints.iter().any(|e| e.is_ejected(now_ms())));
        assert_eq!(t.after(Outcome::ConnectFailed), FREE);
        assert_eq!(t.after(Outcome::ConnectFailed), Next::Stop);
        // With one: a round of endpoints, then a counted retry after a backoff, one more
        // round, then stop.
        let b = backend(2);
        let r = policy(1);
        let mut t = Tries::new(&b, Some(&r), false);
        assert_eq!(t.after(Outcome::ConnectFailed), FREE);
        assert!(matches!(
            t.after(Outcome::ConnectFailed),
            Next::Again {
                backoff: Some(_),
                counted: true
            }
        ));
        assert_eq!(t.after(Outcome::ConnectFailed), FREE);
        assert_eq!(t.after(Outcome::ConnectFailed), Next::Stop);
    }

    #[test]
    fn resets_and_statuses_are_retried_only_when_the_request_may_be_sent_again() {
        let b = backend(1);
        let r = policy(2);
        let mut once = Tries::new(&b, Some(&r), false);
        assert_eq!(once.after(Outcome::Reset), Next::Stop);
        let mut once = Tries::new(&b, Some(&r), false);
        assert_eq!(once.after(Outcome::Status(503)), Next::Stop);
        let mut again = Tries::new(&b, Some(&r), true);
        assert!(matches!(
            again.after(Outcome::Status(503)),
            Next::Again { counted: true, .. }
        ));
        assert!(matches!(
            again.after(Outcome::Reset),
            Next::Again { counted: true, .. }
        ));
        // Two retries are all the policy gives; a status it does not name is passed on.
        assert_eq!(again.after(Outcome::Status(503)), Next::Stop);
        assert_eq!(
            Tries::new(&b, Some(&r), true).after(Outcome::Status(404)),
            Next::Stop
        );
        assert_eq!(Tries::new(&b, None, true).after(Outcome::Reset), Next::Stop);
    }
}
