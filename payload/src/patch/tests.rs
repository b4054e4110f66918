//! Tests of the patch format: writer → reader round trip, and the reader's answer to each kind
//! of bad input (a good patch with one change, the exact error checked).

use super::write::{assemble, make_patch, PatchOptions};
use super::*;
use crate::cdc::CdcParams;
use crate::writer::{PackOptions, PayloadParts};
use crate::{read_prelude, VerifiedPrelude};
use ed25519_dalek::SigningKey;
use std::io::Write;

const P: CdcParams = CdcParams {
    min: 1024,
    avg: 2048,
    max: 8192,
};

fn noise(len: usize, mut x: u32) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9u8; 32])
}

fn keys() -> TrustedKeys {
    TrustedKeys::new([key().verifying_key()])
}

fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}

/// A base image, a target that rewrites 30 KB of it with small edits (the old bytes help) and
/// inserts 5 KB of new noise (they do not), and the target's signed format 2 payload.
struct Pair {
    base: Vec<u8>,
    target: Vec<u8>,
    prelude: VerifiedPrelude,
}

fn pair() -> Pair {
    let base = noise(300_000, 1);
    let mut target = base.clone();
    for b in target[100_000..130_000].iter_mut().step_by(97) {
        *b ^= 0x5a;
    }
    target.splice(200_000..200_000, noise(5_000, 2));
    let opts = PackOptions {
        compatible: "testbox".into(),
        version: "2".into(),
        created: 0,
        expires: None,
        chunk_size: 4096,
        level: 3,
        threads: 1,
    };
    let payload = PayloadParts::from_image_v2(&target, &opts, P)
        .unwrap()
        .assemble(&[key()]);
    let prelude = read_prelude(&mut &payload[..], &keys()).unwrap();
    Pair {
        base,
        target,
        prelude,
    }
}

/// `make_patch` from `base` to `target` (the pair's payload image or not), named `version`.
fn try_make(
    p: &Pair,
    base: &[u8],
    target: &[u8],
    version: &str,
) -> Result<(Vec<u8>, write::PatchSummary), PatchError> {
    let (base, target) = (file(base), file(target));
    let opts = PatchOptions {
        base_version: version.into(),
        created: 7,
        level: 19,
        threads: 2,
    };
    make_patch(
        base.as_file(),
        target.as_file(),
        &p.prelude,
        &[key()],
        &opts,
        &|_, _| {},
    )
}

fn make(p: &Pair, version: &str) -> (Vec<u8>, write::PatchSummary) {
    try_make(p, &p.base, &p.target, version).unwrap()
}

#[test]
fn a_patch_rebuilds_the_chunks_the_base_lacks_from_less_than_their_payload_frames() {
    let p = pair();
    let (bytes, summary) = make(&p, "1.0");
    assert!(summary.covered_chunks > 0, "{summary:?}");
    assert!(
        summary.record_frame_bytes < summary.replaced_frame_bytes / 4,
        "{summary:?}"
    );
    let patch = VerifiedPatch::parse(bytes, &keys()).unwrap();
    assert_eq!(patch.manifest.base_version, "1.0");
    assert_eq!(patch.manifest.base_image_size, 300_000);
    assert_eq!(patch.manifest.base_image_sha256, Sha256Digest::of(&p.base));
    let entries = &p.prelude.chunks.entries;
    patch.bind(&p.prelude.manifest, entries).unwrap();
    let mut out = Vec::new();
    for (i, r) in patch.records.iter().enumerate() {
        let region = &p.base[r.base_offset as usize..][..r.base_len as usize];
        patch.decode(i, region, &mut out).unwrap();
        let at = entries[r.first_chunk as usize].image_offset as usize;
        assert!(out == p.target[at..at + out.len()], "record {i}");
        for c in r.chunks() {
            assert_eq!(patch.record_of(c), Some(i));
        }
    }
}

#[test]
fn a_base_version_that_cannot_name_a_file_is_refused_by_the_writer() {
    let p = pair();
    let e = try_make(&p, &p.base, &p.target, "../1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "patch base version \"../1\" is not 1 to 128 of [A-Za-z0-9._+~-]"
    );
}

#[test]
fn a_target_image_that_is_not_the_payloads_is_refused_by_the_writer() {
    let p = pair();
    let mut other = p.target.clone();
    other[5] ^= 1;
    let e = try_make(&p, &p.base, &other, "1").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("checking the target image: 305000 bytes with SHA-256"),
        "{e}"
    );
}

#[test]
fn the_patch_file_name_is_the_payload_name_and_the_base_version() {
    assert_eq!(
        patch_file_name("https://h/v2.payload", "1.4.2~rc1").as_deref(),
        Some("https://h/v2.payload.from-1.4.2~rc1.patch")
    );
    for bad in ["", "a/b", ".hidden", "1 2", "ü", &"x".repeat(129)] {
        assert_eq!(patch_file_name("p", bad), None, "{bad:?}");
    }
}

