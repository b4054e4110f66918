//! The partition-table half of first boot: move the backup GPT to the disk's real end and grow
//! the ROOT entry to the end of the usable area, in one crash-safe table write.
//!
//! [`grow_table`] reads both copies through [`bootctl::gpt`], refuses what it must not touch
//! (a disk smaller than its table, no valid copy, inconsistent entries, ROOT missing or not the
//! last partition), and otherwise writes the table once with [`bootctl::gpt::write`]: backup
//! entries and header at the new end, flush, then primary entries and header, flush. Every
//! instant of that sequence leaves a disk a reader understands:
//!
//! | cut before | primary | backup read | table seen |
//! |---|---|---|---|
//! | the backup header | old, valid | old copy (the primary's alternate) | old |
//! | the primary entries | old, valid | old copy | old (a new backup waits at the end) |
//! | the primary header | CRC mismatch | new copy at the last LBA | new |
//! | nothing (done) | new, valid | new copy at the last LBA | new |
//!
//! Rerunning from any of these rewrites the same new table. Only the ROOT entry's last LBA
//! and the header locations change: every other entry, the /usr slots and their attribute
//! bits included, is written back byte for byte as read. Then the protective MBR is made to
//! cover the whole disk (one 66-byte write inside one sector; boot code untouched).
//!
//! ```
//! use bootctl::{layout, storage::MemDisk};
//! use updater::firstboot::table::grow_table;
//! let sizes = layout::LayoutSizes::small();
//! let small = layout::min_disk_bytes(&sizes, 512);
//! let mut bytes = layout::mem_disk(512).bytes;
//! bytes.resize(small as usize + (8 << 20), 0); // "flashed" onto a disk 8 MiB larger
//! let mut disk = MemDisk::new(bytes, 512);
//! let grown = grow_table(&mut disk).unwrap();
//! assert!(grown.wrote);
//! assert_eq!(grown.root_bytes_after - grown.root_bytes_before, 8 << 20);
//! assert!(!grow_table(&mut disk).unwrap().wrote, "a second run has nothing to do");
//! ```
use super::FirstbootError;
use bootctl::gpt::{self, Gpt, HEADER_SIZE, SIGNATURE};
use bootctl::storage::Storage;
use serde::Serialize;

/// Label of the partition first boot grows.
pub const ROOT_LABEL: &str = "ROOT";
/// ROOT ends on a multiple of this many bytes, like `image-tools disk` lays it out.
pub const ROOT_ALIGN_BYTES: u64 = 1 << 20;

/// What [`grow_table`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableOutcome {
    /// Logical sector size the table counts in.
    pub sector_size: u32,
    /// Disk size in sectors.
    pub disk_sectors: u64,
    /// ROOT's partition number.
    pub root_number: u32,
    /// ROOT's first LBA (never changed).
    pub root_first_lba: u64,
    /// ROOT's last LBA before.
    pub root_last_lba_before: u64,
    /// ROOT's last LBA after.
    pub root_last_lba_after: u64,
    /// ROOT's size in bytes before.
    pub root_bytes_before: u64,
    /// ROOT's size in bytes after.
    pub root_bytes_after: u64,
    /// Backup header LBA before (as the preferred copy said).
    pub backup_lba_before: u64,
    /// Backup header LBA after (the last LBA).
    pub backup_lba_after: u64,
    /// Whether both copies were written.
    pub wrote: bool,
    /// Whether the protective MBR was rewritten to cover the disk.
    pub wrote_mbr: bool,
    /// A copy that did not validate and was rebuilt from the other, if any.
    pub repaired: Option<String>,
}

impl TableOutcome {
    /// ROOT's byte offset on the disk.
    pub fn root_offset(&self) -> u64 {
        self.root_first_lba * u64::from(self.sector_size)
    }
}

