//! Kustomize and Flux semantics of the directory source, on small trees in temp dirs.

use std::path::Path;

use model::ObjectKey;
use model::snapshot::get;

pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

fn opts() -> store::Options {
    store::Options {
        default_namespace: "fallback".into(),
        ..Default::default()
    }
}

const SVC: &str =
    "apiVersion: v1\nkind: Service\nmetadata: {name: NAME}\nspec:\n  ports: [{port: 80}]\n";

fn svc(name: &str) -> String {
    SVC.replace("NAME", name)
}

#[test]
fn kustomization_lists_what_is_served_and_sets_the_namespace() {
    let t = tempfile::tempdir().expect("tmp");
    let r = t.path();
    write(
        r,
        "app/kustomization.yaml",
        "resources:\n  - ./a.yaml\n  - ../shared\n  - ./missing.yaml\nnamespace: shop\n",
    );
    write(r, "app/a.yaml", &svc("a"));
    write(r, "app/b.yaml", &svc("b"));
    write(r, "shared/c.yaml", &svc("c"));
    let load = store::load(&[r.join("app")], &opts());
    let s = &load.snapshot;
    assert!(get(&s.services, "shop", "a").is_some());
    assert!(
        get(&s.services, "shop", "c").is_some(),
        "listed directory outside the tree is read"
    );
    assert!(
        get(&s.services, "shop", "b").is_none(),
        "unlisted file is not served"
    );
    assert_eq!(load.excluded.len(), 1);
    assert!(load.excluded[0].file.ends_with("app/b.yaml"));
    assert_eq!(
        load.excluded[0].reason,
        "not listed in kustomization.yaml resources"
    );
    let warn: Vec<String> = s.diagnostics.iter().map(ToString::to_string).collect();
    assert!(warn.iter().any(|w| w.ends_with("app/kustomization.yaml:4:5: warning: resources entry ./missing.yaml not found (skipped)")), "{warn:#?}");
}

#[test]
fn namespace_precedence() {
    let t = tempfile::tempdir().expect("tmp");
    let r = t.path();
    // Flux Kustomization pointing at apps/team/app with targetNamespace.
    write(
        r,
        "clusters/ks.yaml",
        "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: team}\nspec:\n  path: ./apps/team/app\n  targetNamespace: team-ns\n",
    );
    write(r, "apps/team/app/a.yaml", &svc("a"));
    // Namespace folder layout.
    write(
        r,
        "apps/media/namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: media}\n",
    );
    write(r, "apps/media/plex/app/svc.yaml", &svc("plex"));
    // Own namespace wins.
    write(
        r,
        "apps/media/own/svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: own, namespace: elsewhere}\n",
    );
    // Nothing: the default.
    write(r, "loose/svc.yaml", &svc("loose"));
    let s = store::load(&[r.to_path_buf()], &opts()).snapshot;
    assert!(get(&s.services, "team-ns", "a").is_some());
    assert!(get(&s.services, "media", "plex").is_some());
    assert!(get(&s.services, "elsewhere", "own").is_some());
    assert!(get(&s.services, "fallback", "loose").is_some());
    assert!(
        get(&s.namespaces, "", "media").is_some(),
        "cluster-scoped kinds get no namespace"
    );
}

#[test]
fn generators_make_config_maps_and_secrets() {
    let t = tempfile::tempdir().expect("tmp");
    let r = t.path();
    write(
        r,
        "kustomization.yaml",
        "namespace: net\nconfigMapGenerator:\n  - name: lua\n    files: [resources/filter.lua, renamed=resources/filter.lua]\n    literals: [mode=strict]\n  - name: env\n    envs: [app.env]\nsecretGenerator:\n  - name: creds\n    literals: [user=admin]\n    type: Opaque\ngeneratorOptions:\n  disableNameSuffixHash: true\n  labels: {team: net}\n",
    );
    write(
        r,
        "resources/filter.lua",
        "function envoy_on_request(h) end\n",
    );
    write(r, "app.env", "A=1\nB=two\n");
    let s = store::load(&[r.to_path_buf()], &opts()).snapshot;
    let lua = get(&s.config_maps, "net", "lua").expect("generated");
    let data = lua.spec.data.clone().expect("data");
    assert_eq!(data["filter.lua"], "function envoy_on_request(h) end\n");
    assert_eq!(data["renamed"], data["filter.lua"]);
    assert_eq!(data["mode"], "strict");
    assert_eq!(lua.meta.labels.get("team").map(String::as_str), Some("net"));
    let env = get(&s.config_maps, "net", "env")
        .expect("generated")
        .spec
        .data
        .clone()
        .expect("data");
    assert_eq!((env["A"].as_str(), env["B"].as_str()), ("1", "two"));
    let creds = get(&s.secrets, "net", "creds").expect("generated");
    let user = &creds.spec.data.as_ref().expect("data")["user"];
    assert_eq!(user.0, b"admin");
}

#[test]
fn anchors_merge_keys_and_typed_substitution() {
    let t = tempfile::tempdir().expect("tmp");
    let r = t.path();
    write(
        r,
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: &n web, labels: {app: *n}}\nspec:\n  selector: {app: web}\n  ports:\n    - &http\n      name: http\n      port: ${PORT:=8080}\n    - <<: *http\n      name: alt\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: raw\n  annotations:\n    kustomize.toolkit.fluxcd.io/substitute: disabled\ndata:\n  script: echo ${HOME}\n",
    );
    let s = store::load(&[r.to_path_buf()], &opts()).snapshot;
    assert!(!s.has_errors(), "{:#?}", s.diagnostics);
    let svc = get(&s.services, "fallback", "web").expect("loaded");
    let ports = svc
        .spec
        .spec
        .as_ref()
        .and_then(|x| x.ports.clone())
        .expect("merged ports");
    assert_eq!(
        ports[0].port, 8080,
        "a substituted plain scalar is a number"
    );
    assert_eq!(
        (ports[1].name.as_deref(), ports[1].port),
        (Some("alt"), 8080),
        "merge key"
    );
    assert_eq!(svc.meta.labels.get("app").map(String::as_str), Some("web"));
    let raw = get(&s.config_maps, "fallback", "raw").expect("loaded");
    assert_eq!(
        raw.spec.data.as_ref().expect("data")["script"],
        "echo ${HOME}"
    );
    assert!(s.diagnostics.is_empty(), "{:#?}", s.diagnostics);
}

#[test]
fn json_report_fields_point_at_lines() {
    let t = tempfile::tempdir().expect("tmp");
    let r = t.path();
    write(
        r,
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n    - matches:\n        - path: {type: RegularExpression, value: \"/(unclosed\"}\n",
    );
    let s = store::load(&[r.to_path_buf()], &opts()).snapshot;
    let key = ObjectKey::new("gateway.networking.k8s.io", "HTTPRoute", "fallback", "web");
    let st = &s.status[&key];
    let p = st
        .problems
        .iter()
        .find(|p| p.path == "spec.rules[0].matches[0].path.value")
        .expect("regex problem");
    assert!(
        p.message
            .starts_with("path regex \"/(unclosed\" does not compile"),
        "{}",
        p.message
    );
    let loc = s.entries[&key].source.locate(&p.path);
    assert!(loc.ends_with("route.yaml:8:43"), "{loc}");
}
