//! The GUID Partition Table on disk: parse and validate both copies, serialize, write.
//!
//! This module owns the byte layout (UEFI spec, "GPT Disk Layout"): the header at LBA 1 and
//! its backup at the last LBA, each pointing at an entry array. It validates each copy on its
//! own (signature, revision, header size and CRC, self LBA, LBA ranges, entry size, array size
//! and CRC), prefers the primary when both are valid, and writes in the crash-safe order of
//! DESIGN §4: backup entries, backup header, flush, primary entries, primary header, flush.
//!
//! # Partition entries
//!
//! A copy that passes those checks can still describe an impossible table: an entry that ends
//! before it starts, lies outside the usable range, or shares sectors with another entry (a
//! USR-B over USR-A would make an install write the booted slot). [`Gpt::check_entries`] finds
//! these, and [`read`] records its verdict for the table it chose in [`DiskGpt::entries`].
//!
//! A bad entry condemns the *disk* for slot operations, not the copy: the other copy is not used
//! instead. The kernel and GRUB check only the CRCs and the header, so they keep using a
//! CRC-valid primary whatever its entries say; taking the slots from the backup would have us
//! write where neither of them looks, and `repair` would silently replace the partition layout
//! the running kernel uses. So `read` still succeeds (`bootctl show` can say what is wrong), and
//! every slot operation, `repair` included, refuses with [`Error::BadEntries`] until someone
//! fixes the table by hand.
//!
//! Every LBA and byte computation on values read from disk is checked: a header cannot make an
//! offset wrap around, and [`MAX_ENTRY_ARRAY_BYTES`] bounds what it can make us allocate.
//!
//! Entries are kept as the raw entry array, so bytes this code does not interpret (attribute
//! bits other than the slot bits, reserved bytes of larger entries, header bytes past 92) are
//! written back exactly as read. The `gpt` crate is not used for writing because its writer
//! repacks the entries (partition 9 would come back as 6) and interleaves primary and backup
//! writes, which breaks the write-order invariant.
//!
//! ```
//! use bootctl::gpt::{self, Entry, Gpt};
//! use bootctl::storage::MemDisk;
//! use bootctl::{Guid, guid::USR_TYPE};
//!
//! let mut table = Gpt::new(8 << 20, 512, Guid::random().unwrap()).unwrap();
//! table.set_entry(3, &Entry { type_guid: USR_TYPE, unique_guid: Guid::random().unwrap(),
//!     first_lba: 2048, last_lba: 4095, attributes: 0, name: "USR-A".into() });
//! let mut disk = MemDisk::new(vec![0; 8 << 20], 512);
//! gpt::write_new(&mut disk, &table).unwrap();
//! let state = gpt::read(&mut disk, None).unwrap();
//! assert!(state.primary.is_ok() && state.backup.is_ok());
//! assert_eq!(state.gpt.entry(3).name, "USR-A");
//! ```
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::storage::Storage;

/// "EFI PART", the header signature.
pub const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Header revision 1.0, the only one defined.
pub const REVISION_1_0: u32 = 0x0001_0000;
/// Size of the header fields defined by the spec.
pub const HEADER_SIZE: u32 = 92;
/// Size of the entry fields defined by the spec.
pub const MIN_ENTRY_SIZE: u32 = 128;
/// Largest entry array accepted (bounds what a corrupt header can make us allocate).
pub const MAX_ENTRY_ARRAY_BYTES: u64 = 1 << 20;
/// Entries in a table made by [`Gpt::new`].
pub const DEFAULT_NUM_ENTRIES: u32 = 128;
/// Sector sizes this crate supports.
pub const SECTOR_SIZES: [u32; 2] = [512, 4096];

