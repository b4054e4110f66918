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
//! it, and fetches its frame instead when the slot is damaged (or has changed).
//!
//! The target slot often still holds an older release, so it is indexed too
//! ([`LocalIndex::build_keeping_last`]) when the booted slot leaves chunks to fetch, and
//! [`plan_with_target`] takes a chunk the booted slot lacks from it, but only from an offset at
//! or after the one the chunk is written to ([`target_source_is_safe`]). Why that is safe:
//! [`apply`] hands chunks to the sink strictly in image order, each only after its own source
//! was read, and the installer's sink ([`super::SlotWriter::write_chunk`]) writes each chunk
//! at its own offset, at once or gathered with the chunks just before it (small chunks go to
//! the disk together, 1 MiB at a time; a `pwrite` into the page cache, whose writeback later
//! reads the same pages). So when the chunk at `w` is read, this run has changed the slot
//! only in `..w`: every write made or still pending belongs to a chunk before `w`, which
//! ends at or before `w`. A source at `s >= w` is therefore read
//! before anything of this run overwrites it. An interrupted earlier run may have written
//! chunks of this payload anywhere past its checkpoint: they are chunks of the new image,
//! and the SHA-256 check below decides. [`apply`] checks the rule again against what it has
//! written, whatever the plan says. The booted slot is preferred, since it is never written.
//!
//! [`apply`] carries a plan out, chunk by chunk in image order, handing every chunk to the
//! installer's sink only after its SHA-256 matched the signed table: a local chunk is read
//! from the booted or the target slot and checked, a fetched one is read from its range
//! ([`Fetcher`]: several ranges per request where the server answers multi-range requests,
//! see [`crate::source::HttpSource`]; reopened with `If-Range` after a failure) and decoded.
//! Memory: one frame and one chunk buffer.

use crate::install::byteranges::MAX_RANGES_PER_REQUEST;
use crate::payload::cdc::{CdcParams, Chunker};
use crate::payload::{self, ChunkDecoder, ChunkEntry, ReadError, Sha256Digest};
use crate::source::{ResumingReader, SourceError};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// How much of a slot is indexed first: a slot whose first bytes share no chunk with the payload
/// (empty, or another product) is not indexed further.
pub const INDEX_PROBE_BYTES: u64 = 8 << 20;

/// Frame bytes a slot's probe must save for the slot to be indexed whole.
pub const PROBE_WORTH_BYTES: u64 = 4096;

/// How far (in largest chunks) each part of a slot indexed in parallel runs into the next.
pub const INDEX_OVERLAP_CHUNKS: u64 = 8;

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
    /// A chunk found more than once is recorded at its first offset.
    pub fn build(slot: impl Read, len: u64, params: CdcParams) -> std::io::Result<LocalIndex> {
        LocalIndex::build_keeping(slot, len, params, false)
    }

    /// [`LocalIndex::build`] for the target slot: a chunk found more than once is recorded at
    /// its last offset, the one most likely still unwritten when the install needs it (see
    /// [`target_source_is_safe`]).
    pub fn build_keeping_last(
        slot: impl Read,
        len: u64,
        params: CdcParams,
    ) -> std::io::Result<LocalIndex> {
        LocalIndex::build_keeping(slot, len, params, true)
    }

    fn build_keeping(
        slot: impl Read,
        len: u64,
        params: CdcParams,
        last: bool,
    ) -> std::io::Result<LocalIndex> {
        let mut chunker = Chunker::new(slot.take(len), params);
        let mut chunks = HashMap::new();
        while let Some((at, bytes)) = chunker.next_chunk()? {
            let found = (at, bytes.len() as u32);
            let slot = chunks.entry(Sha256Digest::of(bytes)).or_insert(found);
            if last {
                *slot = found;
            }
        }
        Ok(LocalIndex { chunks })
    }

    /// [`Self::build`] of the `len` bytes at byte `base` of `file`, on `threads` threads (the
    /// index is most of a delta install's CPU time): each thread cuts one part of the slot, on
    /// past the start of the next part by [`INDEX_OVERLAP_CHUNKS`] × `max`, by which point its
    /// boundaries have almost always met the ones a single pass finds (once two cuts share a
    /// boundary they agree from there on); the parts' indexes are merged. A chunk whose
    /// boundaries did not meet is only missing from the index: it is fetched instead.
    /// With `keep_last` a chunk found more than once is recorded at its last offset, as
    /// [`Self::build_keeping_last`] does.
    pub fn build_slot(
        file: &File,
        base: u64,
        len: u64,
        params: CdcParams,
        threads: usize,
        keep_last: bool,
    ) -> std::io::Result<LocalIndex> {
        let threads = threads.max(1) as u64;
        let part = len.div_ceil(threads);
        let overlap = INDEX_OVERLAP_CHUNKS * u64::from(params.max);
        let parts: Vec<std::io::Result<LocalIndex>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let start = (t * part).min(len);
                    let end = ((t + 1) * part + overlap).min(len);
                    s.spawn(move || {
                        let mut index = LocalIndex::build_keeping(
                            SlotReader::new(file, base + start),
                            end - start,
                            params,
                            keep_last,
                        )?;
                        for (at, _) in index.chunks.values_mut() {
                            *at += start;
                        }
                        Ok(index)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("indexing thread panicked"))
                .collect()
        });
        let mut merged = LocalIndex::default();
        for part in parts {
            for (hash, found) in part?.chunks {
                let slot = merged.chunks.entry(hash).or_insert(found);
                if keep_last && found.0 > slot.0 {
                    *slot = found;
                }
            }
        }
        Ok(merged)
    }

    /// Whether the index holds nothing worth fetching less for: the frames of the `entries`
    /// it holds add up to fewer than [`PROBE_WORTH_BYTES`] (runs of zeros, say, are in most
    /// images and their frames are a few bytes).
    pub fn shares_none_with(&self, entries: &[ChunkEntry]) -> bool {
        let saved: u64 = entries
            .iter()
            .filter(|e| self.find(&e.sha256, e.image_len).is_some())
            .map(|e| u64::from(e.frame_len))
            .sum();
        saved < PROBE_WORTH_BYTES
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

/// Where a chunk the device already has is, as a byte offset into its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalChunk {
    /// In the booted slot.
    Booted(u64),
    /// In the target slot, at or after the chunk's own offset ([`target_source_is_safe`]).
    Target(u64),
}

