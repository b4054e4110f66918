//! Patch files: publish-time deltas that turn a device holding one known base image into the
//! image of one version 2 payload, fetching less than the payload's own frames would cost.
//!
//! A patch is one file (`docs/patch-format.md`, byte by byte):
//!
//! ```text
//! header (64 B) │ manifest (signed) │ signature block │ record table │ frame 0 │ frame 1 │ …
//! ```
//!
//! The signed manifest binds the patch to one payload (its `image_sha256` and
//! `chunk_table_sha256`) and to one base image (its size and SHA-256, and its `IMAGE_VERSION`,
//! which names the file: [`patch_file_name`]). Each record covers a run of the payload's
//! chunks that the base lacks: its frame is one zstd frame of those chunks' bytes, compressed
//! with a region of the base image (`base_offset`, `base_len`, checked by `base_sha256`) as
//! raw-content prefix, so the changed parts of a file cost about what `zstd --patch-from`
//! makes of them.
//!
//! This module owns the layout, the parser ([`VerifiedPatch::parse`]: header, signatures
//! checked over the raw manifest bytes before the manifest is parsed, record table checked
//! against its signed SHA-256), the binding to a payload ([`VerifiedPatch::bind`]) and the
//! decoding of one record ([`VerifiedPatch::decode`]). Every length is checked against a named
//! maximum before anything is allocated for it. A patch is a shortcut, never a source of
//! truth: the device hands out a patched chunk only after its SHA-256 matched the signed
//! payload table. The writer (`write`) is compiled only with the `writer` feature.

use super::{
    decode::{decompress_with_raw_prefix, inspect_frame_header},
    digest_at, u16_at, u32_at, u64_at, verify_signatures, ChunkEntry, KeyId, Manifest,
    PayloadError, Sha256Digest, SignatureBlock, TrustedKeys, MAX_SIGNATURE_BLOCK_LEN,
    MAX_STRING_LEN,
};

/// The eight bytes every patch starts with.
pub const PATCH_MAGIC: [u8; 8] = *b"UPDPATCH";
/// The patch header and manifest format version.
pub const PATCH_FORMAT_VERSION: u32 = 1;
/// Length of the fixed patch header in bytes.
pub const PATCH_HEADER_LEN: usize = 64;
/// Length of the fixed part of the patch manifest (everything but the base version's bytes).
pub const PATCH_MANIFEST_FIXED_LEN: usize = 166;
/// Largest patch manifest accepted, in bytes.
pub const MAX_PATCH_MANIFEST_LEN: usize = PATCH_MANIFEST_FIXED_LEN + MAX_STRING_LEN;
/// Length of one record table entry in bytes.
pub const PATCH_RECORD_LEN: usize = 64;
/// Most records a patch may have (bounds the record table to 1 MiB).
pub const MAX_PATCH_RECORDS: u32 = 16384;
/// Largest base region a record may reference (its prefix), in bytes.
pub const MAX_PATCH_BASE_LEN: u32 = 4 << 20;
/// Largest output of one record (the target bytes of its chunks), in bytes.
pub const MAX_PATCH_OUTPUT_LEN: u32 = 4 << 20;
/// Largest zstd window a record's frame may ask for, as a power of two: the base region and
/// the output together.
pub const MAX_PATCH_WINDOW_LOG: u32 = super::MAX_WINDOW_LOG;
/// Largest patch file accepted (and made), in bytes. The device holds it in memory.
pub const MAX_PATCH_LEN: u64 = 32 << 20;

