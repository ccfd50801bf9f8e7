//! Flows in the binary: the `--observe-listen` flags of `trellis gateway` and `trellis dns`,
//! the records of those engines turned into Hubble flows, and `trellis observe` (a client
//! modelled on `hubble observe`).
//!
//! Engines do not know about flows; here a gateway request record or a DNS query record
//! becomes a `flow::Flow`, with pods (namespace, name, labels, workload) looked up by IP in
//! the current snapshot.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use observe::proto::flow::{
    self, CiliumEventType, Endpoint, Flow, FlowType, Ip, IpVersion, L7FlowType, Layer4, Layer7,
    Service, TrafficDirection, Verdict, layer4, layer7,
};
use observe::proto::observer::{
    GetFlowsRequest, ServerStatusRequest, get_flows_response::ResponseTypes,
    observer_client::ObserverClient,
};
use observe::wire::Reader;

/// Flags of the components that produce flows (and the `observe:` section of `trellis up`'s
/// config, same names in camelCase).
#[derive(Debug, Clone, PartialEq, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ServeArgs {
    /// Serve Hubble's Observer gRPC API (GetFlows, ServerStatus, GetNodes) here, e.g.
    /// 127.0.0.1:4245. Flows are recorded only when this or --ui-listen is set.
    #[arg(long)]
    pub observe_listen: Option<SocketAddr>,
    /// Serve the flow web UI (live flow table, service map) here, e.g. 127.0.0.1:4246.
    #[arg(long)]
    pub ui_listen: Option<SocketAddr>,
    /// Flows kept for readers (the ring buffer; older flows are overwritten).
    #[arg(long, default_value_t = observe::hub::FLOWS_MAX_DEFAULT)]
    pub flows_max: usize,
    /// The node name flows carry (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
}

