//! Extra pod interfaces with Multus's semantics (the Network Plumbing WG's multi-network
//! spec, v1.2), delegated to the CNI plugins a NetworkAttachmentDefinition names.
//!
//! - [`parse_networks`]: the pod annotation `k8s.v1.cni.cncf.io/networks`, as a comma list
//!   (`[ns/]name[@ifname]`) or a JSON list of selections (`name`, `namespace`, `interface`,
//!   `ips`, `mac`, `default-route`, `cni-args`). Keys trellis does not act on (port mappings,
//!   bandwidth, device IDs) are refused, never ignored.
//! - [`resolve`]: each selection with its NAD's `spec.config`, named `net1`, `net2`, … in
//!   order unless it asks for a name (Multus counts the cluster network as index 0).
//! - The resolved list travels in the network configuration's `networks` field (the lab and
//!   a runtime's conf file put it there); ADD runs the primary network, then every
//!   attachment in order: each conflist plugin by plugin, with `prevResult` chaining, the
//!   list's `name` and `cniVersion`, `runtimeConfig` for the capabilities a plugin declares
//!   (`ips`, `mac`), `args.cni` from `cni-args`, and `CNI_ARGS` with `IgnoreUnknown=1`,
//!   `IP=` and `MAC=` as Multus sets them. A failure DELs what was added, in reverse, the
//!   primary network included, and names the attachment.
//! - What ADD made is kept in `<stateDir>/multus/<containerID>` (written durably) so that DEL
//!   and CHECK replay it without the pod: DEL in reverse, each with its ADD result; CHECK in
//!   order (skipped for configs older than 0.4.0 or with `disableCheck`, as libcni does).
//! - `k8s.v1.cni.cncf.io/network-status`: [`network_status`] builds it as Multus does, and
//!   the record keeps it for the caller that publishes the Pod.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::result::CniResult;

pub use model::multus::{
    ANNOTATION_NETWORK_STATUS, ANNOTATION_NETWORKS, NETWORKS_MAX, Selection, check_ifname,
    parse_networks,
};
/// The largest output read from a delegate plugin.
pub const DELEGATE_OUTPUT_BYTES_MAX: usize = 1 << 20;
/// The most of a delegate's stderr kept for its error message.
pub const DELEGATE_STDERR_BYTES_MAX: u64 = 4096;
/// How long one delegate plugin call may take before it is killed and the call fails (a
/// runtime's own CNI timeout is minutes; one plugin of a list gets this much).
pub const DELEGATE_TIMEOUT: Duration = Duration::from_secs(60);

/// The plugin `name` in the first of `dirs` that has it (CNI_PATH order).
pub fn find_plugin<P: AsRef<Path>>(dirs: &[P], name: &str) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| d.as_ref().join(name))
        .find(|p| p.is_file())
}

/// How long the rest of a finished plugin's stderr is waited for.
const DELEGATE_STDERR_WAIT: Duration = Duration::from_secs(1);

/// What a plugin process answered.
pub struct PluginOutput {
    pub success: bool,
    /// At most [`DELEGATE_OUTPUT_BYTES_MAX`] bytes.
    pub stdout: Vec<u8>,
    /// The start of its stderr ([`DELEGATE_STDERR_BYTES_MAX`]).
    pub stderr: String,
}

