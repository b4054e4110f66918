//! The update cycle by delta under OVMF (issue 12): a v1 box installs v2 from a format 2
//! payload ([`qemu_tests::cycle::V2_FORMAT2_PAYLOAD`], content-defined chunks) on the payloads
//! disk. v2 differs from v1 in `IMAGE_VERSION` only, so the updater copies almost every chunk
//! from its booted slot (each checked against the signed SHA-256) and reads from the payload
//! only the prelude and the frames of the few changed chunks; v2 then boots from the other slot
//! through our GRUB and its health check commits it.
//!
//! The images, payloads and disk are the update cycle's ([`crate::cycle::Scenario`]); the v1
//! payload format installing in QEMU is the cycle's own scenarios.
use crate::cycle::Scenario;
use anyhow::Context;
use bootctl::SlotId;
use qemu_tests::cycle::{INSTALL_TIMEOUT, PAYLOADS_MOUNT, UPDATER, V2_FORMAT2_PAYLOAD};
use serde_json::Value;
use std::os::unix::fs::FileExt;

/// The most of the image a v1 → v2 delta may read from the payload: the prelude and the frames
/// of the changed chunks (the os-release file, the squashfs superblock and metadata, a few
/// chunks of 16–256 KiB). Measured: 19 849 bytes of a 23.9 MB image (0.08 %); the bound leaves
/// room for a compression layout that groups chunks into larger frames or carries a dictionary.
/// A full download reads the whole payload, about 71 % of the image.
const MAX_FETCHED_SHARE: f64 = 0.1;
/// The least of the image a v1 → v2 delta must copy from the booted slot.
const MIN_REUSED_SHARE: f64 = 0.9;

/// `updater --json install` of the format 2 payload of v2; returns the JSON events it printed
/// (progress, the delta plan, the result), stderr shown after them.
fn install_by_delta(g: &mut qemu_tests::cycle::Guest) -> anyhow::Result<Vec<Value>> {
    let cmd = format!(
        "{UPDATER} --json install {PAYLOADS_MOUNT}/{V2_FORMAT2_PAYLOAD} 2>/run/install.err; rc=$?; cat /run/install.err; exit $rc"
    );
    let out =
        g.vm.run_ok(&cmd, INSTALL_TIMEOUT)
            .with_context(|| format!("running {cmd:?}"))?;
    Ok(out
        .lines()
        .filter_map(|l| l.find('{').map(|at| &l[at..]))
        .filter_map(|json| serde_json::from_str(json).ok())
        .collect())
}

fn event<'a>(events: &'a [Value], name: &str) -> anyhow::Result<&'a Value> {
    events
        .iter()
        .find(|e| e["event"] == name)
        .with_context(|| format!("no {name:?} event among {events:?}"))
}

fn number(v: &Value, field: &str) -> anyhow::Result<u64> {
    v[field]
        .as_u64()
        .with_context(|| format!("no number {field:?} in {v}"))
}

#[test]
fn v2_installed_by_delta_copies_most_chunks_from_the_booted_slot_and_is_committed(
) -> anyhow::Result<()> {
    let s = Scenario::new("delta-v1-to-v2")?;
    let mut g = s.boot_v1()?;

    let events = install_by_delta(&mut g)?;
    let result = event(&events, "result")?;
    assert_eq!(
        (&result["status"], &result["version"]),
        (&Value::from("ok"), &Value::from("2")),
        "{result}"
    );
    assert_eq!(result["delta"], true, "installed by delta: {result}");
    let image = number(result, "image_size")?;
    let fetched = number(result, "bytes_fetched")?;
    let reused = number(result, "bytes_reused")?;
    eprintln!(
        "delta v1 -> v2 in the guest: image {image} bytes, fetched {fetched} bytes ({:.2} %), \
         reused {reused} bytes ({:.1} %) of the booted slot",
        fetched as f64 * 100.0 / image as f64,
        reused as f64 * 100.0 / image as f64
    );
    assert!(
        reused as f64 >= MIN_REUSED_SHARE * image as f64,
        "reused {reused} of {image} bytes: {result}"
    );
    assert!(
        fetched as f64 <= MAX_FETCHED_SHARE * image as f64,
        "fetched {fetched} for a {image}-byte image: {result}"
    );
    assert_eq!(result["damaged_local_chunks"], 0, "{result}");
    assert_eq!(result["ranges_ignored"], false, "{result}");
    let plan = event(&events, "delta")?;
    assert_eq!(
        number(plan, "reuse_bytes")?,
        reused,
        "the plan was kept: {plan}"
    );

    s.v2_boots_and_is_committed_with_v1_as_fallback(g)?;

    // What the delta assembled in B is v2's image, byte for byte.
    let v2 = std::fs::read(s.images.usr("2"))?;
    assert_eq!(v2.len() as u64, image);
    let slot_b = qemu_tests::disk::slot(&s.disk.path, &SlotId::B)?;
    let mut written = vec![0; v2.len()];
    std::fs::File::open(&s.disk.path)?.read_exact_at(&mut written, slot_b.byte_offset())?;
    assert!(written == v2, "slot B does not hold v2's image");
    Ok(())
}