impl Default for ServeArgs {
    fn default() -> ServeArgs {
        ServeArgs {
            observe_listen: None,
            ui_listen: None,
            flows_max: observe::hub::FLOWS_MAX_DEFAULT,
            node_name: None,
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Where the flow API and UI were bound (the ports the OS picked for `:0`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Bound {
    pub observer: Option<SocketAddr>,
    pub ui: Option<SocketAddr>,
}

/// Starts the flow buffer, its API and its UI when `--observe-listen` or `--ui-listen` is
/// set; registers the Hubble metrics into `registry`. Needs the runtime.
pub async fn start(
    args: &ServeArgs,
    registry: &mut prometheus_client::registry::Registry,
    health: observe::ui::Health,
) -> anyhow::Result<Option<(observe::Observer, Bound)>> {
    if args.observe_listen.is_none() && args.ui_listen.is_none() {
        return Ok(None);
    }
    let obs = observe::Observer::start(&observe::Config {
        flows_max: args.flows_max,
        node_name: args.node_name.clone().unwrap_or_else(host_name),
        ..Default::default()
    });
    obs.register(registry);
    let bound = serve(&obs, args.observe_listen, args.ui_listen, health).await?;
    Ok(Some((obs, bound)))
}

/// Serves the Observer gRPC API and the web UI of `obs` where asked, and says where. The UI
/// shows health results when `health` is given.
pub async fn serve(
    obs: &observe::Observer,
    observe_listen: Option<SocketAddr>,
    ui_listen: Option<SocketAddr>,
    health: observe::ui::Health,
) -> anyhow::Result<Bound> {
    let mut out = Bound::default();
    if let Some(addr) = observe_listen {
        let bound = observe::spawn(addr, obs)
            .await
            .with_context(|| format!("cannot bind the observer address {addr}"))?;
        eprintln!("observer API (Hubble gRPC) on http://{bound}");
        out.observer = Some(bound);
    }
    if let Some(addr) = ui_listen {
        let bound = observe::ui::spawn(addr, obs, health)
            .await
            .with_context(|| format!("cannot bind the UI address {addr}"))?;
        eprintln!("flow UI on http://{bound} (/ /api/flows /api/map /api/status)");
        out.ui = Some(bound);
    }
    Ok(out)
}

/// Pods by IP, for naming flow endpoints (swapped on reload).
pub type Pods = observe::endpoints::Endpoints;

fn ip_version(ip: IpAddr) -> i32 {
    match ip {
        IpAddr::V4(_) => IpVersion::IPv4 as i32,
        IpAddr::V6(_) => IpVersion::IPv6 as i32,
    }
}

/// One gateway request as an L7 flow: the client (after X-Forwarded-For) to the endpoint
/// that answered, with the route in the summary.
pub fn gateway_flow(r: &gateway::record::RequestRecord, pods: &Pods) -> Flow {
    let client = r.client;
    let dst_ip = r.upstream.map(|u| u.ip());
    let dst_port = r
        .upstream
        .map_or(u32::from(r.listener_port), |u| u32::from(u.port()));
    let service = r.backend.and_then(|b| {
        let (ns, rest) = b.split_once('/')?;
        let name = rest.rsplit_once(':').map_or(rest, |(n, _)| n);
        Some(Service {
            name: name.to_string(),
            namespace: ns.to_string(),
        })
    });
    let mut destination = match dst_ip {
        Some(ip) => pods.endpoint(ip),
        None => Endpoint {
            labels: vec!["reserved:host".into()],
            ..Default::default()
        },
    };
    if destination.namespace.is_empty()
        && let Some(s) = &service
    {
        destination.namespace.clone_from(&s.namespace);
    }
    let mut f = Flow {
        time: Some(observe::time::from_system(r.started)),
        verdict: Verdict::Forwarded as i32,
        ip: Some(Ip {
            source: client.ip().to_string(),
            destination: dst_ip.map(|i| i.to_string()).unwrap_or_default(),
            ip_version: ip_version(client.ip()),
            encrypted: false,
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(flow::Tcp {
                source_port: u32::from(client.port()),
                destination_port: dst_port,
                flags: None,
            })),
        }),
        source: Some(pods.endpoint(client.ip())),
        destination: Some(destination),
        r#type: FlowType::L7 as i32,
        destination_names: vec![r.host.to_string()],
        l7: Some(Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: u64::try_from(r.latency.as_nanos()).unwrap_or(u64::MAX),
            record: Some(layer7::Record::Http(flow::Http {
                code: u32::from(r.status),
                method: r.method.to_string(),
                url: format!("{}://{}{}", r.scheme, r.host, r.path_and_query),
                protocol: r.version.to_string(),
                headers: Vec::new(),
            })),
        }),
        event_type: Some(CiliumEventType {
            r#type: observe::query::EVENT_L7,
            sub_type: 0,
        }),
        destination_service: service,
        traffic_direction: TrafficDirection::Ingress as i32,
        is_reply: Some(false),
        proxy_port: u32::from(r.listener_port),
        ..Default::default()
    };
    let mut summary = observe::format::summary(&f);
    match r.route {
        Some(route) => {
            summary.push_str(" route ");
            summary.push_str(route);
        }
        None => summary.push_str(" no route"),
    }
    if let Some(b) = r.backend {
        summary.push_str(" backend ");
        summary.push_str(b);
    }
    f.summary = summary;
    f
}

/// One DNS query as an L7 DNS flow: the client to the server, with the view in the summary.
pub fn dns_flow(r: &dns::record::QueryRecord, pods: &Pods) -> Flow {
    let ports = (u32::from(r.client.port()), u32::from(r.server.port()));
    let l4 = if r.transport == "tcp" {
        layer4::Protocol::Tcp(flow::Tcp {
            source_port: ports.0,
            destination_port: ports.1,
            flags: None,
        })
    } else {
        layer4::Protocol::Udp(flow::Udp {
            source_port: ports.0,
            destination_port: ports.1,
        })
    };
    let mut f = Flow {
        time: Some(observe::time::from_system(r.started)),
        verdict: Verdict::Forwarded as i32,
        ip: Some(Ip {
            source: r.client.ip().to_string(),
            destination: r.server.ip().to_string(),
            ip_version: ip_version(r.client.ip()),
            encrypted: false,
        }),
        l4: Some(Layer4 { protocol: Some(l4) }),
        source: Some(pods.endpoint(r.client.ip())),
        destination: Some(pods.endpoint(r.server.ip())),
        r#type: FlowType::L7 as i32,
        l7: Some(Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: u64::try_from(r.latency.as_nanos()).unwrap_or(u64::MAX),
            record: Some(layer7::Record::Dns(flow::Dns {
                query: r.query.clone(),
                ips: r.ips.iter().map(ToString::to_string).collect(),
                ttl: r.ttl,
                cnames: r.cnames.clone(),
                observation_source: if r.forwarded { "forwarder" } else { "zone" }.into(),
                rcode: u32::from(r.rcode),
                qtypes: r.qtypes.clone(),
                rrtypes: r.rrtypes.clone(),
            })),
        }),
        event_type: Some(CiliumEventType {
            r#type: observe::query::EVENT_L7,
            sub_type: 0,
        }),
        traffic_direction: TrafficDirection::Egress as i32,
        is_reply: Some(false),
        ..Default::default()
    };
    let mut summary = observe::format::summary(&f);
    summary.push_str(" view ");
    summary.push_str(if r.view.is_empty() { "-" } else { &r.view });
    f.summary = summary;
    f
}

/// The gateway's observer: every request is recorded into `flows` as a few bytes, built into
/// a flow only when read (pods are named from the table of that moment).
pub fn gateway_observer(flows: &observe::Flows, pods: Arc<Pods>) -> gateway::record::Observer {
    let recorder = flows.recorder(GatewayRequests { pods });
    gateway::record::Observer(Arc::new(move |r: &gateway::record::RequestRecord<'_>| {
        recorder.record(|b| write_request(r, b));
    }))
}

