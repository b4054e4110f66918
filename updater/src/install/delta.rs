//! Planning a delta install of a version 2 payload: which of its chunks the device already
//! holds, and which byte ranges of the payload it must fetch for the rest.
//!
//! The device indexes a slot it already has (the booted one) by cutting it with the payload's
//! own chunking parameters ([`LocalIndex::build`], the rule of `ab_payload::cdc`): unchanged
//! regions of the image give the same chunks, found by SHA-256. No manifest of the booted
//! version needs to be kept, and a slot written by a version 1 payload or at the factory is
//! indexed the same way. The index holds offsets and hashes only (about 48 bytes a chunk).
//!
//! [`plan`] then lists, in image order, the chunks to copy from the local slot and the payload
//! byte ranges holding the frames of the others, coalesced: frames of consecutive missing
//! chunks are adjacent in the payload, and ranges closer than [`MAX_GAP`] are merged (fetching
//! the few bytes between costs less than another range). When the ranges would cost nearly as
//! much as the whole payload ([`FULL_DOWNLOAD_RATIO`]) the plan says to stream it whole.
//! A local chunk is a hint, not a fact: the installer verifies its SHA-256 again when it copies
//! it, and fetches its frame instead when the slot is damaged.
//!
//! [`apply`] carries a plan out, chunk by chunk in image order, handing every chunk to the
//! installer's sink only after its SHA-256 matched the signed table: a local chunk is read
//! from the booted slot and checked, a fetched one is read from its range ([`Fetcher`], one
//! single-range request per coalesced range, reopened with `If-Range` after a failure) and
//! decoded. Memory: one frame and one chunk buffer.

use crate::payload::cdc::{CdcParams, Chunker};
use crate::payload::{self, ChunkDecoder, ChunkEntry, ReadError, Sha256Digest};
use crate::source::{ResumingReader, SourceError};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// Ranges whose gap is at most this many bytes are fetched as one.
pub const MAX_GAP: u64 = 16 << 10;
/// Stream the whole payload when the planned ranges reach this share of its frames.
pub const FULL_DOWNLOAD_RATIO: f64 = 0.8;

/// Where each chunk of a local slot is, by SHA-256.
#[derive(Debug, Default)]
pub struct LocalIndex {
    chunks: HashMap<Sha256Digest, (u64, u32)>,
}

impl LocalIndex {
    /// Cuts `slot` (read from its start, at most `len` bytes) with `params` and records each
    /// chunk's offset and length by its SHA-256. Memory: the chunker's buffer and the index.
    pub fn build(slot: impl Read, len: u64, params: CdcParams) -> std::io::Result<LocalIndex> {
        let mut chunker = Chunker::new(slot.take(len), params);
        let mut chunks = HashMap::new();
        while let Some((at, bytes)) = chunker.next_chunk()? {
            chunks
                .entry(Sha256Digest::of(bytes))
                .or_insert((at, bytes.len() as u32));
        }
        Ok(LocalIndex { chunks })
    }

    /// The local offset of a chunk with this hash and length, if the slot has one.
    pub fn find(&self, sha256: &Sha256Digest, len: u32) -> Option<u64> {
        self.chunks
            .get(sha256)
            .filter(|(_, l)| *l == len)
            .map(|(at, _)| *at)
    }

    /// Number of distinct chunks indexed.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// What to do for the chunks of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaPlan {
    /// For each chunk in image order: `Some(local offset)` to copy it, `None` to fetch it.
    pub sources: Vec<Option<u64>>,
    /// Payload byte ranges to fetch, ascending, disjoint, each covering whole frames.
    pub ranges: Vec<Range<u64>>,
    /// Bytes the ranges cover.
    pub fetch_bytes: u64,
    /// Image bytes copied from the local slot.
    pub reuse_bytes: u64,
    /// Whether streaming the whole payload is cheaper than the ranges.
    pub full_download: bool,
}

