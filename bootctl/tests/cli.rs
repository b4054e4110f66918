//! Bad input gives one clear line on stderr, a non-zero exit, and an unchanged disk.
use crate::util::*;

fn fails_with(args: &[&str], code: i32, needle: &str) {
    let out = bootctl(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "bootctl {args:?}: {err}");
    if code != 2 {
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
    assert!(
        err.contains(needle),
        "bootctl {args:?}: expected {needle:?} in {err}"
    );
}

#[test]
fn rejects_a_disk_without_gpt() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("zero.img");
    std::fs::write(&f, vec![0u8; 1 << 20]).unwrap();
    fails_with(&["show", f.to_str().unwrap()], 1, "not a GPT disk");
    fails_with(&["set-next", f.to_str().unwrap(), "B"], 1, "not a GPT disk");
}

#[test]
fn rejects_a_disk_whose_both_copies_are_invalid() {
    let d = sgdisk_layout(512);
    d.flip(512 + 40);
    d.flip(d.len() - 512 + 40);
    let before = d.bytes();
    fails_with(
        &["show", d.file.to_str().unwrap()],
        1,
        "both GPT copies are invalid",
    );
    fails_with(
        &["repair", d.file.to_str().unwrap()],
        1,
        "both GPT copies are invalid",
    );
    assert_eq!(d.bytes(), before);
}

#[test]
fn rejects_a_disk_without_usr_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("plain.img");
    std::fs::File::create(&f).unwrap().set_len(8 << 20).unwrap();
    run_str("sgdisk", &["-o", "-n", "1:0:0", f.to_str().unwrap()]);
    fails_with(
        &["set-next", f.to_str().unwrap(), "A"],
        1,
        "no usr partitions",
    );
    fails_with(&["select", f.to_str().unwrap()], 1, "no usr partitions");
}

#[test]
fn rejects_a_slot_that_does_not_exist_or_is_not_usr() {
    let d = sgdisk_layout(512);
    let dev = d.file.to_str().unwrap();
    let before = d.bytes();
    fails_with(
        &["mark-good", dev, "7"],
        1,
        "slot 7 not found: no partition 7",
    );
    fails_with(
        &["mark-bad", dev, "9"],
        1,
        "partition 9 is not a usr partition",
    );
    fails_with(&["mark-bad", dev, "C"], 2, "is not a slot");
    assert_eq!(d.bytes(), before);
}

#[test]
fn rejects_tries_out_of_range() {
    let d = sgdisk_layout(512);
    let dev = d.file.to_str().unwrap();
    let before = d.bytes();
    fails_with(
        &["set-next", dev, "B", "--tries", "0"],
        1,
        "tries 0 out of range",
    );
    fails_with(
        &["set-next", dev, "B", "--tries", "16"],
        1,
        "tries 16 out of range",
    );
    assert_eq!(d.bytes(), before);
}

#[test]
fn rejects_a_read_only_file() {
    use std::os::unix::fs::PermissionsExt;
    let d = sgdisk_layout(512);
    std::fs::set_permissions(&d.file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = d.bytes();
    fails_with(
        &["set-next", d.file.to_str().unwrap(), "B"],
        1,
        "is read-only",
    );
    assert_eq!(d.bytes(), before);
    bootctl_ok(&["show", d.file.to_str().unwrap()]);
}

#[test]
fn rejects_a_sector_size_that_does_not_match_the_gpt() {
    let d = sgdisk_layout(512);
    fails_with(
        &["show", d.file.to_str().unwrap(), "--sector-size", "4096"],
        1,
        "GPT is laid out for 512-byte sectors but the device uses 4096-byte",
    );
    fails_with(
        &["show", d.file.to_str().unwrap(), "--sector-size", "1024"],
        1,
        "unsupported sector size 1024",
    );
}

#[test]
fn select_reports_no_bootable_slot_with_exit_3() {
    let d = sgdisk_layout(512);
    let dev = d.file.to_str().unwrap();
    bootctl_ok(&["mark-bad", dev, "A"]);
    fails_with(&["select", dev], 3, "no bootable slot");
    let out = bootctl(&["select", dev, "--json"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["number"],
        serde_json::Value::Null
    );
}

#[test]
fn select_json_shows_before_and_after_of_a_boot() {
    let d = sgdisk_layout(512);
    let dev = d.file.to_str().unwrap();
    bootctl_ok(&["set-next", dev, "B", "--tries", "2"]);
    let v: serde_json::Value =
        serde_json::from_str(&bootctl_ok(&["select", dev, "--boot", "--json"])).unwrap();
    assert_eq!(v["number"], 4);
    assert_eq!(v["label"], "USR-B");
    assert_eq!(v["before"]["tries"], 2);
    assert_eq!(v["after"]["tries"], 1);
    assert_eq!(v["wrote"], true);
}

#[test]
fn help_documents_every_verb_with_an_example() {
    for verb in [
        "show",
        "set-next",
        "mark-good",
        "mark-bad",
        "select",
        "repair",
    ] {
        let help = bootctl_ok(&[verb, "--help"]);
        assert!(
            help.contains(&format!("Example: bootctl {verb}")),
            "{verb}: {help}"
        );
    }
    let top = bootctl_ok(&["--help"]);
    assert!(top.contains("Exit status"), "{top}");
}
