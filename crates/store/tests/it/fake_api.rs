//! A Kubernetes API server stand-in behind a `tower-test` mock service, as kube-rs recommends
//! for testing controllers (no API server can be installed on this machine). It checks every
//! request it gets: a request it does not expect is recorded and fails the test.
//!
//! It serves lists and watches of the collections a test registers (404 for every other
//! collection, as for a CRD that is not installed), answers each watch with the events queued
//! for its collection (a watch with none waits until some arrive), applies status patches
//! (server-side apply with trellis's field manager only), keeps Leases with resourceVersion
//! checks (409 on a stale write), and keeps the ConfigMaps of a namespace as the state
//! backend writes them (create, replace and delete with resourceVersion preconditions, list
//! and watch by label).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Mock, SendResponse};

/// The client side of the fake (a tower Service kube's Client is built on).
pub type ApiMock = Mock<Request<Body>, Response<Body>>;
/// The server side: what [`FakeApi::serve`] answers from.
pub type ApiHandle = mock::Handle<Request<Body>, Response<Body>>;

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct Collection {
    /// By `namespace/name` (or `name`).
    items: BTreeMap<String, Value>,
    events: VecDeque<Value>,
    parked: Vec<SendResponse<Response<Body>>>,
}

#[derive(Default)]
struct ApiState {
    collections: BTreeMap<String, Collection>,
    /// Collections answering 403 to every list (a missing RBAC rule).
    forbidden: Vec<String>,
    leases: BTreeMap<String, Value>,
    revision: u64,
    seen: Vec<Seen>,
    unexpected: Vec<String>,
}

#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<ApiState>>,
}

