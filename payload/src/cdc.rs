//! Content-defined chunking (a gear-hash chunker in the manner of FastCDC), shared by the
//! writer, which cuts the image into the chunks of a version 2 payload, and by the device,
//! which cuts its booted slot with the same parameters to find the chunks it already has.
//!
//! The rule, byte for byte (`docs/payload-format.md`, "Chunk boundaries"): a chunk starts where
//! the previous one ended (the first at image offset 0). With `h = 0`, for each byte `b` at
//! chunk position `i` from `min` on, `h = (h << 1) + GEAR[b]` (wrapping, 64 bits); the chunk
//! ends after byte `i` when the top `bits` bits of `h` are zero, where `bits` is
//! `log2(avg) + 1` while `i + 1 < avg` and `log2(avg) - 1` from there on (normalised chunking:
//! chunk lengths cluster near `avg`); and at the latest after `max` bytes, or at the end of the
//! image. `GEAR[x]` is the first 8 bytes, little-endian, of SHA-256 of the ASCII bytes
//! `ab-payload gear ` followed by the one byte `x`.
//!
//! Because `h` is shifted left once per byte, a boundary depends only on the 64 bytes before
//! it: an insertion moves the boundaries around it and no others.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::OnceLock;

/// Chunking parameters: smallest, average (a power of two) and largest chunk length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CdcParams {
    /// No chunk but the last is shorter.
    pub min: u32,
    /// The length chunks cluster around; a power of two.
    pub avg: u32,
    /// No chunk is longer.
    pub max: u32,
}

/// Smallest `min` a manifest may declare.
pub const MIN_CDC_MIN: u32 = 1024;
/// Largest `max` a manifest may declare (also bounds every chunk buffer).
pub const MAX_CDC_MAX: u32 = 4 << 20;

impl CdcParams {
    /// The parameters `image-tools pack` uses unless told otherwise (see the measurements in
    /// `docs/payload-format.md`).
    pub const DEFAULT: CdcParams = CdcParams {
        min: 4 << 10,
        avg: 16 << 10,
        max: 64 << 10,
    };

    /// Whether the parameters are legal: `MIN_CDC_MIN <= min < avg < max <= MAX_CDC_MAX`, `avg`
    /// a power of two. Returns the name of the first rule broken.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.min < MIN_CDC_MIN {
            return Err("cdc_min below 1024");
        }
        if self.max > MAX_CDC_MAX {
            return Err("cdc_max above 4194304");
        }
        if !self.avg.is_power_of_two() {
            return Err("cdc_avg not a power of two");
        }
        if !(self.min < self.avg && self.avg < self.max) {
            return Err("cdc_min < cdc_avg < cdc_max broken");
        }
        Ok(())
    }
}

/// The gear table (see the module doc for its definition).
pub fn gear() -> &'static [u64; 256] {
    static GEAR: OnceLock<[u64; 256]> = OnceLock::new();
    GEAR.get_or_init(|| {
        let mut t = [0u64; 256];
        for (x, g) in t.iter_mut().enumerate() {
            let mut h = Sha256::new();
            h.update(b"ab-payload gear ");
            h.update([x as u8]);
            *g = u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"));
        }
        t
    })
}

/// Length of the chunk that starts at `data[0]`, where `data` holds at least `max` bytes or
/// runs to the end of the image. Parameters must pass [`CdcParams::check`].
pub fn cut(data: &[u8], p: &CdcParams) -> usize {
    let (min, avg, max) = (p.min as usize, p.avg as usize, p.max as usize);
    if data.len() <= min {
        return data.len();
    }
    let end = data.len().min(max);
    let log = p.avg.trailing_zeros();
    let strict = (log + 1).min(63);
    let loose = log - 1;
    let g = gear();
    let mut h = 0u64;
    let normal = end.min(avg - 1);
    let mut i = min;
    while i < normal {
        h = (h << 1).wrapping_add(g[usize::from(data[i])]);
        if h >> (64 - strict) == 0 {
            return i + 1;
        }
        i += 1;
    }
    while i < end {
        h = (h << 1).wrapping_add(g[usize::from(data[i])]);
        if h >> (64 - loose) == 0 {
            return i + 1;
        }
        i += 1;
    }
    end
}

