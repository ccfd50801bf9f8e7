//! The Kubernetes source, status writer and leader election against [`FakeApi`] (a
//! `tower-test` mock API server that checks each request; no API server runs here).

use std::time::Duration;

use kube::Client;
use model::{ObjectKey, Status};
use serde_json::{Value, json};
use store::kubernetes::leader::{Elector, Role};
use store::kubernetes::{self, status};
use store::watch::{Update, Watch};

use crate::fake_api::FakeApi;

const CLASSES: &str = "/apis/gateway.networking.k8s.io/v1/gatewayclasses";
const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";
const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const SERVICES: &str = "/api/v1/services";
const TLS_ROUTES_OLD: &str = "/apis/gateway.networking.k8s.io/v1alpha2/tlsroutes";
/// Bounds of waits for events (never a timing assertion: a pass is usually milliseconds).
const WAIT: Duration = Duration::from_secs(30);

fn route(name: &str, host: &str, service: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": name, "namespace": "default",
                      "managedFields": [{ "manager": "kubectl", "operation": "Apply" }] },
        "spec": {
            "parentRefs": [{ "name": "external" }],
            "hostnames": [host],
            "rules": [{ "backendRefs": [{ "name": service, "port": 80 }] }],
        },
    })
}

fn service(name: &str) -> Value {
    json!({
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "ports": [{ "name": "http", "port": 80 }], "selector": { "app": name } },
    })
}

/// A fake with a class, a gateway, one route and its Service; every other kind is absent.
fn cluster() -> (FakeApi, Served) {
    let (fake, mock, handle) = FakeApi::new();
    fake.serve_collection(
        CLASSES,
        vec![json!({ "metadata": { "name": "trellis" },
                     "spec": { "controllerName": "trellis.dev/gateway-controller" } })],
    );
    fake.serve_collection(
        GATEWAYS,
        vec![json!({ "metadata": { "name": "external", "namespace": "default" },
                     "spec": { "gatewayClassName": "trellis",
                               "listeners": [{ "name": "http", "port": 80, "protocol": "HTTP" }] } })],
    );
    fake.serve_collection(ROUTES, vec![route("web", "web.example.com", "web")]);
    fake.serve_collection(SERVICES, vec![service("web")]);
    let served = Served::start(&fake, mock, handle);
    (fake, served)
}

use crate::fake_api::{ApiHandle as Handle, ApiMock as Mock};

/// The runtime serving the fake, and clients of it.
struct Served {
    rt: tokio::runtime::Runtime,
    mock: Mock,
}

impl Served {
    fn start(fake: &FakeApi, mock: Mock, handle: Handle) -> Served {
        Served {
            rt: fake.start(handle),
            mock,
        }
    }

    /// The source, with its client made on the source's own runtime.
    fn watch(&self, first_sync: Duration) -> Result<Watch, kubernetes::Error> {
        self.watch_with(first_sync, &store::Options::default())
    }

    fn watch_with(
        &self,
        first_sync: Duration,
        opts: &store::Options,
    ) -> Result<Watch, kubernetes::Error> {
        let mock = self.mock.clone();
        kubernetes::watch_with(
            move || async move { Ok(Client::new(mock, "default")) },
            opts,
            first_sync,
        )
    }

    fn client(&self) -> Client {
        let _g = self.rt.enter();
        Client::new(self.mock.clone(), "default")
    }
}

fn next_applied(watch: &Watch) -> std::sync::Arc<store::Load> {
    match watch.updates.recv_timeout(WAIT).expect("an update") {
        Update::Applied(l) => l,
        Update::Rejected { errors, .. } => panic!("rejected: {errors:?}"),
    }
}

fn key(kind: &str, name: &str) -> ObjectKey {
    ObjectKey::new("gateway.networking.k8s.io", kind, "default", name)
}

fn resolved(load: &store::Load, route: &str) -> Status {
    let st = &load.snapshot.status[&key("HTTPRoute", route)];
    st.parents[0]
        .conditions
        .iter()
        .find(|c| c.type_ == "ResolvedRefs")
        .map(|c| c.status)
        .expect("ResolvedRefs")
}

