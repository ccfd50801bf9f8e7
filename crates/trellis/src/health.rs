//! `trellis health`: probe the endpoints the manifests declare (Gatus's semantics, see the
//! `health` crate), print the results and, with `--listen`, serve them on `/metrics` under
//! Gatus's metric names. `--once` probes each endpoint one time and exits 0 when every one
//! passed, 1 otherwise (an endpoint that could not be made, e.g. for a condition that does
//! not parse, counts as failed). Without it, probing goes on and follows changes of the
//! manifests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use health::probe::{Probed, Tls};
use health::{Discovery, Endpoint};
use store::watch::Update;

use crate::SourceArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Probe every endpoint once, print the results, exit 0 if all passed and 1 otherwise.
    #[arg(long)]
    pub once: bool,
    /// Serve /metrics (gatus_results_endpoint_success and the rest of Gatus's metrics),
    /// Gatus's API (/api/v1/endpoints/statuses), /status and /ready on this address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub probing: Probing,
}

/// How endpoints are found and probed: the flags of `trellis health` and the `health:`
/// section of `trellis up`'s config (same names, camelCase there).
#[derive(Clone, Debug, PartialEq, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Probing {
    /// Probes in flight at once.
    #[arg(long, default_value_t = health::run::CONCURRENCY_DEFAULT)]
    pub concurrency: usize,
    /// Make an endpoint of every Service, not only annotated ones (gatus-sidecar's
    /// --auto-service).
    #[arg(long)]
    pub auto_service: bool,
    /// Make endpoints only of annotated HTTPRoutes (without gatus-sidecar's
    /// --auto-httproute, which the corpus uses).
    #[arg(long)]
    pub annotated_routes_only: bool,
    /// The cluster domain of Service endpoints' names.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// CA certificates (PEM) that https, tls and starttls probes trust.
    #[arg(long, default_value = httpkit::CA_BUNDLE)]
    pub ca_bundle: PathBuf,
}

impl Default for Probing {
    fn default() -> Probing {
        Probing {
            concurrency: health::run::CONCURRENCY_DEFAULT,
            auto_service: false,
            annotated_routes_only: false,
            cluster_domain: "cluster.local".to_string(),
            ca_bundle: PathBuf::from(httpkit::CA_BUNDLE),
        }
    }
}

impl Probing {
    fn discovery(&self) -> Discovery {
        Discovery {
            auto_httproute: !self.annotated_routes_only,
            auto_service: self.auto_service,
            cluster_domain: self.cluster_domain.clone(),
            ..Discovery::default()
        }
    }

    /// The problems of these settings, each naming its key under `at`.
    pub fn check(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.concurrency == 0 || self.concurrency > health::run::CONCURRENCY_MAX {
            out.push(format!(
                "{at}.concurrency: {} is outside 1..={}",
                self.concurrency,
                health::run::CONCURRENCY_MAX
            ));
        }
        out
    }
}

/// Probing that goes on: the schedule, Gatus's metrics and the results kept for its API.
pub struct Prober {
    schedule: health::run::Schedule,
    metrics: health::metrics::Metrics,
    discovery: Discovery,
    pub statuses: Arc<health::status::Statuses>,
    /// Why endpoints of the last snapshot could not be made (each also logged).
    pub problems: Vec<String>,
}

impl Prober {
    /// Starts probing nothing yet (see [`Prober::set`]); Gatus's metrics join `registry`
    /// under the `gatus` prefix. `print`: a line per result on stdout.
    pub fn start(
        p: &Probing,
        registry: &mut prometheus_client::registry::Registry,
        print: bool,
    ) -> Prober {
        let metrics = health::metrics::Metrics::default();
        metrics.register(registry.sub_registry_with_prefix("gatus"));
        let statuses = Arc::new(health::status::Statuses::default());
        let (m, kept) = (metrics.clone(), statuses.clone());
        let on_result: health::run::OnResult = Arc::new(move |e: &Endpoint, p: &Probed| {
            m.publish(e, p);
            kept.record(e, p, std::time::SystemTime::now());
            if print {
                println!("{}", line(e, p));
            }
        });
        let tls = Tls::with_roots(&p.ca_bundle);
        Prober {
            schedule: health::run::Schedule::new(tls, p.concurrency, on_result),
            metrics,
            discovery: p.discovery(),
            statuses,
            problems: Vec::new(),
        }
    }

