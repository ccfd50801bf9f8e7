//! `trellis sync` end to end: the binary publishes the manifests' records to a real Knot DNS
//! over rfc2136 (TSIG), once and then in its loop as the manifests change.

use std::io::BufRead;
use std::process::{Command, Stdio};

use crate::knot::{Knot, TSIG_NAME, TSIG_SECRET};
use crate::{Proc, get, within};

fn endpoint(name: &str, host: &str, ip: &str) -> String {
    format!(
        "apiVersion: externaldns.k8s.io/v1alpha1\nkind: DNSEndpoint\nmetadata: {{name: {name}, namespace: net}}\n\
         spec: {{endpoints: [{{dnsName: {host}, recordType: A, targets: [{ip}]}}]}}\n"
    )
}

#[test]
fn sync_publishes_to_knot_over_rfc2136_once_and_on_change() {
    let knot = Knot::start(
        "home.test",
        "$ORIGIN home.test.\n$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 60\n@ NS ns\nns A 127.0.0.1\nmanual A 192.0.2.99\n",
        true,
        "manual.home.test",
        "192.0.2.99",
    );
    let t = tempfile::tempdir().expect("tmp");
    std::fs::write(
        t.path().join("a.yaml"),
        endpoint("a", "app.home.test", "10.0.0.1"),
    )
    .expect("write");
    // Someone else's record under a name the manifests also want: left alone.
    std::fs::write(
        t.path().join("m.yaml"),
        endpoint("m", "manual.home.test", "10.0.0.2"),
    )
    .expect("write");
    let port = knot.port.to_string();
    let dir = t.path().display().to_string();
    let args = [
        "sync",
        "-f",
        &dir,
        "--provider",
        "rfc2136",
        "--rfc2136-port",
        &port,
        "--rfc2136-zone",
        "home.test",
        "--rfc2136-tsig-keyname",
        TSIG_NAME,
        "--txt-owner-id",
        "home",
        "--txt-prefix",
        "k8s.",
    ];
    let once = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .arg("--once")
        .env("RFC2136_TSIG_SECRET", TSIG_SECRET)
        .output()
        .expect("trellis sync runs");
    let stderr = String::from_utf8_lossy(&once.stderr);
    assert_eq!(once.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("sync: 2 changes, 0 failed"), "{stderr}");
    assert!(
        stderr.contains("left alone: A manual.home.test exists and is not owned by home"),
        "{stderr}"
    );
    assert_eq!(knot.kdig("app.home.test", "A"), ["10.0.0.1"]);
    assert_eq!(
        knot.kdig("k8s.a-app.home.test", "TXT"),
        ["\"heritage=external-dns,external-dns/owner=home,external-dns/resource=crd/net/a\""]
    );
    assert_eq!(knot.kdig("manual.home.test", "A"), ["192.0.2.99"]);

    // The loop: a manifest change is published without a restart.
    let mut sync = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(args)
            .args(["--interval", "1h", "--min-event-sync-interval", "0s"])
            .args(["--admin", "127.0.0.1:0"])
            .env("RFC2136_TSIG_SECRET", TSIG_SECRET)
            .stderr(Stdio::piped())
            .spawn()
            .expect("trellis sync starts"),
    );
    let mut lines = std::io::BufReader::new(sync.0.stderr.take().expect("stderr")).lines();
    let admin = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("sync: admin endpoint on http://")
                .and_then(|a| a.split_once('/'))
                .map(|(a, _)| a.to_string())
        })
        .expect("the admin endpoint's address");
    let first = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("sync: ") && l.contains("changes"))
        .expect("a first reconcile");
    assert_eq!(first, "sync: 0 changes, 0 failed", "already in sync");
    // Ready once a run reconciled; /status says what the last run did.
    let (code, body) = get(&format!("http://{admin}/ready"));
    assert_eq!(code, "200", "{body}");
    let (code, body) = get(&format!("http://{admin}/status"));
    assert_eq!(code, "200", "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    assert_eq!(status["lastRun"]["provider"], "rfc2136", "{status}");
    assert_eq!(status["lastRun"]["changes"], 0, "{status}");
    assert!(status["lastRun"]["lastError"].is_null(), "{status}");
    let (code, body) = get(&format!("http://{admin}/metrics"));
    assert_eq!(code, "200", "{body}");
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    std::fs::write(
        t.path().join("a.yaml"),
        endpoint("a", "app.home.test", "10.0.0.3"),
    )
    .expect("write");
    std::fs::write(
        t.path().join("b.yaml"),
        endpoint("b", "new.home.test", "10.0.0.4"),
    )
    .expect("write");
    within(20, || {
        (knot.kdig("new.home.test", "A") == ["10.0.0.4"]).then_some(())
    })
    .expect("the new record was published");
    within(20, || {
        (knot.kdig("app.home.test", "A") == ["10.0.0.3"]).then_some(())
    })
    .expect("the changed record was updated");
    // Removing the manifest deletes the record and its ownership record (policy sync).
    std::fs::remove_file(t.path().join("b.yaml")).expect("rm");
    // Knot may apply the record's and its ownership record's deletions one after the other,
    // so wait for both (a CI run once read the TXT between them).
    within(20, || {
        (knot.kdig("new.home.test", "A").is_empty()
            && knot.kdig("k8s.a-new.home.test", "TXT").is_empty())
        .then_some(())
    })
    .expect("the record and its ownership record were deleted");
    assert_eq!(knot.kdig("manual.home.test", "A"), ["192.0.2.99"]);
}

