//! What recording one request costs a producer: a record shaped like the gateway's (a few
//! addresses and numbers, the host and target, route and backend names) goes through an
//! [`observe::Recorder`], the queue, the buffer task and the Hubble metrics, with nobody
//! reading (the flow is never built). Prints the CPU time per record, so the cost of flows
//! can be set against a proxied request's (about 10 µs here).
//!
//! `cargo run --release -p observe --example record_cost -- [RECORDS]` (default 2,000,000).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use observe::metrics::Batch;
use observe::proto::flow::{Flow, Verdict};
use observe::wire::{Reader, Writer};

/// A request record laid out as the gateway's (`crates/trellis/src/observe.rs`): a 24-byte
/// head (times, status, port, method and version indices, flags), the addresses, then the
/// texts (scheme, host, target, route, backend).
struct Requests;

fn write(b: &mut Vec<u8>, i: u64, client: SocketAddr, upstream: SocketAddr) {
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut head = [0u8; 24];
    head[..8].copy_from_slice(&started.to_le_bytes());
    head[8..16].copy_from_slice(&300_000u64.to_le_bytes());
    head[16..18].copy_from_slice(&200u16.to_le_bytes());
    head[18..20].copy_from_slice(&80u16.to_le_bytes());
    head[20] = observe::metrics::method_index("GET").unwrap_or(u8::MAX);
    head[21] = observe::metrics::protocol_index("HTTP/1.1").unwrap_or(u8::MAX);
    head[22] = 0b1110;
    b.extend_from_slice(&head);
    let mut w = Writer(b);
    w.addr(client).addr(upstream);
    for t in [
        "http",
        "web.example.com",
        &format!("/items/{}", i % 1000),
        "apps/web",
        "apps/web:80",
    ] {
        w.str(t);
    }
}

impl observe::RecordKind for Requests {
    fn build(&self, bytes: &[u8]) -> Flow {
        let mut r = Reader::new(bytes);
        Flow {
            summary: format!("{:?} {:?}", r.u64(), r.str()),
            ..Default::default()
        }
    }
    fn count(&self, bytes: &[u8], m: &mut Batch<'_>) {
        let Some(head) = bytes.first_chunk::<24>() else {
            return;
        };
        let mut r = Reader::new(&head[8..]);
        let (latency, status) = (r.u64().unwrap_or(0), r.u16().unwrap_or(0));
        m.processed("L7", "HTTP", Verdict::Forwarded);
        m.http_indexed(Some(head[20]), Some(head[21]), u32::from(status), latency);
    }
}

mod common;
use common::cpu_secs;

// The allocator the trellis binary uses, so that the cost is the one a gateway pays.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let obs = observe::Observer::start(&observe::Config::default());
        let recorder = obs.flows().recorder(Requests);
        let client: SocketAddr = "203.0.113.7:40000".parse().expect("addr");
        let upstream: SocketAddr = "10.69.1.5:8080".parse().expect("addr");
        let c0 = cpu_secs();
        for i in 0..n {
            recorder.record(|b| write(b, i, client, upstream));
            // Let the buffer task run as often as a busy proxy would (every 10 ms it takes
            // what came in); 2,000 records is about 10 ms of a proxy at 200k requests/s.
            if i % 2000 == 1999 {
                tokio::time::sleep(Duration::from_millis(observe::hub::INGEST_INTERVAL_MS)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(observe::hub::INGEST_INTERVAL_MS * 3)).await;
        let cpu = cpu_secs() - c0;
        let s = obs.status();
        println!(
            "{n} records: {:.0} ns of CPU each; seen {}, lost {}",
            cpu / n as f64 * 1e9,
            s.seen_flows,
            s.lost_events
        );
        assert_eq!(
            s.seen_flows + s.lost_events,
            n,
            "every record seen or counted lost"
        );
    });
}
