//! `updater fleet status|resume`: the command-line face of [`crate::fleet`].
use super::GlobalArgs;
use crate::config::Settings;
use crate::fleet::{Fleet, FleetStatus};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::process::ExitCode;

/// Show or clear the fleet's reboot coordination (reboot strategies fleetlock and etcd).
///
/// Example: updater fleet status --json; updater fleet resume
#[derive(Args, Debug)]
pub struct FleetCmd {
    #[command(subcommand)]
    command: FleetSub,
}

#[derive(Subcommand, Debug)]
enum FleetSub {
    Status(StatusCmd),
    Resume(ResumeCmd),
}

/// Show this box's node id, group and slot, and (etcd) the group's slot holders and halt
/// record.
///
/// Exit status 0 when the coordinator answered, 1 when it could not be reached or the
/// strategy is not a fleet one. Example: updater fleet status --json
#[derive(Args, Debug)]
struct StatusCmd {}

/// Delete the group's halt record (etcd), so its boxes take reboot slots again.
///
/// Do it once the failed version is understood (pulled from the stream, or fixed): the box
/// that failed never installs it again, the others would. Prints the record removed. Exit
/// status 0 when the group is not halted any more, 1 on error. Example: updater fleet resume
#[derive(Args, Debug)]
struct ResumeCmd {}

fn fleet(d: &GlobalArgs) -> anyhow::Result<(Fleet, Settings)> {
    let settings = Settings::load(&d.root);
    let f = Fleet::for_root(&d.root, &settings)
        .context("setting up the fleet reboot gate")?
        .with_context(|| {
            format!(
                "reboot strategy is {:?}: fleet commands need fleetlock or etcd",
                settings.reboot
            )
        })?;
    Ok((f, settings))
}

/// The text form of a status.
pub fn render_status(s: &FleetStatus) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "strategy {}, group {}, node {}",
        s.strategy, s.group, s.node
    );
    let l = &s.local;
    let _ = writeln!(
        o,
        "this box: {}{}",
        if l.held {
            "holds a reboot slot"
        } else {
            "holds no reboot slot"
        },
        l.lease.map(|x| format!(" (lease {x})")).unwrap_or_default()
    );
    if l.failures > 0 {
        let _ = writeln!(
            o,
            "last {} requests refused, next at {} (Unix time): {}",
            l.failures, l.next_try, l.last
        );
    }
    if let Some(n) = s.slots {
        let _ = writeln!(o, "slots: {} of {n} held", s.held.len());
        for h in &s.held {
            match &h.holder {
                Some(x) => {
                    let _ = writeln!(
                        o,
                        "  {}: node {} rebooting into {} since {} (lease {})",
                        h.key, x.node, x.version, x.at, h.lease
                    );
                }
                None => {
                    let _ = writeln!(o, "  {}: unreadable holder (lease {})", h.key, h.lease);
                }
            }
        }
    }
    match &s.halt {
        Some(h) => {
            let _ = writeln!(o, "HALTED: {h}");
            let _ = writeln!(o, "  `updater fleet resume` lets the group reboot again");
        }
        None if s.slots.is_some() => {
            let _ = writeln!(o, "not halted");
        }
        None => {}
    }
    o
}

impl FleetCmd {
    /// Runs the command.
    pub fn run(&self, d: &GlobalArgs) -> anyhow::Result<ExitCode> {
        let (f, settings) = fleet(d)?;
        match &self.command {
            FleetSub::Status(_) => {
                let s = f
                    .status(&settings.fleet)
                    .context("reading the fleet status")?;
                if d.json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    print!("{}", render_status(&s));
                }
            }
            FleetSub::Resume(_) => {
                let removed = f.resume().context("deleting the group's halt record")?;
                if d.json {
                    println!("{}", serde_json::json!({ "resumed": removed }));
                } else {
                    match removed {
                        Some(h) => {
                            println!("group {} resumed (removed: {h})", settings.fleet.group)
                        }
                        None => println!("group {} was not halted", settings.fleet.group),
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
