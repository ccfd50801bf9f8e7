//! trellis's CNI plugin (spec 1.0, plus 1.1's STATUS and GC): pod veths, IPAM from the node's
//! pod CIDR, routes. The binary `trellis-cni` is a thin shell over [`plugin_main`].
//!
//! Addressing is Calico's, with no bridge in the node: the pod's interface gets `IP/32`, a
//! `169.254.1.1 dev eth0 scope link` route and a default route via 169.254.1.1; the host end
//! of the veth (`lxc` + 11 hex digits, as Cilium names them) has `proxy_arp=1` and
//! `forwarding=1` (proxy ARP only answers on interfaces that forward) and the node gets
//! `IP/32 dev lxc… scope link`. The node therefore needs a route to 169.254.1.1 out of some
//! other interface (any default route does) for proxy ARP to answer.
//!
//! Kernel changes go through rtnetlink (`rtnetlink`/`netlink-packet-route`), not `ip`: the
//! plugin then needs no tools in `CNI_PATH`, errors carry the kernel's errno, and the
//! container end of the veth is created directly inside the pod's namespace under its final
//! name (one `RTM_NEWLINK` with the peer's `IFLA_NET_NS_FD`), so no temporary name ever has
//! to be free in the node's namespace.
//!
//! Modules: [`conf`] (stdin and environment), [`result`] (the result JSON), [`error`] (error
//! codes), [`ipam`] (allocation on disk), [`link`] (netlink).
//!
//! Error codes: the spec's 1–7 and 11, 50 for STATUS, and trellis's own
//! [`error::CODE_POOL_EXHAUSTED`] (100), [`error::CODE_CHECK_FAILED`] (101) and
//! [`error::CODE_DATAPATH`] (102). An exhausted pool is 100, not 11: only a DEL frees an
//! address, which a retrying runtime cannot bring about. 11 is kept for its meaning, a
//! transient condition: the IPAM lock still held after [`ipam::LOCK_WAIT_MS_MAX`].
//!
//! Limits: config on stdin ≤ [`STDIN_BYTES_MAX`]; pool prefix between
//! /[`conf::POOL_PREFIX_LEN_MIN`] and /[`conf::POOL_PREFIX_LEN_MAX`]; interface names ≤
//! [`conf::IFNAME_LEN_MAX`]; IPAM lock wait ≤ [`ipam::LOCK_WAIT_MS_MAX`] ms.
//!
//! Public entry points: [`plugin_main`] (the whole process), [`execute`] (one invocation
//! with the environment, stdin and stdout passed in rather than taken from the process), and [`add`], [`del`], [`check`],
//! [`status`], [`gc`] on a parsed [`NetConf`] and [`CmdArgs`].
//!
//! Not here: the eBPF datapath. [`attach_datapath`] attaches the programs the node agent pinned.

pub mod agent;
pub mod conf;
pub mod error;
pub mod ipam;
pub mod link;
pub mod multus;
pub mod result;

use std::fs::File;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

pub use conf::{
    Attachment, CmdArgs, Command, Datapath, LATEST_VERSION, NetConf, SUPPORTED_VERSIONS,
};
pub use error::{Error, ErrorReply};
pub use ipam::Pool;
pub use result::{CniResult, Dns, Interface, IpConfig, Route, VersionInfo};

use link::GATEWAY;

/// The host end's name: `lxc` + the first 11 hex digits of a 64-bit FNV-1a hash of
/// `containerID/ifname`, 14 characters (the kernel allows 15). Stable, so DEL finds it again
/// without any state.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("lxc{:011x}", hash >> 20)
}

/// Hooks the host end of a new pod veth into trellis's eBPF datapath: the node agent has
/// loaded and pinned the programs under `datapath.pinDir`; this attaches them (tc ingress and
/// egress) to the veth. Without a `datapath` section the pod gets plain routing only.
pub fn attach_datapath(
    conf: &NetConf,
    host_ifname: &str,
    host_ifindex: u32,
    pod_addr: std::net::Ipv4Addr,
) -> Result<(), Error> {
    let Some(dp) = &conf.datapath else {
        return Ok(());
    };
    datapath::attach_endpoint(&dp.pin_dir, host_ifname, Some((host_ifindex, pod_addr))).map_err(
        |e| Error::Datapath {
            iface: host_ifname.to_string(),
            pin_dir: dp.pin_dir.display().to_string(),
            why: e.to_string(),
        },
    )
}

