//! Using a publish-time patch in a delta install (`docs/patch-format.md`): when the publisher
//! made a patch from the booted version to the payload being installed, its records replace
//! the payload frames of the chunks the booted slot lacks.
//!
//! [`fetch`] looks for `<payload URL or path>.from-<booted IMAGE_VERSION>.patch` next to the
//! payload and reads it whole (at most [`MAX_PATCH_LEN`] bytes); a patch that is not there
//! (HTTP 404/410, no such file) means no patch, silently; any other failure is a warning and
//! no patch. [`load`] checks its signature with the payload's trusted keys and that it binds to
//! this payload's signed chunk table. [`Patched::attach`] removes the chunks its records cover
//! from the delta plan's ranges; [`Patched::chunk`], called by `delta::apply` before it would
//! fetch a chunk, decodes the chunk's record (once per record: the run is cached, at most
//! [`MAX_PATCH_OUTPUT_LEN`] bytes) against the booted slot's bytes at the record's base region
//! (checked by its SHA-256) and hands the chunk out only when its SHA-256 matches the signed
//! payload table. Any failure of a record (a base region that differs, a bad frame, a hash
//! mismatch) is a warning: the record is dropped and its chunks are fetched from the payload,
//! so a patch can never make an install fail that would have succeeded without it.
//! Memory: the patch file, one base region and one decoded run.

use super::delta::{DeltaPlan, FULL_DOWNLOAD_RATIO, MAX_GAP};
use crate::payload::patch::{
    patch_file_name, PatchError, PatchHeader, VerifiedPatch, MAX_PATCH_LEN, MAX_PATCH_OUTPUT_LEN,
    PATCH_HEADER_LEN,
};
use crate::payload::{ChunkEntry, Manifest, Sha256Digest, TrustedKeys};
use crate::source::{FileSource, HttpSource, ResumingReader, RetryPolicy, Source, SourceError};
use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Whether an error says the file is not there (HTTP 404 or 410, no such file), possibly
/// behind the reader's retries.
fn is_absent(e: &std::io::Error) -> bool {
    if e.kind() == std::io::ErrorKind::NotFound {
        return true;
    }
    match e.get_ref().and_then(|i| i.downcast_ref::<SourceError>()) {
        Some(SourceError::HttpStatus { status, .. }) => *status == 404 || *status == 410,
        Some(SourceError::GaveUp { last, .. }) => is_absent(last),
        _ => false,
    }
}

