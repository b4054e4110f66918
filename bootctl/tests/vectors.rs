//! The select test vectors (`testdata/select-vectors.json`) shared with the GRUB module's tests:
//! every vector holds under the Rust rule on a real in-memory disk, and the file is exactly what
//! the generator below makes (`BOOTCTL_BLESS=1 cargo test -p bootctl vectors` rewrites it).
//!
//! Format: `{"vectors": [{"name", "entries": [{"index", "attributes"}], "choice", "after"}],
//! "damaged": [{"name", "damage": [{"at", "op", "byte"}], "entries", "choice", "after",
//! "written"}]}`. `entries` are the usr entries of a DESIGN §3 disk (partition numbers 3 and
//! 4), `attributes` the whole 64-bit field as `0x%016x`, `choice` the partition GRUB boots (or
//! null), `after` the entries once GRUB has applied its tries decrement.
//!
//! `damaged` vectors break one or both GPT copies before the boot (DESIGN §4, issue 14 defect
//! 11). Each edit of `damage` names a place, `at`: `primary header` (LBA 1), `backup header`
//! (the last LBA), `primary entries` or `backup entries` (the first sector of that entry
//! array), and an `op`: `zero` clears the whole sector, `flip` inverts the lowest bit of the
//! place's byte `byte`. `written` says whether the boot wrote to the disk; when it did, both
//! copies validate and agree afterwards, the backup at the end of the disk. With both copies
//! broken nothing is chosen and `after` repeats `entries`.
use bootctl::gpt::{self, Gpt};
use bootctl::storage::MemDisk;
use bootctl::{layout, SlotAttrs, SlotDisk};
use serde_json::{json, Value};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/select-vectors.json");

fn hex(v: u64) -> String {
    format!("{v:#018x}")
}

/// Runs GRUB's rule (with its decrement) on a disk whose usr entries have `attrs`.
fn boot(attrs: &[(u32, u64)]) -> (Option<u32>, Vec<(u32, u64)>) {
    let mut disk = layout::mem_disk(512);
    let mut table = bootctl::gpt::read(&mut disk, None).unwrap().gpt;
    for &(n, a) in attrs {
        table.set_attributes(n, a);
    }
    bootctl::gpt::write(&mut disk, &table).unwrap();
    let mut d = SlotDisk::from_storage(disk, None).unwrap();
    let choice = d.select(true).unwrap().map(|s| s.slot.number);
    (
        choice,
        d.slots().iter().map(|s| (s.number, s.attributes)).collect(),
    )
}

/// Where a damage edit lands: the first byte of a header sector or of an entry array.
fn place_offset(table: &Gpt, at: &str) -> u64 {
    let lba = match at {
        "primary header" => 1,
        "backup header" => table.backup_lba,
        "primary entries" => table.primary_entries_lba,
        "backup entries" => table.backup_entries_lba,
        other => panic!("unknown damage place {other:?}"),
    };
    lba * u64::from(table.sector_size)
}

/// Applies the edits of a `damage` list (see the module doc) to `disk`, laid out as `table`.
fn apply_damage(disk: &mut MemDisk, table: &Gpt, damage: &Value) {
    for edit in damage.as_array().expect("damage is a list") {
        let at = place_offset(table, edit["at"].as_str().expect("damage place")) as usize;
        match edit["op"].as_str() {
            Some("zero") => disk.bytes[at..at + table.sector_size as usize].fill(0),
            Some("flip") => disk.bytes[at + edit["byte"].as_u64().unwrap() as usize] ^= 1,
            other => panic!("unknown damage op {other:?}"),
        }
    }
}

/// The damage kinds of the `damaged` vectors: a name and its edits.
fn damage_kinds() -> Vec<(&'static str, Value)> {
    let edit = |at: &str, op: &str, byte: u64| json!({"at": at, "op": op, "byte": byte});
    let mut kinds = Vec::new();
    for copy in ["primary", "backup"] {
        let header = format!("{copy} header");
        let entries = format!("{copy} entries");
        kinds.extend([
            (
                if copy == "primary" {
                    "primary header zeroed"
                } else {
                    "backup header zeroed"
                },
                json!([edit(&header, "zero", 0)]),
            ),
            (
                if copy == "primary" {
                    "primary signature broken"
                } else {
                    "backup signature broken"
                },
                json!([edit(&header, "flip", 0)]),
            ),
            (
                if copy == "primary" {
                    "primary header CRC wrong"
                } else {
                    "backup header CRC wrong"
                },
                json!([edit(&header, "flip", 16)]),
            ),
            (
                // Byte 100 is in entry 1's name: only the entry array CRC breaks.
                if copy == "primary" {
                    "primary entries CRC wrong"
                } else {
                    "backup entries CRC wrong"
                },
                json!([edit(&entries, "flip", 100)]),
            ),
        ]);
    }
    kinds.extend([
        (
            "both headers zeroed",
            json!([
                edit("primary header", "zero", 0),
                edit("backup header", "zero", 0)
            ]),
        ),
        (
            "both header CRCs wrong",
            json!([
                edit("primary header", "flip", 16),
                edit("backup header", "flip", 16)
            ]),
        ),
    ]);
    kinds
}

