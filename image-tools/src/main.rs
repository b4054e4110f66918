//! `image-tools`: the publisher and factory binary. Parsing only; the work is in the library.
use clap::{Parser, Subcommand};
use image_tools::{disk, flash, keys, mkusr, pack, patch, publish, pxe};
use std::process::ExitCode;

/// Publisher and factory tools for A/B /usr updates.
///
/// Exit status: 0 on success, 1 when the operation failed (the message says why),
/// 2 on a usage error, 3 when `flash` left some devices not flashed.
#[derive(Parser)]
#[command(name = "image-tools", version, help_expected = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Keygen(keys::KeygenCmd),
    Pack(pack::PackCmd),
    Verify(pack::VerifyCmd),
    Inspect(pack::InspectCmd),
    Mkusr(mkusr::MkusrCmd),
    Disk(disk::DiskCmd),
    Flash(flash::FlashCmd),
    Publish(publish::PublishCmd),
    Pxe(pxe::PxeCmd),
    Patch(patch::PatchCmd),
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen(c) => c.run(),
        Command::Pack(c) => c.run(),
        Command::Verify(c) => c.run(),
        Command::Inspect(c) => c.run(),
        Command::Mkusr(c) => c.run(),
        Command::Disk(c) => c.run(),
        Command::Flash(c) => c.run(),
        Command::Publish(c) => c.run(),
        Command::Pxe(c) => c.run(),
        Command::Patch(c) => c.run(),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("image-tools: {e:#}");
            // flash: some devices not flashed (their records say why).
            if e.downcast_ref::<flash::DevicesFailed>().is_some() {
                return ExitCode::from(3);
            }
            ExitCode::from(1)
        }
    }
}
