//! One classification of where a device stands in the update cycle, computed from both slots'
//! GPT bits together with the pending-install record: [`BootState`]. `install`, `health` and
//! `status` all decide from it, so the rules live here once.
//!
//! | booted slot bits | [`BootedState`] |
//! |---|---|
//! | P>0, S1 | [`Committed`](BootedState::Committed) |
//! | P>0, S0 | [`Trial`](BootedState::Trial): GRUB booted a try; health has not passed yet |
//! | P0 | [`FallbackBoot`](BootedState::FallbackBoot): GRUB's rule chose nothing (grub.cfg's fixed entry) |
//!
//! | other slot bits | record | [`OtherState`] |
//! |---|---|---|
//! | P>0, S1 | any | [`CommittedFallback`](OtherState::CommittedFallback) |
//! | P>0, T>0, S0 | any | [`Pending`](OtherState::Pending): flipped, waiting for its trial boot |
//! | P>0, T0, S0 | any | [`NeverCameUp`](OtherState::NeverCameUp): GRUB spent its tries and it never committed |
//! | P0 | pending, not flipped | [`Written`](OtherState::Written): verified, `--no-flip` |
//! | P0 | otherwise | [`Unbootable`](OtherState::Unbootable): empty, being written, or marked bad |
//!
//! What follows from it:
//! - [`BootState::install_refusal`]: an install writes the other slot, which is the only
//!   fallback unless the booted slot is committed, so it is refused from a trial or fallback
//!   boot unless forced (defect 1). Re-staging over a pending install is allowed.
//! - [`BootState::never_came_up`]: on a committed boot, the other slot is recorded as failed
//!   only when GRUB spent its tries on it (T0, never committed), whatever the pending record
//!   says (defect 10): a record alone may be stale, a flip alone may have no record yet.
//!
//! ```
//! use bootctl::SlotAttrs;
//! use updater::bootstate::{BootedState, OtherState};
//! let a = SlotAttrs { priority: 1, tries: 0, successful: true };
//! let b = SlotAttrs { priority: 2, tries: 0, successful: false };
//! assert_eq!(BootedState::of(a), BootedState::Committed);
//! assert_eq!(OtherState::of(b, None), OtherState::NeverCameUp);
//! ```
use crate::state::PendingInstall;
use bootctl::{Slot, SlotAttrs};
use serde::Serialize;

/// The booted slot's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BootedState {
    /// Health passed (or an operator committed it): the slot is a known-good fallback.
    Committed,
    /// Booted on a try; not committed yet.
    Trial,
    /// GRUB's rule chose no slot and grub.cfg's fixed entry booted this one.
    FallbackBoot,
}

impl BootedState {
    /// Classifies the booted slot's bits.
    pub fn of(a: SlotAttrs) -> BootedState {
        if a.priority == 0 {
            BootedState::FallbackBoot
        } else if a.successful {
            BootedState::Committed
        } else {
            BootedState::Trial
        }
    }
}

/// The other (passive) slot's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OtherState {
    /// Not bootable: empty, an install in progress, or marked bad.
    Unbootable,
    /// Verified and recorded but not flipped (`install --no-flip`).
    Written,
    /// Flipped with tries left: GRUB boots it next if its priority is the highest.
    Pending,
    /// GRUB spent every try on it and it never committed.
    NeverCameUp,
    /// Committed: GRUB falls back to it.
    CommittedFallback,
}

impl OtherState {
    /// Classifies the other slot's bits with the pending record, if that record names it.
    pub fn of(a: SlotAttrs, pending_for_it: Option<&PendingInstall>) -> OtherState {
        match (a.priority, a.tries, a.successful) {
            (0, _, _) if pending_for_it.is_some_and(|p| !p.flipped) => OtherState::Written,
            (0, _, _) => OtherState::Unbootable,
            (_, _, true) => OtherState::CommittedFallback,
            (_, 0, false) => OtherState::NeverCameUp,
            (_, _, false) => OtherState::Pending,
        }
    }
}

/// Why an install is refused in this boot state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootStateRefusal {
    /// The booted slot is not committed, so the other slot may be the only fallback.
    #[error("the booted slot {booted} is not committed ({state:?}; slot {other} is {other_state:?}): writing slot {other} could leave nothing to fall back to; run `updater health` first (or --force)")]
    BootedNotCommitted {
        /// Booted slot name.
        booted: String,
        /// Its state.
        state: BootedState,
        /// The other slot's name.
        other: String,
        /// Its state.
        other_state: OtherState,
    },
}

/// Where the device stands: both slots and the pending record.
#[derive(Debug, Clone, Serialize)]
pub struct BootState {
    /// The booted slot's name.
    pub booted_name: String,
    /// The booted slot's standing.
    pub booted: BootedState,
    /// The other slot's name.
    pub other_name: String,
    /// The other slot's standing.
    pub other: OtherState,
    /// The pending record, if it names the other slot.
    pub pending: Option<PendingInstall>,
    /// A pending record that names no slot this classification explains (the booted slot,
    /// or another disk's): left over, to be cleared.
    pub stale_pending: Option<PendingInstall>,
}

impl BootState {
    /// Classifies `booted` and `other` with the pending record `pending`.
    pub fn classify(booted: &Slot, other: &Slot, pending: Option<PendingInstall>) -> BootState {
        let names = |p: &PendingInstall, s: &Slot| {
            p.slot_partuuid
                .eq_ignore_ascii_case(&s.partuuid.to_string())
        };
        let (for_other, stale) = match pending {
            Some(p) if names(&p, other) => (Some(p), None),
            Some(p) => (None, Some(p)),
            None => (None, None),
        };
        BootState {
            booted_name: slot_name(booted),
            booted: BootedState::of(booted.attrs),
            other_name: slot_name(other),
            other: OtherState::of(other.attrs, for_other.as_ref()),
            pending: for_other,
            stale_pending: stale,
        }
    }

