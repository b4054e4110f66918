//! The update cycle after the flip (DESIGN §1, §4, §7): health verdict → commit or roll back,
//! the operator's rollback / mark-good / mark-bad, and the status that explains it all.
//!
//! Transitions of the booted slot, each one method of [`Cycle`]:
//!
//! | method | from | to |
//! |---|---|---|
//! | [`Cycle::health`], checks pass | booted uncommitted (`P>0 T0 S0`) | committed (`S1`), pending cleared |
//! | [`Cycle::health`], a check fails | booted uncommitted | `P0 T0 S0`, version recorded failed, reboot per strategy |
//! | [`Cycle::health`] on a committed slot whose other slot spent its tries (P>0 T0 S0, [`crate::bootstate`]) | other slot flipped, GRUB fell back | its version (from the pending record) recorded failed ("never came up"), the slot marked P0 |
//! | [`Cycle::rollback`] | any | other slot next (committed: priority only; verified but never committed: tries 1) |
//! | [`Cycle::mark_good`] | any | booted committed |
//! | [`Cycle::mark_bad`] | any, other slot bootable | booted `P0 T0 S0`, recorded failed |
//!
//! Every method that writes takes the updater lock ([`crate::lock`]) first.
//!
//! Order of writes (power cut safe): a failure is recorded in state before the GPT makes the
//! slot unbootable (a record that cannot be written is reported, but the slot is still marked
//! bad); a commit writes the GPT before the pending record is removed, and a leftover
//! pending record for a committed booted slot is simply cleared on the next run.
//!
//! The machine is rebooted only as [`crate::config::RebootStrategy`] allows, never with `--no-reboot`, and
//! never when `--root` is not `/` (a root prefix means a test or an image, not this machine),
//! unless the test-only [`REBOOT_HOOK_ENV`] names a program to run instead of reboot(2).
//!
//! Fleet strategies ([`crate::fleet`]): on every run on a committed slot, [`Cycle::health`]
//! gives back a reboot slot this box holds (after the commit, or after a rollback brought it
//! back to the old slot); before the checks it refreshes the slot's etcd lease; when a check
//! fails, or the other slot's release never came up, it writes the group's halt record. Fleet errors are logged, never fatal: the verdict
//! on this box comes first.
pub use crate::bootstate::slot_name;
use crate::bootstate::{BootState, BootedState, OtherState};
use crate::config::Settings;
use crate::device::{check_unique_partuuids, DeviceSpec};
use crate::health::{HealthChecks, Limits};
use crate::history::{now, FailedVersion, FailedVersions, HealthReport, History};
use crate::lock::{UpdaterLock, DEFAULT_LOCK_WAIT};
use crate::state::{PendingInstall, StateDir, PENDING};
use anyhow::{bail, Context};
use bootctl::{Slot, SlotDisk, SlotId};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// What happened about rebooting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reboot")]
pub enum RebootAction {
    /// No reboot needed.
    NotNeeded,
    /// The reboot was skipped (`--no-reboot`).
    Skipped,
    /// Needed but not allowed: the marker file says so.
    Required {
        /// The marker written.
        marker: PathBuf,
    },
    /// The machine reboots now, right after the caller has reported ([`Cycle::reboot_now`]).
    Rebooting,
}

/// What `updater health` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum HealthOutcome {
    /// The booted slot was committed before; nothing to check.
    AlreadyCommitted {
        /// The booted slot.
        slot: String,
    },
    /// The pending install in the other slot never came up; recorded as failed.
    PendingNeverCameUp {
        /// Its version.
        version: String,
        /// The reason recorded.
        reason: String,
    },
    /// Checks passed; the booted slot is committed.
    Committed {
        /// The booted slot.
        slot: String,
        /// Its version.
        version: String,
        /// Summary of the checks.
        summary: String,
    },
    /// A check failed; the booted slot is marked bad.
    RolledBack {
        /// The booted slot.
        slot: String,
        /// Its version.
        version: String,
        /// Which check failed how.
        summary: String,
        /// The reboot that follows.
        reboot: RebootAction,
    },
}

