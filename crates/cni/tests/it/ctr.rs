//! A real container runtime drives the plugin: Debian's containerd with `ctr run --cni` runs a
//! busybox-static container whose network trellis-cni sets up, the corpus IoT attachment
//! included, and tears down when the container exits.
//!
//! `ctr` reads `/etc/cni/net.d` and `/opt/cni/bin` and has no flag for either, so containerd,
//! its shims, `ctr` and the plugins all run inside one private mount, network and PID namespace
//! (`unshare`), where those directories are this test's own (bind mounts over overlays of
//! `/etc`, `/opt`, `/var/lib` and a tmpfs `/run`). The host's files and network are untouched;
//! killing the namespace's first process ends everything in it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{PLUGIN, require_root};

const CTR_NAMESPACE: &str = "trellis";
/// How long containerd may take to answer on its socket (it takes ~0.2 s).
const CONTAINERD_START_MAX: Duration = Duration::from_secs(20);

/// A private containerd (and everything it starts), ended on drop.
struct Runtime {
    dir: tempfile::TempDir,
    unshare: Child,
    init: u32,
    container: String,
}

impl Runtime {
    fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// `ctr` inside the private namespaces; (success, stdout + stderr).
    fn ctr(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-m", "-n", "-p", "ctr"])
            .arg("--address")
            .arg(self.sock())
            .args(["-n", CTR_NAMESPACE])
            .args(args)
            .output()
            .expect("nsenter ctr runs");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `ip` in the runtime's network namespace (the "node").
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-n", "ip"])
            .args(args)
            .output()
            .expect("nsenter ip runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // The namespace's init dies with unshare (--kill-child); containerd, the shims and the
        // container with it, and the mounts and the network namespace with them.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        remove_cgroups(Path::new("/sys/fs/cgroup"), &self.container, 0);
    }
}

/// runc's cgroup directories named `name` (left behind only when the container was killed).
fn remove_cgroups(dir: &Path, name: &str, depth: usize) {
    if depth > 6 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        remove_cgroups(&p, name, depth + 1);
        if e.file_name() == name {
            let _ = std::fs::remove_dir(&p);
        }
    }
}

/// Whether the 64-bit ELF at `path` has no program interpreter (PT_INTERP): it runs in a root
/// filesystem with no libraries.
fn busybox_is_static(path: &Path) -> bool {
    let mut b = Vec::new();
    if std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut b))
        .is_err()
        || b.len() < 64
        || &b[..4] != b"\x7fELF"
        || b[4] != 2
    {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(54), u16_at(56));
    (0..count).all(|i| {
        let at = phoff + i * size;
        b.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) != 3)
    })
}

