//! `trellis dns`: serve the cluster zone and the views of the manifests, forward the rest,
//! reload on change.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use store::watch::Update;

use crate::SourceArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub serve: Serve,
    /// Admin endpoint: /health, /ready, /status, /metrics (CoreDNS's metric names).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    #[command(flatten)]
    pub observe: crate::observe::ServeArgs,
    /// Also serve these zones from a record set that a sync provider writes (the `trellis`
    /// provider), in every view (repeatable).
    #[arg(long = "dynamic-zone")]
    pub dynamic_zones: Vec<String>,
    /// Serve ExternalDNS's webhook provider API for the dynamic zones on this address, so
    /// ExternalDNS (or `trellis sync --provider webhook`) can write them.
    #[arg(long, requires = "dynamic_zones")]
    pub webhook_listen: Option<SocketAddr>,
    /// A file holding the bearer token the webhook API requires (else
    /// `$TRELLIS_WEBHOOK_TOKEN`). Without a token the API is served on loopback only.
    #[arg(long, requires = "webhook_listen")]
    pub webhook_token_file: Option<std::path::PathBuf>,
    /// toFQDNs network policy: before an answer with addresses goes to a pod, tell the agent
    /// of the pod's node (its socket `DIR/<node>.sock`), which makes the addresses reachable
    /// for that pod first.
    #[arg(long, value_name = "DIR")]
    pub policy_agents: Option<std::path::PathBuf>,
}

const LISTEN_DEFAULT: &str = "127.0.0.1:5353";
const DOMAIN_DEFAULT: &str = "cluster.local";
const TTL_DEFAULT: u32 = 30;
const SERVE_STALE_DEFAULT: &str = "24h";
const LAMEDUCK_DEFAULT: &str = "0s";

/// How DNS is served: the flags of `trellis dns` and the `dns:` section of `trellis up`'s
/// config (same names, camelCase there), with the defaults in one place.
#[derive(Clone, Debug, PartialEq, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Serve {
    /// UDP and TCP address to answer on.
    #[arg(long, default_value = LISTEN_DEFAULT)]
    pub listen: SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = DOMAIN_DEFAULT)]
    pub domain: String,
    /// TTL of the zone's records, in seconds.
    #[arg(long, default_value_t = TTL_DEFAULT)]
    pub ttl: u32,
    /// Forward names outside every zone to these servers (ADDR or ADDR:PORT, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub forward: Vec<String>,
    /// Forward to the nameservers of this resolv.conf (as CoreDNS's `forward . /etc/resolv.conf`).
    #[arg(long)]
    pub forward_resolv_conf: Option<std::path::PathBuf>,
    /// Serve a forwarded answer this long past its TTL when no upstream answers (RFC 8767,
    /// CoreDNS cache's `serve_stale`); 0s turns it off.
    #[arg(long, default_value = SERVE_STALE_DEFAULT)]
    pub serve_stale: String,
    /// Log every query on stdout (CoreDNS's `log` plugin).
    #[arg(long)]
    pub query_log: bool,
    /// After SIGTERM, keep answering this long before exiting (CoreDNS's health `lameduck`).
    #[arg(long, default_value = LAMEDUCK_DEFAULT)]
    pub lameduck: String,
}

impl Default for Serve {
    fn default() -> Serve {
        Serve {
            listen: LISTEN_DEFAULT
                .parse()
                .expect("the default listen address is an address"),
            domain: DOMAIN_DEFAULT.to_string(),
            ttl: TTL_DEFAULT,
            forward: Vec::new(),
            forward_resolv_conf: None,
            serve_stale: SERVE_STALE_DEFAULT.to_string(),
            query_log: false,
            lameduck: LAMEDUCK_DEFAULT.to_string(),
        }
    }
}

impl Serve {
    pub fn zone_config(&self) -> dns::ZoneConfig {
        dns::ZoneConfig {
            domain: self.domain.clone(),
            ttl: self.ttl,
        }
    }

    pub fn lameduck(&self) -> anyhow::Result<std::time::Duration> {
        model::validate::parse_duration(&self.lameduck)
            .map_err(|e| anyhow::anyhow!("lameduck {:?}: {e}", self.lameduck))
    }

    /// The forwarder for names outside every zone, counted in `metrics`; `None` without
    /// upstreams.
    pub fn forwarder(
        &self,
        metrics: &Arc<dns::metrics::Metrics>,
    ) -> anyhow::Result<Option<Arc<dns::forward::Forwarder>>> {
        let mut upstreams = Vec::new();
        for f in &self.forward {
            let addr = f.parse::<SocketAddr>().or_else(|_| {
                f.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            upstreams.push(addr.map_err(|_| {
                anyhow::anyhow!(
                    "forward {f:?}: write an address, e.g. 192.168.1.1 or 127.0.0.1:5301"
                )
            })?);
        }
        if let Some(p) = &self.forward_resolv_conf {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            upstreams.extend(dns::forward::parse_resolv_conf(&text));
        }
        if upstreams.is_empty() {
            return Ok(None);
        }
        let stale = model::validate::parse_duration(&self.serve_stale)
            .map_err(|e| anyhow::anyhow!("serve-stale {:?}: {e}", self.serve_stale))?;
        Ok(Some(Arc::new(
            dns::forward::Forwarder::new(upstreams, Some(self.listen))?
                .with_stale_max(stale)
                .with_metrics(metrics.clone()),
        )))
    }

    /// Binds the UDP and TCP listeners and starts answering from `views`; says where.
    pub async fn start(
        &self,
        views: dns::Views,
        metrics: &Arc<dns::metrics::Metrics>,
        observer: Option<dns::record::Observer>,
        gate: Option<dns::server::GateRef>,
    ) -> anyhow::Result<dns::server::Running> {
        let fwd = self.forwarder(metrics)?;
        let ops = dns::server::Ops {
            metrics: Some(metrics.clone()),
            query_log: self.query_log,
            observer,
            tcp_connections_max: None,
            gate,
        };
        let running = dns::server::start_with(self.listen, views, fwd, ops)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (ports below 1024 need root; try 127.0.0.1:5353)",
                    self.listen
                )
            })?;
        eprintln!("dns: zone {} on udp/tcp {}", self.domain, running.udp);
        Ok(running)
    }
}

