//! SecurityPolicy `cors`, as Envoy's CORS filter runs it under Envoy Gateway: a preflight
//! (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed origin is
//! answered by the gateway itself, before authentication (a preflight carries no
//! credentials); any other answer to an allowed origin carries `Access-Control-Allow-Origin`
//! (the origin itself), `-Allow-Credentials` and `-Expose-Headers`. A request from an origin
//! not allowed gets no CORS headers, and its browser keeps the answer from the page.

use http::header::{self, HeaderMap, HeaderValue};

/// One allowed origin: `*`, `scheme://host[:port]`, or `scheme://*.domain[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Any,
    Exact(String),
    /// Scheme and `://`, the host's suffix with its leading dot, and `:port` or nothing.
    Wildcard {
        scheme: String,
        suffix: String,
        port: String,
    },
}

impl Origin {
    /// Reads one `allowOrigins` entry.
    pub fn parse(v: &str) -> Result<Origin, String> {
        if v == "*" {
            return Ok(Origin::Any);
        }
        let (scheme, rest) = v
            .split_once("://")
            .ok_or_else(|| format!("origin {v:?} has no scheme (write https://host)"))?;
        if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
            return Err(format!("origin {v:?} is not scheme://host[:port]"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() => {
                (h, format!(":{p}"))
            }
            _ => (rest, String::new()),
        };
        match host.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') && !suffix.contains('*') => {
                Ok(Origin::Wildcard {
                    scheme: format!("{}://", scheme.to_ascii_lowercase()),
                    suffix: suffix.to_ascii_lowercase(),
                    port,
                })
            }
            Some(_) => Err(format!(
                "origin {v:?}: a wildcard must be the first label (*.domain)"
            )),
            None if host.contains('*') => Err(format!(
                "origin {v:?}: a wildcard must be the first label (*.domain)"
            )),
            None => Ok(Origin::Exact(v.to_ascii_lowercase())),
        }
    }

    fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        match self {
            Origin::Any => true,
            Origin::Exact(o) => *o == origin,
            Origin::Wildcard {
                scheme,
                suffix,
                port,
            } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|r| r.strip_suffix(port.as_str()))
                .is_some_and(|host| {
                    host.len() > suffix.len()
                        && host.ends_with(suffix.as_str())
                        && !host.contains(':')
                        && !host.contains('/')
                }),
        }
    }
}

/// A SecurityPolicy's `cors`, compiled.
#[derive(Debug)]
pub struct Cors {
    pub origins: Vec<Origin>,
    /// Joined with `, ` as the preflight answers name them.
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: bool,
}

fn joined(v: &[String]) -> Result<Option<HeaderValue>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&v.join(", "))
        .map(Some)
        .map_err(|_| format!("{v:?} cannot be sent in a header"))
}

impl Cors {
    pub fn new(c: &model::kinds::envoy::Cors) -> Result<Cors, String> {
        let origins = c
            .allow_origins
            .iter()
            .enumerate()
            .map(|(i, o)| Origin::parse(o).map_err(|e| format!("spec.cors.allowOrigins[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let max_age = c
            .max_age
            .as_deref()
            .map(|d| {
                model::validate::parse_duration(d)
                    .map(|d| HeaderValue::from(d.as_secs()))
                    .map_err(|e| format!("spec.cors.maxAge {d:?}: {e}"))
            })
            .transpose()?;
        Ok(Cors {
            origins,
            allow_methods: joined(&c.allow_methods)
                .map_err(|e| format!("spec.cors.allowMethods: {e}"))?,
            allow_headers: joined(&c.allow_headers)
                .map_err(|e| format!("spec.cors.allowHeaders: {e}"))?,
            expose_headers: joined(&c.expose_headers)
                .map_err(|e| format!("spec.cors.exposeHeaders: {e}"))?,
            max_age,
            allow_credentials: c.allow_credentials.unwrap_or(false),
        })
    }

    /// The request's origin when it is allowed.
    pub fn allowed<'h>(&self, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
        let o = headers.get(header::ORIGIN)?;
        let text = o.to_str().ok()?;
        self.origins.iter().any(|a| a.allows(text)).then_some(o)
    }

    /// The gateway's own answer to a preflight from an allowed origin, if this is one.
    pub fn preflight(&self, method: &http::Method, headers: &HeaderMap) -> Option<HeaderMap> {
        if method != http::Method::OPTIONS
            || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let origin = self.allowed(headers)?.clone();
        let mut out = HeaderMap::new();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        for (name, v) in [
            (header::ACCESS_CONTROL_ALLOW_METHODS, &self.allow_methods),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, &self.allow_headers),
            (header::ACCESS_CONTROL_MAX_AGE, &self.max_age),
        ] {
            if let Some(v) = v {
                out.insert(name, v.clone());
            }
        }
        if self.allow_credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        Some(out)
    }

    /// Adds the CORS headers to an answer for `origin` (the request's, when allowed).
    pub fn decorate(&self, origin: &HeaderValue, resp: &mut HeaderMap) {
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.allow_credentials {
            resp.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.expose_headers {
            resp.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        resp.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_as_written() {
        let o = |v: &str| Origin::parse(v).expect(v);
        assert!(o("*").allows("https://anything.test"));
        assert!(o("https://app.example.com").allows("https://APP.example.com"));
        assert!(!o("https://app.example.com").allows("http://app.example.com"));
        let w = o("https://*.example.com");
        assert!(w.allows("https://a.example.com"));
        assert!(w.allows("https://a.b.example.com"));
        assert!(!w.allows("https://example.com"));
        assert!(!w.allows("https://a.example.com:8443"));
        assert!(!w.allows("https://evilexample.com"));
        assert!(!w.allows("https://a.example.com.evil.test"));
        assert!(o("http://*.example.com:8080").allows("http://x.example.com:8080"));
        for bad in [
            "example.com",
            "https://a*.example.com",
            "https://*example.com",
            "https://x/y",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }
}
