//! Every bound of the gateway, in one place, used by both HTTP paths (trellis's own HTTP/1
//! path in `h1` and hyper's in `proxy`) and the L4 proxies: timeouts, pool sizes, body and
//! header limits. A bound that differed between the paths is one constant here.

use std::time::Duration;

/// Time to open a connection to an upstream, on every path (HTTP/1 own and hyper, TCPRoute,
/// TLS passthrough): Envoy's cluster `connect_timeout` default, 5 s.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle pooled upstream connection (hyper's pools, and the raw pool both paths share) is
/// closed after this.
pub const UPSTREAM_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long accepting pauses after an error (EMFILE, ENFILE): the loop must not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// How long an endpoint that refused a connection is skipped.
pub const EJECT_MS: u64 = 5_000;

/// Upstream attempts per request when endpoints refuse connections (the request is unsent,
/// so trying another endpoint is always safe).
pub const CONNECT_ATTEMPTS_MAX: usize = 3;

/// Idle upstream connections kept per endpoint.
pub const POOL_IDLE_PER_HOST_MAX: usize = 256;

/// Request headers larger than this are answered 431 by hyper.
pub const REQUEST_HEADER_BYTES_MAX: usize = 64 * 1024;

/// Time a client has to send a whole request head once it started one.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client connection may stay without a request in flight, the first one included,
/// before it is closed (gracefully: GOAWAY on HTTP/2), on both HTTP paths (Envoy's downstream
/// `idle_timeout` default, 1 h). `Bind::idle_timeout` changes it. The own HTTP/1 path keeps one
/// timer per connection, so there an idle connection closes between one and two of these after
/// its last answer.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Client connections (HTTP, TLS, TCPRoute) open at once on one gateway; one more is closed
/// on arrival and counted (`connections_refused`). Envoy has no default limit (its overload
/// manager's is opt-in); this bounds the file descriptors one gateway can be made to hold.
pub const CLIENT_CONNECTIONS_MAX: usize = 16_384;

/// When a drain starts, an idle connection (new, or keep-alive between requests) gets this
/// long to send one more request, which is answered (HTTP/1.1 with `Connection: close`,
/// HTTP/2 then GOAWAY) rather than the connection closed under a request on its way.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// Upstream connection pools with keep-alive settings of their own (one per distinct
/// BackendTrafficPolicy `tcpKeepalive`); past this, connections go without keep-alive.
pub const KEEPALIVE_POOLS_MAX: usize = 32;

/// Access log lines queued for the writer thread; past this, lines are dropped and counted.
pub const ACCESS_LOG_QUEUED_MAX: usize = 16 * 1024;

/// Time a client has to send its ClientHello and finish the handshake.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the authorization service may take (Envoy's ext_authz default).
pub const EXT_AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from a client at a time.
pub const CLIENT_READ_BYTES: usize = 8 * 1024;

/// Response bodies up to this size are compressed (whole, with a kept context) when the
/// client accepts an encoding of the rule's; larger ones pass through as they are.
pub const COMPRESS_BODY_BYTES_MAX: u64 = 1024 * 1024;

/// Bytes read from an upstream at a time.
pub const UPSTREAM_READ_BYTES: usize = 16 * 1024;

/// Request bodies up to this size are served here (buffered whole, so a stale upstream
/// connection can be retried); larger ones go to the general path, which streams them.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;

/// A response head larger than this is a bad gateway.
pub const RESPONSE_HEADER_BYTES_MAX: usize = 64 * 1024;

/// Headers parsed per request or response; more go to the general path (requests) or are a
/// bad gateway (responses).
pub const HEADERS_MAX: usize = 100;

/// HTTP/3 requests one QUIC connection may have open at once (HTTP/2's usual 100).
pub const HTTP3_STREAMS_MAX: u32 = 100;

/// Users of one basicAuth policy: at most this many (a bound on what one Secret loads).
pub const BASIC_AUTH_USERS_MAX: usize = 10_000;

/// The highest bcrypt cost an `.htpasswd` entry may have (`htpasswd -B` writes 5): a check at
/// 12 takes about a quarter of a second of one core; a higher one is refused when loading.
pub const BCRYPT_COST_MAX: u32 = 12;

