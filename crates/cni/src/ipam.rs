//! Address allocation from the node's pod CIDR, persisted on disk.
//!
//! Layout, under `<stateDir>/ipam/<network name>/`:
//! - `lock`: held with `flock(LOCK_EX)` for the whole of every allocate, release and GC, so
//!   concurrent plugin invocations never hand out one address twice;
//! - one file per allocated address, named by the address (`10.69.1.5`), holding
//!   `<containerID>\n<ifname>\n`;
//! - `last_reserved_ip`: where the round-robin search resumes, so a just-released address is
//!   not handed out again at once.
//!
//! Files are written and removed with [`store::durable`] (temp file, fsync, rename, fsync of
//! the directory), so a crash leaves either no file or a whole one, and an allocation the
//! plugin reported survives a crash of the machine. An allocation file that is not whole
//! (edited, or damaged on disk) is an error naming it for every command: the pool cannot say
//! who owns that address, so it neither hands it out nor releases it. A bad
//! `last_reserved_ip` is only a hint lost: the search starts at the top, and it is logged.
//!
//! The pool is every address of the CIDR except the network address, the first host address
//! (the node's router) and the broadcast address.
//!
//! Not here: anything about interfaces; IPv6.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};

use crate::conf::Attachment;
use crate::error::Error;

/// How long an invocation waits for another to release the lock before answering code 11.
pub const LOCK_WAIT_MS_MAX: u64 = 10_000;
const LOCK_POLL_MS: u64 = 5;
const LOCK_FILE: &str = "lock";
const LAST_RESERVED_FILE: &str = "last_reserved_ip";

/// One allocation as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
}

/// What [`Pool::allocate`] handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// The pair already held this address before the call (an ADD repeated without DEL);
    /// undoing this call must then not release it.
    pub reused: bool,
}

/// The allocations of one network on this node.
#[derive(Debug, Clone)]
pub struct Pool {
    network: String,
    cidr: Ipv4Net,
    dir: PathBuf,
    lock_wait: Duration,
}

/// The first and last allocatable address of `cidr`, or `None` when it has none.
pub fn pool_range(cidr: Ipv4Net) -> Option<(u32, u32)> {
    let cidr = cidr.trunc();
    if cidr.prefix_len() > crate::conf::POOL_PREFIX_LEN_MAX {
        return None;
    }
    let first = u32::from(cidr.network()) + 2;
    let last = u32::from(cidr.broadcast()) - 1;
    (first <= last).then_some((first, last))
}

/// `<containerID>\n<ifname>\n` (the final newline optional): both present, nothing else.
fn parse_allocation(text: &str) -> Option<(String, String)> {
    let mut lines = text.lines().map(str::trim);
    let container_id = lines.next().filter(|l| !l.is_empty())?;
    let ifname = lines.next().filter(|l| !l.is_empty())?;
    lines
        .all(str::is_empty)
        .then(|| (container_id.to_string(), ifname.to_string()))
}

/// Candidates in round-robin order: from the address after `last_reserved` to the end of the
/// range, then from the start up to and including `last_reserved`.
pub fn candidates(
    cidr: Ipv4Net,
    last_reserved: Option<Ipv4Addr>,
) -> impl Iterator<Item = Ipv4Addr> {
    let (first, last) = pool_range(cidr).unwrap_or((1, 0));
    let start = match last_reserved.map(u32::from) {
        Some(l) if (first..last).contains(&l) => l + 1,
        _ => first,
    };
    (start..=last).chain(first..start).map(Ipv4Addr::from)
}

impl Pool {
    /// Opens (creating if needed) the pool directory of `network`.
    pub fn open(state_dir: &Path, network: &str, cidr: Ipv4Net) -> Result<Pool, Error> {
        let dir = state_dir.join("ipam").join(network);
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating IPAM directory {}", dir.display()), e))?;
        Ok(Pool {
            network: network.to_string(),
            cidr: cidr.trunc(),
            dir,
            lock_wait: Duration::from_millis(LOCK_WAIT_MS_MAX),
        })
    }

