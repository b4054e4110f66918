//! `updater`: the device binary. Parsing and dispatch only; the work is in the library.
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use updater::cli::{install, GlobalArgs};

/// A/B /usr updater: install signed images into the passive slot.
///
/// Exit status: 0 on success, 1 when the operation failed (the one-line message says why),
/// 2 on a usage error.
#[derive(Parser)]
#[command(name = "updater", version, help_expected = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Install(install::InstallCmd),
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Install(c) => c.run(&cli.global),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("updater: {e:#}");
            ExitCode::from(1)
        }
    }
}
