//! The flow buffer of one process and the handles producers push into.
//!
//! ```text
//! producers --Flows::push (a flow) / Recorder::record (a record's bytes)--> queue
//!    (a short lock, a Vec push, never waits)
//!    --> one task: metrics, then the ring (Config::flows_max, oldest overwritten)
//!    --> readers (GetFlows) copy out by sequence number; records become flows there
//! ```
//!
//! A busy producer (the gateway: one record per request) does not build flows: it writes
//! what it saw as a few bytes in its own layout ([`crate::wire`]) and its [`RecordKind`] turns
//! them into a flow when somebody reads it. The ring keeps those bytes back to back in one
//! arena, so recording costs no allocation and the ring's memory is what the records hold
//! (about 100 bytes for a request), not a graph of boxes: a buffer of thousands of records
//! that nobody reads stays out of the producer's caches as far as it can.
//!
//! Nothing is lost silently. A full queue counts `OBSERVER_EVENTS_QUEUE`; a reader that falls
//! so far behind that the ring overwrote what it had not read counts `HUBBLE_RING_BUFFER`
//! and is told with a `LostEvent`; a producer that loses events before it can push them (the
//! datapath's BPF ring buffer) reports them with [`Flows::lost`]. All three are in
//! `hubble_lost_events_total`, in ServerStatus, and (as a `LostEvent` entry in the ring)
//! in every GetFlows stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::watch;

use crate::metrics::{Batch, Metrics};
use crate::proto::flow::{Flow, LostEvent, LostEventSource};

/// Flows kept for readers by default (Hubble's default ring size).
pub const FLOWS_MAX_DEFAULT: usize = 4095;
/// Flows waiting between producers and the buffer before new ones are counted as lost.
pub const QUEUED_FLOWS_MAX_DEFAULT: usize = 16 * 1024;
/// Bytes of records waiting for the buffer before new ones are counted as lost (about 50,000
/// gateway records: 10 ms of 5 million requests/s).
pub const QUEUED_RECORD_BYTES_MAX: usize = 8 * 1024 * 1024;
/// A record longer than this is counted as lost (a gateway record holds at most the request
/// head's texts, 64 KiB).
pub const RECORD_BYTES_MAX: usize = 128 * 1024;
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

/// A producer's record layout: what it wrote with a [`Recorder`] becomes a flow here, when a
/// reader asks for it, and is counted here when it enters the buffer.
pub trait RecordKind: Send + Sync + 'static {
    /// The flow of a record (with its time); the buffer fills in `node_name` when empty.
    /// Bytes this kind cannot read give a flow that says so, not a panic.
    fn build(&self, bytes: &[u8]) -> Flow;
    /// Counts the record in the Hubble metrics as [`Batch::flow`] counts the built flow.
    fn count(&self, bytes: &[u8], metrics: &mut Batch<'_>);
}

/// What a reader gets: a flow, or how many were lost (and when that was noticed).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Flow(Arc<Flow>),
    Lost(LostEvent, prost_types::Timestamp),
}

impl Event {
    pub fn time(&self) -> Option<&prost_types::Timestamp> {
        match self {
            Event::Flow(f) => f.time.as_ref(),
            Event::Lost(_, t) => Some(t),
        }
    }

    /// The flow of a flow entry, `None` for a loss.
    pub fn flow(&self) -> Option<&Flow> {
        match self {
            Event::Flow(f) => Some(f),
            Event::Lost(..) => None,
        }
    }
}

/// What producers put into the queue; a record's bytes are in [`Pending::bytes`] (from `at`,
/// `len` of them: bytes a record writer left behind when it panicked belong to nobody).
enum Item {
    Flow(Box<Flow>),
    Record { kind: u32, at: u32, len: u32 },
}

#[derive(Default)]
struct Pending {
    items: Vec<Item>,
    bytes: Vec<u8>,
}

