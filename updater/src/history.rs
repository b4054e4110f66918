//! What the updater remembers about outcomes (DESIGN §7): failed versions and the last health
//! verdict, in `ROOT/var/lib/updater` through [`crate::state::StateDir`].
//!
//! `failed.json` ([`FailedVersions`]) lists every version whose health checks failed or that
//! never came up, with the reason and the failing check's output; such a version is never
//! installed again automatically (DESIGN §6 invariant 7). `health.json` ([`HealthReport`]) is
//! the last verdict. Readers ignore unknown fields and missing ones take defaults, so both
//! slots' updaters can read what either wrote.
//!
//! ```
//! use updater::history::{History, FailedVersion};
//! use updater::state::StateDir;
//! let dir = tempfile::tempdir().unwrap();
//! let h = History::new(StateDir::under_root(dir.path()));
//! h.record_failed(FailedVersion { version: "3".into(), reason: "health check 10-app failed (exit 1)".into(), ..Default::default() }).unwrap();
//! assert!(h.failed().unwrap().find("3").is_some());
//! ```
use crate::state::{StateDir, StateError, STATE_FORMAT_VERSION};
use serde::{Deserialize, Serialize};

/// File name of [`FailedVersions`].
pub const FAILED: &str = "failed.json";
/// File name of [`HealthReport`].
pub const HEALTH: &str = "health.json";
/// File name of [`SlotVersions`].
pub const VERSIONS: &str = "versions.json";
/// Most failed versions remembered (the oldest are dropped first).
pub const MAX_FAILED_VERSIONS: usize = 64;

/// A version that failed its health checks or never came up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FailedVersion {
    /// `IMAGE_VERSION`.
    pub version: String,
    /// The slot it was installed in.
    pub slot: String,
    /// One line: why it failed.
    pub reason: String,
    /// The failing health check, if one failed.
    pub check: Option<String>,
    /// The tail of that check's output.
    pub output: Option<String>,
    /// Unix time it was recorded.
    pub at: u64,
}

/// Every failed version, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FailedVersions {
    /// State format.
    pub format_version: u32,
    /// Oldest first.
    pub versions: Vec<FailedVersion>,
}

impl FailedVersions {
    /// The record of `version`, if it failed.
    pub fn find(&self, version: &str) -> Option<&FailedVersion> {
        self.versions.iter().find(|f| f.version == version)
    }
}

/// Outcome of one health check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckResult {
    /// File name of the check.
    pub name: String,
    /// `passed`, `failed (exit N)`, `killed by signal N`, `timed out after Ns`, `not run: …`.
    pub outcome: String,
    /// Whether it passed.
    pub passed: bool,
    /// Wall time in milliseconds.
    pub millis: u64,
    /// The tail of its combined stdout and stderr.
    pub output: String,
}

/// The last health verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthReport {
    /// State format.
    pub format_version: u32,
    /// The slot that was checked.
    pub slot: String,
    /// Its version.
    pub version: String,
    /// All checks passed.
    pub passed: bool,
    /// One line summary.
    pub summary: String,
    /// Each check in the order run.
    pub checks: Vec<CheckResult>,
    /// Unix time of the verdict.
    pub at: u64,
}

/// The version each slot last booted with, by PARTUUID: how `updater status` names the
/// version of the slot that is not running.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlotVersions {
    /// State format.
    pub format_version: u32,
    /// PARTUUID → `IMAGE_VERSION`.
    pub slots: std::collections::BTreeMap<String, String>,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Failed versions and health verdicts in a state directory.
#[derive(Debug, Clone)]
pub struct History {
    state: StateDir,
}

impl History {
    /// History kept in `state`.
    pub fn new(state: StateDir) -> History {
        History { state }
    }

    /// Every failed version.
    pub fn failed(&self) -> Result<FailedVersions, StateError> {
        Ok(self.state.load(FAILED)?.unwrap_or_default())
    }

    /// Records a failed version; an earlier record of the same version is kept unless
    /// `replace` (the first explanation is usually the better one).
    pub fn record_failed(&self, f: FailedVersion) -> Result<(), StateError> {
        let mut all = self.failed()?;
        all.versions.retain(|v| v.version != f.version);
        all.versions.push(FailedVersion {
            at: if f.at == 0 { now() } else { f.at },
            ..f
        });
        let excess = all.versions.len().saturating_sub(MAX_FAILED_VERSIONS);
        all.versions.drain(..excess);
        all.format_version = STATE_FORMAT_VERSION;
        self.state.store(FAILED, &all)
    }

    /// The version each slot last booted with.
    pub fn versions(&self) -> Result<SlotVersions, StateError> {
        Ok(self.state.load(VERSIONS)?.unwrap_or_default())
    }

    /// Remembers that the slot `partuuid` booted `version` (writes only on a change).
    pub fn record_version(&self, partuuid: &str, version: &str) -> Result<(), StateError> {
        let mut v = self.versions()?;
        if v.slots.get(partuuid).map(String::as_str) == Some(version) {
            return Ok(());
        }
        v.slots.insert(partuuid.to_string(), version.to_string());
        v.format_version = STATE_FORMAT_VERSION;
        self.state.store(VERSIONS, &v)
    }

    /// The last health verdict.
    pub fn health(&self) -> Result<Option<HealthReport>, StateError> {
        self.state.load(HEALTH)
    }

    /// Records a health verdict.
    pub fn set_health(&self, r: &HealthReport) -> Result<(), StateError> {
        self.state.store(
            HEALTH,
            &HealthReport {
                format_version: STATE_FORMAT_VERSION,
                ..r.clone()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_versions_are_kept_once_each_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::new(StateDir::under_root(dir.path()));
        for i in 0..(MAX_FAILED_VERSIONS + 5) {
            h.record_failed(FailedVersion {
                version: i.to_string(),
                reason: "x".into(),
                ..Default::default()
            })
            .unwrap();
        }
        h.record_failed(FailedVersion {
            version: "68".into(),
            reason: "again".into(),
            ..Default::default()
        })
        .unwrap();
        let f = h.failed().unwrap();
        assert_eq!(f.versions.len(), MAX_FAILED_VERSIONS);
        assert_eq!(f.find("68").unwrap().reason, "again");
        assert!(f.find("0").is_none());
    }

    #[test]
    fn a_newer_file_with_unknown_fields_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::under_root(dir.path());
        std::fs::create_dir_all(state.path("")).unwrap();
        std::fs::write(state.path(FAILED), r#"{"format_version": 9, "versions": [{"version": "3", "reason": "r", "severity": "high"}], "extra": 1}"#).unwrap();
        let f = History::new(state).failed().unwrap();
        assert_eq!(f.find("3").unwrap().reason, "r");
    }
}
