//! Envoy Gateway's kinds (gateway.envoyproxy.io/v1alpha1), with the fields trellis serves typed.
//! Fields trellis does not act on yet are kept as JSON (`serde_json::Value`) so that a
//! manifest using them loads without warnings; validation says which ones are not served.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::LabelSelector;
use super::routes::BackendRef;

/// `targetRefs` entry of a policy: a local (same-namespace) reference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
}

/// `targetSelectors` entry: every object of a kind in the policy's namespace whose labels match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetSelector {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
    #[serde(default)]
    pub match_labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<super::LabelSelectorRequirement>,
}

impl TargetSelector {
    pub fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: self.match_labels.clone(),
            match_expressions: self.match_expressions.clone(),
        }
    }
}

/// What every Envoy Gateway policy has: where it attaches.
pub trait Policy {
    /// `targetRef` (deprecated singular form) and `targetRefs` together.
    fn target_refs(&self) -> Vec<&TargetRef>;
    fn target_selectors(&self) -> &[TargetSelector];
}

macro_rules! impl_policy {
    ($($t:ty),*) => {$(
        impl Policy for $t {
            fn target_refs(&self) -> Vec<&TargetRef> {
                self.target_ref.iter().chain(self.target_refs.iter()).collect()
            }
            fn target_selectors(&self) -> &[TargetSelector] {
                &self.target_selectors
            }
        }
    )*};
}

