//! Envoy Gateway's policies (GEP-713): targets, conflicts, and each kind's fields, with the
//! SecurityPolicy fields trellis cannot enforce refused.

use super::*;
use crate::kinds::envoy::{BackendTrafficPolicySpec, ClientTrafficPolicySpec};

pub(super) fn policies(s: &Snapshot, st: &mut Statuses, res: &mut Resolution) {
    policy_kind(
        s,
        st,
        res,
        "BackendTrafficPolicy",
        &s.backend_traffic_policies,
        &|p, spec, status| {
            let key = key_of(p, ENVOY_GROUP, "BackendTrafficPolicy");
            not_applied(
                status,
                backend_policy_not_applied(spec, s.unknown_fields(&key)),
                "the policy is refused, and what it targets answers 500",
            );
            for (i, c) in spec.compressor.iter().enumerate() {
                if !matches!(c.type_.as_str(), "Gzip" | "Brotli" | "Zstd") {
                    problem(
                        status,
                        format!("spec.compressor[{i}].type"),
                        format!("compressor {:?} is not one of Gzip, Brotli, Zstd", c.type_),
                    );
                }
            }
            if let Some(r) = &spec.retry {
                const TRIGGERS: &[&str] = &[
                    "5xx",
                    "gateway-error",
                    "reset",
                    "reset-before-request",
                    "connect-failure",
                    "retriable-4xx",
                    "refused-stream",
                    "retriable-status-codes",
                    "cancelled",
                    "deadline-exceeded",
                    "internal",
                    "resource-exhausted",
                    "unavailable",
                ];
                for (i, t) in r
                    .retry_on
                    .iter()
                    .flat_map(|o| o.triggers.iter())
                    .enumerate()
                {
                    if !TRIGGERS.contains(&t.as_str()) {
                        problem(
                            status,
                            format!("spec.retry.retryOn.triggers[{i}]"),
                            format!("retry trigger {t:?} is not known"),
                        );
                    }
                }
                if let Some(b) = r.per_retry.as_ref().and_then(|p| p.back_off.as_ref()) {
                    check_duration(
                        status,
                        "spec.retry.perRetry.backOff.baseInterval",
                        &b.base_interval,
                    );
                    check_duration(
                        status,
                        "spec.retry.perRetry.backOff.maxInterval",
                        &b.max_interval,
                    );
                }
                check_duration(
                    status,
                    "spec.retry.perRetry.timeout",
                    &r.per_retry.as_ref().and_then(|p| p.timeout.clone()),
                );
            }
            if let Some(t) = spec.timeout.as_ref().and_then(|t| t.http.as_ref()) {
                check_duration(
                    status,
                    "spec.timeout.http.requestTimeout",
                    &t.request_timeout,
                );
                check_duration(
                    status,
                    "spec.timeout.http.connectionIdleTimeout",
                    &t.connection_idle_timeout,
                );
            }
            if let Some(k) = &spec.tcp_keepalive {
                check_duration(status, "spec.tcpKeepalive.idleTime", &k.idle_time);
                check_duration(status, "spec.tcpKeepalive.interval", &k.interval);
            }
        },
    );
    policy_kind(
        s,
        st,
        res,
        "ClientTrafficPolicy",
        &s.client_traffic_policies,
        &|p, spec, status| {
            for t in spec.target_refs() {
                if t.kind != "Gateway" {
                    problem(
                        status,
                        "spec.targetRefs",
                        format!("ClientTrafficPolicy targets Gateways, not {}", t.kind),
                    );
                }
            }
            for (i, t) in spec.target_selectors().iter().enumerate() {
                if t.kind != "Gateway" {
                    problem(
                        status,
                        format!("spec.targetSelectors[{i}].kind"),
                        format!("ClientTrafficPolicy targets Gateways, not {}", t.kind),
                    );
                }
            }
            if let Some(x) = spec
                .client_ip_detection
                .as_ref()
                .and_then(|c| c.x_forwarded_for.as_ref())
            {
                for (i, c) in x.trusted_cidrs.iter().enumerate() {
                    if c.parse::<ipnet::IpNet>().is_err() {
                        problem(
                            status,
                            format!("spec.clientIPDetection.xForwardedFor.trustedCIDRs[{i}]"),
                            format!("{c:?} is not a CIDR"),
                        );
                    }
                }
            }
            if let Some(m) = spec
                .http2
                .as_ref()
                .and_then(|h| h.on_invalid_message.as_ref())
                && !matches!(m.as_str(), "TerminateConnection" | "TerminateStream")
            {
                problem(
                    status,
                    "spec.http2.onInvalidMessage",
                    format!("{m:?} is not TerminateConnection or TerminateStream"),
                );
            }
            // Fields that are parsed and kept but cannot be served as asked: say so in one
            // Supported condition, without making the policy invalid (the rest applies).
            let key = key_of(p, ENVOY_GROUP, "ClientTrafficPolicy");
            let (refused, ignored) = client_policy_not_applied(spec, s.unknown_fields(&key));
            let mut unsupported: Vec<String> = ignored
                .into_iter()
                .map(|path| format!("{path} is not applied"))
                .collect();
            not_applied(
                status,
                (refused, Vec::new()),
                "the policy is refused, and its Gateway's listeners are not served until it is \
                 fixed (never served without what it asks for)",
            );
            if spec.http3.is_some()
                && spec.tls.as_ref().and_then(|t| t.max_version.as_deref()) == Some("1.2")
            {
                // QUIC carries its own TLS 1.3 handshake.
                unsupported.push(
                    "spec.http3: HTTP/3 is not served: QUIC needs TLS 1.3 and spec.tls.maxVersion \
                     is 1.2"
                        .to_string(),
                );
            }
            if let Some(tls) = &spec.tls {
                if tls.client_validation.is_some() {
                    problem(
                        status,
                        "spec.tls.clientValidation",
                        "client certificates are not verified by trellis: the Gateway's \
                         listeners are not served while its policy asks for them",
                    );
                }
                match tls.cipher_suites() {
                    Err((i, why)) => {
                        problem(status, format!("spec.tls.ciphers[{i}]"), why);
                    }
                    Ok(suites) if !suites.is_empty() => {
                        let lacking: Vec<&str> = suites
                            .iter()
                            .filter(|(_, _, offered)| !offered)
                            .map(|(name, _, _)| *name)
                            .collect();
                        const WHY: &str = "trellis (rustls) implements only ECDHE with AES-GCM \
                                           or ChaCha20-Poly1305";
                        if lacking.len() == suites.len() {
                            if tls.max_version.as_deref() == Some("1.2") {
                                problem(
                                    status,
                                    "spec.tls.ciphers",
                                    format!(
                                        "none of the suites listed can be offered ({WHY}), and \
                                         maxVersion 1.2 leaves no other way to connect"
                                    ),
                                );
                            } else {
                                unsupported.push(format!(
                                    "spec.tls.ciphers: TLS 1.2 is not offered, none of its \
                                     suites listed can be ({WHY}); TLS 1.3 is"
                                ));
                            }
                        } else if !lacking.is_empty() {
                            unsupported.push(format!(
                                "spec.tls.ciphers: {} not offered ({WHY})",
                                lacking.join(", ")
                            ));
                        }
                    }
                    Ok(_) => {}
                }
                for (field, v) in [
                    ("minVersion", &tls.min_version),
                    ("maxVersion", &tls.max_version),
                ] {
                    if let Some(v) = v
                        && !matches!(v.as_str(), "Auto" | "1.0" | "1.1" | "1.2" | "1.3")
                    {
                        problem(
                            status,
                            format!("spec.tls.{field}"),
                            format!("TLS version {v:?} is not one of Auto, 1.0, 1.1, 1.2, 1.3"),
                        );
                    }
                }
                // TLS is rustls's: 1.2 and 1.3. An older minimum is met more strictly; an
                // older maximum cannot be.
                if let Some(v @ ("1.0" | "1.1")) = tls.max_version.as_deref() {
                    problem(
                        status,
                        "spec.tls.maxVersion",
                        format!(
                            "TLS maxVersion {v} cannot be honoured: trellis speaks TLS 1.2 and 1.3 only"
                        ),
                    );
                }
                if tls.min_version.as_deref() == Some("1.3")
                    && tls.max_version.as_deref() == Some("1.2")
                {
                    problem(status, "spec.tls", "minVersion 1.3 is above maxVersion 1.2");
                }
                for (i, a) in tls.alpn_protocols.iter().enumerate() {
                    if !matches!(a.as_str(), "h2" | "http/1.1" | "http/1.0") {
                        problem(
                            status,
                            format!("spec.tls.alpnProtocols[{i}]"),
                            format!("ALPN protocol {a:?} is not one of h2, http/1.1, http/1.0"),
                        );
                    }
                }
            }
            supported(status, &unsupported);
        },
    );
    policy_kind(
        s,
        st,
        res,
        "EnvoyExtensionPolicy",
        &s.envoy_extension_policies,
        &|p, spec, status| {
            for (i, l) in spec.lua.iter().enumerate() {
                let path = format!("spec.lua[{i}]");
                match (l.type_.as_str(), &l.inline, &l.value_ref) {
                    ("Inline", Some(_), _) => {}
                    ("ValueRef", _, Some(r)) => {
                        if let Err(m) = config_map_value(s, p.namespace(), r, "lua") {
                            unresolved(status, format!("{path}.valueRef"), m);
                            status.set(bad(
                                cond::RESOLVED_REFS,
                                reason::INVALID_VALUE_REF,
                                format!(
                                    "{path}.valueRef: {}",
                                    status
                                        .problems
                                        .last()
                                        .map(|x| x.message.clone())
                                        .unwrap_or_default()
                                ),
                            ));
                        }
                    }
                    (t, _, _) => {
                        problem(
                            status,
                            path,
                            format!(
                                "lua type {t:?} needs its field (Inline needs inline, ValueRef needs valueRef)"
                            ),
                        );
                    }
                }
            }
            l4_targets_refused(s, p.namespace(), spec, status, "an EnvoyExtensionPolicy");
            if spec.wasm.is_some() || spec.ext_proc.is_some() {
                problem(
                    status,
                    "spec",
                    "wasm and extProc extensions are not supported by trellis (lua is)",
                );
            }
        },
    );
    policy_kind(
        s,
        st,
        res,
        "SecurityPolicy",
        &s.security_policies,
        &|p, spec, status| {
            let from = (ENVOY_GROUP, "SecurityPolicy", p.namespace());
            let key = key_of(p, ENVOY_GROUP, "SecurityPolicy");
            for (path, what) in security_unenforced(spec) {
                problem(
                    status,
                    path,
                    format!(
                        "{what} is not enforced by trellis yet: what this policy targets \
                         answers 500 until it is (a route is never served without its \
                         authentication)"
                    ),
                );
            }
            for f in s.unknown_fields(&key) {
                problem(
                    status,
                    f,
                    format!(
                        "field `{f}` is not known to trellis: the policy is refused rather than \
                         enforced without it, and what it targets answers 500"
                    ),
                );
            }
            if let Some(jwt) = &spec.jwt {
                for (path, m) in jwt_problems(s, p.namespace(), jwt) {
                    problem(status, path, m);
                }
            }
            if let Some(a) = &spec.authorization {
                for (path, m) in authorization_problems(spec, a) {
                    problem(status, path, m);
                }
            }
            if let Some(h) = spec.ext_auth.as_ref().and_then(|e| e.http.as_ref())
                && h.backend_ref.is_none()
                && h.backend_refs.is_empty()
            {
                problem(
                    status,
                    "spec.extAuth.http",
                    "extAuth.http needs backendRef or backendRefs: without an authorization \
                     service every request is refused (500)",
                );
            }
            let mut refs_bad: Option<(String, String)> = None;
            if let Some(ea) = &spec.ext_auth {
                let backends: Vec<(String, &BackendRef)> =
                    match (&ea.http, &ea.grpc) {
                        (Some(h), _) => {
                            h.backend_ref
                                .iter()
                                .map(|b| ("spec.extAuth.http.backendRef".to_string(), b))
                                .chain(h.backend_refs.iter().enumerate().map(|(i, b)| {
                                    (format!("spec.extAuth.http.backendRefs[{i}]"), b)
                                }))
                                .collect()
                        }
                        (None, Some(g)) => {
                            g.backend_ref
                                .iter()
                                .map(|b| ("spec.extAuth.grpc.backendRef".to_string(), b))
                                .chain(g.backend_refs.iter().enumerate().map(|(i, b)| {
                                    (format!("spec.extAuth.grpc.backendRefs[{i}]"), b)
                                }))
                                .collect()
                        }
                        (None, None) => {
                            problem(status, "spec.extAuth", "extAuth needs http or grpc");
                            Vec::new()
                        }
                    };
                for (path, b) in backends {
                    if let Err((r, m)) = resolve_backend(s, from, b, true) {
                        let m = unresolved(status, path, m);
                        refs_bad.get_or_insert((r.to_string(), m));
                    }
                }
            }
            if let Some(o) = &spec.oidc {
                if o.client_id.as_deref().unwrap_or_default().is_empty() {
                    problem(
                        status,
                        "spec.oidc.clientID",
                        "an OIDC client needs its clientID",
                    );
                }
                if o.client_secret.is_none() {
                    problem(
                        status,
                        "spec.oidc.clientSecret",
                        "an OIDC client needs its clientSecret (a Secret with client-secret)",
                    );
                }
                if let Some(cs) = &o.client_secret {
                    let ns = cs
                        .namespace
                        .clone()
                        .unwrap_or_else(|| p.namespace().to_string());
                    if let Some(m) = secret_not_granted(s, p.namespace(), &ns, &cs.name) {
                        let m = unresolved(status, "spec.oidc.clientSecret", m);
                        refs_bad.get_or_insert((reason::REF_NOT_PERMITTED.to_string(), m));
                    } else if get(&s.secrets, &ns, &cs.name).is_none() {
                        let m = unresolved(
                            status,
                            "spec.oidc.clientSecret",
                            format!("secret {ns}/{} not found", cs.name),
                        );
                        refs_bad.get_or_insert((reason::INVALID_KIND.to_string(), m));
                    }
                }
                if !o.provider.issuer.starts_with("https://")
                    && !o.provider.issuer.starts_with("http://")
                {
                    problem(
                        status,
                        "spec.oidc.provider.issuer",
                        format!("issuer {:?} is not a URL", o.provider.issuer),
                    );
                }
            }
            l4_targets_refused(s, p.namespace(), spec, status, "a SecurityPolicy");
            if let Some(c) = &spec.cors {
                check_duration(status, "spec.cors.maxAge", &c.max_age);
                if c.allow_origins.is_empty() {
                    problem(status, "spec.cors.allowOrigins", "names no origin");
                }
            }
            if let Some(k) = &spec.api_key_auth {
                if k.credential_refs.is_empty() {
                    problem(
                        status,
                        "spec.apiKeyAuth.credentialRefs",
                        "names no Secret of keys",
                    );
                }
                let places = |e: &crate::kinds::envoy::ApiKeyExtractFrom| {
                    e.headers.len() + e.params.len() + e.cookies.len()
                };
                if k.sanitize == Some(true) && k.extract_from.iter().any(|e| !e.params.is_empty()) {
                    problem(
                        status,
                        "spec.apiKeyAuth.sanitize",
                        "sanitize cannot take a key out of a query parameter (the query goes \
                         upstream as it came): refused rather than leak the key",
                    );
                }
                if k.extract_from.iter().map(places).sum::<usize>() == 0 {
                    problem(
                        status,
                        "spec.apiKeyAuth.extractFrom",
                        "names no header, parameter or cookie to take the key from",
                    );
                }
                for (i, r) in k.credential_refs.iter().enumerate() {
                    let ns = r.namespace.as_deref().unwrap_or(p.namespace());
                    let path = format!("spec.apiKeyAuth.credentialRefs[{i}]");
                    if let Some(m) = secret_not_granted(s, p.namespace(), ns, &r.name) {
                        let m = unresolved(status, path, m);
                        refs_bad.get_or_insert((reason::REF_NOT_PERMITTED.to_string(), m));
                    } else if get(&s.secrets, ns, &r.name).is_none() {
                        let m =
                            unresolved(status, path, format!("secret {ns}/{} not found", r.name));
                        refs_bad.get_or_insert((reason::INVALID_KIND.to_string(), m));
                    }
                }
            }
            if let Some(b) = &spec.basic_auth
                && let Some(ns) = b.users.namespace.as_deref()
                && ns != p.namespace()
            {
                // The users are read from the policy's namespace; another one named here
                // would be silently ignored, so the policy is refused instead.
                problem(
                    status,
                    "spec.basicAuth.users.namespace",
                    format!(
                        "the users Secret must be in the policy's namespace {}, not {ns}",
                        p.namespace()
                    ),
                );
            }
            if let Some(b) = &spec.basic_auth
                && get(&s.secrets, p.namespace(), &b.users.name).is_none()
            {
                let m = unresolved(
                    status,
                    "spec.basicAuth.users",
                    format!("secret {}/{} not found", p.namespace(), b.users.name),
                );
                refs_bad.get_or_insert((reason::INVALID_KIND.to_string(), m));
            }
            match refs_bad {
                None => status.set(ok(cond::RESOLVED_REFS, reason::RESOLVED_REFS, "")),
                Some((r, m)) => {
                    let r = if r == reason::INVALID_KIND && m.contains("secret") {
                        "SecretNotFound".to_string()
                    } else {
                        r
                    };
                    status.set(bad(cond::RESOLVED_REFS, &r, m));
                }
            }
        },
    );
}

