//! Power cuts during every write operation: for every prefix of the write sequence (sector by
//! sector), with the last sector torn, and with writes reordered between flushes, at least one
//! GPT copy validates, GRUB's rule gives the old or the new answer and nothing else, and
//! repair converges to a clean disk.
use bootctl::guid::USR_TYPE;
use bootctl::storage::{MemDisk, Storage};
use bootctl::{gpt, layout, Guid, SlotAttrs, SlotDisk, SlotId};
use std::io;

/// One write or flush as the disk saw it.
#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    Flush,
}

/// A disk that records every write (split into sectors) and flush.
struct RecordingDisk {
    inner: MemDisk,
    ops: Vec<Op>,
}

impl Storage for RecordingDisk {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn device_sector_size(&self) -> Option<u32> {
        self.inner.device_sector_size()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let ss = self.inner.sector_size as usize;
        for (i, chunk) in buf.chunks(ss).enumerate() {
            self.ops.push(Op::Write {
                offset: offset + (i * ss) as u64,
                data: chunk.to_vec(),
            });
        }
        self.inner.write_at(offset, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.ops.push(Op::Flush);
        Ok(())
    }
}

/// What a reader sees: every slot's attributes and GRUB's choice.
fn view(disk: &MemDisk) -> (Vec<SlotAttrs>, Option<u32>) {
    let mut d =
        SlotDisk::from_storage(disk.clone(), None).expect("at least one GPT copy validates");
    let slots = d.slots().iter().map(|s| s.attrs).collect();
    (slots, d.select(false).unwrap().map(|s| s.slot.number))
}

/// Crash states checked by this test binary (printed per sweep for docs/reliability.md).
static CHECKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn check_state(
    name: &str,
    what: &str,
    disk: &MemDisk,
    old: &(Vec<SlotAttrs>, Option<u32>),
    new: &(Vec<SlotAttrs>, Option<u32>),
) {
    CHECKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seen = view(disk);
    assert!(
        &seen == old || &seen == new,
        "{name}, {what}: saw {seen:?}, old {old:?}, new {new:?}"
    );
    let mut repaired = SlotDisk::from_storage(disk.clone(), None).unwrap();
    repaired.repair().unwrap();
    let state = repaired.state().clone();
    assert!(
        state.primary.is_ok()
            && state.backup.is_ok()
            && state.copies_match
            && state.backup_at_end(),
        "{name}, {what}: repair left {state:?}"
    );
    assert_eq!(
        view(&repaired.into_storage()),
        seen,
        "{name}, {what}: repair changed the answer"
    );
}

fn apply(disk: &mut MemDisk, op: &Op) {
    if let Op::Write { offset, data } = op {
        disk.write_at(*offset, data).unwrap();
    }
}

/// Runs `operation` on a recording copy of `start`, then replays every crash point.
fn sweep(name: &str, start: MemDisk, operation: impl Fn(&mut SlotDisk<RecordingDisk>)) {
    let mut rec = SlotDisk::from_storage(
        RecordingDisk {
            inner: start.clone(),
            ops: Vec::new(),
        },
        None,
    )
    .unwrap();
    operation(&mut rec);
    let rec = rec.into_storage();
    let (old, new) = (view(&start), view(&rec.inner));
    assert!(
        rec.ops.iter().any(|o| matches!(o, Op::Write { .. })),
        "{name}: the operation wrote nothing"
    );
    let ss = start.sector_size as usize;

    // Every prefix, and every prefix with the next sector torn at several points.
    let mut disk = start.clone();
    check_state(name, "before any write", &disk, &old, &new);
    for (k, op) in rec.ops.iter().enumerate() {
        if let Op::Write { offset, data } = op {
            for cut in [1, 8, 92, ss / 2, ss - 1]
                .into_iter()
                .filter(|&c| c < data.len())
            {
                let mut torn = disk.clone();
                torn.write_at(*offset, &data[..cut]).unwrap();
                check_state(
                    name,
                    &format!("write {k} torn after {cut} bytes"),
                    &torn,
                    &old,
                    &new,
                );
            }
        }
        apply(&mut disk, op);
        check_state(name, &format!("after op {k}"), &disk, &old, &new);
    }
    assert_eq!(view(&disk), new);

    let checked_before_subsets = CHECKED.load(std::sync::atomic::Ordering::Relaxed);
    // Between two flushes the disk may persist any subset of the writes, in any order.
    let epochs: Vec<&[Op]> = rec.ops.split(|o| matches!(o, Op::Flush)).collect();
    let mut base = start.clone();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for (e, epoch) in epochs.iter().enumerate() {
        for trial in 0..64 {
            let mut disk = base.clone();
            for op in epoch.iter() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if seed & 1 == 0 {
                    apply(&mut disk, op);
                }
            }
            check_state(
                name,
                &format!("epoch {e}, random subset {trial}"),
                &disk,
                &old,
                &new,
            );
        }
        epoch.iter().for_each(|op| apply(&mut base, op));
    }
    let n = rec
        .ops
        .iter()
        .filter(|o| matches!(o, Op::Write { .. }))
        .count();
    eprintln!("powercut: {name}: {n} sector writes, crash states checked so far {} (random subsets from {checked_before_subsets})", CHECKED.load(std::sync::atomic::Ordering::Relaxed));
}

