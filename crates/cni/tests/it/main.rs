//! Integration tests for `trellis-cni`: the real binary, real namespaces and veths, as root.
//! They fail (never skip) when not run as root.

#[path = "../../../datapath/tests/it/capture.rs"]
mod capture;
mod conformance;
mod ctr;
mod multus;
mod support;

use std::net::Ipv4Addr;
use std::process::Command;

use serde_json::{Value, json};
use support::{NODE_IP, Netns, Node, run_with_stdin};

fn pod_ip(result: &Value) -> Ipv4Addr {
    let addr = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips[0].address in {result}"));
    let (ip, prefix) = addr.split_once('/').expect("CIDR notation");
    assert_eq!(prefix, "32", "{addr}");
    ip.parse().expect("IPv4")
}

fn host_ifname(result: &Value) -> String {
    result["interfaces"][0]["name"]
        .as_str()
        .expect("interfaces[0].name")
        .to_string()
}

#[test]
fn add_gives_an_address_and_the_pod_reaches_the_node() {
    let node = Node::new();
    let pod = Netns::new();
    let r = node.add("c-add", &pod);
    assert_eq!(r["cniVersion"], "1.0.0");
    let ip = pod_ip(&r);
    assert!(
        "10.69.1.0/24"
            .parse::<ipnet::Ipv4Net>()
            .expect("cidr")
            .contains(&ip)
    );
    assert_ne!(ip, NODE_IP, "the router address is never handed out");
    assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(r["ips"][0]["interface"], 1);
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(
        r["interfaces"][1]["sandbox"],
        pod.path().display().to_string()
    );
    let host = host_ifname(&r);
    assert_eq!(host, cni::host_ifname("c-add", "eth0"));
    assert!(
        r["interfaces"][0]["mac"]
            .as_str()
            .is_some_and(|m| m.len() == 17)
    );
    assert!(r["interfaces"][0].get("sandbox").is_none());
    assert!(
        r["interfaces"][0].get("mtu").is_none(),
        "mtu is a 1.1.0 field"
    );
    assert_eq!(r["dns"], json!({}));

    // Kernel state matches: /32 on eth0, routes, MTU, proxy ARP on the host end.
    let addrs =
        String::from_utf8_lossy(&pod.ip(&["-4", "-o", "addr", "show", "eth0"]).stdout).into_owned();
    assert!(addrs.contains(&format!("{ip}/32")), "{addrs}");
    let routes = String::from_utf8_lossy(&pod.ip(&["route"]).stdout).into_owned();
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("169.254.1.1 dev eth0"), "{routes}");
    let node_routes = String::from_utf8_lossy(&node.ns.ip(&["route"]).stdout).into_owned();
    assert!(
        node_routes.contains(&format!("{ip} dev {host}")),
        "{node_routes}"
    );
    assert!(node.links().contains("mtu 1400"), "{}", node.links());
    let proxy_arp = node
        .ns
        .exec(&["cat", &format!("/proc/sys/net/ipv4/conf/{host}/proxy_arp")]);
    assert_eq!(String::from_utf8_lossy(&proxy_arp.stdout).trim(), "1");

    assert!(
        support::ping_from(&pod.path(), NODE_IP, 5),
        "pod {ip} got no ICMP echo reply from the node {NODE_IP}"
    );
    // The probe can fail: an address nobody holds does not answer.
    assert!(!support::ping_from(
        &pod.path(),
        Ipv4Addr::new(10, 69, 1, 250),
        1
    ));
}

