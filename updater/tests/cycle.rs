//! The whole cycle on a host through the `updater` binary: install, a GRUB boot (bootctl's
//! rule), health checks, commit or roll back, status, and a failed version never installed again.
use crate::util::{check, grub_boots, ok, on, payload, stdout, Device};
use bootctl::SlotId;
use updater::history::{FailedVersion, History};
use updater::state::StateDir;

#[test]
fn install_reboot_healthy_commit_keeps_the_old_slot_as_fallback() {
    let dev = Device::new();
    ok(on(&dev, "A", "1.0", &["install", &payload(&dev, "2.0")]));
    assert_eq!(grub_boots(&dev), "B");
    check(&dev, "10-ok", "exit 0");
    let out = ok(on(&dev, "B", "2.0", &["health", "--no-reboot"]));
    assert!(out.contains("slot B (version 2.0) committed"), "{out}");
    let st: serde_json::Value =
        serde_json::from_str(&ok(on(&dev, "B", "2.0", &["status", "--json"]))).unwrap();
    assert_eq!(
        (st["booted"].as_str(), st["next"].as_str()),
        (Some("B"), Some("B"))
    );
    let a = &st["slots"][0];
    let b = &st["slots"][1];
    assert_eq!(
        (a["priority"].as_u64(), a["successful"].as_bool()),
        (Some(1), Some(true)),
        "A stays the fallback: {st}"
    );
    assert_eq!(
        (
            b["priority"].as_u64(),
            b["tries"].as_u64(),
            b["successful"].as_bool()
        ),
        (Some(2), Some(0), Some(true))
    );
    assert_eq!(st["pending"], serde_json::Value::Null);
}

#[test]
fn failing_check_rolls_back_and_the_version_is_never_installed_again() {
    let dev = Device::new();
    ok(on(&dev, "A", "1.0", &["install", &payload(&dev, "3.0")]));
    grub_boots(&dev);
    check(&dev, "20-app", "echo 'app did not answer on :8080'; exit 2");
    let out = on(&dev, "B", "3.0", &["health", "--no-reboot"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("health check 20-app failed (exit 2)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(grub_boots(&dev), "A");

    let status = ok(on(&dev, "A", "1.0", &["status"]));
    assert!(
        status.contains("failed: version 3.0 (slot B): health check 20-app failed (exit 2)"),
        "{status}"
    );
    assert!(status.contains("| app did not answer on :8080"), "{status}");

    let b_before = dev.slot_bytes(&SlotId::B);
    let out = on(&dev, "A", "1.0", &["install", &payload(&dev, "3.0")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("version 3.0 failed before and is not installed again: health check 20-app failed (exit 2) (use --allow-failed)"), "{err}");
    assert_eq!(
        dev.slot_bytes(&SlotId::B),
        b_before,
        "refused before the first write"
    );

    ok(on(&dev, "A", "1.0", &["install", &payload(&dev, "3.1")]));
    assert_eq!(grub_boots(&dev), "B", "a newer version installs");
}

#[test]
fn allow_failed_installs_a_failed_version_on_request() {
    let dev = Device::new();
    History::new(StateDir::under_root(&dev.root()))
        .record_failed(FailedVersion {
            version: "2.0".into(),
            reason: "r".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        on(&dev, "A", "1.0", &["install", &payload(&dev, "2.0")])
            .status
            .code(),
        Some(1)
    );
    ok(on(
        &dev,
        "A",
        "1.0",
        &["install", "--allow-failed", &payload(&dev, "2.0")],
    ));
}

#[test]
fn configured_tries_are_the_default_for_installs() {
    let dev = Device::new();
    dev.write_root_file(
        "etc/updater/config.d/50-tries.toml",
        "[install]\ntries = 3\n",
    );
    ok(on(&dev, "A", "1.0", &["install", &payload(&dev, "2.0")]));
    assert_eq!(dev.slot(&SlotId::B).attrs.tries, 3);
}

#[test]
fn an_install_that_never_came_up_is_recorded_by_the_old_slot() {
    let dev = Device::new();
    ok(on(&dev, "A", "1.0", &["install", &payload(&dev, "4.0")]));
    assert_eq!(grub_boots(&dev), "B"); // panics before health runs
    assert_eq!(grub_boots(&dev), "A");
    let out = ok(on(&dev, "A", "1.0", &["health", "--no-reboot"]));
    assert!(
        out.contains("version 4.0 recorded as failed: never came up"),
        "{out}"
    );
    let err = on(&dev, "A", "1.0", &["install", &payload(&dev, "4.0")]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("version 4.0 failed before"));
}

#[test]
fn reboot_strategy_off_writes_reboot_required() {
    let dev = Device::new();
    ok(on(&dev, "A", "1.0", &["install", &payload(&dev, "2.0")]));
    grub_boots(&dev);
    check(&dev, "10-bad", "exit 1");
    let out = on(&dev, "B", "2.0", &["health"]);
    assert!(stdout(&out).contains("reboot required"), "{}", stdout(&out));
    assert!(dev.root().join("run/reboot-required").exists());
}

#[test]
fn manual_rollback_to_the_committed_fallback_and_back() {
    let dev = Device::new();
    ok(on(&dev, "A", "1.0", &["install", &payload(&dev, "2.0")]));
    grub_boots(&dev);
    ok(on(&dev, "B", "2.0", &["health", "--no-reboot"]));
    assert!(ok(on(&dev, "B", "2.0", &["rollback", "--no-reboot"])).contains("slot A boots next"));
    assert_eq!(grub_boots(&dev), "A");
    assert!(ok(on(&dev, "A", "1.0", &["rollback", "--no-reboot"])).contains("slot B boots next"));
    assert_eq!(grub_boots(&dev), "B");
}

#[test]
fn help_documents_each_cycle_command_with_an_example() {
    for cmd in [
        "health",
        "status",
        "rollback",
        "mark-good",
        "mark-bad",
        "unblock",
        "check",
        "agent",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_updater"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(
            stdout(&out).contains(&format!("Example: updater {cmd}")),
            "{cmd}: {}",
            stdout(&out)
        );
    }
}
