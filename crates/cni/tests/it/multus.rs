//! Extra pod interfaces (Multus semantics) run through Debian's reference plugins
//! (`/usr/lib/cni`: macvlan, static, sbr, tuning), with the corpus's NetworkAttachmentDefinitions.
//!
//! The node namespace gets `eth1`/`eth3`/`eth4` as veths to a "device" namespace standing in for
//! the LAN behind them (the router's address on it, and one more address behind the router), so
//! a pod's macvlan interface has a peer to talk to and nothing leaves the test's namespaces.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{Value, json};

use crate::support::{Netns, Node, ProcNetns, ping, ping_from};

/// An address behind the LAN's router: reached only through a route via the router.
const BEYOND: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// The `spec.config` of a corpus NetworkAttachmentDefinition (a `config: |-` block).
pub(crate) fn corpus_nad(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/home-ops/kubernetes/apps/network/multus/config")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let block: String = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("config: |-"))
        .skip(1)
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    serde_json::from_str(&block).unwrap_or_else(|e| panic!("{}: config: {e}", path.display()))
}

/// A LAN segment: `master` in the node namespace, its peer in a device namespace holding
/// `router` (/24) and [`BEYOND`] (on lo, answered as the router's).
fn lan(node: &Node, master: &str, router: &str) -> Netns {
    let dev = Netns::new();
    node.ns.ip(&[
        "link", "add", master, "type", "veth", "peer", "name", "lan0", "netns", &dev.name,
    ]);
    node.ns.ip(&["link", "set", master, "up"]);
    dev.ip(&["address", "add", &format!("{router}/24"), "dev", "lan0"]);
    dev.ip(&["link", "set", "lan0", "up"]);
    dev.ip(&["link", "set", "lo", "up"]);
    dev.ip(&["address", "add", &format!("{BEYOND}/32"), "dev", "lo"]);
    dev
}

fn tools_present() {
    for p in ["macvlan", "static", "sbr", "tuning"] {
        let path = format!("/usr/lib/cni/{p}");
        assert!(
            Path::new(&path).exists(),
            "{path} missing: install Debian's containernetworking-plugins"
        );
    }
}

fn with_networks(node: &Node, networks: Value) -> Value {
    let mut conf = node.conf();
    conf["networks"] = networks;
    conf
}