/// The parts of a SecurityPolicy trellis does not enforce (yet), each with its field path and
/// what it is. Validation makes each a problem (`Accepted=False`, reason Invalid), and the
/// gateway answers 500 on whatever such a policy targets: a route is never served without the
/// authentication its policy asks for.
pub fn security_unenforced(spec: &SecurityPolicySpec) -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = Vec::new();
    let mut push = |path: &str, what| out.push((path.to_string(), what));
    if spec
        .ext_auth
        .as_ref()
        .is_some_and(|ea| ea.body_to_ext_auth.is_some())
    {
        push(
            "spec.extAuth.bodyToExtAuth",
            "sending the request body to the authorization service",
        );
    }
    for (i, p) in spec.jwt.iter().flat_map(|j| j.providers.iter()).enumerate() {
        let at = |f: &str| format!("spec.jwt.providers[{i}].{f}");
        if p.recompute_route == Some(true) {
            out.push((at("recomputeRoute"), "routing again on claim headers"));
        }
        if let Some(r) = &p.remote_jwks {
            if r.backend_ref.is_some() || !r.backend_refs.is_empty() {
                out.push((
                    at("remoteJWKS.backendRefs"),
                    "fetching a JWKS through a backend (the URI's host is asked directly)",
                ));
            }
            if r.backend_settings.is_some() {
                out.push((at("remoteJWKS.backendSettings"), "JWKS backend settings"));
            }
        }
    }
    out
}

