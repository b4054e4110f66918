//! Making a patch (publisher side, feature `writer`): from a base image, the target image and
//! the target's signed version 2 payload.
//!
//! [`make_patch`] cuts the base with the payload's own chunking parameters and indexes its
//! chunks by SHA-256 (one streaming pass, which also hashes the base), then walks the payload's
//! chunk table: each run of chunks the base lacks is anchored between the neighbouring chunks
//! the base has, whose base offsets bound the old version of the same bytes. A run is split so
//! that no record outputs more than [`MAX_PATCH_OUTPUT_LEN`], each piece is given the
//! proportional part of the old region (widened by [`REGION_MARGIN`] each side, at most
//! [`MAX_PATCH_BASE_LEN`]) as zstd raw-content prefix, and compressed at a high level: in
//! effect `zstd --patch-from`. A record is kept only if its frame is smaller than the payload's
//! frames of the same chunks. Memory: the base index (about 48 bytes a chunk), per thread one
//! base region and one output, and the patch itself (at most [`MAX_PATCH_LEN`]).

use super::{
    PatchError, PatchHeader, PatchManifest, PatchRecord, MAX_PATCH_BASE_LEN, MAX_PATCH_LEN,
    MAX_PATCH_OUTPUT_LEN, MAX_PATCH_RECORDS, MAX_PATCH_WINDOW_LOG, PATCH_HEADER_LEN,
    PATCH_RECORD_LEN,
};
use crate::cdc::Chunker;
use crate::{Sha256Digest, VerifiedPrelude, SIGNATURE_RECORD_LEN};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

/// The zstd level `image-tools patch` uses unless told otherwise.
pub const DEFAULT_PATCH_LEVEL: i32 = 19;
/// Base bytes added on each side of the old region a record is compressed against: the old
/// version of a file rarely sits exactly between the unchanged chunks around it.
pub const REGION_MARGIN: u64 = 64 << 10;

/// How to make a patch.
#[derive(Debug, Clone)]
pub struct PatchOptions {
    /// The base image's `IMAGE_VERSION` (names the patch file).
    pub base_version: String,
    /// Creation time (Unix seconds).
    pub created: u64,
    /// zstd level (1..=22).
    pub level: i32,
    /// Compression threads.
    pub threads: usize,
}

/// What [`make_patch`] made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchSummary {
    /// Target chunks the base lacks.
    pub missing_chunks: u32,
    /// Their payload frames' bytes (what a plain delta fetches for them).
    pub missing_frame_bytes: u64,
    /// Records written.
    pub records: u32,
    /// Chunks the records cover.
    pub covered_chunks: u32,
    /// Payload frame bytes of the covered chunks (replaced by the records' frames).
    pub replaced_frame_bytes: u64,
    /// Bytes of the records' frames.
    pub record_frame_bytes: u64,
    /// Bytes of the patch file.
    pub patch_len: u64,
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> PatchError {
    let action = action.into();
    move |source| PatchError::Io { action, source }
}

fn refuse(action: String) -> PatchError {
    PatchError::Io {
        action,
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    }
}

/// Reads a file from its start by positioned reads (whatever its handle's position).
struct FromStart<'a> {
    file: &'a File,
    at: u64,
}

impl Read for FromStart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    len: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// One record to try: target chunks `first..first + count` (image bytes `out_at..+out_len`)
/// against base bytes `base_at..+base_len`.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    first: u32,
    count: u32,
    out_at: u64,
    out_len: u32,
    base_at: u64,
    base_len: u32,
}

