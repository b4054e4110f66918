//! The payload format: a signed, chunked, zstd-compressed /usr image (read side; the writer
//! with the `writer` feature).
//!
//! This crate is shared by the device (`updater`, which re-exports it as `updater::payload`,
//! read side only) and the publisher (`image-tools`, with the `writer` feature).
//!
//! A payload is one file, readable front to back as a stream and by range requests:
//!
//! ```text
//! header (64 B) │ manifest (signed) │ signature block │ chunk table │ frame 0 │ frame 1 │ …
//! ```
//!
//! This module owns the byte layout (documented in `docs/payload-format.md`), the parsers, the
//! signature check and the per-chunk decoder. Every length taken from the input is checked
//! against a named maximum ([`MAX_MANIFEST_LEN`], [`MAX_SIGNATURES`], [`MAX_CHUNK_SIZE`],
//! [`MAX_CHUNK_COUNT`], [`MAX_WINDOW_LOG`]) before anything is allocated for it.
//!
//! The read order is the defence against a man in the middle ([`read_prelude`]): before the
//! signature check only the fixed header (its lengths bounded), the raw manifest bytes and the
//! signature records are read; [`verify_signatures`] checks ed25519 over the raw manifest bytes;
//! only then is the manifest parsed ([`Manifest::parse`]), so none of its checks is reachable
//! by anyone without a trusted key. Nothing in the chunk table is believed before its SHA-256
//! matched the signed manifest ([`ChunkTable::parse`]).
//!
//! Main types: [`Header`], [`Manifest`], [`SignatureBlock`], [`ChunkTable`], [`TrustedKeys`]
//! (loaded by [`load_trusted`] from the key directories and the `[keys]` settings),
//! [`ChunkDecoder`], and [`PayloadError`] for everything that can be wrong with a payload. The
//! writer (packing and signing) lives in `writer`, compiled only with the `writer` feature, so
//! the device binary carries no publisher code.
//!
//! ```
//! use ab_payload::{Header, PayloadError, HEADER_LEN};
//! let mut bytes = [0u8; HEADER_LEN];
//! bytes[..8].copy_from_slice(b"<!DOCTYP");
//! assert!(matches!(Header::parse(&bytes), Err(PayloadError::BadMagic { .. })));
//! ```

pub mod cdc;
mod decode;
pub mod keys;
pub mod patch;
pub mod pipeline;
#[cfg(test)]
mod tests;
#[cfg(feature = "writer")]
pub mod writer;

pub use decode::{check_chunk, inspect_frame_header, ChunkDecoder, FrameInfo};
pub use keys::{load_trusted, KeyError, KeyId, KeySettings, TrustedKeys};

use sha2::{Digest, Sha256};
use std::fmt;

/// The eight bytes every payload starts with.
pub const MAGIC: [u8; 8] = *b"UPDPAYLD";
/// The payload (header) format version 1: fixed-size chunks.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest format version of version 1 payloads.
pub const MANIFEST_VERSION: u32 = 1;
/// The payload (header) and manifest format version 2: content-defined chunks ([`cdc`]).
pub const FORMAT_VERSION_V2: u32 = 2;
/// Length of the fixed part of a version 2 manifest (everything but the two strings' bytes).
pub const MANIFEST_V2_FIXED_LEN: usize = 124;
/// Largest version 2 manifest accepted, in bytes.
pub const MAX_MANIFEST_V2_LEN: usize = MANIFEST_V2_FIXED_LEN + 2 * MAX_STRING_LEN;
/// Most chunks a version 2 payload may have (bounds its chunk table to 5 MiB).
pub const MAX_V2_CHUNK_COUNT: u32 = 131072;
/// Length of one version 2 chunk table entry in bytes.
pub const CHUNK_ENTRY_V2_LEN: usize = 40;
/// Length of the fixed header in bytes.
pub const HEADER_LEN: usize = 64;
/// Length of the fixed part of the manifest (everything but the two strings).
pub const MANIFEST_FIXED_LEN: usize = 108;
/// Longest `compatible` or `version` string, in bytes.
pub const MAX_STRING_LEN: usize = 128;
/// Smallest manifest accepted, in bytes (the fixed part and two one-byte strings).
pub const MIN_MANIFEST_LEN: usize = MANIFEST_FIXED_LEN + 2;
/// Largest manifest accepted, in bytes (the fixed part and two strings at their maximum).
pub const MAX_MANIFEST_LEN: usize = MANIFEST_FIXED_LEN + 2 * MAX_STRING_LEN;
/// Most signatures a payload may carry.
pub const MAX_SIGNATURES: usize = 16;
/// Length of one signature record (key id and ed25519 signature).
pub const SIGNATURE_RECORD_LEN: usize = 8 + 64;
/// Largest signature block accepted, in bytes.
pub const MAX_SIGNATURE_BLOCK_LEN: usize = 4 + MAX_SIGNATURES * SIGNATURE_RECORD_LEN;
/// Largest header, manifest and signature block together: the bytes before the chunk table of
/// any payload a reader accepts.
pub const MAX_SIGNED_PART_LEN: usize = HEADER_LEN
    + if MAX_MANIFEST_V2_LEN > MAX_MANIFEST_LEN {
        MAX_MANIFEST_V2_LEN
    } else {
        MAX_MANIFEST_LEN
    }
    + MAX_SIGNATURE_BLOCK_LEN;
/// Chunk sizes are multiples of this, so every chunk starts 4 KiB-aligned in the slot (the
/// read-back reads chunks straight from the device).
pub const CHUNK_ALIGN: u32 = 4096;
/// Smallest chunk size a manifest may declare.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest chunk size a manifest may declare (also bounds each decode buffer).
pub const MAX_CHUNK_SIZE: u32 = 8 << 20;
/// Most chunks a payload may have (bounds the chunk table to 3.5 MiB).
pub const MAX_CHUNK_COUNT: u32 = 65536;
/// Length of one chunk table entry in bytes.
pub const CHUNK_ENTRY_LEN: usize = 56;
/// Largest zstd window a frame may ask for, as a power of two (8 MiB, the largest chunk).
pub const MAX_WINDOW_LOG: u32 = 23;
/// The first four bytes of a zstd dictionary (little-endian 0xEC30A437).
pub const ZSTD_DICT_MAGIC: [u8; 4] = [0x37, 0xa4, 0x30, 0xec];

