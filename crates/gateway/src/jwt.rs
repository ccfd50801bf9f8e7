//! SecurityPolicy `jwt`, as Envoy's jwt_authn filter does it under Envoy Gateway: a request
//! needs a token that one of the policy's providers verifies (signature against the
//! provider's JWKS, then issuer, time and audience), the token stays on the request, and
//! claims can be copied into headers.
//!
//! - Tokens are looked for where the provider says (`extractFrom`: headers with a prefix,
//!   cookies, query parameters), by default in `Authorization: Bearer` and the
//!   `access_token` parameter.
//! - Algorithms: RS256/384/512, PS256/384/512, ES256, ES384, EdDSA (Ed25519) and HS256/384/512
//!   (an `oct` key). `none` and every other algorithm are refused.
//! - A remote JWKS is fetched on first use, kept [`JWKS_CACHE_DURATION`], fetched again when
//!   older; a failed fetch keeps serving the last good set (and is retried at most every
//!   [`JWKS_RETRY_INTERVAL`]); with no set at all every token is refused. The cache is keyed
//!   by URI and outlives plan reloads.
//!
//! The decoding and checking are pure ([`decode`], [`Provider::verify`]); only fetching a
//! remote JWKS does I/O.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Instant;

pub use crate::limits::{
    JWKS_CACHE_DURATION, JWKS_FETCH_TIMEOUT, JWKS_KEYS_MAX, JWKS_RETRY_INTERVAL, JWT_BYTES_MAX,
    JWT_TOKENS_PER_REQUEST_MAX, JWT_VERIFIED_MAX,
};
use data_encoding::BASE64URL_NOPAD;
use serde_json::{Map, Value};

/// Times a key set's verified tokens were forgotten at `JWT_VERIFIED_MAX` (metric
/// `jwt_verified_cleared`; one per process, as the gateway is).
pub static VERIFIED_CLEARED: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

/// Digests (SHA-256) of credentials an expensive check accepted (a token's signature, a
/// bcrypt password), so that the same bytes are checked once. Only successes enter, so a
/// client without valid credentials cannot fill it; at `max` it starts again (counted in
/// `cleared`) rather than track ages. Kept with what checked them, so that new keys or users
/// start empty.
pub(crate) struct VerifiedDigests {
    set: Mutex<HashSet<[u8; 32]>>,
    max: usize,
    cleared: &'static prometheus_client::metrics::counter::Counter,
}

impl VerifiedDigests {
    pub(crate) fn new(
        max: usize,
        cleared: &'static prometheus_client::metrics::counter::Counter,
    ) -> Self {
        VerifiedDigests {
            set: Mutex::default(),
            max,
            cleared,
        }
    }

    /// The HMAC-SHA-256 of `parts` (each with its length first, so that parts cannot run
    /// together) under a key drawn at random once per process: what is kept cannot be turned
    /// back into a password or token offline, even from a memory dump.
    pub(crate) fn digest(parts: &[&[u8]]) -> [u8; 32] {
        static KEY: LazyLock<Option<ring::hmac::Key>> = LazyLock::new(|| {
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
                .ok()
        });
        let mut out = [0u8; 32];
        // Without a random key nothing is remembered as verified: every check is made.
        let Some(key) = KEY.as_ref() else {
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out).ok();
            return out;
        };
        let mut d = ring::hmac::Context::with_key(key);
        for p in parts {
            d.update(&(p.len() as u64).to_be_bytes());
            d.update(p);
        }
        out.copy_from_slice(d.sign().as_ref());
        out
    }

    pub(crate) fn contains(&self, d: &[u8; 32]) -> bool {
        self.set.lock().is_ok_and(|v| v.contains(d))
    }

    pub(crate) fn insert(&self, d: [u8; 32]) {
        if let Ok(mut v) = self.set.lock() {
            if v.len() >= self.max {
                v.clear();
                self.cleared.inc();
            }
            v.insert(d);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.set.lock().map(|v| v.len()).unwrap_or(0)
    }
}

/// How far `exp` and `nbf` may be off (Envoy's default `clock_skew_seconds`).
pub const JWT_CLOCK_SKEW_SECS: u64 = 60;

/// Where a token is looked for when the provider does not say (Envoy's defaults).
pub const DEFAULT_PARAM: &str = "access_token";