/// Fixes the header CRC after an edit of its bytes.
fn recrc(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
}

fn parse_err(bytes: Vec<u8>) -> String {
    VerifiedPatch::parse(bytes, &keys())
        .unwrap_err()
        .to_string()
}

#[test]
fn damaged_or_unsigned_patches_are_refused_with_the_exact_reason() {
    let p = pair();
    let (good, _) = make(&p, "1");
    let parsed = VerifiedPatch::parse(good.clone(), &keys()).unwrap();
    let manifest_len = parsed.manifest.encode().len();
    let table_at = PATCH_HEADER_LEN + manifest_len + 4 + crate::SIGNATURE_RECORD_LEN;
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "magic",
            Box::new(|b| b[..8].copy_from_slice(b"UPDPAYLD")),
            "not a patch: magic is \"UPDPAYLD\", expected \"UPDPATCH\"".into(),
        ),
        (
            "crc",
            Box::new(|b| b[60] ^= 1),
            format!(
                "patch header checksum mismatch: stored {:08x}, computed {:08x}",
                u32_at(&good, 60) ^ 1,
                u32_at(&good, 60)
            ),
        ),
        (
            "version",
            Box::new(|b| {
                b[8] = 2;
                recrc(b)
            }),
            "patch header field format_version is 2, must be 1".into(),
        ),
        (
            "reserved",
            Box::new(|b| {
                b[30] = 1;
                recrc(b)
            }),
            "patch header field reserved is 1, must be 0".into(),
        ),
        (
            "manifest length",
            Box::new(|b| {
                b[16..20].copy_from_slice(&100_000u32.to_le_bytes());
                recrc(b)
            }),
            "patch manifest length is 100000, more than the maximum of 294".into(),
        ),
        (
            "truncated header",
            Box::new(|b| b.truncate(40)),
            "patch truncated: header needs bytes 0..64, the file has 40".into(),
        ),
        (
            "manifest byte",
            Box::new(|b| b[PATCH_HEADER_LEN + 9] ^= 1),
            format!(
                "patch signature: bad signature by trusted key {}: manifest or signature altered",
                KeyId::of(&key().verifying_key())
            ),
        ),
        (
            "record table byte",
            Box::new(move |b| b[table_at + 3] ^= 1),
            "patch record table SHA-256 is".into(),
        ),
        (
            "trailing byte",
            Box::new(|b| b.push(0)),
            format!(
                "patch file field length is {}, must be {}",
                good.len() + 1,
                good.len()
            ),
        ),
        (
            "truncated frames",
            Box::new(|b| b.truncate(b.len() - 1)),
            format!(
                "patch file field length is {}, must be {}",
                good.len() - 1,
                good.len()
            ),
        ),
    ];
    for (name, edit, want) in cases {
        let mut b = good.clone();
        edit(&mut b);
        let got = parse_err(b);
        assert!(got.starts_with(&want), "{name}: got {got:?}, want {want:?}");
    }
    assert_eq!(
        parse_err(vec![0; MAX_PATCH_LEN as usize + 1]),
        "patch file length is 33554433, more than the maximum of 33554432"
    );
    let stranger = TrustedKeys::new([SigningKey::from_bytes(&[1u8; 32]).verifying_key()]);
    let e = VerifiedPatch::parse(good, &stranger)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "patch signature: payload is signed only by unknown keys ({}); trusted keys: {}",
            KeyId::of(&key().verifying_key()),
            KeyId::of(&SigningKey::from_bytes(&[1u8; 32]).verifying_key())
        )
    );
}

/// A good patch's manifest, records and frames, to re-sign with one change.
fn parts(p: &Pair) -> (PatchManifest, Vec<PatchRecord>, Vec<Vec<u8>>) {
    let (good, _) = make(p, "1");
    let v = VerifiedPatch::parse(good, &keys()).unwrap();
    let frames = (0..v.records.len()).map(|i| v.frame(i).to_vec()).collect();
    (v.manifest.clone(), v.records.clone(), frames)
}

