//! Regression tests of issue 14 (hardening before the box updates itself), through the
//! `updater` binary and the library's install stages: each names the defect it pins down.
use crate::install::options;
use crate::util::{self, grub_boots, ok, on, payload, Device};
use bootctl::gpt::{self, Entry};
use bootctl::storage::FileDisk;
use bootctl::{SlotAttrs, SlotDisk, SlotId};
use std::time::Duration;
use updater::history::History;
use updater::install::{self, NoProgress};
use updater::lock::UpdaterLock;
use updater::source::FileSource;
use updater::state::{StateDir, PENDING};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn attrs(dev: &Device, id: SlotId) -> SlotAttrs {
    dev.slot(&id).attrs
}

fn failed_versions(dev: &Device) -> Vec<String> {
    History::new(StateDir::under_root(&dev.root()))
        .failed()
        .unwrap()
        .versions
        .into_iter()
        .map(|f| f.version)
        .collect()
}

/// A device booted into B on trial (P2 T0 S0) with A the committed fallback.
fn booted_b_on_trial(dev: &Device) {
    ok(on(dev, "A", "1.0", &["install", &payload(dev, "2.0")]));
    assert_eq!(grub_boots(dev), "B");
}

// Defect 1: install over an uncommitted boot destroys the only fallback.

#[test]
fn install_is_refused_while_the_booted_slot_is_on_trial() {
    let dev = Device::new();
    booted_b_on_trial(&dev);
    let a_before = dev.slot_bytes(&SlotId::A);
    let out = on(&dev, "B", "2.0", &["install", &payload(&dev, "3.0")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("the booted slot B is not committed")
            && err.contains("run `updater health` first"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        attrs(&dev, SlotId::A),
        SlotAttrs {
            priority: 1,
            tries: 0,
            successful: true
        },
        "the committed fallback A is untouched"
    );
    assert!(dev.slot_bytes(&SlotId::A) == a_before);
}

#[test]
fn force_installs_over_an_uncommitted_boot() {
    let dev = Device::new();
    booted_b_on_trial(&dev);
    ok(on(
        &dev,
        "B",
        "2.0",
        &["install", "--force", &payload(&dev, "3.0")],
    ));
    assert_eq!(attrs(&dev, SlotId::A).tries, 1);
}

#[test]
fn restaging_over_a_pending_install_is_allowed() {
    let dev = Device::new();
    ok(on(&dev, "A", "1.0", &["install", &payload(&dev, "2.0")]));
    ok(on(&dev, "A", "1.0", &["install", &payload(&dev, "3.0")]));
    let pending: updater::state::PendingInstall = StateDir::under_root(&dev.root())
        .load(PENDING)
        .unwrap()
        .unwrap();
    assert_eq!(pending.version, "3.0");
    assert_eq!(grub_boots(&dev), "B");
}

// Defect 2: no lock; the flip writes a stale GPT.

#[test]
fn a_second_writer_gives_up_naming_the_lock_holder() {
    let dev = Device::new();
    let lock_path = dev.root().join("var/lib/updater/lock");
    let _held = UpdaterLock::acquire(&lock_path, "test-holder", Duration::ZERO).unwrap();
    for args in [
        vec!["--lock-wait", "0", "install", &payload(&dev, "2.0")],
        vec!["--lock-wait", "0", "health", "--no-reboot"],
        vec!["--lock-wait", "0", "mark-good"],
    ] {
        let out = on(&dev, "A", "1.0", &args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "pid {}: updater test-holder since",
                std::process::id()
            )),
            "{args:?}: {err}"
        );
    }
    assert_eq!(attrs(&dev, SlotId::B), SlotAttrs::default());
}

#[test]
fn the_flip_keeps_a_gpt_change_made_during_the_install() {
    let dev = Device::new();
    let p = payload(&dev, "2.0");
    let plan = install::plan(
        &dev.spec(),
        Box::new(FileSource::open(std::path::Path::new(&p)).unwrap()),
        &options(),
    )
    .unwrap();
    let written = plan.write(&mut NoProgress).unwrap();
    // Meanwhile another tool sets a bit of A that is not a slot bit (e.g. cgpt's legacy flag).
    let mut d = SlotDisk::open(&dev.disk(), true, None).unwrap();
    let a = d.slot(&SlotId::A).unwrap();
    let mut gpt = d.gpt().clone();
    gpt.set_attributes(a.number, a.attributes | 1 << 2);
    gpt::write(d.storage_mut(), &gpt).unwrap();
    drop(d);
    written.finish(&mut NoProgress).unwrap();
    assert_eq!(
        dev.slot(&SlotId::A).attributes & 1 << 2,
        1 << 2,
        "the flip undid a change made while the install ran"
    );
    assert_eq!(attrs(&dev, SlotId::B).tries, 1);
}