/// Why a request was not let through (Envoy's jwt_authn messages, which it sends as the
/// 401's body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    Missing,
    BadFormat,
    UnsupportedAlg,
    Expired,
    NotYetValid,
    UnknownIssuer,
    AudienceNotAllowed,
    NoMatchingKey,
    BadSignature,
    JwksUnavailable,
}

impl Denied {
    pub fn message(&self) -> &'static str {
        match self {
            Denied::Missing => "Jwt is missing",
            Denied::BadFormat => "Jwt is not in the form of Header.Payload.Signature",
            Denied::UnsupportedAlg => "Jwt algorithm is not supported",
            Denied::Expired => "Jwt is expired",
            Denied::NotYetValid => "Jwt not yet valid",
            Denied::UnknownIssuer => "Jwt issuer is not configured",
            Denied::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Denied::NoMatchingKey => "Jwks doesn't have key to match kid or alg from Jwt",
            Denied::BadSignature => "Jwt verification fails",
            Denied::JwksUnavailable => "Jwks remote fetch is failed",
        }
    }

    /// The `WWW-Authenticate` value of the 401: a missing token only names the realm, any
    /// other failure says the token is invalid (RFC 6750).
    pub fn www_authenticate(&self, realm: &str) -> String {
        match self {
            Denied::Missing => format!("Bearer realm=\"{realm}\""),
            _ => format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
        }
    }
}

/// A signing algorithm trellis verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs(Sha),
    Ps(Sha),
    Es256,
    Es384,
    EdDsa,
    Hs(Sha),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sha {
    S256,
    S384,
    S512,
}

impl Alg {
    pub fn parse(name: &str) -> Option<Alg> {
        use Sha::*;
        Some(match name {
            "RS256" => Alg::Rs(S256),
            "RS384" => Alg::Rs(S384),
            "RS512" => Alg::Rs(S512),
            "PS256" => Alg::Ps(S256),
            "PS384" => Alg::Ps(S384),
            "PS512" => Alg::Ps(S512),
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            "HS256" => Alg::Hs(S256),
            "HS384" => Alg::Hs(S384),
            "HS512" => Alg::Hs(S512),
            _ => return None,
        })
    }
}

/// A token taken apart, its signature not yet checked.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    /// `header.payload`, what the signature covers.
    pub signed: &'a [u8],
    pub signature: Vec<u8>,
}

fn b64(part: &str) -> Result<Vec<u8>, Denied> {
    // Tokens are unpadded base64url; some issuers pad anyway.
    BASE64URL_NOPAD
        .decode(part.trim_end_matches('=').as_bytes())
        .map_err(|_| Denied::BadFormat)
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, Denied> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Denied::BadFormat),
    }
}

/// Takes a compact JWS apart: three base64url parts, a JSON header naming a supported `alg`,
/// a JSON object of claims.
pub fn decode(token: &str) -> Result<Decoded<'_>, Denied> {
    if token.len() > JWT_BYTES_MAX {
        return Err(Denied::BadFormat);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Denied::BadFormat);
    };
    let header = object(&b64(h)?)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(Denied::BadFormat)?;
    let alg = Alg::parse(alg).ok_or(Denied::UnsupportedAlg)?;
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .map(str::to_string);
    let claims = object(&b64(p)?)?;
    let signature = b64(s)?;
    Ok(Decoded {
        alg,
        kid,
        claims,
        signed: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature,
    })
}

/// One key of a JWKS.
enum KeyMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (`04 || x || y`).
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
    Hmac(Vec<u8>),
}

struct Jwk {
    kid: Option<String>,
    alg: Option<String>,
    key: KeyMaterial,
}

/// A JSON Web Key Set: the keys trellis can use (others are skipped, never trusted).
pub struct Jwks {
    keys: Vec<Jwk>,
    /// Tokens whose signature these keys verified: the same bytes verify the same way, so
    /// each is checked once (the claims, times included, are checked every time). New keys (a
    /// reload, a JWKS fetched again) start empty.
    verified: VerifiedDigests,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: an `oct` key is a secret.
        let kids: Vec<_> = self.keys.iter().map(|k| k.kid.as_deref()).collect();
        f.debug_struct("Jwks").field("kids", &kids).finish()
    }
}

