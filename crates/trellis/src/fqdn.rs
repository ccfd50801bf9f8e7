//! toFQDNs without a proxy: `trellis dns` tells the agent of the asking pod's node which
//! addresses it answered for which name, over that agent's Unix socket, and sends the answer
//! only once the agent has made those addresses reachable for the pod (or said it has nothing
//! to do). So the pod's first connection after a lookup is never dropped.
//!
//! The same socket decides `rules.dns`: before it answers a pod whose policies restrict the
//! names it may ask, the DNS server asks the agent whether this name may be asked of it
//! ([`Asked`]); the agent knows the server's identity and the pod's allows.
//!
//! The protocol is one JSON object per line ([`Told`]) and one line back (`pass` or
//! `refuse`). A DNS server that cannot reach the agent still answers (the datapath then keeps
//! the addresses closed: fail closed), and logs why; a restricted pod's query it refuses.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// How long a DNS answer waits for the agent before it goes out anyway.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest request line the agent reads.
const LINE_MAX: usize = 64 * 1024;
/// Connections the agent serves at once (one per DNS server thread, normally a handful).
const CONNECTIONS_MAX: usize = 64;

/// One answer: `client` asked `name` and was answered `addrs`, valid for `ttl` seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    pub client: Ipv4Addr,
    pub name: String,
    pub addrs: Vec<Ipv4Addr>,
    pub ttl: u32,
}

/// A query a restricted pod asks: `client` asks `name` of the server at `server` (`None` when
/// the server does not know its own address) over `proto` (6 or 17).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asked {
    pub client: Ipv4Addr,
    pub server: Option<Ipv4Addr>,
    pub proto: u8,
    pub name: String,
}

/// One line to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Told {
    /// May this be asked? (`rules.dns`)
    Asked(Asked),
    /// This was answered (toFQDNs).
    Answered(Answered),
}

/// The socket of `node`'s agent under `dir`.
pub fn socket_of(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}.sock"))
}

/// One kept connection to an agent (none until first used, or after an error).
type AgentConn = Arc<tokio::sync::Mutex<Option<tokio::io::BufReader<tokio::net::UnixStream>>>>;

/// The DNS side: finds the asking pod's node from the manifests and asks its agent, over one
/// kept connection per agent.
#[derive(Debug)]
pub struct Gate {
    agents: PathBuf,
    nodes: ArcSwap<HashMap<Ipv4Addr, String>>,
    /// Pods whose DNS queries `rules.dns` restricts.
    restricted: ArcSwap<std::collections::BTreeSet<Ipv4Addr>>,
    conns: std::sync::Mutex<HashMap<String, AgentConn>>,
}

