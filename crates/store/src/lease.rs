//! Leases in the embedded state store, with the semantics of coordination.k8s.io Leases
//! (holder, duration, acquire and renew times, transitions): one holder at a time; a lease
//! that was not renewed within its duration may be taken by anyone.
//!
//! Each lease is a JSON file in one directory; every read-modify-write holds an exclusive
//! `flock` on the directory's lock file, so processes on one machine (the lab's agents) agree.
//! Files are replaced with [`crate::durable::write`], so a crash leaves the old lease or the
//! new one. A file that does not parse is an error naming it, never "no lease": nobody takes
//! a lease they cannot read (remove the file to free it).
//!
//! Times are milliseconds of `CLOCK_BOOTTIME`, which every process on the machine shares, which
//! never steps when the wall clock is set (NTP, an operator), and which keeps counting while
//! the machine is suspended (a holder that slept has not renewed). Each lease records the boot
//! it was written in (`boot_id`); a lease from another boot is expired, as its holder is gone.
//! On Kubernetes, where holders sit on different machines, the same calls map onto Lease
//! objects with wall-clock times (not written yet).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::time::{ClockId, clock_gettime};
use serde::{Deserialize, Serialize};

/// Lease names longer than this are refused (they become file names).
pub const LEASE_NAME_MAX: usize = 200;

/// Where Linux says which boot this is (a random UUID per boot).
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub duration_ms: u64,
    /// `CLOCK_BOOTTIME` milliseconds (of boot `boot_id`) when the holder took the lease.
    pub acquire_ms: u64,
    /// `CLOCK_BOOTTIME` milliseconds (of boot `boot_id`) of the last renewal.
    pub renew_ms: u64,
    /// How many times the holder changed.
    pub transitions: u64,
    /// The boot whose clock the times are on. Files from before this field have none, so
    /// they read as expired.
    #[serde(default)]
    pub boot_id: String,
}

/// This boot's id (read once; empty when the kernel does not say, so that leases of this
/// process still work, only not across a reboot's files).
fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string(BOOT_ID_PATH)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

/// `CLOCK_BOOTTIME` in milliseconds.
fn boottime_ms() -> std::io::Result<u64> {
    let t = clock_gettime(ClockId::CLOCK_BOOTTIME).map_err(std::io::Error::from)?;
    Ok(u64::try_from(t.tv_sec()).unwrap_or(0) * 1000
        + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000_000)
}

/// The lease clock now: `CLOCK_BOOTTIME` milliseconds of this boot.
pub fn boot_clock() -> Now {
    Now {
        boot_id: boot_id().to_string(),
        ms: boottime_ms().unwrap_or(0),
    }
}

/// A reading of the lease clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Now {
    pub boot_id: String,
    pub ms: u64,
}

impl Lease {
    /// Whether anyone may take the lease at `now`: not renewed within its duration, or
    /// written during another boot.
    pub fn expired_at(&self, now: &Now) -> bool {
        self.boot_id != now.boot_id || now.ms > self.renew_ms.saturating_add(self.duration_ms)
    }
}

/// What elects one holder per name: the files of this module on one machine, or the shared
/// state backend across machines ([`crate::state::leases::StateLeases`]).
pub trait LeaseStore: Send + std::fmt::Debug {
    /// Takes the lease for `holder` if it is free, expired or already `holder`'s (then it is
    /// renewed). Returns whether `holder` holds it now.
    fn acquire_or_renew(
        &mut self,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> std::io::Result<bool>;
    /// Gives the lease up if `holder` has it (so another may take it at once).
    fn release(&mut self, name: &str, holder: &str) -> std::io::Result<()>;
}

impl LeaseStore for Leases {
    fn acquire_or_renew(
        &mut self,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> std::io::Result<bool> {
        Leases::acquire_or_renew(self, name, holder, duration)
    }

    fn release(&mut self, name: &str, holder: &str) -> std::io::Result<()> {
        Leases::release(self, name, holder)
    }
}

#[derive(Debug)]
pub struct Leases {
    dir: PathBuf,
    boot_id: String,
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

impl Leases {
    pub fn open(dir: &Path) -> std::io::Result<Leases> {
        std::fs::create_dir_all(dir)?;
        let boot_id = std::fs::read_to_string(BOOT_ID_PATH)
            .map_err(|e| std::io::Error::new(e.kind(), format!("reading {BOOT_ID_PATH}: {e}")))?
            .trim()
            .to_string();
        Ok(Leases {
            dir: dir.to_path_buf(),
            boot_id,
        })
    }

