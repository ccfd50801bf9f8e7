//! UDP listeners (UDPRoute): datagrams from each client address form a session with an
//! upstream socket of its own, connected to one endpoint of a backend picked by weight, so
//! that replies find their way back to the client that caused them (as Envoy's UDP proxy).
//!
//! Bounded: at most [`UDP_SESSIONS_MAX`] sessions per listener (datagrams of new clients past
//! that are dropped and counted), each ending after [`UDP_IDLE_TIMEOUT`] without a datagram
//! either way; datagrams up to [`DATAGRAM_BYTES_MAX`]. A reload changes where new sessions go;
//! sessions already made keep their endpoint until they end.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio::sync::watch;

pub use crate::limits::{DATAGRAM_BYTES_MAX, UDP_IDLE_TIMEOUT, UDP_SESSIONS_MAX};
use crate::metrics::Metrics;
use crate::plan::{StreamPort, now_ms};

/// One client's session: its upstream socket and when it last saw a datagram.
struct Session {
    upstream: Arc<UdpSocket>,
    last_ms: Arc<AtomicU64>,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Session>>>;

/// Serves one UDP listener until `shutdown` changes.
pub(crate) async fn serve(
    listener: UdpSocket,
    port: u16,
    ports: Arc<ArcSwap<BTreeMap<u16, Arc<StreamPort>>>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = Arc::new(listener);
    let sessions: Sessions = Arc::default();
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    let mut seq = 0u64;
    loop {
        let received = tokio::select! {
            r = listener.recv_from(&mut buf) => r,
            _ = shutdown.changed() => return,
        };
        let (n, client) = match received {
            Ok(x) => x,
            Err(e) => {
                // An ICMP error for an earlier reply, say: nothing to do but go on.
                tracing::debug!(listener_port = port, error = %e, "UDP receive failed");
                continue;
            }
        };
        let existing = sessions.lock().ok().and_then(|s| {
            s.get(&client)
                .map(|s| (s.upstream.clone(), s.last_ms.clone()))
        });
        let (upstream, last_ms) = match existing {
            Some(x) => x,
            None => {
                if sessions
                    .lock()
                    .map_or(true, |s| s.len() >= UDP_SESSIONS_MAX)
                {
                    metrics.udp_sessions_overflow.inc();
                    continue;
                }
                seq = seq.wrapping_add(1);
                let target = ports.load().get(&port).and_then(|p| endpoint(p, seq));
                let Some(target) = target else {
                    metrics.udp_no_route.inc();
                    continue;
                };
                let upstream = match connect(target).await {
                    Ok(u) => Arc::new(u),
                    Err(e) => {
                        tracing::debug!(upstream = %target, error = %e, "UDP upstream socket failed");
                        metrics.upstream_connect_failures.inc();
                        continue;
                    }
                };
                let last_ms = Arc::new(AtomicU64::new(now_ms()));
                if let Ok(mut s) = sessions.lock() {
                    s.insert(
                        client,
                        Session {
                            upstream: upstream.clone(),
                            last_ms: last_ms.clone(),
                        },
                    );
                }
                metrics.udp_sessions.inc();
                tokio::spawn(replies(
                    listener.clone(),
                    upstream.clone(),
                    client,
                    last_ms.clone(),
                    sessions.clone(),
                    shutdown.clone(),
                ));
                (upstream, last_ms)
            }
        };
        last_ms.store(now_ms(), Ordering::Relaxed);
        if let Err(e) = upstream.send(&buf[..n]).await {
            tracing::debug!(%client, error = %e, "UDP send upstream failed");
        }
    }
}

/// An endpoint for a new session: a backend by weight, then one of its endpoints.
fn endpoint(port: &StreamPort, seq: u64) -> Option<SocketAddr> {
    let backend = crate::backend::pick_weighted(&port.backends, seq)?;
    if backend.invalid.is_some() || backend.endpoints.is_empty() {
        return None;
    }
    let i = usize::try_from(seq).unwrap_or(0) % backend.endpoints.len();
    Some(backend.endpoints[i].addr)
}

/// A socket of the endpoint's family on any port, connected to it (so that only its replies
/// are read).
async fn connect(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: IpAddr = if target.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// Relays a session's replies to its client until it has been idle for
/// [`UDP_IDLE_TIMEOUT`], then forgets the session.
async fn replies(
    listener: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    last_ms: Arc<AtomicU64>,
    sessions: Sessions,
    mut shutdown: watch::Receiver<bool>,
) {
    let idle_ms = u64::try_from(UDP_IDLE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let quiet_ms = now_ms().saturating_sub(last_ms.load(Ordering::Relaxed));
        let Some(left_ms) = idle_ms.checked_sub(quiet_ms).filter(|l| *l > 0) else {
            break;
        };
        let received = tokio::select! {
            r = tokio::time::timeout(Duration::from_millis(left_ms), upstream.recv(&mut buf)) => r,
            _ = shutdown.changed() => break,
        };
        match received {
            Ok(Ok(n)) => {
                last_ms.store(now_ms(), Ordering::Relaxed);
                if let Err(e) = listener.send_to(&buf[..n], client).await {
                    tracing::debug!(%client, error = %e, "UDP reply failed");
                }
            }
            // The endpoint refused (ICMP port unreachable): the session stays until idle.
            Ok(Err(e)) => tracing::debug!(%client, error = %e, "UDP receive from upstream failed"),
            // Quiet for a while: the loop checks whether the client sent anything meanwhile.
            Err(_) => {}
        }
    }
    if let Ok(mut s) = sessions.lock()
        && s.get(&client)
            .is_some_and(|x| Arc::ptr_eq(&x.upstream, &upstream))
    {
        s.remove(&client);
    }
}