/// The bytes a frame with a prefix is compressed against, given the `prefix_len` image bytes
/// before its chunk: those bytes, less the first one when they start with
/// [`ZSTD_DICT_MAGIC`] (zstd would read them as a zstd dictionary, not raw content; the next
/// four bytes cannot be the magic again). `docs/payload-format.md`, "Frames, version 2".
pub fn frame_prefix(before: &[u8]) -> &[u8] {
    if before.starts_with(&ZSTD_DICT_MAGIC) {
        &before[1..]
    } else {
        before
    }
}

/// Largest prefix a version 2 manifest may declare (`prefix_len`): the image bytes before a
/// chunk its frame may reference. With the largest chunk it still fits the largest window.
pub const MAX_PREFIX_LEN: u32 = 4 << 20;

/// A SHA-256 digest, shown as lower-case hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Sha256Digest {
        Sha256Digest(Sha256::digest(data).into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Everything that can be wrong with a payload.
///
/// Offsets in `payload …` fields count bytes from the start of the payload file; `image …`
/// offsets count bytes of the uncompressed image (and of the slot it is written to).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The payload ended before a region it declares.
    #[error(
        "payload truncated: {region} needs bytes {offset}..{end}, the payload has {available}"
    )]
    Truncated {
        /// Which region was cut short.
        region: &'static str,
        /// Payload offset where the region starts.
        offset: u64,
        /// Payload offset where the region ends.
        end: u64,
        /// How many bytes the payload has (or had when it ended).
        available: u64,
    },
    /// The first eight bytes are not [`MAGIC`].
    #[error("not a payload: magic is {found:?}, expected \"UPDPAYLD\"")]
    BadMagic {
        /// The first eight bytes, lossily decoded.
        found: String,
    },
    /// The header or manifest has a format version this code does not know.
    #[error("unsupported {what} format version {found} (this updater reads 1 to {supported})")]
    UnsupportedVersion {
        /// `header` or `manifest`.
        what: &'static str,
        /// The version found.
        found: u32,
        /// The newest version supported (every version from 1 up is).
        supported: u32,
    },
    /// The header's CRC32 does not match its bytes.
    #[error("header checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    HeaderChecksumMismatch {
        /// CRC32 stored in the header.
        stored: u32,
        /// CRC32 of the header bytes.
        computed: u32,
    },
    /// A field that must be a fixed value is not.
    #[error("{region} field {field} is {found}, must be {expected}")]
    BadField {
        /// `header` or `manifest`.
        region: &'static str,
        /// Name of the field.
        field: &'static str,
        /// The value found.
        found: u64,
        /// The value required.
        expected: u64,
    },
    /// A declared length exceeds its named maximum.
    #[error("{what} is {found} bytes, more than the maximum of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The declared size.
        found: u64,
        /// The maximum.
        max: u64,
    },
    /// A declared length is smaller than its minimum.
    #[error("{what} is {found}, less than the minimum of {min}")]
    TooSmall {
        /// What was too small.
        what: &'static str,
        /// The declared size.
        found: u64,
        /// The minimum.
        min: u64,
    },
    /// The chunk count declared in the manifest exceeds [`MAX_CHUNK_COUNT`].
    #[error("chunk count {count} exceeds the maximum of {max}")]
    ChunkCountTooLarge {
        /// The declared count.
        count: u32,
        /// The maximum.
        max: u32,
    },
    /// The chunk count does not cover the image with chunks of the declared size.
    #[error("chunk count {count} does not fit image size {image_size} with chunk size {chunk_size} (needs {needed})")]
    ChunkCountMismatch {
        /// The declared count.
        count: u32,
        /// The declared image size.
        image_size: u64,
        /// The declared chunk size.
        chunk_size: u32,
        /// The count the size and chunk size imply.
        needed: u64,
    },
    /// A version 2 manifest declares chunking parameters outside the rules.
    #[error("manifest chunking parameters min {min}, avg {avg}, max {max}: {rule}")]
    BadCdcParams {
        /// Declared smallest chunk.
        min: u32,
        /// Declared average chunk.
        avg: u32,
        /// Declared largest chunk.
        max: u32,
        /// The rule broken.
        rule: &'static str,
    },
    /// The header and the manifest declare different format versions.
    #[error("header says format version {header}, manifest says {manifest}")]
    VersionMismatch {
        /// Version in the header.
        header: u32,
        /// Version in the manifest.
        manifest: u32,
    },
    /// A manifest string is not valid UTF-8 or is empty.
    #[error("manifest {field} is not a non-empty UTF-8 string")]
    BadString {
        /// `compatible` or `version`.
        field: &'static str,
    },
    /// The manifest carries no signature.
    #[error("payload carries no signature")]
    NoSignatures,
    /// None of the signatures is by a trusted key.
    #[error("payload is signed only by unknown keys ({key_ids}); trusted keys: {trusted}")]
    UnknownKey {
        /// Key ids of the signatures, comma separated.
        key_ids: String,
        /// Key ids of the trusted keys, comma separated (or "none").
        trusted: String,
    },
    /// No signature is by a trusted key, and some are by revoked keys.
    #[error("payload is signed only by revoked or unknown keys ({key_ids}); revoked by keys.revoked: {revoked}")]
    RevokedKey {
        /// Key ids of the signatures, comma separated.
        key_ids: String,
        /// The revoked ones among them, comma separated.
        revoked: String,
    },
    /// Fewer distinct trusted keys signed than [`TrustedKeys::signatures_required`].
    #[error("payload is signed by {found} trusted key(s) ({signers}), keys.signatures_required is {required}")]
    TooFewSignatures {
        /// Distinct trusted keys whose signature verified.
        found: usize,
        /// Their ids, comma separated.
        signers: String,
        /// Signatures required.
        required: usize,
    },
    /// A signature by a trusted key does not verify.
    #[error("bad signature by trusted key {key_id}: manifest or signature altered")]
    BadSignature {
        /// The key id of the failing signature.
        key_id: KeyId,
    },
    /// The chunk table does not hash to the value in the signed manifest.
    #[error("chunk table SHA-256 mismatch: manifest says {expected}, table hashes to {found}")]
    ChunkTableHashMismatch {
        /// Hash from the manifest.
        expected: Sha256Digest,
        /// Hash of the table bytes.
        found: Sha256Digest,
    },
    /// A chunk table entry is inconsistent with the manifest or its neighbours.
    #[error("chunk {index}: {field} is {found}, expected {expected}")]
    BadChunkEntry {
        /// Chunk index.
        index: u32,
        /// Field name.
        field: &'static str,
        /// The value found.
        found: u64,
        /// The value required (or the bound exceeded).
        expected: u64,
    },
    /// A frame is not a zstd frame this reader accepts.
    #[error("chunk {index} at payload offset {offset}: bad zstd frame: {reason}")]
    BadFrame {
        /// Chunk index.
        index: u32,
        /// Payload offset of the frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A frame asks for a zstd window larger than [`MAX_WINDOW_LOG`] allows.
    #[error("chunk {index} at payload offset {offset}: zstd window of {window} bytes exceeds the maximum of {max}")]
    FrameWindowTooLarge {
        /// Chunk index.
        index: u32,
        /// Payload offset of the frame.
        offset: u64,
        /// The window size the frame asks for.
        window: u64,
        /// The maximum window size.
        max: u64,
    },
    /// A frame decompresses to a different number of bytes than its chunk.
    #[error("chunk {index} at image offset {offset}: frame decompresses to {found} bytes, chunk is {expected}")]
    ChunkLengthMismatch {
        /// Chunk index.
        index: u32,
        /// Image offset of the chunk.
        offset: u64,
        /// Chunk length from the table.
        expected: u64,
        /// Decompressed length (or a lower bound when it is longer).
        found: u64,
    },
    /// A decompressed chunk does not hash to the value in the chunk table.
    #[error("chunk {index} at image offset {offset}: SHA-256 mismatch: expected {expected}, found {found}")]
    ChunkHashMismatch {
        /// Chunk index.
        index: u32,
        /// Image offset of the chunk.
        offset: u64,
        /// Hash from the chunk table.
        expected: Sha256Digest,
        /// Hash of the decompressed bytes.
        found: Sha256Digest,
    },
    /// The whole image does not hash to the manifest's image SHA-256.
    #[error("image SHA-256 mismatch: manifest says {expected}, image hashes to {found}")]
    ImageHashMismatch {
        /// Hash from the manifest.
        expected: Sha256Digest,
        /// Hash of the image bytes.
        found: Sha256Digest,
    },
    /// Bytes follow the last frame.
    #[error("trailing data after the last frame at payload offset {offset}")]
    TrailingData {
        /// Payload offset where the payload should have ended.
        offset: u64,
    },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn digest_at(b: &[u8], at: usize) -> Sha256Digest {
    Sha256Digest(b[at..at + 32].try_into().expect("32 bytes"))
}

/// The fixed 64-byte header: magic, version, and the lengths of the manifest and signature block.
///
/// The header is not signed; its CRC32 turns a damaged header into a clear error, and the
/// lengths it declares are bounded before they are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// [`FORMAT_VERSION`] or [`FORMAT_VERSION_V2`].
    pub format_version: u32,
    /// Length of the manifest in bytes (at most [`MAX_MANIFEST_LEN`], or
    /// [`MAX_MANIFEST_V2_LEN`] in version 2).
    pub manifest_len: u32,
    /// Length of the signature block in bytes (at most [`MAX_SIGNATURE_BLOCK_LEN`]).
    pub signatures_len: u32,
}

