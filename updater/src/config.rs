//! Configuration from TOML drop-ins (DESIGN §7), in three layers: fragments → inputs →
//! settings.
//!
//! Drop-ins are `*.toml` files in `ROOT/usr/lib/updater/config.d` (vendor, in the image) and
//! `ROOT/etc/updater/config.d` (admin); a file in `/etc` replaces the vendor file of the same
//! name, and files apply in name order, later keys overriding earlier ones. Each file is a
//! [`Fragment`] (every key optional); merged they are the inputs, validated they are
//! [`Settings`].
//!
//! A boot never fails on configuration: unknown keys, wrong types and out-of-range values are
//! [`Settings::warnings`] (shown by `updater status`) and the default is used; `updater
//! config check` turns every warning into an error. Both slots' updaters read the same `/etc`,
//! so a released key never changes meaning. Keys and defaults: `updater/dist/config.d/`.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let d = dir.path().join("etc/updater/config.d");
//! std::fs::create_dir_all(&d).unwrap();
//! std::fs::write(d.join("50-site.toml"), "[reboot]\nstrategy = \"immediate\"\n[health]\ncolour = 1\n").unwrap();
//! let s = updater::config::Settings::load(dir.path());
//! assert_eq!(s.reboot, updater::config::RebootStrategy::Immediate);
//! assert_eq!(s.warnings.len(), 1); // the unknown key
//! ```
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Vendor drop-ins, relative to the root.
pub const VENDOR_DIR: &str = "usr/lib/updater/config.d";
/// Admin drop-ins, relative to the root.
pub const ADMIN_DIR: &str = "etc/updater/config.d";
/// Largest drop-in read (a bigger one is a warning and skipped).
pub const MAX_DROPIN_BYTES: u64 = 64 * 1024;

/// When the updater may reboot the machine (DESIGN §6 invariant 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RebootStrategy {
    /// Never reboot; write `/run/reboot-required` and say so.
    #[default]
    Off,
    /// Reboot as soon as a reboot is needed.
    Immediate,
    /// Reboot only inside a maintenance window (`[reboot.periodic]`).
    Periodic,
    /// Reboot while holding a FleetLock slot (`[fleetlock]`, [`crate::fleet`]); inside a
    /// window when windows are configured.
    Fleetlock,
    /// Reboot while holding an etcd reboot slot (`[etcd]`, [`crate::fleet`]); inside a window
    /// when windows are configured.
    Etcd,
}

/// One drop-in: every key optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fragment {
    /// `[install]`
    pub install: Option<InstallFragment>,
    /// `[health]`
    pub health: Option<HealthFragment>,
    /// `[reboot]`
    pub reboot: Option<RebootFragment>,
    /// `[download]`
    pub download: Option<DownloadFragment>,
    /// `[agent]`
    pub agent: Option<AgentFragment>,
    /// `[keys]`
    pub keys: Option<KeysFragment>,
    /// `[fleet]`
    pub fleet: Option<crate::fleet::FleetFragment>,
    /// `[fleetlock]`
    pub fleetlock: Option<crate::fleet::FleetLockFragment>,
    /// `[etcd]`
    pub etcd: Option<crate::fleet::EtcdFragment>,
}

/// `[agent]` keys: where the box finds its releases and how often it looks.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFragment {
    /// The stream's URL: `https://…/CHANNEL/stream.json`, `file:///…`, or a path.
    pub stream_url: Option<String>,
    /// The channel the stream must be for.
    pub channel: Option<String>,
    /// Seconds between polls.
    pub interval_secs: Option<u64>,
    /// At most this many seconds are added to each interval, at random.
    pub jitter_secs: Option<u64>,
    /// Overrides the box's rollout position (0: first, 1: only once open to all).
    pub rollout_wariness: Option<f64>,
    /// Where the Prometheus text file goes (node-exporter's textfile collector).
    pub metrics_file: Option<String>,
}

/// `[reboot.periodic]` keys: the maintenance windows of the `periodic` strategy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodicFragment {
    /// IANA time zone of the windows (`UTC`, `Europe/Berlin`).
    pub time_zone: Option<String>,
    /// The windows (`[[reboot.periodic.window]]`).
    pub window: Option<Vec<crate::window::WindowSpec>>,
}