/// One slot as `updater status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// `A` or `B` (else the partition number).
    pub slot: String,
    /// The GPT entry.
    #[serde(flatten)]
    pub gpt: Slot,
    /// `IMAGE_VERSION`, where known.
    pub version: Option<String>,
    /// Running now.
    pub booted: bool,
    /// GRUB boots it next.
    pub next: bool,
}

/// Everything `updater status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The booted slot.
    pub booted: String,
    /// The slot GRUB boots next (none: the fallback entry).
    pub next: Option<String>,
    /// Where both slots stand in the update cycle.
    pub boot_state: BootState,
    /// Both slots.
    pub slots: Vec<SlotStatus>,
    /// A flipped install waiting for its first healthy boot.
    pub pending: Option<PendingInstall>,
    /// Versions never to be installed again automatically.
    pub failed: FailedVersions,
    /// The last health verdict.
    pub last_health: Option<HealthReport>,
    /// The health checks installed, as one line (which run, which are masked or refused).
    pub health_checks: String,
    /// No health check is installed: a trial boot is committed for reaching init.
    pub no_health_checks: bool,
    /// State files found damaged and kept aside (say so loudly: decisions were made without
    /// them).
    pub damaged_state: Vec<crate::state::DamagedFile>,
    /// The update agent's view (`agent.json`), when it has run.
    pub agent: Option<crate::agent::AgentState>,
    /// Configuration warnings.
    pub config_warnings: Vec<String>,
}

/// The update cycle of one device.
#[derive(Debug)]
pub struct Cycle {
    dev: DeviceSpec,
    settings: Settings,
    state: StateDir,
    history: History,
    lock_wait: Duration,
}

impl Cycle {
    /// The cycle of `dev`, with its configuration loaded.
    pub fn new(dev: DeviceSpec) -> Cycle {
        let settings = Settings::load(&dev.root);
        let state = dev.state();
        Cycle {
            history: History::new(state.clone()),
            state,
            settings,
            dev,
            lock_wait: DEFAULT_LOCK_WAIT,
        }
    }

    /// Waits up to `wait` for another updater's lock (default [`DEFAULT_LOCK_WAIT`]).
    pub fn with_lock_wait(mut self, wait: Duration) -> Cycle {
        self.lock_wait = wait;
        self
    }

