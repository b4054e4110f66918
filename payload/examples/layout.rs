//! Measures the compression layouts a version 2 payload could use, on a real image pair, to
//! choose one (the figures are in `docs/payload-format.md`).
//!
//! ```text
//! cargo run --release -p ab-payload --example layout -- OLD.img NEW.img LEVEL SLICE_MIB
//! ```
//!
//! For each layout it prints the compressed size of the first SLICE_MIB MiB of NEW (against one
//! zstd frame of the same bytes at the same level), and the bytes a device holding OLD fetches
//! to get NEW (the compressed frames that hold a chunk OLD lacks), over the whole images.
use ab_payload::cdc::{CdcParams, Chunker};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::Read;

type Chunks = Vec<([u8; 32], Vec<u8>)>;
/// The distinct chunk hashes of an image, and every chunk's hash and length in image order.
type Index = (HashSet<[u8; 32]>, Vec<([u8; 32], u32)>);

fn chunks(path: &str, p: CdcParams, limit: u64) -> Chunks {
    let f = std::fs::File::open(path).unwrap().take(limit);
    let mut c = Chunker::new(std::io::BufReader::new(f), p);
    let mut out = Vec::new();
    while let Some((_, b)) = c.next_chunk().unwrap() {
        out.push((Sha256::digest(b).into(), b.to_vec()));
    }
    out
}

fn hashes(path: &str, p: CdcParams) -> Index {
    let f = std::fs::File::open(path).unwrap();
    let mut c = Chunker::new(std::io::BufReader::new(f), p);
    let mut set = HashSet::new();
    let mut list = Vec::new();
    while let Some((_, b)) = c.next_chunk().unwrap() {
        let h: [u8; 32] = Sha256::digest(b).into();
        set.insert(h);
        list.push((h, b.len() as u32));
    }
    (set, list)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (old, new, level): (&str, &str, i32) = (&a[1], &a[2], a[3].parse().unwrap());
    let slice: u64 = a[4].parse::<u64>().unwrap() << 20;
    let mut whole = Vec::new();
    std::fs::File::open(new)
        .unwrap()
        .take(slice)
        .read_to_end(&mut whole)
        .unwrap();
    let mut enc = zstd::bulk::Compressor::new(level).unwrap();
    let one = enc.compress(&whole).unwrap().len();
    println!("slice {} MiB, level {level}: one frame {one}", slice >> 20);
    for avg in [16u32 << 10, 32 << 10, 64 << 10] {
        let p = CdcParams {
            min: avg / 4,
            avg,
            max: avg * 4,
        };
        let cs = chunks(new, p, slice);
        let per: usize = cs.iter().map(|(_, b)| enc.compress(b).unwrap().len()).sum();
        let samples: Vec<&[u8]> = cs.iter().step_by(4).map(|(_, b)| &b[..]).collect();
        let dict = zstd::dict::from_samples(&samples, 112 << 10).unwrap();
        let mut denc = zstd::bulk::Compressor::with_dictionary(level, &dict).unwrap();
        let with_dict: usize = cs
            .iter()
            .map(|(_, b)| denc.compress(b).unwrap().len())
            .sum::<usize>()
            + dict.len();
        let mut grouped = Vec::new();
        for group in [1usize << 20, 4 << 20] {
            let mut total = 0;
            let mut buf = Vec::new();
            for (_, b) in &cs {
                buf.extend_from_slice(b);
                if buf.len() >= group {
                    total += enc.compress(&buf).unwrap().len();
                    buf.clear();
                }
            }
            if !buf.is_empty() {
                total += enc.compress(&buf).unwrap().len();
            }
            grouped.push((group >> 20, total));
        }
        println!(
            "avg {} KiB: per-chunk {per} ({:.3}x), per-chunk+dict {with_dict} ({:.3}x), {}",
            avg >> 10,
            per as f64 / one as f64,
            with_dict as f64 / one as f64,
            grouped
                .iter()
                .map(|(g, t)| format!("groups {g} MiB {t} ({:.3}x)", *t as f64 / one as f64))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // Delta over the whole images: which chunks of NEW does OLD lack?
        let (have, _) = hashes(old, p);
        let (_, list) = hashes(new, p);
        let missing: HashSet<[u8; 32]> = list
            .iter()
            .filter(|(h, _)| !have.contains(h))
            .map(|(h, _)| *h)
            .collect();
        let raw: u64 = list
            .iter()
            .filter(|(h, _)| missing.contains(h))
            .map(|(_, l)| u64::from(*l))
            .sum();
        // Compress exactly the missing chunks (per chunk, and with the slice's dictionary).
        let mut f = std::fs::File::open(new).unwrap();
        let (mut per_missing, mut dict_missing) = (0usize, 0usize);
        let mut group_missing = [0usize; 2];
        let mut groups: Vec<(Vec<u8>, bool)> = vec![(Vec::new(), false); 2];
        for (h, l) in &list {
            let mut b = vec![0u8; *l as usize];
            f.read_exact(&mut b).unwrap();
            let miss = missing.contains(h);
            if miss {
                per_missing += enc.compress(&b).unwrap().len();
                dict_missing += denc.compress(&b).unwrap().len();
            }
            for (gi, size) in [1usize << 20, 4 << 20].into_iter().enumerate() {
                let g = &mut groups[gi];
                g.0.extend_from_slice(&b);
                g.1 |= miss;
                if g.0.len() >= size {
                    if g.1 {
                        group_missing[gi] += enc.compress(&g.0).unwrap().len();
                    }
                    g.0.clear();
                    g.1 = false;
                }
            }
        }
        println!(
            "  delta: {} of {} chunks missing ({raw} bytes raw): per-chunk {per_missing}, \
             per-chunk+dict {} (with dict), groups 1 MiB {}, groups 4 MiB {}",
            missing.len(),
            list.len(),
            dict_missing + dict.len(),
            group_missing[0],
            group_missing[1]
        );
    }
}
