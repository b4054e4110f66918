//! The boot-cycle subcommands (`health`, `status`, `rollback`,
//! `mark-good`, `mark-bad`): argument types and output, the work being in [`crate::cycle`].
use super::GlobalArgs;
use crate::bootstate::{BootedState, OtherState};
use crate::cycle::{Cycle, HealthOutcome, RebootAction, Status};
use clap::Args;

/// Reboots now if the strategy said so, after everything above was printed.
fn reboot_if_due(cycle: &Cycle, r: &RebootAction) -> anyhow::Result<()> {
    if *r == RebootAction::Rebooting {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        cycle.reboot_now()?;
    }
    Ok(())
}

fn print_reboot(r: &RebootAction) {
    match r {
        RebootAction::NotNeeded => {}
        RebootAction::Skipped => println!("not rebooting (--no-reboot): reboot to finish"),
        RebootAction::Required { marker } => println!(
            "reboot required (reboot strategy is off; wrote {})",
            marker.display()
        ),
        RebootAction::Rebooting => println!("rebooting"),
    }
}

/// Run once per boot: commit the booted slot if its health checks pass, else mark it bad
/// and reboot into the other slot.
///
/// Exit status 0 when the booted slot is (or already was) committed, 1 when it failed its
/// checks and was rolled back. Example: updater health --no-reboot
#[derive(Args, Debug)]
pub struct HealthCmd {
    /// Never reboot, whatever the reboot strategy says.
    #[arg(long)]
    pub no_reboot: bool,
}

impl HealthCmd {
    /// Runs the command.
    pub fn run(&self, d: &GlobalArgs) -> anyhow::Result<std::process::ExitCode> {
        let cycle = Cycle::new(d.device()?).with_lock_wait(d.lock_wait());
        let outcome = cycle.health(self.no_reboot)?;
        if d.json {
            println!("{}", serde_json::to_string(&outcome)?);
        } else {
            match &outcome {
                HealthOutcome::AlreadyCommitted { slot } => {
                    println!("slot {slot} is committed; nothing to check")
                }
                HealthOutcome::PendingNeverCameUp { version, reason } => {
                    println!("version {version} recorded as failed: {reason}")
                }
                HealthOutcome::Committed {
                    slot,
                    version,
                    summary,
                } => println!("{summary}: slot {slot} (version {version}) committed"),
                HealthOutcome::RolledBack {
                    slot,
                    version,
                    summary,
                    reboot,
                } => {
                    println!("{summary}: slot {slot} (version {version}) marked bad and recorded as failed");
                    print_reboot(reboot);
                }
            }
        }
        if let HealthOutcome::RolledBack { reboot, .. } = &outcome {
            reboot_if_due(&cycle, reboot)?;
        }
        Ok(if matches!(outcome, HealthOutcome::RolledBack { .. }) {
            std::process::ExitCode::from(1)
        } else {
            std::process::ExitCode::SUCCESS
        })
    }
}

/// Show both slots, the next boot, the pending install, failed versions and the last health
/// verdict.
///
/// Example: updater status --json
#[derive(Args, Debug)]
pub struct StatusCmd {}

impl StatusCmd {
    /// Runs the command.
    pub fn run(&self, d: &GlobalArgs) -> anyhow::Result<std::process::ExitCode> {
        if let Some(code) = super::netboot::ram_status(d)? {
            return Ok(code);
        }
        let status = Cycle::new(d.device()?)
            .with_lock_wait(d.lock_wait())
            .status()?;
        if d.json {
            println!("{}", serde_json::to_string(&status)?);
        } else {
            print!("{}", render_status(&status));
        }
        Ok(std::process::ExitCode::SUCCESS)
    }
}

