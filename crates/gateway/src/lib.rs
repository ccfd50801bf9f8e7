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
pub mod compress;
pub mod cors;
pub mod echo;
mod h1;
pub mod h3;
pub mod jwt;
pub mod limits;
pub mod lua;
pub mod metrics;
pub mod oidc;
pub mod plan;
pub mod proxy;
pub mod record;
pub mod sni;
pub mod tls;
pub mod udp;

#[doc(hidden)]
pub use h1::fuzzing as h1_fuzzing;
pub use plan::{CompileError, Plan, compile};
pub use proxy::{Bind, Running, start};