#[test]
fn add_into_a_proc_pid_netns_and_del_after_the_process_is_gone() {
    let node = Node::new();
    let mut sandbox = support::ProcNetns::new();
    let r = node.add_path("c-proc", &sandbox.path());
    assert_eq!(
        r["interfaces"][1]["sandbox"],
        sandbox.path().display().to_string()
    );
    let ip = pod_ip(&r);
    assert!(
        support::ping_from(&sandbox.path(), NODE_IP, 5),
        "pod {ip} in {} cannot reach the node",
        sandbox.path().display()
    );
    sandbox.kill();
    node.run("DEL", &node.conf(), Some(("c-proc", &sandbox.path())))
        .ok();
    assert!(!node.ipam_dir().join(ip.to_string()).exists());
    // The veth went with the namespace; DEL did not trip over that.
    assert!(!node.links().contains(&host_ifname(&r)), "{}", node.links());
}

#[test]
fn a_repeated_add_fails_without_harming_the_live_attachment() {
    let node = Node::new();
    let pod = Netns::new();
    let r = node.add("c-twice", &pod);
    let again = node.run("ADD", &node.conf(), Some(("c-twice", &pod.path())));
    assert_eq!(again.err_code(), 5, "{}", again.stdout);
    let mut conf = node.conf();
    conf["prevResult"] = r.clone();
    node.run("CHECK", &conf, Some(("c-twice", &pod.path())))
        .ok();
    assert!(node.ipam_dir().join(pod_ip(&r).to_string()).exists());
}

/// The `datapath` section is accepted and ADD still works. `attach_datapath` only logs
/// today; once it calls `datapath::attach_endpoint`, this test needs real pins in `pinDir`.
#[test]
fn add_with_a_datapath_section() {
    let node = Node::new();
    let pod = Netns::new();
    let mut conf = node.conf();
    // The agent's part: load and pin the programs (removed again on drop).
    struct Pins(std::path::PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = datapath::unpin(&self.0);
        }
    }
    let pins = Pins(datapath::pin_dir(&format!(
        "cni-test-{}",
        std::process::id()
    )));
    datapath::load(&pins.0).expect("datapath loads");
    conf["datapath"] = json!({ "pinDir": pins.0 });
    let r = node.run("ADD", &conf, Some(("c-dp", &pod.path()))).ok();
    pod_ip(&r);
    // Both programs sit on the host end of the veth.
    let host = r["interfaces"][0]["name"]
        .as_str()
        .expect("host interface")
        .to_string();
    for hook in ["ingress", "egress"] {
        let out = node.ns.exec(&["tc", "filter", "show", "dev", &host, hook]);
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.contains("from_pod") || out.contains("to_pod"),
            "{hook}: {out}"
        );
    }
    node.run("DEL", &conf, Some(("c-dp", &pod.path()))).ok();
    // A pin directory without programs is an ADD error with trellis's code 102.
    let mut bad = node.conf();
    bad["datapath"] = json!({ "pinDir": "/sys/fs/bpf/trellis/does-not-exist" });
    let pod2 = Netns::new();
    let code = node
        .run("ADD", &bad, Some(("c-dp2", &pod2.path())))
        .err_code();
    assert_eq!(code, 102);
}

#[test]
fn concurrent_adds_never_share_an_address() {
    let node = Node::new();
    let pods: Vec<Netns> = (0..6).map(|_| Netns::new()).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let node = &node;
                s.spawn(move || node.add(&format!("c-par-{i}"), pod))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let mut ips: Vec<Ipv4Addr> = results.iter().map(pod_ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), pods.len(), "duplicate addresses: {results:?}");
    // And every one is on disk, one file each.
    let files = std::fs::read_dir(node.ipam_dir())
        .expect("ipam dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().parse::<Ipv4Addr>().is_ok())
        })
        .count();
    assert_eq!(files, pods.len());
}