#[test]
fn two_concurrent_installs_never_interleave() {
    let dev = Device::new();
    let p2 = payload(&dev, "2.0");
    let p3 = payload(&dev, "3.0");
    let plan = install::plan(
        &dev.spec(),
        Box::new(FileSource::open(std::path::Path::new(&p2)).unwrap()),
        &options(),
    )
    .unwrap();
    let second = on(&dev, "A", "1.0", &["--lock-wait", "0", "install", &p3]);
    assert!(!second.status.success());
    assert!(stderr(&second).contains("another updater holds"));
    plan.write(&mut NoProgress)
        .unwrap()
        .finish(&mut NoProgress)
        .unwrap();
    assert!(dev.slot_bytes(&SlotId::B)[..util::good_image().len()] == util::good_image()[..]);
}

// Defect 8: the booted slot can be misidentified.

#[test]
fn booted_given_against_the_kernel_command_line_is_refused() {
    let dev = Device::new();
    let a = dev.slot(&SlotId::A);
    let cmdline = format!("ro mount.usr=PARTUUID={}", a.partuuid);
    let e = updater::device::DeviceSpec::resolve(
        Some(dev.disk()),
        Some(SlotId::B),
        dev.root(),
        &cmdline,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("--booted B disagrees with the kernel command line"),
        "{e}"
    );
    let ok =
        updater::device::DeviceSpec::resolve(Some(dev.disk()), None, dev.root(), &cmdline).unwrap();
    assert_eq!(ok.booted, SlotId::Number(a.number));
}

/// Rewrites entry `number` of the test disk's GPT (both copies, valid CRCs).
fn edit_entry(dev: &Device, number: u32, f: impl FnOnce(&mut Entry)) {
    let mut disk = FileDisk::open(&dev.disk(), true).unwrap();
    let mut gpt = gpt::read(&mut disk, None).unwrap().gpt;
    let mut e = gpt.entry(number);
    f(&mut e);
    gpt.set_entry(number, &e);
    gpt::write(&mut disk, &gpt).unwrap();
}

