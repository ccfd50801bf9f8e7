//! `cargo xtask bench state`: the claim latency of the state seam on a 3-member etcd (Debian's,
//! on loopback) against the one-host file backend and the in-process one, and agents on published manifests (start to
//! synced, a change fanned out to every agent), with `trellis state bench` (release build).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

#[path = "../../crates/store/tests/it/etcd_cluster.rs"]
mod etcd_cluster;

/// `trellis state bench` on `state`: `claims` claims, then (`services` > 0) agents on that
/// many Services of `type_`, with `changes` changes.
fn bench(
    bin: &str,
    state: &str,
    claims: usize,
    (services, type_, changes): (usize, &str, usize),
) -> Result<String> {
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
            "--service-type",
            type_,
            "--changes",
            &changes.to_string(),
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
    let none = (0, "ClusterIP", 0);
    let etcd = bench(&bin, &state, claims, none)?;
    let embedded = bench(&bin, &file, claims, none)?;
    let memory = bench(&bin, "memory", claims, none)?;
    println!("\n## State backend: claim latency, {claims} claims one after another\n");
    println!("| backend | result |");
    println!("|---|---|");
    println!("| etcd, 3 members on loopback | {etcd} |");
    println!("| file (one host, fsync per change) | {embedded} |");
    println!("| in-process | {memory} |");
    println!("\n## Agents on published manifests: {services} Services (two pods each), 3 agents\n");
    println!(
        "Each agent reads the generation, brings the shared assignments up to it (compare-and-swap), \
         compiles its plan and lowers it to map entries (no kernel writes). A change is timed from \
         the publish to the last agent's plan.\n"
    );
    println!("| Services | backend | result |");
    println!("|---|---|---|");
    // ClusterIP: no external frontends. LoadBalancer: an LB address each and Maglev tables
    // for every external frontend (fewer changes: each costs seconds).
    for (type_, changes) in [("ClusterIP", 20), ("LoadBalancer", 3)] {
        for (name, at) in [
            ("etcd, 3 members on loopback", state.as_str()),
            ("file (one host)", file.as_str()),
            ("in-process", "memory"),
        ] {
            let r = bench(&bin, at, 0, (services, type_, changes))?;
            println!("| {type_} | {name} | {r} |");
        }
    }
    Ok(())
}
