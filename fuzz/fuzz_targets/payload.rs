//! Arbitrary bytes as a payload: the header, manifest and signature-block parsers and the
//! whole prelude reader (with the test-vector key trusted) never panic or over-allocate; and
//! arbitrary bytes as a chunk table that a signed manifest vouches for are parsed safely.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use updater::payload::{self, Header, Manifest, SignatureBlock, TrustedKeys, HEADER_LEN};

const VECTOR_PUB: &str = include_str!("../../updater/testdata/vector.pub");
const VECTOR_PAYLOAD: &[u8] = include_bytes!("../../updater/testdata/vector.payload");

fn keys() -> &'static TrustedKeys {
    static KEYS: OnceLock<TrustedKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let bytes: [u8; 32] = hex::decode(VECTOR_PUB.trim()).expect("hex key").try_into().expect("32 bytes");
        TrustedKeys::new([ed25519_dalek::VerifyingKey::from_bytes(&bytes).expect("test vector key")])
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 2 {
        0 => {
            if let Some(h) = rest.get(..HEADER_LEN) {
                let _ = Header::parse(h.try_into().expect("64 bytes"));
            }
            let _ = Manifest::parse(rest);
            let _ = SignatureBlock::parse(rest);
            let _ = payload::read_prelude(&mut &rest[..], keys());
        }
        _ => {
            // A chunk table the (test vector's) manifest vouches for by hash and count.
            let p = payload::read_prelude(&mut &VECTOR_PAYLOAD[..], keys()).expect("test vector");
            let mut m: Manifest = p.manifest.clone();
            m.chunk_table_sha256 = payload::Sha256Digest::of(rest);
            m.chunk_count = (rest.len() / payload::CHUNK_ENTRY_LEN) as u32;
            let _ = payload::ChunkTable::parse(rest, &m, &p.header);
        }
    }
});
