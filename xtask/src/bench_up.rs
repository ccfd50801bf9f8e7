//! `cargo xtask bench up` and `cargo xtask bench health`: the single-host product's own costs.
//!
//! - **up**: start-up to ready (`trellis up` printing `ready:`) and resident memory idle, on the
//!   example home lab and on the corpus (its Gateways on loopback with ports the OS picks),
//!   beside nginx + Knot idle on the same machine (one server each, as small as they start) and
//!   the memory the replaced components request by default.
//! - **health**: `trellis health` probing N endpoints (default 1,000) every 10 s over HTTP on
//!   loopback for a bounded time: CPU per probe and resident memory.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench_gateway::median;
use crate::proc::{Bg, cpu_secs, rss_kib};

/// Memory the replaced components request by default, MiB: Envoy Gateway's controller (its
/// chart), one Envoy per Gateway (`DefaultDeploymentMemoryResourceRequests`), CoreDNS (its
/// deployment's request). ExternalDNS's chart sets none.
const PUBLISHED: &[(&str, f64)] = &[
    ("Envoy Gateway controller", 256.0),
    ("Envoy, per Gateway (x2)", 1024.0),
    ("CoreDNS", 70.0),
];

/// The config `up` runs with: every Gateway on loopback with ports the OS picks (`ports`:
/// the listener ports of the manifests' Gateways), DNS and admin likewise.
fn up_config(ports: &[u16]) -> String {
    let map: Vec<String> = ports.iter().map(|p| format!("{p}: 0")).collect();
    let map = map.join(", ");
    format!(
        "admin: 127.0.0.1:0\ngateway: {{bind: 127.0.0.1, accessLog: off}}\n\
         gateways:\n  network/envoy-internal: {{ports: {{{map}}}}}\n  network/envoy-external: {{ports: {{{map}}}}}\n\
         dns: {{listen: '127.0.0.1:0'}}\n"
    )
}

/// One start of `trellis up`: (milliseconds to `ready:`, RSS KiB after 2 s idle).
fn up_once(bin: &str, config: &Path, args: &[&str]) -> Result<(f64, f64)> {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .arg("up")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("trellis up")?;
    let err = child.stderr.take().context("stderr")?;
    let pid = child.id();
    let _up = Bg(child);
    let mut ready = None;
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(err).lines() {
        let line = line?;
        if line.starts_with("ready:") {
            ready = Some(start.elapsed());
            break;
        }
        seen.push(line);
    }
    let Some(ready) = ready else {
        bail!("trellis up never got ready:\n{}", seen.join("\n"))
    };
    std::thread::sleep(Duration::from_secs(2));
    Ok((ready.as_secs_f64() * 1000.0, rss_kib(pid)))
}

/// A peer started for its idle memory: RSS KiB of it and its children after 2 s.
fn idle_rss(cmd: &mut Command) -> Result<f64> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let pid = child.id();
    let mut bg = Bg(child);
    std::thread::sleep(Duration::from_secs(2));
    bg.still_running(&format!("{cmd:?}"))?;
    Ok(rss_kib(pid))
}