/// `[install]` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallFragment {
    /// Boot attempts a new slot gets before GRUB falls back (1–15).
    pub tries: Option<u8>,
}

/// `[health]` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFragment {
    /// Seconds one check may run before it is killed and fails.
    pub check_timeout_secs: Option<u64>,
    /// Seconds all checks together may take.
    pub deadline_secs: Option<u64>,
}

/// `[reboot]` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootFragment {
    /// `off`, `immediate` or `periodic`.
    pub strategy: Option<RebootStrategy>,
    /// `[reboot.periodic]`
    pub periodic: Option<PeriodicFragment>,
}

/// `[download]` keys: how a payload download is retried and when it is abandoned
/// ([`crate::source::RetryPolicy`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadFragment {
    /// Consecutive failures without progress before the download fails
    /// (1–[`crate::source::MAX_ATTEMPTS`]).
    pub attempts: Option<u32>,
    /// Longest wait between two attempts, in seconds (1–[`MAX_BACKOFF_SECS`]).
    pub max_backoff_secs: Option<u64>,
    /// Seconds the whole download may spend waiting for the server
    /// (1–[`MAX_DEADLINE_SECS`]).
    pub deadline_secs: Option<u64>,
    /// Fewest bytes per second over each throughput window; 0 turns the check off.
    pub min_bytes_per_sec: Option<u64>,
    /// The throughput window, in seconds (1–[`MAX_THROUGHPUT_WINDOW_SECS`]).
    pub throughput_window_secs: Option<u64>,
}

/// Largest `download.max_backoff_secs`.
pub const MAX_BACKOFF_SECS: u64 = 3600;
/// Largest `download.deadline_secs` (30 days).
pub const MAX_DEADLINE_SECS: u64 = 30 * 86_400;
/// Largest `download.throughput_window_secs`.
pub const MAX_THROUGHPUT_WINDOW_SECS: u64 = 86_400;

/// Validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// Tries for a newly installed slot.
    pub tries: u8,
    /// Timeout of one health check.
    pub check_timeout: Duration,
    /// Deadline for all health checks.
    pub deadline: Duration,
    /// Reboot strategy.
    pub reboot: RebootStrategy,
    /// Download retries and limits (`[download]`).
    pub download: crate::source::RetryPolicy,
    /// The agent (`[agent]`).
    pub agent: AgentSettings,
    /// Time zone of the maintenance windows (`reboot.periodic.time_zone`).
    pub time_zone: String,
    /// The maintenance windows (`[[reboot.periodic.window]]`), validated at load.
    pub windows: Vec<crate::window::WindowSpec>,
    /// Key revocations and signatures required (`[keys]`).
    pub keys: crate::payload::KeySettings,
    /// Fleet reboots (`[fleet]`, `[fleetlock]`, `[etcd]`).
    pub fleet: crate::fleet::FleetSettings,
    /// Drop-ins read, in the order applied.
    pub files: Vec<PathBuf>,
    /// Problems found (unknown keys, bad values); each names the file and key.
    pub warnings: Vec<String>,
}

/// Validated `[agent]` settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentSettings {
    /// The stream's URL; `None`: the agent has nothing to poll.
    pub stream_url: Option<String>,
    /// The channel followed.
    pub channel: String,
    /// Time between polls.
    pub interval: Duration,
    /// Most random time added to an interval.
    pub jitter: Duration,
    /// The rollout position override, in 0..=1.
    pub rollout_wariness: Option<f64>,
    /// The Prometheus text file, relative to the root when not absolute.
    pub metrics_file: PathBuf,
}

