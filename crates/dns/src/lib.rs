//! Cluster DNS: the `cluster.local` zone of a snapshot, served over UDP and TCP.
//!
//! - [`zone`]: `compile(&Snapshot, &ZoneConfig) -> Zone` — pure: the records the Kubernetes
//!   DNS specification (schema 1.1.0) asks for.
//! - [`answer`]: one query in, one response out, no I/O (NXDOMAIN versus NODATA, CNAME
//!   chasing inside the zone, EDNS0 sizes and truncation).
//! - [`server`]: UDP and TCP listeners that answer from the current zone; `update` swaps
//!   a new zone in.
//!
//! - [`views`]: split-horizon views (`DNSView`), one zone per view, chosen by client address.
//!
//! - [`forward`]: everything else goes to upstream servers, through a cache.
//!
//! - [`record`]: one [`record::QueryRecord`] per answered query for an observer (flows).
//!
//! - [`sync`]: record sync with ExternalDNS's semantics (desired records, TXT registry, plan)
//!   and its providers (webhook, rfc2136, Cloudflare, the in-process zone).

pub mod answer;
pub mod forward;
pub mod metrics;
pub mod record;
pub mod replay;
pub mod server;
pub mod sync;
pub mod views;
pub mod zone;

pub use views::{Views, compile_views};
pub use zone::{Zone, ZoneConfig, compile};
