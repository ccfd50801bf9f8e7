//! What a SecurityPolicy asks of a request before it goes on: compiled from the snapshot
//! ([`security_policies`], pure) and checked per request ([`BasicAuth::check`] here; external
//! authorization needs I/O and is asked by the proxy).
//!
//! Fail closed. A policy trellis cannot enforce as written (a field it does not implement or
//! does not know, a reference that does not resolve, credentials that do not parse) compiles
//! to a [`Security`] with `refused` set, and every request to what it targets answers 500,
//! as Envoy does for a route whose filter is invalid. Validation writes the same verdict as
//! the policy's `Accepted=False` condition; this module reads that condition rather than
//! deciding twice, and adds what only compiling finds (an `.htpasswd` line it cannot read).
//!
//! Types here hold credentials: their `Debug` shows names and counts, never hashes.

use std::collections::BTreeMap;
use std::sync::Arc;

use model::ObjectKey;
use model::kinds::envoy::SecurityPolicySpec;
use model::resolution::PolicyTarget;
use model::snapshot::{Object, Snapshot, get};
use model::validate::ENVOY_GROUP;

use crate::backend::Backend;
pub use crate::limits::BASIC_AUTH_USERS_MAX;
use crate::limits::{
    BASIC_AUTH_CLIENTS_TRACKED, BASIC_AUTH_FAILURE_WINDOW, BASIC_AUTH_FAILURES_PER_CLIENT,
    BASIC_AUTH_VERIFIED_MAX, BCRYPT_CHECKS_AT_ONCE, BCRYPT_CHECKS_PER_POLICY, BCRYPT_COST_MAX,
    BCRYPT_WAIT_MAX,
};

/// The secret key holding the users of a basicAuth policy (Envoy Gateway's).
pub const HTPASSWD_KEY: &str = ".htpasswd";

/// What one SecurityPolicy requires of the requests to what it targets.
#[derive(Debug)]
pub struct Security {
    /// `namespace/name` of the policy, for logs.
    pub policy: String,
    /// The policy cannot be enforced, and why: every request answers 500.
    pub refused: Option<String>,
    pub basic: Option<BasicAuth>,
    pub ext: Option<ExtAuth>,
    pub jwt: Option<crate::jwt::Jwt>,
    pub oidc: Option<crate::oidc::Oidc>,
    pub authorization: Option<Authorization>,
    pub api_keys: Option<ApiKeys>,
    pub cors: Option<crate::cors::Cors>,
}

/// SecurityPolicy `apiKeyAuth`, compiled: the clients and their keys, where keys are looked
/// for.
pub struct ApiKeys {
    /// (client ID, key).
    keys: Vec<(String, Vec<u8>)>,
    pub locations: Vec<crate::jwt::Location>,
    pub forward_client_id_header: Option<http::HeaderName>,
    pub sanitize: bool,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("clients", &self.keys.len())
            .field("locations", &self.locations)
            .finish_non_exhaustive()
    }
}

/// The body of a request API key authentication refused.
pub const API_KEY_DENIED: &str = "Client authentication failed.";

impl ApiKeys {
    /// The client whose key the request carries (every key compared in constant time, all of
    /// them every time), or `None`.
    pub fn check(&self, headers: &http::HeaderMap, query: Option<&str>) -> Option<String> {
        let given = self
            .locations
            .iter()
            .find_map(|l| l.values(headers, query).into_iter().next())?;
        let mut found = None;
        for (client, key) in &self.keys {
            let same: bool = subtle::ConstantTimeEq::ct_eq(given.as_bytes(), key.as_slice()).into();
            if same && found.is_none() {
                found = Some(client.clone());
            }
        }
        found
    }

    /// Takes the key out of the request's headers and cookies. (A key from a query parameter
    /// cannot be taken out: validation refuses `sanitize` with `params`.)
    pub fn sanitize(&self, headers: &mut http::HeaderMap) {
        for l in &self.locations {
            match l {
                crate::jwt::Location::Header { name, .. } => {
                    headers.remove(name);
                }
                crate::jwt::Location::Cookie(name) => crate::jwt::remove_cookies(headers, &[name]),
                crate::jwt::Location::Param(_) => {}
            }
        }
    }
}

/// The body of a request authorization refused (Envoy's RBAC filter's).
pub const FORBIDDEN: &str = "RBAC: access denied";

/// SecurityPolicy `authorization`, compiled: the first rule that matches decides.
#[derive(Debug)]
pub struct Authorization {
    pub rules: Vec<Rule>,
    pub default_allow: bool,
}

/// One rule: it matches when every part it names matches.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub allow: bool,
    /// Empty: every method.
    pub methods: Vec<http::Method>,
    /// Empty: every client; else one must contain the client's address.
    pub client_cidrs: Vec<ipnet::IpNet>,
    pub jwt: Option<JwtRule>,
    /// Every header must have one of its values.
    pub headers: Vec<(http::HeaderName, Vec<String>)>,
}

/// The claims and scopes a rule asks of the token a named provider verified.
#[derive(Debug)]
pub struct JwtRule {
    pub provider: String,
    /// Dotted claim path, whether the claim is an array, the values one of which must match.
    pub claims: Vec<(String, bool, Vec<String>)>,
    pub scopes: Vec<String>,
}

impl JwtRule {
    fn matches(&self, v: &crate::jwt::Verified) -> bool {
        use serde_json::Value;
        if v.provider != self.provider {
            return false;
        }
        let claims_match = self.claims.iter().all(|(path, array, values)| {
            match (crate::jwt::claim(&v.claims, path), array) {
                (Some(Value::String(s)), false) => values.contains(s),
                (Some(Value::Array(list)), true) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|s| values.iter().any(|w| w == s)),
                _ => false,
            }
        });
        let granted: Vec<&str> = v
            .claims
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| s.split(' ').collect())
            .unwrap_or_default();
        claims_match && self.scopes.iter().all(|s| granted.contains(&s.as_str()))
    }
}

impl Rule {
    fn matches(
        &self,
        method: &http::Method,
        client: std::net::IpAddr,
        headers: &http::HeaderMap,
        jwt: Option<&crate::jwt::Verified>,
    ) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && (self.client_cidrs.is_empty()
                || self.client_cidrs.iter().any(|c| c.contains(&client)))
            && self
                .jwt
                .as_ref()
                .is_none_or(|r| jwt.is_some_and(|v| r.matches(v)))
            && self.headers.iter().all(|(name, values)| {
                headers
                    .get_all(name)
                    .iter()
                    .filter_map(|h| h.to_str().ok())
                    .any(|h| values.iter().any(|w| w == h))
            })
    }
}

