//! `trellis up`: the single-host product in one process and one runtime.
//!
//! One watch of the manifests feeds every component: each Gateway of the manifests (bound on
//! the address and port map its config entry gives), DNS with its views and rewrites, and,
//! when the config asks for them, flows, health probes and record sync targets. A change that does not read cleanly, or that one
//! component cannot compile, leaves that component (or all of them) on its last good plan, and
//! `/status` on the one admin endpoint says which generation each serves and why not a newer
//! one. SIGTERM drains every Gateway within its drain timeout while DNS answers out its
//! lameduck; SIGHUP re-reads the config file and applies what needs no new socket.
//!
//! What lives elsewhere: starting, updating and draining one Gateway (`crate::gateway`), DNS's
//! settings and listeners (`crate::dns::Serve`), flows (`crate::observe`), probing
//! (`crate::health::Prober`), a sync target's loop (`crate::sync::keep`). This module only
//! reads the config, composes them and keeps the status. The config's keys and defaults are
//! documented in docs/up.md; [`Config`] is their one definition.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use model::ObjectKey;
use serde::{Deserialize, Serialize};
use store::watch::{Update, Watch};
use tracing::Instrument as _;

use crate::gateway::AccessLogTo;
use crate::logging::{LogFormat, Logging};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A manifest directory or file (repeatable; comma-separated in the variable). Replaces
    /// the config's `manifests`.
    #[arg(
        short = 'f',
        long = "filename",
        env = "TRELLIS_MANIFESTS",
        value_delimiter = ','
    )]
    pub paths: Vec<PathBuf>,
    /// Flux post-build variables (YAML map or NAME=value lines). Replaces the config's `vars`.
    #[arg(long, env = "TRELLIS_VARS")]
    pub vars: Option<PathBuf>,
    /// The config file (YAML; every key in docs/up.md). Without it, the defaults.
    #[arg(long, env = "TRELLIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where state that outlives the process goes. Replaces the config's `stateDir`.
    #[arg(long, env = "TRELLIS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The admin endpoint (/metrics, /ready, /status, /healthz), or `off`. Replaces the
    /// config's `admin`.
    #[arg(long, env = "TRELLIS_ADMIN")]
    pub admin: Option<String>,
    /// Print the effective config (defaults, then the file, then flags and variables) as YAML
    /// and exit.
    #[arg(long, env = "TRELLIS_PRINT_CONFIG")]
    pub print_config: bool,
}

/// Where the admin endpoint listens when the config says nothing (Envoy's admin port).
const ADMIN_DEFAULT: &str = "127.0.0.1:9901";
/// Where state goes when the config says nothing (systemd's `StateDirectory=trellis`).
const STATE_DIR_DEFAULT: &str = "/var/lib/trellis";
/// How often `/status` takes in what changes without an event of the manifests or config
/// (health results).
const STATUS_REFRESH: Duration = Duration::from_secs(1);
/// The log filter when neither `RUST_LOG` nor `TRELLIS_LOG` is set and the config says nothing.
const LOG_LEVEL_DEFAULT: &str = "info";

