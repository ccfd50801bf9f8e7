//! Builds the eBPF programs in `bpf/`, or takes them prebuilt from `bpf/prebuilt/`.
//!
//! - With clang (`$TRELLIS_CLANG`, else `clang-19`, else `clang`) and libbpf's headers, the
//!   programs are compiled for `-target bpf`. The build is reproducible (the source directory
//!   is mapped to `.` in the debug info), so the same clang gives the same bytes on every
//!   machine; the datapath tests check that the committed object is exactly this build.
//! - Without them (`cargo install` on a machine with no clang), or with
//!   `TRELLIS_EBPF=prebuilt`, the committed object is used, provided the sources have not
//!   changed since it was made (`bpf/prebuilt/lb.o.source` holds their hash). A stale object
//!   stops the build with what to do.
//!
//! `TRELLIS_BPF_SOURCE_HASH` (the sources' hash), `TRELLIS_BPF_ORIGIN` (`clang` or
//! `prebuilt`) and `TRELLIS_BPF_CLANG` (the first line of `clang --version`, empty when
//! prebuilt) are exported to the crate. The prebuilt `lb.o.source` holds the hash on its
//! first line and the clang that built it on its second. `cargo xtask ebpf` refreshes the prebuilt object.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The program files: `lb` (services, policy, flows) and `vlan` (802.1Q trunks).
const PROGRAMS: &[&str] = &["lb", "vlan"];

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=TRELLIS_CLANG");
    println!("cargo:rerun-if-env-changed=TRELLIS_EBPF");
    let hash = source_hash(&dir.join("bpf"));
    println!("cargo:rustc-env=TRELLIS_BPF_SOURCE_HASH={hash}");
    let forced = std::env::var("TRELLIS_EBPF").ok();
    // The object's origin, and the clang that compiled it (none when prebuilt).
    let (origin, clang) = match forced.as_deref() {
        Some("prebuilt") => {
            prebuilt(&dir, &out, &hash, "TRELLIS_EBPF=prebuilt");
            ("prebuilt", String::new())
        }
        Some("clang") | None => match find_clang() {
            Some(clang) => match compile(&clang, &dir, &out) {
                Ok(()) => ("clang", clang_version(&clang)),
                Err(e) if forced.is_none() => {
                    println!("cargo:warning={e}; using the prebuilt eBPF object");
                    prebuilt(&dir, &out, &hash, &e);
                    ("prebuilt", String::new())
                }
                Err(e) => panic!("{e}"),
            },
            None if forced.is_none() => {
                prebuilt(&dir, &out, &hash, "no clang found");
                ("prebuilt", String::new())
            }
            None => panic!(
                "TRELLIS_EBPF=clang but no clang found: apt-get install -y clang-19 libbpf-dev"
            ),
        },
        Some(other) => panic!("TRELLIS_EBPF={other:?}: expected `clang` or `prebuilt`"),
    };
    println!("cargo:rustc-env=TRELLIS_BPF_ORIGIN={origin}");
    println!("cargo:rustc-env=TRELLIS_BPF_CLANG={clang}");
}

/// The first clang that runs.
fn find_clang() -> Option<String> {
    std::env::var("TRELLIS_CLANG")
        .into_iter()
        .chain(["clang-19".to_string(), "clang".to_string()])
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// The first line of `clang --version` (the prebuilt object's second line records it).
fn clang_version(clang: &str) -> String {
    Command::new(clang)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Compiles every program into `out`; the error says which and why.
fn compile(clang: &str, dir: &Path, out: &Path) -> Result<(), String> {
    let arch_include = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let prefix_map = format!("-fdebug-prefix-map={}=.", dir.display());
    for prog in PROGRAMS {
        let src = format!("bpf/{prog}.c");
        let output = Command::new(clang)
            .current_dir(dir)
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-I"])
            .arg(&arch_include)
            .arg(&prefix_map)
            .args(["-c", &src, "-o"])
            .arg(out.join(format!("{prog}.o")))
            .output()
            .map_err(|e| format!("cannot run {clang}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{clang} failed on {src}:\n{}\n(headers come from libbpf-dev and linux-libc-dev: \
                 apt-get install -y libbpf-dev)",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    Ok(())
}

/// Copies the committed objects into `out`, after checking that they were built from the
/// sources as they are now.
fn prebuilt(dir: &Path, out: &Path, hash: &str, why: &str) {
    let pre = dir.join("bpf/prebuilt");
    for prog in PROGRAMS {
        let recorded =
            std::fs::read_to_string(pre.join(format!("{prog}.o.source"))).unwrap_or_default();
        let recorded = recorded.lines().next().unwrap_or_default();
        if recorded.trim() != hash {
            panic!(
                "{why}, and the prebuilt eBPF object bpf/prebuilt/{prog}.o was built from other \
                 sources (hash {:?}, the sources now {hash}): install clang \
                 (apt-get install -y clang-19 libbpf-dev), or refresh the object with \
                 `cargo xtask ebpf` on a machine that has it",
                recorded.trim()
            );
        }
        std::fs::copy(pre.join(format!("{prog}.o")), out.join(format!("{prog}.o")))
            .unwrap_or_else(|e| panic!("cannot copy bpf/prebuilt/{prog}.o: {e}"));
    }
}

/// FNV-1a (64 bits) over the name and bytes of every file directly in `bpf/` (not
/// `prebuilt/`), in name order: it tells a stale object from a current one; it is not a
/// signature (the object's bytes are checked against a rebuild in the tests).
fn source_hash(bpf: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(bpf)
        .expect("bpf/ is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        let name = f
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(&f).expect("a source file is readable");
        for b in name.bytes().chain([0]).chain(bytes).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("fnv1a64:{h:016x}")
}
