//! Device state files under `ROOT/var/lib/updater/`, written atomically.
//!
//! Each file is JSON with a `format_version`; a write goes to a temporary file that is fsynced,
//! renamed over the old one, and the directory fsynced, so a power cut leaves the old or the
//! new file, never a mix. Readers ignore fields they do not know (both slots' updaters share
//! this directory). Files owned here:
//!
//! - `install-progress.json` ([`InstallProgress`]): the last durable checkpoint of an install.
//! - `pending.json` ([`PendingInstall`]): the slot flipped to and what was installed in it.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest state file read, in bytes.
pub const MAX_STATE_FILE_LEN: u64 = 64 << 10;
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
    /// The file is larger than [`MAX_STATE_FILE_LEN`].
    #[error("state file {path} is {len} bytes, more than {max}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The maximum.
        max: u64,
    },
}

/// Where the updater keeps state under a root directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// `ROOT/var/lib/updater`.
    pub fn under_root(root: &Path) -> StateDir {
        StateDir {
            dir: root.join("var/lib/updater"),
        }
    }

    /// Path of a state file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Reads a state file; `None` when it is missing or unparsable (a damaged checkpoint only
    /// means starting over).
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        let path = self.path(name);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    action: "reading",
                    path,
                    source,
                })
            }
        };
        if len > MAX_STATE_FILE_LEN {
            return Err(StateError::TooLarge {
                path,
                len,
                max: MAX_STATE_FILE_LEN,
            });
        }
        let bytes = std::fs::read(&path).map_err(|source| StateError::Io {
            action: "reading",
            path: path.clone(),
            source,
        })?;
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Writes a state file atomically (temp file, fsync, rename, fsync directory).
    pub fn store<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut text = serde_json::to_vec_pretty(value).expect("state serializes");
        text.push(b'\n');
        f.write_all(&text).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("renaming", &path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", &self.dir))?;
        Ok(())
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
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::Io {
                action: "syncing",
                path: self.dir.clone(),
                source,
            })
    }
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