/// Plans chunks `start..` of `entries` against `local` (see the module doc).
pub fn plan(entries: &[ChunkEntry], start: usize, local: &LocalIndex) -> DeltaPlan {
    let mut sources = Vec::with_capacity(entries.len());
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut reuse_bytes = 0;
    for (i, e) in entries.iter().enumerate() {
        if i < start {
            sources.push(None);
            continue;
        }
        let found = local.find(&e.sha256, e.image_len);
        sources.push(found);
        if found.is_some() {
            reuse_bytes += u64::from(e.image_len);
            continue;
        }
        let frame = e.payload_offset..e.payload_offset + u64::from(e.frame_len);
        match ranges.last_mut() {
            Some(last) if frame.start <= last.end + MAX_GAP => last.end = frame.end,
            _ => ranges.push(frame),
        }
    }
    let fetch_bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    let frames: u64 = entries[start.min(entries.len())..]
        .iter()
        .map(|e| u64::from(e.frame_len))
        .sum();
    DeltaPlan {
        full_download: frames > 0 && fetch_bytes as f64 >= frames as f64 * FULL_DOWNLOAD_RATIO,
        sources,
        ranges,
        fetch_bytes,
        reuse_bytes,
    }
}

/// A reader of a slot from its start: `Read` by positioned reads of a shared disk handle.
pub struct SlotReader<'a> {
    file: &'a File,
    at: u64,
}

impl<'a> SlotReader<'a> {
    /// Reads `file` from byte `at` on.
    pub fn new(file: &'a File, at: u64) -> SlotReader<'a> {
        SlotReader { file, at }
    }
}

impl Read for SlotReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// What [`apply`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeltaStats {
    /// Image bytes copied from the booted slot after their SHA-256 matched.
    pub reused_bytes: u64,
    /// Image bytes found already in place in the target slot (a resumed install).
    pub in_place_bytes: u64,
    /// Local chunks whose bytes no longer matched their hash, fetched instead.
    pub damaged_local_chunks: u32,
    /// The server answered a range request with the whole payload, which was then streamed.
    pub ranges_ignored: bool,
}

/// How [`apply`] ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Every chunk went to the sink.
    Done,
    /// The server answered a range request with the whole payload: chunks from this index on
    /// must come from streaming the payload whole.
    RangesIgnored(u32),
}

/// Why [`apply`] stopped.
#[derive(Debug)]
pub enum ApplyError<E> {
    /// A fetched frame is bad (its chunk index is in the error).
    Payload(payload::PayloadError),
    /// Reading the payload failed at this offset.
    Read {
        /// Payload offset.
        offset: u64,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading the booted slot failed at this byte of the disk.
    Local {
        /// Byte offset on the disk.
        offset: u64,
        /// The cause.
        source: std::io::Error,
    },
    /// The sink failed.
    Sink(E),
}

/// The slots [`apply`] reads: the booted one (local chunks) and the target (chunks already in
/// place after an interruption), as (disk handle, byte offset of the slot on it).
pub struct Slots<'a> {
    /// The booted slot.
    pub booted: (&'a File, u64),
    /// The target slot, checked only when `resuming`.
    pub target: (&'a File, u64),
    /// Whether an earlier run of this install may have written chunks past its checkpoint.
    pub resuming: bool,
    /// A publish-time patch for the booted version, consulted before fetching a chunk
    /// ([`super::patch`]).
    pub patch: Option<&'a super::patch::Patched<'a>>,
}

/// Reads frames of a payload from coalesced ranges: each range is one request from the first
/// frame needed in it; frames skipped inside a range (their chunk was local) are read past
/// when the gap is at most [`MAX_GAP`], else the next frame starts a new request.
pub struct Fetcher<'a> {
    reader: &'a mut ResumingReader,
    ranges: &'a [Range<u64>],
    open_end: Option<u64>,
}

impl<'a> Fetcher<'a> {
    /// A fetcher of frames within `ranges` (frames outside them are fetched alone).
    pub fn new(reader: &'a mut ResumingReader, ranges: &'a [Range<u64>]) -> Fetcher<'a> {
        Fetcher {
            reader,
            ranges,
            open_end: None,
        }
    }