impl Authorization {
    /// Whether a request may go on: `client` as the ClientTrafficPolicy detects it, `jwt`
    /// the token the policy's `jwt` verified, if any.
    pub fn allows(
        &self,
        method: &http::Method,
        client: std::net::IpAddr,
        headers: &http::HeaderMap,
        jwt: Option<&crate::jwt::Verified>,
    ) -> bool {
        match self
            .rules
            .iter()
            .find(|r| r.matches(method, client, headers, jwt))
        {
            Some(r) => {
                tracing::debug!(rule = %r.name, allow = r.allow, "authorization rule matched");
                r.allow
            }
            None => self.default_allow,
        }
    }
}

/// The clients and keys of an `apiKeyAuth`, from its Secrets.
fn api_keys(
    s: &Snapshot,
    ns: &str,
    k: &model::kinds::envoy::ApiKeyAuth,
) -> Result<ApiKeys, String> {
    use crate::jwt::Location;
    let mut keys = Vec::new();
    for (i, r) in k.credential_refs.iter().enumerate() {
        let sns = r.namespace.as_deref().unwrap_or(ns);
        let secret = get(&s.secrets, sns, &r.name).ok_or_else(|| {
            format!(
                "spec.apiKeyAuth.credentialRefs[{i}]: secret {sns}/{} not found",
                r.name
            )
        })?;
        let data = secret
            .spec
            .data
            .iter()
            .flatten()
            .map(|(c, v)| (c.clone(), v.0.clone()));
        let text = secret
            .spec
            .string_data
            .iter()
            .flatten()
            .map(|(c, v)| (c.clone(), v.as_bytes().to_vec()));
        for (client, key) in data.chain(text) {
            if key.is_empty() {
                return Err(format!(
                    "spec.apiKeyAuth.credentialRefs[{i}]: client {client} has an empty key"
                ));
            }
            keys.push((client, key));
        }
    }
    if keys.is_empty() {
        return Err("spec.apiKeyAuth.credentialRefs: no keys in the Secrets".into());
    }
    let mut locations = Vec::new();
    for e in &k.extract_from {
        for h in &e.headers {
            locations.push(Location::Header {
                name: header_name(h)
                    .ok_or_else(|| format!("spec.apiKeyAuth.extractFrom: {h:?} is not a header"))?,
                prefix: String::new(),
            });
        }
        locations.extend(e.params.iter().cloned().map(Location::Param));
        locations.extend(e.cookies.iter().cloned().map(Location::Cookie));
    }
    if locations.is_empty() {
        return Err("spec.apiKeyAuth.extractFrom: no place to take the key from".into());
    }
    let forward_client_id_header = k
        .forward_client_id_header
        .as_deref()
        .map(|h| {
            header_name(h).ok_or_else(|| {
                "spec.apiKeyAuth.forwardClientIDHeader: not a header name".to_string()
            })
        })
        .transpose()?;
    Ok(ApiKeys {
        keys,
        locations,
        forward_client_id_header,
        sanitize: k.sanitize.unwrap_or(false),
    })
}