    /// The configuration in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn lock(&self, operation: &str) -> anyhow::Result<UpdaterLock> {
        Ok(UpdaterLock::acquire(
            &self.dev.lock_path(),
            operation,
            self.lock_wait,
        )?)
    }

    fn open(&self, writable: bool) -> anyhow::Result<SlotDisk> {
        let disk = SlotDisk::open(&self.dev.disk, writable, None)
            .with_context(|| format!("reading the GPT of {}", self.dev.disk.display()))?;
        check_unique_partuuids(&disk, &self.dev.disk)?;
        Ok(disk)
    }

    /// The booted slot, the other slot, and where they stand.
    fn slots(&self, disk: &SlotDisk) -> anyhow::Result<(Slot, Slot, BootState)> {
        let booted = disk.slot(&self.dev.booted).with_context(|| {
            format!(
                "finding the booted slot {} on {}",
                self.dev.booted,
                self.dev.disk.display()
            )
        })?;
        let other = disk.other(&self.dev.booted).with_context(|| {
            format!(
                "finding the slot other than {} on {}",
                self.dev.booted,
                self.dev.disk.display()
            )
        })?;
        let st = BootState::classify(&booted, &other, self.pending()?);
        Ok((booted, other, st))
    }

    /// `IMAGE_VERSION` of the running image (`ROOT/usr/lib/os-release`), or `unknown`.
    pub fn booted_version(&self) -> String {
        self.dev.booted_version_or_unknown()
    }

    fn pending(&self) -> anyhow::Result<Option<PendingInstall>> {
        self.state
            .read(PENDING)
            .map(crate::state::Loaded::into_option)
            .context("reading the pending install")
    }

    fn clear_pending(&self) -> anyhow::Result<()> {
        self.state
            .remove(PENDING)
            .context("clearing the pending install")
    }

    fn clear_pending_for(&self, slot: &Slot) -> anyhow::Result<()> {
        if self.pending()?.is_some_and(|p| {
            p.slot_partuuid
                .eq_ignore_ascii_case(&slot.partuuid.to_string())
        }) {
            self.clear_pending()?;
        }
        Ok(())
    }

    fn record_failed(&self, f: FailedVersion, keep_earlier: bool) -> anyhow::Result<()> {
        if keep_earlier && self.history.failed()?.find(&f.version).is_some() {
            return Ok(());
        }
        self.history
            .record_failed(f)
            .context("recording a failed version")
    }

    /// Records the running version as failed for an operator's reason.
    fn record_booted_failed(
        &self,
        booted: &Slot,
        reason: &str,
        keep_earlier: bool,
    ) -> anyhow::Result<()> {
        let f = FailedVersion {
            version: self.booted_version(),
            slot: slot_name(booted),
            reason: reason.into(),
            ..Default::default()
        };
        self.record_failed(f, keep_earlier)
    }

    /// The fleet gate of a fleet strategy (a configuration error is logged: no gate).
    fn fleet(&self) -> Option<crate::fleet::Fleet> {
        crate::fleet::Fleet::for_root(&self.dev.root, &self.settings)
            .inspect_err(|e| log::warn!("fleet reboot gate: {e}"))
            .ok()
            .flatten()
    }

    /// Reboots the machine now: what [`Cycle::reboot`] decided when it said
    /// [`RebootAction::Rebooting`], once the caller has printed why.
    pub fn reboot_now(&self) -> anyhow::Result<()> {
        reboot_now()
    }

    /// Decides the reboot the strategy allows (see the module doc): writes the marker for
    /// strategy `off`; for `immediate` says [`RebootAction::Rebooting`] and leaves the reboot
    /// itself to [`Cycle::reboot_now`], so the verdict is printed before the machine goes down.
    pub fn reboot(&self, no_reboot: bool) -> anyhow::Result<RebootAction> {
        if no_reboot {
            return Ok(RebootAction::Skipped);
        }
        if self.settings.reboot_allowed(now() as i64) && can_reboot(&self.dev) {
            return Ok(RebootAction::Rebooting);
        }
        let marker = self.dev.reboot_marker();
        write_reboot_marker(&marker)?;
        Ok(RebootAction::Required { marker })
    }

    /// The boot-time run: commit after healthy checks, or mark bad and reboot, or record an
    /// install in the other slot that never came up (see [`crate::bootstate`]).
    pub fn health(&self, no_reboot: bool) -> anyhow::Result<HealthOutcome> {
        let _lock = self.lock("health")?;
        let mut disk = self.open(true)?;
        let (booted, other, st) = self.slots(&disk)?;
        let name = st.booted_name.clone();
        let version = self.booted_version();
        // Never fatal: the verdict matters more than the version list of `status`.
        if let Err(e) = self
            .history
            .record_version(&booted.partuuid.to_string(), &version)
        {
            log::warn!("recording the booted version: {e}");
        }
        let fleet = self.fleet();
        if st.booted == BootedState::Committed {
            if st.stale_pending.is_some() {
                self.clear_pending()?;
            }
            if st.never_came_up() {
                let out = self.record_never_came_up(&mut disk, &other, &st)?;
                // A release that never came up halts the group as a failed check does,
                // before this box's slot is given back.
                if let HealthOutcome::PendingNeverCameUp { version, reason } = &out {
                    fleet_halt(fleet.as_ref(), version, reason);
                }
                fleet_release(fleet.as_ref());
                return Ok(out);
            }
            fleet_release(fleet.as_ref());
            return Ok(HealthOutcome::AlreadyCommitted { slot: name });
        }

        if let Some(f) = &fleet {
            match f.refresh() {
                Ok(Some(false)) => log::warn!(
                    "the reboot slot's lease expired before the health checks (etcd.lease_ttl_secs is too short for this reboot)"
                ),
                Ok(_) => {}
                Err(e) => log::warn!("refreshing the reboot slot's lease: {e}"),
            }
        }
        let checks = HealthChecks::discover(&self.dev.root)?;
        let limits = Limits {
            check_timeout: self.settings.check_timeout,
            deadline: self.settings.deadline,
        };
        let verdict = checks.run(
            &limits,
            &[
                ("UPDATER_SLOT", name.as_str()),
                ("UPDATER_VERSION", version.as_str()),
            ],
        );
        let report = HealthReport {
            slot: name.clone(),
            version: version.clone(),
            passed: verdict.passed,
            summary: verdict.summary.clone(),
            checks: verdict.checks.clone(),
            at: now(),
            ..Default::default()
        };
        if let Err(e) = self.history.set_health(&report) {
            log::warn!("recording the health verdict: {e}");
        }
        if verdict.passed {
            disk.mark_good(&self.dev.booted).with_context(|| {
                format!("committing slot {name} on {}", self.dev.disk.display())
            })?;
            self.clear_pending_for(&booted)?;
            fleet_release(fleet.as_ref());
            return Ok(HealthOutcome::Committed {
                slot: name,
                version,
                summary: verdict.summary,
            });
        }
        let failed = verdict.failed_check();
        // Recorded before the GPT changes (a power cut then still leaves the record), but a
        // record that cannot be written must not keep a failed slot booting: mark it bad
        // anyway and report the recording error afterwards.
        let recorded = self.record_failed(
            FailedVersion {
                version: version.clone(),
                slot: name.clone(),
                reason: verdict.summary.clone(),
                check: failed.map(|c| c.name.clone()),
                output: failed.map(|c| c.output.clone()),
                at: now(),
            },
            false,
        );
        if !other.attrs.is_bootable() {
            bail!(
                "{} on slot {name}, but slot {} is not bootable: leaving slot {name} as it is",
                verdict.summary,
                slot_name(&other)
            );
        }
        disk.mark_bad(&self.dev.booted)
            .with_context(|| format!("marking slot {name} bad on {}", self.dev.disk.display()))?;
        self.clear_pending_for(&booted)?;
        fleet_halt(fleet.as_ref(), &version, &verdict.summary);
        recorded?;
        let reboot = self.reboot(no_reboot)?;
        Ok(HealthOutcome::RolledBack {
            slot: name,
            version,
            summary: verdict.summary,
            reboot,
        })
    }

    /// The other slot was flipped, GRUB spent its tries on it, and we are back on the committed
    /// slot: record its version as failed (from the pending record), then make it unbootable
    /// so the classification is not repeated.
    fn record_never_came_up(
        &self,
        disk: &mut SlotDisk,
        other: &Slot,
        st: &BootState,
    ) -> anyhow::Result<HealthOutcome> {
        let reason = format!(
            "never came up: slot {} used its boot tries without being committed (crash, hang, panic or power loss before its health checks passed); GRUB fell back to slot {}",
            st.other_name, st.booted_name
        );
        let version = match &st.pending {
            Some(p) => {
                self.record_failed(
                    FailedVersion {
                        version: p.version.clone(),
                        slot: st.other_name.clone(),
                        reason: reason.clone(),
                        ..Default::default()
                    },
                    true,
                )?;
                p.version.clone()
            }
            None => {
                log::warn!("slot {} never came up, but no pending install names it: its version is unknown and not recorded", st.other_name);
                "unknown".into()
            }
        };
        disk.mark_bad(&SlotId::Number(other.number))
            .with_context(|| {
                format!(
                    "marking slot {} bad on {}",
                    st.other_name,
                    self.dev.disk.display()
                )
            })?;
        self.clear_pending()?;
        Ok(HealthOutcome::PendingNeverCameUp { version, reason })
    }

    /// Makes the other slot next: a committed one by priority alone, a verified but never
    /// committed one with one try. Refuses a slot that holds neither.
    pub fn rollback(&self, no_reboot: bool) -> anyhow::Result<(String, RebootAction)> {
        let _lock = self.lock("rollback")?;
        let mut disk = self.open(true)?;
        let (booted, other, st) = self.slots(&disk)?;
        let other_id = SlotId::Number(other.number);
        match st.other {
            OtherState::CommittedFallback => {
                disk.prioritize(&other_id)?;
            }
            OtherState::Pending | OtherState::Written if st.pending.is_some() => {
                disk.set_next(&other_id, 1)?;
            }
            _ => bail!(
                "slot {} holds no committed or freshly verified image ({:?}): refusing to make it bootable",
                st.other_name,
                st.other
            ),
        }
        if st.booted != BootedState::Committed {
            self.record_booted_failed(
                &booted,
                "rolled back by the operator before it was committed",
                true,
            )?;
            self.clear_pending_for(&booted)?;
        }
        Ok((st.other_name.clone(), self.reboot(no_reboot)?))
    }

    /// Commits the booted slot by hand (a slot booted through grub.cfg's fallback entry also
    /// gets the top priority back).
    pub fn mark_good(&self) -> anyhow::Result<bool> {
        let _lock = self.lock("mark-good")?;
        let mut disk = self.open(true)?;
        let (booted, _, _) = self.slots(&disk)?;
        let wrote = disk.mark_good(&self.dev.booted).with_context(|| {
            format!(
                "committing slot {} on {}",
                slot_name(&booted),
                self.dev.disk.display()
            )
        })?;
        self.clear_pending_for(&booted)?;
        Ok(wrote)
    }

    /// Marks the booted slot bad by hand and reboots into the other one.
    pub fn mark_bad(&self, no_reboot: bool) -> anyhow::Result<RebootAction> {
        let _lock = self.lock("mark-bad")?;
        let mut disk = self.open(true)?;
        let (booted, other, st) = self.slots(&disk)?;
        if !other.attrs.is_bootable() {
            bail!(
                "slot {} is not bootable: marking slot {} bad would leave nothing to boot",
                st.other_name,
                st.booted_name
            );
        }
        self.record_booted_failed(&booted, "marked bad by the operator", false)?;
        disk.mark_bad(&self.dev.booted)?;
        self.clear_pending_for(&booted)?;
        self.reboot(no_reboot)
    }

    /// Lifts the refusal of every version that a damaged failed-version list set
    /// ([`crate::history::FailedVersions::refuse_all`]); the versions salvaged from it stay
    /// refused. Returns whether a refusal was lifted.
    pub fn unblock(&self) -> anyhow::Result<bool> {
        let _lock = self.lock("unblock")?;
        self.history
            .clear_refuse_all()
            .context("clearing the refusal of every version")
    }

    /// Both slots, the next boot, the pending install, failed versions, the last verdict.
    pub fn status(&self) -> anyhow::Result<Status> {
        let mut disk = self.open(false)?;
        let (booted, _, st) = self.slots(&disk)?;
        let next = disk.select(false)?.map(|s| s.slot);
        let pending = self.pending()?;
        let failed = self.history.failed()?;
        let last_health = self.history.health()?;
        let known = self.history.versions()?;
        let (health_checks, no_health_checks) = match HealthChecks::discover(&self.dev.root) {
            Ok(c) => (c.describe(), c.none_installed()),
            Err(e) => (format!("cannot be listed: {e:#}"), false),
        };
        let slots = disk
            .slots()
            .into_iter()
            .map(|s| {
                let is_booted = s.number == booted.number;
                let partuuid = s.partuuid.to_string();
                let version = if is_booted {
                    Some(self.booted_version())
                } else {
                    pending
                        .as_ref()
                        .filter(|p| p.slot_partuuid.eq_ignore_ascii_case(&partuuid))
                        .map(|p| p.version.clone())
                        .or_else(|| known.slots.get(&partuuid).cloned())
                };
                SlotStatus {
                    slot: slot_name(&s),
                    version,
                    booted: is_booted,
                    next: next.as_ref().is_some_and(|n| n.number == s.number),
                    gpt: s,
                }
            })
            .collect();
        Ok(Status {
            booted: slot_name(&booted),
            next: next.as_ref().map(slot_name),
            boot_state: st,
            slots,
            pending,
            failed,
            last_health,
            health_checks,
            no_health_checks,
            damaged_state: self.history.damaged().unwrap_or_default(),
            agent: self
                .state
                .read::<crate::agent::AgentState>(crate::agent::AGENT_STATE)
                .ok()
                .and_then(crate::state::Loaded::into_option),
            config_warnings: self.settings.warnings.clone(),
        })
    }
}

