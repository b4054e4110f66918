//! Decoding one chunk: check its zstd frame header, decompress into a fixed buffer, verify.
//!
//! The frame header is inspected before the decompressor sees the frame, so a frame that asks
//! for a window beyond [`MAX_WINDOW_LOG`](super::MAX_WINDOW_LOG), a dictionary, or a content
//! size other than its chunk's length is refused without allocating. Decompression then writes
//! into a buffer sized to the chunk (never grown), with the decoder's window limit set as a
//! second line of defence.

use super::{ChunkEntry, PayloadError, Sha256Digest, MAX_WINDOW_LOG};

const ZSTD_MAGIC: u32 = 0xFD2F_B528;

/// What a zstd frame header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// The window size the decoder needs, in bytes.
    pub window: u64,
    /// The decompressed size, if declared.
    pub content_size: Option<u64>,
    /// Whether a dictionary id is present.
    pub has_dictionary: bool,
}

/// Parses the header of the zstd frame at the start of `frame` (RFC 8878 §3.1.1.1).
pub fn inspect_frame_header(frame: &[u8]) -> Result<FrameInfo, String> {
    if frame.len() < 6 {
        return Err(format!(
            "{} bytes, too short for a frame header",
            frame.len()
        ));
    }
    let magic = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
    if magic != ZSTD_MAGIC {
        return Err(format!("magic {magic:08x}, expected {ZSTD_MAGIC:08x}"));
    }
    let fhd = frame[4];
    if fhd & 0x08 != 0 {
        return Err("reserved bit set in frame header descriptor".into());
    }
    let single_segment = fhd & 0x20 != 0;
    let dict_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = match fhd >> 6 {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let mut at = 5;
    let window_descriptor = if single_segment {
        None
    } else {
        at += 1;
        Some(frame[5])
    };
    at += dict_len;
    if frame.len() < at + fcs_len {
        return Err("frame header runs past the frame".into());
    }
    let content_size = (fcs_len > 0).then(|| {
        let mut v = [0u8; 8];
        v[..fcs_len].copy_from_slice(&frame[at..at + fcs_len]);
        let v = u64::from_le_bytes(v);
        if fcs_len == 2 {
            v + 256
        } else {
            v
        }
    });
    let window = match window_descriptor {
        Some(wd) => {
            let log = 10 + u64::from(wd >> 3);
            if log > 63 {
                u64::MAX
            } else {
                let base = 1u64 << log;
                base + (base / 8) * u64::from(wd & 7)
            }
        }
        None => content_size.unwrap_or(0),
    };
    Ok(FrameInfo {
        window,
        content_size,
        has_dictionary: dict_len > 0 && frame[at - dict_len..at].iter().any(|&b| b != 0),
    })
}

/// Decompresses and verifies chunks, one at a time, reusing one zstd context.
///
/// For a version 2 payload with a prefix (`Manifest::prefix_len` > 0) the decoder also keeps
/// the last `prefix_len` bytes of the image before the next chunk: every frame is decoded with
/// them as its zstd raw-content prefix, so chunks must pass through it in image order, decoded
/// ([`Self::decode`]) or not ([`Self::feed`]: a chunk taken from a local slot, or written by an
/// earlier run). Memory: twice the prefix, or the prefix and a chunk longer than it.
pub struct ChunkDecoder {
    dctx: zstd::bulk::Decompressor<'static>,
    prefix: Option<PrefixWindow>,
}

/// The last `len` bytes of the image seen so far, with room after them: a frame is decoded
/// straight after its prefix in the same buffer, so zstd sees prefix and output as one
/// contiguous segment (matches into the prefix are plain in-buffer copies, not the
/// external-dictionary path, which costs a `memcpy` call per match: 2× slower on musl).
struct PrefixWindow {
    len: usize,
    /// `buf[..end]` holds the image bytes seen last (at least the last `len`, when that many
    /// were seen); `buf[end..]` is room. Allocated once at [`Self::ROOM`] × `len`, grown only
    /// for a chunk longer than that room.
    buf: Vec<u8>,
    end: usize,
    /// The context frames with a prefix are decoded with (the prefix passed per frame).
    dctx: zstd::zstd_safe::DCtx<'static>,
}

impl PrefixWindow {
    /// The buffer is this many prefixes long: the last prefix moves to the front once every
    /// `ROOM - 1` prefixes of output.
    const ROOM: usize = 2;

    fn new(len: usize, dctx: zstd::zstd_safe::DCtx<'static>) -> PrefixWindow {
        PrefixWindow {
            len,
            buf: Vec::new(),
            end: 0,
            dctx,
        }
    }

    /// The prefix: the last `len` bytes seen (fewer at the image start).
    #[cfg(test)]
    fn prefix(&self) -> &[u8] {
        &self.buf[self.end.saturating_sub(self.len)..self.end]
    }

    /// Makes room for `n` more bytes after the prefix, moving the prefix to the front if
    /// needed.
    fn make_room(&mut self, n: usize) {
        if self.end + n <= self.buf.len() {
            return;
        }
        let keep = self.end.min(self.len);
        self.buf.copy_within(self.end - keep..self.end, 0);
        self.end = keep;
        let want = (keep + n).max(Self::ROOM * self.len);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        let chunk = &chunk[chunk.len().saturating_sub(self.len)..];
        self.make_room(chunk.len());
        self.buf[self.end..self.end + chunk.len()].copy_from_slice(chunk);
        self.end += chunk.len();
    }

    /// Decompresses `frame` (of a chunk of `n` bytes) against the prefix into the room right
    /// after it, and keeps the result as the end of the window. The chunk's bytes are then
    /// `self.buf[self.end - n..self.end]`. zstd reads a prefix that starts with its
    /// dictionary magic as a zstd dictionary, not as raw content; [`super::frame_prefix`]
    /// drops that one byte on both sides so the bytes are always raw content.
    fn decompress(&mut self, frame: &[u8], n: usize) -> Result<usize, String> {
        self.make_room(n);
        let start = self.end.saturating_sub(self.len);
        let (before, after) = self.buf.split_at_mut(self.end);
        let prefix = super::frame_prefix(&before[start..]);
        let found = self
            .dctx
            .decompress_using_dict(&mut after[..n], frame, prefix)
            .map_err(|code| zstd::zstd_safe::get_error_name(code).to_string())?;
        self.end += found;
        Ok(found)
    }
}

impl ChunkDecoder {
    /// A decoder of independent frames (version 1, or version 2 without a prefix) whose window
    /// is capped at 2^[`MAX_WINDOW_LOG`] bytes.
    pub fn new() -> std::io::Result<ChunkDecoder> {
        let mut dctx = zstd::bulk::Decompressor::new()?;
        dctx.window_log_max(MAX_WINDOW_LOG)?;
        Ok(ChunkDecoder { dctx, prefix: None })
    }

    /// A decoder for the frames of a payload with this manifest: with a prefix window when the
    /// manifest declares one.
    pub fn for_manifest(manifest: &super::Manifest) -> std::io::Result<ChunkDecoder> {
        ChunkDecoder::with_prefix(manifest.prefix_len)
    }

    /// A decoder of frames that reference the `prefix_len` bytes before their chunk (at most
    /// [`MAX_PREFIX_LEN`](super::MAX_PREFIX_LEN)); 0: independent frames.
    pub fn with_prefix(prefix_len: u32) -> std::io::Result<ChunkDecoder> {
        let mut d = ChunkDecoder::new()?;
        if prefix_len > 0 {
            let dctx = zstd::zstd_safe::DCtx::try_create().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::OutOfMemory, "creating a zstd context")
            })?;
            d.prefix = Some(PrefixWindow::new(
                prefix_len.min(super::MAX_PREFIX_LEN) as usize,
                dctx,
            ));
        }
        Ok(d)
    }

    /// Whether frames must be decoded in image order by this one decoder (they reference the
    /// bytes before them).
    pub fn is_sequential(&self) -> bool {
        self.prefix.is_some()
    }

    /// Passes the verified bytes of a chunk that was not decoded here (or the image bytes
    /// before the first chunk decoded after a resume) into the prefix window; a no-op for
    /// independent frames.
    pub fn feed(&mut self, bytes: &[u8]) {
        if let Some(p) = &mut self.prefix {
            p.push(bytes);
        }
    }

    /// Decodes the frame of chunk `index` into `out` and checks its length and SHA-256 against
    /// `entry`. `out` holds exactly the chunk's bytes on success.
    pub fn decode(
        &mut self,
        index: u32,
        entry: &ChunkEntry,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), PayloadError> {
        self.decode_unchecked(index, entry, frame, out)?;
        check_chunk(index, entry, out)
    }

    /// [`Self::decode`] without the SHA-256 check, which the caller MUST make
    /// ([`check_chunk`]) before using the bytes: lets a pipeline hash on other threads while
    /// this one decodes the next frame. The bytes go into the prefix window unchecked; a frame
    /// decoded against wrong bytes gives bytes its own check refuses.
    pub fn decode_unchecked(
        &mut self,
        index: u32,
        entry: &ChunkEntry,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), PayloadError> {
        out.clear();
        self.decode_unchecked_append(index, entry, frame, out)
    }

    /// [`Self::decode_unchecked`], appending the chunk's bytes to `out` (a pipeline gathers
    /// consecutive chunks in one buffer without a copy in between). On error `out` holds what
    /// it held before, or that and part of the chunk.
    pub fn decode_unchecked_append(
        &mut self,
        index: u32,
        entry: &ChunkEntry,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), PayloadError> {
        let bad_frame = |reason: String| PayloadError::BadFrame {
            index,
            offset: entry.payload_offset,
            reason,
        };
        let info = inspect_frame_header(frame).map_err(bad_frame)?;
        let max = 1u64 << MAX_WINDOW_LOG;
        if info.window > max {
            return Err(PayloadError::FrameWindowTooLarge {
                index,
                offset: entry.payload_offset,
                window: info.window,
                max,
            });
        }
        if info.has_dictionary {
            return Err(bad_frame("frame needs a dictionary".into()));
        }
        let expected = u64::from(entry.image_len);
        match info.content_size {
            None => return Err(bad_frame("frame does not declare its content size".into())),
            Some(found) if found != expected => {
                return Err(PayloadError::ChunkLengthMismatch {
                    index,
                    offset: entry.image_offset,
                    expected,
                    found,
                })
            }
            Some(_) => {}
        }
        match zstd::zstd_safe::find_frame_compressed_size(frame) {
            Ok(n) if n == frame.len() => {}
            Ok(n) => {
                return Err(bad_frame(format!(
                    "frame is {n} bytes, the chunk table says {}",
                    frame.len()
                )))
            }
            Err(code) => return Err(bad_frame(zstd::zstd_safe::get_error_name(code).into())),
        }
        let n = entry.image_len as usize;
        let found = match &mut self.prefix {
            Some(p) => {
                let found = p.decompress(frame, n).map_err(bad_frame)?;
                out.extend_from_slice(&p.buf[p.end - found..p.end]);
                found
            }
            None if out.is_empty() => {
                out.reserve_exact(n);
                self.dctx
                    .decompress_to_buffer(frame, out)
                    .map_err(|e| bad_frame(e.to_string()))?
            }
            None => {
                let at = out.len();
                out.resize(at + n, 0);
                let found = self
                    .dctx
                    .decompress_to_buffer(frame, &mut out[at..])
                    .map_err(|e| bad_frame(e.to_string()))?;
                out.truncate(at + found);
                found
            }
        };
        if found != n {
            return Err(PayloadError::ChunkLengthMismatch {
                index,
                offset: entry.image_offset,
                expected,
                found: found as u64,
            });
        }
        Ok(())
    }
}

