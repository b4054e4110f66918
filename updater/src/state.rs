//! Device state files under `ROOT/var/lib/updater/`: written atomically, read within a bound,
//! and never mistaken for missing when they are damaged.
//!
//! Each file is JSON with a `format_version`. [`StateDir::store`] writes a temporary file with a
//! name unique to the writer (`.NAME.tmp-PID-N`), fsyncs it, renames it over the old one and
//! fsyncs the directory, so a power cut leaves the old or the new file, never a mix; it refuses
//! ([`StateError::TooLarge`]) a value whose file its own readers would refuse. Readers ignore
//! fields they do not know (both slots' updaters share this directory).
//!
//! A file that does not parse, or is larger than [`MAX_STATE_FILE_LEN`], is *damaged*, which is
//! not the same as missing: [`StateDir::read`] keeps its bytes aside as `NAME.damaged-TIME`
//! (at most [`MAX_DAMAGED_KEPT`] per file), removes it, and says [`Loaded::Damaged`], with the
//! bytes for a caller that can salvage something. [`StateDir::damaged`] lists the copies kept
//! for `updater status`. Files owned here:
//!
//! - `install-progress.json` ([`InstallProgress`]): the last durable checkpoint of an install.
//! - `pending.json` ([`PendingInstall`]): the slot flipped to and what was installed in it.
//!
//! ```
//! use updater::state::{Loaded, StateDir};
//! let dir = tempfile::tempdir().unwrap();
//! let state = StateDir::under_root(dir.path());
//! state.store("n.json", &7u32).unwrap();
//! assert!(matches!(state.read::<u32>("n.json").unwrap(), Loaded::Present(7)));
//! std::fs::write(state.path("n.json"), b"{7").unwrap();
//! let Loaded::Damaged(d) = state.read::<u32>("n.json").unwrap() else { panic!() };
//! assert_eq!(state.damaged().unwrap(), vec![d.file]);
//! assert!(matches!(state.read::<u32>("n.json").unwrap(), Loaded::Missing));
//! ```

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Largest state file read, in bytes; [`StateDir::store`] refuses to write a larger one.
pub const MAX_STATE_FILE_LEN: u64 = 64 << 10;
/// Most bytes of a damaged file handed to a caller for salvage (an oversized file is read this
/// far and no further).
pub const MAX_SALVAGE_LEN: u64 = 256 << 10;
/// Damaged copies kept per state file; the oldest are removed first.
pub const MAX_DAMAGED_KEPT: usize = 4;
/// Most directory entries looked at when listing damaged copies or leftover temporary files.
pub const MAX_DIR_ENTRIES: usize = 4096;
/// Age in seconds after which a temporary file is taken for the leftover of a writer that died
/// and removed by the next write in the directory.
pub const STALE_TEMP_SECS: u64 = 600;
/// Format version of the files written here.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// Why a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Reading or writing failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done (`writing`, `renaming`…).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The value to store encodes to more than [`MAX_STATE_FILE_LEN`]: written, it could not be
    /// read back. Nothing was written.
    #[error("state file {path} would be {len} bytes, more than {max}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its encoded size.
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// The value to store cannot be encoded as JSON.
    #[error("encoding state file {path}")]
    Encoding {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The file is damaged (from [`StateDir::load`]); it was kept aside and removed.
    #[error("state file {} is damaged ({reason}); kept as {}", .file.name, .file.kept_as.display())]
    Damaged {
        /// The copy kept aside.
        file: DamagedFile,
        /// Why it was refused.
        reason: String,
    },
}

/// A damaged state file's copy, kept aside as `NAME.damaged-TIME[-N]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedFile {
    /// The state file's name (`failed.json`).
    pub name: String,
    /// The copy.
    pub kept_as: PathBuf,
    /// The copy's size in bytes.
    pub len: u64,
    /// Unix time it was set aside.
    pub at: u64,
}

/// A state file found damaged by [`StateDir::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// The copy kept aside.
    pub file: DamagedFile,
    /// Why it was refused: the JSON error, or its size.
    pub reason: String,
    /// Its first bytes, at most [`MAX_SALVAGE_LEN`].
    pub bytes: Vec<u8>,
    /// Whether `bytes` is the whole file.
    pub whole: bool,
}

/// What [`StateDir::read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded<T> {
    /// No such file.
    Missing,
    /// The file, parsed.
    Present(T),
    /// The file is damaged: it was kept aside (and, from [`StateDir::read`], removed).
    Damaged(Damaged),
}

