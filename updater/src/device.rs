//! The device's facts, found once and kept in one place: which disk and which slot are
//! booted, every path under the device's root, and the booted image's os-release.
//!
//! It owns the rules that keep the updater from misidentifying the slot it runs from
//! (issue 14, defect 8):
//!
//! - the kernel command line's `mount.usr=` is read like the initramfs reads it: the **last**
//!   occurrence wins, and when several occurrences disagree the updater refuses to guess
//!   ([`usr_partuuid`]);
//! - the disk holding that PARTUUID is found by reading the GPT of every whole disk in sysfs,
//!   not through a udev link, and a PARTUUID found on more than one disk or twice on one disk
//!   is refused as ambiguous ([`disk_of_partuuid`], [`check_unique_partuuids`]);
//! - a `--booted` slot given on a disk that holds the command line's PARTUUID must be that
//!   slot ([`DeviceSpec::resolve`]);
//! - a target partition that is the block device mounted on `/usr` is refused
//!   ([`DeviceSpec::refuse_mounted_usr`]).
//!
//! It refuses nothing else: whether a slot may be written is [`crate::bootstate`]'s business.
//!
//! ```
//! use updater::device::usr_partuuid;
//! let c = "mount.usr=PARTUUID=aaaaaaaa-0000-0000-0000-000000000001 ro \
//!          mount.usr=PARTUUID=AAAAAAAA-0000-0000-0000-000000000001";
//! assert_eq!(usr_partuuid(c).unwrap().as_deref(), Some("aaaaaaaa-0000-0000-0000-000000000001"));
//! ```
use crate::osrelease::{OsRelease, MAX_OS_RELEASE_LEN};
use crate::state::StateDir;
use bootctl::{Slot, SlotDisk, SlotId};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where sysfs lists block devices.
const SYS_CLASS_BLOCK: &str = "/sys/class/block";
/// Most whole disks examined when looking for a PARTUUID.
const MAX_DISKS_SCANNED: usize = 256;

/// Why the device's facts could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// Several `mount.usr=` on the command line name different partitions.
    #[error("the kernel command line has conflicting mount.usr= values ({first} and {last}): refusing to guess the booted slot")]
    ConflictingMountUsr {
        /// One value.
        first: String,
        /// The last value (the one the initramfs uses).
        last: String,
    },
    /// The last `mount.usr=` is not of the `PARTUUID=` form.
    #[error("mount.usr={value} on the kernel command line: only mount.usr=PARTUUID=<uuid> is understood; pass --disk and --booted")]
    UnsupportedMountUsr {
        /// The value.
        value: String,
    },
    /// No disk holds the PARTUUID.
    #[error(
        "no disk holds the booted partition PARTUUID {partuuid}; pass --disk FILE and --booted A|B"
    )]
    PartuuidNotFound {
        /// The PARTUUID.
        partuuid: String,
    },
    /// The PARTUUID is on more than one disk, or twice on one.
    #[error(
        "PARTUUID {partuuid} is ambiguous: it is on {places}; refusing to guess which is booted"
    )]
    AmbiguousPartuuid {
        /// The PARTUUID.
        partuuid: String,
        /// Where it was found.
        places: String,
    },
    /// `--booted` names another slot than the command line.
    #[error("--booted {given} disagrees with the kernel command line, which booted partition {booted} (PARTUUID {partuuid}) of {disk}")]
    BootedMismatch {
        /// The slot given.
        given: String,
        /// The partition booted per the command line.
        booted: u32,
        /// Its PARTUUID.
        partuuid: String,
        /// The disk.
        disk: PathBuf,
    },
    /// The target partition is the block device mounted on `/usr`.
    #[error("refusing to write partition {number} of {disk}: it is the device mounted on {usr}")]
    TargetMountedOnUsr {
        /// Partition number.
        number: u32,
        /// The disk.
        disk: PathBuf,
        /// The mount point.
        usr: PathBuf,
    },
    /// The booted os-release cannot be read or lacks a field.
    #[error("reading {field} from the booted os-release {path}: {reason}")]
    BootedRelease {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The disk's GPT cannot be used.
    #[error("reading the slots of {path}")]
    Disk {
        /// The disk.
        path: PathBuf,
        /// The cause.
        #[source]
        source: bootctl::Error,
    },
    /// A file or directory the device's facts come from could not be read.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The device an operation works on: its disk, the booted slot, and its root directory.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// The disk (block device or disk-image file) holding both slots.
    pub disk: PathBuf,
    /// The booted slot (never written).
    pub booted: SlotId,
    /// The device's `/`: keys, the booted os-release, config and state live under it.
    pub root: PathBuf,
}

