//! Listeners: binds a plan's ports and accepts on them. A TCP connection goes to the own
//! HTTP/1 path (plain HTTP), to TLS (SNI: passed through to a TLSRoute, or terminated and
//! served by the own path or hyper by ALPN), or to a TCPRoute; UDP ports to their UDPRoute;
//! an HTTPS port's UDP side to HTTP/3. The paths themselves decide nothing here: each takes
//! its bytes to the shared request handling of [`crate::proxy`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::{Backend, pick_weighted};
use crate::limits::{
    ACCEPT_ERROR_BACKOFF, CLIENT_HELLO_TIMEOUT, CONNECT_ATTEMPTS_MAX, EJECT_MS,
    UPSTREAM_CONNECT_TIMEOUT,
};
use crate::metrics::Metrics;
use crate::plan::{Listen, Plan};
use crate::proxy::{Bind, OpenConnection, Prefixed, State, serve_http, set_keepalive};
use crate::sni;

/// A running gateway.
pub struct Running {
    pub(crate) state: Arc<State>,
    /// Listener port -> the address it is bound to.
    pub bound: BTreeMap<u16, SocketAddr>,
    /// UDP listener port -> the address it is bound to.
    pub bound_udp: BTreeMap<u16, SocketAddr>,
    /// HTTPS listener port -> its HTTP/3 endpoint (on the same address as the TCP side).
    quic: BTreeMap<u16, quinn::Endpoint>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {addr} for listener port {port}: {source}{hint}")]
    Bind {
        addr: SocketAddr,
        port: u16,
        source: std::io::Error,
        hint: String,
    },
}

/// Binds every HTTP listener of the plan and starts serving.
pub async fn start(plan: &Plan, bind: &Bind, metrics: Arc<Metrics>) -> Result<Running, StartError> {
    let state = State::new(plan, bind, metrics);
    let ip = bind
        .ip
        .or(plan.address)
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let (shutdown, _) = watch::channel(false);
    let mut bound = BTreeMap::new();
    let mut quic = BTreeMap::new();
    let mut tasks = Vec::new();
    for &port in plan.ports.keys() {
        let actual = bind.port_map.get(&port).copied().unwrap_or(port);
        let addr = SocketAddr::new(ip, actual);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| bind_error(addr, port, source))?;
        let local = listener.local_addr().unwrap_or(addr);
        tracing::info!(listener_port = port, addr = %local, "listening");
        bound.insert(port, local);
        tasks.push(tokio::spawn(accept_loop(
            listener,
            port,
            state.clone(),
            shutdown.subscribe(),
        )));
        // HTTP/3 on the same port number, over UDP.
        if let Some(Listen::Tls(t)) = plan.ports.get(&port)
            && let Some(config) = &t.http3
        {
            let endpoint = std::net::UdpSocket::bind(local)
                .and_then(|socket| {
                    crate::h3::endpoint(
                        socket,
                        crate::h3::with_bounds(config.clone(), state.client_idle_timeout),
                    )
                })
                .map_err(|source| bind_error(local, port, source))?;
            tracing::info!(listener_port = port, addr = %local, "listening (HTTP/3)");
            quic.insert(port, endpoint.clone());
            tasks.push(tokio::spawn(crate::h3::serve(
                endpoint,
                port,
                state.clone(),
                shutdown.subscribe(),
            )));
        }
    }
    let mut bound_udp = BTreeMap::new();
    for &port in plan.udp_ports.keys() {
        let actual = bind.port_map.get(&port).copied().unwrap_or(port);
        let addr = SocketAddr::new(ip, actual);
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|source| bind_error(addr, port, source))?;
        let local = socket.local_addr().unwrap_or(addr);
        tracing::info!(listener_port = port, addr = %local, "listening (UDP)");
        bound_udp.insert(port, local);
        tasks.push(tokio::spawn(crate::udp::serve(
            socket,
            port,
            state.udp_ports.clone(),
            state.metrics.clone(),
            shutdown.subscribe(),
        )));
    }
    Ok(Running {
        state,
        bound,
        bound_udp,
        quic,
        shutdown,
        tasks,
    })
}