    /// The lease clock now.
    pub fn now(&self) -> std::io::Result<Now> {
        Ok(Now {
            boot_id: self.boot_id.clone(),
            ms: boottime_ms()?,
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

    /// The lease as stored, if any. A file that is not a whole lease is an `InvalidData`
    /// error naming it.
    pub fn get(&self, name: &str) -> std::io::Result<Option<Lease>> {
        let path = self.path(name)?;
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "lease file {}: not a lease ({e}); nobody takes it until it is removed",
                        path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("reading lease file {}: {e}", path.display()),
            )),
        }
    }

    fn put(&self, path: &Path, lease: &Lease) -> std::io::Result<()> {
        crate::durable::write(
            path,
            &serde_json::to_vec(lease).map_err(std::io::Error::other)?,
        )
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
        let now = self.now()?;
        let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let next = match self.get(name)? {
            // Our own lease from another boot is a new acquisition, not a renewal.
            Some(l) if l.holder == holder && l.boot_id == now.boot_id => Lease {
                renew_ms: now.ms,
                duration_ms,
                ..l
            },
            Some(l) if !l.expired_at(&now) => return Ok(false),
            previous => Lease {
                holder: holder.to_string(),
                duration_ms,
                acquire_ms: now.ms,
                renew_ms: now.ms,
                transitions: previous.map_or(0, |l| l.transitions + u64::from(l.holder != holder)),
                boot_id: now.boot_id,
            },
        };
        self.put(&path, &next)?;
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
            self.put(&path, &l)?;
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
        assert!(
            leases.acquire_or_renew("../etc", "x", long).is_err(),
            "names are checked"
        );
    }

    /// Expiry is decided on the boot clock written in the file, not on how long the test took.
    #[test]
    fn expiry_is_on_the_boot_clock_of_the_same_boot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leases = Leases::open(dir.path()).expect("open");
        let now = leases.now().expect("clock");
        let write = |l: &Lease| {
            crate::durable::write(
                &dir.path().join("l.json"),
                &serde_json::to_vec(l).expect("json"),
            )
            .expect("write")
        };
        let held = Lease {
            holder: "node-1".into(),
            duration_ms: 3_600_000,
            acquire_ms: now.ms,
            renew_ms: now.ms,
            transitions: 4,
            boot_id: now.boot_id.clone(),
        };
        write(&held);
        let hour = Duration::from_secs(3600);
        assert!(!leases.acquire_or_renew("l", "node-2", hour).expect("held"));
        // Renewed long ago on this boot's clock: expired.
        write(&Lease {
            renew_ms: 0,
            duration_ms: 1,
            ..held.clone()
        });
        assert!(
            leases
                .acquire_or_renew("l", "node-2", hour)
                .expect("expired")
        );
        assert_eq!(leases.get("l").expect("get").expect("some").transitions, 5);
        // The same times from another boot (or from a file without a boot): expired, even
        // though the numbers say "renewed just now".
        for boot_id in ["another-boot", ""] {
            write(&Lease {
                boot_id: boot_id.into(),
                ..held.clone()
            });
            assert!(
                leases
                    .acquire_or_renew("l", "node-2", hour)
                    .expect("other boot"),
                "boot {boot_id:?}"
            );
        }
        let mut old_format = serde_json::to_value(&held).expect("json");
        old_format
            .as_object_mut()
            .expect("object")
            .remove("boot_id");
        std::fs::write(dir.path().join("l.json"), old_format.to_string()).expect("write");
        assert!(
            leases
                .acquire_or_renew("l", "node-2", hour)
                .expect("old file")
        );
    }

    /// Before: a lease file that did not parse read as "no lease", and the next node took it
    /// over while the holder kept announcing.
    #[test]
    fn a_corrupt_lease_is_an_error_naming_the_file_and_nobody_takes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leases = Leases::open(dir.path()).expect("open");
        let long = Duration::from_secs(60);
        assert!(
            leases
                .acquire_or_renew("l2-svc", "node-1", long)
                .expect("acquire")
        );
        let path = dir.path().join("l2-svc.json");
        for torn in [&b"{\"holder\":\"node-1\",\"durat"[..], b"", b"null"] {
            std::fs::write(&path, torn).expect("tear");
            for err in [
                leases.get("l2-svc").expect_err("get"),
                leases
                    .acquire_or_renew("l2-svc", "node-2", long)
                    .expect_err("acquire"),
                leases.release("l2-svc", "node-1").expect_err("release"),
            ] {
                assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
                assert!(
                    err.to_string().contains(&path.display().to_string()),
                    "{err}"
                );
            }
            assert_eq!(std::fs::read(&path).expect("read"), torn, "left as it was");
        }
    }
}