/// Makes the patch from `base` (read whole) to the image of `prelude`'s payload, whose bytes
/// `target` holds (checked against the signed image SHA-256), signed with `keys`. Returns the
/// patch file's bytes. `progress(done, total)` reports the records compressed.
pub fn make_patch(
    base: &File,
    target: &File,
    prelude: &VerifiedPrelude,
    keys: &[SigningKey],
    opts: &PatchOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(Vec<u8>, PatchSummary), PatchError> {
    let m = &prelude.manifest;
    let Some(params) = m.cdc else {
        return Err(refuse(
            "making a patch for a format 1 payload (patches need format 2)".into(),
        ));
    };
    if !super::version_is_file_safe(&opts.base_version) {
        return Err(PatchError::BadVersion {
            found: opts.base_version.clone(),
        });
    }
    if keys.is_empty() || keys.len() > crate::MAX_SIGNATURES {
        return Err(refuse(format!(
            "signing with {} keys (1 to {})",
            keys.len(),
            crate::MAX_SIGNATURES
        )));
    }
    check_target(target, prelude)?;

    // The base: its chunks by hash, its size and hash, in one pass.
    let mut hashing = Hashing {
        inner: std::io::BufReader::with_capacity(1 << 20, FromStart { file: base, at: 0 }),
        hash: Sha256::new(),
        len: 0,
    };
    let mut index: HashMap<Sha256Digest, (u64, u32)> = HashMap::new();
    {
        let mut chunker = Chunker::new(&mut hashing, params);
        while let Some((at, bytes)) = chunker.next_chunk().map_err(io("reading the base image"))? {
            index
                .entry(Sha256Digest::of(bytes))
                .or_insert((at, bytes.len() as u32));
        }
    }
    let base_size = hashing.len;
    let base_sha256 = Sha256Digest(hashing.hash.finalize().into());

    let entries = &prelude.chunks.entries;
    let found: Vec<Option<(u64, u32)>> = entries
        .iter()
        .map(|e| {
            index
                .get(&e.sha256)
                .copied()
                .filter(|&(_, len)| len == e.image_len)
        })
        .collect();
    drop(index);
    let mut summary = PatchSummary::default();
    let mut candidates = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        if found[i].is_some() {
            i += 1;
            continue;
        }
        let first = i;
        while i < entries.len() && found[i].is_none() {
            summary.missing_chunks += 1;
            summary.missing_frame_bytes += u64::from(entries[i].frame_len);
            i += 1;
        }
        if base_size > 0 {
            let left = first.checked_sub(1).and_then(|j| found[j]);
            let right = found.get(i).copied().flatten();
            split_run(entries, first..i, left, right, base_size, &mut candidates);
        }
    }

    // Compress on all threads; each reads its own regions.
    let done = std::sync::atomic::AtomicU64::new(0);
    let total = candidates.len() as u64;
    let frames = crate::writer::map_parallel(
        opts.threads,
        &candidates,
        || (Vec::new(), Vec::new()),
        |(old, new), _, c| {
            let f = compress(base, target, c, opts.level, old, new);
            progress(
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                total,
            );
            f
        },
    );

    let mut records = Vec::new();
    let mut kept_frames = Vec::new();
    let budget = MAX_PATCH_LEN
        - (PATCH_HEADER_LEN + super::MAX_PATCH_MANIFEST_LEN + crate::MAX_SIGNATURE_BLOCK_LEN)
            as u64;
    let mut used = 0u64;
    for (c, frame) in candidates.iter().zip(frames) {
        let frame = frame?;
        let run = &entries[c.first as usize..(c.first + c.count) as usize];
        let payload_bytes: u64 = run.iter().map(|e| u64::from(e.frame_len)).sum();
        let cost = (frame.len() + PATCH_RECORD_LEN) as u64;
        if frame.len() as u64 >= payload_bytes
            || records.len() as u32 >= MAX_PATCH_RECORDS
            || used + cost > budget
        {
            continue;
        }
        let mut old = vec![0u8; c.base_len as usize];
        base.read_exact_at(&mut old, c.base_at)
            .map_err(io(format!("reading base bytes at {}", c.base_at)))?;
        records.push(PatchRecord {
            first_chunk: c.first,
            chunk_count: c.count,
            base_offset: c.base_at,
            base_len: c.base_len,
            frame_len: frame.len() as u32,
            output_len: c.out_len,
            base_sha256: Sha256Digest::of(&old),
        });
        used += cost;
        summary.covered_chunks += c.count;
        summary.replaced_frame_bytes += payload_bytes;
        summary.record_frame_bytes += frame.len() as u64;
        kept_frames.push(frame);
    }
    summary.records = records.len() as u32;

    let manifest = PatchManifest {
        created: opts.created,
        target_image_sha256: m.image_sha256,
        target_chunk_table_sha256: m.chunk_table_sha256,
        target_image_size: m.image_size,
        base_image_size: base_size,
        base_image_sha256: base_sha256,
        record_count: 0,
        record_table_sha256: Sha256Digest::default(),
        base_version: opts.base_version.clone(),
    };
    let out = assemble(manifest, &records, &kept_frames, keys);
    summary.patch_len = out.len() as u64;
    Ok((out, summary))
}

/// Checks that `target` is the payload's image: its size and SHA-256 (one streaming pass).
fn check_target(target: &File, prelude: &VerifiedPrelude) -> Result<(), PatchError> {
    let m = &prelude.manifest;
    let mut hashing = Hashing {
        inner: std::io::BufReader::with_capacity(
            1 << 20,
            FromStart {
                file: target,
                at: 0,
            },
        ),
        hash: Sha256::new(),
        len: 0,
    };
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io("reading the target image"))?;
    let found = Sha256Digest(hashing.hash.finalize().into());
    if hashing.len != m.image_size || found != m.image_sha256 {
        return Err(refuse(format!(
            "checking the target image: {} bytes with SHA-256 {found}, the payload's manifest says {} bytes with {}",
            hashing.len, m.image_size, m.image_sha256
        )));
    }
    Ok(())
}

