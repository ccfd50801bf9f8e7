//! The cluster zone served over UDP and TCP, queried with dig (a real resolver client), and
//! split-horizon views (with a property test of the no-leak guarantee in `props.rs`).

mod knot;
mod props;
mod stale;
mod sync;

use std::process::Command;

fn write_manifests(dir: &std::path::Path) {
    let mut m = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: apps}\nspec:\n  clusterIP: 10.96.0.20\n  ports: [{name: http, port: 80, protocol: TCP}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: apps}\nspec:\n  clusterIP: None\n  ports: [{name: pg, port: 5432}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: db, namespace: apps, labels: {kubernetes.io/service-name: db}}\naddressType: IPv4\n\
         ports: [{name: pg, port: 5432}]\nendpoints:\n  - {addresses: [10.69.1.10], hostname: db-0}\n  - {addresses: [10.69.2.10], hostname: db-1}\n  - {addresses: [10.69.3.10]}\n  - {addresses: [10.69.3.11], conditions: {ready: false}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: apps}\nspec: {type: ExternalName, externalName: example.org}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: noip, namespace: apps}\nspec: {ports: [{port: 80}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: apps}\nspec: {containers: [{name: c, image: x}]}\nstatus: {podIP: 10.69.1.5}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: apps}\nspec:\n  clusterIP: None\n  ports: [{name: http, port: 80}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: big, namespace: apps, labels: {kubernetes.io/service-name: big}}\naddressType: IPv4\n\
         ports: [{name: http, port: 80}]\nendpoints:\n",
    );
    for i in 0..60 {
        m.push_str(&format!("  - {{addresses: [10.70.0.{i}]}}\n"));
    }
    std::fs::write(dir.join("m.yaml"), m).expect("write");
}

/// The manifests of `dir`, loaded as `trellis` loads them.
fn load_dir(dir: &std::path::Path) -> store::Load {
    store::load(
        &[dir.to_path_buf()],
        &store::Options {
            default_namespace: "default".into(),
            ..Default::default()
        },
    )
}