/// Whether a target-slot chunk at `source_at` may supply the chunk written at `write_at`: the
/// install writes the target slot in image order, each chunk only after its source was read,
/// so when the chunk at `write_at` is read the slot differs from what was indexed at most in
/// `..write_at` (this run's writes) and wherever an interrupted run wrote (chunks of this
/// payload, which the hash check then finds). A source at or after `write_at` is read before
/// anything overwrites it; one before it may already be gone.
pub fn target_source_is_safe(source_at: u64, write_at: u64) -> bool {
    source_at >= write_at
}

/// What to do for the chunks of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaPlan {
    /// For each chunk in image order: where to copy it from, `None` to fetch it.
    pub sources: Vec<Option<LocalChunk>>,
    /// Payload byte ranges to fetch, ascending, disjoint, each covering whole frames.
    pub ranges: Vec<Range<u64>>,
    /// Bytes the ranges cover.
    pub fetch_bytes: u64,
    /// Image bytes copied from the booted slot.
    pub reuse_bytes: u64,
    /// Image bytes taken from the target slot (copied from elsewhere in it, or already in
    /// place).
    pub reuse_target_bytes: u64,
    /// Whether streaming the whole payload is cheaper than the ranges.
    pub full_download: bool,
}

/// Plans chunks `start..` of `entries` against the booted slot's index `local` (see the
/// module doc).
pub fn plan(entries: &[ChunkEntry], start: usize, local: &LocalIndex) -> DeltaPlan {
    plan_with_target(entries, start, local, None)
}

