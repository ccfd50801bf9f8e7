//! `trellis check`: load manifests, print every object with its conditions, exit 0 (clean),
//! 1 (an object is not Accepted, has unresolved references or conflicts) or 2 (input cannot be
//! read).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::ExitCode;

use model::snapshot::Severity;
use model::{ObjectKey, ObjectStatus, Snapshot};
use serde::Serialize;

use crate::SourceArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
    /// Where the CNI plugins NetworkAttachmentDefinitions name are installed (colon-separated,
    /// searched in order, as CNI_PATH): each must be there and speak the config's cniVersion.
    #[arg(long = "cni-path", default_value = CNI_PATH_DEFAULT)]
    pub cni_path: String,
    /// The network interfaces the nodes have (comma-separated, e.g. eth0,eth3): a
    /// NetworkAttachmentDefinition whose plugin's `master` (any plugin's, as macvlan's and
    /// ipvlan's) or host-device's `device` is none of them is refused. Not given: not checked.
    #[arg(long = "node-interfaces", value_delimiter = ',')]
    pub node_interfaces: Vec<String>,
}

/// Where container runtimes look for CNI plugins: the upstream directory, then Debian's.
pub const CNI_PATH_DEFAULT: &str = "/opt/cni/bin:/usr/lib/cni";
/// How long a plugin may take to answer VERSION.
const CNI_VERSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let mut load = args.source.load()?;
    crate::gateway::add_compile_conditions(&mut load.snapshot);
    add_cni_plugin_conditions(&mut load.snapshot, &args.cni_path);
    if !args.node_interfaces.is_empty() {
        add_master_conditions(&mut load.snapshot, &args.node_interfaces);
    }
    add_scaler_conditions(&mut load.snapshot);
    add_health_conditions(&mut load.snapshot);
    let policies = workload_policies(&load.snapshot);
    let report = Report::new(&load, &policies);
    let out = match args.output {
        Output::Table => table(&load, &report, &policies),
        Output::Json => serde_json::to_string_pretty(&report)? + "\n",
        Output::Yaml => serde_saphyr::to_string(&report)?,
    };
    print!("{out}");
    let s = &load.snapshot;
    Ok(if s.has_errors() {
        ExitCode::from(2)
    } else if s.has_problems() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

static EMPTY: std::sync::LazyLock<ObjectStatus> = std::sync::LazyLock::new(ObjectStatus::default);

/// The machine-readable report: one document, every object in Kubernetes status shape.
#[derive(Debug, Serialize)]
struct Report<'a> {
    objects: Vec<ObjectReport<'a>>,
    skipped: &'a BTreeMap<String, usize>,
    excluded: &'a [store::Excluded],
    diagnostics: &'a [model::Diagnostic],
    summary: Summary,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectReport<'a> {
    api_version: &'a str,
    kind: &'a str,
    metadata: MetaOut<'a>,
    source: SourceOut,
    conditions: Vec<model::Condition>,
    status: &'a ObjectStatus,
    problems: Vec<ProblemOut>,
    /// Pods and Deployments: the network policies that select their pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    network_policies: Option<&'a BTreeSet<String>>,
}

#[derive(Debug, Serialize)]
struct MetaOut<'a> {
    name: &'a str,
    namespace: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct SourceOut {
    file: String,
    line: u32,
    column: u32,
}

#[derive(Debug, Serialize)]
struct ProblemOut {
    path: String,
    message: String,
    location: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    loaded: usize,
    kinds: BTreeMap<String, usize>,
    skipped: usize,
    excluded_files: usize,
    objects_with_problems: usize,
    warnings: usize,
    errors: usize,
}

impl<'a> Report<'a> {
    fn new(
        load: &'a store::Load,
        policies: &'a BTreeMap<ObjectKey, BTreeSet<String>>,
    ) -> Report<'a> {
        let s = &load.snapshot;
        let objects: Vec<ObjectReport<'a>> = s
            .entries
            .iter()
            .map(|(key, entry)| {
                // Validation gives every loaded object a status.
                let status = s.status.get(key).unwrap_or(&EMPTY);
                ObjectReport {
                    api_version: &entry.api_version,
                    kind: &key.kind,
                    metadata: MetaOut {
                        name: &key.name,
                        namespace: (!key.namespace.is_empty()).then_some(key.namespace.as_str()),
                    },
                    source: SourceOut {
                        file: entry.source.file.display().to_string(),
                        line: entry.source.pos.line,
                        column: entry.source.pos.col,
                    },
                    conditions: summary_conditions(status),
                    status,
                    problems: status
                        .problems
                        .iter()
                        .map(|p| ProblemOut {
                            path: p.path.clone(),
                            message: p.message.clone(),
                            location: entry.source.locate(&p.path),
                        })
                        .collect(),
                    network_policies: policies.get(key),
                }
            })
            .collect();
        let mut kinds = BTreeMap::new();
        for k in s.entries.keys() {
            *kinds.entry(k.kind.clone()).or_default() += 1;
        }
        let summary = Summary {
            loaded: s.entries.len(),
            kinds,
            skipped: s.skipped.values().sum(),
            excluded_files: load.excluded.len(),
            objects_with_problems: s.status.values().filter(|st| st.has_problem()).count(),
            warnings: s
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Warning)
                .count(),
            errors: s
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count(),
        };
        Report {
            objects,
            skipped: &s.skipped,
            excluded: &load.excluded,
            diagnostics: &s.diagnostics,
            summary,
        }
    }
}

