//! The one decision of a request, without I/O: which rule it matched and the client as the
//! ClientTrafficPolicy defines it ([`route`]), then what answers it ([`answer`]): a
//! redirect, the gateway itself (a rule whose backends cannot be used), or a backend chosen
//! by weight with the path as the rule rewrites it and the response encoding negotiated.
//! Every transport asks here: the own HTTP/1 path right after parsing (and serves the answer
//! itself when the rule only forwards), the general path (HTTP/1, HTTP/2, HTTP/3) after the
//! rule's SecurityPolicy and Lua have run, as Envoy Gateway orders its filters.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;

use crate::backend::{Backend, pick_weighted};
use crate::compress::{self, Encoding};
use crate::headers::HeaderSource;
use crate::plan::{Action, PathRewrite, Redirect, Router};

/// A request as routing sees it.
pub struct Head<'a, H: HeaderSource + ?Sized> {
    pub method: &'a str,
    /// Without its port, lower case.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a H,
}

/// The rule a request matched.
#[derive(Clone)]
pub struct Routed {
    pub action: Arc<Action>,
    /// The client as the ClientTrafficPolicy defines it (X-Forwarded-For from trusted peers).
    pub client: SocketAddr,
}

/// What the own HTTP/1 path decided of a request it hands to the general path: the router it
/// used and the rule it matched (`None`: no route), so the request is not routed again.
pub struct Decided {
    pub router: Arc<Router>,
    pub routed: Option<Routed>,
}

impl Routed {
    /// Whether the rule only forwards (header edits and compression at most): nothing with
    /// I/O or a state of its own runs before its answer (authentication, Lua, CORS, mirrors,
    /// timeouts, an HTTP/2 upstream), so the own HTTP/1 path may serve it.
    pub fn only_forwards(&self) -> bool {
        let a = &self.action;
        a.redirect.is_none()
            && a.rewrite.is_none()
            && a.mirrors.is_empty()
            && !a.all_invalid
            && a.timeout_request.is_none()
            && a.timeout_backend.is_none()
            && a.retry.as_ref().is_none_or(|r| r.per_try.is_none())
            && !a.h2_upstream
            && a.security.is_none()
            && a.lua.is_empty()
    }
}

/// The rule `head` matches on `router`, if any, and its client.
pub fn route<H: HeaderSource + ?Sized>(
    router: &Router,
    peer: SocketAddr,
    head: &Head<'_, H>,
) -> Option<Routed> {
    let entry = router.find(head.host, head.method, head.path, head.query, head.headers)?;
    Some(Routed {
        action: entry.action.clone(),
        client: router.client_address(peer, head.headers),
    })
}

/// What answers a request once its rule's filters have run.
#[derive(Debug)]
pub enum Answer {
    /// A RequestRedirect.
    Redirect {
        status: StatusCode,
        location: String,
    },
    /// The gateway answers itself: the rule's backends cannot be used.
    Local { status: StatusCode, why: String },
    /// Upstream, to `backend`.
    Forward {
        backend: Arc<Backend>,
        /// The path after a URLRewrite, when the rule rewrites it.
        rewritten: Option<String>,
        /// The response encoding the client accepts among the rule's compressors.
        encoding: Option<Encoding>,
    },
}

/// What answers `head` under `action` (of `router`, for the scheme `scheme`); `seq` spreads
/// the weighted choice of a backend.
pub fn answer<H: HeaderSource + ?Sized>(
    router: &Router,
    action: &Action,
    head: &Head<'_, H>,
    scheme: &str,
    seq: u64,
) -> Answer {
    let local = |status: StatusCode, why: String| Answer::Local { status, why };
    if let Some(r) = &action.redirect {
        return Answer::Redirect {
            status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND),
            location: redirect_location(
                r,
                action.matched_prefix.as_deref(),
                router.port,
                head.host,
                head.path,
                head.query,
                Some(scheme),
            ),
        };
    }
    if action.backends.is_empty() {
        return local(
            StatusCode::INTERNAL_SERVER_ERROR,
            "route rule has no backends".into(),
        );
    }
    if action.all_invalid {
        let why = action
            .backends
            .iter()
            .find_map(|(_, b)| b.invalid.clone())
            .unwrap_or_default();
        return local(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("backend not usable: {why}"),
        );
    }
    let Some(backend) = pick_weighted(&action.backends, seq) else {
        return local(
            StatusCode::INTERNAL_SERVER_ERROR,
            "all backend weights are zero".into(),
        );
    };
    if let Some(why) = &backend.invalid {
        return local(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("backend not usable: {why}"),
        );
    }
    if backend.endpoints.is_empty() {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no healthy upstream for {}", backend.name),
        );
    }
    Answer::Forward {
        backend: backend.clone(),
        rewritten: action
            .rewrite
            .as_ref()
            .and_then(|rw| rw.path.as_ref())
            .map(|p| rewrite_path(p, action.matched_prefix.as_deref(), head.path)),
        encoding: compress::negotiate(head.headers, &action.compress),
    }
}

