//! bootctl, sgdisk and cgpt agree on every attribute bit, at 512- and 4096-byte sectors.
use crate::util::*;

#[test]
fn bootctl_writes_are_read_back_identically_by_sgdisk_and_cgpt() {
    for ss in sector_sizes() {
        let d = sgdisk_layout(ss);
        let dev = d.dev().to_str().unwrap();
        bootctl_ok(&["set-next", dev, "B", "--tries", "3"]);
        assert_eq!(sgdisk_attributes(&d, 4), 0x0032_0000_0000_0000, "{ss}");
        assert_eq!(cgpt_pts(&d, 4), (2, 3, false));
        assert_eq!(cgpt_pts(&d, 3), (1, 0, true));
        assert_sgdisk_clean(&d);

        bootctl_ok(&["select", dev, "--boot"]);
        assert_eq!(cgpt_pts(&d, 4), (2, 2, false));
        assert_sgdisk_clean(&d);

        bootctl_ok(&["mark-good", dev, "B"]);
        assert_eq!(sgdisk_attributes(&d, 4), 0x0102_0000_0000_0000);
        assert_eq!(cgpt_pts(&d, 4), (2, 0, true));
        assert_sgdisk_clean(&d);

        bootctl_ok(&["mark-bad", dev, "3"]);
        assert_eq!(sgdisk_attributes(&d, 3), 0);
        assert_eq!(cgpt_pts(&d, 3), (0, 0, false));
        assert_sgdisk_clean(&d);
    }
}

#[test]
fn cgpt_writes_are_read_back_identically_by_bootctl() {
    for ss in sector_sizes() {
        let d = sgdisk_layout(ss);
        let dev = d.dev().to_str().unwrap();
        run_str(
            "cgpt",
            &["add", "-i", "4", "-P", "5", "-T", "7", "-S", "0", dev],
        );
        assert_eq!(bootctl_pts(&d, 4), (5, 7, false), "{ss}");
        assert_eq!(bootctl_pts(&d, 3), (1, 0, true));
        let v = show_json(&d);
        assert_eq!(v["next"], 4);
        assert_eq!(v["sector_size"], ss);
        assert_eq!(v["primary"]["valid"], true);
        assert_eq!(v["backup"]["valid"], true);
    }
}

#[test]
fn sgdisk_attribute_bits_outside_the_slot_fields_survive_bootctl_writes() {
    for ss in sector_sizes() {
        let d = sgdisk_layout(ss);
        let dev = d.dev().to_str().unwrap();
        // Bit 0 (required), 60 (read-only), 63 (no automount): not ours, must be kept.
        run_str(
            "sgdisk",
            &["-A", "4:set:0", "-A", "4:set:60", "-A", "4:set:63", dev],
        );
        bootctl_ok(&["set-next", dev, "B", "--tries", "1"]);
        assert_eq!(sgdisk_attributes(&d, 4), 0x9012_0000_0000_0001, "{ss}");
        bootctl_ok(&["mark-bad", dev, "B"]);
        assert_eq!(sgdisk_attributes(&d, 4), 0x9000_0000_0000_0001);
        assert_sgdisk_clean(&d);
    }
}

#[test]
fn names_guids_and_other_partitions_are_untouched_by_bootctl_writes() {
    for ss in sector_sizes() {
        let d = sgdisk_layout(ss);
        let dev = d.dev().to_str().unwrap();
        let before: Vec<String> = [1, 2, 3, 4, 6, 9]
            .iter()
            .map(|n| run_str("sgdisk", &["-i", &n.to_string(), dev]))
            .collect();
        bootctl_ok(&["set-next", dev, "B", "--tries", "2"]);
        bootctl_ok(&["mark-bad", dev, "B"]);
        let after: Vec<String> = [1, 2, 3, 4, 6, 9]
            .iter()
            .map(|n| run_str("sgdisk", &["-i", &n.to_string(), dev]))
            .collect();
        assert_eq!(before, after, "{ss}");
    }
}

#[test]
fn an_operation_that_changes_nothing_writes_nothing() {
    let d = sgdisk_layout(512);
    let dev = d.dev().to_str().unwrap();
    let mtime = || std::fs::metadata(&d.file).unwrap().modified().unwrap();
    let before = (d.bytes(), mtime());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = bootctl_ok(&["mark-good", dev, "A"]);
    assert!(out.contains("nothing written"), "{out}");
    bootctl_ok(&["mark-bad", dev, "B"]);
    bootctl_ok(&["select", dev, "--boot"]); // A has tries 0: nothing to decrement
    assert_eq!((d.bytes(), mtime()), before);
}

#[test]
fn block_device_and_file_views_of_a_4096_disk_agree() {
    if !loop_available() {
        return;
    }
    let d = sgdisk_layout(4096);
    bootctl_ok(&["set-next", d.file.to_str().unwrap(), "B", "--tries", "4"]);
    assert_eq!(cgpt_pts(&d, 4), (2, 4, false));
    let v: serde_json::Value =
        serde_json::from_str(&bootctl_ok(&["show", d.file.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(v["sector_size"], 4096);
}
