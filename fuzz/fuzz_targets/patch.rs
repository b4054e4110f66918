//! Arbitrary bytes as a publish-time patch (`docs/patch-format.md`). Mode 0: the whole reader
//! (`VerifiedPatch::parse`, test-vector key trusted) never panics or over-allocates, and
//! arbitrary bytes never get past the signature check. Mode 1: the header parser alone. Mode 2:
//! the manifest parser alone (the reader parses a manifest only once its signature verified, so
//! this is how its bounds checks are reached).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use updater::payload::patch::{PatchHeader, PatchManifest, VerifiedPatch, PATCH_HEADER_LEN};
use updater::payload::TrustedKeys;

const VECTOR_PUB: &str = include_str!("../../updater/testdata/vector.pub");

fn keys() -> &'static TrustedKeys {
    static KEYS: OnceLock<TrustedKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let raw: [u8; 32] = hex::decode(VECTOR_PUB.trim()).expect("hex key").try_into().expect("32 bytes");
        TrustedKeys::new([ed25519_dalek::VerifyingKey::from_bytes(&raw).expect("public key")])
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            if let Ok(p) = VerifiedPatch::parse(rest.to_vec(), keys()) {
                panic!("unsigned bytes verified as a patch of {} bytes", p.file_len());
            }
        }
        1 => {
            if let Some(h) = rest.first_chunk::<PATCH_HEADER_LEN>() {
                let _ = PatchHeader::parse(h);
            }
        }
        _ => {
            let _ = PatchManifest::parse(rest);
        }
    }
});
