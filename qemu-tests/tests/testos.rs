//! The test OS on its own: kernel and initramfs booted directly by QEMU (no GRUB), so a
//! failure here points at the initramfs or /usr, not at the boot loader.
use crate::util::{self, Scratch};
use qemu_tests::disk;
use qemu_tests::machine::{Firmware, Machine, MachineConfig, READY_MARKER};

#[test]
fn initramfs_mounts_usr_named_on_the_command_line_and_root_by_label() -> anyhow::Result<()> {
    let scratch = Scratch::new("testos-direct");
    let os = util::testos();
    let usr = util::usr_image("1.0");
    let disk_img = scratch.path("disk.img");
    let usr_a = disk::dev_disk(&disk_img, &usr, 48)?;
    // Upper case on purpose: GRUB and the kernel do not agree on the case of GUIDs.
    let append = format!(
        "console=ttyS0,115200n8 mount.usr=PARTUUID={} panic=-1",
        usr_a.to_uppercase()
    );
    let config = || {
        MachineConfig::new("direct kernel", Firmware::Bios, &disk_img).direct_kernel(
            &os.kernel.vmlinuz,
            &os.initramfs,
            &append,
        )
    };

    let mut vm = Machine::start(config())?;
    let booted = vm.wait_booted(util::BOOT)?;
    assert_eq!(booted.usr_partuuid, usr_a);
    assert_eq!(booted.version, "1.0");
    assert!(!booted.fallback);
    vm.wait_for(READY_MARKER, util::COMMAND)?;
    let mounts = vm.run_ok("cat /proc/mounts", util::COMMAND)?;
    assert!(mounts.contains("/dev/vda3 /usr squashfs ro"), "{mounts}");
    assert!(mounts.contains("/dev/vda9 / ext4 rw"), "{mounts}");
    let failed = vm.run("ls /nonexistent", util::COMMAND)?;
    assert_ne!(failed.rc, 0);
    assert!(failed.output.contains("No such file"), "{}", failed.output);
    let updater = vm.run("updater --help", util::COMMAND)?;
    assert!(!updater.output.contains("not found"), "{}", updater.output);
    // What the guest writes to ROOT survives a clean power-off.
    vm.run_ok("echo persisted > /var/marker", util::COMMAND)?;
    vm.poweroff(util::POWEROFF)?;
    drop(vm);

    let mut vm = Machine::start(config())?;
    vm.wait_for(READY_MARKER, util::BOOT)?;
    assert_eq!(vm.run_ok("cat /var/marker", util::COMMAND)?, "persisted\n");

    // A reboot resets the machine in the same QEMU and boots again.
    vm.reboot()?;
    assert_eq!(vm.wait_booted(util::BOOT)?.usr_partuuid, usr_a);
    vm.wait_for(READY_MARKER, util::COMMAND)?;
    Ok(())
}

#[test]
fn harness_reports_timeouts_failed_commands_and_power_cuts() -> anyhow::Result<()> {
    let scratch = Scratch::new("testos-harness");
    let os = util::testos();
    let disk_img = scratch.path("disk.img");
    let usr_a = disk::dev_disk(&disk_img, &util::usr_image("1.0"), 48)?;
    let append = format!("console=ttyS0,115200n8 mount.usr=PARTUUID={usr_a} panic=-1");
    std::fs::write(scratch.path("payload.img"), vec![0x5a; 1 << 20])?;
    let config = MachineConfig::new("harness", Firmware::Bios, &disk_img)
        .direct_kernel(&os.kernel.vmlinuz, &os.initramfs, &append)
        .extra_disk(scratch.path("payload.img"), true);
    let mut vm = Machine::start(config)?;
    vm.wait_for(READY_MARKER, util::BOOT)?;

    // An extra disk shows up as the second virtio disk.
    let out = vm.run_ok(
        "cat /sys/block/vdb/ro /sys/block/vdb/size; head -c 4 /dev/vdb",
        util::COMMAND,
    )?;
    assert_eq!(out, "1\n2048\nZZZZ");

    let err = vm
        .run_ok("echo partial; exit 3", util::COMMAND)
        .unwrap_err();
    match err {
        qemu_tests::Error::GuestCommand { rc, output, .. } => {
            assert_eq!((rc, output.as_str()), (3, "partial\n"));
        }
        other => panic!("expected a guest command error, got {other}"),
    }

    let err = vm
        .wait_for("never printed", std::time::Duration::from_secs(2))
        .unwrap_err();
    assert!(
        matches!(err, qemu_tests::Error::Timeout { .. }),
        "expected a timeout, got {err}"
    );

    vm.kill()?;
    let err = vm.wait_for("never printed", util::COMMAND).unwrap_err();
    assert!(
        matches!(err, qemu_tests::Error::Exited { .. }),
        "expected an exit, got {err}"
    );
    assert!(
        !vm.wait_exit(util::COMMAND)?.success(),
        "a power cut is not a clean exit"
    );
    Ok(())
}
