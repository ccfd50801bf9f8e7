//! `trellis state`: what the nodes share, read from the state backend (`--state
//! etcd://HOST:PORT,...`, or `TRELLIS_STATE`): `ls` lists the registered nodes, the pod CIDRs
//! and the claims with their owners; `get` prints one value; `publish` makes a manifest tree the generation every
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
    /// Print one key's value as stored (a key without a leading `/` is under /trellis/v1/, as
    /// `ls` shows it); exit 1 when there is none.
    Get { key: String },
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
        /// Also measure agents on published manifests: this many LoadBalancer Services
        /// published, then every agent's start to a synced plan, then manifest changes fanned
        /// out to every agent (refused on a backend that holds published manifests).
        #[arg(long, default_value_t = 0)]
        services: usize,
        /// The agents of the published-manifests measure (in this process, each with its own
        /// connection and watch).
        #[arg(long, default_value_t = 3)]
        agents: usize,
        /// Manifest changes fanned out.
        #[arg(long, default_value_t = 20)]
        changes: usize,
        /// The Services' type: `LoadBalancer` (an LB-IPAM address each, and Maglev tables
        /// for their external frontends) or `ClusterIP`.
        #[arg(long, default_value = "LoadBalancer", value_parser = ["LoadBalancer", "ClusterIP"])]
        service_type: String,
    },
}

/// Longer values are listed by their size (manifest chunks, the assignments).
const LS_VALUE_MAX: usize = 512;

/// The bench's keys live under this kind (removed at the end).
const BENCH_KIND: &str = "bench";

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let location: Location = args.state.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let location = &location;
    crate::gateway::runtime()?.block_on(async move {
        let b = store::state::open(location)
            .await
            .with_context(|| format!("opening {}", args.state))?;
        match &args.command {
            Command::Ls { output } => ls(b.as_ref(), *output).await,
            Command::Get { key } => {
                let key = if key.starts_with('/') {
                    key.clone()
                } else {
                    format!("{}{key}", alloc::ROOT)
                };
                match b.get(&key).await.context("reading the state backend")? {
                    Some(kv) => {
                        use std::io::Write as _;
                        std::io::stdout().write_all(&kv.value)?;
                        Ok(ExitCode::SUCCESS)
                    }
                    None => {
                        eprintln!("{key}: no such key");
                        Ok(ExitCode::from(1))
                    }
                }
            }
            Command::Bench {
                claims,
                services,
                agents,
                changes,
                service_type,
            } => {
                let code = if *claims > 0 {
                    bench(b.as_ref(), *claims).await?
                } else {
                    ExitCode::SUCCESS
                };
                if *services > 0 {
                    let opener = match location {
                        // One in-process backend shared by every agent.
                        Location::Memory => Opener::Same(b.clone()),
                        other => Opener::Open(other.clone()),
                    };
                    bench_agents(
                        b.clone(),
                        opener,
                        (*services, service_type),
                        *agents,
                        *changes,
                    )
                    .await?;
                }
                Ok(code)
            }
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

/// How the agents of [`bench_agents`] reach the backend.
#[derive(Clone)]
enum Opener {
    Same(std::sync::Arc<dyn Backend>),
    Open(Location),
}

impl Opener {
    async fn open(&self) -> store::state::manifests::Opened {
        match self {
            Opener::Same(b) => Ok(b.clone()),
            Opener::Open(l) => store::state::open(l).await,
        }
    }
}

/// `n` Services of `type_` with two pods each, and the pool LoadBalancers draw from; `round`
/// changes one Service.
fn bench_objects((n, type_): (usize, &str), round: usize) -> anyhow::Result<Vec<model::RawObject>> {
    let mut text = String::from(
        "apiVersion: cilium.io/v2\nkind: CiliumLoadBalancerIPPool\nmetadata: {name: bench}\n\
         spec: {blocks: [{cidr: 10.20.0.0/16}]}\n",
    );
    for i in 0..n {
        let port = if i == 0 { 80 + round } else { 80 };
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: bench}}\n\
             spec: {{type: {type_}, selector: {{app: s{i}}}, ports: [{{port: {port}, targetPort: 8080}}]}}\n"
        ));
        // Two ready pods behind each, on two nodes.
        for (j, node) in ["node-0", "node-1"].iter().enumerate() {
            let ip = std::net::Ipv4Addr::from(
                u32::from(std::net::Ipv4Addr::new(10, 69, 0, 0)) + (2 * i + j) as u32,
            );
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: s{i}-{j}, namespace: bench, labels: {{app: s{i}}}}}\n\
                 spec: {{nodeName: {node}, containers: [{{name: c, image: x}}]}}\n\
                 status: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
            ));
        }
    }
    model::RawObject::from_yaml(&text, "bench.yaml", "bench").map_err(|e| anyhow::anyhow!("{e}"))
}

