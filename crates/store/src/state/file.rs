//! The state backend of one host, shared by its processes (`--state file://DIR`, the one-host
//! lab's agents): the key space of [`super::space`] in one file, `DIR/state.json`. Every call
//! takes an exclusive `flock` on `DIR/lock`, reads the file when another process changed it
//! (a cached copy otherwise), makes its change, and writes the file back with
//! [`crate::durable::write`] (fsync, rename) when anything changed: a crash leaves the space
//! before or after a call, never part of one. Leases run on `CLOCK_BOOTTIME`, which every
//! process of the machine shares; after a reboot no lease is live. Watches poll the space
//! every [`WATCH_POLL`].
//!
//! A file that does not parse is an error naming it ([`Error::Refused`]), never an empty
//! space: nothing is written over it until an operator repairs or removes it.

use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::space::Space;
use super::{Backend, BoxFuture, Error, Kv, LeaseId, Listing, Watch};

/// How often a watch looks for changes (and expired leases).
pub const WATCH_POLL: Duration = Duration::from_millis(50);
/// The history a file keeps for watches, in bytes of values (the whole file is written at
/// every change, so it stays small; a watch older than that lists again).
pub const HISTORY_BYTES_MAX: usize = 4 << 20;

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";

/// Which version of the file the cache holds: a rename gives a new inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime_ns: i64,
    len: u64,
}

struct Shared {
    dir: PathBuf,
    cache: Mutex<Option<(Stamp, Space)>>,
}

/// The file-backed state backend of one directory.
#[derive(Clone)]
pub struct Files(Arc<Shared>);

fn unavailable(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{}: {what}: {e}", path.display()))
}

impl Files {
    /// Opens (creating) the directory.
    pub fn open(dir: &Path) -> Result<Files, Error> {
        std::fs::create_dir_all(dir).map_err(|e| unavailable(dir, "creating", e))?;
        let f = Files(Arc::new(Shared {
            dir: dir.to_path_buf(),
            cache: Mutex::new(None),
        }));
        // Fail now, with the path, when the file is not a state file.
        f.with(|_, _| ())?;
        Ok(f)
    }

    fn path(&self) -> PathBuf {
        self.0.dir.join(STATE_FILE)
    }

    fn lock(&self) -> Result<Flock<File>, Error> {
        let path = self.0.dir.join(LOCK_FILE);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| unavailable(&path, "opening", e))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| unavailable(&path, "flock", e))
    }

    /// The space as the file holds it (under the lock).
    fn load(&self) -> Result<(Option<Stamp>, Space), Error> {
        let path = self.path();
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((None, new_space()));
            }
            Err(e) => return Err(unavailable(&path, "reading", e)),
        };
        let stamp = Stamp {
            ino: meta.ino(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            len: meta.len(),
        };
        let cache = self.0.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, space)) = cache.as_ref()
            && *s == stamp
        {
            return Ok((Some(stamp), space.clone()));
        }
        drop(cache);
        let bytes = std::fs::read(&path).map_err(|e| unavailable(&path, "reading", e))?;
        let space: Space = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Refused(format!(
                "{}: not a trellis state file ({e}); repair it, or remove it to start empty",
                path.display()
            ))
        })?;
        Ok((Some(stamp), space))
    }

    fn save(&self, space: &Space) -> Result<(), Error> {
        let path = self.path();
        let bytes = serde_json::to_vec(space).map_err(|e| Error::Refused(e.to_string()))?;
        crate::durable::write(&path, &bytes).map_err(|e| unavailable(&path, "writing", e))?;
        let meta = std::fs::metadata(&path).map_err(|e| unavailable(&path, "reading", e))?;
        let stamp = Stamp {
            ino: meta.ino(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            len: meta.len(),
        };
        *self.0.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((stamp, space.clone()));
        Ok(())
    }

    /// Runs `f` on the space under the lock, with expired leases dropped first, and writes
    /// the space back when anything changed.
    fn with<T>(&self, f: impl FnOnce(&mut Space, &crate::lease::Now) -> T) -> Result<T, Error> {
        let _lock = self.lock()?;
        let now = crate::lease::boot_clock();
        let (stamp, mut space) = self.load()?;
        let before = (space.revision, space.leases.clone(), space.next_lease);
        space.expire(&now);
        let r = f(&mut space, &now);
        if stamp.is_none() || before != (space.revision, space.leases.clone(), space.next_lease) {
            self.save(&space)?;
        }
        Ok(r)
    }
}

fn new_space() -> Space {
    Space {
        history_bytes_max: HISTORY_BYTES_MAX,
        ..Space::default()
    }
}

impl Backend for Files {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Kv>, Error>> {
        let r = self.with(|s, _| s.get(key));
        Box::pin(async move { r })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, Error>> {
        let r = self.with(|s, _| s.list(prefix));
        Box::pin(async move { r })
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
        let r = self
            .with(|s, _| s.swap(key, revision, value, lease))
            .and_then(|r| r.map(|w| w.is_some()));
        Box::pin(async move { r })
    }

    fn delete<'a>(&'a self, key: &'a str, revision: i64) -> BoxFuture<'a, Result<bool, Error>> {
        let r = self.with(|s, _| s.delete(key, revision).is_some());
        Box::pin(async move { r })
    }

    fn grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, Error>> {
        let r = self.with(|s, now| s.grant(ttl, now));
        Box::pin(async move { r })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<Option<Duration>, Error>> {
        let r = self.with(|s, now| s.keep_alive(lease, now));
        Box::pin(async move { r })
    }

    fn revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), Error>> {
        let r = self.with(|s, _| {
            s.drop_lease(lease);
        });
        Box::pin(async move { r })
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<Watch, Error>> {
        let first = self.with(|s, _| s.since(prefix, after).map(|past| (past, s.revision)));
        let files = self.clone();
        let prefix = prefix.to_string();
        Box::pin(async move {
            let (past, mut seen) = first??;
            let (tx, rx) = tokio::sync::mpsc::channel(super::memory::WATCH_QUEUE);
            for batch in past {
                if tx.try_send(Ok(batch)).is_err() {
                    return Err(Error::Compacted(after));
                }
            }
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(WATCH_POLL) => {}
                        () = tx.closed() => return,
                    }
                    let next = files.with(|s, _| s.since(&prefix, seen).map(|b| (b, s.revision)));
                    match next {
                        Ok(Ok((batches, revision))) => {
                            for b in batches {
                                if tx.send(Ok(b)).await.is_err() {
                                    return;
                                }
                            }
                            seen = revision;
                        }
                        Ok(Err(e)) | Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
            });
            Ok(Watch { events: rx })
        })
    }
}