impl Default for AgentSettings {
    fn default() -> AgentSettings {
        AgentSettings {
            stream_url: None,
            channel: "stable".into(),
            interval: Duration::from_secs(3600),
            jitter: Duration::from_secs(600),
            rollout_wariness: None,
            metrics_file: PathBuf::from("var/lib/updater/updater.prom"),
        }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            tries: 1,
            check_timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(300),
            reboot: RebootStrategy::Off,
            download: crate::source::RetryPolicy::default(),
            agent: AgentSettings::default(),
            time_zone: "UTC".into(),
            windows: Vec::new(),
            keys: crate::payload::KeySettings::default(),
            fleet: crate::fleet::FleetSettings::default(),
            files: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// The drop-ins under `root`, `/etc` replacing `/usr/lib` by name, in name order.
pub fn dropins(root: &Path) -> Vec<PathBuf> {
    let mut by_name: BTreeMap<std::ffi::OsString, PathBuf> = BTreeMap::new();
    for dir in [VENDOR_DIR, ADMIN_DIR] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
                by_name.insert(e.file_name(), p);
            }
        }
    }
    by_name.into_values().collect()
}

/// Parses one drop-in's text; unknown keys and bad values become warnings, and the keys that
/// parse are kept.
pub fn parse_fragment(text: &str, file: &Path) -> (Fragment, Vec<String>) {
    let mut warnings = Vec::new();
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            warnings.push(format!(
                "{}: not valid TOML, ignored: {}",
                file.display(),
                e.message()
            ));
            return (Fragment::default(), warnings);
        }
    };
    // Try each key alone, so one bad key loses only itself.
    let mut kept = toml::Table::new();
    for (section, value) in &table {
        let Some(keys) = value.as_table() else {
            warnings.push(format!("{}: unknown key {section}", file.display()));
            continue;
        };
        for (key, v) in keys {
            let mut one = toml::Table::new();
            one.insert(
                section.clone(),
                toml::Value::Table(toml::Table::from_iter([(key.clone(), v.clone())])),
            );
            match toml::Value::Table(one).try_into::<Fragment>() {
                Ok(_) => {
                    kept.entry(section.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                        .as_table_mut()
                        .expect("section is a table")
                        .insert(key.clone(), v.clone());
                }
                Err(e) if e.message().contains("unknown field") => {
                    warnings.push(format!("{}: unknown key {section}.{key}", file.display()));
                }
                Err(e) => warnings.push(format!(
                    "{}: bad value for {section}.{key}: {}",
                    file.display(),
                    e.message().lines().next().unwrap_or("")
                )),
            }
        }
    }
    (
        toml::Value::Table(kept).try_into().unwrap_or_default(),
        warnings,
    )
}

impl Settings {
    /// Reads every drop-in under `root`; never fails (see the module doc).
    pub fn load(root: &Path) -> Settings {
        let mut s = Settings::default();
        for file in dropins(root) {
            let text = match std::fs::metadata(&file).map(|m| m.len()) {
                Ok(n) if n > MAX_DROPIN_BYTES => {
                    s.warnings.push(format!(
                        "{}: larger than {MAX_DROPIN_BYTES} bytes, ignored",
                        file.display()
                    ));
                    continue;
                }
                _ => match std::fs::read_to_string(&file) {
                    Ok(t) => t,
                    Err(e) => {
                        s.warnings
                            .push(format!("{}: unreadable, ignored: {e}", file.display()));
                        continue;
                    }
                },
            };
            let (f, warnings) = parse_fragment(&text, &file);
            s.warnings.extend(warnings);
            s.apply(&f, &file);
            s.files.push(file);
        }
        s
    }

    fn apply(&mut self, f: &Fragment, file: &Path) {
        if let Some(tries) = f.install.as_ref().and_then(|i| i.tries) {
            if (1..=15).contains(&tries) {
                self.tries = tries;
            } else {
                self.warnings.push(format!(
                    "{}: install.tries = {tries} out of range 1-15, ignored",
                    file.display()
                ));
            }
        }
        let h = f.health.clone().unwrap_or_default();
        for (key, value, slot) in [
            (
                "check_timeout_secs",
                h.check_timeout_secs,
                &mut self.check_timeout,
            ),
            ("deadline_secs", h.deadline_secs, &mut self.deadline),
        ] {
            match value {
                Some(0) => self.warnings.push(format!(
                    "{}: health.{key} = 0 ignored (must be at least 1)",
                    file.display()
                )),
                Some(secs) => *slot = Duration::from_secs(secs),
                None => {}
            }
        }
        if let Some(strategy) = f.reboot.as_ref().and_then(|r| r.strategy) {
            self.reboot = strategy;
        }
        if let Some(p) = f.reboot.as_ref().and_then(|r| r.periodic.as_ref()) {
            self.apply_periodic(p, file);
        }
        if let Some(a) = &f.agent {
            self.apply_agent(a, file);
        }
        if let Some(d) = &f.download {
            self.apply_download(d, file);
        }
        if let Some(keys) = &f.keys {
            self.apply_keys(keys, file);
        }
        crate::fleet::apply_fragments(
            &mut self.fleet,
            &mut self.warnings,
            f.fleet.as_ref(),
            f.fleetlock.as_ref(),
            f.etcd.as_ref(),
            file,
        );
    }