#[test]
fn allocations_persist_across_processes() {
    let node = Node::new();
    let (p1, p2) = (Netns::new(), Netns::new());
    let ip1 = pod_ip(&node.add("c-persist-1", &p1));
    // A new process, a new Pool: it sees the first allocation and hands out another address.
    let ip2 = pod_ip(&node.add("c-persist-2", &p2));
    assert_ne!(ip1, ip2);
    let pool = cni::Pool::open(
        node.state.path(),
        "trellis",
        "10.69.1.0/24".parse().expect("cidr"),
    )
    .expect("open pool");
    let held: Vec<_> = pool
        .allocations()
        .expect("list")
        .into_iter()
        .map(|a| (a.ip, a.container_id, a.ifname))
        .collect();
    assert!(
        held.contains(&(ip1, "c-persist-1".into(), "eth0".into())),
        "{held:?}"
    );
    assert!(
        held.contains(&(ip2, "c-persist-2".into(), "eth0".into())),
        "{held:?}"
    );
    // Round robin: after releasing ip1 the next ADD does not get it straight back.
    node.run("DEL", &node.conf(), Some(("c-persist-1", &p1.path())))
        .ok();
    let p3 = Netns::new();
    let ip3 = pod_ip(&node.add("c-persist-3", &p3));
    assert_ne!(ip3, ip1);
    assert_ne!(ip3, ip2);
}