/// The config file of `trellis up`. Every key has a default; docs/up.md lists them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Config {
    /// Manifest directories or files, read with kustomize and Flux semantics.
    pub manifests: Vec<PathBuf>,
    /// Flux post-build variables file.
    pub vars: Option<PathBuf>,
    /// An undefined `${VAR}` is an error instead of a warning.
    pub strict_vars: bool,
    /// Namespace of namespaced objects nothing else places.
    pub default_namespace: String,
    /// Where state that outlives the process goes.
    pub state_dir: PathBuf,
    /// The admin endpoint; `null` for none.
    pub admin: Option<SocketAddr>,
    pub log: LogConfig,
    /// What every Gateway shares unless its own entry says otherwise.
    pub gateway: GatewayDefaults,
    /// Per Gateway, by `NAMESPACE/NAME`.
    pub gateways: BTreeMap<String, GatewayConfig>,
    /// DNS; `null` turns it off.
    pub dns: Option<crate::dns::Serve>,
    /// Flows: Hubble's Observer API and the web UI (off unless an address is given).
    pub observe: crate::observe::ServeArgs,
    /// Health probes of the endpoints the manifests declare (Gatus); `null` (the default)
    /// turns them off, `{}` on with the defaults.
    pub health: Option<crate::health::Probing>,
    /// Record sync (ExternalDNS): one entry per target, by a name of the operator's choice
    /// (`cloudflare`, `adguard`...); none by default.
    pub sync: BTreeMap<String, crate::sync::Target>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            manifests: Vec::new(),
            vars: None,
            strict_vars: false,
            default_namespace: "default".to_string(),
            state_dir: PathBuf::from(STATE_DIR_DEFAULT),
            admin: Some(
                ADMIN_DEFAULT
                    .parse()
                    .expect("the default admin address is an address"),
            ),
            log: LogConfig::default(),
            gateway: GatewayDefaults::default(),
            gateways: BTreeMap::new(),
            dns: Some(crate::dns::Serve::default()),
            observe: crate::observe::ServeArgs::default(),
            health: None,
            sync: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LogConfig {
    /// The filter (`info`, `trellis=debug,warn`) when `RUST_LOG`/`TRELLIS_LOG` are unset.
    pub level: String,
    /// `text` or `json`; the `--log-format` flag wins.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: LOG_LEVEL_DEFAULT.to_string(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct GatewayDefaults {
    /// The address to bind; `null`: the Gateway's own (spec.addresses, LB-IPAM), else 0.0.0.0.
    pub bind: Option<IpAddr>,
    /// Overrides every EnvoyProxy's `shutdown.drainTimeout` (e.g. `30s`).
    pub drain_timeout: Option<String>,
    /// One JSON line per request on stdout, or `off`.
    pub access_log: AccessLogTo,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// `false`: this Gateway is not served.
    pub serve: bool,
    /// The address to bind, instead of `gateway.bind`.
    pub bind: Option<IpAddr>,
    /// Listener port -> port to bind (0: any free port), e.g. `{80: 18080, 443: 18443}`.
    pub ports: BTreeMap<u16, u16>,
    /// Instead of `gateway.drainTimeout`.
    pub drain_timeout: Option<String>,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            serve: true,
            bind: None,
            ports: BTreeMap::new(),
            drain_timeout: None,
        }
    }
}

impl Config {
    /// Reads a config file. Relative paths in it are taken from the file's directory. Errors
    /// name the file, line and column, and the key.
    pub fn read(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let mut cfg =
            Config::parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        cfg.manifests.iter_mut().for_each(resolve);
        cfg.vars.iter_mut().for_each(resolve);
        resolve(&mut cfg.state_dir);
        if let Some(d) = &mut cfg.dns {
            d.forward_resolv_conf.iter_mut().for_each(resolve);
        }
        if let Some(h) = &mut cfg.health {
            resolve(&mut h.ca_bundle);
        }
        for t in cfg.sync.values_mut() {
            resolve(&mut t.ca_file);
            t.webhook_token_file.iter_mut().for_each(resolve);
            t.rfc2136_tsig_secret_file.iter_mut().for_each(resolve);
            t.cloudflare_api_token_file.iter_mut().for_each(resolve);
        }
        Ok(cfg)
    }

    /// Parses config text; an error starts with `line:col: ` where the key was written.
    pub fn parse(text: &str) -> Result<Config, String> {
        let docs = model::yaml::parse_documents(text).map_err(|e| e.to_string())?;
        let doc = match docs.as_slice() {
            [] => return Ok(Config::default()),
            [one] => one,
            [_, second, ..] => {
                return Err(format!(
                    "{}: one YAML document expected, found {}",
                    second.pos,
                    docs.len()
                ));
            }
        };
        let mut index = model::yaml::PosIndex::default();
        let json = doc.to_json(&mut index);
        serde_path_to_error::deserialize(json).map_err(|e| {
            let path = e.path().to_string();
            let pos = index.find(&path).unwrap_or(doc.pos);
            if path == "." {
                format!("{pos}: {}", e.inner())
            } else {
                format!("{pos}: {path}: {}", e.inner())
            }
        })
    }

    /// The flags and variables over this config.
    fn with_flags(mut self, args: &Args) -> anyhow::Result<Config> {
        if !args.paths.is_empty() {
            self.manifests = args.paths.clone();
        }
        if let Some(v) = &args.vars {
            self.vars = Some(v.clone());
        }
        if let Some(d) = &args.state_dir {
            self.state_dir = d.clone();
        }
        if let Some(a) = &args.admin {
            self.admin = match a.as_str() {
                "off" | "" => None,
                a => Some(a.parse().map_err(|_| {
                    anyhow::anyhow!("--admin {a:?}: write ADDR:PORT (e.g. 127.0.0.1:9901) or off")
                })?),
            };
        }
        Ok(self)
    }