/// A policy that only HTTP requests can honour (a SecurityPolicy, an EnvoyExtensionPolicy)
/// targeting an L4 route: a problem, and the gateway refuses the route's connections.
pub(super) fn l4_targets_refused<S: Policy>(
    s: &Snapshot,
    ns: &str,
    spec: &S,
    status: &mut ObjectStatus,
    what: &str,
) {
    for t in policy_targets(s, ns, spec) {
        let k = &t.object;
        if matches!(k.kind.as_str(), "TCPRoute" | "TLSRoute" | "UDPRoute") {
            problem(
                status,
                "spec.targetRefs",
                format!(
                    "{k} is an L4 route: {what} is not enforced there, so its connections are \
                     refused"
                ),
            );
        }
        // A listener named on its own that is not HTTP or HTTPS: the same.
        let listener = t.section.as_deref().and_then(|name| {
            (k.kind == "Gateway")
                .then(|| get(&s.gateways, &k.namespace, &k.name))
                .flatten()?
                .spec
                .listeners
                .iter()
                .find(|l| l.name == name)
        });
        if let Some(l) = listener
            && !matches!(l.protocol.as_str(), "HTTP" | "HTTPS")
        {
            problem(
                status,
                "spec.targetRefs",
                format!(
                    "listener {} of {k} is a {} listener: {what} is not enforced there, so its \
                     connections are refused",
                    l.name, l.protocol
                ),
            );
        }
    }
}

