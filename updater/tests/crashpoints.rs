//! Crash-point sweep (issue 6): an install, a flip, a commit and a rollback run with a shim
//! (`tests/crashsim/crashsim.c`, LD_PRELOAD) that kills the updater just before its N-th write,
//! flush or rename and loses every disk write not yet flushed, for every N. After each crash:
//! GRUB's rule picks the old slot or a slot whose every byte is the signed image, both GPT copies
//! validate after repair, every state file parses, and rerunning the operation finishes it.
//! Invariant 7 too (issue 14): wherever an install was cut, if GRUB would boot the new slot and
//! it never comes up, the old slot's next `health` records its version as failed.
use crate::util::{self, Device};
use bootctl::{SlotDisk, SlotId};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Builds the shim once per test process (shared with `firstboot.rs`).
pub(crate) fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("crashsim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("libcrashsim.so");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crashsim/crashsim.c");
        let st = Command::new("cc")
            .args(["-O2", "-shared", "-fPIC", "-o"])
            .arg(&out)
            .arg(&src)
            .args(["-ldl", "-lpthread"])
            .status()
            .expect("running cc");
        assert!(st.success(), "building the crash shim");
        out
    })
}

/// Runs `updater ARGS` on `dev` booted from `booted`, crashing before operation `crash_at`
/// (0: never). Returns the output and how many operations the run did.
fn run<S: AsRef<std::ffi::OsStr>>(
    dev: &Device,
    booted: &str,
    args: &[S],
    crash_at: usize,
) -> (Output, usize) {
    let mut cmd = dev.command(booted);
    cmd.args(args);
    run_with_shim(cmd, &dev.path("ops.count"), crash_at)
}

/// Runs `cmd` (an updater whose disk is a `.../disk.img`) under the shim, crashing before
/// operation `crash_at` (0: never), counting operations in `count`. Returns the output and
/// how many operations the run did.
pub(crate) fn run_with_shim(mut cmd: Command, count: &Path, crash_at: usize) -> (Output, usize) {
    let _ = std::fs::remove_file(count);
    let out = cmd
        .env("LD_PRELOAD", shim())
        .env("CRASH_AT", crash_at.to_string())
        .env("CRASH_COUNT_FILE", count)
        .env("CRASH_DISK_SUFFIX", "/disk.img")
        .output()
        .unwrap();
    let ops = std::fs::read_to_string(count)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    (out, ops)
}

pub(crate) fn killed(out: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal() == Some(9)
}

/// The invariants after a crash (DESIGN §6 invariants 1–3).
fn check_after_crash(dev: &Device, what: &str, a_image: &[u8], images: &[&[u8]]) {
    let mut disk = SlotDisk::open(&dev.disk(), true, None)
        .unwrap_or_else(|e| panic!("{what}: no GPT copy validates: {e}"));
    let chosen = disk
        .select(false)
        .unwrap()
        .unwrap_or_else(|| panic!("{what}: nothing bootable"))
        .slot;
    let bytes = dev.slot_bytes(&SlotId::Number(chosen.number));
    if chosen.label == "USR-A" {
        assert!(bytes == a_image, "{what}: the booted slot A changed");
    } else {
        assert!(
            images.iter().any(|img| bytes[..img.len()] == **img),
            "{what}: GRUB would boot {} whose bytes are not a signed image",
            chosen.label
        );
    }
    disk.repair().unwrap();
    let s = disk.state();
    assert!(
        s.primary.is_ok() && s.backup.is_ok() && s.copies_match,
        "{what}: repair left {s:?}"
    );
    let state = dev.root().join("var/lib/updater");
    for e in std::fs::read_dir(&state).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read(&p).unwrap();
            serde_json::from_slice::<serde_json::Value>(&text)
                .unwrap_or_else(|err| panic!("{what}: {} does not parse: {err}", p.display()));
        }
    }
}

/// A copy of `dev` (disk and root), to play out a future without disturbing it.
fn clone_device(dev: &Device) -> Device {
    let copy = Device::new();
    std::fs::copy(dev.disk(), copy.disk()).unwrap();
    let _ = std::fs::remove_dir_all(copy.root());
    let st = Command::new("cp")
        .arg("-a")
        .arg(dev.root())
        .arg(copy.root())
        .status()
        .unwrap();
    assert!(st.success());
    copy
}

