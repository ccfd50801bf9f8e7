//! `trellis sync`: publish the records the manifests want to a DNS provider, with
//! ExternalDNS's semantics (sources, TXT registry, `sync` / `upsert-only` policies).
//!
//! The loop: read the manifests (and watch them), plan against the provider's current
//! records, apply; again when the manifests change (no sooner than `--min-event-sync-interval`
//! after the last run: the rate limit) and every `--interval`. A change the provider refuses
//! is logged with its record and the rest are still applied; the next run tries again.
//! `--once` runs one reconcile and exits 0, or 1 when a change failed; `--dry-run` prints the
//! plan and changes nothing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dns::sync::provider::Provider;
use dns::sync::{Changes, SyncConfig};
use store::watch::Update;
use tracing::Instrument as _;

use crate::SourceArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub target: Target,
    /// Print the plan instead of applying it.
    #[arg(long)]
    pub dry_run: bool,
    /// How --dry-run prints the plan.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: crate::check::Output,
    /// Reconcile once and exit (0 when every change was applied, 1 when one failed).
    #[arg(long)]
    pub once: bool,
    /// Serve `/ready` (200 once a run applied every change, 503 before, while the provider
    /// cannot be reached and while it refuses a change), `/status` (the last run) and
    /// `/metrics` here, e.g. 127.0.0.1:19003.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
}

/// Where records go and how: the flags of `trellis sync` and each entry of the `sync:`
/// section of `trellis up`'s config (same names, camelCase there). Secrets come from files
/// or the environment, never from here.
#[derive(Clone, Debug, PartialEq, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Target {
    /// Where records go: webhook, rfc2136, cloudflare (none: only --dry-run, against an empty
    /// provider).
    #[arg(long)]
    pub provider: Option<String>,
    /// The owner ID of the TXT registry (ExternalDNS's --txt-owner-id).
    #[arg(long = "txt-owner-id", alias = "owner-id", default_value = OWNER_ID_DEFAULT)]
    pub txt_owner_id: String,
    /// Prefix of the TXT registry records (ExternalDNS's --txt-prefix).
    #[arg(long, default_value = "")]
    pub txt_prefix: String,
    /// Only names under these domains (repeatable).
    #[arg(long = "domain-filter")]
    pub domain_filters: Vec<String>,
    /// Only routes of this Gateway, NAME or NAMESPACE/NAME (repeatable; ExternalDNS's
    /// --gateway-name).
    #[arg(long = "gateway-name")]
    pub gateway_names: Vec<String>,
    /// `sync` deletes records this owner no longer wants; `upsert-only` never deletes.
    #[arg(long, default_value = POLICY_DEFAULT)]
    pub policy: String,
    /// Reconcile at least this often (ExternalDNS's --interval).
    #[arg(long, default_value = INTERVAL_DEFAULT)]
    pub interval: String,
    /// After a manifest change, wait at least this long since the last run (ExternalDNS's
    /// --min-event-sync-interval): the loop's rate limit.
    #[arg(long, default_value = MIN_EVENT_SYNC_INTERVAL_DEFAULT)]
    pub min_event_sync_interval: String,
    /// The webhook provider (ExternalDNS's --webhook-provider-url).
    #[arg(long, default_value = WEBHOOK_URL_DEFAULT)]
    pub webhook_provider_url: String,
    /// A file holding the bearer token to send to the webhook (else `$TRELLIS_WEBHOOK_TOKEN`;
    /// a `trellis dns --webhook-listen` with a token asks for it).
    #[arg(long)]
    pub webhook_token_file: Option<PathBuf>,
    /// The primary server of the zone, for rfc2136.
    #[arg(long, default_value = RFC2136_HOST_DEFAULT)]
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
    pub rfc2136_tsig_secret_file: Option<PathBuf>,
    #[arg(long, default_value = TSIG_ALG_DEFAULT)]
    pub rfc2136_tsig_secret_alg: String,
    /// A file holding the Cloudflare API token (else `$CF_API_TOKEN`).
    #[arg(long)]
    pub cloudflare_api_token_file: Option<PathBuf>,
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
    pub ca_file: PathBuf,
}