fn open_netns(args: &CmdArgs) -> Result<File, Error> {
    let path = args.netns.as_ref().ok_or(Error::InvalidEnv {
        var: "CNI_NETNS",
        why: "missing".into(),
    })?;
    File::open(path).map_err(|e| {
        if link::is_gone(&e) {
            Error::UnknownContainer {
                container_id: args.container_id.clone(),
                why: format!("network namespace {} does not exist", path.display()),
            }
        } else {
            Error::io(format!("opening network namespace {}", path.display()), e)
        }
    })
}

fn pool(conf: &NetConf) -> Result<Pool, Error> {
    Pool::open(&conf.state_dir, &conf.name, conf.pool_cidr())
}

/// ADD: allocates an address, creates and configures the veth pair, returns the result
/// (appended to `prevResult` when chained after another plugin). On failure what this call
/// made is undone, and only that: an ADD repeated for a live attachment fails without
/// harming it.
pub fn add(conf: &NetConf, args: &CmdArgs) -> Result<CniResult, Error> {
    let prev = conf.prev_result()?;
    let netns = open_netns(args)?;
    let pool = pool(conf)?;
    let lease = pool.allocate(&args.container_id, &args.ifname)?;
    let host = host_ifname(&args.container_id, &args.ifname);
    let mut created = false;
    let added = add_links(conf, args, &netns, &host, lease.ip, &mut created).and_then(|ours| {
        let mut result = match prev {
            Some(prev) => prev.chain(ours),
            None => ours,
        };
        add_networks(conf, args, &netns, &mut result)?;
        Ok(result)
    });
    if added.is_err() {
        // Undo; the original error is what the runtime needs to see.
        if created && let Err(e) = with_netlink_host(async |h| link::delete_link(&h, &host).await) {
            tracing::warn!(iface = %host, error = %e, "rollback: deleting veth failed");
        }
        if !lease.reused
            && let Err(e) = pool.release(&args.container_id, &args.ifname)
        {
            tracing::warn!(ip = %lease.ip, error = %e, "rollback: releasing address failed");
        }
    }
    added
}

/// ADD as a Kubernetes node runs it: with `agentSocket` and a pod named in `CNI_ARGS`, the
/// pod's attachments come from the agent ([`agent`]) and its network-status goes back to the
/// agent for the Pod. Otherwise (the lab, a runtime without the agent) plain [`add`].
fn add_for_pod(conf: &NetConf, args: &CmdArgs) -> Result<CniResult, Error> {
    let (Some(socket), Some((namespace, name))) = (&conf.agent_socket, agent::pod_of(args)) else {
        return add(conf, args);
    };
    let mut conf = conf.clone();
    if conf.networks.is_empty() {
        let req = agent::Request::Networks {
            namespace: namespace.clone(),
            name: name.clone(),
        };
        conf.networks = agent::ask(socket, &req)?.networks;
    }
    let result = add(&conf, args)?;
    let network_status = match multus::read_record(&conf.state_dir, &args.container_id) {
        Ok(Some(record)) if !conf.networks.is_empty() => record.network_status,
        _ => multus::network_status(&conf.name, &to_json(&result), true),
    };
    let req = agent::Request::Status {
        namespace,
        name,
        network_status,
    };
    // The pod runs either way; Multus too only logs a status it cannot write.
    if let Err(e) = agent::ask(socket, &req) {
        tracing::warn!(error = %e, "network-status not handed to the agent");
    }
    Ok(result)
}

