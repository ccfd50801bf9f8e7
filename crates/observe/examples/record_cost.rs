//! What recording one request costs a producer: a record shaped like the gateway's (a few
//! addresses and numbers, the host and target strings, shared route and backend names) goes
//! through [`observe::Flows::record`], the queue, the buffer task and the Hubble metrics, with
//! nobody reading (the flow is never built). Prints the CPU time per record, so the cost of
//! flows can be set against a proxied request's (about 20 µs here).
//!
//! `cargo run --release -p observe --example record_cost -- [RECORDS]` (default 2,000,000).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use observe::metrics::Batch;
use observe::proto::flow::{Flow, Verdict};

struct Request {
    started: SystemTime,
    latency: Duration,
    host: String,
    target: String,
    client: SocketAddr,
    upstream: SocketAddr,
    route: Arc<str>,
    backend: Arc<str>,
    status: u16,
}

impl observe::Record for Request {
    fn time(&self) -> observe::time::Timestamp {
        observe::time::from_system(self.started)
    }
    fn build(&self) -> Flow {
        Flow {
            summary: format!(
                "{} {}{} {} {} {} {}",
                self.client,
                self.host,
                self.target,
                self.upstream,
                self.route,
                self.backend,
                self.status
            ),
            ..Default::default()
        }
    }
    fn count(&self, m: &mut Batch<'_>) {
        m.processed("L7", "HTTP", Verdict::Forwarded);
        let latency = u64::try_from(self.latency.as_nanos()).unwrap_or(u64::MAX);
        m.http("GET", "HTTP/1.1", u32::from(self.status), latency);
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
        let flows = obs.flows();
        let (route, backend): (Arc<str>, Arc<str>) = ("apps/web".into(), "apps/web:80".into());
        let client: SocketAddr = "203.0.113.7:40000".parse().expect("addr");
        let upstream: SocketAddr = "10.69.1.5:8080".parse().expect("addr");
        let c0 = cpu_secs();
        for i in 0..n {
            flows.record(Request {
                started: SystemTime::now(),
                latency: Duration::from_micros(300),
                host: "web.example.com".to_string(),
                target: format!("/items/{}", i % 1000),
                client,
                upstream,
                route: route.clone(),
                backend: backend.clone(),
                status: 200,
            });
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
