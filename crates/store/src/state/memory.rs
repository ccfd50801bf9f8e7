//! The state backend of one process: the key space of [`super::space`] behind a mutex, with
//! watchers told of every change as it is made. For tests and for one host, where no other
//! process shares the state ([`super::file`] shares it between processes).

use std::sync::Mutex;
use std::time::Duration;

pub use super::space::HISTORY_MAX;
use super::space::{Space, mine};
use super::{Backend, BoxFuture, Error, Event, Kv, LeaseId, Listing, Watch};

/// Changes a slow watcher may have queued before it is ended (it lists again).
pub const WATCH_QUEUE: usize = 1024;

#[derive(Default)]
struct Inner {
    space: Space,
    watchers: Vec<(String, super::WatchSender)>,
}

impl Inner {
    /// Tells the watchers of `events` (one revision's, or several expiries').
    fn tell(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        self.watchers.retain(|(prefix, tx)| {
            let m = mine(events, prefix);
            m.is_empty() || tx.try_send(Ok(m)).is_ok()
        });
    }
}

/// A state backend in this process's memory.
#[derive(Default)]
pub struct Memory {
    inner: Mutex<Inner>,
}

impl Memory {
    fn with<T>(&self, f: impl FnOnce(&mut Inner, &crate::lease::Now) -> T) -> T {
        let now = crate::lease::boot_clock();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for batch in g.space.expire(&now) {
            g.tell(&batch);
        }
        f(&mut g, &now)
    }
}

impl Backend for Memory {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Kv>, Error>> {
        let r = self.with(|i, _| i.space.get(key));
        Box::pin(async move { Ok(r) })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, Error>> {
        let r = self.with(|i, _| i.space.list(prefix));
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
        let r = self.with(|i, _| {
            let wrote = i.space.swap(key, revision, value, lease)?;
            if let Some(events) = &wrote {
                i.tell(events);
            }
            Ok(wrote.is_some())
        });
        Box::pin(async move { r })
    }

    fn delete<'a>(&'a self, key: &'a str, revision: i64) -> BoxFuture<'a, Result<bool, Error>> {
        let r = self.with(|i, _| {
            let gone = i.space.delete(key, revision);
            if let Some(events) = &gone {
                i.tell(events);
            }
            gone.is_some()
        });
        Box::pin(async move { Ok(r) })
    }

    fn grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, Error>> {
        let id = self.with(|i, now| i.space.grant(ttl, now));
        Box::pin(async move { Ok(id) })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<Option<Duration>, Error>> {
        let r = self.with(|i, now| i.space.keep_alive(lease, now));
        Box::pin(async move { Ok(r) })
    }

    fn revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), Error>> {
        self.with(|i, _| {
            let events = i.space.drop_lease(lease);
            i.tell(&events);
        });
        Box::pin(async move { Ok(()) })
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<Watch, Error>> {
        let r = self.with(|i, _| {
            let past = i.space.since(prefix, after)?;
            let (tx, rx) = tokio::sync::mpsc::channel(WATCH_QUEUE);
            // What happened after `after`, then what comes.
            for batch in past {
                if tx.try_send(Ok(batch)).is_err() {
                    return Err(Error::Compacted(after));
                }
            }
            i.watchers.push((prefix.to_string(), tx));
            Ok(Watch { events: rx })
        });
        Box::pin(async move { r })
    }
}