/// Everything that can be wrong with a patch, or with using it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The file ended before a region it declares.
    #[error("patch truncated: {region} needs bytes {offset}..{end}, the file has {available}")]
    Truncated {
        /// Which region was cut short.
        region: &'static str,
        /// File offset where the region starts.
        offset: u64,
        /// File offset where the region ends.
        end: u64,
        /// The file's length.
        available: u64,
    },
    /// The first eight bytes are not [`PATCH_MAGIC`].
    #[error("not a patch: magic is {found:?}, expected \"UPDPATCH\"")]
    BadMagic {
        /// The first eight bytes, lossily decoded.
        found: String,
    },
    /// The header's CRC32 does not match its bytes.
    #[error("patch header checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    HeaderChecksumMismatch {
        /// CRC32 stored in the header.
        stored: u32,
        /// CRC32 of the header bytes.
        computed: u32,
    },
    /// A field has a value it may not have.
    #[error("patch {region} field {field} is {found}, must be {expected}")]
    BadField {
        /// `header`, `manifest` or `file`.
        region: &'static str,
        /// Name of the field.
        field: &'static str,
        /// The value found.
        found: u64,
        /// The value required (or the bound broken).
        expected: u64,
    },
    /// A declared length exceeds its named maximum.
    #[error("patch {what} is {found}, more than the maximum of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The declared size.
        found: u64,
        /// The maximum.
        max: u64,
    },
    /// The base version is empty, not UTF-8, or has characters a file name may not.
    #[error("patch base version {found:?} is not 1 to 128 of [A-Za-z0-9._+~-]")]
    BadVersion {
        /// The version, lossily decoded.
        found: String,
    },
    /// The signature block is malformed or no trusted key signed the manifest.
    #[error("patch signature: {0}")]
    Signature(#[source] PayloadError),
    /// The record table does not match the signed manifest.
    #[error("patch record table SHA-256 is {found}, the signed manifest says {expected}")]
    RecordTableHashMismatch {
        /// From the manifest.
        expected: Sha256Digest,
        /// Of the bytes read.
        found: Sha256Digest,
    },
    /// A record breaks a rule of the format.
    #[error("patch record {index}: {field} is {found}, {rule}")]
    BadRecord {
        /// Record index.
        index: u32,
        /// The field.
        field: &'static str,
        /// Its value.
        found: u64,
        /// The rule broken.
        rule: &'static str,
    },
    /// The patch is for another payload.
    #[error("patch is for the payload with {what} {patch}, this payload has {payload}")]
    OtherPayload {
        /// `image_sha256` or `chunk_table_sha256`.
        what: &'static str,
        /// From the patch.
        patch: Sha256Digest,
        /// From the payload.
        payload: Sha256Digest,
    },
    /// A record's base region is not what the patch was made from.
    #[error(
        "patch record {index}: base bytes {offset}..{end} have SHA-256 {found}, the patch expects {expected}"
    )]
    BaseMismatch {
        /// Record index.
        index: u32,
        /// Start of the region in the base image.
        offset: u64,
        /// End of the region.
        end: u64,
        /// From the record.
        expected: Sha256Digest,
        /// Of the bytes given.
        found: Sha256Digest,
    },
    /// A record's frame is unusable.
    #[error("patch record {index}: bad frame: {reason}")]
    BadFrame {
        /// Record index.
        index: u32,
        /// What is wrong.
        reason: String,
    },
    /// Writing a patch failed (publisher side).
    #[error("{action}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The fixed 64-byte patch header: magic, version, and the lengths of the manifest and
/// signature block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchHeader {
    /// Length of the manifest in bytes.
    pub manifest_len: u32,
    /// Length of the signature block in bytes.
    pub signatures_len: u32,
}

impl PatchHeader {
    /// Parses and checks a header.
    pub fn parse(b: &[u8; PATCH_HEADER_LEN]) -> Result<PatchHeader, PatchError> {
        if b[..8] != PATCH_MAGIC {
            return Err(PatchError::BadMagic {
                found: String::from_utf8_lossy(&b[..8]).into_owned(),
            });
        }
        let stored = u32_at(b, 60);
        let computed = crc32fast::hash(&b[..60]);
        if stored != computed {
            return Err(PatchError::HeaderChecksumMismatch { stored, computed });
        }
        let bad = |field, found: u64, expected: u64| PatchError::BadField {
            region: "header",
            field,
            found,
            expected,
        };
        let version = u32_at(b, 8);
        if version != PATCH_FORMAT_VERSION {
            return Err(bad(
                "format_version",
                version.into(),
                PATCH_FORMAT_VERSION.into(),
            ));
        }
        let header_len = u32_at(b, 12);
        if header_len as usize != PATCH_HEADER_LEN {
            return Err(bad(
                "header_len",
                header_len.into(),
                PATCH_HEADER_LEN as u64,
            ));
        }
        if let Some(pos) = b[24..60].iter().position(|&x| x != 0) {
            return Err(bad("reserved", b[24 + pos].into(), 0));
        }
        let manifest_len = u32_at(b, 16);
        if manifest_len as usize > MAX_PATCH_MANIFEST_LEN {
            return Err(PatchError::TooLarge {
                what: "manifest length",
                found: manifest_len.into(),
                max: MAX_PATCH_MANIFEST_LEN as u64,
            });
        }
        let signatures_len = u32_at(b, 20);
        if signatures_len as usize > MAX_SIGNATURE_BLOCK_LEN {
            return Err(PatchError::TooLarge {
                what: "signature block length",
                found: signatures_len.into(),
                max: MAX_SIGNATURE_BLOCK_LEN as u64,
            });
        }
        Ok(PatchHeader {
            manifest_len,
            signatures_len,
        })
    }

