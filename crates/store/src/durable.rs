//! Durable replacement of one file: the only way trellis writes state it must find again
//! after a crash (leases, cluster IP and LoadBalancer assignments, CNI IPAM, the lab's files).
//!
//! [`write`] puts the bytes in a new temporary file beside the target, fsyncs it, renames it
//! over the target and fsyncs the directory. A reader therefore sees the old file or the new
//! one, whole, never a mix; and once `write` returns, the new contents survive a crash of
//! the process or of the machine (the rename is in the directory, and the directory is on
//! disk). [`remove`] is the same for deleting a file.
//!
//! Temporary files are named `.<name>.<pid>.<n>.tmp`, so two writers of one file (which
//! callers avoid with a lock anyway) never share one, and readers that look only for their
//! own names (`*.json`, `*.yaml`, addresses) never take one for state. A process killed
//! between creating and renaming leaves its temporary file behind; it is never read.
//!
//! Not here: what the bytes mean, locking (each caller holds its own lock where several
//! processes write), and reading (a missing file and a corrupt one mean different things to
//! each caller, and each says which).

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Temporary files made by this process so far; part of each temporary name.
static TEMPORARIES: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` durably: temp file, write, fsync, rename, fsync directory.
///
/// The error names `path` and the step that failed; the temporary file is removed on error.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (dir, name) = split(path)?;
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMPORARIES.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| step(path, "creating the temporary file", e))?;
        f.write_all(bytes)
            .map_err(|e| step(path, "writing the temporary file", e))?;
        f.sync_all()
            .map_err(|e| step(path, "fsync of the temporary file", e))?;
        std::fs::rename(&tmp, path).map_err(|e| step(path, "renaming over", e))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&dir).map_err(|e| step(path, "fsync of the directory", e))
}

/// Removes `path` durably (the directory is fsynced). A file that is not there is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    let (dir, _) = split(path)?;
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(&dir).map_err(|e| step(path, "fsync of the directory", e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(step(path, "removing", e)),
    }
}

/// Whether `name` is one of [`write`]'s temporary files (for directory listings and cleanup).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a file name", path.display()),
            )
        })?
        .to_string();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Keeps the error's kind (callers match on NotFound, PermissionDenied) and names the file.
fn step(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.json");
        write(&p, b"{\"v\":1}").expect("first");
        write(&p, b"{\"v\":2}").expect("second");
        assert_eq!(std::fs::read(&p).expect("read"), b"{\"v\":2}");
        assert_eq!(names(dir.path()), ["state.json"]);
        remove(&p).expect("remove");
        remove(&p).expect("removing twice is fine");
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn a_failed_write_names_the_file_and_keeps_the_old_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The target is a non-empty directory: the rename fails after the temporary was
        // written, which must then be gone.
        let p = dir.path().join("busy");
        std::fs::create_dir(&p).expect("mkdir");
        std::fs::write(p.join("inside"), b"x").expect("inside");
        let err = write(&p, b"new").expect_err("cannot rename over a directory");
        assert!(err.to_string().contains(&p.display().to_string()), "{err}");
        assert!(err.to_string().contains("renaming over"), "{err}");
        assert_eq!(names(dir.path()), ["busy"]);
        assert!(is_temporary(".state.json.12.0.tmp"));
        assert!(!is_temporary("state.json"));
    }
}