/// The attachments of `conf.networks`, in order, after the primary network gave `primary`;
/// recorded for DEL and CHECK with the pod's network-status. A failure DELs the attachments
/// made so far (in reverse) and names the one that failed; the caller undoes the primary.
/// When an attachment takes the default route, `primary` is changed to say so (its default
/// route becomes the cluster's ranges), as Multus changes the result it caches.
fn add_networks(
    conf: &NetConf,
    args: &CmdArgs,
    netns: &File,
    primary: &mut CniResult,
) -> Result<(), Error> {
    if conf.networks.is_empty() {
        return Ok(());
    }
    let default_via = conf.networks.iter().find_map(|n| {
        n.default_route.iter().find_map(|g| match g {
            IpAddr::V4(v4) => Some((n, *v4)),
            IpAddr::V6(_) => None,
        })
    });
    if default_via.is_some() {
        let default = IpNet::V4(Ipv4Net::default());
        primary
            .routes
            .retain(|r| !(r.dst == default && r.gw == Some(IpAddr::V4(GATEWAY))));
        primary
            .routes
            .extend(conf.cluster_cidrs.iter().map(|c| Route {
                dst: IpNet::V4(*c),
                gw: Some(IpAddr::V4(GATEWAY)),
            }));
    }
    let failed = |network: &str, why: String| Error::Attachment {
        network: network.to_string(),
        why,
    };
    let inv = multus::Invocation {
        container_id: &args.container_id,
        netns: args.netns.as_deref(),
        cni_path: &args.path,
        cni_args: &args.args,
    };
    let mut record = multus::Record {
        networks: conf.networks.clone(),
        results: Vec::new(),
        network_status: multus::network_status(&conf.name, &to_json(&*primary), true),
    };
    // Recorded before any plugin runs, so a DEL after a crash half-way still replays them.
    multus::write_record(&conf.state_dir, &args.container_id, &record)
        .map_err(|e| failed(&conf.networks[0].name, e))?;
    // As Multus: DEL from the last one tried (the failed one included: a plugin may have left
    // part of itself behind) back to the first, each with its ADD result where there is one.
    let undo = |record: &multus::Record| {
        let tried = (record.results.len() + 1).min(record.networks.len());
        for (i, n) in record.networks[..tried].iter().enumerate().rev() {
            if let Err(e) = inv.del(n, record.results.get(i)) {
                tracing::warn!(network = %n.name, error = %e, "rollback: DEL failed");
            }
        }
        let _ = multus::remove_record(&conf.state_dir, &args.container_id);
    };
    for n in &conf.networks {
        match inv.add(n) {
            Ok(r) => {
                record
                    .network_status
                    .extend(multus::network_status(&n.name, &r, false));
                record.results.push(r);
            }
            Err(e) => {
                undo(&record);
                return Err(failed(&n.name, e));
            }
        }
    }
    if let Some((n, gw)) = default_via
        && let Err(e) = default_route(conf, args, netns, n, gw)
    {
        undo(&record);
        return Err(failed(&n.name, e.to_string()));
    }
    multus::write_record(&conf.state_dir, &args.container_id, &record).map_err(|e| {
        undo(&record);
        failed(&conf.networks[0].name, e)
    })
}

/// `default-route`: the pod's default goes through the attachment `n` (via `gw`), and the
/// cluster's ranges stay on the primary interface.
fn default_route(
    conf: &NetConf,
    args: &CmdArgs,
    netns: &File,
    n: &multus::Network,
    gw: std::net::Ipv4Addr,
) -> Result<(), Error> {
    let primary = &args.ifname;
    with_netlink_ns(netns, async |h| {
        let eth = link::get_link(&h, primary).await?;
        let net = link::get_link(&h, &n.interface).await?;
        let (Some(eth), Some(net)) = (eth, net) else {
            return Err(Error::UnknownContainer {
                container_id: args.container_id.clone(),
                why: format!("{primary} or {} missing in its namespace", n.interface),
            });
        };
        for cidr in &conf.cluster_cidrs {
            link::add_route(
                &h,
                *cidr,
                Some(GATEWAY),
                eth.index,
                &format!("{cidr} via {GATEWAY} dev {primary}"),
            )
            .await?;
        }
        link::move_default_route(
            &h,
            gw,
            net.index,
            &format!("default via {gw} dev {}", n.interface),
        )
        .await
    })
}