    /// The maintenance windows of `[reboot.periodic]`.
    pub fn windows(&self) -> Result<crate::window::MaintenanceWindows, crate::window::WindowError> {
        crate::window::MaintenanceWindows::new(&self.time_zone, &self.windows)
    }

    /// Whether `reboot.strategy` allows a reboot at `now` (Unix seconds): never for `off`,
    /// always for `immediate`, inside a window for `periodic` (no valid window: never); for
    /// `fleetlock` and `etcd` inside a window when any is configured, else always (the agent
    /// takes the lock too, [`crate::fleet`]).
    pub fn reboot_allowed(&self, now: i64) -> bool {
        match self.reboot {
            RebootStrategy::Off => false,
            RebootStrategy::Immediate => true,
            RebootStrategy::Periodic => self.windows().is_ok_and(|w| w.is_open(now)),
            RebootStrategy::Fleetlock | RebootStrategy::Etcd => {
                self.windows.is_empty() || self.windows().is_ok_and(|w| w.is_open(now))
            }
        }
    }

    fn apply_periodic(&mut self, p: &PeriodicFragment, file: &Path) {
        let tz = p
            .time_zone
            .clone()
            .unwrap_or_else(|| self.time_zone.clone());
        let windows = p.window.clone().unwrap_or_else(|| self.windows.clone());
        match crate::window::MaintenanceWindows::new(&tz, &windows) {
            Ok(_) => {
                self.time_zone = tz;
                self.windows = windows;
            }
            // Fail closed: a periodic strategy with no valid window never reboots.
            Err(e) => self
                .warnings
                .push(format!("{}: reboot.periodic: {e}; ignored", file.display())),
        }
    }

    fn apply_agent(&mut self, a: &AgentFragment, file: &Path) {
        let agent = &mut self.agent;
        if let Some(url) = &a.stream_url {
            agent.stream_url = Some(url.clone());
        }
        if let Some(channel) = &a.channel {
            match crate::stream::check_channel(channel) {
                Ok(()) => agent.channel = channel.clone(),
                Err(e) => self
                    .warnings
                    .push(format!("{}: agent.channel: {e}; ignored", file.display())),
            }
        }
        for (key, value, slot, min) in [
            ("interval_secs", a.interval_secs, &mut agent.interval, 1),
            ("jitter_secs", a.jitter_secs, &mut agent.jitter, 0),
        ] {
            match value {
                Some(v) if v >= min && v <= 7 * 24 * 3600 => *slot = Duration::from_secs(v),
                Some(v) => self.warnings.push(format!(
                    "{}: agent.{key} = {v} out of range {min}-604800, ignored",
                    file.display()
                )),
                None => {}
            }
        }
        match a.rollout_wariness {
            Some(w) if (0.0..=1.0).contains(&w) => agent.rollout_wariness = Some(w),
            Some(w) => self.warnings.push(format!(
                "{}: agent.rollout_wariness = {w} out of range 0-1, ignored",
                file.display()
            )),
            None => {}
        }
        if let Some(m) = &a.metrics_file {
            agent.metrics_file = PathBuf::from(m);
        }
    }

