//! `cargo xtask bench dns`: trellis's cluster DNS against Knot DNS on the same 1,000 names.
//!
//! The method of `../shared/peer-baselines/dns`: each server pinned to CPU 0, dnsperf pinned to
//! CPU 1 (`dnsperf -c 10 -T 1 -q 100 -l <D>`), 100,000 queries for random names of a
//! 1,000-name zone, rounds interleaved, the median; server CPU time per query from /proc.
//! Knot serves the names as a zone file; trellis serves them as 1,000 ClusterIP Services of
//! the cluster zone.
//!
//! Cached forwarding: Knot also serves a zone `fwd.lab` of 1,000 names (TTL 3600); Unbound
//! (a stub zone pointing at Knot, one thread, no validation) and trellis (`--forward` to
//! Knot) answer them from their caches, warmed by a first pass. Writes
//! `target/bench/dns/dns.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::proc::{Bg, cpu_secs};

const KNOT_PORT: u16 = 15301;
const TRELLIS_PORT: u16 = 15302;
const UNBOUND_PORT: u16 = 15303;
const TRELLIS_FWD_PORT: u16 = 15304;
const NAMES: usize = 1000;

fn dnsperf(port: u16, queries: &Path, secs: u32) -> Result<(f64, f64, f64)> {
    let out = Command::new("taskset")
        .args([
            "-c",
            "1",
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-d",
        ])
        .arg(queries)
        .args(["-c", "10", "-T", "1", "-l", &secs.to_string(), "-q", "100"])
        .output()
        .context("dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |key: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
        line.split(':')
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let qps = field("Queries per second").with_context(|| format!("dnsperf output: {text}"))?;
    let completed = field("Queries completed").unwrap_or(0.0);
    let avg_latency_s = field("Average Latency (s)").unwrap_or(f64::NAN);
    Ok((qps, completed, avg_latency_s))
}

pub fn run(root: &Path, rounds: usize, secs: u32) -> Result<()> {
    crate::ensure_packages(&[
        ("/usr/bin/dnsperf", "dnsperf"),
        ("/usr/sbin/knotd", "knot"),
        ("/usr/sbin/unbound", "unbound"),
    ])?;
    crate::run("cargo", &["build", "--release", "--package", "trellis"])?;
    let dir = root.join("target/bench/dns");
    std::fs::create_dir_all(dir.join("zones"))?;
    std::fs::create_dir_all(dir.join("manifests"))?;
    let mut zone = String::from(
        "$ORIGIN cluster.local.\n$TTL 30\n@ SOA ns.dns hostmaster 1 7200 1800 86400 30\n@ NS ns.dns\nns.dns A 127.0.0.1\n",
    );
    let mut manifests = String::new();
    let mut fwd_zone = String::from(
        "$ORIGIN fwd.lab.\n$TTL 3600\n@ SOA ns hostmaster 1 7200 1800 86400 3600\n@ NS ns\nns A 127.0.0.1\n",
    );
    for i in 0..NAMES {
        let ip = format!("10.96.{}.{}", 10 + i / 250, 1 + i % 250);
        let _ = writeln!(zone, "svc{i}.bench.svc A {ip}");
        let _ = writeln!(fwd_zone, "host{i} A {ip}");
        let _ = write!(
            manifests,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: bench}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n---\n"
        );
    }
    std::fs::write(dir.join("zones/cluster.local.zone"), zone)?;
    std::fs::write(dir.join("zones/fwd.lab.zone"), fwd_zone)?;
    std::fs::write(dir.join("manifests/services.yaml"), manifests)?;
    // 100,000 random names (a fixed LCG, so every run asks the same).
    let (mut q, mut fq) = (String::new(), String::new());
    let mut x: u64 = 42;
    for _ in 0..100_000 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let i = (x >> 33) as usize % NAMES;
        let _ = writeln!(q, "svc{i}.bench.svc.cluster.local A");
        let _ = writeln!(fq, "host{i}.fwd.lab A");
    }
    let queries = dir.join("queries.txt");
    std::fs::write(&queries, q)?;
    let fwd_queries = dir.join("queries-forwarded.txt");
    std::fs::write(&fwd_queries, fq)?;
    std::fs::write(
        dir.join("unbound.conf"),
        format!(
            "server:\n  num-threads: 1\n  interface: 127.0.0.1@{UNBOUND_PORT}\n  port: {UNBOUND_PORT}\n  do-ip6: no\n  chroot: \"\"\n  username: \"\"\n             directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  access-control: 127.0.0.0/8 allow\n             so-reuseport: no\n  minimal-responses: yes\n  do-not-query-localhost: no\n  module-config: \"iterator\"\n             msg-cache-size: 64m\n  rrset-cache-size: 64m\n             stub-zone:\n  name: \"fwd.lab\"\n  stub-addr: 127.0.0.1@{KNOT_PORT}\nremote-control:\n  control-enable: no\n",
            d = dir.display()
        ),
    )?;
    let d = dir.display();
    std::fs::write(
        dir.join("knot.conf"),
        format!(
            "server:\n  rundir: \"{d}\"\n  listen: 127.0.0.1@{KNOT_PORT}\n  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\nlog:\n  - target: stderr\n    any: error\n\
             database:\n  storage: \"{d}/db\"\ntemplate:\n  - id: default\n    storage: \"{d}/zones\"\n    file: \"%s.zone\"\n    zonefile-sync: -1\n    journal-content: none\nzone:\n  - domain: cluster.local\n  - domain: fwd.lab\n"
        ),
    )?;
    // Every server on CPU 0, its stderr dropped.
    let on_cpu0 = |program: &Path, args: &[&str]| -> Result<Bg> {
        Ok(Bg(Command::new("taskset")
            .args(["-c", "0"])
            .arg(program)
            .args(args)
            .stderr(Stdio::null())
            .spawn()?))
    };
    let conf = |name: &str| dir.join(name).display().to_string();
    let mut knot = on_cpu0(Path::new("knotd"), &["-c", &conf("knot.conf")])?;
    let mut unbound = on_cpu0(Path::new("unbound"), &["-d", "-c", &conf("unbound.conf")])?;
    let trellis = root.join("target/release/trellis");
    let manifests = format!("{d}/manifests");
    let listen = |port: u16| format!("127.0.0.1:{port}");
    let (tr_listen, fwd_listen, knot_addr) = (
        listen(TRELLIS_PORT),
        listen(TRELLIS_FWD_PORT),
        listen(KNOT_PORT),
    );
    let mut tr = on_cpu0(&trellis, &["dns", "-f", &manifests, "--listen", &tr_listen])?;
    let mut tr_fwd = on_cpu0(
        &trellis,
        &[
            "dns",
            "-f",
            &manifests,
            "--listen",
            &fwd_listen,
            "--forward",
            &knot_addr,
        ],
    )?;
    // Every server must answer a name correctly before anything is measured.
    for (port, name) in [
        (KNOT_PORT, "svc7.bench.svc.cluster.local"),
        (TRELLIS_PORT, "svc7.bench.svc.cluster.local"),
        (UNBOUND_PORT, "host7.fwd.lab"),
        (TRELLIS_FWD_PORT, "host7.fwd.lab"),
    ] {
        let ok = (0..100).any(|_| {
            let out = Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "+short",
                    "+time=1",
                    "+tries=1",
                    name,
                ])
                .output();
            let good = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "10.96.10.8");
            if !good {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            good
        });
        if !ok {
            bail!("the server on port {port} does not answer {name} with 10.96.10.8");
        }
    }
    for (name, bg) in [
        ("knot", &mut knot),
        ("unbound", &mut unbound),
        ("trellis", &mut tr),
        ("trellis --forward", &mut tr_fwd),
    ] {
        bg.still_running(name)?;
    }
    let servers = [
        ("knot", KNOT_PORT, knot.0.id(), &queries),
        ("trellis", TRELLIS_PORT, tr.0.id(), &queries),
        ("unbound-cached", UNBOUND_PORT, unbound.0.id(), &fwd_queries),
        (
            "trellis-cached",
            TRELLIS_FWD_PORT,
            tr_fwd.0.id(),
            &fwd_queries,
        ),
    ];
    // A first pass warms the caches.
    for (_, port, _, queries) in &servers {
        dnsperf(*port, queries, 2)?;
    }
    let mut results: BTreeMap<&str, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for round in 0..rounds {
        for (name, port, pid, queries) in &servers {
            let c0 = cpu_secs(*pid);
            let (qps, completed, lat) = dnsperf(*port, queries, secs)?;
            let cpu_us = (cpu_secs(*pid) - c0) / completed * 1e6;
            eprintln!(
                "round {round} {name:<8} {qps:>10.0} q/s  avg latency {:.0} µs  server {cpu_us:.2} µs/query",
                lat * 1e6
            );
            results.entry(name).or_default().push((qps, lat, cpu_us));
        }
    }
    let med = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let mut md = String::from(
        "| server | queries/s (median) | avg latency µs | server CPU µs/query |\n|---|---:|---:|---:|\n",
    );
    for (name, v) in &results {
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {:.0} | {:.2} |",
            med(v, |r| r.0),
            med(v, |r| r.1 * 1e6),
            med(v, |r| r.2)
        );
    }
    for (t, p, what) in [
        ("trellis", "knot", "authoritative cluster names"),
        ("trellis-cached", "unbound-cached", "cached forwarded names"),
    ] {
        let (t, p) = (&results[t], &results[p]);
        let _ = writeln!(
            md,
            "\n{what}: trellis {:.2}× queries/s, {:.2}× CPU per query (lower is better).",
            med(t, |r| r.0) / med(p, |r| r.0),
            med(t, |r| r.2) / med(p, |r| r.2)
        );
    }
    let _ = writeln!(
        md,
        "\n{rounds} interleaved rounds of `taskset -c 1 dnsperf -s 127.0.0.1 -p PORT -d queries.txt -c 10 -T 1 -l {secs} -q 100`; servers on CPU 0."
    );
    std::fs::write(dir.join("dns.md"), &md)?;
    println!("\n{md}\n(written to {})", dir.join("dns.md").display());
    Ok(())
}