/// Nanoseconds since the epoch (0 before it).
fn epoch_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Index byte of a method or version outside observe's tables: the text follows.
const OTHER: u8 = u8::MAX;
/// The fixed head of a gateway record.
const HEAD_BYTES: usize = 24;
/// Flags (head byte 22): which optional parts follow.
const HAS_PEER: u8 = 1;
const HAS_UPSTREAM: u8 = 2;
const HAS_ROUTE: u8 = 4;
const HAS_BACKEND: u8 = 8;

/// A gateway request record's bytes: a fixed head (what the metrics count, readable without
/// walking the record: latency at 8, status at 16, method and version indices at 20 and 21,
/// flags at 22), then the addresses and the texts. Written once per request, so it is kept
/// short in code as well as in bytes: one array for the head, one loop for the texts.
fn write_request(r: &gateway::record::RequestRecord<'_>, b: &mut Vec<u8>) {
    // An index stands for its text only when it is that text (a method sent in lower case
    // is counted as its upper-case label, but recorded as sent).
    let exact = |i: Option<u8>, table: &[&str], text: &str| {
        i.filter(|&i| table.get(usize::from(i)) == Some(&text))
    };
    let method = exact(
        observe::metrics::method_index(r.method),
        &observe::metrics::METHODS,
        r.method,
    );
    let version = exact(
        observe::metrics::protocol_index(r.version),
        &observe::metrics::PROTOCOLS,
        r.version,
    );
    // The peer is mostly the client itself.
    let peer = (r.peer != r.client).then_some(r.peer);
    let flag = |on: bool, f: u8| if on { f } else { 0 };
    let mut head = [0u8; HEAD_BYTES];
    head[..8].copy_from_slice(&epoch_nanos(r.started).to_le_bytes());
    let latency = u64::try_from(r.latency.as_nanos()).unwrap_or(u64::MAX);
    head[8..16].copy_from_slice(&latency.to_le_bytes());
    head[16..18].copy_from_slice(&r.status.to_le_bytes());
    head[18..20].copy_from_slice(&r.listener_port.to_le_bytes());
    head[20] = method.unwrap_or(OTHER);
    head[21] = version.unwrap_or(OTHER);
    head[22] = flag(peer.is_some(), HAS_PEER)
        | flag(r.upstream.is_some(), HAS_UPSTREAM)
        | flag(r.route.is_some(), HAS_ROUTE)
        | flag(r.backend.is_some(), HAS_BACKEND);
    b.extend_from_slice(&head);
    let mut w = observe::wire::Writer(b);
    w.addr(r.client);
    if let Some(p) = peer {
        w.addr(p);
    }
    if let Some(u) = r.upstream {
        w.addr(u);
    }
    let texts = [
        method.is_none().then_some(r.method),
        version.is_none().then_some(r.version),
        Some(r.scheme),
        Some(r.host),
        Some(r.path_and_query),
        r.route,
        r.backend,
    ];
    for t in texts.into_iter().flatten() {
        w.str(t);
    }
}