    fn apply_download(&mut self, d: &DownloadFragment, file: &Path) {
        let mut in_range = |key: &str, value: Option<u64>, min: u64, max: u64| match value {
            Some(v) if (min..=max).contains(&v) => Some(v),
            Some(v) => {
                self.warnings.push(format!(
                    "{}: download.{key} = {v} out of range {min}-{max}, ignored",
                    file.display()
                ));
                None
            }
            None => None,
        };
        let attempts = in_range(
            "attempts",
            d.attempts.map(u64::from),
            1,
            u64::from(crate::source::MAX_ATTEMPTS),
        );
        let max_backoff = in_range("max_backoff_secs", d.max_backoff_secs, 1, MAX_BACKOFF_SECS);
        let deadline = in_range("deadline_secs", d.deadline_secs, 1, MAX_DEADLINE_SECS);
        let window = in_range(
            "throughput_window_secs",
            d.throughput_window_secs,
            1,
            MAX_THROUGHPUT_WINDOW_SECS,
        );
        let p = &mut self.download;
        if let Some(n) = attempts {
            p.attempts = n as u32;
        }
        if let Some(secs) = max_backoff {
            p.max_delay = Duration::from_secs(secs);
        }
        if let Some(secs) = deadline {
            p.deadline = Duration::from_secs(secs);
        }
        if let Some(rate) = d.min_bytes_per_sec {
            p.min_bytes_per_sec = rate;
        }
        if let Some(secs) = window {
            p.throughput_window = Duration::from_secs(secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn no_dropins_give_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Settings::load(dir.path()), Settings::default());
    }

    #[test]
    fn admin_file_replaces_vendor_file_of_the_same_name() {
        let r = root_with(&[
            (
                "usr/lib/updater/config.d/10-vendor.toml",
                "[install]\ntries = 3\n[health]\ndeadline_secs = 10\n",
            ),
            (
                "etc/updater/config.d/10-vendor.toml",
                "[install]\ntries = 2\n",
            ),
        ]);
        let s = Settings::load(r.path());
        assert_eq!((s.tries, s.deadline), (2, Duration::from_secs(300)));
    }

    #[test]
    fn later_names_override_earlier_keys() {
        let r = root_with(&[
            (
                "usr/lib/updater/config.d/10-a.toml",
                "[health]\ncheck_timeout_secs = 5\ndeadline_secs = 50\n",
            ),
            (
                "etc/updater/config.d/20-b.toml",
                "[health]\ncheck_timeout_secs = 7\n",
            ),
        ]);
        let s = Settings::load(r.path());
        assert_eq!(
            (s.check_timeout, s.deadline),
            (Duration::from_secs(7), Duration::from_secs(50))
        );
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn unknown_keys_warn_and_the_rest_still_applies() {
        let r = root_with(&[(
            "etc/updater/config.d/50.toml",
            "[reboot]\nstrategy = \"immediate\"\nwhen = \"now\"\n[telemetry]\nurl = 1\n",
        )]);
        let s = Settings::load(r.path());
        assert_eq!(s.reboot, RebootStrategy::Immediate);
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(
            s.warnings[0].contains("50.toml: unknown key reboot.when"),
            "{:?}",
            s.warnings
        );
        assert!(
            s.warnings[1].contains("unknown key telemetry"),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn bad_values_warn_and_keep_the_default() {
        let r = root_with(&[("etc/updater/config.d/50.toml", "[install]\ntries = 99\n[reboot]\nstrategy = \"sometimes\"\n[health]\ndeadline_secs = \"soon\"\n")]);
        let s = Settings::load(r.path());
        assert_eq!(
            (s.tries, s.reboot, s.deadline),
            (1, RebootStrategy::Off, Duration::from_secs(300))
        );
        assert_eq!(s.warnings.len(), 3, "{:?}", s.warnings);
    }

    #[test]
    fn broken_toml_warns_and_is_ignored() {
        let r = root_with(&[("etc/updater/config.d/50.toml", "[install\n")]);
        let s = Settings::load(r.path());
        assert_eq!(s.tries, 1);
        assert!(s.warnings[0].contains("not valid TOML"), "{:?}", s.warnings);
    }

    #[test]
    fn download_keys_set_the_retry_policy() {
        let r = root_with(&[(
            "etc/updater/config.d/50.toml",
            "[download]\nattempts = 3\nmax_backoff_secs = 8\ndeadline_secs = 600\nmin_bytes_per_sec = 0\nthroughput_window_secs = 30\n",
        )]);
        let s = Settings::load(r.path());
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(
            s.download,
            crate::source::RetryPolicy {
                attempts: 3,
                max_delay: Duration::from_secs(8),
                deadline: Duration::from_secs(600),
                min_bytes_per_sec: 0,
                throughput_window: Duration::from_secs(30),
                ..crate::source::RetryPolicy::default()
            }
        );
    }

    #[test]
    fn bad_download_values_warn_and_keep_the_default() {
        for (line, warning) in [
            ("attempts = 3", None),
            (
                "attempts = 0",
                Some("download.attempts = 0 out of range 1-1000, ignored"),
            ),
            (
                "attempts = 1001",
                Some("download.attempts = 1001 out of range 1-1000, ignored"),
            ),
            (
                "max_backoff_secs = 0",
                Some("download.max_backoff_secs = 0 out of range 1-3600, ignored"),
            ),
            (
                "max_backoff_secs = 3601",
                Some("download.max_backoff_secs = 3601 out of range 1-3600, ignored"),
            ),
            (
                "deadline_secs = 0",
                Some("download.deadline_secs = 0 out of range 1-2592000, ignored"),
            ),
            (
                "throughput_window_secs = 0",
                Some("download.throughput_window_secs = 0 out of range 1-86400, ignored"),
            ),
            (
                "throughput_window_secs = 86401",
                Some("download.throughput_window_secs = 86401 out of range 1-86400, ignored"),
            ),
            (
                "min_bytes_per_sec = -1",
                Some("bad value for download.min_bytes_per_sec"),
            ),
            (
                "deadline_secs = \"1h\"",
                Some("bad value for download.deadline_secs"),
            ),
            ("retries = 3", Some("unknown key download.retries")),
        ] {
            let r = root_with(&[(
                "etc/updater/config.d/50.toml",
                &format!("[download]\n{line}\n"),
            )]);
            let s = Settings::load(r.path());
            match warning {
                None => assert!(s.warnings.is_empty(), "{line}: {:?}", s.warnings),
                Some(w) => {
                    assert_eq!(s.warnings.len(), 1, "{line}: {:?}", s.warnings);
                    assert!(
                        s.warnings[0].contains(&format!("50.toml: {w}")),
                        "{line}: {:?}",
                        s.warnings
                    );
                    assert_eq!(s.download, crate::source::RetryPolicy::default(), "{line}");
                }
            }
        }
    }

    #[test]
    fn shipped_defaults_parse_without_warnings() {
        let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/config.d");
        for e in std::fs::read_dir(&dist).unwrap() {
            let p = e.unwrap().path();
            let (_, warnings) = parse_fragment(&std::fs::read_to_string(&p).unwrap(), &p);
            assert!(warnings.is_empty(), "{}: {warnings:?}", p.display());
        }
    }
}

#[cfg(test)]
mod docs_tests {
    /// Every key of the shipped defaults is documented in docs/usage/configuration.md.
    #[test]
    fn every_shipped_key_is_documented() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(root.join("../docs/usage/configuration.md")).unwrap();
        let defaults: toml::Table =
            std::fs::read_to_string(root.join("dist/config.d/00-defaults.toml"))
                .unwrap()
                .parse()
                .unwrap();
        for (section, keys) in &defaults {
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    doc.contains(&format!("`{section}.{key}`")),
                    "docs/usage/configuration.md does not document {section}.{key}"
                );
            }
        }
    }
}

/// `[keys]` keys. Values are taken as raw TOML and checked in `Settings::apply_keys`, so a
/// bad value is never silently dropped: it is a warning *and* lands in
/// [`KeySettings::invalid`](crate::payload::KeySettings::invalid), which makes installs trust no
/// key (failing closed: ignoring a bad revocation could trust a key the admin meant to revoke).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFragment {
    /// Key ids (16 hex digits) never trusted; lists of all drop-ins add up.
    pub revoked: Option<toml::Value>,
    /// Distinct trusted keys that must have signed a payload (1 to 16); the last file wins.
    pub signatures_required: Option<toml::Value>,
}