/// Refuses a disk smaller than the valid primary header says the disk is (its backup header
/// or usable area past the end): a small disk flashed with a larger image, or a truncated
/// image file. Headers that do not validate are left to [`gpt::read`] to report.
fn check_disk_holds_table<S: Storage + ?Sized>(
    disk: &mut S,
    sector_size: u32,
) -> Result<(), FirstbootError> {
    let ss = u64::from(sector_size);
    let mut h = vec![0u8; sector_size as usize];
    if disk.read_at(ss, &mut h).is_err() || &h[0..8] != SIGNATURE {
        return Ok(());
    }
    let le32 = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
    let le64 = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
    let size = le32(12);
    if size < HEADER_SIZE || size > sector_size {
        return Ok(());
    }
    let mut copy = h[..size as usize].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != le32(16) {
        return Ok(());
    }
    let disk_sectors = disk.len() / ss;
    let table_end = le64(32).max(le64(48)); // the alternate header, the last usable LBA
    if table_end >= disk_sectors {
        return Err(FirstbootError::DiskSmallerThanTable {
            disk_bytes: disk.len(),
            table_bytes: table_end.saturating_add(1).saturating_mul(ss),
        });
    }
    Ok(())
}

/// The partition labelled ROOT, checked to be the last partition on the disk.
fn root_entry(table: &Gpt) -> Result<(u32, gpt::Entry), FirstbootError> {
    let used = table.used_entries();
    let mut roots = used.iter().filter(|(_, e)| e.name == ROOT_LABEL);
    let Some((number, root)) = roots.next().cloned() else {
        return Err(FirstbootError::NoRoot);
    };
    if let Some((other, _)) = roots.next() {
        return Err(FirstbootError::SeveralRoots {
            first: number,
            second: *other,
        });
    }
    if let Some((after, e)) = used
        .iter()
        .filter(|(n, e)| *n != number && e.first_lba > root.first_lba)
        .min_by_key(|(_, e)| e.first_lba)
    {
        return Err(FirstbootError::RootNotLast {
            root: number,
            after: *after,
            label: e.name.clone(),
        });
    }
    Ok((number, root))
}

/// Moves the backup GPT to the end of `disk` and grows ROOT to the end of the usable area
/// (aligned down to [`ROOT_ALIGN_BYTES`], never shrunk), writing nothing when both are done
/// already. See the module doc for the write order.
pub fn grow_table<S: Storage + ?Sized>(disk: &mut S) -> Result<TableOutcome, FirstbootError> {
    let sector_size = gpt::detect_sector_size(disk, None).map_err(FirstbootError::Gpt)?;
    check_disk_holds_table(disk, sector_size)?;
    let state = gpt::read(disk, Some(sector_size)).map_err(FirstbootError::Gpt)?;
    let table = state.usable_gpt().map_err(FirstbootError::Gpt)?;
    let (root_number, root) = root_entry(table)?;
    let ss = u64::from(sector_size);

    let mut new = table.clone();
    if !state.backup_at_end() || new.backup_lba != state.disk_sectors - 1 {
        new.relocate_backup(state.disk_sectors)
            .map_err(FirstbootError::Gpt)?;
    }
    let align = ROOT_ALIGN_BYTES / ss;
    let aligned_end = (new.last_usable_lba + 1) / align * align;
    let last_lba = aligned_end
        .checked_sub(1)
        .filter(|&end| end > root.last_lba)
        .unwrap_or(root.last_lba);
    let mut grown = root.clone();
    grown.last_lba = last_lba;
    new.set_entry(root_number, &grown);

    let repaired = match (&state.primary, &state.backup) {
        (Err(e), _) => Some(format!("primary GPT: {e}")),
        (_, Err(e)) => Some(format!("backup GPT: {e}")),
        _ => None,
    };
    let wrote = state.needs_repair() || last_lba != root.last_lba;
    if wrote {
        gpt::write(disk, &new).map_err(FirstbootError::Gpt)?;
    }
    let wrote_mbr = fix_protective_mbr(disk, sector_size)?;
    Ok(TableOutcome {
        sector_size,
        disk_sectors: state.disk_sectors,
        root_number,
        root_first_lba: root.first_lba,
        root_last_lba_before: root.last_lba,
        root_last_lba_after: last_lba,
        root_bytes_before: (root.last_lba - root.first_lba + 1) * ss,
        root_bytes_after: (last_lba - root.first_lba + 1) * ss,
        backup_lba_before: table.backup_lba,
        backup_lba_after: new.backup_lba,
        wrote,
        wrote_mbr,
        repaired,
    })
}