impl FakeApi {
    /// The fake and a client connector for `store::kubernetes::watch_with` (the client must
    /// be made on the source's runtime). `serve` must be spawned on a runtime that stays up.
    pub fn new() -> (FakeApi, ApiMock, ApiHandle) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (
            FakeApi {
                state: Arc::new(Mutex::new(ApiState::default())),
            },
            service,
            handle,
        )
    }

    /// A runtime of its own answering `handle` (it must outlive every client of the fake).
    pub fn start(&self, handle: ApiHandle) -> tokio::runtime::Runtime {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the fake's runtime");
        rt.spawn(self.clone().serve(handle));
        rt
    }

    pub async fn serve(self, mut handle: ApiHandle) {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let seen = Seen {
                method: parts.method.clone(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or("").to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                body,
            };
            self.answer(seen, send);
        }
    }

    /// (Used by the binary's tests, which include this file.)
    #[allow(dead_code)]
    /// Serves the fake over HTTP on loopback as well, for a process that finds it through a
    /// kubeconfig (the `trellis` binary). Each request goes through `mock`, so the same checks
    /// apply. Must run on the runtime that serves the fake.
    pub async fn listen_http(mock: ApiMock, ip: std::net::IpAddr) -> std::net::SocketAddr {
        use http_body_util::BodyExt as _;
        use tower::ServiceExt as _;
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mock = mock.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let mock = mock.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let bytes = body
                                    .collect()
                                    .await
                                    .map_err(|e| std::io::Error::other(e.to_string()))?
                                    .to_bytes();
                                let answer = mock
                                    .oneshot(Request::from_parts(parts, Body::from(bytes)))
                                    .await
                                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                                let (parts, body) = answer.into_parts();
                                let bytes = body
                                    .collect_bytes()
                                    .await
                                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                                Ok::<_, std::io::Error>(Response::from_parts(
                                    parts,
                                    http_body_util::Full::new(bytes),
                                ))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    #[allow(dead_code)]
    /// A kubeconfig naming the fake's HTTP address (no credentials: the fake asks for none).
    pub fn kubeconfig(addr: std::net::SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: \"http://{addr}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: default}}}}]\n"
        )
    }

    fn st(&self) -> std::sync::MutexGuard<'_, ApiState> {
        self.state.lock().expect("the fake's state")
    }

    /// Registers a collection (`/apis/g/v/plural` or `/api/v1/plural`) with its objects.
    pub fn serve_collection(&self, path: &str, items: Vec<Value>) {
        let mut st = self.st();
        let mut c = Collection::default();
        for mut item in items {
            st.revision += 1;
            item["metadata"]["resourceVersion"] = json!(st.revision.to_string());
            item["metadata"]["generation"] = json!(1);
            c.items.insert(item_key(&item), item);
        }
        st.collections.insert(path.to_string(), c);
    }

    pub fn forbid(&self, path: &str) {
        self.st().forbidden.push(path.to_string());
    }

    /// Adds or changes an object and sends the watch event.
    pub fn apply(&self, path: &str, mut item: Value) {
        let mut st = self.st();
        st.revision += 1;
        let rv = st.revision;
        let c = st
            .collections
            .get_mut(path)
            .expect("a registered collection");
        let key = item_key(&item);
        let kind = if c.items.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        item["metadata"]["resourceVersion"] = json!(rv.to_string());
        let generation = c
            .items
            .get(&key)
            .and_then(|o| o.pointer("/metadata/generation").and_then(Value::as_i64))
            .unwrap_or(0)
            + 1;
        item["metadata"]["generation"] = json!(generation);
        c.items.insert(key, item.clone());
        c.events.push_back(json!({ "type": kind, "object": item }));
        flush(c);
    }

    pub fn delete(&self, path: &str, key: &str) {
        let mut st = self.st();
        st.revision += 1;
        let rv = st.revision;
        let c = st
            .collections
            .get_mut(path)
            .expect("a registered collection");
        let mut item = c.items.remove(key).expect("an object to delete");
        item["metadata"]["resourceVersion"] = json!(rv.to_string());
        c.events
            .push_back(json!({ "type": "DELETED", "object": item }));
        flush(c);
    }

    /// Changes the collection without telling the watch (as during a long disconnect).
    pub fn change_silently(&self, path: &str, remove: &str, add: Value) {
        let mut st = self.st();
        st.revision += 1;
        let rv = st.revision;
        let c = st
            .collections
            .get_mut(path)
            .expect("a registered collection");
        c.items.remove(remove);
        let mut add = add;
        add["metadata"]["resourceVersion"] = json!(rv.to_string());
        c.items.insert(item_key(&add), add);
    }

    /// Ends the collection's watch with 410 Gone, as an API server does once the watch's
    /// revision is compacted.
    pub fn expire(&self, path: &str) {
        let mut st = self.st();
        let c = st
            .collections
            .get_mut(path)
            .expect("a registered collection");
        c.events.push_back(json!({
            "type": "ERROR",
            "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": "too old resource version",
            }
        }));
        flush(c);
    }

    pub fn object(&self, path: &str, key: &str) -> Option<Value> {
        self.st().collections.get(path)?.items.get(key).cloned()
    }

    /// The Lease `namespace/name`.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.st()
            .leases
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.st().seen.clone()
    }

    pub fn unexpected(&self) -> Vec<String> {
        self.st().unexpected.clone()
    }

    fn answer(&self, seen: Seen, send: SendResponse<Response<Body>>) {
        let mut st = self.st();
        st.seen.push(seen.clone());
        let path = seen.path.as_str();
        if path.starts_with("/apis/coordination.k8s.io/v1/namespaces/") {
            let r = lease(&mut st, &seen);
            send.send_response(r);
            return;
        }
        if path.starts_with("/api/v1/namespaces/") && path.split('/').nth(5) == Some("configmaps") {
            configmap(&mut st, &seen, send);
            return;
        }
        if seen.method == Method::PATCH && path.ends_with("/scale") {
            let r = scale_patch(&mut st, &seen);
            send.send_response(r);
            return;
        }
        if seen.method == Method::PATCH
            && !path.ends_with("/status")
            && seen.content_type.as_deref() == Some("application/merge-patch+json")
        {
            let r = merge_patch(&mut st, &seen);
            send.send_response(r);
            return;
        }
        if seen.method == Method::PATCH && path.ends_with("/status") {
            let r = status_patch(&mut st, &seen);
            send.send_response(r);
            return;
        }
        if seen.method != Method::GET {
            st.unexpected.push(format!("{} {path}", seen.method));
            send.send_response(status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "unexpected",
            ));
            return;
        }
        if st.forbidden.iter().any(|p| p == path) {
            send.send_response(status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "secrets is forbidden: User cannot list resource",
            ));
            return;
        }
        let revision = st.revision;
        let Some(c) = st.collections.get_mut(path) else {
            // Every kind trellis reads is asked for; anything else is unexpected.
            if !(path.starts_with("/api/v1/") || path.starts_with("/apis/")) {
                st.unexpected.push(format!("GET {path}"));
            }
            send.send_response(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            ));
            return;
        };
        if seen.query.split('&').any(|q| q == "watch=true") {
            c.parked.push(send);
            flush(c);
        } else {
            let items: Vec<Value> = c.items.values().cloned().collect();
            send.send_response(ok(json!({
                "kind": "List", "apiVersion": "v1",
                "metadata": { "resourceVersion": revision.to_string() },
                "items": items,
            })));
        }
    }
}

