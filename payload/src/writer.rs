//! Writing payloads: key generation, chunked parallel compression and signing (publisher side).
//!
//! Compiled only with the `writer` feature, which `image-tools` (and the tests) enable; the
//! device binary never carries it. [`pack`] streams an image of any size through bounded
//! memory: frames are written from the end of the prelude onwards, a batch of chunks at a time
//! compressed on all threads, and the prelude (header, manifest, signatures, chunk table) is
//! written last once every frame length is known. [`PayloadParts`] builds small payloads in
//! memory, and lets tests alter any part and re-sign.

use super::cdc::{CdcParams, Chunker};
use super::{
    ChunkEntry, ChunkTable, Header, KeyId, Manifest, Sha256Digest, Signature, SignatureBlock,
    CHUNK_ENTRY_LEN, HEADER_LEN, MAX_CHUNK_COUNT, MAX_CHUNK_SIZE, MAX_SIGNATURES, MAX_STRING_LEN,
    MAX_V2_CHUNK_COUNT, MIN_CHUNK_SIZE,
};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};

/// Default chunk size: 4 MiB (measured: payloads within 2% of one zstd frame at level 12,
/// where 1 MiB chunks cost 7.5%).
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;
/// Default zstd level.
pub const DEFAULT_LEVEL: i32 = 12;
/// Default prefix of a version 2 payload (`Manifest::prefix_len`): each frame references the
/// 1 MiB of image before its chunk (measurements in `docs/payload-format.md`).
pub const DEFAULT_PREFIX_LEN: u32 = 1 << 20;

/// Why packing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// An option is out of range.
    #[error("{what} is {found}, must be within {min}..={max} (chunk sizes: a multiple of 4096)")]
    OutOfRange {
        /// The option.
        what: &'static str,
        /// Its value.
        found: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A manifest string is empty, too long, or has control characters.
    #[error("{field} {value:?} must be 1 to {max} printable bytes")]
    BadString {
        /// `compatible` or `version`.
        field: &'static str,
        /// The value.
        value: String,
        /// Maximum length.
        max: usize,
    },
    /// The content-defined chunking parameters break a rule.
    #[error("chunking parameters: {rule}")]
    BadCdc {
        /// The rule broken.
        rule: &'static str,
    },
    /// The image changed size while it was read.
    #[error("image ended at byte {found}, expected {expected} bytes")]
    ImageChanged {
        /// Bytes read.
        found: u64,
        /// Size at the start.
        expected: u64,
    },
    /// Reading the image, compressing, or writing the payload failed.
    #[error("{action}")]
    Io {
        /// What was being done, e.g. `reading image at offset 1048576`.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> PackError {
    let action = action.into();
    move |source| PackError::Io { action, source }
}

/// Generates a new signing key from the kernel's random source.
pub fn generate_key() -> std::io::Result<SigningKey> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The text of a secret key file: the 32-byte seed as 64 hex characters and a newline.
pub fn encode_secret_key(key: &SigningKey) -> String {
    format!("{}\n", hex::encode(key.to_bytes()))
}

/// Parses the text of a secret key file.
pub fn parse_secret_key(text: &str) -> Result<SigningKey, String> {
    let seed: [u8; 32] = hex::decode(text.trim())
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|v: Vec<u8>| format!("{} bytes, expected 32", v.len()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The text of a public key file: 64 hex characters and a newline.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    format!("{}\n", hex::encode(key.as_bytes()))
}

/// What goes into the manifest besides the image-derived fields, and how to compress.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// `IMAGE_ID` of the image.
    pub compatible: String,
    /// `IMAGE_VERSION` of the image.
    pub version: String,
    /// Creation time (Unix seconds).
    pub created: u64,
    /// Expiry time (Unix seconds), if any.
    pub expires: Option<u64>,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// zstd level (1..=22).
    pub level: i32,
    /// Compression threads.
    pub threads: usize,
}

impl PackOptions {
    fn check(&self) -> Result<(), PackError> {
        for (field, value) in [("compatible", &self.compatible), ("version", &self.version)] {
            if value.is_empty()
                || value.len() > MAX_STRING_LEN
                || value.chars().any(|c| c.is_control())
            {
                return Err(PackError::BadString {
                    field,
                    value: value.clone(),
                    max: MAX_STRING_LEN,
                });
            }
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size)
            || !self.chunk_size.is_multiple_of(super::CHUNK_ALIGN)
        {
            return Err(PackError::OutOfRange {
                what: "chunk size",
                found: self.chunk_size.into(),
                min: MIN_CHUNK_SIZE.into(),
                max: MAX_CHUNK_SIZE.into(),
            });
        }
        if !(1..=22).contains(&self.level) {
            return Err(PackError::OutOfRange {
                what: "zstd level",
                found: self.level as u64,
                min: 1,
                max: 22,
            });
        }
        Ok(())
    }
}

/// Compresses one chunk into one frame with its content size and no checksum (the chunk table
/// holds its SHA-256).
pub fn compress_chunk(
    cctx: &mut zstd::bulk::Compressor<'static>,
    data: &[u8],
) -> std::io::Result<Vec<u8>> {
    cctx.compress(data)
}

fn compressor(level: i32) -> std::io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.include_checksum(false)?;
    c.include_contentsize(true)?;
    c.include_dictid(false)?;
    // The window never needs to exceed a chunk; capping it keeps frames decodable by the
    // device's window limit even at levels whose default window is larger.
    c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(
        super::MAX_WINDOW_LOG,
    ))?;
    Ok(c)
}

