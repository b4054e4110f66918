//! Boot scenarios under OVMF and SeaBIOS: real firmware, our GRUB with gptprio, the test OS.
//!
//! Each scenario assembles a fresh disk with `image-tools disk` (v1 in USR-A), arranges the
//! slots with `bootctl`'s library, boots, reads which USR partition and version the test OS
//! came up on from its boot marker, powers off cleanly and checks what GRUB left on the disk.
//! Scenarios marked "both firmwares" run once per firmware as `<scenario>::uefi` and
//! `<scenario>::bios`.
use crate::util::{self, Scratch};
use bootctl::{SlotAttrs, SlotId};
use image_tools::disk::DiskReport;
use image_tools::mkusr::UsrFs;
use qemu_tests::disk;
use qemu_tests::machine::{Booted, Firmware, Machine, MachineConfig};
use std::path::{Path, PathBuf};

/// Runs a scenario `fn(Firmware) -> anyhow::Result<()>` as one test per firmware.
macro_rules! on_both_firmwares {
    ($scenario:ident) => {
        mod $scenario {
            #[test]
            fn uefi() -> anyhow::Result<()> {
                super::$scenario(qemu_tests::machine::Firmware::Uefi)
            }
            #[test]
            fn bios() -> anyhow::Result<()> {
                super::$scenario(qemu_tests::machine::Firmware::Bios)
            }
        }
    };
}

on_both_firmwares!(fresh_disk_boots_usr_a);
on_both_firmwares!(b_with_one_try_boots_b_and_grub_spends_the_try);
on_both_firmwares!(b_without_tries_is_skipped_and_grub_writes_nothing);
on_both_firmwares!(nothing_bootable_boots_the_fallback_entry);
on_both_firmwares!(zeroed_primary_gpt_header_boots_b_by_the_backup_and_spends_its_try);
on_both_firmwares!(zeroed_backup_gpt_header_boots_b_and_spends_its_try);

/// A scenario's disk: v1 in USR-A, v2 written into USR-B's bytes (B's attributes untouched).
struct TestDisk {
    _scratch: Scratch,
    path: PathBuf,
    report: DiskReport,
    sector_size: u32,
}

impl TestDisk {
    fn new(name: &str, firmware: Firmware, sector_size: u32) -> anyhow::Result<TestDisk> {
        TestDisk::with_fs(name, firmware, sector_size, UsrFs::Squashfs)
    }

    fn with_fs(
        name: &str,
        firmware: Firmware,
        sector_size: u32,
        fs_kind: UsrFs,
    ) -> anyhow::Result<TestDisk> {
        let scratch = Scratch::new(&format!("{name}-{}", firmware.name()));
        let path = scratch.path("disk.img");
        let mut spec = disk::spec(&util::usr_image_fs("1", fs_kind), &path)?;
        spec.sector_size = sector_size;
        let report = disk::assemble(&spec)?;
        disk::write_usr(&path, &SlotId::B, &util::usr_image_fs("2", fs_kind))?;
        Ok(TestDisk {
            _scratch: scratch,
            path,
            report,
            sector_size,
        })
    }

    fn partuuid(&self, id: &SlotId) -> anyhow::Result<String> {
        Ok(disk::slot(&self.path, id)?
            .partuuid
            .to_string()
            .to_ascii_lowercase())
    }

    fn attrs(&self, id: &SlotId) -> anyhow::Result<SlotAttrs> {
        Ok(disk::slot(&self.path, id)?.attrs)
    }

    /// Hash of everything but ROOT, which the booted OS mounts read-write.
    fn hash_outside_root(&self) -> anyhow::Result<[u8; 32]> {
        let root = disk::partition_range(&self.report, "ROOT")?;
        Ok(disk::hash_outside(&self.path, &[root])?)
    }