fn item_key(item: &Value) -> String {
    let name = item["metadata"]["name"].as_str().unwrap_or_default();
    match item["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Answers parked watches with the queued events (one batch, then the stream ends and the
/// watcher starts the next watch from the last revision it saw).
fn flush(c: &mut Collection) {
    if c.events.is_empty() {
        return;
    }
    let Some(send) = c.parked.pop() else {
        return;
    };
    let mut body = Vec::new();
    for e in c.events.drain(..) {
        body.extend_from_slice(e.to_string().as_bytes());
        body.push(b'\n');
    }
    send.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(body))
            .expect("a response"),
    );
}

fn ok(v: Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(v.to_string().into_bytes()))
        .expect("a response")
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let v = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": reason, "message": message, "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(v.to_string().into_bytes()))
        .expect("a response")
}

/// Server-side apply of a status: only with trellis's field manager and force, only the
/// apply content type, only to an object that exists; the status replaces the stored one
/// and the change goes out on the watch.
fn status_patch(st: &mut ApiState, seen: &Seen) -> Response<Body> {
    let query: Vec<&str> = seen.query.split('&').collect();
    let apply_type = seen.content_type.as_deref() == Some("application/apply-patch+yaml");
    if !query.contains(&"fieldManager=trellis") || !query.contains(&"force=true") || !apply_type {
        st.unexpected.push(format!(
            "PATCH {} ?{} ({:?})",
            seen.path, seen.query, seen.content_type
        ));
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "not a server-side apply by trellis",
        );
    }
    let (collection, key) = split_object_path(seen.path.trim_end_matches("/status"));
    let status = seen.body["status"].clone();
    modify(st, &collection, &key, |item| item["status"] = status).map_or_else(not_found, ok)
}

/// Changes one stored object at a new revision and sends the change on its watch; the
/// object as changed, or None when there is no such object (a 404: [`not_found`]).
fn modify(
    st: &mut ApiState,
    collection: &str,
    key: &str,
    change: impl FnOnce(&mut Value),
) -> Option<Value> {
    st.revision += 1;
    let rv = st.revision;
    let c = st.collections.get_mut(collection)?;
    let item = c.items.get_mut(key)?;
    change(item);
    item["metadata"]["resourceVersion"] = json!(rv.to_string());
    let item = item.clone();
    c.events
        .push_back(json!({ "type": "MODIFIED", "object": item.clone() }));
    flush(c);
    Some(item)
}

fn not_found() -> Response<Body> {
    status(StatusCode::NOT_FOUND, "NotFound", "no such object")
}

/// A JSON merge patch (RFC 7386) of an object (the agent writing a pod's annotation); the
/// change goes out on the watch.
fn merge_patch(st: &mut ApiState, seen: &Seen) -> Response<Body> {
    fn merge(target: &mut Value, patch: &Value) {
        match (target.as_object_mut(), patch.as_object()) {
            (Some(t), Some(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            _ => *target = patch.clone(),
        }
    }
    let (collection, key) = split_object_path(&seen.path);
    modify(st, &collection, &key, |item| merge(item, &seen.body)).map_or_else(not_found, ok)
}

/// A merge patch of `spec.replicas` on a workload's scale subresource: the workload's
/// `spec.replicas` changes (and goes out on the watch); the answer is an autoscaling/v1 Scale.
fn scale_patch(st: &mut ApiState, seen: &Seen) -> Response<Body> {
    let merge = seen.content_type.as_deref() == Some("application/merge-patch+json");
    let Some(replicas) = seen.body.pointer("/spec/replicas").and_then(Value::as_i64) else {
        st.unexpected
            .push(format!("PATCH {} without spec.replicas", seen.path));
        return status(StatusCode::BAD_REQUEST, "BadRequest", "no spec.replicas");
    };
    if !merge {
        st.unexpected
            .push(format!("PATCH {} as {:?}", seen.path, seen.content_type));
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "merge patch only",
        );
    }
    let (collection, key) = split_object_path(seen.path.trim_end_matches("/scale"));
    let Some(item) = modify(st, &collection, &key, |item| {
        item["spec"]["replicas"] = json!(replicas)
    }) else {
        return not_found();
    };
    ok(json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": { "name": item["metadata"]["name"], "namespace": item["metadata"]["namespace"] },
        "spec": { "replicas": replicas }, "status": { "replicas": replicas },
    }))
}