/// Summary of a packed payload.
#[derive(Debug, Clone)]
pub struct PackSummary {
    /// The manifest as signed.
    pub manifest: Manifest,
    /// Total payload size in bytes.
    pub payload_size: u64,
}

/// Lays out and signs the prelude for `manifest` (whose table hash and chunk count are filled in
/// here) and `entries` (whose payload offsets are assigned here from their frame lengths).
pub fn build_prelude(
    mut manifest: Manifest,
    entries: &mut [ChunkEntry],
    keys: &[SigningKey],
) -> (Manifest, Vec<u8>) {
    assert!(!keys.is_empty() && keys.len() <= MAX_SIGNATURES);
    manifest.chunk_count = entries.len() as u32;
    let manifest_len = manifest.encode().len();
    let signatures_len = 4 + keys.len() * super::SIGNATURE_RECORD_LEN;
    let mut offset =
        (HEADER_LEN + manifest_len + signatures_len) as u64 + manifest.chunk_table_len();
    for e in entries.iter_mut() {
        e.payload_offset = offset;
        offset += u64::from(e.frame_len);
    }
    let table = ChunkTable {
        entries: entries.to_vec(),
    }
    .encode_for(manifest.format_version());
    manifest.chunk_table_sha256 = Sha256Digest::of(&table);
    let manifest_bytes = manifest.encode();
    let block = sign(&manifest_bytes, keys);
    let header = Header {
        format_version: manifest.format_version(),
        manifest_len: manifest_len as u32,
        signatures_len: signatures_len as u32,
    };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(&manifest_bytes);
    out.extend_from_slice(&block.encode());
    out.extend_from_slice(&table);
    (manifest, out)
}

/// The signature block of `keys` over the exact `manifest` bytes (payloads and patches).
pub fn sign(manifest: &[u8], keys: &[SigningKey]) -> SignatureBlock {
    SignatureBlock {
        signatures: keys
            .iter()
            .map(|k| Signature {
                key_id: KeyId::of(&k.verifying_key()),
                signature: k.sign(manifest).to_bytes(),
            })
            .collect(),
    }
}

