//! Disk images for the scenarios: assembling them, writing a /usr image into a slot, and
//! reading or setting slot attributes through `bootctl`.
//!
//! [`bootable`] assembles a disk with `image-tools disk`'s library and the GRUB of
//! [`crate::grub::artifacts`]. [`dev_disk`] lays out a minimal GPT with `sgdisk` and `mkfs.ext4 -E offset=` for
//! booting the test OS straight from QEMU's `-kernel`, which exercises the initramfs without
//! GRUB. Slot helpers go through `bootctl`'s library so the harness reads and writes attributes
//! exactly as the device does.
//!
//! ```no_run
//! use bootctl::{SlotAttrs, SlotId};
//! use qemu_tests::disk;
//! disk::write_usr(&"disk.img".as_ref(), &SlotId::B, &"usr-v2.img".as_ref())?;
//! disk::set_attrs(&"disk.img".as_ref(), &SlotId::B, SlotAttrs { priority: 2, tries: 1, successful: false })?;
//! # Ok::<(), qemu_tests::Error>(())
//! ```
use crate::error::{Error, IoContext, Result};
use bootctl::{gpt, SlotAttrs, SlotDisk, SlotId};
use image_tools::disk::{DiskReport, DiskSpec, GrubFiles};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

/// Size of each USR partition in the scenarios' disks (the test OS /usr is about 20 MiB).
pub const USR_SIZE: u64 = 64 << 20;
/// Size of ROOT in the scenarios' disks.
pub const ROOT_SIZE: u64 = 64 << 20;

/// The `image-tools disk` spec for a disk at `out` with `usr` in USR-A, GRUB from
/// [`crate::grub::artifacts`] (built on first use), [`USR_SIZE`], [`ROOT_SIZE`], 512-byte
/// sectors; adjust and pass to [`assemble`].
pub fn spec(usr: &Path, out: &Path) -> Result<DiskSpec> {
    let grub = crate::grub::artifacts().map_err(|e| Error::Invalid(format!("{e}")))?;
    let files = GrubFiles::from_dir(&grub.dir).map_err(|e| {
        Error::Invalid(format!("finding GRUB files in {}: {e}", grub.dir.display()))
    })?;
    let mut spec = DiskSpec::new(usr.to_owned(), out.to_owned(), files);
    spec.usr_size = USR_SIZE;
    spec.root_size = ROOT_SIZE;
    Ok(spec)
}

/// Assembles a bootable disk (`image-tools disk`'s library).
pub fn assemble(spec: &DiskSpec) -> Result<DiskReport> {
    image_tools::disk::assemble(spec)
        .map_err(|e| Error::Invalid(format!("assembling disk {}: {e}", spec.output.display())))
}

/// A bootable disk at `out` with `usr` in USR-A and `sector_size`-byte sectors.
pub fn bootable(usr: &Path, out: &Path, sector_size: u32) -> Result<DiskReport> {
    let mut s = spec(usr, out)?;
    s.sector_size = sector_size;
    assemble(&s)
}

/// The byte range (offset, length) of the partition labelled `label`.
pub fn partition_range(report: &DiskReport, label: &str) -> Result<(u64, u64)> {
    report
        .partitions
        .iter()
        .find(|p| p.1 == label)
        .map(|p| (p.3, p.4))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{} has no partition {label}",
                report.path.display()
            ))
        })
}

/// SHA-256 of the disk's bytes outside `skip` (offset, length) ranges, e.g. outside ROOT,
/// which the booted OS mounts read-write.
pub fn hash_outside(disk: &Path, skip: &[(u64, u64)]) -> Result<[u8; 32]> {
    let mut f = fs::File::open(disk).ctx("opening", disk)?;
    let len = f.metadata().ctx("reading size of", disk)?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        if let Some(&(off, n)) = skip.iter().find(|&&(off, n)| pos >= off && pos < off + n) {
            pos = off + n;
            continue;
        }
        let next_skip = skip
            .iter()
            .map(|&(off, _)| off)
            .filter(|&off| off > pos)
            .min()
            .unwrap_or(len);
        let want = (next_skip.min(len) - pos).min(buf.len() as u64) as usize;
        f.seek(SeekFrom::Start(pos)).ctx("seeking in", disk)?;
        f.read_exact(&mut buf[..want])
            .ctx(&format!("reading at offset {pos} of"), disk)?;
        hasher.update(&buf[..want]);
        pos += want as u64;
    }
    Ok(hasher.finalize().into())
}

/// Overwrites the primary GPT header (LBA 1) with zeros.
pub fn zero_primary_header(disk: &Path, sector_size: u32) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .ctx("opening", disk)?;
    f.write_all_at(&vec![0u8; sector_size as usize], u64::from(sector_size))
        .ctx("zeroing the primary GPT header of", disk)?;
    f.sync_all().ctx("syncing", disk)
}

