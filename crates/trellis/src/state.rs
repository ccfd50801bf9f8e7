//! `trellis state`: what the nodes share, read from the state backend (`--state
//! etcd://HOST:PORT,...`, or `TRELLIS_STATE`): `ls` lists the registered nodes, the pod CIDRs
//! and the claims with their owners; `publish` makes a manifest tree the generation every
//! agent with `source: state` serves; `bench` measures the claim latency (create-if-absent
//! transactions, one at a time) and removes what it wrote.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use store::state::{Backend, Location, alloc};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The state backend: `etcd://HOST:PORT[,HOST:PORT...]`, `kube://NAMESPACE` (the
    /// Kubernetes API, found as kubectl finds it), or `memory` (which holds nothing another
    /// process wrote).
    #[arg(long, env = "TRELLIS_STATE")]
    pub state: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the nodes, pod CIDRs and claims trellis keeps there.
    Ls {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: crate::check::Output,
    },
    /// Publish manifests as the next generation every agent with `source: state` serves (the
    /// objects as trellis reads them, Secrets left out). A tree with errors is not published:
    /// the errors are printed and the current generation keeps serving.
    Publish {
        #[command(flatten)]
        source: crate::SourceArgs,
    },
    /// Claim latency: N claims (create-if-absent), one after another, under a prefix of their
    /// own that is removed afterwards; prints p50, p99 and the rate.
    Bench {
        #[arg(long, default_value_t = 1000)]
        claims: usize,
    },
}

/// Longer values are listed by their size (manifest chunks, the assignments).
const LS_VALUE_MAX: usize = 512;

/// The bench's keys live under this kind (removed at the end).
const BENCH_KIND: &str = "bench";

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let location: Location = args.state.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    crate::gateway::runtime()?.block_on(async move {
        let b = store::state::open(&location)
            .await
            .with_context(|| format!("opening {}", args.state))?;
        match &args.command {
            Command::Ls { output } => ls(b.as_ref(), *output).await,
            Command::Bench { claims } => bench(b.as_ref(), *claims).await,
            Command::Publish { source } => publish(b.as_ref(), source).await,
        }
    })
}

async fn ls(b: &dyn Backend, output: crate::check::Output) -> anyhow::Result<ExitCode> {
    let listing = b
        .list(alloc::ROOT)
        .await
        .context("reading the state backend")?;
    let rows: Vec<(String, String)> = listing
        .kvs
        .iter()
        .map(|kv| {
            (
                kv.key[alloc::ROOT.len()..].to_string(),
                if kv.value.len() > LS_VALUE_MAX {
                    format!("({} bytes)", kv.value.len())
                } else {
                    String::from_utf8_lossy(&kv.value).into_owned()
                },
            )
        })
        .collect();
    match output {
        crate::check::Output::Table => {
            println!("{:<44} VALUE", "KEY");
            for (k, v) in &rows {
                println!("{k:<44} {v}");
            }
            println!("\nrevision {}", listing.revision);
        }
        other => {
            let doc = serde_json::json!({
                "revision": listing.revision,
                "keys": rows.iter().map(|(k, v)| serde_json::json!({"key": k, "value": v})).collect::<Vec<_>>(),
            });
            if matches!(other, crate::check::Output::Json) {
                println!("{doc:#}");
            } else {
                print!("{}", serde_saphyr::to_string(&doc)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn publish(b: &dyn Backend, source: &crate::SourceArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        source.origin == crate::Origin::Dir,
        "publish reads directories (-f): the Kubernetes API is its own source"
    );
    let opts = source.options()?;
    let raws = match store::state::manifests::documents(&source.paths, &opts) {
        Ok(r) => r,
        Err(errors) => {
            for d in &errors {
                eprintln!("{d}");
            }
            eprintln!(
                "not published: {} errors; the current generation keeps serving",
                errors.len()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let p = store::state::manifests::publish(b, &raws)
        .await
        .context("publishing the manifests")?;
    if p.changed {
        println!(
            "published generation {} ({} objects)",
            p.generation,
            raws.len()
        );
    } else {
        println!("generation {} already holds these objects", p.generation);
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench(b: &dyn Backend, claims: usize) -> anyhow::Result<ExitCode> {
    let owner = format!("bench-{}", std::process::id());
    let mut took: Vec<Duration> = Vec::with_capacity(claims);
    let start = Instant::now();
    for i in 0..claims {
        let t = Instant::now();
        let won = alloc::claim(b, BENCH_KIND, &format!("{owner}-{i}"), &owner).await?;
        took.push(t.elapsed());
        anyhow::ensure!(
            won,
            "claim {i} was not won: another bench is writing the same keys"
        );
    }
    let total = start.elapsed();
    for i in 0..claims {
        alloc::release(b, BENCH_KIND, &format!("{owner}-{i}"), &owner).await?;
    }
    took.sort();
    let at = |q: f64| {
        took.get(((took.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "claims {claims}: p50 {:.2} ms, p99 {:.2} ms, {:.0} claims/s",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        claims as f64 / total.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