#[test]
fn del_releases_and_is_idempotent() {
    let node = Node::new();
    let mut pod = Netns::new();
    let r = node.add("c-del", &pod);
    let (ip, host) = (pod_ip(&r), host_ifname(&r));
    assert!(node.ipam_dir().join(ip.to_string()).exists());
    let mut conf = node.conf();
    conf["prevResult"] = r;
    node.run("DEL", &conf, Some(("c-del", &pod.path()))).ok();
    assert!(
        !node.ipam_dir().join(ip.to_string()).exists(),
        "address not released"
    );
    assert!(
        !node.links().contains(&host),
        "host veth left: {}",
        node.links()
    );
    // Twice is fine.
    node.run("DEL", &conf, Some(("c-del", &pod.path()))).ok();
    // With the namespace gone (and without CNI_NETNS at all) too.
    let r = node.add("c-del", &pod);
    let ip = pod_ip(&r);
    pod.delete();
    node.run("DEL", &node.conf(), Some(("c-del", &pod.path())))
        .ok();
    assert!(!node.ipam_dir().join(ip.to_string()).exists());
    let env = [
        ("CNI_COMMAND", "DEL".to_string()),
        ("CNI_CONTAINERID", "c-never-added".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
    ];
    node.run_env(&env, node.conf().to_string().as_bytes()).ok();
}

#[test]
fn check_passes_then_fails_once_the_address_is_gone() {
    let node = Node::new();
    let pod = Netns::new();
    let r = node.add("c-check", &pod);
    let ip = pod_ip(&r);
    let mut conf = node.conf();
    conf["prevResult"] = r;
    node.run("CHECK", &conf, Some(("c-check", &pod.path())))
        .ok();
    pod.ip(&["address", "del", &format!("{ip}/32"), "dev", "eth0"]);
    let reply = node.run("CHECK", &conf, Some(("c-check", &pod.path())));
    assert_eq!(reply.err_code(), u64::from(cni::error::CODE_CHECK_FAILED));
    assert!(
        reply.json()["details"]
            .as_str()
            .is_some_and(|d| d.contains(&ip.to_string()))
    );
    // The node side counts too: a missing node route or proxy ARP is a failed CHECK.
    pod.ip(&["address", "add", &format!("{ip}/32"), "dev", "eth0"]);
    pod.ip(&[
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    node.run("CHECK", &conf, Some(("c-check", &pod.path())))
        .ok();
    let host = cni::host_ifname("c-check", "eth0");
    node.ns
        .ip(&["route", "del", &format!("{ip}/32"), "dev", &host]);
    node.ns.exec(&[
        "sh",
        "-c",
        &format!("echo 0 > /proc/sys/net/ipv4/conf/{host}/proxy_arp"),
    ]);
    let reply = node.run("CHECK", &conf, Some(("c-check", &pod.path())));
    assert_eq!(reply.err_code(), u64::from(cni::error::CODE_CHECK_FAILED));
    let details = reply.json()["details"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        details.contains("node route") && details.contains("proxy_arp"),
        "{details}"
    );
    // CHECK without prevResult is a config error.
    let reply = node.run("CHECK", &node.conf(), Some(("c-check", &pod.path())));
    assert_eq!(reply.err_code(), 7);
}

#[test]
fn version_lists_what_we_speak() {
    let node = Node::new();
    // No input (a runtime probing): the newest version. With input, the spec's echo is
    // checked by the conformance cases.
    let v = node.run_env(&[("CNI_COMMAND", "VERSION".into())], b"").ok();
    assert_eq!(
        v,
        json!({"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]})
    );
}

#[test]
fn errors_are_the_specs_json_with_its_codes() {
    let node = Node::new();
    let pod = Netns::new();
    let env = |cmd: &str| {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "c-err".to_string()),
            ("CNI_NETNS", pod.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
        ]
    };
    assert_eq!(
        node.run_env(&env("ADD"), b"{\"cniVersion\": ").err_code(),
        6
    );
    let mut conf = node.conf();
    conf["cniVersion"] = json!("0.1.0");
    assert_eq!(
        node.run("ADD", &conf, Some(("c-err", &pod.path())))
            .err_code(),
        1
    );
    let mut missing = env("ADD");
    missing.retain(|(k, _)| *k != "CNI_CONTAINERID");
    let reply = node.run_env(&missing, node.conf().to_string().as_bytes());
    assert_eq!(reply.err_code(), 4);
    assert!(
        reply.json()["details"]
            .as_str()
            .is_some_and(|d| d.contains("CNI_CONTAINERID"))
    );
    let reply = node.run(
        "ADD",
        &node.conf(),
        Some(("c-err", "/var/run/netns/trellis-t-none".as_ref())),
    );
    assert_eq!(reply.err_code(), 3);
    let mut conf = node.conf();
    conf["podCIDR"] = json!("10.9.0.0/31");
    assert_eq!(
        node.run("ADD", &conf, Some(("c-err", &pod.path())))
            .err_code(),
        7
    );
    // Nothing was left behind by the failures.
    assert!(!node.links().contains("lxc"), "{}", node.links());
}

#[test]
fn exhaustion_has_its_own_code_and_status_reports_it() {
    let node = Node::new();
    let (p1, p2) = (Netns::new(), Netns::new());
    let mut conf = node.conf();
    conf["cniVersion"] = json!("1.1.0");
    conf["podCIDR"] = json!("10.69.1.0/30"); // exactly one address: 10.69.1.2
    node.run("STATUS", &conf, None).ok();
    let r = node.run("ADD", &conf, Some(("c-full-1", &p1.path()))).ok();
    assert_eq!(pod_ip(&r), Ipv4Addr::new(10, 69, 1, 2));
    // 1.1.0 results carry the interfaces' MTU.
    assert_eq!(r["interfaces"][1]["mtu"], 1400, "{r}");
    let reply = node.run("ADD", &conf, Some(("c-full-2", &p2.path())));
    assert_eq!(reply.err_code(), u64::from(cni::error::CODE_POOL_EXHAUSTED));
    assert!(!node.links().contains(&cni::host_ifname("c-full-2", "eth0")));
    assert_eq!(node.run("STATUS", &conf, None).err_code(), 50);
    node.run("DEL", &conf, Some(("c-full-1", &p1.path()))).ok();
    node.run("STATUS", &conf, None).ok();
}

#[test]
fn status_fails_when_the_node_cannot_route_to_the_pod_gateway() {
    let node = Node::new();
    let mut conf = node.conf();
    conf["cniVersion"] = json!("1.1.0");
    node.run("STATUS", &conf, None).ok();
    node.ns.ip(&["route", "del", "default"]);
    let reply = node.run("STATUS", &conf, None);
    assert_eq!(reply.err_code(), 50);
    assert!(reply.stdout.contains("169.254.1.1"), "{}", reply.stdout);
}

#[test]
fn status_fails_when_the_state_dir_is_not_writable() {
    let node = Node::new();
    let file = node.state.path().join("not-a-dir");
    std::fs::write(&file, b"").expect("write file");
    let mut conf = node.conf();
    conf["cniVersion"] = json!("1.1.0");
    conf["stateDir"] = json!(file);
    assert_eq!(node.run("STATUS", &conf, None).err_code(), 50);
}

#[test]
fn gc_releases_what_is_not_valid() {
    let node = Node::new();
    let (p1, p2) = (Netns::new(), Netns::new());
    let ip1 = pod_ip(&node.add("c-gc-keep", &p1));
    let r2 = node.add("c-gc-stale", &p2);
    let (ip2, host2) = (pod_ip(&r2), host_ifname(&r2));
    let mut conf = node.conf();
    conf["cniVersion"] = json!("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "c-gc-keep", "ifname": "eth0"}]);
    // Without the list GC refuses rather than releasing everything.
    let mut no_list = conf.clone();
    no_list
        .as_object_mut()
        .expect("object")
        .remove("cni.dev/valid-attachments");
    assert_eq!(node.run("GC", &no_list, None).err_code(), 7);
    assert!(node.ipam_dir().join(ip2.to_string()).exists());
    // GC and STATUS came with 1.1.0.
    assert_eq!(node.run("GC", &node.conf(), None).err_code(), 1);
    node.run("GC", &conf, None).ok();
    assert!(node.ipam_dir().join(ip1.to_string()).exists());
    assert!(!node.ipam_dir().join(ip2.to_string()).exists());
    assert!(!node.links().contains(&host2), "{}", node.links());
    assert!(
        node.links()
            .contains(&cni::host_ifname("c-gc-keep", "eth0"))
    );
}

/// Chaining: the reference `bandwidth` plugin takes our result as `prevResult` and shapes the
/// host veth we created.
#[test]
fn bandwidth_plugin_chains_after_us() {
    let bandwidth = "/usr/lib/cni/bandwidth";
    assert!(
        std::path::Path::new(bandwidth).exists(),
        "{bandwidth} missing: install Debian's containernetworking-plugins"
    );
    let node = Node::new();
    let pod = Netns::new();
    let r = node.add("c-bw", &pod);
    let host = host_ifname(&r);
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "trellis",
        "type": "bandwidth",
        "ingressRate": 8_000_000,
        "ingressBurst": 100_000,
        "egressRate": 8_000_000,
        "egressBurst": 100_000,
        "prevResult": r,
    });
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.ns.name, bandwidth])
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c-bw")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni");
    let reply = run_with_stdin(cmd, conf.to_string().as_bytes());
    let out = reply.ok();
    assert_eq!(
        out["ips"], r["ips"],
        "bandwidth must pass our result through"
    );
    let qdiscs = node.ns.exec(&["tc", "qdisc", "show", "dev", &host]);
    let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
    assert!(qdiscs.contains("tbf"), "no tbf on {host}: {qdiscs}");
    assert!(
        qdiscs.contains("ingress"),
        "no ingress qdisc on {host}: {qdiscs}"
    );
    // CHECK with the chain's final result (which now lists bandwidth's ifb too) still passes.
    let mut conf = node.conf();
    conf["prevResult"] = out;
    node.run("CHECK", &conf, Some(("c-bw", &pod.path()))).ok();
}