pub fn run_up(root: &Path, rounds: usize) -> Result<()> {
    crate::ensure_packages(&[("/usr/sbin/nginx", "nginx"), ("/usr/sbin/knotd", "knot")])?;
    let bin = crate::build_release(root)?;
    let dir = root.join("target/bench/up");
    std::fs::create_dir_all(&dir)?;
    let example = root.join("examples/home-lab");
    let example_vars = example.join("vars.yaml");
    let corpus = root.join("testdata/home-ops/kubernetes");
    let cases: [(&str, &[u16], Vec<String>); 2] = [
        (
            "example",
            &[80, 443],
            vec![
                "-f".into(),
                example.display().to_string(),
                "--vars".into(),
                example_vars.display().to_string(),
            ],
        ),
        (
            "corpus",
            &[80, 443, 22],
            vec!["-f".into(), corpus.display().to_string()],
        ),
    ];
    let mut rows = Vec::new();
    for (name, ports, args) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let config = dir.join(format!("trellis-{name}.yaml"));
        std::fs::write(&config, up_config(ports))?;
        let (mut ms, mut kib) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let (m, k) = up_once(&bin, &config, &args)?;
            eprintln!(
                "  {name} round {}: ready in {m:.0} ms, {:.1} MiB",
                round + 1,
                k / 1024.0
            );
            ms.push(m);
            kib.push(k);
        }
        rows.push((*name, median(ms), median(kib) / 1024.0));
    }

    // nginx (one server, one worker) and Knot (one small zone), idle.
    let d = dir.display();
    let nginx_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\nevents {{}}\n\
             http {{ access_log off; client_body_temp_path {d}/nginx-tmp; proxy_temp_path {d}/nginx-tmp; fastcgi_temp_path {d}/nginx-tmp; uwsgi_temp_path {d}/nginx-tmp; scgi_temp_path {d}/nginx-tmp;\n  \
             server {{ listen 127.0.0.1:{nginx_port}; return 200; }} }}\n"
        ),
    )?;
    // Knot in a directory of its own (nginx hands its temporary directories to its worker's
    // user).
    let kd = dir.join("knot");
    std::fs::create_dir_all(kd.join("zones"))?;
    std::fs::write(
        kd.join("zones/cluster.local.zone"),
        "$ORIGIN cluster.local.\n$TTL 30\n@ SOA ns.dns hostmaster 1 7200 1800 86400 30\n@ NS ns.dns\nns.dns A 127.0.0.1\n",
    )?;
    let knot_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let k = kd.display();
    std::fs::write(
        kd.join("knot.conf"),
        format!(
            "server:\n  rundir: \"{k}\"\n  listen: 127.0.0.1@{knot_port}\nlog:\n  - target: stderr\n    any: error\n\
             database:\n  storage: \"{k}/db\"\ntemplate:\n  - id: default\n    storage: \"{k}/zones\"\n    file: \"%s.zone\"\nzone:\n  - domain: cluster.local\n"
        ),
    )?;
    let nginx = idle_rss(Command::new("nginx").args([
        "-c",
        &format!("{d}/nginx.conf"),
        "-g",
        "daemon off;",
    ]))? / 1024.0;
    let knot = idle_rss(Command::new("knotd").args(["-c", &format!("{k}/knot.conf")]))? / 1024.0;

    println!("\n## trellis up: start-up and idle memory (median of {rounds})\n");
    println!("| manifests | start-up to ready | RSS idle |");
    println!("|---|---|---|");
    for (name, ms, mib) in &rows {
        println!("| {name} | {ms:.0} ms | {mib:.1} MiB |");
    }
    println!("\n| peer, idle on this machine | RSS |");
    println!("|---|---|");
    println!("| nginx (1 worker) | {nginx:.1} MiB |");
    println!("| Knot | {knot:.1} MiB |");
    println!("| nginx + Knot | {:.1} MiB |", nginx + knot);
    let total: f64 = PUBLISHED.iter().map(|(_, m)| m).sum();
    println!("\n| replaced component | default memory request |");
    println!("|---|---|");
    for (name, mib) in PUBLISHED {
        println!("| {name} | {mib:.0} MiB |");
    }
    println!("| total | {total:.0} MiB |");
    let corpus_mib = rows.iter().find(|r| r.0 == "corpus").map_or(0.0, |r| r.2);
    println!(
        "\ntrellis up on the corpus: {:.2}x the memory of nginx + Knot idle, {:.3}x the default requests",
        corpus_mib / (nginx + knot),
        corpus_mib / total
    );
    Ok(())
}

pub fn run_health(root: &Path, endpoints: usize, secs: u64) -> Result<()> {
    let bin = crate::build_release(root)?;
    let dir = root.join("target/bench/health");
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _echo = Bg(Command::new(&bin)
        .args(["echo", "--listen", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::null())
        .spawn()
        .context("trellis echo")?);
    crate::proc::wait_tcp(port)?;
    let mut config = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bench, namespace: bench, labels: {gatus.io/enabled: 'true'}}\ndata:\n  config.yaml: |\n    endpoints:\n",
    );
    for i in 0..endpoints {
        config.push_str(&format!(
            "      - {{name: e{i}, group: bench, url: 'http://127.0.0.1:{port}/e{i}', interval: 10s, conditions: ['[STATUS] == 200']}}\n"
        ));
    }
    std::fs::write(dir.join("probes.yaml"), config)?;
    let mut child = Command::new(&bin)
        .args(["health", "-f"])
        .arg(dir.join("probes.yaml"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("trellis health")?;
    let pid = child.id();
    let err = child.stderr.take().context("stderr")?;
    let _health = Bg(child);
    let mut lines = std::io::BufReader::new(err).lines();
    let metrics = loop {
        let line = lines.next().context("trellis health ended")??;
        if let Some((_, url)) = line.rsplit_once("metrics on ") {
            break url.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    // Probes done so far: the sum of gatus_results_total.
    let probes_done = || -> Result<f64> {
        let out = Command::new("curl").args(["-sf", &metrics]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("gatus_results_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    };
    // The first round starts every endpoint within its jittered interval; measure after it.
    eprintln!("  warming up for 12 s, then measuring {secs} s");
    std::thread::sleep(Duration::from_secs(12));
    let (cpu0, n0) = (cpu_secs(pid), probes_done()?);
    std::thread::sleep(Duration::from_secs(secs));
    let (cpu, probes) = (cpu_secs(pid) - cpu0, probes_done()? - n0);
    let rss = rss_kib(pid) / 1024.0;
    println!("\n## trellis health: {endpoints} endpoints every 10 s, {secs} s measured\n");
    println!("| probes | CPU | CPU per probe | RSS |");
    println!("|---|---|---|---|");
    println!(
        "| {probes:.0} (expected {:.0}) | {cpu:.2} s | {:.0} µs | {rss:.1} MiB |",
        endpoints as f64 * secs as f64 / 10.0,
        cpu / probes.max(1.0) * 1e6
    );
    Ok(())
}
