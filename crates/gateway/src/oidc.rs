//! SecurityPolicy `oidc`: the OpenID Connect authorization-code flow in front of a route, as
//! Envoy Gateway's oauth2 filter runs it, with the ID token verified.
//!
//! - A request without a valid session is sent (302) to the provider's authorization
//!   endpoint with `state`, `nonce` and a PKCE challenge (S256); those, with the page asked
//!   for, wait in a short-lived encrypted cookie.
//! - The provider sends the browser back to the callback (`redirectURL`'s path, by default
//!   `/oauth2/callback`): the state must match, the code is exchanged at the token endpoint
//!   (client secret in the form, with the PKCE verifier), and the ID token must verify
//!   (signature with the provider's JWKS, `iss`, `aud` = client ID, `exp`, `nonce`). The
//!   session (access token, refresh token, expiry) goes into one cookie, encrypted and
//!   authenticated with AES-256-GCM under a key derived (HKDF-SHA256) from the client
//!   secret and the policy's name: every replica reads it, a restart keeps it, a changed
//!   secret ends it, and a tampered one is no session.
//! - With a session, the request goes on (with `Authorization: Bearer` the access token
//!   when `forwardAccessToken`). An expired session with a refresh token is refreshed at the
//!   token endpoint; without one, or when refreshing fails, the login starts again.
//! - `logoutPath` clears the session and redirects to `/`.
//!
//! Endpoints come from the provider's discovery document (`issuer` +
//! `/.well-known/openid-configuration`, cached like a remote JWKS); `authorizationEndpoint`
//! and `tokenEndpoint` override it. When the provider cannot be reached nobody gets in (503).

use std::sync::{Arc, LazyLock};

use data_encoding::BASE64URL_NOPAD;
use ring::aead;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::jwt::{self, Registry, Remote, RemoteJwks};
pub use crate::limits::{COOKIE_BYTES_MAX, LOGIN_MAX_SECS};

/// Where the provider sends the browser back when `redirectURL` does not say.
pub const DEFAULT_CALLBACK_PATH: &str = "/oauth2/callback";
/// Envoy Gateway's default logout path.
pub const DEFAULT_LOGOUT_PATH: &str = "/logout";
/// The secret key holding the client secret (Envoy Gateway's).
pub const CLIENT_SECRET_KEY: &str = "client-secret";
/// A session with no expiry from the provider lasts this long.
pub const DEFAULT_SESSION_SECS: u64 = 3600;

/// The provider's discovery document: the fields trellis uses.
#[derive(Debug, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
}

impl Discovery {
    fn parse(body: &[u8]) -> Result<Discovery, String> {
        serde_json::from_slice(body).map_err(|e| format!("discovery document: {e}"))
    }
}

static DISCOVERY: Registry<Discovery> = LazyLock::new(Default::default);

/// A SecurityPolicy's `oidc`, compiled.
pub struct Oidc {
    pub issuer: String,
    pub client_id: String,
    client_secret: String,
    /// Absolute; when absent, `{scheme}://{host}` + [`DEFAULT_CALLBACK_PATH`].
    pub redirect_url: Option<String>,
    pub callback_path: String,
    pub logout_path: String,
    /// Space-separated, `openid` first.
    pub scope: String,
    pub cookie_domain: Option<String>,
    pub forward_access_token: bool,
    /// Keep the refresh token and use it when the session expires.
    pub refresh: bool,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    discovery: Arc<Remote<Discovery>>,
    key: aead::LessSafeKey,
    pub session_cookie: String,
    pub login_cookie: String,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("callback_path", &self.callback_path)
            .finish_non_exhaustive()
    }
}

/// What the provider issued, kept in the session cookie.
#[derive(Debug, Serialize, Deserialize)]
struct Session {
    #[serde(rename = "a")]
    access_token: String,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// Expiry, seconds since the epoch.
    #[serde(rename = "e")]
    expires: u64,
}

/// A login under way, kept in the login cookie.
#[derive(Debug, Serialize, Deserialize)]
struct Login {
    state: String,
    nonce: String,
    verifier: String,
    /// The path and query first asked for.
    url: String,
    expires: u64,
}