impl<T> Loaded<T> {
    /// The value, or `None` when missing or damaged: for files whose loss only means starting
    /// over (an install checkpoint). The damaged copy stays listed by [`StateDir::damaged`].
    pub fn into_option(self) -> Option<T> {
        match self {
            Loaded::Present(v) => Some(v),
            Loaded::Missing | Loaded::Damaged(_) => None,
        }
    }
}

/// Where the updater keeps state under a root directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
    /// Whether this directory's leftover temporary files were looked for already.
    swept: Arc<AtomicBool>,
}

/// Distinguishes temporary files of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Marks a damaged copy: `NAME.damaged-TIME[-N]`.
const DAMAGED_MARK: &str = ".damaged-";

/// What a state file's bytes are, before parsing.
enum Raw {
    Missing,
    Bytes { bytes: Vec<u8>, whole: bool },
}

impl StateDir {
    /// `ROOT/var/lib/updater`.
    pub fn under_root(root: &Path) -> StateDir {
        StateDir {
            dir: root.join("var/lib/updater"),
            swept: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Path of a state file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Reads a state file. A damaged one is kept aside, removed, and returned as
    /// [`Loaded::Damaged`], so the next read says [`Loaded::Missing`].
    pub fn read<T: DeserializeOwned>(&self, name: &str) -> Result<Loaded<T>, StateError> {
        let loaded = self.read_for_repair(name)?;
        if let Loaded::Damaged(_) = loaded {
            self.remove(name)?;
        }
        Ok(loaded)
    }

    /// Reads a state file like [`StateDir::read`], but leaves a damaged one in place (its copy
    /// is kept aside) for the caller to replace with [`StateDir::store`]: the name never stops
    /// holding either the damaged bytes or their replacement, whatever moment power is lost.
    pub fn read_for_repair<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Loaded<T>, StateError> {
        let path = self.path(name);
        let (bytes, whole) = match self.read_raw(&path)? {
            Raw::Missing => return Ok(Loaded::Missing),
            Raw::Bytes { bytes, whole } => (bytes, whole),
        };
        let reason = if bytes.len() as u64 > MAX_STATE_FILE_LEN {
            format!(
                "{}{} bytes, more than {MAX_STATE_FILE_LEN}",
                if whole { "" } else { "over " },
                bytes.len()
            )
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => return Ok(Loaded::Present(v)),
                Err(e) => e.to_string(),
            }
        };
        let file = self.keep_aside(name)?;
        Ok(Loaded::Damaged(Damaged {
            file,
            reason,
            bytes,
            whole,
        }))
    }

    /// Reads a state file; `None` when it is missing. A damaged file is kept aside, removed, and
    /// refused with [`StateError::Damaged`].
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        match self.read(name)? {
            Loaded::Missing => Ok(None),
            Loaded::Present(v) => Ok(Some(v)),
            Loaded::Damaged(d) => Err(StateError::Damaged {
                file: d.file,
                reason: d.reason,
            }),
        }
    }

