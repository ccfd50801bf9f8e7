//! Shipping trellis:
//!
//! - `cargo xtask dist [PROFILE]`: the Debian package (`target/deb/trellis_VERSION_ARCH.deb`)
//!   from the `dist` profile (release, stripped) or another one; built with dpkg-deb, no
//!   helper crate.
//! - `cargo xtask ebpf`: refreshes the committed eBPF object (`crates/datapath/bpf/prebuilt/`)
//!   that builds without clang use.
//! - The package's install test (a step of `cargo xtask test`): the .deb installed with dpkg
//!   into a fresh mount, network and PID namespace (overlays over `/usr`, `/etc` and `/var`, so
//!   the host is untouched and everything goes when the namespace ends), `trellis.service`'s
//!   command line started as the unit starts it, and the packaged example checked to serve.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::proc::Bg;
use crate::run;

/// The package's name, and where its files go.
const PACKAGE: &str = "trellis";
const UNITS: &[&str] = &["trellis.service", "trellis-agent.service"];
const EXAMPLE_DIR: &str = "usr/share/trellis/examples/home-lab";
const DOC_FILES: &[(&str, &str)] = &[
    ("README.md", "README.md"),
    ("docs/up.md", "up.md"),
    ("docs/security.md", "security.md"),
    ("docs/observe.md", "observe.md"),
];

/// The config the package installs (a conffile: an edited one survives upgrades).
const DEFAULT_CONFIG: &str = "\
# trellis up's config. Every key and its default: /usr/share/doc/trellis/up.md, or
# `trellis up --print-config`. After editing: systemctl reload trellis (or restart, for the
# keys /status lists under restartNeeded).
#
# The manifests to serve: Gateway API, Envoy Gateway, Cilium and ExternalDNS objects as a
# cluster's Git repository holds them (kustomize and Flux semantics). An example:
# /usr/share/trellis/examples/home-lab.
manifests: [/etc/trellis/manifests]
";

const DEFAULT_AGENT_ENV: &str = "\
# Arguments of `trellis agent` (trellis-agent.service); `trellis agent --help` lists them.
TRELLIS_AGENT_ARGS=
";

const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
";

const PRERM: &str = "#!/bin/sh
set -e
if [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop trellis.service trellis-agent.service >/dev/null 2>&1 || true
fi
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ \"$1\" = purge ]; then
    rm -rf /var/lib/trellis /var/lib/private/trellis
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
";

/// Where cargo puts a profile's binaries.
fn profile_dir(root: &Path, profile: &str) -> PathBuf {
    root.join("target").join(match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        p => p,
    })
}

/// What a command printed, trimmed; fails with its stderr.
fn output(program: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    ensure!(
        out.status.success(),
        "`{} {}` failed: {}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(from, to).with_context(|| format!("copy {}", from.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &dest)?;
        } else {
            copy(&e.path(), &dest, 0o644)?;
        }
    }
    Ok(())
}

/// The size of every file under `dir`, in KiB (the control file's Installed-Size).
fn kib_under(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        total += if e.file_type()?.is_dir() {
            kib_under(&e.path())? * 1024
        } else {
            e.metadata()?.len()
        };
    }
    Ok(total.div_ceil(1024))
}

