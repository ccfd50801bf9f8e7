//! The gateway's Prometheus metrics. Names follow Envoy's where Envoy has the same thing
//! (`..._rq_total` by response code class), with a `trellis_gateway_` prefix.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `namespace/name` of the route ("" when nothing matched).
    pub route: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`.
    pub code_class: String,
}

/// A route's request counters by status class, looked up once and kept with the route.
#[derive(Clone, Debug)]
pub struct RouteCounters(pub [Counter; 5]);

/// Counters and histograms of one gateway process.
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RouteLabels, Counter>,
    pub duration: Histogram,
    pub reloads: Counter,
    pub accept_errors: Counter,
    pub upstream_connect_failures: Counter,
    pub mirror_failures: Counter,
    pub tls_handshake_errors: Counter,
    pub retries: Counter,
    pub compressed: Counter,
    pub lua_errors: Counter,
    pub ext_auth_denied: Counter,
    pub ext_auth_errors: Counter,
    /// Requests refused because the SecurityPolicy of their route cannot be enforced.
    pub security_policy_refused: Counter,
    pub basic_auth_denied: Counter,
    /// Requests answered 503 because every bcrypt check slot stayed taken.
    pub basic_auth_busy: Counter,
    /// Requests answered 429: their client address had too many failed logins.
    pub basic_auth_throttled: Counter,
    pub jwt_denied: Counter,
    pub oidc_denied: Counter,
    pub api_key_denied: Counter,
    pub authorization_denied: Counter,
    /// Client connections closed on arrival at `limits::CLIENT_CONNECTIONS_MAX`.
    pub connections_refused: Counter,
    pub access_log_dropped: Counter,
    pub keepalive_pools_exhausted: Counter,
    pub udp_sessions: Counter,
    pub udp_sessions_overflow: Counter,
    pub udp_no_route: Counter,
    /// Requests on trellis's own HTTP/1 path (the rest are served by hyper).
    pub h1_fast: Counter,
    /// Connections the own HTTP/1 path handed to hyper (a request it does not serve itself).
    pub h1_handoffs: Counter,
    /// QUIC connections accepted for HTTP/3.
    pub http3_connections: Counter,
    /// HTTP/3 requests reset because their head, or the start of their body, did not come
    /// within `limits::HEADER_READ_TIMEOUT`.
    pub http3_request_timeouts: Counter,
    /// HTTP/3 requests reset as malformed (H3_MESSAGE_ERROR) by trellis's own checks: a
    /// connection-specific field, `te` other than `trailers`, a `content-length` the body
    /// does not match.
    pub http3_malformed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            reloads: Counter::default(),
            accept_errors: Counter::default(),
            upstream_connect_failures: Counter::default(),
            mirror_failures: Counter::default(),
            tls_handshake_errors: Counter::default(),
            retries: Counter::default(),
            compressed: Counter::default(),
            lua_errors: Counter::default(),
            ext_auth_denied: Counter::default(),
            ext_auth_errors: Counter::default(),
            security_policy_refused: Counter::default(),
            basic_auth_denied: Counter::default(),
            basic_auth_busy: Counter::default(),
            basic_auth_throttled: Counter::default(),
            jwt_denied: Counter::default(),
            oidc_denied: Counter::default(),
            api_key_denied: Counter::default(),
            authorization_denied: Counter::default(),
            connections_refused: Counter::default(),
            access_log_dropped: Counter::default(),
            keepalive_pools_exhausted: Counter::default(),
            udp_sessions: Counter::default(),
            udp_sessions_overflow: Counter::default(),
            udp_no_route: Counter::default(),
            h1_fast: Counter::default(),
            h1_handoffs: Counter::default(),
            http3_connections: Counter::default(),
            http3_request_timeouts: Counter::default(),
            http3_malformed: Counter::default(),
        }
    }
}

impl Metrics {
    /// Counts a request by route and status class. Looks the route's counters up each time:
    /// for the rare path (no route matched); matched routes cache theirs ([`RouteCounters`]).
    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        let c = self.route_counters(route);
        self.observe(&c, status, elapsed);
    }

    /// The counters of one route, one per status class (shared with the family).
    pub fn route_counters(&self, route: &str) -> RouteCounters {
        let get = |class: &str| {
            self.requests
                .get_or_create(&RouteLabels {
                    route: route.to_string(),
                    code_class: class.to_string(),
                })
                .clone()
        };
        RouteCounters([get("1xx"), get("2xx"), get("3xx"), get("4xx"), get("5xx")])
    }

    pub fn observe(&self, c: &RouteCounters, status: u16, elapsed: Duration) {
        let i = usize::from((status / 100).clamp(1, 5) - 1);
        c.0[i].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Registers every metric under `trellis_gateway_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("trellis_gateway");
        r.register(
            "rq",
            "Requests by route and response code class",
            self.requests.clone(),
        );
        r.register(
            "rq_duration_seconds",
            "Time from request headers to response headers",
            self.duration.clone(),
        );
        r.register(
            "reloads",
            "Plans swapped in after a manifest change",
            self.reloads.clone(),
        );
        r.register(
            "accept_errors",
            "Failed accepts on listeners",
            self.accept_errors.clone(),
        );
        r.register(
            "upstream_cx_connect_fail",
            "Upstream connections that could not be made",
            self.upstream_connect_failures.clone(),
        );
        r.register(
            "mirror_failures",
            "Mirrored requests that failed",
            self.mirror_failures.clone(),
        );
        r.register(
            "ssl_handshake_errors",
            "TLS connections that failed before or during the handshake",
            self.tls_handshake_errors.clone(),
        );
        r.register(
            "upstream_rq_retry",
            "Requests sent upstream again",
            self.retries.clone(),
        );
        r.register(
            "compressor_compressed",
            "Responses compressed",
            self.compressed.clone(),
        );
        r.register(
            "lua_errors",
            "Lua script failures (the request got a 500)",
            self.lua_errors.clone(),
        );
        r.register(
            "ext_authz_denied",
            "Requests the authorization service denied",
            self.ext_auth_denied.clone(),
        );
        r.register(
            "ext_authz_error",
            "Requests whose authorization service could not be asked",
            self.ext_auth_errors.clone(),
        );
        r.register(
            "security_policy_refused",
            "Requests answered 500 because their SecurityPolicy cannot be enforced",
            self.security_policy_refused.clone(),
        );
        r.register(
            "basic_auth_denied",
            "Requests basic authentication refused (401)",
            self.basic_auth_denied.clone(),
        );
        r.register(
            "basic_auth_busy",
            "Requests answered 503 because every bcrypt check slot stayed taken",
            self.basic_auth_busy.clone(),
        );
        r.register(
            "basic_auth_throttled",
            "Requests answered 429 because their client address had too many failed logins",
            self.basic_auth_throttled.clone(),
        );
        r.register(
            "basic_auth_failures_untracked",
            "Failed basicAuth logins not counted against their client address: the addresses counted were at their bound",
            crate::auth::BASIC_FAILURES_UNTRACKED.clone(),
        );
        r.register(
            "basic_auth_verified_cleared",
            "Times a basicAuth policy's remembered bcrypt-verified credentials were forgotten at their bound",
            crate::auth::BASIC_VERIFIED_CLEARED.clone(),
        );
        r.register(
            "jwt_denied",
            "Requests JWT authentication refused (401)",
            self.jwt_denied.clone(),
        );
        r.register(
            "oidc_denied",
            "OpenID logins refused at the callback (401)",
            self.oidc_denied.clone(),
        );
        r.register(
            "api_key_denied",
            "Requests API key authentication refused (401)",
            self.api_key_denied.clone(),
        );
        r.register(
            "authorization_denied",
            "Requests a SecurityPolicy's authorization rules refused (403)",
            self.authorization_denied.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections closed on arrival because the most allowed were open",
            self.connections_refused.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            self.access_log_dropped.clone(),
        );
        r.register(
            "keepalive_pools_exhausted",
            "Upstream connections made without keep-alive because every keep-alive pool was taken",
            self.keepalive_pools_exhausted.clone(),
        );
        r.register(
            "udp_downstream_sess",
            "UDP sessions (client address to upstream socket) started",
            self.udp_sessions.clone(),
        );
        r.register(
            "udp_sess_overflow",
            "UDP datagrams dropped because a listener had its maximum of sessions",
            self.udp_sessions_overflow.clone(),
        );
        r.register(
            "udp_downstream_sess_no_route",
            "UDP datagrams dropped because the listener had no usable backend",
            self.udp_no_route.clone(),
        );
        r.register(
            "h1_fast_rq",
            "Requests proxied by trellis's own HTTP/1 keep-alive path",
            self.h1_fast.clone(),
        );
        r.register(
            "h1_handoffs",
            "Connections handed from the own HTTP/1 path to the general one (hyper)",
            self.h1_handoffs.clone(),
        );
        r.register(
            "http3_connections",
            "QUIC connections accepted for HTTP/3 (ClientTrafficPolicy http3)",
            self.http3_connections.clone(),
        );
        r.register(
            "http3_request_timeouts",
            "HTTP/3 requests reset because their head or body start came too late",
            self.http3_request_timeouts.clone(),
        );
        r.register(
            "http3_malformed",
            "HTTP/3 requests reset as malformed (connection-specific fields, te, content-length)",
            self.http3_malformed.clone(),
        );
        r.register(
            "jwt_verified_cleared",
            "Times a key set's remembered verified tokens were forgotten at their bound",
            crate::jwt::VERIFIED_CLEARED.clone(),
        );
    }
}