/// An object's own conditions plus, for routes, the first failing per-parent condition of each
/// type (so a flat list tells the whole story).
fn summary_conditions(status: &ObjectStatus) -> Vec<model::Condition> {
    let mut out = status.conditions.clone();
    for l in &status.listeners {
        for c in &l.conditions {
            if c.is_problem() {
                let mut c = c.clone();
                if !c.message.starts_with("listener") {
                    c.message = format!("listener {}: {}", l.name, c.message);
                }
                if !out.iter().any(|o| o.type_ == c.type_ && o.is_problem()) {
                    out.push(c);
                }
            }
        }
    }
    out
}

fn cond_cell(status: &ObjectStatus) -> String {
    let mut cells = Vec::new();
    for c in summary_conditions(status) {
        if c.is_problem() {
            cells.push(format!("{}={}({})", c.type_, c.status, c.reason));
        } else if cells.iter().all(|x: &String| !x.starts_with(&c.type_)) {
            cells.push(c.type_.clone());
        }
    }
    cells.join(" ")
}

fn message_cell(status: &ObjectStatus) -> String {
    let conds = summary_conditions(status);
    let problem = conds.iter().find(|c| c.is_problem());
    match problem {
        Some(c) => c.message.clone(),
        None => conds
            .iter()
            .find(|c| !c.message.is_empty())
            .map(|c| c.message.clone())
            .unwrap_or_default(),
    }
}

