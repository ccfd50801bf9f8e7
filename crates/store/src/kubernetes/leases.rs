//! L2-announcement leases on the API server (coordination.k8s.io Leases), for agents on
//! Kubernetes: the [`crate::lease::LeaseStore`] the announcer takes, over [`super::leader`].
//!
//! The names and timings are Cilium's: a Service's lease is `cilium-l2announce-<ns>-<name>`
//! (the announcer's `l2announce-<ns>-<name>` with Cilium's prefix), held for
//! [`LEASE_DURATION`] and renewed every [`RETRY_PERIOD`]. The announcer asks every 200 ms;
//! between rounds the last answer stands, so the API sees one read (and, from the holder,
//! one write) per Service per node every [`RETRY_PERIOD`], as with Cilium.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use super::leader::{Elector, Role};

/// Cilium's `l2announcements.leaseDuration` and `leaseRetryPeriod` defaults.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// A holder that cannot renew for this long stops announcing (Cilium's renew deadline), well
/// before another node may take the lease.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(5);
const PREFIX: &str = "cilium-";

/// One lease this node asks for, and what it last found.
#[derive(Debug)]
struct Held {
    elector: Elector,
    asked: Instant,
    /// When this node last renewed it (None: not held).
    renewed: Option<Instant>,
}

#[derive(Debug)]
pub struct KubeLeases {
    rt: tokio::runtime::Runtime,
    api: Api<Lease>,
    leases: BTreeMap<(String, String), Held>,
}

impl KubeLeases {
    /// Leases in `namespace`, with the client from the environment (as kubectl finds it).
    pub fn open(namespace: &str) -> std::io::Result<KubeLeases> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt
            .block_on(kube::Client::try_default())
            .map_err(std::io::Error::other)?;
        Ok(Self::with_client(rt, client, namespace))
    }

    /// With a client made on `rt` (kube's request buffer runs on the runtime it was made on).
    pub fn with_client(
        rt: tokio::runtime::Runtime,
        client: kube::Client,
        namespace: &str,
    ) -> KubeLeases {
        KubeLeases {
            rt,
            api: Api::namespaced(client, namespace),
            leases: BTreeMap::new(),
        }
    }
}

impl crate::lease::LeaseStore for KubeLeases {
    /// `duration` is the announcer's own (1 s, tuned for the embedded store); on the API
    /// Cilium's [`LEASE_DURATION`] is used so that nodes do not write every 200 ms.
    fn acquire_or_renew(
        &mut self,
        name: &str,
        holder: &str,
        _duration: Duration,
    ) -> std::io::Result<bool> {
        let key = (name.to_string(), holder.to_string());
        let now = Instant::now();
        let api = self.api.clone();
        let held = self.leases.entry(key).or_insert_with(|| Held {
            elector: Elector::new(api, &format!("{PREFIX}{name}"), holder, LEASE_DURATION),
            // Due at once.
            asked: now - RETRY_PERIOD,
            renewed: None,
        });
        if now.duration_since(held.asked) < RETRY_PERIOD {
            return Ok(held
                .renewed
                .is_some_and(|at| now.duration_since(at) < RENEW_DEADLINE));
        }
        held.asked = now;
        match self.rt.block_on(held.elector.round()) {
            Ok(Role::Leader) => {
                held.renewed = Some(now);
                Ok(true)
            }
            Ok(Role::Follower { .. }) => {
                held.renewed = None;
                Ok(false)
            }
            // Unreachable API: keep announcing until the renew deadline, then stop.
            Err(e) => {
                let still = held
                    .renewed
                    .is_some_and(|at| now.duration_since(at) < RENEW_DEADLINE);
                if still {
                    Ok(true)
                } else {
                    Err(std::io::Error::other(e))
                }
            }
        }
    }

    fn release(&mut self, name: &str, holder: &str) -> std::io::Result<()> {
        let Some(held) = self.leases.remove(&(name.to_string(), holder.to_string())) else {
            return Ok(());
        };
        self.rt
            .block_on(held.elector.release())
            .map_err(std::io::Error::other)
    }
}