    /// The bytes of `path`, at most [`MAX_SALVAGE_LEN`] of them.
    fn read_raw(&self, path: &Path) -> Result<Raw, StateError> {
        let io = |source| StateError::Io {
            action: "reading",
            path: path.to_owned(),
            source,
        };
        match std::fs::metadata(path) {
            // A FIFO or device would block or never end: refuse it before opening.
            Ok(m) if !m.is_file() => {
                return Err(io(std::io::Error::other("not a regular file")));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Raw::Missing),
            Err(e) => return Err(io(e)),
        }
        let f = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        f.take(MAX_SALVAGE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let whole = bytes.len() as u64 <= MAX_SALVAGE_LEN;
        bytes.truncate(MAX_SALVAGE_LEN as usize);
        Ok(Raw::Bytes { bytes, whole })
    }

    /// Keeps the current bytes of `name` as `name.damaged-TIME[-N]` (a hard link, or a copy
    /// where links fail), once: a copy of the same file kept earlier is reused. Then removes
    /// the oldest copies beyond [`MAX_DAMAGED_KEPT`].
    fn keep_aside(&self, name: &str) -> Result<DamagedFile, StateError> {
        use std::os::unix::fs::MetadataExt;
        let path = self.path(name);
        let meta = std::fs::metadata(&path).map_err(|source| StateError::Io {
            action: "reading",
            path: path.clone(),
            source,
        })?;
        let kept: Vec<(u32, DamagedFile)> = self
            .damaged_in_order()?
            .into_iter()
            .filter(|(_, k)| k.name == name)
            .collect();
        for (_, k) in &kept {
            if std::fs::metadata(&k.kept_as)
                .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
            {
                return Ok(k.clone());
            }
        }
        let at = crate::history::now();
        // After every copy of the same second, so that name order stays age order.
        let mut n = kept
            .iter()
            .filter(|(_, k)| k.at == at)
            .map(|(n, _)| n + 1)
            .max()
            .unwrap_or(0);
        let kept_as = loop {
            let candidate = self.path(&match n {
                0 => format!("{name}{DAMAGED_MARK}{at}"),
                n => format!("{name}{DAMAGED_MARK}{at}-{n}"),
            });
            match std::fs::hard_link(&path, &candidate) {
                Ok(()) => break candidate,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(StateError::Io {
                        action: "keeping a damaged copy as",
                        path: candidate,
                        source: e,
                    })
                }
                // No hard links here (or not allowed): copy through a temporary file.
                Err(_) => {
                    let tmp = self.temp_path(name);
                    let copied = std::fs::copy(&path, &tmp)
                        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                        .and_then(|()| std::fs::rename(&tmp, &candidate));
                    if let Err(source) = copied {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(StateError::Io {
                            action: "keeping a damaged copy as",
                            path: candidate,
                            source,
                        });
                    }
                    break candidate;
                }
            }
        };
        let excess = (kept.len() + 1).saturating_sub(MAX_DAMAGED_KEPT);
        for (_, old) in kept.iter().take(excess) {
            let _ = std::fs::remove_file(&old.kept_as);
        }
        self.sync_dir()?;
        Ok(DamagedFile {
            name: name.to_string(),
            kept_as,
            len: meta.len(),
            at,
        })
    }

    /// Every damaged copy kept aside, by file name, oldest first (at most [`MAX_DIR_ENTRIES`]
    /// directory entries are looked at): what `updater status` must show.
    pub fn damaged(&self) -> Result<Vec<DamagedFile>, StateError> {
        Ok(self
            .damaged_in_order()?
            .into_iter()
            .map(|(_, f)| f)
            .collect())
    }

    /// [`StateDir::damaged`], each with the sequence number its name carries.
    fn damaged_in_order(&self) -> Result<Vec<(u32, DamagedFile)>, StateError> {
        let mut found: Vec<(u32, DamagedFile)> = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Io {
                    action: "listing",
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        for entry in entries.take(MAX_DIR_ENTRIES).flatten() {
            let file_name = entry.file_name();
            let Some((name, at, n)) = file_name.to_str().and_then(parse_damaged_name) else {
                continue;
            };
            let file = DamagedFile {
                name: name.to_string(),
                kept_as: entry.path(),
                len: entry.metadata().map_or(0, |m| m.len()),
                at,
            };
            found.push((n, file));
        }
        found.sort_by(|(na, a), (nb, b)| (&a.name, a.at, na).cmp(&(&b.name, b.at, nb)));
        Ok(found)
    }

    /// A temporary file name for `name` that no other writer uses.
    fn temp_path(&self, name: &str) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.path(&format!(".{name}.tmp-{}-{n}", std::process::id()))
    }