/// Fetches the patch from `booted_version` for the payload at `payload` (a URL or a path, as
/// the payload source describes itself): the patch bytes, if there is a patch (absent: `None`
/// silently; any other failure: `None` with a warning), and the bytes received either way.
pub fn fetch(payload: &str, booted_version: &str, retry: RetryPolicy) -> (Option<Vec<u8>>, u64) {
    let Some(name) = patch_file_name(payload, booted_version) else {
        return (None, 0);
    };
    let source: Box<dyn Source> = if name.starts_with("http://") || name.starts_with("https://") {
        Box::new(HttpSource::new(
            &name,
            Duration::from_secs(15),
            Duration::from_secs(30),
        ))
    } else {
        match FileSource::open(std::path::Path::new(&name)) {
            Ok(f) => Box::new(f),
            Err(e) if is_absent(&e) => return (None, 0),
            Err(e) => {
                log::warn!("not using patch {name}: opening it: {e}");
                return (None, 0);
            }
        }
    };
    let mut reader = match ResumingReader::new(source, 0, retry) {
        Ok(r) => r,
        Err(e) if is_absent(&e) => return (None, 0),
        Err(e) => {
            log::warn!("not using patch {name}: opening it: {e}");
            return (None, 0);
        }
    };
    // The header first: anything else served under that name (a catch-all page, the payload
    // itself) is dropped after 64 bytes rather than read up to the limit.
    let mut read = || -> Result<Vec<u8>, String> {
        let mut bytes = vec![0u8; PATCH_HEADER_LEN];
        reader.read_exact(&mut bytes).map_err(|e| e.to_string())?;
        let header: &[u8; PATCH_HEADER_LEN] = bytes[..].try_into().expect("64 bytes");
        PatchHeader::parse(header).map_err(|e| e.to_string())?;
        (&mut reader)
            .take(MAX_PATCH_LEN + 1 - PATCH_HEADER_LEN as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        if bytes.len() as u64 > MAX_PATCH_LEN {
            return Err(format!("larger than the maximum of {MAX_PATCH_LEN} bytes"));
        }
        Ok(bytes)
    };
    let result = read();
    let received = reader.received();
    match result {
        Ok(bytes) => {
            log::info!("fetched patch {name} ({} bytes)", bytes.len());
            (Some(bytes), received)
        }
        Err(e) => {
            log::warn!("not using patch {name}: {e}");
            (None, received)
        }
    }
}

/// Checks a fetched patch: its signature by `keys`, its layout, and that it builds the payload
/// with this manifest and chunk table, from a base no larger than the booted slot. `None`
/// (with a warning) when any check fails.
pub fn load(
    bytes: Vec<u8>,
    keys: &TrustedKeys,
    manifest: &Manifest,
    entries: &[ChunkEntry],
    booted_len: u64,
) -> Option<VerifiedPatch> {
    let checked = VerifiedPatch::parse(bytes, keys).and_then(|p| {
        p.bind(manifest, entries)?;
        if p.manifest.base_image_size > booted_len {
            return Err(PatchError::TooLarge {
                what: "base image size (for the booted slot)",
                found: p.manifest.base_image_size,
                max: booted_len,
            });
        }
        Ok(p)
    });
    match checked {
        Ok(p) => Some(p),
        Err(e) => {
            log::warn!("not using the patch: {e}");
            None
        }
    }
}

/// A patch in use during one delta install (see the module doc).
pub struct Patched<'a> {
    patch: VerifiedPatch,
    /// Per record: not failed yet.
    usable: RefCell<Vec<bool>>,
    booted: (&'a File, u64),
    /// Per record: the image offset of its first chunk.
    starts: Vec<u64>,
    /// The last record decoded and its output.
    run: RefCell<Option<(usize, Vec<u8>)>>,
    /// Image bytes handed out.
    bytes: Cell<u64>,
    /// Records that failed.
    failed: Cell<u32>,
}

impl<'a> Patched<'a> {
    /// Uses `patch` for chunks `start..` of `entries`: the chunks its records cover that
    /// `plan` would fetch are removed from the plan's ranges (a range is split where the
    /// removed frames span more than [`MAX_GAP`]), and the plan's fetch total and full-download
    /// decision are recomputed (the patch itself is fetched already). `booted`: the booted slot (disk handle, byte offset).
    pub fn attach(
        patch: VerifiedPatch,
        plan: &mut DeltaPlan,
        entries: &[ChunkEntry],
        start: usize,
        booted: (&'a File, u64),
    ) -> Patched<'a> {
        let covered = |i: usize| {
            i >= start && plan.sources[i].is_none() && patch.record_of(i as u32).is_some()
        };
        let mut ranges = Vec::new();
        for r in &plan.ranges {
            // Frames of the range to keep, as (start, end) runs joined across small gaps.
            let first = entries.partition_point(|e| e.payload_offset < r.start);
            let mut cur: Option<std::ops::Range<u64>> = None;
            for (i, e) in entries.iter().enumerate().skip(first) {
                if e.payload_offset >= r.end {
                    break;
                }
                if covered(i) || plan.sources[i].is_some() || i < start {
                    continue;
                }
                let frame = e.payload_offset..e.payload_offset + u64::from(e.frame_len);
                match &mut cur {
                    Some(c) if frame.start <= c.end + MAX_GAP => c.end = frame.end,
                    _ => ranges.extend(cur.replace(frame)),
                }
            }
            ranges.extend(cur);
        }
        plan.fetch_bytes = ranges.iter().map(|r| r.end - r.start).sum();
        plan.ranges = ranges;
        let frames: u64 = entries[start.min(entries.len())..]
            .iter()
            .map(|e| u64::from(e.frame_len))
            .sum();
        // The patch is fetched already: only what is left counts.
        plan.full_download =
            frames > 0 && plan.fetch_bytes as f64 >= frames as f64 * FULL_DOWNLOAD_RATIO;
        let records = patch.records.len();
        let starts = patch
            .records
            .iter()
            .map(|r| entries[r.first_chunk as usize].image_offset)
            .collect();
        Patched {
            patch,
            starts,
            usable: RefCell::new(vec![true; records]),
            booted,
            run: RefCell::new(None),
            bytes: Cell::new(0),
            failed: Cell::new(0),
        }
    }

    /// Image bytes handed out from the patch so far.
    pub fn bytes_from_patch(&self) -> u64 {
        self.bytes.get()
    }

    /// Records that failed (their chunks were fetched from the payload instead).
    pub fn failed_records(&self) -> u32 {
        self.failed.get()
    }

    /// Puts chunk `index` (entry `e`) into `out` from its record, if a usable record covers it
    /// and the bytes match `e`'s SHA-256. `false`: fetch it from the payload (a failure was
    /// logged and the record dropped).
    pub fn chunk(&self, index: u32, e: &ChunkEntry, out: &mut Vec<u8>) -> bool {
        let Some(rec) = self.patch.record_of(index) else {
            return false;
        };
        if !self.usable.borrow()[rec] {
            return false;
        }
        match self.take(rec, index, e, out) {
            Ok(()) => {
                self.bytes.set(self.bytes.get() + u64::from(e.image_len));
                true
            }
            Err(err) => {
                log::warn!(
                    "patch record {rec} unusable, fetching its chunks from the payload: {err}"
                );
                self.usable.borrow_mut()[rec] = false;
                self.failed.set(self.failed.get() + 1);
                *self.run.borrow_mut() = None;
                false
            }
        }
    }

    fn take(
        &self,
        rec: usize,
        index: u32,
        e: &ChunkEntry,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let mut run = self.run.borrow_mut();
        if run.as_ref().is_none_or(|(r, _)| *r != rec) {
            let r = &self.patch.records[rec];
            let mut base = vec![0u8; r.base_len as usize];
            let (file, at) = self.booted;
            file.read_exact_at(&mut base, at + r.base_offset)
                .map_err(|err| format!("reading the booted slot at {}: {err}", r.base_offset))?;
            let mut bytes = Vec::new();
            self.patch
                .decode(rec, &base, &mut bytes)
                .map_err(|err| err.to_string())?;
            debug_assert!(bytes.len() <= MAX_PATCH_OUTPUT_LEN as usize);
            *run = Some((rec, bytes));
        }
        let (_, bytes) = run.as_ref().expect("decoded above");
        let r = &self.patch.records[rec];
        // Offset of the chunk in the run: the chunks before it in the record. `bind` checked
        // that the record's output is exactly its chunks' bytes.
        // Chunks of a version 2 payload tile the image: the chunk's offset in the run is its
        // distance from the record's first chunk (`bind` checked the run's length).
        let first = (e.image_offset - self.starts[rec]) as usize;
        let chunk = bytes
            .get(first..first + e.image_len as usize)
            .ok_or_else(|| format!("chunk {index} lies outside record {rec}'s output"))?;
        let found = Sha256Digest::of(chunk);
        if found != e.sha256 {
            return Err(format!(
                "chunk {index} (record {rec}, chunks {}..{}) has SHA-256 {found}, the payload's table says {}",
                r.first_chunk,
                r.first_chunk + r.chunk_count,
                e.sha256
            ));
        }
        out.clear();
        out.extend_from_slice(chunk);
        Ok(())
    }
}

/// Looks for, fetches and checks the patch from `booted_version` to the version 2 payload
/// `prelude` read from `source_name` ([`fetch`], [`load`]): the checked patch (if any) and the
/// bytes received (counted even when the patch is not used). A payload on a block device, or
/// of format 1, has no patch.
pub fn find(
    source_name: &str,
    block_device: bool,
    booted_version: &str,
    retry: RetryPolicy,
    keys: &TrustedKeys,
    prelude: &crate::payload::VerifiedPrelude,
    booted_len: u64,
) -> (Option<VerifiedPatch>, u64) {
    if block_device || prelude.manifest.cdc.is_none() {
        return (None, 0);
    }
    let (bytes, received) = fetch(source_name, booted_version, retry);
    let Some(bytes) = bytes else {
        return (None, received);
    };
    let patch = load(
        bytes,
        keys,
        &prelude.manifest,
        &prelude.chunks.entries,
        booted_len,
    );
    (patch, received)
}
