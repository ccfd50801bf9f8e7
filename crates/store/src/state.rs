//! The state seam: what the nodes of a cluster share and must agree on, behind one trait with
//! etcd's semantics (a revisioned key space, compare-and-swap, leases, watches from a
//! revision), so that allocation logic is written once and runs on any backend.
//!
//! - [`memory::Memory`]: one process (tests, `trellis up` on one host).
//! - [`file::Files`]: the processes of one host (`--state file:///DIR`): one file under a
//!   `flock`, written durably at every change; both keep [`space::Space`].
//! - [`etcd::Etcd`]: etcd's v3 API over gRPC (`--state etcd://host:2379,host:2379`), as
//!   Cilium's kvstore mode and Calico's etcd datastore keep their state.
//! - [`kube::Kube`]: the Kubernetes API (`--state kube://NAMESPACE`): ConfigMaps and
//!   coordination Leases of one namespace with the API server's optimistic concurrency, as
//!   Calico's Kubernetes datastore keeps its IPAM in the API.
//! - [`alloc`]: what lives there and how it is claimed: the node registry on leases, pod
//!   CIDRs and addresses by create-if-absent (never two owners).
//! - [`leases`]: one holder per name (L2 announcements) on backend leases.
//! - [`manifests`]: the objects every node serves, published in whole generations.
//!
//! A backend error is an [`Error`] with its cause, never an empty answer: a caller that cannot
//! read the state keeps what it has (the datapath keeps forwarding with its last maps) and
//! says the backend is unavailable.

pub mod alloc;
pub mod etcd;
pub mod file;
pub mod kube;
pub mod leases;
pub mod manifests;
pub mod memory;
pub mod space;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future (the trait is used as `dyn Backend`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A lease: keys written on it go when it is not kept alive within its time to live.
pub type LeaseId = i64;

/// The largest value trellis writes (etcd refuses requests over 1.5 MiB).
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// One key and its value, with the revision of its last change.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kv {
    pub key: String,
    #[serde(with = "space::text_or_bytes")]
    pub value: Vec<u8>,
    /// The store's revision when the key was last written.
    pub mod_revision: i64,
    /// The lease it is written on (0: none).
    pub lease: LeaseId,
}

/// A prefix's keys, and the store's revision they were read at (where a watch starts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub kvs: Vec<Kv>,
    pub revision: i64,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Event {
    Put(Kv),
    Delete { key: String, revision: i64 },
}

/// Where a watch's batches go.
pub type WatchSender = tokio::sync::mpsc::Sender<Result<Vec<Event>, Error>>;

/// The changes under a prefix, in order; a batch per revision. An error ends the watch
/// ([`Error::Compacted`]: list again and watch from the listing's revision).
pub struct Watch {
    pub events: tokio::sync::mpsc::Receiver<Result<Vec<Event>, Error>>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No answer (no member reachable, no quorum, a timeout): try again later. A write that
    /// timed out may still be committed once the backend recovers: read before deciding.
    #[error("the state backend is unavailable: {0}")]
    Unavailable(String),
    /// The history a watch asked for is gone: list again.
    #[error("the state backend compacted its history past revision {0}: list again")]
    Compacted(i64),
    /// A request the backend refuses (a value too large, a lease that does not exist).
    #[error("the state backend refused the request: {0}")]
    Refused(String),
}

/// What the state backends do; every call is one round trip.
pub trait Backend: Send + Sync {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Kv>, Error>>;
    /// Every key under `prefix`, in key order.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, Error>>;
    /// Writes `value` at `key` only if no value is there; `Ok(false)` when one is.
    fn create<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<bool, Error>>;
    /// Writes `value` at `key` only if the key was last written at `revision` (0: only if
    /// absent); `Ok(false)` when it changed since.
    fn swap<'a>(
        &'a self,
        key: &'a str,
        revision: i64,
        value: &'a [u8],
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<bool, Error>>;
    /// Deletes `key` only if it was last written at `revision`; `Ok(false)` when it changed
    /// or is gone.
    fn delete<'a>(&'a self, key: &'a str, revision: i64) -> BoxFuture<'a, Result<bool, Error>>;
    /// A new lease with this time to live (whole seconds, at least 1).
    fn grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, Error>>;
    /// Renews a lease; `Ok(None)` when it has expired (its keys are gone).
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<Option<Duration>, Error>>;
    /// Ends a lease now; its keys go with it.
    fn revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), Error>>;
    /// The changes under `prefix` after revision `after` (a listing's revision). A history
    /// compacted past `after` is [`Error::Compacted`], from this call or as the watch's first
    /// answer.
    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<Watch, Error>>;
}

