//! Test fixtures: network namespaces that clean up on drop, a "node" namespace with an uplink,
//! the plugin binary run inside it, and an ICMP echo from inside a pod.
//!
//! Every test builds its own node namespace, so the host ends of the pod veths, the routes and
//! any qdiscs live there and disappear with it; nothing is created in the machine's own
//! namespace and no traffic leaves the namespaces a test made.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_trellis-cni");
/// The node's own address: the first of the pod CIDR, the one IPAM never hands out.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 69, 1, 1);
pub const POD_CIDR: &str = "10.69.1.0/24";

/// Panics (never skips) unless we are root: these tests create namespaces and links.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the cni integration tests need root (network namespaces, veths); run them as root"
    );
}

pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A named network namespace (`ip netns add`), deleted on drop, also when the test panics.
pub struct Netns {
    pub name: String,
    deleted: bool,
}

impl Netns {
    pub fn new() -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        require_root();
        let name = format!(
            "trellis-t-cni-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        Netns {
            name,
            deleted: false,
        }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// `ip netns exec NAME args...`, returning its output whatever the exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {args:?} in {}: {e}", self.name))
    }

    /// Deletes it now (to test DEL with the namespace gone).
    pub fn delete(&mut self) {
        if !self.deleted {
            self.deleted = true;
            sh(&["ip", "netns", "del", &self.name]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted {
            // Links inside go with the namespace.
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

/// A node: a namespace standing in for the host, with an uplink veth carrying the node's
/// address and the default route (proxy ARP answers for 169.254.1.1 only when the node has a
/// route to it out of another interface), and its own state directory.
pub struct Node {
    pub ns: Netns,
    pub state: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Node {
        let ns = Netns::new();
        ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
        ns.ip(&["address", "add", &format!("{NODE_IP}/32"), "dev", "up0"]);
        ns.ip(&["link", "set", "up0", "up"]);
        ns.ip(&["link", "set", "up1", "up"]);
        ns.ip(&["route", "add", "default", "dev", "up0"]);
        Node {
            ns,
            state: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "trellis",
            "type": "trellis-cni",
            "podCIDR": POD_CIDR,
            "stateDir": self.state.path(),
            "mtu": 1400,
        })
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.state.path().join("ipam/trellis")
    }

    /// Runs the plugin inside the node namespace.
    pub fn run(&self, command: &str, conf: &Value, pod: Option<(&str, &Path)>) -> Reply {
        let mut env = vec![("CNI_COMMAND", command.to_string())];
        if let Some((container_id, netns)) = pod {
            env.push(("CNI_CONTAINERID", container_id.to_string()));
            env.push(("CNI_NETNS", netns.display().to_string()));
            env.push(("CNI_IFNAME", "eth0".to_string()));
            env.push(("CNI_PATH", "/usr/lib/cni".to_string()));
        }
        self.run_env(&env, conf.to_string().as_bytes())
    }

    pub fn run_env(&self, env: &[(&str, String)], stdin: &[u8]) -> Reply {
        // nsenter switches only the network namespace; `ip netns exec` would also remount /sys
        // and hide the bpffs the datapath's pins live on (as a container runtime would not).
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.ns.name))
            .arg(PLUGIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_with_stdin(cmd, stdin)
    }

    pub fn add(&self, container_id: &str, pod: &Netns) -> Value {
        self.add_path(container_id, &pod.path())
    }

    pub fn add_path(&self, container_id: &str, netns: &Path) -> Value {
        self.run("ADD", &self.conf(), Some((container_id, netns)))
            .ok()
    }

    /// The node namespace's links, one per line.
    pub fn links(&self) -> String {
        String::from_utf8_lossy(&self.ns.ip(&["-o", "link"]).stdout).into_owned()
    }
}

pub struct Reply {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts success and returns the stdout JSON (`Null` when empty).
    pub fn ok(&self) -> Value {
        assert!(
            self.success,
            "plugin failed: {}\n{}",
            self.stdout, self.stderr
        );
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts failure with the spec's error JSON and returns its code.
    pub fn err_code(&self) -> u64 {
        assert!(!self.success, "expected failure, got {}", self.stdout);
        let v = self.json();
        for field in ["cniVersion", "msg"] {
            assert!(v[field].is_string(), "error JSON lacks {field}: {v}");
        }
        v["code"].as_u64().unwrap_or_else(|| panic!("no code: {v}"))
    }
}

pub fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Reply {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait plugin");
    Reply {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A process (`sleep`) in a network namespace of its own, reachable only as
/// `/proc/PID/ns/net`, as a container runtime's sandbox is. Killed on drop.
pub struct ProcNetns {
    child: std::process::Child,
}

impl ProcNetns {
    pub fn new() -> ProcNetns {
        require_root();
        let child = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .spawn()
            .expect("spawn unshare --net sleep");
        let p = ProcNetns { child };
        // unshare(2) runs before exec; wait until the process is in a namespace of its own.
        let ours = std::fs::read_link("/proc/self/ns/net").expect("own netns");
        for _ in 0..500 {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", p.child.id()));
            let ns = std::fs::read_link(p.path());
            if comm.is_ok_and(|c| c.trim() == "sleep") && ns.is_ok_and(|ns| ns != ours) {
                return p;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "unshare --net did not give pid {} its own netns",
            p.child.id()
        );
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.child.id()))
    }

    /// Ends the process: its namespace is gone with it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProcNetns {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends up to `tries` ICMP echo requests from inside the namespace at `netns` to `dst`,
/// waiting up to a second for each reply (the first may wait for ARP). Returns whether a reply
/// came.
pub fn ping_from(netns: &Path, dst: Ipv4Addr, tries: u16) -> bool {
    ping(netns, None, dst, tries)
}

/// As [`ping_from`], with the echo sent from the address `src` (bound), so that source-based
/// routing rules apply.
pub fn ping(netns: &Path, src: Option<Ipv4Addr>, dst: Ipv4Addr, tries: u16) -> bool {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, bind, recvfrom,
        sendto, setsockopt, socket, sockopt,
    };
    let ns = File::open(netns).expect("open netns");
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let fd = socket(
                AddressFamily::Inet,
                SockType::Raw,
                SockFlag::empty(),
                SockProtocol::Icmp,
            )
            .expect("raw icmp socket");
            if let Some(src) = src {
                let at = SockaddrIn::from(std::net::SocketAddrV4::new(src, 0));
                bind(fd.as_raw_fd(), &at).unwrap_or_else(|e| panic!("bind {src}: {e}"));
            }
            let timeout = nix::sys::time::TimeVal::new(1, 0);
            setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).expect("SO_RCVTIMEO");
            let id: u16 = (std::process::id() & 0xffff) as u16;
            let to = SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0));
            for seq in 1..=tries {
                let mut pkt = vec![8, 0, 0, 0];
                pkt.extend_from_slice(&id.to_be_bytes());
                pkt.extend_from_slice(&seq.to_be_bytes());
                pkt.extend_from_slice(b"trellis-cni-test");
                let sum = checksum(&pkt);
                pkt[2..4].copy_from_slice(&sum.to_be_bytes());
                sendto(fd.as_raw_fd(), &pkt, &to, MsgFlags::empty()).expect("sendto");
                let mut buf = [0u8; 1500];
                while let Ok((n, from)) = recvfrom::<SockaddrIn>(fd.as_raw_fd(), &mut buf) {
                    let ihl = usize::from(buf[0] & 0x0f) * 4;
                    let icmp = &buf[ihl.min(n)..n];
                    let reply = icmp.len() >= 8
                        && icmp[0] == 0
                        && icmp[4..6] == id.to_be_bytes()
                        && from.map(|f| f.ip()) == Some(dst);
                    if reply {
                        return true;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        })
        .join()
        .expect("ping thread")
    })
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Runs `f` on a thread that has joined the network namespace at `netns`.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(netns).expect("open netns");
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// A TCP server inside `netns` on `port` that answers one connection with `greeting`.
/// Returns once it is listening; the server thread ends after that one connection or 10 s.
pub fn serve_once(netns: &Path, port: u16, greeting: &'static str) -> std::thread::JoinHandle<()> {
    let ns = File::open(netns).expect("open netns");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind in pod");
        listener.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    use std::io::Write;
                    let _ = conn.write_all(greeting.as_bytes());
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    });
    ready_rx.recv().expect("server ready");
    handle
}