#[test]
fn a_duplicate_partuuid_is_refused() {
    let dev = Device::new();
    let a = dev.slot(&SlotId::A);
    let b = dev.slot(&SlotId::B);
    edit_entry(&dev, b.number, |e| e.unique_guid = a.partuuid);
    let out = on(&dev, "A", "1.0", &["install", &payload(&dev, "2.0")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is ambiguous"), "{err}");
    assert_eq!(attrs(&dev, SlotId::B), SlotAttrs::default());
}

// Defect 9 (install side): a target range that touches the booted slot.

#[test]
fn a_target_overlapping_the_booted_slot_is_refused_and_nothing_written() {
    let dev = Device::new();
    let a = dev.slot(&SlotId::A);
    let b = dev.slot(&SlotId::B);
    edit_entry(&dev, b.number, |e| e.first_lba = a.last_lba - 7);
    let disk_before = std::fs::read(dev.disk()).unwrap();
    let out = on(&dev, "A", "1.0", &["install", &payload(&dev, "2.0")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("overlaps partition"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        std::fs::read(dev.disk()).unwrap() == disk_before,
        "the disk changed"
    );
}

// Defect 10: "never came up" decided from pending.json alone.

#[test]
fn health_on_the_old_slot_before_the_reboot_keeps_the_fresh_install() {
    let dev = Device::new();
    ok(on(&dev, "A", "1.0", &["install", &payload(&dev, "2.0")]));
    ok(on(&dev, "A", "1.0", &["health", "--no-reboot"]));
    assert!(
        failed_versions(&dev).is_empty(),
        "{:?}",
        failed_versions(&dev)
    );
    assert_eq!(attrs(&dev, SlotId::B).tries, 1, "B still gets its try");
    assert_eq!(grub_boots(&dev), "B");
}

#[test]
fn spent_tries_are_recorded_as_never_came_up_and_the_slot_marked_bad() {
    let dev = Device::new();
    ok(on(&dev, "A", "1.0", &["install", &payload(&dev, "2.0")]));
    assert_eq!(grub_boots(&dev), "B");
    // B dies before its health check; the next boot falls back.
    assert_eq!(grub_boots(&dev), "A");
    let out = ok(on(&dev, "A", "1.0", &["health", "--no-reboot"]));
    assert!(out.contains("version 2.0 recorded as failed"), "{out}");
    assert_eq!(failed_versions(&dev), ["2.0"]);
    assert_eq!(attrs(&dev, SlotId::B), SlotAttrs::default());
    let again = on(&dev, "A", "1.0", &["install", &payload(&dev, "2.0")]);
    assert!(
        stderr(&again).contains("failed before"),
        "{}",
        stderr(&again)
    );
}

// Defect 12 (smaller ones).

#[test]
fn an_unwritable_state_directory_stops_the_install_before_the_gpt_changes() {
    let dev = Device::new();
    // B is a committed fallback: marking it bad would lose it.
    let mut d = SlotDisk::open(&dev.disk(), true, None).unwrap();
    d.set_next(&SlotId::B, 1).unwrap();
    d.mark_good(&SlotId::B).unwrap();
    d.prioritize(&SlotId::A).unwrap();
    drop(d);
    let b_before = attrs(&dev, SlotId::B);
    // The state "directory" is a file: nothing can be stored there.
    dev.write_root_file("var/lib/updater", "not a directory");
    let out = on(&dev, "A", "1.0", &["install", &payload(&dev, "2.0")]);
    assert!(!out.status.success());
    assert_eq!(attrs(&dev, SlotId::B), b_before);
}

#[test]
fn a_failing_check_marks_the_slot_bad_even_when_the_failed_list_cannot_be_written() {
    let dev = Device::new();
    booted_b_on_trial(&dev);
    dev.write_root_file("etc/updater/health.d/10-app", "#!/bin/sh\nexit 1\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dev.root().join("etc/updater/health.d/10-app"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // failed.json cannot be written (a directory stands in its place).
    std::fs::create_dir_all(dev.root().join("var/lib/updater/failed.json/x")).unwrap();
    let out = on(&dev, "B", "2.0", &["health", "--no-reboot"]);
    assert!(!out.status.success());
    assert_eq!(attrs(&dev, SlotId::B), SlotAttrs::default(), "B marked bad");
    assert_eq!(grub_boots(&dev), "A");
}

#[test]
fn mark_good_after_a_fallback_boot_makes_the_slot_bootable_again() {
    let dev = Device::new();
    // Nothing bootable: grub.cfg's fixed entry booted A.
    let mut d = SlotDisk::open(&dev.disk(), true, None).unwrap();
    d.mark_bad(&SlotId::A).unwrap();
    drop(d);
    ok(on(&dev, "A", "1.0", &["mark-good"]));
    let a = attrs(&dev, SlotId::A);
    assert!(a.successful && a.priority > 0, "{a}");
    assert_eq!(grub_boots(&dev), "A");
}

// Test strength (mutants in install/mod.rs): the size limit is inclusive, and a chunk of a
// whole MiB is written and read back.

#[test]
fn an_image_exactly_the_slot_size_installs_and_one_byte_more_is_refused() {
    let dev = Device::new();
    let exact = util::image_bytes(util::USR_BYTES as usize, 7);
    let opts = util::PackOptions {
        chunk_size: 1 << 20,
        ..util::opts("testbox", "2.0")
    };
    let fits = util::PayloadParts::from_image(&exact, &opts)
        .unwrap()
        .assemble(&[util::test_key()]);
    let p = dev.payload("exact", &fits);
    ok(on(&dev, "A", "1.0", &["install", p.to_str().unwrap()]));
    assert!(dev.slot_bytes(&SlotId::B) == exact);

    let dev = Device::new();
    let over = util::image_bytes(util::USR_BYTES as usize + 4096, 7);
    let big = util::PayloadParts::from_image(&over, &util::opts("testbox", "2.0"))
        .unwrap()
        .assemble(&[util::test_key()]);
    let p = dev.payload("over", &big);
    let out = on(&dev, "A", "1.0", &["install", p.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "image of {} bytes does not fit slot USR-B of {} bytes",
            util::USR_BYTES + 4096,
            util::USR_BYTES
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(attrs(&dev, SlotId::B), SlotAttrs::default());
}

// Defect 8 on real block devices: loop devices made by the test (skipped, saying so, where the
// machine has none).

/// A loop device over a copy of a test disk, partitions scanned; detached on drop.
struct Loop {
    dev: std::path::PathBuf,
    mounted: Vec<std::path::PathBuf>,
}

impl Loop {
    fn attach(image: &std::path::Path) -> Option<Loop> {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--partscan"])
            .arg(image)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: no loop device here ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(Loop {
            dev: dev.into(),
            mounted: Vec::new(),
        })
    }

    /// The node of partition `n`: the kernel's, or (without devtmpfs/udev) one made in `dir`
    /// from the numbers sysfs gives.
    fn part(&self, n: u32, dir: &std::path::Path) -> std::path::PathBuf {
        let p = std::path::PathBuf::from(format!("{}p{n}", self.dev.display()));
        let name = p.file_name().unwrap().to_owned();
        let sys = std::path::Path::new("/sys/class/block")
            .join(&name)
            .join("dev");
        for i in 0..200 {
            if p.exists() {
                return p;
            }
            if sys.exists() {
                break;
            }
            if i == 50 {
                // The scan of --partscan may not have happened: ask for it.
                let _ = std::process::Command::new("partx")
                    .arg("-a")
                    .arg(&self.dev)
                    .status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let numbers = std::fs::read_to_string(&sys).unwrap();
        let (major, minor) = numbers.trim().split_once(':').unwrap();
        let node = dir.join(&name);
        let st = std::process::Command::new("mknod")
            .arg(&node)
            .arg("b")
            .args([major, minor])
            .status()
            .unwrap();
        assert!(st.success(), "mknod {}", node.display());
        node
    }

    fn mount(&mut self, part: &std::path::Path, at: &std::path::Path) {
        std::fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(part)
            .status()
            .unwrap();
        assert!(st.success(), "mkfs.ext4 {}", part.display());
        let st = std::process::Command::new("mount")
            .arg(part)
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mounting {}", part.display());
        self.mounted.push(at.to_owned());
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for m in self.mounted.drain(..) {
            let _ = std::process::Command::new("umount").arg(&m).status();
        }
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.dev)
            .status();
    }
}

#[test]
fn a_target_that_is_the_device_mounted_on_usr_is_refused() {
    let dev = Device::new();
    let Some(mut lo) = Loop::attach(&dev.disk()) else {
        return;
    };
    let b = dev.slot(&SlotId::B);
    // The admin passed the wrong --booted: B is what is mounted on /usr.
    let part = lo.part(b.number, dev.dir.path());
    lo.mount(&part, &dev.root().join("usr"));
    dev.write_root_file(
        "usr/lib/os-release",
        "IMAGE_ID=testbox\nIMAGE_VERSION=1.0\n",
    );
    dev.write_root_file(
        "usr/lib/updater/keys.d/test.pub",
        &util::encode_public_key(&util::test_key().verifying_key()),
    );
    let spec = updater::device::DeviceSpec {
        disk: lo.dev.clone(),
        booted: SlotId::A,
        root: dev.root(),
    };
    let e = spec.refuse_mounted_usr(&b).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "refusing to write partition {} of {}: it is the device mounted on",
            b.number,
            lo.dev.display()
        )),
        "{e}"
    );
    assert!(spec.refuse_mounted_usr(&dev.slot(&SlotId::A)).is_ok());
    let p = payload(&dev, "2.0");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_updater"))
        .arg("--disk")
        .arg(&lo.dev)
        .arg("--root")
        .arg(dev.root())
        .args(["--booted", "A", "install", &p])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("it is the device mounted on"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_booted_disk_is_found_by_partuuid_and_a_cloned_disk_makes_it_ambiguous() {
    let dev = Device::new();
    let Some(lo) = Loop::attach(&dev.disk()) else {
        return;
    };
    let a = dev.slot(&SlotId::A).partuuid.to_string();
    assert_eq!(
        updater::device::disk_of_partuuid(&a).unwrap(),
        lo.dev,
        "found by reading every disk's GPT"
    );
    let clone = dev.path("clone.img");
    std::fs::copy(dev.disk(), &clone).unwrap();
    let Some(lo2) = Loop::attach(&clone) else {
        return;
    };
    let e = updater::device::disk_of_partuuid(&a)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is ambiguous"), "{e}");
    assert!(
        e.contains(&lo.dev.display().to_string()) && e.contains(&lo2.dev.display().to_string()),
        "{e}"
    );
}

// Defect 4 through the binary: a damaged failed list fails closed and status says so loudly.

#[test]
fn a_damaged_failed_list_blocks_installs_and_status_says_so() {
    let dev = Device::new();
    dev.write_root_file(
        "var/lib/updater/failed.json",
        "{\"format_version\": 1, \"versions\": [{\"version\": \"2.0\", \"rea",
    );
    let out = on(&dev, "A", "1.0", &["install", &payload(&dev, "3.0")]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("failed before"), "{}", stderr(&out));
    assert_eq!(attrs(&dev, SlotId::B), SlotAttrs::default());
    let status = ok(on(&dev, "A", "1.0", &["status"]));
    assert!(status.contains("UPDATES BLOCKED"), "{status}");
    assert!(
        status.contains("DAMAGED STATE FILE: failed.json"),
        "{status}"
    );
    // The operator looked: 3.0 may go, the salvaged 2.0 stays refused.
    assert!(ok(on(&dev, "A", "1.0", &["unblock"])).contains("updates unblocked"));
    ok(on(&dev, "A", "1.0", &["install", &payload(&dev, "3.0")]));
    let again = on(&dev, "A", "1.0", &["install", &payload(&dev, "2.0")]);
    assert!(
        stderr(&again).contains("failed before"),
        "{}",
        stderr(&again)
    );
}
