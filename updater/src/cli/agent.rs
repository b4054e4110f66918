//! `updater check` and `updater agent`: the command-line face of [`crate::agent`].
use super::GlobalArgs;
use crate::agent::{Action, Agent, Finalize};
use crate::history::now;
use clap::Args;
use std::process::ExitCode;

/// Poll the release stream once and say what this box would do and why; change nothing.
///
/// Fetches agent.stream_url (and its .sig), verifies the signature, channel, serial and
/// expiry, and prints the booted version, the box's rollout position, every release with the
/// reason it is or is not the target, and the target. Exit status: 0 when the stream was
/// verified (whatever the decision), 1 when it could not be fetched or was refused.
///
/// Example: updater check --json
#[derive(Args, Debug)]
pub struct CheckCmd {}

impl CheckCmd {
    /// Runs the command.
    pub fn run(&self, d: &GlobalArgs) -> anyhow::Result<ExitCode> {
        let agent = Agent::new(d.device()?).with_lock_wait(d.lock_wait());
        let report = agent.check(now())?;
        if d.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "stream {} (channel {}, serial {}, signed by {}{})",
                report.stream_url,
                report.channel,
                report.serial,
                report.signed_by,
                if report.not_modified {
                    ", not modified"
                } else {
                    ""
                }
            );
            println!("{}", report.decision);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Run the update agent: poll the release stream, install what the rollout offers this box,
/// and reboot as the reboot strategy allows.
///
/// Every agent.interval_secs (plus up to agent.jitter_secs at random) it fetches and verifies
/// the stream, chooses a target (newer, not failed here, not pulled, no barrier skipped,
/// rollout open for this box), installs it through the same path as `updater install`, and
/// finalizes by reboot.strategy: immediate, off (writes /run/reboot-required) or periodic
/// (reboots inside a maintenance window). Nothing happens while the booted slot is not
/// committed. Exit status of --once: 0 when the cycle completed, 1 when it failed.
///
/// Example: updater agent --once --json (a timer), or updater agent (a service)
#[derive(Args, Debug)]
pub struct AgentCmd {
    /// Run one cycle and exit (for timers and tests).
    #[arg(long)]
    pub once: bool,
    /// Never reboot, whatever the reboot strategy says.
    #[arg(long)]
    pub no_reboot: bool,
}

impl AgentCmd {
    /// Runs the command.
    pub fn run(&self, d: &GlobalArgs) -> anyhow::Result<ExitCode> {
        let agent = Agent::new(d.device()?).with_lock_wait(d.lock_wait());
        if !self.once {
            agent.run(self.no_reboot)?;
            return Ok(ExitCode::SUCCESS);
        }
        let report = agent.cycle(now(), self.no_reboot)?;
        if d.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            if let Some(c) = &report.check {
                println!("{}", c.decision);
            }
            match &report.action {
                Action::WaitingForHealth { booted } => println!(
                    "waiting: the booted slot is not committed ({booted:?}); `updater health` commits it"
                ),
                Action::NoUpdate => {}
                Action::AlreadyStaged { version } => {
                    println!("{version} is already installed and waits for a reboot")
                }
                Action::Installed { report } => println!(
                    "installed {} into slot {}; it boots next",
                    report.version, report.slot
                ),
            }
            match &report.finalize {
                Finalize::NotNeeded => {}
                Finalize::Skipped => println!("not rebooting (--no-reboot): reboot to finish"),
                Finalize::Required { marker } => println!(
                    "reboot required (reboot strategy is off; wrote {})",
                    marker.display()
                ),
                Finalize::Deferred {
                    marker,
                    next_window,
                } => println!(
                    "reboot deferred to the next maintenance window{} (wrote {})",
                    next_window.map_or(" (none configured)".to_string(), |(s, _)| format!(
                        " at {s} (Unix time)"
                    )),
                    marker.display()
                ),
                Finalize::WaitingForLock {
                    reason,
                    retry_at,
                    marker,
                } => println!(
                    "reboot waits for the fleet's reboot slot: {reason}; asking again at {retry_at} (Unix time) (wrote {})",
                    marker.display()
                ),
                Finalize::Rebooting => println!("rebooting"),
            }
        }
        if report.finalize == Finalize::Rebooting {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            agent.reboot_now()?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
