//! A/B slots on a disk and the operations on them: status, set-next, mark-good, mark-bad,
//! select, repair.
//!
//! A slot is a GPT entry of the CoreOS usr type ([`crate::guid::USR_TYPE`]); `A` and `B` are
//! the entries labelled `USR-A` and `USR-B` (or, without those labels, the first and second
//! usr entries).
//!
//! Every write operation (`set_next`, `prioritize`, `mark_good`, `mark_bad`, `repair`)
//! re-reads both GPT copies from storage first and computes its change from what is on disk
//! at that moment, never from what [`SlotDisk`] read when it was opened: a handle opened early
//! (an updater before a long download) must not undo a commit another process made meanwhile.
//! It then changes only the slot bits it means to (other slots and other attribute bits stay as
//! read) and writes both copies back in the crash-safe order of [`crate::gpt::write`], and only
//! when something changed. Writing also repairs an invalid copy from the valid one. Callers
//! that race with other writers still need a lock around the whole read-modify-write.
//!
//! A table whose entries are inconsistent ([`crate::gpt::EntryError`]: a slot overlapping
//! another partition, an entry outside the usable range) can be shown, but every slot
//! lookup and operation on it is refused with [`Error::BadEntries`]. The slots a `SlotDisk`
//! hands out therefore lie inside the disk, and their byte ranges cannot overflow.
//!
//! ```
//! use bootctl::{layout, SlotDisk, SlotId};
//! let mut disk = SlotDisk::from_storage(layout::mem_disk(512), None).unwrap();
//! disk.set_next(&SlotId::B, 1).unwrap();
//! let chosen = disk.select(true).unwrap().unwrap();
//! assert_eq!(chosen.slot.label, "USR-B");
//! assert_eq!(disk.slot(&SlotId::B).unwrap().attrs.tries, 0);
//! ```
use crate::attrs::{SlotAttrs, MAX_FIELD};
use crate::error::{Error, Result};
use crate::gpt::{self, DiskGpt, Gpt};
use crate::guid::{Guid, USR_TYPE};
use crate::rule;
use crate::storage::{FileDisk, Storage};
use std::path::Path;

/// How a user names a slot: `A`, `B`, or a partition number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotId {
    /// The usr entry labelled USR-A (else the first usr entry).
    A,
    /// The usr entry labelled USR-B (else the second usr entry).
    B,
    /// A partition number (1-based), which must be a usr entry.
    Number(u32),
}

impl std::str::FromStr for SlotId {
    type Err = String;
    fn from_str(s: &str) -> Result<SlotId, String> {
        match s {
            "A" | "a" => Ok(SlotId::A),
            "B" | "b" => Ok(SlotId::B),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .map(SlotId::Number)
                .ok_or_else(|| format!("{s:?} is not a slot (A, B or a partition number)")),
        }
    }
}

impl std::fmt::Display for SlotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotId::A => f.write_str("A"),
            SlotId::B => f.write_str("B"),
            SlotId::Number(n) => write!(f, "{n}"),
        }
    }
}

/// One usr partition and its boot attributes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Slot {
    /// Partition number (1-based entry index).
    pub number: u32,
    /// GPT label, e.g. `USR-A`.
    pub label: String,
    /// The partition's unique GUID (PARTUUID).
    pub partuuid: Guid,
    /// First LBA, inclusive.
    pub first_lba: u64,
    /// Last LBA, inclusive.
    pub last_lba: u64,
    /// Sector size the LBAs count in.
    pub sector_size: u32,
    /// Priority, tries, successful.
    #[serde(flatten)]
    pub attrs: SlotAttrs,
    /// The whole 64-bit attribute field.
    #[serde(serialize_with = "hex64")]
    pub attributes: u64,
}

fn hex64<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#018x}"))
}

