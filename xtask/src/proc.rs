//! Processes the xtasks start: stopped when dropped, waited for on a port, and measured.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// A process we started: SIGTERM when dropped (also when the task fails), SIGKILL if it has
/// not exited within 10 s.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Bg {
    /// Fails when the process has exited: what answers on its port is then someone else (a
    /// server left over from an earlier run), and measuring it would be measuring the wrong
    /// thing.
    pub fn still_running(&mut self, name: &str) -> Result<()> {
        match self.0.try_wait() {
            Ok(None) => Ok(()),
            _ => bail!(
                "{name} exited right after starting (its port taken by a process left over from \
                 an earlier run? `ss -ltnp` shows who listens)"
            ),
        }
    }
}

/// Waits (at most 20 s) until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_tcp(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on 127.0.0.1:{port} after 20 s")
}

/// A process and its descendants, each with one figure from its `/proc/PID/stat` fields
/// (after the name; `f[1]` is the parent).
fn tree_sum(pid: u32, figure: impl Fn(&[&str]) -> Option<u64>) -> u64 {
    let all: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| {
                    let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                    let rest = stat.rsplit_once(')')?.1;
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    let ppid = f.get(1)?.parse().ok()?;
                    Some((p, ppid, figure(&f)?))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut total = 0u64;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        for (q, ppid, x) in &all {
            if *q == p {
                total += x;
            }
            if *ppid == p {
                stack.push(*q);
            }
        }
    }
    total
}

/// utime+stime of a process and its descendants, in seconds (from /proc).
pub fn cpu_secs(pid: u32) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let cpu = |f: &[&str]| Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?);
    tree_sum(pid, cpu) as f64 / tick
}

/// Resident memory of a process and its descendants, KiB (rss pages from /proc).
pub fn rss_kib(pid: u32) -> f64 {
    let page_kib = 4; // x86-64 pages
    let rss = |f: &[&str]| f.get(21)?.parse::<u64>().ok();
    (tree_sum(pid, rss) * page_kib) as f64
}
