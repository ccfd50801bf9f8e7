//! `trellis sync`: the records the manifests want published, and the plan that would publish
//! them (ExternalDNS's semantics). Only `--dry-run` against an empty provider exists yet.

use std::process::ExitCode;

use crate::SourceArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The owner ID of the TXT registry (ExternalDNS's --txt-owner-id).
    #[arg(long, default_value = "trellis")]
    pub owner_id: String,
    /// Prefix of the TXT registry records (ExternalDNS's --txt-prefix).
    #[arg(long, default_value = "")]
    pub txt_prefix: String,
    /// Only names under these domains (repeatable).
    #[arg(long = "domain-filter")]
    pub domain_filters: Vec<String>,
    /// Only routes of this Gateway, NAMESPACE/NAME (repeatable; ExternalDNS's --gateway-name).
    #[arg(long = "gateway-name")]
    pub gateways: Vec<String>,
    /// `sync` deletes records this owner no longer wants; `upsert-only` never deletes.
    #[arg(long, default_value = "sync")]
    pub policy: String,
    /// Print the plan instead of applying it (the only mode so far: providers are not written yet).
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if !args.dry_run {
        anyhow::bail!(
            "providers (webhook, rfc2136, cloudflare) are not written yet: run with --dry-run to see the plan"
        );
    }
    let upsert_only = match args.policy.as_str() {
        "sync" => false,
        "upsert-only" => true,
        other => anyhow::bail!("--policy {other:?}: use sync or upsert-only"),
    };
    let load = store::load(&args.source.paths, &args.source.options()?);
    if load.snapshot.has_errors() {
        for d in load
            .snapshot
            .diagnostics
            .iter()
            .filter(|d| d.severity == model::Severity::Error)
        {
            eprintln!("{d}");
        }
        return Ok(ExitCode::from(2));
    }
    let cfg = dns::sync::SyncConfig {
        owner_id: args.owner_id.clone(),
        txt_prefix: args.txt_prefix.clone(),
        domain_filters: args.domain_filters.clone(),
        gateways: args.gateways.clone(),
        upsert_only,
    };
    let desired = dns::sync::desired(&load.snapshot, &cfg);
    let plan = dns::sync::plan(&desired, &[], &cfg);
    for e in &plan.create {
        let targets = e.targets.iter().cloned().collect::<Vec<_>>().join(",");
        println!(
            "CREATE {} {} {targets}  ({})",
            e.name, e.record_type, e.resource
        );
        println!("CREATE {} TXT \"{}\"", cfg.txt_name(e), cfg.txt_value(e));
    }
    eprintln!(
        "plan: {} to create, {} to update, {} to delete (dry run, against an empty provider)",
        plan.create.len(),
        plan.update_new.len(),
        plan.delete.len()
    );
    Ok(ExitCode::SUCCESS)
}
