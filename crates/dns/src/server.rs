//! UDP and TCP listeners answering from the current views, forwarding the rest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use arc_swap::ArcSwap;
use hickory_proto::op::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::answer::{Transport, answer, encode, is_local, parse};
use crate::forward::Forwarder;
use crate::replay::{Replay, Source};
use crate::views::Views;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;
use tokio::io::Interest;

/// TCP connections idle longer than this are closed (RFC 7766 suggests seconds).
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Once a message's length has come, the message must come within this, and an answer must
/// be taken within it (CoreDNS's read and write timeouts, from miekg/dns: 2 s).
pub const TCP_MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);
/// TCP connections open at once; one more is closed on arrival and counted
/// (`trellis_dns_tcp_connections_refused_total`). `Ops::tcp_connections_max` lowers it.
pub const TCP_CONNECTIONS_MAX: usize = 1024;
/// How long accepting pauses after an error (EMFILE, ENFILE), so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Counts a TCP connection closed for a message or answer that did not move in time.
fn timed_out(ops: &Ops) {
    if let Some(m) = &ops.metrics {
        m.tcp_timeouts.inc();
    }
}

/// A running DNS server.
#[derive(Debug)]
pub struct Running {
    views: Arc<ArcSwap<Views>>,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
}

impl Running {
    /// Swaps in new views; queries in flight finish on the old ones.
    pub fn update(&self, views: Views) {
        self.views.store(Arc::new(views));
    }
}

/// An rcode as dig and CoreDNS write it.
pub(crate) fn rcode_name(r: hickory_proto::op::ResponseCode) -> String {
    use hickory_proto::op::ResponseCode as R;
    match r {
        R::NoError => "NOERROR".into(),
        R::FormErr => "FORMERR".into(),
        R::ServFail => "SERVFAIL".into(),
        R::NXDomain => "NXDOMAIN".into(),
        R::NotImp => "NOTIMP".into(),
        R::Refused => "REFUSED".into(),
        other => u16::from(other).to_string(),
    }
}

/// Told of every answer with addresses before it goes out, and may hold it back: the fabric's
/// toFQDNs makes the answered addresses reachable for the asking pod first, so the pod's
/// first connection after the lookup is never dropped.
pub trait Gate: Send + Sync {
    /// Whether the names `client` may ask are restricted (then [`Gate::asked`] decides each
    /// query before it is answered or forwarded).
    fn restricts(&self, _client: std::net::IpAddr) -> bool {
        false
    }

    /// Whether `client` may ask `name` of this server (`server`, the address the query came
    /// to) over `proto` (6 or 17): REFUSED otherwise, as Cilium's DNS proxy answers.
    fn asked<'a>(
        &'a self,
        _client: std::net::IpAddr,
        _server: std::net::IpAddr,
        _proto: u8,
        _name: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = GateVerdict> + Send + 'a>> {
        Box::pin(std::future::ready(GateVerdict::Pass))
    }

    /// `name` as the client asked it; `addrs` the A/AAAA records of the answer; `ttl` their
    /// smallest TTL.
    fn answered<'a>(
        &'a self,
        client: std::net::IpAddr,
        name: &'a str,
        addrs: Vec<std::net::IpAddr>,
        ttl: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = GateVerdict> + Send + 'a>>;
}

/// What a [`Gate`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateVerdict {
    /// Send the answer.
    Pass,
    /// Send REFUSED instead.
    Refuse,
}

/// A shared [`Gate`].
#[derive(Clone)]
pub struct GateRef(pub Arc<dyn Gate>);

impl std::fmt::Debug for GateRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

/// Asks the gate, if there is one, about an answer with addresses.
async fn gated(ops: &Ops, p: &Pending, resp: Message, peer: SocketAddr) -> Message {
    let Some(gate) = &ops.gate else {
        return resp;
    };
    let addrs: Vec<std::net::IpAddr> = resp
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            hickory_proto::rr::RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    if addrs.is_empty() {
        return resp;
    }
    let ttl = resp.answers.iter().map(|r| r.ttl).min().unwrap_or(0);
    let name = p.asked_name();
    match gate.0.answered(peer.ip(), &name, addrs, ttl).await {
        GateVerdict::Pass => resp,
        GateVerdict::Refuse => Forwarder::refused(p.req()),
    }
}

