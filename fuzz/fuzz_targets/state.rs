//! Arbitrary bytes as each state file: reading never panics (both slots' updaters read the same
//! /var/lib/updater, whatever wrote it).
#![no_main]
use libfuzzer_sys::fuzz_target;
use updater::history::{FailedVersions, HealthReport, SlotVersions};
use updater::state::{InstallProgress, PendingInstall};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<PendingInstall>(data);
    let _ = serde_json::from_slice::<InstallProgress>(data);
    let _ = serde_json::from_slice::<FailedVersions>(data);
    let _ = serde_json::from_slice::<HealthReport>(data);
    let _ = serde_json::from_slice::<SlotVersions>(data);
});