fn bind_error(addr: SocketAddr, port: u16, source: std::io::Error) -> StartError {
    let hint = match source.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "; ports below 1024 need root: run as root or map the port, e.g. --port-map {port}=8{port:03}"
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            "; the address is not on this host: pass --bind 0.0.0.0 or the host's address"
                .to_string()
        }
        std::io::ErrorKind::AddrInUse => format!(
            "; something else listens there: stop it or map the port, e.g. --port-map {port}=8{port:03}"
        ),
        _ => String::new(),
    };
    StartError::Bind {
        addr,
        port,
        source,
        hint,
    }
}

impl Running {
    /// Swaps in the routers of a new plan. Requests in flight finish on the old ones.
    pub fn update(&self, plan: &Plan) {
        let mut next = plan.ports.clone();
        // Ports that are not bound cannot serve until restart; keep what is bound.
        next.retain(|p, _| self.bound.contains_key(p));
        for p in plan.ports.keys().filter(|p| !self.bound.contains_key(p)) {
            tracing::warn!(
                listener_port = p,
                "new listener port needs a restart to be bound"
            );
        }
        // HTTP/3: new connections get the new certificates; a port that no longer asks for
        // it, or is no longer served at all (a refused ClientTrafficPolicy), refuses new ones.
        // A port that newly asks needs a restart to bind its UDP side.
        let http3 = |port: &u16| match next.get(port) {
            Some(Listen::Tls(t)) => t.http3.clone(),
            _ => None,
        };
        for (port, ep) in &self.quic {
            ep.set_server_config(
                http3(port).map(|c| crate::h3::with_bounds(c, self.state.client_idle_timeout)),
            );
        }
        for port in next.keys().filter(|p| !self.quic.contains_key(p)) {
            if http3(port).is_some() {
                tracing::warn!(
                    listener_port = port,
                    "HTTP/3 on this port needs a restart to bind its UDP side"
                );
            }
        }
        self.state.ports.store(Arc::new(next));
        let mut udp = plan.udp_ports.clone();
        udp.retain(|p, _| self.bound_udp.contains_key(p));
        for p in plan
            .udp_ports
            .keys()
            .filter(|p| !self.bound_udp.contains_key(p))
        {
            tracing::warn!(
                listener_port = p,
                "new UDP listener port needs a restart to be bound"
            );
        }
        self.state.udp_ports.store(Arc::new(udp));
        self.state
            .client_keepalive
            .store(plan.client_keepalive.map(Arc::new));
        self.state.http2_terminate_on_invalid.store(
            plan.http2_terminate_on_invalid,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.state.metrics.reloads.inc();
    }

    /// The addresses HTTP/3 is served on, by listener port.
    pub fn bound_http3(&self) -> BTreeMap<u16, SocketAddr> {
        self.quic
            .iter()
            .filter_map(|(p, e)| Some((*p, e.local_addr().ok()?)))
            .collect()
    }

    /// Client connections open now (HTTP, TLS, TCPRoute, QUIC).
    pub fn open_connections(&self) -> usize {
        *self.state.open.borrow()
    }

    /// Stops accepting; connections in flight finish on their own.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Drains: stops accepting, closes idle keep-alive connections, lets requests in flight
    /// finish, and returns when all connections are closed or `timeout` has passed. Returns
    /// whether every connection closed in time.
    pub async fn drain(self, timeout: Duration) -> bool {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.state.draining.send(true);
        let mut open = self.state.open.subscribe();
        tokio::time::timeout(timeout, open.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }
}

async fn accept_loop(
    listener: TcpListener,
    port: u16,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: count, back off a little, go on.
                tracing::warn!(error = %e, "accept failed");
                state.metrics.accept_errors.inc();
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if *state.open.borrow() >= state.connections_max {
            state.metrics.connections_refused.inc();
            tracing::debug!(%peer, "connection limit reached; closing");
            continue;
        }
        // Counted from here, before the connection's task runs, so that the next accept sees
        // it (and a drain waits for it).
        let open = OpenConnection::new(&state);
        let _ = stream.set_nodelay(true);
        if let Some(k) = state.client_keepalive.load().as_deref()
            && let Err(e) = set_keepalive(&stream, k)
        {
            tracing::debug!(error = %e, %peer, "cannot set keep-alive on a client connection");
        }
        let state = state.clone();
        let listen = state.ports.load().get(&port).cloned();
        let Some(listen) = listen else { continue };
        tokio::spawn(async move {
            let _open = open;
            let drain = state.draining.subscribe();
            // Each kind's future is boxed on its own: inline, every connection would carry
            // room for the largest (TLS's), whatever it serves.
            match listen {
                Listen::Http(_) => {
                    Box::pin(crate::h1::serve(state, port, peer, "http", stream, drain)).await;
                }
                Listen::Tls(t) => {
                    Box::pin(serve_tls(state, port, peer, &t, stream, drain)).await;
                }
                // Counted too: a drain waits for TCPRoute connections to end (up to its
                // timeout) instead of cutting them.
                Listen::Tcp(t) => {
                    if let Some(b) =
                        pick_weighted(&t.backends, state.next.fetch_add(1, Ordering::Relaxed))
                    {
                        tcp_proxy(&state, b, stream, Bytes::new()).await;
                    }
                }
            }
        });
    }
}

/// A TLS port: reads the ClientHello's SNI; a TLSRoute for it gets the connection passed
/// through untouched, anything else is terminated and served as HTTPS.
async fn serve_tls(
    state: Arc<State>,
    port: u16,
    peer: SocketAddr,
    t: &crate::plan::TlsPort,
    mut stream: tokio::net::TcpStream,
    drain: watch::Receiver<bool>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(2048);
    let deadline = tokio::time::Instant::now() + CLIENT_HELLO_TIMEOUT;
    let sni = loop {
        match sni::parse(&buf) {
            sni::Hello::Incomplete if buf.len() < sni::CLIENT_HELLO_BYTES_MAX => {}
            sni::Hello::Found(name) => break name,
            _ => {
                state.metrics.tls_handshake_errors.inc();
                return;
            }
        }
        // Straight into the buffer: a read array here would live in every TLS connection's
        // future for its whole life.
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    };
    if let Some(backends) = sni
        .as_deref()
        .and_then(|n| t.passthrough.get(n))
        .or_else(|| {
            if sni.is_none() {
                t.passthrough.any.as_ref()
            } else {
                None
            }
        })
    {
        if let Some(b) = pick_weighted(backends, state.next.fetch_add(1, Ordering::Relaxed)) {
            let b = b.clone();
            tcp_proxy(&state, &b, stream, Bytes::from(buf)).await;
        }
        return;
    }
    let Some(config) = t.config.clone() else {
        // Passthrough-only port and no route for this name.
        state.metrics.tls_handshake_errors.inc();
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let prefixed = Prefixed {
        prefix: Bytes::from(buf),
        inner: stream,
    };
    match tokio::time::timeout(CLIENT_HELLO_TIMEOUT, acceptor.accept(prefixed)).await {
        // HTTP/2 goes to hyper; HTTP/1.1 to the own path (which hands over what it does not
        // serve).
        Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
            Box::pin(serve_http(state, port, peer, "https", tls, drain, None)).await;
        }
        Ok(Ok(tls)) => Box::pin(crate::h1::serve(state, port, peer, "https", tls, drain)).await,
        _ => {
            state.metrics.tls_handshake_errors.inc();
        }
    }
}

/// Connects to an endpoint of `backend` (skipping ejected ones, and ejecting one that
/// refuses) and copies bytes both ways; `first` is what was already read from the client.
async fn tcp_proxy(
    state: &State,
    backend: &Backend,
    mut client: tokio::net::TcpStream,
    first: Bytes,
) {
    use tokio::io::AsyncWriteExt;
    let order = backend.next_order();
    for i in order.into_iter().take(CONNECT_ATTEMPTS_MAX) {
        let endpoint = &backend.endpoints[i];
        let ep = endpoint.addr;
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(ep))
            .await
        {
            Ok(Ok(mut up)) => {
                let _ = up.set_nodelay(true);
                if let Some(k) = &backend.keepalive
                    && let Err(e) = set_keepalive(&up, k)
                {
                    tracing::debug!(error = %e, upstream = %ep, "cannot set keep-alive");
                }
                if up.write_all(&first).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                return;
            }
            _ => {
                // Skipped by the next connections for a while, as on the HTTP paths.
                state.metrics.upstream_connect_failures.inc();
                endpoint.eject(crate::plan::now_ms() + EJECT_MS);
            }
        }
    }
}
