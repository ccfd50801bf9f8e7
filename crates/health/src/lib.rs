//! Health: Gatus-compatible endpoints, probes and conditions.
//!
//! - [`condition`]: the conditions language, a pure parser and evaluator.
//! - [`endpoints`]: the endpoints a snapshot declares (gatus-sidecar's annotation
//!   conventions on HTTPRoutes and Services, inherited from Gateways, and Gatus `config.yaml`
//!   in ConfigMaps labelled `gatus.io/enabled`), a pure function of `model::Snapshot`.
//! - [`probe`]: one probe of one endpoint (http/https, tcp, dns, tls, starttls), the only
//!   I/O here; [`run`] schedules them (intervals with jitter, bounded concurrency),
//!   [`metrics`] publishes results under Gatus's metric names and [`status`] keeps them for
//!   Gatus's API (`/api/v1/endpoints/statuses`).
//!
//! - [`scale`]: KEDA's ScaledObject over the HPA algorithm, pure; [`trigger`] reads the
//!   prometheus and metrics-api triggers; [`scaler`] runs a task per ScaledObject and hands
//!   its decisions to whoever applies them.

pub mod condition;
pub mod endpoints;
pub mod icmp;
pub mod metrics;
pub mod probe;
pub mod run;
pub mod scale;
pub mod scaler;
pub mod status;
pub mod trigger;
mod x509;

pub use condition::{Condition, Outcome, ParseError, Verdict};
pub use endpoints::{Discovery, Endpoint, Kind, Problem, endpoints};
pub use probe::{Probed, probe};
