//! L2-announcement leases on the API server (coordination.k8s.io Leases), for agents on
//! Kubernetes: the [`crate::lease::LeaseStore`] the announcer takes, over [`super::leader`].
//!
//! The names and timings are Cilium's: a Service's lease is `cilium-l2announce-<ns>-<name>`
//! (the announcer's `l2announce-<ns>-<name>` with Cilium's prefix), held for
//! [`LEASE_DURATION`] and renewed every [`RETRY_PERIOD`].
//!
//! Each lease asked for runs its rounds on a task of its own, each round bounded by
//! [`ROUND_TIMEOUT`]; the announcer (every 200 ms, on the agent's loop) only reads the last
//! outcome, so a slow or unreachable API never holds the agent's loop up. A node answers
//! for an address only while its last renewal is younger than [`RENEW_DEADLINE`], well
//! inside the 15 s after which another node may take the lease: cut off from the API, it
//! stops announcing before anyone else starts. A lease nobody has asked about for
//! [`FORGET_AFTER`] stops its task (and gives the lease up if held).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::time::Instant;

use super::leader::{Elector, Role};

/// Cilium's `l2announcements.leaseDuration`, `leaseRenewDeadline` and `leaseRetryPeriod`.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(5);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// One API round (a read, and a write when due) may take this long.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(2);
/// A lease the announcer stopped asking about is let go after this long.
pub const FORGET_AFTER: Duration = Duration::from_secs(10);
const PREFIX: &str = "cilium-";

/// What one lease's task last found.
#[derive(Debug, Default)]
struct Outcome {
    /// When this node last renewed the lease (None: not held).
    renewed: Option<Instant>,
    /// When the announcer last asked.
    asked: Option<Instant>,
    error: Option<String>,
}

#[derive(Debug)]
struct Task {
    outcome: Arc<Mutex<Outcome>>,
    handle: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
pub struct KubeLeases {
    rt: tokio::runtime::Runtime,
    api: Api<Lease>,
    tasks: BTreeMap<(String, String), Task>,
}

impl KubeLeases {
    /// Leases in `namespace`, with the client from the environment (as kubectl finds it).
    pub fn open(namespace: &str) -> std::io::Result<KubeLeases> {
        let rt = runtime()?;
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
            tasks: BTreeMap::new(),
        }
    }
}

/// The runtime the lease tasks run on (one worker: they mostly wait).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("trellis-leases")
        .enable_all()
        .build()
}

fn lock(m: &Mutex<Outcome>) -> std::sync::MutexGuard<'_, Outcome> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// One lease's rounds, until nobody asks for it any more.
async fn keep(elector: Elector, outcome: Arc<Mutex<Outcome>>) {
    loop {
        let asked = lock(&outcome).asked;
        if asked.is_none_or(|at| at.elapsed() >= FORGET_AFTER) {
            if lock(&outcome).renewed.is_some() {
                let _ = tokio::time::timeout(ROUND_TIMEOUT, elector.release()).await;
            }
            return;
        }
        let started = Instant::now();
        let round = tokio::time::timeout(ROUND_TIMEOUT, elector.round()).await;
        {
            let mut o = lock(&outcome);
            match round {
                Ok(Ok(Role::Leader)) => {
                    o.renewed = Some(started);
                    o.error = None;
                }
                Ok(Ok(Role::Follower { .. })) => {
                    o.renewed = None;
                    o.error = None;
                }
                // The last renewal stands until its deadline (see `held`).
                Ok(Err(e)) => o.error = Some(e.to_string()),
                Err(_) => o.error = Some(format!("no answer within {ROUND_TIMEOUT:?}")),
            }
        }
        tokio::time::sleep(RETRY_PERIOD).await;
    }
}

impl crate::lease::LeaseStore for KubeLeases {
    /// `duration` is the announcer's own (1 s, tuned for the embedded store); on the API
    /// Cilium's [`LEASE_DURATION`] is used so that nodes do not write every 200 ms. Never an
    /// error: an unreachable API means "not held" once the renew deadline has passed.
    fn acquire_or_renew(
        &mut self,
        name: &str,
        holder: &str,
        _duration: Duration,
    ) -> std::io::Result<bool> {
        let key = (name.to_string(), holder.to_string());
        let _rt = self.rt.enter();
        let now = Instant::now();
        let task = match self.tasks.get(&key) {
            Some(t) if !t.handle.is_finished() => t,
            _ => {
                let outcome = Arc::new(Mutex::new(Outcome {
                    asked: Some(now),
                    ..Outcome::default()
                }));
                let elector = Elector::new(
                    self.api.clone(),
                    &format!("{PREFIX}{name}"),
                    holder,
                    LEASE_DURATION,
                );
                let handle = self.rt.spawn(keep(elector, outcome.clone()));
                self.tasks.insert(key.clone(), Task { outcome, handle });
                &self.tasks[&key]
            }
        };
        let mut o = lock(&task.outcome);
        o.asked = Some(now);
        if let Some(e) = &o.error {
            tracing::debug!(lease = name, error = %e, "Lease round failed");
        }
        Ok(o.renewed
            .is_some_and(|at| now.duration_since(at) < RENEW_DEADLINE))
    }

    fn release(&mut self, name: &str, holder: &str) -> std::io::Result<()> {
        let Some(task) = self.tasks.remove(&(name.to_string(), holder.to_string())) else {
            return Ok(());
        };
        task.handle.abort();
        let elector = Elector::new(
            self.api.clone(),
            &format!("{PREFIX}{name}"),
            holder,
            LEASE_DURATION,
        );
        match self
            .rt
            .block_on(tokio::time::timeout(ROUND_TIMEOUT, elector.release()))
        {
            Ok(r) => r.map_err(std::io::Error::other),
            Err(_) => Err(std::io::Error::other(format!(
                "releasing the Lease: no answer within {ROUND_TIMEOUT:?}"
            ))),
        }
    }
}

impl Drop for KubeLeases {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.handle.abort();
        }
    }
}
