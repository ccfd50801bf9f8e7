//! The ingress gateway: serves one Gateway of a snapshot as an HTTP proxy.
//!
//! - [`plan`]: `compile(&Snapshot, ns, name) -> Plan` — pure: listeners, routers, actions.
//! - [`proxy`]: binds the listeners and serves requests from the current plan; `update`
//!   swaps a new plan in atomically. Plain HTTP/1.1 forwarding takes trellis's own path
//!   (`h1`), everything else hyper's.
//! - [`auth`]: SecurityPolicies compiled (fail closed) and basic auth checked; [`jwt`]:
//!   JWT verification and remote JWKS; [`oidc`]: the OpenID Connect login.
//! - [`echo`]: the JSON echo server used as the backend in tests, benchmarks and the lab.
//! - [`admin`]: `/healthz`, `/status`, `/metrics`.
//! - [`record`]: one [`record::RequestRecord`] per request for an observer (flows).
//! - [`udp`]: UDP listeners (UDPRoute), one upstream socket per client address.
//!
//! Listeners the plan cannot serve (TLS with mode Terminate, unknown protocols) are reported
//! as unserved rather than silently ignored.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod body;
pub mod compress;
pub mod cors;
pub mod decide;
pub mod echo;
mod h1;
pub mod h3;
pub mod headers;
pub mod jwt;
pub mod limits;
pub mod listen;
pub mod lua;
pub mod metrics;
pub mod oidc;
pub mod plan;
pub mod proxy;
pub mod record;
pub mod sni;
pub mod tls;
pub mod udp;
mod upstream;

#[doc(hidden)]
pub use h1::fuzzing as h1_fuzzing;
pub use listen::{Running, StartError, start};
pub use plan::{CompileError, Plan, compile};
pub use proxy::Bind;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// Which of the crate's modules each module names (`crate::name`), comments aside.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let names = regex::Regex::new(r"crate::([a-z0-9_]+)").expect("regex");
        let mut graph = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("src") {
            let path = entry.expect("entry").path();
            let Some(module) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".rs"))
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path).expect("read");
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let used: BTreeSet<String> = names
                .captures_iter(&code)
                .map(|c| c[1].to_string())
                .filter(|m| m != module)
                .collect();
            graph.insert(module.to_string(), used);
        }
        graph
    }

    /// A circle through `at`, if the graph has one reachable from it.
    fn circle(
        graph: &BTreeMap<String, BTreeSet<String>>,
        at: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|m| m == at) {
            let mut c = path[i..].to_vec();
            c.push(at.to_string());
            return Some(c);
        }
        if !done.insert(at.to_string()) {
            return None;
        }
        path.push(at.to_string());
        for next in graph.get(at).into_iter().flatten() {
            if let Some(c) = circle(graph, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }

    /// The gateway's modules form layers (the plan below the request handling below the
    /// transports below the listeners): no module reaches itself through others.
    #[test]
    fn modules_import_each_other_without_a_circle() {
        let graph = imports();
        assert!(graph.contains_key("proxy") && graph["listen"].contains("h1"));
        for m in graph.keys() {
            if let Some(c) = circle(&graph, m, &mut Vec::new(), &mut BTreeSet::new()) {
                panic!("import circle: {}", c.join(" -> "));
            }
        }
        // The check finds one where there is one.
        let two: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "a")]
            .into_iter()
            .map(|(m, n)| (m.to_string(), BTreeSet::from([n.to_string()])))
            .collect();
        let found = circle(&two, "a", &mut Vec::new(), &mut BTreeSet::new());
        assert_eq!(
            found.as_deref(),
            Some(&["a", "b", "a"].map(String::from)[..])
        );
    }
}