/// The views of a snapshot, with the dynamic records merged in.
pub fn views_of(
    s: &model::Snapshot,
    cfg: &dns::ZoneConfig,
    dynamic: Option<&dns::sync::dynamic::Dynamic>,
) -> dns::Views {
    let mut v = dns::compile_views(s, cfg);
    if let Some(d) = dynamic {
        d.merge_into(&mut v);
    }
    v
}

pub fn status_of(v: &dns::Views) -> serde_json::Value {
    serde_json::json!({
        "views": v.views.iter().map(|x| x.name.clone()).collect::<Vec<_>>(),
        "clusterNames": v.default.names.len(),
        "rewrites": v.rewrites.len(),
    })
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let cfg = args.serve.zone_config();
    let lameduck = args.serve.lameduck()?;
    let watch = args.source.watch()?;
    let first = watch.current();
    crate::report_errors(&first.snapshot);
    let dynamic = (!args.dynamic_zones.is_empty())
        .then(|| Arc::new(dns::sync::dynamic::Dynamic::new(&args.dynamic_zones)));
    let views = views_of(&first.snapshot, &cfg, dynamic.as_deref());
    let metrics = Arc::new(dns::metrics::Metrics::default());
    let status = Arc::new(ArcSwap::from_pointee(status_of(&views)));
    crate::gateway::runtime()?.block_on(async move {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        watch.register_metrics(&mut registry);
        let webhook_counters = dns::sync::http::ServerCounters::default();
        webhook_counters.register(registry.sub_registry_with_prefix("trellis_dns_webhook"));
        // Flows: one per query, when --observe-listen is set.
        let flows = crate::observe::start(&args.observe, &mut registry, None)
            .await?
            .map(|(o, _)| o);
        let pods = Arc::new(crate::observe::Pods::default());
        let observer = flows.as_ref().map(|o| {
            pods.update(&first.snapshot);
            crate::observe::dns_observer(o.flows(), pods.clone())
        });
        let gate = args.policy_agents.clone().map(|dir| {
            let g = Arc::new(crate::fqdn::Gate::new(dir));
            g.update(&first.snapshot);
            g
        });
        let running = args
            .serve
            .start(
                views,
                &metrics,
                observer,
                gate.clone()
                    .map(|g| dns::server::GateRef(g as Arc<dyn dns::server::Gate>)),
            )
            .await?;
        if let Some(addr) = args.admin {
            let a = gateway::admin::start(addr, Arc::new(registry), status.clone(), None)
                .await
                .with_context(|| format!("cannot bind the admin address {addr}"))?;
            eprintln!("admin on http://{a} (/health /ready /status /metrics)");
        }
        let _webhook = match (&args.webhook_listen, &dynamic) {
            (Some(addr), Some(d)) => {
                let token = crate::secret::read(
                    args.webhook_token_file.as_deref(),
                    "TRELLIS_WEBHOOK_TOKEN",
                )?;
                anyhow::ensure!(
                    token.is_some() || addr.ip().is_loopback(),
                    "--webhook-listen {addr} is reachable from other hosts: give the webhook API \
                     a bearer token (--webhook-token-file FILE or $TRELLIS_WEBHOOK_TOKEN), or \
                     listen on 127.0.0.1"
                );
                let access = token
                    .as_deref()
                    .map(dns::sync::webhook::Access::token)
                    .unwrap_or_default();
                let served =
                    dns::sync::webhook::serve_counted(*addr, d.clone(), access, webhook_counters)
                        .await
                        .with_context(|| format!("cannot bind the webhook address {addr}"))?;
                eprintln!("webhook provider on http://{}", served.addr);
                Some(served)
            }
            _ => None,
        };
        let mut dynamic_changes = dynamic.as_ref().map(|d| d.subscribe());
        let mut last = first.clone();
        let mut rx = crate::forward_updates(watch);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                u = rx.recv() => match u {
                    Some(Update::Applied(load)) => {
                        let v = views_of(&load.snapshot, &cfg, dynamic.as_deref());
                        last = load.clone();
                        if flows.is_some() {
                            pods.update(&load.snapshot);
                        }
                        if let Some(g) = &gate {
                            g.update(&load.snapshot);
                        }
                        eprintln!("reloaded: {} views", v.views.len());
                        status.store(Arc::new(status_of(&v)));
                        running.update(v);
                    }
                    Some(Update::Rejected { errors, .. }) => {
                        for e in &errors {
                            eprintln!("reload rejected, still serving the previous zone: {e}");
                        }
                    }
                    None => anyhow::bail!("the manifest watcher stopped"),
                },
                Some(Ok(())) = async {
                    match dynamic_changes.as_mut() {
                        Some(c) => Some(c.changed().await),
                        None => std::future::pending().await,
                    }
                } => {
                    running.update(views_of(&last.snapshot, &cfg, dynamic.as_deref()));
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
        }
        if !lameduck.is_zero() {
            eprintln!("lameduck: answering for {lameduck:?} more");
            tokio::time::sleep(lameduck).await;
        }
        Ok(ExitCode::SUCCESS)
    })
}