impl Header {
    /// Parses and checks a header.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, PayloadError> {
        if b[..8] != MAGIC {
            return Err(PayloadError::BadMagic {
                found: String::from_utf8_lossy(&b[..8]).into_owned(),
            });
        }
        let stored = u32_at(b, 60);
        let computed = crc32fast::hash(&b[..60]);
        if stored != computed {
            return Err(PayloadError::HeaderChecksumMismatch { stored, computed });
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_V2 {
            return Err(PayloadError::UnsupportedVersion {
                what: "header",
                found: version,
                supported: FORMAT_VERSION_V2,
            });
        }
        let max_manifest = if version == FORMAT_VERSION {
            MAX_MANIFEST_LEN
        } else {
            MAX_MANIFEST_V2_LEN
        };
        let header_len = u32_at(b, 12);
        if header_len as usize != HEADER_LEN {
            return Err(PayloadError::BadField {
                region: "header",
                field: "header_len",
                found: header_len.into(),
                expected: HEADER_LEN as u64,
            });
        }
        if let Some(pos) = b[24..60].iter().position(|&x| x != 0) {
            return Err(PayloadError::BadField {
                region: "header",
                field: "reserved",
                found: b[24 + pos].into(),
                expected: 0,
            });
        }
        let manifest_len = u32_at(b, 16);
        if manifest_len as usize > max_manifest {
            return Err(PayloadError::TooLarge {
                what: "manifest",
                found: manifest_len.into(),
                max: max_manifest as u64,
            });
        }
        if (manifest_len as usize) < MIN_MANIFEST_LEN {
            return Err(PayloadError::TooSmall {
                what: "manifest length",
                found: manifest_len.into(),
                min: MIN_MANIFEST_LEN as u64,
            });
        }
        let signatures_len = u32_at(b, 20);
        if signatures_len as usize > MAX_SIGNATURE_BLOCK_LEN {
            return Err(PayloadError::TooLarge {
                what: "signature block",
                found: signatures_len.into(),
                max: MAX_SIGNATURE_BLOCK_LEN as u64,
            });
        }
        Ok(Header {
            format_version: version,
            manifest_len,
            signatures_len,
        })
    }

    /// Encodes the header, CRC included.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.format_version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.signatures_len.to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Payload offset of the manifest.
    pub fn manifest_offset(&self) -> u64 {
        HEADER_LEN as u64
    }

    /// Payload offset of the signature block.
    pub fn signatures_offset(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.manifest_len)
    }

    /// Payload offset of the chunk table.
    pub fn chunk_table_offset(&self) -> u64 {
        self.signatures_offset() + u64::from(self.signatures_len)
    }
}

