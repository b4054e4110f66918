//! The select test vectors (`testdata/select-vectors.json`) shared with the GRUB module's tests:
//! every vector holds under the Rust rule on a real in-memory disk, and the file is exactly what
//! the generator below makes (`BOOTCTL_BLESS=1 cargo test -p bootctl vectors` rewrites it).
//!
//! Format: `{"vectors": [{"name", "entries": [{"index", "attributes"}], "choice", "after"}]}`.
//! `entries` are the usr entries of a DESIGN §3 disk (partition numbers 3 and 4), `attributes`
//! the whole 64-bit field as `0x%016x`, `choice` the partition GRUB boots (or null), `after`
//! the entries once GRUB has applied its tries decrement.
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
        "description": "GRUB gptprio.next selection vectors: usr entries before a boot, the partition chosen (null: none), the entries after GRUB's tries decrement. Generated and checked by bootctl/tests/vectors.rs.",
        "vectors": vectors,
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
