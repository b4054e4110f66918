//! Arbitrary bytes as a zstd frame: the chunk decoder never panics, never allocates past the
//! chunk it was told to expect, and refuses huge windows (the window cap of DESIGN §5).
#![no_main]
use libfuzzer_sys::fuzz_target;
use updater::payload::{ChunkDecoder, ChunkEntry, Sha256Digest, MAX_CHUNK_SIZE};

fuzz_target!(|data: &[u8]| {
    let Some((len, frame)) = data.split_first_chunk::<4>() else { return };
    let image_len = u32::from_le_bytes(*len) % (MAX_CHUNK_SIZE + 1);
    let entry = ChunkEntry { image_offset: 0, payload_offset: 0, image_len, frame_len: frame.len() as u32, sha256: Sha256Digest([0; 32]) };
    let mut out = Vec::new();
    let mut dec = ChunkDecoder::new().expect("decoder");
    if dec.decode(0, &entry, frame, &mut out).is_ok() {
        assert_eq!(out.len(), image_len as usize);
    }
    assert!(out.capacity() <= MAX_CHUNK_SIZE as usize * 2);
});