/// A SecurityPolicy's `authorization`, compiled (validation has checked its shape; what does
/// not parse here refuses the policy).
fn authorization(a: &model::kinds::envoy::Authorization) -> Result<Authorization, String> {
    let mut rules = Vec::new();
    for (i, r) in a.rules.iter().enumerate() {
        let at = format!("spec.authorization.rules[{i}]");
        let p = &r.principal;
        let client_cidrs = p
            .client_cidrs
            .iter()
            .map(|c| c.parse().map_err(|_| format!("{at}: {c:?} is not a CIDR")))
            .collect::<Result<Vec<ipnet::IpNet>, _>>()?;
        let methods = r
            .operation
            .iter()
            .flat_map(|o| o.methods.iter())
            .map(|m| {
                model::validate::http_method(m)
                    .and_then(|m| m.parse().ok())
                    .ok_or_else(|| format!("{at}: {m:?} is not an HTTP method"))
            })
            .collect::<Result<Vec<http::Method>, _>>()?;
        let headers = p
            .headers
            .iter()
            .map(|h| {
                header_name(&h.name)
                    .map(|n| (n, h.values.clone()))
                    .ok_or_else(|| format!("{at}: {:?} is not a header name", h.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if client_cidrs.is_empty() && p.jwt.is_none() && headers.is_empty() {
            return Err(format!("{at}.principal: names nobody"));
        }
        rules.push(Rule {
            name: r.name.clone().unwrap_or_else(|| format!("rule {i}")),
            allow: match r.action.as_str() {
                "Allow" => true,
                "Deny" => false,
                other => return Err(format!("{at}.action: {other:?}")),
            },
            methods,
            client_cidrs,
            jwt: p.jwt.as_ref().map(|j| JwtRule {
                provider: j.provider.clone(),
                claims: j
                    .claims
                    .iter()
                    .map(|c| {
                        (
                            c.name.clone(),
                            c.value_type.as_deref() == Some("StringArray"),
                            c.values.clone(),
                        )
                    })
                    .collect(),
                scopes: j.scopes.clone(),
            }),
            headers,
        });
    }
    Ok(Authorization {
        rules,
        default_allow: match a.default_action.as_deref() {
            None | Some("Deny") => false,
            Some("Allow") => true,
            Some(other) => return Err(format!("spec.authorization.defaultAction: {other:?}")),
        },
    })
}

/// Envoy's ext_authz gRPC API, the part trellis speaks (`proto/ext_authz.proto`).
#[allow(clippy::all, missing_docs)]
pub mod ext_authz_proto {
    tonic::include_proto!("envoy.service.auth.v3");
}

/// SecurityPolicy `extAuth` over HTTP or gRPC (Envoy's ext_authz services).
#[derive(Debug)]
pub struct ExtAuth {
    /// `envoy.service.auth.v3.Authorization/Check` instead of an HTTP request.
    pub grpc: Option<GrpcChannels>,
    pub backend: Arc<Backend>,
    /// Prefixed to the request's path for the check request.
    pub path: String,
    pub headers_to_auth: Vec<http::HeaderName>,
    pub headers_to_backend: Vec<http::HeaderName>,
    pub fail_open: bool,
}

/// One gRPC channel per authorization service endpoint, made on first use and kept (HTTP/2:
/// one connection carries every check).
#[derive(Debug, Default)]
pub struct GrpcChannels(
    std::sync::Mutex<BTreeMap<std::net::SocketAddr, tonic::transport::Channel>>,
);

impl GrpcChannels {
    pub fn get(&self, addr: std::net::SocketAddr) -> Option<tonic::transport::Channel> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = all.get(&addr) {
            return Some(c.clone());
        }
        let c = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect_lazy();
        all.insert(addr, c.clone());
        Some(c)
    }
}

/// SecurityPolicy `basicAuth`: users and their stored passwords, from the `.htpasswd` key of
/// a Secret: `user:{SHA}base64` (the one format Envoy's basic_auth filter takes, `htpasswd
/// -s`) or bcrypt (`$2y$`, `htpasswd -B`, beyond Envoy).
pub struct BasicAuth {
    users: BTreeMap<String, Password>,
    /// Where the authenticated user's name goes on the upstream request, if anywhere.
    pub forward_username_header: Option<http::HeaderName>,
    /// This policy's share of the process's bcrypt checks (`BCRYPT_CHECKS_PER_POLICY`), so
    /// that wrong passwords sent to one policy's users cannot take every slot.
    bcrypt_slots: Arc<tokio::sync::Semaphore>,
    /// The highest bcrypt cost of the entries, when there is a bcrypt entry: a failed check
    /// that ran no bcrypt (an unknown user, a `{SHA}` one) then waits as long as one of that
    /// cost takes, so that which names have bcrypt entries cannot be told by timing.
    bcrypt_cost: Option<u32>,
    /// What one bcrypt round (cost 0's share) takes here: [`BCRYPT_ROUND`] (a test sets its
    /// own).
    bcrypt_round: Arc<BcryptRound>,
    /// The process's bcrypt slots, [`BCRYPT_CHECKS`] (a test sets its own).
    bcrypt_checks: &'static tokio::sync::Semaphore,
    /// Failed logins by client address on policies with bcrypt entries
    /// ([`BASIC_AUTH_FAILURES_PER_CLIENT`]): [`FAILURES`], process-wide, so that a reload
    /// (on every Endpoints change) does not forget them. Unit tests get their own.
    failures: Arc<std::sync::Mutex<Failures>>,
}

static FAILURES: std::sync::LazyLock<Arc<std::sync::Mutex<Failures>>> =
    std::sync::LazyLock::new(Default::default);

/// Failed logins by client address: how many since when.
#[derive(Default)]
struct Failures(std::collections::HashMap<std::net::IpAddr, (u32, tokio::time::Instant)>);

impl Failures {
    /// Whether `client` used up its failures in the current window.
    fn exhausted(&mut self, client: std::net::IpAddr) -> bool {
        let Some(&(n, since)) = self.0.get(&client) else {
            return false;
        };
        if since.elapsed() >= BASIC_AUTH_FAILURE_WINDOW {
            self.0.remove(&client);
            return false;
        }
        n >= BASIC_AUTH_FAILURES_PER_CLIENT
    }

    fn failed(&mut self, client: std::net::IpAddr) {
        let now = tokio::time::Instant::now();
        if self.0.len() >= BASIC_AUTH_CLIENTS_TRACKED && !self.0.contains_key(&client) {
            self.0
                .retain(|_, (_, since)| now.duration_since(*since) < BASIC_AUTH_FAILURE_WINDOW);
            if self.0.len() >= BASIC_AUTH_CLIENTS_TRACKED {
                BASIC_FAILURES_UNTRACKED.inc();
                return;
            }
        }
        let e = self.0.entry(client).or_insert((0, now));
        if now.duration_since(e.1) >= BASIC_AUTH_FAILURE_WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
    }
}

/// How long one bcrypt round takes on this machine (nanoseconds, 0 while not known): a
/// moving average over the checks that ran (each divided by 2^cost), measured once with a
/// cost-4 hash before the first is needed.
#[derive(Debug, Default)]
pub(crate) struct BcryptRound(std::sync::atomic::AtomicU64);

static BCRYPT_ROUND: std::sync::LazyLock<Arc<BcryptRound>> =
    std::sync::LazyLock::new(Default::default);

impl BcryptRound {
    /// Takes a check of `cost` that took `took`.
    fn record(&self, cost: u32, took: std::time::Duration) {
        use std::sync::atomic::Ordering;
        let x = u64::try_from(took.as_nanos() >> cost)
            .unwrap_or(u64::MAX)
            .max(1);
        let old = self.0.load(Ordering::Relaxed);
        let new = if old == 0 { x } else { (old * 7 + x) / 8 };
        self.0.store(new, Ordering::Relaxed);
    }

    /// How long a check of `cost` takes (measured first if nothing was yet).
    async fn of(&self, cost: u32) -> std::time::Duration {
        if self.0.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            const CALIBRATION_COST: u32 = 4;
            let took = tokio::task::spawn_blocking(|| {
                let t = std::time::Instant::now();
                let _ = bcrypt::hash("calibration", CALIBRATION_COST);
                t.elapsed()
            })
            .await
            .unwrap_or_default();
            self.record(CALIBRATION_COST, took);
        }
        let round = self.0.load(std::sync::atomic::Ordering::Relaxed);
        std::time::Duration::from_nanos(round.saturating_mul(1 << cost))
    }
}

/// Credentials bcrypt accepted, process-wide: each digest covers the user, the password and
/// the stored hash, so it holds for any policy with that entry and across reloads (a reload
/// on every Endpoints change must not send every user back through bcrypt), and an entry
/// whose hash changes no longer matches. A user's next requests cost an HMAC, not bcrypt.
static BCRYPT_VERIFIED: std::sync::LazyLock<crate::jwt::VerifiedDigests> =
    std::sync::LazyLock::new(|| {
        crate::jwt::VerifiedDigests::new(BASIC_AUTH_VERIFIED_MAX, &BASIC_VERIFIED_CLEARED)
    });

/// One user's stored password.
enum Password {
    /// `{SHA}`: the SHA-1 digest of the password.
    Sha1([u8; 20]),
    /// bcrypt (`$2a$`, `$2b$`, `$2x$`, `$2y$`), of at most [`BCRYPT_COST_MAX`].
    Bcrypt { hash: String, cost: u32 },
}

/// Times the credentials bcrypt accepted were forgotten at `BASIC_AUTH_VERIFIED_MAX` (metric
/// `basic_auth_verified_cleared`).
pub static BASIC_VERIFIED_CLEARED: std::sync::LazyLock<
    prometheus_client::metrics::counter::Counter,
> = std::sync::LazyLock::new(Default::default);

/// Failed logins not counted because `BASIC_AUTH_CLIENTS_TRACKED` addresses were already
/// counted in their window (metric `basic_auth_failures_untracked`).
pub static BASIC_FAILURES_UNTRACKED: std::sync::LazyLock<
    prometheus_client::metrics::counter::Counter,
> = std::sync::LazyLock::new(Default::default);

/// The password bytes bcrypt reads (the algorithm's bound; htpasswd's bcrypt reads as many).
const BCRYPT_PASSWORD_BYTES: usize = 72;

/// bcrypt checks running at once, process-wide (each is a blocking thread's CPU).
static BCRYPT_CHECKS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(BCRYPT_CHECKS_AT_ONCE);

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.len())
            .field("forward_username_header", &self.forward_username_header)
            .finish()
    }
}