/// Reads what [`write_request`] wrote.
fn read_request(b: &[u8]) -> Option<gateway::record::RequestRecord<'_>> {
    let (head, rest) = b.split_first_chunk::<HEAD_BYTES>()?;
    let mut h = observe::wire::Reader::new(head);
    let started = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(h.u64()?);
    let latency = std::time::Duration::from_nanos(h.u64()?);
    let (status, listener_port) = (h.u16()?, h.u16()?);
    let (method, version, flags) = (h.u8()?, h.u8()?, h.u8()?);
    let mut r = Reader::new(rest);
    let has = |f: u8| flags & f != 0;
    let client = r.addr()?;
    let peer = r.when(has(HAS_PEER), Reader::addr)?.unwrap_or(client);
    let upstream = r.when(has(HAS_UPSTREAM), Reader::addr)?;
    let mut text = |i: u8, table: &[&'static str]| match i {
        OTHER => r.str(),
        i => table.get(usize::from(i)).copied(),
    };
    let method = text(method, &observe::metrics::METHODS)?;
    let version = text(version, &observe::metrics::PROTOCOLS)?;
    let (scheme, host, path_and_query) = (r.str()?, r.str()?, r.str()?);
    let route = r.when(has(HAS_ROUTE), Reader::str)?;
    let backend = r.when(has(HAS_BACKEND), Reader::str)?;
    Some(gateway::record::RequestRecord {
        started,
        latency,
        method,
        version,
        scheme,
        host,
        path_and_query,
        status,
        client,
        peer,
        listener_port,
        route,
        backend,
        upstream,
    })
}

/// The gateway's records: one per request.
struct GatewayRequests {
    pods: Arc<Pods>,
}

impl observe::RecordKind for GatewayRequests {
    fn build(&self, bytes: &[u8]) -> Flow {
        match read_request(bytes) {
            Some(r) => gateway_flow(&r, &self.pods),
            None => Flow {
                summary: "unreadable gateway record".into(),
                ..Default::default()
            },
        }
    }

    fn count(&self, bytes: &[u8], m: &mut observe::metrics::Batch<'_>) {
        let Some(head) = bytes.first_chunk::<HEAD_BYTES>() else {
            return;
        };
        let mut r = observe::wire::Reader::new(&head[8..]);
        let (Some(latency), Some(status)) = (r.u64(), r.u16()) else {
            return;
        };
        // A method or version outside the tables (or not as the table writes it) is text in
        // the record: read it then (rare), so `get` counts as `GET`.
        let (method, version) = match (head[20], head[21]) {
            (OTHER, _) | (_, OTHER) => match read_request(bytes) {
                Some(r) => (
                    observe::metrics::method_index(r.method),
                    observe::metrics::protocol_index(r.version),
                ),
                None => return,
            },
            (m, v) => (Some(m), Some(v)),
        };
        m.processed("L7", "HTTP", Verdict::Forwarded);
        m.http_indexed(method, version, u32::from(status), latency);
    }
}