fn blank_manifest(opts: &PackOptions, image_size: u64) -> Manifest {
    Manifest {
        created: opts.created,
        expires: opts.expires,
        image_size,
        image_sha256: Sha256Digest::default(),
        chunk_size: opts.chunk_size,
        cdc: None,
        prefix_len: 0,
        chunk_count: 0,
        chunk_table_sha256: Sha256Digest::default(),
        compatible: opts.compatible.clone(),
        version: opts.version.clone(),
    }
}

/// Packs `image` (of `image_size` bytes, read from its current position) into `out`, which must
/// be seekable and start empty. Memory: two chunks and two frames per thread.
pub fn pack(
    image: &mut dyn Read,
    image_size: u64,
    out: &mut (impl Write + Seek),
    keys: &[SigningKey],
    opts: &PackOptions,
) -> Result<PackSummary, PackError> {
    opts.check()?;
    let chunk_size = u64::from(opts.chunk_size);
    let count = image_size.div_ceil(chunk_size).max(1);
    if image_size == 0 || count > u64::from(MAX_CHUNK_COUNT) {
        return Err(PackError::OutOfRange {
            what: "image size",
            found: image_size,
            min: 1,
            max: u64::from(MAX_CHUNK_COUNT) * chunk_size,
        });
    }
    let manifest = blank_manifest(opts, image_size);
    let prelude_len = HEADER_LEN
        + manifest.encode().len()
        + 4
        + keys.len() * super::SIGNATURE_RECORD_LEN
        + count as usize * CHUNK_ENTRY_LEN;
    out.seek(SeekFrom::Start(prelude_len as u64))
        .map_err(io_err("seeking payload to the first frame"))?;

    let threads = opts.threads.max(1);
    let batch = threads * 2;
    let mut compressors = (0..threads)
        .map(|_| compressor(opts.level))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io_err("creating zstd compressors"))?;
    let mut hasher = Sha256::new();
    let mut entries = Vec::with_capacity(count as usize);
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let mut offset = 0u64;
    while offset < image_size {
        // Read up to `batch` chunks, hashing the image as it goes by.
        bufs.truncate(0);
        while bufs.len() < batch && offset < image_size {
            let len = chunk_size.min(image_size - offset) as usize;
            let mut buf = vec![0u8; len];
            image.read_exact(&mut buf).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    PackError::ImageChanged {
                        found: offset,
                        expected: image_size,
                    }
                } else {
                    io_err(format!("reading image at offset {offset}"))(e)
                }
            })?;
            hasher.update(&buf);
            offset += len as u64;
            bufs.push(buf);
        }
        let frames = compress_batch(&mut compressors, &bufs);
        for (buf, frame) in bufs.iter().zip(frames) {
            let index = entries.len();
            let frame = frame.map_err(io_err(format!("compressing chunk {index}")))?;
            out.write_all(&frame)
                .map_err(io_err(format!("writing frame of chunk {index}")))?;
            entries.push(ChunkEntry {
                image_offset: index as u64 * chunk_size,
                payload_offset: 0,
                image_len: buf.len() as u32,
                frame_len: frame.len() as u32,
                sha256: Sha256Digest::of(buf),
            });
        }
    }
    let mut extra = [0u8; 1];
    if image
        .read(&mut extra)
        .map_err(io_err("reading image end"))?
        != 0
    {
        return Err(PackError::ImageChanged {
            found: image_size + 1,
            expected: image_size,
        });
    }
    let mut manifest = manifest;
    manifest.image_sha256 = Sha256Digest(hasher.finalize().into());
    write_prelude(out, manifest, &mut entries, keys, prelude_len as u64)
}