/// What the token endpoint answers.
#[derive(Debug, Deserialize)]
struct Tokens {
    access_token: String,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The outcome for one request.
#[derive(Debug)]
pub enum Outcome {
    /// Authenticated: go on, with this `Authorization` value when the policy forwards the
    /// access token.
    Pass(Option<String>),
    /// Answer this instead (a redirect, a refusal).
    Reply(http::Response<String>),
}

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // The system's generator does not fail on Linux; if it ever did, a zero value would be
    // predictable, so refuse to go on.
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random generator");
    b
}

fn reply(status: u16, body: &str) -> http::Response<String> {
    let mut r = http::Response::new(format!("{body}\n"));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::UNAUTHORIZED);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn redirect(location: &str, cookies: &[String]) -> http::Response<String> {
    let mut r = reply(302, "");
    if let Ok(v) = http::HeaderValue::from_str(location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    for c in cookies {
        if let Ok(v) = http::HeaderValue::from_str(c) {
            r.headers_mut().append(http::header::SET_COOKIE, v);
        }
    }
    r
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Settings of an `oidc` (from the model, with the secret read by the caller).
#[derive(Debug)]
pub struct Settings<'a> {
    /// `namespace/name` of the policy: the cookies and the session key are its own.
    pub policy: &'a str,
    pub spec: &'a model::kinds::envoy::Oidc,
    pub client_secret: String,
}

impl Oidc {
    pub fn new(s: Settings<'_>) -> Result<Oidc, String> {
        let spec = s.spec;
        let client_id = spec
            .client_id
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or("spec.oidc.clientID: needed")?;
        if s.client_secret.is_empty() {
            return Err("spec.oidc.clientSecret: the secret is empty".into());
        }
        let issuer = spec.provider.issuer.trim_end_matches('/').to_string();
        let callback_path = match &spec.redirect_url {
            Some(u) => {
                let uri: http::Uri = u
                    .parse()
                    .map_err(|e| format!("spec.oidc.redirectURL {u:?}: {e}"))?;
                if uri.scheme().is_none() || uri.authority().is_none() {
                    return Err(format!("spec.oidc.redirectURL {u:?}: not an absolute URL"));
                }
                uri.path().to_string()
            }
            None => DEFAULT_CALLBACK_PATH.to_string(),
        };
        let mut scopes = vec!["openid".to_string()];
        scopes.extend(spec.scopes.iter().filter(|s| *s != "openid").cloned());
        // One key per policy and secret: a session of one policy is nothing to another.
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"trellis oidc session");
        let info = [s.policy.as_bytes(), b"\0", client_id.as_bytes()].concat();
        let info = [info.as_slice()];
        let prk = salt.extract(s.client_secret.as_bytes());
        let okm = prk
            .expand(&info, &aead::AES_256_GCM)
            .map_err(|_| "cannot derive the session key".to_string())?;
        let key = aead::LessSafeKey::new(aead::UnboundKey::from(okm));
        let digest = ring::digest::digest(&ring::digest::SHA256, s.policy.as_bytes());
        let id = data_encoding::HEXLOWER.encode(&digest.as_ref()[..4]);
        Ok(Oidc {
            discovery: Remote::in_registry(
                &DISCOVERY,
                &format!("{issuer}/.well-known/openid-configuration"),
                Discovery::parse,
            ),
            issuer,
            client_id,
            client_secret: s.client_secret,
            redirect_url: spec.redirect_url.clone(),
            callback_path,
            logout_path: spec
                .logout_path
                .clone()
                .unwrap_or_else(|| DEFAULT_LOGOUT_PATH.to_string()),
            scope: scopes.join(" "),
            cookie_domain: spec.cookie_domain.clone(),
            forward_access_token: spec.forward_access_token.unwrap_or(false),
            refresh: spec.refresh_token.unwrap_or(true),
            authorization_endpoint: spec.provider.authorization_endpoint.clone(),
            token_endpoint: spec.provider.token_endpoint.clone(),
            key,
            session_cookie: format!("trellis-oidc-{id}"),
            login_cookie: format!("trellis-oidc-login-{id}"),
        })
    }

    /// Removes this policy's cookies from a request going upstream: the session is between
    /// the browser and the gateway.
    pub fn strip_cookies(&self, headers: &mut http::HeaderMap) {
        jwt::remove_cookies(headers, &[&self.session_cookie, &self.login_cookie]);
    }

    fn seal(&self, aad: &str, plain: &[u8]) -> String {
        let nonce = random(aead::NONCE_LEN);
        let mut data = plain.to_vec();
        let n = aead::Nonce::try_assume_unique_for_key(&nonce).expect("nonce length");
        // Sealing only fails for inputs longer than AES-GCM allows (64 GiB).
        self.key
            .seal_in_place_append_tag(n, aead::Aad::from(aad.as_bytes()), &mut data)
            .expect("seal");
        BASE64URL_NOPAD.encode(&[nonce, data].concat())
    }

    /// Seals `plain` as the value of cookie `aad`. For the fuzz targets only.
    #[doc(hidden)]
    pub fn seal_for_fuzz(&self, aad: &str, plain: &[u8]) -> String {
        self.seal(aad, plain)
    }

    /// What a client's cookie `aad` holds, when this policy sealed it. For the fuzz targets
    /// only.
    #[doc(hidden)]
    pub fn open_for_fuzz(&self, aad: &str, text: &str) -> Option<Vec<u8>> {
        self.open(aad, text)
    }

    /// A sealed value back, or nothing when it was not sealed by this policy for `aad`.
    fn open(&self, aad: &str, text: &str) -> Option<Vec<u8>> {
        let raw = BASE64URL_NOPAD.decode(text.as_bytes()).ok()?;
        if raw.len() < aead::NONCE_LEN + aead::AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, data) = raw.split_at(aead::NONCE_LEN);
        let mut data = data.to_vec();
        let n = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = self
            .key
            .open_in_place(n, aead::Aad::from(aad.as_bytes()), &mut data)
            .ok()?;
        Some(plain.to_vec())
    }

    fn read<T: for<'de> Deserialize<'de>>(
        &self,
        headers: &http::HeaderMap,
        name: &str,
    ) -> Option<T> {
        jwt::cookies(headers, name)
            .iter()
            .find_map(|c| serde_json::from_slice(&self.open(name, c)?).ok())
    }

    /// A `Set-Cookie` value: `value` sealed, or the cookie cleared when `None`.
    fn cookie(
        &self,
        name: &str,
        value: Option<&[u8]>,
        secure: bool,
        max_age: Option<u64>,
    ) -> String {
        let mut c = match value {
            Some(v) => format!("{name}={}", self.seal(name, v)),
            None => format!("{name}=deleted; Max-Age=0"),
        };
        c.push_str("; Path=/; HttpOnly; SameSite=Lax");
        if secure {
            c.push_str("; Secure");
        }
        if let Some(d) = &self.cookie_domain {
            c.push_str(&format!("; Domain={d}"));
        }
        if let (Some(_), Some(age)) = (value, max_age) {
            c.push_str(&format!("; Max-Age={age}"));
        }
        c
    }

    /// The provider's endpoints: discovered, with the policy's overrides.
    async fn endpoints(&self) -> Result<(String, String, Arc<RemoteJwks>), String> {
        let d = self.discovery.get().await?;
        if d.issuer.trim_end_matches('/') != self.issuer {
            return Err(format!(
                "the discovery document names issuer {:?}, not {:?}",
                d.issuer, self.issuer
            ));
        }
        Ok((
            self.authorization_endpoint
                .clone()
                .unwrap_or_else(|| d.authorization_endpoint.clone()),
            self.token_endpoint
                .clone()
                .unwrap_or_else(|| d.token_endpoint.clone()),
            RemoteJwks::shared(&d.jwks_uri),
        ))
    }

    fn redirect_uri(&self, scheme: &str, authority: &str) -> String {
        self.redirect_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{authority}{DEFAULT_CALLBACK_PATH}"))
    }

    /// Checks one request (`scheme` and `authority` as the client used them).
    pub async fn check(
        &self,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        scheme: &str,
        authority: &str,
    ) -> Outcome {
        let secure = scheme == "https";
        let path = uri.path();
        if path == self.logout_path {
            let clear = self.cookie(&self.session_cookie, None, secure, None);
            return Outcome::Reply(redirect("/", &[clear]));
        }
        if path == self.callback_path {
            return Outcome::Reply(self.callback(uri.query(), headers, scheme, authority).await);
        }
        let now = jwt::epoch_secs();
        if let Some(s) = self.read::<Session>(headers, &self.session_cookie) {
            if now < s.expires {
                return Outcome::Pass(
                    self.forward_access_token
                        .then(|| format!("Bearer {}", s.access_token)),
                );
            }
            if let Some(rt) = &s.refresh_token
                && let Ok(session) = self.refresh(rt).await
            {
                // The browser comes back with the new session to the same page.
                let here = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let c = self.session(&session, secure);
                return Outcome::Reply(match c {
                    Ok(c) => redirect(here, &[c]),
                    Err(e) => reply(500, &e),
                });
            }
        }
        Outcome::Reply(self.login(uri, scheme, authority).await)
    }

    /// The redirect to the provider, with the login remembered in its cookie.
    async fn login(
        &self,
        uri: &http::Uri,
        scheme: &str,
        authority: &str,
    ) -> http::Response<String> {
        let (authorize, _, _) = match self.endpoints().await {
            Ok(e) => e,
            Err(e) => return self.unavailable(&e),
        };
        let login = Login {
            state: BASE64URL_NOPAD.encode(&random(24)),
            nonce: BASE64URL_NOPAD.encode(&random(24)),
            verifier: BASE64URL_NOPAD.encode(&random(32)),
            url: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            expires: jwt::epoch_secs() + LOGIN_MAX_SECS,
        };
        let challenge = BASE64URL_NOPAD.encode(
            ring::digest::digest(&ring::digest::SHA256, login.verifier.as_bytes()).as_ref(),
        );
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri(scheme, authority))
            .append_pair("scope", &self.scope)
            .append_pair("state", &login.state)
            .append_pair("nonce", &login.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if authorize.contains('?') { '&' } else { '?' };
        let plain = serde_json::to_vec(&login).unwrap_or_default();
        let c = self.cookie(
            &self.login_cookie,
            Some(&plain),
            scheme == "https",
            Some(LOGIN_MAX_SECS),
        );
        redirect(&format!("{authorize}{sep}{query}"), &[c])
    }

    fn unavailable(&self, why: &str) -> http::Response<String> {
        tracing::warn!(issuer = %self.issuer, error = %why, "OpenID provider unavailable");
        reply(503, "OpenID provider unavailable")
    }

    /// The session cookie for new tokens.
    fn session(&self, s: &Session, secure: bool) -> Result<String, String> {
        let plain = serde_json::to_vec(s).unwrap_or_default();
        let c = self.cookie(&self.session_cookie, Some(&plain), secure, None);
        if c.len() > COOKIE_BYTES_MAX {
            return Err(format!(
                "the session ({} bytes) does not fit a cookie",
                c.len()
            ));
        }
        Ok(c)
    }

    async fn callback(
        &self,
        query: Option<&str>,
        headers: &http::HeaderMap,
        scheme: &str,
        authority: &str,
    ) -> http::Response<String> {
        let refused = |why: &str| {
            tracing::info!(issuer = %self.issuer, reason = %why, "OpenID login refused");
            reply(401, "OAuth flow failed.")
        };
        if let Some(e) = query_param(query, "error") {
            return refused(&format!("the provider answered {e}"));
        }
        let (Some(code), Some(state)) = (query_param(query, "code"), query_param(query, "state"))
        else {
            return refused("no code or state");
        };
        let Some(login) = self.read::<Login>(headers, &self.login_cookie) else {
            return refused("no login under way (login cookie missing or not ours)");
        };
        let same: bool =
            subtle::ConstantTimeEq::ct_eq(state.as_bytes(), login.state.as_bytes()).into();
        if !same {
            return refused("state does not match");
        }
        if jwt::epoch_secs() > login.expires {
            return refused("the login took too long");
        }
        let (_, token_endpoint, jwks) = match self.endpoints().await {
            Ok(e) => e,
            Err(e) => return self.unavailable(&e),
        };
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", &code)
            .append_pair("redirect_uri", &self.redirect_uri(scheme, authority))
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", &self.client_secret)
            .append_pair("code_verifier", &login.verifier)
            .finish();
        let tokens = match self.token_request(&token_endpoint, form).await {
            Ok(t) => t,
            Err(e) => return refused(&e),
        };
        let Some(id_token) = &tokens.id_token else {
            return refused("the token endpoint gave no ID token");
        };
        let id = match self.verify_id_token(id_token, &jwks, &login.nonce).await {
            Ok(id) => id,
            Err(e) => return refused(&e),
        };
        let expires = tokens
            .expires_in
            .map(|s| jwt::epoch_secs() + s)
            .or(id.get("exp").and_then(|e| e.as_u64()))
            .unwrap_or(jwt::epoch_secs() + DEFAULT_SESSION_SECS);
        let session = Session {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token.filter(|_| self.refresh),
            expires,
        };
        let secure = scheme == "https";
        let cookie = match self.session(&session, secure) {
            Ok(c) => c,
            Err(e) => return reply(500, &e),
        };
        let clear = self.cookie(&self.login_cookie, None, secure, None);
        // Only a path on this host: never an open redirect.
        let back = if login.url.starts_with('/') && !login.url.starts_with("//") {
            login.url.as_str()
        } else {
            "/"
        };
        redirect(back, &[cookie, clear])
    }

    async fn verify_id_token(
        &self,
        token: &str,
        jwks: &RemoteJwks,
        nonce: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let t = jwt::decode(token).map_err(|d| format!("ID token: {}", d.message()))?;
        jwt::check_claims(
            &t.claims,
            Some(&self.issuer),
            std::slice::from_ref(&self.client_id),
            jwt::epoch_secs(),
        )
        .map_err(|d| format!("ID token: {}", d.message()))?;
        let keys = jwks.get().await.map_err(|e| format!("JWKS: {e}"))?;
        keys.verify(&t)
            .map_err(|d| format!("ID token: {}", d.message()))?;
        let got = t
            .claims
            .get("nonce")
            .and_then(|n| n.as_str())
            .unwrap_or_default();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            got.as_bytes(),
            nonce.as_bytes(),
        )) {
            return Err("ID token: nonce does not match".into());
        }
        Ok(t.claims)
    }

    async fn token_request(&self, endpoint: &str, form: String) -> Result<Tokens, String> {
        let req = http::Request::post(endpoint)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(bytes::Bytes::from(form))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(jwt::JWKS_FETCH_TIMEOUT, jwt::client().send(req))
            .await
            .map_err(|_| "token endpoint: no answer in time".to_string())?
            .map_err(|e| format!("token endpoint: {e}"))?;
        if resp.status != 200 {
            return Err(format!(
                "token endpoint: HTTP {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
            ));
        }
        serde_json::from_slice(&resp.body).map_err(|e| format!("token endpoint: {e}"))
    }

    /// New tokens for a refresh token.
    async fn refresh(&self, refresh_token: &str) -> Result<Session, String> {
        let (_, token_endpoint, _) = self.endpoints().await?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", refresh_token)
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", &self.client_secret)
            .finish();
        let t = self.token_request(&token_endpoint, form).await?;
        Ok(Session {
            access_token: t.access_token,
            refresh_token: t.refresh_token.or_else(|| Some(refresh_token.to_string())),
            expires: jwt::epoch_secs() + t.expires_in.unwrap_or(DEFAULT_SESSION_SECS),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oidc(policy: &str, secret: &str) -> Oidc {
        let spec = model::kinds::envoy::Oidc {
            provider: model::kinds::envoy::OidcProvider {
                issuer: "https://id.example".into(),
                ..Default::default()
            },
            client_id: Some("app".into()),
            ..Default::default()
        };
        Oidc::new(Settings {
            policy,
            spec: &spec,
            client_secret: secret.into(),
        })
        .expect("compiles")
    }

    #[test]
    fn sessions_open_only_under_their_own_policy_and_name() {
        let a = oidc("ns/a", "s1");
        let sealed = a.seal("c", b"hello");
        assert_eq!(a.open("c", &sealed).as_deref(), Some(&b"hello"[..]));
        // Another cookie name, another policy, another secret, a flipped bit: nothing.
        assert_eq!(a.open("d", &sealed), None);
        assert_eq!(oidc("ns/b", "s1").open("c", &sealed), None);
        assert_eq!(oidc("ns/a", "s2").open("c", &sealed), None);
        let mut raw = BASE64URL_NOPAD.decode(sealed.as_bytes()).expect("b64");
        raw[20] ^= 1;
        assert_eq!(a.open("c", &BASE64URL_NOPAD.encode(&raw)), None);
        assert_eq!(a.open("c", "short"), None);
        // The same secret and policy on another replica (or after a restart) reads it.
        assert!(oidc("ns/a", "s1").open("c", &sealed).is_some());
        assert_eq!(a.scope, "openid");
        assert_eq!(a.callback_path, DEFAULT_CALLBACK_PATH);
    }
}