fn text(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn record(node: &Node, cid: &str) -> Option<Value> {
    let path = node.state.path().join("multus").join(cid);
    std::fs::read(&path)
        .ok()
        .map(|b| serde_json::from_slice(&b).expect("record is JSON"))
}

/// The corpus IoT network exactly as shipped (macvlan over eth3, static 10.10.33.254/24, sbr):
/// net1 gets the address, sbr puts its routes in table 100 with a rule for the address, and a
/// packet from that address reaches a host behind the IoT router while the pod's own default
/// stays on eth0. CHECK passes (0.3.1 lists are not checked, as libcni), DEL removes net1.
#[test]
fn corpus_iot_attachment_with_source_based_routing() {
    tools_present();
    let node = Node::new();
    let _iot = lan(&node, "eth3", "10.10.33.1");
    let pod = Netns::new();
    let conf = with_networks(
        &node,
        json!([{"name": "network/multus-iot", "interface": "net1",
                "config": corpus_nad("net-attach-iot.yaml")}]),
    );
    let at = Some(("c-iot", pod.path()));
    let at = at.as_ref().map(|(c, p)| (*c, p.as_path()));
    let primary = node.run("ADD", &conf, at).ok();
    assert_eq!(
        primary["interfaces"].as_array().map(Vec::len),
        Some(2),
        "the runtime gets the primary network's result: {primary}"
    );

    let addrs = text(pod.ip(&["-o", "-4", "address", "show", "dev", "net1"]));
    assert!(addrs.contains("10.10.33.254/24"), "{addrs}");
    let rules = text(pod.ip(&["rule"]));
    assert!(
        rules.contains("from 10.10.33.254 lookup 100"),
        "sbr's rule: {rules}"
    );
    let table = text(pod.ip(&["route", "show", "table", "100"]));
    assert!(
        table.contains("default via 10.10.33.1 dev net1"),
        "table 100: {table}"
    );
    let main = text(pod.ip(&["route", "show", "default"]));
    assert!(
        main.contains("dev eth0"),
        "main default stays on eth0: {main}"
    );

    let src = Ipv4Addr::new(10, 10, 33, 254);
    // A capture in the pod on both its interfaces: the echo to a host beyond the router and
    // its reply cross net1 (sbr's table), none crosses eth0 (where the pod's default is).
    let mut cap = crate::capture::Capture::start(
        &pod.path().display().to_string(),
        &["net1", "eth0"],
        "icmp",
        &["frame.interface_name", "ip.src", "ip.dst"],
    );
    // Three rounds of an echo and a second for the capture (a quiet link's frames can
    // reach tshark only when it stops: see `capture`).
    let reply = format!("net1\t{BEYOND}\t{src}");
    for _ in 0..3 {
        assert!(ping(&pod.path(), Some(src), BEYOND, 5), "{src} -> {BEYOND}");
        if cap.wait_for(std::time::Duration::from_secs(1), |l| l == reply) {
            break;
        }
    }
    let (seen, said) = cap.stop();
    assert!(
        seen.contains(&format!("net1\t{src}\t{BEYOND}")) && seen.contains(&reply),
        "the echo and its reply on net1: {seen:?} ({said})"
    );
    assert!(
        !seen.iter().any(|l| l.starts_with("eth0")),
        "nothing of it on eth0: {seen:?}"
    );
    // sbr moved even the connected route into table 100: the router too is reached from net1's
    // address.
    let router = Ipv4Addr::new(10, 10, 33, 1);
    assert!(ping(&pod.path(), Some(src), router, 5), "{src} -> {router}");

    let rec = record(&node, "c-iot").expect("ADD records the attachments");
    let status = &rec["networkStatus"];
    assert_eq!(status[0]["name"], "trellis", "{status}");
    assert_eq!(status[0]["default"], true, "{status}");
    assert_eq!(status[1]["name"], "network/multus-iot", "{status}");
    assert_eq!(status[1]["interface"], "net1", "{status}");
    assert_eq!(status[1]["ips"], json!(["10.10.33.254"]), "{status}");
    let mac = text(pod.ip(&["-o", "link", "show", "dev", "net1"]));
    let want = status[1]["mac"].as_str().expect("mac in status");
    assert!(mac.contains(want), "status mac {want} vs {mac}");

    let mut check = conf.clone();
    check["prevResult"] = primary;
    node.run("CHECK", &check, at).ok();

    node.run("DEL", &conf, at).ok();
    let links = text(pod.ip(&["-o", "link"]));
    assert!(!links.contains("net1"), "DEL left net1: {links}");
    assert!(record(&node, "c-iot").is_none(), "DEL left the record");
    node.run("DEL", &conf, at).ok();
}

/// Two attachments from one annotation: the corpus VPN network (no addresses of its own: the pod
/// names one, passed to static as `IP=`) with its interface renamed and the pod's default
/// route, and a 1.0.0 list (macvlan + tuning) with a requested MAC. The cluster's ranges stay
/// on eth0; CHECK runs the 1.0.0 list's CHECK and fails once its interface is gone.
#[test]
fn two_attachments_with_ips_mac_and_the_default_route() {
    tools_present();
    let node = Node::new();
    let _vpn = lan(&node, "eth1", "10.10.31.1");
    let _trust = lan(&node, "eth4", "10.10.34.1");
    let pod = Netns::new();
    let trust = json!({
        "cniVersion": "1.0.0",
        "name": "trust",
        "plugins": [
            {"type": "macvlan", "master": "eth4", "mode": "bridge",
             "ipam": {"type": "static", "addresses": [{"address": "10.10.34.20/24"}]}},
            {"type": "tuning", "capabilities": {"mac": true}}
        ]
    });
    let conf = json!([
        {"name": "network/vpn", "interface": "vpn0", "ips": ["10.10.31.50/24"],
         "default-route": ["10.10.31.1"], "config": corpus_nad("net-attach-vpn.yaml")},
        {"name": "home/trust", "interface": "net2", "mac": "02:00:00:00:34:20", "config": trust},
    ]);
    let mut conf = with_networks(&node, conf);
    conf["clusterCIDRs"] = json!(["10.69.0.0/16", "10.96.0.0/16"]);
    let p = pod.path();
    let at = Some(("c-two", p.as_path()));
    let primary = node.run("ADD", &conf, at).ok();
    let routes = primary["routes"].to_string();
    assert!(
        !routes.contains("0.0.0.0/0") && routes.contains("10.96.0.0/16"),
        "the primary result says where its routes went: {routes}"
    );

    let vpn = text(pod.ip(&["-o", "-4", "address", "show", "dev", "vpn0"]));
    assert!(vpn.contains("10.10.31.50/24"), "{vpn}");
    let net2 = text(pod.ip(&["-o", "link", "show", "dev", "net2"]));
    assert!(net2.contains("02:00:00:00:34:20"), "{net2}");
    let routes = text(pod.ip(&["route"]));
    assert!(
        routes.contains("default via 10.10.31.1 dev vpn0"),
        "{routes}"
    );
    assert!(
        !routes.contains("default via 169.254.1.1"),
        "one default: {routes}"
    );
    assert!(
        routes.contains("10.69.0.0/16 via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("10.96.0.0/16 via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    // The node is still reached over eth0, the world through the VPN router.
    assert!(ping_from(&pod.path(), crate::support::NODE_IP, 5), "node");
    assert!(ping_from(&pod.path(), BEYOND, 5), "beyond the VPN router");
    assert!(
        ping_from(&pod.path(), Ipv4Addr::new(10, 10, 34, 1), 5),
        "trust router"
    );

    let status = record(&node, "c-two").expect("record")["networkStatus"].clone();
    let names: Vec<&str> = status
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["trellis", "network/vpn", "home/trust"], "{status}");
    // As Multus: `default` marks the cluster network whichever interface has the default route.
    assert_eq!(status[0]["default"], true, "{status}");
    assert!(status[1].get("default").is_none(), "{status}");

    let mut check = conf.clone();
    check["prevResult"] = primary;
    node.run("CHECK", &check, at).ok();
    pod.ip(&["link", "del", "net2"]);
    let reply = node.run("CHECK", &check, at);
    assert_eq!(reply.err_code(), 101, "{}", reply.stdout);
    assert!(reply.stdout.contains("home/trust"), "{}", reply.stdout);

    node.run("DEL", &conf, at).ok();
    let links = text(pod.ip(&["-o", "link"]));
    assert!(!links.contains("vpn0"), "{links}");
    assert!(record(&node, "c-two").is_none());
}

/// An attachment whose plugin is missing fails the whole ADD with the NAD's name; the
/// attachments made before it and the primary network are undone, nothing is recorded and the
/// primary address is free again.
#[test]
fn a_failed_attachment_is_named_and_everything_is_undone() {
    tools_present();
    let node = Node::new();
    let _iot = lan(&node, "eth3", "10.10.33.1");
    let pod = Netns::new();
    let broken = json!({"cniVersion": "1.0.0", "name": "broken",
                        "plugins": [{"type": "no-such-plugin"}]});
    let conf = with_networks(
        &node,
        json!([
            {"name": "network/multus-iot", "interface": "net1",
             "config": corpus_nad("net-attach-iot.yaml")},
            {"name": "home/broken", "interface": "net2", "config": broken},
        ]),
    );
    let p = pod.path();
    let reply = node.run("ADD", &conf, Some(("c-broken", p.as_path())));
    assert_eq!(reply.err_code(), 103, "{}", reply.stdout);
    let err = reply.json();
    let said = format!("{} {}", err["msg"], err["details"]);
    assert!(said.contains("home/broken"), "{said}");
    assert!(said.contains("no-such-plugin"), "{said}");
    let links = text(pod.ip(&["-o", "link"]));
    assert!(
        !links.contains("net1") && !links.contains("eth0"),
        "ADD failed but left {links}"
    );
    assert!(!node.links().contains("lxc"), "{}", node.links());
    assert!(record(&node, "c-broken").is_none(), "a failed ADD recorded");
    let held = std::fs::read_dir(node.ipam_dir())
        .expect("ipam dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<Ipv4Addr>().is_ok())
        .count();
    assert_eq!(held, 0, "the primary address was not released");
}

/// DEL after the pod's namespace is gone (the runtime killed the sandbox first) succeeds from
/// the record and removes it.
#[test]
fn del_after_the_namespace_is_gone() {
    tools_present();
    let node = Node::new();
    let _iot = lan(&node, "eth3", "10.10.33.1");
    let mut pod = ProcNetns::new();
    let conf = with_networks(
        &node,
        json!([{"name": "network/multus-iot", "interface": "net1",
                "config": corpus_nad("net-attach-iot.yaml")}]),
    );
    let p = pod.path();
    node.run("ADD", &conf, Some(("c-gone", p.as_path()))).ok();
    assert!(record(&node, "c-gone").is_some());
    pod.kill();
    node.run("DEL", &conf, Some(("c-gone", p.as_path()))).ok();
    assert!(record(&node, "c-gone").is_none(), "DEL left the record");
    assert!(!node.links().contains("lxc"), "{}", node.links());
}
