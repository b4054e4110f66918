//! Unit tests of the payload reader, written as its specification.
//!
//! The read order comes first: nothing of the manifest is parsed before its signature verified,
//! so a man in the middle reaches none of the manifest checks. Then each region's table: every
//! row is the good payload ([`Raw::good`]) with one change, re-signed by the trusted key when the
//! change is in the signed part (so the row reaches the check it names), and the exact error it
//! must give. Then the bounds at and just past each limit, the smallest and largest legal
//! payloads, the signature policy (unknown, revoked, several required), the reader's handling
//! of interrupted and failed reads, the committed test vector, and the key directories.

use super::writer::{build_prelude, PackOptions, PayloadParts};
use super::*;
use ed25519_dalek::{Signer, SigningKey};

/// The test signing key (RFC 8032 §7.1 test 1; its secret is public, tests only).
fn test_key() -> SigningKey {
    let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    SigningKey::from_bytes(&seed.unwrap().try_into().unwrap())
}

/// A second trusted key (for several signatures).
fn second_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

/// A key nobody trusts.
fn unknown_key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

fn id(key: &SigningKey) -> KeyId {
    KeyId::of(&key.verifying_key())
}

/// The test key alone, one signature required.
fn trusted() -> TrustedKeys {
    TrustedKeys::new([test_key().verifying_key()])
}

/// The test key and the second key, with `revoked` revoked and `required` signatures required.
fn policy(revoked: &[KeyId], required: usize) -> TrustedKeys {
    TrustedKeys::with_settings(
        [test_key().verifying_key(), second_key().verifying_key()],
        &KeySettings {
            revoked: revoked.to_vec(),
            signatures_required: required,
            invalid: Vec::new(),
        },
    )
}