/// What is wrong in a SecurityPolicy's `authorization` (path, message): an action that is
/// not Allow or Deny, a rule about nobody, a CIDR or method that does not parse, a JWT
/// principal naming a provider the policy's `jwt` does not have.
pub fn authorization_problems(
    spec: &SecurityPolicySpec,
    a: &crate::kinds::envoy::Authorization,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let action = |v: &str| matches!(v, "Allow" | "Deny");
    if let Some(d) = &a.default_action
        && !action(d)
    {
        out.push((
            "spec.authorization.defaultAction".to_string(),
            format!("{d:?} is not Allow or Deny"),
        ));
    }
    for (i, r) in a.rules.iter().enumerate() {
        let at = |f: &str| format!("spec.authorization.rules[{i}]{f}");
        if !action(&r.action) {
            out.push((
                at(".action"),
                format!("{:?} is not Allow or Deny", r.action),
            ));
        }
        let p = &r.principal;
        if p.client_cidrs.is_empty() && p.jwt.is_none() && p.headers.is_empty() {
            out.push((
                at(".principal"),
                "needs clientCIDRs, jwt or headers".to_string(),
            ));
        }
        for (k, c) in p.client_cidrs.iter().enumerate() {
            if c.parse::<ipnet::IpNet>().is_err() {
                out.push((
                    at(&format!(".principal.clientCIDRs[{k}]")),
                    format!("{c:?} is not a CIDR"),
                ));
            }
        }
        for (k, m) in r
            .operation
            .iter()
            .flat_map(|o| o.methods.iter())
            .enumerate()
        {
            if http_method(m).is_none() {
                out.push((
                    at(&format!(".operation.methods[{k}]")),
                    format!("{m:?} is not an HTTP method"),
                ));
            }
        }
        if let Some(j) = &p.jwt {
            let known = spec
                .jwt
                .iter()
                .flat_map(|x| x.providers.iter())
                .any(|pr| pr.name == j.provider);
            if !known {
                out.push((
                    at(".principal.jwt.provider"),
                    format!(
                        "provider {:?} is not one of this policy's jwt providers",
                        j.provider
                    ),
                ));
            }
            if j.claims.is_empty() && j.scopes.is_empty() {
                out.push((at(".principal.jwt"), "needs claims or scopes".to_string()));
            }
            for (k, c) in j.claims.iter().enumerate() {
                if !matches!(
                    c.value_type.as_deref(),
                    None | Some("String" | "StringArray")
                ) {
                    out.push((
                        at(&format!(".principal.jwt.claims[{k}].valueType")),
                        "is not String or StringArray".to_string(),
                    ));
                }
            }
        }
    }
    out
}