/// Builds the package from `profile`'s binaries; returns its path.
pub fn dist(root: &Path, profile: &str) -> Result<PathBuf> {
    run(
        "cargo",
        &[
            "build",
            "--profile",
            profile,
            "--package",
            "trellis",
            "--package",
            "cni",
            "--bins",
        ],
    )?;
    let bins = profile_dir(root, profile);
    let trellis = bins.join("trellis");
    // `trellis 0.1.0 (c3dc3db80c9c, built 2026-12-06)`
    let version_line = output(&trellis, &["--version"])?;
    let (version, commit) = match version_line.split_whitespace().collect::<Vec<_>>()[..] {
        [_, v, c, ..] => (
            v.to_string(),
            c.trim_start_matches('(').trim_end_matches(','),
        ),
        _ => bail!("unexpected `trellis --version`: {version_line}"),
    };
    let deb_version = if commit == "unknown" {
        version.clone()
    } else {
        format!("{version}+g{commit}")
    };
    let arch = output(Path::new("dpkg"), &["--print-architecture"])?;
    let stage = root
        .join("target/deb")
        .join(format!("{PACKAGE}_{deb_version}_{arch}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    eprintln!("==> staging {}", stage.display());

    // The binaries. A profile that keeps debug info (dev) is stripped here.
    let stripped = profile != "dist";
    for (bin, dest) in [
        ("trellis", "usr/bin/trellis"),
        ("trellis-cni", "usr/lib/cni/trellis-cni"),
    ] {
        let to = stage.join(dest);
        copy(&bins.join(bin), &to, 0o755)?;
        if stripped {
            run(
                "strip",
                &["--strip-debug", to.to_str().context("utf-8 path")?],
            )?;
        }
    }
    for unit in UNITS {
        let text = std::fs::read_to_string(root.join("dist").join(unit))?;
        write(&stage.join("lib/systemd/system").join(unit), &text, 0o644)?;
    }
    write(
        &stage.join("etc/trellis/trellis.yaml"),
        DEFAULT_CONFIG,
        0o644,
    )?;
    std::fs::create_dir_all(stage.join("etc/trellis/manifests"))?;
    write(
        &stage.join("etc/default/trellis-agent"),
        DEFAULT_AGENT_ENV,
        0o644,
    )?;
    copy_tree(&root.join("examples/home-lab"), &stage.join(EXAMPLE_DIR))?;
    for (shell, dest) in [
        ("bash", "usr/share/bash-completion/completions/trellis"),
        ("zsh", "usr/share/zsh/vendor-completions/_trellis"),
        ("fish", "usr/share/fish/vendor_completions.d/trellis.fish"),
    ] {
        write(
            &stage.join(dest),
            &output(&trellis, &["completions", shell])?,
            0o644,
        )?;
    }
    let man = stage.join("usr/share/man/man1/trellis.1");
    write(&man, &output(&trellis, &["man"])?, 0o644)?;
    run("gzip", &["-9n", man.to_str().context("utf-8 path")?])?;
    let doc = stage.join("usr/share/doc/trellis");
    for (from, to) in DOC_FILES {
        copy(&root.join(from), &doc.join(to), 0o644)?;
    }
    write(
        &doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: trellis\n\nFiles: *\nCopyright: the trellis developers\nLicense: Apache-2.0\n \
         On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n",
        0o644,
    )?;

    let installed_kib = kib_under(&stage)?;
    let control = stage.join("DEBIAN");
    write(
        &control.join("control"),
        &format!(
            "Package: {PACKAGE}\nVersion: {deb_version}\nArchitecture: {arch}\n\
             Maintainer: trellis developers <trellis@localhost>\nInstalled-Size: {installed_kib}\n\
             Depends: libc6 (>= 2.34), libgcc-s1\n\
             Recommends: containernetworking-plugins, iproute2\n\
             Section: net\nPriority: optional\n\
             Description: the network stack of a small cluster in one program\n \
             Gateway API ingress (Envoy Gateway's policies), cluster DNS with split-horizon\n \
             views, DNS record sync, flows with Hubble's API, and an eBPF node datapath\n \
             (Services, LoadBalancer addresses, network policy), read from the same\n \
             manifests a Kubernetes cluster would hold.\n"
        ),
        0o644,
    )?;
    write(
        &control.join("conffiles"),
        "/etc/trellis/trellis.yaml\n/etc/default/trellis-agent\n",
        0o644,
    )?;
    write(&control.join("postinst"), POSTINST, 0o755)?;
    write(&control.join("prerm"), PRERM, 0o755)?;
    write(&control.join("postrm"), POSTRM, 0o755)?;

    let deb = root
        .join("target/deb")
        .join(format!("{PACKAGE}_{deb_version}_{arch}.deb"));
    // xz for the package users get; fast gzip for the test's (a debug build).
    let compression = if profile == "dist" { "-Zxz" } else { "-Zgzip" };
    run(
        "dpkg-deb",
        &[
            "--root-owner-group",
            compression,
            "--build",
            stage.to_str().context("utf-8 path")?,
            deb.to_str().context("utf-8 path")?,
        ],
    )?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let installed_bin = size(&stage.join("usr/bin/trellis"));
    std::fs::remove_dir_all(&stage)?;
    eprintln!(
        "==> {}: {:.1} MB (trellis {:.1} MB installed{})",
        deb.display(),
        size(&deb) as f64 / 1e6,
        installed_bin as f64 / 1e6,
        match size(&root.join("target/release/trellis")) {
            0 => String::new(),
            r => format!(
                "; the release build with debug info: {:.1} MB",
                r as f64 / 1e6
            ),
        }
    );
    Ok(deb)
}

/// `cargo xtask ebpf`: compiles the eBPF programs with clang (a build of the datapath crate
/// with `TRELLIS_EBPF=clang`) and commits the object and its source record into
/// `crates/datapath/bpf/prebuilt/`.
pub fn ebpf(root: &Path) -> Result<()> {
    let out = Command::new("cargo")
        .args([
            "build",
            "--package",
            "datapath",
            "--message-format=json-render-diagnostics",
        ])
        .env("TRELLIS_EBPF", "clang")
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    ensure!(out.status.success(), "building the datapath crate failed");
    let script = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|m| {
            m["reason"] == "build-script-executed"
                && m["package_id"]
                    .as_str()
                    .is_some_and(|id| id.contains("datapath"))
        })
        .context("cargo did not report the datapath build script")?;
    let env = |key: &str| {
        script["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|kv| kv[0] == key)
            .and_then(|kv| kv[1].as_str())
            .map(str::to_string)
            .with_context(|| format!("the build script did not export {key}"))
    };
    ensure!(
        env("TRELLIS_BPF_ORIGIN")? == "clang",
        "the object was not compiled"
    );
    let out_dir = PathBuf::from(script["out_dir"].as_str().context("out_dir")?);
    let pre = root.join("crates/datapath/bpf/prebuilt");
    std::fs::create_dir_all(&pre)?;
    for prog in ["lb", "vlan"] {
        copy(
            &out_dir.join(format!("{prog}.o")),
            &pre.join(format!("{prog}.o")),
            0o644,
        )?;
        write(
            &pre.join(format!("{prog}.o.source")),
            &format!(
                "{}\n{}\n",
                env("TRELLIS_BPF_SOURCE_HASH")?,
                env("TRELLIS_BPF_CLANG")?
            ),
            0o644,
        )?;
    }
    eprintln!("==> {} refreshed; commit it", pre.display());
    Ok(())
}

/// Runs the install test in a namespace of its own: everything it creates (mounts, addresses,
/// processes) ends with the namespace.
pub fn install_test(deb: &Path) -> Result<()> {
    let me = std::env::current_exe()?;
    eprintln!("==> install test: {} in a fresh namespace", deb.display());
    let status = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
            "--propagation",
            "private",
            "--",
        ])
        .arg(me)
        .arg("install-test-inner")
        .arg(deb)
        .status()
        .context("cannot run unshare")?;
    ensure!(
        status.success(),
        "the package install test failed ({status})"
    );
    Ok(())
}