/// Cuts a stream into chunks with bounded memory (one buffer of twice `max`).
pub struct Chunker<R> {
    reader: R,
    params: CdcParams,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    offset: u64,
}

impl<R: Read> Chunker<R> {
    /// A chunker over `reader` from its current position (image offset 0).
    pub fn new(reader: R, params: CdcParams) -> Chunker<R> {
        Chunker {
            reader,
            params,
            buf: Vec::with_capacity(2 * params.max as usize),
            start: 0,
            eof: false,
            offset: 0,
        }
    }

    /// The next chunk: its image offset and bytes, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<(u64, &[u8])>> {
        let max = self.params.max as usize;
        if self.buf.len() - self.start < max && !self.eof {
            self.buf.drain(..self.start);
            self.start = 0;
            let want = 2 * max;
            while self.buf.len() < want && !self.eof {
                let at = self.buf.len();
                self.buf.resize(want, 0);
                match self.reader.read(&mut self.buf[at..]) {
                    Ok(0) => {
                        self.buf.truncate(at);
                        self.eof = true;
                    }
                    Ok(n) => self.buf.truncate(at + n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => self.buf.truncate(at),
                    Err(e) => {
                        self.buf.truncate(at);
                        return Err(e);
                    }
                }
            }
        }
        let rest = &self.buf[self.start..];
        if rest.is_empty() {
            return Ok(None);
        }
        let n = cut(rest, &self.params);
        let at = self.offset;
        let start = self.start;
        self.start += n;
        self.offset += n as u64;
        Ok(Some((at, &self.buf[start..start + n])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn lengths(data: &[u8], p: CdcParams) -> Vec<usize> {
        let mut c = Chunker::new(data, p);
        let mut out = Vec::new();
        while let Some((_, b)) = c.next_chunk().unwrap() {
            out.push(b.len());
        }
        out
    }

    #[test]
    fn gear_table_starts_with_the_documented_values() {
        // SHA-256("ab-payload gear \x00")[..8] little-endian, as docs/payload-format.md says.
        let mut h = Sha256::new();
        h.update(b"ab-payload gear \x00");
        let want = u64::from_le_bytes(h.finalize()[..8].try_into().unwrap());
        assert_eq!(gear()[0], want);
        assert_ne!(gear()[0], gear()[1]);
    }

    #[test]
    fn chunks_respect_min_and_max_and_tile_the_input() {
        let p = CdcParams::DEFAULT;
        let data = noise(3 << 20, 1);
        let lens = lengths(&data, p);
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        let (last, rest) = lens.split_last().unwrap();
        assert!(rest
            .iter()
            .all(|&l| l >= p.min as usize && l <= p.max as usize));
        assert!(*last <= p.max as usize);
        let mean = data.len() / lens.len();
        assert!((10 << 10..=25 << 10).contains(&mean), "mean {mean}");
    }

    #[test]
    fn an_insertion_moves_only_the_boundaries_near_it() {
        let p = CdcParams::DEFAULT;
        let a = noise(4 << 20, 2);
        let mut b = a[..1 << 20].to_vec();
        b.extend_from_slice(b"inserted bytes");
        b.extend_from_slice(&a[1 << 20..]);
        let hashes = |d: &[u8]| {
            let mut c = Chunker::new(d, p);
            let mut v = std::collections::HashSet::new();
            while let Some((_, x)) = c.next_chunk().unwrap() {
                v.insert(Sha256::digest(x));
            }
            v
        };
        let (ha, hb) = (hashes(&a), hashes(&b));
        let shared = ha.intersection(&hb).count();
        assert!(shared + 2 >= ha.len(), "{shared} of {} shared", ha.len());
    }

    #[test]
    fn a_uniform_run_is_cut_at_max() {
        let p = CdcParams::DEFAULT;
        let lens = lengths(&vec![0u8; 1 << 20], p);
        assert_eq!(lens, vec![p.max as usize; 16]);
    }

    #[test]
    fn check_names_the_broken_rule() {
        let mut p = CdcParams::DEFAULT;
        p.avg = 15 << 10;
        assert_eq!(p.check(), Err("cdc_avg not a power of two"));
        p = CdcParams::DEFAULT;
        p.max = 8 << 20;
        assert_eq!(p.check(), Err("cdc_max above 4194304"));
        assert_eq!(CdcParams::DEFAULT.check(), Ok(()));
    }
}