/// What to record about the queries a server answers.
#[derive(Clone, Debug, Default)]
pub struct Ops {
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// One line per query on stdout, in the shape of CoreDNS's `log` plugin.
    pub query_log: bool,
    /// Told about every answered query (the binary makes flows of them), if anyone.
    pub observer: Option<crate::record::Observer>,
    /// TCP connections open at once when not [`TCP_CONNECTIONS_MAX`].
    pub tcp_connections_max: Option<usize>,
    /// Sees every answer with addresses before it is sent (toFQDNs); with a gate, UDP
    /// answers are not replayed from the listener's cache.
    pub gate: Option<GateRef>,
}

/// A parsed query, answered from the querier's view when the view holds its name.
struct Pending {
    original: Message,
    /// The query as a rewrite rule changed it.
    rewritten: Option<Message>,
    view: String,
    started: std::time::Instant,
    started_at: std::time::SystemTime,
    /// The answer from the view; `None` when the name is for the forwarder.
    local: Option<Message>,
    /// Whether `local` was set (it is taken before the response is finished).
    answered_locally: bool,
}

impl Pending {
    fn req(&self) -> &Message {
        self.rewritten.as_ref().unwrap_or(&self.original)
    }

    /// The name the client asked (not a rewrite's).
    fn asked_name(&self) -> String {
        self.original
            .queries
            .first()
            .map(|q| q.name().to_ascii())
            .unwrap_or_default()
    }
}

/// Parses a query, applies rewrites and answers it from the view when it can. `Err` carries
/// the FORMERR to send back (or nothing to send).
fn prepare(
    current: &Views,
    forwarding: bool,
    packet: &[u8],
    peer: SocketAddr,
) -> Result<Pending, Option<Vec<u8>>> {
    let started = std::time::Instant::now();
    let original = parse(packet)?;
    // A rewrite rule changes the name looked up; the client still sees its own name.
    let rewritten = original.queries.first().and_then(|q| {
        let to = current.rewrite(&q.name().to_lowercase().to_ascii())?;
        let mut r = original.clone();
        r.queries[0].set_name(hickory_proto::rr::Name::from_ascii(&to).ok()?);
        Some(r)
    });
    let (name, zone) = current.for_client(peer.ip());
    let req = rewritten.as_ref().unwrap_or(&original);
    let local = if forwarding && !is_local(zone, req) {
        None
    } else {
        Some(answer(zone, req))
    };
    Ok(Pending {
        view: name.to_string(),
        original,
        rewritten,
        started,
        started_at: std::time::SystemTime::now(),
        answered_locally: local.is_some(),
        local,
    })
}

/// The record of one answered query, for an observer.
fn record(
    p: &Pending,
    resp: &Message,
    peer: SocketAddr,
    server: SocketAddr,
    transport: &'static str,
) -> crate::record::QueryRecord {
    use hickory_proto::rr::RData;
    let mut ips = Vec::new();
    let mut cnames = Vec::new();
    for r in &resp.answers {
        match &r.data {
            RData::A(a) => ips.push(std::net::IpAddr::V4(a.0)),
            RData::AAAA(a) => ips.push(std::net::IpAddr::V6(a.0)),
            RData::CNAME(c) => cnames.push(c.0.to_ascii()),
            _ => {}
        }
    }
    crate::record::QueryRecord {
        started: p.started_at,
        latency: p.started.elapsed(),
        client: peer,
        server,
        transport,
        view: p.view.clone(),
        query: p.asked_name(),
        qtypes: p
            .original
            .queries
            .iter()
            .map(|q| q.query_type().to_string())
            .collect(),
        rcode: u16::from(resp.metadata.response_code),
        ips,
        cnames,
        rrtypes: resp
            .answers
            .iter()
            .map(|r| r.record_type().to_string())
            .collect(),
        ttl: resp.answers.iter().map(|r| r.ttl).min().unwrap_or(0),
        forwarded: !p.answered_locally,
    }
}