/// What a boot did to a damaged disk.
struct DamagedBoot {
    choice: Option<u32>,
    after: Vec<(u32, u64)>,
    written: bool,
    disk: MemDisk,
}

/// A DESIGN §3 disk whose usr entries have `attrs`, and its table.
fn disk_with(attrs: &[(u32, u64)]) -> (MemDisk, Gpt) {
    let mut disk = layout::mem_disk(512);
    let mut table = gpt::read(&mut disk, None).unwrap().gpt;
    for &(n, a) in attrs {
        table.set_attributes(n, a);
    }
    gpt::write(&mut disk, &table).unwrap();
    (disk, table)
}

/// Runs GRUB's rule (with its decrement) on a disk whose usr entries have `attrs` and whose
/// GPT copies were then damaged by `damage`.
fn boot_damaged(attrs: &[(u32, u64)], damage: &Value) -> DamagedBoot {
    let (disk, table) = disk_with(attrs);
    boot_damaged_disk(disk, &table, attrs, damage)
}

/// [`boot_damaged`] on a given disk laid out as `table`, its usr entries at `attrs`.
fn boot_damaged_disk(
    mut disk: MemDisk,
    table: &Gpt,
    attrs: &[(u32, u64)],
    damage: &Value,
) -> DamagedBoot {
    apply_damage(&mut disk, table, damage);
    let before = disk.bytes.clone();
    let mut d = match SlotDisk::from_storage(disk.clone(), None) {
        Ok(d) => d,
        // No signature anywhere, or two invalid copies: nothing to choose from.
        Err(bootctl::Error::NotGpt { .. } | bootctl::Error::BothCopiesInvalid { .. }) => {
            return DamagedBoot {
                choice: None,
                after: attrs.to_vec(),
                written: false,
                disk,
            }
        }
        Err(e) => panic!("reading the damaged disk: {e}"),
    };
    let choice = d.select(true).unwrap().map(|s| s.slot.number);
    let after = d.slots().iter().map(|s| (s.number, s.attributes)).collect();
    let disk = d.into_storage();
    DamagedBoot {
        choice,
        after,
        written: disk.bytes != before,
        disk,
    }
}

fn attrs_name(a: u64) -> String {
    let other = if a & !bootctl::attrs::SLOT_MASK != 0 {
        " +other bits"
    } else {
        ""
    };
    format!("{}{other}", SlotAttrs::decode(a))
}

fn entries_json(entries: &[(u32, u64)]) -> Vec<Value> {
    entries
        .iter()
        .map(|&(n, v)| json!({"index": n, "attributes": hex(v)}))
        .collect()
}

/// A at P1 T0 S1 (the committed fallback) and B in the states a boot meets: a trial with a
/// try to spend, one with many (and bits that are not ours), one out of tries, one committed.
fn damaged_cases() -> Vec<[u64; 2]> {
    let s = |p, t, ok| {
        SlotAttrs {
            priority: p,
            tries: t,
            successful: ok,
        }
        .apply(0)
    };
    vec![
        [s(1, 0, true), s(2, 1, false)],
        [
            s(1, 0, true) | 0x9000_0000_0000_0001,
            s(2, 15, false) | 0x0400_0000_0000_0004,
        ],
        [s(1, 0, true), s(2, 0, false)],
        [s(1, 0, true), s(2, 0, true)],
    ]
}

fn generate_damaged() -> Vec<Value> {
    let mut out = Vec::new();
    for (kind, damage) in damage_kinds() {
        for [a, b] in damaged_cases() {
            let entries = [(3, a), (4, b)];
            let r = boot_damaged(&entries, &damage);
            out.push(json!({
                "name": format!("{kind}: A {}, B {}", attrs_name(a), attrs_name(b)),
                "damage": damage,
                "entries": entries_json(&entries),
                "choice": r.choice,
                "after": entries_json(&r.after),
                "written": r.written,
            }));
        }
    }
    out
}