/// The signed description of the image: what it is for, which version, and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Expiry time, seconds since the Unix epoch; `None` if the payload never expires.
    pub expires: Option<u64>,
    /// Size of the uncompressed image in bytes.
    pub image_size: u64,
    /// SHA-256 of the whole uncompressed image.
    pub image_sha256: Sha256Digest,
    /// Version 1: size of every chunk but the last, which may be shorter. Version 2: the
    /// largest chunk (`cdc.max`), which bounds every chunk buffer.
    pub chunk_size: u32,
    /// Version 2 only: the content-defined chunking parameters the image was cut with.
    pub cdc: Option<cdc::CdcParams>,
    /// Version 2 only (0 in version 1): how many image bytes before each chunk its frame
    /// references as a zstd raw-content prefix. 0: every frame decodes alone.
    pub prefix_len: u32,
    /// Number of chunks (and chunk table entries).
    pub chunk_count: u32,
    /// SHA-256 of the chunk table bytes.
    pub chunk_table_sha256: Sha256Digest,
    /// The board or product the image is for (`IMAGE_ID` of its os-release).
    pub compatible: String,
    /// The image version (`IMAGE_VERSION`), ordered like UAPI version strings.
    pub version: String,
}

impl Manifest {
    /// Parses and bounds-checks a manifest. Parsing does not make it trusted: the caller checks
    /// the signatures over the same bytes.
    pub fn parse(b: &[u8]) -> Result<Manifest, PayloadError> {
        if b.len() >= 4 && u32_at(b, 0) == FORMAT_VERSION_V2 {
            return Manifest::parse_v2(b);
        }
        if b.len() > MAX_MANIFEST_LEN {
            return Err(PayloadError::TooLarge {
                what: "manifest",
                found: b.len() as u64,
                max: MAX_MANIFEST_LEN as u64,
            });
        }
        if b.len() < MIN_MANIFEST_LEN {
            return Err(PayloadError::TooSmall {
                what: "manifest length",
                found: b.len() as u64,
                min: MIN_MANIFEST_LEN as u64,
            });
        }
        let version = u32_at(b, 0);
        if version != MANIFEST_VERSION {
            return Err(PayloadError::UnsupportedVersion {
                what: "manifest",
                found: version,
                supported: FORMAT_VERSION_V2,
            });
        }
        let flags = u32_at(b, 4);
        if flags != 0 {
            return Err(PayloadError::BadField {
                region: "manifest",
                field: "flags",
                found: flags.into(),
                expected: 0,
            });
        }
        let expires = u64_at(b, 16);
        let image_size = u64_at(b, 24);
        let chunk_size = u32_at(b, 64);
        let chunk_count = u32_at(b, 68);
        if chunk_size < MIN_CHUNK_SIZE {
            return Err(PayloadError::TooSmall {
                what: "chunk size",
                found: chunk_size.into(),
                min: MIN_CHUNK_SIZE.into(),
            });
        }
        if chunk_size > MAX_CHUNK_SIZE {
            return Err(PayloadError::TooLarge {
                what: "chunk size",
                found: chunk_size.into(),
                max: MAX_CHUNK_SIZE.into(),
            });
        }
        if !chunk_size.is_multiple_of(CHUNK_ALIGN) {
            return Err(PayloadError::BadField {
                region: "manifest",
                field: "chunk_size modulo 4096",
                found: (chunk_size % CHUNK_ALIGN).into(),
                expected: 0,
            });
        }
        if chunk_count > MAX_CHUNK_COUNT {
            return Err(PayloadError::ChunkCountTooLarge {
                count: chunk_count,
                max: MAX_CHUNK_COUNT,
            });
        }
        let needed = image_size.div_ceil(chunk_size.into());
        if needed != u64::from(chunk_count) || chunk_count == 0 {
            return Err(PayloadError::ChunkCountMismatch {
                count: chunk_count,
                image_size,
                chunk_size,
                needed,
            });
        }
        let mut at = MANIFEST_FIXED_LEN - 4;
        let (compatible, version) = parse_strings(b, &mut at)?;
        Ok(Manifest {
            created: u64_at(b, 8),
            expires: (expires != 0).then_some(expires),
            image_size,
            image_sha256: digest_at(b, 32),
            chunk_size,
            cdc: None,
            prefix_len: 0,
            chunk_count,
            chunk_table_sha256: digest_at(b, 72),
            compatible,
            version,
        })
    }

    /// Parses a version 2 manifest (`docs/payload-format.md`, "Version 2").
    fn parse_v2(b: &[u8]) -> Result<Manifest, PayloadError> {
        if b.len() > MAX_MANIFEST_V2_LEN {
            return Err(PayloadError::TooLarge {
                what: "manifest",
                found: b.len() as u64,
                max: MAX_MANIFEST_V2_LEN as u64,
            });
        }
        if b.len() < MANIFEST_V2_FIXED_LEN + 2 {
            return Err(PayloadError::TooSmall {
                what: "manifest length",
                found: b.len() as u64,
                min: MANIFEST_V2_FIXED_LEN as u64 + 2,
            });
        }
        for (field, at) in [("flags", 4), ("reserved", 84)] {
            let v = u32_at(b, at);
            if v != 0 {
                return Err(PayloadError::BadField {
                    region: "manifest",
                    field,
                    found: v.into(),
                    expected: 0,
                });
            }
        }
        let expires = u64_at(b, 16);
        let image_size = u64_at(b, 24);
        let params = cdc::CdcParams {
            min: u32_at(b, 64),
            avg: u32_at(b, 68),
            max: u32_at(b, 72),
        };
        if let Err(rule) = params.check() {
            return Err(PayloadError::BadCdcParams {
                min: params.min,
                avg: params.avg,
                max: params.max,
                rule,
            });
        }
        let prefix_len = u32_at(b, 80);
        if prefix_len > MAX_PREFIX_LEN {
            return Err(PayloadError::TooLarge {
                what: "prefix_len",
                found: prefix_len.into(),
                max: MAX_PREFIX_LEN.into(),
            });
        }
        let chunk_count = u32_at(b, 76);
        if chunk_count > MAX_V2_CHUNK_COUNT {
            return Err(PayloadError::ChunkCountTooLarge {
                count: chunk_count,
                max: MAX_V2_CHUNK_COUNT,
            });
        }
        // Every chunk but the last is at least min and at most max bytes long.
        let lo = image_size.div_ceil(params.max.into());
        let hi = (image_size / u64::from(params.min)).max(1);
        if chunk_count == 0 || u64::from(chunk_count) < lo || u64::from(chunk_count) > hi {
            return Err(PayloadError::ChunkCountMismatch {
                count: chunk_count,
                image_size,
                chunk_size: params.max,
                needed: lo.max(1),
            });
        }
        let mut at = MANIFEST_V2_FIXED_LEN - 4;
        let (compatible, version) = parse_strings(b, &mut at)?;
        Ok(Manifest {
            created: u64_at(b, 8),
            expires: (expires != 0).then_some(expires),
            image_size,
            image_sha256: digest_at(b, 32),
            chunk_size: params.max,
            cdc: Some(params),
            prefix_len,
            chunk_count,
            chunk_table_sha256: digest_at(b, 88),
            compatible,
            version,
        })
    }