/// `dig @127.0.0.1 -p PORT ARGS...`, returning stdout.
fn dig(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig runs (apt-get install dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn short(port: u16, name: &str, ty: &str) -> Vec<String> {
    let mut v: Vec<String> = dig(port, &["+short", name, ty])
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn status(port: u16, name: &str, ty: &str) -> (String, usize) {
    let out = dig(port, &[name, ty]);
    let status = out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("?")
        .to_string();
    let answers = out
        .split("ANSWER: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    (status, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_zone_with_dig() {
    let t = tempfile::tempdir().expect("tmp");
    write_manifests(t.path());
    let load = load_dir(t.path());
    assert!(
        !load.snapshot.has_errors(),
        "{:?}",
        load.snapshot.diagnostics
    );
    let zone = dns::compile(&load.snapshot, &dns::ZoneConfig::default());
    let running = dns::server::start(
        "127.0.0.1:0".parse().expect("addr"),
        dns::Views {
            views: Vec::new(),
            default: zone,
            rewrites: Vec::new(),
        },
        None,
    )
    .await
    .expect("starts");
    let port = running.udp.port();
    tokio::task::spawn_blocking(move || {
        assert_eq!(
            short(port, "web.apps.svc.cluster.local", "A"),
            ["10.96.0.20"]
        );
        assert_eq!(
            short(port, "WEB.Apps.SVC.cluster.local", "A"),
            ["10.96.0.20"],
            "names are case-insensitive"
        );
        assert_eq!(
            short(port, "db.apps.svc.cluster.local", "A"),
            ["10.69.1.10", "10.69.2.10", "10.69.3.10"],
            "ready endpoints only"
        );
        assert_eq!(
            short(port, "db-1.db.apps.svc.cluster.local", "A"),
            ["10.69.2.10"]
        );
        assert_eq!(
            short(port, "_http._tcp.web.apps.svc.cluster.local", "SRV"),
            ["0 100 80 web.apps.svc.cluster.local."]
        );
        assert_eq!(
            short(port, "_pg._tcp.db.apps.svc.cluster.local", "SRV"),
            [
                "0 100 5432 10-69-3-10.db.apps.svc.cluster.local.",
                "0 100 5432 db-0.db.apps.svc.cluster.local.",
                "0 100 5432 db-1.db.apps.svc.cluster.local."
            ]
        );
        assert_eq!(
            short(port, "ext.apps.svc.cluster.local", "A"),
            ["example.org."],
            "ExternalName answers its CNAME"
        );
        assert_eq!(
            short(port, "20.0.96.10.in-addr.arpa", "PTR"),
            ["web.apps.svc.cluster.local."]
        );
        assert_eq!(
            short(port, "10-69-1-5.apps.pod.cluster.local", "A"),
            ["10.69.1.5"]
        );
        assert_eq!(
            short(port, "dns-version.cluster.local", "TXT"),
            ["\"1.1.0\""]
        );
        // NXDOMAIN for names that do not exist; NODATA for names that do.
        assert_eq!(
            status(port, "nope.apps.svc.cluster.local", "A").0,
            "NXDOMAIN"
        );
        assert_eq!(
            status(port, "10-69-1-6.apps.pod.cluster.local", "A").0,
            "NXDOMAIN",
            "pods verified"
        );
        assert_eq!(
            status(port, "apps.svc.cluster.local", "A"),
            ("NOERROR".to_string(), 0),
            "empty non-terminal"
        );
        assert_eq!(
            status(port, "noip.apps.svc.cluster.local", "A"),
            ("NOERROR".to_string(), 0)
        );
        assert_eq!(
            status(port, "web.apps.svc.cluster.local", "AAAA"),
            ("NOERROR".to_string(), 0)
        );
        assert_eq!(
            status(port, "cluster.local", "SOA"),
            ("NOERROR".to_string(), 1)
        );
        assert_eq!(status(port, "example.com", "A").0, "REFUSED");
        // 60 addresses do not fit 512 bytes: truncated over UDP, complete over TCP.
        let udp = dig(
            port,
            &["+noedns", "+ignore", "big.apps.svc.cluster.local", "A"],
        );
        assert!(udp.contains(" tc"), "{udp}");
        let tcp: Vec<String> = dig(port, &["+tcp", "+short", "big.apps.svc.cluster.local", "A"])
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(tcp.len(), 60);
        // With EDNS0 (dig's default 1232 bytes) the 60 records fit in one UDP answer.
        let edns: Vec<String> = dig(port, &["+short", "big.apps.svc.cluster.local", "A"])
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(edns.len(), 60);
    })
    .await
    .expect("checks pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_horizon_views_with_dig() {
    let t = tempfile::tempdir().expect("tmp");
    std::fs::write(
        t.path().join("m.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: trellis}\nspec: {controllerName: trellis.dev/gateway-controller}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: internal\n  namespace: net\nspec:\n  gatewayClassName: trellis\n  addresses: [{type: IPAddress, value: 10.10.30.25}]\n  listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: external\n  namespace: net\n  annotations: {external-dns.alpha.kubernetes.io/target: external.example.com}\nspec:\n  gatewayClassName: trellis\n  addresses: [{type: IPAddress, value: 10.10.30.26}]\n  listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: wiki, namespace: net}\nspec: {parentRefs: [{name: internal}], hostnames: [wiki.example.com]}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: blog, namespace: net}\nspec: {parentRefs: [{name: external}, {name: internal}], hostnames: [blog.example.com]}\n---\n\
         apiVersion: externaldns.k8s.io/v1alpha1\nkind: DNSEndpoint\nmetadata: {name: tunnel, namespace: net}\nspec: {endpoints: [{dnsName: external.example.com, recordType: CNAME, targets: [abc.cfargotunnel.com]}]}\n---\n\
         apiVersion: trellis.dev/v1alpha1\nkind: DNSView\nmetadata: {name: lan}\nspec:\n  order: 1\n  clients: [127.0.0.1/32]\n  zones: [example.com]\n  cluster: true\n  gateways: [{name: internal, namespace: net}, {name: external, namespace: net}]\n---\n\
         apiVersion: trellis.dev/v1alpha1\nkind: DNSView\nmetadata: {name: public}\nspec:\n  order: 2\n  clients: [0.0.0.0/0]\n  zones: [example.com]\n  dnsEndpoints: true\n  gateways: [{name: external, namespace: net, answer: Target}]\n",
    )
    .expect("write");
    let load = load_dir(t.path());
    assert!(!load.snapshot.has_problems(), "{:#?}", load.snapshot.status);
    let views = dns::compile_views(&load.snapshot, &dns::ZoneConfig::default());
    let running = dns::server::start("127.0.0.1:0".parse().expect("addr"), views, None)
        .await
        .expect("starts");
    let port = running.udp.port();
    tokio::task::spawn_blocking(move || {
        let from = |src: &str, name: &str| -> (String, Vec<String>) {
            let out = dig(port, &["-b", src, name, "A"]);
            let status = out
                .split("status: ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .unwrap_or("?")
                .to_string();
            let mut short: Vec<String> = dig(port, &["-b", src, "+short", name, "A"])
                .lines()
                .map(str::to_string)
                .collect();
            short.sort();
            (status, short)
        };
        // Inside: the gateways' own addresses, and the cluster zone.
        assert_eq!(from("127.0.0.1", "wiki.example.com").1, ["10.10.30.25"]);
        assert_eq!(
            from("127.0.0.1", "blog.example.com").1,
            ["10.10.30.25", "10.10.30.26"]
        );
        assert_eq!(from("127.0.0.1", "dns-version.cluster.local").0, "NOERROR");
        // Outside: the public target, the tunnel record, and nothing for inside-only names.
        assert_eq!(
            from("127.0.0.2", "blog.example.com").1,
            ["abc.cfargotunnel.com.", "external.example.com."]
        );
        assert_eq!(
            from("127.0.0.2", "wiki.example.com"),
            ("NXDOMAIN".to_string(), Vec::new()),
            "an inside-only name never leaks"
        );
        assert_eq!(
            from("127.0.0.2", "web.apps.svc.cluster.local").0,
            "REFUSED",
            "the cluster zone is inside only"
        );
    })
    .await
    .expect("checks pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_knot_and_serves_from_cache_when_it_is_gone() {
    let knot = knot::Knot::start(
        "example.test",
        "$ORIGIN example.test.\n$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 60\n@ NS ns\nns A 127.0.0.1\nwww A 192.0.2.10\nmail AAAA 2001:db8::25\n",
        false,
        "www.example.test",
        "192.0.2.10",
    );
    let knot_port = knot.port;
    let zone = dns::compile(&model::Snapshot::default(), &dns::ZoneConfig::default());
    let fwd = std::sync::Arc::new(
        dns::forward::Forwarder::new(
            vec![format!("127.0.0.1:{knot_port}").parse().expect("addr")],
            None,
        )
        .expect("forwarder"),
    );
    let running = dns::server::start(
        "127.0.0.1:0".parse().expect("addr"),
        dns::Views {
            views: Vec::new(),
            default: zone,
            rewrites: Vec::new(),
        },
        Some(fwd.clone()),
    )
    .await
    .expect("starts");
    let port = running.udp.port();
    tokio::task::spawn_blocking(move || {
        // Cluster names are still answered locally; the rest goes to Knot.
        assert_eq!(
            status(port, "dns-version.cluster.local", "TXT").0,
            "NOERROR"
        );
        assert_eq!(short(port, "www.example.test", "A"), ["192.0.2.10"]);
        assert_eq!(short(port, "mail.example.test", "AAAA"), ["2001:db8::25"]);
        assert_eq!(status(port, "nope.example.test", "A").0, "NXDOMAIN");
        assert_eq!(
            dig(port, &["+tcp", "+short", "www.example.test", "A"]).trim(),
            "192.0.2.10"
        );
        assert!(fwd.cached() >= 3, "answers are cached");
        // Asked again and again (from the second cache hit on, the listener replays its
        // answer), in any case: the same answer, with the asker's name case and ID, TTLs
        // from Knot's 300 down. The same for a name of the cluster zone.
        for name in ["www.example.test", "WWW.Example.TEST", "www.example.TEST"] {
            let out = dig(port, &["+noall", "+question", "+answer", name, "A"]);
            assert!(out.contains(&format!(";{name}.")), "{out}");
            let ttl: u32 = out
                .lines()
                .find(|l| l.contains("192.0.2.10"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("an A record with a TTL: {out}"));
            assert!((200..=300).contains(&ttl), "{out}");
        }
        for name in ["dns-version.cluster.local", "DNS-version.Cluster.local"] {
            for _ in 0..3 {
                let out = dig(port, &["+noall", "+question", "+answer", name, "TXT"]);
                assert!(out.contains(&format!(";{name}.")), "{out}");
                assert!(out.contains("\"1.1.0\""), "{out}");
            }
        }
        // Knot goes away: cached answers (positive and negative) still come back.
        drop(knot);
        assert_eq!(short(port, "www.example.test", "A"), ["192.0.2.10"]);
        assert_eq!(status(port, "nope.example.test", "A").0, "NXDOMAIN");
        // A name never asked before has nowhere to come from.
        assert_eq!(status(port, "new.example.test", "A").0, "SERVFAIL");
    })
    .await
    .expect("checks pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_rewrite_rules_with_dig() {
    let t = tempfile::tempdir().expect("tmp");
    // The rules as the corpus's CoreDNS HelmRelease writes them.
    std::fs::write(
        t.path().join("m.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: envoy-external, namespace: network}\nspec: {clusterIP: 10.96.0.30, ports: [{name: https, port: 443}]}\n---\n\
         apiVersion: trellis.dev/v1alpha1\nkind: DNSRewrite\nmetadata: {name: gateways}\nspec:\n  rules:\n\
         \x20   - name exact auth.cloudjur.com. envoy-external.network.svc.cluster.local.\n\
         \x20   - |-\n      name regex ^auth\\.cloudjur\\.com\\..*\\.cluster\\.local\\.$ envoy-external.network.svc.cluster.local.\n      answer auto\n",
    )
    .expect("write");
    let load = load_dir(t.path());
    assert!(!load.snapshot.has_problems(), "{:#?}", load.snapshot.status);
    let views = dns::compile_views(&load.snapshot, &dns::ZoneConfig::default());
    assert_eq!(views.rewrites.len(), 2);
    let running = dns::server::start("127.0.0.1:0".parse().expect("addr"), views, None)
        .await
        .expect("starts");
    let port = running.udp.port();
    tokio::task::spawn_blocking(move || {
        for name in [
            "auth.cloudjur.com",
            "AUTH.cloudjur.com",
            "auth.cloudjur.com.apps.svc.cluster.local",
        ] {
            let out = dig(port, &["+noall", "+answer", name, "A"]);
            let line = out.lines().next().unwrap_or("");
            // The client sees the name it asked for, with the rewritten name's address.
            assert!(
                line.to_ascii_lowercase()
                    .starts_with(&format!("{}.", name.to_ascii_lowercase())),
                "{name}: {out}"
            );
            assert!(line.ends_with("10.96.0.30"), "{name}: {out}");
        }
        assert_eq!(
            status(port, "other.cloudjur.com", "A").0,
            "REFUSED",
            "no rule, no zone, no upstream"
        );
    })
    .await
    .expect("checks pass");
}

/// ExternalDNS's gateway sources: route hostnames and the hostname annotation (the only names
/// of TCP and UDP routes), targets from the Gateway, routes the Gateway did not accept and
/// `controller: none` left out.
#[test]
fn sync_sources_from_routes() {
    let t = tempfile::tempdir().expect("tmp");
    std::fs::write(
        t.path().join("m.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: eg}\nspec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: net, annotations: {external-dns.alpha.kubernetes.io/target: edge.example.com}}\n\
         spec:\n  gatewayClassName: eg\n  addresses: [{type: IPAddress, value: 10.10.30.25}]\n  listeners:\n\
         \x20   - {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}\n\
         \x20   - {name: tcp, protocol: TCP, port: 2222, allowedRoutes: {namespaces: {from: All}}}\n\
         \x20   - {name: udp, protocol: UDP, port: 3478, allowedRoutes: {namespaces: {from: All}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: apps, annotations: {external-dns.alpha.kubernetes.io/hostname: extra.example.com}}\n\
         spec: {parentRefs: [{name: edge, namespace: net, sectionName: http}], hostnames: [web.example.com]}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: redirect, namespace: apps, annotations: {external-dns.alpha.kubernetes.io/controller: none}}\n\
         spec: {parentRefs: [{name: edge, namespace: net, sectionName: http}], hostnames: [skip.example.com]}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: git, namespace: apps, annotations: {external-dns.kubernetes.io/hostname: git.example.com}}\n\
         spec: {parentRefs: [{name: edge, namespace: net, sectionName: tcp}], rules: [{backendRefs: [{name: git, port: 22}]}]}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: UDPRoute\nmetadata: {name: turn, namespace: apps, annotations: {external-dns.alpha.kubernetes.io/hostname: turn.example.com}}\n\
         spec: {parentRefs: [{name: edge, namespace: net, sectionName: udp}], rules: [{backendRefs: [{name: turn, port: 3478}]}]}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: stray, namespace: apps}\n\
         spec: {parentRefs: [{name: nowhere, namespace: net}], hostnames: [stray.example.com]}\n",
    )
    .expect("write");
    let load = load_dir(t.path());
    let got: Vec<(String, String, Vec<String>, String)> =
        dns::sync::desired(&load.snapshot, &dns::sync::SyncConfig::default())
            .into_iter()
            .map(|e| {
                (
                    e.name,
                    e.record_type,
                    e.targets.into_iter().collect(),
                    e.resource,
                )
            })
            .collect();
    let cname = |n: &str, r: &str| {
        (
            n.to_string(),
            "CNAME".to_string(),
            vec!["edge.example.com".to_string()],
            r.to_string(),
        )
    };
    assert_eq!(
        got,
        vec![
            cname("extra.example.com", "httproute/apps/web"),
            cname("git.example.com", "tcproute/apps/git"),
            cname("turn.example.com", "udproute/apps/turn"),
            cname("web.example.com", "httproute/apps/web"),
        ],
        "{:?}",
        load.snapshot.diagnostics
    );
}

/// A TCP client that sends a message's length and then nothing is cut off after
/// `TCP_MESSAGE_TIMEOUT`, not held for the connection's life (awaited, bounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_message_that_never_comes_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let views = dns::compile_views(&model::Snapshot::default(), &dns::ZoneConfig::default());
    let running = dns::server::start("127.0.0.1:0".parse().expect("addr"), views, None)
        .await
        .expect("starts");
    let mut c = tokio::net::TcpStream::connect(running.tcp)
        .await
        .expect("connect");
    // Promises 100 bytes and sends 3.
    c.write_all(&[0, 100, 1, 2, 3]).await.expect("write");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(dns::server::TCP_IDLE, c.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the connection stayed open: {closed:?}"
    );
}

/// CoreDNS's `max_concurrent`: with two queries waiting on an upstream that never answers,
/// a third is REFUSED at once and counted; and a TCP connection past the cap is closed on
/// arrival and counted, while the ones open are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_and_tcp_connections_are_bounded() {
    // An upstream that takes queries and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let metrics = std::sync::Arc::new(dns::metrics::Metrics::default());
    let fwd = std::sync::Arc::new(
        dns::forward::Forwarder::new(vec![silent.local_addr().expect("addr")], None)
            .expect("forwarder")
            .with_metrics(metrics.clone())
            .with_max_concurrent(2),
    );
    let zone = dns::compile(&model::Snapshot::default(), &dns::ZoneConfig::default());
    let running = dns::server::start_with(
        "127.0.0.1:0".parse().expect("addr"),
        dns::Views {
            views: Vec::new(),
            default: zone,
            rewrites: Vec::new(),
        },
        Some(fwd),
        dns::server::Ops {
            metrics: Some(metrics.clone()),
            tcp_connections_max: Some(2),
            ..Default::default()
        },
    )
    .await
    .expect("starts");
    let port = running.udp.port();
    let m = metrics.clone();
    tokio::task::spawn_blocking(move || {
        let waiting: Vec<_> = ["a.example.test", "b.example.test"]
            .into_iter()
            .map(|name| std::thread::spawn(move || dig(port, &["+time=5", name, "A"])))
            .collect();
        // Both have reached the upstream: two queries in flight.
        let mut buf = [0u8; 512];
        for _ in 0..2 {
            silent.recv_from(&mut buf).expect("a forwarded query");
        }
        assert_eq!(status(port, "c.example.test", "A").0, "REFUSED");
        assert_eq!(m.forward_max_concurrent_rejects.get(), 1);
        for w in waiting {
            let out = w.join().expect("dig");
            assert!(
                out.contains("status: SERVFAIL"),
                "no upstream answered: {out}"
            );
        }
        // With the slots back, the next one is forwarded again.
        let again = std::thread::spawn(move || dig(port, &["+time=5", "d.example.test", "A"]));
        silent.recv_from(&mut buf).expect("forwarded again");
        assert!(again.join().expect("dig").contains("status: SERVFAIL"));

        // TCP: two connections held open, a third closed on arrival.
        use std::io::Read;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let held: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let mut third = std::net::TcpStream::connect(addr).expect("the kernel accepts");
        third
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(third.read(&mut buf).expect("closed, not timed out"), 0);
        assert_eq!(m.tcp_connections_refused.get(), 1);
        drop(held);
        // A connection ends in its own task: the slot comes back shortly after the close.
        let served = (0..50).any(|_| {
            let ok = dig(
                port,
                &["+tcp", "+short", "dns-version.cluster.local", "TXT"],
            )
            .contains("1.1.0");
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            ok
        });
        assert!(
            served,
            "a TCP query is served again once connections closed"
        );
    })
    .await
    .expect("checks");
}