/// Why a request was not let through by basic authentication (Envoy's messages).
#[derive(Debug, PartialEq, Eq)]
pub enum BasicDenied {
    Missing,
    Invalid,
    /// Every bcrypt check slot stayed taken for `BCRYPT_WAIT_MAX` (503, not a verdict on the
    /// credentials).
    Busy,
    /// The client address had `BASIC_AUTH_FAILURES_PER_CLIENT` failed logins in the window
    /// (429).
    TooMany,
}

impl BasicDenied {
    pub fn message(&self) -> &'static str {
        match self {
            BasicDenied::Missing => "User authentication failed. Missing username and password.",
            BasicDenied::Invalid => {
                "User authentication failed. Invalid username/password combination."
            }
            BasicDenied::Busy => "Too many password checks at once; try again.",
            BasicDenied::TooMany => "Too many failed logins from this address; try again later.",
        }
    }
}

/// A bcrypt hash as htpasswd writes it, with its cost; `Err` says what is wrong.
fn bcrypt_hash(hash: &str) -> Result<u32, String> {
    let parts: bcrypt::HashParts = hash
        .parse()
        .map_err(|e| format!("not a bcrypt hash ({e})"))?;
    let cost = parts.get_cost();
    let body = hash.rsplit('$').next().unwrap_or_default();
    if !body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
    {
        return Err("not a bcrypt hash (a character outside its base64)".into());
    }
    if !(4..=BCRYPT_COST_MAX).contains(&cost) {
        return Err(format!(
            "bcrypt cost {cost} is outside 4 to {BCRYPT_COST_MAX} (above it, each check of a \
             wrong password would take the gateway seconds of CPU)"
        ));
    }
    Ok(cost)
}

