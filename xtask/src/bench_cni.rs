//! `cargo xtask bench cni`: what a pod's ADD (and DEL) costs with Multus attachments.
//!
//! In a node namespace this task creates (an uplink, and `eth2`/`eth3` veths standing in for
//! the No-Internet and IoT VLAN parents), the release `trellis-cni` runs ADD then DEL for one
//! pod namespace, `ITERATIONS` times per variant, interleaved:
//!
//! - `primary`: the cluster network alone;
//! - `primary+iot`: with the corpus IoT attachment (macvlan, static, sbr);
//! - `primary+iot+not`: with the IoT and No-Internet attachments;
//! - `plugins-direct`: the IoT attachment's plugins run one after the other by this task with
//!   `prevResult` chained, as a runtime runs a conflist: the cost of the plugins themselves,
//!   the floor any meta-plugin (Multus or trellis) adds its own work to.
//!
//! Every call is a process started through `nsenter` into the node, as a runtime starts
//! plugins. Reports medians and p90 in ms and each attachment's added ADD time against the
//! plugins' own; writes `target/bench/cni.md`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench_gateway::median;

const NODE_NS: &str = "trellis-bench-cni-node";
const POD_NS: &str = "trellis-bench-cni-pod";
const VARIANTS: [&str; 4] = [
    "primary",
    "primary+iot",
    "primary+iot+not",
    "plugins-direct",
];

/// Removes the bench's namespaces when dropped (also when the task fails).
struct Namespaces;

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [POD_NS, NODE_NS] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(ns: &str, args: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .status()
        .context("ip")?;
    if !status.success() {
        bail!("ip -n {ns} {} failed", args.join(" "));
    }
    Ok(())
}

fn corpus_nad(root: &Path, file: &str) -> Result<Value> {
    let path = root
        .join("testdata/home-ops/kubernetes/apps/network/multus/config")
        .join(file);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let block: String = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("config: |-"))
        .skip(1)
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    serde_json::from_str(&block).with_context(|| format!("{}: spec.config", path.display()))
}

/// Runs `plugin` in the node namespace; (ms, stdout JSON).
fn call(
    plugin: &Path,
    command: &str,
    cid: &str,
    ifname: &str,
    conf: &Value,
) -> Result<(f64, Value)> {
    let started = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{NODE_NS}"))
        .arg(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", format!("/var/run/netns/{POD_NS}"))
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{} {command}: {}{}",
            plugin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout)?
    };
    Ok((ms, v))
}

/// One ADD and DEL of `variant`; (ADD ms, DEL ms).
fn once(
    variant: &str,
    i: usize,
    trellis: &Path,
    base: &Value,
    iot: &Value,
    not: &Value,
) -> Result<(f64, f64)> {
    let cid = format!("bench-{variant}-{i}").replace('+', "-");
    if variant == "plugins-direct" {
        // The conflist by hand: each plugin with the list's name and version, chained.
        let plugins = iot["plugins"].as_array().context("iot plugins")?;
        let mut add = 0.0;
        let mut prev = Value::Null;
        let mut confs = Vec::new();
        for p in plugins {
            let mut c = p.clone();
            c["name"] = iot["name"].clone();
            c["cniVersion"] = iot["cniVersion"].clone();
            if !prev.is_null() {
                c["prevResult"] = prev.clone();
            }
            let ty = c["type"].as_str().context("type")?.to_string();
            let (ms, out) = call(
                &Path::new("/usr/lib/cni").join(&ty),
                "ADD",
                &cid,
                "net1",
                &c,
            )?;
            add += ms;
            prev = out;
            confs.push((ty, c));
        }
        let mut del = 0.0;
        for (ty, mut c) in confs.into_iter().rev() {
            c["prevResult"] = prev.clone();
            del += call(
                &Path::new("/usr/lib/cni").join(&ty),
                "DEL",
                &cid,
                "net1",
                &c,
            )?
            .0;
        }
        return Ok((add, del));
    }
    let mut conf = base.clone();
    let mut networks = Vec::new();
    if variant.contains("iot") {
        networks.push(json!({"name": "network/multus-iot", "interface": "net1", "config": iot}));
    }
    if variant.contains("not") {
        networks.push(json!({"name": "network/multus-not", "interface": "net2", "config": not}));
    }
    conf["networks"] = json!(networks);
    let (add, _) = call(trellis, "ADD", &cid, "eth0", &conf)?;
    let (del, _) = call(trellis, "DEL", &cid, "eth0", &conf)?;
    Ok((add, del))
}