#[test]
fn the_source_lists_every_kind_and_follows_events() {
    let (fake, served) = cluster();
    let watch = served.watch(WAIT).expect("first sync");
    let first = watch.current();
    let s = &first.snapshot;
    assert!(!s.has_errors(), "{:?}", s.diagnostics);
    assert_eq!(s.http_routes.len(), 1);
    assert_eq!(resolved(&first, "web"), Status::True);
    // Diagnostics point at the object's API path.
    let entry = &s.entries[&key("HTTPRoute", "web")];
    assert_eq!(
        entry.source.file.display().to_string(),
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/web"
    );
    // Every kind of the table was asked for (listed), and nothing else was.
    let listed: Vec<String> = fake.seen().iter().map(|r| r.path.clone()).collect();
    for k in model::snapshot::KINDS {
        let r = kubernetes::Resource::new(*k, k.versions[0]);
        assert!(
            listed.contains(&r.collection_path(None)),
            "{} not listed",
            k.kind
        );
    }

    // A change: the route's hostname.
    fake.apply(ROUTES, route("web", "www.example.com", "web"));
    let l = next_applied(&watch);
    let hosts = &l.snapshot.http_routes[&("default".into(), "web".into())]
        .spec
        .hostnames;
    assert_eq!(hosts.as_deref(), Some(&["www.example.com".to_string()][..]));

    // The Service goes: the route's backend no longer resolves.
    fake.delete(SERVICES, "default/web");
    let l = next_applied(&watch);
    assert_eq!(resolved(&l, "web"), Status::False);
    assert!(fake.unexpected().is_empty(), "{:?}", fake.unexpected());
}

#[test]
fn an_expired_watch_lists_again_and_forgets_what_is_gone() {
    let (fake, served) = cluster();
    let watch = served.watch(WAIT).expect("first sync");
    let lists_before = fake
        .seen()
        .iter()
        .filter(|r| r.path == ROUTES && !r.query.contains("watch=true"))
        .count();
    // While the watch is away the route is replaced; the API server then says 410 Gone.
    fake.change_silently(
        ROUTES,
        "default/web",
        route("shop", "shop.example.com", "web"),
    );
    fake.expire(ROUTES);
    let l = next_applied(&watch);
    let routes: Vec<_> = l.snapshot.http_routes.keys().cloned().collect();
    assert_eq!(routes, vec![("default".to_string(), "shop".to_string())]);
    let lists_after = fake
        .seen()
        .iter()
        .filter(|r| r.path == ROUTES && !r.query.contains("watch=true"))
        .count();
    assert_eq!(lists_after, lists_before + 1, "one re-list after 410");
    assert!(fake.unexpected().is_empty(), "{:?}", fake.unexpected());
}

#[test]
fn a_kind_past_its_bound_is_not_served_until_it_is_back_within_it() {
    let (fake, served) = cluster();
    fake.apply(ROUTES, route("shop", "shop.example.com", "web"));
    let opts = store::Options {
        kind_bound: kubernetes::KindBound {
            objects: 2,
            bytes: kubernetes::KIND_BYTES_MAX,
        },
        ..Default::default()
    };
    let watch = served.watch_with(WAIT, &opts).expect("first sync");
    assert_eq!(watch.current().snapshot.http_routes.len(), 2);
    let lists = || {
        fake.seen()
            .iter()
            .filter(|r| r.path == ROUTES && !r.query.contains("watch=true"))
            .count()
    };
    let lists_before = lists();

    // A third route: the kind is past its bound, the snapshot is refused and names it, and
    // the two routes keep serving.
    fake.apply(ROUTES, route("blog", "blog.example.com", "web"));
    match watch.updates.recv_timeout(WAIT).expect("an update") {
        Update::Rejected { errors, .. } => assert!(
            errors.iter().any(|e| e
                .message
                .contains("3 HTTPRoute objects are past trellis's bound of 2")),
            "{errors:?}"
        ),
        Update::Applied(l) => panic!("served past the bound: {:?}", l.snapshot.http_routes.keys()),
    }
    assert_eq!(watch.current().snapshot.http_routes.len(), 2);

    // One goes: the kind is listed again and both that remain are served, the one that was
    // only named among them.
    fake.delete(ROUTES, "default/web");
    let applied = (0..10)
        .find_map(
            |_| match watch.updates.recv_timeout(WAIT).expect("an update") {
                Update::Applied(l) => Some(l),
                Update::Rejected { .. } => None,
            },
        )
        .expect("served again");
    let routes: Vec<String> = applied
        .snapshot
        .http_routes
        .keys()
        .map(|(_, n)| n.clone())
        .collect();
    assert_eq!(routes, ["blog", "shop"]);
    assert_eq!(lists(), lists_before + 1, "one list to take the kind back");
    assert!(fake.unexpected().is_empty(), "{:?}", fake.unexpected());
}

#[test]
fn a_kind_is_read_at_the_newest_version_the_server_serves() {
    let (fake, served) = cluster();
    // Served at v1 too: the newest version is the one read.
    fake.serve_collection(
        "/apis/gateway.networking.k8s.io/v1/tlsroutes",
        vec![
            json!({ "metadata": { "name": "tls-v1", "namespace": "default" },
                     "spec": { "parentRefs": [{ "name": "external" }],
                               "rules": [{ "backendRefs": [{ "name": "web", "port": 80 }] }] } }),
        ],
    );
    fake.serve_collection(
        TLS_ROUTES_OLD,
        vec![
            json!({ "metadata": { "name": "tls", "namespace": "default" },
                     "spec": { "parentRefs": [{ "name": "external" }],
                               "rules": [{ "backendRefs": [{ "name": "web", "port": 80 }] }] } }),
        ],
    );
    let watch = served.watch(WAIT).expect("first sync");
    let l = watch.current();
    assert_eq!(l.snapshot.tls_routes.len(), 1);
    assert_eq!(
        l.snapshot.entries[&key("TLSRoute", "tls-v1")].api_version,
        "gateway.networking.k8s.io/v1"
    );
}

