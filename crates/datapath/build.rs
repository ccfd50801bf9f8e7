//! Compiles the eBPF programs in `bpf/` with clang for `-target bpf`.
//!
//! clang is found as `$TRELLIS_CLANG`, else `clang-19`, else `clang`. Without it the build stops
//! with the command that installs it (`cargo xtask test` and `cargo xtask demo` install it).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=TRELLIS_CLANG");
    let candidates: Vec<String> = std::env::var("TRELLIS_CLANG")
        .into_iter()
        .chain(["clang-19".to_string(), "clang".to_string()])
        .collect();
    let clang = candidates
        .iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| {
            panic!(
                "no clang found (tried {candidates:?}); the eBPF programs need it: \
                 apt-get install -y clang-19 libbpf-dev"
            )
        });
    let arch_include = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    // One program file today; more (policy, flows) join this list.
    const PROGRAMS: &[&str] = &["lb"];
    for prog in PROGRAMS {
        let src = format!("bpf/{prog}.c");
        let obj = out.join(format!("{prog}.o"));
        let output = Command::new(clang)
            .args([
                "-O2",
                "-g",
                "-Wall",
                "-Werror",
                "-target",
                "bpf",
                "-I",
                &arch_include,
            ])
            .args(["-c", &src, "-o"])
            .arg(&obj)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {clang}: {e}"));
        if !output.status.success() {
            panic!(
                "{clang} failed on {src}:\n{}\n(headers come from libbpf-dev and linux-libc-dev: \
                 apt-get install -y libbpf-dev)",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
