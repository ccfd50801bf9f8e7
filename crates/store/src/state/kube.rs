//! The state seam on the Kubernetes API (`--state kube://NAMESPACE`): the objects of one
//! namespace stand in for etcd's key space, with the API server's own optimistic concurrency.
//!
//! - A key is a ConfigMap named `trellis-state-<hex of the key>` labelled
//!   `trellis.dev/state=v1`; its value is `binaryData.value`. A key's revision is the
//!   object's `resourceVersion` (a number on every etcd-backed API server), so
//!   create-if-absent is a POST (409: taken), compare-and-swap a PUT carrying the
//!   resourceVersion read (409: changed), and a conditional delete a DELETE with a
//!   resourceVersion precondition.
//! - A lease is a coordination.k8s.io Lease `trellis-state-<id>` (`leaseDurationSeconds`,
//!   `renewTime`); a key written on it carries the label `trellis.dev/state-lease=<id>`.
//!   Kubernetes removes nothing when a Lease runs out, so whoever reads a key on a lease that
//!   is gone or past its `renewTime` plus duration treats it as absent and deletes it with
//!   the lease (etcd drops such keys itself). Expiry is judged on the reader's wall clock, as
//!   client-go's leader election does with the same fields.
//! - A watch is the API's watch of those ConfigMaps from a listing's resourceVersion; 410
//!   Gone is [`Error::Compacted`].
//!
//! On Kubernetes trellis itself keeps its state in the API's own objects (pod ranges on
//! Nodes, cluster IPs and node ports from the API server, LoadBalancer addresses in Service
//! status, L2 announcements on Cilium's Leases); this backend gives the state seam's users
//! (the node registry, allocations, leases) the same API when the API server is the only
//! shared store there is.

use std::collections::BTreeMap;
use std::time::Duration;

use ::kube::api::{
    Api, DeleteParams, ListParams, PostParams, Preconditions, WatchEvent, WatchParams,
};
use futures_util::StreamExt as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

use super::{
    Backend, BoxFuture, Error, Event, Kv, LeaseId, Listing, Watch, WatchSender, check_value,
    ttl_secs,
};

/// The label every state object carries, and its value (the layout's version).
pub const LABEL: &str = "trellis.dev/state";
const LABEL_VALUE: &str = "v1";
/// The label naming a key's lease.
pub const LEASE_LABEL: &str = "trellis.dev/state-lease";
const NAME_PREFIX: &str = "trellis-state-";
/// The longest key: its hex name must fit Kubernetes's 253 characters.
pub const KEY_BYTES_MAX: usize = (253 - NAME_PREFIX.len()) / 2;
/// Each API round trip is bounded by this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Batches a watch holds before its reader takes them.
const WATCH_QUEUE: usize = 256;

/// The state in one namespace of the API server.
#[derive(Clone)]
pub struct Kube {
    client: ::kube::Client,
    namespace: String,
}

impl Kube {
    pub fn new(client: ::kube::Client, namespace: &str) -> Kube {
        Kube {
            client,
            namespace: namespace.to_string(),
        }
    }

    /// With the client from the environment (the service account in a pod, else the
    /// kubeconfig, as kubectl finds them).
    pub async fn connect(namespace: &str) -> Result<Kube, Error> {
        let client = ::kube::Client::try_default()
            .await
            .map_err(|e| Error::Unavailable(format!("the Kubernetes API: {e}")))?;
        Ok(Kube::new(client, namespace))
    }

