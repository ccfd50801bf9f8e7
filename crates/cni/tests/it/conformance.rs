//! Spec-conformance cases from `tests/conformance/spec.json`, each naming the section of the
//! CNI spec it checks and quoting the requirement. Every case runs the real binary in a node
//! namespace; all failures are reported together.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::support::{Netns, Node};

#[derive(Debug, Deserialize)]
struct Case {
    section: String,
    requirement: String,
    command: String,
    /// Merged over the node's default config.
    #[serde(default)]
    conf: serde_json::Map<String, Value>,
    /// Sent as is instead of the config.
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    unset: Vec<String>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
struct Expect {
    #[serde(default)]
    ok: bool,
    code: Option<u64>,
    #[serde(default)]
    details_contain: Vec<String>,
    cni_version: Option<String>,
    #[serde(default)]
    empty_stdout: bool,
    stdout: Option<Value>,
    #[serde(default)]
    no_allocation: bool,
    #[serde(default)]
    result_keeps_prev: bool,
    /// JSON pointer -> expected value in stdout; `"$NETNS"` stands for the pod's netns path.
    #[serde(default)]
    pointers: BTreeMap<String, Value>,
}

fn run_case(i: usize, case: &Case) -> Result<(), String> {
    let node = Node::new();
    let pod = Netns::new();
    let mut conf = node.conf();
    for (k, v) in &case.conf {
        conf[k] = v.clone();
    }
    let container_id = format!("conformance-{i}");
    let mut env: BTreeMap<String, String> = [
        ("CNI_COMMAND", case.command.clone()),
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", pod.path().display().to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", "/usr/lib/cni".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(case.env.clone());
    for k in &case.unset {
        env.remove(k);
    }
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let stdin = case.stdin.clone().unwrap_or_else(|| conf.to_string());
    let reply = node.run_env(&env, stdin.as_bytes());
    let want = &case.expect;
    let fail = |why: String| {
        Err(format!(
            "[{}] {}\n  requirement: {}\n  stdout: {}\n  stderr: {}",
            case.section,
            why,
            case.requirement,
            reply.stdout.trim(),
            reply.stderr.trim()
        ))
    };
    if want.ok != reply.success {
        return fail(format!(
            "expected success={}, got {}",
            want.ok, reply.success
        ));
    }
    if want.empty_stdout && !reply.stdout.trim().is_empty() {
        return fail("expected no output".into());
    }
    let json: Option<Value> = serde_json::from_str(&reply.stdout).ok();
    if !reply.stdout.trim().is_empty() && json.is_none() {
        return fail("stdout is not JSON".into());
    }
    let json = json.unwrap_or(Value::Null);
    if let Some(code) = want.code {
        if json["code"].as_u64() != Some(code) {
            return fail(format!("expected error code {code}"));
        }
        if !json["msg"].is_string() {
            return fail("error JSON has no msg".into());
        }
    }
    let details = json["details"].as_str().unwrap_or_default();
    for needle in &want.details_contain {
        if !details.contains(needle.as_str()) {
            return fail(format!("details do not mention {needle:?}"));
        }
    }
    if let Some(v) = &want.cni_version
        && json["cniVersion"].as_str() != Some(v)
    {
        return fail(format!("expected cniVersion {v}"));
    }
    if let Some(stdout) = &want.stdout
        && &json != stdout
    {
        return fail(format!("expected stdout {stdout}"));
    }
    if want.no_allocation {
        let held = std::fs::read_dir(node.ipam_dir())
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name() != "lock")
                    .count()
            })
            .unwrap_or(0);
        if held != 0 {
            return fail(format!("{held} IPAM files left behind"));
        }
    }
    for (pointer, expected) in &want.pointers {
        let expected = match expected.as_str() {
            Some("$NETNS") => Value::from(pod.path().display().to_string()),
            _ => expected.clone(),
        };
        if json.pointer(pointer) != Some(&expected) {
            return fail(format!("expected {pointer} = {expected}"));
        }
    }
    if want.result_keeps_prev {
        let ifaces = json["interfaces"].as_array().cloned().unwrap_or_default();
        let ok = ifaces.first().is_some_and(|i| i["name"] == "earlier0")
            && ifaces.len() == 3
            && json["ips"][0]["interface"] == 2
            && json["dns"]["nameservers"][0] == "10.96.0.10";
        if !ok {
            return fail("result does not extend prevResult".into());
        }
    }
    Ok(())
}

#[test]
fn spec_conformance_cases() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance/spec.json");
    let text = std::fs::read_to_string(path).expect("read conformance cases");
    let cases: Vec<Case> = serde_json::from_str(&text).expect("parse conformance cases");
    assert!(!cases.is_empty());
    let failures: Vec<String> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, c)| run_case(i, c).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