impl BasicAuth {
    /// Reads an `.htpasswd` text. Every line must be an entry trellis takes; the first that
    /// is not is the error (with its 1-based line number), so that a policy is never
    /// enforced with fewer users than it names.
    pub fn parse(text: &str) -> Result<BasicAuth, String> {
        let mut users = BTreeMap::new();
        let mut highest_cost: Option<u32> = None;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!(
                    "line {n}: not `user:{{SHA}}hash` or `user:$2y$...`"
                ));
            };
            if user.is_empty() {
                return Err(format!("line {n}: empty user name"));
            }
            let mut bcrypt_cost = None;
            let password = if let Some(b64) = hash.strip_prefix("{SHA}") {
                let digest = data_encoding::BASE64
                    .decode(b64.trim().as_bytes())
                    .ok()
                    .and_then(|d| <[u8; 20]>::try_from(d).ok())
                    .ok_or_else(|| {
                        format!("line {n}: user {user}: {{SHA}} is not a base64 SHA-1")
                    })?;
                Password::Sha1(digest)
            } else if hash.starts_with("$2") {
                let hash = hash.trim();
                let cost = bcrypt_hash(hash).map_err(|e| format!("line {n}: user {user}: {e}"))?;
                bcrypt_cost = Some(cost);
                Password::Bcrypt {
                    hash: hash.to_string(),
                    cost,
                }
            } else {
                let what = if hash.starts_with("$apr1$") {
                    "APR1-MD5"
                } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
                    "crypt SHA-256/512"
                } else {
                    "this"
                };
                return Err(format!(
                    "line {n}: user {user}: {what} hash format is not supported (only {{SHA}} \
                     as in Envoy's basic_auth, htpasswd -s, and bcrypt, htpasswd -B)"
                ));
            };
            highest_cost = highest_cost.max(bcrypt_cost);
            if users.insert(user.to_string(), password).is_some() {
                return Err(format!("line {n}: user {user} appears twice"));
            }
            if users.len() > BASIC_AUTH_USERS_MAX {
                return Err(format!("more than {BASIC_AUTH_USERS_MAX} users"));
            }
        }
        if users.is_empty() {
            return Err("no users".into());
        }
        Ok(BasicAuth {
            users,
            forward_username_header: None,
            bcrypt_slots: Arc::new(tokio::sync::Semaphore::new(BCRYPT_CHECKS_PER_POLICY)),
            bcrypt_cost: highest_cost,
            bcrypt_round: BCRYPT_ROUND.clone(),
            bcrypt_checks: &BCRYPT_CHECKS,
            failures: if cfg!(test) {
                Default::default()
            } else {
                FAILURES.clone()
            },
        })
    }

    /// The policy's bcrypt slot, then one of the process's; `Busy` when they do not come
    /// within `BCRYPT_WAIT_MAX`.
    async fn bcrypt_permits(
        &self,
    ) -> Result<
        (
            tokio::sync::OwnedSemaphorePermit,
            tokio::sync::SemaphorePermit<'static>,
        ),
        BasicDenied,
    > {
        let slots = async {
            let mine = self.bcrypt_slots.clone().acquire_owned().await.ok()?;
            let any = self.bcrypt_checks.acquire().await.ok()?;
            Some((mine, any))
        };
        tokio::time::timeout(BCRYPT_WAIT_MAX, slots)
            .await
            .ok()
            .flatten()
            .ok_or(BasicDenied::Busy)
    }

    /// Checks a request's `Authorization: Basic` credentials; returns the user name. A
    /// bcrypt password is checked on a blocking thread, at most `BCRYPT_CHECKS_AT_ONCE` at
    /// once in the process, each credential once while it keeps being right.
    pub async fn check(
        &self,
        headers: &http::HeaderMap,
        client: std::net::IpAddr,
    ) -> Result<String, BasicDenied> {
        let r = self.check_credentials(headers, client).await;
        if r == Err(BasicDenied::Invalid) && self.bcrypt_cost.is_some() {
            self.failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .failed(client);
        }
        r
    }

    /// Holds a failed check, in a file with bcrypt entries, until it has taken as long as a
    /// check of the file's highest cost: all of it when no bcrypt ran (`ran` none), the
    /// difference after a check of cost `ran`. A wait, not CPU.
    async fn hold_failure(&self, ran: Option<u32>) {
        let Some(highest) = self.bcrypt_cost else {
            return;
        };
        let mut rest = self.bcrypt_round.of(highest).await;
        if let Some(cost) = ran {
            rest = rest.saturating_sub(self.bcrypt_round.of(cost).await);
        }
        tokio::time::sleep(rest).await;
    }

    /// Whether `client` may take a bcrypt slot now (see [`BASIC_AUTH_FAILURES_PER_CLIENT`]).
    fn may_try(&self, client: std::net::IpAddr) -> Result<(), BasicDenied> {
        let mut f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if f.exhausted(client) {
            Err(BasicDenied::TooMany)
        } else {
            Ok(())
        }
    }

    async fn check_credentials(
        &self,
        headers: &http::HeaderMap,
        client: std::net::IpAddr,
    ) -> Result<String, BasicDenied> {
        let Some(v) = headers.get(http::header::AUTHORIZATION) else {
            return Err(BasicDenied::Missing);
        };
        let v = v.as_bytes();
        let creds = v
            .get(..6)
            .filter(|s| s.eq_ignore_ascii_case(b"basic "))
            .and_then(|_| data_encoding::BASE64.decode(v[6..].trim_ascii()).ok())
            .ok_or(BasicDenied::Missing)?;
        let creds = String::from_utf8(creds).map_err(|_| BasicDenied::Invalid)?;
        let (user, password) = creds.split_once(':').ok_or(BasicDenied::Invalid)?;
        let (hash, cost) = match self.users.get(user) {
            Some(Password::Bcrypt { hash, cost }) => (hash, *cost),
            // `{SHA}`, and an unknown user: the same work whether a `{SHA}` user exists or
            // not. Where the file has bcrypt entries, a failure here takes the same way as a
            // bcrypt check (the slots, then as long as one takes, without its CPU), so that a
            // name with a bcrypt entry cannot be told from one without by timing, one request
            // or several at once.
            other => {
                let want = match other {
                    Some(Password::Sha1(w)) => w,
                    _ => &[0u8; 20],
                };
                let digest = ring::digest::digest(
                    &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    password.as_bytes(),
                );
                let same: bool =
                    subtle::ConstantTimeEq::ct_eq(digest.as_ref(), want.as_slice()).into();
                if other.is_some() && same {
                    return Ok(user.to_string());
                }
                if self.bcrypt_cost.is_some() {
                    self.may_try(client)?;
                    let permits = self.bcrypt_permits().await?;
                    self.hold_failure(None).await;
                    drop(permits);
                }
                return Err(BasicDenied::Invalid);
            }
        };
        // bcrypt reads the first 72 bytes of a password (as htpasswd's does): longer ones
        // that agree on those are one credential, remembered once.
        let read = &password.as_bytes()[..password.len().min(BCRYPT_PASSWORD_BYTES)];
        let seen = crate::jwt::VerifiedDigests::digest(&[user.as_bytes(), read, hash.as_bytes()]);
        if BCRYPT_VERIFIED.contains(&seen) {
            return Ok(user.to_string());
        }
        // Both held until bcrypt is done (also when the request is gone meanwhile).
        self.may_try(client)?;
        let permits = self.bcrypt_permits().await?;
        let (password, hash) = (password.to_string(), hash.clone());
        let round = self.bcrypt_round.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let ok = bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false);
            round.record(cost, started.elapsed());
            (ok, permits)
        })
        .await;
        let Ok((ok, permits)) = checked else {
            return Err(BasicDenied::Invalid);
        };
        if ok {
            BCRYPT_VERIFIED.insert(seen);
            return Ok(user.to_string());
        }
        // A wrong password for an entry of a lower cost than the file's highest is held as
        // long as one of the highest (as an unknown name is), the slots still held.
        self.hold_failure(Some(cost)).await;
        drop(permits);
        Err(BasicDenied::Invalid)
    }
}

/// The secret data of `key` in Secret `namespace/name`, from `data` or `stringData`.
pub fn secret_field(s: &Snapshot, namespace: &str, name: &str, key: &str) -> Option<Vec<u8>> {
    let secret = get(&s.secrets, namespace, name)?;
    secret
        .spec
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
        .or_else(|| {
            secret
                .spec
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| v.as_bytes().to_vec())
        })
}

/// A header name from a policy (Envoy Gateway's are case-insensitive).
fn header_name(h: &str) -> Option<http::HeaderName> {
    http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok()
}

/// The users of a `basicAuth`, from the `.htpasswd` key of its Secret.
fn basic_auth(
    s: &Snapshot,
    ns: &str,
    b: &model::kinds::envoy::BasicAuth,
) -> Result<BasicAuth, String> {
    let secret = format!("secret {ns}/{}", b.users.name);
    let text = secret_field(s, ns, &b.users.name, HTPASSWD_KEY)
        .ok_or_else(|| format!("spec.basicAuth.users: {secret} has no {HTPASSWD_KEY}"))?;
    let text = String::from_utf8(text)
        .map_err(|_| format!("spec.basicAuth.users: {HTPASSWD_KEY} of {secret} is not UTF-8"))?;
    let mut basic = BasicAuth::parse(&text)
        .map_err(|e| format!("spec.basicAuth.users: {HTPASSWD_KEY} of {secret}: {e}"))?;
    if let Some(h) = &b.forward_username_header {
        basic.forward_username_header = Some(header_name(h).ok_or_else(|| {
            "spec.basicAuth.forwardUsernameHeader: not a header name".to_string()
        })?);
    }
    Ok(basic)
}

