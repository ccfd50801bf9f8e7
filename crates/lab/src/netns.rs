//! Network namespaces, links and routes through iproute2 (`ip`), and processes inside them.
//!
//! The lab is a test harness: it builds its topology with the same `ip` commands an operator
//! would type, so every step can be replayed by hand and read in `lab status`. The datapath
//! and the CNI plugin, which a real node runs, use netlink and aya instead.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Where iproute2 keeps named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip -n NS ARGS`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

pub fn exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Creates a namespace with its loopback up.
pub fn add(name: &str) -> Result<()> {
    if exists(name) {
        bail!("network namespace {name} already exists (a lab left over? run `trellis lab down`)");
    }
    ip(&["netns", "add", name])?;
    ip_in(name, &["link", "set", "lo", "up"])
}

/// Kills every process in the namespace, then deletes it. Missing is fine.
pub fn delete(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    kill_all_in(name);
    ip(&["netns", "del", name])
}

/// SIGKILLs the processes `ip netns pids` lists for the namespace.
pub fn kill_all_in(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The named namespaces whose names start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    out.sort();
    out
}

/// A command that runs `program` inside the namespace. `nsenter --net` switches only the
/// network namespace: `ip netns exec` would also remount /sys, hiding the bpffs at
/// /sys/fs/bpf where the agents pin the datapath (bpffs mounts do not share pins).
pub fn command_in(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={NETNS_DIR}/{ns}")).arg(program);
    c
}

/// Runs `f` inside the namespace, on a thread of its own (`setns(2)` moves only the calling
/// thread): for work done through the kernel's APIs there rather than a command.
pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("{NETNS_DIR}/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("cannot enter {ns}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread working in {ns} panicked"))?
    })
}

/// Sets sysctls inside a namespace (`net.ipv4.ip_forward=1`, ...).
pub fn sysctl_in(ns: &str, settings: &[&str]) -> Result<()> {
    let out = command_in(ns, "sysctl")
        .arg("-qw")
        .args(settings)
        .output()
        .context("cannot run sysctl (apt-get install procps)")?;
    if !out.status.success() {
        bail!(
            "sysctl in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes a namespace on drop (test topologies).
#[derive(Debug)]
pub struct NetnsGuard(pub String);

impl NetnsGuard {
    pub fn new(name: &str) -> Result<NetnsGuard> {
        add(name)?;
        Ok(NetnsGuard(name.to_string()))
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.0) {
            eprintln!("cleanup: {e:#}");
        }
    }
}
