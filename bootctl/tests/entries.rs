//! Issue 14, defect 9: a GPT whose CRCs are valid but whose entries are not (here USR-B
//! overlapping USR-A, the case that made `install` write the booted slot) is shown, and every
//! slot operation on it is refused with one line naming both partitions and their LBAs.
use crate::util::*;
use bootctl::storage::{FileDisk, MemDisk};
use bootctl::{gpt, layout, SlotDisk, SlotId};

/// The standard layout with USR-B moved to start on USR-A's last sector, both copies rewritten
/// with valid CRCs. Returns the disk and the error every slot operation must give.
fn usr_b_over_usr_a(ss: u32) -> (MemDisk, String) {
    let mut disk = layout::mem_disk(ss);
    let mut table = gpt::read(&mut disk, None).unwrap().gpt;
    let a = table.entry(3);
    let mut b = table.entry(4);
    b.first_lba = a.last_lba;
    table.set_entry(4, &b);
    gpt::write(&mut disk, &table).unwrap();
    let expected = format!(
        "refusing to use the slots: the primary GPT's partition entries are invalid: \
         partition 4 \"USR-B\" (LBAs {}..={}) overlaps partition 3 \"USR-A\" (LBAs {}..={})",
        b.first_lba, b.last_lba, a.first_lba, a.last_lba
    );
    (disk, expected)
}

type Op = fn(&mut SlotDisk<MemDisk>) -> Result<(), bootctl::Error>;

/// Every operation that resolves or changes a slot.
const OPS: [(&str, Op); 8] = [
    ("set-next", |d| d.set_next(&SlotId::B, 1).map(drop)),
    ("prioritize", |d| d.prioritize(&SlotId::B).map(drop)),
    ("mark-good", |d| d.mark_good(&SlotId::A).map(drop)),
    ("mark-bad", |d| d.mark_bad(&SlotId::B).map(drop)),
    ("select", |d| d.select(false).map(drop)),
    ("select --boot", |d| d.select(true).map(drop)),
    ("slot", |d| d.slot(&SlotId::B).map(drop)),
    ("other", |d| d.other(&SlotId::A).map(drop)),
];

#[test]
fn slot_operations_work_on_the_standard_layout() {
    for (name, op) in OPS {
        let mut d = SlotDisk::from_storage(layout::mem_disk(512), None).unwrap();
        op(&mut d).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn slot_operations_refuse_a_usr_b_that_overlaps_usr_a_and_write_nothing() {
    for ss in [512, 4096] {
        let (disk, expected) = usr_b_over_usr_a(ss);
        for (name, op) in OPS {
            let mut d = SlotDisk::from_storage(disk.clone(), None).unwrap();
            let err = op(&mut d).expect_err(name);
            assert_eq!(err.to_string(), expected, "{name}/{ss}");
            assert!(d.into_storage() == disk, "{name}/{ss} wrote");
        }
    }
}

#[test]
fn repair_refuses_a_table_whose_entries_overlap() {
    let (disk, expected) = usr_b_over_usr_a(512);
    let mut d = SlotDisk::from_storage(disk.clone(), None).unwrap();
    assert_eq!(d.repair().unwrap_err().to_string(), expected);
    assert!(d.into_storage() == disk);
}

#[test]
fn an_overlap_in_the_primary_alone_is_refused_not_replaced_by_the_backup() {
    // The kernel and GRUB use a CRC-valid primary whatever its entries say, so bootctl must
    // not take the slots from the backup, nor let repair copy either table over the other.
    let good = layout::mem_disk(512);
    let (mut disk, expected) = usr_b_over_usr_a(512);
    let primary_end = 34 * 512; // MBR, header, 32 sectors of entries
    disk.bytes[primary_end..].copy_from_slice(&good.bytes[primary_end..]);
    let state = gpt::read(&mut disk.clone(), None).unwrap();
    assert!(state.primary.is_ok() && state.backup.is_ok() && !state.copies_match);

    let mut d = SlotDisk::from_storage(disk.clone(), None).unwrap();
    assert_eq!(d.set_next(&SlotId::B, 1).unwrap_err().to_string(), expected);
    assert_eq!(d.repair().unwrap_err().to_string(), expected);
    assert!(d.into_storage() == disk, "the good backup is kept");
}

#[test]
fn a_bad_backup_table_is_refused_when_the_primary_is_damaged() {
    let (mut disk, expected) = usr_b_over_usr_a(512);
    disk.bytes[512 + 40] ^= 1; // primary header CRC: the backup's table is the one in use
    let mut d = SlotDisk::from_storage(disk, None).unwrap();
    assert_eq!(
        d.mark_bad(&SlotId::B).unwrap_err().to_string(),
        expected.replace("the primary GPT's", "the backup GPT's")
    );
}

#[test]
fn cli_shows_the_overlap_and_refuses_to_change_slots() {
    let (disk, expected) = usr_b_over_usr_a(512);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("overlap.img");
    std::fs::write(&f, &disk.bytes).unwrap();
    let path = f.to_str().unwrap();

    let show = bootctl_ok(&["show", path]);
    let problem = expected.split("invalid: ").nth(1).unwrap();
    assert!(
        show.contains(&format!("partition entries INVALID ({problem})")),
        "{show}"
    );
    assert!(
        show.contains("next boot: unknown (invalid entries)"),
        "{show}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&bootctl_ok(&["show", path, "--json"])).unwrap();
    assert_eq!(
        json["entries"],
        serde_json::json!({"valid": false, "error": problem})
    );

    for args in [
        vec!["set-next", path, "B"],
        vec!["mark-good", path, "A"],
        vec!["mark-bad", path, "B"],
        vec!["repair", path],
        vec!["select", path, "--boot"],
    ] {
        let out = bootctl(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(&expected), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read(&f).unwrap(), disk.bytes, "nothing written");

    // The same disk through the file path of the library: the slots it would refuse are
    // still listed as the table says.
    let d = SlotDisk::from_storage(FileDisk::open(&f, false).unwrap(), None).unwrap();
    assert_eq!(d.slots().len(), 2);
}
