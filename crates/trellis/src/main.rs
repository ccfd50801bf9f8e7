//! The trellis binary: one command line for every component.
//!
//! Subcommands live in their own modules; each parses its flags with clap and calls into the
//! library crates. Only this crate installs a tracing subscriber.

mod agent;
mod check;
mod dns;
mod fqdn;
mod gateway;
mod health;
mod lab;
mod logging;
mod observe;
mod operator;
mod registry;
mod secret;
mod state;
mod status;
mod sync;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The proxy allocates per request (headers, URIs, bodies); glibc's malloc showed up as about a
// tenth of the gateway's CPU time in `perf record`, mimalloc as much less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "trellis",
    version = concat!(
        env!("CARGO_PKG_VERSION"),
        " (",
        env!("TRELLIS_COMMIT"),
        ", built ",
        env!("TRELLIS_BUILD_DATE"),
        ")"
    ),
    about = "The network stack of a small cluster in one program"
)]
struct Cli {
    /// Log lines as text or JSON (on stderr; the filter is $RUST_LOG, else $TRELLIS_LOG).
    #[arg(long, global = true, value_enum, env = "TRELLIS_LOG_FORMAT")]
    log_format: Option<logging::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command that reads manifests shares.
#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// Where manifests come from: `dir` (the -f paths) or `kube` (the Kubernetes API server,
    /// found as kubectl finds it: the in-cluster service account, else the kubeconfig).
    #[arg(long = "source", value_enum, default_value_t = Origin::Dir)]
    pub origin: Origin,
    /// A manifest directory or file (repeatable). Directories are read with kustomize and Flux
    /// semantics (kustomization.yaml, ks.yaml targetNamespace, configMapGenerator).
    #[arg(short = 'f', long = "filename")]
    pub paths: Vec<PathBuf>,
    /// Flux post-build variables: a YAML map (NAME: value) or env-style lines (NAME=value).
    #[arg(long)]
    pub vars: Option<PathBuf>,
    /// Make an undefined ${VAR} an error instead of a warning.
    #[arg(long)]
    pub strict_vars: bool,
    /// Namespace for namespaced objects that nothing else places.
    #[arg(long, default_value = "default")]
    pub default_namespace: String,
    /// With --source kube: a kind not to watch (repeatable; e.g. Secret for a component that
    /// reads none, so its service account needs no access to them).
    #[arg(long = "skip-kind")]
    pub skip_kinds: Vec<String>,
}

/// Where a command reads its manifests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Origin {
    /// Directories and files (`-f`), re-read when they change.
    #[default]
    Dir,
    /// The Kubernetes API server, watched.
    Kube,
}

impl SourceArgs {
    /// The manifests' source as a directory source: `-f` paths.
    pub fn dirs(paths: Vec<PathBuf>, vars: Option<PathBuf>) -> SourceArgs {
        SourceArgs {
            origin: Origin::Dir,
            paths,
            vars,
            strict_vars: false,
            default_namespace: "default".into(),
            skip_kinds: Vec::new(),
        }
    }

    /// Starts watching the manifests: the directories, or the API server.
    pub fn watch(&self) -> anyhow::Result<store::watch::Watch> {
        use anyhow::Context as _;
        let opts = self.options()?;
        match self.origin {
            Origin::Dir => store::watch::Watch::start(self.paths.clone(), opts)
                .context("cannot watch the manifests"),
            Origin::Kube => store::kubernetes::watch(&opts)
                .context("cannot read the manifests from the Kubernetes API"),
        }
    }

    /// Reads the manifests once.
    pub fn load(&self) -> anyhow::Result<store::Load> {
        let opts = self.options()?;
        match self.origin {
            Origin::Dir => Ok(store::load(&self.paths, &opts)),
            Origin::Kube => {
                let load = self.watch()?.current();
                Ok(std::sync::Arc::unwrap_or_clone(load))
            }
        }
    }