    /// Encodes the header, CRC included.
    pub fn encode(&self) -> [u8; PATCH_HEADER_LEN] {
        let mut b = [0u8; PATCH_HEADER_LEN];
        b[..8].copy_from_slice(&PATCH_MAGIC);
        b[8..12].copy_from_slice(&PATCH_FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(PATCH_HEADER_LEN as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.signatures_len.to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// The signed description of a patch: which payload it builds, from which base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchManifest {
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The target payload's `image_sha256`.
    pub target_image_sha256: Sha256Digest,
    /// The target payload's `chunk_table_sha256`.
    pub target_chunk_table_sha256: Sha256Digest,
    /// The target payload's `image_size`.
    pub target_image_size: u64,
    /// Size of the base image in bytes.
    pub base_image_size: u64,
    /// SHA-256 of the base image's `base_image_size` bytes.
    pub base_image_sha256: Sha256Digest,
    /// Number of records.
    pub record_count: u32,
    /// SHA-256 of the record table bytes.
    pub record_table_sha256: Sha256Digest,
    /// The base image's `IMAGE_VERSION` (see [`patch_file_name`]).
    pub base_version: String,
}

impl PatchManifest {
    /// Parses and bounds-checks a manifest (after its signature was checked).
    pub fn parse(b: &[u8]) -> Result<PatchManifest, PatchError> {
        if b.len() > MAX_PATCH_MANIFEST_LEN {
            return Err(PatchError::TooLarge {
                what: "manifest length",
                found: b.len() as u64,
                max: MAX_PATCH_MANIFEST_LEN as u64,
            });
        }
        let bad = |field, found: u64, expected: u64| PatchError::BadField {
            region: "manifest",
            field,
            found,
            expected,
        };
        if b.len() < PATCH_MANIFEST_FIXED_LEN + 1 {
            return Err(bad(
                "length",
                b.len() as u64,
                PATCH_MANIFEST_FIXED_LEN as u64 + 1,
            ));
        }
        let version = u32_at(b, 0);
        if version != PATCH_FORMAT_VERSION {
            return Err(bad("version", version.into(), PATCH_FORMAT_VERSION.into()));
        }
        let flags = u32_at(b, 4);
        if flags != 0 {
            return Err(bad("flags", flags.into(), 0));
        }
        let record_count = u32_at(b, 128);
        if record_count > MAX_PATCH_RECORDS {
            return Err(PatchError::TooLarge {
                what: "record count",
                found: record_count.into(),
                max: MAX_PATCH_RECORDS.into(),
            });
        }
        let len = usize::from(u16_at(b, 164));
        if PATCH_MANIFEST_FIXED_LEN + len != b.len() {
            return Err(bad(
                "length",
                b.len() as u64,
                (PATCH_MANIFEST_FIXED_LEN + len) as u64,
            ));
        }
        let raw = &b[PATCH_MANIFEST_FIXED_LEN..];
        let base_version = std::str::from_utf8(raw)
            .ok()
            .filter(|v| version_is_file_safe(v))
            .ok_or_else(|| PatchError::BadVersion {
                found: String::from_utf8_lossy(raw).into_owned(),
            })?
            .to_owned();
        Ok(PatchManifest {
            created: u64_at(b, 8),
            target_image_sha256: digest_at(b, 16),
            target_chunk_table_sha256: digest_at(b, 48),
            target_image_size: u64_at(b, 80),
            base_image_size: u64_at(b, 88),
            base_image_sha256: digest_at(b, 96),
            record_count,
            record_table_sha256: digest_at(b, 132),
            base_version,
        })
    }

    /// Encodes the manifest: the bytes that get signed.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(PATCH_MANIFEST_FIXED_LEN + self.base_version.len());
        b.extend_from_slice(&PATCH_FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.created.to_le_bytes());
        b.extend_from_slice(&self.target_image_sha256.0);
        b.extend_from_slice(&self.target_chunk_table_sha256.0);
        b.extend_from_slice(&self.target_image_size.to_le_bytes());
        b.extend_from_slice(&self.base_image_size.to_le_bytes());
        b.extend_from_slice(&self.base_image_sha256.0);
        b.extend_from_slice(&self.record_count.to_le_bytes());
        b.extend_from_slice(&self.record_table_sha256.0);
        b.extend_from_slice(&(self.base_version.len() as u16).to_le_bytes());
        b.extend_from_slice(self.base_version.as_bytes());
        b
    }
}

/// Whether a version string may name a patch file: 1 to [`MAX_STRING_LEN`] bytes of
/// `A-Z a-z 0-9 . _ + ~ -`, not starting with a dot.
pub fn version_is_file_safe(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_STRING_LEN
        && !v.starts_with('.')
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._+~-".contains(&c))
}

/// The name of the patch from base version `base_version` for the payload named (or at the
/// URL or path) `payload`: `<payload>.from-<base_version>.patch`; `None` when the version
/// cannot name a file ([`version_is_file_safe`]).
pub fn patch_file_name(payload: &str, base_version: &str) -> Option<String> {
    version_is_file_safe(base_version).then(|| format!("{payload}.from-{base_version}.patch"))
}

/// One record: a run of the target's chunks and the base region its frame was compressed
/// against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchRecord {
    /// Index of the first chunk (in the target payload's chunk table).
    pub first_chunk: u32,
    /// Number of chunks.
    pub chunk_count: u32,
    /// Offset of the base region in the base image.
    pub base_offset: u64,
    /// Length of the base region (at most [`MAX_PATCH_BASE_LEN`]).
    pub base_len: u32,
    /// Length of the frame.
    pub frame_len: u32,
    /// Length of the frame's content: the chunks' bytes (at most [`MAX_PATCH_OUTPUT_LEN`]).
    pub output_len: u32,
    /// SHA-256 of the base region.
    pub base_sha256: Sha256Digest,
}

impl PatchRecord {
    /// Encodes the record into its 64 bytes.
    pub fn encode(&self) -> [u8; PATCH_RECORD_LEN] {
        let mut b = [0u8; PATCH_RECORD_LEN];
        b[0..4].copy_from_slice(&self.first_chunk.to_le_bytes());
        b[4..8].copy_from_slice(&self.chunk_count.to_le_bytes());
        b[8..16].copy_from_slice(&self.base_offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.base_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.frame_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.output_len.to_le_bytes());
        b[32..64].copy_from_slice(&self.base_sha256.0);
        b
    }