/// `/apis/g/v/namespaces/ns/plural/name` to the cluster-wide collection and `ns/name`;
/// `/apis/g/v/plural/name` to the collection and `name`.
fn split_object_path(path: &str) -> (String, String) {
    let parts: Vec<&str> = path.split('/').collect();
    if let Some(i) = parts.iter().position(|p| *p == "namespaces")
        && parts.len() == i + 4
    {
        let mut collection = parts[..i].join("/");
        collection.push('/');
        collection.push_str(parts[i + 2]);
        return (collection, format!("{}/{}", parts[i + 1], parts[i + 3]));
    }
    let (name, rest) = parts.split_last().expect("a path");
    (rest.join("/"), name.to_string())
}

/// Leases with optimistic concurrency: create is 409 when one exists, replace and a delete
/// with a precondition are 409 when the resourceVersion sent is not the stored one.
fn lease(st: &mut ApiState, seen: &Seen) -> Response<Body> {
    // Keyed `namespace/name`: `/apis/coordination.k8s.io/v1/namespaces/NS/leases[/NAME]`.
    let parts: Vec<&str> = seen.path.split('/').collect();
    let namespace = parts.get(5).copied().unwrap_or_default();
    let name = format!("{namespace}/{}", parts.get(7).copied().unwrap_or_default());
    match seen.method {
        Method::GET => match st.leases.get(&name) {
            Some(l) => ok(l.clone()),
            None => status(StatusCode::NOT_FOUND, "NotFound", "leases not found"),
        },
        Method::POST => {
            let name = format!(
                "{namespace}/{}",
                seen.body["metadata"]["name"].as_str().unwrap_or_default()
            );
            if st.leases.contains_key(&name) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    "leases already exists",
                );
            }
            store_lease(st, name, seen)
        }
        // Only as the caller last read it, when it says so (a resourceVersion precondition).
        Method::DELETE => match st.leases.get(&name) {
            None => status(StatusCode::NOT_FOUND, "NotFound", "leases not found"),
            Some(l)
                if seen
                    .body
                    .pointer("/preconditions/resourceVersion")
                    .is_some_and(|rv| *rv != l["metadata"]["resourceVersion"]) =>
            {
                status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                )
            }
            Some(_) => ok(st.leases.remove(&name).expect("checked above")),
        },
        Method::PUT => {
            let Some(stored) = st.leases.get(&name) else {
                return status(StatusCode::NOT_FOUND, "NotFound", "leases not found");
            };
            if stored["metadata"]["resourceVersion"] != seen.body["metadata"]["resourceVersion"] {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                );
            }
            store_lease(st, name, seen)
        }
        _ => {
            st.unexpected.push(format!("{} {}", seen.method, seen.path));
            status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "unexpected",
            )
        }
    }
}

/// Stores the Lease sent, at a new revision, and answers with it.
fn store_lease(st: &mut ApiState, name: String, seen: &Seen) -> Response<Body> {
    st.revision += 1;
    let mut l = seen.body.clone();
    l["metadata"]["resourceVersion"] = json!(st.revision.to_string());
    st.leases.insert(name, l.clone());
    ok(l)
}

/// The collection the namespaced ConfigMap paths share (so a watch sees every change).
const CONFIGMAPS: &str = "/api/v1/configmaps";

/// A query parameter, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?;
    let mut out = Vec::new();
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `item` has every `key=value` of a label selector.
fn selected(item: &Value, selector: Option<&str>) -> bool {
    selector.is_none_or(|sel| {
        sel.split(',').filter(|t| !t.is_empty()).all(|term| {
            let (k, v) = term.split_once('=').unwrap_or((term, ""));
            item["metadata"]["labels"][k].as_str() == Some(v)
        })
    })
}

