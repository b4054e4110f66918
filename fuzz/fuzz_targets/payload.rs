//! Arbitrary bytes as a payload. Mode 0: the header, manifest and signature-block parsers and
//! the whole prelude reader (with the test-vector key trusted) never panic or over-allocate,
//! and arbitrary bytes never get past the signature check. Mode 1: arbitrary bytes as a chunk
//! table that a signed manifest vouches for are parsed safely. Mode 2: an arbitrary manifest
//! that the trusted test-vector key did sign (the reader parses a manifest only once its
//! signature verified, so this is the only way to reach those checks through the reader;
//! version 2 manifests too). Mode 3: arbitrary bytes as a version 2 chunk table.
#![no_main]
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use updater::payload::{self, Header, KeyId, Manifest, Signature, SignatureBlock, TrustedKeys, HEADER_LEN};

const VECTOR_KEY: &str = include_str!("../../updater/testdata/vector.key");
const VECTOR_PAYLOAD: &[u8] = include_bytes!("../../updater/testdata/vector.payload");
const VECTOR_V2_PAYLOAD: &[u8] = include_bytes!("../../updater/testdata/vector-v2.payload");

fn signing_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let seed: [u8; 32] = hex::decode(VECTOR_KEY.trim()).expect("hex key").try_into().expect("32 bytes");
        SigningKey::from_bytes(&seed)
    })
}

fn keys() -> &'static TrustedKeys {
    static KEYS: OnceLock<TrustedKeys> = OnceLock::new();
    KEYS.get_or_init(|| TrustedKeys::new([signing_key().verifying_key()]))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => {
            if let Some(h) = rest.get(..HEADER_LEN) {
                let _ = Header::parse(h.try_into().expect("64 bytes"));
            }
            let _ = Manifest::parse(rest);
            let _ = SignatureBlock::parse(rest);
            if let Ok(p) = payload::read_prelude(&mut &rest[..], keys()) {
                // Only a manifest the key signed gets through: the committed vector's.
                assert_eq!(p.manifest_bytes, VECTOR_PAYLOAD[HEADER_LEN..HEADER_LEN + 118]);
            }
        }
        1 => {
            // A chunk table the (test vector's) manifest vouches for by hash and count.
            let p = payload::read_prelude(&mut &VECTOR_PAYLOAD[..], keys()).expect("test vector");
            let mut m: Manifest = p.manifest.clone();
            m.chunk_table_sha256 = payload::Sha256Digest::of(rest);
            m.chunk_count = (rest.len() / payload::CHUNK_ENTRY_LEN) as u32;
            let _ = payload::ChunkTable::parse(rest, &m, &p.header);
        }
        3 => {
            // A version 2 chunk table the v2 test vector's manifest vouches for by hash and
            // count: lengths, sums and frame bounds checked without trusting any entry.
            let p = payload::read_prelude(&mut &VECTOR_V2_PAYLOAD[..], keys()).expect("v2 test vector");
            let mut m: Manifest = p.manifest.clone();
            m.chunk_table_sha256 = payload::Sha256Digest::of(rest);
            m.chunk_count = (rest.len() / payload::CHUNK_ENTRY_V2_LEN) as u32;
            let _ = payload::ChunkTable::parse(rest, &m, &p.header);
        }
        _ => {
            // Two bytes of manifest length, the manifest, then the chunk table and frames.
            let Some((len, rest)) = rest.split_first_chunk::<2>() else { return };
            let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
            let (manifest, tail) = rest.split_at(len);
            let block = SignatureBlock {
                signatures: vec![Signature {
                    key_id: KeyId::of(&signing_key().verifying_key()),
                    signature: signing_key().sign(manifest).to_bytes(),
                }],
            }
            .encode();
            // A version 2 manifest gets a version 2 header, so both manifest parsers are reached.
            let format_version = if manifest.starts_with(&[2, 0, 0, 0]) { 2 } else { 1 };
            let header = Header { format_version, manifest_len: len as u32, signatures_len: block.len() as u32 };
            let bytes = [&header.encode()[..], manifest, &block, tail].concat();
            let _ = payload::verify_stream(&mut &bytes[..], keys());
        }
    }
});
