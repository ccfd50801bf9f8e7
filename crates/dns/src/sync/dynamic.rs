//! The `trellis` provider: a record set held in the process and served by `trellis dns`
//! beside the records it compiles from the manifests.
//!
//! It serves the zones it was given (`--dynamic-zone`) in the default zone (clients no view
//! matches, every client when there are no views) and in the views that opt in with
//! `dynamicRecords: true`: a record pushed by a sync client does not reach, say, the public
//! view of a split horizon unless that view asks for it. Changes
//! are checked (name under a zone, a type the server answers: A, AAAA, CNAME, TXT; targets
//! that parse) and applied one by one; a create of a record that exists is refused, as
//! ExternalDNS's in-memory provider does. Every applied change bumps a generation that the
//! server watches to swap in new views.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::provider::{BoxFuture, Error, Failure, Provider};
use super::{Changes, Endpoint};
use crate::views::{Views, endpoint_rdata};

/// Records at most (a bound on what a webhook client can make the process hold).
pub const RECORDS_MAX: usize = 100_000;

/// The in-process record set.
#[derive(Debug)]
pub struct Dynamic {
    /// Lowercase, without trailing dot.
    zones: Vec<String>,
    records: Mutex<BTreeMap<(String, String), Endpoint>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Dynamic {
    pub fn new(zones: &[String]) -> Dynamic {
        Dynamic {
            zones: zones
                .iter()
                .map(|z| z.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            records: Mutex::new(BTreeMap::new()),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// Told the generation after every applied batch.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Endpoint>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the zones and their records to the default zone and to the views that opt in.
    pub fn merge_into(&self, views: &mut Views) {
        let records = self.lock();
        let zones = std::iter::once(&mut views.default).chain(
            views
                .views
                .iter_mut()
                .filter(|v| v.dynamic_records)
                .map(|v| &mut v.zone),
        );
        for zone in zones {
            for z in &self.zones {
                let origin = format!("{z}.");
                if !zone.origins.contains(&origin) {
                    zone.origins.push(origin.clone());
                }
                zone.exists(&origin);
            }
            for e in records.values() {
                for t in &e.targets {
                    if let Some(rd) = endpoint_rdata(&e.record_type, t) {
                        zone.add_record(&format!("{}.", e.name), rd);
                    }
                }
            }
        }
    }

    fn check(&self, e: &Endpoint) -> Result<(), Error> {
        if !self
            .zones
            .iter()
            .any(|z| e.name == *z || e.name.ends_with(&format!(".{z}")))
        {
            return Err(Error::Permanent(format!(
                "{} is in none of the zones {:?}",
                e.name, self.zones
            )));
        }
        if e.targets.is_empty() {
            return Err(Error::Permanent("no targets".into()));
        }
        for t in &e.targets {
            if endpoint_rdata(&e.record_type, t).is_none() {
                return Err(Error::Permanent(format!(
                    "{} {t:?}: not a record the trellis zone serves (A, AAAA, CNAME, TXT)",
                    e.record_type
                )));
            }
        }
        Ok(())
    }

    /// Applies one change to the map.
    fn one(
        &self,
        records: &mut BTreeMap<(String, String), Endpoint>,
        action: &str,
        old: Option<&Endpoint>,
        e: &Endpoint,
    ) -> Result<(), Error> {
        let key = (e.name.clone(), e.record_type.clone());
        match action {
            "delete" => {
                records.remove(&key);
                Ok(())
            }
            _ => {
                self.check(e)?;
                if action == "create" && records.contains_key(&key) {
                    return Err(Error::Permanent(format!(
                        "{} {} already exists",
                        e.record_type, e.name
                    )));
                }
                if let Some(o) = old {
                    records.remove(&(o.name.clone(), o.record_type.clone()));
                }
                if !records.contains_key(&key) && records.len() >= RECORDS_MAX {
                    return Err(Error::Permanent(format!(
                        "the trellis zone holds {RECORDS_MAX} records at most"
                    )));
                }
                records.insert(key, e.clone());
                Ok(())
            }
        }
    }
}

impl Provider for Dynamic {
    fn records(&self) -> BoxFuture<'_, Result<Vec<Endpoint>, Error>> {
        Box::pin(async move { Ok(self.lock().values().cloned().collect()) })
    }

    fn apply<'a>(&'a self, changes: &'a Changes) -> BoxFuture<'a, Vec<Failure>> {
        Box::pin(async move {
            let mut failures = Vec::new();
            {
                let mut records = self.lock();
                let mut run = |action: &'static str, old: Option<&Endpoint>, e: &Endpoint| {
                    if let Err(error) = self.one(&mut records, action, old, e) {
                        failures.push(Failure {
                            action,
                            endpoint: e.clone(),
                            error,
                        });
                    }
                };
                for e in &changes.delete {
                    run("delete", None, e);
                }
                for (old, new) in changes.update_old.iter().zip(&changes.update_new) {
                    run("update", Some(old), new);
                }
                for e in &changes.create {
                    run("create", None, e);
                }
            }
            self.changed.send_modify(|g| *g += 1);
            failures
        })
    }

    fn domain_filter(&self) -> Vec<String> {
        self.zones.clone()
    }
}