/// ConfigMaps of a namespace, as the state backend uses them: POST (409 when the name is
/// taken), GET, PUT only with the stored resourceVersion (409 otherwise), DELETE only when a
/// resourceVersion precondition matches (409 otherwise), list and watch by label selector.
/// Every change goes out on the watch.
fn configmap(st: &mut ApiState, seen: &Seen, send: SendResponse<Response<Body>>) {
    // /api/v1/namespaces/NS/configmaps[/NAME]
    let parts: Vec<&str> = seen.path.split('/').collect();
    let namespace = parts[4].to_string();
    let name = parts.get(6).map(|n| (*n).to_string());
    let revision = st.revision;
    let c = st.collections.entry(CONFIGMAPS.to_string()).or_default();
    let conflict = || {
        status(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified",
        )
    };
    let missing = || status(StatusCode::NOT_FOUND, "NotFound", "configmaps not found");
    let answer = match (&seen.method, name) {
        (&Method::GET, None) => {
            let selector = query_param(&seen.query, "labelSelector");
            if query_param(&seen.query, "watch").as_deref() == Some("true") {
                c.parked.push(send);
                flush(c);
                return;
            }
            let items: Vec<Value> = c
                .items
                .values()
                .filter(|i| i["metadata"]["namespace"] == namespace.as_str())
                .filter(|i| selected(i, selector.as_deref()))
                .cloned()
                .collect();
            ok(json!({
                "kind": "ConfigMapList", "apiVersion": "v1",
                "metadata": { "resourceVersion": revision.to_string() },
                "items": items,
            }))
        }
        (&Method::GET, Some(n)) => match c.items.get(&format!("{namespace}/{n}")) {
            Some(i) => ok(i.clone()),
            None => missing(),
        },
        (&Method::POST, None) => {
            let mut item = seen.body.clone();
            item["metadata"]["namespace"] = json!(namespace);
            let key = item_key(&item);
            if c.items.contains_key(&key) {
                status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    "configmaps already exists",
                )
            } else {
                st.revision += 1;
                item["metadata"]["resourceVersion"] = json!(st.revision.to_string());
                let c = st.collections.entry(CONFIGMAPS.to_string()).or_default();
                c.items.insert(key, item.clone());
                c.events
                    .push_back(json!({ "type": "ADDED", "object": item.clone() }));
                flush(c);
                ok(item)
            }
        }
        (&Method::PUT, Some(n)) => {
            let key = format!("{namespace}/{n}");
            match c.items.get(&key) {
                None => missing(),
                Some(stored)
                    if stored["metadata"]["resourceVersion"]
                        != seen.body["metadata"]["resourceVersion"] =>
                {
                    conflict()
                }
                Some(_) => {
                    st.revision += 1;
                    let mut item = seen.body.clone();
                    item["metadata"]["namespace"] = json!(namespace);
                    item["metadata"]["resourceVersion"] = json!(st.revision.to_string());
                    let c = st.collections.entry(CONFIGMAPS.to_string()).or_default();
                    c.items.insert(key, item.clone());
                    c.events
                        .push_back(json!({ "type": "MODIFIED", "object": item.clone() }));
                    flush(c);
                    ok(item)
                }
            }
        }
        (&Method::DELETE, Some(n)) => {
            let key = format!("{namespace}/{n}");
            let precondition = seen.body.pointer("/preconditions/resourceVersion").cloned();
            match c.items.get(&key) {
                None => missing(),
                Some(stored)
                    if precondition
                        .as_ref()
                        .is_some_and(|p| *p != stored["metadata"]["resourceVersion"]) =>
                {
                    conflict()
                }
                Some(_) => {
                    st.revision += 1;
                    let rv = st.revision;
                    let c = st.collections.entry(CONFIGMAPS.to_string()).or_default();
                    let mut item = c.items.remove(&key).expect("checked above");
                    item["metadata"]["resourceVersion"] = json!(rv.to_string());
                    c.events
                        .push_back(json!({ "type": "DELETED", "object": item.clone() }));
                    flush(c);
                    ok(item)
                }
            }
        }
        _ => {
            st.unexpected.push(format!("{} {}", seen.method, seen.path));
            status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "unexpected",
            )
        }
    };
    send.send_response(answer);
}
