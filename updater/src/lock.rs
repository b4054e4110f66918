//! The one exclusive lock held by every updater operation that writes slots or state
//! (install, health, rollback, mark-good, mark-bad): `ROOT/var/lib/updater/lock`.
//!
//! Without it an install that read the GPT at its start could flip over a commit made
//! meanwhile, and two installs could interleave their chunks in one slot (issue 14, defect 2).
//! The lock is a `flock(2)` on that file, so the kernel drops it when its holder dies, however
//! it dies: a stale file never blocks anybody. The holder writes who it is into the file
//! (`pid 812: updater install since 1767225600`), so a second caller that gives up after its
//! wait can say who holds it. Reading (`status`) takes no lock.
//!
//! The file is opened close-on-exec: a health check's daemon never inherits the lock.
//!
//! ```
//! use std::time::Duration;
//! use updater::lock::{UpdaterLock, LockError};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("lock");
//! let held = UpdaterLock::acquire(&path, "install", Duration::ZERO).unwrap();
//! let busy = UpdaterLock::acquire(&path, "health", Duration::ZERO).unwrap_err();
//! assert!(matches!(busy, LockError::Busy { .. }));
//! drop(held);
//! UpdaterLock::acquire(&path, "health", Duration::ZERO).unwrap();
//! ```
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// File name of the lock in the state directory.
pub const LOCK_FILE: &str = "lock";
/// How long a command waits for the lock by default.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30);
/// Longest holder description read back.
const MAX_HOLDER_LEN: u64 = 256;
/// Time between attempts while waiting.
const POLL: Duration = Duration::from_millis(50);

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds it.
    #[error("another updater holds {path} ({holder}); gave up after {waited_ms} ms")]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// What its holder wrote about itself.
        holder: String,
        /// How long this caller waited.
        waited_ms: u128,
    },
    /// The lock file could not be opened, locked or written.
    #[error("{action} the updater lock {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct UpdaterLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl UpdaterLock {
    /// Takes the lock at `path` for `operation`, waiting up to `wait` for its holder.
    pub fn acquire(path: &Path, operation: &str, wait: Duration) -> Result<UpdaterLock, LockError> {
        let io = |action| {
            let path = path.to_owned();
            move |source| LockError::Io {
                action,
                path,
                source,
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
        }
        let start = Instant::now();
        let mut file = open(path).map_err(io("opening"))?;
        let mut lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                    if start.elapsed() >= wait {
                        return Err(LockError::Busy {
                            path: path.to_owned(),
                            holder: holder(&f),
                            waited_ms: start.elapsed().as_millis(),
                        });
                    }
                    file = f;
                    std::thread::sleep(POLL.min(wait.saturating_sub(start.elapsed())));
                }
                Err((_, errno)) => return Err(io("locking")(errno.into())),
            }
        };
        let who = format!(
            "pid {}: updater {operation} since {}\n",
            std::process::id(),
            crate::history::now()
        );
        lock.set_len(0).map_err(io("writing"))?;
        lock.rewind().map_err(io("writing"))?;
        lock.write_all(who.as_bytes()).map_err(io("writing"))?;
        Ok(UpdaterLock {
            _lock: lock,
            path: path.to_owned(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// What the holder wrote, bounded and on one line.
fn holder(f: &File) -> String {
    let mut text = String::new();
    let mut r = f;
    let _ = r.rewind();
    let _ = r.take(MAX_HOLDER_LEN).read_to_string(&mut text);
    let text = text.trim();
    if text.is_empty() {
        "holder unknown".into()
    } else {
        text.replace('\n', " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_lock_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/lock");
        let _held = UpdaterLock::acquire(&path, "install", Duration::ZERO).unwrap();
        let e = UpdaterLock::acquire(&path, "health", Duration::from_millis(120)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "pid {}: updater install since",
                std::process::id()
            )),
            "{msg}"
        );
        match e {
            LockError::Busy { waited_ms, .. } => assert!(waited_ms >= 120, "{waited_ms}"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_waiting_caller_gets_the_lock_when_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = UpdaterLock::acquire(&path, "install", Duration::ZERO).unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
        });
        UpdaterLock::acquire(&path, "health", Duration::from_secs(60)).unwrap();
        t.join().unwrap();
    }
}