    /// Creates a temporary file for `name` that no other writer uses: a fresh name, created
    /// only if it does not exist (a writer in another PID namespace may share the PID).
    fn create_temp(&self, name: &str) -> Result<(PathBuf, std::fs::File), StateError> {
        let mut tries = 0;
        loop {
            let tmp = self.temp_path(name);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
            {
                Ok(f) => return Ok((tmp, f)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => {
                    tries += 1;
                }
                Err(source) => {
                    return Err(StateError::Io {
                        action: "creating",
                        path: tmp,
                        source,
                    })
                }
            }
        }
    }

    /// Removes temporary files older than [`STALE_TEMP_SECS`], once per [`StateDir`]: what a
    /// writer killed between creating and renaming its file left. Failures are ignored (the
    /// next process tries again).
    fn sweep_stale_temps(&self) {
        if self.swept.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = std::time::SystemTime::now();
        for entry in entries.take(MAX_DIR_ENTRIES).flatten() {
            let file_name = entry.file_name();
            let Some(n) = file_name.to_str() else {
                continue;
            };
            // `.NAME.tmp-PID-N`, and `.NAME.tmp` from updaters before unique names.
            let temp = n.starts_with('.') && (n.ends_with(".tmp") || n.contains(".tmp-"));
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age.as_secs() >= STALE_TEMP_SECS);
            if temp && old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Writes a state file atomically (unique temp file, fsync, rename, fsync directory).
    /// Refuses a value that encodes to more than [`MAX_STATE_FILE_LEN`] before touching
    /// anything; on failure the temp file is removed and the old file stays.
    pub fn store<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let path = self.path(name);
        let mut text = serde_json::to_vec_pretty(value).map_err(|source| StateError::Encoding {
            path: path.clone(),
            source,
        })?;
        text.push(b'\n');
        if text.len() as u64 > MAX_STATE_FILE_LEN {
            return Err(StateError::TooLarge {
                path,
                len: text.len() as u64,
                max: MAX_STATE_FILE_LEN,
            });
        }
        self.store_bytes(name, &text)
    }

    /// Writes `bytes` as the file `name` of the state directory atomically (unique temporary
    /// file, fsync, rename, fsync of the directory): for files that are not JSON state, such as
    /// the agent's cached copy of the last accepted stream.
    pub fn store_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        let path = self.path(name);
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        self.sweep_stale_temps();
        let (tmp, mut file) = self.create_temp(name)?;
        let mut publish = || {
            file.write_all(bytes).map_err(io("writing", &tmp))?;
            file.sync_all().map_err(io("syncing", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io("renaming", &path))
        };
        let written = publish();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.sync_dir()
    }

    /// Removes a state file (and syncs the directory); missing is fine.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(StateError::Io {
                    action: "removing",
                    path,
                    source,
                })
            }
        }
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), StateError> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::Io {
                action: "syncing",
                path: self.dir.clone(),
                source,
            })
    }
}

/// `NAME.damaged-TIME[-N]` → (NAME, TIME, N).
fn parse_damaged_name(file_name: &str) -> Option<(&str, u64, u32)> {
    let (name, rest) = file_name.rsplit_once(DAMAGED_MARK)?;
    let (at, n) = match rest.split_once('-') {
        Some((at, n)) => (at, n.parse().ok()?),
        None => (rest, 0),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    (digits(at) && !name.is_empty() && !name.starts_with('.')).then_some(())?;
    Some((name, at.parse().ok()?, n))
}

/// File name of [`InstallProgress`].
pub const INSTALL_PROGRESS: &str = "install-progress.json";
/// File name of [`PendingInstall`].
pub const PENDING: &str = "pending.json";

/// The last durable checkpoint of an install: every chunk before `next_chunk` is on the slot
/// and was fsynced before this file was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallProgress {
    /// [`STATE_FORMAT_VERSION`].
    pub format_version: u32,
    /// SHA-256 of the payload's signed manifest (hex).
    pub payload_id: String,
    /// PARTUUID of the slot being written.
    pub slot_partuuid: String,
    /// Version being installed.
    pub version: String,
    /// First chunk not yet known to be durable.
    pub next_chunk: u32,
    /// Chunks in the payload.
    pub chunk_count: u32,
}

