//! Command-line layer: global options, finding the device, and one module per command family
//! (`install`, `cycle`). Parsing and printing only; the work is in the library modules.
//!
//! Without `--disk`, the disk and the booted slot come from the kernel command line's
//! `mount.usr=PARTUUID=…` (the partition GRUB booted); see [`crate::device`] for the rules.

pub mod agent;
pub mod cycle;
pub mod firstboot;
pub mod fleet;
pub mod install;
pub mod netboot;
pub mod progress;

use crate::device::DeviceSpec;
use bootctl::SlotId;
use clap::Args;
use std::path::PathBuf;

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Work on this disk or disk-image file instead of the booted disk.
    #[arg(long, global = true, value_name = "FILE")]
    pub disk: Option<PathBuf>,
    /// The booted slot (default: from mount.usr=PARTUUID= on the kernel command line).
    #[arg(long, global = true, value_name = "A|B")]
    pub booted: Option<SlotId>,
    /// The device's root directory: keys, os-release and state are found under it.
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Print progress and the result as JSON lines on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for another updater holding the lock before giving up.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30)]
    pub lock_wait: u64,
}

impl GlobalArgs {
    /// Resolves the disk, the booted slot and the root ([`DeviceSpec::resolve`] with
    /// `/proc/cmdline`).
    pub fn device(&self) -> anyhow::Result<DeviceSpec> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        DeviceSpec::resolve(
            self.disk.clone(),
            self.booted.clone(),
            self.root.clone(),
            &cmdline,
        )
    }

    /// How long to wait for another updater's lock.
    pub fn lock_wait(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lock_wait)
    }
}