/// The DNS server's observer: every answered query becomes a flow pushed into `flows`.
pub fn dns_observer(flows: observe::Flows, pods: Arc<Pods>) -> dns::record::Observer {
    dns::record::Observer(Arc::new(move |r: dns::record::QueryRecord| {
        flows.push(dns_flow(&r, &pods))
    }))
}

// ---------------------------------------------------------------------------------------
// `trellis observe`

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Compact,
    Json,
    Table,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The observer API of a trellis process (its --observe-listen), or Hubble's.
    #[arg(long, default_value = "127.0.0.1:4245")]
    pub server: String,
    /// Keep printing new flows as they come.
    #[arg(short, long)]
    pub follow: bool,
    /// The last N stored flows (default 20 unless --follow, --since or --all).
    #[arg(long)]
    pub last: Option<u64>,
    /// The first N stored flows.
    #[arg(long, conflicts_with_all = ["last", "follow"])]
    pub first: Option<u64>,
    /// Every stored flow.
    #[arg(long, conflicts_with_all = ["last", "first"])]
    pub all: bool,
    /// Flows since this time: RFC 3339 or a duration ago (5m, 1h30m).
    #[arg(long)]
    pub since: Option<String>,
    /// Flows until this time: RFC 3339 or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
    /// The filters (the same flags as the UI's query-string keys).
    #[command(flatten)]
    pub query: observe::query::Query,
    #[arg(short, long, value_enum, default_value = "compact")]
    pub output: Output,
    /// Print the server's status (flows stored, seen, lost) instead of flows.
    #[arg(long)]
    pub status: bool,
    /// Serve the flow web UI here with the server's flows (those passing the filters), read
    /// into a local buffer, instead of printing them; runs until interrupted.
    #[arg(long, conflicts_with_all = ["status", "first", "all"])]
    pub ui_listen: Option<SocketAddr>,
}

/// The GetFlows request for the flags.
pub fn request(a: &Args, now: SystemTime) -> anyhow::Result<GetFlowsRequest> {
    let time = |flag: &str, v: &Option<String>| -> anyhow::Result<_> {
        v.as_deref()
            .map(|t| observe::time::parse(t, now).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
            .transpose()
    };
    let since = time("since", &a.since)?;
    let until = time("until", &a.until)?;
    let number = match (a.first, a.last) {
        (Some(n), _) | (None, Some(n)) => n,
        // hubble's default: the last 20, unless following or reading a time range.
        (None, None) if a.follow || a.all || since.is_some() || until.is_some() => 0,
        (None, None) => 20,
    };
    Ok(GetFlowsRequest {
        number,
        first: a.first.is_some(),
        follow: a.follow,
        whitelist: a.query.whitelist()?,
        blacklist: Vec::new(),
        since,
        until,
    })
}

/// A gRPC error as a person reads it: what failed, the server's message and the code.
fn rpc_error(what: &str, s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what} failed: {} ({:?})", s.message(), s.code())
}

fn endpoint_uri(server: &str) -> String {
    if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    }
}