    /// The header and manifest format version: [`FORMAT_VERSION`] or [`FORMAT_VERSION_V2`].
    pub fn format_version(&self) -> u32 {
        if self.cdc.is_some() {
            FORMAT_VERSION_V2
        } else {
            FORMAT_VERSION
        }
    }
}

/// Parses the two length-prefixed manifest strings (`compatible`, `version`) at `at`, which
/// must end the manifest.
fn parse_strings(b: &[u8], at: &mut usize) -> Result<(String, String), PayloadError> {
    let string = |field: &'static str, at: &mut usize| -> Result<String, PayloadError> {
        if *at + 2 > b.len() {
            return Err(PayloadError::Truncated {
                region: "manifest",
                offset: *at as u64,
                end: *at as u64 + 2,
                available: b.len() as u64,
            });
        }
        let len = usize::from(u16_at(b, *at));
        *at += 2;
        if len > MAX_STRING_LEN {
            return Err(PayloadError::TooLarge {
                what: field,
                found: len as u64,
                max: MAX_STRING_LEN as u64,
            });
        }
        if *at + len > b.len() {
            return Err(PayloadError::Truncated {
                region: "manifest",
                offset: *at as u64,
                end: (*at + len) as u64,
                available: b.len() as u64,
            });
        }
        let s = std::str::from_utf8(&b[*at..*at + len])
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or(PayloadError::BadString { field })?;
        *at += len;
        Ok(s.to_owned())
    };
    let compatible = string("compatible", at)?;
    let version = string("version", at)?;
    if *at != b.len() {
        return Err(PayloadError::BadField {
            region: "manifest",
            field: "length",
            found: b.len() as u64,
            expected: *at as u64,
        });
    }
    Ok((compatible, version))
}

impl Manifest {
    /// Encodes the manifest (version 1, or version 2 when `cdc` is set); these are the bytes
    /// that get signed.
    pub fn encode(&self) -> Vec<u8> {
        if let Some(p) = self.cdc {
            let mut b = Vec::with_capacity(
                MANIFEST_V2_FIXED_LEN + self.compatible.len() + self.version.len(),
            );
            b.extend_from_slice(&FORMAT_VERSION_V2.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&self.created.to_le_bytes());
            b.extend_from_slice(&self.expires.unwrap_or(0).to_le_bytes());
            b.extend_from_slice(&self.image_size.to_le_bytes());
            b.extend_from_slice(&self.image_sha256.0);
            for v in [p.min, p.avg, p.max, self.chunk_count, self.prefix_len, 0] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&self.chunk_table_sha256.0);
            for s in [&self.compatible, &self.version] {
                b.extend_from_slice(&(s.len() as u16).to_le_bytes());
                b.extend_from_slice(s.as_bytes());
            }
            return b;
        }
        let mut b =
            Vec::with_capacity(MANIFEST_FIXED_LEN + self.compatible.len() + self.version.len());
        b.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.created.to_le_bytes());
        b.extend_from_slice(&self.expires.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&self.image_size.to_le_bytes());
        b.extend_from_slice(&self.image_sha256.0);
        b.extend_from_slice(&self.chunk_size.to_le_bytes());
        b.extend_from_slice(&self.chunk_count.to_le_bytes());
        b.extend_from_slice(&self.chunk_table_sha256.0);
        for s in [&self.compatible, &self.version] {
            b.extend_from_slice(&(s.len() as u16).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b
    }

    /// Length of the chunk table this manifest declares, in bytes.
    pub fn chunk_table_len(&self) -> u64 {
        let entry = if self.cdc.is_some() {
            CHUNK_ENTRY_V2_LEN
        } else {
            CHUNK_ENTRY_LEN
        };
        u64::from(self.chunk_count) * entry as u64
    }
}

/// One signature: the id of the key that made it and the ed25519 signature of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// First eight bytes of the SHA-256 of the signing public key.
    pub key_id: KeyId,
    /// The ed25519 signature over the exact manifest bytes.
    pub signature: [u8; 64],
}

/// The signature block: a count and that many [`Signature`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureBlock {
    /// The signatures, in payload order.
    pub signatures: Vec<Signature>,
}

impl SignatureBlock {
    /// Parses a signature block of exactly `b.len()` bytes.
    pub fn parse(b: &[u8]) -> Result<SignatureBlock, PayloadError> {
        if b.len() > MAX_SIGNATURE_BLOCK_LEN {
            return Err(PayloadError::TooLarge {
                what: "signature block",
                found: b.len() as u64,
                max: MAX_SIGNATURE_BLOCK_LEN as u64,
            });
        }
        if b.len() < 4 {
            return Err(PayloadError::NoSignatures);
        }
        let count = usize::from(u16_at(b, 0));
        if count == 0 {
            return Err(PayloadError::NoSignatures);
        }
        let reserved = u16_at(b, 2);
        if reserved != 0 {
            return Err(PayloadError::BadField {
                region: "signature block",
                field: "reserved",
                found: reserved.into(),
                expected: 0,
            });
        }
        let expected = 4 + count * SIGNATURE_RECORD_LEN;
        if count > MAX_SIGNATURES || b.len() != expected {
            return Err(PayloadError::BadField {
                region: "signature block",
                field: "length",
                found: b.len() as u64,
                expected: expected as u64,
            });
        }
        let signatures = b[4..]
            .chunks_exact(SIGNATURE_RECORD_LEN)
            .map(|r| Signature {
                key_id: KeyId(r[..8].try_into().expect("8 bytes")),
                signature: r[8..].try_into().expect("64 bytes"),
            })
            .collect();
        Ok(SignatureBlock { signatures })
    }

