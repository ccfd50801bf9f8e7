//! UDP and TCP listeners answering from the current views, forwarding the rest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::answer::{Transport, answer, encode, is_local, parse};
use crate::forward::Forwarder;
use crate::views::Views;

/// TCP connections idle longer than this are closed (RFC 7766 suggests seconds).
pub const TCP_IDLE: Duration = Duration::from_secs(10);

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
fn rcode_name(r: hickory_proto::op::ResponseCode) -> String {
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

/// What to record about the queries a server answers.
#[derive(Clone, Debug, Default)]
pub struct Ops {
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// One line per query on stdout, in the shape of CoreDNS's `log` plugin.
    pub query_log: bool,
}

/// One query, answered: from the querier's view, else by the forwarder, else REFUSED.
async fn reply(
    views: &ArcSwap<Views>,
    fwd: Option<&Arc<Forwarder>>,
    ops: &Ops,
    packet: &[u8],
    peer: SocketAddr,
    t: Transport,
) -> Option<Vec<u8>> {
    let started = std::time::Instant::now();
    let original = match parse(packet) {
        Ok(r) => r,
        Err(formerr) => return formerr,
    };
    // A rewrite rule changes the name looked up; the client still sees its own name.
    let rewritten = original.queries.first().and_then(|q| {
        let to = views.load().rewrite(&q.name().to_lowercase().to_ascii())?;
        let mut r = original.clone();
        r.queries[0].set_name(hickory_proto::rr::Name::from_ascii(&to).ok()?);
        Some(r)
    });
    let req = rewritten.as_ref().unwrap_or(&original);
    // Answer locally while holding the views; forward (which awaits) after letting go.
    let (view, local) = {
        let current = views.load();
        let (name, zone) = current.for_client(peer.ip());
        let local = match fwd {
            Some(_) if !is_local(zone, req) => None,
            _ => Some(answer(zone, req)),
        };
        (name.to_string(), local)
    };
    let mut resp = match (local, fwd) {
        (Some(r), _) => r,
        (None, Some(f)) => f.resolve(req).await,
        (None, None) => return None,
    };
    if let (Some(rw), Some(q)) = (&rewritten, original.queries.first()) {
        let looked_up = rw.queries[0].name().to_lowercase();
        for rec in resp.answers.iter_mut() {
            if rec.name.to_lowercase() == looked_up {
                rec.name = q.name().clone();
            }
        }
        resp.queries = original.queries.clone();
    }
    let proto = match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    };
    let (qname, qtype) = original
        .queries
        .first()
        .map(|q| (q.name().to_ascii(), q.query_type().to_string()))
        .unwrap_or_default();
    let rcode = rcode_name(resp.metadata.response_code);
    if let Some(m) = &ops.metrics {
        m.requests
            .get_or_create(&crate::metrics::RequestLabels {
                proto: proto.into(),
                view: view.clone(),
                qtype: qtype.clone(),
            })
            .inc();
        m.responses
            .get_or_create(&crate::metrics::ResponseLabels {
                rcode: rcode.clone(),
                view: view.clone(),
            })
            .inc();
        m.request_duration.observe(started.elapsed().as_secs_f64());
    }
    let out = encode(resp, &original, t);
    if ops.query_log {
        println!(
            "[INFO] {peer} - {} \"{qtype} IN {qname} {proto} {}\" {rcode} {} {:.6}s view={}",
            original.metadata.id,
            packet.len(),
            out.as_ref().map_or(0, Vec::len),
            started.elapsed().as_secs_f64(),
            if view.is_empty() { "-" } else { &view },
        );
    }
    out
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

/// [`start`], recording metrics and the query log as `ops` says.
pub async fn start_with(
    addr: SocketAddr,
    views: Views,
    forwarder: Option<Arc<Forwarder>>,
    ops: Ops,
) -> std::io::Result<Running> {
    let udp = Arc::new(UdpSocket::bind(addr).await?);
    let udp_addr = udp.local_addr()?;
    let tcp = TcpListener::bind(SocketAddr::new(addr.ip(), udp_addr.port())).await?;
    let tcp_addr = tcp.local_addr()?;
    let views = Arc::new(ArcSwap::from_pointee(views));
    let (z, f, o) = (views.clone(), forwarder.clone(), ops.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            let packet = buf[..n].to_vec();
            let (z, f, o, udp) = (z.clone(), f.clone(), o.clone(), udp.clone());
            // Each query in its own task: a forwarded one may wait on an upstream.
            tokio::spawn(async move {
                if let Some(out) = reply(&z, f.as_ref(), &o, &packet, peer, Transport::Udp).await {
                    let _ = udp.send_to(&out, peer).await;
                }
            });
        }
    });
    let (z, f, o) = (views.clone(), forwarder, ops);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, peer)) = tcp.accept().await else {
                continue;
            };
            let (z, f, o) = (z.clone(), f.clone(), o.clone());
            tokio::spawn(async move {
                // Each message is preceded by its length (RFC 1035 4.2.2); several may follow.
                loop {
                    let mut len = [0u8; 2];
                    match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
                        Ok(Ok(_)) => {}
                        _ => return,
                    }
                    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut msg).await.is_err() {
                        return;
                    }
                    let Some(out) = reply(&z, f.as_ref(), &o, &msg, peer, Transport::Tcp).await
                    else {
                        return;
                    };
                    let Ok(n) = u16::try_from(out.len()) else {
                        return;
                    };
                    let mut framed = n.to_be_bytes().to_vec();
                    framed.extend_from_slice(&out);
                    if stream.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(Running {
        views,
        udp: udp_addr,
        tcp: tcp_addr,
    })
}
