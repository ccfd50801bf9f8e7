//! The cluster zone served over UDP and TCP, queried with dig (a real resolver client).

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
    let load = store::load(
        &[t.path().to_path_buf()],
        &store::Options {
            default_namespace: "default".into(),
            ..Default::default()
        },
    );
    assert!(
        !load.snapshot.has_errors(),
        "{:?}",
        load.snapshot.diagnostics
    );
    let zone = dns::compile(&load.snapshot, &dns::ZoneConfig::default());
    let running = dns::server::start("127.0.0.1:0".parse().expect("addr"), zone)
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