const OWNER_ID_DEFAULT: &str = "default";
const POLICY_DEFAULT: &str = "sync";
const INTERVAL_DEFAULT: &str = "1m";
const MIN_EVENT_SYNC_INTERVAL_DEFAULT: &str = "5s";
const WEBHOOK_URL_DEFAULT: &str = "http://localhost:8888";
const RFC2136_HOST_DEFAULT: &str = "127.0.0.1";
const TSIG_ALG_DEFAULT: &str = "hmac-sha256";
/// The providers a target can name.
const PROVIDERS: &[&str] = &["webhook", "rfc2136", "cloudflare"];

impl Default for Target {
    fn default() -> Target {
        Target {
            provider: None,
            txt_owner_id: OWNER_ID_DEFAULT.to_string(),
            txt_prefix: String::new(),
            domain_filters: Vec::new(),
            gateway_names: Vec::new(),
            policy: POLICY_DEFAULT.to_string(),
            interval: INTERVAL_DEFAULT.to_string(),
            min_event_sync_interval: MIN_EVENT_SYNC_INTERVAL_DEFAULT.to_string(),
            webhook_provider_url: WEBHOOK_URL_DEFAULT.to_string(),
            webhook_token_file: None,
            rfc2136_host: RFC2136_HOST_DEFAULT.to_string(),
            rfc2136_port: 53,
            rfc2136_zone: None,
            rfc2136_tsig_keyname: None,
            rfc2136_tsig_secret_file: None,
            rfc2136_tsig_secret_alg: TSIG_ALG_DEFAULT.to_string(),
            cloudflare_api_token_file: None,
            cloudflare_proxied: false,
            cloudflare_dns_records_per_page: dns::sync::cloudflare::PER_PAGE_DEFAULT,
            cloudflare_api_url: dns::sync::cloudflare::API_BASE.to_string(),
            cloudflare_allow_plain_http: false,
            ca_file: PathBuf::from(dns::sync::http::CA_BUNDLE),
        }
    }
}

fn duration(flag: &str, v: &str) -> anyhow::Result<Duration> {
    model::validate::parse_duration(v).map_err(|e| anyhow::anyhow!("{flag} {v:?}: {e}"))
}

impl Target {
    fn config(&self) -> anyhow::Result<SyncConfig> {
        let upsert_only = match self.policy.as_str() {
            "sync" => false,
            "upsert-only" => true,
            other => anyhow::bail!("policy {other:?}: use sync or upsert-only"),
        };
        Ok(SyncConfig {
            owner_id: self.txt_owner_id.clone(),
            txt_prefix: self.txt_prefix.clone(),
            domain_filters: self.domain_filters.clone(),
            gateways: self.gateway_names.clone(),
            upsert_only,
        })
    }