/// Compresses a batch of chunks on all threads (chunk i on thread i % threads), returning the
/// frames in chunk order.
fn compress_batch<B: AsRef<[u8]> + Sync>(
    compressors: &mut [zstd::bulk::Compressor<'static>],
    bufs: &[B],
) -> Vec<std::io::Result<Vec<u8>>> {
    map_with(compressors, bufs, |c, _, b| compress_chunk(c, b.as_ref()))
}

/// How the frames of a version 2 payload with a prefix are compressed: chunk by chunk, each
/// with the `prefix_len` image bytes before it as zstd raw-content prefix, in a window that
/// holds the prefix and the largest chunk.
struct PrefixLayout {
    level: i32,
    prefix_len: usize,
    window_log: u32,
}

impl PrefixLayout {
    fn new(level: i32, prefix_len: u32, cdc: CdcParams) -> PrefixLayout {
        let need = u64::from(prefix_len) + u64::from(cdc.max);
        let window_log = (64 - (need - 1).leading_zeros()).clamp(10, super::MAX_WINDOW_LOG);
        PrefixLayout {
            level,
            prefix_len: prefix_len as usize,
            window_log,
        }
    }

    /// Compresses the chunks at `spans` of `data` (each `(start, len)`, its prefix the bytes of
    /// `data` before it) on `threads` threads; the frames in chunk order.
    fn compress(
        &self,
        threads: usize,
        data: &[u8],
        spans: &[(usize, usize)],
    ) -> Vec<std::io::Result<Vec<u8>>> {
        map_parallel(
            threads,
            spans,
            zstd::zstd_safe::CCtx::create,
            |cctx, _, &(at, len)| self.frame(cctx, data, at, len),
        )
    }

    fn frame<'a>(
        &self,
        cctx: &mut zstd::zstd_safe::CCtx<'a>,
        data: &'a [u8],
        at: usize,
        len: usize,
    ) -> std::io::Result<Vec<u8>> {
        use zstd::zstd_safe::{get_error_name, CParameter, ResetDirective};
        let zerr = |code| std::io::Error::other(get_error_name(code));
        cctx.reset(ResetDirective::SessionAndParameters)
            .map_err(zerr)?;
        for p in [
            CParameter::CompressionLevel(self.level),
            CParameter::WindowLog(self.window_log),
            CParameter::ChecksumFlag(false),
            CParameter::ContentSizeFlag(true),
            CParameter::DictIdFlag(false),
        ] {
            cctx.set_parameter(p).map_err(zerr)?;
        }
        let prefix = super::frame_prefix(&data[at.saturating_sub(self.prefix_len)..at]);
        if !prefix.is_empty() {
            cctx.ref_prefix(prefix).map_err(zerr)?;
        }
        let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(len));
        cctx.compress2(&mut frame, &data[at..at + len])
            .map_err(zerr)?;
        Ok(frame)
    }
}

/// Applies `f` to every item on up to `threads` threads (item i on thread i % threads, each
/// thread with its own `state()`), and returns the results in item order.
pub(crate) fn map_parallel<'a, T: Sync, S: Send, R: Send>(
    threads: usize,
    items: &'a [T],
    state: impl Fn() -> S,
    f: impl Fn(&mut S, usize, &'a T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    let mut states: Vec<S> = (0..threads).map(|_| state()).collect();
    map_with(&mut states, items, f)
}