/// `IMAGE_ID` and `IMAGE_VERSION` of the booted image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootedRelease {
    /// `IMAGE_ID`: the compatible string payloads must carry.
    pub image_id: String,
    /// `IMAGE_VERSION`.
    pub version: String,
}

impl DeviceSpec {
    /// The booted image's os-release: `ROOT/usr/lib/os-release`.
    pub fn os_release(&self) -> PathBuf {
        self.root.join("usr/lib/os-release")
    }

    /// The state directory, `ROOT/var/lib/updater`.
    pub fn state(&self) -> StateDir {
        StateDir::under_root(&self.root)
    }

    /// The lock every writer holds: `ROOT/var/lib/updater/lock` ([`crate::lock`]).
    pub fn lock_path(&self) -> PathBuf {
        self.state().path(crate::lock::LOCK_FILE)
    }

    /// The marker written when a reboot is needed but not done: `ROOT/run/reboot-required`.
    pub fn reboot_marker(&self) -> PathBuf {
        self.root.join("run/reboot-required")
    }

    /// Whether this is the running machine (root `/`), not an image or a test prefix.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Reads `IMAGE_ID` and `IMAGE_VERSION` of the booted image, bounded in size.
    pub fn booted_release(&self) -> Result<BootedRelease, DeviceError> {
        let path = self.os_release();
        let err = |field, reason: String| DeviceError::BootedRelease {
            path: path.clone(),
            field,
            reason,
        };
        let text =
            read_bounded(&path, MAX_OS_RELEASE_LEN).map_err(|e| err("IMAGE_ID", e.to_string()))?;
        let r = OsRelease::parse(&text);
        let field = |name: &'static str| {
            r.get(name)
                .map(str::to_owned)
                .ok_or_else(|| err(name, "not set".into()))
        };
        Ok(BootedRelease {
            image_id: field("IMAGE_ID")?,
            version: field("IMAGE_VERSION")?,
        })
    }

    /// `IMAGE_VERSION` of the booted image, or `unknown` (for reports, never for decisions).
    pub fn booted_version_or_unknown(&self) -> String {
        self.booted_release()
            .map_or_else(|_| "unknown".into(), |r| r.version)
    }

    /// Resolves the disk and the booted slot from what was given and the kernel command line
    /// `cmdline` (see the module doc): `disk` and `booted` are `--disk` and `--booted`.
    pub fn resolve(
        disk: Option<PathBuf>,
        booted: Option<SlotId>,
        root: PathBuf,
        cmdline: &str,
    ) -> anyhow::Result<DeviceSpec> {
        use anyhow::Context;
        let partuuid = usr_partuuid(cmdline)?;
        let disk = match disk {
            Some(d) => d,
            None => {
                let Some(uuid) = &partuuid else {
                    anyhow::bail!("no mount.usr=PARTUUID= on the kernel command line; pass --disk FILE and --booted A|B");
                };
                disk_of_partuuid(uuid)?
            }
        };
        let slots = SlotDisk::open(&disk, false, None)
            .with_context(|| format!("reading the slots of {}", disk.display()))?;
        check_unique_partuuids(&slots, &disk)?;
        // The partition the command line booted, if it is on this disk.
        let booted_by_cmdline = partuuid.as_ref().and_then(|uuid| {
            slots
                .slots()
                .into_iter()
                .find(|s| s.partuuid.to_string().eq_ignore_ascii_case(uuid))
        });
        let booted = match (booted, booted_by_cmdline) {
            (Some(given), Some(by_cmdline)) => {
                let given_slot = slots
                    .slot(&given)
                    .with_context(|| format!("finding slot {given} on {}", disk.display()))?;
                if given_slot.number != by_cmdline.number {
                    return Err(DeviceError::BootedMismatch {
                        given: given.to_string(),
                        booted: by_cmdline.number,
                        partuuid: by_cmdline.partuuid.to_string(),
                        disk,
                    }
                    .into());
                }
                given
            }
            (Some(given), None) => given,
            (None, Some(by_cmdline)) => SlotId::Number(by_cmdline.number),
            (None, None) => match &partuuid {
                Some(uuid) => anyhow::bail!(
                    "finding the booted slot: PARTUUID {uuid} is not a slot of {}; pass --booted A|B",
                    disk.display()
                ),
                None => anyhow::bail!(
                    "finding the booted slot: no mount.usr=PARTUUID= on the kernel command line; pass --booted A|B"
                ),
            },
        };
        Ok(DeviceSpec { disk, booted, root })
    }

    /// Refuses `target` when it is the block device mounted on `ROOT/usr` (whatever the slot
    /// bits and `--booted` say). Disk-image files have no partition devices: nothing to check.
    pub fn refuse_mounted_usr(&self, target: &Slot) -> Result<(), DeviceError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let usr = self.root.join("usr");
        let Ok(disk_meta) = std::fs::metadata(&self.disk) else {
            return Ok(());
        };
        if !disk_meta.file_type().is_block_device() {
            return Ok(());
        }
        let Ok(usr_meta) = std::fs::metadata(&usr) else {
            return Ok(());
        };
        let usr_dev = usr_meta.dev();
        if partition_dev(&self.disk, target.number)? == Some(usr_dev) {
            return Err(DeviceError::TargetMountedOnUsr {
                number: target.number,
                disk: self.disk.clone(),
                usr,
            });
        }
        Ok(())
    }
}

