//! What the updater remembers about outcomes (DESIGN §7): failed versions and the last health
//! verdict, in `ROOT/var/lib/updater` through [`crate::state::StateDir`].
//!
//! `failed.json` ([`FailedVersions`]) lists every version whose health checks failed or that
//! never came up, with the reason and the failing check's output; such a version is never
//! installed again automatically (DESIGN §6 invariant 7). Versions compare by version order
//! ([`crate::version::compare_versions`]: `2.0` is `2.00`). `health.json` ([`HealthReport`]) is
//! the last verdict. Readers ignore unknown fields and missing ones take defaults, so both
//! slots' updaters can read what either wrote.
//!
//! Every file written here stays readable: text is trimmed to a bound measured after JSON
//! escaping ([`MAX_STORED_OUTPUT`], [`MAX_STORED_TEXT`], [`MAX_STORED_NAME`],
//! [`MAX_STORED_VERSION`]) and each file is
//! fitted into a byte budget, half the read limit ([`FAILED_BUDGET`], [`HEALTH_BUDGET`]), so
//! recording a failure cannot fail for its size. A damaged `failed.json` fails closed: the
//! versions found in it are salvaged ([`salvage_failed`]), and when the salvage may have missed
//! one, every version is refused until an operator clears [`FailedVersions::refuse_all`].
//!
//! ```
//! use updater::history::{History, FailedVersion};
//! use updater::state::StateDir;
//! let dir = tempfile::tempdir().unwrap();
//! let h = History::new(StateDir::under_root(dir.path()));
//! h.record_failed(FailedVersion { version: "3.0".into(), reason: "health check 10-app failed (exit 1)".into(), ..Default::default() }).unwrap();
//! assert!(h.failed().unwrap().refusal("3.00").is_some());
//! assert!(h.failed().unwrap().refusal("3.1").is_none());
//! ```
use crate::state::{Loaded, StateDir, StateError, STATE_FORMAT_VERSION};
use crate::version::compare_versions;
use serde::{Deserialize, Serialize};

/// File name of [`FailedVersions`].
pub const FAILED: &str = "failed.json";
/// File name of [`HealthReport`].
pub const HEALTH: &str = "health.json";
/// File name of [`SlotVersions`].
pub const VERSIONS: &str = "versions.json";
/// Most failed versions remembered (the oldest are dropped first).
pub const MAX_FAILED_VERSIONS: usize = 64;
/// Most bytes of `failed.json` written: half of [`crate::state::MAX_STATE_FILE_LEN`]. Past it
/// the oldest entries lose their output, then the oldest entries go.
pub const FAILED_BUDGET: usize = 32 << 10;
/// Most bytes of `health.json` written: half of [`crate::state::MAX_STATE_FILE_LEN`]. Past it
/// outputs shrink, passed checks go, then the last checks.
pub const HEALTH_BUDGET: usize = 32 << 10;
/// Most bytes, once JSON-escaped, of a stored output tail (its end is kept).
pub const MAX_STORED_OUTPUT: usize = 2048;
/// Most bytes, once JSON-escaped, of a stored reason, summary or outcome (its start is kept).
pub const MAX_STORED_TEXT: usize = 512;
/// Most bytes, once JSON-escaped, of a stored slot, check name or PARTUUID (its start is kept).
pub const MAX_STORED_NAME: usize = 256;
/// Most bytes, once JSON-escaped, of a stored version: every version a payload can carry
/// ([`crate::payload::MAX_STRING_LEN`] bytes, 6 each at worst once escaped) is stored whole, so
/// a cut one was never installable.
pub const MAX_STORED_VERSION: usize = 6 * crate::payload::MAX_STRING_LEN;
/// Most slots remembered in `versions.json`.
pub const MAX_SLOT_VERSIONS: usize = 16;
/// Most versions [`salvage_failed`] takes from a damaged file.
pub const MAX_SALVAGED: usize = 256;

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

impl FailedVersion {
    /// Trims every field to its bound ([`MAX_STORED_VERSION`], [`MAX_STORED_NAME`],
    /// [`MAX_STORED_TEXT`], [`MAX_STORED_OUTPUT`]).
    fn bounded(self) -> FailedVersion {
        FailedVersion {
            version: head_within(&self.version, MAX_STORED_VERSION),
            slot: head_within(&self.slot, MAX_STORED_NAME),
            reason: head_within(&self.reason, MAX_STORED_TEXT),
            check: self.check.map(|c| head_within(&c, MAX_STORED_NAME)),
            output: self.output.map(|o| tail_within(&o, MAX_STORED_OUTPUT)),
            at: self.at,
        }
    }
}

