//! Probing on a schedule: each endpoint every `interval`, the first probe at a random point
//! of its first interval and every later one moved by up to ±[`JITTER_FRACTION`] of it, so
//! endpoints declared together do not probe together; at most `concurrency` probes at once
//! (the rest wait for a slot, and the waits are counted).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;

use crate::endpoints::Endpoint;
use crate::probe::{Probed, Tls, probe};

/// Probes in flight at once, by default (Gatus's default is 3; trellis probes more targets).
pub const CONCURRENCY_DEFAULT: usize = 16;
/// The most probes in flight at once, whatever is asked.
pub const CONCURRENCY_MAX: usize = 1024;
/// How far a probe may move from its interval.
pub const JITTER_FRACTION: f64 = 0.1;

/// Probes every endpoint once, at most `concurrency` at a time; results in endpoint order.
pub async fn once(endpoints: &[Endpoint], tls: &Tls, concurrency: usize) -> Vec<Probed> {
    let slots = Arc::new(Semaphore::new(concurrency.clamp(1, CONCURRENCY_MAX)));
    let mut tasks = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let (e, tls, slots) = (e.clone(), tls.clone(), slots.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = slots
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            probe(&e, &tls).await
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("a probe does not panic"));
    }
    out
}

/// What a running schedule hands each result to.
pub type OnResult = Arc<dyn Fn(&Endpoint, &Probed) + Send + Sync>;

/// A running schedule: one task per endpoint, sharing the probe slots. [`Schedule::set`]
/// changes the endpoints and leaves the unchanged ones probing on their own rhythm (a reload
/// does not restart them); dropping the schedule stops probing.
pub struct Schedule {
    tasks: HashMap<String, (Endpoint, tokio::task::JoinHandle<()>)>,
    slots: Arc<Semaphore>,
    tls: Tls,
    on_result: OnResult,
    /// Probes that had to wait for a slot.
    pub waited: Arc<AtomicU64>,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedule")
            .field("endpoints", &self.tasks.len())
            .finish()
    }
}

impl Drop for Schedule {
    fn drop(&mut self) {
        for (_, t) in self.tasks.values() {
            t.abort();
        }
    }
}

impl Schedule {
    /// A schedule with no endpoints yet; at most `concurrency` probes run at once.
    pub fn new(tls: Tls, concurrency: usize, on_result: OnResult) -> Schedule {
        Schedule {
            tasks: HashMap::new(),
            slots: Arc::new(Semaphore::new(concurrency.clamp(1, CONCURRENCY_MAX))),
            tls,
            on_result,
            waited: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Probes exactly `endpoints` from now on: an endpoint whose definition is unchanged keeps
    /// its task; a new or changed one starts; a changed or gone one stops. Returns the
    /// endpoints stopped (their results are stale).
    pub fn set(&mut self, endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
        let mut stopped = Vec::new();
        let mut next = HashMap::with_capacity(endpoints.len());
        for e in endpoints {
            let key = e.key();
            match self.tasks.remove(&key) {
                Some((old, task)) if old == e => {
                    next.insert(key, (old, task));
                }
                old => {
                    if let Some((old, task)) = old {
                        task.abort();
                        stopped.push(old);
                    }
                    let task = self.start(e.clone());
                    next.insert(key, (e, task));
                }
            }
        }
        for (_, (old, task)) in self.tasks.drain() {
            task.abort();
            stopped.push(old);
        }
        self.tasks = next;
        stopped
    }

    /// How many endpoints are being probed.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn start(&self, e: Endpoint) -> tokio::task::JoinHandle<()> {
        let (tls, slots, waited, on_result) = (
            self.tls.clone(),
            self.slots.clone(),
            self.waited.clone(),
            self.on_result.clone(),
        );
        let mut rng = Rng::seeded(&e.key());
        tokio::spawn(async move {
            tokio::time::sleep(e.interval.mul_f64(rng.unit())).await;
            loop {
                let slot = match slots.clone().try_acquire_owned() {
                    Ok(s) => s,
                    Err(_) => {
                        waited.fetch_add(1, Ordering::Relaxed);
                        slots
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("the semaphore is never closed")
                    }
                };
                let p = probe(&e, &tls).await;
                drop(slot);
                on_result(&e, &p);
                let jitter = (rng.unit() * 2.0 - 1.0) * JITTER_FRACTION;
                tokio::time::sleep(e.interval.mul_f64(1.0 + jitter)).await;
            }
        })
    }
}

/// splitmix64: enough randomness to spread probes, seeded per endpoint and per run.
struct Rng(u64);

impl Rng {
    fn seeded(key: &str) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng(h ^ now)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_stays_in_range() {
        let mut r = Rng::seeded("x");
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
