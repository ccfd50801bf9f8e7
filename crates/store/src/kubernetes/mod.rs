//! The Kubernetes source: one kube-rs watcher per kind of the kind table, feeding the same
//! [`model::Snapshot::build`] as the directory source, so everything downstream is shared.
//!
//! - Every kind trellis reads ([`model::snapshot::KINDS`], BGP kinds left out) is listed and
//!   watched cluster-wide, at the newest version the API server serves; a kind whose CRD is
//!   not installed (404 at every version) counts as empty and is looked for again every
//!   [`ABSENT_RECHECK`].
//! - A watch that expires (410 Gone) re-lists: kube's watcher starts over with `Init`, and
//!   the objects not listed again are dropped when `InitDone` arrives.
//! - The first snapshot is published once every kind has listed (or is absent); a kind that
//!   cannot be listed (RBAC, an unreachable server) is named in the error after
//!   [`FIRST_SYNC_TIMEOUT`]. Later changes arrive as [`crate::watch::Update`]s, debounced
//!   by [`crate::watch::DEBOUNCE_MS`], under the same rule as files: a snapshot with errors
//!   is rejected and the last good one keeps serving.
//! - Memory: `metadata.managedFields` and the last-applied annotation are dropped as events
//!   arrive; they are the largest part of most objects and trellis reads neither. Each kind
//!   holds at most [`KindBound`] (objects and bytes). Past it, the rest of the kind's objects
//!   are counted by name only, and the snapshot carries an error naming the kind, so it is
//!   rejected and the last good one keeps serving (dropping objects would serve a policy
//!   without some of its rules: fail open). Once the kind is back within its bound it is
//!   listed again.
//!
//! [`status`] writes conditions back with server-side apply; [`leader`] elects the one
//! writer with a coordination.k8s.io Lease.

pub mod crd;
pub mod leader;
pub mod leases;
pub mod metrics;
pub mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use model::object::{ObjectKey, Source};
use model::snapshot::{KINDS, KindInfo, RawObject};
use tokio::sync::mpsc;

use crate::dir::{Load, Observed};
use crate::watch::{DEBOUNCE_MS, Watch};

/// How long the first complete listing may take before the source gives up and says which
/// kinds did not list.
pub const FIRST_SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a kind whose CRD is not installed is looked for again.
pub const ABSENT_RECHECK: Duration = Duration::from_secs(60);
/// The longest pause between retries of a failing list or watch (kube's own backoff starts
/// at 800 ms; this caps ours the same way).
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// Events queued between the watchers and the snapshot builder.
const EVENTS_QUEUED_MAX: usize = 1024;
/// Objects of one kind the source holds, by default. A 5,000-node cluster runs about 150,000
/// pods, far past what trellis is for; a small cluster has hundreds of objects per kind.
pub const KIND_OBJECTS_MAX: usize = 50_000;
/// Bytes (as JSON) of one kind's objects the source holds, by default. The API server
/// bounds each object (etcd's 1.5 MiB request limit), not their sum.
pub const KIND_BYTES_MAX: usize = 256 << 20;

/// How much of one kind the source holds before the kind counts as over its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindBound {
    pub objects: usize,
    pub bytes: usize,
}

impl Default for KindBound {
    fn default() -> Self {
        KindBound {
            objects: KIND_OBJECTS_MAX,
            bytes: KIND_BYTES_MAX,
        }
    }
}
/// Kinds whose resource name is not the regular plural of the kind.
const PLURALS: &[(&str, &str)] = &[(
    "NetworkAttachmentDefinition",
    "network-attachment-definitions",
)];
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A kind of the table at one served version, as the API addresses it.
#[derive(Clone, Debug)]
pub struct Resource {
    pub info: KindInfo,
    pub api: ApiResource,
}

impl Resource {
    pub fn new(info: KindInfo, version: &str) -> Resource {
        let gvk = GroupVersionKind::gvk(info.group, version, info.kind);
        let api = match PLURALS.iter().find(|(k, _)| *k == info.kind) {
            Some((_, plural)) => ApiResource::from_gvk_with_plural(&gvk, plural),
            None => ApiResource::from_gvk(&gvk),
        };
        Resource { info, api }
    }

