//! The revisioned key space both one-host backends keep ([`super::memory`] in a process,
//! [`super::file`] in a file several processes share): etcd's semantics in plain data. Every
//! write takes the next revision; leases expire on `CLOCK_BOOTTIME` (shared by every process
//! of the machine, never stepped by the wall clock), checked at every call, and a space from
//! another boot has no live lease; the last [`HISTORY_MAX`] changes are kept for watches that
//! start in the past, older ones are compacted.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Error, Event, Kv, LeaseId, Listing};

/// Changes kept for watches that start in the past; older ones are compacted.
pub const HISTORY_MAX: usize = 10_000;
/// The bytes of values the history keeps unless the space says less (`history_bytes_max`).
pub const HISTORY_BYTES_DEFAULT: usize = 256 << 20;

/// A lease's expiry and time to live, in `CLOCK_BOOTTIME` milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTimes {
    pub until_ms: u64,
    pub ttl_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Space {
    pub revision: i64,
    pub kvs: BTreeMap<String, Kv>,
    pub leases: BTreeMap<LeaseId, LeaseTimes>,
    pub next_lease: LeaseId,
    /// (revision, events) of the last [`HISTORY_MAX`] writes.
    pub history: VecDeque<(i64, Vec<Event>)>,
    /// The oldest revision still in `history` minus one.
    pub compacted: i64,
    /// The bytes of values in `history`, and at most how many it keeps (0: the default).
    #[serde(default)]
    pub history_bytes: usize,
    #[serde(default)]
    pub history_bytes_max: usize,
    /// The boot the lease times are of.
    #[serde(default)]
    pub boot_id: String,
}

/// The bytes a batch holds (its keys and values).
fn bytes(events: &[Event]) -> usize {
    events
        .iter()
        .map(|e| match e {
            Event::Put(kv) => kv.key.len() + kv.value.len(),
            Event::Delete { key, .. } => key.len(),
        })
        .sum()
}

pub fn event_key(e: &Event) -> &str {
    match e {
        Event::Put(kv) => &kv.key,
        Event::Delete { key, .. } => key,
    }
}

impl Space {
    /// Records `events` as the current revision's changes; returns them for the watchers.
    fn commit(&mut self, events: Vec<Event>) -> Vec<Event> {
        if events.is_empty() {
            return events;
        }
        self.history_bytes += bytes(&events);
        self.history.push_back((self.revision, events.clone()));
        let max = match self.history_bytes_max {
            0 => HISTORY_BYTES_DEFAULT,
            m => m,
        };
        while self.history.len() > HISTORY_MAX || self.history_bytes > max {
            let Some((r, old)) = self.history.pop_front() else {
                break;
            };
            self.history_bytes = self.history_bytes.saturating_sub(bytes(&old));
            self.compacted = r;
        }
        events
    }

    /// Drops the leases that ran out at `now` (all of them when `now` is of another boot) and
    /// their keys; returns the changes, a batch per revision.
    pub fn expire(&mut self, now: &crate::lease::Now) -> Vec<Vec<Event>> {
        let gone: Vec<LeaseId> = if self.boot_id == now.boot_id {
            self.leases
                .iter()
                .filter(|(_, t)| t.until_ms <= now.ms)
                .map(|(id, _)| *id)
                .collect()
        } else {
            self.boot_id = now.boot_id.clone();
            self.leases.keys().copied().collect()
        };
        gone.into_iter()
            .map(|id| self.drop_lease(id))
            .filter(|e| !e.is_empty())
            .collect()
    }

    pub fn drop_lease(&mut self, id: LeaseId) -> Vec<Event> {
        self.leases.remove(&id);
        let keys: Vec<String> = self
            .kvs
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.clone())
            .collect();
        if keys.is_empty() {
            return Vec::new();
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
        self.commit(events)
    }

    pub fn get(&self, key: &str) -> Option<Kv> {
        self.kvs.get(key).cloned()
    }

    pub fn list(&self, prefix: &str) -> Listing {
        Listing {
            kvs: self
                .kvs
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect(),
            revision: self.revision,
        }
    }

    /// Compare-and-swap (0: only if absent); the changes when it wrote.
    pub fn swap(
        &mut self,
        key: &str,
        revision: i64,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<Vec<Event>>, Error> {
        let now = self.kvs.get(key).map_or(0, |kv| kv.mod_revision);
        if now != revision {
            return Ok(None);
        }
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
        Ok(Some(self.commit(vec![Event::Put(kv)])))
    }

    /// Deletes `key` if it was last written at `revision`; the changes when it did.
    pub fn delete(&mut self, key: &str, revision: i64) -> Option<Vec<Event>> {
        if self.kvs.get(key).map(|kv| kv.mod_revision) != Some(revision) {
            return None;
        }
        self.kvs.remove(key);
        self.revision += 1;
        let rev = self.revision;
        Some(self.commit(vec![Event::Delete {
            key: key.to_string(),
            revision: rev,
        }]))
    }

    pub fn grant(&mut self, ttl: Duration, now: &crate::lease::Now) -> LeaseId {
        let ttl_ms = u64::try_from(super::ttl_secs(ttl)).unwrap_or(1) * 1000;
        self.next_lease += 1;
        let id = self.next_lease;
        self.leases.insert(
            id,
            LeaseTimes {
                until_ms: now.ms + ttl_ms,
                ttl_ms,
            },
        );
        id
    }

    pub fn keep_alive(&mut self, lease: LeaseId, now: &crate::lease::Now) -> Option<Duration> {
        self.leases.get_mut(&lease).map(|t| {
            t.until_ms = now.ms + t.ttl_ms;
            Duration::from_millis(t.ttl_ms)
        })
    }

    /// The changes under `prefix` after `after`, or [`Error::Compacted`].
    pub fn since(&self, prefix: &str, after: i64) -> Result<Vec<Vec<Event>>, Error> {
        if after < self.compacted {
            return Err(Error::Compacted(self.compacted));
        }
        Ok(self
            .history
            .iter()
            .filter(|(rev, _)| *rev > after)
            .map(|(_, events)| mine(events, prefix))
            .filter(|m| !m.is_empty())
            .collect())
    }
}

/// The events under `prefix`.
pub fn mine(events: &[Event], prefix: &str) -> Vec<Event> {
    events
        .iter()
        .filter(|e| event_key(e).starts_with(prefix))
        .cloned()
        .collect()
}

/// A value as JSON text when it is UTF-8 (what trellis writes), else as its bytes.
pub mod text_or_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(v) {
            Ok(t) => Value::Text(t.to_string()).serialize(s),
            Err(_) => Value::Bytes(v.to_vec()).serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Text(t) => t.into_bytes(),
            Value::Bytes(b) => b,
        })
    }
}