/// Reads a small text file, refusing one longer than `max` bytes.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut text = String::new();
    f.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(text)
}

/// The PARTUUID of the kernel command line's `mount.usr=PARTUUID=…`, lower-cased: the last
/// occurrence, as the initramfs uses it; `None` without one. Refuses occurrences that name
/// different partitions, and a last occurrence that is not a PARTUUID.
pub fn usr_partuuid(cmdline: &str) -> Result<Option<String>, DeviceError> {
    let values: Vec<&str> = cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .filter_map(|w| w.strip_prefix("mount.usr="))
        .collect();
    let Some(last) = values.last() else {
        return Ok(None);
    };
    let norm = |v: &str| v.to_ascii_lowercase();
    if let Some(other) = values.iter().find(|v| norm(v) != norm(last)) {
        return Err(DeviceError::ConflictingMountUsr {
            first: (*other).to_string(),
            last: (*last).to_string(),
        });
    }
    let lower = norm(last);
    match lower.strip_prefix("partuuid=") {
        Some(uuid) if !uuid.is_empty() => Ok(Some(uuid.to_string())),
        _ => Err(DeviceError::UnsupportedMountUsr {
            value: (*last).to_string(),
        }),
    }
}

/// Refuses a disk on which two used entries share a PARTUUID: the kernel and udev would
/// resolve it to either.
pub fn check_unique_partuuids<S: bootctl::storage::Storage>(
    disk: &SlotDisk<S>,
    path: &Path,
) -> Result<(), DeviceError> {
    let entries = disk.gpt().used_entries();
    for (i, (n, e)) in entries.iter().enumerate() {
        if let Some((m, _)) = entries[i + 1..]
            .iter()
            .find(|(_, o)| o.unique_guid == e.unique_guid)
        {
            return Err(DeviceError::AmbiguousPartuuid {
                partuuid: e.unique_guid.to_string(),
                places: format!("partitions {n} and {m} of {}", path.display()),
            });
        }
    }
    Ok(())
}

