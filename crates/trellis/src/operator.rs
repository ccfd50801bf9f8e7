//! `trellis operator`: the one cluster-wide writer in Kubernetes mode (Cilium's operator and
//! Envoy Gateway's controller play this part). Every replica reads every object through the
//! API; the replica holding the `trellis-operator` Lease writes the conditions validation
//! decided back as status (Gateway API and Envoy Gateway policy status, server-side apply
//! under the `trellis` field manager). The others wait to take the Lease over.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use store::kubernetes::{leader, status};
use store::watch::Update;

use crate::{Origin, SourceArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Namespace of the Lease. Default: $POD_NAMESPACE, else trellis-system.
    #[arg(long)]
    pub lease_namespace: Option<String>,
    #[arg(long, default_value = "trellis-operator")]
    pub lease_name: String,
    /// This replica's name in the Lease. Default: $POD_NAME, else the host name.
    #[arg(long)]
    pub identity: Option<String>,
    /// The admin endpoint: /healthz, /ready, /status (leadership, writes), /metrics.
    #[arg(long, default_value = "0.0.0.0:9963")]
    pub admin: SocketAddr,
}

/// A failed status write is tried again after this long (the next change also retries).
const RETRY_WRITE: Duration = Duration::from_secs(5);

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.source.origin == Origin::Kube,
        "the operator writes status to the Kubernetes API: run it with --source kube"
    );
    let namespace = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "trellis-system".into());
    let identity = match args
        .identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
    {
        Some(i) => i,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("no --identity, no $POD_NAME and no host name")?
            .trim()
            .to_string(),
    };
    let watch = args.source.watch()?;
    crate::report_errors(&watch.current().snapshot);
    crate::gateway::runtime()?.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("cannot reach the Kubernetes API")?;
        let doc = Arc::new(arc_swap::ArcSwap::from_pointee(serde_json::json!({
            "ready": true, "leader": false, "identity": identity,
        })));
        let mut registry = prometheus_client::registry::Registry::default();
        watch.register_metrics(&mut registry);
        let a = gateway::admin::start(
            args.admin,
            Arc::new(registry),
            doc.clone(),
            None,
        )
        .await
        .with_context(|| format!("cannot bind {}", args.admin))?;
        eprintln!("operator {identity}: admin on http://{a}/status");
        let elector = Arc::new(leader::Elector::new(
            kube::Api::namespaced(client.clone(), &namespace),
            &args.lease_name,
            &identity,
            leader::LEASE_DURATION,
        ));
        let (lead_tx, mut lead_rx) = tokio::sync::watch::channel(false);
        let keeper = {
            let elector = elector.clone();
            tokio::spawn(async move {
                leader::keep(&elector, leader::RETRY_PERIOD, leader::RENEW_DEADLINE, lead_tx)
                    .await
            })
        };
        // KEDA's part: the ScaledObjects run here while this replica leads.
        let (report_tx, mut reports) =
            tokio::sync::mpsc::unbounded_channel::<(health::scaler::Scaled, health::scaler::Report)>();
        let mut scaler = health::scaler::Scaler::new(
            httpkit::Client::with_roots(std::path::Path::new(httpkit::CA_BUNDLE)).unwrap_or_default(),
            Arc::new(move |s, r| {
                let _ = report_tx.send((s.clone(), r.clone()));
            }),
        );
        let mut current = watch.current();
        let mut scaler_fed: Option<(Arc<store::Load>, bool)> = None;
        let mut updates = crate::forward_updates(watch);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut pending = true;
        let mut written = 0u64;
        let mut last_error: Option<String> = None;
        loop {
            let leading = *lead_rx.borrow();
            // The ScaledObjects are handed over again only when the snapshot or the
            // leadership changed (not on each of their own reports).
            let fed = scaler_fed
                .as_ref()
                .is_some_and(|(l, was)| Arc::ptr_eq(l, &current) && *was == leading);
            if !fed {
                if leading {
                    let snapshot = &current.snapshot;
                    scaler.set(health::scaler::Scaled::all(snapshot), |s| replicas(snapshot, s));
                } else {
                    scaler.set(Vec::new(), |_| 0);
                }
                scaler_fed = Some((current.clone(), leading));
            }
            if leading && pending {
                // With what only compiling the Gateways finds (a Lua script that does not
                // load, a listener not served), as `trellis check` shows it.
                // (Off the runtime's thread: the clone and the compile take a while on a
                // large tree, and the Lease must be renewed meanwhile.)
                let snapshot = current.clone();
                let compiled = tokio::task::spawn_blocking(move || {
                    let mut compiled = (*snapshot).clone();
                    crate::gateway::add_compile_conditions(&mut compiled.snapshot);
                    compiled
                })
                .await
                .unwrap_or_else(|_| (*current).clone());
                let patches = status::patches(
                    &compiled,
                    &load_balancers(&current),
                    &httpkit::rfc3339(std::time::SystemTime::now()),
                );
                match status::apply(&client, &patches).await {
                    Ok(n) => {
                        written += n as u64;
                        last_error = None;
                        pending = false;
                    }
                    Err(e) => last_error = Some(e.to_string()),
                }
            }
            doc.store(Arc::new(serde_json::json!({
                "ready": true,
                "leader": leading,
                "identity": identity,
                "lease": format!("{namespace}/{}", args.lease_name),
                "objects": current.snapshot.entries.len(),
                "statusWrites": written,
                "lastError": last_error,
            })));
            let retry = async {
                if pending && leading {
                    tokio::time::sleep(RETRY_WRITE).await
                } else {
                    std::future::pending::<()>().await
                }
            };
            tokio::select! {
                u = updates.recv() => match u {
                    Some(Update::Applied(load)) => {
                        current = load;
                        pending = true;
                    }
                    Some(Update::Rejected { errors, .. }) => {
                        for e in &errors {
                            eprintln!("change rejected, the last good snapshot's status stays: {e}");
                        }
                    }
                    None => anyhow::bail!("the Kubernetes source stopped"),
                },
                changed = lead_rx.changed() => {
                    if changed.is_err() {
                        anyhow::bail!("the Lease keeper stopped");
                    }
                    if *lead_rx.borrow() {
                        eprintln!("operator {identity}: leading ({namespace}/{})", args.lease_name);
                        // A new leader writes everything that differs.
                        pending = true;
                    }
                }
                Some((scaled, report)) = reports.recv() => {
                    if *lead_rx.borrow() {
                        scaled_status(&client, &current, &scaled, &report).await;
                    }
                }
                _ = retry => {}
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
        }
        keeper.abort();
        if let Err(e) = elector.release().await {
            eprintln!("cannot release the Lease: {e}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// LB-IPAM for the status writer, as Cilium's operator runs it: the addresses Services hold
/// in `status.loadBalancer.ingress` are kept (the allocation imports them), and so are the
/// addresses a Gateway without a Service of its own shows in `status.addresses` (its
/// synthesized Service exists only there).
fn load_balancers(load: &store::Load) -> status::LoadBalancers {
    use fabric::lbipam;
    let s = &load.snapshot;
    let mut previous = fabric::Assignments::default();
    for gw in s.gateways.values() {
        let key = model::ObjectKey::new(
            model::validate::GATEWAY_GROUP,
            "Gateway",
            gw.namespace(),
            gw.name(),
        );
        let Some(observed) = load.observed.get(&key) else {
            continue;
        };
        let ips: Vec<std::net::Ipv4Addr> = observed
            .status
            .get("addresses")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.get("value")?.as_str()?.parse().ok())
            .collect();
        if !ips.is_empty() {
            previous.services.insert(
                format!(
                    "{}/{}",
                    gw.namespace(),
                    lbipam::gateway_service_name(gw.namespace(), gw.name())
                ),
                fabric::ServiceAssignment {
                    load_balancer_ips: ips,
                    ..Default::default()
                },
            );
        }
    }
    let allocation = lbipam::allocate_snapshot(s, &previous);
    let v4 = |ips: &[std::net::Ipv4Addr]| ips.iter().copied().map(std::net::IpAddr::V4).collect();
    status::LoadBalancers {
        services: allocation
            .conditions
            .iter()
            .filter_map(|(key, c)| {
                let (ns, name) = key.split_once('/')?;
                let ips = allocation.ips.get(key).map(|i| v4(i)).unwrap_or_default();
                Some(((ns.to_string(), name.to_string()), (ips, c.condition())))
            })
            .collect(),
        gateways: lbipam::gateway_addresses(s, &allocation)
            .into_iter()
            .map(|(k, ips)| (k, v4(&ips)))
            .collect(),
        pools: lbipam::pools(s)
            .iter()
            .map(|p| (p.name.clone(), lbipam::pool_conditions(p, &allocation)))
            .collect(),
    }
}

/// A target's replicas in the snapshot (1 when it has none: the API's default).
fn replicas(snapshot: &model::Snapshot, s: &health::scaler::Scaled) -> u32 {
    snapshot
        .deployments
        .get(&(s.namespace.clone(), s.target.clone()))
        .and_then(|d| d.spec.spec.as_ref()?.replicas)
        .map_or(1, |n| n.max(0) as u32)
}

/// Applies a ScaledObject's decision (the target's scale) and writes KEDA's conditions.
async fn scaled_status(
    client: &kube::Client,
    load: &store::Load,
    scaled: &health::scaler::Scaled,
    report: &health::scaler::Report,
) {
    if let Some(n) = report.replicas
        && (scaled.target_kind != "Deployment" || replicas(&load.snapshot, scaled) != n)
    {
        match status::scale(
            client,
            &scaled.target_kind,
            &scaled.namespace,
            &scaled.target,
            n,
        )
        .await
        {
            Ok(()) => eprintln!(
                "scaled {} {}/{} to {n} ({})",
                scaled.target_kind, scaled.namespace, scaled.target, report.reason
            ),
            Err(e) => eprintln!(
                "cannot scale {} {}/{}: {e}",
                scaled.target_kind, scaled.namespace, scaled.target
            ),
        }
    }
    if let Some(p) =
        status::scaled_object(load, &scaled.namespace, &scaled.name, &report.conditions())
        && let Err(e) = status::apply(client, &[p]).await
    {
        eprintln!(
            "cannot write the status of ScaledObject {}: {e}",
            scaled.key()
        );
    }
}