impl Gate {
    pub fn new(agents: PathBuf) -> Gate {
        Gate {
            agents,
            nodes: ArcSwap::from_pointee(HashMap::new()),
            restricted: ArcSwap::from_pointee(Default::default()),
            conns: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Which node each pod runs on, from a snapshot's Pods.
    pub fn update(&self, s: &model::Snapshot) {
        let mut m = HashMap::new();
        for p in s.pods.values() {
            let node = p.spec.spec.as_ref().and_then(|s| s.node_name.clone());
            let ip = p
                .spec
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|s| s.parse::<Ipv4Addr>().ok());
            if let (Some(node), Some(ip)) = (node, ip) {
                m.insert(ip, node);
            }
        }
        self.nodes.store(Arc::new(m));
        self.restricted
            .store(Arc::new(fabric::policy::dns_restricted(s)));
    }

    /// Sends `a` to `node`'s agent and reads its reply, on the kept connection; a connection
    /// that fails is dropped and the request tried once on a new one.
    async fn ask(&self, node: &str, a: &Told) -> std::io::Result<String> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut line = serde_json::to_vec(a)?;
        line.push(b'\n');
        let conn = {
            let mut m = self
                .conns
                .lock()
                .map_err(|_| std::io::Error::other("agent connections poisoned"))?;
            m.entry(node.to_string()).or_default().clone()
        };
        let mut held = conn.lock().await;
        let mut last = None;
        for _ in 0..2 {
            // Taken out while in use: a request abandoned half way (the DNS side's timeout)
            // drops its connection rather than leave a reply unread for the next one.
            let mut s = match held.take() {
                Some(s) => s,
                None => tokio::io::BufReader::new(
                    tokio::net::UnixStream::connect(socket_of(&self.agents, node)).await?,
                ),
            };
            let mut reply = String::new();
            let sent = async {
                s.get_mut().write_all(&line).await?;
                if s.read_line(&mut reply).await? == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                }
                Ok(())
            }
            .await;
            match sent {
                Ok(()) => {
                    *held = Some(s);
                    return Ok(reply.trim().to_string());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no attempt")))
    }
}

impl dns::server::Gate for Gate {
    fn restricts(&self, client: IpAddr) -> bool {
        matches!(client, IpAddr::V4(c) if self.restricted.load().contains(&c))
    }

    fn asked<'a>(
        &'a self,
        client: IpAddr,
        server: IpAddr,
        proto: u8,
        name: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = dns::server::GateVerdict> + Send + 'a>>
    {
        use dns::server::GateVerdict;
        Box::pin(async move {
            let IpAddr::V4(client) = client else {
                return GateVerdict::Pass;
            };
            // Restricted, but on no node known: nobody can say the name is allowed.
            let Some(node) = self.nodes.load().get(&client).cloned() else {
                return GateVerdict::Refuse;
            };
            let q = Told::Asked(Asked {
                client,
                server: match server {
                    IpAddr::V4(s) if !s.is_unspecified() => Some(s),
                    _ => None,
                },
                proto,
                name: name.to_string(),
            });
            match tokio::time::timeout(AGENT_TIMEOUT, self.ask(&node, &q)).await {
                Ok(Ok(reply)) if reply == "pass" => GateVerdict::Pass,
                Ok(Ok(_)) => GateVerdict::Refuse,
                // Fail closed: the names this pod may ask are unknown.
                Ok(Err(e)) => {
                    tracing::warn!(%client, node, error = %e, "rules.dns: the agent was not asked; refused");
                    GateVerdict::Refuse
                }
                Err(_) => {
                    tracing::warn!(%client, node, "rules.dns: the agent did not answer in time; refused");
                    GateVerdict::Refuse
                }
            }
        })
    }

    fn answered<'a>(
        &'a self,
        client: IpAddr,
        name: &'a str,
        addrs: Vec<IpAddr>,
        ttl: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = dns::server::GateVerdict> + Send + 'a>>
    {
        Box::pin(async move {
            let IpAddr::V4(client) = client else {
                return dns::server::GateVerdict::Pass;
            };
            let Some(node) = self.nodes.load().get(&client).cloned() else {
                return dns::server::GateVerdict::Pass;
            };
            let a = Told::Answered(Answered {
                client,
                name: name.to_string(),
                addrs: addrs
                    .into_iter()
                    .filter_map(|a| match a {
                        IpAddr::V4(v4) => Some(v4),
                        IpAddr::V6(_) => None,
                    })
                    .collect(),
                ttl,
            });
            match tokio::time::timeout(AGENT_TIMEOUT, self.ask(&node, &a)).await {
                Ok(Ok(reply)) if reply == "refuse" => dns::server::GateVerdict::Refuse,
                Ok(Ok(_)) => dns::server::GateVerdict::Pass,
                Ok(Err(e)) => {
                    tracing::warn!(%client, node, error = %e, "toFQDNs: the agent was not told");
                    dns::server::GateVerdict::Pass
                }
                Err(_) => {
                    tracing::warn!(%client, node, "toFQDNs: the agent did not answer in time");
                    dns::server::GateVerdict::Pass
                }
            }
        })
    }
}

/// A request the agent's main loop handles: what it is told, and where to say it is done
/// (`true`: pass, `false`: refuse).
pub type Request = (Told, std::sync::mpsc::SyncSender<bool>);

/// The agent side: serves `socket` from threads, handing each answer to `tx` and replying once
/// the main loop has applied it.
pub fn serve<T: From<Request> + Send + 'static>(
    socket: &Path,
    tx: std::sync::mpsc::Sender<T>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", socket.display())),
    }
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    // Whoever may write the socket may open addresses for pods: root only.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", socket.display()))?;
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("fqdn".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                if open.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= CONNECTIONS_MAX {
                    open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!(
                        "toFQDNs socket: {CONNECTIONS_MAX} connections open; one more closed"
                    );
                    continue;
                }
                let (tx, open) = (tx.clone(), open.clone());
                let _ = std::thread::Builder::new()
                    .name("fqdn-conn".into())
                    .spawn(move || {
                        connection(conn, &tx);
                        open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    });
            }
        })?;
    Ok(())
}

fn connection<T: From<Request>>(
    conn: std::os::unix::net::UnixStream,
    tx: &std::sync::mpsc::Sender<T>,
) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        // One line at most LINE_MAX bytes (a longer one ends the connection).
        match std::io::Read::take(&mut reader, LINE_MAX as u64 + 1).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) if n > LINE_MAX => return,
            Ok(_) => {}
        }
        let Ok(told) = serde_json::from_str::<Told>(&line) else {
            let _ = out.write_all(b"error\n");
            return;
        };
        // Not decided in time: a question is refused (fail closed), an answer goes out (its
        // addresses stay closed until the agent programs them).
        let otherwise = !matches!(told, Told::Asked(_));
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        if tx.send(T::from((told, done_tx))).is_err() {
            return;
        }
        let pass = done_rx.recv_timeout(AGENT_TIMEOUT).unwrap_or(otherwise);
        if out
            .write_all(if pass { b"pass\n" } else { b"refuse\n" })
            .is_err()
        {
            return;
        }
    }
}

/// Addresses an agent keeps open for toFQDNs at most (over it, new ones stay closed).
pub const CACHE_MAX: usize = 16384;
/// How long an answered address stays open at least, when the agent's configuration does not
/// say (the answer's TTL when longer).
pub const MIN_TTL_DEFAULT: Duration = Duration::from_secs(60);