/// Puts the client's own name back, counts, logs and encodes the response.
fn finish(
    p: &Pending,
    mut resp: Message,
    ops: &Ops,
    packet_len: usize,
    peer: SocketAddr,
    server: SocketAddr,
    t: Transport,
) -> Option<Vec<u8>> {
    if let (Some(rw), Some(q)) = (&p.rewritten, p.original.queries.first()) {
        let looked_up = rw.queries[0].name().to_lowercase();
        for rec in resp.answers.iter_mut() {
            if rec.name.to_lowercase() == looked_up {
                rec.name = q.name().clone();
            }
        }
        resp.queries = p.original.queries.clone();
    }
    let proto = match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    };
    let rcode = rcode_name(resp.metadata.response_code);
    let qtype = p
        .original
        .queries
        .first()
        .map(|q| q.query_type().to_string())
        .unwrap_or_default();
    if let Some(m) = &ops.metrics {
        m.requests
            .get_or_create(&crate::metrics::RequestLabels {
                proto: proto.into(),
                view: p.view.clone(),
                qtype: crate::metrics::qtype_label(
                    p.original
                        .queries
                        .first()
                        .map(|q| q.query_type())
                        .unwrap_or(hickory_proto::rr::RecordType::Unknown(0)),
                )
                .into(),
            })
            .inc();
        m.responses
            .get_or_create(&crate::metrics::ResponseLabels {
                rcode: rcode.clone(),
                view: p.view.clone(),
            })
            .inc();
        m.request_duration
            .observe(p.started.elapsed().as_secs_f64());
    }
    if let Some(o) = &ops.observer {
        o.0.query(record(p, &resp, peer, server, proto));
    }
    let out = encode(resp, &p.original, t);
    if ops.query_log {
        let qname = p.asked_name();
        println!(
            "[INFO] {peer} - {} \"{qtype} IN {qname} {proto} {packet_len}\" {rcode} {} {:.6}s view={}",
            p.original.metadata.id,
            out.as_ref().map_or(0, Vec::len),
            p.started.elapsed().as_secs_f64(),
            if p.view.is_empty() { "-" } else { &p.view },
        );
    }
    out
}

/// One query, answered: from the querier's view, else by the forwarder, else REFUSED.
async fn reply(
    views: &ArcSwap<Views>,
    fwd: Option<&Arc<Forwarder>>,
    ops: &Ops,
    packet: &[u8],
    peer: SocketAddr,
    server: SocketAddr,
    t: Transport,
) -> Option<Vec<u8>> {
    let mut p = match prepare(&views.load(), fwd.is_some(), packet, peer) {
        Ok(p) => p,
        Err(formerr) => return formerr,
    };
    // One span per query that is not answered from the replay cache (debug level: free when
    // not logged).
    let span = tracing::debug_span!("query", %peer, transport = ?t, id = p.req().metadata.id);
    if let Some(gate) = &ops.gate
        && gate.0.restricts(peer.ip())
    {
        // The name the client asked (not a rewrite's), before anything is looked up or
        // forwarded for it.
        let name = p.asked_name();
        let proto = match t {
            Transport::Udp => 17,
            Transport::Tcp => 6,
        };
        if gate.0.asked(peer.ip(), server.ip(), proto, &name).await == GateVerdict::Refuse {
            let resp = Forwarder::refused(p.req());
            return finish(&p, resp, ops, packet.len(), peer, server, t);
        }
    }
    let resp = match (p.local.take(), fwd) {
        (Some(r), _) => r,
        (None, Some(f)) => f.resolve(p.req()).instrument(span).await,
        (None, None) => return None,
    };
    let resp = gated(ops, &p, resp, peer).await;
    finish(&p, resp, ops, packet.len(), peer, server, t)
}

/// The answer to one query from the views alone, as the listeners send it for a name a view
/// holds (no forwarder, nothing counted); `None` when there is nothing to send, or when
/// `forwarding` and the name is the forwarder's. (Public for the fuzz targets only.)
#[doc(hidden)]
pub fn answer_local(
    views: &Views,
    forwarding: bool,
    packet: &[u8],
    peer: SocketAddr,
    t: Transport,
) -> Option<Vec<u8>> {
    let mut p = match prepare(views, forwarding, packet, peer) {
        Ok(p) => p,
        Err(formerr) => return formerr,
    };
    let resp = p.local.take()?;
    finish(&p, resp, &Ops::default(), packet.len(), peer, peer, t)
}

/// Datagrams taken from the socket (and answers sent) per system call.
const BATCH: usize = 32;
/// The largest query read (EDNS0 allows 4096 bytes and more; a query is far smaller).
const DATAGRAM_MAX: usize = 4096;

/// The UDP side of a server: datagrams are read and answered in batches (`recvmmsg`,
/// `sendmmsg`), answers from the views and the cache straight away, forwarded queries each
/// in its own task.
struct UdpListener {
    udp: Arc<UdpSocket>,
    addr: SocketAddr,
    views: Arc<ArcSwap<Views>>,
    fwd: Option<Arc<Forwarder>>,
    ops: Ops,
    replay: Option<Replay>,
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    a.as_sockaddr_in()
        .map(|v4| SocketAddr::V4((*v4).into()))
        .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())))
}