impl Slot {
    /// The partition's bytes on the disk, or [`Error::SlotRange`] when its LBAs are inverted or
    /// its end does not fit in 64 bits (never for a slot from [`SlotDisk`]).
    pub fn byte_range(&self) -> Result<std::ops::Range<u64>> {
        let ss = u64::from(self.sector_size);
        let range = (self.first_lba <= self.last_lba)
            .then(|| {
                let start = self.first_lba.checked_mul(ss)?;
                let end = self.last_lba.checked_add(1)?.checked_mul(ss)?;
                Some(start..end)
            })
            .flatten();
        range.ok_or(Error::SlotRange {
            number: self.number,
            first_lba: self.first_lba,
            last_lba: self.last_lba,
            sector_size: self.sector_size,
        })
    }

    /// Byte offset of the partition on the disk.
    ///
    /// # Panics
    /// When [`Slot::byte_range`] fails, which a slot from [`SlotDisk`] never does (its entries
    /// were checked against the disk); use `byte_range` for a slot built by hand.
    pub fn byte_offset(&self) -> u64 {
        self.byte_range()
            .expect("slot LBAs checked by SlotDisk")
            .start
    }

    /// Size of the partition in bytes.
    ///
    /// # Panics
    /// As [`Slot::byte_offset`].
    pub fn byte_len(&self) -> u64 {
        let r = self.byte_range().expect("slot LBAs checked by SlotDisk");
        r.end - r.start
    }

    /// Whether the two slots share a byte of the disk. A slot whose range is malformed
    /// (inverted LBAs) is taken to overlap everything: it cannot be shown to be disjoint.
    pub fn overlaps(&self, other: &Slot) -> bool {
        // In 128 bits no product overflows, and slots with other sector sizes compare too.
        let bytes = |s: &Slot| {
            let ss = u128::from(s.sector_size);
            (s.first_lba <= s.last_lba).then(|| {
                (
                    u128::from(s.first_lba) * ss,
                    (u128::from(s.last_lba) + 1) * ss,
                )
            })
        };
        match (bytes(self), bytes(other)) {
            (Some((a_start, a_end)), Some((b_start, b_end))) => a_start < b_end && b_start < a_end,
            _ => true,
        }
    }
}

/// The slot GRUB's rule picked, and what a boot leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The chosen slot, with its attributes before the boot.
    pub slot: Slot,
    /// Its attributes after the boot's tries decrement.
    pub after: SlotAttrs,
    /// Whether the GPT was written (only when applying a decrement).
    pub wrote: bool,
}

/// What `repair` found and did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RepairReport {
    /// Problems found (empty when the disk was clean).
    pub problems: Vec<String>,
    /// Whether both copies were rewritten.
    pub wrote: bool,
}

/// A disk's GPT with its usr slots, ready for slot operations.
#[derive(Debug)]
pub struct SlotDisk<S: Storage = FileDisk> {
    storage: S,
    sector_size: Option<u32>,
    state: DiskGpt,
}

impl SlotDisk<FileDisk> {
    /// Opens a disk-image file or block device; `writable` for operations that may write.
    pub fn open(
        path: &Path,
        writable: bool,
        sector_size: Option<u32>,
    ) -> Result<SlotDisk<FileDisk>> {
        SlotDisk::from_storage(FileDisk::open(path, writable)?, sector_size)
    }
}

impl<S: Storage> SlotDisk<S> {
    /// Reads and validates the GPT on `storage` (see [`gpt::read`] for `sector_size`).
    pub fn from_storage(mut storage: S, sector_size: Option<u32>) -> Result<SlotDisk<S>> {
        let state = gpt::read(&mut storage, sector_size)?;
        Ok(SlotDisk {
            storage,
            sector_size,
            state,
        })
    }

    /// The state of both copies as read.
    pub fn state(&self) -> &DiskGpt {
        &self.state
    }

    /// The table (preferred copy).
    pub fn gpt(&self) -> &Gpt {
        &self.state.gpt
    }