/// The methods an authorization rule may name (the Gateway API's `HTTPMethod`).
pub fn http_method(m: &str) -> Option<&'static str> {
    [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ]
    .into_iter()
    .find(|x| *x == m)
}

/// The most providers one `jwt` may list (Envoy Gateway's CRD bound).
pub const JWT_PROVIDERS_MAX: usize = 4;

/// What is wrong in the shape of a SecurityPolicy's `jwt` (path, message): no provider, a
/// provider with no or two key sources, a JWKS that is not a JWKS, a URI that is not http(s).
pub fn jwt_problems(
    s: &Snapshot,
    ns: &str,
    jwt: &crate::kinds::envoy::Jwt,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if jwt.providers.is_empty() || jwt.providers.len() > JWT_PROVIDERS_MAX {
        out.push((
            "spec.jwt.providers".to_string(),
            format!("needs 1 to {JWT_PROVIDERS_MAX} providers"),
        ));
    }
    for (i, p) in jwt.providers.iter().enumerate() {
        let at = |f: &str| format!("spec.jwt.providers[{i}]{f}");
        if p.name.is_empty() {
            out.push((at(".name"), "a provider needs a name".into()));
        }
        match (&p.remote_jwks, &p.local_jwks) {
            (Some(_), Some(_)) | (None, None) => out.push((
                at(""),
                "exactly one of remoteJWKS and localJWKS is needed".into(),
            )),
            (Some(r), None) => {
                if !(r.uri.starts_with("https://") || r.uri.starts_with("http://")) {
                    out.push((
                        at(".remoteJWKS.uri"),
                        format!("{:?} is not an http(s) URI", r.uri),
                    ));
                }
            }
            (None, Some(l)) => {
                if let Err(e) = local_jwks(s, ns, l) {
                    out.push((at(".localJWKS"), e));
                }
            }
        }
    }
    out
}

