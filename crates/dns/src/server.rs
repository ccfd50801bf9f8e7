//! UDP and TCP listeners answering from the current zone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::answer::{Transport, respond};
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

/// Binds UDP and TCP on `addr` (the same port for both; port 0 picks one for UDP and uses
/// it for TCP too).
pub async fn start(addr: SocketAddr, views: Views) -> std::io::Result<Running> {
    let udp = UdpSocket::bind(addr).await?;
    let udp_addr = udp.local_addr()?;
    let tcp = TcpListener::bind(SocketAddr::new(addr.ip(), udp_addr.port())).await?;
    let tcp_addr = tcp.local_addr()?;
    let views = Arc::new(ArcSwap::from_pointee(views));
    let z = views.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            let current = z.load();
            let (_, zone) = current.for_client(peer.ip());
            if let Some(out) = respond(zone, &buf[..n], Transport::Udp) {
                let _ = udp.send_to(&out, peer).await;
            }
        }
    });
    let z = views.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, peer)) = tcp.accept().await else {
                continue;
            };
            let z = z.clone();
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
                    let current = z.load();
                    let (_, zone) = current.for_client(peer.ip());
                    let Some(out) = respond(zone, &msg, Transport::Tcp) else {
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
