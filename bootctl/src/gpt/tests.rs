//! Unit tests of the on-disk format: each copy's checks at their boundaries, table shapes
//! other than the default, tiny and huge disks, the protective MBR, and entry validation.
use super::*;
use crate::storage::MemDisk;

fn fresh(ss: u32) -> MemDisk {
    let mut d = MemDisk::new(vec![0; 4 << 20], ss);
    let mut g = Gpt::new(4 << 20, ss, Guid::random().unwrap()).unwrap();
    g.set_entry(
        3,
        &Entry {
            type_guid: crate::guid::USR_TYPE,
            unique_guid: Guid::random().unwrap(),
            first_lba: g.first_usable_lba,
            last_lba: g.first_usable_lba + 7,
            attributes: 1 << 48,
            name: "USR-A".into(),
        },
    );
    write_new(&mut d, &g).unwrap();
    d
}

#[test]
fn fresh_table_reads_back_valid_in_both_copies() {
    for ss in SECTOR_SIZES {
        let mut d = fresh(ss);
        let r = read(&mut d, None).unwrap();
        assert_eq!(r.gpt.sector_size, ss);
        assert!(r.primary.is_ok() && r.backup.is_ok() && r.copies_match && r.backup_at_end());
        assert_eq!(r.gpt.entry(3).name, "USR-A");
        assert_eq!(r.gpt.used_entries().len(), 1);
    }
}

#[test]
fn corrupt_primary_header_falls_back_to_backup() {
    let mut d = fresh(512);
    d.bytes[512 + 40] ^= 1;
    let r = read(&mut d, None).unwrap();
    assert!(matches!(r.primary, Err(CopyError::HeaderCrc { .. })));
    assert!(r.backup.is_ok());
    assert_eq!(r.gpt.entry(3).name, "USR-A");
}

#[test]
fn corrupt_entries_are_caught_by_the_entries_crc() {
    let mut d = fresh(4096);
    d.bytes[2 * 4096 + 2 * 128 + 1] ^= 0x80;
    let r = read(&mut d, None).unwrap();
    assert!(matches!(r.primary, Err(CopyError::EntriesCrc { .. })));
}

#[test]
fn both_copies_corrupt_is_an_error() {
    let mut d = fresh(512);
    let len = d.bytes.len();
    d.bytes[512 + 40] ^= 1;
    d.bytes[len - 512 + 40] ^= 1;
    assert!(matches!(
        read(&mut d, None),
        Err(Error::BothCopiesInvalid { .. })
    ));
}

#[test]
fn zeroed_disk_is_not_gpt() {
    let mut d = MemDisk::new(vec![0; 1 << 20], 512);
    assert!(matches!(read(&mut d, None), Err(Error::NotGpt { .. })));
}

#[test]
fn gpt_for_other_sector_size_is_a_mismatch() {
    let mut d = fresh(4096);
    assert!(matches!(
        read(&mut d, Some(512)),
        Err(Error::SectorSizeMismatch {
            gpt: 4096,
            device: 512
        })
    ));
}