/// A second, independent caller: a stdlib-only Python driver that follows the spec, so not
/// only trellis calls trellis.
#[test]
fn python_driver_runs_add_check_del() {
    let node = Node::new();
    let pod = Netns::new();
    let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cni_driver.py");
    let out = node.ns.exec(&[
        "python3",
        driver,
        support::PLUGIN,
        &pod.path().display().to_string(),
        &node.state.path().display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "driver failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("driver summary is not JSON ({e}): {stdout}"));
    assert_eq!(summary["ok"], true, "{summary}");
    assert!(
        summary["steps"].as_array().is_some_and(|s| s.len() >= 6),
        "{summary}"
    );
    assert!(
        !node.links().contains("lxc"),
        "driver's DEL left a veth: {}",
        node.links()
    );
}

/// A failed ADD undoes its allocation and leaves no veth: here the pod already has an eth0.
#[test]
fn a_failed_add_leaves_nothing_behind() {
    let node = Node::new();
    let pod = Netns::new();
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let reply = node.run("ADD", &node.conf(), Some(("c-clash", &pod.path())));
    assert_eq!(reply.err_code(), 5);
    let details = reply.json()["details"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(details.contains("eth0"), "{details}");
    assert!(!node.links().contains("lxc"), "{}", node.links());
    let held = std::fs::read_dir(node.ipam_dir())
        .expect("ipam dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<Ipv4Addr>().is_ok())
        .count();
    assert_eq!(held, 0, "the address was not released");
}

/// Two pods on one node reach each other through the node (proxy ARP on both host ends,
/// forwarding between them), with no bridge.
#[test]
fn pods_on_one_node_reach_each_other() {
    let node = Node::new();
    let (a, b) = (Netns::new(), Netns::new());
    let ip_a = pod_ip(&node.add("c-pair-a", &a));
    let ip_b = pod_ip(&node.add("c-pair-b", &b));
    assert!(support::ping_from(&a.path(), ip_b, 5), "{ip_a} -> {ip_b}");
    assert!(support::ping_from(&b.path(), ip_a, 5), "{ip_b} -> {ip_a}");
}

/// Many ADD/DEL cycles in parallel leak nothing: no allocation files, no host veths.
#[test]
fn add_del_cycles_leak_nothing() {
    let node = Node::new();
    std::thread::scope(|s| {
        for t in 0..4 {
            let node = &node;
            s.spawn(move || {
                let pod = Netns::new();
                for i in 0..8 {
                    let id = format!("c-cycle-{t}-{i}");
                    node.add(&id, &pod);
                    node.run("DEL", &node.conf(), Some((&id, &pod.path()))).ok();
                }
            });
        }
    });
    let held: Vec<_> = std::fs::read_dir(node.ipam_dir())
        .expect("ipam dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<Ipv4Addr>().is_ok() || n.starts_with(".tmp"))
        .collect();
    assert!(held.is_empty(), "left in IPAM: {held:?}");
    assert!(!node.links().contains("lxc"), "{}", node.links());
}

/// Chaining: the reference `portmap` plugin maps a node port to our pod, and a TCP
/// connection to the node's port reaches a server inside the pod.
#[test]
fn portmap_plugin_chains_after_us_and_traffic_flows() {
    let portmap = "/usr/lib/cni/portmap";
    assert!(
        std::path::Path::new(portmap).exists(),
        "{portmap} missing: install Debian's containernetworking-plugins"
    );
    let node = Node::new();
    let pod = Netns::new();
    let r = node.add("c-pm", &pod);
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "trellis",
        "type": "portmap",
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": r,
    });
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.ns.name, portmap])
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c-pm")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni");
    let out = run_with_stdin(cmd, conf.to_string().as_bytes()).ok();
    assert_eq!(out["ips"], r["ips"], "portmap must pass our result through");
    let server = support::serve_once(&pod.path(), 80, "hello from the pod");
    let got = support::in_netns(&node.ns.path(), || {
        use std::io::Read;
        let addr = std::net::SocketAddr::from((NODE_IP, 8080));
        let mut conn =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
                .expect("connect to the node port");
        conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("read timeout");
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read");
        text
    });
    server.join().expect("server thread");
    assert_eq!(got, "hello from the pod");
}