/// Refuses a value over [`VALUE_BYTES_MAX`] before it is sent.
fn check_value(key: &str, value: &[u8]) -> Result<(), Error> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Error::Refused(format!(
            "{key}: a value of {} bytes is over trellis's bound of {VALUE_BYTES_MAX}",
            value.len()
        )));
    }
    Ok(())
}

/// The lease TTL in whole seconds (at least 1).
fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX)
}

/// Where a backend lives, from `--state`: `memory`, `etcd://host:port,host:port,...` or
/// `kube://NAMESPACE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Memory,
    /// A directory of this host, shared by its processes.
    File(std::path::PathBuf),
    Etcd(Vec<String>),
    /// The namespace of the Kubernetes API (the client as kubectl finds it).
    Kube(String),
}

impl std::str::FromStr for Location {
    type Err = String;

    fn from_str(s: &str) -> Result<Location, String> {
        if s == "memory" {
            return Ok(Location::Memory);
        }
        if let Some(dir) = s.strip_prefix("file://") {
            return if dir.starts_with('/') {
                Ok(Location::File(dir.into()))
            } else {
                Err(format!(
                    "--state {s:?}: write `file:///ABSOLUTE/DIRECTORY` (three slashes)"
                ))
            };
        }
        if let Some(ns) = s.strip_prefix("kube://") {
            let ok = !ns.is_empty()
                && ns.len() <= 63
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            return if ok {
                Ok(Location::Kube(ns.to_string()))
            } else {
                Err(format!(
                    "--state {s:?}: write `kube://NAMESPACE` (a namespace name)"
                ))
            };
        }
        let Some(rest) = s.strip_prefix("etcd://") else {
            return Err(format!(
                "--state {s:?}: write `memory`, `file:///DIR`, `etcd://HOST:PORT[,HOST:PORT...]` or `kube://NAMESPACE`"
            ));
        };
        let endpoints: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains(':') {
                    e.to_string()
                } else {
                    format!("{e}:2379")
                }
            })
            .collect();
        if endpoints.is_empty() {
            return Err(format!("--state {s:?}: no etcd endpoint"));
        }
        Ok(Location::Etcd(endpoints))
    }
}

impl std::fmt::Display for Location {
    /// As `--state` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Memory => write!(f, "memory"),
            Location::File(dir) => write!(f, "file://{}", dir.display()),
            Location::Etcd(endpoints) => write!(f, "etcd://{}", endpoints.join(",")),
            Location::Kube(namespace) => write!(f, "kube://{namespace}"),
        }
    }
}

/// Opens the backend a location names.
pub async fn open(location: &Location) -> Result<std::sync::Arc<dyn Backend>, Error> {
    Ok(match location {
        Location::Memory => std::sync::Arc::new(memory::Memory::default()),
        Location::File(dir) => std::sync::Arc::new(file::Files::open(dir)?),
        Location::Etcd(endpoints) => std::sync::Arc::new(
            etcd::Etcd::connect(endpoints, etcd::REQUEST_TIMEOUT_DEFAULT).await?,
        ),
        Location::Kube(namespace) => {
            std::sync::Arc::new(self::kube::Kube::connect(namespace).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!("memory".parse(), Ok(Location::Memory));
        assert_eq!(
            "etcd://10.0.0.1,10.0.0.2:2380".parse(),
            Ok(Location::Etcd(vec![
                "10.0.0.1:2379".into(),
                "10.0.0.2:2380".into()
            ]))
        );
        assert!("etcd://".parse::<Location>().is_err());
        assert_eq!(
            "kube://trellis-system".parse(),
            Ok(Location::Kube("trellis-system".into()))
        );
        assert!("kube://".parse::<Location>().is_err());
        assert!("kube://Not_A_Name".parse::<Location>().is_err());
        assert!("consul://x".parse::<Location>().is_err());
        assert_eq!(
            "file:///var/lib/trellis/state".parse(),
            Ok(Location::File("/var/lib/trellis/state".into()))
        );
        assert!("file://relative".parse::<Location>().is_err());
        for text in ["memory", "file:///s", "etcd://a:1,b:2", "kube://ns"] {
            let l: Location = text.parse().expect("parses");
            assert_eq!(l.to_string(), text);
        }
    }
}
