//! The forwarder's cache on its failure and expiry paths, against a real Knot DNS with TTLs of
//! one and two seconds: serve-stale (RFC 8767) when the upstream dies or answers SERVFAIL,
//! SERVFAIL beyond the stale window, and prefetch of a name asked in the last tenth of its
//! TTL. Waiting for a TTL to run out is the one sleep these tests cannot avoid; every other
//! wait is for an event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dns::forward::{Forwarder, STALE_TTL};
use dns::metrics::Metrics;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::time::Instant;

use crate::knot::Knot;

/// A server on a free loopback port forwarding to `upstream` with `fwd`'s settings, counting
/// into `metrics`.
async fn serve(fwd: Forwarder, metrics: &Arc<Metrics>) -> (dns::server::Running, u16) {
    let zone = dns::compile(&model::Snapshot::default(), &dns::ZoneConfig::default());
    let running = dns::server::start_with(
        "127.0.0.1:0".parse().expect("addr"),
        dns::Views {
            views: Vec::new(),
            default: zone,
            rewrites: Vec::new(),
        },
        Some(Arc::new(fwd.with_metrics(metrics.clone()))),
        dns::server::Ops {
            metrics: Some(metrics.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("starts");
    let port = running.udp.port();
    (running, port)
}

/// One query over UDP from the test itself (no process to start, so when it leaves is known
/// to the millisecond); the decoded answer.
async fn ask(port: u16, name: &str, rtype: RecordType) -> Message {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    sock.connect(("127.0.0.1", port)).await.expect("connect");
    let mut q = Message::new(0x5eed, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.queries
        .push(Query::query(Name::from_ascii(name).expect("name"), rtype));
    sock.send(&q.to_vec().expect("encodes"))
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no answer to {name} {rtype} in 5 s"))
        .expect("recv");
    Message::from_vec(&buf[..n]).expect("an answer that parses")
}

/// The addresses of an answer's A records.
fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.to_string()),
            _ => None,
        })
        .collect()
}

/// Every TTL of the answer and authority sections.
fn ttls(m: &Message) -> Vec<u32> {
    m.answers
        .iter()
        .chain(m.authorities.iter())
        .map(|r| r.ttl)
        .collect()
}

/// An upstream that answers every query SERVFAIL (a resolver whose authorities are gone), on
/// `addr`, until dropped; counts the queries.
struct Servfail {
    stop: Arc<AtomicBool>,
    asked: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Servfail {
    fn start(addr: SocketAddr) -> Servfail {
        let sock = std::net::UdpSocket::bind(addr).expect("bind the dead upstream's port");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let (stop, asked) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (s, a) = (stop.clone(), asked.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                a.fetch_add(1, Ordering::Relaxed);
                let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
                r.metadata.recursion_available = true;
                r.metadata.response_code = ResponseCode::ServFail;
                r.queries = q.queries;
                let _ = sock.send_to(&r.to_vec().expect("encodes"), peer);
            }
        });
        Servfail {
            stop,
            asked,
            thread: Some(thread),
        }
    }
}

impl Drop for Servfail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// RFC 8767: once the positive and negative TTLs ran out and the upstream is gone, the cached
/// answers still come, with TTL [`STALE_TTL`], counted in
/// `coredns_cache_served_stale_total`; also when the upstream comes back answering SERVFAIL
/// (before: its SERVFAIL was passed on). Beyond the stale window: SERVFAIL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answers_for_the_window_when_the_upstream_dies_then_servfail() {
    let knot = Knot::start(
        "example.test",
        "$ORIGIN example.test.\n$TTL 1\n@ SOA ns hostmaster 1 3600 600 86400 1\n@ NS ns\nns A 127.0.0.1\nwww A 192.0.2.10\n",
        false,
        "www.example.test",
        "192.0.2.10",
    );
    let upstream = SocketAddr::from(([127, 0, 0, 1], knot.port));
    let window = Duration::from_secs(3);
    let metrics = Arc::new(Metrics::default());
    let fwd = Forwarder::new(vec![upstream], None)
        .expect("forwarder")
        .with_stale_max(window);
    let (_running, port) = serve(fwd, &metrics).await;

    let www = ask(port, "www.example.test.", RecordType::A).await;
    assert_eq!(addresses(&www), ["192.0.2.10"], "{www:?}");
    assert_eq!(ttls(&www), [1]);
    let nope = ask(port, "nope.example.test.", RecordType::A).await;
    assert_eq!(nope.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ttls(&nope), [1], "the SOA, for the negative TTL");
    // Both answers were cached before this moment.
    let cached = Instant::now();
    assert_eq!(metrics.cache_misses.get(), 2);

    drop(knot);
    tokio::time::sleep_until(cached + Duration::from_millis(1100)).await;
    // Expired, the upstream gone (its port refuses): stale, marked by their TTL.
    let www = ask(port, "www.example.test.", RecordType::A).await;
    assert_eq!(www.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&www), ["192.0.2.10"], "{www:?}");
    assert_eq!(ttls(&www), [STALE_TTL]);
    let nope = ask(port, "nope.example.test.", RecordType::A).await;
    assert_eq!(nope.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ttls(&nope), [STALE_TTL]);
    assert_eq!(metrics.cache_served_stale.get(), 2);

    // The upstream is back but fails every query: still stale.
    let broken = Servfail::start(upstream);
    let www = ask(port, "www.example.test.", RecordType::A).await;
    assert_eq!(
        broken.asked.load(Ordering::Relaxed),
        1,
        "the upstream was asked"
    );
    assert_eq!(www.metadata.response_code, ResponseCode::NoError, "{www:?}");
    assert_eq!(addresses(&www), ["192.0.2.10"]);
    assert_eq!(ttls(&www), [STALE_TTL]);
    assert_eq!(metrics.cache_served_stale.get(), 3);
    // A name never cached has nothing stale: the upstream's SERVFAIL.
    let new = ask(port, "new.example.test.", RecordType::A).await;
    assert_eq!(new.metadata.response_code, ResponseCode::ServFail);
    drop(broken);

    // Beyond the window (the TTL and then `window`, from before `cached`): SERVFAIL.
    tokio::time::sleep_until(cached + Duration::from_secs(1) + window + Duration::from_millis(100))
        .await;
    for name in ["www.example.test.", "nope.example.test."] {
        let r = ask(port, name, RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail, "{r:?}");
        assert!(r.answers.is_empty() && r.authorities.is_empty(), "{r:?}");
    }
    assert_eq!(
        metrics.cache_served_stale.get(),
        3,
        "nothing more served stale"
    );
}