    /// The storage, e.g. to write a slot's content.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Gives the storage back.
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// Every usr slot, in entry order (may be empty), as the table says, even when its
    /// entries are inconsistent (for display; see [`DiskGpt::entries`]). [`SlotDisk::slot`]
    /// and every operation refuse such a table.
    pub fn slots(&self) -> Vec<Slot> {
        let g = &self.state.gpt;
        g.used_entries()
            .into_iter()
            .filter(|(_, e)| e.type_guid == USR_TYPE)
            .map(|(number, e)| Slot {
                number,
                label: e.name,
                partuuid: e.unique_guid,
                first_lba: e.first_lba,
                last_lba: e.last_lba,
                sector_size: g.sector_size,
                attrs: SlotAttrs::decode(e.attributes),
                attributes: e.attributes,
            })
            .collect()
    }

    /// The usr slots, refusing a table whose entries are inconsistent.
    fn usr_slots(&self) -> Result<Vec<Slot>> {
        self.state.usable_gpt()?;
        let slots = self.slots();
        if slots.is_empty() {
            return Err(Error::NoUsrPartitions);
        }
        Ok(slots)
    }

    /// The slot named by `id`.
    pub fn slot(&self, id: &SlotId) -> Result<Slot> {
        let slots = self.usr_slots()?;
        let not_found = |why: String| Error::SlotNotFound {
            slot: id.to_string(),
            why,
        };
        match id {
            SlotId::Number(n) => slots.into_iter().find(|s| s.number == *n).ok_or_else(|| {
                if *n <= self.state.gpt.num_entries && self.state.gpt.entry(*n).is_used() {
                    not_found(format!("partition {n} is not a usr partition"))
                } else {
                    not_found(format!("no partition {n}"))
                }
            }),
            SlotId::A | SlotId::B => {
                let (label, pos) = if *id == SlotId::A {
                    ("USR-A", 0)
                } else {
                    ("USR-B", 1)
                };
                if let Some(s) = slots.iter().find(|s| s.label == label) {
                    return Ok(s.clone());
                }
                if slots
                    .iter()
                    .any(|s| s.label == "USR-A" || s.label == "USR-B")
                {
                    return Err(not_found(format!("no usr partition labelled {label}")));
                }
                slots.into_iter().nth(pos).ok_or_else(|| {
                    not_found(format!("only one usr partition and none labelled {label}"))
                })
            }
        }
    }

    /// The slot that is not `id`: B for A and A for B.
    pub fn other(&self, id: &SlotId) -> Result<Slot> {
        let this = self.slot(id)?;
        let a = self.slot(&SlotId::A)?;
        if a.number != this.number {
            return Ok(a);
        }
        self.slot(&SlotId::B)
    }

    /// Re-reads both GPT copies from storage, so that what follows starts from the disk as it
    /// is now rather than as it was when this handle was opened.
    fn reread(&mut self) -> Result<()> {
        self.state = gpt::read(&mut self.storage, self.sector_size)?;
        Ok(())
    }

    /// Writes `new` attributes for slots (by number) over the table last read, if any differ;
    /// returns whether it wrote. Only the slot bits of the listed entries change.
    fn update(&mut self, changes: &[(u32, SlotAttrs)]) -> Result<bool> {
        let mut gpt = self.state.gpt.clone();
        for &(number, attrs) in changes {
            let old = gpt.entry(number).attributes;
            gpt.set_attributes(number, attrs.apply(old));
        }
        if gpt == self.state.gpt {
            return Ok(false);
        }
        self.write(&gpt)?;
        Ok(true)
    }

    fn write(&mut self, gpt: &Gpt) -> Result<()> {
        gpt::write(&mut self.storage, gpt)?;
        self.reread()
    }

    /// The read-modify-write of every slot operation: re-reads the disk, finds `id` among the
    /// usr slots, lets `plan` compute every usr slot's new attributes from their current ones
    /// (`plan` gets the slots' attributes in entry order and the target's index), and writes
    /// what changed.
    fn modify(
        &mut self,
        id: &SlotId,
        plan: impl FnOnce(&[SlotAttrs], usize) -> Vec<SlotAttrs>,
    ) -> Result<bool> {
        self.reread()?;
        let target = self.slot(id)?;
        let slots = self.usr_slots()?;
        let t = slots
            .iter()
            .position(|s| s.number == target.number)
            .expect("target is a usr slot");
        let now: Vec<SlotAttrs> = slots.iter().map(|s| s.attrs).collect();
        let new = plan(&now, t);
        let changes: Vec<(u32, SlotAttrs)> = slots.iter().map(|s| s.number).zip(new).collect();
        self.update(&changes)
    }