/// A path after a ReplaceFullPath or ReplacePrefixMatch.
pub fn rewrite_path(p: &PathRewrite, matched_prefix: Option<&str>, path: &str) -> String {
    match p {
        PathRewrite::Full(f) => f.clone(),
        PathRewrite::Prefix(replacement) => {
            let prefix = matched_prefix.unwrap_or("/").trim_end_matches('/');
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            let replacement = replacement.trim_end_matches('/');
            let joined = format!("{replacement}{rest}");
            if joined.is_empty() {
                "/".to_string()
            } else if !joined.starts_with('/') {
                format!("/{joined}")
            } else {
                joined
            }
        }
    }
}

/// The Location of a redirect, with the spec's port rules: an explicit port wins; else the
/// scheme's well-known port when the scheme changes; else the listener port; and the port is
/// left out when it is the scheme's default.
pub fn redirect_location(
    r: &Redirect,
    matched_prefix: Option<&str>,
    listener_port: u16,
    host: &str,
    path: &str,
    query: Option<&str>,
    request_scheme: Option<&str>,
) -> String {
    let scheme = r
        .scheme
        .clone()
        .unwrap_or_else(|| request_scheme.unwrap_or("http").to_string());
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) => match s.as_str() {
            "https" => 443,
            "http" => 80,
            _ => listener_port,
        },
        (None, None) => listener_port,
    };
    let hostname = r.hostname.clone().unwrap_or_else(|| host.to_string());
    let default = (scheme == "http" && port == 80) || (scheme == "https" && port == 443);
    let authority = if default {
        hostname
    } else {
        format!("{hostname}:{port}")
    };
    let new_path = match &r.path {
        Some(p) => rewrite_path(p, matched_prefix, path),
        None => path.to_string(),
    };
    match query {
        Some(q) => format!("{scheme}://{authority}{new_path}?{q}"),
        None => format!("{scheme}://{authority}{new_path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrites() {
        let p = |r: &str| PathRewrite::Prefix(r.to_string());
        assert_eq!(rewrite_path(&p("/bar"), Some("/foo"), "/foo/x"), "/bar/x");
        assert_eq!(rewrite_path(&p("/"), Some("/foo"), "/foo/x"), "/x");
        assert_eq!(rewrite_path(&p("/"), Some("/foo"), "/foo"), "/");
        assert_eq!(rewrite_path(&p("/bar/"), Some("/foo/"), "/foo/x"), "/bar/x");
        assert_eq!(
            rewrite_path(&PathRewrite::Full("/one".into()), Some("/foo"), "/foo/x"),
            "/one"
        );
    }

    #[test]
    fn redirect_ports() {
        let r = |scheme: Option<&str>, port: Option<u16>| Redirect {
            scheme: scheme.map(str::to_string),
            hostname: None,
            port,
            path: None,
            status: 301,
        };
        assert_eq!(
            redirect_location(
                &r(Some("https"), None),
                None,
                80,
                "a.example",
                "/x",
                None,
                None
            ),
            "https://a.example/x"
        );
        assert_eq!(
            redirect_location(
                &r(None, Some(8443)),
                None,
                80,
                "a.example",
                "/x",
                Some("q=1"),
                None
            ),
            "http://a.example:8443/x?q=1"
        );
        assert_eq!(
            redirect_location(&r(None, None), None, 8080, "a.example", "/", None, None),
            "http://a.example:8080/"
        );
        assert_eq!(
            redirect_location(
                &r(Some("https"), Some(443)),
                None,
                80,
                "a.example",
                "/",
                None,
                None
            ),
            "https://a.example/"
        );
    }
}
