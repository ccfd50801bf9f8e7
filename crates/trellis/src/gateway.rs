//! `trellis gateway`: serve one Gateway of the manifests, reloading on change, draining on
//! SIGTERM. `trellis echo`: the JSON echo server.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use model::ObjectKey;
use store::watch::Update;

use crate::SourceArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The Gateway to serve, as NAMESPACE/NAME.
    #[arg(long)]
    pub gateway: String,
    /// Address to bind instead of the Gateway's own (spec.addresses, LB-IPAM), e.g. 127.0.0.1.
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// Listener ports to bind elsewhere, e.g. 80=8080,443=8443 (0 picks a free port).
    #[arg(long, value_delimiter = ',')]
    pub port_map: Vec<String>,
    /// Admin endpoint (/healthz, /ready, /status, /metrics).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Overrides the EnvoyProxy's shutdown.drainTimeout (e.g. 30s).
    #[arg(long)]
    pub drain_timeout: Option<String>,
    /// Access log: one JSON line per request on stdout, or off.
    #[arg(long, value_enum, default_value = "stdout")]
    pub access_log: AccessLogTo,
    #[command(flatten)]
    pub observe: crate::observe::ServeArgs,
}

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogTo {
    #[default]
    Stdout,
    Off,
}

impl AccessLogTo {
    /// The access log writer (a thread writing stdout), if any.
    pub fn start(self) -> Option<gateway::proxy::AccessLog> {
        match self {
            AccessLogTo::Stdout => Some(gateway::proxy::AccessLog::to_writer(
                std::io::BufWriter::new(std::io::stdout()),
            )),
            AccessLogTo::Off => None,
        }
    }
}

/// A drain timeout flag or config value (`30s`, `1m`), named `what` in the error.
pub fn parse_drain_timeout(what: &str, v: Option<&str>) -> anyhow::Result<Option<Duration>> {
    v.map(|d| model::validate::parse_duration(d).map_err(|e| anyhow::anyhow!("{what} {d:?}: {e}")))
        .transpose()
}

/// Compiles Gateway `key` (a Gateway's key) of a snapshot.
pub fn compile(
    s: &model::Snapshot,
    key: &ObjectKey,
) -> Result<gateway::Plan, gateway::CompileError> {
    gateway::compile(s, &key.namespace, &key.name)
}

/// Binds a Gateway's listeners and says where each is (the lines tests and the lab wait for),
/// and which listeners it does not serve.
pub async fn start_gateway(
    plan: &gateway::Plan,
    bind: &gateway::Bind,
    metrics: Arc<gateway::metrics::Metrics>,
) -> anyhow::Result<gateway::Running> {
    let gw = plan.gateway.ns_name();
    for (l, port, why) in &plan.unserved {
        eprintln!("warning: gateway {gw}: listener {l} (port {port}) is not served: {why}");
    }
    let running = gateway::start(plan, bind, metrics)
        .await
        .with_context(|| format!("gateway {gw}"))?;
    for (p, a) in &running.bound {
        eprintln!("gateway {gw}: listener port {p} on http://{a}");
    }
    for (p, a) in &running.bound_udp {
        eprintln!("gateway {gw}: listener port {p} on udp {a}");
    }
    Ok(running)
}

/// Drains a running Gateway (see `Running::drain`) and says how it went; returns whether every
/// connection closed in time.
pub async fn drain_gateway(gw: &str, running: gateway::Running, timeout: Duration) -> bool {
    eprintln!("gateway {gw}: draining (up to {timeout:?})");
    let clean = running.drain(timeout).await;
    if clean {
        eprintln!("gateway {gw}: drained");
    } else {
        eprintln!("gateway {gw}: drain timeout reached; closing remaining connections");
    }
    clean
}

/// The number of route entries a plan serves, for reload lines.
pub fn route_entries(p: &gateway::Plan) -> usize {
    p.ports
        .values()
        .filter_map(|l| l.router())
        .map(|r| r.len())
        .sum()
}

