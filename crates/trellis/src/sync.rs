//! `trellis sync`: publish the records the manifests want to a DNS provider, with
//! ExternalDNS's semantics (sources, TXT registry, `sync` / `upsert-only` policies).
//!
//! The loop: read the manifests (and watch them), plan against the provider's current
//! records, apply; again when the manifests change (no sooner than `--min-event-sync-interval`
//! after the last run: the rate limit) and every `--interval`. A change the provider refuses
//! is logged with its record and the rest are still applied; the next run tries again.
//! `--once` runs one reconcile and exits 0, or 1 when a change failed; `--dry-run` prints the
//! plan and changes nothing.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dns::sync::provider::{Error, Provider};
use dns::sync::{Changes, SyncConfig};
use store::watch::{Update, Watch};

use crate::SourceArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Where records go: webhook, rfc2136, cloudflare (none: only --dry-run, against an empty
    /// provider).
    #[arg(long)]
    pub provider: Option<String>,
    /// The owner ID of the TXT registry (ExternalDNS's --txt-owner-id).
    #[arg(long = "txt-owner-id", alias = "owner-id", default_value = "default")]
    pub owner_id: String,
    /// Prefix of the TXT registry records (ExternalDNS's --txt-prefix).
    #[arg(long, default_value = "")]
    pub txt_prefix: String,
    /// Only names under these domains (repeatable).
    #[arg(long = "domain-filter")]
    pub domain_filters: Vec<String>,
    /// Only routes of this Gateway, NAME or NAMESPACE/NAME (repeatable; ExternalDNS's
    /// --gateway-name).
    #[arg(long = "gateway-name")]
    pub gateways: Vec<String>,
    /// `sync` deletes records this owner no longer wants; `upsert-only` never deletes.
    #[arg(long, default_value = "sync")]
    pub policy: String,
    /// Print the plan instead of applying it.
    #[arg(long)]
    pub dry_run: bool,
    /// Reconcile once and exit (0 when every change was applied, 1 when one failed).
    #[arg(long)]
    pub once: bool,
    /// Reconcile at least this often (ExternalDNS's --interval).
    #[arg(long, default_value = "1m")]
    pub interval: String,
    /// After a manifest change, wait at least this long since the last run (ExternalDNS's
    /// --min-event-sync-interval): the loop's rate limit.
    #[arg(long, default_value = "5s")]
    pub min_event_sync_interval: String,
    /// The webhook provider (ExternalDNS's --webhook-provider-url).
    #[arg(long, default_value = "http://localhost:8888")]
    pub webhook_provider_url: String,
    /// A file holding the bearer token to send to the webhook (else `$TRELLIS_WEBHOOK_TOKEN`;
    /// a `trellis dns --webhook-listen` with a token asks for it).
    #[arg(long)]
    pub webhook_token_file: Option<std::path::PathBuf>,
    /// The primary server of the zone, for rfc2136.
    #[arg(long, default_value = "127.0.0.1")]
    pub rfc2136_host: String,
    #[arg(long, default_value_t = 53)]
    pub rfc2136_port: u16,
    /// The zone to update.
    #[arg(long)]
    pub rfc2136_zone: Option<String>,
    /// TSIG key name (the secret comes from --rfc2136-tsig-secret-file or
    /// $RFC2136_TSIG_SECRET, never from a flag: flags show in `ps`).
    #[arg(long)]
    pub rfc2136_tsig_keyname: Option<String>,
    /// A file holding the TSIG secret (base64).
    #[arg(long)]
    pub rfc2136_tsig_secret_file: Option<std::path::PathBuf>,
    #[arg(long, default_value = "hmac-sha256")]
    pub rfc2136_tsig_secret_alg: String,
    /// Proxy records through Cloudflare unless they say otherwise (ExternalDNS's flag).
    #[arg(long)]
    pub cloudflare_proxied: bool,
    #[arg(long, default_value_t = dns::sync::cloudflare::PER_PAGE_DEFAULT)]
    pub cloudflare_dns_records_per_page: u32,
    /// The API's base URL (tests point it at a local server).
    #[arg(long, default_value = dns::sync::cloudflare::API_BASE)]
    pub cloudflare_api_url: String,
    /// Let the Cloudflare token go over plain `http://` (a local test server only): without
    /// it, an `http://` --cloudflare-api-url is refused.
    #[arg(long, hide = true)]
    pub cloudflare_allow_plain_http: bool,
    /// CA certificates for https providers.
    #[arg(long, default_value = dns::sync::http::CA_BUNDLE)]
    pub ca_file: std::path::PathBuf,
}

fn duration(flag: &str, v: &str) -> anyhow::Result<Duration> {
    model::validate::parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag} {v:?}: {e}"))
}

