//! The update agent (issue 13): the box finds, installs and activates its updates by itself
//! from a signed release stream ([`crate::stream`]) on any static server or file system.
//!
//! One cycle ([`Agent::cycle`]: `updater agent --once`; the long-running `updater agent`
//! repeats it every `agent.interval_secs` plus up to `agent.jitter_secs`):
//!
//! 1. **Gate**: nothing is fetched or installed while the booted slot is not committed
//!    (`updater health` runs first on every boot, [`crate::bootstate`]).
//! 2. **Fetch** `stream.json` (`If-None-Match` with the last ETag; a 304 reuses the cached copy
//!    of the last accepted stream) and `stream.json.sig`, both bounded in size ([`fetch`]).
//! 3. **Verify** ([`stream::verify`]): signature by a trusted key, channel, a serial not below
//!    the last accepted one of this channel (replay), not expired (freeze). A refused stream
//!    changes nothing but the agent's report.
//! 4. **Decide** ([`stream::choose_target`]): newer than booted, not failed on this box, not
//!    pulled, no barrier skipped, rollout open for this box's position.
//! 5. **Install** through the same [`crate::install`] stages as `updater install`, refusing a
//!    payload whose signed manifest disagrees with its stream entry before anything is
//!    written. A target already pending in the other slot is not installed again; a newer
//!    release re-stages over a pending one.
//! 6. **Finalize** by the reboot strategy: `immediate`, `off` (`/run/reboot-required`),
//!    `periodic` (only inside a maintenance window, [`crate::window`]), `fleetlock` and `etcd`
//!    (only while holding the group's reboot slot, [`crate::fleet`]: taken inside a window when
//!    windows are configured, given back if the window closes first; a refusal is retried on
//!    a later tick with backoff). On a committed slot with nothing pending, a slot still held
//!    is given back and a halt record not yet written is written.
//!
//! [`Agent::check`] runs steps 1–4 and changes nothing: `updater check`.
//!
//! What the agent remembers is in `agent.json` ([`AgentState`]), the last accepted stream of
//! each channel in `stream-CHANNEL.json` and `.sig` (for 304 answers); its Prometheus text
//! file goes to `agent.metrics_file`.
use crate::bootstate::{BootState, BootedState, OtherState};
use crate::config::{RebootStrategy, Settings};
use crate::device::DeviceSpec;
use crate::history::{now, History};
use crate::install::{self, InstallOptions, InstallReport, NoProgress};
use crate::lock::{UpdaterLock, DEFAULT_LOCK_WAIT};
use crate::source::{FileSource, HttpSource, Source};
use crate::state::{StateDir, PENDING};
use crate::stream::{self, Accepted, Decision, Expectations, Position, VerifiedStream};
use crate::window::MaintenanceWindows;
use anyhow::{bail, Context};
use bootctl::SlotDisk;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File name of [`AgentState`].
pub const AGENT_STATE: &str = "agent.json";
/// Format version of [`AgentState`].
pub const AGENT_STATE_VERSION: u32 = 1;
/// Longest ETag remembered.
const MAX_ETAG_LEN: usize = 256;
/// Longest result or error line remembered.
const MAX_RESULT_LEN: usize = 1024;

/// What the agent remembers between cycles (`agent.json`). An older updater ignores fields it
/// does not know; a field never changes meaning.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    /// [`AGENT_STATE_VERSION`].
    pub format_version: u32,
    /// The last accepted stream of each channel (serials of channels are unrelated).
    pub accepted: BTreeMap<String, Accepted>,
    /// The ETag of the last `stream.json` fetched, and the URL it came from.
    pub etag: Option<(String, String)>,
    /// The stream URL of the last check.
    pub stream_url: String,
    /// Unix time of the last check.
    pub last_check: u64,
    /// Whether the last check got a verified stream.
    pub last_check_ok: bool,
    /// One line: what the last cycle did or why it failed.
    pub last_result: String,
    /// The version the last decision chose, if any.
    pub target: Option<String>,
    /// The serial of the stream last accepted.
    pub serial: Option<u64>,
    /// Start and end (Unix seconds) of the next maintenance window, when `periodic`.
    pub next_window: Option<(i64, i64)>,
}

