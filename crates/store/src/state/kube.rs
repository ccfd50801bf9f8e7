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
//!   renewed by writing `renewTime`); a key written on it carries the label
//!   `trellis.dev/state-lease=<id>`. Kubernetes removes nothing when a Lease runs out, so a
//!   reader that finds a key on a Lease that is gone, or whose record it has seen unchanged
//!   for `leaseDurationSeconds` on its own monotonic clock (client-go's rule, so clock skew
//!   between machines does not matter; [`Observations`]), treats the key as absent
//!   and deletes the Lease (only as it saw it), then its keys (only as it saw them); etcd
//!   drops such keys itself. A reader that first sees a Lease long dead waits one duration
//!   from then. A watch sees those keys go when some reader deletes them, not at expiry.
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
use crate::kubernetes::leader::Observations;

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
    /// Each Lease's record as this process last saw it, and since when.
    observed: std::sync::Arc<Observations<LeaseId>>,
}

impl Kube {
    pub fn new(client: ::kube::Client, namespace: &str) -> Kube {
        Kube {
            client,
            namespace: namespace.to_string(),
            observed: std::sync::Arc::default(),
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
        // Every Lease at once (one more round trip), when a key is on one.
        let mut leases = BTreeMap::new();
        if kvs.iter().any(|kv| kv.lease != 0) {
            let list = timed(
                self.leases()
                    .list(&ListParams::default().labels(&format!("{LABEL}={LABEL_VALUE}"))),
            )
            .await?;
            for l in list.items {
                if let Some(id) = l
                    .metadata
                    .name
                    .as_deref()
                    .and_then(|n| n.strip_prefix(NAME_PREFIX))
                    .and_then(|id| id.parse::<LeaseId>().ok())
                {
                    leases.insert(id, l);
                }
            }
        }
        let mut alive = BTreeMap::new();
        let ids: std::collections::BTreeSet<LeaseId> =
            kvs.iter().map(|kv| kv.lease).filter(|l| *l != 0).collect();
        for id in ids {
            let lease = leases.get(&id);
            let live = self.alive(id, lease);
            if !live {
                self.reap(id, lease).await?;
            }
            alive.insert(id, live);
        }
        kvs.retain(|kv| kv.lease == 0 || alive.get(&kv.lease).copied().unwrap_or(false));
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Listing { kvs, revision })
    }

    /// Whether the Lease (as read; None: there is none) has not run out by this process's
    /// observation of it.
    fn alive(&self, id: LeaseId, lease: Option<&Lease>) -> bool {
        match lease.and_then(|l| l.spec.as_ref()) {
            Some(spec) => !self.observed.expired(id, spec, Duration::from_secs(1)),
            None => {
                self.observed.forget(&id);
                false
            }
        }
    }

    /// [`Self::alive`] with the Lease read now.
    async fn lease_alive(&self, id: LeaseId) -> Result<bool, Error> {
        let lease = timed(self.leases().get_opt(&lease_name(id))).await?;
        Ok(self.alive(id, lease.as_ref()))
    }

    /// Takes away a Lease that ran out, as it was read (a Lease renewed since stays, and so
    /// do its keys), then its keys, each as listed (one written again since stays).
    async fn reap(&self, id: LeaseId, seen: Option<&Lease>) -> Result<(), Error> {
        if let Some(l) = seen {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: l.metadata.resource_version.clone(),
                    uid: l.metadata.uid.clone(),
                }),
                ..DeleteParams::default()
            };
            if !written(self.leases().delete(&lease_name(id), &params)).await?
                && self.lease_alive(id).await?
            {
                // Renewed meanwhile: it lives on.
                return Ok(());
            }
        }
        self.observed.forget(&id);
        self.delete_keys_of(id).await
    }

    /// Deletes the keys on a Lease that is gone, each only as listed.
    async fn delete_keys_of(&self, id: LeaseId) -> Result<(), Error> {
        let list = timed(
            self.maps()
                .list(&ListParams::default().labels(&format!("{LEASE_LABEL}={id}"))),
        )
        .await?;
        for m in list.items {
            let Some(name) = m.metadata.name.clone() else {
                continue;
            };
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: m.metadata.resource_version.clone(),
                    uid: m.metadata.uid.clone(),
                }),
                ..DeleteParams::default()
            };
            // Gone or written again since: not ours to delete.
            written(self.maps().delete(&name, &params)).await?;
        }
        Ok(())
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
            if kv.lease != 0 {
                let lease = timed(self.leases().get_opt(&lease_name(kv.lease))).await?;
                if !self.alive(kv.lease, lease.as_ref()) {
                    self.reap(kv.lease, lease.as_ref()).await?;
                    return Ok(None);
                }
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
                self.observed.forget(&lease);
                return Ok(None);
            };
            if !self.alive(lease, Some(&l)) {
                self.reap(lease, Some(&l)).await?;
                return Ok(None);
            }
            let spec = l.spec.get_or_insert_default();
            spec.renew_time = Some(MicroTime(Timestamp::now()));
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
        Box::pin(async move {
            gone_ok(
                self.leases()
                    .delete(&lease_name(lease), &DeleteParams::default()),
            )
            .await?;
            self.observed.forget(&lease);
            self.delete_keys_of(lease).await
        })
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
}