/// Invariant 7 after a crash of an install of `version` booted from A: if GRUB would now
/// boot another slot, that slot dies before its health check on every try, GRUB falls back,
/// and A's `health` must record `version` as failed.
/// Returns whether the crash left such a slot (so invariant 7 was exercised).
fn check_never_came_up_is_recorded(dev: &Device, what: &str, version: &str) -> bool {
    let future = clone_device(dev);
    for _ in 0..=16 {
        let mut disk = SlotDisk::open(&future.disk(), true, None).unwrap();
        let sel = disk.select(true).unwrap().expect("something bootable");
        if sel.slot.label == "USR-A" {
            break;
        }
        if sel.slot.attrs.successful {
            // The new slot was committed before the crash: it came up.
            return false;
        }
    }
    // Back on A. B was never flipped (P0), or it was and never committed: then A must say so.
    let b = future.slot(&SlotId::B).attrs;
    if b.successful || b.priority == 0 {
        return false;
    }
    future.write_root_file(
        "usr/lib/os-release",
        "IMAGE_ID=testbox\nIMAGE_VERSION=1.0\n",
    );
    let (out, _) = run(&future, "A", &["health", "--no-reboot"], 0);
    assert!(
        out.status.success(),
        "{what}: health on A after the new slot died: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed =
        updater::history::History::new(updater::state::StateDir::under_root(&future.root()))
            .failed()
            .unwrap();
    assert!(
        failed.find(version).is_some(),
        "{what}: the new slot booted and never came up, but {version} is not recorded as failed"
    );
    true
}

/// Sweeps every crash point of `args` run on a device prepared by `prepare`; `finish` checks
/// the result of the rerun; `after_crash` checks more invariants on the crashed device.
pub(crate) fn sweep(
    name: &str,
    booted: &str,
    image: &[u8],
    args: impl Fn(&Device) -> Vec<String>,
    prepare: impl Fn(&Device),
    finish: impl Fn(&Device),
    after_crash: impl Fn(&Device, &str),
) -> usize {
    let probe = Device::new();
    prepare(&probe);
    let (out, total) = run(&probe, booted, &args(&probe), 0);
    assert!(
        out.status.success(),
        "{name}: the uncrashed run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    finish(&probe);
    assert!(
        total > 3,
        "{name}: only {total} operations seen: is the shim loaded?"
    );
    for n in 1..=total {
        let dev = Device::new();
        prepare(&dev);
        let a_image = dev.slot_bytes(&SlotId::A);
        let (out, _) = run(&dev, booted, &args(&dev), n);
        assert!(
            killed(&out),
            "{name}: crash point {n}/{total} did not crash: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        check_after_crash(
            &dev,
            &format!("{name}, crash before op {n}/{total}"),
            &a_image,
            &[image],
        );
        after_crash(&dev, &format!("{name}, crash before op {n}/{total}"));
        let (out, _) = run(&dev, booted, &args(&dev), 0);
        assert!(
            out.status.success(),
            "{name}: rerun after crash {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        finish(&dev);
    }
    eprintln!("crashpoints: {name}: {total} crash points swept");
    total
}

fn payload(dev: &Device) -> String {
    dev.payload("p", &util::good_parts().assemble(&[util::test_key()]))
        .to_str()
        .unwrap()
        .to_string()
}

/// 32 chunks of 4 KiB: with a checkpoint every 16 KiB, every phase of an install has crash
/// points (prelude, chunk writes, checkpoints, read-back, mark-bad, flip, state).
fn big_image() -> Vec<u8> {
    util::image_bytes(32 * 4096, 5)
}

#[test]
fn install_and_flip_survive_a_crash_at_every_write_and_flush() {
    let image = big_image();
    let checked = std::sync::atomic::AtomicUsize::new(0);
    let n = sweep(
        "install",
        "A",
        &image,
        |dev| {
            vec![
                "install".into(),
                "--checkpoint-bytes".into(),
                "16384".into(),
                dev.path("big").to_str().unwrap().to_string(),
            ]
        },
        |dev| {
            dev.payload(
                "big",
                &util::parts(&big_image(), "2.0").assemble(&[util::test_key()]),
            );
        },
        |dev| {
            let image = big_image();
            assert!(
                dev.slot_bytes(&SlotId::B)[..image.len()] == image[..],
                "slot B does not hold the image"
            );
            assert_eq!(dev.slot(&SlotId::B).attrs.tries, 1);
        },
        |dev, what| {
            if check_never_came_up_is_recorded(dev, what, "2.0") {
                checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        },
    );
    assert!(n > 40, "{n} crash points");
    let bootable = checked.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("crashpoints: install: {bootable} crash points left slot B bootable; each recorded 2.0 as failed when B never came up");
    assert!(bootable > 0, "no crash point reached the flip");
}

/// What the reboot does after an install: GRUB boots B and uses its one try.
fn booted_into_new_slot(dev: &Device) {
    let p = payload(dev);
    let (out, _) = run(dev, "A", &["install", p.as_str()], 0);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    SlotDisk::open(&dev.disk(), true, None)
        .unwrap()
        .select(true)
        .unwrap();
    dev.write_root_file(
        "usr/lib/os-release",
        "IMAGE_ID=testbox\nIMAGE_VERSION=2.0\n",
    );
}

#[test]
fn commit_survives_a_crash_at_every_write_and_flush() {
    let checked = std::sync::atomic::AtomicUsize::new(0);
    sweep(
        "commit (updater health)",
        "B",
        &util::good_image(),
        |_| vec!["health".into(), "--no-reboot".into()],
        booted_into_new_slot,
        |dev| {
            let b = dev.slot(&SlotId::B).attrs;
            assert!(b.successful && b.tries == 0, "B not committed: {b}");
        },
        // A commit cut before it was durable: B never came up, and A must record it.
        |dev, what| {
            if check_never_came_up_is_recorded(dev, what, "2.0") {
                checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        },
    );
    let n = checked.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("crashpoints: commit: {n} crash points left slot B uncommitted; each recorded 2.0 as failed");
    assert!(n > 0, "no crash point came before the commit was durable");
}

#[test]
fn rollback_survives_a_crash_at_every_write_and_flush() {
    sweep(
        "rollback",
        "B",
        &util::good_image(),
        |_| vec!["rollback".into(), "--no-reboot".into()],
        |dev| {
            booted_into_new_slot(dev);
            let (out, _) = run(dev, "B", &["health", "--no-reboot"], 0);
            assert!(out.status.success());
        },
        |dev| {
            let mut d = SlotDisk::open(&dev.disk(), false, None).unwrap();
            assert_eq!(d.select(false).unwrap().unwrap().slot.label, "USR-A");
        },
        |_, _| {},
    );
}