fn field(k: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let v = k
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no `{name}`"))?;
    BASE64URL_NOPAD
        .decode(v.trim_end_matches('=').as_bytes())
        .map_err(|_| format!("`{name}` is not base64url"))
}

fn jwk(k: &Map<String, Value>) -> Result<KeyMaterial, String> {
    let kty = k.get("kty").and_then(Value::as_str).unwrap_or_default();
    let crv = k.get("crv").and_then(Value::as_str).unwrap_or_default();
    let point = |len: usize| -> Result<Vec<u8>, String> {
        let (x, y) = (field(k, "x")?, field(k, "y")?);
        if x.len() != len || y.len() != len {
            return Err(format!("{crv} coordinates are not {len} bytes"));
        }
        Ok([&[4u8][..], &x, &y].concat())
    };
    Ok(match (kty, crv) {
        ("RSA", _) => {
            let strip = |v: Vec<u8>| {
                let z = v.iter().take_while(|b| **b == 0).count();
                v[z..].to_vec()
            };
            KeyMaterial::Rsa {
                n: strip(field(k, "n")?),
                e: strip(field(k, "e")?),
            }
        }
        ("EC", "P-256") => KeyMaterial::P256(point(32)?),
        ("EC", "P-384") => KeyMaterial::P384(point(48)?),
        ("OKP", "Ed25519") => KeyMaterial::Ed25519(field(k, "x")?),
        ("oct", _) => KeyMaterial::Hmac(field(k, "k")?),
        _ => return Err(format!("key type {kty:?} {crv:?} is not supported")),
    })
}

impl Jwks {
    /// Reads a JWKS. Keys trellis cannot use (another type or curve, `use: enc`) are left
    /// out; a set with none left is an error, as is one with more than [`JWKS_KEYS_MAX`].
    pub fn parse(text: &[u8]) -> Result<Jwks, String> {
        let v: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
        let list = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no `keys` array")?;
        if list.len() > JWKS_KEYS_MAX {
            return Err(format!("more than {JWKS_KEYS_MAX} keys"));
        }
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, k) in list.iter().enumerate() {
            let Some(k) = k.as_object() else {
                skipped.push(format!("keys[{i}]: not an object"));
                continue;
            };
            if k.get("use")
                .and_then(Value::as_str)
                .is_some_and(|u| u != "sig")
            {
                continue;
            }
            match jwk(k) {
                Ok(key) => keys.push(Jwk {
                    kid: k.get("kid").and_then(Value::as_str).map(str::to_string),
                    alg: k.get("alg").and_then(Value::as_str).map(str::to_string),
                    key,
                }),
                Err(e) => skipped.push(format!("keys[{i}]: {e}")),
            }
        }
        if keys.is_empty() {
            return Err(format!("no usable key ({})", skipped.join("; ")));
        }
        if !skipped.is_empty() {
            tracing::info!(skipped = %skipped.join("; "), "JWKS: keys left out");
        }
        Ok(Jwks {
            keys,
            verified: VerifiedDigests::new(JWT_VERIFIED_MAX, &VERIFIED_CLEARED),
        })
    }

    /// Checks a decoded token's signature with the keys that match its `kid` and `alg`.
    pub fn verify(&self, t: &Decoded<'_>) -> Result<(), Denied> {
        let seen = VerifiedDigests::digest(&[t.signed, &t.signature]);
        if self.verified.contains(&seen) {
            return Ok(());
        }
        self.verify_signature(t)?;
        self.verified.insert(seen);
        Ok(())
    }

    /// Checks a token's signature with ring, every time.
    fn verify_signature(&self, t: &Decoded<'_>) -> Result<(), Denied> {
        use ring::signature as sig;
        let mut tried = false;
        for k in &self.keys {
            if let (Some(want), Some(have)) = (&t.kid, &k.kid)
                && want != have
            {
                continue;
            }
            if let Some(a) = &k.alg
                && Alg::parse(a) != Some(t.alg)
            {
                continue;
            }
            let ok = match (&k.key, t.alg) {
                (KeyMaterial::Rsa { n, e }, Alg::Rs(h) | Alg::Ps(h)) => {
                    let params: &sig::RsaParameters = match (t.alg, h) {
                        (Alg::Rs(_), Sha::S256) => &sig::RSA_PKCS1_2048_8192_SHA256,
                        (Alg::Rs(_), Sha::S384) => &sig::RSA_PKCS1_2048_8192_SHA384,
                        (Alg::Rs(_), Sha::S512) => &sig::RSA_PKCS1_2048_8192_SHA512,
                        (_, Sha::S256) => &sig::RSA_PSS_2048_8192_SHA256,
                        (_, Sha::S384) => &sig::RSA_PSS_2048_8192_SHA384,
                        (_, Sha::S512) => &sig::RSA_PSS_2048_8192_SHA512,
                    };
                    let key = sig::RsaPublicKeyComponents { n, e };
                    key.verify(params, t.signed, &t.signature).is_ok()
                }
                (KeyMaterial::P256(p), Alg::Es256) => {
                    sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, p)
                        .verify(t.signed, &t.signature)
                        .is_ok()
                }
                (KeyMaterial::P384(p), Alg::Es384) => {
                    sig::UnparsedPublicKey::new(&sig::ECDSA_P384_SHA384_FIXED, p)
                        .verify(t.signed, &t.signature)
                        .is_ok()
                }
                (KeyMaterial::Ed25519(p), Alg::EdDsa) => {
                    sig::UnparsedPublicKey::new(&sig::ED25519, p)
                        .verify(t.signed, &t.signature)
                        .is_ok()
                }
                (KeyMaterial::Hmac(secret), Alg::Hs(h)) => {
                    let alg = match h {
                        Sha::S256 => ring::hmac::HMAC_SHA256,
                        Sha::S384 => ring::hmac::HMAC_SHA384,
                        Sha::S512 => ring::hmac::HMAC_SHA512,
                    };
                    let key = ring::hmac::Key::new(alg, secret);
                    ring::hmac::verify(&key, t.signed, &t.signature).is_ok()
                }
                _ => continue,
            };
            tried = true;
            if ok {
                return Ok(());
            }
        }
        Err(if tried {
            Denied::BadSignature
        } else {
            Denied::NoMatchingKey
        })
    }
}

