//! The flow buffer of one process and the handle producers push into.
//!
//! ```text
//! producers --Flows::push / Flows::record (a lock, a Vec push, never waits)--> queue
//!    --> one task: metrics, then the ring (Config::flows_max, oldest overwritten)
//!    --> readers (GetFlows) copy out by sequence number
//! ```
//!
//! Nothing is lost silently. A full queue counts `OBSERVER_EVENTS_QUEUE`; a reader that falls
//! so far behind that the ring overwrote what it had not read counts `HUBBLE_RING_BUFFER`
//! and is told with a `LostEvent`; a producer that loses events before it can push them (the
//! datapath's BPF ring buffer) reports them with [`Flows::lost`]. All three are in
//! `hubble_lost_events_total`, in ServerStatus, and (as a `LostEvent` entry in the ring)
//! in every GetFlows stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::proto::flow::{Flow, LostEvent, LostEventSource};

/// Flows kept for readers by default (Hubble's default ring size).
pub const FLOWS_MAX_DEFAULT: usize = 4095;
/// Flows waiting between producers and the buffer before new ones are counted as lost.
pub const QUEUED_FLOWS_MAX_DEFAULT: usize = 16 * 1024;
/// The buffer task takes the queue this long after the first flow in it, so that producers'
/// pushes do not each wake it: flows reach readers up to this much later, and a busy proxy
/// pays for a wake-up per interval instead of per request.
pub const INGEST_INTERVAL_MS: u64 = 10;

/// How big the buffer and its queue are, and the name flows carry.
#[derive(Clone, Debug)]
pub struct Config {
    pub flows_max: usize,
    pub queued_flows_max: usize,
    /// Written into every flow's `node_name` that has none.
    pub node_name: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            flows_max: FLOWS_MAX_DEFAULT,
            queued_flows_max: QUEUED_FLOWS_MAX_DEFAULT,
            node_name: String::new(),
        }
    }
}

/// A flow kept in a producer's own terms and built only when a reader asks for it: a busy
/// producer pays for a copy of what it saw (and the metrics), not for the flow. The gateway's
/// requests are recorded this way; a flow nobody reads is never built.
pub trait Record: Send + Sync + 'static {
    /// When it happened.
    fn time(&self) -> prost_types::Timestamp;
    /// The flow; the buffer fills in `node_name` when it is empty.
    fn build(&self) -> Flow;
    /// Counts it in the Hubble metrics as [`Metrics::flow`] counts the built flow (in a
    /// batch of the records and flows taken in together).
    fn count(&self, metrics: &mut crate::metrics::Batch<'_>);
}

/// A [`Record`] in the ring, with its flow once built.
pub struct Recorded {
    record: Box<dyn Record>,
    time: prost_types::Timestamp,
    node_name: Arc<str>,
    flow: OnceLock<Box<Flow>>,
}

impl Recorded {
    /// The flow, built on first use.
    pub fn flow(&self) -> &Flow {
        self.flow.get_or_init(|| {
            let mut f = self.record.build();
            if f.node_name.is_empty() {
                f.node_name = self.node_name.to_string();
            }
            f.time.get_or_insert(self.time);
            Box::new(f)
        })
    }
}

/// One entry of the ring. Flows are boxed so that an entry is small: the ring of a busy
/// producer is thousands of records, mostly never built.
pub enum Event {
    Flow(Box<Flow>),
    Recorded(Recorded),
    Lost(LostEvent, prost_types::Timestamp),
}

impl Event {
    pub fn time(&self) -> Option<&prost_types::Timestamp> {
        match self {
            Event::Flow(f) => f.time.as_ref(),
            Event::Recorded(r) => Some(&r.time),
            Event::Lost(_, t) => Some(t),
        }
    }

    /// The flow of a flow entry (building a recorded one), `None` for a loss.
    pub fn flow(&self) -> Option<&Flow> {
        match self {
            Event::Flow(f) => Some(f),
            Event::Recorded(r) => Some(r.flow()),
            Event::Lost(..) => None,
        }
    }
}

