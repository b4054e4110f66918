//! Publish-time patches in `updater install` (`docs/patch-format.md`): a device booted from
//! version 1.0 looks for `<payload>.from-1.0.patch` next to the payload (nginx on 127.0.0.1,
//! or a file beside a payload file), fetches it instead of the frames its records cover, and
//! never fails an install because of it: a missing, foreign, unsigned or unusable patch leaves
//! a plain delta install.
use crate::agent::Nginx;
use crate::delta::{assert_installed, booted_with, json_install, v2_parts};
use crate::util;
use std::io::Write;
use updater::payload::patch::write::{make_patch, PatchOptions};
use updater::payload::{read_prelude, TrustedKeys};

/// An old image and a new one like a security update: two regions rewritten with small edits
/// (the old bytes predict them: a patch helps) and 20 KB of new bytes inserted (nothing
/// predicts them: the payload's frames are as good).
fn pair() -> (Vec<u8>, Vec<u8>) {
    let old = util::image_bytes(600_000, 21);
    let mut new = old.clone();
    for region in [100_000..140_000, 400_000..430_000] {
        for b in new[region].iter_mut().step_by(61) {
            *b ^= 0x3c;
        }
    }
    new.splice(250_000..250_000, util::image_bytes(20_000, 22));
    (old, new)
}

fn tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}

/// The patch from `base` (named for `version`) to `payload`, whose image is `new`.
fn patch(base: &[u8], new: &[u8], payload: &[u8], version: &str) -> Vec<u8> {
    let keys = TrustedKeys::new([util::test_key().verifying_key()]);
    let prelude = read_prelude(&mut &payload[..], &keys).unwrap();
    let opts = PatchOptions {
        base_version: version.into(),
        created: 0,
        level: 19,
        threads: 2,
    };
    let (b, t) = (tmp(base), tmp(new));
    make_patch(
        b.as_file(),
        t.as_file(),
        &prelude,
        &[util::test_key()],
        &opts,
        &|_, _| {},
    )
    .unwrap()
    .0
}

/// Nginx serving `files` (name, bytes), with the directory it serves.
fn serve(files: &[(&str, &[u8])]) -> (Nginx, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    (Nginx::serve(dir.path()), dir)
}

/// `updater --json install` of `/p` from `nginx` on a device booted from `old`: the result.
fn install(old: &[u8], new: &[u8], nginx: &Nginx) -> serde_json::Value {
    let dev = booted_with(old);
    let report = json_install(&dev, &nginx.url("p"));
    assert_installed(&dev, new);
    report
}