/// [`map_parallel`] with the threads' states given: one thread per state.
fn map_with<'a, T: Sync, S: Send, R: Send>(
    states: &mut [S],
    items: &'a [T],
    f: impl Fn(&mut S, usize, &'a T) -> R + Sync,
) -> Vec<R> {
    let threads = states.len().max(1);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = states
            .iter_mut()
            .enumerate()
            .map(|(t, st)| {
                s.spawn(move || {
                    items
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % threads == t)
                        .map(|(i, item)| (i, f(st, i, item)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread panicked"))
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, r)| r).collect()
    })
}

fn check_prefix(prefix_len: u32) -> Result<(), PackError> {
    if prefix_len > super::MAX_PREFIX_LEN {
        return Err(PackError::OutOfRange {
            what: "prefix length",
            found: prefix_len.into(),
            min: 0,
            max: super::MAX_PREFIX_LEN.into(),
        });
    }
    Ok(())
}

/// Chunks (version 2) in one batch of [`pack_v2`]: enough to keep every thread busy for a
/// while without holding more than a few MiB.
const V2_BATCH_PER_THREAD: usize = 32;

/// [`pack_v2_prefixed`] with the [`DEFAULT_PREFIX_LEN`].
pub fn pack_v2(
    image: &mut (impl Read + Seek),
    image_size: u64,
    out: &mut (impl Write + Seek),
    keys: &[SigningKey],
    opts: &PackOptions,
    cdc: CdcParams,
) -> Result<PackSummary, PackError> {
    pack_v2_prefixed(image, image_size, out, keys, opts, cdc, DEFAULT_PREFIX_LEN)
}

/// Packs `image` (of `image_size` bytes, read from its start) into a version 2 payload in
/// `out` (seekable, empty): content-defined chunks cut with `cdc`, one zstd frame per chunk,
/// each referencing the `prefix_len` image bytes before its chunk (0: independent frames;
/// `docs/payload-format.md`, "Version 2"); `opts.chunk_size` is not used. Reads the image
/// twice: once to count its chunks (the prelude's length depends on it), once to compress.
/// Memory: the chunker's buffer, the prefix and a batch of chunks and frames per thread.
pub fn pack_v2_prefixed(
    image: &mut (impl Read + Seek),
    image_size: u64,
    out: &mut (impl Write + Seek),
    keys: &[SigningKey],
    opts: &PackOptions,
    cdc: CdcParams,
    prefix_len: u32,
) -> Result<PackSummary, PackError> {
    check_v2(opts, cdc, image_size)?;
    check_prefix(prefix_len)?;
    let rewind = |image: &mut dyn SeekRead| {
        image
            .seek(SeekFrom::Start(0))
            .map_err(io_err("seeking image to its start"))
    };
    rewind(image)?;
    let mut count = 0u64;
    let mut chunker = Chunker::new(&mut *image, cdc);
    while chunker
        .next_chunk()
        .map_err(io_err("reading image to count its chunks"))?
        .is_some()
    {
        count += 1;
        if count > u64::from(MAX_V2_CHUNK_COUNT) {
            return Err(too_many_chunks(count));
        }
    }
    let mut manifest = blank_manifest(opts, image_size);
    manifest.chunk_size = cdc.max;
    manifest.cdc = Some(cdc);
    manifest.prefix_len = prefix_len;
    manifest.chunk_count = count as u32;
    let prelude_len =
        (HEADER_LEN + manifest.encode().len() + 4 + keys.len() * super::SIGNATURE_RECORD_LEN)
            as u64
            + manifest.chunk_table_len();
    out.seek(SeekFrom::Start(prelude_len))
        .map_err(io_err("seeking payload to the first frame"))?;
    rewind(image)?;

    let threads = opts.threads.max(1);
    let mut compressors = (0..threads)
        .map(|_| compressor(opts.level))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io_err("creating zstd compressors"))?;
    let mut hasher = Sha256::new();
    let mut entries = Vec::with_capacity(count as usize);
    let mut chunker = Chunker::new(&mut *image, cdc);
    let mut offset = 0u64;
    // `data`: the prefix of the batch's first chunk, then the batch's chunks (`spans`).
    let mut data: Vec<u8> = Vec::new();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let layout = PrefixLayout::new(opts.level, prefix_len, cdc);
    loop {
        let keep = data.len().saturating_sub(prefix_len as usize);
        data.drain(..keep);
        spans.clear();
        while spans.len() < threads * V2_BATCH_PER_THREAD {
            let Some((_, chunk)) = chunker
                .next_chunk()
                .map_err(io_err(format!("reading image at offset {offset}")))?
            else {
                break;
            };
            hasher.update(chunk);
            offset += chunk.len() as u64;
            spans.push((data.len(), chunk.len()));
            data.extend_from_slice(chunk);
        }
        if spans.is_empty() {
            break;
        }
        let frames = if prefix_len == 0 {
            let bufs: Vec<&[u8]> = spans.iter().map(|&(at, l)| &data[at..at + l]).collect();
            compress_batch(&mut compressors, &bufs)
        } else {
            layout.compress(threads, &data, &spans)
        };
        for (&(at, len), frame) in spans.iter().zip(frames) {
            let buf = &data[at..at + len];
            let index = entries.len();
            let frame = frame.map_err(io_err(format!("compressing chunk {index}")))?;
            out.write_all(&frame)
                .map_err(io_err(format!("writing frame of chunk {index}")))?;
            entries.push(ChunkEntry {
                image_offset: entries
                    .last()
                    .map_or(0, |e: &ChunkEntry| e.image_offset + u64::from(e.image_len)),
                payload_offset: 0,
                image_len: buf.len() as u32,
                frame_len: frame.len() as u32,
                sha256: Sha256Digest::of(buf),
            });
        }
    }
    if offset != image_size || entries.len() as u64 != count {
        return Err(PackError::ImageChanged {
            found: offset,
            expected: image_size,
        });
    }
    manifest.image_sha256 = Sha256Digest(hasher.finalize().into());
    write_prelude(out, manifest, &mut entries, keys, prelude_len)
}

