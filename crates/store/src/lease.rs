//! Leases in the embedded state store, with the semantics of coordination.k8s.io Leases
//! (holder, duration, acquire and renew times, transitions): one holder at a time; a lease
//! that was not renewed within its duration may be taken by anyone.
//!
//! Each lease is a JSON file in one directory; every read-modify-write holds an exclusive
//! `flock` on the directory's lock file, so processes on one machine (the lab's agents) agree.
//! Times are wall-clock milliseconds: all holders share this machine's clock. On Kubernetes,
//! the same calls map onto Lease objects (not written yet).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Lease names longer than this are refused (they become file names).
pub const LEASE_NAME_MAX: usize = 200;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub duration_ms: u64,
    pub acquire_ms: u64,
    pub renew_ms: u64,
    /// How many times the holder changed.
    pub transitions: u64,
}

impl Lease {
    pub fn expired_at(&self, now_ms: u64) -> bool {
        now_ms > self.renew_ms.saturating_add(self.duration_ms)
    }
}

#[derive(Debug)]
pub struct Leases {
    dir: PathBuf,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

impl Leases {
    pub fn open(dir: &Path) -> std::io::Result<Leases> {
        std::fs::create_dir_all(dir)?;
        Ok(Leases {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> std::io::Result<PathBuf> {
        if name.is_empty()
            || name.len() > LEASE_NAME_MAX
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(invalid(format!(
                "lease name {name:?}: use [A-Za-z0-9._-], at most {LEASE_NAME_MAX}"
            )));
        }
        Ok(self.dir.join(format!("{name}.json")))
    }

    fn lock(&self) -> std::io::Result<Flock<File>> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))
    }

    /// The lease as stored, if any.
    pub fn get(&self, name: &str) -> std::io::Result<Option<Lease>> {
        match std::fs::read(self.path(name)?) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes the lease for `holder` if it is free, expired or already `holder`'s (then it is
    /// renewed). Returns whether `holder` holds it now.
    pub fn acquire_or_renew(
        &self,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> std::io::Result<bool> {
        let path = self.path(name)?;
        let _lock = self.lock()?;
        let now = now_ms();
        let current = self.get(name)?;
        let next = match current {
            Some(l) if l.holder == holder => Lease {
                renew_ms: now,
                duration_ms: duration.as_millis() as u64,
                ..l
            },
            Some(l) if !l.expired_at(now) => return Ok(false),
            Some(l) => Lease {
                holder: holder.to_string(),
                duration_ms: duration.as_millis() as u64,
                acquire_ms: now,
                renew_ms: now,
                transitions: l.transitions + 1,
            },
            None => Lease {
                holder: holder.to_string(),
                duration_ms: duration.as_millis() as u64,
                acquire_ms: now,
                renew_ms: now,
                transitions: 0,
            },
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(&next).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &path)?;
        Ok(true)
    }

    /// Gives the lease up if `holder` has it (so another may take it at once).
    pub fn release(&self, name: &str, holder: &str) -> std::io::Result<()> {
        let path = self.path(name)?;
        let _lock = self.lock()?;
        if let Some(mut l) = self.get(name)?
            && l.holder == holder
        {
            l.renew_ms = 0;
            l.duration_ms = 0;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&l).map_err(std::io::Error::other)?)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_until_expiry_or_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leases = Leases::open(dir.path()).expect("open");
        let long = Duration::from_secs(60);
        assert!(
            leases
                .acquire_or_renew("l2-svc", "node-1", long)
                .expect("acquire")
        );
        assert!(
            !leases
                .acquire_or_renew("l2-svc", "node-2", long)
                .expect("held")
        );
        assert!(
            leases
                .acquire_or_renew("l2-svc", "node-1", long)
                .expect("renew")
        );
        leases.release("l2-svc", "node-1").expect("release");
        assert!(
            leases
                .acquire_or_renew("l2-svc", "node-2", long)
                .expect("free now")
        );
        let l = leases.get("l2-svc").expect("get").expect("exists");
        assert_eq!((l.holder.as_str(), l.transitions), ("node-2", 1));
        // An expired lease is taken over.
        assert!(
            leases
                .acquire_or_renew("short", "node-1", Duration::ZERO)
                .expect("acquire")
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            leases
                .acquire_or_renew("short", "node-3", long)
                .expect("expired")
        );
        assert!(
            leases.acquire_or_renew("../etc", "x", long).is_err(),
            "names are checked"
        );
    }
}