impl Settings {
    fn apply_keys(&mut self, f: &KeysFragment, file: &Path) {
        let mut invalid = Vec::new();
        if let Some(v) = &f.revoked {
            match v.as_array() {
                None => invalid.push(format!("keys.revoked = {v} is not a list of key ids")),
                Some(ids) => {
                    for id in ids {
                        match id.as_str().and_then(crate::payload::KeyId::parse) {
                            Some(id) if self.keys.revoked.contains(&id) => {}
                            Some(id) => self.keys.revoked.push(id),
                            None => invalid.push(format!(
                                "keys.revoked entry {id} is not a key id (16 hex digits)"
                            )),
                        }
                    }
                }
            }
        }
        if let Some(v) = &f.signatures_required {
            let max = crate::payload::MAX_SIGNATURES;
            match v.as_integer().and_then(|n| usize::try_from(n).ok()) {
                Some(n) if (1..=max).contains(&n) => self.keys.signatures_required = n,
                _ => invalid.push(format!(
                    "keys.signatures_required = {v} out of range 1-{max}"
                )),
            }
        }
        for problem in invalid {
            let problem = format!("{}: {problem}", file.display());
            self.warnings.push(format!(
                "{problem} (installs trust no key until it is fixed)"
            ));
            self.keys.invalid.push(problem);
        }
    }
}