/// Where a provider looks for a token.
#[derive(Debug, Clone)]
pub enum Location {
    /// A header, with the prefix stripped from its value (`Bearer `).
    Header {
        name: http::HeaderName,
        prefix: String,
    },
    Cookie(String),
    Param(String),
}

impl Location {
    /// The values of a request here (empty ones left out).
    pub fn values(&self, headers: &http::HeaderMap, query: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            Location::Header { name, prefix } => {
                for v in headers.get_all(name) {
                    let Ok(v) = v.to_str() else { continue };
                    let p = prefix.len();
                    if v.len() >= p && v.is_char_boundary(p) && v[..p].eq_ignore_ascii_case(prefix)
                    {
                        out.push(v[p..].trim().to_string());
                    }
                }
            }
            Location::Cookie(name) => out.extend(cookies(headers, name)),
            Location::Param(name) => {
                for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
                    if k == name.as_str() {
                        out.push(v.into_owned());
                    }
                }
            }
        }
        out.retain(|t| !t.is_empty());
        out
    }
}

/// Where a provider's keys come from.
#[derive(Debug)]
pub enum Keys {
    Local(Arc<Jwks>),
    Remote(Arc<RemoteJwks>),
}

/// One `jwt.providers[]` entry, compiled.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub keys: Keys,
    /// Claims copied into request headers (header, dotted claim path).
    pub claim_to_headers: Vec<(http::HeaderName, String)>,
    pub locations: Vec<Location>,
}

