//! A/B slots on a disk and the operations on them: status, set-next, mark-good, mark-bad,
//! select, repair.
//!
//! A slot is a GPT entry of the CoreOS usr type ([`crate::guid::USR_TYPE`]); `A` and `B` are
//! the entries labelled `USR-A` and `USR-B` (or, without those labels, the first and second
//! usr entries). [`SlotDisk`] reads both GPT copies once, applies an operation to the
//! preferred copy in memory, and writes both copies back in the crash-safe order of
//! [`crate::gpt::write`] only when some attribute actually changed. Writing also repairs an
//! invalid copy from the valid one.
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
    /// Byte offset of the partition on the disk.
    pub fn byte_offset(&self) -> u64 {
        self.first_lba * u64::from(self.sector_size)
    }
    /// Size of the partition in bytes.
    pub fn byte_len(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * u64::from(self.sector_size)
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

    /// Every usr slot, in entry order (may be empty).
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

    fn usr_slots(&self) -> Result<Vec<Slot>> {
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

    /// Writes `new` attributes for slots (by number) if any differ; returns whether it wrote.
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
        self.state = gpt::read(&mut self.storage, self.sector_size)?;
        Ok(())
    }

    /// Makes `id` the next slot to boot: top priority (others re-ranked cgpt-style),
    /// `tries` attempts, not successful. Returns whether the GPT was written.
    pub fn set_next(&mut self, id: &SlotId, tries: u32) -> Result<bool> {
        if !(1..=u32::from(MAX_FIELD)).contains(&tries) {
            return Err(Error::TriesOutOfRange { tries });
        }
        let tries = tries as u8;
        self.reprioritize(id, |a| SlotAttrs {
            tries,
            successful: false,
            ..a
        })
    }

    /// Makes `id` the top priority (others re-ranked cgpt-style), keeping its tries and
    /// successful bits: how a committed fallback becomes the next boot again.
    pub fn prioritize(&mut self, id: &SlotId) -> Result<bool> {
        self.reprioritize(id, |attrs| attrs)
    }

    fn reprioritize(
        &mut self,
        id: &SlotId,
        target_attrs: impl Fn(SlotAttrs) -> SlotAttrs,
    ) -> Result<bool> {
        let target = self.slot(id)?;
        let slots = self.usr_slots()?;
        let t = slots
            .iter()
            .position(|s| s.number == target.number)
            .expect("target is a usr slot");
        let priorities = rule::prioritize(
            &slots.iter().map(|s| s.attrs.priority).collect::<Vec<_>>(),
            t,
        );
        let changes: Vec<(u32, SlotAttrs)> = slots
            .iter()
            .zip(priorities)
            .map(|(s, priority)| {
                let attrs = if s.number == target.number {
                    target_attrs(s.attrs)
                } else {
                    s.attrs
                };
                (s.number, SlotAttrs { priority, ..attrs })
            })
            .collect();
        self.update(&changes)
    }

    /// Commits `id`: successful 1, tries 0, priority kept.
    pub fn mark_good(&mut self, id: &SlotId) -> Result<bool> {
        let s = self.slot(id)?;
        self.update(&[(
            s.number,
            SlotAttrs {
                tries: 0,
                successful: true,
                ..s.attrs
            },
        )])
    }

    /// Makes `id` unbootable: priority 0, tries 0, successful 0.
    pub fn mark_bad(&mut self, id: &SlotId) -> Result<bool> {
        let s = self.slot(id)?;
        self.update(&[(s.number, SlotAttrs::default())])
    }

    /// Applies GRUB's rule. With `boot`, also writes the tries decrement GRUB would write
    /// (DESIGN §4): when the chosen slot has tries > 0, both GPT copies are written, backup
    /// first, and a copy that does not validate is rebuilt from the valid one, so a try is
    /// spent even on a damaged table. A boot that decrements nothing writes nothing, damaged
    /// copy or not. `None` when nothing is bootable.
    pub fn select(&mut self, boot: bool) -> Result<Option<Selection>> {
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
    pub fn repair(&mut self) -> Result<RepairReport> {
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
            gpt.relocate_backup(s.disk_sectors);
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
    fn other_pairs_a_with_b() {
        let d = SlotDisk::from_storage(layout::mem_disk(512), None).unwrap();
        assert_eq!(d.other(&SlotId::A).unwrap().label, "USR-B");
        assert_eq!(d.other(&SlotId::Number(4)).unwrap().label, "USR-A");
    }
}