    /// Encodes the block.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(4 + self.signatures.len() * SIGNATURE_RECORD_LEN);
        b.extend_from_slice(&(self.signatures.len() as u16).to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        for s in &self.signatures {
            b.extend_from_slice(&s.key_id.0);
            b.extend_from_slice(&s.signature);
        }
        b
    }
}

/// Checks the signatures over the exact `manifest` bytes against `keys`, before anything in
/// those bytes is parsed. Every signature by a trusted key must verify (strictly, RFC 8032);
/// signatures by unknown or revoked keys are skipped; at least
/// [`TrustedKeys::signatures_required`] distinct trusted keys (and always at least one) must
/// have signed. Returns the distinct signers' ids in payload order.
pub fn verify_signatures(
    manifest: &[u8],
    block: &SignatureBlock,
    keys: &TrustedKeys,
) -> Result<Vec<KeyId>, PayloadError> {
    let mut signers = Vec::new();
    let mut revoked = Vec::new();
    for sig in &block.signatures {
        if keys.is_revoked(&sig.key_id) {
            revoked.push(sig.key_id);
            continue;
        }
        let Some(key) = keys.get(&sig.key_id) else {
            continue;
        };
        let signature = ed25519_dalek::Signature::from_bytes(&sig.signature);
        key.verify_strict(manifest, &signature)
            .map_err(|_| PayloadError::BadSignature { key_id: sig.key_id })?;
        if !signers.contains(&sig.key_id) {
            signers.push(sig.key_id);
        }
    }
    let all = || keys::ids_list(block.signatures.iter().map(|s| &s.key_id));
    if signers.is_empty() && !revoked.is_empty() {
        return Err(PayloadError::RevokedKey {
            key_ids: all(),
            revoked: keys::ids_list(&revoked),
        });
    }
    if signers.is_empty() {
        return Err(PayloadError::UnknownKey {
            key_ids: all(),
            trusted: keys.describe(),
        });
    }
    if signers.len() < keys.signatures_required() {
        return Err(PayloadError::TooFewSignatures {
            found: signers.len(),
            signers: keys::ids_list(&signers),
            required: keys.signatures_required(),
        });
    }
    Ok(signers)
}

/// One chunk: where it sits in the image and in the payload, and the hash of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    /// Offset of the chunk in the uncompressed image.
    pub image_offset: u64,
    /// Offset of the chunk's zstd frame in the payload.
    pub payload_offset: u64,
    /// Uncompressed length.
    pub image_len: u32,
    /// Length of the zstd frame.
    pub frame_len: u32,
    /// SHA-256 of the uncompressed bytes.
    pub sha256: Sha256Digest,
}

impl ChunkEntry {
    /// Encodes the entry into its 56 bytes.
    pub fn encode(&self) -> [u8; CHUNK_ENTRY_LEN] {
        let mut b = [0u8; CHUNK_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.image_offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.payload_offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.image_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.frame_len.to_le_bytes());
        b[24..56].copy_from_slice(&self.sha256.0);
        b
    }
}

/// Largest frame a chunk of `chunk_size` bytes may compress to (zstd's compress bound).
pub fn max_frame_len(chunk_size: u32) -> u32 {
    let s = chunk_size;
    let small = if s < (128 << 10) {
        ((128 << 10) - s) >> 11
    } else {
        0
    };
    s + (s >> 8) + small
}

/// The verified chunk table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkTable {
    /// The entries, in image order.
    pub entries: Vec<ChunkEntry>,
}

impl ChunkTable {
    /// Checks the table bytes against a verified manifest, then parses them and checks that the
    /// chunks tile the image and the frames follow each other from the end of the table.
    pub fn parse(
        b: &[u8],
        manifest: &Manifest,
        header: &Header,
    ) -> Result<ChunkTable, PayloadError> {
        let expected_len = manifest.chunk_table_len();
        if b.len() as u64 != expected_len {
            return Err(PayloadError::BadField {
                region: "chunk table",
                field: "length",
                found: b.len() as u64,
                expected: expected_len,
            });
        }
        let found = Sha256Digest::of(b);
        if found != manifest.chunk_table_sha256 {
            return Err(PayloadError::ChunkTableHashMismatch {
                expected: manifest.chunk_table_sha256,
                found,
            });
        }
        if let Some(params) = manifest.cdc {
            return ChunkTable::parse_v2(b, manifest, header, params);
        }
        let max_frame = max_frame_len(manifest.chunk_size);
        let mut image_offset = 0u64;
        let mut payload_offset = header.chunk_table_offset() + expected_len;
        let mut entries = Vec::with_capacity(manifest.chunk_count as usize);
        for (i, e) in b.chunks_exact(CHUNK_ENTRY_LEN).enumerate() {
            let index = i as u32;
            let entry = ChunkEntry {
                image_offset: u64_at(e, 0),
                payload_offset: u64_at(e, 8),
                image_len: u32_at(e, 16),
                frame_len: u32_at(e, 20),
                sha256: digest_at(e, 24),
            };
            let expected_image_len =
                (manifest.image_size - image_offset).min(manifest.chunk_size.into());
            let checks = [
                ("image_offset", entry.image_offset, image_offset),
                ("payload_offset", entry.payload_offset, payload_offset),
                ("image_len", entry.image_len.into(), expected_image_len),
            ];
            for (field, found, expected) in checks {
                if found != expected {
                    return Err(PayloadError::BadChunkEntry {
                        index,
                        field,
                        found,
                        expected,
                    });
                }
            }
            if entry.frame_len == 0 || entry.frame_len > max_frame {
                return Err(PayloadError::BadChunkEntry {
                    index,
                    field: "frame_len",
                    found: entry.frame_len.into(),
                    expected: max_frame.into(),
                });
            }
            image_offset += u64::from(entry.image_len);
            payload_offset += u64::from(entry.frame_len);
            entries.push(entry);
        }
        Ok(ChunkTable { entries })
    }