impl Args {
    fn config(&self) -> anyhow::Result<SyncConfig> {
        let upsert_only = match self.policy.as_str() {
            "sync" => false,
            "upsert-only" => true,
            other => anyhow::bail!("--policy {other:?}: use sync or upsert-only"),
        };
        Ok(SyncConfig {
            owner_id: self.owner_id.clone(),
            txt_prefix: self.txt_prefix.clone(),
            domain_filters: self.domain_filters.clone(),
            gateways: self.gateways.clone(),
            upsert_only,
        })
    }

    fn client(&self) -> dns::sync::http::Client {
        // Without a CA bundle only http:// URLs work; the error says so when one is https.
        dns::sync::http::Client::with_roots(&self.ca_file).unwrap_or_default()
    }

    async fn provider(&self, name: &str) -> anyhow::Result<Arc<dyn Provider>> {
        Ok(match name {
            "webhook" => Arc::new(
                dns::sync::webhook::WebhookProvider::connect(
                    &self.webhook_provider_url,
                    self.client(),
                    crate::secret::read(
                        self.webhook_token_file.as_deref(),
                        "TRELLIS_WEBHOOK_TOKEN",
                    )?,
                )
                .await
                .with_context(|| format!("webhook at {}", self.webhook_provider_url))?,
            ),
            "rfc2136" => {
                let zone = self
                    .rfc2136_zone
                    .as_deref()
                    .context("--rfc2136-zone is required")?;
                let server =
                    tokio::net::lookup_host((self.rfc2136_host.as_str(), self.rfc2136_port))
                        .await
                        .with_context(|| format!("--rfc2136-host {}", self.rfc2136_host))?
                        .next()
                        .with_context(|| {
                            format!("--rfc2136-host {} has no address", self.rfc2136_host)
                        })?;
                let key = match &self.rfc2136_tsig_keyname {
                    None => None,
                    Some(name) => Some(dns::sync::rfc2136::TsigKey {
                        name: name.clone(),
                        algorithm: self.rfc2136_tsig_secret_alg.clone(),
                        secret: crate::secret::read(
                            self.rfc2136_tsig_secret_file.as_deref(),
                            "RFC2136_TSIG_SECRET",
                        )?
                        .context(
                            "--rfc2136-tsig-keyname needs --rfc2136-tsig-secret-file or $RFC2136_TSIG_SECRET",
                        )?,
                    }),
                };
                Arc::new(dns::sync::rfc2136::Rfc2136::new(
                    server,
                    zone,
                    key.as_ref(),
                )?)
            }
            "cloudflare" => {
                anyhow::ensure!(
                    !self.cloudflare_api_url.starts_with("http://")
                        || self.cloudflare_allow_plain_http,
                    "--cloudflare-api-url {} is plain http: the API token would cross the \
                     network readable; use https",
                    self.cloudflare_api_url
                );
                let token = std::env::var("CF_API_TOKEN")
                    .context("the cloudflare provider needs $CF_API_TOKEN")?;
                let cfg = dns::sync::cloudflare::Config {
                    base: self.cloudflare_api_url.trim_end_matches('/').to_string(),
                    token,
                    zone_ids: std::env::var("CF_ZONE_ID")
                        .map(|z| z.split(',').map(|s| s.trim().to_string()).collect())
                        .unwrap_or_default(),
                    domains: self.domain_filters.clone(),
                    per_page: self.cloudflare_dns_records_per_page,
                    proxied_default: self.cloudflare_proxied,
                };
                Arc::new(dns::sync::cloudflare::Cloudflare::new(cfg, self.client()))
            }
            "trellis" => anyhow::bail!(
                "the trellis provider runs inside `trellis dns` (--dynamic-zone, --webhook-listen); point --provider webhook at its --webhook-listen address"
            ),
            other => anyhow::bail!("--provider {other:?}: use webhook, rfc2136 or cloudflare"),
        })
    }
}

fn targets(e: &dns::sync::Endpoint) -> String {
    e.targets.iter().cloned().collect::<Vec<_>>().join(",")
}

fn print_changes(c: &Changes) {
    let line = |verb: &str, e: &dns::sync::Endpoint| {
        let from = if e.resource.is_empty() || e.record_type == "TXT" {
            String::new()
        } else {
            format!("  ({})", e.resource)
        };
        println!("{verb} {} {} {}{from}", e.name, e.record_type, targets(e));
    };
    for e in &c.create {
        line("CREATE", e);
    }
    for (old, new) in c.update_old.iter().zip(&c.update_new) {
        println!(
            "UPDATE {} {} {} -> {}",
            new.name,
            new.record_type,
            targets(old),
            targets(new)
        );
    }
    for e in &c.delete {
        line("DELETE", e);
    }
}

