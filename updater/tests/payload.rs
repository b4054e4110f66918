//! The payload format: the committed test vector, the documented layout, and every kind of
//! damage refused with its exact error.
use crate::util::{self, testdata};
use updater::payload::writer::{PackOptions, PayloadParts};
use updater::payload::{self, TrustedKeys};

fn trusted() -> TrustedKeys {
    TrustedKeys::new([util::test_key().verifying_key()])
}

#[test]
fn test_vector_verifies_with_its_committed_public_key() {
    let key = TrustedKeys::load_file(&testdata().join("vector.pub")).unwrap();
    let bytes = std::fs::read(testdata().join("vector.payload")).unwrap();
    let prelude = payload::verify_stream(&mut &bytes[..], &TrustedKeys::new([key])).unwrap();
    let m = &prelude.manifest;
    assert_eq!(m.compatible, "testbox");
    assert_eq!(m.version, "1.0");
    assert_eq!(m.created, 1_767_225_600);
    assert_eq!(m.expires, Some(2_082_758_400));
    assert_eq!(
        (m.image_size, m.chunk_size, m.chunk_count),
        (10000, 4096, 3)
    );
    let image = std::fs::read(testdata().join("vector.img")).unwrap();
    assert_eq!(m.image_sha256, payload::Sha256Digest::of(&image));
    assert_eq!(prelude.signed_by.to_string(), "21fe31dfa154a261");
}

#[test]
fn packing_the_test_vector_image_reproduces_the_payload_byte_for_byte() {
    let image = std::fs::read(testdata().join("vector.img")).unwrap();
    let parts = PayloadParts::from_image(
        &image,
        &PackOptions {
            compatible: "testbox".into(),
            version: "1.0".into(),
            created: 1_767_225_600,
            expires: Some(2_082_758_400),
            chunk_size: 4096,
            level: 3,
            threads: 1,
        },
    )
    .unwrap();
    let want = std::fs::read(testdata().join("vector.payload")).unwrap();
    assert!(parts.assemble(&[util::test_key()]) == want);
}

#[test]
fn streaming_pack_equals_in_memory_assembly() {
    let image = util::image_bytes(50_000, 3);
    let opts = util::opts("testbox", "3");
    let mut out = std::io::Cursor::new(Vec::new());
    let summary = payload::writer::pack(
        &mut &image[..],
        image.len() as u64,
        &mut out,
        &[util::test_key()],
        &PackOptions {
            threads: 2,
            ..opts.clone()
        },
    )
    .unwrap();
    let parts = PayloadParts::from_image(&image, &opts).unwrap();
    assert_eq!(out.get_ref().len() as u64, summary.payload_size);
    assert!(*out.get_ref() == parts.assemble(&[util::test_key()]));
}

#[test]
fn docs_hex_dump_matches_the_test_vector() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/payload-format.md"),
    )
    .unwrap();
    let block = doc
        .split("<!-- vector-hex-begin -->")
        .nth(1)
        .and_then(|s| s.split("<!-- vector-hex-end -->").next())
        .expect("hex block in docs/payload-format.md");
    let mut bytes = Vec::new();
    for line in block.lines().filter(|l| l.contains(':')) {
        let (offset, hexes) = line.split_once(':').unwrap();
        assert_eq!(
            usize::from_str_radix(offset.trim(), 16).unwrap(),
            bytes.len()
        );
        for h in hexes.split_whitespace() {
            bytes.push(u8::from_str_radix(h, 16).unwrap());
        }
    }
    let vector = std::fs::read(testdata().join("vector.payload")).unwrap();
    assert_eq!(bytes.len(), 182);
    assert_eq!(bytes[..], vector[..182]);
}

#[test]
fn accepts_the_good_payload_the_reject_cases_derive_from() {
    let good = util::good_parts().assemble(&[util::test_key()]);
    let prelude = payload::verify_stream(&mut &good[..], &trusted()).unwrap();
    assert_eq!(prelude.manifest.chunk_count, 5);
}

#[test]
fn rejects_each_bad_payload_with_its_exact_error() {
    for case in util::bad_payloads() {
        let err = payload::verify_stream(&mut &case.bytes[..], &trusted())
            .map(|_| ())
            .expect_err(case.name);
        assert_eq!(err.to_string(), case.error, "{}", case.name);
    }
}

#[test]
fn accepts_a_payload_with_one_trusted_and_one_unknown_signature() {
    let good = util::good_parts().assemble(&[util::other_key(), util::test_key()]);
    let prelude = payload::verify_stream(&mut &good[..], &trusted()).unwrap();
    assert_eq!(
        prelude.signed_by,
        payload::KeyId::of(&util::test_key().verifying_key())
    );
}