/// [`plan`], taking a chunk the booted slot lacks from the target slot's index `target` where
/// [`target_source_is_safe`] allows.
pub fn plan_with_target(
    entries: &[ChunkEntry],
    start: usize,
    local: &LocalIndex,
    target: Option<&LocalIndex>,
) -> DeltaPlan {
    let mut sources = Vec::with_capacity(entries.len());
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let (mut reuse_bytes, mut reuse_target_bytes) = (0, 0);
    for (i, e) in entries.iter().enumerate() {
        if i < start {
            sources.push(None);
            continue;
        }
        let found = local
            .find(&e.sha256, e.image_len)
            .map(LocalChunk::Booted)
            .or_else(|| {
                target
                    .and_then(|t| t.find(&e.sha256, e.image_len))
                    .filter(|&at| target_source_is_safe(at, e.image_offset))
                    .map(LocalChunk::Target)
            });
        sources.push(found);
        match found {
            Some(LocalChunk::Booted(_)) => reuse_bytes += u64::from(e.image_len),
            Some(LocalChunk::Target(_)) => reuse_target_bytes += u64::from(e.image_len),
            None => {}
        }
        if found.is_some() {
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
        reuse_target_bytes,
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
    /// Image bytes found already in place in the target slot (written by an interrupted run,
    /// or the same bytes at the same offset in the release the slot held), not written again.
    pub in_place_bytes: u64,
    /// Image bytes copied from elsewhere in the target slot (an older release still there)
    /// after their SHA-256 matched.
    pub reused_from_target_bytes: u64,
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

/// The slots [`apply`] reads: the booted one (local chunks) and the target (local chunks the
/// plan allows, and chunks already in place after an interruption), as (disk handle, byte
/// offset of the slot on it).
pub struct Slots<'a> {
    /// The booted slot.
    pub booted: (&'a File, u64),
    /// The target slot.
    pub target: (&'a File, u64),
    /// Whether an earlier run of this install may have written chunks past its checkpoint.
    pub resuming: bool,
    /// A publish-time patch for the booted version, consulted before fetching a chunk
    /// ([`super::patch`]).
    pub patch: Option<&'a super::patch::Patched<'a>>,
}

/// Reads frames of a payload from coalesced ranges: a request asks for the range holding the
/// first frame needed (from that frame on) and the ranges after it, up to
/// [`MAX_RANGES_PER_REQUEST`] ([`ResumingReader::seek_ranges`]: one multi-range request where
/// the server answers them, one request per range otherwise). Bytes up to the next frame needed
/// (frames whose chunk turned out local, the rest of a range) are read past when they are at
/// most [`MAX_GAP`], else that frame starts a new request.
pub struct Fetcher<'a> {
    reader: &'a mut ResumingReader,
    ranges: &'a [Range<u64>],
}

impl<'a> Fetcher<'a> {
    /// A fetcher of frames within `ranges` (frames outside them are fetched alone).
    pub fn new(reader: &'a mut ResumingReader, ranges: &'a [Range<u64>]) -> Fetcher<'a> {
        Fetcher { reader, ranges }
    }

    /// Reads the frame of chunk `index` into `buf`.
    pub fn frame(
        &mut self,
        index: u32,
        e: &ChunkEntry,
        buf: &mut Vec<u8>,
    ) -> Result<(), ReadError> {
        let want = e.payload_offset..e.payload_offset + u64::from(e.frame_len);
        match self.reader.reach(&want) {
            Some(gap) if gap <= MAX_GAP => {
                let at = self.reader.offset();
                let skipped =
                    std::io::copy(&mut (&mut *self.reader).take(gap), &mut std::io::sink())
                        .map_err(ReadError::Io)?;
                if skipped != gap {
                    return Err(ReadError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("range ended {skipped} bytes after offset {at}"),
                    )));
                }
            }
            _ => {
                let i = self.ranges.partition_point(|r| r.end <= want.start);
                match self.ranges.get(i) {
                    Some(r) if r.start <= want.start && want.end <= r.end => {
                        let batch: Vec<Range<u64>> = std::iter::once(want.start..r.end)
                            .chain(self.ranges[i + 1..].iter().cloned())
                            .take(MAX_RANGES_PER_REQUEST)
                            .collect();
                        self.reader.seek_ranges(&batch)
                    }
                    _ => self.reader.seek_range(want.clone()),
                }
                .map_err(ReadError::Io)?;
            }
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
    // The end of what this run wrote to the target slot: chunks go to the sink in image order.
    let mut written_end = entries.get(start as usize).map_or(0, |e| e.image_offset);
    for (i, e) in entries.iter().enumerate().skip(start as usize) {
        let index = i as u32;
        let local_err = |at: u64| move |source| ApplyError::Local { offset: at, source };
        let local = match plan.sources[i] {
            Some(LocalChunk::Booted(at)) => Some((slots.booted, at, "booted")),
            // Checked again here: the rule is what makes reading the target slot safe.
            Some(LocalChunk::Target(at)) if target_source_is_safe(at, written_end) => {
                Some((slots.target, at, "target"))
            }
            Some(LocalChunk::Target(_)) | None => None,
        };
        written_end = e.image_offset + u64::from(e.image_len);
        if let Some(((file, base), at, which)) = local {
            if read_checked(file, base, at, e, &mut chunk).map_err(local_err(base + at))? {
                let len = u64::from(e.image_len);
                decoder.feed(&chunk);
                match plan.sources[i] {
                    // Already where it goes (an interrupted run wrote it, or the older
                    // release has it there too): nothing to write.
                    Some(LocalChunk::Target(at)) if at == e.image_offset => {
                        stats.in_place_bytes += len;
                        sink(index, e, None).map_err(ApplyError::Sink)?;
                        continue;
                    }
                    Some(LocalChunk::Target(_)) => stats.reused_from_target_bytes += len,
                    _ => stats.reused_bytes += len,
                }
                sink(index, e, Some(&chunk)).map_err(ApplyError::Sink)?;
                continue;
            }
            stats.damaged_local_chunks += 1;
            log::warn!(
                "chunk {index}: the {which} slot's bytes at offset {at} no longer match its SHA-256; fetching it"
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

    pub(super) const P: CdcParams = CdcParams {
        min: 1024,
        avg: 2048,
        max: 8192,
    };

    pub(super) fn noise(len: usize, mut x: u32) -> Vec<u8> {
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
    pub(super) fn entries(image: &[u8], frame_len: u32) -> Vec<ChunkEntry> {
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
    fn a_slot_indexed_on_several_threads_finds_what_one_pass_finds() {
        use std::io::Write;
        let image = noise(400_000, 9);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0u8; 777]).unwrap();
        f.write_all(&image).unwrap();
        let one = LocalIndex::build(&image[..], image.len() as u64, P).unwrap();
        for threads in [1, 2, 3, 7] {
            let many =
                LocalIndex::build_slot(f.as_file(), 777, image.len() as u64, P, threads, false)
                    .unwrap();
            let missing = one
                .chunks
                .iter()
                .filter(|(h, (at, len))| many.find(h, *len) != Some(*at))
                .count();
            assert_eq!(missing, 0, "{threads} threads");
        }
    }

    #[test]
    fn an_index_shares_nothing_with_an_unrelated_image_and_something_with_its_successor() {
        let old = noise(100_000, 11);
        let mut new = old.clone();
        new[50_000..50_100].fill(0xaa);
        let local = LocalIndex::build(&old[..], old.len() as u64, P).unwrap();
        assert!(!local.shares_none_with(&entries(&new, 500)));
        assert!(local.shares_none_with(&entries(&noise(100_000, 12), 500)));
        // An empty slot shares runs of zeros with most images: not worth indexing whole.
        let zeros = LocalIndex::build(&vec![0u8; 100_000][..], 100_000, P).unwrap();
        let mut with_zeros = noise(100_000, 13);
        with_zeros.extend(vec![0u8; 20_000]);
        let e = entries(&with_zeros, 500);
        assert!(e
            .iter()
            .any(|c| zeros.find(&c.sha256, c.image_len).is_some()));
        assert!(zeros.shares_none_with(&e));
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
    pub(super) fn payload_of(image: &[u8]) -> (Vec<u8>, Vec<ChunkEntry>, payload::Manifest) {
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

#[cfg(test)]
mod target_tests {
    //! The target slot as a source: the rule, the plan, and `apply` writing into the very
    //! slot it reads from.
    use super::tests::{entries as entries_of, noise, payload_of, P};
    use super::*;

    #[test]
    fn a_target_chunk_is_safe_only_at_or_after_where_its_chunk_is_written() {
        // (source offset, write offset, safe)
        for (s, w, safe) in [
            (0, 0, true),
            (100, 0, true),
            (4096, 4096, true),
            (4097, 4096, true),
            (4095, 4096, false),
            (0, 1, false),
            (u64::MAX, u64::MAX - 1, true),
        ] {
            assert_eq!(target_source_is_safe(s, w), safe, "{s} {w}");
        }
    }

    /// An old image in the target slot, and a new one made of its second part then its first:
    /// chunks of the first part of the new image sit further on in the old one (safe), chunks
    /// of its second part sit before where they go (unsafe: overwritten by then).
    fn rotated() -> (Vec<u8>, Vec<u8>) {
        let old = noise(60_000, 21);
        let new = [&old[20_000..], &old[..20_000]].concat();
        (old, new)
    }

    #[test]
    fn the_plan_takes_target_chunks_only_where_the_rule_allows_and_prefers_the_booted_slot() {
        let (old, new) = rotated();
        let e = entries_of(&new, 500);
        let nothing = LocalIndex::build(&noise(60_000, 22)[..], 60_000, P).unwrap();
        let target = LocalIndex::build_keeping_last(&old[..], 60_000, P).unwrap();
        let p = plan_with_target(&e, 0, &nothing, Some(&target));
        assert!(p.reuse_target_bytes > 30_000, "{p:?}");
        assert_eq!(p.reuse_bytes, 0);
        for (c, src) in e.iter().zip(&p.sources) {
            if let Some(LocalChunk::Target(s)) = src {
                assert!(*s >= c.image_offset, "{c:?} from {s}");
            }
            // A chunk of the old image's first part (now after 40 000) is fetched.
            if c.image_offset >= 41_000 && target.find(&c.sha256, c.image_len).is_some() {
                assert_eq!(*src, None, "{c:?}");
            }
        }
        // The booted slot holding the same image wins.
        let booted = LocalIndex::build(&new[..], 60_000, P).unwrap();
        let p = plan_with_target(&e, 0, &booted, Some(&target));
        assert_eq!((p.reuse_bytes, p.reuse_target_bytes), (60_000, 0));
        // Without a target index, the plan is the booted-only one.
        assert_eq!(
            plan_with_target(&e, 0, &nothing, None),
            plan(&e, 0, &nothing)
        );
    }

    /// Applies `p` with a sink that writes into the target slot itself (as the installer
    /// does); the target slot afterwards.
    fn apply_into_target(
        old: &[u8],
        new: &[u8],
        p: &DeltaPlan,
        entries: &[ChunkEntry],
        payload: &[u8],
        manifest: &payload::Manifest,
    ) -> (Vec<u8>, DeltaStats) {
        use std::io::Write;
        let mut payload_file = tempfile::NamedTempFile::new().unwrap();
        payload_file.write_all(payload).unwrap();
        let disk = tempfile::NamedTempFile::new().unwrap();
        let (booted_at, target_at) = (0, 1 << 20);
        disk.as_file()
            .write_all_at(&noise(old.len(), 23), booted_at)
            .unwrap();
        disk.as_file().write_all_at(old, target_at).unwrap();
        let source = crate::source::FileSource::open(payload_file.path()).unwrap();
        let mut reader =
            ResumingReader::new(Box::new(source), 0, crate::source::RetryPolicy::default())
                .unwrap();
        let slots = Slots {
            booted: (disk.as_file(), booted_at),
            target: (disk.as_file(), target_at),
            resuming: false,
            patch: None,
        };
        let mut stats = DeltaStats::default();
        let file = disk.as_file();
        let mut sink = |_: u32, e: &ChunkEntry, data: Option<&[u8]>| -> Result<(), ()> {
            if let Some(data) = data {
                file.write_all_at(data, target_at + e.image_offset).unwrap();
            }
            Ok(())
        };
        let mut decoder = ChunkDecoder::for_manifest(manifest).unwrap();
        let applied = apply(
            entries,
            0,
            p,
            &slots,
            &mut reader,
            &mut decoder,
            &mut stats,
            &mut sink,
        )
        .unwrap();
        assert_eq!(applied, Applied::Done);
        let mut out = vec![0u8; new.len()];
        file.read_exact_at(&mut out, target_at).unwrap();
        (out, stats)
    }

    #[test]
    fn apply_reads_target_chunks_before_overwriting_them_and_the_slot_ends_up_the_new_image() {
        let (old, new) = rotated();
        let (payload, entries, manifest) = payload_of(&new);
        let nothing = LocalIndex::default();
        let target = LocalIndex::build_keeping_last(&old[..], 60_000, P).unwrap();
        let p = plan_with_target(&entries, 0, &nothing, Some(&target));
        assert!(p.reuse_target_bytes > 30_000, "{p:?}");
        let (slot, stats) = apply_into_target(&old, &new, &p, &entries, &payload, &manifest);
        assert!(slot == new);
        assert_eq!(
            stats.reused_from_target_bytes + stats.in_place_bytes,
            p.reuse_target_bytes
        );
        assert_eq!(stats.damaged_local_chunks, 0);
    }

    #[test]
    fn apply_refuses_a_target_chunk_the_rule_forbids_and_fetches_it() {
        let (old, new) = rotated();
        let (payload, entries, manifest) = payload_of(&new);
        let target = LocalIndex::build_keeping_last(&old[..], 60_000, P).unwrap();
        // A plan that breaks the rule: every chunk the old image has, wherever it is.
        let mut p = plan_with_target(&entries, 0, &LocalIndex::default(), Some(&target));
        let mut forced = 0;
        for (c, src) in entries.iter().zip(p.sources.iter_mut()) {
            if let (None, Some(s)) = (*src, target.find(&c.sha256, c.image_len)) {
                assert!(s < c.image_offset);
                *src = Some(LocalChunk::Target(s));
                forced += 1;
            }
        }
        assert!(forced > 0);
        // Read from where the new image's first part now is, these chunks would be wrong;
        // apply skips them (not counted as damaged) and fetches their frames alone.
        let (slot, stats) = apply_into_target(&old, &new, &p, &entries, &payload, &manifest);
        assert!(slot == new);
        assert_eq!(stats.damaged_local_chunks, 0);
        assert!(stats.reused_from_target_bytes < 60_000);
    }
}
