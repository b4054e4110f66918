//! Arbitrary bytes as a zstd frame: the chunk decoder never panics, never allocates past the
//! chunk it was told to expect, and refuses huge windows (the window cap of DESIGN §5); the
//! same with a prefix of arbitrary bytes fed first (a version 2 frame that references the
//! image before its chunk).
#![no_main]
use libfuzzer_sys::fuzz_target;
use updater::payload::{ChunkDecoder, ChunkEntry, Sha256Digest, MAX_CHUNK_SIZE};

fuzz_target!(|data: &[u8]| {
    let Some((len, frame)) = data.split_first_chunk::<4>() else { return };
    let image_len = u32::from_le_bytes(*len) % (MAX_CHUNK_SIZE + 1);
    let entry = ChunkEntry { image_offset: 0, payload_offset: 0, image_len, frame_len: frame.len() as u32, sha256: Sha256Digest([0; 32]) };
    let mut out = Vec::new();
    // The top bit of the length picks a prefix: the frame's first byte says how long, taken
    // from the frame's start.
    let (mut dec, frame) = if u32::from_le_bytes(*len) & (1 << 31) != 0 && !frame.is_empty() {
        let n = (frame[0] as usize * 64).min(frame.len() - 1);
        let mut d = ChunkDecoder::with_prefix(1 << 20).expect("decoder");
        d.feed(&frame[1..1 + n]);
        (d, &frame[1 + n..])
    } else {
        (ChunkDecoder::new().expect("decoder"), frame)
    };
    let entry = ChunkEntry { frame_len: frame.len() as u32, ..entry };
    if dec.decode(0, &entry, frame, &mut out).is_ok() {
        assert_eq!(out.len(), image_len as usize);
    }
    assert!(out.capacity() <= MAX_CHUNK_SIZE as usize * 2);
});
