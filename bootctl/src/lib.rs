//! GPT slot control for A/B /usr updates.
//!
//! This crate reads, validates, repairs and writes the GUID Partition Table of a disk or
//! disk-image file, and manages the A/B `usr` slots through the GPT attribute bits that GRUB's
//! `gptprio.next` reads (priority bits 48–51, tries 52–55, successful 56; DESIGN §4). Every
//! other crate reads and writes slot state through it.
//!
//! # Brief overview
//! - [`SlotDisk`]: a disk's GPT with its slots; the operations `set_next`, `mark_good`,
//!   `mark_bad`, `select` (GRUB's rule, optionally applying its tries decrement) and `repair`.
//! - [`gpt`]: the on-disk format: both copies validated independently, written backup first.
//! - [`rule`]: GRUB's selection rule and cgpt-style re-ranking as pure functions.
//! - [`attrs::SlotAttrs`]: the slot bits of an attribute field; other bits are preserved.
//! - [`storage`]: files, block devices and in-memory disks behind one trait.
//! - [`layout`]: the DESIGN §3 partition table.
//!
//! ```
//! use bootctl::{layout, SlotDisk, SlotId};
//! let mut disk = SlotDisk::from_storage(layout::mem_disk(4096), None).unwrap();
//! assert_eq!(disk.select(false).unwrap().unwrap().slot.label, "USR-A");
//! disk.set_next(&SlotId::B, 1).unwrap();
//! let b = disk.slot(&SlotId::B).unwrap();
//! assert_eq!((b.attrs.priority, b.attrs.tries, b.attrs.successful), (2, 1, false));
//! ```
#![deny(missing_docs)]

pub mod attrs;
mod error;
pub mod gpt;
pub mod guid;
pub mod layout;
pub mod rule;
pub mod slot;
pub mod storage;

pub use attrs::SlotAttrs;
pub use error::{Error, Result};
pub use guid::Guid;
pub use slot::{RepairReport, Selection, Slot, SlotDisk, SlotId};
