//! A damaged or grown disk still shows and selects, and `repair` makes `sgdisk -v` clean.
use crate::util::*;

/// Damages `d` in one way, checks show/select still work and name the problem, repairs.
fn damaged_then_repaired(ss: u32, damage: impl Fn(&TestDisk), problem: &str) {
    let d = sgdisk_layout(ss);
    let dev = d.dev().to_str().unwrap().to_string();
    bootctl_ok(&["set-next", &dev, "B", "--tries", "2"]);
    damage(&d);
    let show = bootctl_ok(&["show", &dev]);
    assert!(
        show.contains(problem),
        "{ss}: expected {problem:?} in\n{show}"
    );
    assert!(show.contains("needs repair"), "{show}");
    assert_eq!(
        bootctl_ok(&["select", &dev]).split_whitespace().next(),
        Some("4"),
        "{ss}: {show}"
    );
    assert_eq!(bootctl_pts(&d, 4), (2, 2, false));

    let out = bootctl_ok(&["repair", &dev]);
    assert!(out.contains("repaired:"), "{out}");
    assert_sgdisk_clean(&d);
    let v = show_json(&d);
    assert_eq!(
        (
            v["primary"]["valid"].clone(),
            v["backup"]["valid"].clone(),
            v["copies_match"].clone(),
            v["backup_at_end"].clone()
        ),
        (true.into(), true.into(), true.into(), true.into()),
        "{v}"
    );
    assert_eq!(bootctl_pts(&d, 4), (2, 2, false));
    assert!(
        bootctl_ok(&["repair", &dev]).contains("nothing written"),
        "a second repair has nothing to do"
    );
}

#[test]
fn corrupted_primary_header_is_repaired_from_the_backup() {
    for ss in sector_sizes() {
        damaged_then_repaired(
            ss,
            |d| d.flip(u64::from(ss) + 48),
            "primary GPT INVALID (header CRC",
        );
    }
}

#[test]
fn zeroed_primary_header_is_repaired_from_the_backup() {
    for ss in sector_sizes() {
        damaged_then_repaired(
            ss,
            |d| {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&d.file)
                    .unwrap();
                f.write_all_at(&vec![0; ss as usize], u64::from(ss))
                    .unwrap();
            },
            "primary GPT INVALID (no GPT signature",
        );
    }
}

#[test]
fn corrupted_primary_entries_are_repaired_from_the_backup() {
    for ss in sector_sizes() {
        // Entry 4's name, in the primary array at LBA 2.
        damaged_then_repaired(
            ss,
            |d| d.flip(2 * u64::from(ss) + 3 * 128 + 60),
            "primary GPT INVALID (entry array CRC",
        );
    }
}

#[test]
fn corrupted_backup_header_is_repaired_from_the_primary() {
    for ss in sector_sizes() {
        damaged_then_repaired(
            ss,
            |d| d.flip(d.len() - u64::from(ss) + 48),
            "backup GPT INVALID (header CRC",
        );
    }
}

#[test]
fn corrupted_backup_entries_are_repaired_from_the_primary() {
    for ss in sector_sizes() {
        // The backup array ends right before the backup header; entry 4 is near its start.
        let array = 128 * 128u64;
        damaged_then_repaired(
            ss,
            move |d| {
                d.flip(
                    d.len() - u64::from(ss) - array.div_ceil(u64::from(ss)) * u64::from(ss)
                        + 3 * 128
                        + 60,
                )
            },
            "backup GPT INVALID (entry array CRC",
        );
    }
}

#[test]
fn backup_moves_to_the_end_of_a_disk_grown_by_1_gib() {
    for ss in sector_sizes() {
        damaged_then_repaired(ss, |d| d.grow(1 << 30), "needs repair");
        let d = sgdisk_layout(ss);
        d.grow(1 << 30);
        let v = show_json(&d);
        assert_eq!(v["backup_at_end"], false);
        bootctl_ok(&["repair", d.dev().to_str().unwrap()]);
        assert_sgdisk_clean(&d);
        let v = show_json(&d);
        assert_eq!(v["disk_sectors"].as_u64().unwrap(), d.len() / u64::from(ss));
        assert_eq!(v["backup_at_end"], true);
    }
}