/// One agent's work from a snapshot to the map entries it would program: the assignments
/// brought up to date in the backend, the plan compiled and lowered (the kernel's map writes
/// are not part of it). Returns the frontends lowered.
async fn agent_sync(
    b: &dyn Backend,
    node: &str,
    snapshot: &model::Snapshot,
    generation: u64,
) -> anyhow::Result<usize> {
    let (assigned, _) = fabric::shared::update(
        b,
        snapshot,
        generation,
        fabric::assign::SERVICE_CIDR_DEFAULT
            .parse()
            .expect("constant CIDR"),
        fabric::assign::NODE_PORT_RANGE_DEFAULT,
    )
    .await?;
    let ips = std::collections::BTreeMap::from([
        ("node-0".to_string(), std::net::Ipv4Addr::new(192, 0, 2, 1)),
        ("node-1".to_string(), std::net::Ipv4Addr::new(192, 0, 2, 2)),
        (node.to_string(), std::net::Ipv4Addr::new(192, 0, 2, 3)),
    ]);
    let cfg = fabric::FabricConfig::new(node, ips.clone());
    let plan = fabric::compile(snapshot, &cfg, Some(&assigned));
    let mut ids = fabric::lower::Ids::default();
    let want = fabric::lower::desired(&plan, &mut ids, None, &ips);
    Ok(want.services.len())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Agents on published manifests: publish `services` Services, start `agents` agents at once
/// (each reads the generation, brings the assignments up, compiles and lowers: its start to a
/// synced plan), then `changes` manifest changes, each timed from the publish to the last
/// agent's plan. Removes what it wrote.
async fn bench_agents(
    b: std::sync::Arc<dyn Backend>,
    opener: Opener,
    services: (usize, &str),
    agents: usize,
    changes: usize,
) -> anyhow::Result<()> {
    use store::state::manifests;
    anyhow::ensure!(
        manifests::read(b.as_ref()).await?.is_err()
            && fabric::shared::read(b.as_ref()).await?.is_none(),
        "this backend holds published manifests or assignments: the agents' bench writes both; \
         run it on an empty backend"
    );
    let t = Instant::now();
    let first = manifests::publish(b.as_ref(), &bench_objects(services, 0)?).await?;
    let publish = t.elapsed();
    // Start to synced: every agent at once, each on a thread, a runtime and a connection of
    // its own, as separate processes would be (its CPU work never holds up another's
    // requests).
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..agents {
        let opener = opener.clone();
        tasks.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let b = opener.open().await?;
                let g = manifests::read(b.as_ref())
                    .await?
                    .map_err(|_| anyhow::anyhow!("no published manifests"))?;
                let snapshot = model::Snapshot::build(g.raws, Vec::new());
                let n =
                    agent_sync(b.as_ref(), &format!("node-{i}"), &snapshot, g.generation).await?;
                anyhow::Ok((n, t.elapsed()))
            })
        }));
    }
    let mut started = Vec::new();
    for task in tasks {
        started.push(
            task.join()
                .map_err(|_| anyhow::anyhow!("an agent thread panicked"))??,
        );
    }
    let synced = started.iter().map(|s| s.1).max().unwrap_or_default();
    let frontends = started.first().map_or(0, |s| s.0);
    // Fan-out: each agent follows the published manifests on a watch and a thread of its own.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(u64, Instant)>();
    let mut threads = Vec::new();
    for i in 0..agents {
        let for_watch = opener.clone();
        let open = move || {
            let opener = for_watch.clone();
            async move { opener.open().await }
        };
        let watch = manifests::watch_with(open, &store::Options::default())?;
        let opener = opener.clone();
        let done = done_tx.clone();
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            // The whole watch (a closure would capture only `updates` and stop the source).
            let watch = watch;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let b = rt.block_on(opener.open())?;
            for _ in 0..changes {
                let load = loop {
                    match watch.updates.recv()? {
                        store::watch::Update::Applied(l) => break l,
                        store::watch::Update::Rejected { .. } => continue,
                    }
                };
                let g = load.generation.unwrap_or(0);
                rt.block_on(agent_sync(
                    b.as_ref(),
                    &format!("node-{i}"),
                    &load.snapshot,
                    g,
                ))?;
                let _ = done.send((g, Instant::now()));
            }
            Ok(())
        }));
    }
    let mut fanout = Vec::new();
    for round in 1..=changes {
        let t = Instant::now();
        let p = manifests::publish(b.as_ref(), &bench_objects(services, round)?).await?;
        let mut last = t;
        for _ in 0..agents {
            let (g, at) = done_rx
                .recv_timeout(Duration::from_secs(60))
                .context("an agent did not sync a change within 60 s")?;
            anyhow::ensure!(
                g == p.generation,
                "an agent synced generation {g}, not {}",
                p.generation
            );
            last = last.max(at);
        }
        fanout.push(last - t);
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("an agent thread panicked"))??;
    }
    fanout.sort();
    // Clean up: the published manifests and the assignments.
    for kv in b.list(&format!("{}manifests/", alloc::ROOT)).await?.kvs {
        b.delete(&kv.key, kv.mod_revision).await?;
    }
    if let Some(kv) = b.get(&fabric::shared::key()).await? {
        b.delete(&kv.key, kv.mod_revision).await?;
    }
    println!(
        "agents {agents}, {} {} Services ({frontends} frontends each): publish {} (generation {}), \
         start to synced {} (last agent), change to every agent synced p50 {} max {} over {changes} changes",
        services.0,
        services.1,
        ms(publish),
        first.generation,
        ms(synced),
        ms(percentile(&fanout, 0.5)),
        ms(percentile(&fanout, 1.0)),
    );
    Ok(())
}