#[test]
fn a_kind_served_only_at_an_older_version_is_read_there() {
    let (fake, served) = cluster();
    fake.serve_collection(
        TLS_ROUTES_OLD,
        vec![
            json!({ "metadata": { "name": "tls", "namespace": "default" },
                     "spec": { "parentRefs": [{ "name": "external" }],
                               "rules": [{ "backendRefs": [{ "name": "web", "port": 80 }] }] } }),
        ],
    );
    let watch = served.watch(WAIT).expect("first sync");
    let l = watch.current();
    assert_eq!(
        l.snapshot.entries[&key("TLSRoute", "tls")].api_version,
        "gateway.networking.k8s.io/v1alpha2"
    );
}

/// Route parents are one atomic list: another controller's entry is kept as it is, and a
/// route that no longer names a trellis Gateway gets its entry taken back.
#[test]
fn another_controllers_route_status_is_kept() {
    let (fake, served) = cluster();
    let mut other = route("mixed", "mixed.example.com", "web");
    other["status"] = json!({ "parents": [{
        "parentRef": { "group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "default", "name": "elsewhere" },
        "controllerName": "example.com/other", "conditions": [] }] });
    let mut gone = route("gone", "gone.example.com", "web");
    gone["spec"]["parentRefs"] = json!([{ "name": "elsewhere" }]);
    gone["status"] = json!({ "parents": [{
        "parentRef": { "group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "default", "name": "external" },
        "controllerName": "trellis.dev/gateway-controller", "conditions": [] }] });
    fake.serve_collection(
        ROUTES,
        vec![route("web", "web.example.com", "web"), other, gone],
    );
    let watch = served.watch(WAIT).expect("first sync");
    let patches = status::patches(
        &watch.current(),
        &Default::default(),
        "2026-12-07T00:00:00Z",
    );
    let parents = |name: &str| {
        patches
            .iter()
            .find(|p| p.key.kind == "HTTPRoute" && p.key.name == name)
            .map(|p| p.body["status"]["parents"].clone())
    };
    let mixed = parents("mixed").expect("a patch for mixed");
    assert_eq!(mixed[0]["controllerName"], "example.com/other", "{mixed}");
    assert_eq!(
        mixed[1]["controllerName"], "trellis.dev/gateway-controller",
        "{mixed}"
    );
    assert_eq!(
        parents("gone"),
        Some(json!([])),
        "trellis's stale entry is taken back"
    );
}

#[test]
fn a_kind_that_cannot_be_listed_is_named_and_nothing_is_served() {
    let (fake, served) = cluster();
    fake.forbid("/api/v1/secrets");
    let err = served
        .watch(Duration::from_secs(3))
        .expect_err("no first snapshot without Secrets");
    let msg = err.to_string();
    assert!(
        msg.contains("Secret v1") && msg.contains("forbidden"),
        "{msg}"
    );
}

#[test]
fn status_is_applied_once_and_not_again_for_the_same_snapshot() {
    let (fake, served) = cluster();
    let watch = served.watch(WAIT).expect("first sync");
    let first = watch.current();
    let patches = status::patches(&first, &Default::default(), "2026-12-07T00:00:00Z");
    let mut kinds: Vec<&str> = patches.iter().map(|p| p.key.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["Gateway", "GatewayClass", "HTTPRoute"]);
    let client = served.client();
    let written = served
        .rt
        .block_on(status::apply(&client, &patches))
        .expect("applied");
    assert_eq!(written, 3);
    // What the server got: server-side apply to the status subresource, trellis's manager.
    let route_patch = fake
        .seen()
        .into_iter()
        .find(|r| r.path.ends_with("/httproutes/web/status"))
        .expect("route status written");
    assert_eq!(route_patch.method, http::Method::PATCH);
    assert_eq!(
        route_patch.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    let parent = &route_patch.body["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "trellis.dev/gateway-controller");
    assert_eq!(parent["parentRef"]["name"], "external");
    let accepted = parent["conditions"]
        .as_array()
        .expect("test setup")
        .iter()
        .find(|c| c["type"] == "Accepted")
        .expect("test setup");
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["observedGeneration"], 1);
    assert_eq!(accepted["lastTransitionTime"], "2026-12-07T00:00:00Z");
    let gw = fake
        .object(GATEWAYS, "default/external")
        .expect("test setup");
    assert_eq!(gw["status"]["listeners"][0]["attachedRoutes"], 1);

    // Our own writes come back as watch events; the same snapshot asks for nothing more,
    // even at a later time.
    let mut seen = 0;
    let mut after = watch.current();
    while seen < 3 {
        after = next_applied(&watch);
        seen = after
            .observed
            .values()
            .filter(|o| !o.status.is_null())
            .count();
    }
    assert!(status::patches(&after, &Default::default(), "2026-12-08T00:00:00Z").is_empty());
    assert!(fake.unexpected().is_empty(), "{:?}", fake.unexpected());
}

#[test]
fn one_candidate_holds_the_lease_and_another_takes_it_only_once_it_expired() {
    let (fake, mock, handle) = FakeApi::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("test setup");
    rt.block_on(async {
        tokio::spawn(fake.clone().serve(handle));
        let client = Client::new(mock, "default");
        let api = |c: &Client| kube::Api::namespaced(c.clone(), "kube-system");
        let a = Elector::new(
            api(&client),
            "trellis-operator",
            "node-a",
            Duration::from_secs(15),
        );
        let b = Elector::new(
            api(&client),
            "trellis-operator",
            "node-b",
            Duration::from_secs(15),
        );
        assert_eq!(
            a.round().await.expect("test setup"),
            Role::Leader,
            "a creates the Lease"
        );
        let held = fake
            .lease("kube-system", "trellis-operator")
            .expect("test setup");
        assert_eq!(held["spec"]["holderIdentity"], "node-a");
        assert_eq!(held["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(
            b.round().await.expect("test setup"),
            Role::Follower {
                holder: Some("node-a".into())
            }
        );
        assert_eq!(
            a.round().await.expect("test setup"),
            Role::Leader,
            "a renews"
        );
        let renewed = fake
            .lease("kube-system", "trellis-operator")
            .expect("test setup");
        assert_ne!(
            held["metadata"]["resourceVersion"],
            renewed["metadata"]["resourceVersion"]
        );
        // b sees a new record (the renewal): its clock starts again.
        assert!(matches!(
            b.round().await.expect("test setup"),
            Role::Follower { .. }
        ));
        tokio::time::advance(Duration::from_secs(14)).await;
        assert!(
            matches!(b.round().await.expect("test setup"), Role::Follower { .. }),
            "not yet expired"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            b.round().await.expect("test setup"),
            Role::Leader,
            "b takes the expired Lease"
        );
        let taken = fake
            .lease("kube-system", "trellis-operator")
            .expect("test setup");
        assert_eq!(taken["spec"]["holderIdentity"], "node-b");
        assert_eq!(taken["spec"]["leaseTransitions"], 1);
        assert_eq!(
            a.round().await.expect("test setup"),
            Role::Follower {
                holder: Some("node-b".into())
            },
            "a has lost it"
        );
        // Releasing hands it over without a wait.
        b.release().await.expect("test setup");
        assert_eq!(a.round().await.expect("test setup"), Role::Leader);
    });
    assert!(fake.unexpected().is_empty(), "{:?}", fake.unexpected());
}

#[test]
fn cilium_policies_get_ciliums_valid_condition() {
    let (fake, served) = cluster();
    fake.serve_collection(
        "/apis/cilium.io/v2/ciliumnetworkpolicies",
        vec![
            json!({ "metadata": { "name": "ok", "namespace": "default" },
                    "spec": { "endpointSelector": { "matchLabels": { "app": "web" } },
                              "ingress": [{ "fromEndpoints": [{ "matchLabels": { "app": "client" } }] }] } }),
            // An L7 rule trellis does not enforce: refused, so not Valid.
            json!({ "metadata": { "name": "l7", "namespace": "default" },
                    "spec": { "endpointSelector": {},
                              "ingress": [{ "toPorts": [{ "ports": [{ "port": "80", "protocol": "TCP" }],
                                                          "rules": { "http": [{ "method": "GET" }] } }] }] } }),
        ],
    );
    let watch = served.watch(WAIT).expect("first sync");
    let patches = status::patches(
        &watch.current(),
        &Default::default(),
        "2026-12-07T00:00:00Z",
    );
    let valid = |name: &str| {
        let p = patches
            .iter()
            .find(|p| p.key.kind == "CiliumNetworkPolicy" && p.key.name == name)
            .unwrap_or_else(|| panic!("a patch for {name}"));
        p.body["status"]["conditions"][0].clone()
    };
    assert_eq!(valid("ok")["type"], "Valid");
    assert_eq!(valid("ok")["status"], "True");
    assert_eq!(valid("l7")["status"], "False");
    assert!(
        valid("l7")["message"]
            .as_str()
            .unwrap_or_default()
            .contains("L7 rules"),
        "{}",
        valid("l7")
    );
}