/// `len` image bytes: a compressible and a pseudo-random (incompressible) 4 KiB in turn.
fn image_bytes(len: usize) -> Vec<u8> {
    let mut x = 2_654_435_762u32;
    (0..len)
        .map(|i| {
            if (i / 4096) % 2 == 0 {
                (i % 97) as u8
            } else {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
        })
        .collect()
}

fn opts(compatible: &str, version: &str) -> PackOptions {
    PackOptions {
        compatible: compatible.into(),
        version: version.into(),
        created: 1_767_225_600,
        expires: None,
        chunk_size: 4096,
        level: 3,
        threads: 1,
    }
}

/// The good image: four full chunks and one of 100 bytes.
const GOOD_IMAGE_LEN: usize = 4 * 4096 + 100;

/// The good payload's parts: `testbox` version `2.0`, five chunks.
fn good_parts() -> PayloadParts {
    PayloadParts::from_image(&image_bytes(GOOD_IMAGE_LEN), &opts("testbox", "2.0")).unwrap()
}

/// A signature block over `manifest`, one record per key in order.
fn block(manifest: &[u8], keys: &[SigningKey]) -> Vec<u8> {
    SignatureBlock {
        signatures: keys
            .iter()
            .map(|k| Signature {
                key_id: id(k),
                signature: k.sign(manifest).to_bytes(),
            })
            .collect(),
    }
    .encode()
}

/// A payload as its regions; [`Raw::bytes`] prepends a header declaring their lengths.
#[derive(Clone)]
struct Raw {
    manifest: Vec<u8>,
    signatures: Vec<u8>,
    table: Vec<u8>,
    frames: Vec<u8>,
}

/// Manifest field offsets.
const M_VERSION: usize = 0;
const M_FLAGS: usize = 4;
const M_EXPIRES: usize = 16;
const M_IMAGE_SIZE: usize = 24;
const M_IMAGE_SHA: usize = 32;
const M_CHUNK_SIZE: usize = 64;
const M_CHUNK_COUNT: usize = 68;
const M_TABLE_SHA: usize = 72;
const M_COMPATIBLE_LEN: usize = 104;
/// In the good manifest (`testbox`, `2.0`): where the version's length and text are.
const M_VERSION_LEN: usize = 113;
const M_VERSION_TEXT: usize = 115;
/// Chunk entry field offsets.
const E_IMAGE_OFFSET: usize = 0;
const E_PAYLOAD_OFFSET: usize = 8;
const E_IMAGE_LEN: usize = 16;
const E_FRAME_LEN: usize = 20;

impl Raw {
    fn split(p: &[u8]) -> Raw {
        let m = u32_at(p, 16) as usize;
        let s = u32_at(p, 20) as usize;
        let t = if u32_at(p, 8) == FORMAT_VERSION_V2 {
            u32_at(p, HEADER_LEN + 76) as usize * CHUNK_ENTRY_V2_LEN
        } else {
            u32_at(p, HEADER_LEN + M_CHUNK_COUNT) as usize * CHUNK_ENTRY_LEN
        };
        let (m_at, s_at, t_at) = (HEADER_LEN, HEADER_LEN + m, HEADER_LEN + m + s);
        Raw {
            manifest: p[m_at..s_at].to_vec(),
            signatures: p[s_at..t_at].to_vec(),
            table: p[t_at..t_at + t].to_vec(),
            frames: p[t_at + t..].to_vec(),
        }
    }

    /// The good payload signed by the test key.
    fn good() -> Raw {
        Raw::split(&good_parts().assemble(&[test_key()]))
    }

    fn bytes(&self) -> Vec<u8> {
        let header = Header {
            // A version 2 manifest goes with a version 2 header; anything else with version 1.
            format_version: if self.manifest.starts_with(&le32(2)) {
                2
            } else {
                1
            },
            manifest_len: self.manifest.len() as u32,
            signatures_len: self.signatures.len() as u32,
        };
        [
            &header.encode()[..],
            &self.manifest,
            &self.signatures,
            &self.table,
            &self.frames,
        ]
        .concat()
    }

    /// Payload offsets of the signature block, the chunk table and the first frame.
    fn offsets(&self) -> (usize, usize, usize) {
        let s = HEADER_LEN + self.manifest.len();
        let t = s + self.signatures.len();
        (s, t, t + self.table.len())
    }

    fn manifest_at(mut self, at: usize, bytes: &[u8]) -> Raw {
        self.manifest[at..at + bytes.len()].copy_from_slice(bytes);
        self
    }

    fn table_at(mut self, entry: usize, field: usize, bytes: &[u8]) -> Raw {
        let at = entry * CHUNK_ENTRY_LEN + field;
        self.table[at..at + bytes.len()].copy_from_slice(bytes);
        self
    }

    /// Signs the manifest as it is with `keys`.
    fn signed_by(mut self, keys: &[SigningKey]) -> Raw {
        self.signatures = block(&self.manifest, keys);
        self
    }

    /// Puts the table's hash into the manifest, then signs it with the test key: the change
    /// made is one a publisher holding the key made.
    fn sealed(self) -> Raw {
        let sha = Sha256Digest::of(&self.table);
        self.manifest_at(M_TABLE_SHA, &sha.0)
            .signed_by(&[test_key()])
    }

    /// Payload offset of frame `i`, from the (good) table.
    fn frame_offset(&self, i: usize) -> u64 {
        u64_at(&self.table, i * CHUNK_ENTRY_LEN + E_PAYLOAD_OFFSET)
    }
}

fn prelude(bytes: &[u8], keys: &TrustedKeys) -> Result<VerifiedPrelude, String> {
    read_prelude(&mut &bytes[..], keys).map_err(|e| e.to_string())
}

fn stream(bytes: &[u8]) -> Result<VerifiedPrelude, String> {
    verify_stream(&mut &bytes[..], &trusted()).map_err(|e| e.to_string())
}

/// Runs each row's payload through the whole stream reader and expects its exact error.
fn expect_errors(rows: Vec<(&str, Vec<u8>, String)>) {
    for (name, bytes, want) in rows {
        let got = stream(&bytes).map(|_| ()).expect_err(name);
        assert_eq!(got, want, "{name}");
    }
}

fn le32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn le64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

#[test]
fn accepts_the_good_payload_every_row_derives_from() {
    let p = stream(&Raw::good().bytes()).unwrap();
    assert_eq!(
        (p.manifest.chunk_count, p.manifest.image_size),
        (5, GOOD_IMAGE_LEN as u64)
    );
    assert_eq!(
        (p.signed_by, p.signers),
        (id(&test_key()), vec![id(&test_key())])
    );
    assert_eq!(p.chunks.entries[4].image_len, 100);
    assert_eq!(p.chunks.payload_end(), Raw::good().bytes().len() as u64);
}

// ---- the read order ------------------------------------------------------------------------

/// Issue 14: the manifest was parsed before its signature was checked, so every manifest check
/// was an attack surface for anyone on the path. A manifest altered without the key is now
/// refused for its signature, whatever the alteration makes of the manifest.
#[test]
fn an_unsigned_manifest_change_is_refused_by_its_signature_before_parsing() {
    let key = id(&test_key());
    let bad_sig = format!("bad signature by trusted key {key}: manifest or signature altered");
    let rows = [
        (
            "chunk size 0",
            Raw::good().manifest_at(M_CHUNK_SIZE, &le32(0)),
        ),
        (
            "chunk count 0",
            Raw::good().manifest_at(M_CHUNK_COUNT, &le32(0)),
        ),
        (
            "chunk count over the maximum",
            Raw::good().manifest_at(M_CHUNK_COUNT, &le32(u32::MAX)),
        ),
        (
            "compatible running past the end",
            Raw::good().manifest_at(M_COMPATIBLE_LEN, &[200, 0]),
        ),
        ("flags set", Raw::good().manifest_at(M_FLAGS, &le32(1))),
        (
            "manifest version 2",
            Raw::good().manifest_at(M_VERSION, &le32(2)),
        ),
        (
            "version not UTF-8",
            Raw::good().manifest_at(M_VERSION_TEXT, &[0xff]),
        ),
    ];
    for (name, raw) in rows {
        let got = stream(&raw.bytes()).map(|_| ()).expect_err(name);
        assert_eq!(got, bad_sig, "{name}");
    }
}

#[test]
fn a_garbled_manifest_signed_by_an_unknown_key_is_refused_for_its_key() {
    let raw = Raw::good()
        .manifest_at(M_CHUNK_SIZE, &le32(0))
        .signed_by(&[unknown_key()]);
    assert_eq!(
        stream(&raw.bytes()).map(|_| ()).unwrap_err(),
        format!(
            "payload is signed only by unknown keys ({}); trusted keys: {}",
            id(&unknown_key()),
            id(&test_key())
        )
    );
}

// ---- header ------------------------------------------------------------------------------------

#[test]
fn rejects_each_bad_header_with_its_exact_error() {
    let good = Raw::good();
    // Changes a header field and recomputes the CRC, so the row reaches the check it names.
    let with = |at: usize, bytes: &[u8]| {
        let mut b = good.bytes();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    };
    let mut bad_crc = good.bytes();
    bad_crc[17] ^= 0x10;
    let computed = crc32fast::hash(&bad_crc[..60]);
    let stored = u32_at(&bad_crc, 60);
    expect_errors(vec![
        (
            "magic",
            with(0, b"UPDPAYLX"),
            "not a payload: magic is \"UPDPAYLX\", expected \"UPDPAYLD\"".into(),
        ),
        (
            "checksum",
            bad_crc,
            format!("header checksum mismatch: stored {stored:08x}, computed {computed:08x}"),
        ),
        (
            "format version 3",
            with(8, &le32(3)),
            "unsupported header format version 3 (this updater reads 1 to 2)".into(),
        ),
        (
            "header_len 65",
            with(12, &le32(65)),
            "header field header_len is 65, must be 64".into(),
        ),
        (
            "first reserved byte",
            with(24, &[1]),
            "header field reserved is 1, must be 0".into(),
        ),
        (
            "last reserved byte",
            with(59, &[0x5a]),
            "header field reserved is 90, must be 0".into(),
        ),
        (
            "manifest one byte over its maximum",
            with(16, &le32(365)),
            "manifest is 365 bytes, more than the maximum of 364".into(),
        ),
        (
            "manifest one byte under its minimum",
            with(16, &le32(109)),
            "manifest length is 109, less than the minimum of 110".into(),
        ),
        (
            "signature block one byte over its maximum",
            with(20, &le32(1157)),
            "signature block is 1157 bytes, more than the maximum of 1156".into(),
        ),
        (
            "absurd manifest length (nothing allocated for it)",
            with(16, &le32(u32::MAX)),
            "manifest is 4294967295 bytes, more than the maximum of 364".into(),
        ),
    ]);
}

#[test]
fn header_encodes_to_the_documented_bytes_and_locates_the_regions() {
    let vector = std::fs::read(testdata().join("vector.payload")).unwrap();
    let h = Header::parse(vector[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert_eq!(
        h,
        Header {
            format_version: 1,
            manifest_len: 118,
            signatures_len: 76
        }
    );
    assert_eq!(h.encode()[..], vector[..HEADER_LEN]);
    assert_eq!(
        (
            h.manifest_offset(),
            h.signatures_offset(),
            h.chunk_table_offset()
        ),
        (64, 182, 258)
    );
}

#[test]
fn a_short_stream_is_truncated_unless_it_already_shows_it_is_not_a_payload() {
    let good = Raw::good().bytes();
    let html = b"<!DOCTYPE html>".to_vec();
    expect_errors(vec![
        (
            "empty",
            vec![],
            "payload truncated: header needs bytes 0..64, the payload has 0".into(),
        ),
        (
            "seven foreign bytes",
            html[..7].to_vec(),
            "payload truncated: header needs bytes 0..64, the payload has 7".into(),
        ),
        (
            "eight foreign bytes",
            html[..8].to_vec(),
            "not a payload: magic is \"<!DOCTYP\", expected \"UPDPAYLD\"".into(),
        ),
        (
            "fifteen foreign bytes",
            html.clone(),
            "not a payload: magic is \"<!DOCTYP\", expected \"UPDPAYLD\"".into(),
        ),
        (
            "ten bytes of a real header",
            good[..10].to_vec(),
            "payload truncated: header needs bytes 0..64, the payload has 10".into(),
        ),
    ]);
}

#[test]
fn rejects_a_payload_cut_in_each_region_with_its_exact_error() {
    let raw = Raw::good();
    let good = raw.bytes();
    let (s, t, f) = raw.offsets();
    let f2 = raw.frame_offset(2) as usize;
    let f3 = raw.frame_offset(3) as usize;
    let f4 = raw.frame_offset(4) as usize;
    let len = good.len();
    let mut rows = Vec::new();
    for (at, region, start, end) in [
        (64 + 20, "manifest", 64, s),
        (s + 5, "signature block", s, t),
        (t + 60, "chunk table", t, f),
        (f2 + 3, "frame", f2, f3),
        (len - 1, "frame", f4, len),
    ] {
        rows.push((
            region,
            good[..at].to_vec(),
            format!("payload truncated: {region} needs bytes {start}..{end}, the payload has {at}"),
        ));
    }
    let mut trailing = good.clone();
    trailing.push(0);
    rows.push((
        "trailing byte",
        trailing,
        format!("trailing data after the last frame at payload offset {len}"),
    ));
    expect_errors(rows);
}

// ---- signature block -----------------------------------------------------------------------------

#[test]
fn rejects_each_bad_signature_block_with_its_exact_error() {
    let good = Raw::good();
    let record = good.signatures[4..].to_vec();
    let with = |sigs: Vec<u8>| Raw {
        signatures: sigs,
        ..good.clone()
    };
    let none = "payload carries no signature".to_string();
    let length = |found: usize, expected: usize| {
        format!("signature block field length is {found}, must be {expected}")
    };
    expect_errors(vec![
        ("no block", with(vec![]).bytes(), none.clone()),
        ("three bytes", with(vec![1, 0, 0]).bytes(), none.clone()),
        (
            "count 0, nothing else",
            with(vec![0, 0, 0, 0]).bytes(),
            none.clone(),
        ),
        (
            "count 0 before a record",
            with([&[0u8, 0, 0, 0][..], &record].concat()).bytes(),
            none,
        ),
        (
            "reserved set",
            with([&[1u8, 0, 1, 0][..], &record].concat()).bytes(),
            "signature block field reserved is 1, must be 0".into(),
        ),
        (
            "count 1, no record",
            with(vec![1, 0, 0, 0]).bytes(),
            length(4, 76),
        ),
        (
            "count 2, one record",
            with([&[2u8, 0, 0, 0][..], &record].concat()).bytes(),
            length(76, 148),
        ),
        (
            "count 1, two records",
            with([&[1u8, 0, 0, 0][..], &record, &record].concat()).bytes(),
            length(148, 76),
        ),
    ]);
}

#[test]
fn signature_block_parse_bounds_its_input() {
    let err = |b: &[u8]| SignatureBlock::parse(b).unwrap_err().to_string();
    assert_eq!(
        err(&[0u8; MAX_SIGNATURE_BLOCK_LEN + 1]),
        "signature block is 1157 bytes, more than the maximum of 1156"
    );
    let mut seventeen = vec![0u8; 4 + 17 * SIGNATURE_RECORD_LEN];
    seventeen[0] = 17;
    assert_eq!(
        err(&seventeen),
        "signature block is 1228 bytes, more than the maximum of 1156"
    );
}

// ---- signature policy ------------------------------------------------------------------------------

#[test]
fn applies_the_signature_policy() {
    let parts = good_parts();
    let (t, s, u) = (test_key(), second_key(), unknown_key());
    let (ti, si, ui) = (id(&t), id(&s), id(&u));
    let sign =
        |keys: &[&SigningKey]| parts.assemble(&keys.iter().map(|&k| k.clone()).collect::<Vec<_>>());
    let mut altered_second = Raw::split(&sign(&[&t, &s]));
    altered_second.signatures[4 + SIGNATURE_RECORD_LEN + 8 + 3] ^= 1;
    let mut altered_first = Raw::split(&sign(&[&t]));
    altered_first.signatures[4 + 8] ^= 1;
    let accept: Vec<(&str, Vec<u8>, TrustedKeys, Vec<KeyId>)> = vec![
        ("trusted key", sign(&[&t]), trusted(), vec![ti]),
        (
            "unknown key, then trusted key",
            sign(&[&u, &t]),
            trusted(),
            vec![ti],
        ),
        (
            "revoked key, then a trusted one",
            sign(&[&t, &s]),
            policy(&[ti], 1),
            vec![si],
        ),
        (
            "two trusted keys where two are required",
            sign(&[&s, &u, &t]),
            policy(&[], 2),
            vec![si, ti],
        ),
    ];
    for (name, bytes, keys, signers) in accept {
        let p = prelude(&bytes, &keys).expect(name);
        assert_eq!((p.signed_by, &p.signers), (signers[0], &signers), "{name}");
    }
    let reject: Vec<(&str, Vec<u8>, TrustedKeys, String)> = vec![
        (
            "unknown key only",
            sign(&[&u]),
            trusted(),
            format!("payload is signed only by unknown keys ({ui}); trusted keys: {ti}"),
        ),
        (
            "no key trusted",
            sign(&[&t]),
            TrustedKeys::default(),
            format!("payload is signed only by unknown keys ({ti}); trusted keys: none"),
        ),
        (
            "altered signature by the only key",
            altered_first.bytes(),
            trusted(),
            format!("bad signature by trusted key {ti}: manifest or signature altered"),
        ),
        (
            "a good and an altered signature, both by trusted keys",
            altered_second.bytes(),
            policy(&[], 1),
            format!("bad signature by trusted key {si}: manifest or signature altered"),
        ),
        (
            "revoked key only (a vendor key revoked in /etc)",
            sign(&[&t]),
            policy(&[ti], 1),
            format!(
                "payload is signed only by revoked or unknown keys ({ti}); revoked by keys.revoked: {ti}"
            ),
        ),
        (
            "unknown and revoked keys",
            sign(&[&u, &t]),
            policy(&[ti], 1),
            format!(
                "payload is signed only by revoked or unknown keys ({ui},{ti}); revoked by keys.revoked: {ti}"
            ),
        ),
        (
            "one trusted key where two are required",
            sign(&[&t, &u]),
            policy(&[], 2),
            format!(
                "payload is signed by 1 trusted key(s) ({ti}), keys.signatures_required is 2"
            ),
        ),
        (
            "the same trusted key twice where two are required",
            sign(&[&t, &t]),
            policy(&[], 2),
            format!(
                "payload is signed by 1 trusted key(s) ({ti}), keys.signatures_required is 2"
            ),
        ),
        (
            "a trusted and a revoked key where two are required",
            sign(&[&t, &s]),
            policy(&[si], 2),
            format!(
                "payload is signed by 1 trusted key(s) ({ti}), keys.signatures_required is 2"
            ),
        ),
    ];
    for (name, bytes, keys, want) in reject {
        let got = prelude(&bytes, &keys).map(|_| ()).expect_err(name);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn accepts_sixteen_signatures() {
    let mut keys: Vec<SigningKey> = (100..115u8)
        .map(|i| SigningKey::from_bytes(&[i; 32]))
        .collect();
    keys.push(test_key());
    let bytes = good_parts().assemble(&keys);
    assert_eq!(u32_at(&bytes, 20) as usize, MAX_SIGNATURE_BLOCK_LEN);
    let p = prelude(&bytes, &trusted()).unwrap();
    assert_eq!(p.signers, [id(&test_key())]);
}

// ---- manifest ---------------------------------------------------------------------------------------

#[test]
fn rejects_each_bad_signed_manifest_with_its_exact_error() {
    let g = || Raw::good();
    let n = GOOD_IMAGE_LEN;
    let mismatch = |count: u32, size: usize, needed: u32| {
        format!("chunk count {count} does not fit image size {size} with chunk size 4096 (needs {needed})")
    };
    let truncated = |start: usize, end: usize, has: usize| {
        format!("payload truncated: manifest needs bytes {start}..{end}, the payload has {has}")
    };
    let bad_string = |field: &str| format!("manifest {field} is not a non-empty UTF-8 string");
    // The manifest of `testbox` with an empty version: nothing follows the version's length.
    let mut empty_version = g();
    empty_version.manifest.truncate(M_VERSION_LEN);
    empty_version.manifest.extend_from_slice(&[0, 0]);
    let mut trailing = g();
    trailing.manifest.push(0);
    let rows = vec![
        (
            "manifest version 3",
            g().manifest_at(M_VERSION, &le32(3)),
            "unsupported manifest format version 3 (this updater reads 1 to 2)".to_string(),
        ),
        (
            "flags set",
            g().manifest_at(M_FLAGS, &le32(1)),
            "manifest field flags is 1, must be 0".into(),
        ),
        (
            "chunk size 0",
            g().manifest_at(M_CHUNK_SIZE, &le32(0)),
            "chunk size is 0, less than the minimum of 4096".into(),
        ),
        (
            "chunk size one under the minimum",
            g().manifest_at(M_CHUNK_SIZE, &le32(4095)),
            "chunk size is 4095, less than the minimum of 4096".into(),
        ),
        (
            "chunk size not a multiple of 4096",
            g().manifest_at(M_CHUNK_SIZE, &le32(6144)),
            "manifest field chunk_size modulo 4096 is 2048, must be 0".into(),
        ),
        (
            "chunk size one step over the maximum",
            g().manifest_at(M_CHUNK_SIZE, &le32(MAX_CHUNK_SIZE + 4096)),
            "chunk size is 8392704 bytes, more than the maximum of 8388608".into(),
        ),
        (
            "chunk count one over the maximum",
            g().manifest_at(M_CHUNK_COUNT, &le32(MAX_CHUNK_COUNT + 1)),
            "chunk count 65537 exceeds the maximum of 65536".into(),
        ),
        (
            "one chunk more than the image needs",
            g().manifest_at(M_CHUNK_COUNT, &le32(6)),
            mismatch(6, n, 5),
        ),
        (
            "one chunk fewer than the image needs",
            g().manifest_at(M_CHUNK_COUNT, &le32(4)),
            mismatch(4, n, 5),
        ),
        (
            "an empty image in no chunks",
            g().manifest_at(M_IMAGE_SIZE, &le64(0))
                .manifest_at(M_CHUNK_COUNT, &le32(0)),
            mismatch(0, 0, 0),
        ),
        (
            "an image one chunk longer",
            g().manifest_at(M_IMAGE_SIZE, &le64(n as u64 + 4096)),
            mismatch(5, n + 4096, 6),
        ),
        (
            "compatible one byte over its maximum",
            g().manifest_at(M_COMPATIBLE_LEN, &[129, 0]),
            "compatible is 129 bytes, more than the maximum of 128".into(),
        ),
        (
            "compatible running past the manifest",
            g().manifest_at(M_COMPATIBLE_LEN, &[13, 0]),
            truncated(106, 119, 118),
        ),
        (
            "version's length running past the manifest",
            g().manifest_at(M_COMPATIBLE_LEN, &[11, 0]),
            truncated(117, 119, 118),
        ),
        (
            "version running past the manifest",
            g().manifest_at(M_VERSION_LEN, &[4, 0]),
            truncated(115, 119, 118),
        ),
        (
            "empty compatible",
            g().manifest_at(M_COMPATIBLE_LEN, &[0, 0]),
            bad_string("compatible"),
        ),
        (
            "compatible not UTF-8",
            g().manifest_at(M_COMPATIBLE_LEN + 2, &[0xff]),
            bad_string("compatible"),
        ),
        ("empty version", empty_version, bad_string("version")),
        (
            "version not UTF-8",
            g().manifest_at(M_VERSION_TEXT + 2, &[0xc3]),
            bad_string("version"),
        ),
        (
            "a byte after the version",
            trailing,
            "manifest field length is 119, must be 118".into(),
        ),
    ];
    expect_errors(
        rows.into_iter()
            .map(|(name, raw, want)| (name, raw.sealed().bytes(), want))
            .collect(),
    );
}

#[test]
fn manifest_parse_bounds_its_input() {
    let err = |b: &[u8]| Manifest::parse(b).unwrap_err().to_string();
    assert_eq!(
        err(&[0u8; MAX_MANIFEST_LEN + 1]),
        "manifest is 365 bytes, more than the maximum of 364"
    );
    assert_eq!(
        err(&[0u8; MIN_MANIFEST_LEN - 1]),
        "manifest length is 109, less than the minimum of 110"
    );
}

#[test]
fn expiry_zero_means_never() {
    let p = stream(&Raw::good().bytes()).unwrap();
    assert_eq!(p.manifest.expires, None);
    let raw = Raw::good().manifest_at(M_EXPIRES, &le64(1)).sealed();
    assert_eq!(stream(&raw.bytes()).unwrap().manifest.expires, Some(1));
}

#[test]
fn rejects_an_image_that_does_not_hash_to_the_signed_sha256() {
    let raw = Raw::good().manifest_at(M_IMAGE_SHA, &[0u8; 32]).sealed();
    let found = Sha256Digest::of(&image_bytes(GOOD_IMAGE_LEN));
    assert_eq!(
        stream(&raw.bytes()).map(|_| ()).unwrap_err(),
        format!(
            "image SHA-256 mismatch: manifest says {}, image hashes to {found}",
            "0".repeat(64)
        )
    );
}

// ---- chunk table ------------------------------------------------------------------------------------

#[test]
fn rejects_each_bad_chunk_table_with_its_exact_error() {
    let g = || Raw::good();
    let (_, _, first_frame) = g().offsets();
    let entry = |i: usize, field: &str, found: u64, expected: u64| {
        format!("chunk {i}: {field} is {found}, expected {expected}")
    };
    let f3 = g().frame_offset(3);
    let max = u64::from(max_frame_len(4096));
    let rows = vec![
        (
            "image offset of chunk 1 one too far",
            g().table_at(1, E_IMAGE_OFFSET, &le64(4097)),
            entry(1, "image_offset", 4097, 4096),
        ),
        (
            "payload offset of the first frame one too far",
            g().table_at(0, E_PAYLOAD_OFFSET, &le64(first_frame as u64 + 1)),
            entry(
                0,
                "payload_offset",
                first_frame as u64 + 1,
                first_frame as u64,
            ),
        ),
        (
            "payload offset of frame 3 one too far",
            g().table_at(3, E_PAYLOAD_OFFSET, &le64(f3 + 1)),
            entry(3, "payload_offset", f3 + 1, f3),
        ),
        (
            "chunk 0 one byte short",
            g().table_at(0, E_IMAGE_LEN, &le32(4095)),
            entry(0, "image_len", 4095, 4096),
        ),
        (
            "last chunk a full chunk",
            g().table_at(4, E_IMAGE_LEN, &le32(4096)),
            entry(4, "image_len", 4096, 100),
        ),
        (
            "image size that leaves one byte for the last chunk",
            g().manifest_at(M_IMAGE_SIZE, &le64(4 * 4096 + 1)),
            entry(4, "image_len", 100, 1),
        ),
        (
            "empty frame",
            g().table_at(2, E_FRAME_LEN, &le32(0)),
            entry(2, "frame_len", 0, max),
        ),
        (
            "last frame one byte over the compress bound",
            g().table_at(4, E_FRAME_LEN, &le32(max as u32 + 1)),
            entry(4, "frame_len", max + 1, max),
        ),
    ];
    let mut rows: Vec<_> = rows
        .into_iter()
        .map(|(name, raw, want)| (name, raw.sealed().bytes(), want))
        .collect();
    let good = g();
    let altered = g().table_at(1, 30, &[0xee]);
    rows.push((
        "table altered after signing",
        altered.bytes(),
        format!(
            "chunk table SHA-256 mismatch: manifest says {}, table hashes to {}",
            Sha256Digest::of(&good.table),
            Sha256Digest::of(&altered.table)
        ),
    ));
    expect_errors(rows);
}

#[test]
fn a_frame_of_exactly_the_compress_bound_is_accepted_in_the_table() {
    let max = max_frame_len(4096);
    let raw = Raw::good().table_at(4, E_FRAME_LEN, &le32(max)).sealed();
    let p = prelude(&raw.bytes(), &trusted()).unwrap();
    assert_eq!(p.chunks.entries[4].frame_len, max);
    assert_eq!(p.chunks.payload_end(), raw.frame_offset(4) + u64::from(max));
}

#[test]
fn chunk_table_parse_wants_exactly_the_declared_length() {
    let raw = Raw::good();
    let p = prelude(&raw.bytes(), &trusted()).unwrap();
    let err = ChunkTable::parse(&raw.table[1..], &p.manifest, &p.header).unwrap_err();
    assert_eq!(
        err.to_string(),
        "chunk table field length is 279, must be 280"
    );
}

#[test]
fn frame_bound_is_zstds_compress_bound() {
    for size in [
        4096u32,
        65536,
        (128 << 10) - 4096,
        128 << 10,
        1 << 20,
        MAX_CHUNK_SIZE,
    ] {
        assert_eq!(
            max_frame_len(size) as usize,
            zstd::zstd_safe::compress_bound(size as usize),
            "{size}"
        );
    }
}

// ---- the smallest and largest legal payloads ---------------------------------------------------

#[test]
fn accepts_the_smallest_legal_payload() {
    let parts = PayloadParts::from_image(&[7], &opts("a", "1")).unwrap();
    let bytes = parts.assemble(&[test_key()]);
    assert_eq!(u32_at(&bytes, 16) as usize, MIN_MANIFEST_LEN);
    let p = stream(&bytes).unwrap();
    assert_eq!((p.manifest.image_size, p.manifest.chunk_count), (1, 1));
}

/// A prelude with the longest strings, the most signatures and the most chunks: accepted.
/// Only the prelude is read (its frames would be 256 MiB of image).
#[test]
fn accepts_the_largest_legal_prelude() {
    let count = MAX_CHUNK_COUNT as usize;
    let manifest = Manifest {
        created: 1,
        expires: None,
        image_size: count as u64 * 4096,
        image_sha256: Sha256Digest::default(),
        chunk_size: 4096,
        cdc: None,
        prefix_len: 0,
        chunk_count: 0,
        chunk_table_sha256: Sha256Digest::default(),
        compatible: "c".repeat(MAX_STRING_LEN),
        version: "9".repeat(MAX_STRING_LEN),
    };
    let mut entries: Vec<ChunkEntry> = (0..count)
        .map(|i| ChunkEntry {
            image_offset: i as u64 * 4096,
            payload_offset: 0,
            image_len: 4096,
            frame_len: 1,
            sha256: Sha256Digest::default(),
        })
        .collect();
    let mut keys: Vec<SigningKey> = (100..115u8)
        .map(|i| SigningKey::from_bytes(&[i; 32]))
        .collect();
    keys.push(test_key());
    let (_, bytes) = build_prelude(manifest, &mut entries, &keys);
    assert_eq!(
        (u32_at(&bytes, 16) as usize, u32_at(&bytes, 20) as usize),
        (MAX_MANIFEST_LEN, MAX_SIGNATURE_BLOCK_LEN)
    );
    let p = prelude(&bytes, &trusted()).unwrap();
    assert_eq!(p.chunks.entries.len(), count);
    assert_eq!(p.manifest.compatible.len(), MAX_STRING_LEN);
}

#[test]
fn accepts_the_largest_chunk_size_and_its_compress_bound() {
    let size = MAX_CHUNK_SIZE;
    let manifest = Manifest {
        created: 1,
        expires: None,
        image_size: u64::from(size) + 1,
        image_sha256: Sha256Digest::default(),
        chunk_size: size,
        cdc: None,
        prefix_len: 0,
        chunk_count: 0,
        chunk_table_sha256: Sha256Digest::default(),
        compatible: "testbox".into(),
        version: "2.0".into(),
    };
    let entry = |i: u32, image_len: u32, frame_len: u32| ChunkEntry {
        image_offset: u64::from(i * size),
        payload_offset: 0,
        image_len,
        frame_len,
        sha256: Sha256Digest::default(),
    };
    let mut entries = [entry(0, size, max_frame_len(size)), entry(1, 1, 1)];
    let (_, bytes) = build_prelude(manifest.clone(), &mut entries, &[test_key()]);
    let p = prelude(&bytes, &trusted()).unwrap();
    assert_eq!(p.chunks.entries[0].frame_len, max_frame_len(size));
    let mut entries = [entry(0, size, max_frame_len(size) + 1), entry(1, 1, 1)];
    let (_, bytes) = build_prelude(manifest, &mut entries, &[test_key()]);
    assert_eq!(
        prelude(&bytes, &trusted()).map(|_| ()).unwrap_err(),
        format!(
            "chunk 0: frame_len is {}, expected {}",
            max_frame_len(size) + 1,
            max_frame_len(size)
        )
    );
}

// ---- reading ---------------------------------------------------------------------------------------

/// A reader that hands out at most 7 bytes a call, with an `Interrupted` error before each.
struct Stutter<'a> {
    data: &'a [u8],
    interrupt: bool,
}

impl std::io::Read for Stutter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(7).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// A reader that fails once, with a real error, when it reaches `fail_at`, then goes on.
struct FailsOnce<'a> {
    data: &'a [u8],
    at: usize,
    fail_at: usize,
}

impl std::io::Read for FailsOnce<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.fail_at {
            self.fail_at = usize::MAX;
            return Err(std::io::Error::other("cable pulled"));
        }
        let end = self.data.len().min(self.fail_at);
        let n = buf.len().min(end - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn interrupted_reads_are_retried() {
    let good = Raw::good().bytes();
    let mut r = Stutter {
        data: &good,
        interrupt: false,
    };
    verify_stream(&mut r, &trusted()).unwrap();
}

#[test]
fn a_failed_read_stops_the_reader_with_its_cause() {
    let raw = Raw::good();
    let good = raw.bytes();
    let (s, t, f) = raw.offsets();
    for (name, fail_at) in [
        ("in the header", 10),
        ("in the manifest", HEADER_LEN + 3),
        ("in the signature block", s + 1),
        ("in the chunk table", t + 1),
        ("in a frame", f + 1),
        ("at the end", good.len()),
    ] {
        let mut r = FailsOnce {
            data: &good,
            at: 0,
            fail_at,
        };
        match verify_stream(&mut r, &trusted()) {
            Err(ReadError::Io(e)) => assert_eq!(e.to_string(), "cable pulled", "{name}"),
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
    }
}

// ---- the test vector, encoding, display ------------------------------------------------------

fn testdata() -> std::path::PathBuf {
    // The committed vectors live with the updater's other test data (the stream tests, the
    // image-tools tests and the fuzz seeds use them too).
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../updater/testdata")
}

#[test]
fn the_test_vector_verifies_and_every_region_encodes_back_to_its_bytes() {
    let vector = std::fs::read(testdata().join("vector.payload")).unwrap();
    let key = TrustedKeys::load_file(&testdata().join("vector.pub")).unwrap();
    let p = verify_stream(&mut &vector[..], &TrustedKeys::new([key])).unwrap();
    let raw = Raw::split(&vector);
    assert_eq!(p.manifest_bytes, raw.manifest);
    assert_eq!(p.manifest.encode(), raw.manifest);
    assert_eq!(p.chunks.encode(), raw.table);
    assert_eq!(p.payload_id(), Sha256Digest::of(&raw.manifest));
    assert_eq!(
        SignatureBlock::parse(&raw.signatures).unwrap().encode(),
        raw.signatures
    );
    assert_eq!(p.manifest.expires, Some(2_082_758_400));
    assert_eq!(p.signed_by.to_string(), "21fe31dfa154a261");
    assert_eq!(p.chunks.payload_end(), vector.len() as u64);
}

#[test]
fn inspect_shows_a_prelude_without_trusting_it() {
    let raw = Raw::good().signed_by(&[unknown_key()]);
    let i = inspect(&mut &raw.bytes()[..]).unwrap();
    assert_eq!(i.manifest.version, "2.0");
    assert_eq!(i.signatures.signatures[0].key_id, id(&unknown_key()));
    assert_eq!(i.chunks.entries.len(), 5);
    assert_eq!(i.header.manifest_len, 118);
}

#[test]
fn digests_and_key_ids_show_as_lower_case_hex() {
    let d = Sha256Digest::of(b"abc");
    let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(
        (d.to_string(), format!("{d:?}")),
        (want.into(), want.into())
    );
    let k = id(&test_key());
    assert_eq!(
        (k.to_string(), format!("{k:?}")),
        ("21fe31dfa154a261".into(), "21fe31dfa154a261".into())
    );
    assert_eq!(KeyId::parse("21FE31DFA154A261"), Some(k));
    assert_eq!(KeyId::parse("21fe31dfa154a26"), None);
    assert_eq!(KeyId::parse("21fe31dfa154a26100"), None);
    assert_eq!(serde_json::to_string(&k).unwrap(), "\"21fe31dfa154a261\"");
}

// ---- key directories and the trust policy ----------------------------------------------------

mod key_dirs {
    use super::super::keys::{
        key_dirs, load_trusted, parse_public_key, KeyError, KeySettings, MAX_KEY_FILE_LEN,
        MAX_TRUSTED_KEYS,
    };
    use super::{id, second_key, test_key, unknown_key, TrustedKeys};
    use ed25519_dalek::SigningKey;
    use std::path::{Path, PathBuf};

    /// A device root with key files.
    struct Root(tempfile::TempDir);

    const VENDOR: &str = "usr/lib/updater/keys.d";
    const ADMIN: &str = "etc/updater/keys.d";

    impl Root {
        fn new() -> Root {
            Root(tempfile::tempdir().unwrap())
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.0.path().join(rel)
        }

        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.path(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            p
        }

        fn key(&self, dir: &str, name: &str, key: &SigningKey) -> PathBuf {
            let text = format!("{}\n", hex::encode(key.verifying_key().as_bytes()));
            self.write(&format!("{dir}/{name}.pub"), &text)
        }

        fn load(&self, settings: &KeySettings) -> Result<TrustedKeys, String> {
            load_trusted(self.0.path(), settings).map_err(|e| e.to_string())
        }

        fn dirs(&self) -> String {
            let [v, a] = key_dirs(self.0.path());
            format!("{}, {}", v.display(), a.display())
        }
    }

    fn nth_key(i: usize) -> SigningKey {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64 + 1000).to_le_bytes());
        SigningKey::from_bytes(&seed)
    }

    fn settings(revoked: &[&SigningKey], required: usize) -> KeySettings {
        KeySettings {
            revoked: revoked.iter().map(|k| id(k)).collect(),
            signatures_required: required,
            invalid: Vec::new(),
        }
    }

    #[test]
    fn trusts_the_keys_of_both_directories_each_in_name_order() {
        let r = Root::new();
        r.key(VENDOR, "b", &test_key());
        r.key(VENDOR, "a", &second_key());
        r.key(ADMIN, "0", &unknown_key());
        r.write(&format!("{VENDOR}/README"), "not a key");
        let keys = r.load(&KeySettings::default()).unwrap();
        assert_eq!(
            keys.describe(),
            format!(
                "{},{},{}",
                id(&second_key()),
                id(&test_key()),
                id(&unknown_key())
            )
        );
        assert_eq!((keys.len(), keys.is_empty()), (3, false));
        assert_eq!(keys.signatures_required(), 1);
        assert_eq!(
            keys.get(&id(&test_key())),
            Some(&test_key().verifying_key())
        );
        assert_eq!(keys.get(&id(&nth_key(0))), None);
    }

    #[test]
    fn no_key_file_is_no_trusted_keys() {
        let r = Root::new();
        r.write(&format!("{ADMIN}/key.txt"), "");
        assert_eq!(
            r.load(&KeySettings::default()).unwrap_err(),
            format!("no trusted keys: no *.pub file in {}", r.dirs())
        );
        assert_eq!(TrustedKeys::default().describe(), "none");
        assert!(TrustedKeys::default().is_empty());
    }

    /// Issue 14 (defect 12): a key id revoked in /etc is not trusted, even when the vendor
    /// directory holds the key.
    #[test]
    fn a_revoked_vendor_key_is_not_trusted() {
        let r = Root::new();
        r.key(VENDOR, "vendor", &test_key());
        assert_eq!(
            r.load(&settings(&[&test_key()], 1)).unwrap_err(),
            format!(
                "no trusted keys: no *.pub file in {} that is not revoked (1 revoked by keys.revoked)",
                r.dirs()
            )
        );
        r.key(ADMIN, "site", &second_key());
        let keys = r.load(&settings(&[&test_key()], 1)).unwrap();
        assert_eq!(keys.describe(), id(&second_key()).to_string());
        assert!(keys.is_revoked(&id(&test_key())) && !keys.is_revoked(&id(&second_key())));
    }

    #[test]
    fn requiring_more_signatures_than_trusted_keys_is_refused() {
        let r = Root::new();
        r.key(VENDOR, "a", &test_key());
        // The same key twice is one key.
        r.key(ADMIN, "a-again", &test_key());
        r.key(ADMIN, "b", &second_key());
        assert_eq!(
            r.load(&settings(&[&second_key()], 2)).unwrap_err(),
            "keys.signatures_required is 2, but only 1 trusted keys are installed"
        );
        let keys = r.load(&settings(&[], 2)).unwrap();
        assert_eq!((keys.len(), keys.signatures_required()), (2, 2));
    }

    #[test]
    fn invalid_keys_settings_trust_no_key() {
        let r = Root::new();
        r.key(VENDOR, "a", &test_key());
        let s = KeySettings {
            invalid: vec!["f.toml: one".into(), "f.toml: two".into()],
            ..KeySettings::default()
        };
        assert_eq!(
            r.load(&s).unwrap_err(),
            "trusting no key while the [keys] configuration is invalid: f.toml: one; f.toml: two"
        );
    }

    #[test]
    fn at_most_64_key_files_in_both_directories() {
        assert_eq!(MAX_TRUSTED_KEYS, 64);
        for (vendor, admin, ok) in [
            (64, 0, true),
            (32, 32, true),
            (0, 64, true),
            (65, 0, false),
            (1, 64, false),
            (0, 65, false),
        ] {
            let r = Root::new();
            for i in 0..vendor {
                r.key(VENDOR, &format!("{i:03}"), &nth_key(i));
            }
            for i in 0..admin {
                r.key(ADMIN, &format!("{i:03}"), &nth_key(100 + i));
            }
            let got = r.load(&KeySettings::default());
            let name = format!("{vendor} + {admin}");
            if ok {
                assert_eq!(got.unwrap().len(), vendor + admin, "{name}");
            } else {
                assert_eq!(
                    got.unwrap_err(),
                    format!("more than 64 trusted keys in {}", r.dirs()),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn an_unreadable_key_directory_is_an_error() {
        let r = Root::new();
        r.write(ADMIN, "a file where the directory belongs");
        let err = load_trusted(r.0.path(), &KeySettings::default()).unwrap_err();
        assert!(
            matches!(&err, KeyError::Io { path, source }
                if *path == r.path(ADMIN) && source.raw_os_error() == Some(20)),
            "{err:?}"
        );
    }

    /// Runs `load_file` on another thread and fails the test instead of hanging when it blocks.
    fn load_file_within_seconds(path: &Path) -> Result<(), String> {
        let path = path.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(
                TrustedKeys::load_file(&path)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            );
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("loading the key blocked")
    }

    /// Issue 14 (defect 12): a FIFO in keys.d blocked every install forever.
    #[test]
    fn a_fifo_in_keys_d_is_refused_without_blocking() {
        let r = Root::new();
        let p = r.path(&format!("{ADMIN}/evil.pub"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(
            load_file_within_seconds(&p).unwrap_err(),
            format!("key file {} is a FIFO, not a regular file", p.display())
        );
    }

    #[test]
    fn key_files_that_are_not_regular_files_are_refused() {
        let r = Root::new();
        let dir = r.path(ADMIN);
        std::fs::create_dir_all(dir.join("dir.pub")).unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.join("null.pub")).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(dir.join("sock.pub")).unwrap();
        for (name, kind) in [
            ("dir.pub", "directory"),
            ("null.pub", "character device"),
            ("sock.pub", "socket"),
        ] {
            let p = dir.join(name);
            assert_eq!(
                load_file_within_seconds(&p).unwrap_err(),
                format!("key file {} is a {kind}, not a regular file", p.display()),
            );
        }
        assert_eq!(
            r.load(&KeySettings::default()).unwrap_err(),
            format!(
                "key file {} is a directory, not a regular file",
                dir.join("dir.pub").display()
            )
        );
    }

    #[test]
    fn a_symlink_to_a_key_file_is_followed() {
        let r = Root::new();
        let target = r.key("elsewhere", "k", &test_key());
        let link = r.path(&format!("{ADMIN}/k.pub"));
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let keys = r.load(&KeySettings::default()).unwrap();
        assert_eq!(keys.describe(), id(&test_key()).to_string());
    }

    #[test]
    fn a_key_file_is_at_most_256_bytes() {
        let r = Root::new();
        let hex = hex::encode(test_key().verifying_key().as_bytes());
        let pad = |n: usize| format!("{hex}{}", "\n".repeat(n - hex.len()));
        let at_limit = r.write("k/at.pub", &pad(MAX_KEY_FILE_LEN as usize));
        assert_eq!(
            TrustedKeys::load_file(&at_limit).unwrap(),
            test_key().verifying_key()
        );
        let over = r.write("k/over.pub", &pad(MAX_KEY_FILE_LEN as usize + 1));
        assert_eq!(
            TrustedKeys::load_file(&over).unwrap_err().to_string(),
            format!(
                "key file {} is not an ed25519 public key in hex: 257 bytes, more than 256",
                over.display()
            )
        );
    }

    #[test]
    fn malformed_key_files_are_refused_with_the_reason() {
        let r = Root::new();
        let hex = hex::encode(test_key().verifying_key().as_bytes());
        for (name, bytes, reason) in [
            (
                "short",
                hex.as_bytes()[..62].to_vec(),
                "31 bytes, expected 32",
            ),
            (
                "not hex",
                format!("{}zz", &hex[..62]).into_bytes(),
                "Invalid character 'z' at position 62",
            ),
            ("not UTF-8", vec![0xff; 64], "not UTF-8"),
        ] {
            let p = r.path(&format!("k/{name}.pub"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            assert_eq!(
                TrustedKeys::load_file(&p).unwrap_err().to_string(),
                format!(
                    "key file {} is not an ed25519 public key in hex: {reason}",
                    p.display()
                ),
                "{name}"
            );
        }
        assert_eq!(parse_public_key(&hex).unwrap(), test_key().verifying_key());
    }
}

// ---- format version 2: content-defined chunks ------------------------------------------------

mod v2 {
    use super::*;
    use crate::cdc::CdcParams;

    /// Small chunking parameters, so a few KiB make several chunks.
    const SMALL: CdcParams = CdcParams {
        min: 1024,
        avg: 2048,
        max: 8192,
    };

    fn parts(image: &[u8]) -> PayloadParts {
        PayloadParts::from_image_v2(image, &opts("testbox", "2.0"), SMALL).unwrap()
    }

    fn good() -> Vec<u8> {
        parts(&image_bytes(40_000)).assemble(&[test_key()])
    }

    fn error_of(bytes: &[u8]) -> String {
        verify_stream(&mut &bytes[..], &trusted())
            .unwrap_err()
            .to_string()
    }

    /// The manifest of `bytes`, altered by `f`, re-signed, with everything after it kept.
    fn resigned(bytes: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let raw = Raw::split(bytes);
        let mut m = raw.manifest.clone();
        f(&mut m);
        Raw {
            signatures: block(&m, &[test_key()]),
            manifest: m,
            ..raw
        }
        .bytes()
    }

    #[test]
    fn a_v2_payload_verifies_and_its_chunks_tile_the_image() {
        let image = image_bytes(40_000);
        let bytes = parts(&image).assemble(&[test_key()]);
        let p = verify_stream(&mut &bytes[..], &trusted()).unwrap();
        assert_eq!(p.header.format_version, 2);
        assert_eq!(p.manifest.cdc, Some(SMALL));
        assert_eq!(p.manifest.chunk_size, SMALL.max);
        let e = &p.chunks.entries;
        assert!(e.len() >= 40_000 / 8192, "{} chunks", e.len());
        let mut at = 0;
        for c in e {
            assert_eq!(c.image_offset, at);
            assert_eq!(
                c.sha256,
                Sha256Digest::of(&image[at as usize..(at + u64::from(c.image_len)) as usize])
            );
            at += u64::from(c.image_len);
        }
        assert_eq!(at, 40_000);
        assert_eq!(p.chunks.payload_end(), bytes.len() as u64);
    }

    #[test]
    fn streaming_pack_v2_writes_the_same_bytes_as_the_in_memory_parts() {
        let image = image_bytes(100_000);
        let mut out = std::io::Cursor::new(Vec::new());
        let o = PackOptions {
            threads: 2,
            ..opts("testbox", "2.0")
        };
        let summary = super::super::writer::pack_v2(
            &mut std::io::Cursor::new(&image),
            image.len() as u64,
            &mut out,
            &[test_key()],
            &o,
            SMALL,
        )
        .unwrap();
        let want = parts(&image).assemble(&[test_key()]);
        assert_eq!(out.into_inner(), want);
        assert_eq!(summary.payload_size, want.len() as u64);
    }

    #[test]
    fn an_insertion_keeps_most_chunks_of_the_image() {
        let a = image_bytes(200_000);
        let mut b = a[..50_000].to_vec();
        b.extend_from_slice(b"a security fix");
        b.extend_from_slice(&a[50_000..]);
        let (pa, pb) = (parts(&a), parts(&b));
        let have: std::collections::HashSet<_> = pa.entries.iter().map(|e| e.sha256).collect();
        let missing = pb
            .entries
            .iter()
            .filter(|e| !have.contains(&e.sha256))
            .count();
        assert!(missing <= 2, "{missing} of {} chunks new", pb.entries.len());
    }

    #[test]
    fn a_v1_manifest_under_a_v2_header_is_refused() {
        let v1 = Raw::good();
        let mut bytes = v1.bytes();
        bytes[8..12].copy_from_slice(&le32(2));
        let crc = crc32fast::hash(&bytes[..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            error_of(&bytes),
            "header says format version 2, manifest says 1"
        );
    }

    #[test]
    fn a_v2_manifest_with_bad_chunking_parameters_is_refused() {
        let bad = resigned(&good(), |m| m[68..72].copy_from_slice(&le32(3000)));
        assert_eq!(
            error_of(&bad),
            "manifest chunking parameters min 1024, avg 3000, max 8192: cdc_avg not a power of two"
        );
    }

    #[test]
    fn a_v2_chunk_count_the_image_cannot_have_is_refused() {
        // 40000 bytes in chunks of at most 8192 bytes need at least 5.
        let bad = resigned(&good(), |m| m[76..80].copy_from_slice(&le32(4)));
        assert_eq!(
            error_of(&bad),
            "chunk count 4 does not fit image size 40000 with chunk size 8192 (needs 5)"
        );
    }

    #[test]
    fn a_v2_chunk_shorter_than_the_minimum_is_refused() {
        let mut p = parts(&image_bytes(40_000));
        // Move 100 bytes of chunk 0 into chunk 1: chunk 0 still tiles, but may be too short.
        p.entries[0].image_len = 1000;
        let bytes = p.assemble(&[test_key()]);
        assert_eq!(
            error_of(&bytes),
            "chunk 0: image_len is 1000, expected 1024"
        );
    }

    #[test]
    fn a_v2_last_chunk_that_does_not_end_the_image_is_refused() {
        let mut p = parts(&image_bytes(40_000));
        let last = p.entries.len() - 1;
        let len = p.entries[last].image_len;
        p.entries[last].image_len = len - 1;
        let bytes = p.assemble(&[test_key()]);
        assert_eq!(
            error_of(&bytes),
            format!("chunk {last}: image_len is {}, expected {len}", len - 1)
        );
    }

    #[test]
    fn a_v2_manifest_with_a_prefix_beyond_the_maximum_is_refused() {
        let bad = resigned(&good(), |m| {
            m[80..84].copy_from_slice(&(crate::MAX_PREFIX_LEN + 1).to_le_bytes())
        });
        assert_eq!(
            error_of(&bad),
            "prefix_len is 4194305 bytes, more than the maximum of 4194304"
        );
    }

    #[test]
    fn frames_with_a_prefix_are_smaller_than_independent_ones_and_both_verify() {
        // Repeats 7 KiB apart: a frame finds them only in the bytes before its chunk.
        let unit = image_bytes(7000);
        let image: Vec<u8> = unit.iter().cycle().take(70_000).copied().collect();
        let o = opts("testbox", "2.0");
        let alone = PayloadParts::from_image_v2_prefixed(&image, &o, SMALL, 0).unwrap();
        let prefixed = PayloadParts::from_image_v2_prefixed(&image, &o, SMALL, 16 << 10).unwrap();
        let size = |p: &PayloadParts| p.frames.iter().map(Vec::len).sum::<usize>();
        assert!(
            size(&prefixed) * 2 < size(&alone),
            "{} vs {}",
            size(&prefixed),
            size(&alone)
        );
        for p in [alone, prefixed] {
            let bytes = p.assemble(&[test_key()]);
            let v = verify_stream(&mut &bytes[..], &trusted()).unwrap();
            assert_eq!(v.manifest.prefix_len, p.manifest.prefix_len);
        }
    }

    #[test]
    fn chunks_decoded_one_after_another_into_one_buffer_are_the_image() {
        // Prefixes shorter than a chunk (the window grows) and longer (it moves its last
        // prefix to the front several times over the image).
        let unit = image_bytes(7000);
        let image: Vec<u8> = unit.iter().cycle().take(200_000).copied().collect();
        for prefix_len in [1024, 5000, 16 << 10] {
            let o = opts("testbox", "2.0");
            let p = PayloadParts::from_image_v2_prefixed(&image, &o, SMALL, prefix_len).unwrap();
            let mut d = ChunkDecoder::for_manifest(&p.manifest).unwrap();
            let mut out = vec![0xee; 3];
            for (i, (e, frame)) in p.entries.iter().zip(&p.frames).enumerate() {
                d.decode_unchecked_append(i as u32, e, frame, &mut out)
                    .unwrap();
            }
            assert!(out[3..] == image[..], "prefix {prefix_len}");
        }
    }

    #[test]
    fn an_image_starting_with_the_zstd_dictionary_magic_still_decodes_as_raw_prefix() {
        // Every frame after the first references bytes that start at image offset 0.
        let mut image = crate::ZSTD_DICT_MAGIC.to_vec();
        image.extend(image_bytes(30_000));
        let p = PayloadParts::from_image_v2(&image, &opts("testbox", "2.0"), SMALL).unwrap();
        assert!(p.entries.len() > 2);
        let bytes = p.assemble(&[test_key()]);
        verify_stream(&mut &bytes[..], &trusted()).unwrap();
        assert_eq!(crate::frame_prefix(&image[..10]), &image[1..10]);
        assert_eq!(crate::frame_prefix(&image[1..10]), &image[1..10]);
    }

    #[test]
    fn a_frame_decoded_without_the_bytes_before_it_is_refused() {
        let unit = image_bytes(7000);
        let image: Vec<u8> = unit.iter().cycle().take(70_000).copied().collect();
        let p = PayloadParts::from_image_v2(&image, &opts("testbox", "2.0"), SMALL).unwrap();
        let last = p.entries.len() - 1;
        let mut e = p.entries[last];
        e.payload_offset = 0;
        let mut out = Vec::new();
        // A decoder that never saw the chunks before: the frame cannot be decoded right.
        let mut fresh = ChunkDecoder::for_manifest(&p.manifest).unwrap();
        fresh.feed(&vec![0u8; 4096]);
        let err = fresh.decode(last as u32, &e, &p.frames[last], &mut out);
        assert!(err.is_err(), "decoded without its prefix");
        // Fed the image before the chunk, it decodes to the signed bytes.
        let mut fed = ChunkDecoder::for_manifest(&p.manifest).unwrap();
        fed.feed(&image[..e.image_offset as usize]);
        fed.decode(last as u32, &e, &p.frames[last], &mut out)
            .unwrap();
        assert_eq!(out[..], image[e.image_offset as usize..]);
    }

    #[test]
    fn a_v2_manifest_with_reserved_bits_is_refused() {
        let bad = resigned(&good(), |m| m[84] = 1);
        assert_eq!(error_of(&bad), "manifest field reserved is 1, must be 0");
    }

    #[test]
    fn the_v2_test_vector_is_what_the_writer_makes_and_verifies() {
        let image = std::fs::read(testdata().join("vector.img")).unwrap();
        let vector = std::fs::read(testdata().join("vector-v2.payload")).unwrap();
        let o = PackOptions {
            expires: Some(2_082_758_400),
            ..opts("testbox", "1.0")
        };
        let fresh = PayloadParts::from_image_v2(&image, &o, SMALL)
            .unwrap()
            .assemble(&[test_key()]);
        assert_eq!(fresh, vector, "run updater/testdata/gen-vector.sh");
        let key = TrustedKeys::load_file(&testdata().join("vector.pub")).unwrap();
        let p = verify_stream(&mut &vector[..], &TrustedKeys::new([key])).unwrap();
        let raw = Raw::split(&vector);
        assert_eq!(p.manifest.encode(), raw.manifest);
        assert_eq!(p.chunks.encode_for(2), raw.table);
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/payload-format.md"),
        )
        .unwrap();
        let dump = doc
            .split("<!-- vector-v2-hex-begin -->")
            .nth(1)
            .and_then(|s| s.split("<!-- vector-v2-hex-end -->").next())
            .expect("v2 hex dump in the doc");
        let mut bytes = Vec::new();
        for line in dump.lines().filter(|l| l.contains(':')) {
            let (offset, hexes) = line.split_once(':').unwrap();
            assert_eq!(
                usize::from_str_radix(offset.trim(), 16).unwrap(),
                bytes.len()
            );
            bytes.extend(
                hexes
                    .split_whitespace()
                    .map(|h| u8::from_str_radix(h, 16).unwrap()),
            );
        }
        // The dump shows the header and the manifest.
        assert_eq!(bytes.len(), HEADER_LEN + raw.manifest.len());
        assert_eq!(bytes[..], vector[..bytes.len()]);
    }
}