pub fn run(root: &Path, iterations: usize) -> Result<()> {
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        bail!("the cni benchmark creates network namespaces: run it as root");
    }
    crate::ensure_packages(&[("/usr/lib/cni/macvlan", "containernetworking-plugins")])?;
    crate::run("cargo", &["build", "--release", "--package", "cni"])?;
    let trellis = root.join("target/release/trellis-cni");
    let iot = corpus_nad(root, "net-attach-iot.yaml")?;
    let not = corpus_nad(root, "net-attach-not.yaml")?;
    let state = root.join("target/bench/cni-state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let base = json!({
        "cniVersion": "1.0.0",
        "name": "trellis",
        "type": "trellis-cni",
        "podCIDR": "10.69.1.0/24",
        "stateDir": state,
    });

    let _guard = Namespaces;
    for ns in [POD_NS, NODE_NS] {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
        crate::run("ip", &["netns", "add", ns])?;
    }
    ip(
        NODE_NS,
        &["link", "add", "up0", "type", "veth", "peer", "name", "up1"],
    )?;
    ip(NODE_NS, &["address", "add", "10.69.1.1/32", "dev", "up0"])?;
    ip(NODE_NS, &["link", "set", "up0", "up"])?;
    ip(NODE_NS, &["link", "set", "up1", "up"])?;
    ip(NODE_NS, &["route", "add", "default", "dev", "up0"])?;
    for (parent, peer) in [("eth2", "lan2"), ("eth3", "lan3")] {
        ip(
            NODE_NS,
            &["link", "add", parent, "type", "veth", "peer", "name", peer],
        )?;
        ip(NODE_NS, &["link", "set", parent, "up"])?;
        ip(NODE_NS, &["link", "set", peer, "up"])?;
    }

    let mut add: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut del: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    // One warm-up of each (page cache, first netlink sockets), not counted.
    for v in VARIANTS {
        once(v, usize::MAX, &trellis, &base, &iot, &not)?;
    }
    for i in 0..iterations {
        for (k, v) in VARIANTS.iter().enumerate() {
            let (a, d) = once(v, i, &trellis, &base, &iot, &not)?;
            add[k].push(a);
            del[k].push(d);
        }
        if (i + 1) % 10 == 0 {
            eprintln!("    {}/{iterations} rounds", i + 1);
        }
    }

    let p90 = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[(s.len() * 9 / 10).min(s.len() - 1)]
    };
    let med: Vec<f64> = add.iter().map(|v| median(v.clone())).collect();
    let mut md = format!(
        "# CNI ADD/DEL with Multus attachments\n\n{iterations} ADD+DEL per variant, interleaved; \
         release trellis-cni and Debian's reference plugins, each call a process started with \
         nsenter into the node namespace.\n\n\
         | variant | ADD median ms | ADD p90 ms | DEL median ms | DEL p90 ms |\n\
         |---|---:|---:|---:|---:|\n"
    );
    for (k, v) in VARIANTS.iter().enumerate() {
        md.push_str(&format!(
            "| {v} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            med[k],
            p90(&add[k]),
            median(del[k].clone()),
            p90(&del[k])
        ));
    }
    let one = med[1] - med[0];
    let two = med[2] - med[0];
    md.push_str(&format!(
        "\nThe IoT attachment adds {one:.1} ms to ADD; its plugins alone take {:.1} ms \
         (trellis's own share {:.1} ms). Two attachments add {two:.1} ms.\n",
        med[3],
        one - med[3],
    ));
    print!("{md}");
    let out: PathBuf = root.join("target/bench/cni.md");
    std::fs::write(&out, &md)?;
    eprintln!("(written to {})", out.display());
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}