    /// Every problem of a target of `trellis up` at once, each naming its key under `at`.
    pub fn check(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        match self.provider.as_deref() {
            None => out.push(format!(
                "{at}.provider: required ({})",
                PROVIDERS.join(", ")
            )),
            Some(p) if !PROVIDERS.contains(&p) => out.push(format!(
                "{at}.provider: {p:?}: use {}",
                PROVIDERS.join(", ")
            )),
            Some("rfc2136") if self.rfc2136_zone.is_none() => out.push(format!(
                "{at}.rfc2136Zone: required by the rfc2136 provider"
            )),
            Some(_) => {}
        }
        if let Err(e) = self.config() {
            out.push(format!("{at}.{e}"));
        }
        for (key, v) in [
            ("interval", &self.interval),
            ("minEventSyncInterval", &self.min_event_sync_interval),
        ] {
            if let Err(e) = model::validate::parse_duration(v) {
                out.push(format!("{at}.{key}: {v:?}: {e}"));
            }
        }
        out
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
                let token = crate::secret::read(
                    self.cloudflare_api_token_file.as_deref(),
                    "CF_API_TOKEN",
                )?
                .context(
                    "the cloudflare provider needs --cloudflare-api-token-file or $CF_API_TOKEN",
                )?;
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

/// The plan as a document (`-o json|yaml`): what each change does to which record set.
fn changes_doc(c: &Changes) -> serde_json::Value {
    let set = |e: &dns::sync::Endpoint| {
        serde_json::json!({
            "name": e.name, "type": e.record_type, "targets": e.targets, "ttl": e.ttl,
            "resource": e.resource,
        })
    };
    serde_json::json!({
        "create": c.create.iter().map(set).collect::<Vec<_>>(),
        "update": c.update_old.iter().zip(&c.update_new)
            .map(|(old, new)| serde_json::json!({"from": set(old), "to": set(new)}))
            .collect::<Vec<_>>(),
        "delete": c.delete.iter().map(set).collect::<Vec<_>>(),
    })
}

fn print_changes(c: &Changes, output: crate::check::Output) -> anyhow::Result<()> {
    match output {
        crate::check::Output::Json => {
            println!("{:#}", changes_doc(c));
            return Ok(());
        }
        crate::check::Output::Yaml => {
            print!("{}", serde_saphyr::to_string(&changes_doc(c))?);
            return Ok(());
        }
        crate::check::Output::Table => {}
    }
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
    Ok(())
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
    dry_run: Option<crate::check::Output>,
) -> anyhow::Result<Outcome> {
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
    if let Some(output) = dry_run {
        print_changes(&changes, output)?;
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

/// What one run of the loop did, for `/status` and the log.
#[derive(Clone, Debug)]
pub struct Report {
    pub at: std::time::SystemTime,
    /// The changes planned, and how many of them the provider refused.
    pub changes: usize,
    pub failed: usize,
    /// Why the run could not reconcile at all (the provider unreachable, a refused login).
    pub error: Option<String>,
}

impl Report {
    /// The `/status` entry of a target.
    pub fn doc(&self, provider: &str) -> serde_json::Value {
        serde_json::json!({
            "provider": provider,
            "lastRun": httpkit::rfc3339(self.at),
            "changes": self.changes,
            "failed": self.failed,
            "lastError": self.error,
        })
    }
}

/// Keeps one target in step with the latest manifests until `latest` closes: a run at once,
/// after every change (no sooner than `minEventSyncInterval` after the last run: the rate
/// limit) and every `interval`. A provider that cannot be reached is tried again at the next
/// run; each run is reported.
pub async fn keep(
    target: Target,
    mut latest: tokio::sync::watch::Receiver<Arc<store::Load>>,
    report: impl Fn(Report) + Send,
) -> anyhow::Result<()> {
    let cfg = target.config()?;
    let interval = duration("interval", &target.interval)?;
    let min_gap = duration("minEventSyncInterval", &target.min_event_sync_interval)?;
    let name = target
        .provider
        .clone()
        .context("a provider is required (webhook, rfc2136, cloudflare)")?;
    let mut provider: Option<Arc<dyn Provider>> = None;
    loop {
        let started = tokio::time::Instant::now();
        let at = std::time::SystemTime::now();
        if provider.is_none() {
            match target.provider(&name).await {
                Ok(p) => provider = Some(p),
                Err(e) => report(Report {
                    at,
                    changes: 0,
                    failed: 0,
                    error: Some(format!("{e:#}")),
                }),
            }
        }
        if let Some(p) = &provider {
            let load = latest.borrow_and_update().clone();
            let span = tracing::info_span!("reconcile", provider = %name, owner = %cfg.owner_id);
            let outcome = reconcile(Some(p.as_ref()), &load.snapshot, &cfg, None)
                .instrument(span)
                .await;
            report(match outcome {
                Ok(o) => Report {
                    at,
                    changes: o.planned,
                    failed: o.failed,
                    error: None,
                },
                Err(e) => Report {
                    at,
                    changes: 0,
                    failed: 0,
                    error: Some(format!("{e:#}")),
                },
            });
        }
        // Wait for a manifest change or the interval, whichever comes first.
        tokio::select! {
            changed = latest.changed() => if changed.is_err() {
                return Ok(());
            },
            _ = tokio::time::sleep_until(started + interval) => {}
        }
        // The rate limit: runs are at least min_gap apart, however often files change.
        tokio::time::sleep_until(started + min_gap).await;
    }
}

impl Report {
    /// The log line of a run (`sync NAME: ...` for a named target).
    pub fn log(&self, name: Option<&str>) {
        let who = name.map_or_else(|| "sync".to_string(), |n| format!("sync {n}"));
        match &self.error {
            None => eprintln!("{who}: {} changes, {} failed", self.changes, self.failed),
            Some(e) => eprintln!("{who}: cannot reconcile: {e}"),
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let target = &args.target;
    let cfg = target.config()?;
    if target.provider.is_none() && !args.dry_run {
        anyhow::bail!(
            "--provider is required (webhook, rfc2136, cloudflare); or run with --dry-run to see the plan"
        );
    }
    duration("--interval", &target.interval)?;
    duration("--min-event-sync-interval", &target.min_event_sync_interval)?;
    crate::gateway::runtime()?.block_on(async move {
        if args.once || args.dry_run {
            let load = args.source.load()?;
            if load.snapshot.has_errors() {
                crate::report_errors(&load.snapshot);
                return Ok(ExitCode::from(2));
            }
            let provider = match &target.provider {
                Some(name) => Some(target.provider(name).await?),
                None => None,
            };
            let outcome = reconcile(
                provider.as_deref(),
                &load.snapshot,
                &cfg,
                args.dry_run.then_some(args.output),
            )
            .await;
            return Ok(match outcome {
                Ok(o) => {
                    if !args.dry_run {
                        eprintln!("sync: {} changes, {} failed", o.planned, o.failed);
                    }
                    if o.failed == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("sync: cannot reconcile: {e}");
                    ExitCode::from(1)
                }
            });
        }
        let watch = args.source.watch()?;
        let first = watch.current();
        crate::report_errors(&first.snapshot);
        let status = Arc::new(arc_swap::ArcSwap::from_pointee(serde_json::json!({
            "ready": false,
            "lastRun": null,
        })));
        if let Some(addr) = args.admin {
            let mut registry = prometheus_client::registry::Registry::default();
            watch.register_metrics(&mut registry);
            let a = gateway::admin::start(addr, Arc::new(registry), status.clone(), None)
                .await
                .with_context(|| format!("cannot bind the admin endpoint {addr}"))?;
            eprintln!("sync: admin endpoint on http://{a}/ (/ready, /status, /metrics)");
        }
        let (tx, rx) = tokio::sync::watch::channel(first);
        let mut updates = crate::forward_updates(watch);
        let provider = target.provider.clone().unwrap_or_default();
        let keeping = keep(target.clone(), rx, |r| {
            // The status first: the log line says the run is over.
            status.store(Arc::new(serde_json::json!({
                // As --once's exit code: a change the provider refused is not in sync.
                "ready": r.error.is_none() && r.failed == 0,
                "lastRun": r.doc(&provider),
            })));
            r.log(None);
        });
        tokio::pin!(keeping);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                r = &mut keeping => return r.map(|()| ExitCode::SUCCESS),
                u = updates.recv() => match u {
                    Some(Update::Applied(new)) => {
                        let _ = tx.send(new);
                    }
                    Some(Update::Rejected { errors, .. }) => {
                        for e in &errors {
                            eprintln!("reload rejected, keeping the previous manifests: {e}");
                        }
                    }
                    None => anyhow::bail!("the manifest watcher stopped"),
                },
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                _ = term.recv() => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}