/// The overlays: what dpkg writes lands in a tmpfs of this namespace.
fn overlay_system() -> Result<()> {
    let scratch = "/run";
    run("mount", &["-t", "tmpfs", "trellis-install-test", scratch])?;
    for dir in ["usr", "etc", "var", "lib", "opt"] {
        let top = Path::new("/").join(dir);
        // With merged /usr, /lib is a link into /usr (and goes with it).
        if top.is_symlink() || !top.is_dir() {
            continue;
        }
        let (up, work) = (
            format!("{scratch}/{dir}.up"),
            format!("{scratch}/{dir}.work"),
        );
        std::fs::create_dir_all(&up)?;
        std::fs::create_dir_all(&work)?;
        run(
            "mount",
            &[
                "-t",
                "overlay",
                "overlay",
                "-o",
                &format!("lowerdir=/{dir},upperdir={up},workdir={work}"),
                &format!("/{dir}"),
            ],
        )?;
    }
    Ok(())
}

/// One unit key's values (`ExecStart=`, `Environment=`...), in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .collect()
}

/// A process's stderr, a line at a time, read by a thread.
fn stderr_lines(child: &mut std::process::Child) -> Receiver<String> {
    let err = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (at most `secs`) for a line containing `needle`; returns it.
fn until(rx: &Receiver<String>, needle: &str, secs: u64, seen: &mut Vec<String>) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(needle) {
                    return Ok(line);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                bail!("no {needle:?} within {secs} s:\n{}", seen.join("\n"))
            }
            Err(RecvTimeoutError::Disconnected) => {
                bail!("the process ended before {needle:?}:\n{}", seen.join("\n"))
            }
        }
    }
}