/// ExternalDNS's webhook between two trellis processes: `trellis sync --provider webhook`
/// writes the manifests' records into the zone `trellis dns --dynamic-zone` serves, and dig
/// sees them there with their ownership records, asked again and again (answers replayed)
/// and after a change (the replayed answers dropped with the old zone).
#[test]
fn sync_drives_trellis_dns_over_the_webhook() {
    let (records, served) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    std::fs::write(
        records.path().join("a.yaml"),
        endpoint("a", "app.home.test", "10.0.0.1"),
    )
    .expect("write");
    std::fs::write(
        served.path().join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: apps}\nspec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}\n",
    )
    .expect("write");
    let served_dir = served.path().display().to_string();
    let mut dns = Proc(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args([
                "dns",
                "-f",
                &served_dir,
                "--listen",
                "127.0.0.1:0",
                "--dynamic-zone",
                "home.test",
                "--webhook-listen",
                "127.0.0.1:0",
            ])
            .env("TRELLIS_WEBHOOK_TOKEN", TOKEN)
            .stderr(Stdio::piped())
            .spawn()
            .expect("trellis dns starts"),
    );
    let mut err = std::io::BufReader::new(dns.0.stderr.take().expect("stderr")).lines();
    let mut log = String::new();
    let udp = err
        .by_ref()
        .map_while(Result::ok)
        .inspect(|l| log.push_str(l))
        .find(|l| l.contains("on udp/tcp"))
        .and_then(|l| l.rsplit(':').next().map(str::to_string))
        .unwrap_or_else(|| panic!("trellis dns says where it listens: {log}"));
    let webhook = crate::bound_addr(&mut err, "webhook provider on", &mut log);
    std::thread::spawn(move || for _ in err.map_while(Result::ok) {});
    let dig = |name: &str, ty: &str| {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &udp,
                "+short",
                "+time=2",
                "+tries=1",
                name,
                ty,
            ])
            .output()
            .expect("dig runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let records_dir = records.path().display().to_string();
    let url = format!("http://{webhook}");
    let sync_once = || {
        let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args([
                "sync",
                "-f",
                &records_dir,
                "--provider",
                "webhook",
                "--webhook-provider-url",
                &url,
                "--txt-owner-id",
                "home",
                "--once",
            ])
            .env("TRELLIS_WEBHOOK_TOKEN", TOKEN)
            .output()
            .expect("trellis sync runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        stderr
    };
    let first = sync_once();
    assert!(first.contains("0 failed"), "{first}");
    for _ in 0..3 {
        assert_eq!(dig("app.home.test", "A"), "10.0.0.1");
    }
    assert_eq!(
        dig("a-app.home.test", "TXT"),
        "\"heritage=external-dns,external-dns/owner=home,external-dns/resource=crd/net/a\""
    );
    // The cluster zone is still served beside the dynamic one.
    assert_eq!(dig("web.apps.svc.cluster.local", "A"), "10.96.0.20");
    // A change goes through the webhook into the zone; no stale answer is replayed.
    std::fs::write(
        records.path().join("a.yaml"),
        endpoint("a", "app.home.test", "10.0.0.2"),
    )
    .expect("write");
    sync_once();
    within(10, || {
        (dig("app.home.test", "A") == "10.0.0.2").then_some(())
    })
    .expect("the changed record is served");

    // Writes need the token; a page whose name was rebound to the address is refused.
    let post = |extra: &[&str]| {
        let mut args = vec![
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/external.dns.webhook+json;version=1",
            "--data",
            r#"{"create":[{"dnsName":"evil.home.test","targets":["10.6.6.6"],"recordType":"A"}]}"#,
        ];
        args.extend(extra);
        let records = format!("{url}/records");
        args.push(&records);
        let out = Command::new("curl")
            .args(&args)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(post(&[]), "401");
    assert_eq!(post(&["-H", "Authorization: Bearer wrong"]), "401");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(
        post(&["-H", &bearer, "-H", "Host: rebound.example.com"]),
        "421"
    );
    assert_eq!(dig("evil.home.test", "A"), "");
    // The token and only the token lets a write in.
    assert_eq!(post(&["-H", &bearer]), "204");
    within(10, || {
        (dig("evil.home.test", "A") == "10.6.6.6").then_some(())
    })
    .expect("the authorized write is served");
}

/// The webhook API's bearer token in the test (given through the environment, never a flag).
const TOKEN: &str = "t0ken-for-the-test";