    /// Every problem of the config at once, each naming its key.
    fn check(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.manifests.is_empty() {
            out.push("manifests: no manifests: give -f DIR or `manifests:` in the config".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            out.push(format!("log.level: {:?}: {e}", self.log.level));
        }
        let mut durations = vec![(
            "gateway.drainTimeout".to_string(),
            &self.gateway.drain_timeout,
        )];
        for (name, g) in &self.gateways {
            if name
                .split_once('/')
                .is_none_or(|(ns, n)| ns.is_empty() || n.is_empty())
            {
                out.push(format!("gateways.{name}: name a Gateway as NAMESPACE/NAME"));
            }
            durations.push((format!("gateways.{name}.drainTimeout"), &g.drain_timeout));
        }
        if let Some(d) = &self.dns {
            out.extend(
                [
                    ("dns.lameduck", &d.lameduck),
                    ("dns.serveStale", &d.serve_stale),
                ]
                .into_iter()
                .filter_map(|(k, v)| {
                    model::validate::parse_duration(v)
                        .err()
                        .map(|e| format!("{k}: {v:?}: {e}"))
                }),
            );
        }
        if let Some(h) = &self.health {
            out.extend(h.check("health"));
        }
        for (name, t) in &self.sync {
            out.extend(t.check(&format!("sync.{name}")));
        }
        for (key, v) in durations {
            if let Some(v) = v
                && let Err(e) = model::validate::parse_duration(v)
            {
                out.push(format!("{key}: {v:?}: {e}"));
            }
        }
        out
    }

    fn source(&self) -> crate::SourceArgs {
        crate::SourceArgs {
            origin: crate::Origin::Dir,
            skip_kinds: Vec::new(),
            paths: self.manifests.clone(),
            vars: self.vars.clone(),
            strict_vars: self.strict_vars,
            default_namespace: self.default_namespace.clone(),
        }
    }

    fn gateway_config(&self, key: &ObjectKey) -> GatewayConfig {
        self.gateways
            .get(&key.ns_name())
            .cloned()
            .unwrap_or_default()
    }

    /// The configured drain timeout of a Gateway, if the config overrides its EnvoyProxy's.
    fn drain_override(&self, key: &ObjectKey) -> Option<Duration> {
        let own = self.gateway_config(key).drain_timeout;
        own.or(self.gateway.drain_timeout.clone())
            .and_then(|d| model::validate::parse_duration(&d).ok())
    }
}

/// The effective config: defaults, then the file, then flags and variables; checked.
fn effective(args: &Args) -> anyhow::Result<Config> {
    let file = match &args.config {
        Some(p) => Config::read(p)?,
        None => Config::default(),
    };
    let cfg = file.with_flags(args)?;
    let problems = cfg.check();
    anyhow::ensure!(
        problems.is_empty(),
        "the config{} has problems:\n  {}",
        args.config
            .as_ref()
            .map(|p| format!(" {}", p.display()))
            .unwrap_or_default(),
        problems.join("\n  ")
    );
    Ok(cfg)
}

/// The keys (dotted paths) whose values differ between two configs.
fn changed_keys(old: &serde_json::Value, new: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    use serde_json::Value as J;
    match (old, new) {
        (J::Object(a), J::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                changed_keys(
                    a.get(k).unwrap_or(&J::Null),
                    b.get(k).unwrap_or(&J::Null),
                    &path,
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(at.to_string()),
        _ => {}
    }
}

/// Keys SIGHUP applies in place; any other change waits for a restart.
fn applies_in_place(key: &str) -> bool {
    key == "log.level"
        || key == "gateway.drainTimeout"
        || (key.starts_with("gateways.") && key.ends_with(".drainTimeout"))
}

/// One Gateway of the manifests and what this process does with it.
struct GatewaySlot {
    key: ObjectKey,
    running: Option<gateway::Running>,
    /// The drain timeout of the plan serving (the EnvoyProxy's), before config overrides.
    plan_drain: Duration,
    /// The manifest generation whose plan serves.
    generation: Option<u64>,
    last_error: Option<String>,
    /// `crate::gateway::status_doc` of the plan serving.
    doc: serde_json::Value,
}

struct DnsSlot {
    running: dns::server::Running,
    cfg: dns::ZoneConfig,
    generation: u64,
    last_error: Option<String>,
    views: serde_json::Value,
}

/// The process: its config, its components and what `/status` shows of them.
struct Up {
    cfg: Config,
    config_file: Option<PathBuf>,
    config_error: Option<String>,
    restart_needed: Vec<String>,
    logging: Logging,
    /// `--log-format` (or TRELLIS_LOG_FORMAT): wins over the file at every reload too.
    log_format: Option<LogFormat>,
    /// Manifest generations: 1 is the first read, each change after it (applied or not) is one.
    generation: u64,
    manifests_error: Option<String>,
    gateways: BTreeMap<String, GatewaySlot>,
    dns: Option<DnsSlot>,
    metrics: Arc<gateway::metrics::Metrics>,
    access_log: Option<gateway::proxy::AccessLog>,
    flows: Option<observe::Observer>,
    /// Where the flow API and UI are bound.
    flows_bound: crate::observe::Bound,
    pods: Arc<crate::observe::Pods>,
    health: Option<crate::health::Prober>,
    /// The latest manifests, for the sync targets' loops (none without targets).
    sync_latest: Option<tokio::sync::watch::Sender<Arc<store::Load>>>,
    /// Each sync target's last run, as `/status` shows it.
    sync_status: Arc<std::sync::Mutex<BTreeMap<String, serde_json::Value>>>,
    status: Arc<gateway::admin::StatusDoc>,
}

impl Up {
    fn bind_of(&self, key: &ObjectKey) -> gateway::Bind {
        let own = self.cfg.gateway_config(key);
        gateway::Bind {
            ip: own.bind.or(self.cfg.gateway.bind),
            port_map: own.ports,
            access_log: self.access_log.clone(),
            observer: self
                .flows
                .as_ref()
                .map(|o| crate::observe::gateway_observer(&o.flows(), self.pods.clone())),
            connections_max: None,
            ..Default::default()
        }
    }

    /// Brings every Gateway of `load` to its plan: updates those running, starts those that
    /// compile now, drains those gone from the manifests. `first`: a Gateway that cannot bind
    /// is an error (the operator's config is wrong); later it is a status line.
    async fn gateways_to(&mut self, load: &store::Load, first: bool) -> anyhow::Result<()> {
        let keys: Vec<ObjectKey> = load
            .snapshot
            .gateways
            .keys()
            .map(|(ns, n)| ObjectKey::new(model::validate::GATEWAY_GROUP, "Gateway", ns, n))
            .filter(|k| self.cfg.gateway_config(k).serve)
            .collect();
        let gone: Vec<String> = self
            .gateways
            .keys()
            .filter(|name| !keys.iter().any(|k| &k.ns_name() == *name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(slot) = self.gateways.remove(&name)
                && let Some(running) = slot.running
            {
                let timeout = self
                    .cfg
                    .drain_override(&slot.key)
                    .unwrap_or(slot.plan_drain);
                eprintln!("gateway {name}: no longer in the manifests");
                tokio::spawn(async move {
                    crate::gateway::drain_gateway(&name, running, timeout).await;
                });
            }
        }
        for key in keys {
            let name = key.ns_name();
            let bind = self.bind_of(&key);
            let metrics = self.metrics.clone();
            let generation = self.generation;
            let slot = self
                .gateways
                .entry(name.clone())
                .or_insert_with(|| GatewaySlot {
                    key: key.clone(),
                    running: None,
                    plan_drain: gateway::plan::DRAIN_TIMEOUT_DEFAULT,
                    generation: None,
                    last_error: None,
                    doc: serde_json::Value::Null,
                });
            let plan = match crate::gateway::compile(&load.snapshot, &key) {
                Ok(p) => p,
                Err(e) => {
                    let now = if slot.running.is_some() {
                        "still serving the previous routes"
                    } else {
                        "not served"
                    };
                    eprintln!("gateway {name}: {e}; {now}");
                    slot.last_error = Some(e.to_string());
                    continue;
                }
            };
            // A port mapping for a port the Gateway has no listener on is a mistake in the
            // config (a typo, or a listener renumbered in the manifests): said, never ignored.
            let unmapped: Vec<String> = bind
                .port_map
                .keys()
                .filter(|p| !plan.ports.contains_key(p) && !plan.udp_ports.contains_key(p))
                .map(u16::to_string)
                .collect();
            let mut mapping_error = None;
            if !unmapped.is_empty() {
                let listeners: Vec<String> = plan
                    .ports
                    .keys()
                    .chain(plan.udp_ports.keys())
                    .map(u16::to_string)
                    .collect();
                let e = format!(
                    "gateways.{name}.ports: {} is not a listener port of the Gateway (its \
                     listeners: {})",
                    unmapped.join(", "),
                    listeners.join(", ")
                );
                if first {
                    anyhow::bail!("{e}");
                }
                eprintln!("gateway {name}: {e}");
                mapping_error = Some(e);
            }
            let running = match slot.running.take() {
                Some(r) => {
                    r.update(&plan);
                    let entries = crate::gateway::route_entries(&plan);
                    eprintln!("gateway {name}: reloaded: {entries} route entries");
                    r
                }
                None => match crate::gateway::start_gateway(&plan, &bind, metrics).await {
                    Ok(r) => r,
                    Err(e) if first => {
                        return Err(e.context(format!(
                            "set gateways.{name}.bind or .ports in the config to serve it elsewhere"
                        )));
                    }
                    Err(e) => {
                        eprintln!("gateway {name}: {e:#}");
                        slot.last_error = Some(format!("{e:#}"));
                        continue;
                    }
                },
            };
            slot.doc = crate::gateway::status_doc(
                load,
                &key,
                Some(&plan),
                &running.bound,
                &running.bound_udp,
                None,
            );
            slot.running = Some(running);
            slot.plan_drain = plan.drain_timeout;
            slot.generation = Some(generation);
            slot.last_error = mapping_error;
        }
        Ok(())
    }

    fn dns_to(&mut self, load: &store::Load) {
        if let Some(d) = &mut self.dns {
            let v = crate::dns::views_of(&load.snapshot, &d.cfg, None);
            d.views = crate::dns::status_of(&v);
            d.running.update(v);
            d.generation = self.generation;
            d.last_error = None;
            eprintln!(
                "dns: reloaded: {} views",
                d.views["views"].as_array().map_or(0, Vec::len)
            );
        }
    }

    /// Starts one loop per sync target on the latest manifests.
    fn start_sync(&mut self, first: &Arc<store::Load>) {
        if self.cfg.sync.is_empty() {
            return;
        }
        let (tx, rx) = tokio::sync::watch::channel(first.clone());
        for (name, target) in &self.cfg.sync {
            let (name, target, rx) = (name.clone(), target.clone(), rx.clone());
            let status = self.sync_status.clone();
            let provider = target.provider.clone().unwrap_or_default();
            status.lock().unwrap_or_else(|p| p.into_inner()).insert(
                name.clone(),
                serde_json::json!({"provider": provider, "lastRun": null}),
            );
            tokio::spawn(async move {
                let report = |r: crate::sync::Report| {
                    r.log(Some(&name));
                    status
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name.clone(), r.doc(&provider));
                };
                if let Err(e) = crate::sync::keep(target, rx, report).await {
                    eprintln!("sync {name}: stopped: {e:#}");
                }
            });
        }
        self.sync_latest = Some(tx);
    }

    /// A change was read cleanly: every component to its new plan.
    async fn applied(&mut self, load: &Arc<store::Load>) -> anyhow::Result<()> {
        self.generation += 1;
        self.manifests_error = None;
        if self.flows.is_some() {
            self.pods.update(&load.snapshot);
        }
        self.gateways_to(load, false).await?;
        self.dns_to(load);
        if let Some(h) = &mut self.health {
            h.set(&load.snapshot);
        }
        if let Some(tx) = &self.sync_latest {
            let _ = tx.send(load.clone());
        }
        Ok(())
    }

    /// A change did not read cleanly: every component stays on its last good plan and says why.
    fn rejected(&mut self, errors: &[model::Diagnostic]) {
        self.generation += 1;
        let text = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for e in errors {
            eprintln!("manifests: change rejected, every component keeps its last good plan: {e}");
        }
        let why = format!("manifest generation {} rejected: {text}", self.generation);
        for g in self.gateways.values_mut() {
            g.last_error = Some(why.clone());
        }
        if let Some(d) = &mut self.dns {
            d.last_error = Some(why.clone());
        }
        self.manifests_error = Some(text);
    }

    /// SIGHUP: the config file again. Applied: the log level and drain timeouts; anything
    /// else that changed is listed as waiting for a restart.
    fn reload_config(&mut self, args: &Args) {
        let next = match effective(args) {
            Ok(mut c) => {
                if let Some(f) = self.log_format {
                    c.log.format = f;
                }
                c
            }
            Err(e) => {
                eprintln!("config: reload rejected, keeping the running config: {e:#}");
                self.config_error = Some(format!("{e:#}"));
                return;
            }
        };
        let (old, new) = (
            serde_json::to_value(&self.cfg).unwrap_or_default(),
            serde_json::to_value(&next).unwrap_or_default(),
        );
        let mut changed = Vec::new();
        changed_keys(&old, &new, "", &mut changed);
        let (applied, later): (Vec<String>, Vec<String>) =
            changed.into_iter().partition(|k| applies_in_place(k));
        if applied.iter().any(|k| k == "log.level") {
            match self.logging.set(&next.log.level) {
                Ok(true) => {}
                Ok(false) => {
                    eprintln!("config: log.level not applied: RUST_LOG or TRELLIS_LOG is set")
                }
                Err(e) => eprintln!("config: {e:#}"),
            }
        }
        let mut cfg = next;
        // What needs a restart keeps its running value, so that /status and the next
        // SIGHUP compare against what runs.
        if !later.is_empty() {
            let mut running = self.cfg.clone();
            running.log.level = cfg.log.level.clone();
            running.gateway.drain_timeout = cfg.gateway.drain_timeout.clone();
            for (name, g) in &cfg.gateways {
                if let Some(r) = running.gateways.get_mut(name) {
                    r.drain_timeout = g.drain_timeout.clone();
                }
            }
            cfg = running;
        }
        self.cfg = cfg;
        self.config_error = None;
        // Compared against what runs: a change taken back before a restart needs none.
        self.restart_needed = later.clone();
        eprintln!(
            "config: reloaded{}: applied [{}]; needs a restart [{}]",
            self.config_file
                .as_ref()
                .map(|p| format!(" {}", p.display()))
                .unwrap_or_default(),
            applied.join(", "),
            later.join(", ")
        );
    }

    fn ready(&self) -> bool {
        self.gateways.values().all(|g| g.running.is_some())
    }

    /// The `/status` document: per component its last good generation, last error and
    /// listeners or addresses.
    fn publish(&self) {
        let gateways: serde_json::Map<String, serde_json::Value> = self
            .gateways
            .iter()
            .map(|(name, g)| {
                let mut doc = g.doc.clone();
                if !doc.is_object() {
                    doc = serde_json::json!({"gateway": name});
                }
                doc["started"] = g.running.is_some().into();
                doc["generation"] = g.generation.into();
                doc["lastError"] = g.last_error.clone().into();
                doc["drainTimeoutSeconds"] = self
                    .cfg
                    .drain_override(&g.key)
                    .unwrap_or(g.plan_drain)
                    .as_secs_f64()
                    .into();
                (name.clone(), doc)
            })
            .collect();
        let dns = self.dns.as_ref().map(|d| {
            serde_json::json!({
                "started": true,
                "generation": d.generation,
                "lastError": d.last_error,
                "addresses": {"udp": d.running.udp.to_string(), "tcp": d.running.tcp.to_string()},
                "zone": d.cfg.domain,
                "views": d.views["views"],
                "clusterNames": d.views["clusterNames"],
                "rewrites": d.views["rewrites"],
            })
        });
        let observe = self.flows.as_ref().map(|_| {
            serde_json::json!({
                "started": true,
                "addresses": {
                    "observer": self.flows_bound.observer.map(|a| a.to_string()),
                    "ui": self.flows_bound.ui.map(|a| a.to_string()),
                },
            })
        });
        self.status.store(Arc::new(serde_json::json!({
            "ready": self.ready(),
            "manifests": {
                "paths": self.cfg.manifests,
                "generation": self.generation,
                "lastError": self.manifests_error,
            },
            "config": {
                "file": self.config_file,
                "lastError": self.config_error,
                "restartNeeded": self.restart_needed,
            },
            "components": {
                "gateways": gateways,
                "dns": dns,
                "observe": observe,
                "sync": (!self.cfg.sync.is_empty()).then(|| {
                    serde_json::Value::Object(
                        self.sync_status
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    )
                }),
                "health": self.health.as_ref().map(|h| {
                    let mut doc = h.status();
                    doc["started"] = true.into();
                    doc["generation"] = self.generation.into();
                    doc
                }),
            },
        })));
    }

    /// SIGTERM: every Gateway drains within its timeout while DNS answers for its lameduck.
    async fn shut_down(self) {
        let lameduck = self
            .cfg
            .dns
            .as_ref()
            .and_then(|d| d.lameduck().ok())
            .unwrap_or_default();
        let mut drains = tokio::task::JoinSet::new();
        for (name, g) in self.gateways {
            if let Some(r) = g.running {
                let timeout = self.cfg.drain_override(&g.key).unwrap_or(g.plan_drain);
                drains.spawn(async move { crate::gateway::drain_gateway(&name, r, timeout).await });
            }
        }
        if self.dns.is_some() && !lameduck.is_zero() {
            drains.spawn(async move {
                eprintln!("dns: lameduck: answering for {lameduck:?} more");
                tokio::time::sleep(lameduck).await;
                true
            });
        }
        let mut clean = true;
        while let Some(r) = drains.join_next().await {
            clean &= r.unwrap_or(false);
        }
        // DNS stops with the runtime.
        eprintln!(
            "stopped{}",
            if clean {
                ""
            } else {
                " (some connections cut at their drain timeout)"
            }
        );
    }
}

pub fn run(args: &Args, log_format: Option<LogFormat>) -> anyhow::Result<ExitCode> {
    let mut cfg = effective(args)?;
    // The flag (or TRELLIS_LOG_FORMAT) wins over the file, in what runs and what is printed.
    if let Some(f) = log_format {
        cfg.log.format = f;
    }
    if args.print_config {
        print!("{}", serde_saphyr::to_string(&cfg)?);
        return Ok(ExitCode::SUCCESS);
    }
    let logging = crate::logging::init(cfg.log.format, &cfg.log.level);
    let opts = cfg.source().options()?;
    let watch = Watch::start(cfg.manifests.clone(), opts).context("cannot watch the manifests")?;
    let first = watch.current();
    crate::report_errors(&first.snapshot);
    crate::gateway::runtime()?.block_on(async move {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(gateway::metrics::Metrics::default());
        metrics.register(&mut registry);
        let dns_metrics = Arc::new(dns::metrics::Metrics::default());
        if cfg.dns.is_some() {
            dns_metrics.register(&mut registry);
        }
        let health = cfg
            .health
            .as_ref()
            .map(|p| crate::health::Prober::start(p, &mut registry, false));
        let api = health.as_ref().map(|h| h.statuses.handler());
        let (flows, flows_bound) =
            match crate::observe::start(&cfg.observe, &mut registry, api.clone()).await? {
                Some((o, b)) => (Some(o), b),
                None => (None, crate::observe::Bound::default()),
            };
        let pods = Arc::new(crate::observe::Pods::default());
        if flows.is_some() {
            pods.update(&first.snapshot);
        }
        let status = Arc::new(ArcSwap::from_pointee(serde_json::json!({"ready": false})));
        let registry = Arc::new(registry);
        if let Some(addr) = cfg.admin {
            let a = gateway::admin::start(addr, registry.clone(), status.clone(), api)
                .await
                .with_context(|| format!("cannot bind the admin address {addr}"))?;
            eprintln!(
                "admin on http://{a} (/healthz /ready /status /metrics{})",
                if health.is_some() {
                    " /api/v1/endpoints/statuses"
                } else {
                    ""
                }
            );
        }
        let mut up = Up {
            access_log: cfg.gateway.access_log.start(),
            cfg,
            config_file: args.config.clone(),
            config_error: None,
            restart_needed: Vec::new(),
            logging,
            log_format,
            generation: 1,
            manifests_error: None,
            gateways: BTreeMap::new(),
            dns: None,
            metrics,
            flows,
            flows_bound,
            pods,
            health,
            sync_latest: None,
            sync_status: Arc::default(),
            status,
        };
        up.start_sync(&first);
        if let Some(h) = &mut up.health {
            h.set(&first.snapshot);
        }
        for name in up.cfg.gateways.keys() {
            if !first
                .snapshot
                .gateways
                .keys()
                .any(|(ns, n)| &format!("{ns}/{n}") == name)
            {
                eprintln!(
                    "warning: gateways.{name} in the config names no Gateway of the manifests"
                );
            }
        }
        up.gateways_to(&first, true).await?;
        if let Some(serve) = up.cfg.dns.clone() {
            let zone = serve.zone_config();
            let v = crate::dns::views_of(&first.snapshot, &zone, None);
            let views = crate::dns::status_of(&v);
            let observer = up
                .flows
                .as_ref()
                .map(|o| crate::observe::dns_observer(o.flows(), up.pods.clone()));
            let running = serve.start(v, &dns_metrics, observer, None).await?;
            up.dns = Some(DnsSlot {
                running,
                cfg: zone,
                generation: 1,
                last_error: None,
                views,
            });
        }
        up.publish();
        if up.ready() {
            eprintln!(
                "ready: {} gateways, dns {}",
                up.gateways.len(),
                if up.dns.is_some() { "on" } else { "off" }
            );
        }
        let mut rx = crate::forward_updates(watch);
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        // Probe results arrive on their own schedule: /status takes them in at this pace.
        let mut refresh = tokio::time::interval(STATUS_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let was_ready = up.ready();
            tokio::select! {
                _ = refresh.tick(), if up.health.is_some() || up.sync_latest.is_some() => {}
                u = rx.recv() => match u {
                    Some(Update::Applied(load)) => {
                        let span = tracing::info_span!("reconcile", generation = up.generation + 1);
                        up.applied(&load).instrument(span).await?
                    }
                    Some(Update::Rejected { errors, .. }) => up.rejected(&errors),
                    None => anyhow::bail!("the manifest watcher stopped"),
                },
                _ = hup.recv() => up.reload_config(args),
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
            up.publish();
            if up.ready() && !was_ready {
                eprintln!(
                    "ready: {} gateways, dns {}",
                    up.gateways.len(),
                    if up.dns.is_some() { "on" } else { "off" }
                );
            }
        }
        let mut doc = (**up.status.load()).clone();
        doc["ready"] = false.into();
        up.status.store(Arc::new(doc));
        up.shut_down().await;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::parse("").expect("parses"), Config::default());
        assert_eq!(
            Config::parse("# nothing\n").expect("parses"),
            Config::default()
        );
    }

    #[test]
    fn keys_override_defaults_and_leave_the_rest() {
        let c = Config::parse(
            "admin: null\ngateways:\n  network/envoy-internal: {bind: 127.0.0.1, ports: {80: 18080, 443: 18443}}\ndns: {listen: '127.0.0.1:15353'}\n",
        )
        .expect("parses");
        assert_eq!(c.admin, None);
        let g = &c.gateways["network/envoy-internal"];
        assert_eq!(g.ports, BTreeMap::from([(80, 18080), (443, 18443)]));
        assert!(g.serve);
        let dns = c.dns.expect("dns on");
        assert_eq!(dns.listen.port(), 15353);
        assert_eq!(dns.domain, "cluster.local");
        assert_eq!(c.state_dir, PathBuf::from(STATE_DIR_DEFAULT));
    }

    #[test]
    fn sync_and_health_entries_are_checked_by_key() {
        let c = Config::parse(
            "manifests: [x]\nhealth: {concurrency: 0}\nsync:\n  a: {policy: all}\n  b: {provider: rfc2136, interval: soon}\n  c: {provider: webhook}\n",
        )
        .expect("parses");
        let problems = c.check();
        for want in [
            "health.concurrency: 0 is outside",
            "sync.a.provider: required",
            "sync.a.policy \"all\"",
            "sync.b.rfc2136Zone: required",
            "sync.b.interval: \"soon\"",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{want:?} not in {problems:#?}"
            );
        }
        assert!(
            !problems.iter().any(|p| p.starts_with("sync.c")),
            "{problems:#?}"
        );
        let e =
            Config::parse("sync:\n  a: {webhookToken: x}\n").expect_err("no secrets in the file");
        assert!(e.contains("unknown field `webhookToken`"), "{e}");
    }

    #[test]
    fn unknown_and_mistyped_keys_name_their_place() {
        let e = Config::parse("dns:\n  listne: 1\n").expect_err("unknown key");
        assert!(
            e.starts_with("2:3: dns") && e.contains("unknown field `listne`"),
            "{e}"
        );
        let e = Config::parse("gateways:\n  a/b:\n    ports: {80: http}\n").expect_err("bad port");
        assert!(
            e.starts_with("3:") && e.contains("gateways.a/b.ports"),
            "{e}"
        );
        let e = Config::parse("a: 1\n---\nb: 2\n").expect_err("two documents");
        assert!(e.contains("one YAML document expected"), "{e}");
    }

    #[test]
    fn check_reports_every_problem() {
        let c = Config::parse(
            "gateway: {drainTimeout: soon}\ngateways: {nonamespace: {}}\ndns: {lameduck: x}\nlog: {level: 'a=b=c'}\n",
        )
        .expect("parses");
        let p = c.check();
        let keys: Vec<&str> = p
            .iter()
            .map(|l| l.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(
            keys,
            [
                "manifests",
                "log.level",
                "gateways.nonamespace",
                "dns.lameduck",
                "gateway.drainTimeout"
            ],
            "{p:#?}"
        );
    }

    #[test]
    fn printed_config_reads_back_the_same() {
        let mut c = Config {
            manifests: vec![PathBuf::from("/srv/home-lab")],
            ..Config::default()
        };
        c.gateways.insert(
            "network/envoy-internal".into(),
            GatewayConfig {
                ports: BTreeMap::from([(80, 18080)]),
                drain_timeout: Some("5s".into()),
                ..GatewayConfig::default()
            },
        );
        let text = serde_saphyr::to_string(&c).expect("prints");
        assert_eq!(Config::parse(&text).expect("reads back"), c, "{text}");
    }

    #[test]
    fn sighup_applies_levels_and_drain_timeouts_only() {
        let a = Config::default();
        let mut b = a.clone();
        b.log.level = "debug".into();
        b.gateway.drain_timeout = Some("5s".into());
        b.dns.as_mut().expect("dns").listen = "127.0.0.1:15353".parse().expect("addr");
        let mut changed = Vec::new();
        changed_keys(
            &serde_json::to_value(&a).expect("json"),
            &serde_json::to_value(&b).expect("json"),
            "",
            &mut changed,
        );
        assert_eq!(changed, ["dns.listen", "gateway.drainTimeout", "log.level"]);
        let later: Vec<&String> = changed.iter().filter(|k| !applies_in_place(k)).collect();
        assert_eq!(later, ["dns.listen"]);
    }
}
