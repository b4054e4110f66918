//! Arbitrary bytes as each state file: reading never panics (both slots' updaters read the same
//! /var/lib/updater, whatever wrote it), and salvaging them as a damaged `failed.json` stays
//! within its bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use updater::history::{
    head_within, salvage_failed, tail_within, FailedVersions, HealthReport, SlotVersions,
    MAX_SALVAGED, MAX_STORED_VERSION,
};
use updater::state::{InstallProgress, PendingInstall};

/// Bytes of `s` once JSON-escaped.
fn escaped_len(s: &str) -> usize {
    serde_json::to_string(s).expect("a string encodes").len() - 2
}

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<PendingInstall>(data);
    let _ = serde_json::from_slice::<InstallProgress>(data);
    let _ = serde_json::from_slice::<FailedVersions>(data);
    let _ = serde_json::from_slice::<HealthReport>(data);
    let _ = serde_json::from_slice::<SlotVersions>(data);

    for whole in [true, false] {
        let s = salvage_failed(data, whole);
        assert!(s.versions.len() <= MAX_SALVAGED);
        assert!(!(s.certain && !whole), "a cut file is never certain");
        for v in &s.versions {
            assert!(!v.is_empty() && escaped_len(v) <= MAX_STORED_VERSION);
        }
    }

    if let Ok(text) = std::str::from_utf8(data) {
        for max in [0, 3, 4, 9, 64] {
            let (head, tail) = (head_within(text, max), tail_within(text, max));
            assert!(escaped_len(&head) <= max && escaped_len(&tail) <= max);
            if head != text {
                assert!(text.starts_with(head.trim_end_matches('…')));
                assert!(text.ends_with(tail.trim_start_matches('…')));
            }
        }
    }
});
