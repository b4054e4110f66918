//! Health checks through the `updater` binary (issue 14 defects 6 and 7): the time limits are
//! absolute and a check's daemons die with it; an unusable check fails the slot.
use crate::util::{self, Device};
use bootctl::SlotDisk;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Installs version 2.0 from slot A and lets GRUB boot it in slot B, uncommitted.
fn booted_uncommitted_b() -> Device {
    let dev = Device::new();
    let p = dev.payload(
        "2.0",
        &util::parts(&util::good_image(), "2.0").assemble(&[util::test_key()]),
    );
    let out = dev.updater(&["install", p.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(grub_boots(&dev), "B");
    dev.write_root_file(
        "usr/lib/os-release",
        "IMAGE_ID=testbox\nIMAGE_VERSION=2.0\n",
    );
    dev
}

/// What GRUB does at the reboot: apply the rule with its tries decrement.
fn grub_boots(dev: &Device) -> String {
    let sel = SlotDisk::open(&dev.disk(), true, None)
        .unwrap()
        .select(true)
        .unwrap()
        .unwrap();
    sel.slot.label.trim_start_matches("USR-").to_string()
}

fn check(dev: &Device, rel: &str, body: &str, mode: u32) {
    dev.write_root_file(rel, &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(dev.root().join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `updater health --no-reboot` on slot B with `env`; kills it and fails the test if it
/// is still running after `limit`. Returns its exit code, its stdout and how long it took.
fn health_within(dev: &Device, env: &[(&str, &Path)], limit: Duration) -> (i32, String, Duration) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let t = Instant::now();
    let mut child = dev
        .command("B")
        .args(["health", "--no-reboot"])
        .envs(env.iter().copied())
        .stdout(out.reopen().unwrap())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("updater health was still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t.elapsed();
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(out.path()).unwrap(),
        took,
    )
}

#[test]
fn a_check_whose_daemon_holds_its_output_rolls_back_at_its_timeout_and_the_daemon_dies() {
    let dev = booted_uncommitted_b();
    dev.write_root_file(
        "etc/updater/config.d/50-health.toml",
        "[health]\ncheck_timeout_secs = 2\ndeadline_secs = 60\n",
    );
    check(
        &dev,
        "etc/updater/health.d/10-hang",
        "setsid sh -c 'echo $$ > \"$PIDFILE\"; exec sleep 1000' &\n\
         while [ ! -s \"$PIDFILE\" ]; do sleep 0.05; done\n\
         echo waiting for the app; sleep 1000",
        0o755,
    );
    let pidfile = dev.path("daemon.pid");
    let (code, out, took) = health_within(&dev, &[("PIDFILE", &pidfile)], Duration::from_secs(30));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("health check 10-hang timed out after 2s"),
        "{out}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(
        !Path::new("/proc").join(pid.trim()).exists(),
        "the check's daemon outlived updater health"
    );
    assert_eq!(grub_boots(&dev), "A");
}

#[test]
fn a_non_executable_admin_file_over_a_vendor_check_rolls_back() {
    let dev = booted_uncommitted_b();
    check(&dev, "usr/lib/updater/health.d/10-app", "exit 0", 0o755);
    check(&dev, "etc/updater/health.d/10-app", "exit 0", 0o644);
    let (code, out, _) = health_within(&dev, &[], Duration::from_secs(30));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("health check 10-app refused: not executable (mode 0644)"),
        "{out}"
    );
    assert_eq!(grub_boots(&dev), "A");
}

#[test]
fn a_check_masked_by_a_symlink_to_dev_null_is_not_run() {
    let dev = booted_uncommitted_b();
    check(&dev, "usr/lib/updater/health.d/10-app", "exit 1", 0o755);
    std::fs::create_dir_all(dev.root().join("etc/updater/health.d")).unwrap();
    std::os::unix::fs::symlink("/dev/null", dev.root().join("etc/updater/health.d/10-app"))
        .unwrap();
    let (code, out, _) = health_within(&dev, &[], Duration::from_secs(30));
    assert_eq!(code, 0, "{out}");
    assert_eq!(grub_boots(&dev), "B");
}