#[test]
fn signed_records_that_break_the_rules_are_refused() {
    let p = pair();
    let (m, records, frames) = parts(&p);
    assert!(!records.is_empty());
    type Edit = fn(&mut PatchRecord);
    let cases: [(Edit, &str); 6] = [
        (
            |r| r.chunk_count = 0,
            "patch record 0: chunk_count is 0, must be at least 1",
        ),
        (
            |r| r.base_len = MAX_PATCH_BASE_LEN + 1,
            "patch record 0: base_len is 4194305, must be 1 to 4194304",
        ),
        (
            |r| r.base_offset = 299_999,
            "patch record 0: base_offset is 299999, region runs past the base image",
        ),
        (
            |r| r.output_len = MAX_PATCH_OUTPUT_LEN + 1,
            "patch record 0: output_len is 4194305, must be 1 to 4194304",
        ),
        (
            |r| r.frame_len = 0,
            "patch record 0: frame_len is 0, must be 1 to zstd's bound for output_len",
        ),
        (
            |r| r.base_offset = u64::MAX,
            "patch record 0: base_offset is 18446744073709551615, region runs past the base image",
        ),
    ];
    for (edit, want) in cases {
        let mut rs = records.clone();
        edit(&mut rs[0]);
        assert_eq!(parse_err(assemble(m.clone(), &rs, &frames, &[key()])), want);
    }
    // Two records over the same chunk.
    let twice = [records[0], records[0]];
    let frames2 = [frames[0].clone(), frames[0].clone()];
    assert_eq!(
        parse_err(assemble(m.clone(), &twice, &frames2, &[key()])),
        format!(
            "patch record 1: first_chunk is {}, overlaps or precedes the previous record",
            records[0].first_chunk
        )
    );
    let mut too_many = m;
    too_many.record_count = MAX_PATCH_RECORDS + 1;
    let manifest = too_many.encode();
    let sig = crate::SignatureBlock {
        signatures: vec![crate::Signature {
            key_id: KeyId::of(&key().verifying_key()),
            signature: ed25519_dalek::Signer::sign(&key(), &manifest).to_bytes(),
        }],
    }
    .encode();
    let header = PatchHeader {
        manifest_len: manifest.len() as u32,
        signatures_len: sig.len() as u32,
    };
    let b = [&header.encode()[..], &manifest, &sig].concat();
    assert_eq!(
        parse_err(b),
        "patch record count is 16385, more than the maximum of 16384"
    );
}

#[test]
fn a_patch_for_another_payload_or_with_wrong_lengths_does_not_bind() {
    let p = pair();
    let (good, _) = make(&p, "1");
    let patch = VerifiedPatch::parse(good, &keys()).unwrap();
    let mut other = p.prelude.manifest.clone();
    other.chunk_table_sha256 = Sha256Digest::of(b"other");
    assert!(patch
        .bind(&other, &p.prelude.chunks.entries)
        .unwrap_err()
        .to_string()
        .starts_with("patch is for the payload with chunk_table_sha256"));
    let r = patch.records.last().unwrap();
    let short = &p.prelude.chunks.entries[..(r.first_chunk + r.chunk_count - 1) as usize];
    assert_eq!(
        patch
            .bind(&p.prelude.manifest, short)
            .unwrap_err()
            .to_string(),
        format!(
            "patch record {}: first_chunk + chunk_count is {}, past the payload's chunk count",
            patch.records.len() - 1,
            r.first_chunk + r.chunk_count
        )
    );
    let (m, mut records, frames) = parts(&p);
    records[0].output_len -= 1;
    let bad = VerifiedPatch::parse(assemble(m, &records, &frames, &[key()]), &keys()).unwrap();
    assert_eq!(
        bad.bind(&p.prelude.manifest, &p.prelude.chunks.entries)
            .unwrap_err()
            .to_string(),
        "patch record 0: output_len is not the length of its chunks".replace(
            "output_len is",
            &format!("output_len is {},", records[0].output_len)
        )
    );
}

#[test]
fn a_record_decodes_only_against_its_own_base_region_and_an_intact_frame() {
    let p = pair();
    let (m, records, mut frames) = parts(&p);
    let r = records[0];
    let mut region = p.base[r.base_offset as usize..][..r.base_len as usize].to_vec();
    let patch =
        VerifiedPatch::parse(assemble(m.clone(), &records, &frames, &[key()]), &keys()).unwrap();
    region[10] ^= 1;
    let e = patch
        .decode(0, &region, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "patch record 0: base bytes {}..{} have SHA-256",
            r.base_offset,
            r.base_offset + u64::from(r.base_len)
        )),
        "{e}"
    );
    region[10] ^= 1;
    let last = frames[0].len() - 1;
    frames[0][last] ^= 0xff;
    let damaged = VerifiedPatch::parse(assemble(m, &records, &frames, &[key()]), &keys()).unwrap();
    let mut out = Vec::new();
    // A damaged frame either fails to decode or decodes to other bytes, which the device's
    // check against the payload's chunk hashes catches.
    match damaged.decode(0, &region, &mut out) {
        Err(e) => assert!(
            e.to_string().starts_with("patch record 0: bad frame: "),
            "{e}"
        ),
        Ok(()) => {
            let at = p.prelude.chunks.entries[r.first_chunk as usize].image_offset as usize;
            assert!(out != p.target[at..at + out.len()]);
        }
    }
}