    /// The chunk indexes the record covers.
    pub fn chunks(&self) -> std::ops::Range<u32> {
        self.first_chunk..self.first_chunk + self.chunk_count
    }
}

/// A parsed patch whose signature, record table and layout have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedPatch {
    /// The signed manifest.
    pub manifest: PatchManifest,
    /// The first trusted key whose signature verified.
    pub signed_by: KeyId,
    /// The records, ascending by chunk, disjoint.
    pub records: Vec<PatchRecord>,
    /// File offset of each record's frame.
    frame_offsets: Vec<usize>,
    bytes: Vec<u8>,
}

/// Takes `len` bytes at `at` of `b`, or says which region was cut short.
fn region<'a>(
    b: &'a [u8],
    at: usize,
    len: usize,
    name: &'static str,
) -> Result<&'a [u8], PatchError> {
    b.get(at..at + len).ok_or(PatchError::Truncated {
        region: name,
        offset: at as u64,
        end: (at + len) as u64,
        available: b.len() as u64,
    })
}

impl VerifiedPatch {
    /// Parses a whole patch file in the order that keeps unsigned bytes from reaching the
    /// parsers: the header (lengths bounded), the signature over the raw manifest bytes, then
    /// the manifest, the record table (checked against its signed SHA-256), each record, and
    /// the file length (exactly the frames' end).
    pub fn parse(bytes: Vec<u8>, keys: &TrustedKeys) -> Result<VerifiedPatch, PatchError> {
        if bytes.len() as u64 > MAX_PATCH_LEN {
            return Err(PatchError::TooLarge {
                what: "file length",
                found: bytes.len() as u64,
                max: MAX_PATCH_LEN,
            });
        }
        let b = &bytes[..];
        let head: &[u8; PATCH_HEADER_LEN] = region(b, 0, PATCH_HEADER_LEN, "header")?
            .try_into()
            .expect("64 bytes");
        let header = PatchHeader::parse(head)?;
        let mut at = PATCH_HEADER_LEN;
        let manifest_bytes = region(b, at, header.manifest_len as usize, "manifest")?;
        at += manifest_bytes.len();
        let sig_bytes = region(b, at, header.signatures_len as usize, "signature block")?;
        at += sig_bytes.len();
        let block = SignatureBlock::parse(sig_bytes).map_err(PatchError::Signature)?;
        let signers =
            verify_signatures(manifest_bytes, &block, keys).map_err(PatchError::Signature)?;
        let manifest = PatchManifest::parse(manifest_bytes)?;
        let table_len = manifest.record_count as usize * PATCH_RECORD_LEN;
        let table = region(b, at, table_len, "record table")?;
        at += table_len;
        let found = Sha256Digest::of(table);
        if found != manifest.record_table_sha256 {
            return Err(PatchError::RecordTableHashMismatch {
                expected: manifest.record_table_sha256,
                found,
            });
        }
        let mut records = Vec::with_capacity(manifest.record_count as usize);
        let mut frame_offsets = Vec::with_capacity(manifest.record_count as usize);
        let mut next_chunk = 0u64;
        for (i, r) in table.chunks_exact(PATCH_RECORD_LEN).enumerate() {
            let rec = PatchRecord {
                first_chunk: u32_at(r, 0),
                chunk_count: u32_at(r, 4),
                base_offset: u64_at(r, 8),
                base_len: u32_at(r, 16),
                frame_len: u32_at(r, 20),
                output_len: u32_at(r, 24),
                base_sha256: digest_at(r, 32),
            };
            check_record(i as u32, &rec, u32_at(r, 28), next_chunk, &manifest)?;
            next_chunk = u64::from(rec.first_chunk) + u64::from(rec.chunk_count);
            frame_offsets.push(at);
            at += rec.frame_len as usize;
            records.push(rec);
        }
        if at != b.len() {
            return Err(PatchError::BadField {
                region: "file",
                field: "length",
                found: b.len() as u64,
                expected: at as u64,
            });
        }
        Ok(VerifiedPatch {
            manifest,
            signed_by: signers[0],
            records,
            frame_offsets,
            bytes,
        })
    }

