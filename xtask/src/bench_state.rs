//! `cargo xtask bench state`: the claim latency of the state seam on a 3-member etcd (Debian's,
//! on loopback) against the one-host file backend and the in-process one, and agents on published manifests (start to
//! synced, a change fanned out to every agent), with `trellis state bench` (release build).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

#[path = "../../crates/store/tests/it/etcd_cluster.rs"]
mod etcd_cluster;

fn bench(bin: &str, state: &str, claims: usize, services: usize) -> Result<String> {
    let out = Command::new(bin)
        .args([
            "state",
            "--state",
            state,
            "bench",
            "--claims",
            &claims.to_string(),
            "--services",
            &services.to_string(),
        ])
        .output()
        .context("trellis state bench")?;
    ensure!(
        out.status.success(),
        "trellis state bench on {state}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn run(root: &Path, claims: usize, services: usize) -> Result<()> {
    crate::ensure_packages(&[("/usr/bin/etcd", "etcd-server")])?;
    let bin = crate::build_release(root)?;
    let cluster = etcd_cluster::Cluster::start();
    let state = format!("etcd://{}", cluster.endpoints().join(","));
    // The cluster answers once it has a leader.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while Command::new(&bin)
        .args(["state", "--state", &state, "ls"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "etcd did not answer in 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The embedded backend: the file backend in a directory of its own.
    let dir = tempfile::tempdir().context("a directory for the file backend")?;
    let file = format!("file://{}", dir.path().join("state").display());
    let etcd = bench(&bin, &state, claims, 0)?;
    let embedded = bench(&bin, &file, claims, 0)?;
    let memory = bench(&bin, "memory", claims, 0)?;
    println!("\n## State backend: claim latency, {claims} claims one after another\n");
    println!("| backend | result |");
    println!("|---|---|");
    println!("| etcd, 3 members on loopback | {etcd} |");
    println!("| file (one host, fsync per change) | {embedded} |");
    println!("| in-process | {memory} |");
    let etcd = bench(&bin, &state, 0, services)?;
    let embedded = bench(&bin, &file, 0, services)?;
    let memory = bench(&bin, "memory", 0, services)?;
    println!(
        "\n## Agents on published manifests: {services} LoadBalancer Services (two pods each), 3 agents\n"
    );
    println!(
        "Each agent reads the generation, brings the shared assignments up to it (compare-and-swap), \
         compiles its plan and lowers it to map entries (no kernel writes). A change is timed from \
         the publish to the last agent's plan.\n"
    );
    println!("| backend | result |");
    println!("|---|---|");
    println!("| etcd, 3 members on loopback | {etcd} |");
    println!("| file (one host) | {embedded} |");
    println!("| in-process | {memory} |");
    Ok(())
}