fn generate() -> Value {
    let mut fields = Vec::new();
    for priority in [0, 1, 2] {
        for tries in [0, 1, 15] {
            for successful in [false, true] {
                fields.push(SlotAttrs {
                    priority,
                    tries,
                    successful,
                });
            }
        }
    }
    let mut cases: Vec<[u64; 2]> = Vec::new();
    for (i, a) in fields.iter().enumerate() {
        for (j, b) in fields.iter().enumerate() {
            // Every third vector also carries bits that are not ours, which must survive.
            let (xa, xb) = if (i + j) % 3 == 0 {
                (0x9000_0000_0000_0001, 0x0400_0000_0000_0004)
            } else {
                (0, 0)
            };
            cases.push([a.apply(xa), b.apply(xb)]);
        }
    }
    let s = |p, t, ok| {
        SlotAttrs {
            priority: p,
            tries: t,
            successful: ok,
        }
        .apply(0)
    };
    cases.extend([
        [s(15, 15, true), s(15, 15, false)],
        [s(15, 0, false), s(14, 1, false)],
        [s(3, 0, true), s(15, 1, false)],
        [s(7, 2, false), s(7, 1, false)],
    ]);
    let vectors: Vec<Value> = cases
        .iter()
        .map(|&[a, b]| {
            let (choice, after) = boot(&[(3, a), (4, b)]);
            let (sa, sb) = (SlotAttrs::decode(a), SlotAttrs::decode(b));
            json!({
                "name": format!("A {sa}{}, B {sb}{}", if a & !bootctl::attrs::SLOT_MASK != 0 { " +other bits" } else { "" }, if b & !bootctl::attrs::SLOT_MASK != 0 { " +other bits" } else { "" }),
                "entries": [{"index": 3, "attributes": hex(a)}, {"index": 4, "attributes": hex(b)}],
                "choice": choice,
                "after": after.iter().map(|&(n, v)| json!({"index": n, "attributes": hex(v)})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "description": "GRUB gptprio.next selection vectors: usr entries before a boot, the partition chosen (null: none), the entries after GRUB's tries decrement; damaged: the same on disks with one or both GPT copies broken, and whether the boot wrote. Generated and checked by bootctl/tests/vectors.rs.",
        "vectors": vectors,
        "damaged": generate_damaged(),
    })
}

#[test]
fn vectors_file_is_what_the_rule_generates() {
    let fresh = serde_json::to_string_pretty(&generate()).unwrap() + "\n";
    if std::env::var_os("BOOTCTL_BLESS").is_some() {
        std::fs::write(FILE, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(FILE)
        .expect("reading testdata/select-vectors.json (BOOTCTL_BLESS=1 makes it)");
    assert!(
        committed == fresh,
        "testdata/select-vectors.json is stale: rerun with BOOTCTL_BLESS=1 and review the diff"
    );
}

#[test]
fn every_vector_holds_on_a_disk() {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(FILE).unwrap()).unwrap();
    let vectors = v["vectors"].as_array().unwrap();
    assert!(vectors.len() > 300);
    let parse = |e: &Value| {
        (
            e["index"].as_u64().unwrap() as u32,
            u64::from_str_radix(
                e["attributes"].as_str().unwrap().trim_start_matches("0x"),
                16,
            )
            .unwrap(),
        )
    };
    let mut chosen = [0; 3];
    for vec in vectors {
        let before: Vec<(u32, u64)> = vec["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(parse)
            .collect();
        let after: Vec<(u32, u64)> = vec["after"].as_array().unwrap().iter().map(parse).collect();
        let (choice, seen) = boot(&before);
        assert_eq!(
            choice,
            vec["choice"].as_u64().map(|c| c as u32),
            "{}",
            vec["name"]
        );
        assert_eq!(seen, after, "{}", vec["name"]);
        chosen[choice.map_or(0, |c| c as usize - 2)] += 1;
    }
    assert!(
        chosen.iter().all(|&c| c > 20),
        "vectors cover A, B and nothing bootable: {chosen:?}"
    );
}

#[test]
fn known_vectors_have_the_documented_answers() {
    let s = |p, t, ok| {
        SlotAttrs {
            priority: p,
            tries: t,
            successful: ok,
        }
        .apply(0)
    };
    assert_eq!(
        boot(&[(3, s(1, 0, true)), (4, s(2, 1, false))]),
        (Some(4), vec![(3, s(1, 0, true)), (4, s(2, 0, false))])
    );
    assert_eq!(
        boot(&[(3, s(1, 0, true)), (4, s(2, 0, false))]),
        (Some(3), vec![(3, s(1, 0, true)), (4, s(2, 0, false))])
    );
    assert_eq!(boot(&[(3, s(0, 0, false)), (4, s(0, 3, true))]).0, None);
    assert_eq!(
        boot(&[(3, s(2, 1, false)), (4, s(2, 1, false))]),
        (Some(3), vec![(3, s(2, 0, false)), (4, s(2, 1, false))])
    );
}

fn damaged_vectors() -> Vec<Value> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(FILE).unwrap()).unwrap();
    v["damaged"].as_array().expect("a damaged list").clone()
}

fn parse_entries(v: &Value) -> Vec<(u32, u64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap() as u32,
                u64::from_str_radix(
                    e["attributes"].as_str().unwrap().trim_start_matches("0x"),
                    16,
                )
                .unwrap(),
            )
        })
        .collect()
}