/// DEL of the attachments recorded for the container, in reverse. With the namespace gone
/// (or not given) the interfaces went with it: plugin errors are then logged, not returned.
fn del_networks(conf: &NetConf, args: &CmdArgs) -> Result<(), Error> {
    let record = multus::read_record(&conf.state_dir, &args.container_id)
        .map_err(|e| Error::io(e, std::io::Error::from(std::io::ErrorKind::InvalidData)))?;
    let Some(record) = record else {
        return Ok(());
    };
    let netns = args.netns.as_deref().filter(|p| p.exists());
    let inv = multus::Invocation {
        container_id: &args.container_id,
        netns,
        cni_path: &args.path,
        cni_args: &args.args,
    };
    let mut errors = Vec::new();
    for (i, n) in record.networks.iter().enumerate().rev() {
        if let Err(e) = inv.del(n, record.results.get(i)) {
            if netns.is_some() {
                errors.push(Error::Attachment {
                    network: n.name.clone(),
                    why: e,
                });
            } else {
                tracing::debug!(network = %n.name, error = %e, "DEL without a namespace");
            }
        }
    }
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => multus::remove_record(&conf.state_dir, &args.container_id)
            .map_err(|e| Error::io(e, std::io::Error::from(std::io::ErrorKind::Other))),
    }
}

fn with_netlink_host<T: Send>(
    f: impl AsyncFnOnce(rtnetlink::Handle) -> Result<T, Error> + Send,
) -> Result<T, Error> {
    link::with_netlink(None, f)
}