fn start(conf: &serde_json::Value, container: &str) -> Runtime {
    require_root();
    for (bin, pkg) in [
        ("/usr/bin/containerd", "containerd"),
        ("/usr/sbin/runc", "runc"),
        ("/bin/busybox", "busybox-static"),
    ] {
        assert!(
            Path::new(bin).exists(),
            "{bin} missing: apt-get install {pkg}"
        );
    }
    assert!(
        busybox_is_static(Path::new("/bin/busybox")),
        "/bin/busybox is not static: apt-get install busybox-static"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let l = dir.path();
    // A busybox root filesystem: no image pull.
    let rootfs = l.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir rootfs");
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "ip", "ping", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("applet");
    }
    for d in ["net.d", "bin", "scratch", "root", "state", "cni-state"] {
        std::fs::create_dir_all(l.join(d)).expect("mkdir");
    }
    std::os::unix::fs::symlink(PLUGIN, l.join("bin/trellis-cni")).expect("plugin link");
    std::fs::write(l.join("net.d/10-trellis.conf"), conf.to_string()).expect("write conf");
    let config = format!(
        "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.internal.v1.opt\", \
         \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.btrfs\", \
         \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.zfs\", \
         \"io.containerd.tracing.processor.v1.otlp\", \"io.containerd.internal.v1.tracing\"]\n\
         [grpc]\n  address = \"{0}/containerd.sock\"\n\
         [ttrpc]\n  address = \"{0}/containerd.sock.ttrpc\"\n",
        l.display()
    );
    std::fs::write(l.join("config.toml"), config).expect("write config");
    // The namespace's first process: private /etc/cni/net.d, /opt/cni/bin, /var/lib/cni and
    // /run, a node uplink (proxy ARP answers for the pod gateway only with a route out of
    // another interface), the IoT LAN (eth3 to dev0 at the IoT router's address), containerd.
    let init = format!(
        r#"set -e
L={l}
mount -t tmpfs t $L/scratch
for d in etc opt var/lib; do
  n=$(echo $d | tr / _)
  mkdir -p $L/scratch/$n/up $L/scratch/$n/work
  mount -t overlay overlay -o lowerdir=/$d,upperdir=$L/scratch/$n/up,workdir=$L/scratch/$n/work /$d
done
mount -t tmpfs t /run
mkdir -p /etc/cni/net.d /opt/cni/bin
mount --bind $L/net.d /etc/cni/net.d
mount --bind $L/bin /opt/cni/bin
ip link set lo up
ip link add up0 type veth peer name up1
ip addr add 10.69.1.1/32 dev up0
ip link set up0 up
ip link set up1 up
ip route add default dev up0
ip link add eth3 type veth peer name dev0
ip addr add 10.10.33.1/24 dev dev0
ip link set eth3 up
ip link set dev0 up
containerd -c $L/config.toml > $L/containerd.log 2>&1 &
wait
"#,
        l = l.display()
    );
    std::fs::write(l.join("init.sh"), init).expect("write init");
    let unshare = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "sh",
        ])
        .arg(l.join("init.sh"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare runs");
    let mut rt = Runtime {
        dir,
        init: 0,
        unshare,
        container: container.to_string(),
    };
    let started = Instant::now();
    let children = format!("/proc/{0}/task/{0}/children", rt.unshare.id());
    loop {
        if rt.init == 0 {
            rt.init = std::fs::read_to_string(&children)
                .ok()
                .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
                .unwrap_or(0);
        }
        if rt.init != 0 && rt.ctr(&["version"]).0 {
            return rt;
        }
        assert!(
            started.elapsed() < CONTAINERD_START_MAX,
            "containerd did not answer on {}: {}",
            rt.sock().display(),
            std::fs::read_to_string(rt.dir.path().join("containerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ctr run --rm --cni`: the container gets eth0 from trellis and net1 on the IoT LAN from the
/// corpus NAD (macvlan, static, sbr), reaches the IoT router from its IoT address and the node
/// over eth0; when it exits, ctr's DEL (with an empty CNI_NETNS) removes the record and frees
/// the address.
#[test]
fn ctr_run_with_cni_sets_up_the_pod_and_its_attachment() {
    let container = format!("cni-t-{}", std::process::id());
    let state = tempfile::tempdir().expect("state dir");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "trellis",
        "type": "trellis-cni",
        "podCIDR": crate::support::POD_CIDR,
        "stateDir": state.path(),
        "networks": [{
            "name": "network/multus-iot",
            "interface": "net1",
            "config": crate::multus::corpus_nad("net-attach-iot.yaml"),
        }],
    });
    let rt = start(&conf, &container);
    let rootfs = rt.dir.path().join("rootfs");
    let script = "ip -4 addr show eth0; ip -4 addr show net1; \
                  ping -c1 -W2 -I 10.10.33.254 10.10.33.1 && ping -c1 -W2 10.69.1.1";
    let (ok, out) = rt.ctr(&[
        "run",
        "--rm",
        "--cni",
        "--cgroup",
        "",
        "--rootfs",
        &rootfs.display().to_string(),
        &container,
        "/bin/sh",
        "-c",
        script,
    ]);
    assert!(ok, "ctr run failed:\n{out}");
    assert!(out.contains("10.10.33.254/24"), "net1: {out}");
    assert!(out.contains("10.69.1."), "eth0: {out}");
    assert!(
        out.matches(" 0% packet loss").count() == 2,
        "IoT router and node: {out}"
    );
    // ctr called DEL after the container exited: nothing recorded, no address held, no veth.
    let cid = format!("{CTR_NAMESPACE}-{container}");
    assert!(
        !state.path().join("multus").join(&cid).exists(),
        "DEL left the attachment record"
    );
    let held: Vec<String> = std::fs::read_dir(state.path().join("ipam/trellis"))
        .expect("ipam dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
        .collect();
    assert!(held.is_empty(), "DEL left addresses allocated: {held:?}");
    let links = rt.ip(&["-o", "link"]);
    assert!(!links.contains("lxc"), "DEL left the host veth: {links}");
}