fn n(report: &serde_json::Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

#[test]
fn a_patch_for_the_booted_version_is_fetched_instead_of_the_frames_it_covers() {
    let (old, new) = pair();
    let payload = v2_parts(&new, "2.0").assemble(&[util::test_key()]);
    let patch = patch(&old, &new, &payload, "1.0");
    let (plain_server, _d1) = serve(&[("p", &payload)]);
    let (patch_server, _d2) = serve(&[("p", &payload), ("p.from-1.0.patch", &patch)]);
    let plain = install(&old, &new, &plain_server);
    let patched = install(&old, &new, &patch_server);
    let total = |r: &serde_json::Value| n(r, "bytes_fetched") + n(r, "patch_bytes_fetched");
    eprintln!(
        "patch {} bytes; fetched without it {}, with it {} ({} image bytes from the patch)",
        patch.len(),
        total(&plain),
        total(&patched),
        n(&patched, "bytes_from_patch")
    );
    assert_eq!(n(&plain, "patch_bytes_fetched"), 0);
    assert_eq!(n(&patched, "patch_bytes_fetched"), patch.len() as u64);
    assert!(n(&patched, "bytes_from_patch") >= 60_000, "{patched}");
    assert_eq!(n(&patched, "patch_failed_records"), 0);
    assert!(
        total(&patched) * 10 < total(&plain) * 7,
        "{plain} {patched}"
    );
    assert!(patch_server
        .requests()
        .contains("GET /p.from-1.0.patch HTTP/1.1\" 2"));
}

#[test]
fn a_patch_next_to_a_payload_file_is_used_too() {
    let (old, new) = pair();
    let payload = v2_parts(&new, "2.0").assemble(&[util::test_key()]);
    let dev = booted_with(&old);
    let p = dev.payload("p", &payload);
    dev.payload("p.from-1.0.patch", &patch(&old, &new, &payload, "1.0"));
    let report = json_install(&dev, p.to_str().unwrap());
    assert_installed(&dev, &new);
    assert!(n(&report, "bytes_from_patch") >= 60_000, "{report}");
}

#[test]
fn a_patch_for_another_version_is_not_fetched() {
    let (old, new) = pair();
    let payload = v2_parts(&new, "2.0").assemble(&[util::test_key()]);
    let (nginx, _d) = serve(&[
        ("p", &payload),
        ("p.from-0.9.patch", &patch(&old, &new, &payload, "0.9")),
    ]);
    let report = install(&old, &new, &nginx);
    assert_eq!(n(&report, "patch_bytes_fetched"), 0);
    assert_eq!(n(&report, "bytes_from_patch"), 0);
    let log = nginx.requests();
    assert!(
        log.contains("GET /p.from-1.0.patch HTTP/1.1\" 404"),
        "{log}"
    );
    assert!(!log.contains("0.9"), "{log}");
}

#[test]
fn a_patch_made_from_another_image_is_not_used_and_the_install_fetches_the_frames() {
    let (old, new) = pair();
    let payload = v2_parts(&new, "2.0").assemble(&[util::test_key()]);
    // Another "1.0": the same changes made to other bytes.
    let other_old = util::image_bytes(600_000, 23);
    let (plain_server, _d1) = serve(&[("p", &payload)]);
    let (nginx, _d2) = serve(&[
        ("p", &payload),
        (
            "p.from-1.0.patch",
            &patch(&other_old, &new, &payload, "1.0"),
        ),
    ]);
    let plain = install(&old, &new, &plain_server);
    let report = install(&old, &new, &nginx);
    assert_eq!(n(&report, "bytes_from_patch"), 0, "{report}");
    assert!(n(&report, "patch_failed_records") > 0, "{report}");
    eprintln!(
        "fetched {} bytes, {} without the patch",
        n(&report, "bytes_fetched"),
        n(&plain, "bytes_fetched")
    );
    assert!(
        n(&report, "bytes_fetched") <= n(&plain, "bytes_fetched"),
        "{plain} {report}"
    );
}

#[test]
fn a_tampered_patch_is_refused_with_a_warning_and_the_install_succeeds_by_plain_delta() {
    let (old, new) = pair();
    let payload = v2_parts(&new, "2.0").assemble(&[util::test_key()]);
    let mut bad = patch(&old, &new, &payload, "1.0");
    bad[64 + 20] ^= 1; // a byte of the signed manifest
    let (nginx, _d) = serve(&[("p", &payload), ("p.from-1.0.patch", &bad)]);
    let dev = booted_with(&old);
    let out = dev.updater(&["install", &nginx.url("p")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("not using the patch: patch signature: bad signature by trusted key"),
        "{stderr}"
    );
    assert_installed(&dev, &new);
}

#[test]
fn a_damaged_base_region_in_the_booted_slot_makes_its_chunks_fetched_instead() {
    let (old, new) = pair();
    let payload = v2_parts(&new, "2.0").assemble(&[util::test_key()]);
    let patch = patch(&old, &new, &payload, "1.0");
    let (nginx, _d) = serve(&[("p", &payload), ("p.from-1.0.patch", &patch)]);
    let clean = install(&old, &new, &nginx);
    // A byte inside the old version of the second rewritten region, which no chunk of the new
    // image shares: only that record's base region is affected.
    let dev = booted_with(&old);
    let a = dev.slot(&bootctl::SlotId::A).byte_offset();
    util::write_at(&dev.disk(), a + 415_000, &[!old[415_000]]);
    let out = dev.updater(&["--json", "install", &nginx.url("p")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("unusable, fetching its chunks from the payload: patch record"),
        "{stderr}"
    );
    assert_installed(&dev, &new);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(n(&report, "patch_failed_records"), 1, "{report}");
    assert!(n(&report, "bytes_from_patch") > 0);
    assert!(n(&report, "bytes_from_patch") < n(&clean, "bytes_from_patch"));
    assert!(n(&report, "bytes_fetched") > n(&clean, "bytes_fetched"));
}

#[test]
fn something_else_under_the_patch_name_is_dropped_after_its_header() {
    let (old, new) = pair();
    let payload = v2_parts(&new, "2.0").assemble(&[util::test_key()]);
    // A server that answers the patch's name with the payload (a catch-all, a bad rewrite).
    let (nginx, _d) = serve(&[("p", &payload), ("p.from-1.0.patch", &payload)]);
    let dev = booted_with(&old);
    let out = dev.updater(&["--json", "install", &nginx.url("p")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("p.from-1.0.patch: not a patch: magic is \"UPDPAYLD\""),
        "{stderr}"
    );
    assert_installed(&dev, &new);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(n(&report, "bytes_from_patch"), 0);
    // Read up to the header (and what the reader buffered), not the whole file.
    assert!(
        n(&report, "patch_bytes_fetched") < payload.len() as u64 / 2,
        "{report}"
    );
}
