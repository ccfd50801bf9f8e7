//! Black-box tests of the `trellis` binary: exit codes, output formats, error messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn trellis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .output()
        .expect("trellis runs")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example() -> String {
    repo().join("examples/home-lab").display().to_string()
}

fn example_vars() -> String {
    repo()
        .join("examples/home-lab/vars.yaml")
        .display()
        .to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn example_is_clean_and_exits_0() {
    let out = trellis(&["check", "-f", &example(), "--vars", &example_vars()]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("Gateway                     network/envoy-external"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 objects with problems, 0 warnings, 0 errors"),
        "{stdout}"
    );
}

#[test]
fn example_without_vars_warns_and_flags_the_hostnames() {
    let out = trellis(&["check", "-f", &example()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("variable ${SECRET_DOMAIN} is not defined and is left as written (pass it with --vars FILE)"), "{stdout}");
}

#[test]
fn strict_vars_makes_undefined_variables_exit_2() {
    let out = trellis(&["check", "-f", &example(), "--strict-vars"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stdout).contains("error: Gateway envoy-external: variable ${SECRET_DOMAIN} is not defined (--strict-vars makes this an error)"), "{}", text(&out.stdout));
}

#[test]
fn json_output_is_one_document_in_kubernetes_status_shape() {
    let out = trellis(&[
        "check",
        "-f",
        &example(),
        "--vars",
        &example_vars(),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let objects = v["objects"].as_array().expect("objects");
    assert!(objects.len() >= 20);
    for o in objects {
        assert!(
            o["kind"].is_string() && o["metadata"]["name"].is_string(),
            "{o}"
        );
        assert!(o["metadata"].get("namespace").is_some(), "{o}");
        for c in o["conditions"].as_array().expect("conditions") {
            for f in ["type", "status", "reason", "message"] {
                assert!(c[f].is_string(), "condition field {f} in {c}");
            }
        }
    }
    let gw = objects
        .iter()
        .find(|o| o["kind"] == "Gateway" && o["metadata"]["name"] == "envoy-internal")
        .expect("gateway");
    let listeners = gw["status"]["listeners"]
        .as_array()
        .expect("listener status");
    let https = listeners
        .iter()
        .find(|l| l["name"] == "https")
        .expect("https listener");
    assert_eq!(https["attachedRoutes"], 2, "{https}");
    assert_eq!(v["summary"]["objectsWithProblems"], 0);
}

#[test]
fn yaml_output_parses() {
    let out = trellis(&[
        "check",
        "-f",
        &example(),
        "--vars",
        &example_vars(),
        "-o",
        "yaml",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let docs = model::yaml::parse_documents(&text(&out.stdout)).expect("valid YAML");
    assert_eq!(docs.len(), 1);
    assert!(docs[0].get("objects").is_some());
}

#[test]
fn unparsable_input_exits_2_with_file_line_column() {
    let t = tempfile::tempdir().expect("tmp");
    let f = t.path().join("broken.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: [web\n",
    )
    .expect("write");
    let out = trellis(&["check", "-f", &f.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    let want = format!("{}:5:1: error: ", f.display());
    assert!(stdout.contains(&want), "{stdout}");
}

#[test]
fn missing_path_and_bad_vars_file_are_clear() {
    let out = trellis(&["check", "-f", "/nonexistent/trellis"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).contains("/nonexistent/trellis:0:0: error: no such file or directory"),
        "{}",
        text(&out.stdout)
    );
    let out = trellis(&["check", "-f", &example(), "--vars", "/nonexistent/vars"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read vars file /nonexistent/vars"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn corpus_loads_and_flags_outside_references() {
    let corpus = repo().join("testdata/home-ops/kubernetes");
    let out = trellis(&["check", "-f", &corpus.display().to_string(), "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "outside references are problems"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["summary"]["errors"], 0);
    assert_eq!(v["skipped"]["helm.toolkit.fluxcd.io/HelmRelease"], 10);
}