    fn maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Reads every key under `prefix` with the listing's resourceVersion, dropping (and
    /// deleting) keys whose lease is gone.
    async fn read(&self, prefix: &str) -> Result<Listing, Error> {
        let list = timed(
            self.maps()
                .list(&ListParams::default().labels(&format!("{LABEL}={LABEL_VALUE}"))),
        )
        .await?;
        let revision = revision_of(list.metadata.resource_version.as_deref())?;
        let mut kvs: Vec<Kv> = list
            .items
            .iter()
            .filter_map(kv)
            .filter(|kv| kv.key.starts_with(prefix))
            .collect();
        let mut alive = BTreeMap::new();
        for kv in &kvs {
            if kv.lease != 0 && !alive.contains_key(&kv.lease) {
                alive.insert(kv.lease, self.lease_alive(kv.lease).await?);
            }
        }
        for (lease, _) in alive.iter().filter(|(_, a)| !**a) {
            self.reap(*lease).await?;
        }
        kvs.retain(|kv| kv.lease == 0 || alive.get(&kv.lease).copied().unwrap_or(false));
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Listing { kvs, revision })
    }

    /// True when the lease exists and has not run out.
    async fn lease_alive(&self, lease: LeaseId) -> Result<bool, Error> {
        Ok(
            match timed(self.leases().get_opt(&lease_name(lease))).await? {
                Some(l) => l
                    .spec
                    .as_ref()
                    .is_some_and(|s| !expired(s, Timestamp::now())),
                None => false,
            },
        )
    }

    /// Deletes a lease's keys, then the lease.
    async fn reap(&self, lease: LeaseId) -> Result<(), Error> {
        let list = timed(
            self.maps()
                .list(&ListParams::default().labels(&format!("{LEASE_LABEL}={lease}"))),
        )
        .await?;
        for m in list.items {
            if let Some(name) = m.metadata.name {
                gone_ok(self.maps().delete(&name, &DeleteParams::default())).await?;
            }
        }
        gone_ok(
            self.leases()
                .delete(&lease_name(lease), &DeleteParams::default()),
        )
        .await
    }

    /// The object for `key`, written on `lease`.
    fn object(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> ConfigMap {
        let mut labels = BTreeMap::from([(LABEL.to_string(), LABEL_VALUE.to_string())]);
        if let Some(l) = lease {
            labels.insert(LEASE_LABEL.to_string(), l.to_string());
        }
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name_of(key)),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            binary_data: Some(BTreeMap::from([(
                "value".to_string(),
                k8s_openapi::ByteString(value.to_vec()),
            )])),
            ..ConfigMap::default()
        }
    }

    /// Refuses a key too long to name, a value too large, or a lease that is not alive.
    async fn check_write(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<(), Error> {
        check_value(key, value)?;
        if key.len() > KEY_BYTES_MAX {
            return Err(Error::Refused(format!(
                "{key}: keys of the Kubernetes backend are at most {KEY_BYTES_MAX} bytes"
            )));
        }
        if let Some(l) = lease
            && !self.lease_alive(l).await?
        {
            return Err(Error::Refused(format!("lease {l} not found")));
        }
        Ok(())
    }
}

/// `trellis-state-<hex>`: a valid object name for any key of at most [`KEY_BYTES_MAX`].
fn name_of(key: &str) -> String {
    use std::fmt::Write as _;
    let mut name = String::with_capacity(NAME_PREFIX.len() + key.len() * 2);
    name.push_str(NAME_PREFIX);
    for b in key.bytes() {
        let _ = write!(name, "{b:02x}");
    }
    name
}

fn key_of(name: &str) -> Option<String> {
    let hex = name.strip_prefix(NAME_PREFIX)?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

fn lease_name(lease: LeaseId) -> String {
    format!("{NAME_PREFIX}{lease}")
}

/// A resourceVersion as a revision (etcd's revision on every etcd-backed API server).
fn revision_of(rv: Option<&str>) -> Result<i64, Error> {
    let rv = rv.unwrap_or_default();
    rv.parse().map_err(|_| {
        Error::Refused(format!(
            "resourceVersion {rv:?} is not a number: this API server's storage cannot hold trellis's state"
        ))
    })
}

fn kv(m: &ConfigMap) -> Option<Kv> {
    let key = key_of(m.metadata.name.as_deref()?)?;
    Some(Kv {
        key,
        value: m
            .binary_data
            .as_ref()
            .and_then(|d| d.get("value"))
            .map(|v| v.0.clone())
            .unwrap_or_default(),
        mod_revision: revision_of(m.metadata.resource_version.as_deref()).ok()?,
        lease: m
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LEASE_LABEL))
            .and_then(|l| l.parse().ok())
            .unwrap_or(0),
    })
}

/// Past `renewTime` plus `leaseDurationSeconds` at `now` (a Lease with neither has run out).
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let (Some(renewed), Some(secs)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    renewed
        .0
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
            secs,
        )))
        .is_ok_and(|until| until < now)
}

/// What the API answered: the object, or the status code and message it refused with.
enum Answer<T> {
    Done(T),
    Refused(u16, String),
}