    /// The collection's path (`/api/v1/services`, `/apis/gateway.networking.k8s.io/v1/...`).
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        let base = if self.api.group.is_empty() {
            format!("/api/{}", self.api.version)
        } else {
            format!("/apis/{}/{}", self.api.group, self.api.version)
        };
        match namespace {
            Some(ns) if self.info.namespaced => {
                format!("{base}/namespaces/{ns}/{}", self.api.plural)
            }
            _ => format!("{base}/{}", self.api.plural),
        }
    }

    /// One object's path: where a diagnostic about it points (`kubectl get --raw PATH`).
    pub fn object_path(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{name}", self.collection_path(namespace))
    }
}

/// Why the first listing did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube's own message already carries its causes, so it is the whole message here.
    #[error(
        "cannot reach the Kubernetes API (in a pod: a service account; elsewhere: $KUBECONFIG or ~/.kube/config): {0}"
    )]
    Client(kube::Error),
    #[error(
        "the Kubernetes API did not list every kind within {:?}; not listed: {}",
        FIRST_SYNC_TIMEOUT,
        .0.join("; ")
    )]
    FirstSync(Vec<String>),
    #[error("cannot start the Kubernetes source")]
    Runtime(#[source] std::io::Error),
}

/// What a kind's watcher tells the builder. (An event is most messages and is moved once;
/// boxing it would cost an allocation per event for nothing.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(usize, Resource, watcher::Event<DynamicObject>),
    /// No version of the kind is served (its CRD is not installed).
    Absent(usize),
    /// The kind cannot be listed or watched now, and why (kept for the first-sync error).
    Failing(usize, String),
}

/// Starts watching the API with the client from the environment (in-cluster service account,
/// or the kubeconfig, as `kubectl` finds it) and returns once every kind has listed, with
/// the first snapshot current. The watchers run on a thread of their own until the watch
/// drops.
pub fn watch(opts: &crate::Options) -> Result<Watch, Error> {
    watch_with(
        || async { kube::Client::try_default().await },
        opts,
        FIRST_SYNC_TIMEOUT,
    )
}

/// [`watch`] with the client `connect` makes (on the source's own runtime, where kube's
/// request buffer must run) and a bound on the first listing.
pub fn watch_with<F, Fut>(
    connect: F,
    opts: &crate::Options,
    first_sync: Duration,
) -> Result<Watch, Error>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<kube::Client, kube::Error>>,
{
    let (first_tx, first_rx) = std::sync::mpsc::channel::<Result<Watch, Error>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = opts.clone();
    std::thread::Builder::new()
        .name("trellis-kube".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = first_tx.send(Err(Error::Runtime(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let client = match connect().await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = first_tx.send(Err(Error::Client(e)));
                        return;
                    }
                };
                tokio::select! {
                    _ = run(client, opts, first_sync, first_tx, stop_tx) => {}
                    // The Watch holds the sender: dropping it stops the watchers.
                    _ = stop_rx => {}
                }
            });
        })
        .map_err(Error::Runtime)?;
    match first_rx.recv() {
        Ok(r) => r,
        Err(_) => Err(Error::FirstSync(vec!["the source stopped".into()])),
    }
}

/// The builder: merges the kinds' events into one object map and publishes loads.
async fn run(
    client: kube::Client,
    opts: crate::Options,
    first_sync: Duration,
    first_tx: std::sync::mpsc::Sender<Result<Watch, Error>>,
    stop_tx: tokio::sync::oneshot::Sender<()>,
) {
    let kinds: Vec<KindInfo> = KINDS
        .iter()
        .copied()
        .filter(|k| !opts.skip_kinds.iter().any(|s| s == k.kind))
        .collect();
    let (tx, mut rx) = mpsc::channel::<Msg>(EVENTS_QUEUED_MAX);
    let relists: Vec<Arc<tokio::sync::Notify>> = kinds.iter().map(|_| Arc::default()).collect();
    for (i, info) in kinds.iter().enumerate() {
        tokio::spawn(watch_kind(
            client.clone(),
            i,
            *info,
            tx.clone(),
            relists[i].clone(),
        ));
    }
    drop(tx);
    let metrics = Arc::new(metrics::SourceMetrics::default());
    let mut state = State::new(&kinds, opts.kind_bound, metrics.clone(), relists);
    let deadline = tokio::time::Instant::now() + first_sync;
    // First: until every kind is synced.
    while !state.all_synced() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(msg)) => {
                state.apply(msg);
            }
            Ok(None) => return,
            Err(_) => {
                let missing = state.not_synced();
                let _ = first_tx.send(Err(Error::FirstSync(missing)));
                return;
            }
        }
    }
    let (watch, publisher) = Watch::from_source(state.load(&opts), Box::new(stop_tx));
    let watch = watch.with_source_metrics(metrics.clone());
    if first_tx.send(Ok(watch)).is_err() {
        return;
    }
    // Then: each burst of changes is one load.
    while let Some(msg) = rx.recv().await {
        let first_event = tokio::time::Instant::now();
        let mut changed = state.apply(msg);
        let until = first_event + Duration::from_millis(DEBOUNCE_MS);
        while let Ok(Some(msg)) = tokio::time::timeout_at(until, rx.recv()).await {
            changed |= state.apply(msg);
        }
        if changed && state.all_synced() {
            let load = state.load(&opts);
            if load.snapshot.has_errors() {
                metrics.snapshots_rejected.inc();
            }
            if !publisher.publish(load) {
                return;
            }
            metrics
                .snapshot_lag
                .observe(first_event.elapsed().as_secs_f64());
        }
    }
}