/// Signs the finished manifest and chunk table and writes them at the payload's start, over the
/// `prelude_len` bytes `pack`/`pack_v2` left for them before the frames.
fn write_prelude(
    out: &mut (impl Write + Seek),
    manifest: Manifest,
    entries: &mut [ChunkEntry],
    keys: &[SigningKey],
    prelude_len: u64,
) -> Result<PackSummary, PackError> {
    let (manifest, prelude) = build_prelude(manifest, entries, keys);
    assert_eq!(prelude.len() as u64, prelude_len, "prelude layout");
    let payload_size = entries
        .last()
        .map_or(0, |e| e.payload_offset + u64::from(e.frame_len));
    out.seek(SeekFrom::Start(0))
        .map_err(io_err("seeking payload to its start"))?;
    out.write_all(&prelude).map_err(io_err(
        "writing payload header, manifest, signatures and chunk table",
    ))?;
    out.flush().map_err(io_err("flushing payload"))?;
    Ok(PackSummary {
        manifest,
        payload_size,
    })
}

/// A readable, seekable image.
trait SeekRead: Read + Seek {}
impl<T: Read + Seek> SeekRead for T {}

fn too_many_chunks(count: u64) -> PackError {
    PackError::OutOfRange {
        what: "chunk count",
        found: count,
        min: 1,
        max: MAX_V2_CHUNK_COUNT.into(),
    }
}

fn check_v2(opts: &PackOptions, cdc: CdcParams, image_size: u64) -> Result<(), PackError> {
    let v1 = PackOptions {
        chunk_size: MIN_CHUNK_SIZE,
        ..opts.clone()
    };
    v1.check()?;
    if let Err(rule) = cdc.check() {
        return Err(PackError::BadCdc { rule });
    }
    if image_size == 0 {
        return Err(PackError::OutOfRange {
            what: "image size",
            found: 0,
            min: 1,
            max: u64::MAX,
        });
    }
    Ok(())
}

/// A payload held in parts, for building small payloads in memory and for tests that alter a
/// part and re-sign.
#[derive(Debug, Clone)]
pub struct PayloadParts {
    /// The manifest (`chunk_count` and `chunk_table_sha256` are recomputed by [`Self::assemble`]).
    pub manifest: Manifest,
    /// The chunk entries (`payload_offset` is recomputed by [`Self::assemble`]).
    pub entries: Vec<ChunkEntry>,
    /// One frame per entry.
    pub frames: Vec<Vec<u8>>,
}