/// A token one provider verified.
#[derive(Debug)]
pub struct Verified {
    /// The provider's name.
    pub provider: String,
    pub claims: Map<String, Value>,
    /// The claims to copy into request headers.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// A SecurityPolicy's `jwt`, compiled.
#[derive(Debug)]
pub struct Jwt {
    /// A request without any token goes on.
    pub optional: bool,
    pub providers: Vec<Provider>,
}

/// Checks a token's claims at `now` (seconds since the epoch) in Envoy's order: issuer (when
/// one is required), time (`exp`, `nbf`, with [`JWT_CLOCK_SKEW_SECS`]), audience (when some
/// are required).
pub fn check_claims(
    claims: &Map<String, Value>,
    issuer: Option<&str>,
    audiences: &[String],
    now: u64,
) -> Result<(), Denied> {
    if let Some(want) = issuer
        && claims.get("iss").and_then(Value::as_str) != Some(want)
    {
        return Err(Denied::UnknownIssuer);
    }
    let time = |name: &str| -> Result<Option<u64>, Denied> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|f| *f >= 0.0)
                .map(|f| Some(f as u64))
                .ok_or(Denied::BadFormat),
        }
    };
    if let Some(exp) = time("exp")?
        && now > exp.saturating_add(JWT_CLOCK_SKEW_SECS)
    {
        return Err(Denied::Expired);
    }
    if let Some(nbf) = time("nbf")?
        && now.saturating_add(JWT_CLOCK_SKEW_SECS) < nbf
    {
        return Err(Denied::NotYetValid);
    }
    if !audiences.is_empty() {
        let allowed = |a: &Value| a.as_str().is_some_and(|a| audiences.iter().any(|w| w == a));
        let ok = match claims.get("aud") {
            Some(Value::Array(list)) => list.iter().any(allowed),
            Some(a) => allowed(a),
            None => false,
        };
        if !ok {
            return Err(Denied::AudienceNotAllowed);
        }
    }
    Ok(())
}

/// A claim by its dotted path (`org.team`).
pub fn claim<'c>(claims: &'c Map<String, Value>, path: &str) -> Option<&'c Value> {
    let mut parts = path.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.get(p)?;
    }
    Some(v)
}

/// The value of a claim as a header value: strings as they are, numbers and booleans printed;
/// objects and arrays are not copied (as Envoy).
fn claim_text(claims: &Map<String, Value>, path: &str) -> Option<String> {
    match claim(claims, path)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Provider {
    /// Checks a token's claims and signature with this provider's keys, at `now` (seconds
    /// since the epoch), in Envoy's order: issuer, time, audience, signature.
    pub fn verify(
        &self,
        t: &Decoded<'_>,
        jwks: &Jwks,
        now: u64,
    ) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, Denied> {
        check_claims(&t.claims, self.issuer.as_deref(), &self.audiences, now)?;
        jwks.verify(t)?;
        Ok(self
            .claim_to_headers
            .iter()
            .filter_map(|(h, claim)| {
                let v = claim_text(&t.claims, claim)?;
                Some((h.clone(), http::HeaderValue::from_str(&v).ok()?))
            })
            .collect())
    }

    /// The tokens of a request at this provider's locations.
    pub fn tokens(&self, headers: &http::HeaderMap, query: Option<&str>) -> Vec<String> {
        self.locations
            .iter()
            .flat_map(|l| l.values(headers, query))
            .collect()
    }
}

/// Seconds since the Unix epoch (token times are in these).
pub fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Removes the cookies named in `names` from a request's `Cookie` headers (the rest stay, in
/// one header).
pub fn remove_cookies(headers: &mut http::HeaderMap, names: &[&str]) {
    let named = |pair: &str| names.contains(&pair.trim().split('=').next().unwrap_or_default());
    let kept: Vec<String> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter(|p| !p.trim().is_empty() && !named(p))
        .map(|p| p.trim().to_string())
        .collect();
    headers.remove(http::header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = http::HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(http::header::COOKIE, v);
    }
}

/// The values of the cookies named `name` in a request's `Cookie` headers.
pub fn cookies(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for v in headers.get_all(http::header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=')
                && k == name
            {
                out.push(val.trim_matches('"').to_string());
            }
        }
    }
    out
}