/// Prefetch: a name asked in the last tenth of its TTL is asked of Knot again at once (Knot's
/// query counter shows it), and after the original TTL ran out the answer comes from the
/// cache, with the address Knot serves since, without a miss. (Before: the listener replayed
/// the answer given near expiry for 90 % of its rounded-up TTL, past the expiry, with the
/// old address.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_asked_near_expiry_is_refreshed_before_it_expires() {
    // Four names alike: the test goes on with the first whose first answer came quickly
    // enough to aim a query at its last tenth (on a loaded machine one may not).
    let zone = |serial: u32, addr: &str| {
        let mut z = format!(
            "$ORIGIN example.test.\n$TTL 2\n@ SOA ns hostmaster {serial} 3600 600 86400 2\n@ NS ns\nns A 127.0.0.1\n"
        );
        for i in 0..4 {
            z.push_str(&format!("www{i} A {addr}\n"));
        }
        z
    };
    let knot = Knot::start(
        "example.test",
        &zone(1, "192.0.2.10"),
        false,
        "www0.example.test",
        "192.0.2.10",
    );
    let metrics = Arc::new(Metrics::default());
    let fwd = Forwarder::new(vec![SocketAddr::from(([127, 0, 0, 1], knot.port))], None)
        .expect("forwarder");
    let (_running, port) = serve(fwd, &metrics).await;

    // The entry is stored between `before` and `after`; its last tenth runs from 1.8 s to 2 s
    // after that, so a query can surely be aimed inside it when `after - before` < 200 ms.
    let mut aimed = None;
    for i in 0..4 {
        let name = format!("www{i}.example.test.");
        let probes = knot.queries("A");
        let before = Instant::now();
        let first = ask(port, &name, RecordType::A).await;
        let after = Instant::now();
        assert_eq!(addresses(&first), ["192.0.2.10"]);
        assert_eq!(ttls(&first), [2]);
        assert_eq!(knot.queries("A"), probes + 1);
        if after - before < Duration::from_millis(150) {
            aimed = Some((name, after, after - before, probes + 1));
            break;
        }
    }
    let (name, after, took, asked) =
        aimed.expect("four first answers each took 150 ms or more: no aiming at 200 ms");
    let misses = metrics.cache_misses.get();
    // Knot serves a new address from now on: only a new query to it can bring it.
    knot.reload(&zone(2, "192.0.2.11"));

    let near_expiry = after + Duration::from_millis(1800) + (Duration::from_millis(200) - took) / 2;
    tokio::time::sleep_until(near_expiry).await;
    let near = ask(port, &name, RecordType::A).await;
    assert_eq!(addresses(&near), ["192.0.2.10"], "still the cached answer");
    assert_eq!(metrics.cache_hits.get(), 1);
    // Knot is asked again, without anyone waiting for it.
    let refreshed = (0..100).any(|_| {
        let n = knot.queries("A");
        if n < asked + 1 {
            std::thread::sleep(Duration::from_millis(20));
        }
        n == asked + 1
    });
    assert!(refreshed, "no prefetch reached Knot: {}", knot.queries("A"));

    // Past the first answer's expiry: the refreshed entry, from the cache.
    tokio::time::sleep_until(after + Duration::from_millis(2100)).await;
    let later = ask(port, &name, RecordType::A).await;
    assert_eq!(addresses(&later), ["192.0.2.11"], "{later:?}");
    assert_eq!(metrics.cache_misses.get(), misses, "no miss");
    assert_eq!(metrics.cache_hits.get(), 2);
    assert_eq!(knot.queries("A"), asked + 1, "Knot was not asked again");
}