    pub fn options(&self) -> anyhow::Result<store::Options> {
        use anyhow::Context as _;
        let vars = match &self.vars {
            None => Default::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read vars file {}", p.display()))?;
                model::subst::parse_vars(&text)
                    .map_err(|e| anyhow::anyhow!("vars file {}: {e}", p.display()))?
            }
        };
        anyhow::ensure!(
            self.skip_kinds.is_empty() || self.origin == Origin::Kube,
            "--skip-kind applies to --source kube only (a directory source reads what it holds)"
        );
        for k in &self.skip_kinds {
            anyhow::ensure!(
                model::snapshot::KINDS.iter().any(|i| i.kind == k),
                "--skip-kind {k}: not a kind trellis reads ({})",
                model::snapshot::KINDS
                    .iter()
                    .map(|i| i.kind)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        anyhow::ensure!(
            self.origin == Origin::Kube || !self.paths.is_empty(),
            "no manifests: give -f DIR (a manifest directory or file), or --source kube to read them from the Kubernetes API"
        );
        Ok(store::Options {
            vars,
            strict_vars: self.strict_vars,
            default_namespace: self.default_namespace.clone(),
            ignore: self.vars.iter().cloned().collect(),
            skip_kinds: self.skip_kinds.clone(),
            ..Default::default()
        })
    }
}

/// Prints a load's errors (a manifest that does not parse, an undefined variable under
/// `--strict-vars`), one a line, on stderr.
pub fn report_errors(snapshot: &model::Snapshot) {
    for d in snapshot
        .diagnostics
        .iter()
        .filter(|d| d.severity == model::Severity::Error)
    {
        eprintln!("{d}");
    }
}

/// Hands a watcher's updates (a std channel fed by a thread) to the async runtime. The
/// watcher moves into the thread, which keeps it watching for as long as updates are read.
pub fn forward_updates(
    watch: store::watch::Watch,
) -> tokio::sync::mpsc::Receiver<store::watch::Update> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        // Take the whole watch (a closure would capture only the `updates` field and drop
        // the file watcher with the rest).
        let watch = watch;
        while let Ok(u) = watch.updates.recv() {
            if tx.blocking_send(u).is_err() {
                break;
            }
        }
    });
    rx
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load manifests, resolve references and print every object's conditions.
    Check(check::Args),
    /// Serve one Gateway (HTTP listeners today), reloading when the manifests change.
    Gateway(gateway::Args),
    /// A JSON echo server (the backend of tests, benchmarks and the lab).
    Echo(gateway::EchoArgs),
    /// HTTP/3 load against a gateway (for `cargo xtask bench gateway`).
    #[command(hide = true)]
    BenchH3(gateway::BenchH3Args),
    /// Serve the cluster DNS zone (cluster.local) of the manifests.
    Dns(dns::Args),
    /// Print flows from an observer API (Hubble's gRPC), like `hubble observe`.
    Observe(Box<observe::Args>),
    /// A cluster from network namespaces on this machine: up, status, exec, down.
    Lab(lab::Args),
    /// One node's agent: the eBPF datapath kept equal to the manifests' Services.
    Agent(agent::Args),
    /// Plan DNS records for the manifests' routes, Services and DNSEndpoints (ExternalDNS's semantics).
    Sync(sync::Args),
    /// Run the single-host product in one process: every Gateway of the manifests, DNS, flows
    /// and one admin endpoint, from one watch of the manifests and one config file.
    Up(Box<up::Args>),
    /// Probe the endpoints the manifests declare (Gatus's conditions, gatus-sidecar's
    /// annotations), print the results and serve them as Gatus's metrics.
    Health(health::Args),
    /// Print the status of a running trellis from its admin endpoint (`up`, `gateway`, `dns`).
    Status(status::Args),
    /// Kubernetes mode: the Lease-elected writer of every object's status conditions.
    Operator(operator::Args),
    /// Print the CustomResourceDefinitions of trellis's own kinds (DNSView, DNSRewrite).
    Crds,
    /// What the nodes share in the state backend (`--state etcd://...`): list it, or
    /// measure the claim latency.
    State(state::Args),
    /// Print the completion script of a shell (`source <(trellis completions bash)`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `trellis man > trellis.1`.
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `up` installs the subscriber itself, after reading its config file (log format, level).
    if !matches!(cli.command, Command::Up(_)) {
        logging::init(cli.log_format.unwrap_or_default(), "warn");
    }
    let result = match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Gateway(args) => gateway::run(&args),
        Command::Echo(args) => gateway::echo(&args),
        Command::BenchH3(args) => gateway::bench_h3(&args),
        Command::Dns(args) => dns::run(&args),
        Command::Observe(args) => observe::run(&args),
        Command::Sync(args) => sync::run(&args),
        Command::State(args) => state::run(&args),
        Command::Lab(args) => lab::run(&args),
        Command::Agent(args) => agent::run(&args),
        Command::Up(args) => up::run(&args, cli.log_format),
        Command::Status(args) => status::run(&args),
        Command::Health(args) => health::run(&args),
        Command::Operator(args) => operator::run(&args),
        Command::Crds => {
            print!("{}", store::kubernetes::crd::yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "trellis", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    /// Every container of the Kubernetes manifests runs a command line this binary accepts.
    #[test]
    fn the_deploy_manifests_command_lines_parse() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes");
        let mut files = vec![];
        let mut dirs = vec![root];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("deploy/kubernetes") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "yaml") {
                    files.push(p);
                }
            }
        }
        let mut checked = 0;
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read");
            let docs =
                model::RawObject::from_yaml(&text, &f.display().to_string(), "").expect("YAML");
            for d in docs {
                let containers = d
                    .value
                    .pointer("/spec/template/spec/containers")
                    .and_then(serde_json::Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for c in containers {
                    let args: Vec<String> = c["args"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect();
                    let line = std::iter::once("trellis".to_string()).chain(args.clone());
                    if let Err(e) = super::Cli::try_parse_from(line) {
                        panic!("{}: {args:?}: {e}", f.display());
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 6, "{checked} containers");
    }
}