    /// Parses the entries of a version 2 table (hash already checked): offsets are implied by
    /// the lengths, every chunk but the last within `min..=max`, the last within `1..=max`, and
    /// the lengths adding up to the image size.
    fn parse_v2(
        b: &[u8],
        manifest: &Manifest,
        header: &Header,
        params: cdc::CdcParams,
    ) -> Result<ChunkTable, PayloadError> {
        let max_frame = max_frame_len(params.max);
        let mut image_offset = 0u64;
        let mut payload_offset = header.chunk_table_offset() + b.len() as u64;
        let count = b.len() / CHUNK_ENTRY_V2_LEN;
        let mut entries = Vec::with_capacity(count);
        for (i, e) in b.chunks_exact(CHUNK_ENTRY_V2_LEN).enumerate() {
            let index = i as u32;
            let entry = ChunkEntry {
                image_offset,
                payload_offset,
                image_len: u32_at(e, 0),
                frame_len: u32_at(e, 4),
                sha256: digest_at(e, 8),
            };
            let bad = |field, found: u64, expected: u64| PayloadError::BadChunkEntry {
                index,
                field,
                found,
                expected,
            };
            let left = manifest.image_size.saturating_sub(image_offset);
            let len = u64::from(entry.image_len);
            if i + 1 == count {
                if len != left {
                    return Err(bad("image_len", len, left));
                }
            } else if len < params.min.into() {
                return Err(bad("image_len", len, params.min.into()));
            }
            if len > params.max.into() || len > left || len == 0 {
                return Err(bad("image_len", len, left.min(params.max.into())));
            }
            if entry.frame_len == 0 || entry.frame_len > max_frame {
                return Err(bad("frame_len", entry.frame_len.into(), max_frame.into()));
            }
            image_offset += len;
            payload_offset += u64::from(entry.frame_len);
            entries.push(entry);
        }
        Ok(ChunkTable { entries })
    }

    /// Encodes the table in the version 1 layout.
    pub fn encode(&self) -> Vec<u8> {
        self.entries.iter().flat_map(|e| e.encode()).collect()
    }

    /// Encodes the table in the layout of `format_version` (1 or 2).
    pub fn encode_for(&self, format_version: u32) -> Vec<u8> {
        if format_version == FORMAT_VERSION {
            return self.encode();
        }
        let mut b = Vec::with_capacity(self.entries.len() * CHUNK_ENTRY_V2_LEN);
        for e in &self.entries {
            b.extend_from_slice(&e.image_len.to_le_bytes());
            b.extend_from_slice(&e.frame_len.to_le_bytes());
            b.extend_from_slice(&e.sha256.0);
        }
        b
    }

    /// Payload offset just past the last frame: the payload's exact length.
    pub fn payload_end(&self) -> u64 {
        self.entries
            .last()
            .map_or(0, |e| e.payload_offset + u64::from(e.frame_len))
    }
}

/// A parsed payload prelude (everything before the frames) whose signature has been checked.
#[derive(Debug, Clone)]
pub struct VerifiedPrelude {
    /// The header.
    pub header: Header,
    /// The signed manifest.
    pub manifest: Manifest,
    /// The exact manifest bytes (their SHA-256 identifies the payload).
    pub manifest_bytes: Vec<u8>,
    /// The first trusted key whose signature verified.
    pub signed_by: KeyId,
    /// Every distinct trusted key whose signature verified, in payload order.
    pub signers: Vec<KeyId>,
    /// The chunk table, checked against the manifest.
    pub chunks: ChunkTable,
}

impl VerifiedPrelude {
    /// A stable id for the payload: SHA-256 of the signed manifest bytes.
    pub fn payload_id(&self) -> Sha256Digest {
        Sha256Digest::of(&self.manifest_bytes)
    }
}

/// Reads exactly `buf.len()` bytes, turning a short read into [`PayloadError::Truncated`].
fn read_region(
    r: &mut dyn std::io::Read,
    buf: &mut [u8],
    region: &'static str,
    offset: u64,
) -> Result<(), ReadError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(ReadError::Payload(PayloadError::Truncated {
                    region,
                    offset,
                    end: offset + buf.len() as u64,
                    available: offset + got as u64,
                }))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(())
}

/// Reads and parses the header. A stream too short for a header but long enough to show it
/// is not a payload (an HTML error page, say) is reported as [`PayloadError::BadMagic`].
fn read_header(r: &mut dyn std::io::Read) -> Result<Header, ReadError> {
    let mut hb = [0u8; HEADER_LEN];
    match read_region(r, &mut hb, "header", 0) {
        Err(ReadError::Payload(PayloadError::Truncated { available, .. }))
            if available >= 8 && hb[..8] != MAGIC =>
        {
            Err(PayloadError::BadMagic {
                found: String::from_utf8_lossy(&hb[..8]).into_owned(),
            }
            .into())
        }
        Err(e) => Err(e),
        Ok(()) => Ok(Header::parse(&hb)?),
    }
}

/// Why reading a payload stopped: the payload is bad, or reading it failed.
///
/// Exhaustive by design (there is no third way for a read to stop), so callers in other
/// crates match both arms without a wildcard.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The payload is bad.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// Reading the payload failed.
    #[error("reading payload")]
    Io(#[source] std::io::Error),
}

/// The part of a payload a signature covers, as read: nothing in it parsed beyond what reading
/// needs, nothing of it trusted.
struct SignedPart {
    /// The header; its lengths are within [`MAX_MANIFEST_LEN`] and [`MAX_SIGNATURE_BLOCK_LEN`].
    header: Header,
    /// The raw manifest bytes, not parsed.
    manifest_bytes: Vec<u8>,
    /// The signature records.
    signatures: SignatureBlock,
}