/// The JWKS text of a `localJWKS` (inline or from its ConfigMap), checked to be a JSON object
/// with a `keys` array (what each key holds is read by the gateway).
pub fn local_jwks(
    s: &Snapshot,
    ns: &str,
    l: &crate::kinds::envoy::LocalJwks,
) -> Result<String, String> {
    let text = match (
        l.type_.as_deref().unwrap_or("Inline"),
        &l.inline,
        &l.value_ref,
    ) {
        ("Inline", Some(t), None) => t.clone(),
        ("ValueRef", None, Some(r)) => config_map_value(s, ns, r, "jwks")?,
        (t, _, _) => {
            return Err(format!(
                "type {t:?} needs exactly its field (Inline: inline, ValueRef: valueRef)"
            ));
        }
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    if !v.get("keys").is_some_and(|k| k.is_array()) {
        return Err("the JWKS has no `keys` array".into());
    }
    Ok(text)
}

pub(super) fn policy_kind<S: Policy, F: Fn(&Object<S>, &S, &mut ObjectStatus)>(
    s: &Snapshot,
    st: &mut Statuses,
    res: &mut Resolution,
    kind: &'static str,
    coll: &Coll<S>,
    check: &F,
) {
    // GEP-713's order for conflicts: the oldest first, then by namespace and name (the
    // collection's own order, which the stable sort keeps). Objects without a creation time,
    // as read from files, come after those with one.
    let mut order: Vec<&Object<S>> = coll.values().collect();
    order.sort_by_key(|o| {
        let t = &o.meta.creation_timestamp;
        (t.is_none(), t.clone())
    });
    for p in order {
        let key = key_of(p, ENVOY_GROUP, kind);
        let status = st.entry(key.clone()).or_default();
        check(p, &p.spec, status);
        let mut targets: Vec<PolicyTarget> = Vec::new();
        let mut missing: Vec<String> = Vec::new();
        for (i, t) in p.spec.target_refs().into_iter().enumerate() {
            let Some(k) = target_key(s, p.namespace(), t) else {
                missing.push(unresolved(
                    status,
                    format!("spec.targetRefs[{i}]"),
                    format!("target {} {}/{} not found", t.kind, p.namespace(), t.name),
                ));
                continue;
            };
            let Some(section) = &t.section_name else {
                targets.push(PolicyTarget::whole(k));
                continue;
            };
            let path = format!("spec.targetRefs[{i}].sectionName");
            match has_section(s, &k, section) {
                Some(true) => {
                    if kind == "ClientTrafficPolicy" && k.kind == "Gateway" {
                        // Client settings are set per port, which listeners share.
                        problem(
                            status,
                            &path,
                            format!(
                                "a ClientTrafficPolicy on one listener is not supported by \
                                 trellis: the policy is refused and listener {section} is not \
                                 served; target the whole Gateway instead"
                            ),
                        );
                    }
                    targets.push(PolicyTarget::section(k, section));
                }
                Some(false) => missing.push(unresolved(
                    status,
                    path,
                    format!(
                        "{k} has no {} named {section:?}",
                        if k.kind == "Gateway" {
                            "listener"
                        } else {
                            "rule"
                        }
                    ),
                )),
                None => {
                    // Applied to the whole target it would also reach sections it does not
                    // name: refused, and the gateway refuses the whole target for it (fail
                    // closed). Kept as a section, so that a policy on the whole target does
                    // not win it in a conflict.
                    problem(
                        status,
                        path,
                        format!(
                            "a {kind} on one section of a {} is not supported by trellis: the \
                             policy is refused; target the whole {} instead",
                            k.kind, k.kind
                        ),
                    );
                    targets.push(PolicyTarget::section(k, section));
                }
            }
        }
        for (i, sel) in p.spec.target_selectors().iter().enumerate() {
            let selector = sel.selector();
            let found = select_targets(s, p.namespace(), &sel.kind, &selector);
            if found.is_empty() {
                missing.push(unresolved(
                    status,
                    format!("spec.targetSelectors[{i}]"),
                    format!(
                        "no {} in namespace {} matches targetSelectors[{i}]",
                        sel.kind,
                        p.namespace()
                    ),
                ));
            }
            targets.extend(found.into_iter().map(PolicyTarget::whole));
        }
        if p.spec.target_refs().is_empty() && p.spec.target_selectors().is_empty() {
            missing.push(unresolved(
                status,
                "spec",
                "policy has no targetRefs or targetSelectors",
            ));
        }
        let invalid = status.first_invalid().cloned();
        let mut conflicts = Vec::new();
        for t in &targets {
            if let Some(owner) = res.owners.get(&(kind.to_string(), t.clone())) {
                conflicts.push(format!("{t} already has {kind} {}", owner.ns_name()));
            } else {
                res.owners
                    .insert((kind.to_string(), t.clone()), key.clone());
            }
        }
        let accepted = if let Some(pr) = invalid {
            bad(
                cond::ACCEPTED,
                reason::INVALID,
                format!("{}: {}", pr.path, pr.message),
            )
        } else if targets.is_empty() {
            bad(cond::ACCEPTED, reason::TARGET_NOT_FOUND, missing.join("; "))
        } else if !conflicts.is_empty() && conflicts.len() == targets.len() {
            bad(cond::ACCEPTED, reason::CONFLICTED, conflicts.join("; "))
        } else {
            let mut m = format!(
                "applies to {}",
                targets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if !missing.is_empty() {
                m.push_str(&format!(" (not found: {})", missing.join("; ")));
            }
            ok(cond::ACCEPTED, reason::ACCEPTED, &m)
        };
        status.set(accepted);
        if !missing.is_empty() && !targets.is_empty() {
            // Some targets exist, some do not: the missing ones are unresolved references.
            status.set(bad(
                cond::RESOLVED_REFS,
                reason::TARGET_NOT_FOUND,
                missing.join("; "),
            ));
        }
        let refused = refused_by(&status.conditions);
        res.policies.insert(key, PolicyVerdict { targets, refused });
    }
}

/// Why a SecurityPolicy in `policy_ns` may not read Secret `ns/name`: another namespace and
/// no ReferenceGrant there allowing it (Gateway API's boundary, which Envoy Gateway applies to
/// its policies' Secret references too).
fn secret_not_granted(s: &Snapshot, policy_ns: &str, ns: &str, name: &str) -> Option<String> {
    (ns != policy_ns
        && !granted(
            s,
            (ENVOY_GROUP, "SecurityPolicy", policy_ns),
            ("", "Secret", ns, name),
        ))
    .then(|| {
        format!(
            "secret {ns}/{name} is in another namespace and no ReferenceGrant in {ns} allows it"
        )
    })
}

/// Writes `Supported=False` listing the fields that are parsed and not applied, when any is.
fn supported(status: &mut ObjectStatus, unsupported: &[String]) {
    if !unsupported.is_empty() {
        status.set(Condition::new(
            "Supported",
            Status::False,
            reason::UNSUPPORTED,
            format!("{}; the rest of the policy applies", unsupported.join("; ")),
        ));
    }
}

/// What a traffic policy asks for and trellis does not apply: `.0` could weaken security if
/// left out (each a problem: the policy is refused, with `consequence`), `.1` does not (listed
/// in `Supported=False`, the rest applies).
type NotApplied = (Vec<(String, String)>, Vec<String>);

fn not_applied(status: &mut ObjectStatus, (refused, ignored): NotApplied, consequence: &str) {
    for (path, what) in refused {
        problem(
            status,
            path,
            format!("{what} is not applied by trellis: {consequence}"),
        );
    }
    let ignored: Vec<String> = ignored
        .into_iter()
        .map(|path| format!("{path} is not applied"))
        .collect();
    supported(status, &ignored);
}

/// The keys of an object-valued field, with their paths; a value that is not an object is
/// refused (`refused`), since what it asks cannot be told.
fn object_keys<'a>(
    path: &'a str,
    v: Option<&'a serde_json::Value>,
    refused: &mut Vec<(String, String)>,
) -> Vec<(String, &'a str)> {
    if v.is_some_and(|v| !v.is_object()) {
        refused.push((path.to_string(), format!("`{path}` that is not an object")));
    }
    v.and_then(|v| v.as_object())
        .into_iter()
        .flat_map(|o| o.keys())
        .map(|k| (format!("{path}.{k}"), k.as_str()))
        .collect()
}

/// What a BackendTrafficPolicy asks for and trellis does not apply ([`NotApplied`]). Limits
/// that protect a backend (rate limits, circuit breakers) are refused; load-balancing, health
/// checks and connection tuning fall back to trellis's own.
pub(super) fn backend_policy_not_applied<'a>(
    spec: &BackendTrafficPolicySpec,
    unknown: impl Iterator<Item = &'a str>,
) -> NotApplied {
    let mut refused: Vec<(String, String)> = unknown
        .map(|f| (f.to_string(), format!("field `{f}`, unknown to trellis,")))
        .collect();
    if spec.rate_limit.is_some() {
        refused.push(("spec.rateLimit".into(), "a rate limit".into()));
    }
    if spec.circuit_breaker.is_some() {
        refused.push(("spec.circuitBreaker".into(), "a circuit breaker".into()));
    }
    // An abort answers some requests with an error instead of forwarding them: left out, they
    // would be forwarded. A delay only slows them.
    if spec
        .fault_injection
        .as_ref()
        .is_some_and(|f| !f.is_object() || f.get("abort").is_some())
    {
        refused.push((
            "spec.faultInjection.abort".into(),
            "answering requests with an error (fault injection)".into(),
        ));
    }
    let mut ignored = Vec::new();
    for (path, set) in [
        ("spec.loadBalancer", spec.load_balancer.is_some()),
        ("spec.healthCheck", spec.health_check.is_some()),
        (
            "spec.faultInjection.delay",
            spec.fault_injection
                .as_ref()
                .is_some_and(|f| f.get("delay").is_some()),
        ),
        ("spec.proxyProtocol", spec.proxy_protocol.is_some()),
        ("spec.connection", spec.connection.is_some()),
        ("spec.dns", spec.dns.is_some()),
        ("spec.http2", spec.http2.is_some()),
        (
            "spec.useClientProtocol",
            spec.use_client_protocol == Some(true),
        ),
    ] {
        if set {
            ignored.push(path.to_string());
        }
    }
    if let Some(t) = &spec.timeout {
        if let Some(h) = &t.http {
            if h.connection_idle_timeout.is_some() {
                ignored.push("spec.timeout.http.connectionIdleTimeout".into());
            }
            if h.max_connection_duration.is_some() {
                ignored.push("spec.timeout.http.maxConnectionDuration".into());
            }
        }
        if t.tcp.as_ref().is_some_and(|t| t.connect_timeout.is_some()) {
            ignored.push("spec.timeout.tcp.connectTimeout".into());
        }
    }
    (refused, ignored)
}