impl_policy!(
    BackendTrafficPolicySpec,
    ClientTrafficPolicySpec,
    EnvoyExtensionPolicySpec,
    SecurityPolicySpec
);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyProxySpec {
    #[serde(default)]
    pub logging: Option<Value>,
    #[serde(default)]
    pub provider: Option<Value>,
    #[serde(default)]
    pub shutdown: Option<Shutdown>,
    #[serde(default)]
    pub telemetry: Option<Value>,
    #[serde(default)]
    pub bootstrap: Option<Value>,
    #[serde(default)]
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub merge_gateways: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shutdown {
    #[serde(default)]
    pub drain_timeout: Option<String>,
    #[serde(default)]
    pub min_drain_duration: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTrafficPolicySpec {
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub target_selectors: Vec<TargetSelector>,
    #[serde(default)]
    pub compressor: Vec<Compressor>,
    #[serde(default)]
    pub retry: Option<Retry>,
    #[serde(default)]
    pub timeout: Option<Timeout>,
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default)]
    pub load_balancer: Option<Value>,
    #[serde(default)]
    pub circuit_breaker: Option<Value>,
    #[serde(default)]
    pub health_check: Option<Value>,
    #[serde(default)]
    pub rate_limit: Option<Value>,
    #[serde(default)]
    pub fault_injection: Option<Value>,
    #[serde(default)]
    pub proxy_protocol: Option<Value>,
    #[serde(default)]
    pub connection: Option<Value>,
    #[serde(default)]
    pub dns: Option<Value>,
    #[serde(default)]
    pub http2: Option<Value>,
    #[serde(default)]
    pub use_client_protocol: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Compressor {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub zstd: Option<Value>,
    #[serde(default)]
    pub brotli: Option<Value>,
    #[serde(default)]
    pub gzip: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    #[serde(default)]
    pub num_retries: Option<u32>,
    #[serde(default)]
    pub num_attempts_per_priority: Option<u32>,
    #[serde(default)]
    pub retry_on: Option<RetryOn>,
    #[serde(default)]
    pub per_retry: Option<PerRetry>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryOn {
    #[serde(default)]
    pub triggers: Vec<String>,
    #[serde(default)]
    pub http_status_codes: Vec<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PerRetry {
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub back_off: Option<BackOff>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackOff {
    #[serde(default)]
    pub base_interval: Option<String>,
    #[serde(default)]
    pub max_interval: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeout {
    #[serde(default)]
    pub http: Option<HttpTimeout>,
    #[serde(default)]
    pub tcp: Option<TcpTimeout>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpTimeout {
    #[serde(default)]
    pub request_timeout: Option<String>,
    #[serde(default)]
    pub connection_idle_timeout: Option<String>,
    #[serde(default)]
    pub max_connection_duration: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpTimeout {
    #[serde(default)]
    pub connect_timeout: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepalive {
    #[serde(default)]
    pub probes: Option<u32>,
    #[serde(default)]
    pub idle_time: Option<String>,
    #[serde(default)]
    pub interval: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTrafficPolicySpec {
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub target_selectors: Vec<TargetSelector>,
    #[serde(rename = "clientIPDetection", default)]
    pub client_ip_detection: Option<ClientIpDetection>,
    #[serde(default)]
    pub http2: Option<ClientHttp2>,
    #[serde(default)]
    pub http3: Option<Value>,
    #[serde(default)]
    pub http1: Option<Value>,
    #[serde(default)]
    pub tls: Option<ClientTls>,
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default)]
    pub timeout: Option<Value>,
    #[serde(default)]
    pub headers: Option<Value>,
    #[serde(default)]
    pub connection: Option<Value>,
    #[serde(default)]
    pub path: Option<Value>,
    #[serde(default)]
    pub proxy_protocol: Option<Value>,
    #[serde(default)]
    pub enable_proxy_protocol: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpDetection {
    #[serde(default)]
    pub x_forwarded_for: Option<XForwardedFor>,
    #[serde(default)]
    pub custom_header: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct XForwardedFor {
    #[serde(default)]
    pub num_trusted_hops: Option<u32>,
    #[serde(rename = "trustedCIDRs", default)]
    pub trusted_cidrs: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientHttp2 {
    #[serde(default)]
    pub on_invalid_message: Option<String>,
    #[serde(default)]
    pub initial_stream_window_size: Option<Value>,
    #[serde(default)]
    pub initial_connection_window_size: Option<Value>,
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub max_version: Option<String>,
    #[serde(default)]
    pub alpn_protocols: Vec<String>,
    #[serde(default)]
    pub ciphers: Vec<String>,
    #[serde(default)]
    pub client_validation: Option<Value>,
}

/// The TLS 1.2 cipher suites `tls.ciphers` may name, by their OpenSSL (BoringSSL) names as
/// Envoy takes them: the name, the IANA code, and whether trellis offers the suite (rustls
/// implements only ECDHE key exchange with AES-GCM or ChaCha20-Poly1305; a test in the
/// gateway crate checks this column against rustls). TLS 1.3's suites are not chosen by
/// this field, in Envoy as here.
pub const TLS12_CIPHERS: &[(&str, u16, bool)] = &[
    ("ECDHE-ECDSA-AES128-GCM-SHA256", 0xC02B, true),
    ("ECDHE-RSA-AES128-GCM-SHA256", 0xC02F, true),
    ("ECDHE-ECDSA-AES256-GCM-SHA384", 0xC02C, true),
    ("ECDHE-RSA-AES256-GCM-SHA384", 0xC030, true),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", 0xCCA9, true),
    ("ECDHE-RSA-CHACHA20-POLY1305", 0xCCA8, true),
    ("ECDHE-PSK-CHACHA20-POLY1305", 0xCCAC, false),
    ("ECDHE-ECDSA-AES128-SHA", 0xC009, false),
    ("ECDHE-RSA-AES128-SHA", 0xC013, false),
    ("ECDHE-PSK-AES128-CBC-SHA", 0xC035, false),
    ("ECDHE-ECDSA-AES256-SHA", 0xC00A, false),
    ("ECDHE-RSA-AES256-SHA", 0xC014, false),
    ("ECDHE-PSK-AES256-CBC-SHA", 0xC036, false),
    ("AES128-GCM-SHA256", 0x009C, false),
    ("AES256-GCM-SHA384", 0x009D, false),
    ("AES128-SHA", 0x002F, false),
    ("PSK-AES128-CBC-SHA", 0x008C, false),
    ("AES256-SHA", 0x0035, false),
    ("PSK-AES256-CBC-SHA", 0x008D, false),
    ("DES-CBC3-SHA", 0x000A, false),
];

/// One entry of [`TLS12_CIPHERS`].
pub type CipherSuite = (&'static str, u16, bool);

impl ClientTls {
    /// The suites `ciphers` names, in its order, with an equal-preference group
    /// (`[A|B]`) taken in its written order. `Err((index, why))` for the first entry that
    /// names no TLS 1.2 suite Envoy knows. An empty list is Envoy's default (all offered).
    pub fn cipher_suites(&self) -> Result<Vec<CipherSuite>, (usize, String)> {
        let mut out: Vec<CipherSuite> = Vec::new();
        for (i, entry) in self.ciphers.iter().enumerate() {
            let inner = entry.trim();
            let inner = match inner.strip_prefix('[') {
                Some(rest) => rest.strip_suffix(']').ok_or_else(|| {
                    (
                        i,
                        format!(
                            "{entry:?}: an equal-preference group opens with [ and does not close"
                        ),
                    )
                })?,
                None => inner,
            };
            for name in inner.split('|').map(str::trim) {
                let Some(suite) = TLS12_CIPHERS.iter().find(|(n, _, _)| *n == name) else {
                    let why = if name.starts_with("TLS_") {
                        format!("{name:?} is a TLS 1.3 suite, which tls.ciphers does not choose")
                    } else {
                        format!("{name:?} is not a TLS 1.2 cipher suite name")
                    };
                    return Err((i, why));
                };
                if !out.contains(suite) {
                    out.push(*suite);
                }
            }
        }
        Ok(out)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyExtensionPolicySpec {
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub target_selectors: Vec<TargetSelector>,
    #[serde(default)]
    pub lua: Vec<Lua>,
    #[serde(default)]
    pub wasm: Option<Value>,
    #[serde(default)]
    pub ext_proc: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lua {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub inline: Option<String>,
    #[serde(default)]
    pub value_ref: Option<LocalObjectRef>,
}

/// A same-namespace reference with group and kind (`valueRef`, `clientSecret`...).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicySpec {
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub target_selectors: Vec<TargetSelector>,
    #[serde(default)]
    pub ext_auth: Option<ExtAuth>,
    #[serde(default)]
    pub oidc: Option<Oidc>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default)]
    pub cors: Option<Cors>,
    #[serde(default)]
    pub jwt: Option<Jwt>,
    #[serde(default)]
    pub api_key_auth: Option<ApiKeyAuth>,
    #[serde(default)]
    pub authorization: Option<Authorization>,
}

/// SecurityPolicy `cors`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// `*`, `scheme://host[:port]` or `scheme://*.domain[:port]`.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// A Gateway API duration (`600s`).
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
}

/// SecurityPolicy `apiKeyAuth`: a request needs one of the keys of the credential Secrets
/// (each key of a Secret's data is a client ID, its value that client's API key).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    #[serde(default)]
    pub credential_refs: Vec<LocalObjectRef>,
    #[serde(default)]
    pub extract_from: Vec<ApiKeyExtractFrom>,
    /// Where the authenticated client's ID goes on the upstream request.
    #[serde(rename = "forwardClientIDHeader", default)]
    pub forward_client_id_header: Option<String>,
    /// Remove the key from the request before it goes upstream.
    #[serde(default)]
    pub sanitize: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyExtractFrom {
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub params: Vec<String>,
    #[serde(default)]
    pub cookies: Vec<String>,
}

/// SecurityPolicy `authorization`: rules tried in order, the first that matches decides;
/// none matching, `defaultAction` (Deny when absent).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
    #[serde(default)]
    pub default_action: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    #[serde(default)]
    pub name: Option<String>,
    /// `Allow` or `Deny`.
    pub action: String,
    #[serde(default)]
    pub operation: Option<AuthorizationOperation>,
    #[serde(default)]
    pub principal: Principal,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationOperation {
    #[serde(default)]
    pub methods: Vec<String>,
}

/// Who a rule is about: every part given must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    #[serde(rename = "clientCIDRs", default)]
    pub client_cidrs: Vec<String>,
    #[serde(default)]
    pub jwt: Option<JwtPrincipal>,
    #[serde(default)]
    pub headers: Vec<AuthorizationHeaderMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtPrincipal {
    /// A provider of the same policy's `jwt`.
    pub provider: String,
    #[serde(default)]
    pub claims: Vec<JwtClaim>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtClaim {
    pub name: String,
    /// `String` (default) or `StringArray`.
    #[serde(default)]
    pub value_type: Option<String>,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationHeaderMatch {
    pub name: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuth {
    #[serde(default)]
    pub fail_open: Option<bool>,
    #[serde(default)]
    pub headers_to_ext_auth: Vec<String>,
    #[serde(default)]
    pub http: Option<ExtAuthHttp>,
    #[serde(default)]
    pub grpc: Option<ExtAuthGrpc>,
    #[serde(default)]
    pub body_to_ext_auth: Option<Value>,
    #[serde(default)]
    pub recompute_route: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthHttp {
    #[serde(default)]
    pub backend_ref: Option<BackendRef>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub headers_to_backend: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthGrpc {
    #[serde(default)]
    pub backend_ref: Option<BackendRef>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Oidc {
    pub provider: OidcProvider,
    #[serde(rename = "clientID", default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<LocalObjectRef>,
    #[serde(rename = "redirectURL", default)]
    pub redirect_url: Option<String>,
    #[serde(default)]
    pub logout_path: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub cookie_domain: Option<String>,
    #[serde(default)]
    pub forward_access_token: Option<bool>,
    /// Refresh the tokens with the refresh token when they expire (default true).
    #[serde(default)]
    pub refresh_token: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OidcProvider {
    pub issuer: String,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    pub users: LocalObjectRef,
    #[serde(default)]
    pub forward_username_header: Option<String>,
}

/// SecurityPolicy `jwt`: a request needs a token that one of the providers verifies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Jwt {
    /// A request without a token goes on (one with a bad token is still refused).
    #[serde(default)]
    pub optional: Option<bool>,
    #[serde(default)]
    pub providers: Vec<JwtProvider>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    pub name: String,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(rename = "remoteJWKS", default)]
    pub remote_jwks: Option<RemoteJwks>,
    #[serde(rename = "localJWKS", default)]
    pub local_jwks: Option<LocalJwks>,
    #[serde(default)]
    pub claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default)]
    pub recompute_route: Option<bool>,
    #[serde(default)]
    pub extract_from: Option<JwtExtractor>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteJwks {
    pub uri: String,
    #[serde(default)]
    pub backend_ref: Option<BackendRef>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub backend_settings: Option<Value>,
}

/// `localJWKS`: `type: Inline` with `inline`, or `type: ValueRef` naming a ConfigMap (its
/// `jwks` key, else its first value).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalJwks {
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    #[serde(default)]
    pub inline: Option<String>,
    #[serde(default)]
    pub value_ref: Option<LocalObjectRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    pub header: String,
    /// A claim name; `a.b.c` names a nested one.
    pub claim: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtExtractor {
    #[serde(default)]
    pub headers: Vec<JwtHeaderExtractor>,
    #[serde(default)]
    pub cookies: Vec<String>,
    #[serde(default)]
    pub params: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtHeaderExtractor {
    pub name: String,
    #[serde(default)]
    pub value_prefix: Option<String>,
}

/// Envoy Gateway's `Backend`: endpoints outside the cluster's Services.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendSpec {
    #[serde(default)]
    pub endpoints: Vec<BackendEndpoint>,
    #[serde(default)]
    pub tls: Option<Value>,
    #[serde(default)]
    pub app_protocols: Vec<String>,
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendEndpoint {
    #[serde(default)]
    pub fqdn: Option<HostPort>,
    #[serde(default)]
    pub ip: Option<IpPort>,
    #[serde(default)]
    pub unix: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostPort {
    pub hostname: String,
    pub port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IpPort {
    pub address: String,
    pub port: u16,
}