/// One kind's watcher, across the versions it may be served at. `relist` starts the watch
/// over (a fresh list) at the version it is on.
async fn watch_kind(
    client: kube::Client,
    index: usize,
    info: KindInfo,
    tx: mpsc::Sender<Msg>,
    relist: Arc<tokio::sync::Notify>,
) {
    loop {
        for version in info.versions {
            let resource = Resource::new(info, version);
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource.api);
            let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
            let mut pause = Duration::from_millis(800);
            let mut not_served = false;
            loop {
                let ev = tokio::select! {
                    ev = stream.next() => match ev {
                        Some(ev) => ev,
                        None => break,
                    },
                    () = relist.notified() => {
                        stream = watcher(api.clone(), watcher::Config::default()).boxed();
                        continue;
                    }
                };
                match ev {
                    Ok(ev) => {
                        pause = Duration::from_millis(800);
                        if tx
                            .send(Msg::Event(index, resource.clone(), ev))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    // Not served at this version (also when a CRD or version goes away
                    // while the watch reconnects): look again from the newest version, and
                    // let the objects go when no version serves the kind.
                    Err(
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                        | watcher::Error::WatchStartFailed(kube::Error::Api(s)),
                    ) if s.code == 404 => {
                        not_served = true;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(kind = info.kind, version, error = %e, retry_in = ?pause, "Kubernetes watch failed");
                        if tx
                            .send(Msg::Failing(index, format!("{} {version}: {e}", info.kind)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        // The watcher starts over (a 410 re-lists) when polled again.
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(RETRY_MAX);
                    }
                }
            }
            if !not_served {
                return;
            }
        }
        tracing::debug!(
            kind = info.kind,
            "not served by this API server (CRD not installed)"
        );
        if tx.send(Msg::Absent(index)).await.is_err() {
            return;
        }
        tokio::time::sleep(ABSENT_RECHECK).await;
    }
}

/// The objects the watchers have seen, per kind.
struct State {
    kinds: Vec<KindState>,
    infos: Vec<KindInfo>,
    bound: KindBound,
    metrics: Arc<metrics::SourceMetrics>,
    /// Per kind: starts its watch over (a fresh list).
    relists: Vec<Arc<tokio::sync::Notify>>,
}

type Key = (String, String);

/// One object as held: the version it came at, its document, and its size as JSON.
#[derive(Debug)]
struct Held {
    resource: Resource,
    value: serde_json::Value,
    bytes: usize,
}

/// A kind's objects, within its bound: the ones past it are named (with their size), not
/// held; past as many names again, not even named.
#[derive(Debug, Default)]
struct Objects {
    held: BTreeMap<Key, Held>,
    bytes: usize,
    over: BTreeMap<Key, usize>,
    over_bytes: usize,
    /// Objects past the bound that are not even named: only a fresh list can count them.
    uncounted: bool,
}

impl Objects {
    /// Holds `value` under `key`, or only names it when the kind's bound has no room; true
    /// when what the kind holds changed.
    fn insert(
        &mut self,
        key: Key,
        resource: Resource,
        value: serde_json::Value,
        bound: KindBound,
    ) -> bool {
        let bytes = serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len());
        let old = self.held.remove(&key);
        if let Some(o) = &old {
            self.bytes -= o.bytes;
        }
        let was_over = self.over.remove(&key);
        if let Some(b) = was_over {
            self.over_bytes -= b;
        }
        let fits = self.held.len() < bound.objects
            && self
                .bytes
                .checked_add(bytes)
                .is_some_and(|b| b <= bound.bytes);
        if !fits {
            if self.over.len() < bound.objects {
                self.over.insert(key, bytes);
                self.over_bytes = self.over_bytes.saturating_add(bytes);
            } else {
                self.uncounted = true;
            }
            return true;
        }
        let changed = was_over.is_some() || old.is_none_or(|o| o.value != value);
        self.bytes += bytes;
        self.held.insert(
            key,
            Held {
                resource,
                value,
                bytes,
            },
        );
        changed
    }

    fn remove(&mut self, key: &Key) -> bool {
        if let Some(o) = self.held.remove(key) {
            self.bytes -= o.bytes;
            return true;
        }
        if let Some(b) = self.over.remove(key) {
            self.over_bytes -= b;
            return true;
        }
        // Perhaps one that was not even named.
        self.uncounted
    }

    fn is_over(&self) -> bool {
        !self.over.is_empty() || self.uncounted
    }

    /// Whether every object named would now be held: a fresh list would serve the kind.
    fn room(&self, bound: KindBound) -> bool {
        !self.uncounted
            && self.held.len() + self.over.len() <= bound.objects
            && self.bytes.saturating_add(self.over_bytes) <= bound.bytes
    }

    fn same(&self, other: &Objects) -> bool {
        self.over == other.over
            && self.uncounted == other.uncounted
            && self.held.len() == other.held.len()
            && self
                .held
                .iter()
                .zip(&other.held)
                .all(|((ka, a), (kb, b))| ka == kb && a.value == b.value)
    }
}

#[derive(Default)]
struct KindState {
    objects: Objects,
    /// Objects of a re-list in progress (between Init and InitDone). While it runs the kind
    /// holds up to twice its bound.
    listing: Option<Objects>,
    /// A re-list was asked for (the kind is back within its bound) and has not ended.
    relisting: bool,
    synced: bool,
    failing: Option<String>,
}

impl State {
    fn new(
        kinds: &[KindInfo],
        bound: KindBound,
        metrics: Arc<metrics::SourceMetrics>,
        relists: Vec<Arc<tokio::sync::Notify>>,
    ) -> State {
        State {
            kinds: kinds.iter().map(|_| KindState::default()).collect(),
            infos: kinds.to_vec(),
            bound,
            metrics,
            relists,
        }
    }

    fn count(&self, i: usize) {
        let label = metrics::SourceMetrics::kind(self.infos[i].kind);
        let o = &self.kinds[i].objects;
        self.metrics
            .objects
            .get_or_create(&label)
            .set(o.held.len() as i64);
        self.metrics
            .objects_over_bound
            .get_or_create(&label)
            .set(o.over.len() as i64);
    }

    fn all_synced(&self) -> bool {
        self.kinds.iter().all(|k| k.synced)
    }

    fn not_synced(&self) -> Vec<String> {
        self.kinds
            .iter()
            .zip(&self.infos)
            .filter(|(k, _)| !k.synced)
            .map(|(k, i)| match &k.failing {
                Some(why) => why.clone(),
                None => format!("{} (no answer)", i.kind),
            })
            .collect()
    }

    /// Applies one message; true when the served objects changed.
    fn apply(&mut self, msg: Msg) -> bool {
        let i = match &msg {
            Msg::Event(i, ..) | Msg::Absent(i) | Msg::Failing(i, _) => *i,
        };
        let label = metrics::SourceMetrics::kind(self.infos[i].kind);
        match &msg {
            Msg::Failing(..) => {
                self.metrics.watch_errors.get_or_create(&label).inc();
            }
            Msg::Event(_, _, watcher::Event::Init) if self.kinds[i].synced => {
                self.metrics.relists.get_or_create(&label).inc();
            }
            Msg::Event(..) => {
                self.metrics.events.get_or_create(&label).inc();
            }
            Msg::Absent(_) => {}
        }
        let changed = self.apply_msg(msg);
        self.count(i);
        changed
    }

    fn apply_msg(&mut self, msg: Msg) -> bool {
        let bound = self.bound;
        match msg {
            Msg::Failing(i, why) => {
                self.kinds[i].failing = Some(why);
                false
            }
            Msg::Absent(i) => {
                let k = &mut self.kinds[i];
                let changed = !k.objects.held.is_empty() || k.objects.is_over() || !k.synced;
                k.objects = Objects::default();
                k.listing = None;
                k.relisting = false;
                k.synced = true;
                changed
            }
            Msg::Event(i, resource, ev) => {
                let k = &mut self.kinds[i];
                k.failing = None;
                match ev {
                    watcher::Event::Init => {
                        k.listing = Some(Objects::default());
                        false
                    }
                    watcher::Event::InitApply(o) => {
                        let (key, value) = keyed(&resource, o);
                        k.listing
                            .get_or_insert_default()
                            .insert(key, resource, value, bound);
                        false
                    }
                    watcher::Event::InitDone => {
                        let listed = k.listing.take().unwrap_or_default();
                        let changed = !k.synced || !k.objects.same(&listed);
                        k.objects = listed;
                        k.synced = true;
                        k.relisting = false;
                        changed
                    }
                    watcher::Event::Apply(o) => {
                        let (key, value) = keyed(&resource, o);
                        let changed = k.objects.insert(key, resource, value, bound);
                        self.relist_when_room(i, false);
                        changed
                    }
                    watcher::Event::Delete(o) => {
                        let (key, _) = keyed(&resource, o);
                        let changed = k.objects.remove(&key);
                        self.relist_when_room(i, changed);
                        changed
                    }
                }
            }
        }
    }

    /// Past its bound a kind's objects were named, not held: once they would all be held
    /// (or, when some were not even named, after a delete), one fresh list brings them.
    fn relist_when_room(&mut self, i: usize, deleted: bool) {
        let k = &mut self.kinds[i];
        let o = &k.objects;
        if o.is_over() && !k.relisting && (o.room(self.bound) || (o.uncounted && deleted)) {
            k.relisting = true;
            self.relists[i].notify_one();
        }
    }

    /// Every object as a raw document, in a stable order, built into a snapshot; a kind
    /// past its bound is an error.
    fn load(&self, opts: &crate::Options) -> Load {
        let mut raws = Vec::new();
        let mut observed = BTreeMap::new();
        let mut diagnostics = Vec::new();
        for (k, info) in self.kinds.iter().zip(&self.infos) {
            if k.objects.is_over() {
                let path = info
                    .versions
                    .first()
                    .map(|v| Resource::new(*info, v).collection_path(None));
                let more = if k.objects.uncounted { " or more" } else { "" };
                diagnostics.push(model::Diagnostic {
                    severity: model::Severity::Error,
                    file: Arc::new(PathBuf::from(path.unwrap_or_default())),
                    pos: model::yaml::Pos::default(),
                    object: None,
                    message: format!(
                        "{}{more} {} objects are past trellis's bound of {} objects or {} MiB per kind (KIND_OBJECTS_MAX, KIND_BYTES_MAX), so this snapshot is not served and the last good one keeps serving; remove objects of this kind",
                        k.objects.held.len() + k.objects.over.len(),
                        info.kind,
                        self.bound.objects,
                        self.bound.bytes >> 20,
                    ),
                });
            }
            for ((ns, name), held) in &k.objects.held {
                let Held {
                    resource, value, ..
                } = held;
                observed.insert(
                    ObjectKey::new(resource.info.group, resource.info.kind, ns, name),
                    Observed {
                        generation: value
                            .pointer("/metadata/generation")
                            .and_then(serde_json::Value::as_i64),
                        status: value.get("status").cloned().unwrap_or_default(),
                    },
                );
                let ns = (!ns.is_empty()).then_some(ns.as_str());
                raws.push(RawObject {
                    value: value.clone(),
                    source: Source {
                        file: Arc::new(PathBuf::from(resource.object_path(ns, name))),
                        ..Source::default()
                    },
                    default_namespace: Some(opts.default_namespace.clone())
                        .filter(|n| !n.is_empty()),
                });
            }
        }
        Load {
            snapshot: model::Snapshot::build(raws, diagnostics),
            files: Vec::new(),
            excluded: Vec::new(),
            observed,
            generation: None,
        }
    }
}

/// An object's key and its document as the snapshot reads it: apiVersion and kind set (list
/// items carry neither), the fields nobody reads dropped.
fn keyed(resource: &Resource, mut o: DynamicObject) -> ((String, String), serde_json::Value) {
    o.metadata.managed_fields = None;
    if let Some(a) = o.metadata.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
    let key = (
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    );
    let mut value = serde_json::to_value(&o).unwrap_or(serde_json::Value::Null);
    if let Some(m) = value.as_object_mut() {
        m.insert(
            "apiVersion".into(),
            serde_json::Value::String(resource.api.api_version.clone()),
        );
        m.insert(
            "kind".into(),
            serde_json::Value::String(resource.api.kind.clone()),
        );
    }
    (key, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_past_its_bound_names_what_it_does_not_hold_and_knows_when_there_is_room() {
        let info = KINDS[0];
        let r = || Resource::new(info, info.versions[0]);
        let key = |n: &str| (String::new(), n.to_string());
        let doc = |n: &str, pad: usize| serde_json::json!({ "metadata": { "name": n }, "pad": "x".repeat(pad) });
        // By count: two held, the third named.
        let bound = KindBound {
            objects: 2,
            bytes: 10_000,
        };
        let mut o = Objects::default();
        for n in ["a", "b", "c"] {
            assert!(o.insert(key(n), r(), doc(n, 10), bound));
        }
        assert_eq!((o.held.len(), o.over.len()), (2, 1));
        assert!(o.is_over() && !o.room(bound));
        assert!(o.remove(&key("a")));
        assert!(o.room(bound), "one gone: a fresh list would hold both");
        // By size: a large object is named; once a held one shrinks there is room.
        let bound = KindBound {
            objects: 10,
            bytes: 2_000,
        };
        let mut o = Objects::default();
        assert!(o.insert(key("a"), r(), doc("a", 1_000), bound));
        assert!(o.insert(key("b"), r(), doc("b", 1_500), bound));
        assert!(o.is_over() && !o.room(bound));
        assert!(o.insert(key("a"), r(), doc("a", 10), bound));
        assert!(o.room(bound), "a shrank: both fit");
        // Past as many names again: not even named, and only a list can say when.
        let bound = KindBound {
            objects: 1,
            bytes: 10_000,
        };
        let mut o = Objects::default();
        for n in ["a", "b", "c"] {
            o.insert(key(n), r(), doc(n, 1), bound);
        }
        assert!(o.uncounted && o.is_over() && !o.room(bound));
    }

    #[test]
    fn every_kind_has_the_plural_the_api_serves() {
        let plural = |kind: &str| {
            let info = KINDS
                .iter()
                .find(|k| k.kind == kind)
                .expect("a kind of the table");
            Resource::new(*info, info.versions[0]).api.plural
        };
        for (kind, want) in [
            ("Endpoints", "endpoints"),
            ("EndpointSlice", "endpointslices"),
            ("NetworkPolicy", "networkpolicies"),
            ("GatewayClass", "gatewayclasses"),
            ("HTTPRoute", "httproutes"),
            ("EnvoyProxy", "envoyproxies"),
            ("BackendTrafficPolicy", "backendtrafficpolicies"),
            ("CiliumLoadBalancerIPPool", "ciliumloadbalancerippools"),
            ("CiliumCIDRGroup", "ciliumcidrgroups"),
            ("DNSEndpoint", "dnsendpoints"),
            (
                "NetworkAttachmentDefinition",
                "network-attachment-definitions",
            ),
            ("ScaledObject", "scaledobjects"),
        ] {
            assert_eq!(plural(kind), want, "{kind}");
        }
    }

    #[test]
    fn paths_are_the_api_servers() {
        let info = *KINDS
            .iter()
            .find(|k| k.kind == "HTTPRoute")
            .expect("HTTPRoute");
        let r = Resource::new(info, "v1");
        assert_eq!(
            r.object_path(Some("network"), "echo"),
            "/apis/gateway.networking.k8s.io/v1/namespaces/network/httproutes/echo"
        );
        let info = *KINDS
            .iter()
            .find(|k| k.kind == "Namespace")
            .expect("Namespace");
        assert_eq!(
            Resource::new(info, "v1").collection_path(None),
            "/api/v1/namespaces"
        );
    }
}