/// Every failed version, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FailedVersions {
    /// State format.
    pub format_version: u32,
    /// Oldest first.
    pub versions: Vec<FailedVersion>,
    /// Set when a damaged `failed.json` could not be salvaged for certain: its `reason` says
    /// so, and every version is refused with it until an operator clears it
    /// ([`History::clear_refuse_all`]). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refuse_all: Option<FailedVersion>,
}

impl FailedVersions {
    /// The record of `version` (equal by version order), if it failed.
    pub fn find(&self, version: &str) -> Option<&FailedVersion> {
        self.versions
            .iter()
            .find(|f| compare_versions(&f.version, version).is_eq())
    }

    /// Why `version` must not be installed automatically: its own record, or
    /// [`FailedVersions::refuse_all`] when the list was damaged. What install decides on.
    pub fn refusal(&self, version: &str) -> Option<&FailedVersion> {
        self.find(version).or(self.refuse_all.as_ref())
    }

    /// Fits the list into [`FAILED_BUDGET`]: at most [`MAX_FAILED_VERSIONS`] entries, each
    /// field within its bound, then the oldest outputs dropped, then the oldest entries. The
    /// newest entry always stays.
    fn fit(&mut self) {
        self.format_version = STATE_FORMAT_VERSION;
        let excess = self.versions.len().saturating_sub(MAX_FAILED_VERSIONS);
        self.versions.drain(..excess);
        for v in &mut self.versions {
            *v = std::mem::take(v).bounded();
        }
        self.refuse_all = self.refuse_all.take().map(FailedVersion::bounded);
        let newest = self.versions.len().saturating_sub(1);
        let mut i = 0;
        while encoded_len(self) > FAILED_BUDGET && i < newest {
            self.versions[i].output = None;
            i += 1;
        }
        while encoded_len(self) > FAILED_BUDGET && self.versions.len() > 1 {
            self.versions.remove(0);
        }
    }
}

/// What [`salvage_failed`] found in a damaged `failed.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvage {
    /// Every version found in a `"version": "…"` pair, in file order, at most
    /// [`MAX_SALVAGED`].
    pub versions: Vec<String>,
    /// Whether nothing can have been missed: the bytes are the whole file, they end outside a
    /// string, braces and brackets balance and close at the end, every entry (counted by its
    /// `version`, `slot`, `reason` and `at` keys) gave a version, and no `refuse_all` is in them.
    pub certain: bool,
}

/// Finds the failed versions in damaged `failed.json` bytes (`whole`: they are the whole file)
/// with a lenient scan: strings are read with their escapes, anything else is skipped. Runs in
/// one pass over `bytes`; never panics.
pub fn salvage_failed(bytes: &[u8], whole: bool) -> Salvage {
    let mut s = Salvage::default();
    let (mut depth_brace, mut depth_bracket) = (0i64, 0i64);
    let (mut version_keys, mut entry_keys, mut refuse_all) = (0usize, [0usize; 3], false);
    let mut last_structural = None;
    let mut overflow = false;
    let mut i = 0;
    // Reads the string opening at `at`: its end (after the closing quote), if it closes.
    let string_end = |at: usize| {
        let mut j = at + 1;
        while j < bytes.len() {
            match bytes[j] {
                b'\\' => j += 2,
                b'"' => return Some(j + 1),
                _ => j += 1,
            }
        }
        None
    };
    let skip_ws = |mut j: usize| {
        while bytes.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        j
    };
    let mut closed = true;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let Some(end) = string_end(i) else {
                    closed = false;
                    break;
                };
                let key = &bytes[i + 1..end - 1];
                let after = skip_ws(end);
                i = end;
                if bytes.get(after) != Some(&b':') {
                    continue;
                }
                last_structural = Some(b':');
                i = after + 1;
                match key {
                    b"version" => {
                        version_keys += 1;
                        let v = skip_ws(i);
                        if bytes.get(v) != Some(&b'"') {
                            continue;
                        }
                        let Some(vend) = string_end(v) else {
                            continue;
                        };
                        let next = bytes.get(skip_ws(vend));
                        let text = serde_json::from_slice::<String>(&bytes[v..vend]).ok();
                        match text {
                            Some(t) if !t.is_empty() && matches!(next, Some(b',' | b'}')) => {
                                if s.versions.len() < MAX_SALVAGED {
                                    s.versions.push(head_within(&t, MAX_STORED_VERSION));
                                } else {
                                    overflow = true;
                                }
                            }
                            _ => {}
                        }
                    }
                    b"slot" => entry_keys[0] += 1,
                    b"reason" => entry_keys[1] += 1,
                    b"at" => entry_keys[2] += 1,
                    b"refuse_all" => refuse_all = true,
                    _ => {}
                }
            }
            c => {
                match c {
                    b'{' => depth_brace += 1,
                    b'}' => depth_brace -= 1,
                    b'[' => depth_bracket += 1,
                    b']' => depth_bracket -= 1,
                    _ => {}
                }
                if !c.is_ascii_whitespace() {
                    last_structural = Some(c);
                }
                i += 1;
            }
        }
    }
    let salvaged = s.versions.len() + usize::from(overflow);
    s.certain = whole
        && closed
        && !overflow
        && !refuse_all
        && depth_brace == 0
        && depth_bracket == 0
        && last_structural == Some(b'}')
        && version_keys == salvaged
        && entry_keys.iter().all(|&n| n <= salvaged);
    s
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

