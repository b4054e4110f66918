//! Command-line layer: global options, finding the device, and one module per command family
//! (`install`, `cycle`). Parsing and printing only; the work is in the library modules.
//!
//! Without `--disk`, the disk and the booted slot come from the kernel command line's
//! `mount.usr=PARTUUID=…` (the partition GRUB booted) through `/dev/disk/by-partuuid` and sysfs.

pub mod cycle;
pub mod install;
pub mod progress;

use crate::install::DeviceSpec;
use anyhow::{bail, Context};
use bootctl::{SlotDisk, SlotId};
use clap::Args;
use std::path::{Path, PathBuf};

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
}

/// The PARTUUID in `mount.usr=PARTUUID=…` of a kernel command line, lower-cased.
pub fn booted_partuuid(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mount.usr=PARTUUID="))
        .map(|u| u.to_ascii_lowercase())
}

/// The whole disk holding the partition with this PARTUUID.
fn disk_of_partuuid(partuuid: &str) -> anyhow::Result<PathBuf> {
    let link = Path::new("/dev/disk/by-partuuid").join(partuuid);
    let part =
        std::fs::canonicalize(&link).with_context(|| format!("resolving {}", link.display()))?;
    let name = part
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("naming {}", part.display()))?;
    let sys = Path::new("/sys/class/block").join(name);
    let sys =
        std::fs::canonicalize(&sys).with_context(|| format!("resolving {}", sys.display()))?;
    let parent = sys
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .with_context(|| format!("finding the disk of {}", sys.display()))?;
    Ok(Path::new("/dev").join(parent))
}

impl GlobalArgs {
    /// Resolves the disk, the booted slot and the root.
    pub fn device(&self) -> anyhow::Result<DeviceSpec> {
        let cmdline = || {
            std::fs::read_to_string("/proc/cmdline")
                .ok()
                .and_then(|c| booted_partuuid(&c))
        };
        let disk = match &self.disk {
            Some(d) => d.clone(),
            None => {
                let Some(uuid) = cmdline() else {
                    bail!("no mount.usr=PARTUUID= on the kernel command line; pass --disk FILE and --booted A|B");
                };
                disk_of_partuuid(&uuid)?
            }
        };
        let booted = match &self.booted {
            Some(b) => b.clone(),
            None => {
                let uuid = cmdline().context(
                    "finding the booted slot: no mount.usr=PARTUUID= on the kernel command line; pass --booted A|B",
                )?;
                let slots = SlotDisk::open(&disk, false, None)
                    .with_context(|| format!("reading slots of {}", disk.display()))?;
                let number = slots
                    .slots()
                    .into_iter()
                    .find(|s| s.partuuid.to_string().eq_ignore_ascii_case(&uuid))
                    .with_context(|| {
                        format!("finding the booted slot: PARTUUID {uuid} is not a slot of {}; pass --booted A|B", disk.display())
                    })?
                    .number;
                SlotId::Number(number)
            }
        };
        Ok(DeviceSpec {
            disk,
            booted,
            root: self.root.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_usr_partuuid_on_a_kernel_command_line() {
        let c =
            "BOOT_IMAGE=/boot/vmlinuz mount.usr=PARTUUID=7130C94A-213A-4E5A-8E26-6CCE9662F132 rw";
        assert_eq!(
            booted_partuuid(c).as_deref(),
            Some("7130c94a-213a-4e5a-8e26-6cce9662f132")
        );
        assert_eq!(booted_partuuid("root=/dev/sda9 ro"), None);
    }
}
