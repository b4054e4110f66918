//! `updater firstboot`: argument types and output; the work is in [`crate::firstboot`].
use super::GlobalArgs;
use crate::firstboot::{self, FirstbootOptions, FirstbootOutcome, FsMethod, OemOutcome};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Shown after `updater firstboot --help`.
const FIRSTBOOT_EXAMPLES: &str = "Examples:
  updater firstboot                  # at boot, from the image's init or unit
  updater firstboot --json
  updater --disk disk.img --root /mnt firstboot --oem-dir oem/";

/// Grow ROOT to fill the disk and apply the OEM data; run once per boot by the image's init.
///
/// Moves the backup GPT to the end of the disk, grows the ROOT partition to the end (the
/// /usr slots are never touched), grows ROOT's ext4 (online when mounted), copies the OEM
/// partition's etc/ and var/ into ROOT, then writes /var/lib/updater/firstboot.json. Safe to
/// cut at any point: the next run finishes the job. Once done, a run returns at once.
///
/// Exit status: 0 when the job is done (now or before), 1 when refused or failed.
#[derive(Args, Debug)]
#[command(after_long_help = FIRSTBOOT_EXAMPLES)]
pub struct FirstbootCmd {
    /// Apply the OEM data from this directory instead of the OEM partition's filesystem.
    #[arg(long, value_name = "DIR")]
    pub oem_dir: Option<PathBuf>,
}

impl FirstbootCmd {
    /// Runs the command.
    pub fn run(&self, d: &GlobalArgs) -> anyhow::Result<std::process::ExitCode> {
        let disk = match &d.disk {
            Some(disk) => disk.clone(),
            None => d.device()?.disk,
        };
        let opts = FirstbootOptions {
            disk: disk.clone(),
            root: d.root.clone(),
            oem_dir: self.oem_dir.clone(),
            lock_wait: d.lock_wait(),
        };
        let outcome =
            firstboot::run(&opts).with_context(|| format!("growing ROOT on {}", disk.display()))?;
        if d.json {
            println!("{}", serde_json::to_string(&outcome)?);
            return Ok(std::process::ExitCode::SUCCESS);
        }
        match &outcome {
            FirstbootOutcome::AlreadyDone { marker, .. } => {
                println!("first boot already done ({})", marker.display())
            }
            FirstbootOutcome::Done(r) => {
                println!(
                    "ROOT (partition {}) is {} bytes (was {}); backup GPT at LBA {}",
                    r.table.root_number,
                    r.table.root_bytes_after,
                    r.table.root_bytes_before,
                    r.table.backup_lba_after
                );
                println!(
                    "filesystem: {}",
                    match r.filesystem.method {
                        Some(FsMethod::Online) => "grown online",
                        Some(FsMethod::Offline) => "grown offline",
                        None => "already full size",
                    }
                );
                match &r.oem {
                    OemOutcome::NoPartition => println!("OEM data: none (no OEM partition)"),
                    OemOutcome::Empty => println!("OEM data: none (empty OEM partition)"),
                    OemOutcome::Copied { from, copied } => println!(
                        "OEM data: {} files, {} links, {} bytes from {}",
                        copied.files,
                        copied.links,
                        copied.bytes,
                        from.display()
                    ),
                }
            }
        }
        Ok(std::process::ExitCode::SUCCESS)
    }
}
