//! The Rust mirrors in `abi.rs` have exactly the sizes of the C structs, as the compiled
//! object's BTF records them (so a field added on one side only fails here, not in the kernel).

use std::collections::BTreeMap;

/// Struct name -> size, from a raw `.BTF` section (header, type section, string section).
fn btf_struct_sizes(btf: &[u8]) -> BTreeMap<String, usize> {
    let u32_at = |off: usize| u32::from_le_bytes(btf[off..off + 4].try_into().expect("4 bytes"));
    assert_eq!(u16::from_le_bytes([btf[0], btf[1]]), 0xeb9f, "BTF magic");
    let hdr_len = u32_at(4) as usize;
    let (type_off, type_len) = (u32_at(8) as usize, u32_at(12) as usize);
    let str_off = u32_at(16) as usize;
    let types = hdr_len + type_off;
    let strings = hdr_len + str_off;
    let name = |off: u32| -> String {
        let start = strings + off as usize;
        let end = btf[start..].iter().position(|&b| b == 0).expect("NUL") + start;
        String::from_utf8_lossy(&btf[start..end]).into_owned()
    };
    let mut out = BTreeMap::new();
    let mut at = types;
    while at < types + type_len {
        let (name_off, info, size) = (u32_at(at), u32_at(at + 4), u32_at(at + 8));
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        at += 12;
        at += match kind {
            1 => 4,             // INT
            3 => 12,            // ARRAY
            4 | 5 => 12 * vlen, // STRUCT, UNION
            6 => 8 * vlen,      // ENUM
            13 => 8 * vlen,     // FUNC_PROTO
            14 => 4,            // VAR
            15 => 12 * vlen,    // DATASEC
            17 => 4,            // DECL_TAG
            19 => 12 * vlen,    // ENUM64
            _ => 0,             // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
        };
        if kind == 4 {
            out.insert(name(name_off), size as usize);
        }
    }
    out
}

#[test]
fn abi_mirrors_match_the_btf_of_the_compiled_object() {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(datapath::LB_OBJECT).expect("an ELF object");
    let btf = file
        .section_by_name(".BTF")
        .expect(".BTF section")
        .data()
        .expect("BTF data");
    let sizes = btf_struct_sizes(btf);
    for (name, size) in datapath::abi::STRUCT_SIZES {
        assert_eq!(
            sizes.get(name),
            Some(&size),
            "struct {name}: BTF says {:?}",
            sizes.get(name)
        );
    }
}

#[test]
fn the_object_holds_the_four_programs() {
    use object::{Object as _, ObjectSymbol as _};
    let file = object::File::parse(datapath::LB_OBJECT).expect("an ELF object");
    let names: Vec<String> = file
        .symbols()
        .filter_map(|s| s.name().ok().map(str::to_string))
        .collect();
    for p in ["from_pod", "to_pod", "from_netdev", "to_netdev"] {
        assert!(names.iter().any(|n| n == p), "{p} missing: {names:?}");
    }
}

/// The committed object (what a build without clang uses) was made from the sources as they
/// are, and is byte for byte what this build's clang makes of them when it is the clang that
/// made it (the build is reproducible).
#[test]
fn the_prebuilt_object_is_the_build_of_the_sources() {
    let pre = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf/prebuilt");
    let record = std::fs::read_to_string(pre.join("lb.o.source")).expect("lb.o.source");
    let mut lines = record.lines();
    let (hash, clang) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    );
    assert_eq!(
        hash,
        datapath::LB_SOURCE_HASH,
        "bpf/ changed since bpf/prebuilt/lb.o was made: run `cargo xtask ebpf` and commit it"
    );
    let committed = std::fs::read(pre.join("lb.o")).expect("lb.o");
    match datapath::LB_ORIGIN {
        "prebuilt" => assert_eq!(datapath::LB_OBJECT, committed.as_slice()),
        "clang" if datapath::LB_CLANG == clang => assert!(
            datapath::LB_OBJECT == committed.as_slice(),
            "bpf/prebuilt/lb.o is not what {clang} makes of bpf/: run `cargo xtask ebpf`"
        ),
        // Another clang makes other bytes; the hash above still ties the object to bpf/.
        "clang" => eprintln!(
            "built by {:?}, the prebuilt object by {clang:?}: bytes not compared",
            datapath::LB_CLANG
        ),
        other => panic!("unknown origin {other}"),
    }
}

/// Removes a test's pin directory on drop, also when the test fails.
struct Pins(std::path::PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = datapath::unpin(&self.0);
    }
}

#[test]
fn the_verifier_accepts_the_programs_and_maps_survive_a_reload() {
    assert!(
        nix_is_root(),
        "loading eBPF programs needs root: run the tests as root"
    );
    let pins = Pins(datapath::pin_dir(&format!("test-{}", std::process::id())));
    datapath::load(&pins.0).expect("programs load (verifier log above on failure)");
    let mut maps = datapath::Maps::open(&pins.0).expect("maps open");
    let mut want = datapath::Desired::default();
    let key = datapath::Lb4Key {
        addr: "10.96.0.10".parse().expect("ip"),
        port: 53,
        proto: 17,
        slot: 0,
    };
    want.backends.insert(
        1,
        datapath::Lb4Backend {
            addr: "10.69.1.5".parse().expect("ip"),
            port: 53,
            proto: 17,
            flags: 0,
            node_ip: "10.10.30.11".parse().expect("ip"),
        },
    );
    want.services.insert(
        key,
        datapath::Lb4Service {
            id: 1,
            count: 1,
            flags: 0,
            affinity_timeout_s: 0,
        },
    );
    want.services.insert(
        datapath::Lb4Key { slot: 1, ..key },
        datapath::Lb4Service {
            id: 1,
            count: 0,
            flags: 0,
            affinity_timeout_s: 0,
        },
    );
    let first = maps.sync(&want).expect("sync");
    assert_eq!(first.written, 3);
    assert_eq!(
        maps.sync(&want).expect("sync").written,
        0,
        "an equal sync writes nothing"
    );
    // A second load (an agent restart) keeps the pinned maps and their contents.
    datapath::load(&pins.0).expect("reload");
    let maps = datapath::Maps::open(&pins.0).expect("maps reopen");
    assert_eq!(maps.services().expect("services").len(), 2);
    let mut empty = datapath::Maps::open(&pins.0).expect("maps");
    let gone = empty
        .sync(&datapath::Desired::default())
        .expect("sync to empty");
    assert_eq!(gone.removed, 3);
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