/// A recorded entry clones as the flow it stands for.
impl Clone for Event {
    fn clone(&self) -> Self {
        match self {
            Event::Flow(f) => Event::Flow(f.clone()),
            Event::Recorded(r) => Event::Flow(Box::new(r.flow().clone())),
            Event::Lost(l, t) => Event::Lost(*l, *t),
        }
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Event::Lost(a, s), Event::Lost(b, t)) => a == b && s == t,
            (Event::Lost(..), _) | (_, Event::Lost(..)) => false,
            _ => self.flow() == other.flow(),
        }
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Lost(l, t) => f.debug_tuple("Lost").field(l).field(t).finish(),
            _ => f.debug_tuple("Flow").field(&self.flow()).finish(),
        }
    }
}

/// What producers put into the queue (two words: a record or a built flow, boxed).
enum Pending {
    Flow(Box<Flow>),
    Record(Box<dyn Record>),
}

/// Flows waiting for the buffer task: producers push under a short lock and wake the task
/// only when the queue was empty.
struct Queue {
    pending: Mutex<Vec<Pending>>,
    max: usize,
    wake: tokio::sync::Notify,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        // Every change is one push or one swap, so a poisoned lock is still consistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Ring {
    entries: VecDeque<Arc<Event>>,
    /// Sequence number of `entries[0]`; the next entry gets `first_seq + entries.len()`.
    first_seq: u64,
}

impl Ring {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }
}

/// Counters of one buffer, as ServerStatus reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub num_flows: u64,
    pub max_flows: u64,
    pub seen_flows: u64,
    /// Events lost before reaching the buffer (queue full, kernel ring full).
    pub lost_events: u64,
    pub uptime_ns: u64,
}

/// The buffer and its counters, shared by the ingest task, producers and readers.
pub(crate) struct Hub {
    ring: Mutex<Ring>,
    flows_max: usize,
    seen: AtomicU64,
    /// Lost before the buffer, not yet written into the ring as a `LostEvent`, by source.
    lost_pending: [AtomicU64; 4],
    lost_total: AtomicU64,
    tip: watch::Sender<u64>,
    pub(crate) metrics: Metrics,
    started: Instant,
    pub(crate) node_name: String,
    /// The same, shared by recorded entries.
    node: Arc<str>,
}