#[test]
fn primary_whose_backup_points_into_the_primary_area_is_invalid() {
    // Found while writing the GPT fuzz target: a write would put the "backup" over LBA 2.
    let mut d = fresh(512);
    let g = read(&mut d, None).unwrap().gpt;
    let mut h = g.header_sector(Copy::Primary);
    h[32..40].copy_from_slice(&2u64.to_le_bytes());
    h[16..20].fill(0);
    let crc = crc32fast::hash(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    d.bytes[512..1024].copy_from_slice(&h);
    let r = read(&mut d, None).unwrap();
    assert!(
        matches!(r.primary, Err(CopyError::Lbas { .. })),
        "{:?}",
        r.primary
    );
    assert!(r.backup.is_ok(), "the backup at the end is still found");
}

#[test]
fn absurd_entry_count_is_rejected_before_allocating() {
    let mut d = fresh(512);
    let g = read(&mut d, None).unwrap().gpt;
    let mut h = g.header_sector(Copy::Primary);
    h[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
    h[16..20].fill(0);
    let crc = crc32fast::hash(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    d.bytes[512..1024].copy_from_slice(&h);
    assert!(matches!(
        read(&mut d, None).unwrap().primary,
        Err(CopyError::EntryArray { .. })
    ));
}

/// Rewrites the header at `lba` through `edit`, then gives it a valid CRC over the size it
/// states (clamped to what fits in the sector), so that only the edited field is wrong.
fn patch_header(d: &mut MemDisk, lba: u64, edit: impl FnOnce(&mut [u8])) {
    let ss = d.sector_size as usize;
    let at = lba as usize * ss;
    let h = &mut d.bytes[at..at + ss];
    edit(h);
    let size = (le32(h, 12) as usize).clamp(HEADER_SIZE as usize, ss);
    h[16..20].fill(0);
    let crc = crc32fast::hash(&h[..size]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
}

fn put32(h: &mut [u8], at: usize, v: u32) {
    h[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(h: &mut [u8], at: usize, v: u64) {
    h[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

type Edit = fn(&mut [u8]);

fn lbas(what: &str) -> Result<(), CopyError> {
    Err(CopyError::Lbas { what: what.into() })
}

/// On `fresh(512)` (8192 sectors; usable 34..=8158; backup array at 8159, header at 8191):
/// one header field of one copy changed, and what the read must say of that copy.
fn header_rows() -> Vec<(&'static str, Copy, Edit, Result<(), CopyError>)> {
    use super::Copy::{Backup, Primary};
    let entry_lbas = |lba: u64| {
        lbas(&format!(
            "entry array at LBA {lba} (32 sectors) overlaps the header or the usable range 34..=8158"
        ))
    };
    vec![
        ("unchanged", Primary, |_| {}, Ok(())),
        ("unchanged backup", Backup, |_| {}, Ok(())),
        (
            "minor revision 1.1",
            Primary,
            |h| put32(h, 8, 0x0001_0001),
            Ok(()),
        ),
        (
            "revision 2.0",
            Primary,
            |h| put32(h, 8, 0x0002_0000),
            Err(CopyError::Revision {
                revision: 0x0002_0000,
            }),
        ),
        (
            "revision 0.1",
            Primary,
            |h| put32(h, 8, 1),
            Err(CopyError::Revision { revision: 1 }),
        ),
        (
            "header size 91",
            Primary,
            |h| put32(h, 12, 91),
            Err(CopyError::HeaderSize { size: 91 }),
        ),
        ("header size 93", Primary, |h| put32(h, 12, 93), Ok(())),
        ("header size 512", Primary, |h| put32(h, 12, 512), Ok(())),
        (
            "header size 513",
            Primary,
            |h| put32(h, 12, 513),
            Err(CopyError::HeaderSize { size: 513 }),
        ),
        (
            "self LBA 2",
            Primary,
            |h| put64(h, 24, 2),
            Err(CopyError::SelfLba {
                expected: 1,
                found: 2,
            }),
        ),
        (
            "no entries",
            Primary,
            |h| put32(h, 80, 0),
            Err(CopyError::EntryArray {
                count: 0,
                size: 128,
            }),
        ),
        (
            "64-byte entries",
            Primary,
            |h| put32(h, 84, 64),
            Err(CopyError::EntryArray {
                count: 128,
                size: 64,
            }),
        ),
        (
            "192-byte entries",
            Primary,
            |h| put32(h, 84, 192),
            Err(CopyError::EntryArray {
                count: 128,
                size: 192,
            }),
        ),
        (
            "entries larger than a sector",
            Primary,
            |h| put32(h, 84, 1024),
            Err(CopyError::EntryArray {
                count: 128,
                size: 1024,
            }),
        ),
        (
            "array one entry past 1 MiB",
            Primary,
            |h| put32(h, 80, 8193),
            Err(CopyError::EntryArray {
                count: 8193,
                size: 128,
            }),
        ),
        (
            "empty usable range",
            Primary,
            |h| put64(h, 40, 8159),
            Ok(()),
        ),
        (
            "usable range ending before it starts",
            Primary,
            |h| put64(h, 40, 8160),
            lbas("usable range 8160..=8158 on a disk of 8192 sectors"),
        ),
        (
            "usable range up to the last LBA",
            Primary,
            |h| put64(h, 48, 8191),
            lbas("usable range 34..=8191 on a disk of 8192 sectors"),
        ),
        (
            "usable range past 2^64",
            Primary,
            |h| put64(h, 48, u64::MAX),
            lbas("usable range 34..=18446744073709551615 on a disk of 8192 sectors"),
        ),
        (
            "alternate past the disk",
            Primary,
            |h| put64(h, 32, 8192),
            lbas("alternate header LBA 8192 on a disk of 8192 sectors"),
        ),
        (
            "alternate on the backup array's last sector",
            Primary,
            |h| put64(h, 32, 8190),
            lbas("alternate header LBA 8190 on a disk of 8192 sectors"),
        ),
        (
            "entry array over the MBR side of the header",
            Primary,
            |h| put64(h, 72, 1),
            entry_lbas(1),
        ),
        (
            "entry array into the usable range",
            Primary,
            |h| put64(h, 72, 3),
            entry_lbas(3),
        ),
        (
            "entry array past 2^64",
            Primary,
            |h| put64(h, 72, u64::MAX - 1),
            entry_lbas(u64::MAX - 1),
        ),
        (
            "backup self LBA",
            Backup,
            |h| put64(h, 24, 8190),
            Err(CopyError::SelfLba {
                expected: 8191,
                found: 8190,
            }),
        ),
        (
            "backup alternate not LBA 1",
            Backup,
            |h| put64(h, 32, 2),
            lbas("alternate header LBA 2 on a disk of 8192 sectors"),
        ),
        (
            "backup array on the last usable LBA",
            Backup,
            |h| put64(h, 72, 8158),
            entry_lbas(8158),
        ),
        (
            "backup array over its header",
            Backup,
            |h| put64(h, 72, 8160),
            entry_lbas(8160),
        ),
    ]
}

#[test]
fn each_copy_is_checked_field_by_field() {
    for (name, copy, edit, expected) in header_rows() {
        let mut d = fresh(512);
        let lba = match copy {
            Copy::Primary => 1,
            Copy::Backup => 8191,
        };
        patch_header(&mut d, lba, edit);
        let r = read(&mut d, None).unwrap();
        let (checked, other) = match copy {
            Copy::Primary => (&r.primary, &r.backup),
            Copy::Backup => (&r.backup, &r.primary),
        };
        assert_eq!(checked, &expected, "{name}");
        assert_eq!(other, &Ok(()), "{name}: the other copy");
    }
}

#[test]
fn a_header_larger_than_92_bytes_keeps_its_tail_through_a_rewrite() {
    let mut d = fresh(512);
    patch_header(&mut d, 1, |h| {
        put32(h, 12, 100);
        h[92..100].copy_from_slice(b"tailbyte");
    });
    let r = read(&mut d, None).unwrap();
    assert!(
        r.primary.is_ok() && !r.copies_match,
        "the backup has a 92-byte header"
    );
    write(&mut d, &r.gpt).unwrap();
    for lba in [1, 8191] {
        let h = &d.bytes[lba * 512..(lba + 1) * 512];
        assert_eq!(le32(h, 12), 100, "LBA {lba}");
        assert_eq!(&h[92..100], b"tailbyte", "LBA {lba}");
    }
    let r = read(&mut d, None).unwrap();
    assert!(r.primary.is_ok() && r.backup.is_ok() && r.copies_match);
}

/// 256-byte entries with bytes past 128, five of them (1280 bytes: an array that does not
/// fill its last sector), a 96-byte header, on a disk of 64 sectors.
fn odd_table() -> Gpt {
    let mut g = Gpt {
        sector_size: 512,
        disk_guid: Guid::random().unwrap(),
        first_usable_lba: 5,
        last_usable_lba: 59,
        primary_entries_lba: 2,
        backup_lba: 63,
        backup_entries_lba: 60,
        num_entries: 5,
        entry_size: 256,
        revision: REVISION_1_0,
        header_tail: vec![7; 4],
        entries: vec![0; 5 * 256],
    };
    for n in 1..=5u32 {
        let first = u64::from(n) * 10;
        g.set_entry(
            n,
            &Entry {
                type_guid: crate::guid::LINUX_DATA_TYPE,
                unique_guid: Guid::random().unwrap(),
                first_lba: first,
                last_lba: first + 9,
                attributes: u64::from(n) << 48,
                name: format!("part{n}"),
            },
        );
    }
    g.entries[256 + 200] = 0xee; // reserved bytes of entry 2
    g
}

#[test]
fn a_table_with_256_byte_entries_round_trips_exactly() {
    let g = odd_table();
    let mut d = MemDisk::new(vec![0xaa; 64 * 512], 512);
    write_new(&mut d, &g).unwrap();
    let r = read(&mut d, None).unwrap();
    assert!(r.primary.is_ok() && r.backup.is_ok() && r.copies_match && r.backup_at_end());
    assert_eq!(r.entries, Ok(()));
    assert_eq!(r.gpt, g);
    assert_eq!(r.gpt.array_sectors(), 3);
    let names: Vec<(u32, String)> = r
        .gpt
        .used_entries()
        .into_iter()
        .map(|(n, e)| (n, e.name))
        .collect();
    assert_eq!(
        names,
        (1..=5).map(|n| (n, format!("part{n}"))).collect::<Vec<_>>()
    );
    // Each copy: the array at its LBA, then zeros to the end of its last sector.
    for lba in [2usize, 60] {
        assert_eq!(&d.bytes[lba * 512..lba * 512 + 1280], g.entry_array());
        assert!(d.bytes[lba * 512 + 1280..(lba + 3) * 512]
            .iter()
            .all(|&b| b == 0));
    }
    assert_eq!(d.bytes[2 * 512 + 256 + 200], 0xee);
}

#[test]
fn set_attributes_changes_one_entry_s_attribute_field_only() {
    let mut g = odd_table();
    let before = g.clone();
    g.set_attributes(2, 0x0123_4567_89ab_cdef);
    for n in 1..=5 {
        let (old, new) = (before.entry(n), g.entry(n));
        if n == 2 {
            assert_eq!(new.attributes, 0x0123_4567_89ab_cdef);
            assert_eq!(
                Entry {
                    attributes: old.attributes,
                    ..new
                },
                old
            );
        } else {
            assert_eq!(new, old, "entry {n}");
        }
    }
    assert_eq!(g.entries[256 + 200], 0xee);
}

#[test]
fn set_entry_replaces_the_first_128_bytes_and_cuts_long_names() {
    let mut g = odd_table();
    let e = Entry {
        type_guid: crate::guid::USR_TYPE,
        unique_guid: Guid::random().unwrap(),
        first_lba: 20,
        last_lba: 29,
        attributes: 5,
        name: "x".repeat(40),
    };
    g.set_entry(2, &e);
    assert_eq!(
        g.entry(2),
        Entry {
            name: "x".repeat(36),
            ..e
        }
    );
    assert_eq!(g.entries[256 + 200], 0xee, "bytes past 128 are kept");
    assert_eq!(g.entry(1).name, "part1");
    assert_eq!(g.entry(3).name, "part3");
}

#[test]
fn new_tables_are_laid_out_around_their_entry_arrays() {
    // (sector size, disk bytes) -> first usable, last usable, backup array, backup header.
    for (ss, bytes, want) in [
        (512, 4u64 << 20, (34, 8158, 8159, 8191)),
        (4096, 4 << 20, (6, 1018, 1019, 1023)),
    ] {
        let g = Gpt::new(bytes, ss, Guid::NIL).unwrap();
        assert_eq!(
            (
                g.first_usable_lba,
                g.last_usable_lba,
                g.backup_entries_lba,
                g.backup_lba
            ),
            want,
            "{ss}"
        );
        assert_eq!(
            (g.primary_entries_lba, g.num_entries, g.entry_size),
            (2, 128, 128)
        );
    }
}

#[test]
fn the_smallest_disk_holds_both_copies_and_one_usable_sector() {
    // MBR, header, 32 sectors of entries, one usable sector, 32 sectors, header: 68 sectors.
    let g = Gpt::new(68 * 512, 512, Guid::NIL).unwrap();
    assert_eq!((g.first_usable_lba, g.last_usable_lba), (34, 34));
    let mut d = MemDisk::new(vec![0; 68 * 512], 512);
    write_new(&mut d, &g).unwrap();
    let r = read(&mut d, None).unwrap();
    assert!(r.primary.is_ok() && r.backup.is_ok() && r.copies_match);
    assert!(matches!(
        Gpt::new(67 * 512 + 511, 512, Guid::NIL),
        Err(Error::DiskTooSmall {
            bytes: 34815,
            sector_size: 512
        })
    ));
    assert!(matches!(
        Gpt::new(1 << 20, 1024, Guid::NIL),
        Err(Error::UnsupportedSectorSize { size: 1024 })
    ));
}

#[test]
fn a_two_sector_disk_with_a_signature_is_a_broken_gpt_not_no_gpt() {
    let mut bytes = vec![0; 1024];
    bytes[512..520].copy_from_slice(SIGNATURE);
    let mut d = MemDisk::new(bytes.clone(), 512);
    assert!(matches!(
        read(&mut d, None),
        Err(Error::BothCopiesInvalid { .. })
    ));
    bytes.pop();
    let mut d = MemDisk::new(bytes, 512);
    assert!(matches!(read(&mut d, None), Err(Error::NotGpt { .. })));
}

/// A plain file: storage that reports no sector size of its own.
struct NoSectorSize(MemDisk);

impl Storage for NoSectorSize {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn device_sector_size(&self) -> Option<u32> {
        None
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_at(offset, buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn sector_size_is_found_from_the_backup_when_the_primary_is_gone() {
    for ss in SECTOR_SIZES {
        let mut d = fresh(ss);
        d.bytes[ss as usize..2 * ss as usize].fill(0);
        let r = read(&mut NoSectorSize(d.clone()), None).unwrap();
        assert_eq!(r.gpt.sector_size, ss);
        assert_eq!(r.primary, Err(CopyError::Signature { lba: 1 }));
        assert_eq!(r.gpt.primary_entries_lba, 2, "{ss}");
        assert_eq!(detect_sector_size(&mut d, Some(ss)).unwrap(), ss);
    }
    let mut d = NoSectorSize(MemDisk::new(vec![0; 1 << 20], 512));
    assert!(matches!(
        detect_sector_size(&mut d, None),
        Err(Error::NotGpt { tried }) if tried == "512- or 4096-byte"
    ));
    assert!(matches!(
        detect_sector_size(&mut d, Some(1024)),
        Err(Error::UnsupportedSectorSize { size: 1024 })
    ));
    assert!(matches!(
        detect_sector_size(&mut d, Some(512)),
        Err(Error::NotGpt { tried }) if tried == "512-byte"
    ));
}

#[test]
fn a_damaged_backup_leaves_the_primary_s_idea_of_where_the_backup_goes() {
    let mut d = fresh(512);
    d.bytes[8191 * 512 + 40] ^= 1;
    let r = read(&mut d, None).unwrap();
    assert!(matches!(r.backup, Err(CopyError::HeaderCrc { .. })));
    assert_eq!((r.gpt.backup_lba, r.gpt.backup_entries_lba), (8191, 8159));
    assert!(!r.backup_at_end() && r.needs_repair());
}

#[test]
fn copies_that_both_validate_but_differ_do_not_match() {
    let mut d = fresh(512);
    let mut g = read(&mut d, None).unwrap().gpt;
    g.set_attributes(3, 2 << 48);
    // Primary only: its entries and header.
    d.bytes[2 * 512..2 * 512 + g.entries.len()].copy_from_slice(&g.entries);
    d.bytes[512..1024].copy_from_slice(&g.header_sector(Copy::Primary));
    let r = read(&mut d, None).unwrap();
    assert!(r.primary.is_ok() && r.backup.is_ok() && r.backup_at_end());
    assert!(!r.copies_match && r.needs_repair());
    assert_eq!(
        r.gpt.entry(3).attributes,
        2 << 48,
        "the primary is preferred"
    );
}

#[test]
fn needs_repair_only_for_a_bad_copy_differing_copies_or_a_misplaced_backup() {
    let clean = read(&mut fresh(512), None).unwrap();
    assert!(!clean.needs_repair());
    let bad = Err(CopyError::Signature { lba: 1 });
    for (name, state) in [
        (
            "primary",
            DiskGpt {
                primary: bad.clone(),
                ..clean.clone()
            },
        ),
        (
            "backup",
            DiskGpt {
                backup: bad.clone(),
                ..clean.clone()
            },
        ),
        (
            "differ",
            DiskGpt {
                copies_match: false,
                ..clean.clone()
            },
        ),
        (
            "grown",
            DiskGpt {
                disk_sectors: 9000,
                ..clean.clone()
            },
        ),
    ] {
        assert!(state.needs_repair(), "{name}");
    }
}

#[test]
fn a_grown_disk_reads_the_backup_where_the_primary_says() {
    let mut d = fresh(512);
    d.bytes.extend(vec![0; 64 * 512]);
    let r = read(&mut d, None).unwrap();
    assert!(r.primary.is_ok() && r.backup.is_ok() && r.copies_match);
    assert_eq!((r.disk_sectors, r.gpt.backup_lba), (8256, 8191));
    assert!(!r.backup_at_end() && r.needs_repair());
    let mut g = r.gpt;
    g.relocate_backup(8256).unwrap();
    assert_eq!(
        (g.backup_lba, g.backup_entries_lba, g.last_usable_lba),
        (8255, 8223, 8222)
    );
}

#[test]
fn relocating_the_backup_refuses_a_disk_without_room_for_it() {
    let g = Gpt::new(68 * 512, 512, Guid::NIL).unwrap(); // first usable 34
    for sectors in [0, 32, 66] {
        let mut moved = g.clone();
        assert!(
            matches!(
                moved.relocate_backup(sectors),
                Err(Error::DiskTooSmall {
                    sector_size: 512,
                    ..
                })
            ),
            "{sectors}"
        );
        assert_eq!(moved, g, "unchanged");
    }
    let mut g = g;
    g.relocate_backup(67).unwrap(); // an empty usable range: 34..=33
    assert_eq!((g.last_usable_lba, g.backup_entries_lba), (33, 34));
}

/// Storage of any size that keeps only what is written.
struct Sparse {
    len: u64,
    writes: Vec<(u64, Vec<u8>)>,
}

impl Storage for Sparse {
    fn len(&self) -> u64 {
        self.len
    }
    fn device_sector_size(&self) -> Option<u32> {
        Some(512)
    }
    fn read_at(&mut self, _offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.writes.push((offset, buf.to_vec()));
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_protective_mbr_covers_the_disk_up_to_32_bits_of_sectors() {
    // (disk sectors, size field): the disk after LBA 0, capped at 2^32 - 1.
    for (sectors, size) in [
        (2u64, 1u32),
        (8192, 8191),
        (1 << 32, u32::MAX),
        ((1 << 32) + 1, u32::MAX),
    ] {
        let mut d = Sparse {
            len: sectors * 512,
            writes: Vec::new(),
        };
        write_protective_mbr(&mut d, 512).unwrap();
        let mut want = vec![0x00, 0x00, 0x02, 0x00, 0xee, 0xff, 0xff, 0xff, 1, 0, 0, 0];
        want.extend(size.to_le_bytes());
        want.extend([0; 48]);
        want.extend([0x55, 0xaa]);
        assert_eq!(d.writes, vec![(446, want)], "{sectors} sectors");
    }
    let mut d = Sparse {
        len: 1023,
        writes: Vec::new(),
    };
    assert!(matches!(
        write_protective_mbr(&mut d, 512),
        Err(Error::DiskTooSmall { bytes: 1023, .. })
    ));
    assert!(d.writes.is_empty());
}

#[test]
fn the_protective_mbr_keeps_the_boot_code() {
    let mut d = MemDisk::new(vec![0xaa; 8192], 512);
    write_protective_mbr(&mut d, 512).unwrap();
    assert!(d.bytes[..446].iter().all(|&b| b == 0xaa));
    assert!(d.bytes[512..].iter().all(|&b| b == 0xaa));
}

#[test]
fn lba_offsets_past_64_bits_are_refused() {
    assert_eq!(lba_offset(3, 4096).unwrap(), 12288);
    assert!(matches!(
        lba_offset(u64::MAX / 512 + 1, 512),
        Err(Error::LbaOverflow {
            sector_size: 512,
            ..
        })
    ));
    let mut g = Gpt::new(68 * 512, 512, Guid::NIL).unwrap();
    g.backup_entries_lba = u64::MAX / 4;
    let mut d = MemDisk::new(vec![0; 68 * 512], 512);
    assert!(matches!(write(&mut d, &g), Err(Error::LbaOverflow { .. })));
    assert!(d.bytes.iter().all(|&b| b == 0), "nothing written");
}

fn extent(number: u32, name: &str, first_lba: u64, last_lba: u64) -> Extent {
    Extent {
        number,
        name: name.into(),
        first_lba,
        last_lba,
    }
}

/// `fresh(512)` has USR-A (3) at 34..=41 and a usable range of 34..=8158. Each row adds or
/// moves one entry and gives the verdict on the table.
#[test]
fn entries_are_checked_against_the_usable_range_and_each_other() {
    type Row = (&'static str, u32, u64, u64, Result<(), EntryError>);
    let rows: Vec<Row> = vec![
        ("USR-B right after USR-A", 4, 42, 8158, Ok(())),
        ("a one-sector USR-B", 4, 8158, 8158, Ok(())),
        (
            "USR-B ending before it starts",
            4,
            50,
            49,
            Err(EntryError::Inverted(extent(4, "USR-B", 50, 49))),
        ),
        (
            "USR-B before the usable range",
            4,
            33,
            40,
            Err(EntryError::OutsideUsable {
                extent: extent(4, "USR-B", 33, 40),
                first_usable: 34,
                last_usable: 8158,
            }),
        ),
        (
            "USR-B past the usable range",
            4,
            100,
            8159,
            Err(EntryError::OutsideUsable {
                extent: extent(4, "USR-B", 100, 8159),
                first_usable: 34,
                last_usable: 8158,
            }),
        ),
        (
            "USR-B on USR-A's last sector",
            4,
            41,
            100,
            Err(EntryError::Overlap {
                first: extent(3, "USR-A", 34, 41),
                second: extent(4, "USR-B", 41, 100),
            }),
        ),
        (
            "USR-B inside USR-A",
            4,
            35,
            36,
            Err(EntryError::Overlap {
                first: extent(3, "USR-A", 34, 41),
                second: extent(4, "USR-B", 35, 36),
            }),
        ),
        (
            "an earlier entry over the same start: the lower number comes first",
            1,
            34,
            34,
            Err(EntryError::Overlap {
                first: extent(1, "USR-B", 34, 34),
                second: extent(3, "USR-A", 34, 41),
            }),
        ),
        (
            "an entry that starts first and covers USR-A",
            5,
            34,
            8158,
            Err(EntryError::Overlap {
                first: extent(3, "USR-A", 34, 41),
                second: extent(5, "USR-B", 34, 8158),
            }),
        ),
    ];
    for (name, number, first_lba, last_lba, expected) in rows {
        let mut g = read(&mut fresh(512), None).unwrap().gpt;
        g.set_entry(
            number,
            &Entry {
                type_guid: crate::guid::USR_TYPE,
                unique_guid: Guid::NIL,
                first_lba,
                last_lba,
                attributes: 0,
                name: "USR-B".into(),
            },
        );
        assert_eq!(g.check_entries(), expected, "{name}");
    }
}

#[test]
fn unused_entries_are_not_checked() {
    let mut g = read(&mut fresh(512), None).unwrap().gpt;
    let at = 4 * 128; // entry 5, type GUID nil
    g.entries[at + 32..at + 48].fill(0xff); // LBAs u64::MAX..=u64::MAX
    assert_eq!(g.check_entries(), Ok(()));
}

#[test]
fn a_disk_whose_entries_overlap_reads_with_the_verdict_recorded() {
    let mut d = fresh(512);
    let mut g = read(&mut d, None).unwrap().gpt;
    let mut b = g.entry(3);
    b.name = "USR-B".into();
    b.first_lba = 40;
    b.last_lba = 60;
    g.set_entry(4, &b);
    write(&mut d, &g).unwrap();
    let r = read(&mut d, None).unwrap();
    assert!(r.primary.is_ok() && r.backup.is_ok() && r.copies_match);
    let problem = EntryError::Overlap {
        first: extent(3, "USR-A", 34, 41),
        second: extent(4, "USR-B", 40, 60),
    };
    assert_eq!(r.entries, Err(problem.clone()));
    assert_eq!(r.preferred(), Copy::Primary);
    assert_eq!(
        r.usable_gpt().unwrap_err().to_string(),
        format!(
            "refusing to use the slots: the primary GPT's partition entries are invalid: {problem}"
        )
    );
    assert_eq!(
        problem.to_string(),
        "partition 4 \"USR-B\" (LBAs 40..=60) overlaps partition 3 \"USR-A\" (LBAs 34..=41)"
    );
    let backup = DiskGpt {
        primary: Err(CopyError::Signature { lba: 1 }),
        ..r
    };
    assert_eq!(backup.preferred(), Copy::Backup);
    assert!(read(&mut fresh(512), None).unwrap().usable_gpt().is_ok());
}

/// An empty table of `count` entries of `size` bytes on a disk of `sectors` sectors.
fn shaped_table(ss: u32, count: u32, size: u32, sectors: u64) -> Gpt {
    let array_sectors = (u64::from(count) * u64::from(size)).div_ceil(u64::from(ss));
    Gpt {
        sector_size: ss,
        disk_guid: Guid::NIL,
        first_usable_lba: 2 + array_sectors,
        last_usable_lba: sectors - 2 - array_sectors,
        primary_entries_lba: 2,
        backup_lba: sectors - 1,
        backup_entries_lba: sectors - 1 - array_sectors,
        num_entries: count,
        entry_size: size,
        revision: REVISION_1_0,
        header_tail: Vec::new(),
        entries: vec![0; (count * size) as usize],
    }
}

#[test]
fn entry_arrays_up_to_the_limits_are_accepted() {
    // (sector size, entries, entry size): a 1 MiB array, entries as large as a sector.
    for (ss, count, size) in [(512, 8192, 128), (512, 4, 512), (4096, 2, 4096)] {
        let g = shaped_table(ss, count, size, 4200);
        let mut d = MemDisk::new(vec![0; 4200 * ss as usize], ss);
        write_new(&mut d, &g).unwrap();
        let r = read(&mut d, None).unwrap();
        assert_eq!(
            (&r.primary, &r.backup),
            (&Ok(()), &Ok(())),
            "{count}×{size}/{ss}"
        );
        assert_eq!(r.gpt, g, "{count}×{size}/{ss}");
    }
}