/// `trellis observe --ui-listen`: follows the server's flows into a local buffer and serves
/// the web UI on it. What the server reports lost stays counted as lost here.
async fn relay(
    client: &mut ObserverClient<tonic::transport::Channel>,
    mut req: GetFlowsRequest,
    args: &Args,
    addr: SocketAddr,
) -> anyhow::Result<ExitCode> {
    let flows_max = observe::hub::FLOWS_MAX_DEFAULT;
    req.follow = true;
    req.number = args.last.unwrap_or(flows_max as u64);
    let obs = observe::Observer::start(&observe::Config {
        flows_max,
        node_name: args.server.clone(),
        ..Default::default()
    });
    let flows = obs.flows();
    let mut stream = client
        .get_flows(req)
        .await
        .map_err(|s| rpc_error("GetFlows", &s))?
        .into_inner();
    serve(&obs, None, Some(addr), None).await?;
    loop {
        let next = tokio::select! {
            m = stream.message() => m,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        let Some(resp) = next.map_err(|s| rpc_error("the flow stream", &s))? else {
            anyhow::bail!("the server ended the flow stream");
        };
        match resp.response_types {
            Some(ResponseTypes::Flow(f)) => flows.push(f),
            Some(ResponseTypes::LostEvents(l)) => flows.lost(
                flow::LostEventSource::try_from(l.source)
                    .unwrap_or(flow::LostEventSource::UnknownLostEventSource),
                l.num_events_lost,
            ),
            _ => {}
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let req = request(args, SystemTime::now())?;
    let json = observe::format::Json::new().context("cannot read the flow descriptors")?;
    crate::gateway::runtime()?.block_on(async move {
        let uri = endpoint_uri(&args.server);
        let channel = tonic::transport::Endpoint::from_shared(uri.clone())
            .with_context(|| format!("--server {:?} is not an address", args.server))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to the observer at {uri}"))?;
        let mut client = ObserverClient::new(channel);
        if let Some(addr) = args.ui_listen {
            return relay(&mut client, req, args, addr).await;
        }
        if args.status {
            let s = client
                .server_status(ServerStatusRequest {})
                .await
                .map_err(|s| rpc_error("ServerStatus", &s))?
                .into_inner();
            match args.output {
                Output::Json => println!(
                    "{}",
                    json.encode("observer.ServerStatusResponse", &s)
                        .map_err(anyhow::Error::msg)?
                ),
                _ => println!(
                    "Current/Max Flows: {}/{}\nFlows seen: {}\nLost events: {}\nUptime: {}s\nVersion: {}",
                    s.num_flows,
                    s.max_flows,
                    s.seen_flows,
                    s.lost_events,
                    s.uptime_ns / 1_000_000_000,
                    s.version
                ),
            }
            return Ok(ExitCode::SUCCESS);
        }
        let mut stream = client
            .get_flows(req)
            .await
            .map_err(|s| rpc_error("GetFlows", &s))?
            .into_inner();
        if args.output == Output::Table {
            println!("{}", observe::format::table_header());
        }
        loop {
            let next = tokio::select! {
                m = stream.message() => m,
                _ = tokio::signal::ctrl_c() => break,
            };
            let Some(resp) = next.map_err(|s| rpc_error("the flow stream", &s))? else {
                break;
            };
            let line = match args.output {
                Output::Json => {
                    let v = json
                        .encode("observer.GetFlowsResponse", &resp)
                        .map_err(anyhow::Error::msg)?;
                    Some(v.to_string())
                }
                Output::Compact => observe::format::response_line(&resp, false),
                Output::Table => observe::format::response_line(&resp, true),
            };
            if let Some(l) = line {
                println!("{l}");
            }
            if let Some(ResponseTypes::LostEvents(l)) = &resp.response_types
                && args.output == Output::Json
            {
                eprintln!("{}", observe::format::lost_text(l));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(peer: &str, upstream: Option<&str>) -> gateway::record::RequestRecord<'a> {
        gateway::record::RequestRecord {
            started: SystemTime::UNIX_EPOCH + std::time::Duration::new(1_790_000_000, 123_456_789),
            latency: std::time::Duration::from_micros(1234),
            method: "PATCH",
            version: "HTTP/2",
            scheme: "https",
            host: "wiki.example.com",
            path_and_query: "/a/b?c=d&é",
            status: 418,
            client: "203.0.113.9:51000".parse().expect("addr"),
            peer: peer.parse().expect("addr"),
            listener_port: 443,
            route: Some("apps/wiki"),
            backend: upstream.map(|_| "apps/wiki:8080"),
            upstream: upstream.map(|u| u.parse().expect("addr")),
        }
    }

    #[test]
    fn a_gateway_record_reads_back_as_written_and_cut_records_are_refused() {
        let odd = gateway::record::RequestRecord {
            method: "BREW",
            version: "HTTP/0.9",
            ..request("10.0.0.1:40000", None)
        };
        let lower = gateway::record::RequestRecord {
            method: "patch",
            ..request("10.0.0.1:40000", None)
        };
        for r in [
            request("203.0.113.9:51000", Some("[fd00::5]:8080")),
            request("10.0.0.1:40000", None),
            odd,
            lower,
        ] {
            let mut b = Vec::new();
            write_request(&r, &mut b);
            assert_eq!(read_request(&b), Some(r));
            for cut in 0..b.len() {
                assert_eq!(read_request(&b[..cut]), None, "cut at {cut}");
            }
        }
        let kind = GatewayRequests {
            pods: Arc::new(Pods::default()),
        };
        let mut b = Vec::new();
        write_request(&request("10.0.0.1:40000", Some("10.69.1.5:8080")), &mut b);
        let f = observe::RecordKind::build(&kind, &b);
        let http = match f.l7.and_then(|l| l.record) {
            Some(layer7::Record::Http(h)) => h,
            other => panic!("an HTTP flow: {other:?}"),
        };
        assert_eq!(http.url, "https://wiki.example.com/a/b?c=d&é");
        assert_eq!((http.code, http.method.as_str()), (418, "PATCH"));
        assert!(
            f.summary
                .ends_with("route apps/wiki backend apps/wiki:8080"),
            "{}",
            f.summary
        );
        assert_eq!(
            f.time.map(|t| (t.seconds, t.nanos)),
            Some((1_790_000_000, 123_456_789))
        );
        let bad = observe::RecordKind::build(&kind, &b[..10]);
        assert_eq!(bad.summary, "unreadable gateway record");

        // Counting reads the fixed head only; a cut head counts nothing.
        let metrics = observe::metrics::Metrics::default();
        {
            let mut batch = metrics.batch();
            observe::RecordKind::count(&kind, &b, &mut batch);
            let mut b2 = Vec::new();
            write_request(&odd, &mut b2);
            observe::RecordKind::count(&kind, &b2, &mut batch);
            observe::RecordKind::count(&kind, &b2[..21], &mut batch);
            let mut b3 = Vec::new();
            write_request(&lower, &mut b3);
            observe::RecordKind::count(&kind, &b3, &mut batch);
        }
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            r#"hubble_http_requests_total{method="PATCH",protocol="HTTP/2",status="418",reporter="server"} 2"#,
            r#"hubble_http_requests_total{method="other",protocol="other",status="418",reporter="server"} 1"#,
            r#"hubble_flows_processed_total{type="L7",subtype="HTTP",verdict="FORWARDED"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    proptest::proptest! {
        /// Any bytes: reading, counting and building never panic; anything written reads
        /// back as written.
        #[test]
        fn records_read_back_and_odd_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            method in "[A-Za-z]{1,8}",
            host in "[a-z0-9.-]{0,40}",
            path in "/[ -~]{0,60}",
            status in proptest::prelude::any::<u16>(),
            route in proptest::option::of("[a-z/-]{1,20}"),
        ) {
            let kind = GatewayRequests { pods: Arc::new(Pods::default()) };
            let metrics = observe::metrics::Metrics::default();
            let _ = read_request(&bytes);
            observe::RecordKind::count(&kind, &bytes, &mut metrics.batch());
            let _ = observe::RecordKind::build(&kind, &bytes);
            let r = gateway::record::RequestRecord {
                method: &method,
                host: &host,
                path_and_query: &path,
                status,
                route: route.as_deref(),
                ..request("10.0.0.1:40000", Some("10.69.0.3:80"))
            };
            let mut b = Vec::new();
            write_request(&r, &mut b);
            proptest::prop_assert_eq!(read_request(&b), Some(r));
        }
    }
}