/// What a ClientTrafficPolicy asks for and trellis does not apply ([`NotApplied`]). What
/// decides the client's address (authorization by CIDR reads it), the path routes match
/// (authentication hangs on the route), header handling and connection limits is refused;
/// timeouts and HTTP/1 and HTTP/2 tuning fall back to trellis's own bounds.
pub(super) fn client_policy_not_applied<'a>(
    spec: &ClientTrafficPolicySpec,
    unknown: impl Iterator<Item = &'a str>,
) -> NotApplied {
    let mut refused: Vec<(String, String)> = unknown
        .map(|f| (f.to_string(), format!("field `{f}`, unknown to trellis,")))
        .collect();
    let mut ignored = Vec::new();
    if spec
        .client_ip_detection
        .as_ref()
        .is_some_and(|c| c.custom_header.is_some())
    {
        refused.push((
            "spec.clientIPDetection.customHeader".into(),
            "reading the client address from a custom header".into(),
        ));
    }
    if spec.proxy_protocol.is_some() || spec.enable_proxy_protocol == Some(true) {
        let path = if spec.proxy_protocol.is_some() {
            "spec.proxyProtocol"
        } else {
            "spec.enableProxyProtocol"
        };
        refused.push((path.into(), "reading the PROXY protocol".into()));
    }
    if spec.path.is_some() {
        refused.push(("spec.path".into(), "path normalisation".into()));
    }
    // Headers trellis leaves as Envoy's defaults have them, harmlessly.
    const HARMLESS_HEADERS: &[&str] = &[
        "enableEnvoyHeaders",
        "preserveXRequestID",
        "requestID",
        "disableRateLimitHeaders",
    ];
    for (path, k) in object_keys("spec.headers", spec.headers.as_ref(), &mut refused) {
        if HARMLESS_HEADERS.contains(&k) {
            ignored.push(path);
        } else {
            refused.push((path, "header handling".into()));
        }
    }
    for (path, k) in object_keys("spec.connection", spec.connection.as_ref(), &mut refused) {
        if k == "connectionLimit" {
            refused.push((path, "a connection limit".into()));
        } else {
            ignored.push(path);
        }
    }
    if spec.timeout.is_some() {
        ignored.push("spec.timeout".into());
    }
    if spec.http1.is_some() {
        ignored.push("spec.http1".into());
    }
    if let Some(h) = &spec.http2 {
        for (path, set) in [
            (
                "spec.http2.initialStreamWindowSize",
                h.initial_stream_window_size.is_some(),
            ),
            (
                "spec.http2.initialConnectionWindowSize",
                h.initial_connection_window_size.is_some(),
            ),
            (
                "spec.http2.maxConcurrentStreams",
                h.max_concurrent_streams.is_some(),
            ),
        ] {
            if set {
                ignored.push(path.to_string());
            }
        }
    }
    (refused, ignored)
}