/// The human form of [`Status`].
pub fn render_status(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "booted: slot {}    next boot: {}",
        s.booted,
        s.next
            .as_deref()
            .map_or("none (GRUB's fallback entry)".to_string(), |n| format!(
                "slot {n}"
            ))
    );
    let _ = writeln!(
        o,
        "{:<5} {:<6} {:<10} {:>3} {:>3} {:>3}  {:<36}  NOTE",
        "SLOT", "LABEL", "VERSION", "P", "T", "S", "PARTUUID"
    );
    for slot in &s.slots {
        let note = [slot.booted.then_some("booted"), slot.next.then_some("next")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
        let a = slot.gpt.attrs;
        let _ = writeln!(
            o,
            "{:<5} {:<6} {:<10} {:>3} {:>3} {:>3}  {:<36}  {note}",
            slot.slot,
            slot.gpt.label,
            slot.version.as_deref().unwrap_or("-"),
            a.priority,
            a.tries,
            u8::from(a.successful),
            slot.gpt.partuuid.to_string()
        );
    }
    let st = &s.boot_state;
    let _ = writeln!(
        o,
        "state: slot {} {}, slot {} {}",
        st.booted_name,
        match st.booted {
            BootedState::Committed => "committed",
            BootedState::Trial => "on trial (not committed: run `updater health`)",
            BootedState::FallbackBoot => "booted by GRUB's fallback entry (no slot was bootable)",
        },
        st.other_name,
        match st.other {
            OtherState::Unbootable => "unbootable",
            OtherState::Written => "written and verified, not flipped",
            OtherState::Pending => "pending: boots next on trial",
            OtherState::NeverCameUp => "never came up (its tries are spent)",
            OtherState::CommittedFallback => "committed (the fallback)",
        }
    );
    match &s.pending {
        Some(p) if p.flipped && st.pending.is_some() && st.other == OtherState::Unbootable => {
            let _ = writeln!(
                o,
                "pending: version {} in slot {}, interrupted before the flip: run the install again",
                p.version, p.slot
            );
        }
        Some(p) => {
            let _ = writeln!(
                o,
                "pending: version {} in slot {}{}",
                p.version,
                p.slot,
                if p.flipped {
                    ", waiting for its first healthy boot"
                } else {
                    ", not flipped (--no-flip)"
                }
            );
        }
        None => {
            let _ = writeln!(o, "pending: none");
        }
    }
    if let Some(h) = &s.last_health {
        let _ = writeln!(
            o,
            "last health check: slot {} version {}: {}",
            h.slot, h.version, h.summary
        );
    }
    if let Some(r) = &s.failed.refuse_all {
        let _ = writeln!(
            o,
            "UPDATES BLOCKED: the failed-version list was damaged and may have lost entries: {} (see docs/usage/state.md)",
            r.reason
        );
    }
    for d in &s.damaged_state {
        let _ = writeln!(
            o,
            "DAMAGED STATE FILE: {} ({} bytes) was unreadable; kept as {} at {} (Unix time)",
            d.name,
            d.len,
            d.kept_as.display(),
            d.at
        );
    }
    for f in &s.failed.versions {
        let _ = writeln!(
            o,
            "failed: version {} (slot {}): {}",
            f.version, f.slot, f.reason
        );
        if let Some(out) = f.output.as_deref().filter(|o| !o.is_empty()) {
            for line in out
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                let _ = writeln!(o, "    | {line}");
            }
        }
    }
    let _ = writeln!(
        o,
        "health checks: {}{}",
        s.health_checks,
        if s.no_health_checks {
            " (a trial boot is committed for reaching init)"
        } else {
            ""
        }
    );
    if let Some(a) = &s.agent {
        let _ = writeln!(
            o,
            "agent: stream {} serial {}; last check at {} (Unix time): {}{}",
            a.stream_url,
            a.serial.map_or("-".into(), |n| n.to_string()),
            a.last_check,
            if a.last_check_ok { "" } else { "FAILED: " },
            a.last_result
        );
        if let Some(t) = &a.target {
            let _ = writeln!(o, "agent target: {t}");
        }
        if let Some((start, end)) = a.next_window {
            let _ = writeln!(o, "next maintenance window: {start}..{end} (Unix time)");
        }
    }
    for w in &s.config_warnings {
        let _ = writeln!(o, "config warning: {w}");
    }
    o
}