/// Overwrites the backup GPT header (the last LBA) with zeros.
pub fn zero_backup_header(disk: &Path, sector_size: u32) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .ctx("opening", disk)?;
    let len = f.metadata().ctx("reading the size of", disk)?.len();
    let last = (len / u64::from(sector_size) - 1) * u64::from(sector_size);
    f.write_all_at(&vec![0u8; sector_size as usize], last)
        .ctx("zeroing the backup GPT header of", disk)?;
    f.sync_all().ctx("syncing", disk)
}

/// Runs `sgdisk -v` on a 512-byte-sector image; fails with its report unless it found no
/// problems.
pub fn sgdisk_verify(disk: &Path) -> Result<()> {
    let mut cmd = Command::new("sgdisk");
    cmd.arg("-v").arg(disk);
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Command {
        command: shown.clone(),
        detail: format!("starting it: {e}"),
    })?;
    let report = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !report.contains("No problems found") {
        return Err(Error::Command {
            command: shown,
            detail: format!(
                "{}: {}{}",
                out.status,
                report.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

fn bootctl_err(action: &str, path: &Path) -> impl FnOnce(bootctl::Error) -> Error {
    let action = action.to_string();
    let path = path.to_owned();
    move |source| Error::Bootctl {
        action,
        path,
        source,
    }
}

/// Opens the disk image's GPT (sector size detected).
pub fn open(disk: &Path, writable: bool) -> Result<SlotDisk> {
    SlotDisk::open(disk, writable, None).map_err(bootctl_err("reading the GPT of", disk))
}

/// The slot `id` as bootctl reads it.
pub fn slot(disk: &Path, id: &SlotId) -> Result<bootctl::Slot> {
    open(disk, false)?
        .slot(id)
        .map_err(bootctl_err(&format!("finding slot {id} on"), disk))
}

/// Writes the /usr image `usr` at the start of slot `id`'s partition.
pub fn write_usr(disk: &Path, id: &SlotId, usr: &Path) -> Result<()> {
    let s = slot(disk, id)?;
    let image = fs::read(usr).ctx("reading", usr)?;
    if image.len() as u64 > s.byte_len() {
        return Err(Error::Invalid(format!(
            "{} ({} bytes) does not fit slot {id} ({} bytes) of {}",
            usr.display(),
            image.len(),
            s.byte_len(),
            disk.display()
        )));
    }
    let f = fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .ctx("opening", disk)?;
    f.write_all_at(&image, s.byte_offset()).ctx(
        &format!("writing slot {id} at offset {} of", s.byte_offset()),
        disk,
    )?;
    f.sync_all().ctx("syncing", disk)
}

/// Sets slot `id`'s priority, tries and successful bits, other bits kept, both GPT copies
/// written backup first.
pub fn set_attrs(disk: &Path, id: &SlotId, attrs: SlotAttrs) -> Result<()> {
    let d = open(disk, true)?;
    let s = d
        .slot(id)
        .map_err(bootctl_err(&format!("finding slot {id} on"), disk))?;
    let mut table = d.gpt().clone();
    table.set_attributes(s.number, attrs.apply(s.attributes));
    let mut storage = d.into_storage();
    gpt::write(&mut storage, &table).map_err(bootctl_err("writing the GPT of", disk))
}

/// Lays out a 512-byte-sector disk without a bootloader for `-kernel` boots: USR-A (holding
/// `usr`) and USR-B of `usr_mib`, and an empty ext4 ROOT of 64 MiB. Returns USR-A's PARTUUID.
pub fn dev_disk(out: &Path, usr: &Path, usr_mib: u64) -> Result<String> {
    let root_mib = 64;
    let total_mib = 1 + 2 * usr_mib + root_mib + 1;
    let f = fs::File::create(out).ctx("creating", out)?;
    f.set_len(total_mib << 20).ctx("sizing", out)?;
    drop(f);
    let usr_type = "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6";
    let root_start = 2048 + 2 * usr_mib * 2048;
    let mut sgdisk = Command::new("sgdisk");
    sgdisk
        .arg("-o")
        .arg(format!("-n3:2048:+{usr_mib}M"))
        .arg(format!("-t3:{usr_type}"))
        .arg("-c3:USR-A")
        .arg(format!("-n4:0:+{usr_mib}M"))
        .arg(format!("-t4:{usr_type}"))
        .arg("-c4:USR-B")
        .arg(format!("-n9:{root_start}:+{root_mib}M"))
        .arg("-c9:ROOT")
        .arg(out);
    run(&mut sgdisk)?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "ROOT", "-E"])
        .arg(format!("offset={}", root_start * 512))
        .arg(out)
        .arg(format!("{}M", root_mib)))?;
    write_usr(out, &SlotId::A, usr)?;
    Ok(slot(out, &SlotId::A)?
        .partuuid
        .to_string()
        .to_ascii_lowercase())
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Command {
        command: shown.clone(),
        detail: format!("starting it: {e}"),
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: shown,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}