#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Name the server reports as `backend`.
    #[arg(long, default_value = "echo")]
    pub name: String,
    /// Namespace the server reports.
    #[arg(long, default_value = "default")]
    pub namespace: String,
}

/// The async runtime: one thread per CPU this process may run on (taskset and cgroup limits
/// count); on one CPU, a single-threaded runtime, which skips cross-thread wake-ups.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    let mut b = if cpus <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn parse_port_map(items: &[String]) -> anyhow::Result<BTreeMap<u16, u16>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (a, b) = item
            .split_once('=')
            .with_context(|| format!("--port-map {item:?}: write LISTENER=BIND, e.g. 80=8080"))?;
        let a: u16 = a
            .trim()
            .parse()
            .with_context(|| format!("--port-map {item:?}: {a:?} is not a port"))?;
        let b: u16 = b
            .trim()
            .parse()
            .with_context(|| format!("--port-map {item:?}: {b:?} is not a port"))?;
        out.insert(a, b);
    }
    Ok(out)
}

/// Adds what only compiling the Gateways can find to the statuses: a Lua script that does not
/// load (its policy `Accepted=False`), a listener the gateway does not serve (`Programmed=False`
/// with why: a refused ClientTrafficPolicy, a certificate that does not load...), so that
/// `trellis check` and the Kubernetes status say it too.
pub fn add_compile_conditions(s: &mut model::Snapshot) {
    let keys: Vec<(String, String)> = s.gateways.keys().cloned().collect();
    let mut found: Vec<(ObjectKey, String)> = Vec::new();
    let mut unserved: Vec<(ObjectKey, String, String)> = Vec::new();
    for (ns, name) in keys {
        if let Ok(plan) = gateway::compile(s, &ns, &name) {
            for p in plan.problems {
                if !found.contains(&p) {
                    found.push(p);
                }
            }
            // A port-wide failure (its TLS settings) is every HTTPS listener's of the port.
            let spec = &s.gateways[&(ns.clone(), name.clone())].spec;
            for (listener, port, why) in plan.unserved {
                let names: Vec<String> = if listener.is_empty() {
                    spec.listeners
                        .iter()
                        .filter(|l| l.port == i32::from(port) && l.protocol == "HTTPS")
                        .map(|l| l.name.clone())
                        .collect()
                } else {
                    vec![listener]
                };
                for l in names {
                    unserved.push((plan.gateway.clone(), l, why.clone()));
                }
            }
        }
    }
    let programmed = |conditions: &[model::Condition]| {
        conditions
            .iter()
            .any(|c| c.type_ == model::object::cond::PROGRAMMED && c.status == model::Status::True)
    };
    for (gw, listener, why) in unserved {
        let Some(st) = s.status.get_mut(&gw) else {
            continue;
        };
        let Some(l) = st.listeners.iter_mut().find(|l| l.name == listener) else {
            continue;
        };
        model::object::set_condition(
            &mut l.conditions,
            model::Condition::new(
                model::object::cond::PROGRAMMED,
                model::Status::False,
                model::object::cond::reason::INVALID,
                format!("not served: {why}"),
            ),
        );
        // With none of its listeners served, the Gateway itself is not programmed.
        if programmed(&st.conditions) && !st.listeners.iter().any(|l| programmed(&l.conditions)) {
            st.set(model::Condition::new(
                model::object::cond::PROGRAMMED,
                model::Status::False,
                model::object::cond::reason::INVALID,
                "none of its listeners is served",
            ));
        }
    }
    for (key, msg) in found {
        // The typed resolution says the same as the condition written below.
        if let Some(p) = s.resolution.policies.get_mut(&key) {
            p.refused.get_or_insert_with(|| msg.clone());
        }
        let st = s.status.entry(key).or_default();
        let (path, text) = msg
            .split_once(": ")
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .unwrap_or((String::new(), msg.clone()));
        st.problem(path, text);
        st.set(model::Condition::new(
            model::object::cond::ACCEPTED,
            model::Status::False,
            model::object::cond::reason::INVALID,
            msg,
        ));
    }
}