    /// Why installing into the other slot is refused, if it is (see the module doc).
    pub fn install_refusal(&self) -> Option<BootStateRefusal> {
        (self.booted != BootedState::Committed).then(|| BootStateRefusal::BootedNotCommitted {
            booted: self.booted_name.clone(),
            state: self.booted,
            other: self.other_name.clone(),
            other_state: self.other,
        })
    }

    /// On a committed boot, the other slot's install that never came up (GRUB spent its tries
    /// on it): its pending record, or `None` when it has none (installed by another tool).
    pub fn never_came_up(&self) -> bool {
        self.booted == BootedState::Committed && self.other == OtherState::NeverCameUp
    }
}

/// `A`/`B` for the slots labelled USR-A/USR-B, else the partition number: the one way slots
/// are named in messages, state and status.
pub fn slot_name(s: &Slot) -> String {
    s.label
        .strip_prefix("USR-")
        .filter(|l| *l == "A" || *l == "B")
        .map_or_else(|| s.number.to_string(), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootctl::Guid;

    fn a(priority: u8, tries: u8, successful: bool) -> SlotAttrs {
        SlotAttrs {
            priority,
            tries,
            successful,
        }
    }

    fn slot(label: &str, number: u32, attrs: SlotAttrs, uuid: u8) -> Slot {
        Slot {
            number,
            label: label.into(),
            partuuid: Guid::from_bytes([uuid; 16]),
            first_lba: 0,
            last_lba: 0,
            sector_size: 512,
            attrs,
            attributes: attrs.apply(0),
        }
    }

    fn pending(s: &Slot, flipped: bool) -> PendingInstall {
        PendingInstall {
            format_version: 1,
            slot: slot_name(s),
            slot_partuuid: s.partuuid.to_string(),
            version: "2".into(),
            payload_id: "x".into(),
            flipped,
        }
    }

    #[test]
    fn booted_slot_states_follow_the_table() {
        for (bits, want) in [
            (a(1, 0, true), BootedState::Committed),
            (a(2, 0, false), BootedState::Trial),
            (a(2, 1, false), BootedState::Trial),
            (a(0, 0, false), BootedState::FallbackBoot),
            (a(0, 0, true), BootedState::FallbackBoot),
        ] {
            assert_eq!(BootedState::of(bits), want, "{bits}");
        }
    }

    #[test]
    fn other_slot_states_follow_the_table() {
        let b = slot("USR-B", 4, a(0, 0, false), 2);
        for (bits, record, want) in [
            (a(1, 0, true), None, OtherState::CommittedFallback),
            (a(2, 1, false), None, OtherState::Pending),
            (a(2, 0, false), None, OtherState::NeverCameUp),
            (a(2, 0, false), Some(true), OtherState::NeverCameUp),
            (a(0, 0, false), Some(false), OtherState::Written),
            (a(0, 0, false), Some(true), OtherState::Unbootable),
            (a(0, 0, false), None, OtherState::Unbootable),
        ] {
            let p = record.map(|f| pending(&b, f));
            assert_eq!(OtherState::of(bits, p.as_ref()), want, "{bits} {record:?}");
        }
    }

    #[test]
    fn install_is_refused_unless_the_booted_slot_is_committed() {
        let b_pending = slot("USR-B", 4, a(2, 1, false), 2);
        let a_committed = slot("USR-A", 3, a(1, 0, true), 1);
        let st = BootState::classify(&a_committed, &b_pending, None);
        assert_eq!(
            st.install_refusal(),
            None,
            "re-staging over a pending install"
        );
        let b_trial = slot("USR-B", 4, a(2, 0, false), 2);
        let st = BootState::classify(&b_trial, &a_committed, None);
        assert_eq!(
            st.install_refusal().unwrap().to_string(),
            "the booted slot B is not committed (Trial; slot A is CommittedFallback): writing slot A could leave nothing to fall back to; run `updater health` first (or --force)"
        );
    }

    #[test]
    fn never_came_up_needs_spent_tries_on_a_committed_boot() {
        let a_committed = slot("USR-A", 3, a(1, 0, true), 1);
        let b_spent = slot("USR-B", 4, a(2, 0, false), 2);
        let b_fresh = slot("USR-B", 4, a(2, 1, false), 2);
        let st = BootState::classify(&a_committed, &b_spent, Some(pending(&b_spent, true)));
        assert!(st.never_came_up());
        assert!(st.pending.is_some());
        let st = BootState::classify(&a_committed, &b_fresh, Some(pending(&b_fresh, true)));
        assert!(!st.never_came_up(), "a fresh flip still has its try");
        let st = BootState::classify(&a_committed, &b_spent, None);
        assert!(st.never_came_up(), "a flip without its record still counts");
    }

    #[test]
    fn a_record_for_the_booted_slot_is_stale() {
        let a_committed = slot("USR-A", 3, a(1, 0, true), 1);
        let b = slot("USR-B", 4, a(0, 0, false), 2);
        let st = BootState::classify(&a_committed, &b, Some(pending(&a_committed, true)));
        assert!(st.pending.is_none());
        assert!(st.stale_pending.is_some());
    }
}