/// What a cycle did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// The booted slot is not committed: nothing done until `updater health` commits it.
    WaitingForHealth {
        /// The booted slot's state.
        booted: BootedState,
    },
    /// No target: up to date, or nothing open to this box yet.
    NoUpdate,
    /// The target was already installed and pending in the other slot.
    AlreadyStaged {
        /// Its version.
        version: String,
    },
    /// The target was installed and flipped.
    Installed {
        /// What the install did.
        report: Box<InstallReport>,
    },
}

/// What happened about rebooting after a cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reboot")]
pub enum Finalize {
    /// Nothing is pending: no reboot needed.
    NotNeeded,
    /// `--no-reboot`: the reboot is left to the operator.
    Skipped,
    /// Strategy `off` (or a root prefix): the marker says a reboot is needed.
    Required {
        /// The marker written.
        marker: PathBuf,
    },
    /// Strategy `periodic` outside a window: the marker is written and the agent reboots in
    /// the next window.
    Deferred {
        /// The marker written.
        marker: PathBuf,
        /// The next window, Unix seconds, if any is configured.
        next_window: Option<(i64, i64)>,
    },
    /// Strategy `fleetlock` or `etcd`: the reboot slot was not granted (or its server not
    /// reached); the marker is written and the agent asks again at `retry_at`.
    WaitingForLock {
        /// The marker written.
        marker: PathBuf,
        /// The refusal.
        reason: String,
        /// Unix seconds.
        retry_at: u64,
    },
    /// The machine reboots now (after the caller has reported).
    Rebooting,
}

/// One poll's view: the verified stream and the decision. Nothing is changed by making it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The stream URL polled.
    pub stream_url: String,
    /// The channel followed.
    pub channel: String,
    /// The stream's serial.
    pub serial: u64,
    /// The key that signed it.
    pub signed_by: String,
    /// Whether the server answered 304 and the cached copy was used.
    pub not_modified: bool,
    /// Where both slots stand.
    pub boot_state: BootState,
    /// The decision, with every candidate and its reason.
    pub decision: Decision,
    #[serde(skip)]
    verified: Option<VerifiedStream>,
    #[serde(skip)]
    fetched: Option<Fetched>,
}

/// What a cycle did, and the reboot it decided.
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    /// The check, when one was made.
    pub check: Option<CheckReport>,
    /// What was done.
    #[serde(flatten)]
    pub action: Action,
    /// The reboot.
    pub finalize: Finalize,
}

/// The agent of one device.
#[derive(Debug)]
pub struct Agent {
    dev: DeviceSpec,
    settings: Settings,
    state: StateDir,
    lock_wait: Duration,
}

/// A fetched stream and signature, with the answer's ETag.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// `stream.json` bytes.
    pub stream: Vec<u8>,
    /// `stream.json.sig` bytes.
    pub signature: Vec<u8>,
    /// The ETag of the stream's answer.
    pub etag: Option<String>,
    /// The server answered 304: these are the cached bytes.
    pub not_modified: bool,
}

impl Agent {
    /// The agent of `dev`, with its configuration loaded.
    pub fn new(dev: DeviceSpec) -> Agent {
        let settings = Settings::load(&dev.root);
        let state = dev.state();
        Agent {
            dev,
            settings,
            state,
            lock_wait: DEFAULT_LOCK_WAIT,
        }
    }

    /// Waits up to `wait` for another updater's lock.
    pub fn with_lock_wait(mut self, wait: Duration) -> Agent {
        self.lock_wait = wait;
        self
    }

    /// The configuration in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The remembered state (default when none).
    pub fn state(&self) -> AgentState {
        self.state
            .read::<AgentState>(AGENT_STATE)
            .ok()
            .and_then(crate::state::Loaded::into_option)
            .unwrap_or_default()
    }

    fn stream_url(&self) -> anyhow::Result<String> {
        self.settings.agent.stream_url.clone().context(
            "no release stream configured: set agent.stream_url in /etc/updater/config.d/*.toml",
        )
    }

    fn boot_state(&self) -> anyhow::Result<BootState> {
        let disk = SlotDisk::open(&self.dev.disk, false, None)
            .with_context(|| format!("reading the GPT of {}", self.dev.disk.display()))?;
        crate::device::check_unique_partuuids(&disk, &self.dev.disk)?;
        let booted = disk.slot(&self.dev.booted)?;
        let other = disk.other(&self.dev.booted)?;
        let pending = self
            .state
            .load(PENDING)
            .context("reading the pending install")?;
        Ok(BootState::classify(&booted, &other, pending))
    }