    /// Overrides how long to wait for the lock (default [`LOCK_WAIT_MS_MAX`]).
    pub fn with_lock_wait(mut self, wait: Duration) -> Pool {
        self.lock_wait = wait;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of addresses the pool can hand out in total.
    pub fn size(&self) -> u32 {
        pool_range(self.cidr).map_or(0, |(first, last)| last - first + 1)
    }

    fn lock(&self) -> Result<Flock<File>, Error> {
        let path = self.dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening IPAM lock {}", path.display()), e))?;
        let deadline = Instant::now() + self.lock_wait;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(LOCK_POLL_MS));
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(Error::TryAgain {
                        what: format!(
                            "IPAM lock {} still held by another invocation after {} ms",
                            path.display(),
                            self.lock_wait.as_millis()
                        ),
                    });
                }
                Err((_, errno)) => {
                    return Err(Error::io(
                        format!("locking {}", path.display()),
                        std::io::Error::from(errno),
                    ));
                }
            }
        }
    }

    /// Every allocation on disk. Call with the lock held for a consistent view.
    fn read_all(&self) -> Result<Vec<Allocation>, Error> {
        let what = || format!("reading IPAM directory {}", self.dir.display());
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io(what(), e))? {
            let entry = entry.map_err(|e| Error::io(what(), e))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let text = match fs::read_to_string(entry.path()) {
                Ok(t) => t,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("reading {}", entry.path().display()), e)),
            };
            let Some((container_id, ifname)) = parse_allocation(&text) else {
                return Err(Error::io(
                    format!("IPAM allocation {}", entry.path().display()),
                    std::io::Error::new(
                        ErrorKind::InvalidData,
                        "not `<containerID>\\n<ifname>\\n`; the owner of this address is \
                         unknown: repair the file, or remove it if no pod uses the address",
                    ),
                ));
            };
            out.push(Allocation {
                ip,
                container_id,
                ifname,
            });
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    /// Every allocation, read under the lock.
    pub fn allocations(&self) -> Result<Vec<Allocation>, Error> {
        let _lock = self.lock()?;
        self.read_all()
    }

    /// Reserves an address for `(container_id, ifname)`. If that pair already holds one (an
    /// ADD retried after a crash), it gets the same address back.
    pub fn allocate(&self, container_id: &str, ifname: &str) -> Result<Lease, Error> {
        let _lock = self.lock()?;
        let taken = self.read_all()?;
        if let Some(a) = taken
            .iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
        {
            return Ok(Lease {
                ip: a.ip,
                reused: true,
            });
        }
        let last_path = self.dir.join(LAST_RESERVED_FILE);
        let last_reserved = match fs::read_to_string(&last_path) {
            Ok(t) => t.trim().parse::<Ipv4Addr>().ok().or_else(|| {
                tracing::warn!(file = %last_path.display(), "not an address; the round-robin search starts at the top");
                None
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(file = %last_path.display(), error = %e, "round-robin hint unreadable");
                None
            }
        };
        let ip = candidates(self.cidr, last_reserved)
            .find(|ip| taken.binary_search_by_key(ip, |a| a.ip).is_err())
            .ok_or_else(|| Error::PoolExhausted {
                network: self.network.clone(),
                cidr: self.cidr,
            })?;
        self.write_atomically(&ip.to_string(), &format!("{container_id}\n{ifname}\n"))?;
        self.write_atomically(LAST_RESERVED_FILE, &format!("{ip}\n"))?;
        tracing::debug!(network = %self.network, %ip, container_id, ifname, "allocated address");
        Ok(Lease { ip, reused: false })
    }

    fn write_atomically(&self, name: &str, contents: &str) -> Result<(), Error> {
        let path = self.dir.join(name);
        store::durable::write(&path, contents.as_bytes())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Releases what `(container_id, ifname)` holds. Nothing held is not an error.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, Error> {
        let _lock = self.lock()?;
        let mut released = Vec::new();
        for a in self.read_all()? {
            if a.container_id == container_id && a.ifname == ifname {
                self.remove(&a)?;
                released.push(a.ip);
            }
        }
        Ok(released)
    }

    fn remove(&self, a: &Allocation) -> Result<(), Error> {
        let path = self.dir.join(a.ip.to_string());
        match store::durable::remove(&path) {
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
            Ok(()) => {
                tracing::debug!(network = %self.network, ip = %a.ip, container_id = %a.container_id, "released address");
                Ok(())
            }
        }
    }

    /// GC: releases every allocation whose `(containerID, ifname)` is not in `valid`, and
    /// returns what it released. A failed removal does not stop the others (spec: "continue
    /// removing as many resources as possible"); the failures are returned alongside.
    pub fn gc(&self, valid: &[Attachment]) -> Result<(Vec<Allocation>, Vec<Error>), Error> {
        let _lock = self.lock()?;
        let mut released = Vec::new();
        let mut failed = Vec::new();
        for a in self.read_all()? {
            let kept = valid
                .iter()
                .any(|v| v.container_id == a.container_id && v.ifname == a.ifname);
            if !kept {
                match self.remove(&a) {
                    Ok(()) => released.push(a),
                    Err(e) => failed.push(e),
                }
            }
        }
        Ok((released, failed))
    }

    /// How many addresses are still free.
    pub fn free(&self) -> Result<u32, Error> {
        let _lock = self.lock()?;
        let (first, last) = pool_range(self.cidr).unwrap_or((1, 0));
        let used = self
            .read_all()?
            .iter()
            .filter(|a| (first..=last).contains(&u32::from(a.ip)))
            .count();
        Ok(self
            .size()
            .saturating_sub(u32::try_from(used).unwrap_or(u32::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("valid cidr")
    }

    #[test]
    fn range_skips_network_router_and_broadcast() {
        let (first, last) = pool_range(net("10.69.1.0/24")).expect("non-empty");
        assert_eq!(Ipv4Addr::from(first), Ipv4Addr::new(10, 69, 1, 2));
        assert_eq!(Ipv4Addr::from(last), Ipv4Addr::new(10, 69, 1, 254));
        assert_eq!(
            pool_range(net("10.0.0.0/30")),
            Some((0x0a00_0002, 0x0a00_0002))
        );
        assert_eq!(pool_range(net("10.0.0.0/31")), None);
    }

    #[test]
    fn round_robin_resumes_after_the_last_reserved_and_wraps() {
        let all: Vec<_> = candidates(net("10.0.0.0/29"), Some(Ipv4Addr::new(10, 0, 0, 4)))
            .map(|ip| ip.octets()[3])
            .collect();
        assert_eq!(all, [5, 6, 2, 3, 4]);
        let fresh: Vec<_> = candidates(net("10.0.0.0/29"), None)
            .map(|ip| ip.octets()[3])
            .collect();
        assert_eq!(fresh, [2, 3, 4, 5, 6]);
        // A last_reserved outside the range (the config's CIDR changed) restarts at the top.
        let moved: Vec<_> = candidates(net("10.0.0.0/29"), Some(Ipv4Addr::new(10, 9, 9, 9)))
            .map(|ip| ip.octets()[3])
            .collect();
        assert_eq!(moved, [2, 3, 4, 5, 6]);
    }

    #[test]
    fn allocate_release_gc_and_exhaustion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Pool::open(dir.path(), "n", net("10.0.0.0/29")).expect("open");
        assert_eq!(pool.size(), 5);
        let a = pool.allocate("c1", "eth0").expect("a");
        assert!(!a.reused);
        let again = pool.allocate("c1", "eth0").expect("same");
        assert_eq!((again.ip, again.reused), (a.ip, true));
        let (a, b) = (a.ip, pool.allocate("c2", "eth0").expect("b").ip);
        assert_ne!(a, b);
        assert_eq!(pool.release("c1", "eth0").expect("rel"), vec![a]);
        assert!(pool.release("c1", "eth0").expect("rel").is_empty());
        // Round robin: the released address is not the next one handed out.
        let c = pool.allocate("c3", "eth0").expect("c").ip;
        assert_ne!(c, a);
        for i in 4..=6 {
            pool.allocate(&format!("c{i}"), "eth0").expect("fill");
        }
        assert_eq!(pool.free().expect("free"), 0);
        let err = pool.allocate("c7", "eth0").expect_err("full");
        assert_eq!(err.code(), crate::error::CODE_POOL_EXHAUSTED);
        let keep = [Attachment {
            container_id: "c2".into(),
            ifname: "eth0".into(),
        }];
        let (released, failed) = pool.gc(&keep).expect("gc");
        assert_eq!((released.len(), failed.len()), (4, 0));
        let left = pool.allocations().expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].container_id, "c2");
    }

    #[test]
    fn concurrent_allocations_from_separate_handles_never_collide() {
        // flock locks belong to the open file description, so separate Pool handles in one
        // process contend exactly like separate plugin processes.
        let dir = tempfile::tempdir().expect("tempdir");
        let ips: Vec<Ipv4Addr> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|t| {
                    let dir = dir.path();
                    s.spawn(move || {
                        let pool = Pool::open(dir, "n", net("10.0.0.0/24")).expect("open");
                        (0..20)
                            .map(|i| pool.allocate(&format!("t{t}-c{i}"), "eth0").expect("ip").ip)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("worker"))
                .collect()
        });
        let mut unique = ips.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 160);
    }

    /// Before: an allocation file that was not whole read as an allocation owned by nobody
    /// (container ID ""), so the next GC removed it and the address went to a second pod.
    #[test]
    fn a_torn_allocation_is_an_error_naming_it_and_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Pool::open(dir.path(), "n", net("10.0.0.0/29")).expect("open");
        let ip = pool.allocate("c1", "eth0").expect("a").ip;
        pool.allocate("c2", "eth0").expect("b");
        let names: Vec<String> = fs::read_dir(pool.dir())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_FILE && n != LAST_RESERVED_FILE)
            .collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
        let file = pool.dir().join(ip.to_string());
        let keep = [Attachment {
            container_id: "c2".into(),
            ifname: "eth0".into(),
        }];
        for torn in ["", "c1\n", "c1\neth0\nmore\n"] {
            fs::write(&file, torn).expect("tear");
            let errors = [
                pool.gc(&keep).expect_err("gc"),
                pool.allocate("c3", "eth0").expect_err("allocate"),
                pool.release("c2", "eth0").expect_err("release"),
            ];
            for err in errors {
                assert!(
                    err.to_string().contains(&file.display().to_string()),
                    "{err}"
                );
            }
            assert_eq!(fs::read_to_string(&file).expect("kept"), torn);
        }
        fs::write(&file, "c1\neth0").expect("whole, without the last newline");
        assert_eq!(pool.allocations().expect("list").len(), 2);
    }

    #[test]
    fn a_held_lock_is_code_11_after_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Pool::open(dir.path(), "n", net("10.0.0.0/24"))
            .expect("open")
            .with_lock_wait(Duration::from_millis(30));
        let held = pool.lock().expect("first lock");
        let err = pool.allocate("c", "eth0").expect_err("locked");
        assert_eq!(err.code(), 11, "{err}");
        drop(held);
        assert!(pool.allocate("c", "eth0").is_ok());
    }
}