#[cfg(test)]
mod keys_tests {
    use super::Settings;
    use crate::payload::KeyId;

    fn load(files: &[(&str, &str)]) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        Settings::load(dir.path())
    }

    fn id(s: &str) -> KeyId {
        KeyId::parse(s).unwrap()
    }

    #[test]
    fn revoked_lists_of_all_dropins_add_up() {
        let s = load(&[
            (
                "usr/lib/updater/config.d/10-vendor.toml",
                "[keys]\nrevoked = [\"21fe31dfa154a261\"]\n",
            ),
            (
                "etc/updater/config.d/50-site.toml",
                "[keys]\nrevoked = [\"00112233445566AA\", \"21fe31dfa154a261\"]\n",
            ),
        ]);
        assert_eq!(
            s.keys.revoked,
            [id("21fe31dfa154a261"), id("00112233445566aa")]
        );
        assert!(s.warnings.is_empty() && s.keys.invalid.is_empty(), "{s:?}");
    }

    #[test]
    fn signatures_required_takes_the_last_file() {
        let s = load(&[
            (
                "usr/lib/updater/config.d/10-vendor.toml",
                "[keys]\nsignatures_required = 3\n",
            ),
            (
                "etc/updater/config.d/50-site.toml",
                "[keys]\nsignatures_required = 2\n",
            ),
        ]);
        assert_eq!(s.keys.signatures_required, 2);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn bad_keys_values_are_warnings_and_make_the_keys_settings_invalid() {
        let file = "etc/updater/config.d/50.toml";
        for (text, problem) in [
            (
                "revoked = \"21fe31dfa154a261\"",
                "keys.revoked = \"21fe31dfa154a261\" is not a list of key ids",
            ),
            (
                "revoked = [\"21fe31dfa154a26\"]",
                "keys.revoked entry \"21fe31dfa154a26\" is not a key id (16 hex digits)",
            ),
            (
                "revoked = [7]",
                "keys.revoked entry 7 is not a key id (16 hex digits)",
            ),
            (
                "signatures_required = 0",
                "keys.signatures_required = 0 out of range 1-16",
            ),
            (
                "signatures_required = 17",
                "keys.signatures_required = 17 out of range 1-16",
            ),
            (
                "signatures_required = -1",
                "keys.signatures_required = -1 out of range 1-16",
            ),
            (
                "signatures_required = \"2\"",
                "keys.signatures_required = \"2\" out of range 1-16",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join(file);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("[keys]\n{text}\n")).unwrap();
            let s = Settings::load(dir.path());
            let want = format!("{}: {problem}", p.display());
            assert_eq!(s.keys.invalid, std::slice::from_ref(&want), "{text}");
            assert_eq!(
                s.warnings,
                [format!("{want} (installs trust no key until it is fixed)")],
                "{text}"
            );
            assert_eq!(
                (s.keys.revoked.len(), s.keys.signatures_required),
                (0, 1),
                "{text}"
            );
        }
    }

    #[test]
    fn sixteen_signatures_may_be_required() {
        let s = load(&[(
            "etc/updater/config.d/50.toml",
            "[keys]\nsignatures_required = 16\n",
        )]);
        assert_eq!((s.keys.signatures_required, s.warnings.len()), (16, 0));
    }
}