/// A disk just big enough for a GPT and two 4-sector usr slots, so that replaying hundreds of
/// crash points stays cheap.
fn tiny_disk(ss: u32) -> MemDisk {
    let bytes = u64::from(ss) * if ss == 512 { 128 } else { 32 };
    let mut disk = MemDisk::new(vec![0; bytes as usize], ss);
    let mut table = gpt::Gpt::new(bytes, ss, Guid::random().unwrap()).unwrap();
    for (n, name, attrs) in [
        (
            3,
            "USR-A",
            SlotAttrs {
                priority: 1,
                tries: 0,
                successful: true,
            },
        ),
        (4, "USR-B", SlotAttrs::default()),
    ] {
        let first = table.first_usable_lba + 4 * u64::from(n - 3);
        let entry = gpt::Entry {
            type_guid: USR_TYPE,
            unique_guid: Guid::random().unwrap(),
            first_lba: first,
            last_lba: first + 3,
            attributes: attrs.apply(0),
            name: name.into(),
        };
        table.set_entry(n, &entry);
    }
    gpt::write_new(&mut disk, &table).unwrap();
    disk
}

fn each_sector_size(f: impl Fn(u32, MemDisk)) {
    for ss in [512, 4096] {
        f(ss, tiny_disk(ss));
    }
}

#[test]
fn the_standard_layout_survives_a_power_cut_during_set_next() {
    sweep("set-next/standard layout", layout::mem_disk(4096), |s| {
        assert!(s.set_next(&SlotId::B, 1).unwrap())
    });
}

#[test]
fn set_next_survives_a_power_cut_at_every_write() {
    each_sector_size(|ss, d| {
        sweep(&format!("set-next/{ss}"), d, |s| {
            assert!(s.set_next(&SlotId::B, 1).unwrap())
        })
    });
}

#[test]
fn mark_good_survives_a_power_cut_at_every_write() {
    each_sector_size(|ss, d| {
        let mut s = SlotDisk::from_storage(d, None).unwrap();
        s.set_next(&SlotId::B, 1).unwrap();
        s.select(true).unwrap();
        sweep(&format!("mark-good/{ss}"), s.into_storage(), |s| {
            assert!(s.mark_good(&SlotId::B).unwrap())
        });
    });
}

#[test]
fn mark_bad_survives_a_power_cut_at_every_write() {
    each_sector_size(|ss, d| {
        let mut s = SlotDisk::from_storage(d, None).unwrap();
        s.set_next(&SlotId::B, 1).unwrap();
        sweep(&format!("mark-bad/{ss}"), s.into_storage(), |s| {
            assert!(s.mark_bad(&SlotId::B).unwrap())
        });
    });
}

#[test]
fn boot_decrement_survives_a_power_cut_at_every_write() {
    each_sector_size(|ss, d| {
        let mut s = SlotDisk::from_storage(d, None).unwrap();
        s.set_next(&SlotId::B, 3).unwrap();
        sweep(&format!("select --boot/{ss}"), s.into_storage(), |s| {
            assert!(s.select(true).unwrap().unwrap().wrote)
        });
    });
}

#[test]
fn repair_survives_a_power_cut_at_every_write() {
    each_sector_size(|ss, mut d| {
        d.bytes[ss as usize + 40] ^= 1; // primary header CRC
        sweep(&format!("repair primary/{ss}"), d, |s| {
            assert!(s.repair().unwrap().wrote)
        });
    });
    each_sector_size(|ss, mut d| {
        d.bytes.extend(std::iter::repeat_n(0, 64 * ss as usize)); // the disk grew
        assert!(gpt::read(&mut d.clone(), None).unwrap().needs_repair());
        sweep(&format!("repair grown/{ss}"), d, |s| {
            assert!(s.repair().unwrap().wrote)
        });
    });
}

#[test]
fn set_next_on_a_disk_with_a_corrupt_backup_survives_a_power_cut() {
    each_sector_size(|ss, mut d| {
        let n = d.bytes.len();
        d.bytes[n - ss as usize + 40] ^= 1;
        sweep(&format!("set-next corrupt backup/{ss}"), d, |s| {
            assert!(s.set_next(&SlotId::B, 1).unwrap())
        });
    });
}