/// Why one GPT copy was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// No "EFI PART" at the header LBA.
    #[error("no GPT signature at LBA {lba}")]
    Signature {
        /// Where the header was looked for.
        lba: u64,
    },
    /// Header revision other than 1.x.
    #[error("unsupported header revision {revision:#010x}")]
    Revision {
        /// The revision found.
        revision: u32,
    },
    /// Header size below 92 or above a sector.
    #[error("bad header size {size}")]
    HeaderSize {
        /// The size found.
        size: u32,
    },
    /// The header CRC does not match its bytes.
    #[error("header CRC {stored:#010x} does not match computed {computed:#010x}")]
    HeaderCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC of the header bytes.
        computed: u32,
    },
    /// The header's own LBA field does not say where it was read from.
    #[error("header at LBA {expected} says it is at LBA {found}")]
    SelfLba {
        /// Where it was read.
        expected: u64,
        /// What it claims.
        found: u64,
    },
    /// Entry size not 128 × 2^n (up to a sector) or array larger than [`MAX_ENTRY_ARRAY_BYTES`].
    #[error("bad entry array: {count} entries of {size} bytes")]
    EntryArray {
        /// Number of entries.
        count: u32,
        /// Size of one entry.
        size: u32,
    },
    /// LBAs that contradict each other or the disk size.
    #[error("bad LBAs: {what}")]
    Lbas {
        /// Which constraint failed.
        what: String,
    },
    /// The entry array CRC does not match its bytes.
    #[error("entry array CRC {stored:#010x} does not match computed {computed:#010x}")]
    EntriesCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC of the entry array.
        computed: u32,
    },
    /// Reading the copy failed.
    #[error("unreadable: {what}")]
    Unreadable {
        /// The I/O error, as text.
        what: String,
    },
}

/// One used entry's place on the disk, as errors report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Partition number (1-based).
    pub number: u32,
    /// Its label.
    pub name: String,
    /// First LBA, inclusive.
    pub first_lba: u64,
    /// Last LBA, inclusive.
    pub last_lba: u64,
}

impl std::fmt::Display for Extent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partition {} {:?} (LBAs {}..={})",
            self.number, self.name, self.first_lba, self.last_lba
        )
    }
}

/// Why the entries of a table that passed its CRC checks cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// An entry whose last LBA is before its first.
    #[error("{0} ends before it starts")]
    Inverted(Extent),
    /// An entry outside the header's usable range.
    #[error("{extent} lies outside the usable LBAs {first_usable}..={last_usable}")]
    OutsideUsable {
        /// The entry.
        extent: Extent,
        /// First usable LBA of the header.
        first_usable: u64,
        /// Last usable LBA of the header.
        last_usable: u64,
    },
    /// Two entries that share sectors.
    #[error("{second} overlaps {first}")]
    Overlap {
        /// The entry that starts first (lower partition number on a tie).
        first: Extent,
        /// The entry that starts inside it.
        second: Extent,
    },
}

/// One partition entry (the 128 bytes every entry starts with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Partition type; nil for an unused entry.
    pub type_guid: Guid,
    /// The partition's own GUID (PARTUUID).
    pub unique_guid: Guid,
    /// First LBA, inclusive.
    pub first_lba: u64,
    /// Last LBA, inclusive.
    pub last_lba: u64,
    /// Attribute bits (slot bits 48–56, see [`crate::attrs`]).
    pub attributes: u64,
    /// Label (UTF-16LE on disk, at most 36 code units).
    pub name: String,
}

impl Entry {
    /// True for an entry that describes a partition.
    pub fn is_used(&self) -> bool {
        !self.type_guid.is_nil()
    }
}

/// A partition table: the fields both copies share, where each copy lives, and the entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// Logical sector size the LBAs count in.
    pub sector_size: u32,
    /// The disk GUID.
    pub disk_guid: Guid,
    /// First LBA a partition may use.
    pub first_usable_lba: u64,
    /// Last LBA a partition may use.
    pub last_usable_lba: u64,
    /// Where the primary entry array starts (usually 2).
    pub primary_entries_lba: u64,
    /// Where the backup header is (the last LBA of the disk, unless the disk grew).
    pub backup_lba: u64,
    /// Where the backup entry array starts.
    pub backup_entries_lba: u64,
    /// Number of entries in the array.
    pub num_entries: u32,
    /// Bytes per entry.
    pub entry_size: u32,
    revision: u32,
    /// Header bytes from 92 to the header size, kept as read.
    header_tail: Vec<u8>,
    entries: Vec<u8>,
}