    /// The box's rollout position: `agent.rollout_wariness`, else a hash of `/etc/machine-id`.
    pub fn position(&self) -> anyhow::Result<Position> {
        if let Some(w) = self.settings.agent.rollout_wariness {
            return Ok(Position::from_wariness(w)?);
        }
        let path = self.dev.root.join("etc/machine-id");
        let id = crate::device::read_bounded(&path, 256)
            .with_context(|| format!("reading the machine id {}", path.display()))?;
        if id.trim().is_empty() {
            bail!("the machine id {} is empty", path.display());
        }
        Ok(Position::from_machine_id(&id))
    }

    /// One poll: fetch, verify and decide at `now`, changing nothing (`updater check`).
    pub fn check(&self, now: u64) -> anyhow::Result<CheckReport> {
        let url = self.stream_url()?;
        let channel = self.settings.agent.channel.clone();
        let boot_state = self.boot_state()?;
        let st = self.state();
        let keys = crate::payload::load_trusted(&self.dev.root, &self.settings.keys)?;
        let etag = st
            .etag
            .as_ref()
            .filter(|(u, _)| *u == url)
            .map(|(_, e)| e.clone());
        // The stream is small: the download deadline, capped at a minute, bounds each request.
        let timeout = self.settings.download.deadline.min(Duration::from_secs(60));
        let fetched = fetch(&url, etag.as_deref(), &self.state, &channel, timeout)?;
        let verified = stream::verify(
            &fetched.stream,
            &fetched.signature,
            &keys,
            &Expectations {
                channel: &channel,
                last: st.accepted.get(&channel).copied(),
                now,
            },
        )
        .with_context(|| format!("verifying the release stream {url}"))?;
        let history = History::new(self.state.clone());
        let failed = history.failed()?;
        let booted = self.dev.booted_release()?.version;
        let position = self.position()?;
        let decision = stream::choose_target(
            &verified.stream,
            &booted,
            |v| failed.refusal(v).is_some(),
            position,
            now,
        );
        Ok(CheckReport {
            stream_url: url,
            channel,
            serial: verified.stream.serial,
            signed_by: verified.signed_by.to_string(),
            not_modified: fetched.not_modified,
            boot_state,
            decision,
            verified: Some(verified),
            fetched: Some(fetched),
        })
    }

    /// One full cycle at `now` (see the module doc). `no_reboot` stops before any reboot.
    pub fn cycle(&self, now: u64, no_reboot: bool) -> anyhow::Result<CycleReport> {
        let boot_state = self.boot_state()?;
        if boot_state.booted != BootedState::Committed {
            let action = Action::WaitingForHealth {
                booted: boot_state.booted,
            };
            self.remember(
                now,
                false,
                "waiting: the booted slot is not committed yet",
                None,
                None,
            )?;
            return Ok(CycleReport {
                check: None,
                action,
                finalize: Finalize::NotNeeded,
            });
        }
        let check = match self.check(now) {
            Ok(c) => c,
            Err(e) => {
                let _ = self.remember(now, false, &format!("{e:#}"), None, None);
                return Err(e);
            }
        };
        self.accept(&check)?;
        let action = match check.decision.target() {
            None => Action::NoUpdate,
            Some(release)
                if check.boot_state.other == OtherState::Pending
                    && check
                        .boot_state
                        .pending
                        .as_ref()
                        .is_some_and(|p| p.version == release.version) =>
            {
                Action::AlreadyStaged {
                    version: release.version.clone(),
                }
            }
            Some(release) => {
                let report = self
                    .install(&check.stream_url, release, now)
                    .with_context(|| format!("installing {}", release.version))
                    .inspect_err(|e| {
                        let _ = self.remember(
                            now,
                            true,
                            &format!("{e:#}"),
                            Some(release.version.clone()),
                            Some(check.serial),
                        );
                    })?;
                Action::Installed {
                    report: Box::new(report),
                }
            }
        };
        let finalize = self.finalize(now, no_reboot)?;
        let result = match (&action, &finalize) {
            (Action::Installed { report }, _) => format!("installed {}", report.version),
            (Action::AlreadyStaged { version }, _) => format!("{version} is staged"),
            _ => check
                .decision
                .to_string()
                .lines()
                .last()
                .unwrap_or("")
                .to_string(),
        };
        self.remember(
            now,
            true,
            &result,
            check.decision.target().map(|r| r.version.clone()),
            Some(check.serial),
        )?;
        Ok(CycleReport {
            check: Some(check),
            action,
            finalize,
        })
    }