/// Checks decoded bytes of chunk `index` against its SHA-256 in the signed table.
pub fn check_chunk(index: u32, entry: &ChunkEntry, bytes: &[u8]) -> Result<(), PayloadError> {
    let found = Sha256Digest::of(bytes);
    if found != entry.sha256 {
        return Err(PayloadError::ChunkHashMismatch {
            index,
            offset: entry.image_offset,
            expected: entry.sha256,
            found,
        });
    }
    Ok(())
}

/// Decompresses one frame compressed against `prefix` as zstd raw content (whatever its first
/// bytes), into `out`'s spare capacity, with a context of its own (a patch record: few and
/// large, so the context's cost does not matter).
pub(crate) fn decompress_with_raw_prefix(
    frame: &[u8],
    prefix: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, String> {
    use zstd::zstd_safe::{get_error_name, DCtx, DParameter};
    let name = |code| get_error_name(code).to_string();
    let mut dctx = DCtx::try_create().ok_or("cannot allocate a zstd context")?;
    dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .map_err(name)?;
    dctx.ref_prefix(prefix).map_err(name)?;
    dctx.decompress(out, frame).map_err(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_window_holds_the_last_bytes_fed_whatever_the_piece_sizes() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 + i / 300) as u8).collect();
        for len in [1usize, 100, 4096, 9999] {
            for piece in [1usize, 7, 100, 4096, 20_000] {
                let mut w = PrefixWindow::new(len, zstd::zstd_safe::DCtx::create());
                let mut fed = 0;
                for p in data.chunks(piece) {
                    w.push(p);
                    fed += p.len();
                    assert_eq!(w.prefix(), &data[fed.saturating_sub(len)..fed]);
                    assert!(w.buf.len() <= PrefixWindow::ROOM * len.max(piece));
                }
            }
        }
    }

    #[test]
    fn reads_window_and_content_size_of_a_real_frame() {
        let data = vec![7u8; 100_000];
        let frame = zstd::bulk::compress(&data, 3).unwrap();
        let info = inspect_frame_header(&frame).unwrap();
        assert_eq!(info.content_size, Some(100_000));
        assert!(info.window >= 100_000 && info.window <= 1 << 17, "{info:?}");
        assert!(!info.has_dictionary);
    }

    #[test]
    fn reads_a_huge_window_descriptor() {
        // magic, FHD with no single-segment and no content size, window descriptor 2^41.
        let mut frame = ZSTD_MAGIC.to_le_bytes().to_vec();
        frame.extend_from_slice(&[0x00, (31 << 3), 0, 0, 0]);
        let info = inspect_frame_header(&frame).unwrap();
        assert_eq!(info.window, 1 << 41);
        assert_eq!(info.content_size, None);
    }

    #[test]
    fn rejects_a_skippable_frame_magic() {
        let frame = [0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0];
        assert_eq!(
            inspect_frame_header(&frame).unwrap_err(),
            "magic 184d2a50, expected fd2fb528"
        );
    }
}