    /// Checks that the patch builds the payload with this manifest and chunk table: the same
    /// image and table hashes, every record within the table with `output_len` equal to its
    /// chunks' lengths.
    pub fn bind(&self, target: &Manifest, entries: &[ChunkEntry]) -> Result<(), PatchError> {
        let m = &self.manifest;
        for (what, patch, payload) in [
            ("image_sha256", m.target_image_sha256, target.image_sha256),
            (
                "chunk_table_sha256",
                m.target_chunk_table_sha256,
                target.chunk_table_sha256,
            ),
        ] {
            if patch != payload {
                return Err(PatchError::OtherPayload {
                    what,
                    patch,
                    payload,
                });
            }
        }
        for (i, r) in self.records.iter().enumerate() {
            let run = entries
                .get(r.first_chunk as usize..(r.first_chunk + r.chunk_count) as usize)
                .ok_or(PatchError::BadRecord {
                    index: i as u32,
                    field: "first_chunk + chunk_count",
                    found: u64::from(r.first_chunk) + u64::from(r.chunk_count),
                    rule: "past the payload's chunk count",
                })?;
            let len: u64 = run.iter().map(|e| u64::from(e.image_len)).sum();
            if len != u64::from(r.output_len) {
                return Err(PatchError::BadRecord {
                    index: i as u32,
                    field: "output_len",
                    found: r.output_len.into(),
                    rule: "not the length of its chunks",
                });
            }
        }
        Ok(())
    }

    /// The index of the record covering chunk `index`, if any.
    pub fn record_of(&self, index: u32) -> Option<usize> {
        let i = self.records.partition_point(|r| r.first_chunk <= index);
        (i > 0 && self.records[i - 1].chunks().contains(&index)).then(|| i - 1)
    }

    /// The frame of record `index`.
    pub fn frame(&self, index: usize) -> &[u8] {
        let at = self.frame_offsets[index];
        &self.bytes[at..at + self.records[index].frame_len as usize]
    }