impl Hub {
    fn new(config: &Config) -> Hub {
        Hub {
            ring: Mutex::new(Ring {
                entries: VecDeque::with_capacity(config.flows_max),
                first_seq: 0,
            }),
            flows_max: config.flows_max.max(1),
            seen: AtomicU64::new(0),
            lost_pending: Default::default(),
            lost_total: AtomicU64::new(0),
            tip: watch::channel(0).0,
            metrics: Metrics::default(),
            started: Instant::now(),
            node_name: config.node_name.clone(),
            node: Arc::from(config.node_name.as_str()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves a consistent ring (every change is one push
        // or pop), so a poisoned lock is still usable.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts events lost before the buffer; the next ingest writes them into the ring.
    pub(crate) fn lost(&self, source: LostEventSource, n: u64) {
        if n == 0 {
            return;
        }
        let i = usize::try_from(source as i32).unwrap_or(0).min(3);
        self.lost_pending[i].fetch_add(n, Ordering::Relaxed);
        self.lost_total.fetch_add(n, Ordering::Relaxed);
        self.metrics.lost(source, n);
    }

    /// Takes flows into the ring (counting them first), with a `LostEvent` entry ahead of
    /// them for whatever was lost since the last call.
    pub(crate) fn ingest(&self, flows: impl IntoIterator<Item = Flow>) {
        self.ingest_pending(flows.into_iter().map(|f| Pending::Flow(Box::new(f))));
    }

    fn ingest_pending(&self, flows: impl IntoIterator<Item = Pending>) {
        let now = crate::time::now();
        let mut batch: Vec<Arc<Event>> = Vec::new();
        for (i, pending) in self.lost_pending.iter().enumerate() {
            let n = pending.swap(0, Ordering::Relaxed);
            if n > 0 {
                let source = LostEventSource::try_from(i32::try_from(i).unwrap_or(0))
                    .unwrap_or(LostEventSource::UnknownLostEventSource);
                batch.push(Arc::new(Event::Lost(
                    LostEvent {
                        source: source as i32,
                        num_events_lost: n,
                        cpu: None,
                    },
                    now,
                )));
            }
        }
        let mut counts = self.metrics.batch();
        for p in flows {
            batch.push(Arc::new(match p {
                Pending::Flow(mut f) => {
                    if f.time.is_none() {
                        f.time = Some(now);
                    }
                    if f.node_name.is_empty() {
                        f.node_name.clone_from(&self.node_name);
                    }
                    counts.flow(&f);
                    Event::Flow(f)
                }
                Pending::Record(record) => {
                    record.count(&mut counts);
                    Event::Recorded(Recorded {
                        time: record.time(),
                        record,
                        node_name: self.node.clone(),
                        flow: OnceLock::new(),
                    })
                }
            }));
        }
        drop(counts);
        if batch.is_empty() {
            return;
        }
        let flows = batch
            .iter()
            .filter(|e| !matches!(***e, Event::Lost(..)))
            .count();
        let next = {
            let mut ring = self.lock();
            for e in batch {
                if ring.entries.len() == self.flows_max {
                    ring.entries.pop_front();
                    ring.first_seq += 1;
                }
                ring.entries.push_back(e);
            }
            ring.next_seq()
        };
        self.seen.fetch_add(flows as u64, Ordering::Relaxed);
        self.tip.send_replace(next);
    }

    /// Everything in the ring now, and the sequence number after it.
    pub(crate) fn snapshot(&self) -> (Vec<Arc<Event>>, u64) {
        let ring = self.lock();
        (ring.entries.iter().cloned().collect(), ring.next_seq())
    }

    /// Up to `max` entries from `*cursor` on, advancing it; the second value is how many
    /// entries the ring overwrote before they could be read.
    pub(crate) fn read_from(&self, cursor: &mut u64, max: usize) -> (Vec<Arc<Event>>, u64) {
        let ring = self.lock();
        let mut missed = 0;
        if *cursor < ring.first_seq {
            missed = ring.first_seq - *cursor;
            *cursor = ring.first_seq;
        }
        let start = usize::try_from(*cursor - ring.first_seq).unwrap_or(usize::MAX);
        let out: Vec<Arc<Event>> = ring.entries.iter().skip(start).take(max).cloned().collect();
        *cursor += out.len() as u64;
        (out, missed)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.tip.subscribe()
    }

    pub(crate) fn status(&self) -> Status {
        let num = self.lock().entries.len() as u64;
        Status {
            num_flows: num,
            max_flows: self.flows_max as u64,
            seen_flows: self.seen.load(Ordering::Relaxed),
            lost_events: self.lost_total.load(Ordering::Relaxed),
            uptime_ns: u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }
}

/// What producers hold: cheap to clone, [`Flows::push`] never waits.
#[derive(Clone)]
pub struct Flows {
    queue: Arc<Queue>,
    hub: Arc<Hub>,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows").finish_non_exhaustive()
    }
}

impl Flows {
    /// Queues a flow for the buffer; when the queue is full the flow is dropped and counted
    /// (`OBSERVER_EVENTS_QUEUE`). Callable from any thread, inside a runtime or not.
    pub fn push(&self, flow: Flow) {
        self.enqueue(Pending::Flow(Box::new(flow)));
    }

    fn enqueue(&self, p: Pending) {
        let mut q = self.queue.lock();
        if q.len() >= self.queue.max {
            drop(q);
            self.hub.lost(LostEventSource::ObserverEventsQueue, 1);
            return;
        }
        let first = q.is_empty();
        q.push(p);
        drop(q);
        if first {
            self.queue.wake.notify_one();
        }
    }

    /// Queues a record whose flow is built only when read (see [`Record`]); a full queue
    /// counts as for [`Flows::push`].
    pub fn record(&self, record: impl Record) {
        self.enqueue(Pending::Record(Box::new(record)));
    }

    /// Reports events lost before they became flows, e.g. `PERF_EVENT_RING_BUFFER` for
    /// records the kernel could not put into a full BPF ring buffer.
    pub fn lost(&self, source: LostEventSource, n: u64) {
        self.hub.lost(source, n);
    }

    /// The node name flows get when they have none.
    pub fn node_name(&self) -> &str {
        &self.hub.node_name
    }
}

/// The flow buffer of a process: create one, hand [`Observer::flows`] to producers and the
/// observer to [`crate::serve`].
#[derive(Clone)]
pub struct Observer {
    pub(crate) hub: Arc<Hub>,
    flows: Flows,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Observer {
    /// Creates the buffer and starts the task that fills it (needs a tokio runtime).
    pub fn start(config: &Config) -> Observer {
        let hub = Arc::new(Hub::new(config));
        let queue = Arc::new(Queue {
            pending: Mutex::new(Vec::new()),
            max: config.queued_flows_max.max(1),
            wake: tokio::sync::Notify::new(),
        });
        let (h, q) = (hub.clone(), queue.clone());
        tokio::spawn(async move {
            let mut batch = Vec::new();
            loop {
                // A permit is kept when nobody waits, so a wake-up is never missed.
                q.wake.notified().await;
                tokio::time::sleep(std::time::Duration::from_millis(INGEST_INTERVAL_MS)).await;
                std::mem::swap(&mut batch, &mut *q.lock());
                h.ingest_pending(batch.drain(..));
            }
        });
        Observer {
            flows: Flows {
                queue,
                hub: hub.clone(),
            },
            hub,
        }
    }

    /// The producers' handle.
    pub fn flows(&self) -> Flows {
        self.flows.clone()
    }

    /// Registers the Hubble metrics of this buffer.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.hub.metrics.register(registry);
    }

    pub fn status(&self) -> Status {
        self.hub.status()
    }

    /// Puts flows straight into the buffer, bypassing the queue (tests, replays).
    pub fn record(&self, flows: impl IntoIterator<Item = Flow>) {
        self.hub.ingest(flows);
    }

    /// The buffer's entries, oldest first (tests, replays).
    pub fn entries(&self) -> Vec<Event> {
        self.hub
            .snapshot()
            .0
            .into_iter()
            .map(|e| (*e).clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::flow::Verdict;

    fn flow(i: u32) -> Flow {
        Flow {
            verdict: Verdict::Forwarded as i32,
            proxy_port: i,
            ..Default::default()
        }
    }

    #[test]
    fn ring_keeps_the_newest_and_readers_count_what_they_missed() {
        let hub = Hub::new(&Config {
            flows_max: 4,
            ..Config::default()
        });
        let mut cursor = 0;
        hub.ingest((0..3).map(flow));
        let (got, missed) = hub.read_from(&mut cursor, 10);
        assert_eq!((got.len(), missed, cursor), (3, 0, 3));
        // Six more: the ring holds 4, so 9 - 4 = 5 were overwritten, 2 of them unread.
        hub.ingest((3..9).map(flow));
        let (got, missed) = hub.read_from(&mut cursor, 10);
        assert_eq!((got.len(), missed, cursor), (4, 2, 9));
        let ports: Vec<u32> = got
            .iter()
            .map(|e| e.flow().map_or(u32::MAX, |f| f.proxy_port))
            .collect();
        assert_eq!(ports, vec![5, 6, 7, 8]);
        let s = hub.status();
        assert_eq!((s.num_flows, s.max_flows, s.seen_flows), (4, 4, 9));
    }

    /// A record whose builds are counted.
    struct Counted(Arc<AtomicU64>);

    impl Record for Counted {
        fn time(&self) -> prost_types::Timestamp {
            prost_types::Timestamp {
                seconds: 7,
                nanos: 0,
            }
        }
        fn build(&self) -> Flow {
            self.0.fetch_add(1, Ordering::Relaxed);
            flow(42)
        }
        fn count(&self, m: &mut crate::metrics::Batch<'_>) {
            m.processed("L7", "HTTP", Verdict::Forwarded);
        }
    }

    #[tokio::test]
    async fn a_record_is_counted_on_arrival_and_built_once_when_read() {
        let obs = Observer::start(&Config {
            node_name: "n1".into(),
            ..Config::default()
        });
        let builds = Arc::new(AtomicU64::new(0));
        obs.flows().record(Counted(builds.clone()));
        let mut tip = obs.hub.subscribe();
        while *tip.borrow_and_update() < 1 {
            tip.changed().await.expect("hub alive");
        }
        assert_eq!(
            builds.load(Ordering::Relaxed),
            0,
            "not built before a reader"
        );
        assert_eq!(obs.status().seen_flows, 1);
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        obs.register(&mut registry);
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(
                "hubble_flows_processed_total{type=\"L7\",subtype=\"HTTP\",verdict=\"FORWARDED\"} 1"
            ),
            "{text}"
        );
        let (entries, _) = obs.hub.snapshot();
        for _ in 0..3 {
            let f = entries[0].flow().expect("a flow");
            assert_eq!((f.proxy_port, f.node_name.as_str()), (42, "n1"));
            assert_eq!(f.time.map(|t| t.seconds), Some(7));
        }
        assert_eq!(builds.load(Ordering::Relaxed), 1, "built once");
        assert!(matches!(obs.entries()[0], Event::Flow(_)));
    }

    #[tokio::test]
    async fn a_full_queue_counts_every_lost_flow_and_says_so_in_the_ring() {
        let obs = Observer::start(&Config {
            flows_max: 100,
            queued_flows_max: 8,
            node_name: "n1".into(),
        });
        let flows = obs.flows();
        // The ingest task cannot run while this (single-threaded) test holds the thread,
        // so exactly 8 fit and 12 are lost.
        for i in 0..20 {
            flows.push(flow(i));
        }
        flows.lost(LostEventSource::PerfEventRingBuffer, 5);
        assert_eq!(obs.status().lost_events, 17);
        // Let the ingest task run.
        let mut tip = obs.hub.subscribe();
        while *tip.borrow_and_update() < 10 {
            tip.changed().await.expect("hub alive");
        }
        let entries = obs.entries();
        let lost: Vec<(i32, u64)> = entries
            .iter()
            .filter_map(|e| match e {
                Event::Lost(l, _) => Some((l.source, l.num_events_lost)),
                _ => None,
            })
            .collect();
        assert_eq!(
            lost,
            vec![
                (LostEventSource::PerfEventRingBuffer as i32, 5),
                (LostEventSource::ObserverEventsQueue as i32, 12)
            ]
        );
        let s = obs.status();
        assert_eq!((s.seen_flows, s.num_flows), (8, 10));
        let Some(Event::Flow(f)) = entries.last() else {
            panic!("last entry is a flow: {entries:?}")
        };
        assert_eq!(f.node_name, "n1");
        assert!(f.time.is_some());
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        obs.register(&mut registry);
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains("hubble_lost_events_total{source=\"observer_events_queue\"} 12"),
            "{text}"
        );
        assert!(
            text.contains("hubble_lost_events_total{source=\"perf_event_ring_buffer\"} 5"),
            "{text}"
        );
    }
}