impl HealthReport {
    /// Fits the report into [`HEALTH_BUDGET`]: every field within its bound; then passed
    /// checks' outputs go, then passed checks, then failed checks' outputs halve until they fit
    /// or are empty (they explain a rollback), and last the checks at the end go. The summary
    /// says how many checks were not stored.
    fn fit(&mut self) {
        self.format_version = STATE_FORMAT_VERSION;
        self.slot = head_within(&self.slot, MAX_STORED_NAME);
        self.version = head_within(&self.version, MAX_STORED_VERSION);
        self.summary = head_within(&self.summary, MAX_STORED_TEXT);
        for c in &mut self.checks {
            c.name = head_within(&c.name, MAX_STORED_NAME);
            c.outcome = head_within(&c.outcome, MAX_STORED_TEXT);
            c.output = tail_within(&c.output, MAX_STORED_OUTPUT);
        }
        if encoded_len(self) <= HEALTH_BUDGET {
            return;
        }
        for c in self.checks.iter_mut().filter(|c| c.passed) {
            c.output.clear();
        }
        let original = self.checks.len();
        let summary = self.summary.clone();
        if encoded_len(self) > HEALTH_BUDGET {
            self.checks.retain(|c| !c.passed);
        }
        let mut output_max = MAX_STORED_OUTPUT;
        while encoded_len(self) > HEALTH_BUDGET && output_max > 0 {
            output_max /= 2;
            for c in &mut self.checks {
                c.output = tail_within(&c.output, output_max);
            }
        }
        if encoded_len(self) <= HEALTH_BUDGET {
            if self.checks.len() < original {
                let dropped = original - self.checks.len();
                let note = format!("{summary} ({dropped} passed checks not stored)");
                self.summary = head_within(&note, MAX_STORED_TEXT);
            }
            return;
        }
        // Keep the longest run of first checks that fits with the note: a binary search, since
        // each try encodes the whole report.
        let all = std::mem::take(&mut self.checks);
        let fitted = |keep: usize| {
            let note = format!("{summary} ({} checks not stored)", original - keep);
            HealthReport {
                summary: head_within(&note, MAX_STORED_TEXT),
                checks: all[..keep].to_vec(),
                ..self.clone()
            }
        };
        let (mut fits, mut too_many) = (0, all.len());
        while too_many - fits > 1 {
            let mid = fits + (too_many - fits) / 2;
            if encoded_len(&fitted(mid)) <= HEALTH_BUDGET {
                fits = mid;
            } else {
                too_many = mid;
            }
        }
        *self = fitted(fits);
    }
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

/// Bytes `c` takes in a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Marks text that was cut.
const CUT: &str = "…";

/// The longest start of `s` that takes at most `max` bytes once JSON-escaped, `…` included
/// when cut.
pub fn head_within(s: &str, max: usize) -> String {
    if s.chars().map(escaped_len).sum::<usize>() <= max {
        return s.to_string();
    }
    let Some(room) = max.checked_sub(CUT.len()) else {
        return String::new();
    };
    let (mut used, mut end) = (0, 0);
    for (at, c) in s.char_indices() {
        used += escaped_len(c);
        if used > room {
            break;
        }
        end = at + c.len_utf8();
    }
    format!("{}{CUT}", &s[..end])
}

/// The longest end of `s` that takes at most `max` bytes once JSON-escaped, `…` included when
/// cut.
pub fn tail_within(s: &str, max: usize) -> String {
    if s.chars().map(escaped_len).sum::<usize>() <= max {
        return s.to_string();
    }
    let Some(room) = max.checked_sub(CUT.len()) else {
        return String::new();
    };
    let (mut used, mut start) = (0, s.len());
    for (at, c) in s.char_indices().rev() {
        used += escaped_len(c);
        if used > room {
            break;
        }
        start = at;
    }
    format!("{CUT}{}", &s[start..])
}

/// Bytes `v` takes as written by [`StateDir::store`].
fn encoded_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec_pretty(v).map_or(usize::MAX, |t| t.len() + 1)
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