/// Reads the header, the raw manifest bytes and the signature block from the start of a
/// stream. Allocations are bounded by [`Header::parse`] before they are made; the manifest is
/// not parsed here (it is not trusted yet).
fn read_signed_part(r: &mut dyn std::io::Read) -> Result<SignedPart, ReadError> {
    let header = read_header(r)?;
    let mut manifest_bytes = vec![0u8; header.manifest_len as usize];
    read_region(r, &mut manifest_bytes, "manifest", header.manifest_offset())?;
    let mut sig_bytes = vec![0u8; header.signatures_len as usize];
    read_region(
        r,
        &mut sig_bytes,
        "signature block",
        header.signatures_offset(),
    )?;
    let signatures = SignatureBlock::parse(&sig_bytes)?;
    Ok(SignedPart {
        header,
        manifest_bytes,
        signatures,
    })
}

/// Reads the chunk table that follows the signature block and checks it against `manifest`.
fn read_chunk_table(
    r: &mut dyn std::io::Read,
    manifest: &Manifest,
    header: &Header,
) -> Result<ChunkTable, ReadError> {
    if manifest.format_version() != header.format_version {
        return Err(PayloadError::VersionMismatch {
            header: header.format_version,
            manifest: manifest.format_version(),
        }
        .into());
    }
    // Bounded: chunk_count <= MAX_CHUNK_COUNT (MAX_V2_CHUNK_COUNT) was checked by
    // Manifest::parse.
    let mut table = vec![0u8; manifest.chunk_table_len() as usize];
    read_region(r, &mut table, "chunk table", header.chunk_table_offset())?;
    Ok(ChunkTable::parse(&table, manifest, header)?)
}

/// Reads the prelude from the start of a payload stream, in the order
/// `docs/payload-format.md` prescribes: the header and its bounded lengths, the raw manifest
/// bytes and the signature block; then the signatures over the raw manifest bytes against
/// `keys`; only then the manifest is parsed, and the chunk table read and checked against it.
/// The stream is left at the first frame.
pub fn read_prelude(
    r: &mut dyn std::io::Read,
    keys: &TrustedKeys,
) -> Result<VerifiedPrelude, ReadError> {
    read_prelude_planned(r, keys, |_, _| {})
}

/// [`read_prelude`], telling `plan` where the chunk table lies in the payload (from the signed
/// manifest) before reading it: a reader that fetches by range can ask for exactly the
/// prelude, and decide after it which frames to fetch.
pub fn read_prelude_planned<R: std::io::Read + ?Sized>(
    r: &mut R,
    keys: &TrustedKeys,
    plan: impl FnOnce(&mut R, std::ops::Range<u64>),
) -> Result<VerifiedPrelude, ReadError> {
    // `&mut R` is a sized reader (std), so it passes as `&mut dyn Read`.
    let part = read_signed_part(&mut &mut *r)?;
    let signers = verify_signatures(&part.manifest_bytes, &part.signatures, keys)?;
    let manifest = Manifest::parse(&part.manifest_bytes)?;
    let table = part.header.chunk_table_offset();
    plan(r, table..table + manifest.chunk_table_len());
    let chunks = read_chunk_table(&mut &mut *r, &manifest, &part.header)?;
    Ok(VerifiedPrelude {
        header: part.header,
        manifest,
        manifest_bytes: part.manifest_bytes,
        signed_by: signers[0],
        signers,
        chunks,
    })
}

/// Reads one frame of `entry` from a stream positioned at it into `buf` (resized, never beyond
/// [`max_frame_len`] of [`MAX_CHUNK_SIZE`]).
pub fn read_frame(
    r: &mut dyn std::io::Read,
    index: u32,
    entry: &ChunkEntry,
    buf: &mut Vec<u8>,
) -> Result<(), ReadError> {
    buf.resize(entry.frame_len as usize, 0);
    let _ = index;
    read_region(r, buf, "frame", entry.payload_offset)
}

/// Checks that a stream positioned after the last frame is at its end.
pub fn expect_end(r: &mut dyn std::io::Read, offset: u64) -> Result<(), ReadError> {
    let mut one = [0u8; 1];
    loop {
        match r.read(&mut one) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(ReadError::Payload(PayloadError::TrailingData { offset })),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// Reads a whole payload from the start: the prelude as [`read_prelude`] does, then every frame
/// in order, decoded and checked against its chunk, the whole image against the manifest's
/// SHA-256, and the end of the stream. Memory: one chunk and one frame.
pub fn verify_stream(
    r: &mut dyn std::io::Read,
    keys: &TrustedKeys,
) -> Result<VerifiedPrelude, ReadError> {
    let prelude = read_prelude(r, keys)?;
    let mut decoder = ChunkDecoder::for_manifest(&prelude.manifest).map_err(ReadError::Io)?;
    let mut frame = Vec::new();
    let mut out = Vec::new();
    let mut image = Sha256::new();
    for (i, entry) in prelude.chunks.entries.iter().enumerate() {
        read_frame(r, i as u32, entry, &mut frame)?;
        decoder.decode(i as u32, entry, &frame, &mut out)?;
        image.update(&out);
    }
    expect_end(r, prelude.chunks.payload_end())?;
    let found = Sha256Digest(image.finalize().into());
    if found != prelude.manifest.image_sha256 {
        return Err(ReadError::Payload(PayloadError::ImageHashMismatch {
            expected: prelude.manifest.image_sha256,
            found,
        }));
    }
    Ok(prelude)
}

/// A payload's prelude as read by [`inspect`]: parsed and bounds-checked, signatures not checked.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The header.
    pub header: Header,
    /// The manifest (unverified).
    pub manifest: Manifest,
    /// The signature records (unverified).
    pub signatures: SignatureBlock,
    /// The chunk table, checked against the (unverified) manifest.
    pub chunks: ChunkTable,
}

/// Parses the prelude without checking signatures, for display only: nothing may be decided on
/// what it returns (installing goes through [`read_prelude`]).
pub fn inspect(r: &mut dyn std::io::Read) -> Result<Inspection, ReadError> {
    let part = read_signed_part(r)?;
    let manifest = Manifest::parse(&part.manifest_bytes)?;
    let chunks = read_chunk_table(r, &manifest, &part.header)?;
    Ok(Inspection {
        header: part.header,
        manifest,
        signatures: part.signatures,
        chunks,
    })
}