/// Runs the plugin `bin` as a runtime does (the caller's environment plus `env`, `stdin` on
/// its standard input), bounded: its output to [`DELEGATE_OUTPUT_BYTES_MAX`] (more is an
/// error), its time to `timeout` (then it is killed and the call is an error).
pub fn run_plugin(
    bin: &Path,
    env: &[(&str, &std::ffi::OsStr)],
    stdin: &[u8],
    timeout: Duration,
) -> Result<PluginOutput, String> {
    use std::io::{Read, Write};
    let name = bin.display();
    let mut child = Command::new(bin)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let (input, output, errors) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let stdin = stdin.to_vec();
    let (tx, rx) = std::sync::mpsc::channel();
    // Stdout and stderr are drained apart, so that a plugin filling one pipe never waits on
    // the other; stdin is written first (a plugin that exits without reading is judged by
    // its exit status).
    std::thread::spawn(move || {
        if let Some(mut i) = input {
            let _ = i.write_all(&stdin);
        }
        let mut out = Vec::new();
        let read = output.map_or(Ok(0), |o| {
            o.take(DELEGATE_OUTPUT_BYTES_MAX as u64 + 1)
                .read_to_end(&mut out)
        });
        let _ = tx.send(read.map(|_| out));
    });
    let (etx, erx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut err = String::new();
        if let Some(e) = errors {
            let _ = e.take(DELEGATE_STDERR_BYTES_MAX).read_to_string(&mut err);
        }
        let _ = etx.send(err);
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(read) => read.map_err(|e| format!("reading {name}'s output: {e}")),
        Err(_) => {
            let _ = child.kill();
            Err(format!("{name} did not finish within {timeout:?}; killed"))
        }
    };
    let status = child.wait().map_err(|e| format!("waiting for {name}: {e}"));
    // A process the plugin left behind may hold its stderr open: not waited for.
    let stderr = erx.recv_timeout(DELEGATE_STDERR_WAIT).unwrap_or_default();
    let (out, status) = (out?, status?);
    if out.len() > DELEGATE_OUTPUT_BYTES_MAX {
        return Err(format!(
            "{name}: more than {DELEGATE_OUTPUT_BYTES_MAX} bytes of output"
        ));
    }
    Ok(PluginOutput {
        success: status.success(),
        stdout: out,
        stderr,
    })
}

/// A selection resolved: what the plugin runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// `<namespace>/<name>` of the NetworkAttachmentDefinition (the network-status name).
    pub name: String,
    /// The interface in the pod.
    pub interface: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(
        default,
        rename = "default-route",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub default_route: Vec<IpAddr>,
    #[serde(default, rename = "cni-args", skip_serializing_if = "Option::is_none")]
    pub cni_args: Option<Map<String, Value>>,
    /// The NAD's `spec.config`: one plugin's configuration or a conflist.
    pub config: Value,
}

/// Where a bare name among the default networks is looked up: Multus's `multusNamespace`
/// default.
pub const DEFAULT_NETWORKS_NAMESPACE: &str = "kube-system";

/// Networks every pod gets before its annotation's: Multus's `defaultNetworks`, each
/// `namespace/name` or a bare name in [`DEFAULT_NETWORKS_NAMESPACE`]; pods in
/// `system_namespaces` (Multus's default: kube-system) get none of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Defaults {
    pub networks: Vec<Selection>,
    pub system_namespaces: Vec<String>,
}