fn table(
    load: &store::Load,
    report: &Report<'_>,
    policies: &BTreeMap<ObjectKey, BTreeSet<String>>,
) -> String {
    let s: &Snapshot = &load.snapshot;
    let mut rows: Vec<[String; 4]> = vec![[
        "KIND".into(),
        "NAMESPACE/NAME".into(),
        "CONDITIONS".into(),
        "MESSAGE".into(),
    ]];
    for key in s.entries.keys() {
        let st = s.status.get(key).cloned().unwrap_or_default();
        rows.push([
            key.kind.clone(),
            key.ns_name(),
            cond_cell(&st),
            message_cell(&st),
        ]);
    }
    let mut widths = [0usize; 3];
    for r in &rows {
        for i in 0..3 {
            widths[i] = widths[i].max(r[i].chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let _ = writeln!(
            out,
            "{:w0$}  {:w1$}  {:w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    let problems: Vec<(&ObjectKey, String)> = report
        .objects
        .iter()
        .zip(s.entries.keys())
        .flat_map(|(o, k)| {
            o.problems.iter().map(move |p| {
                (
                    k,
                    format!(
                        "{}: {k}: {}{}",
                        p.location,
                        if p.path.is_empty() {
                            String::new()
                        } else {
                            format!("{}: ", p.path)
                        },
                        p.message
                    ),
                )
            })
        })
        .collect();
    if !problems.is_empty() {
        out.push_str("\nproblems:\n");
        for (_, line) in &problems {
            let _ = writeln!(out, "  {line}");
        }
    }
    if policies.values().any(|p| !p.is_empty()) {
        out.push_str("\nnetwork policy (the policies selecting each workload's pods):\n");
        for (k, p) in policies.iter().filter(|(_, p)| !p.is_empty()) {
            let names: Vec<&str> = p.iter().map(String::as_str).collect();
            let _ = writeln!(out, "  {k}: {}", names.join(", "));
        }
    }
    let (errors, warnings): (Vec<_>, Vec<_>) = s
        .diagnostics
        .iter()
        .partition(|d| d.severity == Severity::Error);
    if !errors.is_empty() {
        out.push_str("\nerrors:\n");
        for d in errors {
            let _ = writeln!(out, "  {d}");
        }
    }
    if !warnings.is_empty() {
        out.push_str("\nwarnings:\n");
        for d in warnings {
            let _ = writeln!(out, "  {d}");
        }
    }
    if !load.excluded.is_empty() {
        out.push_str("\nexcluded (read, not served):\n");
        for e in &load.excluded {
            let _ = writeln!(
                out,
                "  {}: {} ({} document(s))",
                e.file.display(),
                e.reason,
                e.objects
            );
        }
    }
    let sm = &report.summary;
    let skipped = s
        .skipped
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "\nsummary: {} objects loaded, {} skipped{}, {} files excluded, {} objects with problems, {} warnings, {} errors",
        sm.loaded,
        sm.skipped,
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({skipped})")
        },
        sm.excluded_files,
        sm.objects_with_problems,
        sm.warnings,
        sm.errors
    );
    out
}

/// For every Pod and Deployment (its pod template), the network policies selecting it.
fn workload_policies(s: &Snapshot) -> BTreeMap<ObjectKey, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    if s.network_policies.is_empty()
        && s.cilium_network_policies.is_empty()
        && s.cilium_clusterwide_network_policies.is_empty()
    {
        return out;
    }
    let selectors = fabric::policy::Selectors::new(s);
    for p in s.pods.values() {
        let labels = p.spec.metadata.labels.clone().unwrap_or_default();
        let sa = p
            .spec
            .spec
            .as_ref()
            .and_then(|x| x.service_account_name.as_deref());
        out.insert(
            ObjectKey::new("", "Pod", p.namespace(), p.name()),
            selectors.selecting(p.namespace(), &labels, sa),
        );
    }
    for d in s.deployments.values() {
        let template = d.spec.spec.as_ref().map(|x| &x.template);
        let labels = template
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let sa = template
            .and_then(|t| t.spec.as_ref())
            .and_then(|x| x.service_account_name.as_deref());
        out.insert(
            ObjectKey::new("apps", "Deployment", d.namespace(), d.name()),
            selectors.selecting(d.namespace(), &labels, sa),
        );
    }
    out
}

/// Every plugin a NetworkAttachmentDefinition names must be installed in `cni_path` and list
/// the config's `cniVersion` among the versions it answers VERSION with; otherwise the NAD is
/// not Accepted (a pod using it would fail at ADD), with the plugin's field path.
pub fn add_cni_plugin_conditions(s: &mut Snapshot, cni_path: &str) {
    let dirs: Vec<&std::path::Path> = cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(std::path::Path::new)
        .collect();
    if !s.network_attachments.is_empty() && !dirs.iter().any(|d| d.is_dir()) {
        // Not a machine pods run on: nothing to say about what is installed where they do.
        eprintln!(
            "note: no CNI plugin directory here ({cni_path}): the plugins the \
             NetworkAttachmentDefinitions name were not checked (--cni-path)"
        );
        return;
    }
    let mut versions: BTreeMap<(String, String), Result<Vec<String>, String>> = BTreeMap::new();
    let mut found: Vec<(ObjectKey, String, String)> = Vec::new();
    for nad in s.network_attachments.values() {
        let key = ObjectKey::new(
            "k8s.cni.cncf.io",
            "NetworkAttachmentDefinition",
            nad.namespace(),
            nad.name(),
        );
        let Ok(config) = serde_json::from_str::<serde_json::Value>(&nad.spec.config) else {
            continue; // validation already said why
        };
        let version = config["cniVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for (at, p) in nad_plugins(&config) {
            let Some(ty) = p["type"].as_str().filter(|t| !t.contains('/')) else {
                continue;
            };
            let path = format!("{at}.type");
            let answer = versions
                .entry((ty.to_string(), version.clone()))
                .or_insert_with(|| plugin_versions(&dirs, ty, &version));
            match answer {
                Err(e) => found.push((key.clone(), path, e.clone())),
                Ok(v) if !version.is_empty() && !v.contains(&version) => found.push((
                    key.clone(),
                    path,
                    format!(
                        "plugin {ty} does not speak cniVersion {version} (it speaks {})",
                        v.join(", ")
                    ),
                )),
                Ok(_) => {}
            }
        }
    }
    for (key, path, msg) in found {
        invalid(s, key, path, msg);
    }
}

/// Every interface a NetworkAttachmentDefinition's plugins attach to (any plugin's `master`,
/// as macvlan's and ipvlan's; host-device's `device`) must be one the nodes have; otherwise
/// the NAD is not Accepted (a pod using it would fail at ADD), at the field.
pub fn add_master_conditions(s: &mut Snapshot, interfaces: &[String]) {
    let mut found = Vec::new();
    for nad in s.network_attachments.values() {
        let Ok(config) = serde_json::from_str::<serde_json::Value>(&nad.spec.config) else {
            continue; // validation already said why
        };
        for (at, p) in nad_plugins(&config) {
            for field in ["master", "device"] {
                let Some(iface) = p[field].as_str() else {
                    continue;
                };
                if field == "device" && p["type"] != "host-device" {
                    continue;
                }
                if interfaces.iter().any(|i| i == iface) {
                    continue;
                }
                let path = format!("{at}.{field}");
                let key = ObjectKey::new(
                    "k8s.cni.cncf.io",
                    "NetworkAttachmentDefinition",
                    nad.namespace(),
                    nad.name(),
                );
                found.push((
                    key,
                    path,
                    format!(
                        "no node has interface {iface} (the nodes have {})",
                        interfaces.join(", ")
                    ),
                ));
            }
        }
    }
    for (key, path, msg) in found {
        invalid(s, key, path, msg);
    }
}

/// A NAD config's plugins with the field path of each: `spec.config.plugins[i]` in a
/// conflist, `spec.config` for a single plugin.
fn nad_plugins(config: &serde_json::Value) -> Vec<(String, &serde_json::Value)> {
    match config.get("plugins").and_then(|p| p.as_array()) {
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("spec.config.plugins[{i}]"), p))
            .collect(),
        None => vec![("spec.config".to_string(), config)],
    }
}