    /// Makes `id` the next slot to boot: top priority (others re-ranked cgpt-style),
    /// `tries` attempts, not successful. Returns whether the GPT was written.
    pub fn set_next(&mut self, id: &SlotId, tries: u32) -> Result<bool> {
        if !(1..=u32::from(MAX_FIELD)).contains(&tries) {
            return Err(Error::TriesOutOfRange { tries });
        }
        let tries = tries as u8;
        self.modify(id, |now, t| {
            let mut new = reranked(now, t);
            new[t] = SlotAttrs {
                tries,
                successful: false,
                ..new[t]
            };
            new
        })
    }

    /// Makes `id` the top priority (others re-ranked cgpt-style), keeping its tries and
    /// successful bits: how a committed fallback becomes the next boot again.
    pub fn prioritize(&mut self, id: &SlotId) -> Result<bool> {
        self.modify(id, reranked)
    }

    /// Commits `id`: successful 1, tries 0, priority kept, except that a slot at priority 0
    /// is given the top priority (others re-ranked cgpt-style). That is the state after a boot
    /// through grub.cfg's fallback entry: GRUB's rule found nothing, the fixed entry booted a
    /// slot whose priority is 0, and committing it must make it the next boot, or every later
    /// boot would be a fallback boot again.
    pub fn mark_good(&mut self, id: &SlotId) -> Result<bool> {
        self.modify(id, |now, t| {
            let mut new = if now[t].priority == 0 {
                reranked(now, t)
            } else {
                now.to_vec()
            };
            new[t] = SlotAttrs {
                tries: 0,
                successful: true,
                ..new[t]
            };
            new
        })
    }

    /// Makes `id` unbootable: priority 0, tries 0, successful 0.
    pub fn mark_bad(&mut self, id: &SlotId) -> Result<bool> {
        self.modify(id, |now, t| {
            let mut new = now.to_vec();
            new[t] = SlotAttrs::default();
            new
        })
    }

    /// Applies GRUB's rule. With `boot`, also writes the tries decrement GRUB would write
    /// (DESIGN §4): when the chosen slot has tries > 0, both GPT copies are written, backup
    /// first, and a copy that does not validate is rebuilt from the valid one, so a try is
    /// spent even on a damaged table. A boot that decrements nothing writes nothing, damaged
    /// copy or not. `None` when nothing is bootable.
    pub fn select(&mut self, boot: bool) -> Result<Option<Selection>> {
        if boot {
            // Like every write: decide from what is on the disk now.
            self.reread()?;
        }
        let slots = self.usr_slots()?;
        let Some(i) = rule::choose(&slots.iter().map(|s| s.attrs).collect::<Vec<_>>()) else {
            return Ok(None);
        };
        let slot = slots[i].clone();
        let after = rule::after_boot(slot.attrs);
        let wrote = boot && self.update(&[(slot.number, after)])?;
        Ok(Some(Selection { slot, after, wrote }))
    }

    /// Rewrites both copies from the preferred one when a copy is invalid, the copies differ,
    /// or the backup is not at the end of the disk (which then moves there).
    ///
    /// The disk is re-read first. A table whose entries are inconsistent is refused
    /// ([`Error::BadEntries`]): copying it over the other copy could destroy the only good one.
    pub fn repair(&mut self) -> Result<RepairReport> {
        self.reread()?;
        self.state.usable_gpt()?;
        let s = &self.state;
        let mut problems = Vec::new();
        if let Err(e) = &s.primary {
            problems.push(format!("primary GPT invalid: {e}"));
        }
        if let Err(e) = &s.backup {
            problems.push(format!("backup GPT invalid: {e}"));
        }
        if s.primary.is_ok() && s.backup.is_ok() && !s.copies_match {
            problems.push("primary and backup GPT differ (primary kept)".into());
        }
        let end = s.disk_sectors - 1;
        let mut gpt = s.gpt.clone();
        if gpt.backup_lba != end {
            problems.push(format!(
                "backup GPT header at LBA {} instead of the last LBA {end} (disk grew?)",
                gpt.backup_lba
            ));
            gpt.relocate_backup(s.disk_sectors)?;
        }
        if problems.is_empty() {
            return Ok(RepairReport {
                problems,
                wrote: false,
            });
        }
        if gpt.backup_lba != self.state.gpt.backup_lba {
            gpt::write_protective_mbr(&mut self.storage, gpt.sector_size)?;
        }
        self.write(&gpt)?;
        Ok(RepairReport {
            problems,
            wrote: true,
        })
    }
}