/// bcrypt checks running at once in the process (each on a blocking thread): a client sending
/// wrong passwords can take this many cores, no more.
pub const BCRYPT_CHECKS_AT_ONCE: usize = 2;

/// bcrypt checks one basicAuth policy may have running at once: wrong passwords sent to one
/// policy's users leave the other slots to other policies.
pub const BCRYPT_CHECKS_PER_POLICY: usize = 1;

/// How long a request waits for a bcrypt check slot before it is answered 503.
pub const BCRYPT_WAIT_MAX: Duration = Duration::from_secs(2);

/// Streams an HTTP/2 connection may have reset for the client's protocol errors (a malformed
/// request) before it is closed with GOAWAY, under ClientTrafficPolicy `http2.onInvalidMessage:
/// TerminateStream` (h2's own default); under `TerminateConnection`, Envoy Gateway's default,
/// the first closes it.
pub const HTTP2_STREAM_ERRORS_MAX: usize = 1024;

/// Failed logins one client address may have on basicAuth policies with bcrypt entries (counted
/// together, process-wide, across reloads) within [`BASIC_AUTH_FAILURE_WINDOW`]; past them its
/// logins that would take a bcrypt slot are answered 429 until the window ends, so that one
/// client cannot hold a policy's slot and keep its other users waiting. Credentials already
/// verified still pass.
pub const BASIC_AUTH_FAILURES_PER_CLIENT: u32 = 10;

/// The window [`BASIC_AUTH_FAILURES_PER_CLIENT`] counts in, from a client's first failure.
pub const BASIC_AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Client addresses failure counts are kept for; when full, expired counts are dropped, and
/// with none expired a new address is not counted (its logins still take a policy's one
/// slot).
pub const BASIC_AUTH_CLIENTS_TRACKED: usize = 4096;

/// Credentials a basicAuth policy remembers as verified by bcrypt (32 bytes each); when full
/// it starts again.
pub const BASIC_AUTH_VERIFIED_MAX: usize = 16_384;

/// How long a fetched JWKS is used before it is fetched again (Envoy Gateway's setting).
pub const JWKS_CACHE_DURATION: Duration = Duration::from_secs(300);

/// After a failed fetch, the next is tried no sooner than this (requests meanwhile use the
/// last good set, or are refused when there is none).
pub const JWKS_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// How long one JWKS fetch may take (Envoy Gateway's timeout for the JWKS service).
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The most keys one JWKS may hold (a bound on what a fetch can make the gateway keep).
pub const JWKS_KEYS_MAX: usize = 64;

/// The longest token looked at; a longer one is refused unread.
pub const JWT_BYTES_MAX: usize = 16 << 10;

/// Tokens looked at per request, over every provider (each may cost a signature check); a
/// request carrying more is refused as malformed.
pub const JWT_TOKENS_PER_REQUEST_MAX: usize = 8;

/// Tokens a key set remembers as verified (32 bytes each); when full it starts again.
pub const JWT_VERIFIED_MAX: usize = 16_384;

/// How long a login may take from redirect to callback.
pub const LOGIN_MAX_SECS: u64 = 600;

/// The largest session cookie written (browsers keep 4096 bytes per cookie).
pub const COOKIE_BYTES_MAX: usize = 4000;

/// Memory one script's interpreter may use.
pub const MEMORY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Instructions one call may run (a runaway loop is stopped and the request gets a 500).
pub const INSTRUCTIONS_MAX: u64 = 10_000_000;

/// The longest string the pattern functions take (a header value or path is far shorter).
pub const PATTERN_SUBJECT_BYTES_MAX: usize = 64 * 1024;

/// Bytes read before giving up on finding a ClientHello.
pub const CLIENT_HELLO_BYTES_MAX: usize = 16 * 1024 + 5;

/// Sessions (client addresses) one UDP listener keeps at once.
pub const UDP_SESSIONS_MAX: usize = 4096;

/// A session ends after this long without a datagram in either direction (Envoy's default).
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest datagram relayed; larger ones are truncated by the kernel.
pub const DATAGRAM_BYTES_MAX: usize = 65_535;

/// Envoy Gateway's default drain timeout.
pub const DRAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