/// The HTTP authorization service of an `extAuth`.
fn ext_auth(
    ea: &model::kinds::envoy::ExtAuth,
    resolve: &dyn Fn(&model::kinds::routes::BackendRef) -> Backend,
) -> Result<ExtAuth, String> {
    let (field, refs, grpc) = match (&ea.http, &ea.grpc) {
        (Some(h), _) => (
            "spec.extAuth.http",
            (&h.backend_refs, &h.backend_ref),
            false,
        ),
        (None, Some(g)) => ("spec.extAuth.grpc", (&g.backend_refs, &g.backend_ref), true),
        (None, None) => return Err("spec.extAuth: needs http or grpc".into()),
    };
    let b = refs
        .0
        .first()
        .or(refs.1.as_ref())
        .ok_or_else(|| format!("{field}: no backendRef"))?;
    let backend = resolve(b);
    if let Some(why) = &backend.invalid {
        // An authorization service that is not there is not "unavailable" (where failOpen
        // would apply): the policy is wrong.
        return Err(format!("{field}: {why}"));
    }
    let names = |v: &[String]| v.iter().filter_map(|h| header_name(h)).collect::<Vec<_>>();
    let http = ea.http.as_ref();
    Ok(ExtAuth {
        grpc: grpc.then(GrpcChannels::default),
        backend: Arc::new(backend),
        path: http
            .and_then(|h| h.path.clone())
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_string(),
        headers_to_auth: names(&ea.headers_to_ext_auth),
        headers_to_backend: http
            .map(|h| names(&h.headers_to_backend))
            .unwrap_or_default(),
        fail_open: ea.fail_open.unwrap_or(false),
    })
}

/// The providers of a `jwt`: local key sets read now, remote ones through the process's
/// cache of each URI.
fn jwt(s: &Snapshot, ns: &str, j: &model::kinds::envoy::Jwt) -> Result<crate::jwt::Jwt, String> {
    use crate::jwt::{DEFAULT_PARAM, Jwks, Keys, Location, Provider, RemoteJwks};
    let mut providers = Vec::new();
    for (i, p) in j.providers.iter().enumerate() {
        let at = format!("spec.jwt.providers[{i}]");
        let keys = match (&p.remote_jwks, &p.local_jwks) {
            (Some(r), None) => Keys::Remote(RemoteJwks::shared(&r.uri)),
            (None, Some(l)) => {
                let text = model::validate::local_jwks(s, ns, l)
                    .map_err(|e| format!("{at}.localJWKS: {e}"))?;
                Keys::Local(Arc::new(
                    Jwks::parse(text.as_bytes()).map_err(|e| format!("{at}.localJWKS: {e}"))?,
                ))
            }
            _ => {
                return Err(format!(
                    "{at}: needs exactly one of remoteJWKS and localJWKS"
                ));
            }
        };
        let mut claim_to_headers = Vec::new();
        for (k, c) in p.claim_to_headers.iter().enumerate() {
            let h = header_name(&c.header)
                .ok_or_else(|| format!("{at}.claimToHeaders[{k}].header: not a header name"))?;
            claim_to_headers.push((h, c.claim.clone()));
        }
        let locations = match &p.extract_from {
            None => vec![
                Location::Header {
                    name: http::header::AUTHORIZATION,
                    prefix: "Bearer ".into(),
                },
                Location::Param(DEFAULT_PARAM.into()),
            ],
            Some(x) => {
                let mut l = Vec::new();
                for (k, h) in x.headers.iter().enumerate() {
                    l.push(Location::Header {
                        name: header_name(&h.name).ok_or_else(|| {
                            format!("{at}.extractFrom.headers[{k}].name: not a header name")
                        })?,
                        prefix: h.value_prefix.clone().unwrap_or_default(),
                    });
                }
                l.extend(x.cookies.iter().cloned().map(Location::Cookie));
                l.extend(x.params.iter().cloned().map(Location::Param));
                if l.is_empty() {
                    return Err(format!("{at}.extractFrom: names no place to look"));
                }
                l
            }
        };
        providers.push(Provider {
            name: p.name.clone(),
            issuer: p.issuer.clone().filter(|i| !i.is_empty()),
            audiences: p.audiences.clone(),
            keys,
            claim_to_headers,
            locations,
        });
    }
    if providers.is_empty() {
        return Err("spec.jwt.providers: none".into());
    }
    Ok(crate::jwt::Jwt {
        optional: j.optional.unwrap_or(false),
        providers,
    })
}

/// An `oidc` with its client secret (the `client-secret` key of its Secret).
fn oidc(
    s: &Snapshot,
    ns: &str,
    policy: &str,
    o: &model::kinds::envoy::Oidc,
) -> Result<crate::oidc::Oidc, String> {
    use crate::oidc::CLIENT_SECRET_KEY;
    let r = o
        .client_secret
        .as_ref()
        .ok_or("spec.oidc.clientSecret: needed")?;
    let sns = r.namespace.as_deref().unwrap_or(ns);
    let secret = secret_field(s, sns, &r.name, CLIENT_SECRET_KEY).ok_or_else(|| {
        format!(
            "spec.oidc.clientSecret: secret {sns}/{} has no {CLIENT_SECRET_KEY}",
            r.name
        )
    })?;
    let client_secret = String::from_utf8(secret)
        .map_err(|_| format!("spec.oidc.clientSecret: {CLIENT_SECRET_KEY} is not UTF-8"))?;
    crate::oidc::Oidc::new(crate::oidc::Settings {
        policy,
        spec: o,
        client_secret: client_secret.trim_end_matches(['\n', '\r']).to_string(),
    })
}

/// Compiles one policy: refused when validation refused it, or when a part of it does not
/// compile (that part's error is also pushed to `problems`).
fn compile_one(
    s: &Snapshot,
    p: &Object<SecurityPolicySpec>,
    key: &ObjectKey,
    resolve: &dyn Fn(&model::kinds::routes::BackendRef) -> Backend,
    problems: &mut Vec<(ObjectKey, String)>,
) -> Security {
    let mut sec = Security {
        policy: key.ns_name(),
        refused: s.resolution.refused(key),
        basic: None,
        ext: None,
        jwt: None,
        oidc: None,
        authorization: None,
        api_keys: None,
        cors: None,
    };
    if sec.refused.is_some() {
        return sec;
    }
    let (spec, ns, policy) = (&p.spec, p.namespace(), sec.policy.clone());
    let compile = |sec: &mut Security| -> Result<(), String> {
        sec.basic = spec
            .basic_auth
            .as_ref()
            .map(|b| basic_auth(s, ns, b))
            .transpose()?;
        sec.ext = spec
            .ext_auth
            .as_ref()
            .map(|e| ext_auth(e, resolve))
            .transpose()?;
        sec.jwt = spec.jwt.as_ref().map(|j| jwt(s, ns, j)).transpose()?;
        sec.oidc = spec
            .oidc
            .as_ref()
            .map(|o| oidc(s, ns, &policy, o))
            .transpose()?;
        sec.authorization = spec.authorization.as_ref().map(authorization).transpose()?;
        sec.api_keys = spec
            .api_key_auth
            .as_ref()
            .map(|k| api_keys(s, ns, k))
            .transpose()?;
        sec.cors = spec.cors.as_ref().map(crate::cors::Cors::new).transpose()?;
        Ok(())
    };
    if let Err(why) = compile(&mut sec) {
        problems.push((key.clone(), why.clone()));
        sec.refused = Some(why);
    }
    sec
}