/// One API call within [`REQUEST_TIMEOUT`]. No answer, or a server error, is
/// [`Error::Unavailable`]; a refusal (4xx) is the caller's to read.
async fn call<T>(f: impl Future<Output = Result<T, ::kube::Error>>) -> Result<Answer<T>, Error> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Err(_) => Err(Error::Unavailable(format!(
            "no answer from the Kubernetes API within {REQUEST_TIMEOUT:?}"
        ))),
        Ok(Err(::kube::Error::Api(s))) if s.code < 500 && s.code != 429 => {
            Ok(Answer::Refused(s.code, s.message.clone()))
        }
        Ok(Err(e)) => Err(Error::Unavailable(e.to_string())),
        Ok(Ok(t)) => Ok(Answer::Done(t)),
    }
}

/// [`call`] where any refusal is an error.
async fn timed<T>(f: impl Future<Output = Result<T, ::kube::Error>>) -> Result<T, Error> {
    match call(f).await? {
        Answer::Done(t) => Ok(t),
        Answer::Refused(410, _) => Err(Error::Compacted(0)),
        Answer::Refused(code, m) => Err(Error::Refused(format!("{m} ({code})"))),
    }
}

/// A delete's answer: gone already (404) is what it asked for.
async fn gone_ok<T>(f: impl Future<Output = Result<T, ::kube::Error>>) -> Result<(), Error> {
    match call(f).await? {
        Answer::Done(_) | Answer::Refused(404, _) => Ok(()),
        Answer::Refused(code, m) => Err(Error::Refused(format!("{m} ({code})"))),
    }
}

/// A conditional write's answer: changed or taken (409) and gone (404) are `false`.
async fn written<T>(f: impl Future<Output = Result<T, ::kube::Error>>) -> Result<bool, Error> {
    match call(f).await? {
        Answer::Done(_) => Ok(true),
        Answer::Refused(404 | 409, _) => Ok(false),
        Answer::Refused(code, m) => Err(Error::Refused(format!("{m} ({code})"))),
    }
}

impl Backend for Kube {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Kv>, Error>> {
        Box::pin(async move {
            let Some(m) = timed(self.maps().get_opt(&name_of(key))).await? else {
                return Ok(None);
            };
            let Some(kv) = kv(&m) else {
                return Ok(None);
            };
            if kv.lease != 0 && !self.lease_alive(kv.lease).await? {
                self.reap(kv.lease).await?;
                return Ok(None);
            }
            Ok(Some(kv))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, Error>> {
        Box::pin(self.read(prefix))
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            self.check_write(key, value, lease).await?;
            let obj = self.object(key, value, lease);
            let (maps, pp) = (self.maps(), PostParams::default());
            let post = || maps.create(&pp, &obj);
            match call(post()).await? {
                Answer::Done(_) => Ok(true),
                // Taken; unless by a key on a lease that ran out, which reading takes away.
                Answer::Refused(409, _) => match self.get(key).await? {
                    Some(_) => Ok(false),
                    None => written(post()).await,
                },
                Answer::Refused(code, m) => Err(Error::Refused(format!("{m} ({code})"))),
            }
        })
    }

    fn swap<'a>(
        &'a self,
        key: &'a str,
        revision: i64,
        value: &'a [u8],
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            if revision == 0 {
                return self.create(key, value, lease).await;
            }
            self.check_write(key, value, lease).await?;
            let mut obj = self.object(key, value, lease);
            obj.metadata.resource_version = Some(revision.to_string());
            written(
                self.maps()
                    .replace(&name_of(key), &PostParams::default(), &obj),
            )
            .await
        })
    }

    fn delete<'a>(&'a self, key: &'a str, revision: i64) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(revision.to_string()),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            written(self.maps().delete(&name_of(key), &params)).await
        })
    }

    fn grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, Error>> {
        Box::pin(async move {
            use std::hash::BuildHasher as _;
            // A positive id no other grant will pick (std's per-process random keys).
            let id = (std::collections::hash_map::RandomState::new().hash_one(Timestamp::now())
                >> 11) as i64
                + 1;
            let secs = i32::try_from(ttl_secs(ttl)).unwrap_or(i32::MAX);
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(lease_name(id)),
                    namespace: Some(self.namespace.clone()),
                    labels: Some(BTreeMap::from([(
                        LABEL.to_string(),
                        LABEL_VALUE.to_string(),
                    )])),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(id.to_string()),
                    lease_duration_seconds: Some(secs),
                    renew_time: Some(MicroTime(Timestamp::now())),
                    ..LeaseSpec::default()
                }),
            };
            timed(self.leases().create(&PostParams::default(), &lease)).await?;
            Ok(id)
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<Option<Duration>, Error>> {
        Box::pin(async move {
            let Some(mut l) = timed(self.leases().get_opt(&lease_name(lease))).await? else {
                return Ok(None);
            };
            let now = Timestamp::now();
            let spec = l.spec.get_or_insert_default();
            if expired(spec, now) {
                self.reap(lease).await?;
                return Ok(None);
            }
            spec.renew_time = Some(MicroTime(now));
            let ttl = spec.lease_duration_seconds.unwrap_or(1);
            // The resourceVersion read travels with the write: a Lease changed meanwhile
            // (deleted by a reaper and made again) is not renewed blindly.
            let renewed = written(self.leases().replace(
                &lease_name(lease),
                &PostParams::default(),
                &l,
            ))
            .await?;
            Ok(renewed.then(|| Duration::from_secs(ttl.unsigned_abs().into())))
        })
    }

    fn revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.reap(lease))
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<Watch, Error>> {
        Box::pin(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(WATCH_QUEUE);
            let (me, prefix) = (self.clone(), prefix.to_string());
            tokio::spawn(async move { me.follow(&prefix, after, tx).await });
            Ok(Watch { events: rx })
        })
    }
}

