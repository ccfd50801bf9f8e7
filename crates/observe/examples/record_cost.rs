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

/// A request record as the gateway writes one: times, numbers, host and target, addresses,
/// route and backend names.
struct Requests;

fn write(b: &mut Vec<u8>, i: u64, client: SocketAddr, upstream: SocketAddr) {
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Writer(b)
        .u64(started)
        .u64(300_000)
        .u16(200)
        .u16(80)
        .str("GET")
        .str("HTTP/1.1")
        .str("http")
        .str("web.example.com")
        .str(&format!("/items/{}", i % 1000))
        .addr(client)
        .opt_addr(None)
        .opt_str(Some("apps/web"))
        .opt_str(Some("apps/web:80"))
        .opt_addr(Some(upstream));
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
        let mut r = Reader::new(bytes);
        let (_, latency, status) = (r.u64(), r.u64().unwrap_or(0), r.u16().unwrap_or(0));
        let _ = r.u16();
        let method = r.str().unwrap_or_default();
        let version = r.str().unwrap_or_default();
        m.processed("L7", "HTTP", Verdict::Forwarded);
        m.http(method, version, u32::from(status), latency);
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
