//! A 3-member etcd cluster on loopback for tests and benchmarks (Debian's etcd-server): free
//! ports, data in a temporary directory, fast elections; members can be stopped and started
//! again with their data; everything is stopped and removed on drop. Shared by the store's
//! tests and `cargo xtask bench state` (included with `#[path]`).

use std::process::{Child, Command, Stdio};

pub const ETCD: &str = "/usr/bin/etcd";

/// One etcd member: its command line, so that it can be stopped and started again with its
/// data.
pub struct Member {
    args: Vec<String>,
    pub client: String,
    child: Option<Child>,
}

impl Member {
    pub fn start(&mut self) {
        self.child = Some(
            Command::new(ETCD)
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("etcd starts (apt-get install etcd-server)"),
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A 3-member etcd cluster on loopback, stopped (and its data removed) on drop.
pub struct Cluster {
    pub members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
    }
}

/// A port below the kernel's ephemeral range (32768 and up by default), free when looked at.
/// A port taken from a bind to port 0 is in that range, where any outgoing connection of a
/// parallel test may take it as its local port before etcd binds it (CI saw a member never
/// answer).
fn free_port() -> u16 {
    use std::hash::BuildHasher;
    const TRIES: usize = 1_000;
    for _ in 0..TRIES {
        let r = std::hash::RandomState::new().hash_one(std::time::Instant::now());
        let port = 20_000 + (r % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999 after {TRIES} tries");
}

impl Cluster {
    pub fn start() -> Cluster {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} missing: apt-get install etcd-server"
        );
        let dir = tempfile::tempdir().expect("tmp");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members: Vec<Member> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| Member {
                client: format!("127.0.0.1:{client}"),
                args: vec![
                    format!("--name=m{i}"),
                    format!("--data-dir={}", dir.path().join(format!("m{i}")).display()),
                    format!("--listen-client-urls=http://127.0.0.1:{client}"),
                    format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                    format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-cluster={}", initial.join(",")),
                    "--initial-cluster-state=new".into(),
                    format!(
                        "--initial-cluster-token=trellis-test-{}",
                        std::process::id()
                    ),
                    // Fast elections, so that the tests do not wait on defaults.
                    "--heartbeat-interval=50".into(),
                    "--election-timeout=500".into(),
                    "--log-level=error".into(),
                    "--logger=zap".into(),
                ],
                child: None,
            })
            .collect();
        for m in &mut members {
            m.start();
        }
        Cluster { members, _dir: dir }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }
}
