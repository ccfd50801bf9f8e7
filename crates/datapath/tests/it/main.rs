//! The Rust mirrors in `abi.rs` have exactly the sizes of the C structs, as the compiled
//! object's BTF records them (so a field added on one side only fails here, not in the kernel).

use std::collections::BTreeMap;

mod capture;

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
fn the_prebuilt_objects_are_the_build_of_the_sources() {
    let pre = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf/prebuilt");
    for (name, built) in [("lb", datapath::LB_OBJECT), ("vlan", datapath::VLAN_OBJECT)] {
        let record = std::fs::read_to_string(pre.join(format!("{name}.o.source")))
            .expect("the object's .source record");
        let mut lines = record.lines();
        let (hash, clang) = (
            lines.next().unwrap_or_default(),
            lines.next().unwrap_or_default(),
        );
        assert_eq!(
            hash,
            datapath::LB_SOURCE_HASH,
            "bpf/ changed since bpf/prebuilt/{name}.o was made: run `cargo xtask ebpf` and commit it"
        );
        let committed = std::fs::read(pre.join(format!("{name}.o"))).expect("the object");
        match datapath::LB_ORIGIN {
            "prebuilt" => assert_eq!(built, committed.as_slice()),
            "clang" if datapath::LB_CLANG == clang => assert!(
                built == committed.as_slice(),
                "bpf/prebuilt/{name}.o is not what {clang} makes of bpf/: run `cargo xtask ebpf`"
            ),
            // Another clang makes other bytes; the hash above still ties the object to bpf/.
            "clang" => eprintln!(
                "built by {:?}, the prebuilt object by {clang:?}: bytes not compared",
                datapath::LB_CLANG
            ),
            other => panic!("unknown origin {other}"),
        }
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

/// Network namespaces of one test, removed on drop (their links go with them).
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(names: &[&str]) -> Namespaces {
        let id = std::process::id() % 100_000;
        let all: Vec<String> = names.iter().map(|n| format!("tv{id}{n}")).collect();
        let me = Namespaces(all);
        for n in &me.0 {
            ip(&["netns", "add", n]);
        }
        me
    }

    fn name(&self, short: &str) -> &str {
        self.0
            .iter()
            .find(|n| n.ends_with(short))
            .expect("a namespace of this test")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", n])
                .status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` in the network namespace `ns` (on a thread of its own: setns moves one thread).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("the netns");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("the netns thread")
    })
}

/// Two echoes by busybox's ping (Debian's busybox-static; no iputils here).
fn ping(ns: &str, to: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "busybox", "ping", "-c", "2", "-W", "1", to,
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("ping runs")
        .success()
}

/// A node's VLAN parent reaches a device of its VLAN over a trunk bridge shared with another
/// VLAN's device, with the 802.1Q tag on the trunk (tshark sees it); the other VLAN's device,
/// on the same subnet and bridge, is not reached.
#[test]
fn vlan_tags_ride_a_shared_trunk_and_keep_vlans_apart() {
    assert!(
        nix_is_root(),
        "tc programs need root: run the tests as root"
    );
    let ns = Namespaces::new(&["node", "trunk", "dev33", "dev34"]);
    let (node, trunk) = (ns.name("node"), ns.name("trunk"));
    let (dev33, dev34) = (ns.name("dev33"), ns.name("dev34"));
    ip(&["-n", trunk, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", trunk, "link", "set", "br0", "up"]);
    // The node: its trunk to the bridge, and VLAN 33's parent (eth3) with its peer (vl33).
    ip(&[
        "-n", trunk, "link", "add", "n1", "type", "veth", "peer", "name", "trunk0", "netns", node,
    ]);
    ip(&[
        "-n", node, "link", "add", "eth3", "type", "veth", "peer", "name", "vl33",
    ]);
    // Devices on access ports of VLANs 33 and 34, both at addresses of one subnet.
    for (dev, port, addr) in [
        (dev33, "d33", "10.10.33.1/24"),
        (dev34, "d34", "10.10.33.3/24"),
    ] {
        ip(&[
            "-n", trunk, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", dev,
        ]);
        ip(&["-n", dev, "addr", "add", addr, "dev", "eth0"]);
        ip(&["-n", dev, "link", "set", "eth0", "up"]);
    }
    for port in ["n1", "d33", "d34"] {
        ip(&["-n", trunk, "link", "set", port, "master", "br0", "up"]);
    }
    ip(&["-n", node, "addr", "add", "10.10.33.2/24", "dev", "eth3"]);
    for l in ["eth3", "vl33", "trunk0"] {
        ip(&["-n", node, "link", "set", l, "up"]);
    }
    use datapath::vlan::{Port, attach};
    in_netns(node, || {
        attach(&[
            Port::Access {
                iface: "vl33".into(),
                vid: 33,
                redirect: Some("trunk0".into()),
            },
            Port::Trunk {
                iface: "trunk0".into(),
                vlans: vec![(33, "vl33".into())],
            },
        ])
    })
    .expect("the node's ports");
    in_netns(trunk, || {
        attach(&[
            Port::Access {
                iface: "d33".into(),
                vid: 33,
                redirect: None,
            },
            Port::Access {
                iface: "d34".into(),
                vid: 34,
                redirect: None,
            },
        ])
    })
    .expect("the devices' access ports");

    // A capture of what the node sends into the trunk (the trunk also floods VLAN 34's
    // broadcasts towards it), running before the traffic starts.
    let mut cap = capture::Capture::start(
        &format!("/var/run/netns/{trunk}"),
        &["n1"],
        "inbound",
        &["vlan.id", "eth.type"],
    );
    assert!(
        ping(node, "10.10.33.1"),
        "VLAN 33's device answers over the trunk"
    );
    assert!(
        !ping(node, "10.10.33.3"),
        "VLAN 34's device is not reached from VLAN 33"
    );
    cap.wait_for(std::time::Duration::from_secs(20), |l| {
        l.starts_with("33\t")
    });
    let (seen, _) = cap.stop();
    let seen = seen.join("\n");
    let ids: std::collections::BTreeSet<&str> = seen
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default())
        .collect();
    assert!(
        ids.contains("33"),
        "no frame tagged 33 on the trunk:\n{seen}"
    );
    assert!(
        !ids.iter().any(|id| !id.is_empty() && *id != "33"),
        "what the node tags is VLAN 33's:\n{seen}"
    );
}

/// The announcer's link calls through netlink: an address added with a lifetime (and gone by
/// itself once it ran out), removed, and the link's state with and without a carrier.
#[test]
fn addresses_and_link_state_through_netlink() {
    assert!(nix_is_root(), "network namespaces need root");
    let ns = Namespaces::new(&["links"]);
    let n = ns.name("links");
    ip(&[
        "-n", n, "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
    ]);
    ip(&["-n", n, "link", "set", "lan0", "up"]);
    in_netns(n, || {
        use datapath::link::Netlink;
        let addr: std::net::Ipv4Addr = "10.10.30.25".parse().expect("ip");
        let links = Netlink::open().expect("netlink");
        assert!(!links.link_is_up("lan0"), "no carrier while lan1 is down");
        assert!(!links.link_is_up("nope"));
        ip(&["link", "set", "lan1", "up"]);
        assert!(links.link_is_up("lan0"));
        links
            .set_address("lan0", addr, std::time::Duration::from_secs(30))
            .expect("add");
        // Again: a refresh of its lifetime, not an error.
        links
            .set_address("lan0", addr, std::time::Duration::from_secs(30))
            .expect("refresh");
        assert_eq!(links.addresses("lan0").expect("list"), [addr]);
        let shown = std::process::Command::new("ip")
            .args(["-o", "addr", "show", "dev", "lan0"])
            .output()
            .expect("ip");
        let shown = String::from_utf8_lossy(&shown.stdout);
        assert!(
            shown.contains("10.10.30.25/32") && shown.contains("valid_lft 30sec"),
            "{shown}"
        );
        links.remove_address("lan0", addr).expect("remove");
        links
            .remove_address("lan0", addr)
            .expect("removing what is gone");
        assert!(links.addresses("lan0").expect("list").is_empty());
        assert!(
            links
                .set_address("nope", addr, std::time::Duration::from_secs(1))
                .is_err()
        );
    });
}