    /// Every failed version. A damaged `failed.json` is kept aside and replaced by what
    /// [`salvage_failed`] finds in it (the whole list when it was only too large); when the
    /// salvage is not certain, [`FailedVersions::refuse_all`] is set. Fails only when the state
    /// directory cannot be read or written, so an error here must refuse installs too.
    pub fn failed(&self) -> Result<FailedVersions, StateError> {
        let d = match self.state.read_for_repair::<FailedVersions>(FAILED)? {
            Loaded::Missing => return Ok(FailedVersions::default()),
            Loaded::Present(f) => return Ok(f),
            Loaded::Damaged(d) => d,
        };
        let at = now();
        let kept_as = d.file.kept_as.display();
        // Only too large (an older updater wrote it): the list itself is intact.
        let strict = d
            .whole
            .then(|| serde_json::from_slice::<FailedVersions>(&d.bytes).ok())
            .flatten();
        let mut list = match strict {
            Some(list) => list,
            None => {
                let salvage = salvage_failed(&d.bytes, d.whole);
                let refuse_all = (!salvage.certain).then(|| FailedVersion {
                    reason: format!(
                        "failed.json was damaged ({}) and may have lost failed versions; \
                         kept as {kept_as}; every version is refused until an operator \
                         clears refuse_all (docs/usage/state.md)",
                        d.reason
                    ),
                    at,
                    ..Default::default()
                });
                let versions = salvage
                    .versions
                    .into_iter()
                    .map(|version| FailedVersion {
                        version,
                        reason: format!("salvaged from a damaged failed.json, kept as {kept_as}"),
                        at,
                        ..Default::default()
                    })
                    .collect();
                FailedVersions {
                    format_version: STATE_FORMAT_VERSION,
                    versions,
                    refuse_all,
                }
            }
        };
        list.fit();
        self.state.store(FAILED, &list)?;
        Ok(list)
    }

    /// Records a failed version, replacing an earlier record of the same version (by version
    /// order). The list is fitted into [`FAILED_BUDGET`], so its size never makes this fail.
    pub fn record_failed(&self, f: FailedVersion) -> Result<(), StateError> {
        let mut all = self.failed()?;
        all.versions
            .retain(|v| !compare_versions(&v.version, &f.version).is_eq());
        all.versions.push(FailedVersion {
            at: if f.at == 0 { now() } else { f.at },
            ..f
        });
        all.fit();
        self.state.store(FAILED, &all)
    }

    /// Clears [`FailedVersions::refuse_all`] (an operator's decision that the salvaged list is
    /// enough); the salvaged versions stay refused. Says whether it was set.
    pub fn clear_refuse_all(&self) -> Result<bool, StateError> {
        let mut all = self.failed()?;
        if all.refuse_all.take().is_none() {
            return Ok(false);
        }
        all.fit();
        self.state.store(FAILED, &all)?;
        Ok(true)
    }

    /// Every damaged state file kept aside ([`StateDir::damaged`]).
    pub fn damaged(&self) -> Result<Vec<crate::state::DamagedFile>, StateError> {
        self.state.damaged()
    }

    /// The version each slot last booted with (a damaged file is kept aside and forgotten).
    pub fn versions(&self) -> Result<SlotVersions, StateError> {
        Ok(self.state.read(VERSIONS)?.into_option().unwrap_or_default())
    }

