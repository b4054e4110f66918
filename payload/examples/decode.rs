//! Measures how fast one thread decodes a payload's frames (the figures are in
//! `docs/payload-format.md`, "Frames, version 2"), two ways:
//!
//! - `ChunkDecoder`: what devices run; for frames with a prefix, each frame is decoded right
//!   after its prefix in one buffer (zstd sees one contiguous window);
//! - `separate prefix`: the prefix kept in a buffer of its own and passed to
//!   `ZSTD_decompress_usingDict` beside a separate output buffer (zstd's external-dictionary
//!   path), as the decoder did before.
//!
//! ```text
//! cargo run --release -p ab-payload --example decode -- PAYLOAD
//! # the device's build: --target x86_64-unknown-linux-musl
//! ```
//!
//! SHA-256 checks are left out of both (the install runs them on other threads).
use ab_payload::{frame_prefix, inspect, ChunkDecoder, ChunkEntry};
use std::time::Instant;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: decode PAYLOAD (a payload file)");
    let bytes = std::fs::read(&path).expect("reading the payload");
    let prelude = inspect(&mut &bytes[..]).expect("reading the prelude");
    let entries = &prelude.chunks.entries;
    let image: u64 = entries.iter().map(|e| u64::from(e.image_len)).sum();
    let frame = |e: &ChunkEntry| {
        let at = e.payload_offset as usize;
        &bytes[at..at + e.frame_len as usize]
    };
    let report = |what: &str, started: Instant| {
        let s = started.elapsed().as_secs_f64();
        println!(
            "{what:16} {s:.3} s  {:.0} MiB/s",
            image as f64 / s / f64::from(1 << 20)
        );
    };
    println!(
        "{} chunks, {} image bytes, prefix {}",
        entries.len(),
        image,
        prelude.manifest.prefix_len
    );

    let mut decoder = ChunkDecoder::for_manifest(&prelude.manifest).expect("decoder");
    let mut out = Vec::new();
    let started = Instant::now();
    for (i, e) in entries.iter().enumerate() {
        decoder
            .decode_unchecked(i as u32, e, frame(e), &mut out)
            .expect("decoding a frame");
    }
    report("ChunkDecoder", started);

    let w = prelude.manifest.prefix_len as usize;
    if w == 0 {
        return;
    }
    let mut dctx = zstd::zstd_safe::DCtx::create();
    let mut window: Vec<u8> = Vec::new();
    let started = Instant::now();
    for e in entries {
        let prefix = frame_prefix(&window[window.len().saturating_sub(w)..]);
        out.clear();
        out.reserve(e.image_len as usize);
        dctx.decompress_using_dict(&mut out, frame(e), prefix)
            .expect("decoding a frame");
        if window.len() + out.len() > 2 * w {
            let keep = w.saturating_sub(out.len()).min(window.len());
            window.drain(..window.len() - keep);
        }
        window.extend_from_slice(&out);
    }
    report("separate prefix", started);
}