    /// Remembers the accepted stream (serial per channel, ETag, cached bytes), under the lock.
    fn accept(&self, check: &CheckReport) -> anyhow::Result<()> {
        let (Some(v), Some(f)) = (&check.verified, &check.fetched) else {
            return Ok(());
        };
        let _lock = UpdaterLock::acquire(&self.dev.lock_path(), "agent", self.lock_wait)?;
        if !f.not_modified {
            store_cache(&self.state, &check.channel, f)?;
        }
        let mut st = self.state();
        st.accepted.insert(check.channel.clone(), v.accepted);
        st.etag = f
            .etag
            .clone()
            .filter(|e| e.len() <= MAX_ETAG_LEN)
            .map(|e| (check.stream_url.clone(), e));
        st.format_version = AGENT_STATE_VERSION;
        self.state.store(AGENT_STATE, &st)?;
        Ok(())
    }

    fn remember(
        &self,
        now: u64,
        ok: bool,
        result: &str,
        target: Option<String>,
        serial: Option<u64>,
    ) -> anyhow::Result<()> {
        let _lock = UpdaterLock::acquire(&self.dev.lock_path(), "agent", self.lock_wait)?;
        let mut st = self.state();
        st.format_version = AGENT_STATE_VERSION;
        st.stream_url = self.settings.agent.stream_url.clone().unwrap_or_default();
        st.last_check = now;
        st.last_check_ok = ok;
        st.last_result = result.chars().take(MAX_RESULT_LEN).collect();
        st.target = target;
        if serial.is_some() {
            st.serial = serial;
        }
        st.next_window = self.windows().ok().and_then(|w| w.next(now as i64));
        self.state.store(AGENT_STATE, &st)?;
        drop(_lock);
        self.write_metrics(&st);
        Ok(())
    }

    fn windows(&self) -> anyhow::Result<MaintenanceWindows> {
        Ok(self.settings.windows()?)
    }

    fn install(
        &self,
        stream_url: &str,
        release: &stream::Release,
        now: u64,
    ) -> anyhow::Result<InstallReport> {
        let location = stream::resolve_location(stream_url, &release.location);
        let source = open_source(&location)?;
        let opts = InstallOptions {
            allow_downgrade: false,
            allow_failed: false,
            flip: true,
            tries: u32::from(self.settings.tries),
            now,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            checkpoint_bytes: 64 << 20,
            retry: self.settings.download,
            force: false,
            lock_wait: self.lock_wait,
        };
        let plan = install::plan(&self.dev, source, &opts)?;
        // The payload must be the one the signed stream lists, before a byte is written.
        release.check_payload(plan.prelude(), Some(release.size))?;
        Ok(plan.write(&mut NoProgress)?.finish(&mut NoProgress)?)
    }

    /// Decides the reboot after a cycle: only when the other slot is pending and the booted
    /// one committed, and only as the strategy allows.
    pub fn finalize(&self, now: u64, no_reboot: bool) -> anyhow::Result<Finalize> {
        let st = self.boot_state()?;
        let fleet = crate::fleet::Fleet::for_root(&self.dev.root, &self.settings)
            .context("setting up the fleet reboot gate")?;
        if st.other != OtherState::Pending || st.booted != BootedState::Committed {
            if let (Some(f), BootedState::Committed) = (&fleet, st.booted) {
                settle(f);
            }
            return Ok(Finalize::NotNeeded);
        }
        if no_reboot {
            return Ok(Finalize::Skipped);
        }
        if let Some(f) = fleet {
            let version = st.pending.as_ref().map_or("", |p| p.version.as_str());
            return self.finalize_fleet(&f, version, now);
        }
        let allowed = self.settings.reboot_allowed(now as i64);
        if allowed && crate::cycle::can_reboot(&self.dev) {
            return Ok(Finalize::Rebooting);
        }
        let marker = self.dev.reboot_marker();
        crate::cycle::write_reboot_marker(&marker)?;
        Ok(match self.settings.reboot {
            RebootStrategy::Periodic if !allowed => Finalize::Deferred {
                marker,
                next_window: self.windows().ok().and_then(|w| w.next(now as i64)),
            },
            _ => Finalize::Required { marker },
        })
    }

