//! The record of a RAM boot: `/run/updater/netboot.json`, written by `updater netboot` in the
//! initramfs once the image verified, read by `updater status` on the running node.
//!
//! `/run` is a tmpfs the initramfs hands over to the booted system, so the record lives exactly
//! as long as the boot it describes. Format (JSON object, at most [`MAX_RECORD_LEN`] bytes;
//! unknown fields are ignored, fields never change meaning): `format_version` (1), `mode`
//! (`payload` or `stream`), `url` (the payload fetched), `stream_url` (stream mode), `compatible`,
//! `version`, `payload_id`, `signed_by`, `image_size`, `image_sha256`, `image` (the file in RAM),
//! `fetched_at` (Unix seconds, the node's clock), `retries`, `peak_rss_kib`.
//!
//! ```
//! use updater::netboot::record::{NetbootRecord, RECORD_PATH};
//! let dir = tempfile::tempdir().unwrap();
//! assert!(NetbootRecord::load(dir.path()).unwrap().is_none());
//! assert_eq!(RECORD_PATH, "run/updater/netboot.json");
//! ```

use super::VerifiedImage;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the record is, relative to the root.
pub const RECORD_PATH: &str = "run/updater/netboot.json";
/// Format version written.
pub const RECORD_FORMAT_VERSION: u32 = 1;
/// Longest record read.
pub const MAX_RECORD_LEN: u64 = 16 << 10;
/// `mode` of a boot from a payload URL.
pub const MODE_PAYLOAD: &str = "payload";
/// `mode` of a boot from a release stream.
pub const MODE_STREAM: &str = "stream";

/// What a RAM-booted node booted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetbootRecord {
    /// [`RECORD_FORMAT_VERSION`].
    pub format_version: u32,
    /// [`MODE_PAYLOAD`] or [`MODE_STREAM`].
    pub mode: String,
    /// The release stream, in stream mode.
    #[serde(default)]
    pub stream_url: Option<String>,
    /// What the fetch verified: `url`, `compatible`, `version`, `payload_id`, `signed_by`,
    /// `image_size`, `image_sha256`, `image`, `fetched_at` and `retries`, at the top level of
    /// the JSON object like the fields above.
    #[serde(flatten)]
    pub verified: VerifiedImage,
    /// Peak resident memory of the fetch, KiB.
    #[serde(default)]
    pub peak_rss_kib: Option<u64>,
}

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Reading or writing failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The record is not valid JSON of this shape.
    #[error("parsing {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl NetbootRecord {
    /// The record of a boot in `mode` from `verified` (peak memory not yet measured).
    pub fn new(mode: &str, stream_url: Option<String>, verified: VerifiedImage) -> NetbootRecord {
        NetbootRecord {
            format_version: RECORD_FORMAT_VERSION,
            mode: mode.to_owned(),
            stream_url,
            verified,
            peak_rss_kib: None,
        }
    }

    /// Reads `ROOT/run/updater/netboot.json`; `None` when the node is not RAM-booted.
    pub fn load(root: &Path) -> Result<Option<NetbootRecord>, RecordError> {
        let path = root.join(RECORD_PATH);
        let text = match crate::device::read_bounded(&path, MAX_RECORD_LEN) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RecordError::Io {
                    action: "reading",
                    path,
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| RecordError::Parse { path, source })
    }

    /// Writes the record to `path` (temporary file and rename: readers see all or nothing).
    pub fn store(&self, path: &Path) -> Result<(), RecordError> {
        let io = |action, source| RecordError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let json = serde_json::to_vec_pretty(self).expect("a record serializes");
        std::fs::write(&tmp, json).map_err(|e| io("writing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("renaming into", e))
    }

    /// The status line: `RAM-booted from URL, version V` (and the stream, in stream mode).
    pub fn status_line(&self) -> String {
        let via = self
            .stream_url
            .as_deref()
            .map_or(String::new(), |s| format!(" (release stream {s})"));
        format!(
            "RAM-booted from {}, version {}{via}",
            self.verified.url, self.verified.version
        )
    }
}