/// A value found invalid after load: the problem at its path (once) and `Accepted=False`.
fn invalid(s: &mut Snapshot, key: ObjectKey, path: String, msg: String) {
    invalid_as(s, key, model::object::cond::ACCEPTED, path, msg);
}

/// The problem at its path (once) and the condition `type_` False, reason Invalid.
fn invalid_as(s: &mut Snapshot, key: ObjectKey, type_: &str, path: String, msg: String) {
    let st = s.status.entry(key).or_default();
    if !st.problems.iter().any(|p| p.path == path) {
        st.problem(path.clone(), msg.clone());
    }
    st.set(model::Condition::new(
        type_,
        model::Status::False,
        model::object::cond::reason::INVALID,
        format!("{path}: {msg}"),
    ));
}

/// The versions plugin `ty` (the first found in `dirs`) answers CNI VERSION with.
fn plugin_versions(
    dirs: &[&std::path::Path],
    ty: &str,
    version: &str,
) -> Result<Vec<String>, String> {
    let searched = || {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let bin = cni::multus::find_plugin(dirs, ty).ok_or_else(|| {
        format!(
            "plugin {ty} is not installed (looked in {}; Debian's reference plugins: \
                 apt-get install containernetworking-plugins)",
            searched()
        )
    })?;
    let input = serde_json::json!({ "cniVersion": version }).to_string();
    let out = cni::multus::run_plugin(
        &bin,
        &[("CNI_COMMAND", "VERSION".as_ref())],
        input.as_bytes(),
        CNI_VERSION_TIMEOUT,
    )?;
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{} answered VERSION with no JSON: {e}", bin.display()))?;
    Ok(reply["supportedVersions"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// A health endpoint (a gatus-sidecar annotation, a Gatus ConfigMap entry) that cannot be
/// made is a `HealthEndpointsAccepted=False` condition on the object that declares it, with
/// the field and the place in the file. Not `Accepted`: the object itself (a route, a
/// Service) is still served; only its probe is not.
pub fn add_health_conditions(s: &mut Snapshot) {
    let found = health::endpoints(s, &health::Discovery::default()).problems;
    for p in found {
        let (path, msg) = p
            .message
            .split_once(": ")
            .map_or((String::new(), p.message.clone()), |(a, b)| {
                (a.to_string(), b.to_string())
            });
        let path = if path.is_empty() {
            p.at.clone()
        } else {
            format!("{path} ({})", p.at)
        };
        invalid_as(
            s,
            p.object.clone(),
            model::object::cond::HEALTH_ENDPOINTS_ACCEPTED,
            path,
            msg,
        );
    }
}

/// Every ScaledObject must compile to a scaling policy (KEDA's and the HPA's rules,
/// `health::scale`): a threshold that is not a number, a metric type trellis does not
/// compute, a window out of bounds make it `Accepted=False` at the field.
pub fn add_scaler_conditions(s: &mut Snapshot) {
    let found: Vec<(ObjectKey, Vec<(String, String)>)> = s
        .scaled_objects
        .values()
        .filter_map(|so| {
            health::scale::Policy::from_spec(&so.spec).err().map(|p| {
                (
                    ObjectKey::new("keda.sh", "ScaledObject", so.namespace(), so.name()),
                    p,
                )
            })
        })
        .collect();
    for (key, problems) in found {
        for (path, msg) in problems {
            invalid(s, key.clone(), path, msg);
        }
    }
}