    /// Probes the endpoints `s` declares: those gone or changed stop being reported, the rest
    /// keep probing and keep their series and results.
    pub fn set(&mut self, s: &model::Snapshot) {
        let (endpoints, problems) = endpoints_of(s, &self.discovery);
        for e in self.schedule.set(endpoints) {
            self.metrics.forget(&e);
            self.statuses.forget(&e);
        }
        self.problems = problems;
        eprintln!("health: probing {} endpoints", self.schedule.len());
    }

    /// What `/status` shows: endpoints probed, how many passed their last probe, problems.
    pub fn status(&self) -> serde_json::Value {
        let (reported, healthy) = self.statuses.counts();
        serde_json::json!({
            "endpoints": self.schedule.len(),
            "reported": reported,
            "healthy": healthy,
            "problems": self.problems,
        })
    }
}

/// The endpoints of a snapshot, and why others could not be made (each on stderr).
fn endpoints_of(s: &model::Snapshot, d: &Discovery) -> (Vec<Endpoint>, Vec<String>) {
    let found = health::endpoints(s, d);
    let problems: Vec<String> = found.problems.iter().map(ToString::to_string).collect();
    for p in &problems {
        eprintln!("{p}");
    }
    (found.endpoints, problems)
}

/// One result as a line: verdict, endpoint, what was found, and why it failed.
fn line(e: &Endpoint, p: &Probed) -> String {
    let mut out = format!(
        "{} {} {} {}",
        if p.success { "ok  " } else { "FAIL" },
        e.display_name(),
        e.kind.as_str(),
        e.url
    );
    if p.outcome.status != 0 {
        out.push_str(&format!(" status={}", p.outcome.status));
    }
    if !p.outcome.dns_rcode.is_empty() {
        out.push_str(&format!(" rcode={}", p.outcome.dns_rcode));
    }
    out.push_str(&format!(" {}ms", p.outcome.duration.as_millis()));
    for v in p.verdicts.iter().filter(|v| !v.success) {
        out.push_str(&format!("\n       condition: {}", v.shown));
    }
    for err in &p.outcome.errors {
        out.push_str(&format!("\n       error: {err}"));
    }
    out
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let problems = args.probing.check("--");
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    if args.once {
        let load = args.source.load()?;
        crate::report_errors(&load.snapshot);
        if load.snapshot.has_errors() {
            return Ok(ExitCode::from(2));
        }
        let (endpoints, problems) = endpoints_of(&load.snapshot, &args.probing.discovery());
        let tls = Tls::with_roots(&args.probing.ca_bundle);
        return crate::gateway::runtime()?.block_on(async move {
            let results = health::run::once(&endpoints, &tls, args.probing.concurrency).await;
            // An endpoint that could not be made did not pass either.
            let mut all = problems.is_empty();
            for (e, p) in endpoints.iter().zip(&results) {
                println!("{}", line(e, p));
                all &= p.success;
            }
            eprintln!(
                "{} of {} endpoints healthy",
                results.iter().filter(|p| p.success).count(),
                results.len()
            );
            Ok(if all {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        });
    }

    let watch = args.source.watch()?;
    let first = watch.current();
    crate::report_errors(&first.snapshot);
    crate::gateway::runtime()?.block_on(async move {
        let mut registry = prometheus_client::registry::Registry::default();
        watch.register_metrics(&mut registry);
        let mut prober = Prober::start(&args.probing, &mut registry, true);
        let status = Arc::new(arc_swap::ArcSwap::from_pointee(serde_json::Value::Null));
        if let Some(addr) = args.listen {
            let a = gateway::admin::start(
                addr,
                Arc::new(registry),
                status.clone(),
                Some(prober.statuses.handler()),
            )
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
            eprintln!(
                "Gatus's API on http://{a}/api/v1/endpoints/statuses, metrics on http://{a}/metrics"
            );
        }
        prober.set(&first.snapshot);
        status.store(Arc::new(prober.status()));
        let mut rx = crate::forward_updates(watch);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                u = rx.recv() => match u {
                    Some(Update::Applied(load)) => prober.set(&load.snapshot),
                    Some(Update::Rejected { errors, .. }) => {
                        for e in &errors {
                            eprintln!("reload rejected, still probing the previous endpoints: {e}");
                        }
                    }
                    None => anyhow::bail!("the manifest watcher stopped"),
                },
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
            status.store(Arc::new(prober.status()));
        }
        Ok(ExitCode::SUCCESS)
    })
}