/// `sgdisk -v` finds no problem on `disk` (written to a file for it).
fn assert_sgdisk_clean(disk: &MemDisk, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, &disk.bytes).unwrap();
    let out = std::process::Command::new("sgdisk")
        .arg("-v")
        .arg(&path)
        .output()
        .expect("running sgdisk -v");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No problems found"),
        "{what}: sgdisk -v:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Both copies validate and agree, the backup at the end of the disk.
fn assert_both_copies_sound(disk: &MemDisk, what: &str) {
    let state = gpt::read(&mut disk.clone(), None).unwrap();
    assert!(!state.needs_repair(), "{what}: {state:?}");
}

#[test]
fn every_damaged_vector_holds_on_a_disk() {
    let vectors = damaged_vectors();
    assert_eq!(vectors.len(), damage_kinds().len() * damaged_cases().len());
    for vec in &vectors {
        let name = vec["name"].as_str().unwrap();
        let before = parse_entries(&vec["entries"]);
        let r = boot_damaged(&before, &vec["damage"]);
        assert_eq!(r.choice, vec["choice"].as_u64().map(|c| c as u32), "{name}");
        assert_eq!(r.after, parse_entries(&vec["after"]), "{name}");
        assert_eq!(Some(r.written), vec["written"].as_bool(), "{name}");
        if r.written {
            assert_both_copies_sound(&r.disk, name);
        }
    }
}

/// The damage kinds that break exactly one copy.
fn one_copy_damages() -> Vec<(&'static str, Value)> {
    damage_kinds()
        .into_iter()
        .filter(|(kind, _)| !kind.starts_with("both"))
        .collect()
}

#[test]
fn a_try_is_spent_on_a_table_with_one_damaged_copy_which_is_rebuilt() {
    // Issue 14, defect 11: a boot that wrote nothing here would let a trial slot that dies
    // before userspace repairs the table boot again forever.
    let s = |p, t, ok| {
        SlotAttrs {
            priority: p,
            tries: t,
            successful: ok,
        }
        .apply(0)
    };
    let trial = [(3, s(1, 0, true)), (4, s(2, 1, false))];
    let (disk, table) = disk_with(&trial);
    let clean = boot_damaged_disk(disk.clone(), &table, &trial, &json!([]));
    assert!(clean.written);
    for (kind, damage) in one_copy_damages() {
        let r = boot_damaged_disk(disk.clone(), &table, &trial, &damage);
        assert_eq!(
            (r.choice, r.after.clone(), r.written),
            (Some(4), vec![(3, s(1, 0, true)), (4, s(2, 0, false))], true),
            "{kind}"
        );
        assert_both_copies_sound(&r.disk, kind);
        assert!(
            r.disk.bytes == clean.disk.bytes,
            "{kind}: the rebuilt copy differs from what an undamaged disk's boot leaves"
        );
        assert_sgdisk_clean(&r.disk, kind);
    }
}

#[test]
fn a_boot_without_a_try_to_spend_writes_nothing_on_a_damaged_table() {
    let s = |p, t, ok| {
        SlotAttrs {
            priority: p,
            tries: t,
            successful: ok,
        }
        .apply(0)
    };
    for (b, choice) in [(s(2, 0, false), 3), (s(2, 0, true), 4)] {
        for (kind, damage) in one_copy_damages() {
            let r = boot_damaged(&[(3, s(1, 0, true)), (4, b)], &damage);
            assert_eq!(
                (r.choice, r.written),
                (Some(choice), false),
                "{kind}, B {}",
                SlotAttrs::decode(b)
            );
        }
    }
}

#[test]
fn nothing_is_chosen_or_written_when_both_copies_are_broken() {
    let both: Vec<_> = damage_kinds()
        .into_iter()
        .filter(|(kind, _)| kind.starts_with("both"))
        .collect();
    assert_eq!(both.len(), 2);
    for (kind, damage) in both {
        for [a, b] in damaged_cases() {
            let r = boot_damaged(&[(3, a), (4, b)], &damage);
            assert_eq!((r.choice, r.written), (None, false), "{kind}");
        }
    }
}