/// Flows waiting for the buffer task: producers push under a short lock and wake the task
/// only when the queue was empty.
struct Queue {
    pending: Mutex<Pending>,
    max: usize,
    wake: tokio::sync::Notify,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Every change is a push of whole items, so a poisoned lock is still consistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One entry of the ring.
enum Entry {
    Flow(Arc<Flow>),
    /// A record not read yet; its bytes are in the arena.
    Record(u32),
    Lost(Box<(LostEvent, prost_types::Timestamp)>),
}

struct Slot {
    entry: Entry,
    /// Where the record's bytes start in the arena (counted from the arena's first byte
    /// ever) and how many there are; a record built into a flow keeps them until it leaves.
    start: u64,
    len: u32,
}

struct Ring {
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`; the next entry gets `first_seq + slots.len()`.
    first_seq: u64,
    /// The records' bytes, back to back in slot order.
    arena: VecDeque<u8>,
    /// The position of `arena[0]` in the arena's history.
    arena_first: u64,
}

impl Ring {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.slots.len() as u64
    }

    /// Appends entries whose records' bytes are in `bytes` (one queue's worth, records at
    /// the ranges their entries name), then drops the oldest entries beyond `max` and their
    /// bytes.
    fn append(
        &mut self,
        entries: impl IntoIterator<Item = (Entry, std::ops::Range<usize>)>,
        bytes: &[u8],
        max: usize,
    ) {
        let base = self.arena_first + self.arena.len() as u64;
        self.arena.extend(bytes);
        // Entries without bytes sit where the previous record ended (starts never go back).
        let mut end = 0;
        for (entry, range) in entries {
            let start = if range.is_empty() { end } else { range.start };
            end = end.max(range.end);
            self.slots.push_back(Slot {
                entry,
                start: base + start as u64,
                len: u32::try_from(range.len()).unwrap_or(u32::MAX),
            });
        }
        let over = self.slots.len().saturating_sub(max);
        if over > 0 {
            self.slots.drain(..over);
            self.first_seq += over as u64;
        }
        let first = self
            .slots
            .front()
            .map_or(base + bytes.len() as u64, |s| s.start);
        let gone = usize::try_from(first.saturating_sub(self.arena_first)).unwrap_or(usize::MAX);
        self.arena.drain(..gone.min(self.arena.len()));
        self.arena_first = first.max(self.arena_first);
    }

    /// Appends the bytes of `slot` to `out` (nothing when they are not all in the arena).
    fn copy_bytes(&self, slot: &Slot, out: &mut Vec<u8>) {
        let Some(from) = slot
            .start
            .checked_sub(self.arena_first)
            .and_then(|f| usize::try_from(f).ok())
        else {
            return;
        };
        let to = from.saturating_add(usize::try_from(slot.len).unwrap_or(usize::MAX));
        if to > self.arena.len() {
            return;
        }
        out.extend(self.arena.range(from..to));
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
    kinds: RwLock<Vec<Arc<dyn RecordKind>>>,
    seen: AtomicU64,
    /// Lost before the buffer, not yet written into the ring as a `LostEvent`, by source.
    lost_pending: [AtomicU64; 4],
    lost_total: AtomicU64,
    tip: watch::Sender<u64>,
    pub(crate) metrics: Metrics,
    started: Instant,
    pub(crate) node_name: String,
}

/// The kind a record names.
fn kind_of(kinds: &[Arc<dyn RecordKind>], kind: u32) -> Option<&Arc<dyn RecordKind>> {
    kinds.get(usize::try_from(kind).ok()?)
}

/// A read entry before its record is built.
enum Raw {
    Ready(Event),
    Record {
        seq: u64,
        kind: u32,
        bytes: std::ops::Range<usize>,
    },
}

impl Hub {
    fn new(config: &Config) -> Hub {
        let flows_max = config.flows_max.max(1);
        Hub {
            ring: Mutex::new(Ring {
                slots: VecDeque::with_capacity(flows_max),
                first_seq: 0,
                arena: VecDeque::new(),
                arena_first: 0,
            }),
            flows_max,
            kinds: RwLock::new(Vec::new()),
            seen: AtomicU64::new(0),
            lost_pending: Default::default(),
            lost_total: AtomicU64::new(0),
            tip: watch::channel(0).0,
            metrics: Metrics::default(),
            started: Instant::now(),
            node_name: config.node_name.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Nothing under this lock is expected to panic; if something did half way through an
        // append, readers still cannot panic (`copy_bytes` checks every range), so a poisoned
        // lock is used as it is.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kinds(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<dyn RecordKind>>> {
        self.kinds.read().unwrap_or_else(|e| e.into_inner())
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
        let mut p = Pending::default();
        p.items
            .extend(flows.into_iter().map(|f| Item::Flow(Box::new(f))));
        self.ingest_pending(&mut p);
    }

    /// Takes what producers queued into the ring and empties `p`.
    fn ingest_pending(&self, p: &mut Pending) {
        let now = crate::time::now();
        let mut lost = Vec::new();
        for (i, pending) in self.lost_pending.iter().enumerate() {
            let n = pending.swap(0, Ordering::Relaxed);
            if n > 0 {
                let source = LostEventSource::try_from(i32::try_from(i).unwrap_or(0))
                    .unwrap_or(LostEventSource::UnknownLostEventSource);
                let event = LostEvent {
                    source: source as i32,
                    num_events_lost: n,
                    cpu: None,
                };
                lost.push(Entry::Lost(Box::new((event, now))));
            }
        }
        // Count first (off the ring's lock), completing the flows on the way.
        let mut entries = Vec::with_capacity(p.items.len());
        {
            let kinds = self.kinds();
            let mut counts = self.metrics.batch();
            for item in p.items.drain(..) {
                entries.push(match item {
                    Item::Flow(mut f) => {
                        if f.time.is_none() {
                            f.time = Some(now);
                        }
                        if f.node_name.is_empty() {
                            f.node_name.clone_from(&self.node_name);
                        }
                        counts.flow(&f);
                        (Entry::Flow(Arc::new(*f)), 0..0)
                    }
                    Item::Record { kind, at, len } => {
                        let at = usize::try_from(at).unwrap_or(usize::MAX);
                        let range = at..at.saturating_add(usize::try_from(len).unwrap_or(0));
                        match p.bytes.get(range.clone()) {
                            Some(bytes) => {
                                if let Some(k) = kind_of(&kinds, kind) {
                                    k.count(bytes, &mut counts);
                                }
                                (Entry::Record(kind), range)
                            }
                            None => (Entry::Record(kind), 0..0),
                        }
                    }
                });
            }
        }
        if lost.is_empty() && entries.is_empty() {
            p.bytes.clear();
            return;
        }
        let flows = entries.len() as u64;
        let next = {
            let mut ring = self.lock();
            let lost = lost.into_iter().map(|e| (e, 0..0));
            ring.append(lost.chain(entries), &p.bytes, self.flows_max);
            ring.next_seq()
        };
        p.bytes.clear();
        self.seen.fetch_add(flows, Ordering::Relaxed);
        self.tip.send_replace(next);
    }

    /// Everything in the ring now, and the sequence number after it.
    pub(crate) fn snapshot(&self) -> (Vec<Event>, u64) {
        let mut cursor = 0;
        let (events, _) = self.read_from(&mut cursor, usize::MAX);
        (events, cursor)
    }

    /// Up to `max` entries from `*cursor` on, advancing it; the second value is how many
    /// entries the ring overwrote before they could be read. Records are built into flows
    /// outside the ring's lock, and kept built for the next reader.
    pub(crate) fn read_from(&self, cursor: &mut u64, max: usize) -> (Vec<Event>, u64) {
        let mut raw = Vec::new();
        let mut bytes = Vec::new();
        let mut missed = 0;
        {
            let ring = self.lock();
            if *cursor < ring.first_seq {
                missed = ring.first_seq - *cursor;
                *cursor = ring.first_seq;
            }
            let start = usize::try_from(*cursor - ring.first_seq).unwrap_or(usize::MAX);
            for (i, slot) in ring.slots.iter().enumerate().skip(start).take(max) {
                raw.push(match &slot.entry {
                    Entry::Flow(f) => Raw::Ready(Event::Flow(f.clone())),
                    Entry::Lost(l) => Raw::Ready(Event::Lost(l.0, l.1)),
                    Entry::Record(kind) => {
                        let from = bytes.len();
                        ring.copy_bytes(slot, &mut bytes);
                        Raw::Record {
                            seq: ring.first_seq + i as u64,
                            kind: *kind,
                            bytes: from..bytes.len(),
                        }
                    }
                });
            }
            *cursor += raw.len() as u64;
        }
        let mut built = Vec::new();
        let events = {
            let kinds = self.kinds();
            raw.into_iter()
                .map(|r| match r {
                    Raw::Ready(e) => e,
                    Raw::Record {
                        seq,
                        kind,
                        bytes: range,
                    } => {
                        let mut f = kind_of(&kinds, kind)
                            .map(|k| k.build(bytes.get(range).unwrap_or_default()))
                            .unwrap_or_default();
                        if f.node_name.is_empty() {
                            f.node_name.clone_from(&self.node_name);
                        }
                        let f = Arc::new(f);
                        built.push((seq, f.clone()));
                        Event::Flow(f)
                    }
                })
                .collect()
        };
        if !built.is_empty() {
            let mut ring = self.lock();
            for (seq, f) in built {
                let Some(i) = seq
                    .checked_sub(ring.first_seq)
                    .and_then(|i| usize::try_from(i).ok())
                else {
                    continue;
                };
                if let Some(slot) = ring.slots.get_mut(i)
                    && matches!(slot.entry, Entry::Record(_))
                {
                    slot.entry = Entry::Flow(f);
                }
            }
        }
        (events, missed)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.tip.subscribe()
    }

    pub(crate) fn status(&self) -> Status {
        let num = self.lock().slots.len() as u64;
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
        let mut q = self.queue.lock();
        if q.items.len() >= self.queue.max {
            drop(q);
            self.hub.lost(LostEventSource::ObserverEventsQueue, 1);
            return;
        }
        let first = q.items.is_empty();
        q.items.push(Item::Flow(Box::new(flow)));
        drop(q);
        if first {
            self.queue.wake.notify_one();
        }
    }

    /// A producer's handle for records of `kind` (see [`RecordKind`]): one per producer,
    /// made once (every call registers a kind for the buffer's life).
    pub fn recorder(&self, kind: impl RecordKind) -> Recorder {
        let mut kinds = self.hub.kinds.write().unwrap_or_else(|e| e.into_inner());
        kinds.push(Arc::new(kind));
        Recorder {
            flows: self.clone(),
            kind: u32::try_from(kinds.len() - 1).unwrap_or(u32::MAX),
        }
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

/// Records of one [`RecordKind`] into a buffer: cheap to clone, never waits.
#[derive(Clone, Debug)]
pub struct Recorder {
    flows: Flows,
    kind: u32,
}

impl Recorder {
    /// Queues one record: `write` appends its bytes (see [`crate::wire`]) to the queue, under
    /// its lock, so it should do nothing else. A full queue, or a record longer than
    /// [`RECORD_BYTES_MAX`], counts the record as lost (`OBSERVER_EVENTS_QUEUE`).
    pub fn record(&self, write: impl FnOnce(&mut Vec<u8>)) {
        let queue = &self.flows.queue;
        let mut q = queue.lock();
        if q.items.len() >= queue.max {
            drop(q);
            self.flows.hub.lost(LostEventSource::ObserverEventsQueue, 1);
            return;
        }
        let first = q.items.is_empty();
        let start = q.bytes.len();
        write(&mut q.bytes);
        let len = q.bytes.len() - start;
        let (Ok(at), Ok(len32), true) = (
            u32::try_from(start),
            u32::try_from(len),
            len <= RECORD_BYTES_MAX && q.bytes.len() <= QUEUED_RECORD_BYTES_MAX,
        ) else {
            // Too long, or beyond what the queue holds between two ingests: counted.
            q.bytes.truncate(start);
            drop(q);
            self.flows.hub.lost(LostEventSource::ObserverEventsQueue, 1);
            return;
        };
        q.items.push(Item::Record {
            kind: self.kind,
            at,
            len: len32,
        });
        drop(q);
        if first {
            queue.wake.notify_one();
        }
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
            pending: Mutex::new(Pending::default()),
            max: config.queued_flows_max.max(1),
            wake: tokio::sync::Notify::new(),
        });
        let (h, q) = (hub.clone(), queue.clone());
        tokio::spawn(async move {
            let mut batch = Pending::default();
            loop {
                // A permit is kept when nobody waits, so a wake-up is never missed.
                q.wake.notified().await;
                tokio::time::sleep(std::time::Duration::from_millis(INGEST_INTERVAL_MS)).await;
                std::mem::swap(&mut batch, &mut *q.lock());
                h.ingest_pending(&mut batch);
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
        self.hub.snapshot().0
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

    /// Records of one number; builds are counted.
    struct Numbered(Arc<AtomicU64>);

    impl RecordKind for Numbered {
        fn build(&self, bytes: &[u8]) -> Flow {
            self.0.fetch_add(1, Ordering::Relaxed);
            let mut r = crate::wire::Reader::new(bytes);
            let mut f = flow(r.u32().unwrap_or(u32::MAX));
            f.time = Some(prost_types::Timestamp {
                seconds: 7,
                nanos: 0,
            });
            f
        }
        fn count(&self, _: &[u8], m: &mut crate::metrics::Batch<'_>) {
            m.processed("L7", "HTTP", Verdict::Forwarded);
        }
    }

    fn numbered(obs: &Observer) -> (Recorder, Arc<AtomicU64>) {
        let builds = Arc::new(AtomicU64::new(0));
        (obs.flows().recorder(Numbered(builds.clone())), builds)
    }

    async fn until_seq(obs: &Observer, seq: u64) {
        let mut tip = obs.hub.subscribe();
        while *tip.borrow_and_update() < seq {
            tip.changed().await.expect("hub alive");
        }
    }

    #[tokio::test]
    async fn a_record_is_counted_on_arrival_and_built_once_when_read() {
        let obs = Observer::start(&Config {
            node_name: "n1".into(),
            ..Config::default()
        });
        let (recorder, builds) = numbered(&obs);
        recorder.record(|b| {
            crate::wire::Writer(b).u32(42);
        });
        until_seq(&obs, 1).await;
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
        for _ in 0..3 {
            let entries = obs.entries();
            let f = entries[0].flow().expect("a flow");
            assert_eq!((f.proxy_port, f.node_name.as_str()), (42, "n1"));
            assert_eq!(f.time.map(|t| t.seconds), Some(7));
        }
        assert_eq!(builds.load(Ordering::Relaxed), 1, "built once");
    }

    #[tokio::test]
    async fn records_and_flows_keep_their_order_and_the_arena_follows_the_ring() {
        let obs = Observer::start(&Config {
            flows_max: 5,
            ..Config::default()
        });
        let (recorder, _) = numbered(&obs);
        let flows = obs.flows();
        // Records of different lengths between flows, more than the ring holds, over
        // several ingests: the bytes of each record must stay its own.
        let mut n = 0;
        for round in 0..4 {
            for i in 0..7u32 {
                let v = round * 100 + i;
                if i % 3 == 0 {
                    flows.push(flow(v));
                } else {
                    recorder.record(|b| {
                        crate::wire::Writer(b)
                            .u32(v)
                            .str(&"x".repeat(i as usize * 13));
                    });
                }
                n += 1;
            }
            until_seq(&obs, n).await;
            let ports: Vec<u32> = obs
                .entries()
                .iter()
                .map(|e| e.flow().map_or(u32::MAX, |f| f.proxy_port))
                .collect();
            let want: Vec<u32> = (2..7).map(|i| round * 100 + i).collect();
            assert_eq!(ports, want, "round {round}");
        }
        let ring = obs.hub.lock();
        let held: u64 = ring.slots.iter().map(|s| u64::from(s.len)).sum();
        assert_eq!(
            held,
            ring.arena.len() as u64,
            "the arena holds the ring's bytes only"
        );
    }

    #[tokio::test]
    async fn a_record_too_long_is_counted_lost_and_the_next_one_is_whole() {
        let obs = Observer::start(&Config::default());
        let (recorder, _) = numbered(&obs);
        recorder.record(|b| b.resize(RECORD_BYTES_MAX + 1, 7));
        recorder.record(|b| {
            crate::wire::Writer(b).u32(9);
        });
        assert_eq!(obs.status().lost_events, 1);
        until_seq(&obs, 2).await;
        let entries = obs.entries();
        assert!(matches!(entries[0], Event::Lost(..)), "{entries:?}");
        assert_eq!(entries[1].flow().map(|f| f.proxy_port), Some(9));
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
        until_seq(&obs, 10).await;
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