/// Which copy of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// Header at LBA 1.
    Primary,
    /// Header at the last LBA.
    Backup,
}

impl std::fmt::Display for Copy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Copy::Primary => "primary",
            Copy::Backup => "backup",
        })
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn sectors_for(bytes: u64, sector_size: u32) -> u64 {
    bytes.div_ceil(u64::from(sector_size))
}

/// The byte offset of `lba`, or [`Error::LbaOverflow`] when it does not fit in 64 bits.
pub fn lba_offset(lba: u64, sector_size: u32) -> Result<u64> {
    lba.checked_mul(u64::from(sector_size))
        .ok_or(Error::LbaOverflow { lba, sector_size })
}

impl Gpt {
    /// A fresh, empty table for a disk of `disk_bytes` with 128 entries of 128 bytes.
    pub fn new(disk_bytes: u64, sector_size: u32, disk_guid: Guid) -> Result<Gpt> {
        if !SECTOR_SIZES.contains(&sector_size) {
            return Err(Error::UnsupportedSectorSize { size: sector_size });
        }
        let sectors = disk_bytes / u64::from(sector_size);
        let array_sectors =
            sectors_for(u64::from(DEFAULT_NUM_ENTRIES * MIN_ENTRY_SIZE), sector_size);
        // MBR + header + array, twice (minus the MBR), plus at least one usable sector.
        if sectors < 3 + 2 * array_sectors + 1 {
            return Err(Error::DiskTooSmall {
                bytes: disk_bytes,
                sector_size,
            });
        }
        let backup_lba = sectors - 1;
        let backup_entries_lba = backup_lba - array_sectors;
        Ok(Gpt {
            sector_size,
            disk_guid,
            first_usable_lba: 2 + array_sectors,
            last_usable_lba: backup_entries_lba - 1,
            primary_entries_lba: 2,
            backup_lba,
            backup_entries_lba,
            num_entries: DEFAULT_NUM_ENTRIES,
            entry_size: MIN_ENTRY_SIZE,
            revision: REVISION_1_0,
            header_tail: Vec::new(),
            entries: vec![0; (DEFAULT_NUM_ENTRIES * MIN_ENTRY_SIZE) as usize],
        })
    }

    /// Sectors the entry array takes.
    pub fn array_sectors(&self) -> u64 {
        sectors_for(self.entries.len() as u64, self.sector_size)
    }

    fn entry_bytes(&self, number: u32) -> &[u8] {
        let at = (number as usize - 1) * self.entry_size as usize;
        &self.entries[at..at + MIN_ENTRY_SIZE as usize]
    }

