//! Arbitrary client bytes through the gateway's own HTTP/1 request parser (`h1::prepare`):
//! parse the head in place, route it with the fixtures' routers, write the upstream request.
//! Half the inputs start with a request line and a Host the routers know, so that the
//! forwarding path is reached, not only the parser.
//!
//! - A forwarded request takes no more bytes than were sent, and the upstream request is one
//!   complete HTTP/1.1 request with the client's method and target and exactly its body,
//!   framed by one Content-Length that says so and never chunked (else a body could be read
//!   upstream as a second request: request smuggling).
//! - No prefix of a forwarded request is forwarded.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use gateway::h1_fuzzing::{Request, request};
use gateway::plan::Router;
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

struct Gateway {
    running: gateway::Running,
    routers: Vec<Arc<Router>>,
    _rt: tokio::runtime::Runtime,
}

/// A gateway started from the fixtures' plans with their listeners taken out (nothing is
/// bound), and the routers of those listeners.
fn gateway() -> &'static Gateway {
    static GW: OnceLock<Gateway> = OnceLock::new();
    GW.get_or_init(|| {
        let root = common::root();
        let fixture = common::load(
            &[root.join("crates/gateway/tests/fixtures/routing.yaml")],
            Default::default(),
        );
        let mut plans = vec![
            gateway::compile(&fixture, "edge", "edge").expect("the fixture compiles"),
            gateway::compile(common::home_lab(), "network", "envoy-internal")
                .expect("the example compiles"),
        ];
        let routers: Vec<Arc<Router>> = plans
            .iter()
            .flat_map(|p| p.ports.values())
            .filter_map(|l| l.router().cloned())
            .collect();
        assert!(routers.len() >= 2, "expected the fixtures' routers");
        let mut plan = plans.remove(0);
        plan.ports.clear();
        plan.udp_ports.clear();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let bind = gateway::Bind {
            // An access log makes the parser keep what the log needs, too.
            access_log: Some(gateway::proxy::AccessLog::to_writer(std::io::sink())),
            ..Default::default()
        };
        let metrics = Arc::new(gateway::metrics::Metrics::default());
        let running = rt
            .block_on(gateway::start(&plan, &bind, metrics))
            .expect("a gateway without listeners starts");
        Gateway {
            running,
            routers,
            _rt: rt,
        }
    })
}

const HOSTS: &[&str] = &[
    "exact.example.com",
    "a.wild.example.com",
    "api.example.com",
    "x.example.com:8080",
    "other.net",
    "echo.home.example",
    "unknown.test",
];

/// The head of `buf` as httparse reads it: method, target, head length.
fn client_head(buf: &[u8]) -> (String, String, usize) {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(n)) = req.parse(buf) else {
        panic!("a forwarded request has a complete head");
    };
    let m = req.method.expect("method").to_string();
    let t = req.path.expect("target").to_string();
    (m, t, n)
}

fn check_upstream(buf: &[u8], len: usize, upstream: &[u8]) {
    assert!(len <= buf.len());
    let (method, target, head_len) = client_head(buf);
    assert!(head_len <= len);
    let body = &buf[head_len..len];
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut up = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(n)) = up.parse(upstream) else {
        panic!("the upstream request has a complete head");
    };
    assert_eq!(up.method, Some(method.as_str()));
    assert_eq!(up.path, Some(target.as_str()));
    assert_eq!(up.version, Some(1));
    assert_eq!(&upstream[n..], body, "the body, whole and alone");
    let named = |name: &str| {
        up.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect::<Vec<_>>()
    };
    assert!(named("transfer-encoding").is_empty());
    let lengths = named("content-length");
    if body.is_empty() {
        assert!(lengths.iter().all(|v| v.trim_ascii() == b"0"));
    } else {
        assert_eq!(
            lengths,
            vec![body.len().to_string().as_bytes()],
            "one Content-Length, the body's"
        );
    }
}

fuzz_target!(|input: (u8, u8, bool, Vec<u8>)| {
    let (which, host, templated, bytes) = input;
    let gw = gateway();
    let router = &gw.routers[usize::from(which) % gw.routers.len()];
    let buf = if templated {
        let host = HOSTS[usize::from(host) % HOSTS.len()];
        let mut b = format!("GET /exact HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
        if which & 0x80 != 0 {
            b = format!("POST /prefix/x?q=a+b HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
        }
        b.extend_from_slice(&bytes);
        b
    } else {
        bytes
    };
    let peer = SocketAddr::from(([192, 0, 2, 7], 40000));
    let Request::Forward { len, upstream } = request(&gw.running, router, peer, &buf) else {
        return;
    };
    check_upstream(&buf, len, &upstream);
    for cut in [len - 1, len / 2, len.saturating_sub(4)] {
        if cut < len {
            let r = request(&gw.running, router, peer, &buf[..cut]);
            assert!(
                !matches!(r, Request::Forward { .. }),
                "a prefix of {cut} bytes"
            );
        }
    }
    // What follows the request (a pipelined one) does not change where it ends. (Its backend
    // is picked again by weight, and may be one that sends it to the general path; header
    // values may hold the time, so the bytes are not compared.)
    let mut more = buf[..len].to_vec();
    more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    if let Request::Forward {
        len: l2,
        upstream: u2,
    } = request(&gw.running, router, peer, &more)
    {
        assert_eq!(l2, len);
        check_upstream(&more, l2, &u2);
    }
});
