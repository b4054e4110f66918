//! Issue 14, defect 2 (the bootctl part): every write re-reads both GPT copies and changes only
//! the bits it means to. Two `SlotDisk` handles on one disk file stand for two processes (an
//! updater that opened the disk before a long download, and `updater health` committing the
//! booted slot meanwhile): what one writes, the other must not undo.
use bootctl::{gpt, layout, SlotAttrs, SlotDisk, SlotId};
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A disk file in the standard layout, booted into a trial of B: A P1 T0 S1, B P2 T0 S0.
fn trial_of_b() -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, layout::mem_disk(512).bytes).unwrap();
    let mut d = SlotDisk::open(&path, true, None).unwrap();
    d.set_next(&SlotId::B, 1).unwrap();
    d.select(true).unwrap();
    (dir, path)
}

fn attrs(path: &Path, id: &SlotId) -> SlotAttrs {
    SlotDisk::open(path, false, None)
        .unwrap()
        .slot(id)
        .unwrap()
        .attrs
}

const COMMITTED_B: SlotAttrs = SlotAttrs {
    priority: 2,
    tries: 0,
    successful: true,
};

type Op = fn(&mut SlotDisk) -> bootctl::Result<bool>;

/// Operations on A that leave B's bits alone, with what they make of A (from P1 T0 S1).
const OPS_ON_A: [(&str, Op, SlotAttrs); 4] = [
    (
        "set-next A",
        |d| d.set_next(&SlotId::A, 1),
        SlotAttrs {
            priority: 3,
            tries: 1,
            successful: false,
        },
    ),
    (
        "prioritize A",
        |d| d.prioritize(&SlotId::A),
        SlotAttrs {
            priority: 3,
            tries: 0,
            successful: true,
        },
    ),
    (
        "mark-good A",
        |d| d.mark_good(&SlotId::A),
        SlotAttrs {
            priority: 1,
            tries: 0,
            successful: true,
        },
    ),
    (
        "mark-bad A",
        |d| d.mark_bad(&SlotId::A),
        SlotAttrs {
            priority: 0,
            tries: 0,
            successful: false,
        },
    ),
];

#[test]
fn an_operation_through_a_stale_handle_keeps_a_commit_made_through_another() {
    for (name, op, a_after) in OPS_ON_A {
        let (_dir, path) = trial_of_b();
        let mut stale = SlotDisk::open(&path, true, None).unwrap();
        SlotDisk::open(&path, true, None)
            .unwrap()
            .mark_good(&SlotId::B)
            .unwrap();
        op(&mut stale).unwrap();
        assert_eq!(
            attrs(&path, &SlotId::B),
            COMMITTED_B,
            "{name} undid the commit"
        );
        assert_eq!(attrs(&path, &SlotId::A), a_after, "{name}");
        assert_eq!(
            stale.slot(&SlotId::B).unwrap().attrs,
            COMMITTED_B,
            "{name}: the handle shows what is on disk"
        );
    }
}

#[test]
fn repair_through_a_stale_handle_keeps_a_commit_made_through_another() {
    let (_dir, path) = trial_of_b();
    {
        // Damage the primary header: the stale handle sees something to repair.
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff], 512 + 40).unwrap();
    }
    let mut stale = SlotDisk::open(&path, true, None).unwrap();
    assert!(stale.state().primary.is_err());
    // The commit rewrites both copies, repairing the primary on the way.
    SlotDisk::open(&path, true, None)
        .unwrap()
        .mark_good(&SlotId::B)
        .unwrap();
    let report = stale.repair().unwrap();
    assert_eq!(
        report.problems,
        Vec::<String>::new(),
        "nothing left to repair"
    );
    assert!(!report.wrote);
    assert_eq!(attrs(&path, &SlotId::B), COMMITTED_B);
}

#[test]
fn an_operation_through_a_stale_handle_keeps_other_bits_set_meanwhile() {
    let (_dir, path) = trial_of_b();
    let mut stale = SlotDisk::open(&path, true, None).unwrap();
    // Another tool sets bit 60 of USR-A and bit 0 (platform required) of the ESP.
    let mut f = bootctl::storage::FileDisk::open(&path, true).unwrap();
    let mut table = gpt::read(&mut f, None).unwrap().gpt;
    let a_bits = table.entry(3).attributes | 1 << 60;
    table.set_attributes(3, a_bits);
    table.set_attributes(1, 1);
    gpt::write(&mut f, &table).unwrap();

    stale.mark_bad(&SlotId::B).unwrap();
    let after = gpt::read(&mut f, None).unwrap().gpt;
    assert_eq!(after.entry(3).attributes, a_bits);
    assert_eq!(after.entry(1).attributes, 1);
    assert_eq!(
        SlotAttrs::decode(after.entry(4).attributes),
        SlotAttrs::default()
    );
}