    /// The entry of partition `number` (1-based).
    ///
    /// # Panics
    /// If `number` is 0 or above [`Gpt::num_entries`].
    pub fn entry(&self, number: u32) -> Entry {
        assert!(
            number >= 1 && number <= self.num_entries,
            "partition {number} out of range"
        );
        let b = self.entry_bytes(number);
        let units: Vec<u16> = b[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        Entry {
            type_guid: Guid::from_bytes(b[0..16].try_into().expect("16 bytes")),
            unique_guid: Guid::from_bytes(b[16..32].try_into().expect("16 bytes")),
            first_lba: le64(b, 32),
            last_lba: le64(b, 40),
            attributes: le64(b, 48),
            name: String::from_utf16_lossy(&units),
        }
    }

    /// Every used entry with its partition number, in entry order.
    pub fn used_entries(&self) -> Vec<(u32, Entry)> {
        (1..=self.num_entries)
            .map(|n| (n, self.entry(n)))
            .filter(|(_, e)| e.is_used())
            .collect()
    }

    /// Checks every used entry: first ≤ last, inside the usable range, and no two sharing a
    /// sector. Reports the first problem found, entries taken in partition-number order for the
    /// single-entry checks and in LBA order for overlaps.
    pub fn check_entries(&self) -> Result<(), EntryError> {
        let mut extents = Vec::new();
        for (number, e) in self.used_entries() {
            let extent = Extent {
                number,
                name: e.name,
                first_lba: e.first_lba,
                last_lba: e.last_lba,
            };
            if extent.first_lba > extent.last_lba {
                return Err(EntryError::Inverted(extent));
            }
            if extent.first_lba < self.first_usable_lba || extent.last_lba > self.last_usable_lba {
                return Err(EntryError::OutsideUsable {
                    extent,
                    first_usable: self.first_usable_lba,
                    last_usable: self.last_usable_lba,
                });
            }
            extents.push(extent);
        }
        // Sorted by first LBA, the entries before the first overlap are disjoint, so that
        // overlap is between neighbours.
        extents.sort_by_key(|e| (e.first_lba, e.number));
        if let Some(w) = extents.windows(2).find(|w| w[1].first_lba <= w[0].last_lba) {
            return Err(EntryError::Overlap {
                first: w[0].clone(),
                second: w[1].clone(),
            });
        }
        Ok(())
    }

    /// Replaces the first 128 bytes of entry `number` (1-based); bytes past 128 are kept.
    /// Names longer than 36 UTF-16 code units are cut.
    pub fn set_entry(&mut self, number: u32, entry: &Entry) {
        assert!(
            number >= 1 && number <= self.num_entries,
            "partition {number} out of range"
        );
        let at = (number as usize - 1) * self.entry_size as usize;
        let b = &mut self.entries[at..at + MIN_ENTRY_SIZE as usize];
        b.fill(0);
        b[0..16].copy_from_slice(entry.type_guid.as_bytes());
        b[16..32].copy_from_slice(entry.unique_guid.as_bytes());
        b[32..40].copy_from_slice(&entry.first_lba.to_le_bytes());
        b[40..48].copy_from_slice(&entry.last_lba.to_le_bytes());
        b[48..56].copy_from_slice(&entry.attributes.to_le_bytes());
        for (i, u) in entry.name.encode_utf16().take(36).enumerate() {
            b[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
    }

    /// Sets the 64-bit attribute field of partition `number`, touching nothing else.
    pub fn set_attributes(&mut self, number: u32, attributes: u64) {
        assert!(
            number >= 1 && number <= self.num_entries,
            "partition {number} out of range"
        );
        let at = (number as usize - 1) * self.entry_size as usize + 48;
        self.entries[at..at + 8].copy_from_slice(&attributes.to_le_bytes());
    }

    /// The raw entry array.
    pub fn entry_array(&self) -> &[u8] {
        &self.entries
    }

    /// The header sector of one copy, with fresh CRCs.
    pub fn header_sector(&self, copy: Copy) -> Vec<u8> {
        let (my, alternate, entries_lba) = match copy {
            Copy::Primary => (1, self.backup_lba, self.primary_entries_lba),
            Copy::Backup => (self.backup_lba, 1, self.backup_entries_lba),
        };
        let header_size = HEADER_SIZE as usize + self.header_tail.len();
        let mut s = vec![0u8; self.sector_size as usize];
        s[0..8].copy_from_slice(SIGNATURE);
        s[8..12].copy_from_slice(&self.revision.to_le_bytes());
        s[12..16].copy_from_slice(&(header_size as u32).to_le_bytes());
        s[24..32].copy_from_slice(&my.to_le_bytes());
        s[32..40].copy_from_slice(&alternate.to_le_bytes());
        s[40..48].copy_from_slice(&self.first_usable_lba.to_le_bytes());
        s[48..56].copy_from_slice(&self.last_usable_lba.to_le_bytes());
        s[56..72].copy_from_slice(self.disk_guid.as_bytes());
        s[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        s[80..84].copy_from_slice(&self.num_entries.to_le_bytes());
        s[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        s[88..92].copy_from_slice(&crc32fast::hash(&self.entries).to_le_bytes());
        s[92..header_size].copy_from_slice(&self.header_tail);
        let crc = crc32fast::hash(&s[..header_size]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        s
    }

    /// The entry array padded to whole sectors.
    fn padded_entries(&self) -> Vec<u8> {
        let mut e = self.entries.clone();
        e.resize(
            (self.array_sectors() * u64::from(self.sector_size)) as usize,
            0,
        );
        e
    }

    /// Moves the backup copy to the last LBA of a disk of `sectors` sectors and lets partitions
    /// use the space up to the new backup entry array.
    ///
    /// A disk too small to hold the backup copy after the first usable LBA is
    /// [`Error::DiskTooSmall`], and the table is left as it was.
    pub fn relocate_backup(&mut self, sectors: u64) -> Result<()> {
        let too_small = || Error::DiskTooSmall {
            bytes: sectors.saturating_mul(u64::from(self.sector_size)),
            sector_size: self.sector_size,
        };
        // Backup header, its entry array, then at least an empty usable range.
        let backup_lba = sectors.checked_sub(1).ok_or_else(too_small)?;
        let backup_entries_lba = backup_lba
            .checked_sub(self.array_sectors())
            .filter(|&lba| lba >= self.first_usable_lba)
            .ok_or_else(too_small)?;
        self.backup_lba = backup_lba;
        self.backup_entries_lba = backup_entries_lba;
        self.last_usable_lba = backup_entries_lba - 1; // >= first_usable_lba >= 1
        Ok(())
    }
}

/// The result of reading both copies of a disk's GPT.
#[derive(Debug, Clone)]
pub struct DiskGpt {
    /// The table from the preferred copy (primary when valid, else backup).
    pub gpt: Gpt,
    /// Whether the primary copy validated, and why not.
    pub primary: Result<(), CopyError>,
    /// Whether the backup copy validated, and why not.
    pub backup: Result<(), CopyError>,
    /// Disk size in sectors.
    pub disk_sectors: u64,
    /// Both copies valid and describing the same table.
    pub copies_match: bool,
    /// Whether the entries of [`DiskGpt::gpt`] are usable ([`Gpt::check_entries`]).
    pub entries: Result<(), EntryError>,
}

impl DiskGpt {
    /// The backup header sits at the last LBA.
    pub fn backup_at_end(&self) -> bool {
        self.backup.is_ok() && self.disk_sectors.checked_sub(1) == Some(self.gpt.backup_lba)
    }

    /// The copy [`DiskGpt::gpt`] was taken from.
    pub fn preferred(&self) -> Copy {
        if self.primary.is_ok() {
            Copy::Primary
        } else {
            Copy::Backup
        }
    }

    /// The table, if its entries are usable for slot operations; else [`Error::BadEntries`].
    pub fn usable_gpt(&self) -> Result<&Gpt> {
        match &self.entries {
            Ok(()) => Ok(&self.gpt),
            Err(problem) => Err(Error::BadEntries {
                copy: self.preferred(),
                problem: Box::new(problem.clone()),
            }),
        }
    }

    /// Something for `repair` to do: an invalid copy, copies that differ, or a misplaced backup.
    pub fn needs_repair(&self) -> bool {
        !(self.primary.is_ok() && self.backup.is_ok() && self.copies_match && self.backup_at_end())
    }
}

/// A copy that passed validation.
struct ValidCopy {
    my_lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
    gpt: Gpt,
}

fn read_copy<S: Storage + ?Sized>(
    disk: &mut S,
    sector_size: u32,
    lba: u64,
    disk_sectors: u64,
    copy: Copy,
) -> Result<ValidCopy, CopyError> {
    let ss = u64::from(sector_size);
    let mut s = vec![0u8; sector_size as usize];
    let offset = lba_offset(lba, sector_size).map_err(|e| CopyError::Unreadable {
        what: e.to_string(),
    })?;
    disk.read_at(offset, &mut s)
        .map_err(|e| CopyError::Unreadable {
            what: e.to_string(),
        })?;
    if &s[0..8] != SIGNATURE {
        return Err(CopyError::Signature { lba });
    }
    let revision = le32(&s, 8);
    if revision >> 16 != 1 {
        return Err(CopyError::Revision { revision });
    }
    let header_size = le32(&s, 12);
    if header_size < HEADER_SIZE || header_size > sector_size {
        return Err(CopyError::HeaderSize { size: header_size });
    }
    let stored = le32(&s, 16);
    let mut h = s[..header_size as usize].to_vec();
    h[16..20].fill(0);
    let computed = crc32fast::hash(&h);
    if stored != computed {
        return Err(CopyError::HeaderCrc { stored, computed });
    }
    let my_lba = le64(&s, 24);
    if my_lba != lba {
        return Err(CopyError::SelfLba {
            expected: lba,
            found: my_lba,
        });
    }
    let (alternate_lba, first_usable, last_usable, entries_lba) =
        (le64(&s, 32), le64(&s, 40), le64(&s, 48), le64(&s, 72));
    let (count, size) = (le32(&s, 80), le32(&s, 84));
    let array_bytes = u64::from(count) * u64::from(size);
    if count == 0
        || size < MIN_ENTRY_SIZE
        || !size.is_power_of_two()
        || size > sector_size
        || array_bytes > MAX_ENTRY_ARRAY_BYTES
    {
        return Err(CopyError::EntryArray { count, size });
    }
    let array_sectors = sectors_for(array_bytes, sector_size);
    let bad = |what: String| Err(CopyError::Lbas { what });
    // `read` only looks at disks of two sectors or more.
    let last = disk_sectors.saturating_sub(1);
    if last_usable
        .checked_add(1)
        .is_none_or(|end| first_usable > end)
        || last_usable >= last
    {
        return bad(format!(
            "usable range {first_usable}..={last_usable} on a disk of {disk_sectors} sectors"
        ));
    }
    // The primary's alternate is the backup header, after the usable area and the backup
    // entry array; the backup's alternate is the primary at LBA 1.
    let alternate_ok = match copy {
        Copy::Primary => {
            alternate_lba <= last
                && last_usable
                    .checked_add(array_sectors)
                    .is_some_and(|array_end| alternate_lba > array_end)
        }
        Copy::Backup => alternate_lba == 1,
    };
    if !alternate_ok {
        return bad(format!(
            "alternate header LBA {alternate_lba} on a disk of {disk_sectors} sectors"
        ));
    }
    let entries_end = entries_lba.checked_add(array_sectors); // exclusive
    let entries_ok = match (copy, entries_end) {
        (_, None) => false,
        (Copy::Primary, Some(end)) => entries_lba >= 2 && end <= first_usable,
        (Copy::Backup, Some(end)) => entries_lba > last_usable && end <= my_lba,
    };
    if !entries_ok {
        return bad(format!("entry array at LBA {entries_lba} ({array_sectors} sectors) overlaps the header or the usable range {first_usable}..={last_usable}"));
    }
    let mut entries = vec![0u8; array_bytes as usize];
    // entries_lba < disk_sectors (checked above), so its offset is inside the disk.
    disk.read_at(entries_lba * ss, &mut entries)
        .map_err(|e| CopyError::Unreadable {
            what: e.to_string(),
        })?;
    let stored = le32(&s, 88);
    let computed = crc32fast::hash(&entries);
    if stored != computed {
        return Err(CopyError::EntriesCrc { stored, computed });
    }
    let (primary_entries_lba, backup_lba, backup_entries_lba) = match copy {
        // The alternate is past last_usable + array_sectors (checked above).
        Copy::Primary => (entries_lba, alternate_lba, alternate_lba - array_sectors),
        Copy::Backup => (2, my_lba, entries_lba),
    };
    let gpt = Gpt {
        sector_size,
        disk_guid: Guid::from_bytes(s[56..72].try_into().expect("16 bytes")),
        first_usable_lba: first_usable,
        last_usable_lba: last_usable,
        primary_entries_lba,
        backup_lba,
        backup_entries_lba,
        num_entries: count,
        entry_size: size,
        revision,
        header_tail: s[HEADER_SIZE as usize..header_size as usize].to_vec(),
        entries,
    };
    Ok(ValidCopy {
        my_lba,
        alternate_lba,
        entries_lba,
        gpt,
    })
}

fn has_signature<S: Storage + ?Sized>(disk: &mut S, offset: u64) -> bool {
    let mut sig = [0u8; 8];
    disk.read_at(offset, &mut sig).is_ok() && &sig == SIGNATURE
}

/// Finds the sector size the GPT was laid out for.
///
/// `requested` (a user's `--sector-size`) wins over the device's own; for plain files, where
/// neither is known, 512 and 4096 are tried. A GPT found only at another size than the one
/// required is a [`Error::SectorSizeMismatch`].
pub fn detect_sector_size<S: Storage + ?Sized>(
    disk: &mut S,
    requested: Option<u32>,
) -> Result<u32> {
    if let Some(size) = requested {
        if !SECTOR_SIZES.contains(&size) {
            return Err(Error::UnsupportedSectorSize { size });
        }
    }
    let len = disk.len();
    let found_at = |disk: &mut S, ss: u32| {
        len >= 2 * u64::from(ss)
            && (has_signature(disk, u64::from(ss))
                || has_signature(disk, (len / u64::from(ss) - 1) * u64::from(ss)))
    };
    let required = requested.or(disk.device_sector_size());
    match required {
        Some(ss) => {
            if found_at(disk, ss) {
                return Ok(ss);
            }
            match SECTOR_SIZES
                .into_iter()
                .find(|&other| other != ss && found_at(disk, other))
            {
                Some(other) => Err(Error::SectorSizeMismatch {
                    gpt: other,
                    device: ss,
                }),
                None => Err(Error::NotGpt {
                    tried: format!("{ss}-byte"),
                }),
            }
        }
        None => SECTOR_SIZES
            .into_iter()
            .find(|&ss| found_at(disk, ss))
            .ok_or(Error::NotGpt {
                tried: "512- or 4096-byte".into(),
            }),
    }
}

/// Reads and validates both copies; fails only when neither validates.
///
/// The entries of the chosen table are checked too, but a bad entry does not fail the read: it
/// is recorded in [`DiskGpt::entries`] (see the module doc for why).
pub fn read<S: Storage + ?Sized>(disk: &mut S, sector_size: Option<u32>) -> Result<DiskGpt> {
    let ss = detect_sector_size(disk, sector_size)?;
    let disk_sectors = disk.len() / u64::from(ss);
    let primary = read_copy(disk, ss, 1, disk_sectors, Copy::Primary);
    let backup_lba = match &primary {
        Ok(p) => p.alternate_lba,
        Err(_) => disk_sectors - 1,
    };
    let backup = read_copy(disk, ss, backup_lba, disk_sectors, Copy::Backup);
    let copies_match = match (&primary, &backup) {
        (Ok(p), Ok(b)) => {
            p.alternate_lba == b.my_lba && b.alternate_lba == p.my_lba && {
                let mut from_backup = b.gpt.clone();
                from_backup.primary_entries_lba = p.entries_lba;
                let mut from_primary = p.gpt.clone();
                from_primary.backup_entries_lba = b.entries_lba;
                from_backup == from_primary
            }
        }
        _ => false,
    };
    let (gpt, primary, backup) = match (primary, backup) {
        (Ok(mut p), Ok(b)) => {
            p.gpt.backup_entries_lba = b.entries_lba;
            (p.gpt, Ok(()), Ok(()))
        }
        (Ok(p), Err(b)) => (p.gpt, Ok(()), Err(b)),
        (Err(p), Ok(b)) => (b.gpt, Err(p), Ok(())),
        (Err(primary), Err(backup)) => return Err(Error::BothCopiesInvalid { primary, backup }),
    };
    Ok(DiskGpt {
        entries: gpt.check_entries(),
        gpt,
        primary,
        backup,
        disk_sectors,
        copies_match,
    })
}

/// Writes both copies of `gpt` in the crash-safe order: backup entries, backup header, flush,
/// primary entries, primary header, flush.
///
/// At every instant at least one copy validates, and a reader that prefers the primary sees
/// the whole old table until the final primary header write, then the whole new one.
pub fn write<S: Storage + ?Sized>(disk: &mut S, gpt: &Gpt) -> Result<()> {
    let ss = gpt.sector_size;
    let entries = gpt.padded_entries();
    disk.write_at(lba_offset(gpt.backup_entries_lba, ss)?, &entries)
        .map_err(Error::io(format!(
            "writing backup GPT entries at LBA {}",
            gpt.backup_entries_lba
        )))?;
    disk.write_at(
        lba_offset(gpt.backup_lba, ss)?,
        &gpt.header_sector(Copy::Backup),
    )
    .map_err(Error::io(format!(
        "writing backup GPT header at LBA {}",
        gpt.backup_lba
    )))?;
    disk.flush().map_err(Error::io("flushing the backup GPT"))?;
    disk.write_at(lba_offset(gpt.primary_entries_lba, ss)?, &entries)
        .map_err(Error::io(format!(
            "writing primary GPT entries at LBA {}",
            gpt.primary_entries_lba
        )))?;
    disk.write_at(u64::from(ss), &gpt.header_sector(Copy::Primary))
        .map_err(Error::io("writing primary GPT header at LBA 1"))?;
    disk.flush()
        .map_err(Error::io("flushing the primary GPT"))?;
    Ok(())
}

/// Writes a protective MBR partition record (bytes 446–511 of LBA 0; boot code is left alone).
///
/// The record covers LBA 1 to the end of the disk, or 2^32 - 1 sectors when the disk is larger
/// (UEFI spec). A disk of fewer than two sectors is [`Error::DiskTooSmall`].
pub fn write_protective_mbr<S: Storage + ?Sized>(disk: &mut S, sector_size: u32) -> Result<()> {
    let sectors = disk.len() / u64::from(sector_size);
    if sectors < 2 {
        return Err(Error::DiskTooSmall {
            bytes: disk.len(),
            sector_size,
        });
    }
    let mut rec = [0u8; 66];
    rec[0..8].copy_from_slice(&[0x00, 0x00, 0x02, 0x00, 0xee, 0xff, 0xff, 0xff]);
    rec[8..12].copy_from_slice(&1u32.to_le_bytes());
    rec[12..16].copy_from_slice(&u32::try_from(sectors - 1).unwrap_or(u32::MAX).to_le_bytes());
    rec[64] = 0x55;
    rec[65] = 0xaa;
    disk.write_at(446, &rec)
        .map_err(Error::io("writing the protective MBR"))
}

/// Writes a freshly built table to a disk: protective MBR, then both copies.
pub fn write_new<S: Storage + ?Sized>(disk: &mut S, gpt: &Gpt) -> Result<()> {
    write_protective_mbr(disk, gpt.sector_size)?;
    write(disk, gpt)
}

#[cfg(test)]
mod tests;