    /// Remembers that the slot `partuuid` booted `version` (writes only on a change; keeps at
    /// most [`MAX_SLOT_VERSIONS`] slots, dropping others than this one first by name order).
    pub fn record_version(&self, partuuid: &str, version: &str) -> Result<(), StateError> {
        let (partuuid, version) = (
            head_within(partuuid, MAX_STORED_NAME),
            head_within(version, MAX_STORED_VERSION),
        );
        let mut v = self.versions()?;
        if v.slots.get(&partuuid) == Some(&version) {
            return Ok(());
        }
        v.slots.retain(|k, _| k.len() <= MAX_STORED_NAME);
        while v.slots.len() >= MAX_SLOT_VERSIONS {
            let Some(other) = v.slots.keys().find(|k| **k != partuuid).cloned() else {
                break;
            };
            v.slots.remove(&other);
        }
        v.slots.insert(partuuid, version);
        v.format_version = STATE_FORMAT_VERSION;
        self.state.store(VERSIONS, &v)
    }

    /// The last health verdict (a damaged file is kept aside and forgotten).
    pub fn health(&self) -> Result<Option<HealthReport>, StateError> {
        Ok(self.state.read(HEALTH)?.into_option())
    }

    /// Records a health verdict, fitted into [`HEALTH_BUDGET`].
    pub fn set_health(&self, r: &HealthReport) -> Result<(), StateError> {
        let mut r = r.clone();
        r.fit();
        self.state.store(HEALTH, &r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MAX_STATE_FILE_LEN;

    fn history() -> (tempfile::TempDir, History) {
        let dir = tempfile::tempdir().unwrap();
        let h = History::new(StateDir::under_root(dir.path()));
        (dir, h)
    }

    fn failed(version: &str) -> FailedVersion {
        FailedVersion {
            version: version.into(),
            slot: "B".into(),
            reason: "health check 10-app failed (exit 1)".into(),
            check: Some("10-app".into()),
            output: Some("boom\n".into()),
            at: 1,
        }
    }

    fn file_len(h: &History, name: &str) -> usize {
        std::fs::read(h.state.path(name)).unwrap().len()
    }

    #[test]
    fn failed_versions_are_kept_once_each_and_bounded() {
        let (_dir, h) = history();
        for i in 0..(MAX_FAILED_VERSIONS + 5) {
            h.record_failed(failed(&i.to_string())).unwrap();
        }
        h.record_failed(FailedVersion {
            reason: "again".into(),
            ..failed("68")
        })
        .unwrap();
        let f = h.failed().unwrap();
        assert_eq!(f.versions.len(), MAX_FAILED_VERSIONS);
        assert_eq!(f.find("68").unwrap().reason, "again");
        assert!(f.find("0").is_none());
    }

    /// Issue 14 defect 3: 64 failures whose output is 4 KiB of control bytes (6 bytes each once
    /// escaped) made failed.json pass its own 64 KiB read limit, and every later read failed.
    #[test]
    fn noisy_failures_keep_failed_json_readable_and_every_version() {
        let (_dir, h) = history();
        for i in 0..64 {
            h.record_failed(FailedVersion {
                output: Some("\u{1}".repeat(4096)),
                ..failed(&format!("1.{i}"))
            })
            .unwrap();
        }
        let f = h.failed().unwrap();
        assert!(file_len(&h, FAILED) <= FAILED_BUDGET);
        assert_eq!(
            f.versions.len(),
            64,
            "only outputs are dropped, not versions"
        );
        let newest = f.find("1.63").unwrap().output.as_deref().unwrap();
        assert!(newest.starts_with(CUT) && newest.ends_with('\u{1}'));
        assert!(f.find("1.0").unwrap().output.is_none());
    }

    #[test]
    fn failed_json_stays_within_budget_with_every_field_at_its_largest() {
        let (_dir, h) = history();
        let huge = "\u{1}".repeat(70_000);
        for i in 0..MAX_FAILED_VERSIONS {
            h.record_failed(FailedVersion {
                version: format!("{i}.{huge}"),
                slot: huge.clone(),
                reason: huge.clone(),
                check: Some(huge.clone()),
                output: Some(huge.clone()),
                at: 1,
            })
            .unwrap();
        }
        assert!(file_len(&h, FAILED) <= FAILED_BUDGET);
        let f = h.failed().unwrap();
        assert!(f.find(&format!("{}.", MAX_FAILED_VERSIONS - 1)).is_some());
        assert!(
            f.versions.len() < MAX_FAILED_VERSIONS,
            "oldest entries dropped"
        );
    }

    /// Issue 14 defect 3, health.json: twenty checks with 4 KiB of control bytes each made a
    /// report its own reader refused.
    #[test]
    fn noisy_checks_keep_health_json_readable() {
        let (_dir, h) = history();
        let check = |i: usize, passed: bool| CheckResult {
            name: format!("{i:02}-check"),
            outcome: if passed { "passed" } else { "failed (exit 1)" }.into(),
            passed,
            output: "\u{1}".repeat(4096),
            ..Default::default()
        };
        let checks = (0..20).map(|i| check(i, i % 2 == 0)).collect();
        h.set_health(&HealthReport {
            version: "3".into(),
            summary: "10 of 20 checks failed".into(),
            checks,
            ..Default::default()
        })
        .unwrap();
        let r = h.health().unwrap().unwrap();
        assert!(file_len(&h, HEALTH) <= HEALTH_BUDGET);
        assert_eq!(r.checks.len(), 20);
        assert!(r.checks[1].output.ends_with('\u{1}'), "failed output kept");
        assert!(
            r.checks[1].output.len() > MAX_STORED_OUTPUT / 6 - 2,
            "and not halved"
        );
        assert!(r.checks[0].output.is_empty(), "passed output dropped first");
    }

    #[test]
    fn health_json_with_too_many_checks_says_how_many_were_not_stored() {
        let (_dir, h) = history();
        let checks = (0..1000)
            .map(|i| CheckResult {
                name: format!("{i:04}-{}", "n".repeat(300)),
                outcome: "failed (exit 1)".into(),
                output: "x".repeat(5000),
                ..Default::default()
            })
            .collect();
        h.set_health(&HealthReport {
            summary: "1000 of 1000 checks failed".into(),
            checks,
            ..Default::default()
        })
        .unwrap();
        let r = h.health().unwrap().unwrap();
        assert!(file_len(&h, HEALTH) <= HEALTH_BUDGET);
        let stored = r.checks.len();
        assert!(stored > 10 && stored < 1000);
        assert_eq!(
            r.summary,
            format!(
                "1000 of 1000 checks failed ({} checks not stored)",
                1000 - stored
            )
        );
    }

    /// Issue 14 defect 4: failed versions compare by version order, not by string.
    #[test]
    fn failed_versions_compare_by_version_order() {
        let (_dir, h) = history();
        h.record_failed(failed("2.0")).unwrap();
        h.record_failed(failed("1~rc1")).unwrap();
        let f = h.failed().unwrap();
        let rows = [
            ("2.0", true),
            ("2.00", true),
            ("02.0", true),
            ("2.0.0", false),
            ("2.1", false),
            ("2", false),
            ("1~rc1", true),
            ("1~rc01", true),
            ("1", false),
            ("1~rc2", false),
        ];
        for (version, refused) in rows {
            assert_eq!(f.find(version).is_some(), refused, "{version}");
            assert_eq!(f.refusal(version).is_some(), refused, "{version}");
        }
    }

    #[test]
    fn every_version_a_payload_can_carry_is_stored_whole() {
        let (_dir, h) = history();
        // 128 bytes, 6 each once escaped, but the last one is what the version compares by.
        let version = format!("{}7", "\u{1}".repeat(crate::payload::MAX_STRING_LEN - 1));
        h.record_failed(failed(&version)).unwrap();
        let f = h.failed().unwrap();
        assert_eq!(f.versions[0].version, version);
        assert!(f.refusal("7").is_some());
    }

    #[test]
    fn a_failure_recorded_without_a_time_is_stamped_now() {
        let (_dir, h) = history();
        h.record_failed(FailedVersion {
            at: 0,
            ..failed("3")
        })
        .unwrap();
        h.record_failed(failed("4")).unwrap();
        let f = h.failed().unwrap();
        assert!(f.find("3").unwrap().at >= 1_700_000_000);
        assert_eq!(f.find("4").unwrap().at, 1);
    }

    #[test]
    fn recording_an_equal_version_replaces_its_record() {
        let (_dir, h) = history();
        h.record_failed(failed("2.0")).unwrap();
        h.record_failed(FailedVersion {
            reason: "again".into(),
            ..failed("2.00")
        })
        .unwrap();
        let f = h.failed().unwrap();
        assert_eq!(f.versions.len(), 1);
        assert_eq!(f.find("2.0").unwrap().reason, "again");
    }

    fn write_failed(h: &History, text: &[u8]) {
        std::fs::create_dir_all(h.state.path("")).unwrap();
        std::fs::write(h.state.path(FAILED), text).unwrap();
    }

    fn two_failures(h: &History) -> Vec<u8> {
        h.record_failed(failed("3")).unwrap();
        h.record_failed(failed("4")).unwrap();
        std::fs::read(h.state.path(FAILED)).unwrap()
    }

    /// Issue 14 defect 4: a corrupt failed.json was read as missing, so its versions could be
    /// installed again.
    #[test]
    fn a_truncated_failed_json_keeps_refusing_its_versions_and_all_others() {
        let (_dir, h) = history();
        let text = two_failures(&h);
        write_failed(&h, &text[..text.len() - 20]);
        let f = h.failed().unwrap();
        assert!(f.find("3").is_some() && f.find("4").is_some());
        assert!(f.find("5").is_none());
        let all = f.refusal("5").expect("a cut list refuses every version");
        assert!(
            all.reason.contains("failed.json was damaged"),
            "{}",
            all.reason
        );
        let kept = h.damaged().unwrap();
        assert_eq!(kept.len(), 1);
        let salvaged = f.find("4").unwrap();
        let named = format!("kept as {}", kept[0].kept_as.display());
        assert!(salvaged.reason.contains(&named), "{}", salvaged.reason);
        assert!(all.reason.contains(&named), "{}", all.reason);
        assert!(salvaged.at > 1 && all.at > 1, "stamped when salvaged");
        assert_eq!(
            std::fs::read(&kept[0].kept_as).unwrap(),
            text[..text.len() - 20]
        );
        assert_eq!(h.failed().unwrap(), f, "the salvaged list was written back");
        assert_eq!(h.damaged().unwrap(), kept);
    }

    #[test]
    fn a_damaged_failed_json_with_every_entry_whole_is_salvaged_without_refusing_all() {
        let (_dir, h) = history();
        let good = two_failures(&h);
        // A raw control byte inside a string: invalid JSON, every entry still there.
        let text = String::from_utf8(good)
            .unwrap()
            .replace("boom\\n", "bo\u{1}om");
        write_failed(&h, text.as_bytes());
        let f = h.failed().unwrap();
        let found: Vec<_> = f.versions.iter().map(|v| v.version.as_str()).collect();
        assert_eq!(found, ["3", "4"]);
        assert_eq!(f.refuse_all, None);
        assert!(f.refusal("5").is_none());
    }

    #[test]
    fn an_empty_failed_json_refuses_every_version_until_cleared() {
        let (_dir, h) = history();
        write_failed(&h, b"");
        assert!(h.failed().unwrap().refusal("1").is_some());
        h.record_failed(failed("7")).unwrap();
        let f = h.failed().unwrap();
        assert!(f.refusal("1").is_some(), "recording keeps the refusal");
        assert!(f.find("1").is_none());
        assert!(h.clear_refuse_all().unwrap());
        let f = h.failed().unwrap();
        assert!(f.refusal("1").is_none());
        assert!(f.refusal("7").is_some());
        assert!(!h.clear_refuse_all().unwrap());
    }

    #[test]
    fn an_oversized_failed_json_from_an_older_updater_is_read_whole() {
        let (_dir, h) = history();
        let list = FailedVersions {
            format_version: 1,
            versions: (0..64)
                .map(|i| FailedVersion {
                    output: Some("\u{1}".repeat(300)),
                    ..failed(&format!("1.{i}"))
                })
                .collect(),
            refuse_all: None,
        };
        let text = serde_json::to_vec_pretty(&list).unwrap();
        assert!(text.len() as u64 > MAX_STATE_FILE_LEN);
        write_failed(&h, &text);
        let f = h.failed().unwrap();
        assert_eq!(f.versions.len(), 64);
        assert_eq!(f.find("1.0").unwrap().reason, list.versions[0].reason);
        assert_eq!(f.refuse_all, None);
        assert_eq!(h.damaged().unwrap().len(), 1);
        assert!(file_len(&h, FAILED) <= FAILED_BUDGET);
    }

    #[test]
    fn salvage_finds_versions_and_says_whether_it_can_have_missed_one() {
        let one = r#"{"format_version":1,"versions":[{"version":"3","slot":"B","reason":"r","check":null,"output":null,"at":1}]}"#;
        let rows: [(&str, bool, &[&str], bool); 9] = [
            (one, true, &["3"], true),
            (one, false, &["3"], false),
            (&one[..one.len() - 1], true, &["3"], false),
            (
                &one.replace("\"version\":\"3\"", "\"vers1on\":\"3\""),
                true,
                &[],
                false,
            ),
            (
                &one.replace("\"r\"", "\"r\u{1}\\\"version\\\": \\\"9\\\"\""),
                true,
                &["3"],
                true,
            ),
            (&one.replace("\"3\"", "\"3\\u0030\""), true, &["30"], true),
            (
                &one.replace("[{", "[{\"refuse_all\":{},"),
                true,
                &["3"],
                false,
            ),
            ("", true, &[], false),
            ("\0\0\0\0", true, &[], false),
        ];
        for (text, whole, versions, certain) in rows {
            let s = salvage_failed(text.as_bytes(), whole);
            assert_eq!(s.versions, versions, "{text}");
            assert_eq!(s.certain, certain, "{text}");
        }
    }

    #[test]
    fn text_is_trimmed_by_its_escaped_length() {
        let rows = [
            ("abc", 3, "abc", "abc"),
            ("abcdef", 5, "ab…", "…ef"),
            ("\u{1}\u{1}", 12, "\u{1}\u{1}", "\u{1}\u{1}"),
            ("\u{1}\u{1}", 11, "\u{1}…", "…\u{1}"),
            ("\u{1}\u{1}", 8, "…", "…"),
            ("a\"b\"c", 7, "a\"b\"c", "a\"b\"c"),
            ("a\"b\"c", 6, "a\"…", "…\"c"),
            ("a\"b\"c", 5, "a…", "…c"),
            ("ééé", 5, "é…", "…é"),
            ("abcdef", 2, "", ""),
        ];
        for (s, max, head, tail) in rows {
            assert_eq!(head_within(s, max), head, "{s:?} {max}");
            assert_eq!(tail_within(s, max), tail, "{s:?} {max}");
            assert!(serde_json::to_string(head).unwrap().len() - 2 <= max);
        }
    }

    #[test]
    fn slot_versions_are_bounded_and_keep_the_one_recorded() {
        let (_dir, h) = history();
        for i in 0..(MAX_SLOT_VERSIONS + 4) {
            h.record_version(&format!("p{i:02}"), "1").unwrap();
        }
        let v = h.versions().unwrap();
        assert_eq!(v.slots.len(), MAX_SLOT_VERSIONS);
        assert!(v
            .slots
            .contains_key(&format!("p{:02}", MAX_SLOT_VERSIONS + 3)));
        h.record_version("p99", &"9".repeat(70_000)).unwrap();
        assert!(h.versions().unwrap().slots["p99"].len() <= MAX_STORED_VERSION);
    }

    #[test]
    fn a_damaged_health_json_is_kept_aside_and_reads_as_no_verdict() {
        let (_dir, h) = history();
        std::fs::create_dir_all(h.state.path("")).unwrap();
        std::fs::write(h.state.path(HEALTH), b"{\"passed\": tru").unwrap();
        assert_eq!(h.health().unwrap(), None);
        assert_eq!(h.damaged().unwrap()[0].name, HEALTH);
    }

    /// An older updater reads what a newer one wrote: unknown fields are ignored.
    #[test]
    fn newer_history_files_with_unknown_fields_still_read() {
        let (_dir, h) = history();
        std::fs::create_dir_all(h.state.path("")).unwrap();
        let files = [
            (
                FAILED,
                r#"{"format_version": 9, "versions": [{"version": "3", "reason": "r", "severity": "high"}], "extra": 1}"#,
            ),
            (
                HEALTH,
                r#"{"format_version": 9, "version": "3", "checks": [{"name": "10-app", "passed": true, "cgroup": "x"}], "extra": [1]}"#,
            ),
            (
                VERSIONS,
                r#"{"format_version": 9, "slots": {"p": "3"}, "extra": null}"#,
            ),
        ];
        for (name, text) in files {
            std::fs::write(h.state.path(name), text).unwrap();
        }
        assert_eq!(h.failed().unwrap().find("3").unwrap().reason, "r");
        let r = h.health().unwrap().unwrap();
        assert!(r.version == "3" && r.checks[0].passed);
        assert_eq!(h.versions().unwrap().slots["p"], "3");
        assert!(h.damaged().unwrap().is_empty());
    }
}
