//! Watches a manifest tree and re-reads it on change.
//!
//! Every change produces an [`Update`]: `Applied` with the new load when it reads cleanly,
//! or `Rejected` with the errors when it does not, in which case the last good load stays
//! current. Components hold [`Watch::current`] and swap plans when an `Applied` arrives.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::snapshot::{Diagnostic, Severity};
use notify::{RecursiveMode, Watcher as _};

use crate::dir::{Load, Options, load};

/// Changes that arrive within this window are read as one (an editor's save is several
/// events; `git checkout` is many).
pub const DEBOUNCE_MS: u64 = 150;
/// Updates kept for a slow consumer; older ones are dropped (the current load is always
/// available from [`Watch::current`]).
pub const UPDATES_QUEUED_MAX: usize = 64;

#[derive(Debug)]
pub enum Update {
    /// The tree changed and read cleanly: this is now current.
    Applied(Arc<Load>),
    /// The tree changed but cannot be read: these errors, and the last good load still serves.
    Rejected {
        errors: Vec<Diagnostic>,
        serving: Arc<Load>,
    },
}

/// A running watch. Dropping it stops watching.
pub struct Watch {
    current: Arc<Shared>,
    pub updates: Receiver<Update>,
    /// What keeps the source running (the file watcher, or the API watchers' thread).
    _source: Box<dyn std::any::Any + Send>,
    /// The Kubernetes source's counters (none for a directory).
    source_metrics: Option<Arc<crate::kubernetes::metrics::SourceMetrics>>,
}

/// The current load and a signal for its changes.
struct Shared {
    load: Mutex<Arc<Load>>,
    changed: std::sync::Condvar,
}

impl Shared {
    fn new(first: Arc<Load>) -> Arc<Shared> {
        Arc::new(Shared {
            load: Mutex::new(first),
            changed: std::sync::Condvar::new(),
        })
    }

    fn get(&self) -> Arc<Load> {
        match self.load.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// A watch's current load, readable from another thread ([`Watch::current_handle`]).
#[derive(Clone)]
pub struct Current(Arc<Shared>);

impl Current {
    pub fn get(&self) -> Arc<Load> {
        self.0.get()
    }

    /// The current load once `ready` says so of it, or the current load when `timeout` has
    /// passed first (woken by each change, no polling).
    pub fn wait_for(&self, ready: impl Fn(&Load) -> bool, timeout: Duration) -> Arc<Load> {
        let deadline = std::time::Instant::now() + timeout;
        let mut guard = match self.0.load.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        loop {
            let now = std::time::Instant::now();
            if ready(&guard) || now >= deadline {
                return guard.clone();
            }
            guard = match self.0.changed.wait_timeout(guard, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current").finish_non_exhaustive()
    }
}

/// Where a source other than the file watcher hands its loads (see [`Watch::from_source`]).
#[derive(Clone)]
pub struct Publisher {
    current: Arc<Shared>,
    tx: SyncSender<Update>,
}

impl Publisher {
    /// Publishes a load as the directory watcher does: applied when it has no errors, else
    /// rejected with the last good load still current. False once the watch is gone.
    pub fn publish(&self, next: Load) -> bool {
        publish(next, &self.current, &self.tx)
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

/// The one rule of every source: a load with errors is rejected and the last good one keeps
/// serving; a clean load becomes current. False when nobody holds the watch any more.
fn publish(next: Load, shared: &Shared, tx: &SyncSender<Update>) -> bool {
    let update = if next.snapshot.has_errors() {
        let errors = next
            .snapshot
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .cloned()
            .collect::<Vec<_>>();
        for e in &errors {
            tracing::warn!(error = %e, "manifest change rejected; serving the last good snapshot");
        }
        let serving = shared.load.lock().map(|c| c.clone());
        match serving {
            Ok(serving) => Update::Rejected { errors, serving },
            Err(_) => return false,
        }
    } else {
        let next = Arc::new(next);
        match shared.load.lock() {
            Ok(mut c) => *c = next.clone(),
            Err(_) => return false,
        }
        shared.changed.notify_all();
        tracing::info!(objects = next.snapshot.entries.len(), "manifests reloaded");
        Update::Applied(next)
    };
    // A full queue means nobody is reading updates; the current load is kept.
    match tx.try_send(update) {
        Ok(()) | Err(mpsc::TrySendError::Full(_)) => true,
        Err(mpsc::TrySendError::Disconnected(_)) => false,
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// Reads the tree once and starts watching it. The first load is current even if it has
    /// errors (there is nothing better to serve); later loads with errors are rejected.
    pub fn start(roots: Vec<PathBuf>, opts: Options) -> notify::Result<Watch> {
        let first = Arc::new(load(&roots, &opts));
        let current = Shared::new(first);
        let (event_tx, event_rx) = mpsc::channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res
                    && !matches!(ev.kind, notify::EventKind::Access(_))
                {
                    let _ = event_tx.send(());
                }
            })?;
        for r in &roots {
            watcher.watch(r, RecursiveMode::Recursive)?;
        }
        let (update_tx, updates) = mpsc::sync_channel(UPDATES_QUEUED_MAX);
        let shared = current.clone();
        std::thread::Builder::new()
            .name("trellis-watch".into())
            .spawn(move || {
                while event_rx.recv().is_ok() {
                    // Gather the burst.
                    loop {
                        match event_rx.recv_timeout(Duration::from_millis(DEBOUNCE_MS)) {
                            Ok(()) => continue,
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    if !publish(load(&roots, &opts), &shared, &update_tx) {
                        return;
                    }
                }
            })
            .map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(Watch {
            current,
            updates,
            _source: Box::new(watcher),
            source_metrics: None,
        })
    }

    /// A watch fed by another source (the Kubernetes API): `first` is current, and the source
    /// hands each later load to [`publish`] with the returned sender. `keep` lives as long as
    /// the watch (dropping it stops the source).
    pub fn from_source(first: Load, keep: Box<dyn std::any::Any + Send>) -> (Watch, Publisher) {
        let current = Shared::new(Arc::new(first));
        let (tx, updates) = mpsc::sync_channel(UPDATES_QUEUED_MAX);
        let publisher = Publisher {
            current: current.clone(),
            tx,
        };
        (
            Watch {
                current,
                updates,
                _source: keep,
                source_metrics: None,
            },
            publisher,
        )
    }

    /// The watch with its source's counters (see [`Watch::register_metrics`]).
    pub fn with_source_metrics(
        mut self,
        m: Arc<crate::kubernetes::metrics::SourceMetrics>,
    ) -> Watch {
        self.source_metrics = Some(m);
        self
    }

    /// Adds the source's counters to `registry` (the Kubernetes source has some; a
    /// directory none).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Some(m) = &self.source_metrics {
            m.register(registry);
        }
    }

    /// A handle on the current load for another thread (it follows the watch).
    pub fn current_handle(&self) -> Current {
        Current(self.current.clone())
    }

    /// The newest load that read cleanly (or the first load).
    pub fn current(&self) -> Arc<Load> {
        self.current.get()
    }
}
