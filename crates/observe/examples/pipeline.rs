//! The flow pipeline under load: a producer pushing flows at a fixed rate, the buffer, the
//! gRPC API and a following reader, all in one process. Prints flows pushed, read and lost
//! (by where), and the CPU time per flow; fails when a flow went missing without being
//! counted.
//!
//! `cargo run --release -p observe --example pipeline -- RATE SECS [READERS]` (default
//! 100000 5 1; with 0 readers it measures what producing and buffering alone cost).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use observe::proto::flow::{
    CiliumEventType, Flow, FlowType, Http, Ip, Layer4, Layer7, LostEventSource, Tcp, layer4, layer7,
};
use observe::proto::observer::{
    GetFlowsRequest, get_flows_response::ResponseTypes, observer_client::ObserverClient,
};

fn sample(i: u64) -> Flow {
    Flow {
        verdict: 1,
        r#type: FlowType::L7 as i32,
        ip: Some(Ip {
            source: "203.0.113.7".into(),
            destination: "10.0.0.5".into(),
            ip_version: 1,
            encrypted: false,
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: u32::try_from(i % 60_000).unwrap_or(0) + 1024,
                destination_port: 8080,
                flags: None,
            })),
        }),
        event_type: Some(CiliumEventType {
            r#type: 129,
            sub_type: 0,
        }),
        l7: Some(Layer7 {
            r#type: 2,
            latency_ns: 1_000_000,
            record: Some(layer7::Record::Http(Http {
                code: 200,
                method: "GET".into(),
                url: "http://echo.example/".into(),
                protocol: "HTTP/1.1".into(),
                headers: Vec::new(),
            })),
        }),
        summary: "HTTP/1.1 200 1ms (GET http://echo.example/) route apps/web".into(),
        ..Default::default()
    }
}

mod common;
use common::cpu_secs;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let rate: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let readers: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
    let obs = observe::Observer::start(&observe::Config::default());
    let addr = observe::spawn("127.0.0.1:0".parse()?, &obs).await?;
    let mut client = ObserverClient::connect(format!("http://{addr}")).await?;
    let mut stream = client
        .get_flows(GetFlowsRequest {
            follow: true,
            // With no reader wanted, a stream that selects nothing.
            whitelist: if readers == 0 {
                vec![observe::proto::flow::FlowFilter {
                    uuid: vec!["none".into()],
                    ..Default::default()
                }]
            } else {
                Vec::new()
            },
            ..Default::default()
        })
        .await?
        .into_inner();
    // What the reader saw: flows, lost before the buffer, missed in the ring.
    let seen = std::sync::Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(r)) = stream.message().await {
            match r.response_types {
                Some(ResponseTypes::Flow(_)) => counts[0].fetch_add(1, Ordering::Relaxed),
                Some(ResponseTypes::LostEvents(l))
                    if l.source == LostEventSource::HubbleRingBuffer as i32 =>
                {
                    counts[2].fetch_add(l.num_events_lost, Ordering::Relaxed)
                }
                Some(ResponseTypes::LostEvents(l)) => {
                    counts[1].fetch_add(l.num_events_lost, Ordering::Relaxed)
                }
                _ => 0,
            };
        }
    });
    // Let the reader subscribe before the first flow.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let flows = obs.flows();
    let total = rate * secs;
    let cpu0 = cpu_secs();
    let start = Instant::now();
    // Push in 1 ms slices on a blocking thread, as a producer on its own thread would.
    let pushed = tokio::task::spawn_blocking(move || {
        let per_ms = (rate / 1000).max(1);
        let mut i = 0;
        while i < total {
            let slice = Instant::now();
            for _ in 0..per_ms.min(total - i) {
                flows.push(sample(i));
                i += 1;
            }
            if let Some(rest) = Duration::from_millis(1).checked_sub(slice.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        i
    })
    .await?;
    let elapsed = start.elapsed();
    // Let the buffer and the reader catch up, then end the stream.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = cpu_secs() - cpu0;
    let status = obs.status();
    let [got, lost_queue_seen, lost_ring] = [0, 1, 2].map(|i| seen[i].load(Ordering::Relaxed));
    println!(
        "pushed {pushed} flows in {:.2}s ({:.0}/s); buffer took {}; lost before the buffer {} \
         (as LostEvents in the stream: {lost_queue_seen}); reader got {got}, missed {lost_ring}; \
         CPU {:.2}s, {:.2} µs per flow",
        elapsed.as_secs_f64(),
        pushed as f64 / elapsed.as_secs_f64(),
        status.seen_flows,
        status.lost_events,
        cpu,
        cpu * 1e6 / pushed as f64
    );
    // Every flow is either in the buffer or counted as lost.
    assert_eq!(
        status.seen_flows + status.lost_events,
        pushed,
        "silent loss"
    );
    Ok(())
}
