//! Data-driven cases. Directives (YAML comments at the top of a case file):
//!
//! - `# vars: A=1 B=2` and `# strict-vars`: load options.
//! - `# expect-diagnostic: <warning|error> <line>:<col>: <message>`: the exact set of
//!   diagnostics (object prefix included, as `trellis check` prints it).
//! - `# expect-problem: <Kind> <ns/name>: <path>: <message> @ <line>:<col>`: the exact set of
//!   problems of all objects.
//! - `# expect-condition: <Kind> <ns/name> <Type> <Status> <Reason>`: an object-level condition.
//! - `# expect-listener: <Kind> <ns/name> <listener> <Type> <Status> <Reason>: <message>`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use model::Status;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases")
}

#[derive(Default)]
struct Case {
    vars: Vec<(String, String)>,
    strict: bool,
    diagnostics: BTreeSet<String>,
    problems: BTreeSet<String>,
    conditions: Vec<String>,
    listeners: Vec<String>,
}

fn parse_case(text: &str) -> Case {
    let mut c = Case::default();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let line = line.trim_start_matches('#').trim();
        if let Some(v) = line.strip_prefix("vars:") {
            for kv in v.split_whitespace() {
                let (k, v) = kv.split_once('=').expect("vars are K=V");
                c.vars.push((k.into(), v.into()));
            }
        } else if line == "strict-vars" {
            c.strict = true;
        } else if let Some(v) = line.strip_prefix("expect-diagnostic:") {
            c.diagnostics.insert(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("expect-problem:") {
            c.problems.insert(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("expect-condition:") {
            c.conditions.push(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("expect-listener:") {
            c.listeners.push(v.trim().to_string());
        }
    }
    c
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::True => "True",
        Status::False => "False",
        Status::Unknown => "Unknown",
    }
}

/// Runs one case; returns what did not match.
fn run_case(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("case readable");
    let case = parse_case(&text);
    let opts = store::Options {
        vars: case.vars.iter().cloned().collect(),
        strict_vars: case.strict,
        default_namespace: "default".into(),
        ..Default::default()
    };
    let load = store::load(&[path.to_path_buf()], &opts);
    let s = &load.snapshot;
    let mut failures = Vec::new();

    let diagnostics: BTreeSet<String> = s
        .diagnostics
        .iter()
        .map(|d| {
            let sev = match d.severity {
                model::Severity::Warning => "warning",
                model::Severity::Error => "error",
            };
            let obj = d
                .object
                .as_ref()
                .map(|o| format!("{o}: "))
                .unwrap_or_default();
            format!("{sev} {}: {obj}{}", d.pos, d.message)
        })
        .collect();
    if diagnostics != case.diagnostics {
        failures.push(format!(
            "diagnostics\n  want: {:#?}\n  got:  {:#?}",
            case.diagnostics, diagnostics
        ));
    }

    let mut problems = BTreeSet::new();
    for (key, entry) in &s.entries {
        if let Some(st) = s.status.get(key) {
            for p in &st.problems {
                let pos = entry.source.index.find(&p.path).unwrap_or(entry.source.pos);
                problems.insert(format!("{key}: {}: {} @ {pos}", p.path, p.message));
            }
        }
    }
    if problems != case.problems {
        failures.push(format!(
            "problems\n  want: {:#?}\n  got:  {:#?}",
            case.problems, problems
        ));
    }

    for want in &case.conditions {
        let found = s.status.iter().any(|(k, st)| {
            st.conditions
                .iter()
                .any(|c| format!("{k} {} {} {}", c.type_, status_word(c.status), c.reason) == *want)
        });
        if !found {
            let have: Vec<String> = s
                .status
                .iter()
                .flat_map(|(k, st)| {
                    st.conditions.iter().map(move |c| {
                        format!("{k} {} {} {}", c.type_, status_word(c.status), c.reason)
                    })
                })
                .collect();
            failures.push(format!("condition {want:?} not found; have {have:#?}"));
        }
    }
    for want in &case.listeners {
        let found = s.status.iter().any(|(k, st)| {
            st.listeners.iter().any(|l| {
                l.conditions.iter().any(|c| {
                    format!(
                        "{k} {} {} {} {}: {}",
                        l.name,
                        c.type_,
                        status_word(c.status),
                        c.reason,
                        c.message
                    )
                    .trim_end()
                        == want.trim_end()
                })
            })
        });
        if !found {
            failures.push(format!("listener condition {want:?} not found"));
        }
    }
    failures
}

#[test]
fn cases() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("cases dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 10,
        "expected the bad-input cases, found {}",
        paths.len()
    );
    let mut report = String::new();
    for p in &paths {
        for f in run_case(p) {
            report.push_str(&format!(
                "\n{}: {f}",
                p.file_name().expect("name").to_string_lossy()
            ));
        }
    }
    assert!(report.is_empty(), "case failures:{report}");
}