/// Every SecurityPolicy compiled, by the objects (or sections) it targets. Where two policies
/// target the same one, the one validation made its owner keeps it (the other is Conflicted).
pub fn security_policies(
    s: &Snapshot,
    resolve: &dyn Fn(&str, &model::kinds::routes::BackendRef) -> Backend,
    problems: &mut Vec<(ObjectKey, String)>,
) -> BTreeMap<PolicyTarget, Arc<Security>> {
    let mut out = BTreeMap::new();
    for p in s.security_policies.values() {
        let key = ObjectKey::new(ENVOY_GROUP, "SecurityPolicy", p.namespace(), p.name());
        let targets = s.resolution.targets(&key);
        if targets.is_empty() {
            continue;
        }
        let sec = Arc::new(compile_one(
            s,
            p,
            &key,
            &|b| resolve(p.namespace(), b),
            problems,
        ));
        if let Some(why) = &sec.refused {
            tracing::warn!(policy = %key.ns_name(), reason = %why,
                "security policy cannot be enforced: what it targets answers 500");
        }
        // Validation's owner of each target (GEP-713's order) is the one enforced there.
        for t in targets {
            if s.resolution.owner("SecurityPolicy", t) == Some(&key) {
                out.insert(t.clone(), sec.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client address of the unit tests' requests.
    const CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn header(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(v).expect("header"),
        );
        h
    }

    /// A policy whose bcrypt slot is taken answers 503 after the wait (`BCRYPT_WAIT_MAX`),
    /// while another policy's users are still checked.
    #[tokio::test]
    async fn one_policy_cannot_take_every_bcrypt_slot() {
        let hash = bcrypt::hash("pw", 4).expect("bcrypt");
        let a = BasicAuth::parse(&format!("u:{hash}\n")).expect("parses");
        let b = BasicAuth::parse(&format!("u:{hash}\n")).expect("parses");
        let wrong = header(&format!(
            "Basic {}",
            data_encoding::BASE64.encode(b"u:wrong")
        ));
        let _held = a.bcrypt_slots.clone().acquire_owned().await.expect("slot");
        assert_eq!(a.check(&wrong, CLIENT).await, Err(BasicDenied::Busy));
        assert_eq!(b.check(&wrong, CLIENT).await, Err(BasicDenied::Invalid));
    }

    const SHA_ALICE: &str = "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n";

    /// The policy of htpasswd `text`, where a bcrypt check of `cost` takes `check`, with slots
    /// of its own (other tests' bcrypt checks run in this process at the same time).
    fn isolated(text: &str, cost: u32, check: std::time::Duration) -> BasicAuth {
        let mut b = BasicAuth::parse(text).expect("parses");
        b.bcrypt_round = Arc::new(BcryptRound::default());
        b.bcrypt_round.record(cost, check);
        b.bcrypt_checks = Box::leak(Box::new(tokio::sync::Semaphore::new(2)));
        b
    }

    /// `alice` (`{SHA}`, password `secret`) and `carol` (bcrypt of `cost`, `s3cret`), where
    /// a check takes `check` ([`isolated`]).
    fn mixed_policy(cost: u32, check: std::time::Duration) -> BasicAuth {
        let carol = bcrypt::hash("s3cret", cost).expect("bcrypt");
        isolated(&format!("{SHA_ALICE}carol:{carol}\n"), cost, check)
    }

    fn basic(user: &str, password: &str) -> http::HeaderMap {
        header(&format!(
            "Basic {}",
            data_encoding::BASE64.encode(format!("{user}:{password}").as_bytes())
        ))
    }

    /// Where the file has bcrypt entries, a failure that ran no bcrypt (an unknown user, a
    /// wrong `{SHA}` password) takes as long as a bcrypt check of the file's cost would have
    /// (paused time: the wait is exact, not measured against the clock); a success, and a
    /// file without bcrypt entries, do not wait.
    #[tokio::test(start_paused = true)]
    async fn a_failure_without_bcrypt_takes_as_long_as_one_with_it() {
        let mixed = mixed_policy(5, std::time::Duration::from_millis(32));
        async fn took(
            b: &BasicAuth,
            h: http::HeaderMap,
        ) -> (Result<String, BasicDenied>, std::time::Duration) {
            let t = tokio::time::Instant::now();
            let r = b.check(&h, CLIENT).await;
            (r, t.elapsed())
        }
        let wait = std::time::Duration::from_millis(32);
        let zero = std::time::Duration::ZERO;
        assert_eq!(
            took(&mixed, basic("nobody", "x")).await,
            (Err(BasicDenied::Invalid), wait)
        );
        assert_eq!(
            took(&mixed, basic("alice", "wrong")).await,
            (Err(BasicDenied::Invalid), wait)
        );
        assert_eq!(
            took(&mixed, basic("alice", "secret")).await,
            (Ok("alice".into()), zero)
        );
        // Two failures at once wait one after the other, as two bcrypt checks would (the
        // policy has one slot).
        let (a, b) = tokio::join!(
            took(&mixed, basic("nobody", "x")),
            took(&mixed, basic("somebody", "y"))
        );
        let mut waits = [a.1, b.1];
        waits.sort();
        assert_eq!(waits, [wait, wait * 2]);
        let sha_only = BasicAuth::parse(SHA_ALICE).expect("parses");
        assert_eq!(
            took(&sha_only, basic("nobody", "x")).await,
            (Err(BasicDenied::Invalid), zero)
        );
    }

    /// Past `BASIC_AUTH_FAILURES_PER_CLIENT` failed logins in the window, a client's logins
    /// that would take a bcrypt slot are answered 429 until the window ends; another client,
    /// a right `{SHA}` password, and a file without bcrypt entries are not held back.
    #[tokio::test(start_paused = true)]
    async fn a_client_with_too_many_failed_logins_waits_for_the_window() {
        let mixed = mixed_policy(4, std::time::Duration::from_millis(16));
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ([192, 0, 2, 1].into(), [192, 0, 2, 2].into());
        for _ in 0..BASIC_AUTH_FAILURES_PER_CLIENT {
            assert_eq!(
                mixed.check(&basic("nobody", "x"), a).await,
                Err(BasicDenied::Invalid)
            );
        }
        for (u, p) in [("nobody", "x"), ("alice", "wrong"), ("carol", "s3cret")] {
            assert_eq!(
                mixed.check(&basic(u, p), a).await,
                Err(BasicDenied::TooMany),
                "{u}"
            );
        }
        assert_eq!(
            mixed.check(&basic("alice", "secret"), a).await,
            Ok("alice".into())
        );
        assert_eq!(
            mixed.check(&basic("nobody", "x"), b).await,
            Err(BasicDenied::Invalid)
        );
        tokio::time::advance(BASIC_AUTH_FAILURE_WINDOW).await;
        assert_eq!(
            mixed.check(&basic("nobody", "x"), a).await,
            Err(BasicDenied::Invalid)
        );
        let sha_only = BasicAuth::parse(SHA_ALICE).expect("parses");
        for _ in 0..=BASIC_AUTH_FAILURES_PER_CLIENT {
            assert_eq!(
                sha_only.check(&basic("nobody", "x"), a).await,
                Err(BasicDenied::Invalid)
            );
        }
    }

    /// A wrong password for a bcrypt entry of a lower cost than the file's highest is held,
    /// after its own check, for what a check of the highest takes beyond one of its cost
    /// (paused time: the hold is exact; the real cost-4 check itself takes none of it).
    #[tokio::test(start_paused = true)]
    async fn a_cheaper_entry_fails_as_slowly_as_the_costliest() {
        let carol = bcrypt::hash("s3cret", 4).expect("bcrypt");
        let dave = bcrypt::hash("pw", 8).expect("bcrypt");
        let b = isolated(
            &format!("carol:{carol}\ndave:{dave}\n"),
            4,
            std::time::Duration::from_millis(16),
        );
        let t = tokio::time::Instant::now();
        assert_eq!(
            b.check(&basic("carol", "wrong"), CLIENT).await,
            Err(BasicDenied::Invalid)
        );
        let held = t.elapsed();
        // The round as the check left it (it adds its own measure).
        let (c8, c4) = (b.bcrypt_round.of(8).await, b.bcrypt_round.of(4).await);
        assert!(c4 > std::time::Duration::ZERO);
        // (tokio's timers count whole milliseconds, rounding up.)
        let want = c8 - c4;
        assert!(
            held >= want && held - want < std::time::Duration::from_millis(1),
            "{held:?} for {want:?}"
        );
    }

    /// At `BASIC_AUTH_CLIENTS_TRACKED` addresses counted in their window, a new address's
    /// failure is not counted, and that is counted.
    #[test]
    fn failures_past_the_tracked_addresses_are_counted_as_untracked() {
        let mut f = Failures::default();
        for i in 0..BASIC_AUTH_CLIENTS_TRACKED {
            let i = u32::try_from(i).expect("small");
            f.failed(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                0x0a00_0000 + i,
            )));
        }
        let before = BASIC_FAILURES_UNTRACKED.get();
        f.failed(CLIENT);
        assert_eq!(BASIC_FAILURES_UNTRACKED.get(), before + 1);
        assert!(!f.0.contains_key(&CLIENT));
        assert_eq!(f.0.len(), BASIC_AUTH_CLIENTS_TRACKED);
    }

    /// With nothing measured yet, a round's time is measured with one cheap bcrypt hash.
    #[tokio::test]
    async fn the_bcrypt_round_is_measured_when_first_needed() {
        let round = BcryptRound::default();
        assert!(round.of(4).await > std::time::Duration::ZERO);
    }

    #[tokio::test]
    async fn htpasswd_entries_check_and_others_are_refused() {
        // `htpasswd -nbs alice secret`, and a bcrypt entry (cost 4) for carol.
        let carol = bcrypt::hash("s3cret", 4).expect("bcrypt");
        let text = format!("alice:{{SHA}}5en6G6MezRroT3XKqkdPOmY/BfQ=\n\ncarol:{carol}\n");
        let b = BasicAuth::parse(&text).expect("parses");
        assert_eq!(
            b.check(&basic("alice", "secret"), CLIENT).await,
            Ok("alice".into())
        );
        assert_eq!(
            b.check(&basic("alice", "Secret"), CLIENT).await,
            Err(BasicDenied::Invalid)
        );
        assert_eq!(
            b.check(&basic("bob", "secret"), CLIENT).await,
            Err(BasicDenied::Invalid)
        );
        assert_eq!(
            b.check(&basic("carol", "secret"), CLIENT).await,
            Err(BasicDenied::Invalid)
        );
        let remembered = |u: &str, p: &str| {
            BCRYPT_VERIFIED.contains(&crate::jwt::VerifiedDigests::digest(&[
                u.as_bytes(),
                p.as_bytes(),
                carol.as_bytes(),
            ]))
        };
        assert!(
            !remembered("carol", "secret"),
            "a failure is not remembered"
        );
        for _ in 0..2 {
            assert_eq!(
                b.check(&basic("carol", "s3cret"), CLIENT).await,
                Ok("carol".into())
            );
        }
        assert!(remembered("carol", "s3cret"), "a success is remembered");
        // alice's password is not carol's.
        assert_eq!(
            b.check(&basic("carol", "secret"), CLIENT).await,
            Err(BasicDenied::Invalid)
        );
        assert_eq!(
            b.check(&header("Bearer x"), CLIENT).await,
            Err(BasicDenied::Missing)
        );
        assert_eq!(
            b.check(&http::HeaderMap::new(), CLIENT).await,
            Err(BasicDenied::Missing)
        );
        assert_eq!(
            b.check(&header("Basic !!!"), CLIENT).await,
            Err(BasicDenied::Missing)
        );
        let costly = bcrypt::hash_with_salt("x", 13, [7; 16])
            .expect("bcrypt")
            .format_for_version(bcrypt::Version::TwoY);
        for (text, want) in [
            ("bob:$2y$05$abc", "line 1: user bob: not a bcrypt hash"),
            (
                &format!("bob:{costly}"),
                "line 1: user bob: bcrypt cost 13 is outside 4 to 12",
            ),
            ("x", "line 1: not `user:{SHA}hash`"),
            ("\nbob:$apr1$abc", "line 2: user bob: APR1-MD5"),
            (
                "bob:{SHA}AAAA",
                "line 1: user bob: {SHA} is not a base64 SHA-1",
            ),
            ("", "no users"),
            (
                "a:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\na:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=",
                "line 2: user a appears twice",
            ),
        ] {
            let e = BasicAuth::parse(text).expect_err(text);
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }
}