impl Defaults {
    /// From a configuration's lists; `system_namespaces` None is Multus's default. The error
    /// names the entry that does not parse.
    pub fn parse(
        networks: &[String],
        system_namespaces: Option<&[String]>,
    ) -> Result<Defaults, String> {
        let networks = networks
            .iter()
            .map(|n| {
                match parse_networks(n, DEFAULT_NETWORKS_NAMESPACE)
                    .map_err(|e| e.to_string())?
                    .as_slice()
                {
                    [one] => Ok(one.clone()),
                    _ => Err("one network per entry".to_string()),
                }
                .map_err(|e| format!("default network {n:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Defaults {
            networks,
            system_namespaces: system_namespaces.map_or_else(
                || vec![DEFAULT_NETWORKS_NAMESPACE.to_string()],
                <[String]>::to_vec,
            ),
        })
    }
}

/// A pod's attachments: the default networks (unless the pod is in a system namespace), then
/// its `k8s.v1.cni.cncf.io/networks` annotation's, resolved with `lookup` (a NAD's
/// `spec.config` by namespace and name) and named `net1`, `net2`, … in that order unless a
/// selection asks for a name. The error names the pod and the annotation.
pub fn pod_networks(
    namespace: &str,
    name: &str,
    annotations: &std::collections::BTreeMap<String, String>,
    defaults: &Defaults,
    lookup: impl Fn(&str, &str) -> Option<String>,
) -> Result<Vec<Network>, String> {
    let mut selections = Vec::new();
    if !defaults.system_namespaces.iter().any(|n| n == namespace) {
        selections.extend(defaults.networks.iter().cloned());
    }
    let what = |e: String| format!("pod {namespace}/{name}: {ANNOTATION_NETWORKS}: {e}");
    if let Some(text) = annotations.get(ANNOTATION_NETWORKS) {
        selections.extend(parse_networks(text, namespace).map_err(|e| what(e.to_string()))?);
    }
    resolve(&selections, lookup).map_err(what)
}

/// The selections with their NADs' configurations (`lookup(namespace, name)` gives a NAD's
/// `spec.config`) and interface names: `net<i>` for the i-th (from 1) unless asked for.
pub fn resolve(
    selections: &[Selection],
    lookup: impl Fn(&str, &str) -> Option<String>,
) -> Result<Vec<Network>, String> {
    let mut out = Vec::with_capacity(selections.len());
    for (i, s) in selections.iter().enumerate() {
        let full = format!("{}/{}", s.namespace, s.name);
        let text = lookup(&s.namespace, &s.name).ok_or_else(|| {
            format!(
                "cannot find a network-attachment-definition ({}) in namespace ({})",
                s.name, s.namespace
            )
        })?;
        let config: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{full}: spec.config is not JSON: {e}"))?;
        let interface = s.interface.clone().unwrap_or(format!("net{}", i + 1));
        out.push(Network {
            name: full,
            interface,
            ips: s.ips.clone(),
            mac: s.mac.clone(),
            default_route: s.default_route.clone(),
            cni_args: s.cni_args.clone(),
            config,
        });
    }
    match check_networks(&out).as_slice() {
        [] => Ok(out),
        problems => Err(problems.join("; ")),
    }
}

/// What is wrong with a configuration's `networks` (as [`resolve`] makes them, or written by
/// hand): bounds, interface names, plugin lists, at most one default route per family.
pub fn check_networks(networks: &[Network]) -> Vec<String> {
    let mut problems = Vec::new();
    if networks.len() > NETWORKS_MAX {
        problems.push(format!(
            "networks: {}; at most {NETWORKS_MAX} per pod",
            networks.len()
        ));
    }
    let mut names = BTreeSet::new();
    let (mut v4, mut v6) = (0, 0);
    for (i, n) in networks.iter().enumerate() {
        let at = |m: String| format!("networks[{i}] ({}): {m}", n.name);
        if let Err(e) = check_ifname(&n.interface) {
            problems.push(at(e));
        } else if !names.insert(n.interface.as_str()) {
            problems.push(at(format!("interface {} is used twice", n.interface)));
        }
        if let Err(e) = plugin_list(&n.config) {
            problems.push(at(format!("config: {e}")));
        }
        v4 += n.default_route.iter().filter(|g| g.is_ipv4()).count();
        v6 += n.default_route.iter().filter(|g| g.is_ipv6()).count();
    }
    if v4 > 1 || v6 > 1 {
        problems.push(
            "networks: default-route: at most one IPv4 and one IPv6 gateway over all networks"
                .into(),
        );
    }
    problems
}

/// A NAD's configuration as a plugin list: its `cniVersion`, `name`, plugins, and whether
/// CHECK is disabled. A single configuration (it has `type`) is a list of one.
pub fn plugin_list(config: &Value) -> Result<(String, String, Vec<Value>, bool), String> {
    let obj = config.as_object().ok_or("not a JSON object")?;
    let text = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let version = text("cniVersion");
    if version.is_empty() {
        return Err("cniVersion: required".into());
    }
    let plugins = if obj.contains_key("type") {
        vec![config.clone()]
    } else {
        match obj.get("plugins") {
            Some(Value::Array(p)) if !p.is_empty() => p.clone(),
            _ => return Err("neither a plugin (type) nor a list (plugins)".into()),
        }
    };
    for (i, p) in plugins.iter().enumerate() {
        let t = p.get("type").and_then(Value::as_str).unwrap_or("");
        if t.is_empty() || t.contains('/') || t.starts_with('.') {
            return Err(format!("plugins[{i}].type: {t:?} is not a plugin name"));
        }
    }
    let disable_check = obj.get("disableCheck") == Some(&Value::Bool(true));
    Ok((version, text("name"), plugins, disable_check))
}

/// Whether `version` (x.y.z) is at least `min`.
fn at_least(version: &str, min: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(version) >= parse(min)
}

/// Where a pod's attachments are recorded.
pub fn record_path(state_dir: &Path, container_id: &str) -> PathBuf {
    state_dir.join("multus").join(container_id)
}

/// What ADD made, for DEL, CHECK and the Pod's network-status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub networks: Vec<Network>,
    /// Each network's final ADD result (as many as succeeded).
    pub results: Vec<Value>,
    /// The pod's `k8s.v1.cni.cncf.io/network-status`, primary network first.
    pub network_status: Vec<Value>,
}

/// Reads a pod's record; `None` when there is none.
pub fn read_record(state_dir: &Path, container_id: &str) -> Result<Option<Record>, String> {
    let path = record_path(state_dir, container_id);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub(crate) fn write_record(state_dir: &Path, container_id: &str, r: &Record) -> Result<(), String> {
    let path = record_path(state_dir, container_id);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let bytes = serde_json::to_vec_pretty(r).map_err(|e| e.to_string())?;
    store::durable::write(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn remove_record(state_dir: &Path, container_id: &str) -> Result<(), String> {
    let path = record_path(state_dir, container_id);
    match store::durable::remove(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// How the delegates are run: the runtime's parameters.
pub struct Invocation<'a> {
    pub container_id: &'a str,
    /// The pod's netns; `None` on a DEL whose namespace is gone.
    pub netns: Option<&'a Path>,
    pub cni_path: &'a [PathBuf],
    /// The runtime's `CNI_ARGS`, passed on.
    pub cni_args: &'a [(String, String)],
}

impl Invocation<'_> {
    fn find(&self, plugin: &str) -> Result<PathBuf, String> {
        find_plugin(self.cni_path, plugin).ok_or_else(|| {
            format!(
                "plugin {plugin:?} is not installed in CNI_PATH ({})",
                self.cni_path
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            )
        })
    }

    /// `CNI_ARGS` for `n`'s plugins: `IgnoreUnknown=1` (the reference plugins refuse unknown
    /// keys otherwise), the runtime's, then `IP=` and `MAC=` from the selection.
    fn args_for(&self, n: &Network) -> String {
        let mut parts = vec!["IgnoreUnknown=1".to_string()];
        for (k, v) in self.cni_args {
            if k != "IgnoreUnknown" && k != "IP" && k != "MAC" {
                parts.push(format!("{k}={v}"));
            }
        }
        if !n.ips.is_empty() {
            parts.push(format!("IP={}", n.ips.join(",")));
        }
        if let Some(mac) = &n.mac {
            parts.push(format!("MAC={mac}"));
        }
        parts.join(";")
    }

    /// Runs one plugin; its JSON output on success, its error message otherwise.
    fn exec(
        &self,
        n: &Network,
        plugin: &str,
        command: &str,
        stdin: &Value,
    ) -> Result<Value, String> {
        let bin = self.find(plugin)?;
        let path = std::env::join_paths(self.cni_path).map_err(|e| e.to_string())?;
        let netns = self.netns.map(Path::as_os_str).unwrap_or_default();
        let args = self.args_for(n);
        let input = serde_json::to_vec(stdin).map_err(|e| e.to_string())?;
        let env: [(&str, &std::ffi::OsStr); 6] = [
            ("CNI_COMMAND", command.as_ref()),
            ("CNI_CONTAINERID", self.container_id.as_ref()),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", n.interface.as_ref()),
            ("CNI_ARGS", args.as_ref()),
            ("CNI_PATH", path.as_os_str()),
        ];
        let out = run_plugin(&bin, &env, &input, DELEGATE_TIMEOUT)
            .map_err(|e| format!("{plugin} {command}: {e}"))?;
        let json: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.success {
            let msg = json
                .as_ref()
                .and_then(|j| j.get("msg"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout).trim(),
                        out.stderr.trim()
                    )
                });
            return Err(format!("{plugin} {command}: {msg}"));
        }
        Ok(json.unwrap_or(Value::Null))
    }

    /// One plugin's request: its entry with the list's `name` and `cniVersion`,
    /// `runtimeConfig` for the capabilities it declares, `args.cni` from `cni-args`, and
    /// `prevResult`.
    fn request(n: &Network, plugin: &Value, list: (&str, &str), prev: Option<&Value>) -> Value {
        let mut p = plugin.as_object().cloned().unwrap_or_default();
        let (version, name) = list;
        p.insert("cniVersion".into(), Value::String(version.into()));
        if !name.is_empty() {
            p.insert("name".into(), Value::String(name.into()));
        } else if !p.contains_key("name") {
            // As Multus: a configuration without a name takes its NAD's (not the namespaced
            // key, whose '/' plugins refuse in a network name).
            let nad = n.name.rsplit('/').next().unwrap_or(&n.name);
            p.insert("name".into(), Value::String(nad.into()));
        }
        let caps = p
            .get("capabilities")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut runtime = Map::new();
        if caps.get("ips") == Some(&Value::Bool(true)) && !n.ips.is_empty() {
            runtime.insert("ips".into(), serde_json::json!(n.ips));
        }
        if caps.get("mac") == Some(&Value::Bool(true))
            && let Some(mac) = &n.mac
        {
            runtime.insert("mac".into(), Value::String(mac.clone()));
        }
        if !runtime.is_empty() {
            p.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        if let Some(extra) = &n.cni_args {
            let args = p.entry("args").or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(args) = args {
                let cni = args
                    .entry("cni")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(cni) = cni {
                    for (k, v) in extra {
                        cni.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        match prev {
            Some(r) => p.insert("prevResult".into(), r.clone()),
            None => p.remove("prevResult"),
        };
        Value::Object(p)
    }

    /// ADD of one network, plugin by plugin with `prevResult` chained. On a failure the
    /// error is returned; the caller DELs the network (as Multus does, the failed one
    /// included).
    pub fn add(&self, n: &Network) -> Result<Value, String> {
        let (version, name, plugins, _) = plugin_list(&n.config)?;
        let mut prev: Option<Value> = None;
        for plugin in &plugins {
            let kind = plugin.get("type").and_then(Value::as_str).unwrap_or("");
            let req = Self::request(n, plugin, (&version, &name), prev.as_ref());
            prev = Some(self.exec(n, kind, "ADD", &req)?);
        }
        prev.ok_or_else(|| "the plugin list gave no result".into())
    }

    /// DEL of one network, its plugins in reverse, each with the ADD result as `prevResult`
    /// (from 0.4.0); every plugin runs even when one fails; the errors are returned together.
    pub fn del(&self, n: &Network, result: Option<&Value>) -> Result<(), String> {
        let (version, name, plugins, _) = plugin_list(&n.config)?;
        let prev = result.filter(|_| at_least(&version, "0.4.0"));
        let mut errors = Vec::new();
        for plugin in plugins.iter().rev() {
            let kind = plugin.get("type").and_then(Value::as_str).unwrap_or("");
            let req = Self::request(n, plugin, (&version, &name), prev);
            if let Err(e) = self.exec(n, kind, "DEL", &req) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join(" / "))
        }
    }

    /// CHECK of one network, plugin by plugin in order, with its ADD result. Not run (and
    /// not an error) below 0.4.0 or with `disableCheck`, as libcni.
    pub fn check(&self, n: &Network, result: &Value) -> Result<(), String> {
        let (version, name, plugins, disabled) = plugin_list(&n.config)?;
        if disabled || !at_least(&version, "0.4.0") {
            return Ok(());
        }
        for plugin in &plugins {
            let kind = plugin.get("type").and_then(Value::as_str).unwrap_or("");
            let req = Self::request(n, plugin, (&version, &name), Some(result));
            self.exec(n, kind, "CHECK", &req)?;
        }
        Ok(())
    }
}

/// The network-status entries of one network's result, as Multus builds them: with exactly
/// one interface, one entry with every address; otherwise one per interface inside the pod
/// (addresses by their `interface` index, unindexed ones on the last). `gateway` lists the
/// default routes' gateways; `default` marks the cluster network's interface.
pub fn network_status(name: &str, result: &Value, primary: bool) -> Vec<Value> {
    let Ok(r) = serde_json::from_value::<CniResult>(result.clone()) else {
        return vec![serde_json::json!({"name": name, "dns": {}})];
    };
    let gateways: Vec<String> = r
        .routes
        .iter()
        .filter(|rt| rt.dst.prefix_len() == 0)
        .filter_map(|rt| rt.gw.map(|g| g.to_string()))
        .collect();
    let entry = |iface: Option<&crate::result::Interface>, ips: Vec<String>, default: bool| {
        let mut m = Map::new();
        m.insert("name".into(), Value::String(name.into()));
        if let Some(i) = iface {
            m.insert("interface".into(), Value::String(i.name.clone()));
        }
        if !ips.is_empty() {
            m.insert("ips".into(), serde_json::json!(ips));
        }
        if let Some(i) = iface
            && !i.mac.is_empty()
        {
            m.insert("mac".into(), Value::String(i.mac.clone()));
        }
        if default {
            m.insert("default".into(), Value::Bool(true));
        }
        m.insert("dns".into(), Value::Object(Map::new()));
        if !gateways.is_empty() {
            m.insert("gateway".into(), serde_json::json!(gateways));
        }
        Value::Object(m)
    };
    if r.interfaces.len() <= 1 {
        let ips = r
            .ips
            .iter()
            .map(|ip| ip.address.addr().to_string())
            .collect();
        return vec![entry(r.interfaces.first(), ips, primary)];
    }
    let sandboxed: Vec<usize> = (0..r.interfaces.len())
        .filter(|i| {
            r.interfaces[*i]
                .sandbox
                .as_deref()
                .is_some_and(|s| !s.is_empty())
        })
        .collect();
    let mut out = Vec::new();
    for (k, idx) in sandboxed.iter().enumerate() {
        let last = k + 1 == sandboxed.len();
        let ips = r
            .ips
            .iter()
            .filter(|ip| ip.interface == Some(*idx) || (last && ip.interface.is_none()))
            .map(|ip| ip.address.addr().to_string())
            .collect();
        out.push(entry(Some(&r.interfaces[*idx]), ips, primary && k == 0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_runs_are_bounded_in_time_and_output() {
        // A failing plugin is an answer (its exit status), not an error of the run.
        let failed = run_plugin(Path::new("/bin/false"), &[], b"", Duration::from_secs(30));
        assert!(failed.is_ok_and(|o| !o.success));
        let hung = run_plugin(
            Path::new("/bin/sh"),
            &[("CNI_COMMAND", "ADD".as_ref())],
            b"sleep 30\n",
            Duration::from_millis(200),
        )
        .err()
        .expect("killed");
        assert!(hung.contains("did not finish"), "{hung}");
        let flood = run_plugin(Path::new("/usr/bin/yes"), &[], b"", Duration::from_secs(30))
            .err()
            .expect("too much output");
        assert!(flood.contains("bytes of output"), "{flood}");
        let ok = run_plugin(Path::new("/bin/cat"), &[], b"{}", Duration::from_secs(30))
            .expect("cat runs");
        assert!(ok.success && ok.stdout == b"{}");
    }

    #[test]
    fn default_networks_come_first_except_in_system_namespaces() {
        let conf = r#"{"cniVersion":"1.0.0","type":"macvlan","master":"eth1"}"#;
        let lookup = |ns: &str, n: &str| {
            ["kube-system/iot", "home/vpn", "home/trust"]
                .contains(&format!("{ns}/{n}").as_str())
                .then(|| conf.to_string())
        };
        let defaults =
            Defaults::parse(&["iot".into(), "home/vpn@vpn0".into()], None).expect("parses");
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(ANNOTATION_NETWORKS.to_string(), "trust".to_string());
        let got = pod_networks("home", "ha", &annotations, &defaults, lookup).expect("resolves");
        let names: Vec<(&str, &str)> = got
            .iter()
            .map(|n| (n.name.as_str(), n.interface.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("kube-system/iot", "net1"),
                ("home/vpn", "vpn0"),
                ("home/trust", "net3")
            ]
        );
        // No annotation: the defaults alone.
        let got = pod_networks("home", "x", &Default::default(), &defaults, lookup).expect("ok");
        assert_eq!(got.len(), 2);
        // A system namespace's pod gets only what it asks for.
        let got = pod_networks("kube-system", "dns", &Default::default(), &defaults, lookup)
            .expect("resolves");
        assert!(got.is_empty());
        let mine = Defaults::parse(&["iot".into()], Some(&["home".to_string()])).expect("parses");
        assert!(
            pod_networks("home", "x", &Default::default(), &mine, lookup)
                .expect("ok")
                .is_empty()
        );
        // A default that names no NAD fails the pod's attachments, naming it.
        let missing = Defaults::parse(&["gone".into()], None).expect("parses");
        let e = pod_networks("home", "x", &Default::default(), &missing, lookup)
            .expect_err("no such NAD");
        assert!(e.contains("(gone) in namespace (kube-system)"), "{e}");
        // Entries are one network each.
        let e = Defaults::parse(&["a,b".into()], None).expect_err("two in one");
        assert!(
            e.contains("default network \"a,b\": one network per entry"),
            "{e}"
        );
    }

    #[test]
    fn comma_form() {
        let l = parse_networks(" iot, network/multus-not@vlan32 ,x@n2", "home").expect("valid");
        assert_eq!(l.len(), 3);
        assert_eq!(
            (l[0].namespace.as_str(), l[0].name.as_str()),
            ("home", "iot")
        );
        assert_eq!(l[0].interface, None);
        assert_eq!(l[1].namespace, "network");
        assert_eq!(l[1].interface.as_deref(), Some("vlan32"));
        assert_eq!(l[2].interface.as_deref(), Some("n2"));
    }

    #[test]
    fn json_form() {
        let l = parse_networks(
            r#"[{"name":"multus-iot","namespace":"network","interface":"iot0",
                "ips":["10.10.33.20/24"],"mac":"02:00:00:00:00:33",
                "default-route":["10.10.33.1"],"cni-args":{"k":"v"}}]"#,
            "home",
        )
        .expect("valid");
        assert_eq!(l[0].ips, ["10.10.33.20/24"]);
        assert_eq!(
            l[0].default_route,
            ["10.10.33.1".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(
            l[0].cni_args.as_ref().and_then(|a| a.get("k")),
            Some(&Value::from("v"))
        );
        // The deprecated key still names the interface.
        let l = parse_networks(r#"[{"name":"a","interfaceRequest":"x1"}]"#, "ns").expect("valid");
        assert_eq!(l[0].interface.as_deref(), Some("x1"));
    }

    #[test]
    fn refused_with_the_reason() {
        let err = |t: &str| parse_networks(t, "ns").expect_err(t);
        assert!(err("a/b/c").contains("more than one '/'"));
        assert!(err("a@b@c").contains("more than one '@'"));
        assert!(err("Bad_Name").contains("DNS-1123"));
        assert!(err("a@averyveryverylongname").contains("interface"));
        assert!(err(r#"[{"name":"a","mac":"zz"}]"#).contains("mac"));
        assert!(err(r#"[{"name":"a","ips":["10.0.0.1"]}]"#).contains("prefix"));
        // What trellis would not act on is refused, not ignored.
        assert!(err(r#"[{"name":"a","portMappings":[]}]"#).contains("portMappings"));
        assert!(parse_networks("  ", "ns").expect("empty").is_empty());
    }

    #[test]
    fn resolve_names_interfaces_and_finds_nads() {
        let sel =
            parse_networks("network/iot,network/not@vlan32,network/trust", "home").expect("valid");
        let conf =
            r#"{"cniVersion":"0.3.1","name":"x","plugins":[{"type":"macvlan"},{"type":"sbr"}]}"#;
        let nets = resolve(&sel, |_, _| Some(conf.to_string())).expect("resolved");
        let names: Vec<&str> = nets.iter().map(|n| n.interface.as_str()).collect();
        assert_eq!(names, ["net1", "vlan32", "net3"]);
        assert_eq!(nets[0].name, "network/iot");
        let missing = resolve(&sel, |_, name| (name != "not").then(|| conf.to_string()))
            .expect_err("missing");
        assert!(
            missing.contains("(not) in namespace (network)"),
            "{missing}"
        );
        let dup = parse_networks("a@x,b@x", "ns").expect("valid");
        assert!(
            resolve(&dup, |_, _| Some(conf.into()))
                .expect_err("dup")
                .contains("twice")
        );
        let bad = resolve(&sel, |_, _| Some(r#"{"cniVersion":"0.3.1"}"#.into())).expect_err("bad");
        assert!(bad.contains("neither a plugin"), "{bad}");
        let two = parse_networks(
            r#"[{"name":"a","default-route":["10.0.0.1"]},{"name":"b","default-route":["10.0.1.1"]}]"#,
            "ns",
        )
        .expect("each valid");
        let two = resolve(&two, |_, _| Some(conf.into())).expect_err("two gateways");
        assert!(two.contains("at most one"), "{two}");
        // A configuration written by hand is held to the same.
        let mut conf = serde_json::json!({"cniVersion": "1.0.0", "name": "t", "type": "x",
            "podCIDR": "10.0.0.0/24", "stateDir": "/tmp/t"});
        conf["networks"] = serde_json::json!([
            {"name": "a/b", "interface": "n/1", "config": {"cniVersion": "1.0.0", "type": "m"}}]);
        let e = crate::NetConf::parse(conf.to_string().as_bytes()).expect_err("bad ifname");
        assert!(
            e.to_string().contains("networks[0] (a/b): interface"),
            "{e}"
        );
    }

    #[test]
    fn requests_carry_runtime_config_and_args() {
        let n = Network {
            name: "network/iot".into(),
            interface: "net1".into(),
            ips: vec!["10.10.33.20/24".into()],
            mac: Some("02:00:00:00:00:01".into()),
            default_route: Vec::new(),
            cni_args: Some(
                serde_json::json!({"a": 1})
                    .as_object()
                    .cloned()
                    .expect("map"),
            ),
            config: Value::Null,
        };
        let plugin = serde_json::json!({"type": "macvlan", "capabilities": {"ips": true}});
        let r = Invocation::request(&n, &plugin, ("0.3.1", "multus-iot"), None);
        assert_eq!(r["cniVersion"], "0.3.1");
        assert_eq!(r["name"], "multus-iot");
        assert_eq!(
            r["runtimeConfig"],
            serde_json::json!({"ips": ["10.10.33.20/24"]})
        );
        assert_eq!(r["args"]["cni"]["a"], 1);
        assert!(r.get("prevResult").is_none());
        let inv = Invocation {
            container_id: "c",
            netns: None,
            cni_path: &[],
            cni_args: &[
                ("K8S_POD_NAME".into(), "p".into()),
                ("IgnoreUnknown".into(), "0".into()),
            ],
        };
        assert_eq!(
            inv.args_for(&n),
            "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.10.33.20/24;MAC=02:00:00:00:00:01"
        );
    }

    #[test]
    fn status_as_multus_writes_it() {
        let macvlan = serde_json::json!({
            "cniVersion": "0.3.1",
            "interfaces": [{"name": "net1", "mac": "02:aa:bb:cc:dd:ee", "sandbox": "/var/run/netns/p"}],
            "ips": [{"version": "4", "address": "10.10.33.254/24", "gateway": "10.10.33.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.10.33.1"}],
            "dns": {}
        });
        assert_eq!(
            network_status("network/multus-iot", &macvlan, false),
            [
                serde_json::json!({"name": "network/multus-iot", "interface": "net1",
                "ips": ["10.10.33.254"], "mac": "02:aa:bb:cc:dd:ee", "dns": {},
                "gateway": ["10.10.33.1"]})
            ]
        );
        let primary = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lxc0"}, {"name": "eth0", "mac": "02:01:02:03:04:05", "sandbox": "/x"}],
            "ips": [{"address": "10.69.1.5/32", "gateway": "169.254.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
        });
        assert_eq!(
            network_status("trellis", &primary, true),
            [
                serde_json::json!({"name": "trellis", "interface": "eth0", "ips": ["10.69.1.5"],
                "mac": "02:01:02:03:04:05", "default": true, "dns": {},
                "gateway": ["169.254.1.1"]})
            ]
        );
    }
}