/// The Gateway's status as `trellis check -o json` shows it, plus what this process serves.
pub fn status_doc(
    load: &store::Load,
    key: &ObjectKey,
    plan: Option<&gateway::Plan>,
    bound: &BTreeMap<u16, SocketAddr>,
    bound_udp: &BTreeMap<u16, SocketAddr>,
    error: Option<&str>,
) -> serde_json::Value {
    let status = load.snapshot.status.get(key);
    serde_json::json!({
        "gateway": key.ns_name(),
        "status": status,
        "bound": bound.iter().map(|(p, a)| (p.to_string(), a.to_string())).collect::<BTreeMap<_, _>>(),
        "boundUdp": bound_udp.iter().map(|(p, a)| (p.to_string(), a.to_string())).collect::<BTreeMap<_, _>>(),
        "routes": plan.map(|p| p.ports.iter().filter_map(|(port, l)| Some((port.to_string(), l.router()?.len()))).collect::<BTreeMap<_, _>>()),
        "unserved": plan.map(|p| p.unserved.iter().map(|(n, port, why)| serde_json::json!({"listener": n, "port": port, "reason": why})).collect::<Vec<_>>()),
        "lastError": error,
    })
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let (ns, name) = args
        .gateway
        .split_once('/')
        .context("--gateway takes NAMESPACE/NAME, e.g. network/envoy-external")?;
    let key = ObjectKey::new(model::validate::GATEWAY_GROUP, "Gateway", ns, name);
    let port_map = parse_port_map(&args.port_map)?;
    let drain_override = parse_drain_timeout("--drain-timeout", args.drain_timeout.as_deref())?;
    let watch = args.source.watch()?;
    let first = watch.current();
    crate::report_errors(&first.snapshot);
    let plan = compile(&first.snapshot, &key).map_err(|e| {
        anyhow::anyhow!("{e}\n(run `trellis check -f ...` to see every object's conditions)")
    })?;
    let rt = runtime()?;
    rt.block_on(async move {
        let metrics = Arc::new(gateway::metrics::Metrics::default());
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        watch.register_metrics(&mut registry);
        // Flows: one per request, when --observe-listen is set.
        let flows = crate::observe::start(&args.observe, &mut registry, None)
            .await?
            .map(|(o, _)| o);
        let pods = Arc::new(crate::observe::Pods::default());
        let observer = flows.as_ref().map(|o| {
            pods.update(&first.snapshot);
            crate::observe::gateway_observer(&o.flows(), pods.clone())
        });
        let bind = gateway::Bind {
            ip: args.bind,
            port_map,
            access_log: args.access_log.start(),
            observer,
            ..Default::default()
        };
        let running = start_gateway(&plan, &bind, metrics.clone()).await?;
        let status = Arc::new(ArcSwap::from_pointee(status_doc(&first, &key, Some(&plan), &running.bound, &running.bound_udp, None)));
        if let Some(addr) = args.admin {
            let a = gateway::admin::start(addr, Arc::new(registry), status.clone(), None).await.with_context(|| format!("cannot bind the admin address {addr}"))?;
            eprintln!("admin on http://{a} (/healthz /ready /status /metrics)");
        }
        // Whoever started us (the lab, as a kubelet would probe) learns the listeners are up.
        println!("ready");
        {
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
        }
        let mut drain_timeout = drain_override.unwrap_or(plan.drain_timeout);

        // Snapshot updates arrive on a std channel; hand them to the runtime.
        let mut rx = crate::forward_updates(watch);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                u = rx.recv() => match u {
                    Some(Update::Applied(load)) => match compile(&load.snapshot, &key) {
                        Ok(p) => {
                            running.update(&p);
                            if flows.is_some() {
                                pods.update(&load.snapshot);
                            }
                            drain_timeout = drain_override.unwrap_or(p.drain_timeout);
                            status.store(Arc::new(status_doc(&load, &key, Some(&p), &running.bound, &running.bound_udp, None)));
                            eprintln!("reloaded: {} route entries", route_entries(&p));
                        }
                        Err(e) => {
                            eprintln!("reload rejected, still serving the previous routes: {e}");
                            status.store(Arc::new(status_doc(&load, &key, None, &running.bound, &running.bound_udp, Some(&e.to_string()))));
                        }
                    },
                    Some(Update::Rejected { errors, .. }) => {
                        for e in &errors {
                            eprintln!("reload rejected, still serving the previous routes: {e}");
                        }
                        let mut doc = (**status.load()).clone();
                        doc["lastError"] = serde_json::Value::String(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
                        status.store(Arc::new(doc));
                    }
                    None => bail!("the manifest watcher stopped"),
                },
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
        }
        drain_gateway(&key.ns_name(), running, drain_timeout).await;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn echo(args: &EchoArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let e = gateway::echo::start(args.listen, &args.namespace, &args.name)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!("echo {}/{} on http://{}", args.namespace, args.name, e.addr);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(Debug, clap::Args)]
pub struct BenchH3Args {
    /// Address of the HTTP/3 listener (its UDP port).
    #[arg(long)]
    pub connect: SocketAddr,
    /// Name to ask for (SNI and `:authority`).
    #[arg(long, default_value = "bench.example")]
    pub host: String,
    /// The PEM certificate (or CA) to trust.
    #[arg(long)]
    pub cacert: std::path::PathBuf,
    /// Path to request.
    #[arg(long, default_value = "/small")]
    pub path: String,
    /// QUIC connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// How long to send requests for, in seconds (at most 600).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// The longest `trellis bench-h3` runs.
const BENCH_H3_SECONDS_MAX: u64 = 600;

/// `trellis bench-h3`: HTTP/3 requests one at a time on each of `--connections` QUIC
/// connections for `--seconds` (wrk's model: `-c` connections, one request in flight on
/// each); prints `requests N seconds S rps R p50_ms P p99_ms Q non2xx E` on one line. For
/// `cargo xtask bench gateway`, since Debian has no HTTP/3 load generator.
pub fn bench_h3(args: &BenchH3Args) -> anyhow::Result<ExitCode> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(&args.cacert)
        .with_context(|| format!("cannot read {}", args.cacert.display()))?;
    let roots: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} holds no PEM certificate", args.cacert.display()))?;
    let seconds = args.seconds.clamp(1, BENCH_H3_SECONDS_MAX);
    runtime()?.block_on(async {
        let mut clients = Vec::with_capacity(args.connections);
        for _ in 0..args.connections.max(1) {
            let c = gateway::h3::Client::connect(
                args.connect,
                &args.host,
                &roots,
                std::time::Duration::from_secs(30),
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", args.connect))?;
            clients.push(c);
        }
        let started = std::time::Instant::now();
        let until = started + std::time::Duration::from_secs(seconds);
        let mut tasks = tokio::task::JoinSet::new();
        for c in clients {
            let uri = c.uri(&args.path);
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                let mut non2xx = 0u64;
                while std::time::Instant::now() < until {
                    let req = http::Request::get(&uri)
                        .body(bytes::Bytes::new())
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    let t = std::time::Instant::now();
                    let resp = c.request(req).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    latencies.push(t.elapsed());
                    if !resp.status().is_success() {
                        non2xx += 1;
                    }
                }
                Ok::<_, anyhow::Error>((latencies, non2xx))
            });
        }
        let mut all = Vec::new();
        let mut non2xx = 0;
        while let Some(r) = tasks.join_next().await {
            let (l, n) = r.context("a load task failed")??;
            all.extend(l);
            non2xx += n;
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort();
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
        };
        println!(
            "requests {} seconds {elapsed:.3} rps {:.1} p50_ms {:.3} p99_ms {:.3} non2xx {non2xx}",
            all.len(),
            all.len() as f64 / elapsed,
            pct(0.5),
            pct(0.99)
        );
        Ok(ExitCode::SUCCESS)
    })
}
