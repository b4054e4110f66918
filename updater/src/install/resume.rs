//! Resuming the write of a payload whose frames reference the image bytes before them
//! (version 2 with a prefix): before the first frame after the resume point decodes, the
//! decoder must hold those bytes. They are read back from the target slot, where the
//! interrupted run wrote them, and each chunk is checked against the signed table first: a
//! chunk that no longer matches moves the resume point back to it, so the install rewrites
//! from there instead of decoding against damaged bytes.

use crate::payload::{ChunkDecoder, ChunkEntry, Sha256Digest};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Feeds `decoder` the (up to) `prefix_len` image bytes before chunk `start`, read from the
/// target slot at byte offset `base` of `disk`. Returns the chunk to resume from: `start`, or
/// the first earlier chunk whose bytes no longer match its SHA-256. A decoder of independent
/// frames needs nothing and is returned `start` unread.
pub fn prime(
    decoder: &mut ChunkDecoder,
    prefix_len: u32,
    disk: &File,
    base: u64,
    entries: &[ChunkEntry],
    mut start: u32,
) -> std::io::Result<u32> {
    if !decoder.is_sequential() {
        return Ok(start);
    }
    let mut chunk = Vec::new();
    'again: loop {
        let Some(end) = entries.get(start as usize).map(|e| e.image_offset) else {
            // Every chunk is in place: nothing is left to decode.
            return Ok(start);
        };
        let from = end.saturating_sub(u64::from(prefix_len));
        let first = entries.partition_point(|e| e.image_offset + u64::from(e.image_len) <= from);
        let mut bytes = Vec::with_capacity((end - from) as usize);
        for (i, e) in entries.iter().enumerate().take(start as usize).skip(first) {
            chunk.resize(e.image_len as usize, 0);
            disk.read_exact_at(&mut chunk, base + e.image_offset)?;
            if Sha256Digest::of(&chunk) != e.sha256 {
                log::warn!(
                    "chunk {i} written before the interruption no longer matches its SHA-256: \
                     resuming from it"
                );
                start = i as u32;
                continue 'again;
            }
            bytes.extend_from_slice(&chunk);
        }
        let skip = (from - entries.get(first).map_or(from, |e| e.image_offset)) as usize;
        decoder.feed(&bytes[skip.min(bytes.len())..]);
        return Ok(start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::cdc::CdcParams;
    use crate::payload::writer::{PackOptions, PayloadParts};

    const P: CdcParams = CdcParams {
        min: 1024,
        avg: 2048,
        max: 8192,
    };

    fn image() -> Vec<u8> {
        let unit: Vec<u8> = (0..5000u32)
            .map(|i| (i * 31 % 251) as u8 ^ (i >> 7) as u8)
            .collect();
        unit.iter().cycle().take(60_000).copied().collect()
    }

    fn parts(image: &[u8]) -> PayloadParts {
        let opts = PackOptions {
            compatible: "testbox".into(),
            version: "2.0".into(),
            created: 0,
            expires: None,
            chunk_size: 4096,
            level: 3,
            threads: 1,
        };
        PayloadParts::from_image_v2_prefixed(image, &opts, P, 8192).unwrap()
    }

    /// A target slot file at offset 512 holding `image`.
    fn slot(image: &[u8]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().write_all_at(image, 512).unwrap();
        f
    }

    fn decode_rest(p: &PayloadParts, mut d: ChunkDecoder, from: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut all = Vec::new();
        for i in from as usize..p.entries.len() {
            d.decode(i as u32, &p.entries[i], &p.frames[i], &mut out)
                .unwrap();
            all.extend_from_slice(&out);
        }
        all
    }

    #[test]
    fn a_primed_decoder_decodes_the_frames_after_the_resume_point() {
        let image = image();
        let p = parts(&image);
        let start = (p.entries.len() / 2) as u32;
        let disk = slot(&image);
        let mut d = ChunkDecoder::for_manifest(&p.manifest).unwrap();
        let got = prime(&mut d, 8192, disk.as_file(), 512, &p.entries, start).unwrap();
        assert_eq!(got, start);
        let at = p.entries[start as usize].image_offset as usize;
        assert!(decode_rest(&p, d, start) == image[at..]);
    }

    #[test]
    fn a_damaged_chunk_before_the_resume_point_moves_it_back() {
        let image = image();
        let p = parts(&image);
        let start = (p.entries.len() - 1) as u32;
        let damaged = start as usize - 1;
        let mut on_disk = image.clone();
        on_disk[p.entries[damaged].image_offset as usize] ^= 0xff;
        let disk = slot(&on_disk);
        let mut d = ChunkDecoder::for_manifest(&p.manifest).unwrap();
        let got = prime(&mut d, 8192, disk.as_file(), 512, &p.entries, start).unwrap();
        assert_eq!(got as usize, damaged);
        let at = p.entries[damaged].image_offset as usize;
        assert!(decode_rest(&p, d, got) == image[at..]);
    }

    #[test]
    fn independent_frames_need_no_priming() {
        let mut d = ChunkDecoder::new().unwrap();
        let empty = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(prime(&mut d, 8192, empty.as_file(), 0, &[], 7).unwrap(), 7);
    }
}