/// What one reconcile did.
#[derive(Debug, Default)]
struct Outcome {
    planned: usize,
    failed: usize,
}

/// One reconcile: desired records, the provider's current ones, the plan, the changes.
async fn reconcile(
    provider: Option<&dyn Provider>,
    snapshot: &model::Snapshot,
    cfg: &SyncConfig,
    dry_run: bool,
) -> Result<Outcome, Error> {
    let mut desired = dns::sync::desired(snapshot, cfg);
    let (current, filter) = match provider {
        Some(p) => {
            desired = p.adjust_endpoints(desired).await?;
            (p.records().await?, p.domain_filter())
        }
        None => (Vec::new(), Vec::new()),
    };
    // Only names the provider serves (the domain filter a webhook negotiated, the zone).
    if !filter.is_empty() {
        let served = SyncConfig {
            domain_filters: filter,
            ..SyncConfig::default()
        };
        desired.retain(|e| served.wants(&e.name));
    }
    let plan = dns::sync::plan(&desired, &current, cfg);
    for (e, why) in &plan.conflicts {
        tracing::warn!(record = %e.name, "left alone: {why}");
        eprintln!("sync: left alone: {why}");
    }
    let changes = plan.changes(cfg);
    let planned = changes.each().count();
    if dry_run {
        print_changes(&changes);
        eprintln!(
            "plan: {} to create, {} to update, {} to delete (dry run{})",
            plan.create.len(),
            plan.update_new.len(),
            plan.delete.len(),
            if provider.is_none() {
                ", against an empty provider"
            } else {
                ""
            }
        );
        return Ok(Outcome { planned, failed: 0 });
    }
    let Some(p) = provider else {
        return Ok(Outcome { planned, failed: 0 });
    };
    let failures = p.apply(&changes).await;
    for f in &failures {
        tracing::warn!(record = %f.endpoint.name, retryable = f.error.is_retryable(), "{f}");
        eprintln!("sync: failed: {f}");
    }
    Ok(Outcome {
        planned,
        failed: failures.len(),
    })
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let cfg = args.config()?;
    if args.provider.is_none() && !args.dry_run {
        anyhow::bail!(
            "--provider is required (webhook, rfc2136, cloudflare); or run with --dry-run to see the plan"
        );
    }
    let interval = duration("interval", &args.interval)?;
    let min_gap = duration("min-event-sync-interval", &args.min_event_sync_interval)?;
    let opts = args.source.options()?;
    let once = args.once || args.dry_run;
    crate::gateway::runtime()?.block_on(async move {
        let provider = match &args.provider {
            Some(name) => Some(args.provider(name).await?),
            None => None,
        };
        let (mut load, mut updates) = if once {
            (Arc::new(store::load(&args.source.paths, &opts)), None)
        } else {
            let watch = Watch::start(args.source.paths.clone(), opts)
                .context("cannot watch the manifests")?;
            (watch.current(), Some(crate::forward_updates(watch)))
        };
        if load.snapshot.has_errors() {
            for d in load
                .snapshot
                .diagnostics
                .iter()
                .filter(|d| d.severity == model::Severity::Error)
            {
                eprintln!("{d}");
            }
            if once {
                return Ok(ExitCode::from(2));
            }
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let started = tokio::time::Instant::now();
            let outcome = reconcile(provider.as_deref(), &load.snapshot, &cfg, args.dry_run).await;
            match &outcome {
                Ok(o) if !args.dry_run => {
                    eprintln!("sync: {} changes, {} failed", o.planned, o.failed)
                }
                Ok(_) => {}
                Err(e) => eprintln!("sync: cannot reconcile: {e}"),
            }
            if once {
                return Ok(match outcome {
                    Ok(o) if o.failed == 0 => ExitCode::SUCCESS,
                    _ => ExitCode::from(1),
                });
            }
            let Some(rx) = updates.as_mut() else {
                return Ok(ExitCode::SUCCESS);
            };
            // Wait for a manifest change or the interval, whichever comes first.
            tokio::select! {
                u = rx.recv() => match u {
                    Some(Update::Applied(new)) => load = new,
                    Some(Update::Rejected { errors, .. }) => {
                        for e in &errors {
                            eprintln!("reload rejected, keeping the previous manifests: {e}");
                        }
                    }
                    None => anyhow::bail!("the manifest watcher stopped"),
                },
                _ = tokio::time::sleep_until(started + interval) => {}
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                _ = term.recv() => return Ok(ExitCode::SUCCESS),
            }
            // The rate limit: runs are at least min_gap apart, however often files change.
            tokio::time::sleep_until(started + min_gap).await;
        }
    })
}