impl Jwt {
    /// Checks a request: the headers to add (claims) when a provider verifies its token.
    /// Providers are tried in order; the first that verifies a token lets the request on.
    /// When none does, the first failure is the answer ([`Denied::Missing`] when no provider
    /// found a token at all, unless the policy is optional).
    pub async fn check(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Verified>, Denied> {
        let now = epoch_secs();
        let mut first: Option<Denied> = None;
        let mut looked_at = 0usize;
        for p in &self.providers {
            for token in p.tokens(headers, query) {
                looked_at += 1;
                if looked_at > JWT_TOKENS_PER_REQUEST_MAX {
                    return Err(Denied::BadFormat);
                }
                let t = match decode(&token) {
                    Ok(t) => t,
                    Err(d) => {
                        first.get_or_insert(d);
                        continue;
                    }
                };
                let outcome = match &p.keys {
                    Keys::Local(jwks) => p.verify(&t, jwks, now),
                    Keys::Remote(r) => match r.get().await {
                        Ok(jwks) => p.verify(&t, &jwks, now),
                        Err(_) => Err(Denied::JwksUnavailable),
                    },
                };
                match outcome {
                    Ok(headers) => {
                        return Ok(Some(Verified {
                            provider: p.name.clone(),
                            claims: t.claims,
                            headers,
                        }));
                    }
                    Err(d) => {
                        first.get_or_insert(d);
                    }
                }
            }
        }
        match first {
            Some(d) => Err(d),
            None if self.optional => Ok(None),
            None => Err(Denied::Missing),
        }
    }
}

/// A document fetched from a URI, read by `parse`, and kept for [`JWKS_CACHE_DURATION`]: a
/// JWKS ([`RemoteJwks`]) or an OpenID discovery document. One per URI in the process
/// ([`RemoteJwks::shared`]), so that a reload does not forget it.
pub struct Remote<T> {
    uri: String,
    parse: fn(&[u8]) -> Result<T, String>,
    cached: Mutex<Cached<T>>,
    /// Held while fetching: concurrent requests wait for one fetch instead of each making one.
    fetching: tokio::sync::Mutex<()>,
}

/// A remote JWKS.
pub type RemoteJwks = Remote<Jwks>;

struct Cached<T> {
    value: Option<(Arc<T>, Instant)>,
    failed: Option<(String, Instant)>,
}

impl<T> std::fmt::Debug for Remote<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("uri", &self.uri).finish()
    }
}

/// A process-wide set of [`Remote`]s by URI.
pub type Registry<T> = LazyLock<Mutex<HashMap<String, Weak<Remote<T>>>>>;

static JWKS: Registry<Jwks> = LazyLock::new(Default::default);

/// The client remote documents are fetched with: the system's CA bundle for `https://`.
static CLIENT: LazyLock<httpkit::Client> = LazyLock::new(|| {
    httpkit::Client::with_roots(std::path::Path::new(httpkit::CA_BUNDLE)).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "no CA bundle: remote JWKS and OpenID providers over https cannot be reached");
        httpkit::Client::default()
    })
});

/// The client of [`Remote`] and of the OpenID token endpoint.
pub fn client() -> &'static httpkit::Client {
    &CLIENT
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RemoteJwks {
    /// The one cache of the JWKS at `uri` in this process.
    pub fn shared(uri: &str) -> Arc<RemoteJwks> {
        Remote::in_registry(&JWKS, uri, Jwks::parse)
    }
}