/// Rewrites a protective MBR record (type 0xEE) whose size field does not cover the disk.
/// An MBR without a protective record is left alone.
fn fix_protective_mbr<S: Storage + ?Sized>(
    disk: &mut S,
    sector_size: u32,
) -> Result<bool, FirstbootError> {
    let mut rec = [0u8; 16];
    disk.read_at(446, &mut rec)
        .map_err(FirstbootError::io("reading the protective MBR"))?;
    let sectors = disk.len() / u64::from(sector_size);
    let want = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    let have = u32::from_le_bytes(rec[12..16].try_into().expect("4 bytes"));
    if rec[4] != 0xee || have == want {
        return Ok(false);
    }
    gpt::write_protective_mbr(disk, sector_size).map_err(FirstbootError::Gpt)?;
    disk.flush()
        .map_err(FirstbootError::io("flushing the protective MBR"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootctl::layout;
    use bootctl::storage::MemDisk;
    use bootctl::SlotDisk;

    const MIB: usize = 1 << 20;

    /// The standard small layout written for `small` bytes, on a disk of `small + extra`.
    fn flashed(sector_size: u32, extra: usize) -> MemDisk {
        let mut bytes = layout::mem_disk(sector_size).bytes;
        bytes.resize(bytes.len() + extra, 0);
        MemDisk::new(bytes, sector_size)
    }

    #[test]
    fn grows_root_to_the_aligned_end_and_moves_the_backup_on_both_sector_sizes() {
        for ss in [512u32, 4096] {
            let mut disk = flashed(ss, 16 * MIB);
            let before = gpt::read(&mut disk, None).unwrap().gpt;
            let out = grow_table(&mut disk).unwrap();
            let after = gpt::read(&mut disk, None).unwrap();
            assert!(after.primary.is_ok() && after.backup.is_ok() && after.copies_match);
            assert!(after.backup_at_end());
            let root = after.gpt.entry(9);
            assert_eq!(root.last_lba, out.root_last_lba_after);
            assert_eq!(
                out.root_bytes_after,
                out.root_bytes_before + 16 * MIB as u64
            );
            assert_eq!((root.last_lba + 1) * u64::from(ss) % ROOT_ALIGN_BYTES, 0);
            for n in [1, 2, 3, 4, 6] {
                assert_eq!(after.gpt.entry(n), before.entry(n), "entry {n} on {ss}");
            }
        }
    }

    #[test]
    fn leaves_the_slots_attributes_as_they_were() {
        let mut disk = flashed(512, 4 * MIB);
        let mut slots = SlotDisk::from_storage(disk.clone(), None).unwrap();
        slots.set_next(&bootctl::SlotId::B, 3).unwrap();
        disk = slots.into_storage();
        let before = gpt::read(&mut disk, None).unwrap().gpt;
        grow_table(&mut disk).unwrap();
        let after = gpt::read(&mut disk, None).unwrap().gpt;
        assert_eq!(after.entry(3).attributes, before.entry(3).attributes);
        assert_eq!(after.entry(4).attributes, before.entry(4).attributes);
    }

    #[test]
    fn a_disk_of_the_images_own_size_is_left_alone() {
        let mut disk = flashed(512, 0);
        let copy = disk.clone();
        let out = grow_table(&mut disk).unwrap();
        assert!(!out.wrote && !out.wrote_mbr);
        assert_eq!(out.root_bytes_after, out.root_bytes_before);
        assert!(disk == copy, "nothing written");
    }

    #[test]
    fn a_growth_of_less_than_the_alignment_moves_only_the_backup() {
        let mut disk = flashed(512, 4096);
        let out = grow_table(&mut disk).unwrap();
        assert!(out.wrote);
        assert_eq!(out.root_last_lba_after, out.root_last_lba_before);
        assert!(gpt::read(&mut disk, None).unwrap().backup_at_end());
    }

    #[test]
    fn the_protective_mbr_is_made_to_cover_the_grown_disk() {
        let mut disk = flashed(512, 4 * MIB);
        assert!(grow_table(&mut disk).unwrap().wrote_mbr);
        let size = u32::from_le_bytes(disk.bytes[446 + 12..446 + 16].try_into().unwrap());
        assert_eq!(u64::from(size), disk.bytes.len() as u64 / 512 - 1);
    }

    #[test]
    fn a_disk_smaller_than_the_table_is_refused() {
        let mut bytes = layout::mem_disk(512).bytes;
        let table_bytes = bytes.len() as u64;
        bytes.truncate(bytes.len() - MIB);
        let mut disk = MemDisk::new(bytes, 512);
        let e = grow_table(&mut disk).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the disk is {} bytes but its partition table describes {table_bytes} bytes: refusing to touch a disk smaller than its image",
                table_bytes - MIB as u64
            )
        );
    }

    #[test]
    fn root_that_is_not_the_last_partition_is_refused() {
        let mut disk = flashed(512, 4 * MIB);
        let mut table = gpt::read(&mut disk, None).unwrap().gpt;
        // Give OEM (6) the place after ROOT: ROOT's second half.
        let mut root = table.entry(9);
        let mut oem = table.entry(6);
        root.last_lba -= 1024;
        oem.first_lba = root.last_lba + 1;
        oem.last_lba = root.last_lba + 1024;
        table.set_entry(9, &root);
        table.set_entry(6, &oem);
        gpt::write(&mut disk, &table).unwrap();
        let e = grow_table(&mut disk).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ROOT (partition 9) is not the last partition (partition 6 \"OEM\" follows it): refusing to grow it"
        );
    }

    #[test]
    fn a_disk_without_root_is_refused() {
        let mut disk = flashed(512, 4 * MIB);
        let mut table = gpt::read(&mut disk, None).unwrap().gpt;
        let mut root = table.entry(9);
        root.name = "DATA".into();
        table.set_entry(9, &root);
        gpt::write(&mut disk, &table).unwrap();
        assert_eq!(
            grow_table(&mut disk).unwrap_err().to_string(),
            "no partition labelled ROOT in the GPT"
        );
    }

    #[test]
    fn a_gpt_with_no_valid_copy_is_refused() {
        let mut disk = flashed(512, 4 * MIB);
        disk.bytes[512 + 16] ^= 1; // primary header CRC
        let backup = gpt::read(&mut MemDisk::new(layout::mem_disk(512).bytes, 512), None)
            .unwrap()
            .gpt
            .backup_lba;
        disk.bytes[backup as usize * 512 + 16] ^= 1; // backup header CRC
        let e = grow_table(&mut disk).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the partition table cannot be used: "),
            "{e}"
        );
        assert!(matches!(e, FirstbootError::Gpt(_)), "{e:?}");
    }

    #[test]
    fn a_cut_after_the_new_backup_leaves_the_old_table_and_a_rerun_finishes() {
        let mut disk = flashed(512, 4 * MIB);
        let old = gpt::read(&mut disk, None).unwrap().gpt;
        let mut done = disk.clone();
        grow_table(&mut done).unwrap();
        let new = gpt::read(&mut done, None).unwrap().gpt;
        // Cut after the backup copy: the new backup is at the end, the primary is old.
        let at = (new.backup_entries_lba * 512) as usize;
        disk.bytes[at..].copy_from_slice(&done.bytes[at..]);
        assert_eq!(gpt::read(&mut disk, None).unwrap().gpt, old);
        grow_table(&mut disk).unwrap();
        assert_eq!(gpt::read(&mut disk, None).unwrap().gpt, new);
    }

    #[test]
    fn a_cut_before_the_primary_header_reads_the_new_backup_and_a_rerun_repairs() {
        let mut disk = flashed(512, 4 * MIB);
        let mut done = disk.clone();
        grow_table(&mut done).unwrap();
        let new = gpt::read(&mut done, None).unwrap().gpt;
        // Everything but the primary header: primary entries new, header old.
        let keep = 512..1024;
        let old_header = disk.bytes[keep.clone()].to_vec();
        disk.bytes.copy_from_slice(&done.bytes);
        disk.bytes[keep].copy_from_slice(&old_header);
        let cut = gpt::read(&mut disk, None).unwrap();
        assert!(cut.primary.is_err() && cut.backup.is_ok());
        assert_eq!(cut.gpt.entry(9), new.entry(9));
        let out = grow_table(&mut disk).unwrap();
        assert!(out.wrote && out.repaired.unwrap().starts_with("primary GPT"));
        let after = gpt::read(&mut disk, None).unwrap();
        assert!(after.primary.is_ok() && after.copies_match);
    }
}
