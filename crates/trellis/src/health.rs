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
use bytes::Bytes;
use health::probe::{Probed, Tls};
use health::{Discovery, Endpoint};
use store::watch::{Update, Watch};

use crate::SourceArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Probe every endpoint once, print the results, exit 0 if all passed and 1 otherwise.
    #[arg(long)]
    pub once: bool,
    /// Serve /metrics (gatus_results_endpoint_success and the rest of Gatus's metrics) on
    /// this address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
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

fn discovery(args: &Args) -> Discovery {
    Discovery {
        auto_httproute: !args.annotated_routes_only,
        auto_service: args.auto_service,
        cluster_domain: args.cluster_domain.clone(),
        ..Discovery::default()
    }
}

/// The endpoints of a snapshot, and how many could not be made (each on stderr).
fn endpoints_of(s: &model::Snapshot, d: &Discovery) -> (Vec<Endpoint>, usize) {
    let found = health::endpoints(s, d);
    for p in &found.problems {
        eprintln!("{p}");
    }
    (found.endpoints, found.problems.len())
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
    let opts = args.source.options()?;
    let d = discovery(args);
    let tls = Tls::with_roots(&args.ca_bundle);
    if args.once {
        let load = store::load(&args.source.paths, &opts);
        crate::report_errors(&load.snapshot);
        if load.snapshot.has_errors() {
            return Ok(ExitCode::from(2));
        }
        let (endpoints, problems) = endpoints_of(&load.snapshot, &d);
        return crate::gateway::runtime()?.block_on(async move {
            let results = health::run::once(&endpoints, &tls, args.concurrency).await;
            // An endpoint that could not be made did not pass either.
            let mut all = problems == 0;
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

    let watch =
        Watch::start(args.source.paths.clone(), opts).context("cannot watch the manifests")?;
    let first = watch.current();
    crate::report_errors(&first.snapshot);
    crate::gateway::runtime()?.block_on(async move {
        let metrics = health::metrics::Metrics::default();
        let mut registry = prometheus_client::registry::Registry::with_prefix("gatus");
        metrics.register(&mut registry);
        let registry = Arc::new(registry);
        let _server = match args.listen {
            Some(addr) => {
                let registry = registry.clone();
                let handler: httpkit::Handler = Arc::new(move |req: http::Request<Bytes>| {
                    let registry = registry.clone();
                    Box::pin(async move {
                        if req.uri().path() != "/metrics" {
                            return httpkit::respond(404, "text/plain", "not found\n");
                        }
                        let mut text = String::new();
                        match prometheus_client::encoding::text::encode(&mut text, &registry) {
                            Ok(()) => httpkit::respond(
                                200,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                text,
                            ),
                            Err(e) => httpkit::respond(500, "text/plain", format!("{e}\n")),
                        }
                    })
                });
                let s = httpkit::serve(addr, handler)
                    .await
                    .with_context(|| format!("cannot bind {addr}"))?;
                eprintln!("metrics on http://{}/metrics", s.addr);
                Some(s)
            }
            None => None,
        };
        let m = metrics.clone();
        let on_result: health::run::OnResult = Arc::new(move |e: &Endpoint, p: &Probed| {
            m.publish(e, p);
            println!("{}", line(e, p));
        });
        let mut schedule = health::run::Schedule::new(tls.clone(), args.concurrency, on_result);
        let mut set = |endpoints: Vec<Endpoint>| {
            // Endpoints that are gone or changed stop being reported; the rest keep probing
            // and keep their series.
            for e in schedule.set(endpoints) {
                metrics.forget(&e);
            }
            eprintln!("probing {} endpoints", schedule.len());
        };
        set(endpoints_of(&first.snapshot, &d).0);
        let mut rx = crate::forward_updates(watch);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                u = rx.recv() => match u {
                    Some(Update::Applied(load)) => set(endpoints_of(&load.snapshot, &d).0),
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
        }
        Ok(ExitCode::SUCCESS)
    })
}
