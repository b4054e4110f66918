//! First boot on a factory disk (issue 10): an `image-tools disk` image written onto a 4 GiB
//! disk boots under GRUB (SeaBIOS), the image's boot hook runs `updater firstboot`, and a power
//! cut right after the partition table grew is finished by the next boot: ROOT fills the disk
//! (seen by the guest's kernel and `df`, and on the disk file: `sgdisk -v` clean, backup GPT
//! at the last LBA, ext4 filling ROOT), the OEM file is in /etc, the slots are untouched, and a
//! third run is a no-op.
use crate::util::{self, Scratch};
use bootctl::{SlotAttrs, SlotId};
use image_tools::mkusr::UsrFs;
use qemu_tests::disk;
use qemu_tests::firstboot::{self, FactoryDisk, TABLE_GROWN_MARKER};
use qemu_tests::machine::{Firmware, Machine, MachineConfig, READY_MARKER};
use std::time::Instant;

const HOSTNAME: &str = "factory-box-0007\n";

fn machine(name: &str, disk: &FactoryDisk) -> anyhow::Result<Machine> {
    Ok(Machine::start(MachineConfig::new(
        name,
        Firmware::Bios,
        &disk.path,
    ))?)
}

#[test]
fn a_power_cut_during_firstboot_on_a_4_gib_disk_is_finished_by_the_next_boot() -> anyhow::Result<()>
{
    let usr = util::testos().usr_image(&firstboot::usr_spec(), UsrFs::Squashfs)?;
    qemu_tests::grub::artifacts()?;
    let started = Instant::now();
    let scratch = Scratch::new("firstboot");
    let d = FactoryDisk::build(
        &usr,
        &scratch.path("disk.img"),
        &[("etc/hostname", HOSTNAME)],
    )?;
    let entries_before = d.gpt()?.gpt.used_entries();
    assert!(!d.backup_at_end()?);

    // Boot 1: the power goes as soon as the table has grown, inside firstboot.
    let mut vm = machine("firstboot, power cut", &d)?;
    vm.wait_booted(util::BOOT)?;
    vm.wait_for(TABLE_GROWN_MARKER, util::COMMAND)?;
    vm.kill()?;
    let cut = d.gpt()?;
    assert!(
        cut.backup.is_ok() && cut.backup_at_end(),
        "the table was flushed before the log line: {cut:?}"
    );
    assert!(
        !d.has_firstboot_marker()?,
        "the cut came after firstboot finished: the scenario did not cut inside it"
    );
    eprintln!(
        "firstboot scenario: cut with ROOT's ext4 at {} of {} blocks on disk (journal aside)",
        d.root_fs_blocks()?,
        d.grown_root_blocks()?
    );

    // Boot 2: the hook finishes the job before the test OS is ready.
    let mut vm = machine("firstboot, after the cut", &d)?;
    vm.wait_booted(util::BOOT)?;
    let done = vm.wait_for("\"result\":\"done\"", util::COMMAND)?;
    vm.wait_for(READY_MARKER, util::COMMAND)?;
    let report: serde_json::Value = serde_json::from_str(done.trim())?;
    assert_eq!(
        report["table"]["wrote"], false,
        "the table was done: {done}"
    );
    assert_eq!(report["oem"]["source"], "copied", "{done}");
    let grown = d.grown_root_bytes()?;
    let kernel_bytes: u64 = vm
        .run_ok("cat /sys/class/block/vda9/size", util::COMMAND)?
        .trim()
        .parse::<u64>()?
        * 512;
    assert_eq!(kernel_bytes, grown, "the kernel's ROOT");
    let df = vm.run_ok("df -k / | tail -n 1", util::COMMAND)?;
    let df_kib: u64 = df
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("df output {df:?}"))?;
    assert!(
        df_kib * 1024 > grown / 100 * 95,
        "df says {df_kib} KiB for a ROOT of {grown} bytes"
    );
    assert_eq!(vm.run_ok("cat /etc/hostname", util::COMMAND)?, HOSTNAME);
    let again = vm.run_ok("updater firstboot --json", util::COMMAND)?;
    assert!(again.contains("\"result\":\"already-done\""), "{again}");
    vm.poweroff(util::POWEROFF)?;

    // The disk file.
    disk::sgdisk_verify(&d.path)?;
    let after = d.gpt()?;
    assert!(after.primary.is_ok() && after.copies_match && after.backup_at_end());
    assert_eq!(
        after.gpt.backup_lba,
        firstboot::FACTORY_DISK_BYTES / 512 - 1
    );
    for (n, e) in &entries_before {
        let now = after.gpt.entry(*n);
        if *n == 9 {
            assert_eq!(now.first_lba, e.first_lba);
            assert_eq!((now.last_lba - now.first_lba + 1) * 512, grown);
        } else {
            assert_eq!(&now, e, "entry {n} changed");
        }
    }
    assert_eq!(d.root_fs_blocks()?, d.grown_root_blocks()?);
    d.check_root_fs()?;
    let attrs = |id| -> anyhow::Result<SlotAttrs> { Ok(disk::slot(&d.path, &id)?.attrs) };
    assert_eq!(
        attrs(SlotId::A)?,
        SlotAttrs {
            priority: 1,
            tries: 0,
            successful: true
        }
    );
    assert_eq!(attrs(SlotId::B)?, SlotAttrs::default());
    eprintln!("firstboot scenario: {:.0?}", started.elapsed());
    Ok(())
}