impl<T> Remote<T> {
    /// The one cache of `uri` in `registry`.
    pub fn in_registry(
        registry: &Registry<T>,
        uri: &str,
        parse: fn(&[u8]) -> Result<T, String>,
    ) -> Arc<Remote<T>> {
        let mut all = lock(registry);
        if let Some(r) = all.get(uri).and_then(Weak::upgrade) {
            return r;
        }
        all.retain(|_, w| w.strong_count() > 0);
        let r = Arc::new(Remote {
            uri: uri.to_string(),
            parse,
            cached: Mutex::new(Cached {
                value: None,
                failed: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
        });
        all.insert(uri.to_string(), Arc::downgrade(&r));
        r
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// A fresh value, or the last good one when fetching failed lately; an error when there
    /// is none.
    fn current(&self) -> Option<Result<Arc<T>, String>> {
        let c = lock(&self.cached);
        if let Some((j, at)) = &c.value
            && at.elapsed() < JWKS_CACHE_DURATION
        {
            return Some(Ok(j.clone()));
        }
        if let Some((why, at)) = &c.failed
            && at.elapsed() < JWKS_RETRY_INTERVAL
        {
            return Some(match &c.value {
                Some((j, _)) => Ok(j.clone()),
                None => Err(why.clone()),
            });
        }
        None
    }

    pub async fn get(&self) -> Result<Arc<T>, String> {
        if let Some(r) = self.current() {
            return r;
        }
        let _one = self.fetching.lock().await;
        if let Some(r) = self.current() {
            return r;
        }
        let fetched = self.fetch().await;
        let mut c = lock(&self.cached);
        match fetched {
            Ok(j) => {
                let j = Arc::new(j);
                c.value = Some((j.clone(), Instant::now()));
                c.failed = None;
                Ok(j)
            }
            Err(why) => {
                tracing::warn!(uri = %self.uri, error = %why, stale = c.value.is_some(),
                    "remote fetch failed");
                c.failed = Some((why.clone(), Instant::now()));
                match &c.value {
                    Some((j, _)) => Ok(j.clone()),
                    None => Err(why),
                }
            }
        }
    }

    async fn fetch(&self) -> Result<T, String> {
        let req = http::Request::get(&self.uri)
            .header(http::header::ACCEPT, "application/json")
            .body(bytes::Bytes::new())
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(JWKS_FETCH_TIMEOUT, CLIENT.send(req))
            .await
            .map_err(|_| format!("no answer within {JWKS_FETCH_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        if resp.status != 200 {
            return Err(format!("HTTP {}", resp.status));
        }
        (self.parse)(&resp.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs_token(header: &str, claims: &str, secret: &[u8]) -> String {
        let signed = format!(
            "{}.{}",
            BASE64URL_NOPAD.encode(header.as_bytes()),
            BASE64URL_NOPAD.encode(claims.as_bytes())
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, signed.as_bytes());
        format!("{signed}.{}", BASE64URL_NOPAD.encode(tag.as_ref()))
    }

    /// A token verified once is not checked with the key again, but only those exact bytes:
    /// another signature over the same claims, or the same signature over other claims, is
    /// checked (and refused); and the claims, expiry included, are checked every time.
    #[test]
    fn a_verified_token_is_remembered_by_its_bytes_only() {
        let set = r#"{"keys":[{"kty":"oct","kid":"a","k":"c2VjcmV0"}]}"#;
        let (p, jwks) = provider(set, None, &[]);
        let h = r#"{"alg":"HS256","kid":"a"}"#;
        let claims = r#"{"sub":"alice","exp":1000000}"#;
        let good = hs_token(h, claims, b"secret");
        let check = |t: &str, now: u64| p.verify(&decode(t).expect("decodes"), &jwks, now);
        assert!(check(&good, 999_000).is_ok());
        assert_eq!(jwks.verified.len(), 1);
        assert!(check(&good, 999_000).is_ok());
        assert_eq!(jwks.verified.len(), 1);
        // Expired later: refused although its signature is remembered.
        assert_eq!(check(&good, 1_000_061), Err(Denied::Expired));
        // The same claims signed with another key; the good signature on other claims.
        let forged = hs_token(h, claims, b"guess");
        assert_eq!(check(&forged, 999_000), Err(Denied::BadSignature));
        let (head_payload, sig) = good.rsplit_once('.').expect("three parts");
        let (head, _) = head_payload.split_once('.').expect("three parts");
        let other = format!(
            "{head}.{}.{sig}",
            BASE64URL_NOPAD.encode(br#"{"sub":"mallory","exp":1000000}"#)
        );
        assert_eq!(check(&other, 999_000), Err(Denied::BadSignature));
        assert_eq!(jwks.verified.len(), 1);
    }

    fn provider(jwks: &str, issuer: Option<&str>, audiences: &[&str]) -> (Provider, Arc<Jwks>) {
        let jwks = Arc::new(Jwks::parse(jwks.as_bytes()).expect("jwks"));
        let p = Provider {
            name: "p".into(),
            issuer: issuer.map(str::to_string),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            keys: Keys::Local(jwks.clone()),
            claim_to_headers: vec![
                (http::HeaderName::from_static("x-sub"), "sub".into()),
                (http::HeaderName::from_static("x-team"), "org.team".into()),
            ],
            locations: vec![Location::Param("t".into())],
        };
        (p, jwks)
    }

    #[test]
    fn hmac_tokens_check_claims_in_envoys_order() {
        // "secret" as an `oct` key.
        let set = r#"{"keys":[{"kty":"oct","kid":"a","k":"c2VjcmV0"},{"kty":"EC","crv":"P-521"}]}"#;
        let (p, jwks) = provider(set, Some("https://issuer"), &["api"]);
        let h = r#"{"alg":"HS256","kid":"a"}"#;
        let check = |claims: &str, secret: &[u8]| {
            let t = hs_token(h, claims, secret);
            let d = decode(&t)?;
            p.verify(&d, &jwks, 1_000_000)
        };
        let good = r#"{"iss":"https://issuer","aud":["x","api"],"exp":1000000,"sub":"alice","org":{"team":7}}"#;
        let add = check(good, b"secret").expect("verifies");
        assert_eq!(add.len(), 2);
        assert_eq!(add[0].1, "alice");
        assert_eq!(add[1].1, "7");
        assert_eq!(check(good, b"other"), Err(Denied::BadSignature));
        for (claims, want) in [
            (
                r#"{"iss":"https://other","aud":"api"}"#,
                Denied::UnknownIssuer,
            ),
            (
                r#"{"iss":"https://issuer","aud":"api","exp":999939}"#,
                Denied::Expired,
            ),
            (
                r#"{"iss":"https://issuer","aud":"api","nbf":1000061}"#,
                Denied::NotYetValid,
            ),
            (
                r#"{"iss":"https://issuer","aud":"web"}"#,
                Denied::AudienceNotAllowed,
            ),
            (r#"{"iss":"https://issuer"}"#, Denied::AudienceNotAllowed),
            (
                r#"{"iss":"https://issuer","aud":"api","exp":"soon"}"#,
                Denied::BadFormat,
            ),
        ] {
            assert_eq!(check(claims, b"secret"), Err(want), "{claims}");
        }
        // Within the skew is still good.
        assert!(
            check(
                r#"{"iss":"https://issuer","aud":"api","exp":999941}"#,
                b"secret"
            )
            .is_ok()
        );
        // Another kid: no key to try.
        let t = hs_token(r#"{"alg":"HS256","kid":"b"}"#, good, b"secret");
        assert_eq!(
            p.verify(&decode(&t).expect("decodes"), &jwks, 1_000_000),
            Err(Denied::NoMatchingKey)
        );
    }

    #[test]
    fn malformed_and_unsigned_tokens_are_refused() {
        let none = format!(
            "{}.{}.",
            BASE64URL_NOPAD.encode(br#"{"alg":"none"}"#),
            BASE64URL_NOPAD.encode(br#"{"sub":"x"}"#)
        );
        assert_eq!(decode(&none).err(), Some(Denied::UnsupportedAlg));
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.",
            "e30.e30.e30",
            &"a".repeat(JWT_BYTES_MAX + 1),
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        assert!(Jwks::parse(br#"{"keys":[]}"#).is_err());
        assert!(Jwks::parse(br#"{"keys":[{"kty":"RSA","use":"enc","n":"AQ","e":"AQ"}]}"#).is_err());
        assert!(Jwks::parse(b"[]").is_err());
    }

    #[test]
    fn tokens_are_found_where_the_provider_looks() {
        let (mut p, _) = provider(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#, None, &[]);
        p.locations = vec![
            Location::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
            },
            Location::Cookie("session".into()),
            Location::Param(DEFAULT_PARAM.into()),
        ];
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "bearer aaa".parse().expect("v"),
        );
        h.append(http::header::COOKIE, "a=1; session=bbb".parse().expect("v"));
        assert_eq!(
            p.tokens(&h, Some("x=1&access_token=ccc")),
            vec!["aaa", "bbb", "ccc"]
        );
        h.insert(http::header::AUTHORIZATION, "Basic zzz".parse().expect("v"));
        assert_eq!(p.tokens(&h, None), vec!["bbb"]);
    }

    #[test]
    fn a_request_with_too_many_tokens_is_refused_unchecked() {
        let (mut p, _) = provider(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#, None, &[]);
        p.locations = vec![Location::Param(DEFAULT_PARAM.into())];
        let jwt = Jwt {
            optional: false,
            providers: vec![p],
        };
        // Signed with another key: each costs a signature check, and fails it.
        let token = hs_token(r#"{"alg":"HS256"}"#, r#"{"sub":"x"}"#, b"other");
        let query = |n: usize| vec![format!("access_token={token}"); n].join("&");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let h = http::HeaderMap::new();
        assert_eq!(
            rt.block_on(jwt.check(&h, Some(&query(JWT_TOKENS_PER_REQUEST_MAX))))
                .err(),
            Some(Denied::BadSignature)
        );
        assert_eq!(
            rt.block_on(jwt.check(&h, Some(&query(JWT_TOKENS_PER_REQUEST_MAX + 1))))
                .err(),
            Some(Denied::BadFormat)
        );
    }
}