    /// Bytes of the patch file.
    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Decodes record `index` into `out` (exactly its `output_len` bytes), given `base`, the
    /// base image's bytes at its region: checks the region's SHA-256, the frame header
    /// (window at most 2^[`MAX_PATCH_WINDOW_LOG`], content size `output_len`, no dictionary,
    /// the frame exactly `frame_len` bytes), then decompresses with the region as prefix.
    /// The caller still checks each chunk against the payload's table.
    pub fn decode(&self, index: usize, base: &[u8], out: &mut Vec<u8>) -> Result<(), PatchError> {
        let r = &self.records[index];
        let rec = index as u32;
        let found = Sha256Digest::of(base);
        if base.len() != r.base_len as usize || found != r.base_sha256 {
            return Err(PatchError::BaseMismatch {
                index: rec,
                offset: r.base_offset,
                end: r.base_offset + u64::from(r.base_len),
                expected: r.base_sha256,
                found,
            });
        }
        let bad = |reason: String| PatchError::BadFrame { index: rec, reason };
        let frame = self.frame(index);
        let info = inspect_frame_header(frame).map_err(bad)?;
        if info.window > 1 << MAX_PATCH_WINDOW_LOG {
            return Err(bad(format!(
                "window of {} bytes, more than {}",
                info.window,
                1u64 << MAX_PATCH_WINDOW_LOG
            )));
        }
        if info.has_dictionary {
            return Err(bad("frame needs a dictionary".into()));
        }
        if info.content_size != Some(r.output_len.into()) {
            return Err(bad(format!(
                "content size {:?}, the record says {}",
                info.content_size, r.output_len
            )));
        }
        match zstd::zstd_safe::find_frame_compressed_size(frame) {
            Ok(n) if n == frame.len() => {}
            Ok(n) => {
                return Err(bad(format!(
                    "frame is {n} bytes, the record says {}",
                    frame.len()
                )))
            }
            Err(code) => return Err(bad(zstd::zstd_safe::get_error_name(code).into())),
        }
        out.clear();
        out.reserve_exact(r.output_len as usize);
        let n = decompress_with_raw_prefix(frame, base, out).map_err(bad)?;
        if n != r.output_len as usize {
            return Err(bad(format!(
                "{n} bytes decoded, the record says {}",
                r.output_len
            )));
        }
        Ok(())
    }
}

/// Checks one record read from the table; `reserved` is its bytes 28..32, `next_chunk` the
/// first chunk after the previous record.
fn check_record(
    index: u32,
    r: &PatchRecord,
    reserved: u32,
    next_chunk: u64,
    m: &PatchManifest,
) -> Result<(), PatchError> {
    let bad = |field, found: u64, rule| PatchError::BadRecord {
        index,
        field,
        found,
        rule,
    };
    if reserved != 0 {
        return Err(bad("reserved", reserved.into(), "must be 0"));
    }
    if r.chunk_count == 0 {
        return Err(bad("chunk_count", 0, "must be at least 1"));
    }
    if u64::from(r.first_chunk) < next_chunk {
        return Err(bad(
            "first_chunk",
            r.first_chunk.into(),
            "overlaps or precedes the previous record",
        ));
    }
    if u64::from(r.first_chunk) + u64::from(r.chunk_count) > u64::from(u32::MAX) {
        return Err(bad(
            "chunk_count",
            r.chunk_count.into(),
            "runs past chunk 2^32",
        ));
    }
    if r.base_len == 0 || r.base_len > MAX_PATCH_BASE_LEN {
        return Err(bad("base_len", r.base_len.into(), "must be 1 to 4194304"));
    }
    if r.base_offset
        .checked_add(r.base_len.into())
        .is_none_or(|end| end > m.base_image_size)
    {
        return Err(bad(
            "base_offset",
            r.base_offset,
            "region runs past the base image",
        ));
    }
    if r.output_len == 0 || r.output_len > MAX_PATCH_OUTPUT_LEN {
        return Err(bad(
            "output_len",
            r.output_len.into(),
            "must be 1 to 4194304",
        ));
    }
    if u64::from(r.chunk_count) > u64::from(r.output_len) {
        return Err(bad(
            "chunk_count",
            r.chunk_count.into(),
            "more chunks than bytes",
        ));
    }
    let bound = zstd::zstd_safe::compress_bound(r.output_len as usize) as u64;
    if r.frame_len == 0 || u64::from(r.frame_len) > bound {
        return Err(bad(
            "frame_len",
            r.frame_len.into(),
            "must be 1 to zstd's bound for output_len",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
#[cfg(feature = "writer")]
pub mod write;