/// An installed, verified and flipped slot waiting for its first boot and health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingInstall {
    /// [`STATE_FORMAT_VERSION`].
    pub format_version: u32,
    /// Slot name (`A` or `B`).
    pub slot: String,
    /// PARTUUID of the slot.
    pub slot_partuuid: String,
    /// The installed version.
    pub version: String,
    /// SHA-256 of the payload's signed manifest (hex).
    pub payload_id: String,
    /// Whether the GPT was flipped to this slot (`--no-flip` leaves it unbootable).
    pub flipped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::under_root(dir.path());
        std::fs::create_dir_all(state.path("")).unwrap();
        (dir, state)
    }

    fn names(state: &StateDir) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(state.path(""))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    }

    /// Issue 14 defect 3: no state file may become unreadable through the updater's own writes.
    #[test]
    fn store_refuses_a_file_its_own_load_would_refuse() {
        let (_dir, state) = state();
        // A JSON string of N bytes encodes to N + 3 (quotes and newline).
        let fits = "x".repeat(MAX_STATE_FILE_LEN as usize - 3);
        state.store("big.json", &fits).unwrap();
        assert_eq!(state.load::<String>("big.json").unwrap(), Some(fits));
        let over = "x".repeat(MAX_STATE_FILE_LEN as usize - 2);
        let err = state.store("big.json", &over).unwrap_err();
        assert!(matches!(
            err,
            StateError::TooLarge { len, max: MAX_STATE_FILE_LEN, .. } if len == MAX_STATE_FILE_LEN + 1
        ));
        assert_eq!(names(&state), ["big.json"], "nothing else written");
    }

    /// Issue 14 defect 4: corrupt is not missing.
    #[test]
    fn a_damaged_file_is_kept_aside_and_not_read_as_missing() {
        let (_dir, state) = state();
        state.store(PENDING, &1u32).unwrap();
        assert!(matches!(
            state.read::<u32>(PENDING).unwrap(),
            Loaded::Present(1)
        ));
        std::fs::write(state.path(PENDING), b"{1").unwrap();
        let Loaded::Damaged(d) = state.read::<u32>(PENDING).unwrap() else {
            panic!("damaged file read as something else");
        };
        assert_eq!(d.bytes, b"{1");
        assert!(d.whole);
        assert!(d.reason.contains("expected"), "{}", d.reason);
        assert_eq!(d.file.name, PENDING);
        assert_eq!(std::fs::read(&d.file.kept_as).unwrap(), b"{1");
        assert_eq!(state.damaged().unwrap(), vec![d.file.clone()]);
        let kept = d.file.kept_as.file_name().unwrap().to_str().unwrap();
        assert_eq!(names(&state), [kept]);
        assert!(matches!(
            state.read::<u32>(PENDING).unwrap(),
            Loaded::Missing
        ));
    }

    #[test]
    fn load_refuses_a_damaged_file_with_where_it_was_kept() {
        let (_dir, state) = state();
        std::fs::write(state.path(PENDING), b"{1").unwrap();
        let err = state.load::<u32>(PENDING).unwrap_err();
        let StateError::Damaged { file, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(state.damaged().unwrap(), vec![file.clone()]);
        assert!(err
            .to_string()
            .starts_with("state file pending.json is damaged"));
        assert_eq!(state.load::<u32>(PENDING).unwrap(), None);
    }

    #[test]
    fn an_oversized_file_is_damaged_and_read_only_up_to_the_salvage_limit() {
        let (_dir, state) = state();
        let rows = [
            (MAX_STATE_FILE_LEN as usize, false),
            (MAX_STATE_FILE_LEN as usize + 1, true),
            (MAX_SALVAGE_LEN as usize + 1, true),
        ];
        for (len, damaged) in rows {
            let text = format!("\"{}\"", "x".repeat(len - 2));
            std::fs::write(state.path("s.json"), &text).unwrap();
            match state.read::<String>("s.json").unwrap() {
                Loaded::Present(s) => assert!(!damaged && s.len() == len - 2),
                Loaded::Damaged(d) => {
                    assert!(damaged, "{len}");
                    assert_eq!(d.whole, len as u64 <= MAX_SALVAGE_LEN);
                    assert_eq!(d.bytes.len() as u64, (len as u64).min(MAX_SALVAGE_LEN));
                    assert_eq!(d.file.len, len as u64);
                }
                Loaded::Missing => panic!("{len}"),
            }
        }
    }

    #[test]
    fn a_damaged_file_left_for_repair_is_kept_aside_once() {
        let (_dir, state) = state();
        std::fs::write(state.path("f.json"), b"{").unwrap();
        let first = state.read_for_repair::<u32>("f.json").unwrap();
        let again = state.read_for_repair::<u32>("f.json").unwrap();
        assert_eq!(first, again);
        assert_eq!(state.damaged().unwrap().len(), 1);
        assert_eq!(std::fs::read(state.path("f.json")).unwrap(), b"{");
    }

    #[test]
    fn damaged_copies_are_bounded_per_file_keeping_the_newest() {
        let (_dir, state) = state();
        for i in 0..(MAX_DAMAGED_KEPT + 2) {
            std::fs::write(state.path("f.json"), format!("{{{i}")).unwrap();
            assert!(matches!(
                state.read::<u32>("f.json").unwrap(),
                Loaded::Damaged(_)
            ));
        }
        std::fs::write(state.path("g.json"), b"{").unwrap();
        state.read::<u32>("g.json").unwrap();
        let kept = state.damaged().unwrap();
        let contents: Vec<_> = kept
            .iter()
            .map(|k| (k.name.clone(), std::fs::read_to_string(&k.kept_as).unwrap()))
            .collect();
        let want = [
            ("f.json", "{2"),
            ("f.json", "{3"),
            ("f.json", "{4"),
            ("f.json", "{5"),
            ("g.json", "{"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect();
        assert_eq!(contents, want);
    }

    #[test]
    fn damaged_copy_names_parse_only_as_written() {
        let rows = [
            (
                "failed.json.damaged-1700000000",
                Some(("failed.json", 1700000000, 0)),
            ),
            (
                "failed.json.damaged-1700000000-3",
                Some(("failed.json", 1700000000, 3)),
            ),
            ("failed.json.damaged-", None),
            ("failed.json.damaged-17x", None),
            ("failed.json.damaged-1-x", None),
            (".failed.json.damaged-1", None),
            (".damaged-1", None),
            ("failed.json", None),
        ];
        for (name, want) in rows {
            assert_eq!(parse_damaged_name(name), want, "{name}");
        }
    }

    /// Issue 14 defect 2: two writers shared `.NAME.tmp`, so one renamed the other's file away
    /// and failed (or published its half-written bytes).
    #[test]
    fn concurrent_writers_never_share_a_temp_file() {
        let (_dir, state) = state();
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let state = state.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        state.store("x.json", &(t, i)).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let (_, last) = state.load::<(u32, u32)>("x.json").unwrap().unwrap();
        assert_eq!(last, 199);
        assert_eq!(names(&state), ["x.json"]);
    }

    #[test]
    fn a_failed_write_removes_its_temp_file_and_keeps_the_old_file() {
        let (_dir, state) = state();
        // Renaming a file over a non-empty directory fails.
        std::fs::create_dir(state.path("d.json")).unwrap();
        std::fs::write(state.path("d.json/x"), b"").unwrap();
        let err = state.store("d.json", &1u32).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Io {
                    action: "renaming",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(names(&state), ["d.json"]);
    }

    #[test]
    fn temp_files_left_by_dead_writers_are_removed_once_stale() {
        let (_dir, state) = state();
        let old =
            std::time::SystemTime::now() - std::time::Duration::from_secs(STALE_TEMP_SECS + 5);
        let leftovers = [
            (".x.json.tmp", true),
            (".x.json.tmp-99-0", true),
            (".y.json.tmp-99-1", true),
            (".x.json.tmp-98-0", false),
            ("x.json.tmp", true),
        ];
        for (name, stale) in leftovers {
            let f = std::fs::File::create(state.path(name)).unwrap();
            if stale {
                f.set_modified(old).unwrap();
            }
        }
        state.store("x.json", &1u32).unwrap();
        assert_eq!(names(&state), [".x.json.tmp-98-0", "x.json", "x.json.tmp"]);
    }

    #[test]
    fn a_state_file_that_is_not_a_regular_file_is_refused() {
        let (_dir, state) = state();
        std::fs::create_dir(state.path("d.json")).unwrap();
        let err = state.read::<u32>("d.json").unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Io {
                    action: "reading",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// An older updater reads what a newer one wrote: unknown fields are ignored.
    #[test]
    fn newer_install_files_with_unknown_fields_still_read() {
        let (_dir, state) = state();
        std::fs::write(
            state.path(PENDING),
            r#"{"format_version":9,"slot":"B","slot_partuuid":"p","version":"2.0","payload_id":"ab","flipped":true,"boot_count":3}"#,
        )
        .unwrap();
        std::fs::write(
            state.path(INSTALL_PROGRESS),
            r#"{"format_version":9,"payload_id":"ab","slot_partuuid":"p","version":"2.0","next_chunk":3,"chunk_count":9,"etag":"x"}"#,
        )
        .unwrap();
        let p: PendingInstall = state.load(PENDING).unwrap().unwrap();
        assert!(p.flipped && p.version == "2.0" && p.format_version == 9);
        let i: InstallProgress = state.load(INSTALL_PROGRESS).unwrap().unwrap();
        assert_eq!((i.next_chunk, i.chunk_count), (3, 9));
    }

    /// The fuzz target's seeds are the files as written.
    #[test]
    fn fuzz_seeds_parse_as_their_state_files() {
        use crate::history::{FailedVersions, HealthReport, SlotVersions};
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/state");
        let read = |name: &str| std::fs::read(seeds.join(name)).unwrap();
        serde_json::from_slice::<PendingInstall>(&read(PENDING)).unwrap();
        serde_json::from_slice::<InstallProgress>(&read(INSTALL_PROGRESS)).unwrap();
        serde_json::from_slice::<FailedVersions>(&read("failed.json")).unwrap();
        serde_json::from_slice::<HealthReport>(&read("health.json")).unwrap();
        serde_json::from_slice::<SlotVersions>(&read("versions.json")).unwrap();
    }
}