    /// Finalizes under a fleet strategy: the window decides whether the lock is taken, kept
    /// or given back ([`crate::fleet::window_step`]); only a granted lock reboots.
    fn finalize_fleet(
        &self,
        f: &crate::fleet::Fleet,
        version: &str,
        now: u64,
    ) -> anyhow::Result<Finalize> {
        use crate::fleet::{window_step, Step, Verdict};
        settle_halt(f);
        let window = if self.settings.windows.is_empty() {
            None
        } else {
            Some(self.windows().is_ok_and(|w| w.is_open(now as i64)))
        };
        let marker = self.dev.reboot_marker();
        let deferred = || -> anyhow::Result<Finalize> {
            crate::cycle::write_reboot_marker(&marker)?;
            Ok(Finalize::Deferred {
                marker: marker.clone(),
                next_window: self.windows().ok().and_then(|w| w.next(now as i64)),
            })
        };
        match window_step(window, f.state().held) {
            Step::Release => {
                if let Err(e) = f.release() {
                    log::warn!("giving back the reboot slot as the window closed: {e}");
                }
                deferred()
            }
            Step::Wait => deferred(),
            Step::Take => match f.take(version, now)? {
                Verdict::Granted if crate::cycle::can_reboot(&self.dev) => Ok(Finalize::Rebooting),
                Verdict::Granted => {
                    crate::cycle::write_reboot_marker(&marker)?;
                    Ok(Finalize::Required { marker })
                }
                Verdict::Refused { reason, retry_at } => {
                    crate::cycle::write_reboot_marker(&marker)?;
                    Ok(Finalize::WaitingForLock {
                        marker,
                        reason,
                        retry_at,
                    })
                }
            },
        }
    }

    /// Reboots the machine now (after [`Finalize::Rebooting`] was reported).
    pub fn reboot_now(&self) -> anyhow::Result<()> {
        crate::cycle::reboot_now()
    }

    /// The long-running agent: a cycle, then a sleep of the interval plus jitter, forever.
    /// Errors are logged and the next cycle tries again.
    pub fn run(&self, no_reboot: bool) -> anyhow::Result<()> {
        loop {
            match self.cycle(now(), no_reboot) {
                Ok(r) => {
                    log::info!("{}", serde_json::to_string(&r).unwrap_or_default());
                    if r.finalize == Finalize::Rebooting {
                        return self.reboot_now();
                    }
                }
                Err(e) => log::warn!("agent cycle: {e:#}"),
            }
            let jitter = self.settings.agent.jitter.as_secs_f64() * random_unit();
            let sleep = self.settings.agent.interval + Duration::from_secs_f64(jitter);
            // Inside a deferred reboot, wake at the next window's start if it comes first.
            let wake = match self.windows().ok().and_then(|w| w.next(now() as i64)) {
                Some((start, _))
                    if self.settings.reboot == RebootStrategy::Periodic
                        || crate::fleet::is_fleet(self.settings.reboot) =>
                {
                    let until = (start - now() as i64).max(1) as u64;
                    sleep.min(Duration::from_secs(until))
                }
                _ => sleep,
            };
            std::thread::sleep(wake);
        }
    }

    fn write_metrics(&self, st: &AgentState) {
        let path = if self.settings.agent.metrics_file.is_absolute() {
            self.dev.root.join(
                self.settings
                    .agent
                    .metrics_file
                    .strip_prefix("/")
                    .unwrap_or(Path::new("")),
            )
        } else {
            self.dev.root.join(&self.settings.agent.metrics_file)
        };
        let text = self.metrics_text(st);
        if let Err(e) = write_atomic(&path, text.as_bytes()) {
            log::warn!("writing the metrics file {}: {e}", path.display());
        }
    }