/// The whole disk holding the partition `partuuid`, found by reading the GPT of every whole
/// disk sysfs lists (not through udev's by-partuuid link, which names whichever disk udev saw
/// last). Refuses a PARTUUID found on several disks.
pub fn disk_of_partuuid(partuuid: &str) -> Result<PathBuf, DeviceError> {
    let sys = Path::new(SYS_CLASS_BLOCK);
    let entries = std::fs::read_dir(sys).map_err(|source| DeviceError::Io {
        action: "listing",
        path: sys.to_owned(),
        source,
    })?;
    let mut found = Vec::new();
    for e in entries.flatten().take(MAX_DISKS_SCANNED) {
        let p = e.path();
        // Partitions have a `partition` file; whole disks do not.
        if p.join("partition").exists() {
            continue;
        }
        let dev = Path::new("/dev").join(e.file_name());
        let Ok(disk) = SlotDisk::open(&dev, false, None) else {
            continue;
        };
        for (n, entry) in disk.gpt().used_entries() {
            if entry.unique_guid.to_string().eq_ignore_ascii_case(partuuid) {
                found.push((dev.clone(), n));
            }
        }
    }
    match found.as_slice() {
        [] => Err(DeviceError::PartuuidNotFound {
            partuuid: partuuid.into(),
        }),
        [(dev, _)] => Ok(dev.clone()),
        many => Err(DeviceError::AmbiguousPartuuid {
            partuuid: partuuid.into(),
            places: many
                .iter()
                .map(|(d, n)| format!("partition {n} of {}", d.display()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The device number (`st_rdev` form) of partition `number` of the block device `disk`, from
/// sysfs; `None` when sysfs does not list it.
fn partition_dev(disk: &Path, number: u32) -> Result<Option<u64>, DeviceError> {
    let Some(name) = std::fs::canonicalize(disk)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    else {
        return Ok(None);
    };
    let dir = Path::new(SYS_CLASS_BLOCK).join(&name);
    let Ok(children) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    for c in children.flatten() {
        let p = c.path();
        let Ok(part) = std::fs::read_to_string(p.join("partition")) else {
            continue;
        };
        if part.trim().parse::<u32>().ok() != Some(number) {
            continue;
        }
        let dev = std::fs::read_to_string(p.join("dev")).map_err(|source| DeviceError::Io {
            action: "reading",
            path: p.join("dev"),
            source,
        })?;
        let Some((major, minor)) = dev.trim().split_once(':') else {
            return Ok(None);
        };
        let (Ok(major), Ok(minor)) = (major.parse::<u64>(), minor.parse::<u64>()) else {
            return Ok(None);
        };
        return Ok(Some(nix::sys::stat::makedev(major, minor)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "7130c94a-213a-4e5a-8e26-6cce9662f132";
    const U2: &str = "0000c94a-213a-4e5a-8e26-6cce9662f132";

    #[test]
    fn the_last_mount_usr_wins_and_is_lower_cased() {
        let c = format!(
            "BOOT_IMAGE=/boot/vmlinuz mount.usr=PARTUUID={} rw mount.usr=PARTUUID={U1}",
            U1.to_uppercase()
        );
        assert_eq!(usr_partuuid(&c).unwrap().as_deref(), Some(U1));
    }

    #[test]
    fn conflicting_mount_usr_values_are_refused() {
        let c = format!("mount.usr=PARTUUID={U1} mount.usr=PARTUUID={U2}");
        assert_eq!(
            usr_partuuid(&c).unwrap_err().to_string(),
            format!("the kernel command line has conflicting mount.usr= values (PARTUUID={U1} and PARTUUID={U2}): refusing to guess the booted slot")
        );
    }

    #[test]
    fn no_mount_usr_is_none_and_words_after_a_double_dash_are_not_the_kernels() {
        assert_eq!(usr_partuuid("root=/dev/sda9 ro").unwrap(), None);
        let c = format!("mount.usr=PARTUUID={U1} -- mount.usr=PARTUUID={U2}");
        assert_eq!(usr_partuuid(&c).unwrap().as_deref(), Some(U1));
    }

    #[test]
    fn a_mount_usr_that_is_not_a_partuuid_is_refused() {
        let e = usr_partuuid("mount.usr=/dev/vda3").unwrap_err();
        assert!(matches!(e, DeviceError::UnsupportedMountUsr { .. }), "{e}");
    }

    #[test]
    fn an_empty_partuuid_is_refused() {
        let e = usr_partuuid("mount.usr=PARTUUID=").unwrap_err();
        assert!(matches!(e, DeviceError::UnsupportedMountUsr { .. }), "{e}");
    }

    #[test]
    fn two_entries_with_one_partuuid_are_refused_and_distinct_ones_pass() {
        let mut disk = SlotDisk::from_storage(bootctl::layout::mem_disk(512), None).unwrap();
        check_unique_partuuids(&disk, Path::new("mem")).unwrap();
        let a = disk.slot(&SlotId::A).unwrap();
        let b = disk.slot(&SlotId::B).unwrap();
        let mut gpt = disk.gpt().clone();
        let mut e = gpt.entry(b.number);
        e.unique_guid = a.partuuid;
        gpt.set_entry(b.number, &e);
        bootctl::gpt::write(disk.storage_mut(), &gpt).unwrap();
        let disk = SlotDisk::from_storage(disk.into_storage(), None).unwrap();
        let err = check_unique_partuuids(&disk, Path::new("mem")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "PARTUUID {} is ambiguous: it is on partitions {} and {} of mem; refusing to guess which is booted",
                a.partuuid, a.number, b.number
            )
        );
    }

    #[test]
    fn read_bounded_takes_a_file_of_exactly_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "x".repeat(16)).unwrap();
        assert_eq!(read_bounded(&p, 16).unwrap().len(), 16);
        assert!(read_bounded(&p, 15).is_err());
    }

    #[test]
    fn booted_release_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let dev = DeviceSpec {
            disk: dir.path().join("disk"),
            booted: SlotId::A,
            root: dir.path().to_owned(),
        };
        std::fs::create_dir_all(dir.path().join("usr/lib")).unwrap();
        std::fs::write(dev.os_release(), "IMAGE_ID=x\nIMAGE_VERSION=1\n").unwrap();
        assert_eq!(
            dev.booted_release().unwrap(),
            BootedRelease {
                image_id: "x".into(),
                version: "1".into()
            }
        );
        let big = format!(
            "IMAGE_ID=x\nIMAGE_VERSION=1\n#{}\n",
            "x".repeat(MAX_OS_RELEASE_LEN as usize)
        );
        std::fs::write(dev.os_release(), big).unwrap();
        let e = dev.booted_release().unwrap_err().to_string();
        assert!(e.contains("longer than 65536 bytes"), "{e}");
    }
}