/// curl's status line and headers (`-D -`), lowercased.
fn curl(args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "5", "-D", "-", "-o", "/dev/null"])
        .args(args)
        .output()
        .context("curl")?;
    ensure!(
        out.status.success(),
        "curl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_ascii_lowercase())
}

/// The uid systemd's DynamicUser would pick from its range (61184-65519).
const DYNAMIC_UID: &str = "61873";

/// Inside the namespace: install, check the files, run the unit's command line, serve the
/// example, reload, stop, remove and purge.
pub fn install_test_inner(deb: &Path) -> Result<()> {
    overlay_system()?;
    let deb = deb.to_str().context("utf-8 path")?;
    run("dpkg", &["-i", deb])?;
    let listed = output(Path::new("dpkg"), &["-L", PACKAGE])?;
    for f in [
        "/usr/bin/trellis",
        "/usr/lib/cni/trellis-cni",
        "/lib/systemd/system/trellis.service",
        "/etc/trellis/trellis.yaml",
        "/usr/share/man/man1/trellis.1.gz",
        "/usr/share/bash-completion/completions/trellis",
    ] {
        ensure!(listed.lines().any(|l| l == f), "{f} not in the package");
    }
    let version = output(Path::new("/usr/bin/trellis"), &["--version"])?;
    eprintln!("installed: {version}");
    // The completion script loads in bash and completes subcommands.
    let completes = output(
        Path::new("bash"),
        &[
            "-c",
            "source /usr/share/bash-completion/completions/trellis && \
             COMP_WORDS=(trellis u) COMP_CWORD=1 && _trellis trellis u trellis && \
             echo \"${COMPREPLY[@]}\"",
        ],
    )?;
    ensure!(
        completes.split_whitespace().any(|w| w == "up"),
        "bash completion of `trellis u`: {completes:?}"
    );
    run("gzip", &["-t", "/usr/share/man/man1/trellis.1.gz"])?;
    run(
        "systemd-analyze",
        &[
            "verify",
            "/lib/systemd/system/trellis.service",
            "/lib/systemd/system/trellis-agent.service",
        ],
    )?;

    // The network: loopback, and the example Gateways' LoadBalancer addresses on it.
    run("ip", &["link", "set", "lo", "up"])?;
    for a in ["10.10.30.25/32", "10.10.30.26/32"] {
        run("ip", &["addr", "add", a, "dev", "lo"])?;
    }
    // The example's backend: an echo server, named by an EndpointSlice beside the example.
    let mut seen = Vec::new();
    let mut echo = Command::new("/usr/bin/trellis")
        .args([
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "echo",
            "--namespace",
            "apps",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .context("trellis echo")?;
    let echo_lines = stderr_lines(&mut echo);
    let _echo = Bg(echo);
    let line = until(&echo_lines, "echo apps/echo on", 20, &mut seen)?;
    let port = line
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    write(
        Path::new("/etc/trellis/manifests/echo-endpoints.yaml"),
        &format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: echo-local, namespace: apps, labels: {{kubernetes.io/service-name: echo}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
        ),
        0o644,
    )?;
    // The operator's edit of the installed config: the example beside their own manifests,
    // DNS on port 53.
    let config = std::fs::read_to_string("/etc/trellis/trellis.yaml")?;
    ensure!(
        config.contains("manifests: [/etc/trellis/manifests]"),
        "{config}"
    );
    write(
        Path::new("/etc/trellis/trellis.yaml"),
        &format!(
            "manifests: [/{EXAMPLE_DIR}, /etc/trellis/manifests]\nvars: /{EXAMPLE_DIR}/vars.yaml\n\
             dns: {{listen: '127.0.0.1:53'}}\n"
        ),
        0o644,
    )?;

    // The unit's command line, started as systemd starts it: its environment, a dynamic
    // user, only the capabilities it grants, no new privileges, its state directory.
    let unit = std::fs::read_to_string("/lib/systemd/system/trellis.service")?;
    let exec = unit_values(&unit, "ExecStart");
    ensure!(exec.len() == 1, "one ExecStart expected: {exec:?}");
    ensure!(unit_values(&unit, "DynamicUser") == ["yes"], "DynamicUser");
    let caps: Vec<String> = unit_values(&unit, "AmbientCapabilities")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    ensure!(!caps.is_empty(), "AmbientCapabilities");
    for dir in unit_values(&unit, "StateDirectory") {
        let private = Path::new("/var/lib/private").join(dir);
        std::fs::create_dir_all(&private)?;
        run(
            "chown",
            &[
                &format!("{DYNAMIC_UID}:{DYNAMIC_UID}"),
                private.to_str().unwrap_or_default(),
            ],
        )?;
        std::os::unix::fs::symlink(&private, Path::new("/var/lib").join(dir))?;
    }
    let caps = caps.join(",");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={DYNAMIC_UID}"),
        &format!("--regid={DYNAMIC_UID}"),
        "--clear-groups",
        &format!("--inh-caps=-all,{caps}"),
        &format!("--ambient-caps=-all,{caps}"),
        &format!("--bounding-set=-all,{caps}"),
        "--no-new-privs",
        "--",
    ])
    .args(exec[0].split_whitespace())
    .env_clear()
    .env("PATH", "/usr/bin:/bin")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for kv in unit_values(&unit, "Environment") {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut up = cmd.spawn().context("setpriv")?;
    let lines = stderr_lines(&mut up);
    let mut up = Bg(up);
    until(&lines, "ready: 2 gateways, dns on", 60, &mut seen)?;

    // The example serves: both gateways on their own addresses and ports, DNS on 53.
    let h = curl(&[
        "--resolve",
        "echo.home.example:443:10.10.30.25",
        "https://echo.home.example/hello",
    ])?;
    ensure!(h.starts_with("http/2 200"), "internal gateway: {h}");
    let h = curl(&[
        "--resolve",
        "echo-ext.home.example:443:10.10.30.26",
        "https://echo-ext.home.example/",
    ])?;
    ensure!(h.starts_with("http/2 200"), "external gateway: {h}");
    let a = output(
        Path::new("dig"),
        &[
            "@127.0.0.1",
            "+short",
            "+time=2",
            "+tries=1",
            "echo.home.example",
            "A",
        ],
    )?;
    ensure!(a == "10.10.30.25", "dig echo.home.example: {a:?}");
    let h = curl(&["http://127.0.0.1:9901/ready"])?;
    ensure!(h.starts_with("http/1.1 200"), "/ready: {h}");

    // ExecReload, then the stop systemd sends.
    let pid = up.0.id().to_string();
    for reload in unit_values(&unit, "ExecReload") {
        let line = reload.replace("$MAINPID", &pid);
        let words: Vec<&str> = line.split_whitespace().collect();
        run(words[0], &words[1..])?;
    }
    until(&lines, "config: reloaded", 20, &mut seen)?;
    ensure!(
        unit_values(&unit, "KillSignal") == ["SIGTERM"],
        "KillSignal"
    );
    run("kill", &["-TERM", &pid])?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = up.0.try_wait()? {
            break s;
        }
        ensure!(Instant::now() < deadline, "trellis up did not stop in 90 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(status.success(), "trellis up exited with {status}");

    // Remove keeps the edited config; purge takes it and the state.
    run("dpkg", &["-r", PACKAGE])?;
    ensure!(
        !Path::new("/usr/bin/trellis").exists(),
        "binary left after remove"
    );
    ensure!(
        Path::new("/etc/trellis/trellis.yaml").exists(),
        "conffile lost at remove"
    );
    run("dpkg", &["-P", PACKAGE])?;
    ensure!(
        !Path::new("/etc/trellis/trellis.yaml").exists(),
        "conffile left after purge"
    );
    ensure!(
        !Path::new("/var/lib/private/trellis").exists(),
        "state left after purge"
    );
    eprintln!("==> install test passed");
    Ok(())
}