fn add_links(
    conf: &NetConf,
    args: &CmdArgs,
    netns: &File,
    host: &str,
    ip: std::net::Ipv4Addr,
    created: &mut bool,
) -> Result<CniResult, Error> {
    let mtu = conf.mtu();
    let pod_addr = Ipv4Net::new(ip, 32).expect("32 is a valid IPv4 prefix");
    let host_link = with_netlink_host(async |h| {
        if link::get_link(&h, host).await?.is_some() {
            return Err(Error::io(
                format!(
                    "host interface {host} for container {} {}",
                    args.container_id, args.ifname
                ),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        link::create_veth(&h, host, &args.ifname, netns, mtu).await?;
        *created = true;
        let l = link::get_link(&h, host).await?.ok_or_else(|| {
            Error::io(
                format!("veth {host} vanished after creation"),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
        link::set_ipv4_conf(host, "proxy_arp", "1")?;
        link::set_ipv4_conf(host, "forwarding", "1")?;
        link::set_up(&h, l.index, host).await?;
        link::add_route(
            &h,
            pod_addr,
            None,
            l.index,
            &format!("{pod_addr} dev {host}"),
        )
        .await?;
        Ok(l)
    })?;
    let ifname = &args.ifname;
    let pod_link = with_netlink_ns(netns, async |h| {
        let l = link::get_link(&h, ifname)
            .await?
            .ok_or_else(|| Error::UnknownContainer {
                container_id: args.container_id.clone(),
                why: format!("{ifname} missing in its namespace right after creation"),
            })?;
        link::set_up(&h, l.index, ifname).await?;
        link::add_address(&h, l.index, pod_addr, ifname).await?;
        let gw_net = Ipv4Net::new(GATEWAY, 32).expect("32 is a valid IPv4 prefix");
        link::add_route(
            &h,
            gw_net,
            None,
            l.index,
            &format!("{GATEWAY} dev {ifname}"),
        )
        .await?;
        link::add_route(
            &h,
            Ipv4Net::default(),
            Some(GATEWAY),
            l.index,
            &format!("default via {GATEWAY}"),
        )
        .await?;
        Ok(l)
    })?;
    attach_datapath(conf, host, host_link.index, pod_addr.addr())?;
    tracing::debug!(container_id = %args.container_id, %ip, iface = host, "pod attached");
    Ok(build_result(conf, args, &host_link, &pod_link, pod_addr))
}

fn with_netlink_ns<T: Send>(
    netns: &File,
    f: impl AsyncFnOnce(rtnetlink::Handle) -> Result<T, Error> + Send,
) -> Result<T, Error> {
    link::with_netlink(Some(netns), f)
}

fn build_result(
    conf: &NetConf,
    args: &CmdArgs,
    host: &link::LinkInfo,
    pod: &link::LinkInfo,
    addr: Ipv4Net,
) -> CniResult {
    let legacy = !conf.version_at_least("1.0.0");
    let mtu = |l: &link::LinkInfo| conf.version_at_least("1.1.0").then_some(l.mtu);
    CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: host.name.clone(),
                mac: host.mac.clone(),
                mtu: mtu(host),
                sandbox: None,
            },
            Interface {
                name: pod.name.clone(),
                mac: pod.mac.clone(),
                mtu: mtu(pod),
                sandbox: args.netns.as_ref().map(|p| p.display().to_string()),
            },
        ],
        ips: vec![IpConfig {
            version: legacy.then(|| "4".to_string()),
            address: IpNet::V4(addr),
            gateway: Some(IpAddr::V4(GATEWAY)),
            interface: Some(1),
        }],
        routes: vec![
            Route {
                dst: IpNet::V4(Ipv4Net::new(GATEWAY, 32).expect("32 is a valid IPv4 prefix")),
                gw: None,
            },
            Route {
                dst: IpNet::V4(Ipv4Net::default()),
                gw: Some(IpAddr::V4(GATEWAY)),
            },
        ],
        dns: Dns::default(),
    }
}

/// DEL: deletes the host veth (which takes the container end with it) and releases the
/// address. A missing namespace, interface or allocation is success: DEL is idempotent.
pub fn del(conf: &NetConf, args: &CmdArgs) -> Result<(), Error> {
    // Attachments first: the reverse of ADD.
    del_networks(conf, args)?;
    let host = host_ifname(&args.container_id, &args.ifname);
    with_netlink_host(async |h| link::delete_link(&h, &host).await)?;
    pool(conf)?.release(&args.container_id, &args.ifname)?;
    Ok(())
}

/// CHECK: the container interface exists in the namespace, up, with every address of
/// `prevResult` on it and the routes this plugin created (those listed in `prevResult`); IPAM
/// still holds the address; the host end exists and is up, with its node route, `proxy_arp`
/// and `forwarding`. Every mismatch is reported at once (code 101).
pub fn check(conf: &NetConf, args: &CmdArgs) -> Result<(), Error> {
    let prev = conf.prev_result()?.ok_or_else(|| Error::InvalidConfig {
        problems: vec!["prevResult: CHECK needs the result of ADD".into()],
    })?;
    let netns = open_netns(args)?;
    let mut problems = Vec::new();
    let ifname = &args.ifname;
    let pod_index = prev
        .interfaces
        .iter()
        .position(|i| &i.name == ifname && i.sandbox.is_some());
    let (pod_link, addrs, routes) = with_netlink_ns(&netns, async |h| {
        let Some(l) = link::get_link(&h, ifname).await? else {
            return Ok((None, Vec::new(), Vec::new()));
        };
        let addrs = link::addresses(&h, l.index).await?;
        let routes = link::main_routes(&h).await?;
        Ok((Some(l), addrs, routes))
    })?;
    match &pod_link {
        None => problems.push(format!(
            "interface {ifname} does not exist in the namespace"
        )),
        Some(l) => {
            if !l.up {
                problems.push(format!("interface {ifname} is down"));
            }
            if let Some(want) = pod_index.map(|i| &prev.interfaces[i].mac)
                && !want.is_empty()
                && !want.eq_ignore_ascii_case(&l.mac)
            {
                problems.push(format!(
                    "{ifname} has mac {}, prevResult says {want}",
                    l.mac
                ));
            }
        }
    }
    let pool_ips: Vec<_> = pool(conf)?
        .allocations()?
        .into_iter()
        .filter(|a| a.container_id == args.container_id && &a.ifname == ifname)
        .map(|a| a.ip)
        .collect();
    for ip in &prev.ips {
        if ip.interface.is_some() && ip.interface != pod_index {
            continue;
        }
        let Some(want) = link::v4(&ip.address) else {
            problems.push(format!(
                "address {}: IPv6 is not managed by trellis",
                ip.address
            ));
            continue;
        };
        if pod_link.is_some() && !addrs.contains(&want) {
            problems.push(format!("address {want} is not on {ifname}"));
        }
        if !pool_ips.contains(&want.addr()) {
            problems.push(format!(
                "address {} is not allocated to this container",
                want.addr()
            ));
        }
    }
    // Only the routes this plugin creates: a later plugin in the chain may add its own.
    let gateway_net = IpNet::V4(Ipv4Net::new(GATEWAY, 32).expect("32 is a valid IPv4 prefix"));
    let ours = |r: &&Route| {
        (r.dst == gateway_net && r.gw.is_none())
            || (r.dst == IpNet::V4(Ipv4Net::default()) && r.gw == Some(IpAddr::V4(GATEWAY)))
    };
    for r in prev.routes.iter().filter(ours) {
        let Some(dst) = link::v4(&r.dst) else {
            continue;
        };
        let gw = match r.gw {
            Some(IpAddr::V4(g)) => Some(g),
            _ => None,
        };
        let present = routes.iter().any(|have| {
            have.dst == dst
                && have.gateway == gw
                && (pod_link.is_none() || have.oif == pod_link.as_ref().map(|l| l.index))
        });
        if !present {
            let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
            problems.push(format!("route {dst}{via} dev {ifname} is missing"));
        }
    }
    // The node side is not in the result, but without it the pod is unreachable (spec:
    // "should return an error if it is aware of a condition where the container is generally
    // unreachable").
    let host = host_ifname(&args.container_id, ifname);
    let (host_link, node_routes) = with_netlink_host(async |h| {
        let l = link::get_link(&h, &host).await?;
        Ok((l, link::main_routes(&h).await?))
    })?;
    match &host_link {
        None => problems.push(format!("host interface {host} does not exist")),
        Some(l) => {
            if !l.up {
                problems.push(format!("host interface {host} is down"));
            }
            for ip in &pool_ips {
                let dst = Ipv4Net::new(*ip, 32).expect("32 is a valid IPv4 prefix");
                if !node_routes
                    .iter()
                    .any(|r| r.dst == dst && r.oif == Some(l.index))
                {
                    problems.push(format!("node route {dst} dev {host} is missing"));
                }
            }
            for key in ["proxy_arp", "forwarding"] {
                let path = format!("/proc/sys/net/ipv4/conf/{host}/{key}");
                if !std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
                    problems.push(format!("{path} is not 1"));
                }
            }
        }
    }
    // The attachments, in order, each with its ADD result.
    match multus::read_record(&conf.state_dir, &args.container_id) {
        Ok(Some(record)) => {
            let inv = multus::Invocation {
                container_id: &args.container_id,
                netns: args.netns.as_deref(),
                cni_path: &args.path,
                cni_args: &args.args,
            };
            if record.results.len() < record.networks.len() {
                problems.push("the attachments' ADD did not complete".into());
            }
            for (n, r) in record.networks.iter().zip(&record.results) {
                if let Err(e) = inv.check(n, r) {
                    problems.push(format!("attachment {}: {e}", n.name));
                }
            }
        }
        Ok(None) if !conf.networks.is_empty() => {
            problems.push("no record of the attachments ADD made".into());
        }
        Ok(None) => {}
        Err(e) => problems.push(e),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::CheckFailed {
            container_id: args.container_id.clone(),
            ifname: ifname.clone(),
            problems,
        })
    }
}

/// STATUS (spec 1.1): ready when the state directory is writable, the pool has a free
/// address and the node can route to 169.254.1.1 (without such a route proxy ARP stays
/// silent and no pod could reach its gateway); code 50 otherwise.
pub fn status(conf: &NetConf) -> Result<(), Error> {
    let not_available = |why: String| Error::NotAvailable { why };
    let pool = pool(conf).map_err(|e| not_available(e.to_string()))?;
    let probe = pool
        .dir()
        .join(format!(".status-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            not_available(format!(
                "state directory {} is not writable: {e}",
                pool.dir().display()
            ))
        })?;
    let free = pool.free().map_err(|e| not_available(e.to_string()))?;
    if free == 0 {
        return Err(not_available(format!(
            "network {}: no free address left in {}",
            conf.name,
            conf.pool_cidr()
        )));
    }
    let routable = with_netlink_host(async |h| link::has_route_to(&h, GATEWAY).await)
        .map_err(|e| not_available(e.to_string()))?;
    if !routable {
        return Err(not_available(format!(
            "the node has no route to {GATEWAY} (a default route will do), so proxy ARP on pod \
             veths cannot answer for the pods' gateway"
        )));
    }
    Ok(())
}

