//! Measures version 2 frames with a prefix (each chunk's frame references the W image bytes
//! before it as a zstd raw-content prefix) on a real image pair, to choose the chunk size, level
//! and prefix (the figures are in `docs/payload-format.md`, "Frames, version 2").
//!
//! ```text
//! cargo run --release -p ab-payload --example prefix -- OLD.img NEW.img SLICE_MIB LEVELS AVG_KIB PREFIX_KIB
//! # e.g. ... v1.img v2.img 64 3,6 16 1024,4096
//! ```
//!
//! LEVELS, AVG_KIB and PREFIX_KIB are comma-separated lists; every combination is measured. For
//! each it prints the frames' size over the first SLICE_MIB MiB of NEW against one zstd frame of
//! the same bytes at the same level, the compression speed, and the compressed bytes of the
//! chunks of NEW that OLD lacks (what a device holding OLD fetches, chunk table not counted).
use ab_payload::cdc::{CdcParams, Chunker};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::time::Instant;
use zstd::zstd_safe::{CCtx, CParameter};

fn cut(img: &[u8], p: CdcParams) -> Vec<(u64, u32, [u8; 32])> {
    let mut c = Chunker::new(std::io::Cursor::new(img), p);
    let mut out = Vec::new();
    while let Some((at, b)) = c.next_chunk().unwrap() {
        out.push((at, b.len() as u32, Sha256::digest(b).into()));
    }
    out
}

fn comp<'a>(
    cctx: &mut CCtx<'a>,
    level: i32,
    img: &'a [u8],
    at: usize,
    len: usize,
    w: usize,
    out: &mut Vec<u8>,
) -> usize {
    cctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly)
        .unwrap();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .unwrap();
    cctx.set_parameter(CParameter::ChecksumFlag(false)).unwrap();
    cctx.set_parameter(CParameter::ContentSizeFlag(true))
        .unwrap();
    let start = at.saturating_sub(w);
    if w > 0 {
        let wl = usize::BITS - (w + len).leading_zeros();
        cctx.set_parameter(CParameter::WindowLog(wl.max(10)))
            .unwrap();
        cctx.ref_prefix(&img[start..at]).unwrap();
    }
    out.clear();
    out.reserve(len + 1024);
    cctx.compress2(out, &img[at..at + len]).unwrap()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let v1 = std::fs::read(&a[1]).unwrap();
    let v2 = std::fs::read(&a[2]).unwrap();
    let slice: usize = a[3].parse::<usize>().unwrap() << 20;
    let levels: Vec<i32> = a[4].split(',').map(|s| s.parse().unwrap()).collect();
    let avgs: Vec<u32> = a[5]
        .split(',')
        .map(|s| s.parse::<u32>().unwrap() << 10)
        .collect();
    let ws: Vec<usize> = a[6]
        .split(',')
        .map(|s| s.parse::<usize>().unwrap() << 10)
        .collect();
    let mut cctx = CCtx::create();
    let mut out = Vec::new();
    for &avg in &avgs {
        let p = CdcParams {
            min: avg / 4,
            avg,
            max: avg * 4,
        };
        let c1 = cut(&v1, p);
        let c2 = cut(&v2, p);
        let have: HashSet<[u8; 32]> = c1.iter().map(|c| c.2).collect();
        let missing: Vec<_> = c2.iter().filter(|c| !have.contains(&c.2)).collect();
        let raw: u64 = missing.iter().map(|c| c.1 as u64).sum();
        println!(
            "avg {}K: {} chunks, {} missing, {} raw missing bytes",
            avg >> 10,
            c2.len(),
            missing.len(),
            raw
        );
        for &level in &levels {
            let one = zstd::bulk::compress(&v2[..slice], level).unwrap().len();
            for &w in &ws {
                let t = Instant::now();
                let mut full = 0usize;
                for c in c2.iter().take_while(|c| (c.0 as usize) < slice) {
                    let len = (c.1 as usize).min(slice - c.0 as usize);
                    full += comp(&mut cctx, level, &v2, c.0 as usize, len, w, &mut out);
                }
                let tf = t.elapsed().as_secs_f64();
                let mut fetch = 0usize;
                for c in &missing {
                    fetch += comp(
                        &mut cctx,
                        level,
                        &v2,
                        c.0 as usize,
                        c.1 as usize,
                        w,
                        &mut out,
                    );
                }
                println!(
                    "  L{level} W{}K: slice {}M full {full} / one {one} = {:.3}x ({:.1} MB/s), fetch {:.2} MB",
                    w >> 10, slice >> 20, full as f64 / one as f64, slice as f64 / tf / 1e6, fetch as f64 / 1e6
                );
            }
        }
    }
}