/// `now` with the priorities re-ranked so that slot `t` is the strictly highest
/// ([`rule::prioritize`]); every other bit as it was.
fn reranked(now: &[SlotAttrs], t: usize) -> Vec<SlotAttrs> {
    let priorities: Vec<u8> = now.iter().map(|a| a.priority).collect();
    now.iter()
        .zip(rule::prioritize(&priorities, t))
        .map(|(&a, priority)| SlotAttrs { priority, ..a })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;

    #[test]
    fn prioritize_makes_a_committed_fallback_next_and_keeps_its_bits() {
        let mut d = SlotDisk::from_storage(layout::mem_disk(512), None).unwrap();
        d.set_next(&SlotId::B, 1).unwrap();
        d.select(true).unwrap();
        d.mark_good(&SlotId::B).unwrap();
        assert!(d.prioritize(&SlotId::A).unwrap());
        let a = d.slot(&SlotId::A).unwrap().attrs;
        assert_eq!(
            a,
            SlotAttrs {
                priority: 3,
                tries: 0,
                successful: true
            }
        );
        assert_eq!(d.select(false).unwrap().unwrap().slot.label, "USR-A");
        assert!(
            !d.prioritize(&SlotId::A).unwrap(),
            "already next: nothing written"
        );
    }

    #[test]
    fn committing_a_slot_at_priority_zero_makes_it_the_next_boot() {
        let mut d = SlotDisk::from_storage(layout::mem_disk(512), None).unwrap();
        d.set_next(&SlotId::B, 1).unwrap();
        d.select(true).unwrap(); // B's trial: B P2 T0 S0
        d.mark_bad(&SlotId::A).unwrap(); // say A was marked bad too: nothing is bootable
        assert_eq!(
            d.select(false).unwrap(),
            None,
            "grub.cfg boots its fallback, USR-A"
        );
        assert!(d.mark_good(&SlotId::A).unwrap());
        let a = d.slot(&SlotId::A).unwrap().attrs;
        assert_eq!(
            a,
            SlotAttrs {
                priority: 3,
                tries: 0,
                successful: true
            }
        );
        assert_eq!(d.select(false).unwrap().unwrap().slot.label, "USR-A");
        let b = d.slot(&SlotId::B).unwrap().attrs;
        assert_eq!(
            (b.priority, b.tries, b.successful),
            (2, 0, false),
            "B untouched"
        );
    }

    #[test]
    fn committing_a_slot_with_a_priority_keeps_it_even_below_another() {
        let mut d = SlotDisk::from_storage(layout::mem_disk(512), None).unwrap();
        d.set_next(&SlotId::A, 3).unwrap(); // A P1 T3 S0 (already the highest)
        d.set_next(&SlotId::B, 1).unwrap(); // B P2 T1 S0
        assert!(d.mark_good(&SlotId::A).unwrap());
        let attrs = |d: &SlotDisk<_>, id| d.slot(id).unwrap().attrs;
        assert_eq!(attrs(&d, &SlotId::A).to_string(), "P1 T0 S1");
        assert_eq!(attrs(&d, &SlotId::B).to_string(), "P2 T1 S0");
    }

    fn slot(number: u32, first_lba: u64, last_lba: u64, sector_size: u32) -> Slot {
        Slot {
            number,
            label: String::new(),
            partuuid: Guid::NIL,
            first_lba,
            last_lba,
            sector_size,
            attrs: SlotAttrs::default(),
            attributes: 0,
        }
    }

    #[test]
    fn byte_ranges_are_checked() {
        let s = slot(4, 2048, 4095, 512);
        assert_eq!(s.byte_range().unwrap(), 1 << 20..2 << 20);
        assert_eq!((s.byte_offset(), s.byte_len()), (1 << 20, 1 << 20));
        assert_eq!(slot(4, 7, 7, 4096).byte_range().unwrap(), 28672..32768);
        for (first, last) in [
            (10, 9),
            (0, u64::MAX),
            (u64::MAX / 512 + 1, u64::MAX / 512 + 1),
        ] {
            assert_eq!(
                slot(4, first, last, 512)
                    .byte_range()
                    .unwrap_err()
                    .to_string(),
                format!("slot 4 has no byte range: LBAs {first}..={last} of 512-byte sectors")
            );
        }
    }

    #[test]
    fn slots_overlap_when_they_share_a_byte() {
        let a = slot(3, 100, 199, 512);
        // (other slot, overlaps): neighbours on either side do not, one shared sector does.
        for (other, expected) in [
            (slot(4, 200, 299, 512), false),
            (slot(4, 0, 99, 512), false),
            (slot(4, 199, 299, 512), true),
            (slot(4, 0, 100, 512), true),
            (slot(4, 120, 130, 512), true),
            (slot(4, 0, 1000, 512), true),
            // 4096-byte sectors: LBA 24 is bytes 98304..102400, which holds 512-byte LBA 199.
            (slot(4, 24, 30, 4096), true),
            (slot(4, 25, 30, 4096), false),
            (slot(4, 300, 299, 512), true), // inverted: cannot be shown disjoint
            (slot(4, u64::MAX, u64::MAX, 4096), false),
        ] {
            assert_eq!(a.overlaps(&other), expected, "{other:?}");
            assert_eq!(other.overlaps(&a), expected, "{other:?}, reversed");
        }
    }

    #[test]
    fn repair_rewrites_a_backup_that_differs_from_the_primary() {
        let mut disk = layout::mem_disk(512);
        let mut g = gpt::read(&mut disk, None).unwrap().gpt;
        g.set_attributes(
            4,
            SlotAttrs {
                priority: 2,
                tries: 1,
                successful: false,
            }
            .apply(0),
        );
        // The primary alone, as a writer cut between the two copies would never leave it
        // (backup first), but as another tool might.
        let at = 2 * 512;
        disk.bytes[at..at + g.entry_array().len()].copy_from_slice(g.entry_array());
        disk.bytes[512..1024].copy_from_slice(&g.header_sector(gpt::Copy::Primary));
        let mut d = SlotDisk::from_storage(disk, None).unwrap();
        assert!(!d.state().copies_match);
        let report = d.repair().unwrap();
        assert_eq!(
            report.problems,
            vec!["primary and backup GPT differ (primary kept)".to_string()]
        );
        assert!(report.wrote && d.state().copies_match && !d.state().needs_repair());
        assert_eq!(d.slot(&SlotId::B).unwrap().attrs.to_string(), "P2 T1 S0");
    }

    /// One disk shared by several handles, as several processes share a device.
    #[derive(Clone)]
    struct Shared(std::rc::Rc<std::cell::RefCell<crate::storage::MemDisk>>);

    impl Storage for Shared {
        fn len(&self) -> u64 {
            self.0.borrow().len()
        }
        fn device_sector_size(&self) -> Option<u32> {
            self.0.borrow().device_sector_size()
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            self.0.borrow_mut().read_at(offset, buf)
        }
        fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
            self.0.borrow_mut().write_at(offset, buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A disk in B's trial (A P1 T0 S1, B P2 T0 S0), and a handle opened on it.
    fn trial_of_b() -> (Shared, SlotDisk<Shared>) {
        let disk = Shared(std::rc::Rc::new(std::cell::RefCell::new(layout::mem_disk(
            512,
        ))));
        let mut d = SlotDisk::from_storage(disk.clone(), None).unwrap();
        d.set_next(&SlotId::B, 1).unwrap();
        d.select(true).unwrap();
        let stale = SlotDisk::from_storage(disk.clone(), None).unwrap();
        (disk, stale)
    }

    fn on_disk(disk: &Shared, id: &SlotId) -> String {
        let d = SlotDisk::from_storage(disk.clone(), None).unwrap();
        d.slot(id).unwrap().attrs.to_string()
    }

    #[test]
    fn a_write_through_a_stale_handle_starts_from_the_disk_as_it_is_now() {
        let (disk, mut stale) = trial_of_b();
        let mut other = SlotDisk::from_storage(disk.clone(), None).unwrap();
        other.mark_good(&SlotId::B).unwrap();
        assert!(stale.mark_bad(&SlotId::A).unwrap());
        assert_eq!(on_disk(&disk, &SlotId::B), "P2 T0 S1");
        assert_eq!(on_disk(&disk, &SlotId::A), "P0 T0 S0");
    }

    #[test]
    fn repair_through_a_stale_handle_finds_nothing_once_another_fixed_the_disk() {
        let (disk, _) = trial_of_b();
        disk.0.borrow_mut().bytes[512 + 40] ^= 1; // primary header CRC
        let mut stale = SlotDisk::from_storage(disk.clone(), None).unwrap();
        let mut other = SlotDisk::from_storage(disk.clone(), None).unwrap();
        other.mark_good(&SlotId::B).unwrap(); // writes both copies
        let report = stale.repair().unwrap();
        assert!(report.problems.is_empty() && !report.wrote, "{report:?}");
        assert_eq!(on_disk(&disk, &SlotId::B), "P2 T0 S1");
    }

    #[test]
    fn set_next_gives_tries_and_clears_successful() {
        let mut d = SlotDisk::from_storage(layout::mem_disk(512), None).unwrap();
        assert!(d.set_next(&SlotId::A, 3).unwrap()); // already the highest: P1 kept
        assert_eq!(d.slot(&SlotId::A).unwrap().attrs.to_string(), "P1 T3 S0");
        assert!(d.set_next(&SlotId::B, 15).unwrap());
        assert_eq!(d.slot(&SlotId::B).unwrap().attrs.to_string(), "P2 T15 S0");
        assert!(!d.set_next(&SlotId::B, 15).unwrap(), "nothing to change");
        for tries in [0, 16] {
            assert_eq!(
                d.set_next(&SlotId::B, tries).unwrap_err().to_string(),
                format!("tries {tries} out of range (1 to 15)")
            );
        }
    }

    #[test]
    fn repair_moves_the_backup_to_the_end_of_a_grown_disk() {
        let mut disk = layout::mem_disk(512);
        let old_sectors = disk.bytes.len() as u64 / 512;
        disk.bytes.extend(vec![0; 2048 * 512]);
        let mut d = SlotDisk::from_storage(disk, None).unwrap();
        let report = d.repair().unwrap();
        assert_eq!(
            report.problems,
            vec![format!(
                "backup GPT header at LBA {} instead of the last LBA {} (disk grew?)",
                old_sectors - 1,
                old_sectors + 2047
            )]
        );
        assert!(report.wrote && !d.state().needs_repair());
        // The protective MBR grew with the disk.
        let mbr = &d.storage_mut().bytes[446 + 12..446 + 16];
        assert_eq!(
            u32::from_le_bytes(mbr.try_into().unwrap()),
            (old_sectors + 2047) as u32
        );
        assert!(
            !d.repair().unwrap().wrote,
            "a second repair has nothing to do"
        );
    }

    #[test]
    fn other_pairs_a_with_b() {
        let d = SlotDisk::from_storage(layout::mem_disk(512), None).unwrap();
        assert_eq!(d.other(&SlotId::A).unwrap().label, "USR-B");
        assert_eq!(d.other(&SlotId::Number(4)).unwrap().label, "USR-A");
    }
}