/// TEST ONLY: names a program that [`reboot_now`] runs instead of reboot(2), and that lets
/// a root prefix (`--root` not `/`) "reboot". The fleet tests' harness uses it to simulate a
/// box's reboot (apply GRUB's rule to the disk image, start the next boot's `updater health`
/// and agent). Never set it on a device.
pub const REBOOT_HOOK_ENV: &str = "UPDATER_TEST_REBOOT_COMMAND";

/// The test reboot program of [`REBOOT_HOOK_ENV`], if set.
pub fn reboot_hook() -> Option<PathBuf> {
    std::env::var_os(REBOOT_HOOK_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Whether a reboot of `dev` can be done: it is the running machine, or the test hook is set.
pub fn can_reboot(dev: &DeviceSpec) -> bool {
    dev.is_live() || reboot_hook().is_some()
}

/// Gives back the fleet slot this box holds, logging a failure (the agent retries).
fn fleet_release(fleet: Option<&crate::fleet::Fleet>) {
    if let Some(f) = fleet {
        match f.release() {
            Ok(true) => log::info!("released the reboot slot"),
            Ok(false) => {}
            Err(e) => log::warn!("releasing the reboot slot (the agent retries): {e}"),
        }
    }
}

/// Writes the group's halt record for `version`, logging a failure (the agent retries).
fn fleet_halt(fleet: Option<&crate::fleet::Fleet>, version: &str, reason: &str) {
    if let Some(f) = fleet {
        match f.halt(version, reason, now()) {
            Ok(true) => log::warn!("halted the fleet group: {version} failed here"),
            Ok(false) => {}
            Err(e) => log::warn!("writing the group's halt record (the agent retries): {e}"),
        }
    }
}

/// Syncs and reboots the machine now (or runs the test hook, [`REBOOT_HOOK_ENV`]).
pub fn reboot_now() -> anyhow::Result<()> {
    if let Some(hook) = reboot_hook() {
        let status = std::process::Command::new(&hook)
            .status()
            .with_context(|| format!("running the test reboot hook {}", hook.display()))?;
        if !status.success() {
            bail!("the test reboot hook {} failed: {status}", hook.display());
        }
        return Ok(());
    }
    nix::unistd::sync();
    nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT).context("rebooting")?;
    Ok(())
}

/// Writes the marker that says a reboot is needed but was not done (`/run/reboot-required`).
pub fn write_reboot_marker(marker: &std::path::Path) -> anyhow::Result<()> {
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(marker, b"updater\n").with_context(|| format!("writing {}", marker.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootctl::SlotAttrs;
    use std::os::unix::fs::PermissionsExt;

    /// A device root with a disk-image file in the DESIGN §3 layout, booted from `booted`.
    struct Rig {
        dir: tempfile::TempDir,
        disk: PathBuf,
    }

    impl Rig {
        fn new() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let disk = dir.path().join("disk.img");
            std::fs::write(&disk, bootctl::layout::mem_disk(512).bytes).unwrap();
            Rig { dir, disk }
        }
        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }
        fn cycle(&self, booted: SlotId, version: &str) -> Cycle {
            let os = self.root().join("usr/lib/os-release");
            std::fs::create_dir_all(os.parent().unwrap()).unwrap();
            std::fs::write(
                &os,
                format!("ID=test\nIMAGE_ID=test\nIMAGE_VERSION={version}\n"),
            )
            .unwrap();
            Cycle::new(DeviceSpec {
                root: self.root(),
                disk: self.disk.clone(),
                booted,
            })
        }
        fn slots(&self) -> SlotDisk {
            SlotDisk::open(&self.disk, true, None).unwrap()
        }
        fn attrs(&self, id: SlotId) -> SlotAttrs {
            self.slots().slot(&id).unwrap().attrs
        }
        fn check(&self, name: &str, body: &str) {
            let p = self.root().join("etc/updater/health.d").join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        /// What `updater install` leaves: B written, flipped to P2 T1 S0, pending recorded.
        fn installed_b(&self, version: &str) {
            let mut d = self.slots();
            d.set_next(&SlotId::B, 1).unwrap();
            let b = d.slot(&SlotId::B).unwrap();
            let p = PendingInstall {
                format_version: 1,
                slot: "B".into(),
                slot_partuuid: b.partuuid.to_string(),
                version: version.into(),
                payload_id: "id".into(),
                flipped: true,
            };
            StateDir::under_root(&self.root())
                .store(PENDING, &p)
                .unwrap();
        }
        /// What GRUB does at boot: the tries decrement of the chosen slot.
        fn grub_boots(&self) -> String {
            slot_name(
                &self
                    .slots()
                    .select(true)
                    .unwrap()
                    .expect("something bootable")
                    .slot,
            )
        }
        fn pending(&self) -> Option<PendingInstall> {
            StateDir::under_root(&self.root()).load(PENDING).unwrap()
        }
        fn failed(&self) -> FailedVersions {
            History::new(StateDir::under_root(&self.root()))
                .failed()
                .unwrap()
        }
    }

    fn s(priority: u8, tries: u8, successful: bool) -> SlotAttrs {
        SlotAttrs {
            priority,
            tries,
            successful,
        }
    }

    #[test]
    fn healthy_new_slot_is_committed_and_the_old_one_kept_as_fallback() {
        let r = Rig::new();
        r.installed_b("2");
        assert_eq!(r.grub_boots(), "B");
        r.check("10-ok", "exit 0");
        let out = r.cycle(SlotId::B, "2").health(true).unwrap();
        assert!(
            matches!(out, HealthOutcome::Committed { ref version, .. } if version == "2"),
            "{out:?}"
        );
        assert_eq!(r.attrs(SlotId::B), s(2, 0, true));
        assert_eq!(r.attrs(SlotId::A), s(1, 0, true));
        assert_eq!(r.pending(), None);
        assert_eq!(r.grub_boots(), "B");
    }

    #[test]
    fn failing_check_marks_the_slot_bad_records_why_and_needs_a_reboot() {
        let r = Rig::new();
        r.installed_b("3");
        r.grub_boots();
        r.check("10-app", "echo 'app: connection refused' >&2; exit 4");
        let out = r.cycle(SlotId::B, "3").health(false).unwrap();
        let HealthOutcome::RolledBack {
            summary, reboot, ..
        } = out
        else {
            panic!("{out:?}")
        };
        assert_eq!(summary, "health check 10-app failed (exit 4)");
        assert_eq!(
            reboot,
            RebootAction::Required {
                marker: r.root().join("run/reboot-required")
            }
        );
        assert!(r.root().join("run/reboot-required").exists());
        assert_eq!(r.attrs(SlotId::B), s(0, 0, false));
        assert_eq!(r.grub_boots(), "A");
        let f = r.failed();
        let v3 = f.find("3").unwrap();
        assert_eq!(
            (v3.check.as_deref(), v3.output.as_deref()),
            (Some("10-app"), Some("app: connection refused\n"))
        );
        assert_eq!(r.pending(), None);
        // Back on A, the failure's own explanation is kept.
        assert!(matches!(
            r.cycle(SlotId::A, "2").health(true).unwrap(),
            HealthOutcome::AlreadyCommitted { .. }
        ));
        assert_eq!(
            r.failed().find("3").unwrap().reason,
            "health check 10-app failed (exit 4)"
        );
    }

    #[test]
    fn no_reboot_means_no_reboot_and_no_marker() {
        let r = Rig::new();
        r.installed_b("3");
        r.grub_boots();
        r.check("10-app", "exit 1");
        let HealthOutcome::RolledBack { reboot, .. } =
            r.cycle(SlotId::B, "3").health(true).unwrap()
        else {
            panic!()
        };
        assert_eq!(reboot, RebootAction::Skipped);
        assert!(!r.root().join("run/reboot-required").exists());
    }

    #[test]
    fn immediate_strategy_never_reboots_a_root_prefix() {
        let r = Rig::new();
        let d = r.root().join("etc/updater/config.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("50.toml"), "[reboot]\nstrategy = \"immediate\"\n").unwrap();
        let c = r.cycle(SlotId::A, "1");
        assert_eq!(
            c.settings().reboot,
            crate::config::RebootStrategy::Immediate
        );
        assert!(matches!(
            c.reboot(false).unwrap(),
            RebootAction::Required { .. }
        ));
    }

    #[test]
    fn install_that_never_came_up_is_recorded_as_failed_on_the_old_slot() {
        let r = Rig::new();
        r.installed_b("4");
        assert_eq!(r.grub_boots(), "B"); // kernel panics: no health run
        assert_eq!(r.grub_boots(), "A"); // tries exhausted: GRUB falls back
        let out = r.cycle(SlotId::A, "2").health(true).unwrap();
        let HealthOutcome::PendingNeverCameUp { version, reason } = out else {
            panic!("{out:?}")
        };
        assert_eq!(version, "4");
        assert!(reason.starts_with("never came up"), "{reason}");
        assert!(r.failed().find("4").is_some());
        assert_eq!(r.pending(), None);
    }

    #[test]
    fn a_commit_cut_before_the_pending_record_is_cleared_finishes_on_the_next_run() {
        let r = Rig::new();
        r.installed_b("2");
        r.grub_boots();
        r.slots().mark_good(&SlotId::B).unwrap(); // power cut right after the GPT write
        assert!(r.pending().is_some());
        assert!(matches!(
            r.cycle(SlotId::B, "2").health(true).unwrap(),
            HealthOutcome::AlreadyCommitted { .. }
        ));
        assert_eq!(r.pending(), None);
        assert!(r.failed().versions.is_empty());
    }

    #[test]
    fn rollback_to_the_committed_fallback_and_back() {
        let r = Rig::new();
        r.installed_b("2");
        r.grub_boots();
        r.cycle(SlotId::B, "2").health(true).unwrap();
        let (next, reboot) = r.cycle(SlotId::B, "2").rollback(true).unwrap();
        assert_eq!((next.as_str(), reboot), ("A", RebootAction::Skipped));
        assert_eq!(r.grub_boots(), "A");
        assert_eq!(r.attrs(SlotId::A), s(3, 0, true));
        let (next, _) = r.cycle(SlotId::A, "1").rollback(true).unwrap();
        assert_eq!(next, "B");
        assert_eq!(r.grub_boots(), "B");
        assert_eq!(r.attrs(SlotId::B), s(4, 0, true));
        assert!(
            r.failed().versions.is_empty(),
            "rolling between committed slots records no failure"
        );
    }

    #[test]
    fn rollback_refuses_a_slot_without_a_verified_image() {
        let r = Rig::new();
        let before = std::fs::read(&r.disk).unwrap();
        let e = r.cycle(SlotId::A, "1").rollback(true).unwrap_err();
        assert!(
            format!("{e:#}").contains("slot B holds no committed or freshly verified image"),
            "{e:#}"
        );
        assert_eq!(std::fs::read(&r.disk).unwrap(), before);
    }

    #[test]
    fn mark_bad_refuses_to_leave_nothing_bootable() {
        let r = Rig::new();
        let e = r.cycle(SlotId::A, "1").mark_bad(true).unwrap_err();
        assert!(
            format!("{e:#}").contains("would leave nothing to boot"),
            "{e:#}"
        );
        assert_eq!(r.attrs(SlotId::A), s(1, 0, true));
    }

    #[test]
    fn status_names_the_version_of_the_committed_fallback() {
        let r = Rig::new();
        r.cycle(SlotId::A, "1").health(true).unwrap(); // factory boot: A remembers v1
        r.installed_b("2");
        r.grub_boots();
        r.cycle(SlotId::B, "2").health(true).unwrap();
        let st = r.cycle(SlotId::B, "2").status().unwrap();
        assert_eq!(st.slots[0].version.as_deref(), Some("1"));
        assert_eq!(st.slots[1].version.as_deref(), Some("2"));
    }

    #[test]
    fn status_explains_slots_pending_and_failures() {
        let r = Rig::new();
        r.installed_b("3");
        r.grub_boots();
        r.check("10-app", "echo boom; exit 1");
        r.cycle(SlotId::B, "3").health(true).unwrap();
        let st = r.cycle(SlotId::A, "2").status().unwrap();
        assert_eq!((st.booted.as_str(), st.next.as_deref()), ("A", Some("A")));
        assert_eq!(st.slots[0].version.as_deref(), Some("2"));
        assert!(st.slots[0].booted && st.slots[0].next);
        assert_eq!(
            st.failed.find("3").unwrap().check.as_deref(),
            Some("10-app")
        );
        assert!(!st.last_health.as_ref().unwrap().passed);
        let text = crate::cli::cycle::render_status(&st);
        assert!(
            text.contains("failed: version 3 (slot B): health check 10-app failed (exit 1)"),
            "{text}"
        );
        assert!(text.contains("| boom"), "{text}");
    }
}
