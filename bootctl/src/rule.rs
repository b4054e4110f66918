//! The slot rules, as pure functions over slot attributes: GRUB's selection and cgpt-like
//! re-ranking.
//!
//! [`choose`] is the Rust twin of `gptprio.next` (DESIGN §4): among the usr slots in entry
//! order, the one with the highest priority > 0 whose tries > 0 or successful wins; ties go to
//! the lowest entry index. [`after_boot`] is what GRUB writes back for the winner. The test
//! vectors in `testdata/select-vectors.json` are generated from and checked against these
//! functions, and the GRUB module is tested against the same file.
//!
//! ```
//! use bootctl::SlotAttrs;
//! use bootctl::rule::{choose, after_boot};
//! let a = SlotAttrs { priority: 1, tries: 0, successful: true };
//! let b = SlotAttrs { priority: 2, tries: 1, successful: false };
//! assert_eq!(choose(&[a, b]), Some(1));
//! assert_eq!(after_boot(b), SlotAttrs { priority: 2, tries: 0, successful: false });
//! ```
use crate::attrs::{SlotAttrs, MAX_FIELD};

/// Index (into `slots`, which is in GPT entry order) of the slot GRUB boots, if any.
pub fn choose(slots: &[SlotAttrs]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, s) in slots.iter().enumerate() {
        if s.is_bootable() && best.is_none_or(|b| s.priority > slots[b].priority) {
            best = Some(i);
        }
    }
    best
}

/// The attributes GRUB writes back for the slot it boots: one try fewer, if it had any.
pub fn after_boot(chosen: SlotAttrs) -> SlotAttrs {
    SlotAttrs {
        tries: chosen.tries.saturating_sub(1),
        ..chosen
    }
}

/// New priorities after making `target` the strictly highest, cgpt `prioritize` style.
///
/// Changes as little as possible: a target already strictly highest changes nothing; else it
/// gets one more than the highest other priority; only when that would exceed 15 does it get
/// 15 and the others are re-ranked 14, 13, … in their existing order, the lowest ranks
/// coalescing at 1. Priority 0 (never boot) stays 0, and no active slot drops to 0.
pub fn prioritize(priorities: &[u8], target: usize) -> Vec<u8> {
    let others_max = priorities
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != target)
        .map(|(_, &p)| p)
        .max()
        .unwrap_or(0);
    let mut out = priorities.to_vec();
    if priorities[target] > others_max {
        return out;
    }
    if others_max < MAX_FIELD {
        out[target] = others_max + 1;
        return out;
    }
    let mut ranks: Vec<u8> = priorities
        .iter()
        .enumerate()
        .filter(|&(i, &p)| i != target && p > 0)
        .map(|(_, &p)| p)
        .collect();
    ranks.sort_unstable_by(|a, b| b.cmp(a));
    ranks.dedup();
    for (i, p) in out.iter_mut().enumerate() {
        if i == target {
            *p = MAX_FIELD;
        } else if *p > 0 {
            let rank = ranks
                .iter()
                .position(|r| r == p)
                .expect("rank of an active slot") as u8;
            *p = (MAX_FIELD - 1).saturating_sub(rank).max(1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(priority: u8, tries: u8, successful: bool) -> SlotAttrs {
        SlotAttrs {
            priority,
            tries,
            successful,
        }
    }

    #[test]
    fn factory_image_boots_a() {
        assert_eq!(choose(&[s(1, 0, true), s(0, 0, false)]), Some(0));
    }

    #[test]
    fn freshly_flipped_b_boots_b() {
        assert_eq!(choose(&[s(1, 0, true), s(2, 1, false)]), Some(1));
    }

    #[test]
    fn b_without_tries_and_uncommitted_falls_back_to_a() {
        assert_eq!(choose(&[s(1, 0, true), s(2, 0, false)]), Some(0));
    }

    #[test]
    fn ties_go_to_the_lowest_entry() {
        assert_eq!(choose(&[s(2, 0, true), s(2, 3, false)]), Some(0));
    }

    #[test]
    fn priority_zero_never_boots_even_if_successful() {
        assert_eq!(choose(&[s(0, 5, true), s(0, 0, true)]), None);
    }

    #[test]
    fn nothing_bootable_is_none() {
        assert_eq!(choose(&[s(1, 0, false), s(2, 0, false)]), None);
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn boot_decrements_tries_only() {
        assert_eq!(after_boot(s(2, 1, false)), s(2, 0, false));
        assert_eq!(after_boot(s(1, 0, true)), s(1, 0, true));
    }

    #[test]
    fn prioritize_examples() {
        assert_eq!(prioritize(&[1, 0], 1), vec![1, 2]);
        assert_eq!(prioritize(&[1, 2], 1), vec![1, 2]);
        assert_eq!(prioritize(&[3, 3], 0), vec![4, 3]);
        assert_eq!(prioritize(&[15, 0], 1), vec![14, 15]);
        assert_eq!(prioritize(&[15, 15, 14, 1, 0], 4), vec![14, 14, 13, 12, 15]);
    }

    #[test]
    fn prioritize_ranks_the_others_without_the_target_s_old_priority() {
        // 5 is the target's own priority: the others rank 15 -> 14, 3 -> 13, not 12.
        assert_eq!(prioritize(&[15, 5, 3], 1), vec![14, 15, 13]);
    }

    fn attrs() -> impl Strategy<Value = SlotAttrs> {
        (0u8..=15, 0u8..=15, any::<bool>()).prop_map(|(p, t, ok)| s(p, t, ok))
    }

    proptest! {
        #[test]
        fn chosen_slot_is_bootable_and_none_bootable_has_higher_priority(slots in prop::collection::vec(attrs(), 0..6)) {
            match choose(&slots) {
                Some(i) => {
                    prop_assert!(slots[i].is_bootable());
                    for (j, o) in slots.iter().enumerate() {
                        if o.is_bootable() {
                            prop_assert!(o.priority < slots[i].priority || (o.priority == slots[i].priority && j >= i));
                        }
                    }
                }
                None => prop_assert!(slots.iter().all(|o| !o.is_bootable())),
            }
        }

        #[test]
        fn prioritized_target_is_strictly_highest_and_order_is_kept(ps in prop::collection::vec(0u8..=15, 1..6), t in 0usize..6) {
            let t = t % ps.len();
            let out = prioritize(&ps, t);
            prop_assert!(out[t] >= 1);
            for i in 0..ps.len() {
                if i == t { continue; }
                prop_assert!(out[i] < out[t]);
                prop_assert_eq!(out[i] == 0, ps[i] == 0);
                for j in 0..ps.len() {
                    if j == t { continue; }
                    if ps[i] > ps[j] { prop_assert!(out[i] >= out[j]); }
                    if ps[i] == ps[j] { prop_assert_eq!(out[i], out[j]); }
                }
            }
            prop_assert_eq!(prioritize(&out, t), out.clone(), "prioritizing twice changes nothing");
        }
    }
}