    /// Reads the frame of chunk `index` into `buf`.
    pub fn frame(
        &mut self,
        index: u32,
        e: &ChunkEntry,
        buf: &mut Vec<u8>,
    ) -> Result<(), ReadError> {
        let want = e.payload_offset..e.payload_offset + u64::from(e.frame_len);
        let at = self.reader.offset();
        let in_open = self
            .open_end
            .is_some_and(|end| at <= want.start && want.end <= end && want.start - at <= MAX_GAP);
        if in_open {
            let gap = want.start - at;
            let skipped = std::io::copy(&mut (&mut *self.reader).take(gap), &mut std::io::sink())
                .map_err(ReadError::Io)?;
            if skipped != gap {
                return Err(ReadError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("range ended at offset {}", at + skipped),
                )));
            }
        } else {
            let i = self.ranges.partition_point(|r| r.end <= want.start);
            let end = match self.ranges.get(i) {
                Some(r) if r.start <= want.start && want.end <= r.end => r.end,
                _ => want.end,
            };
            self.reader
                .seek_range(want.start..end)
                .map_err(ReadError::Io)?;
            self.open_end = Some(end);
        }
        payload::read_frame(self.reader, index, e, buf)
    }
}

/// Whether an error says the server sent the whole payload for a range request.
fn is_range_ignored(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<SourceError>()),
        Some(SourceError::RangeNotHonoured { .. })
    )
}

/// Reads `e`'s bytes from `file` at `base + at` into `buf`; whether they match its SHA-256.
fn read_checked(
    file: &File,
    base: u64,
    at: u64,
    e: &ChunkEntry,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    buf.resize(e.image_len as usize, 0);
    file.read_exact_at(buf, base + at)?;
    Ok(Sha256Digest::of(buf) == e.sha256)
}

/// Receives each chunk of a delta install in order: its index, table entry, and verified
/// bytes to write, or `None` when the target slot already holds them.
pub type DeltaSink<'a, E> = dyn FnMut(u32, &ChunkEntry, Option<&[u8]>) -> Result<(), E> + 'a;