impl UdpListener {
    async fn run(mut self) {
        let fd = self.udp.as_raw_fd();
        let mut bufs = vec![[0u8; DATAGRAM_MAX]; BATCH];
        // The answers of a batch, in buffers kept from batch to batch (a replayed answer is
        // copied into one, not into a new allocation), and where each goes.
        let mut answers: Vec<Vec<u8>> = vec![Vec::new(); BATCH];
        let mut to: Vec<SockaddrStorage> = Vec::with_capacity(BATCH);
        loop {
            if self.udp.readable().await.is_err() {
                continue;
            }
            let got = self.udp.try_io(Interest::READABLE, || {
                let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                    bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
                // (The headers hold raw pointers, so they cannot live across an await.)
                let mut rx = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
                let res = recvmmsg(fd, &mut rx, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?;
                Ok(res
                    .filter_map(|m| Some((m.bytes, m.address?)))
                    .collect::<Vec<_>>())
            });
            let Ok(got) = got else {
                continue;
            };
            to.clear();
            for (buf, (n, from)) in bufs.iter().zip(got) {
                let Some(peer) = socket_addr(&from) else {
                    continue;
                };
                let Some(out) = answers.get_mut(to.len()) else {
                    break;
                };
                if self.datagram(&buf[..n.min(DATAGRAM_MAX)], peer, out) {
                    to.push(from);
                }
            }
            self.send(fd, &answers[..to.len()], &to).await;
        }
    }

    /// Sends the answers of a batch (`answers[i]` to `to[i]`), in one call when the socket
    /// takes them all.
    async fn send(&self, fd: std::os::fd::RawFd, answers: &[Vec<u8>], to: &[SockaddrStorage]) {
        if answers.is_empty() {
            return;
        }
        let sent = self
            .udp
            .try_io(Interest::WRITABLE, || {
                let iovs: Vec<[IoSlice<'_>; 1]> =
                    answers.iter().map(|o| [IoSlice::new(o)]).collect();
                let addrs: Vec<Option<SockaddrStorage>> = to.iter().map(|t| Some(*t)).collect();
                let mut tx = MultiHeaders::<SockaddrStorage>::preallocate(answers.len(), None);
                Ok(sendmmsg(fd, &mut tx, &iovs, &addrs, [], MsgFlags::MSG_DONTWAIT)?.count())
            })
            .unwrap_or(0);
        // What the socket did not take (its buffer full) waits for room, one by one.
        for (out, to) in answers.iter().zip(to).skip(sent) {
            if let Some(peer) = socket_addr(to) {
                let _ = self.udp.send_to(out, peer).await;
            }
        }
    }

    /// One datagram: whether there is an answer to send now, written into `out` (forwarded
    /// queries answer later, from their own task).
    fn datagram(&mut self, packet: &[u8], peer: SocketAddr, out: &mut Vec<u8>) -> bool {
        if self.ops.gate.is_some() {
            // The gate may wait (the fabric programs the answer's addresses first): every
            // query is answered from a task of its own, as a forwarded one is.
            let (views, fwd, ops) = (self.views.clone(), self.fwd.clone(), self.ops.clone());
            let (udp, addr, packet) = (self.udp.clone(), self.addr, packet.to_vec());
            tokio::spawn(async move {
                let out = reply(
                    &views,
                    fwd.as_ref(),
                    &ops,
                    &packet,
                    peer,
                    addr,
                    Transport::Udp,
                );
                if let Some(out) = out.await {
                    let _ = udp.send_to(&out, peer).await;
                }
            });
            return false;
        }
        let current = self.views.load();
        let (o, n) = (&self.ops, packet.len());
        if let Some(r) = self.replay.as_mut() {
            let started = std::time::Instant::now();
            if r.answer(&current, current.for_client(peer.ip()).0, packet) {
                if let Some(m) = &o.metrics {
                    m.request_duration.observe(started.elapsed().as_secs_f64());
                }
                out.clear();
                out.extend_from_slice(r.response());
                return true;
            }
        }
        let mut p = match prepare(&current, self.fwd.is_some(), packet, peer) {
            Ok(p) => p,
            Err(formerr) => return formerr.map(|f| *out = f).is_some(),
        };
        let (resp, source) = match (p.local.take(), &self.fwd) {
            (Some(r), _) => (r, Source::Zone),
            (None, Some(fwd)) => match fwd.from_cache(p.req()) {
                // A cache hit is answered here, and replayed from then on.
                Some(r) => (r, Source::Cache),
                None => {
                    let Some(slot) = fwd.slot() else {
                        // Too many forwarded at once: REFUSED now (never replayed).
                        let r = Forwarder::refused(p.req());
                        return finish(&p, r, o, n, peer, self.addr, Transport::Udp)
                            .map(|a| *out = a)
                            .is_some();
                    };
                    let (fwd, o, udp, addr) = (fwd.clone(), o.clone(), self.udp.clone(), self.addr);
                    tokio::spawn(async move {
                        let r = fwd.resolve_missed(p.req(), slot).await;
                        if let Some(out) = finish(&p, r, &o, n, peer, addr, Transport::Udp) {
                            let _ = udp.send_to(&out, peer).await;
                        }
                    });
                    return false;
                }
            },
            (None, None) => return false,
        };
        let Some(answer) = finish(&p, resp, o, n, peer, self.addr, Transport::Udp) else {
            return false;
        };
        if let Some(r) = self.replay.as_mut() {
            r.insert(
                &current,
                &p.view,
                packet,
                &answer,
                source,
                o.metrics.as_deref(),
            );
        }
        *out = answer;
        true
    }
}

/// Binds UDP and TCP on `addr` (the same port for both; port 0 picks one for UDP and uses
/// it for TCP too).
pub async fn start(
    addr: SocketAddr,
    views: Views,
    forwarder: Option<Arc<Forwarder>>,
) -> std::io::Result<Running> {
    start_with(addr, views, forwarder, Ops::default()).await
}

/// Times a free UDP port is tried for TCP too when `addr` asks for any port.
const ANY_PORT_ATTEMPTS: usize = 16;

/// A UDP socket and a TCP listener on the same port. For port 0 the UDP socket picks the
/// port, and when that port is taken for TCP another one is tried.
async fn bind_pair(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut attempt = 0;
    loop {
        let udp = UdpSocket::bind(addr).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempt + 1 < ANY_PORT_ATTEMPTS =>
            {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// [`start`], recording metrics and the query log as `ops` says.
pub async fn start_with(
    addr: SocketAddr,
    views: Views,
    forwarder: Option<Arc<Forwarder>>,
    ops: Ops,
) -> std::io::Result<Running> {
    let (udp, tcp) = bind_pair(addr).await?;
    let udp = Arc::new(udp);
    let udp_addr = udp.local_addr()?;
    let tcp_addr = tcp.local_addr()?;
    let views = Arc::new(ArcSwap::from_pointee(views));
    let listener = UdpListener {
        udp,
        addr: udp_addr,
        views: views.clone(),
        fwd: forwarder.clone(),
        // Answers from the views are replayed unless each query must be seen (query log,
        // flows).
        replay: (ops.observer.is_none() && !ops.query_log && ops.gate.is_none())
            .then(Replay::default),
        ops: ops.clone(),
    };
    tokio::spawn(listener.run());
    let (z, f, o) = (views.clone(), forwarder, ops);
    let open = Arc::new(tokio::sync::Semaphore::new(
        o.tcp_connections_max.unwrap_or(TCP_CONNECTIONS_MAX),
    ));
    tokio::spawn(async move {
        loop {
            let (mut stream, peer) = match tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    if let Some(m) = &o.metrics {
                        m.tcp_accept_errors.inc();
                    }
                    tracing::warn!(error = %e, "dns tcp: accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            let Ok(slot) = open.clone().try_acquire_owned() else {
                if let Some(m) = &o.metrics {
                    m.tcp_connections_refused.inc();
                }
                tracing::debug!(%peer, "dns tcp: connection limit reached; closing");
                continue;
            };
            let (z, f, o) = (z.clone(), f.clone(), o.clone());
            tokio::spawn(async move {
                let _slot = slot;
                tcp_connection(&mut stream, peer, tcp_addr, &z, f.as_ref(), &o).await;
            });
        }
    });
    Ok(Running {
        views,
        udp: udp_addr,
        tcp: tcp_addr,
    })
}

/// One DNS-over-TCP connection: each message is preceded by its length (RFC 1035 4.2.2);
/// several may follow. (Public for the fuzz targets only.)
#[doc(hidden)]
pub async fn tcp_connection(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    peer: SocketAddr,
    server: SocketAddr,
    views: &ArcSwap<Views>,
    fwd: Option<&Arc<Forwarder>>,
    ops: &Ops,
) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        let read = tokio::time::timeout(TCP_MESSAGE_TIMEOUT, stream.read_exact(&mut msg));
        match read.await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => return timed_out(ops),
        }
        let Some(out) = reply(views, fwd, ops, &msg, peer, server, Transport::Tcp).await else {
            return;
        };
        let Ok(n) = u16::try_from(out.len()) else {
            return;
        };
        let mut framed = n.to_be_bytes().to_vec();
        framed.extend_from_slice(&out);
        let write = tokio::time::timeout(TCP_MESSAGE_TIMEOUT, stream.write_all(&framed));
        match write.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => return timed_out(ops),
        }
    }
}