    /// Boots, waits for the test OS, powers off cleanly; returns what booted.
    fn boot(&self, name: &str, firmware: Firmware) -> anyhow::Result<Booted> {
        let config = MachineConfig::new(name, firmware, &self.path).sector_size(self.sector_size);
        let mut vm = Machine::start(config)?;
        let booted = vm.wait_booted(util::BOOT)?;
        vm.wait_for(qemu_tests::machine::READY_MARKER, util::COMMAND)?;
        vm.poweroff(util::POWEROFF)?;
        Ok(booted)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

const fn attrs(priority: u8, tries: u8, successful: bool) -> SlotAttrs {
    SlotAttrs {
        priority,
        tries,
        successful,
    }
}

fn fresh_disk_boots_usr_a(firmware: Firmware) -> anyhow::Result<()> {
    let d = TestDisk::new("fresh", firmware, 512)?;
    assert_eq!(d.attrs(&SlotId::A)?, attrs(1, 0, true));
    assert_eq!(d.attrs(&SlotId::B)?, attrs(0, 0, false));
    let booted = d.boot("fresh disk", firmware)?;
    assert_eq!(booted.usr_partuuid, d.partuuid(&SlotId::A)?);
    assert_eq!(booted.version, "1");
    assert!(!booted.fallback);
    Ok(())
}

fn b_with_one_try_boots_b_and_grub_spends_the_try(firmware: Firmware) -> anyhow::Result<()> {
    let d = TestDisk::new("b-one-try", firmware, 512)?;
    let mut slots = disk::open(d.path(), true)?;
    slots.set_next(&SlotId::B, 1)?;
    drop(slots);
    assert_eq!(d.attrs(&SlotId::B)?, attrs(2, 1, false));

    let booted = d.boot("B with one try", firmware)?;
    assert_eq!(booted.usr_partuuid, d.partuuid(&SlotId::B)?);
    assert_eq!(booted.version, "2");
    assert_eq!(
        d.attrs(&SlotId::B)?,
        attrs(2, 0, false),
        "GRUB spends the try"
    );
    assert_eq!(
        d.attrs(&SlotId::A)?,
        attrs(1, 0, true),
        "A stays the fallback"
    );
    let state = disk::open(d.path(), false)?;
    assert!(
        !state.state().needs_repair(),
        "both GPT copies valid and equal"
    );
    Ok(())
}

fn b_without_tries_is_skipped_and_grub_writes_nothing(firmware: Firmware) -> anyhow::Result<()> {
    let d = TestDisk::new("b-no-tries", firmware, 512)?;
    disk::set_attrs(d.path(), &SlotId::B, attrs(2, 0, false))?;
    let before = d.hash_outside_root()?;

    let booted = d.boot("B without tries", firmware)?;
    assert_eq!(booted.usr_partuuid, d.partuuid(&SlotId::A)?);
    assert_eq!(booted.version, "1");
    assert!(!booted.fallback);
    assert_eq!(
        d.hash_outside_root()?,
        before,
        "disk bytes outside ROOT changed"
    );
    Ok(())
}

fn nothing_bootable_boots_the_fallback_entry(firmware: Firmware) -> anyhow::Result<()> {
    let d = TestDisk::new("nothing-bootable", firmware, 512)?;
    let mut slots = disk::open(d.path(), true)?;
    slots.mark_bad(&SlotId::A)?;
    drop(slots);
    let before = d.hash_outside_root()?;

    let booted = d.boot("nothing bootable", firmware)?;
    assert!(booted.fallback, "booted through the fallback entry");
    assert_eq!(booted.usr_partuuid, d.partuuid(&SlotId::A)?);
    assert_eq!(booted.version, "1");
    assert_eq!(
        d.hash_outside_root()?,
        before,
        "disk bytes outside ROOT changed"
    );
    Ok(())
}

/// B at P2 T1 S0 on a disk whose GPT copy `broken` ("primary" or "backup") was then damaged
/// by `damage`: the test OS comes up on B, and after the boot B's try is spent on the disk,
/// both copies validate and agree, and `sgdisk -v` finds no problem (DESIGN §4; issue 14,
/// defect 11: GRUB used to write nothing here, so a trial slot that died before userspace
/// repaired the table would have booted again forever).
///
/// Who repairs differs by firmware. SeaBIOS never touches the disk, so under BIOS GRUB
/// rebuilds the broken copy from the valid one as it spends the try. OVMF's partition driver
/// restores a broken copy from the valid one before GRUB runs, so under UEFI GRUB finds two
/// valid copies; the end state is the same.
fn trial_on_a_damaged_gpt_spends_its_try(
    firmware: Firmware,
    name: &str,
    broken: &str,
    damage: fn(&Path, u32) -> qemu_tests::Result<()>,
) -> anyhow::Result<()> {
    let d = TestDisk::new(name, firmware, 512)?;
    let mut slots = disk::open(d.path(), true)?;
    slots.set_next(&SlotId::B, 1)?;
    drop(slots);
    damage(d.path(), d.sector_size)?;
    let state = disk::open(d.path(), false)?;
    let copy = match broken {
        "primary" => &state.state().primary,
        _ => &state.state().backup,
    };
    assert!(copy.is_err(), "the {broken} copy is broken before the boot");
    drop(state);

    let booted = d.boot(name, firmware)?;
    assert_eq!(booted.usr_partuuid, d.partuuid(&SlotId::B)?);
    assert_eq!(booted.version, "2");
    assert_eq!(d.attrs(&SlotId::B)?, attrs(2, 0, false), "the try is spent");
    assert_eq!(
        d.attrs(&SlotId::A)?,
        attrs(1, 0, true),
        "A stays the fallback"
    );
    let state = disk::open(d.path(), false)?;
    let s = state.state();
    assert!(
        !s.needs_repair(),
        "both GPT copies valid and equal, the backup at the end: primary {:?}, backup {:?}, \
         copies match {}, backup at the end {}",
        s.primary,
        s.backup,
        s.copies_match,
        s.backup_at_end()
    );
    disk::sgdisk_verify(d.path())?;
    Ok(())
}

fn zeroed_primary_gpt_header_boots_b_by_the_backup_and_spends_its_try(
    firmware: Firmware,
) -> anyhow::Result<()> {
    // Only the backup copy says B is next: booting B proves GRUB (or OVMF) read it.
    trial_on_a_damaged_gpt_spends_its_try(
        firmware,
        "zeroed-primary",
        "primary",
        disk::zero_primary_header,
    )
}

fn zeroed_backup_gpt_header_boots_b_and_spends_its_try(firmware: Firmware) -> anyhow::Result<()> {
    trial_on_a_damaged_gpt_spends_its_try(
        firmware,
        "zeroed-backup",
        "backup",
        disk::zero_backup_header,
    )
}

#[test]
fn uefi_with_4096_byte_sectors_boots_and_selects() -> anyhow::Result<()> {
    let firmware = Firmware::Uefi;
    let d = TestDisk::new("4k", firmware, 4096)?;
    assert_eq!(disk::slot(d.path(), &SlotId::A)?.sector_size, 4096);

    let booted = d.boot("4096-byte sectors, fresh", firmware)?;
    assert_eq!(booted.usr_partuuid, d.partuuid(&SlotId::A)?);
    assert_eq!(booted.version, "1");

    let mut slots = disk::open(d.path(), true)?;
    slots.set_next(&SlotId::B, 1)?;
    drop(slots);
    let booted = d.boot("4096-byte sectors, B with one try", firmware)?;
    assert_eq!(booted.usr_partuuid, d.partuuid(&SlotId::B)?);
    assert_eq!(booted.version, "2");
    assert_eq!(
        d.attrs(&SlotId::B)?,
        attrs(2, 0, false),
        "GRUB spends the try"
    );
    assert_eq!(d.attrs(&SlotId::A)?, attrs(1, 0, true));
    Ok(())
}

#[test]
fn ext4_usr_images_boot_and_select_on_bios() -> anyhow::Result<()> {
    let firmware = Firmware::Bios;
    let d = TestDisk::with_fs("ext4-usr", firmware, 512, UsrFs::Ext4)?;
    let mut slots = disk::open(d.path(), true)?;
    slots.set_next(&SlotId::B, 1)?;
    drop(slots);
    let booted = d.boot("ext4 /usr, B with one try", firmware)?;
    assert_eq!(booted.usr_partuuid, d.partuuid(&SlotId::B)?);
    assert_eq!(booted.version, "2");
    assert_eq!(
        d.attrs(&SlotId::B)?,
        attrs(2, 0, false),
        "GRUB spends the try"
    );
    Ok(())
}