    /// The Prometheus text of the agent's view (node-exporter textfile collector format).
    pub fn metrics_text(&self, st: &AgentState) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let booted = self.dev.booted_version_or_unknown();
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', " ")
        };
        let failed = History::new(self.state.clone())
            .failed()
            .map_or(0, |f| f.versions.len());
        let bs = self.boot_state().ok();
        let pending = bs.as_ref().is_some_and(|b| b.other == OtherState::Pending);
        let committed = bs
            .as_ref()
            .is_some_and(|b| b.booted == BootedState::Committed);
        let _ = writeln!(o, "# HELP updater_booted_info The running version.");
        let _ = writeln!(o, "# TYPE updater_booted_info gauge");
        let _ = writeln!(o, "updater_booted_info{{version=\"{}\"}} 1", esc(&booted));
        let _ = writeln!(
            o,
            "# HELP updater_booted_committed Whether the booted slot is committed."
        );
        let _ = writeln!(o, "# TYPE updater_booted_committed gauge");
        let _ = writeln!(o, "updater_booted_committed {}", u8::from(committed));
        let _ = writeln!(
            o,
            "# HELP updater_update_pending Whether an update waits for a reboot."
        );
        let _ = writeln!(o, "# TYPE updater_update_pending gauge");
        let _ = writeln!(o, "updater_update_pending {}", u8::from(pending));
        let _ = writeln!(
            o,
            "# HELP updater_last_check_timestamp_seconds When the agent last polled."
        );
        let _ = writeln!(o, "# TYPE updater_last_check_timestamp_seconds gauge");
        let _ = writeln!(o, "updater_last_check_timestamp_seconds {}", st.last_check);
        let _ = writeln!(
            o,
            "# HELP updater_last_check_success Whether the last poll verified a stream."
        );
        let _ = writeln!(o, "# TYPE updater_last_check_success gauge");
        let _ = writeln!(
            o,
            "updater_last_check_success {}",
            u8::from(st.last_check_ok)
        );
        let _ = writeln!(
            o,
            "# HELP updater_stream_serial The serial of the last accepted stream."
        );
        let _ = writeln!(o, "# TYPE updater_stream_serial gauge");
        let _ = writeln!(o, "updater_stream_serial {}", st.serial.unwrap_or(0));
        let _ = writeln!(
            o,
            "# HELP updater_failed_versions Versions recorded as failed, never retried."
        );
        let _ = writeln!(o, "# TYPE updater_failed_versions gauge");
        let _ = writeln!(o, "updater_failed_versions {failed}");
        if crate::fleet::is_fleet(self.settings.reboot) {
            let f = self
                .state
                .read::<crate::fleet::FleetState>(crate::fleet::FLEET_STATE)
                .ok()
                .and_then(crate::state::Loaded::into_option)
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "# HELP updater_fleet_slot_held Whether the box holds a fleet reboot slot."
            );
            let _ = writeln!(o, "# TYPE updater_fleet_slot_held gauge");
            let _ = writeln!(o, "updater_fleet_slot_held {}", u8::from(f.held));
            let _ = writeln!(
                o,
                "# HELP updater_fleet_lock_refusals Reboot-slot requests refused in a row."
            );
            let _ = writeln!(o, "# TYPE updater_fleet_lock_refusals gauge");
            let _ = writeln!(o, "updater_fleet_lock_refusals {}", f.failures);
        }
        if let Some(t) = &st.target {
            let _ = writeln!(
                o,
                "# HELP updater_target_info The version the last decision chose."
            );
            let _ = writeln!(o, "# TYPE updater_target_info gauge");
            let _ = writeln!(o, "updater_target_info{{version=\"{}\"}} 1", esc(t));
        }
        o
    }
}

/// On a committed slot with nothing pending: writes a halt record left over, gives back a slot
/// still held (a release `updater health` could not do). Failures are logged; the next tick
/// tries again.
fn settle(f: &crate::fleet::Fleet) {
    settle_halt(f);
    match f.release() {
        Ok(true) => log::info!("released the reboot slot"),
        Ok(false) => {}
        Err(e) => log::warn!("releasing the reboot slot: {e}"),
    }
}

fn settle_halt(f: &crate::fleet::Fleet) {
    if let Err(e) = f.flush_halt() {
        log::warn!("writing the group's halt record: {e}");
    }
}

fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Writes `bytes` to `path` atomically (unique temporary file, fsync, rename, fsync dir).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

fn cache_names(channel: &str) -> (String, String) {
    (
        format!("stream-{channel}.json"),
        format!("stream-{channel}.json.sig"),
    )
}

fn store_cache(state: &StateDir, channel: &str, f: &Fetched) -> anyhow::Result<()> {
    let (s, sig) = cache_names(channel);
    for (name, bytes) in [(s, &f.stream), (sig, &f.signature)] {
        state.store_bytes(&name, bytes)?;
    }
    Ok(())
}

