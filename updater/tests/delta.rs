//! Format 2 payloads (content-defined chunks) through `updater install`: they install like
//! format 1 ones (streamed, verified, read back) and resume after an interruption; format 1
//! payloads keep installing (the other suites use them).
use crate::util::{self, Device};
use bootctl::SlotId;
use updater::payload::cdc::CdcParams;
use updater::payload::writer::PayloadParts;

/// Chunks of 1 to 16 KiB (average 4 KiB), so a test image of a few hundred KiB has dozens.
const SMALL: CdcParams = CdcParams {
    min: 1024,
    avg: 4096,
    max: 16384,
};

fn v2_parts(image: &[u8], version: &str) -> PayloadParts {
    PayloadParts::from_image_v2(image, &util::opts("testbox", version), SMALL).unwrap()
}

#[test]
fn a_format_2_payload_installs_and_flips_the_passive_slot() {
    let dev = Device::new();
    let a_before = dev.slot_bytes(&SlotId::A);
    let image = util::image_bytes(300_000, 5);
    let p = dev.payload("p", &v2_parts(&image, "2.0").assemble(&[util::test_key()]));
    let out = util::ok(dev.updater(&["install", p.to_str().unwrap()]));
    assert!(out.contains("2.0"), "{out}");
    assert_eq!(dev.slot_bytes(&SlotId::B)[..image.len()], image[..]);
    assert_eq!(dev.slot_bytes(&SlotId::A), a_before);
    assert_eq!(dev.slot(&SlotId::B).attrs.tries, 1);
}

#[test]
fn a_format_2_payload_with_a_damaged_frame_is_refused_and_the_slot_stays_unbootable() {
    let dev = Device::new();
    let image = util::image_bytes(300_000, 6);
    let mut bytes = v2_parts(&image, "2.0").assemble(&[util::test_key()]);
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    let p = dev.payload("p", &bytes);
    let out = dev.updater(&["install", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad zstd frame") || err.contains("SHA-256 mismatch"),
        "{err}"
    );
    assert!(!dev.slot(&SlotId::B).attrs.is_bootable());
}
