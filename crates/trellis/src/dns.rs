//! `trellis dns`: serve the cluster zone of the manifests, reloading on change.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use store::watch::{Update, Watch};

use crate::SourceArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// UDP and TCP address to answer on.
    #[arg(long, default_value = "127.0.0.1:5353")]
    pub listen: SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    pub domain: String,
    /// TTL of the zone's records, in seconds.
    #[arg(long, default_value_t = 30)]
    pub ttl: u32,
    /// Forward names outside every zone to these servers (ADDR or ADDR:PORT, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub forward: Vec<String>,
    /// Forward to the nameservers of this resolv.conf (as CoreDNS's `forward . /etc/resolv.conf`).
    #[arg(long)]
    pub forward_resolv_conf: Option<std::path::PathBuf>,
}

fn forwarder(args: &Args) -> anyhow::Result<Option<std::sync::Arc<dns::forward::Forwarder>>> {
    let mut upstreams = Vec::new();
    for f in &args.forward {
        let addr = f.parse::<SocketAddr>().or_else(|_| {
            f.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        upstreams.push(addr.map_err(|_| {
            anyhow::anyhow!("--forward {f:?}: write an address, e.g. 192.168.1.1 or 127.0.0.1:5301")
        })?);
    }
    if let Some(p) = &args.forward_resolv_conf {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        upstreams.extend(dns::forward::parse_resolv_conf(&text));
    }
    if upstreams.is_empty() {
        return Ok(None);
    }
    Ok(Some(std::sync::Arc::new(dns::forward::Forwarder::new(
        upstreams,
        Some(args.listen),
    )?)))
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let opts = args.source.options()?;
    let cfg = dns::ZoneConfig {
        domain: args.domain.clone(),
        ttl: args.ttl,
    };
    let watch =
        Watch::start(args.source.paths.clone(), opts).context("cannot watch the manifests")?;
    let first = watch.current();
    for d in first
        .snapshot
        .diagnostics
        .iter()
        .filter(|d| d.severity == model::Severity::Error)
    {
        eprintln!("{d}");
    }
    let views = dns::compile_views(&first.snapshot, &cfg);
    let fwd = forwarder(args)?;
    crate::gateway::runtime()?.block_on(async move {
        let running = dns::server::start(args.listen, views, fwd)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (ports below 1024 need root; try --listen 127.0.0.1:5353)",
                    args.listen
                )
            })?;
        eprintln!("dns: zone {} on udp/tcp {}", cfg.domain, running.udp);
        let mut rx = crate::forward_updates(watch);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                u = rx.recv() => match u {
                    Some(Update::Applied(load)) => {
                        let v = dns::compile_views(&load.snapshot, &cfg);
                        eprintln!("reloaded: {} views", v.views.len());
                        running.update(v);
                    }
                    Some(Update::Rejected { errors, .. }) => {
                        for e in &errors {
                            eprintln!("reload rejected, still serving the previous zone: {e}");
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