/// A payload source for a resolved location: http(s) URL, `file://` URL or path.
pub fn open_source(location: &str) -> anyhow::Result<Box<dyn Source>> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(Box::new(HttpSource::new(
            location,
            Duration::from_secs(15),
            Duration::from_secs(30),
        )));
    }
    let path = location.strip_prefix("file://").unwrap_or(location);
    Ok(Box::new(
        FileSource::open(Path::new(path)).with_context(|| format!("opening payload {path}"))?,
    ))
}

/// Fetches `stream.json` and its `.sig` from `url` (http(s) with `If-None-Match: etag`, a
/// `file://` URL or a path), each bounded in size, each HTTP request within `timeout` (a
/// stalled server cannot hold the agent). A 304 answer returns the cached copy of `channel`'s
/// last accepted stream.
pub fn fetch(
    url: &str,
    etag: Option<&str>,
    state: &StateDir,
    channel: &str,
    timeout: Duration,
) -> anyhow::Result<Fetched> {
    let sig_url = format!("{url}.sig");
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        let read = |u: &str, what, max| -> anyhow::Result<Vec<u8>> {
            let path = u.strip_prefix("file://").unwrap_or(u);
            let mut f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
            stream::read_bounded(&mut f, what, max).with_context(|| format!("reading {path}"))
        };
        return Ok(Fetched {
            stream: read(url, stream::STREAM_FILE, stream::MAX_STREAM_LEN)?,
            signature: read(
                &sig_url,
                stream::SIGNATURE_FILE,
                stream::MAX_SIGNATURE_FILE_LEN,
            )?,
            etag: None,
            not_modified: false,
        });
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(timeout.min(Duration::from_secs(15)))
        .timeout(timeout)
        .try_proxy_from_env(true)
        .redirects(0)
        .build();
    let get = |u: &str, etag: Option<&str>| -> anyhow::Result<ureq::Response> {
        let mut at = u.to_owned();
        for _ in 0..=crate::source::MAX_REDIRECTS {
            let mut req = agent.get(&at);
            if let Some(e) = etag {
                req = req.set("If-None-Match", e);
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(e) => return Err(anyhow::Error::new(e).context(format!("fetching {at}"))),
            };
            if (300..400).contains(&resp.status()) && resp.status() != 304 {
                let location = resp
                    .header("Location")
                    .with_context(|| format!("fetching {at}: redirect without Location"))?;
                let to = agent
                    .get(&at)
                    .request_url()
                    .ok()
                    .and_then(|b| b.as_url().join(location).ok())
                    .map(|u| u.to_string())
                    .with_context(|| format!("fetching {at}: bad redirect {location:?}"))?;
                crate::source::check_redirect(&at, &to)?;
                at = to;
                continue;
            }
            return Ok(resp);
        }
        bail!(
            "fetching {u}: more than {} redirects",
            crate::source::MAX_REDIRECTS
        )
    };
    let resp = get(url, etag)?;
    if resp.status() == 304 {
        let (s, sig) = cache_names(channel);
        let read = |name: &str, max| -> anyhow::Result<Vec<u8>> {
            let p = state.path(name);
            let mut f = std::fs::File::open(&p).with_context(|| {
                format!(
                    "{url} answered 304 but the cached copy {} is missing",
                    p.display()
                )
            })?;
            Ok(stream::read_bounded(&mut f, stream::STREAM_FILE, max)?)
        };
        return Ok(Fetched {
            stream: read(&s, stream::MAX_STREAM_LEN)?,
            signature: read(&sig, stream::MAX_SIGNATURE_FILE_LEN)?,
            etag: etag.map(str::to_owned),
            not_modified: true,
        });
    }
    let body = |resp: ureq::Response, u: &str, what, max| -> anyhow::Result<Vec<u8>> {
        if resp.status() != 200 {
            bail!("fetching {u}: status {}", resp.status());
        }
        stream::read_bounded(&mut resp.into_reader(), what, max)
            .with_context(|| format!("fetching {u}"))
    };
    let new_etag = resp.header("ETag").map(str::to_owned);
    let stream_bytes = body(resp, url, stream::STREAM_FILE, stream::MAX_STREAM_LEN)?;
    let sig = body(
        get(&sig_url, None)?,
        &sig_url,
        stream::SIGNATURE_FILE,
        stream::MAX_SIGNATURE_FILE_LEN,
    )?;
    Ok(Fetched {
        stream: stream_bytes,
        signature: sig,
        etag: new_etag,
        not_modified: false,
    })
}