/// Splits the run of missing chunks `run` into candidates of at most
/// [`MAX_PATCH_OUTPUT_LEN`] output each, and gives each its base region: the old region
/// between the base chunks `left` and `right` (offset, length) around the run, mapped
/// proportionally, widened by [`REGION_MARGIN`], capped at [`MAX_PATCH_BASE_LEN`], within the
/// base image.
fn split_run(
    entries: &[crate::ChunkEntry],
    run: std::ops::Range<usize>,
    left: Option<(u64, u32)>,
    right: Option<(u64, u32)>,
    base_size: u64,
    out: &mut Vec<Candidate>,
) {
    let t0 = entries[run.start].image_offset;
    let last = &entries[run.end - 1];
    let t1 = last.image_offset + u64::from(last.image_len);
    // The old region: between the anchors when they are in order, else beside the one known.
    let (o0, o1) = match (left, right) {
        (Some((l, ll)), Some((r, _))) if l + u64::from(ll) <= r => (l + u64::from(ll), r),
        (Some((l, ll)), _) => (l + u64::from(ll), l + u64::from(ll) + (t1 - t0)),
        (None, Some((r, _))) => (r.saturating_sub(t1 - t0), r),
        (None, None) => (t0, t1),
    };
    let (o0, o1) = (o0.min(base_size), o1.min(base_size));
    let mut first = run.start;
    while first < run.end {
        let mut end = first;
        let mut len = 0u64;
        while end < run.end
            && len + u64::from(entries[end].image_len) <= MAX_PATCH_OUTPUT_LEN.into()
        {
            len += u64::from(entries[end].image_len);
            end += 1;
        }
        let at = entries[first].image_offset;
        let map =
            |t: u64| o0 + ((o1 - o0) as u128 * u128::from(t - t0) / u128::from(t1 - t0)) as u64;
        let (b0, b1) = (map(at), map(at + len));
        let want = (b1 - b0 + 2 * REGION_MARGIN).min(MAX_PATCH_BASE_LEN.into());
        let base_len = want.min(base_size);
        let centre = (b0 + b1) / 2;
        let base_at = centre
            .saturating_sub(base_len / 2)
            .min(base_size - base_len);
        out.push(Candidate {
            first: first as u32,
            count: (end - first) as u32,
            out_at: at,
            out_len: len as u32,
            base_at,
            base_len: base_len as u32,
        });
        first = end;
    }
}

/// Compresses one candidate's target bytes with its base region as prefix.
fn compress(
    base: &File,
    target: &File,
    c: &Candidate,
    level: i32,
    old: &mut Vec<u8>,
    new: &mut Vec<u8>,
) -> Result<Vec<u8>, PatchError> {
    use zstd::zstd_safe::{get_error_name, CCtx, CParameter};
    old.resize(c.base_len as usize, 0);
    base.read_exact_at(old, c.base_at)
        .map_err(io(format!("reading base bytes at {}", c.base_at)))?;
    new.resize(c.out_len as usize, 0);
    target
        .read_exact_at(new, c.out_at)
        .map_err(io(format!("reading target bytes at {}", c.out_at)))?;
    let zerr = |code| PatchError::Io {
        action: format!("compressing chunks from {}", c.first),
        source: std::io::Error::other(get_error_name(code)),
    };
    let need = u64::from(c.base_len) + u64::from(c.out_len);
    let window_log = (64 - (need - 1).leading_zeros()).clamp(10, MAX_PATCH_WINDOW_LOG);
    // A context per record: it references the base region, which changes every time.
    let mut cctx = CCtx::try_create().ok_or_else(|| PatchError::Io {
        action: "creating a zstd context".into(),
        source: std::io::ErrorKind::OutOfMemory.into(),
    })?;
    for p in [
        CParameter::CompressionLevel(level),
        CParameter::WindowLog(window_log),
        CParameter::ChecksumFlag(false),
        CParameter::ContentSizeFlag(true),
        CParameter::DictIdFlag(false),
    ] {
        cctx.set_parameter(p).map_err(zerr)?;
    }
    cctx.ref_prefix(old).map_err(zerr)?;
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(new.len()));
    cctx.compress2(&mut frame, new).map_err(zerr)?;
    Ok(frame)
}

/// Lays out a patch: `manifest` (whose record count and table hash are filled in here) signed
/// by `keys`, the table of `records`, and `frames` (one per record, whose lengths the records
/// must carry). Tests use it to sign patches that break the format's rules.
pub fn assemble(
    mut manifest: PatchManifest,
    records: &[PatchRecord],
    frames: &[Vec<u8>],
    keys: &[SigningKey],
) -> Vec<u8> {
    let table: Vec<u8> = records.iter().flat_map(|r| r.encode()).collect();
    manifest.record_count = records.len() as u32;
    manifest.record_table_sha256 = Sha256Digest::of(&table);
    let manifest_bytes = manifest.encode();
    let block = crate::writer::sign(&manifest_bytes, keys).encode();
    debug_assert_eq!(block.len(), 4 + keys.len() * SIGNATURE_RECORD_LEN);
    let header = PatchHeader {
        manifest_len: manifest_bytes.len() as u32,
        signatures_len: block.len() as u32,
    };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(&manifest_bytes);
    out.extend_from_slice(&block);
    out.extend_from_slice(&table);
    for f in frames {
        out.extend_from_slice(f);
    }
    out
}