/// Whether a policy's conditions refuse it (an `Accepted` or `ResolvedRefs` that is not
/// True), and why. Losing every target to an older policy (Conflicted) or having none
/// (TargetNotFound) is not a refusal: such a policy applies nowhere.
fn refused_by(conditions: &[Condition]) -> Option<String> {
    conditions.iter().find_map(|c| {
        let bad = c.status != Status::True
            && match c.type_.as_str() {
                cond::ACCEPTED => {
                    c.reason != reason::CONFLICTED && c.reason != reason::TARGET_NOT_FOUND
                }
                cond::RESOLVED_REFS => true,
                _ => false,
            };
        bad.then(|| format!("{} {}: {}", c.type_, c.reason, c.message))
    })
}

/// What a policy in namespace `ns` applies to, through targetRefs (with their sections) and
/// targetSelectors.
pub(super) fn policy_targets<S: Policy>(s: &Snapshot, ns: &str, spec: &S) -> Vec<PolicyTarget> {
    let mut out: Vec<PolicyTarget> = spec
        .target_refs()
        .into_iter()
        .filter_map(|t| {
            let k = target_key(s, ns, t)?;
            Some(match &t.section_name {
                Some(section) => PolicyTarget::section(k, section),
                None => PolicyTarget::whole(k),
            })
        })
        .collect();
    for sel in spec.target_selectors() {
        out.extend(
            select_targets(s, ns, &sel.kind, &sel.selector())
                .into_iter()
                .map(PolicyTarget::whole),
        );
    }
    out
}

pub(super) fn target_key(s: &Snapshot, ns: &str, t: &TargetRef) -> Option<ObjectKey> {
    let group = if t.group.is_empty() {
        GATEWAY_GROUP
    } else {
        t.group.as_str()
    };
    if group != GATEWAY_GROUP {
        return None;
    }
    let exists = match t.kind.as_str() {
        "Gateway" => get(&s.gateways, ns, &t.name).is_some(),
        "HTTPRoute" => get(&s.http_routes, ns, &t.name).is_some(),
        "GRPCRoute" => get(&s.grpc_routes, ns, &t.name).is_some(),
        "TLSRoute" => get(&s.tls_routes, ns, &t.name).is_some(),
        "TCPRoute" => get(&s.tcp_routes, ns, &t.name).is_some(),
        "UDPRoute" => get(&s.udp_routes, ns, &t.name).is_some(),
        _ => false,
    };
    exists.then(|| ObjectKey::new(GATEWAY_GROUP, &t.kind, ns, &t.name))
}

/// Whether object `k` (which exists) has a section `name`: a listener of a Gateway, a rule
/// of an HTTPRoute or GRPCRoute; `None` for kinds whose sections trellis does not resolve.
fn has_section(s: &Snapshot, k: &ObjectKey, name: &str) -> Option<bool> {
    let named = |n: &Option<String>| n.as_deref() == Some(name);
    Some(match k.kind.as_str() {
        "Gateway" => get(&s.gateways, &k.namespace, &k.name)?
            .spec
            .listeners
            .iter()
            .any(|l| l.name == name),
        "HTTPRoute" => get(&s.http_routes, &k.namespace, &k.name)?
            .spec
            .rules
            .iter()
            .flatten()
            .any(|r| named(&r.name)),
        "GRPCRoute" => get(&s.grpc_routes, &k.namespace, &k.name)?
            .spec
            .rules
            .iter()
            .flatten()
            .any(|r| named(&r.name)),
        _ => return None,
    })
}

pub(super) fn select_targets(
    s: &Snapshot,
    ns: &str,
    kind: &str,
    sel: &LabelSelector,
) -> Vec<ObjectKey> {
    fn pick<S>(coll: &Coll<S>, ns: &str, kind: &str, sel: &LabelSelector) -> Vec<ObjectKey> {
        coll.values()
            .filter(|o| o.namespace() == ns && sel.matches(&o.meta.labels))
            .map(|o| key_of(o, GATEWAY_GROUP, kind))
            .collect()
    }
    match kind {
        "Gateway" => pick(&s.gateways, ns, kind, sel),
        "HTTPRoute" => pick(&s.http_routes, ns, kind, sel),
        "GRPCRoute" => pick(&s.grpc_routes, ns, kind, sel),
        "TLSRoute" => pick(&s.tls_routes, ns, kind, sel),
        "TCPRoute" => pick(&s.tcp_routes, ns, kind, sel),
        "UDPRoute" => pick(&s.udp_routes, ns, kind, sel),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Core kinds
