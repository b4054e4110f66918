//! `updater`: the device binary. Parsing and dispatch only; the work is in the library.
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use updater::cli::{agent, cycle, firstboot, fleet, install, netboot, GlobalArgs};

/// A/B /usr updater: install signed images into the passive slot, then commit or roll back.
///
/// Exit status: 0 on success, 1 when the operation failed (the one-line message says why) or
/// `health` rolled the booted slot back, 2 on a usage error.
#[derive(Parser)]
#[command(name = "updater", version, help_expected = true, max_term_width = 80)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Install(install::InstallCmd),
    Health(cycle::HealthCmd),
    Status(cycle::StatusCmd),
    Rollback(cycle::RollbackCmd),
    MarkGood(cycle::MarkGoodCmd),
    MarkBad(cycle::MarkBadCmd),
    Unblock(cycle::UnblockCmd),
    Check(agent::CheckCmd),
    Agent(agent::AgentCmd),
    Firstboot(firstboot::FirstbootCmd),
    Fleet(fleet::FleetCmd),
    Netboot(netboot::NetbootCmd),
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Install(c) => c.run(&cli.global).map(|()| ExitCode::SUCCESS),
        Command::Health(c) => c.run(&cli.global),
        Command::Status(c) => c.run(&cli.global),
        Command::Rollback(c) => c.run(&cli.global),
        Command::MarkGood(c) => c.run(&cli.global),
        Command::MarkBad(c) => c.run(&cli.global),
        Command::Unblock(c) => c.run(&cli.global),
        Command::Check(c) => c.run(&cli.global),
        Command::Agent(c) => c.run(&cli.global),
        Command::Firstboot(c) => c.run(&cli.global),
        Command::Fleet(c) => c.run(&cli.global),
        Command::Netboot(c) => c.run(&cli.global),
    }
}

/// Log lines on stderr, one per line, which journald and a serial console both keep.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "updater: {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    let _ = log::set_logger(&StderrLog).map(|()| log::set_max_level(log::LevelFilter::Info));
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("updater: {e:#}");
            ExitCode::from(1)
        }
    }
}
