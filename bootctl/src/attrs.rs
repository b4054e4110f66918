//! The slot attribute bits of a GPT entry (ChromeOS/CoreOS convention).
//!
//! Priority is bits 48–51, tries bits 52–55 and successful bit 56 of the 64-bit attribute
//! field, so `cgpt` and `sgdisk -A` read the same values. [`SlotAttrs`] decodes and encodes only
//! those bits; [`SlotAttrs::apply`] leaves every other bit of the field as it was.
//!
//! ```
//! use bootctl::SlotAttrs;
//! let a = SlotAttrs { priority: 2, tries: 1, successful: false };
//! assert_eq!(a.apply(0), 0x0012_0000_0000_0000);
//! assert_eq!(SlotAttrs::decode(0x0012_0000_0000_0001), a);
//! ```

/// First bit of the 4-bit priority field.
pub const PRIORITY_SHIFT: u32 = 48;
/// First bit of the 4-bit tries field.
pub const TRIES_SHIFT: u32 = 52;
/// The successful bit.
pub const SUCCESSFUL_SHIFT: u32 = 56;
/// The largest priority and the largest tries count (4-bit fields).
pub const MAX_FIELD: u8 = 15;
/// Every bit this module owns; all others are preserved.
pub const SLOT_MASK: u64 = 0x01ff_0000_0000_0000;

/// Priority, tries and successful of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct SlotAttrs {
    /// 0 = never boot; higher boots first (0–15).
    pub priority: u8,
    /// Boot attempts left before the slot counts as failed (0–15).
    pub tries: u8,
    /// The slot booted and passed its health checks.
    pub successful: bool,
}

impl SlotAttrs {
    /// Reads the slot bits out of a GPT attribute field.
    pub fn decode(attributes: u64) -> SlotAttrs {
        SlotAttrs {
            priority: ((attributes >> PRIORITY_SHIFT) & 0xf) as u8,
            tries: ((attributes >> TRIES_SHIFT) & 0xf) as u8,
            successful: (attributes >> SUCCESSFUL_SHIFT) & 1 == 1,
        }
    }

    /// Returns `attributes` with the slot bits replaced by `self` and every other bit kept.
    ///
    /// Values above 15 are a programming error and are truncated to 4 bits; callers validate
    /// user input against [`MAX_FIELD`] first.
    pub fn apply(self, attributes: u64) -> u64 {
        (attributes & !SLOT_MASK)
            | (u64::from(self.priority & 0xf) << PRIORITY_SHIFT)
            | (u64::from(self.tries & 0xf) << TRIES_SHIFT)
            | (u64::from(self.successful) << SUCCESSFUL_SHIFT)
    }

    /// GRUB's notion of bootable: priority > 0 and (tries > 0 or successful).
    pub fn is_bootable(self) -> bool {
        self.priority > 0 && (self.tries > 0 || self.successful)
    }
}

impl std::fmt::Display for SlotAttrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "P{} T{} S{}",
            self.priority,
            self.tries,
            u8::from(self.successful)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_encodings_match_cgpt() {
        let cases = [
            ((2, 1, false), 0x0012_0000_0000_0000u64),
            ((1, 0, true), 0x0101_0000_0000_0000),
            ((15, 15, true), 0x01ff_0000_0000_0000),
            ((0, 0, false), 0),
            ((2, 0, true), 0x0102_0000_0000_0000),
        ];
        for ((priority, tries, successful), raw) in cases {
            let a = SlotAttrs {
                priority,
                tries,
                successful,
            };
            assert_eq!(a.apply(0), raw, "{a}");
            assert_eq!(SlotAttrs::decode(raw), a);
        }
    }

    #[test]
    fn other_bits_are_preserved() {
        let others = 0xfe00_ffff_ffff_ffffu64; // bits 0-47 and 57-63
        let a = SlotAttrs {
            priority: 3,
            tries: 7,
            successful: true,
        };
        let raw = a.apply(others);
        assert_eq!(raw & !SLOT_MASK, others);
        assert_eq!(SlotAttrs::decode(raw), a);
    }
}