/// GC (spec 1.1): releases every allocation not in `cni.dev/valid-attachments` and deletes
/// the host veths those attachments left behind.
pub fn gc(conf: &NetConf) -> Result<Vec<ipam::Allocation>, Error> {
    // Absent is not "none are valid": a caller that forgot the list must not wipe the pool.
    let valid = conf
        .valid_attachments
        .as_deref()
        .ok_or_else(|| Error::InvalidConfig {
            problems: vec![
                "cni.dev/valid-attachments: GC needs the list of valid attachments".into(),
            ],
        })?;
    let (released, mut failed) = pool(conf)?.gc(valid)?;
    let stale: Vec<String> = released
        .iter()
        .map(|a| host_ifname(&a.container_id, &a.ifname))
        .collect();
    if !stale.is_empty() {
        let deleted = with_netlink_host(async |h| {
            let mut errors = Vec::new();
            for name in &stale {
                if let Err(e) = link::delete_link(&h, name).await {
                    errors.push(e);
                }
            }
            Ok(errors)
        });
        match deleted {
            Ok(errors) => failed.extend(errors),
            Err(e) => failed.push(e),
        }
    }
    match failed.len() {
        0 => Ok(released),
        1 => Err(failed.remove(0)),
        _ => Err(Error::Io {
            what: format!(
                "GC: {}",
                failed
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            source: std::io::Error::other(format!("{} resources not removed", failed.len())),
        }),
    }
}

/// One invocation, as the binary runs it: `command` and `env` are `CNI_COMMAND` and the
/// environment, `stdin` the network configuration. Returns the JSON to print on success, or
/// the spec's error JSON on failure.
pub fn execute(
    command: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<serde_json::Value, ErrorReply> {
    let fail = |version: &str, e: Error| ErrorReply::new(version, &e);
    let Some(command) = command.and_then(Command::parse) else {
        let e = Error::InvalidEnv {
            var: "CNI_COMMAND",
            why: format!(
                "{:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION",
                command.unwrap_or("")
            ),
        };
        return Err(fail(LATEST_VERSION, e));
    };
    if command == Command::Version {
        // Spec §5 Version: "cniVersion: The value of cniVersion specified on input".
        let mut info = VersionInfo::current();
        if let Some(v) = conf::peek_version(stdin) {
            info.cni_version = v;
        }
        return Ok(to_json(&info));
    }
    let conf = NetConf::parse(stdin).map_err(|e| {
        let version = conf::peek_version(stdin);
        fail(version.as_deref().unwrap_or(LATEST_VERSION), e)
    })?;
    let version = conf.cni_version.clone();
    let _span = tracing::info_span!(
        "cni",
        command = ?command,
        network = %conf.name,
        container_id = env("CNI_CONTAINERID").unwrap_or_default()
    )
    .entered();
    let outcome = (|| -> Result<serde_json::Value, Error> {
        // As libcni's skel: CHECK came with 0.4.0, STATUS and GC with 1.1.0.
        let needs = match command {
            Command::Check => Some(("CHECK", "0.4.0")),
            Command::Status => Some(("STATUS", "1.1.0")),
            Command::Gc => Some(("GC", "1.1.0")),
            _ => None,
        };
        if let Some((command, min)) = needs
            && !conf.version_at_least(min)
        {
            return Err(Error::CommandNeedsVersion {
                command,
                version: conf.cni_version.clone(),
                min,
            });
        }
        match command {
            Command::Status => status(&conf).map(|()| serde_json::Value::Null),
            Command::Gc => gc(&conf).map(|_| serde_json::Value::Null),
            _ => {
                let args = CmdArgs::from_env(command, &env)?;
                match command {
                    Command::Add => add_for_pod(&conf, &args).map(|r| to_json(&r)),
                    Command::Del => del(&conf, &args).map(|()| serde_json::Value::Null),
                    _ => check(&conf, &args).map(|()| serde_json::Value::Null),
                }
            }
        }
    })();
    outcome.map_err(|e| fail(&version, e))
}

/// Largest network configuration read from stdin; a runtime's is a few KiB.
pub const STDIN_BYTES_MAX: u64 = 1 << 20;

/// The whole plugin process: reads `CNI_COMMAND` and the rest of the environment, the
/// configuration from stdin, runs [`execute`], prints the result or the spec's error JSON on
/// stdout and returns the exit status (1 on error). Installs no tracing subscriber.
pub fn plugin_main() -> std::process::ExitCode {
    use std::io::{IsTerminal, Read, Write};
    let command = std::env::var("CNI_COMMAND").ok();
    let mut stdin = Vec::new();
    // VERSION works without input; reading stdin from a terminal would hang.
    let read = if command.as_deref() == Some("VERSION") && std::io::stdin().is_terminal() {
        Ok(0)
    } else {
        std::io::stdin()
            .take(STDIN_BYTES_MAX + 1)
            .read_to_end(&mut stdin)
    };
    let outcome = match read {
        Ok(n) if n as u64 > STDIN_BYTES_MAX => Err(ErrorReply::new(
            LATEST_VERSION,
            &Error::InvalidConfig {
                problems: vec![format!(
                    "the configuration on stdin is larger than {STDIN_BYTES_MAX} bytes"
                )],
            },
        )),
        Ok(_) => execute(command.as_deref(), |k| std::env::var(k).ok(), &stdin),
        Err(e) => Err(ErrorReply::new(
            LATEST_VERSION,
            &Error::io("reading the network configuration from stdin", e),
        )),
    };
    let (json, code) = match outcome {
        Ok(serde_json::Value::Null) => return std::process::ExitCode::SUCCESS,
        Ok(v) => (v.to_string(), std::process::ExitCode::SUCCESS),
        Err(reply) => {
            tracing::error!(code = reply.code, details = %reply.details, "{}", reply.msg);
            (
                serde_json::to_string(&reply).expect("error reply serializes"),
                std::process::ExitCode::FAILURE,
            )
        }
    };
    // Nothing useful to do if stdout is closed; the exit status still tells.
    let _ = writeln!(std::io::stdout().lock(), "{json}");
    code
}

fn to_json(v: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).expect("result types serialize to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_cilium_shaped_and_stable() {
        let a = host_ifname("0123456789abcdef", "eth0");
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("lxc"));
        assert!(a[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, host_ifname("0123456789abcdef", "eth0"));
        assert_ne!(a, host_ifname("0123456789abcdef", "eth1"));
        assert_ne!(a, host_ifname("0123456789abcdeg", "eth0"));
    }

    #[test]
    fn execute_reports_errors_as_spec_json() {
        let no_env = |_: &str| None;
        let e = execute(Some("ADD"), no_env, b"{").expect_err("bad json");
        assert_eq!((e.code, e.cni_version.as_str()), (6, LATEST_VERSION));
        let e = execute(None, no_env, b"{}").expect_err("no command");
        assert_eq!(e.code, 4);
        let conf = br#"{"cniVersion":"0.4.0","name":"n","type":"trellis-cni","podCIDR":"10.1.0.0/24","stateDir":"/tmp/x"}"#;
        let e = execute(Some("ADD"), no_env, conf).expect_err("no env");
        assert_eq!((e.code, e.cni_version.as_str()), (4, "0.4.0"));
        let v = execute(Some("VERSION"), no_env, b"").expect("version");
        assert_eq!(v["cniVersion"], "1.1.0");
        let v = execute(Some("VERSION"), no_env, br#"{"cniVersion":"0.4.0"}"#).expect("version");
        assert_eq!(v["cniVersion"], "0.4.0");
    }
}