/// Carries `plan` out for chunks `start..` of `entries` (see the module doc): `sink(index,
/// entry, Some(bytes))` for each verified chunk to write, `sink(index, entry, None)` for a
/// chunk already in place in the target slot. Every chunk passes through `decoder` in order
/// (fed when it was not decoded), so frames that reference the bytes before them decode;
/// after [`Applied::RangesIgnored`] the decoder has seen every chunk before the one returned.
#[allow(clippy::too_many_arguments)]
pub fn apply<E>(
    entries: &[ChunkEntry],
    start: u32,
    plan: &DeltaPlan,
    slots: &Slots<'_>,
    reader: &mut ResumingReader,
    decoder: &mut ChunkDecoder,
    stats: &mut DeltaStats,
    sink: &mut DeltaSink<'_, E>,
) -> Result<Applied, ApplyError<E>> {
    let mut fetcher = Fetcher::new(reader, &plan.ranges);
    let (mut frame, mut chunk) = (Vec::new(), Vec::new());
    for (i, e) in entries.iter().enumerate().skip(start as usize) {
        let index = i as u32;
        let local_err = |at: u64| move |source| ApplyError::Local { offset: at, source };
        if let Some(at) = plan.sources[i] {
            let (file, base) = slots.booted;
            if read_checked(file, base, at, e, &mut chunk).map_err(local_err(base + at))? {
                stats.reused_bytes += u64::from(e.image_len);
                decoder.feed(&chunk);
                sink(index, e, Some(&chunk)).map_err(ApplyError::Sink)?;
                continue;
            }
            stats.damaged_local_chunks += 1;
            log::warn!(
                "chunk {index}: the booted slot's bytes at offset {at} no longer match its SHA-256; fetching it"
            );
        } else if slots.resuming {
            let (file, base) = slots.target;
            if read_checked(file, base, e.image_offset, e, &mut chunk)
                .map_err(local_err(base + e.image_offset))?
            {
                stats.in_place_bytes += u64::from(e.image_len);
                decoder.feed(&chunk);
                sink(index, e, None).map_err(ApplyError::Sink)?;
                continue;
            }
        }
        // A publish-time patch may hold the chunk (checked against its SHA-256; else fetched).
        if slots.patch.is_some_and(|p| p.chunk(index, e, &mut chunk)) {
            decoder.feed(&chunk);
            sink(index, e, Some(&chunk)).map_err(ApplyError::Sink)?;
            continue;
        }
        match fetcher.frame(index, e, &mut frame) {
            Ok(()) => {}
            Err(ReadError::Io(err)) if is_range_ignored(&err) => {
                return Ok(Applied::RangesIgnored(index))
            }
            Err(ReadError::Io(source)) => {
                return Err(ApplyError::Read {
                    offset: fetcher.reader.offset(),
                    source,
                })
            }
            Err(ReadError::Payload(p)) => return Err(ApplyError::Payload(p)),
        }
        decoder
            .decode(index, e, &frame, &mut chunk)
            .map_err(ApplyError::Payload)?;
        sink(index, e, Some(&chunk)).map_err(ApplyError::Sink)?;
    }
    Ok(Applied::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: CdcParams = CdcParams {
        min: 1024,
        avg: 2048,
        max: 8192,
    };

    fn noise(len: usize, mut x: u32) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// The entries of `image` cut with `P`, each frame `frame_len` bytes long.
    fn entries(image: &[u8], frame_len: u32) -> Vec<ChunkEntry> {
        let mut c = Chunker::new(image, P);
        let mut out = Vec::new();
        let mut payload_offset = 1000;
        while let Some((at, b)) = c.next_chunk().unwrap() {
            out.push(ChunkEntry {
                image_offset: at,
                payload_offset,
                image_len: b.len() as u32,
                frame_len,
                sha256: Sha256Digest::of(b),
            });
            payload_offset += u64::from(frame_len);
        }
        out
    }

    #[test]
    fn an_unchanged_image_is_copied_whole_and_fetches_nothing() {
        let image = noise(100_000, 1);
        let local = LocalIndex::build(&image[..], image.len() as u64, P).unwrap();
        let e = entries(&image, 500);
        let p = plan(&e, 0, &local);
        assert!(p.sources.iter().all(Option::is_some));
        assert_eq!((p.fetch_bytes, p.reuse_bytes), (0, 100_000));
        assert!(p.ranges.is_empty() && !p.full_download);
    }

    #[test]
    fn a_changed_region_is_fetched_as_one_coalesced_range() {
        let old = noise(200_000, 2);
        let mut new = old.clone();
        new[100_000..100_100].fill(0xaa);
        let local = LocalIndex::build(&old[..], old.len() as u64, P).unwrap();
        let e = entries(&new, 500);
        let p = plan(&e, 0, &local);
        let missing: Vec<usize> = (0..e.len()).filter(|&i| p.sources[i].is_none()).collect();
        assert!(!missing.is_empty() && missing.len() <= 3, "{missing:?}");
        assert_eq!(p.ranges.len(), 1, "{:?}", p.ranges);
        assert_eq!(p.fetch_bytes, 500 * missing.len() as u64);
        assert!(!p.full_download);
    }

    #[test]
    fn a_local_chunk_of_another_length_is_not_reused() {
        let image = noise(50_000, 3);
        let local = LocalIndex::build(&image[..], image.len() as u64, P).unwrap();
        let e = entries(&image, 500);
        assert_eq!(local.find(&e[0].sha256, e[0].image_len + 1), None);
        assert_eq!(local.find(&e[0].sha256, e[0].image_len), Some(0));
    }

    #[test]
    fn nothing_in_common_means_a_full_download() {
        let local = LocalIndex::build(&noise(50_000, 4)[..], 50_000, P).unwrap();
        let e = entries(&noise(50_000, 5), 500);
        let p = plan(&e, 0, &local);
        assert!(p.full_download);
        assert_eq!(p.ranges, vec![1000..1000 + 500 * e.len() as u64]);
    }

    #[test]
    fn chunks_before_the_resume_point_are_neither_fetched_nor_copied() {
        let local = LocalIndex::default();
        let e = entries(&noise(50_000, 6), 500);
        let p = plan(&e, 3, &local);
        assert_eq!(p.ranges[0].start, 1000 + 3 * 500);
        assert_eq!(p.reuse_bytes, 0);
    }

    /// A signed format 2 payload of `image` cut with `P`, its chunk table and manifest.
    fn payload_of(image: &[u8]) -> (Vec<u8>, Vec<ChunkEntry>, payload::Manifest) {
        use crate::payload::writer::{PackOptions, PayloadParts};
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let opts = PackOptions {
            compatible: "testbox".into(),
            version: "2.0".into(),
            created: 0,
            expires: None,
            chunk_size: 4096,
            level: 3,
            threads: 1,
        };
        let bytes = PayloadParts::from_image_v2(image, &opts, P)
            .unwrap()
            .assemble(std::slice::from_ref(&key));
        let keys = crate::payload::TrustedKeys::new([key.verifying_key()]);
        let prelude = crate::payload::read_prelude(&mut &bytes[..], &keys).unwrap();
        (bytes, prelude.chunks.entries, prelude.manifest)
    }

    #[test]
    fn a_local_chunk_damaged_after_indexing_is_fetched_and_the_sink_gets_the_signed_bytes() {
        use std::io::Write;
        let image = noise(60_000, 7);
        let (payload, entries, manifest) = payload_of(&image);
        let mut payload_file = tempfile::NamedTempFile::new().unwrap();
        payload_file.write_all(&payload).unwrap();
        let base = 4096;
        let slot = tempfile::NamedTempFile::new().unwrap();
        slot.as_file().write_all_at(&image, base).unwrap();
        let local = LocalIndex::build(SlotReader::new(slot.as_file(), base), 60_000, P).unwrap();
        let p = plan(&entries, 0, &local);
        assert!(p.ranges.is_empty() && p.sources.iter().all(Option::is_some));
        // The slot changes after it was indexed.
        slot.as_file()
            .write_all_at(&[!image[30_000]], base + 30_000)
            .unwrap();
        let damaged = entries
            .iter()
            .find(|e| e.image_offset <= 30_000 && 30_000 < e.image_offset + u64::from(e.image_len))
            .unwrap();

        let source = crate::source::FileSource::open(payload_file.path()).unwrap();
        let mut reader =
            ResumingReader::new(Box::new(source), 0, crate::source::RetryPolicy::default())
                .unwrap();
        let slots = Slots {
            booted: (slot.as_file(), base),
            target: (slot.as_file(), base),
            resuming: false,
            patch: None,
        };
        let mut stats = DeltaStats::default();
        let mut out = vec![0u8; image.len()];
        let mut sink = |_: u32, e: &ChunkEntry, data: Option<&[u8]>| -> Result<(), ()> {
            let at = e.image_offset as usize;
            out[at..at + data.unwrap().len()].copy_from_slice(data.unwrap());
            Ok(())
        };
        let mut decoder = ChunkDecoder::for_manifest(&manifest).unwrap();
        let applied = apply(
            &entries,
            0,
            &p,
            &slots,
            &mut reader,
            &mut decoder,
            &mut stats,
            &mut sink,
        )
        .unwrap();
        assert_eq!(applied, Applied::Done);
        assert_eq!(stats.damaged_local_chunks, 1);
        assert_eq!(
            stats.reused_bytes,
            image.len() as u64 - u64::from(damaged.image_len)
        );
        assert!(out == image);
    }
}
