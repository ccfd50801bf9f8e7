//! Leader election with a coordination.k8s.io/v1 Lease, as client-go's leaderelection does
//! it: the holder renews `renewTime`; another candidate takes the Lease over only after it
//! has seen the same record unchanged for `leaseDurationSeconds` on its own monotonic clock
//! (so clock skew between nodes does not matter); every write carries the resourceVersion it
//! read, so two candidates never both win (the API server answers 409 to the second).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

/// client-go's and Cilium's operator defaults.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// What one round of election found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    /// Someone else holds the Lease (or won the race for it this round).
    Follower {
        holder: Option<String>,
    },
}

/// When each Lease record was first seen as it is, on this process's monotonic clock: a
/// record that has stood unchanged for its `leaseDurationSeconds` has expired, whatever the
/// clocks of the machines that wrote it say (client-go's rule).
#[derive(Debug)]
pub struct Observations<K: Ord> {
    seen: Mutex<BTreeMap<K, (LeaseSpec, Instant)>>,
}

impl<K: Ord> Default for Observations<K> {
    fn default() -> Self {
        Observations {
            seen: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<K: Ord> Observations<K> {
    /// Whether the Lease `key`'s record `spec` has stood unchanged for its duration (`default`
    /// when it has none) since this process first saw it so. A record seen for the first time
    /// has not.
    pub fn expired(&self, key: K, spec: &LeaseSpec, default: Duration) -> bool {
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        let since = match seen.get(&key) {
            Some((s, at)) if s == spec => *at,
            _ => {
                seen.insert(key, (spec.clone(), now));
                now
            }
        };
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(default);
        now.duration_since(since) >= duration
    }

    /// Forgets a Lease that is gone.
    pub fn forget(&self, key: &K) {
        match self.seen.lock() {
            Ok(mut g) => g.remove(key),
            Err(p) => p.into_inner().remove(key),
        };
    }
}

/// One candidate for one Lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The other holder's record as last seen, and when it was first seen so.
    observed: Observations<()>,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Elector {
        Elector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            observed: Observations::default(),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round: take the Lease if it is free or expired, renew it if held. An API error is
    /// returned as is; the caller steps down when it cannot renew within its deadline.
    pub async fn round(&self) -> Result<Role, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let current = match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.record(now.clone(), now, 0)),
                };
                return self.write(self.api.create(&PostParams::default(), &lease).await);
            }
            Some(l) => l,
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if holder.as_deref() == Some(self.identity.as_str()) {
            let acquired = spec.acquire_time.clone().unwrap_or_else(|| now.clone());
            let transitions = spec.lease_transitions.unwrap_or(0);
            let mut next = current;
            next.spec = Some(self.record(acquired, now, transitions));
            return self.write(
                self.api
                    .replace(&self.name, &PostParams::default(), &next)
                    .await,
            );
        }
        if holder.is_some() && !self.expired(&spec) {
            return Ok(Role::Follower { holder });
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + 1;
        let mut next = current;
        next.spec = Some(self.record(now.clone(), now, transitions));
        self.write(
            self.api
                .replace(&self.name, &PostParams::default(), &next)
                .await,
        )
    }

    /// Gives the Lease up (on shutdown), so the next candidate need not wait it out.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut current) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = current.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        self.api
            .replace(&self.name, &PostParams::default(), &current)
            .await
            .map(|_| ())
    }

    fn record(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Whether another holder's record has stood unchanged for its whole duration, measured
    /// on this process's clock from when this record was first seen.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        self.observed.expired((), spec, self.duration)
    }

    fn write(&self, r: Result<Lease, kube::Error>) -> Result<Role, kube::Error> {
        match r {
            Ok(_) => Ok(Role::Leader),
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => {
                Ok(Role::Follower { holder: None })
            }
            Err(e) => Err(e),
        }
    }
}

/// Runs rounds every `retry` and reports leadership on `tx`. A leader that cannot renew
/// for `renew_deadline` steps down (reports false) before its Lease could be taken over.
pub async fn keep(
    elector: &Elector,
    retry: Duration,
    renew_deadline: Duration,
    tx: tokio::sync::watch::Sender<bool>,
) {
    let mut last_renewed: Option<Instant> = None;
    loop {
        // A round that hangs (a half-open connection) must not keep a stale leader leading:
        // each is bounded, and the deadline counts from the last renewal.
        let started = Instant::now();
        let round = match tokio::time::timeout(renew_deadline, elector.round()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {renew_deadline:?}")),
        };
        let leader = match round {
            Ok(Role::Leader) => {
                last_renewed = Some(started);
                true
            }
            Ok(Role::Follower { holder }) => {
                if *tx.borrow() {
                    tracing::warn!(?holder, "lost the Lease");
                }
                last_renewed = None;
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "Lease round failed");
                last_renewed.is_some_and(|at| at.elapsed() < renew_deadline)
            }
        };
        tx.send_if_modified(|was| {
            let changed = *was != leader;
            *was = leader;
            changed
        });
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(retry).await;
    }
}