impl PayloadParts {
    /// Splits and compresses `image`.
    pub fn from_image(image: &[u8], opts: &PackOptions) -> Result<PayloadParts, PackError> {
        opts.check()?;
        let mut c = compressor(opts.level).map_err(io_err("creating zstd compressor"))?;
        let mut manifest = blank_manifest(opts, image.len() as u64);
        manifest.image_sha256 = Sha256Digest::of(image);
        let mut entries = Vec::new();
        let mut frames = Vec::new();
        for (i, chunk) in image.chunks(opts.chunk_size as usize).enumerate() {
            let frame =
                compress_chunk(&mut c, chunk).map_err(io_err(format!("compressing chunk {i}")))?;
            entries.push(ChunkEntry {
                image_offset: i as u64 * u64::from(opts.chunk_size),
                payload_offset: 0,
                image_len: chunk.len() as u32,
                frame_len: frame.len() as u32,
                sha256: Sha256Digest::of(chunk),
            });
            frames.push(frame);
        }
        Ok(PayloadParts {
            manifest,
            entries,
            frames,
        })
    }

    /// [`Self::from_image_v2_prefixed`] with the [`DEFAULT_PREFIX_LEN`].
    pub fn from_image_v2(
        image: &[u8],
        opts: &PackOptions,
        cdc: CdcParams,
    ) -> Result<PayloadParts, PackError> {
        PayloadParts::from_image_v2_prefixed(image, opts, cdc, DEFAULT_PREFIX_LEN)
    }

    /// Cuts `image` into content-defined chunks with `cdc` and compresses each (version 2),
    /// referencing the `prefix_len` bytes before it (0: independent frames).
    pub fn from_image_v2_prefixed(
        image: &[u8],
        opts: &PackOptions,
        cdc: CdcParams,
        prefix_len: u32,
    ) -> Result<PayloadParts, PackError> {
        check_v2(opts, cdc, image.len() as u64)?;
        check_prefix(prefix_len)?;
        let mut c = compressor(opts.level).map_err(io_err("creating zstd compressor"))?;
        let mut manifest = blank_manifest(opts, image.len() as u64);
        manifest.image_sha256 = Sha256Digest::of(image);
        manifest.chunk_size = cdc.max;
        manifest.cdc = Some(cdc);
        manifest.prefix_len = prefix_len;
        let mut entries = Vec::new();
        let mut spans = Vec::new();
        let mut chunker = Chunker::new(image, cdc);
        while let Some((at, chunk)) = chunker.next_chunk().map_err(io_err("chunking image"))? {
            spans.push((at as usize, chunk.len()));
            entries.push(ChunkEntry {
                image_offset: at,
                payload_offset: 0,
                image_len: chunk.len() as u32,
                frame_len: 0,
                sha256: Sha256Digest::of(chunk),
            });
        }
        let frames = if prefix_len == 0 {
            let bufs: Vec<&[u8]> = spans.iter().map(|&(at, l)| &image[at..at + l]).collect();
            compress_batch(std::slice::from_mut(&mut c), &bufs)
        } else {
            PrefixLayout::new(opts.level, prefix_len, cdc).compress(opts.threads, image, &spans)
        };
        let mut frames = frames
            .into_iter()
            .enumerate()
            .map(|(i, f)| f.map_err(io_err(format!("compressing chunk {i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        for (e, f) in entries.iter_mut().zip(&mut frames) {
            e.frame_len = f.len() as u32;
        }
        if entries.len() as u64 > u64::from(MAX_V2_CHUNK_COUNT) {
            return Err(too_many_chunks(entries.len() as u64));
        }
        Ok(PayloadParts {
            manifest,
            entries,
            frames,
        })
    }

    /// Sets each entry's frame length from its frame, signs with `keys`, and returns the payload.
    pub fn assemble(&self, keys: &[SigningKey]) -> Vec<u8> {
        let mut entries = self.entries.clone();
        for (e, f) in entries.iter_mut().zip(&self.frames) {
            e.frame_len = f.len() as u32;
        }
        let (_, mut out) = build_prelude(self.manifest.clone(), &mut entries, keys);
        for f in &self.frames {
            out.extend_from_slice(f);
        }
        out
    }
}