/// Make the other slot the next boot (a committed slot by priority; a verified, never
/// committed one with one try) and reboot per the reboot strategy.
///
/// Example: updater rollback --no-reboot
#[derive(Args, Debug)]
pub struct RollbackCmd {
    /// Never reboot, whatever the reboot strategy says.
    #[arg(long)]
    pub no_reboot: bool,
}

impl RollbackCmd {
    /// Runs the command.
    pub fn run(&self, d: &GlobalArgs) -> anyhow::Result<std::process::ExitCode> {
        let cycle = Cycle::new(d.device()?).with_lock_wait(d.lock_wait());
        let (slot, reboot) = cycle.rollback(self.no_reboot)?;
        if d.json {
            println!("{}", serde_json::json!({"next": slot, "reboot": reboot}));
        } else {
            println!("slot {slot} boots next");
            print_reboot(&reboot);
        }
        reboot_if_due(&cycle, &reboot)?;
        Ok(std::process::ExitCode::SUCCESS)
    }
}

/// Commit the booted slot by hand (successful 1, tries 0).
///
/// Example: updater mark-good
#[derive(Args, Debug)]
pub struct MarkGoodCmd {
    /// Accepted for symmetry; committing never reboots.
    #[arg(long)]
    pub no_reboot: bool,
}

impl MarkGoodCmd {
    /// Runs the command.
    pub fn run(&self, d: &GlobalArgs) -> anyhow::Result<std::process::ExitCode> {
        let wrote = Cycle::new(d.device()?)
            .with_lock_wait(d.lock_wait())
            .mark_good()?;
        if d.json {
            println!(
                "{}",
                serde_json::json!({"committed": true, "changed": wrote})
            );
        } else {
            println!(
                "booted slot committed{}",
                if wrote { "" } else { " (it already was)" }
            );
        }
        Ok(std::process::ExitCode::SUCCESS)
    }
}

/// Mark the booted slot bad, record its version as failed, and reboot into the other slot.
///
/// Refused when the other slot is not bootable. Example: updater mark-bad --no-reboot
#[derive(Args, Debug)]
pub struct MarkBadCmd {
    /// Never reboot, whatever the reboot strategy says.
    #[arg(long)]
    pub no_reboot: bool,
}

impl MarkBadCmd {
    /// Runs the command.
    pub fn run(&self, d: &GlobalArgs) -> anyhow::Result<std::process::ExitCode> {
        let cycle = Cycle::new(d.device()?).with_lock_wait(d.lock_wait());
        let reboot = cycle.mark_bad(self.no_reboot)?;
        if d.json {
            println!(
                "{}",
                serde_json::json!({"marked_bad": true, "reboot": reboot})
            );
        } else {
            println!("booted slot marked bad");
            print_reboot(&reboot);
        }
        reboot_if_due(&cycle, &reboot)?;
        Ok(std::process::ExitCode::SUCCESS)
    }
}

/// Lift "updates blocked": after the failed-version list was found damaged, every version is
/// refused until an operator has looked at the damaged copy `updater status` names.
///
/// The versions salvaged from the damaged copy stay recorded as failed. Exit status 0 whether
/// or not updates were blocked. Example: updater unblock
#[derive(Args, Debug)]
pub struct UnblockCmd {}

impl UnblockCmd {
    /// Runs the command.
    pub fn run(&self, d: &GlobalArgs) -> anyhow::Result<std::process::ExitCode> {
        let lifted = Cycle::new(d.device()?)
            .with_lock_wait(d.lock_wait())
            .unblock()?;
        if d.json {
            println!("{}", serde_json::json!({ "unblocked": lifted }));
        } else if lifted {
            println!("updates unblocked; versions salvaged from the damaged list stay refused");
        } else {
            println!("updates were not blocked");
        }
        Ok(std::process::ExitCode::SUCCESS)
    }
}