/// The agent's record of what DNS answered its pods, each until it expires.
#[derive(Debug, Default)]
pub struct Cache(std::collections::BTreeMap<(Ipv4Addr, Ipv4Addr, String), std::time::Instant>);

impl Cache {
    /// Records an answer when a toFQDNs rule of the asking endpoint covers its name; the
    /// addresses new for that name (the policy must open them).
    pub fn learn(
        &mut self,
        plan: &fabric::policy::PolicyPlan,
        a: &Answered,
        min_ttl: Duration,
    ) -> Vec<Ipv4Addr> {
        let Some(ep) = plan.endpoints.get(&a.client) else {
            return Vec::new();
        };
        if !ep
            .fqdn
            .iter()
            .any(|f| f.names.iter().any(|m| m.matches(&a.name)))
        {
            return Vec::new();
        }
        let until = std::time::Instant::now() + Duration::from_secs(u64::from(a.ttl)).max(min_ttl);
        let name = a.name.trim_end_matches('.').to_ascii_lowercase();
        let mut new = Vec::new();
        for addr in &a.addrs {
            let key = (a.client, *addr, name.clone());
            if !self.0.contains_key(&key) && self.0.len() >= CACHE_MAX {
                tracing::warn!(
                    client = %a.client,
                    name,
                    "toFQDNs: {CACHE_MAX} answered addresses held; this one stays closed"
                );
                continue;
            }
            if self.0.insert(key, until).is_none() {
                new.push(*addr);
            }
        }
        new
    }

    /// Drops what expired before `now`; whether anything did.
    pub fn expire(&mut self, now: std::time::Instant) -> bool {
        let before = self.0.len();
        self.0.retain(|_, until| *until > now);
        self.0.len() != before
    }

    /// What the policy compile takes.
    pub fn learned(&self) -> fabric::policy::Learned {
        let mut out = fabric::policy::Learned::new();
        for (ep, addr, name) in self.0.keys() {
            out.entry(*ep)
                .or_default()
                .entry(*addr)
                .or_default()
                .insert(name.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_with(names: &[&str]) -> fabric::policy::PolicyPlan {
        let mut plan = fabric::policy::PolicyPlan::default();
        plan.endpoints.insert(
            Ipv4Addr::new(10, 0, 0, 5),
            fabric::policy::EndpointPolicy {
                fqdn: vec![fabric::policy::FqdnRule {
                    names: names
                        .iter()
                        .map(|n| fabric::policy::FqdnPattern::Pattern((*n).into()))
                        .collect(),
                    keys: Vec::new(),
                    rule: 0,
                }],
                ..Default::default()
            },
        );
        plan
    }

    fn answered(client: [u8; 4], name: &str, addrs: &[[u8; 4]], ttl: u32) -> Answered {
        Answered {
            client: Ipv4Addr::from(client),
            name: name.into(),
            addrs: addrs.iter().map(|a| Ipv4Addr::from(*a)).collect(),
            ttl,
        }
    }

    #[test]
    fn the_cache_learns_what_a_rule_covers_and_forgets_it_in_time() {
        let plan = plan_with(&["*.example.test"]);
        let mut c = Cache::default();
        let min = Duration::from_secs(5);
        // Not an endpoint of this node, or a name no rule covers: nothing learned.
        assert!(
            c.learn(
                &plan,
                &answered([10, 0, 0, 9], "a.example.test", &[[1, 2, 3, 4]], 30),
                min
            )
            .is_empty()
        );
        assert!(
            c.learn(
                &plan,
                &answered([10, 0, 0, 5], "a.example.org", &[[1, 2, 3, 4]], 30),
                min
            )
            .is_empty()
        );
        assert!(c.learned().is_empty());
        // Covered: new, then known (no second sync), per endpoint, name as asked.
        let a = answered(
            [10, 0, 0, 5],
            "A.Example.Test.",
            &[[1, 2, 3, 4], [1, 2, 3, 5]],
            1,
        );
        assert_eq!(
            c.learn(&plan, &a, min),
            [Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(1, 2, 3, 5)]
        );
        assert!(c.learn(&plan, &a, min).is_empty());
        let l = c.learned();
        let ep = &l[&Ipv4Addr::new(10, 0, 0, 5)];
        assert_eq!(ep.len(), 2);
        assert!(ep[&Ipv4Addr::new(1, 2, 3, 4)].contains("a.example.test"));
        // Kept for the minimum (the TTL of 1 s is shorter), then gone.
        let now = std::time::Instant::now();
        assert!(!c.expire(now + Duration::from_secs(4)));
        assert!(c.expire(now + Duration::from_secs(6)));
        assert!(c.learned().is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let plan = plan_with(&["*"]);
        let mut c = Cache::default();
        let addrs: Vec<[u8; 4]> = (0..CACHE_MAX as u32 + 10)
            .map(|i| (0x0a00_0000 + i).to_be_bytes())
            .collect();
        c.learn(
            &plan,
            &answered([10, 0, 0, 5], "x.test", &addrs, 60),
            MIN_TTL_DEFAULT,
        );
        assert_eq!(c.0.len(), CACHE_MAX);
    }
}
