//! The state backend of one process: a revisioned map with etcd's semantics (every write
//! takes the next revision; leases expire on the process's monotonic clock, checked at every
//! call; watches see every change after their revision). For tests and for one host, where
//! no other process shares the state.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Backend, BoxFuture, Error, Event, Kv, LeaseId, Listing, Watch};

/// Changes kept for watches that start in the past; older ones are compacted.
pub const HISTORY_MAX: usize = 10_000;
/// Changes a slow watcher may have queued before it is ended (it lists again).
const WATCH_QUEUE: usize = 1024;

#[derive(Default)]
struct Inner {
    revision: i64,
    kvs: BTreeMap<String, Kv>,
    /// Lease → when it expires.
    leases: BTreeMap<LeaseId, (Instant, Duration)>,
    next_lease: LeaseId,
    /// (revision, events) of the last [`HISTORY_MAX`] writes.
    history: VecDeque<(i64, Vec<Event>)>,
    /// The oldest revision still in `history` minus one.
    compacted: i64,
    watchers: Vec<(String, super::WatchSender)>,
}

/// A state backend in this process's memory.
#[derive(Default)]
pub struct Memory {
    inner: Mutex<Inner>,
}

impl Inner {
    /// Applies `events` as one revision and tells the watchers.
    fn commit(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let rev = self.revision;
        self.history.push_back((rev, events.clone()));
        while self.history.len() > HISTORY_MAX {
            if let Some((r, _)) = self.history.pop_front() {
                self.compacted = r;
            }
        }
        self.watchers.retain(|(prefix, tx)| {
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| event_key(e).starts_with(prefix.as_str()))
                .cloned()
                .collect();
            mine.is_empty() || tx.try_send(Ok(mine)).is_ok()
        });
    }

    /// Drops expired leases and their keys.
    fn expire(&mut self) {
        let now = Instant::now();
        let gone: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: LeaseId) {
        self.leases.remove(&id);
        let keys: Vec<String> = self
            .kvs
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        self.revision += 1;
        let rev = self.revision;
        let events = keys
            .into_iter()
            .map(|k| {
                self.kvs.remove(&k);
                Event::Delete {
                    key: k,
                    revision: rev,
                }
            })
            .collect();
        self.commit(events);
    }

    fn put(&mut self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<(), Error> {
        super::check_value(key, value)?;
        let lease = lease.unwrap_or(0);
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(Error::Refused(format!("lease {lease} not found")));
        }
        self.revision += 1;
        let kv = Kv {
            key: key.to_string(),
            value: value.to_vec(),
            mod_revision: self.revision,
            lease,
        };
        self.kvs.insert(key.to_string(), kv.clone());
        self.commit(vec![Event::Put(kv)]);
        Ok(())
    }
}

fn event_key(e: &Event) -> &str {
    match e {
        Event::Put(kv) => &kv.key,
        Event::Delete { key, .. } => key,
    }
}

impl Memory {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.expire();
        f(&mut g)
    }
}

impl Backend for Memory {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Kv>, Error>> {
        let r = self.with(|i| i.kvs.get(key).cloned());
        Box::pin(async move { Ok(r) })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, Error>> {
        let r = self.with(|i| Listing {
            kvs: i
                .kvs
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect(),
            revision: i.revision,
        });
        Box::pin(async move { Ok(r) })
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        self.swap(key, 0, value, lease)
    }

    fn swap<'a>(
        &'a self,
        key: &'a str,
        revision: i64,
        value: &'a [u8],
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let r = self.with(|i| {
            let now = i.kvs.get(key).map_or(0, |kv| kv.mod_revision);
            if now != revision {
                return Ok(false);
            }
            i.put(key, value, lease).map(|()| true)
        });
        Box::pin(async move { r })
    }

    fn delete<'a>(&'a self, key: &'a str, revision: i64) -> BoxFuture<'a, Result<bool, Error>> {
        let r = self.with(|i| {
            if i.kvs.get(key).map(|kv| kv.mod_revision) != Some(revision) {
                return false;
            }
            i.kvs.remove(key);
            i.revision += 1;
            let rev = i.revision;
            i.commit(vec![Event::Delete {
                key: key.to_string(),
                revision: rev,
            }]);
            true
        });
        Box::pin(async move { Ok(r) })
    }

    fn grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, Error>> {
        let ttl = Duration::from_secs(super::ttl_secs(ttl).unsigned_abs());
        let id = self.with(|i| {
            i.next_lease += 1;
            let id = i.next_lease;
            i.leases.insert(id, (Instant::now() + ttl, ttl));
            id
        });
        Box::pin(async move { Ok(id) })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<Option<Duration>, Error>> {
        let r = self.with(|i| {
            i.leases.get_mut(&lease).map(|(until, ttl)| {
                *until = Instant::now() + *ttl;
                *ttl
            })
        });
        Box::pin(async move { Ok(r) })
    }

    fn revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), Error>> {
        self.with(|i| i.drop_lease(lease));
        Box::pin(async move { Ok(()) })
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<Watch, Error>> {
        let r = self.with(|i| {
            if after < i.compacted {
                return Err(Error::Compacted(i.compacted));
            }
            let (tx, rx) = tokio::sync::mpsc::channel(WATCH_QUEUE);
            // What happened after `after`, then what comes.
            for (rev, events) in &i.history {
                if *rev <= after {
                    continue;
                }
                let mine: Vec<Event> = events
                    .iter()
                    .filter(|e| event_key(e).starts_with(prefix))
                    .cloned()
                    .collect();
                if !mine.is_empty() && tx.try_send(Ok(mine)).is_err() {
                    return Err(Error::Compacted(after));
                }
            }
            i.watchers.push((prefix.to_string(), tx));
            Ok(Watch { events: rx })
        });
        Box::pin(async move { r })
    }
}