impl Kube {
    /// Sends the changes under `prefix` after `after` until the reader goes, watching again
    /// from the last resourceVersion whenever the API server ends a watch.
    async fn follow(&self, prefix: &str, mut after: i64, tx: WatchSender) {
        let params = WatchParams::default().labels(&format!("{LABEL}={LABEL_VALUE}"));
        loop {
            let stream = match timed(self.maps().watch(&params, &after.to_string())).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                // The reader gone ends the watch at once, not at the next change.
                let ev = tokio::select! {
                    ev = stream.next() => match ev {
                        Some(ev) => ev,
                        None => break,
                    },
                    () = tx.closed() => return,
                };
                let batch = match ev {
                    Ok(WatchEvent::Added(m) | WatchEvent::Modified(m)) => {
                        kv(&m).map(|kv| (kv.mod_revision, Event::Put(kv)))
                    }
                    Ok(WatchEvent::Deleted(m)) => kv(&m).map(|kv| {
                        (
                            kv.mod_revision,
                            Event::Delete {
                                key: kv.key,
                                revision: kv.mod_revision,
                            },
                        )
                    }),
                    Ok(WatchEvent::Bookmark(b)) => {
                        after = revision_of(Some(&b.metadata.resource_version)).unwrap_or(after);
                        None
                    }
                    Ok(WatchEvent::Error(s)) if s.code == 410 => {
                        let _ = tx.send(Err(Error::Compacted(after))).await;
                        return;
                    }
                    Ok(WatchEvent::Error(s)) => {
                        let _ = tx
                            .send(Err(Error::Unavailable(format!(
                                "the watch ended: {} ({})",
                                s.message, s.code
                            ))))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Error::Unavailable(e.to_string()))).await;
                        return;
                    }
                };
                let Some((revision, event)) = batch else {
                    continue;
                };
                after = after.max(revision);
                let key = match &event {
                    Event::Put(kv) => &kv.key,
                    Event::Delete { key, .. } => key,
                };
                if key.starts_with(prefix) && tx.send(Ok(vec![event])).await.is_err() {
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_objects_and_back() {
        for key in ["/trellis/v1/nodes/node-1", "", "/ä/ b"] {
            let name = name_of(key);
            assert!(name.len() <= 253);
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
            assert_eq!(key_of(&name).as_deref(), Some(key));
        }
        assert!(name_of(&"k".repeat(KEY_BYTES_MAX)).len() <= 253);
        assert!(name_of(&"k".repeat(KEY_BYTES_MAX + 1)).len() > 253);
        assert_eq!(key_of("trellis-state-0"), None);
        assert_eq!(key_of("other"), None);
    }

    #[test]
    fn a_lease_runs_out_after_its_duration_from_its_renewal() {
        let renewed = Timestamp::from_second(1_000).expect("time");
        let spec = LeaseSpec {
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        let at = |s| Timestamp::from_second(s).expect("time");
        assert!(!expired(&spec, at(1_015)));
        assert!(expired(&spec, at(1_016)));
        assert!(expired(&LeaseSpec::default(), at(0)));
    }
}
