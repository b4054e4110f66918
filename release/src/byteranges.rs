//! Reading the answer to a multi-range HTTP request (`Range: bytes=a-b,c-d,…`) as one stream:
//! the bytes of the asked ranges, in the order asked, and nothing else.
//!
//! A server answers such a request in one of three ways (RFC 9110 §14), and
//! [`ByterangesReader`] reads the two that carry ranges:
//!
//! - `206` with `Content-Type: multipart/byteranges; boundary=B` ([`ByterangesReader::multipart`]):
//!   one part per range, each with its own `Content-Range`. Each part MUST start where the next
//!   asked range starts and end where that range, or a later asked one, ends (a server may
//!   coalesce neighbouring ranges into one part: the bytes between them are read past). A part
//!   for a range not asked, out of order, with an unreadable `Content-Range`, a total length
//!   other than the payload's, or whose bytes are not followed by the next boundary is a
//!   [`ByterangesError`] naming the part; so is an answer that closes before every asked range
//!   was sent.
//! - `206` with a single `Content-Range` ([`ByterangesReader::single`]): a server that coalesced
//!   all the ranges into one, read past its gaps.
//! - `200` (the whole payload) is not read here: the caller drops the connection and falls back
//!   to one range per request (see [`crate::source::HttpSource`]).
//!
//! Every size from the answer is bounded before anything is kept: a line of headers is at most
//! [`MAX_LINE`] bytes, a part has at most [`MAX_PART_HEADERS`] header lines, the bytes before
//! the first boundary at most [`MAX_PREAMBLE`], a boundary at most [`MAX_BOUNDARY`] (RFC 2046).
//! Part bodies are passed through as they arrive, never buffered (one `BufRead` buffer).
//! The end of the input in the middle is [`std::io::ErrorKind::UnexpectedEof`] (a broken
//! connection, retried by the caller); a malformed answer is an `InvalidData` error carrying a
//! [`ByterangesError`] (not retried: see [`is_byteranges_error`]).
//!
//! A request is bounded too: [`range_header`] puts at most [`MAX_RANGES_PER_REQUEST`] ranges
//! and [`MAX_RANGE_HEADER`] bytes in one `Range` header.
//!
//! ```
//! use std::io::Read;
//! use ab_release::byteranges::ByterangesReader;
//! let body = "\r\n--XY\r\nContent-Range: bytes 2-3/10\r\n\r\n23\r\n--XY\r\n\
//!             Content-Range: bytes 6-7/10\r\n\r\n67\r\n--XY--\r\n";
//! let mut r = ByterangesReader::multipart(body.as_bytes(), "XY", &[2..4, 6..8], Some(10));
//! let mut s = String::new();
//! r.read_to_string(&mut s).unwrap();
//! assert_eq!(s, "2367");
//! ```

use std::io::{self, BufRead, Read};
use std::ops::Range;

/// Most ranges asked in one request.
pub const MAX_RANGES_PER_REQUEST: usize = 32;
/// Longest `Range` header value (servers commonly cap a header line at 4 or 8 KiB).
pub const MAX_RANGE_HEADER: usize = 1024;
/// Longest line in a multipart answer's delimiters and part headers.
pub const MAX_LINE: usize = 1024;
/// Most header lines of one part.
pub const MAX_PART_HEADERS: usize = 16;
/// Most bytes before the first boundary.
pub const MAX_PREAMBLE: usize = 1024;
/// Longest boundary (RFC 2046 §5.1.1).
pub const MAX_BOUNDARY: usize = 70;

/// Why a multi-range answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ByterangesError {
    /// The `Content-Type` of a `206` names no usable boundary.
    #[error("multipart answer: no usable boundary in Content-Type {0:?}")]
    Boundary(String),
    /// A line was longer than [`MAX_LINE`], or the preamble than [`MAX_PREAMBLE`].
    #[error("multipart answer: {what} longer than {limit} bytes")]
    TooLong {
        /// Which line.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A line ended in a line feed without a carriage return before it (RFC 2046 asks for
    /// CRLF; after a part's bytes, a lone LF would hide a part one byte shorter).
    #[error("multipart answer: a {what} ends in LF, not CRLF")]
    BareLineFeed {
        /// Which line.
        what: &'static str,
    },
    /// A part has more than [`MAX_PART_HEADERS`] header lines.
    #[error("multipart answer: part {part} has more than {MAX_PART_HEADERS} header lines")]
    TooManyHeaders {
        /// Part number (1 for the first).
        part: usize,
    },
    /// Where a boundary line was expected, something else came.
    #[error("multipart answer: expected the boundary {expected}, found {found:?}")]
    NoBoundary {
        /// Where (`before part 1`, `after part 2 (bytes 100-199)`…).
        expected: String,
        /// The line found (cut to 80 bytes).
        found: String,
    },
    /// A part has no `Content-Range`, or one that does not parse.
    #[error("multipart answer: part {part} has Content-Range {value:?}")]
    BadContentRange {
        /// Part number.
        part: usize,
        /// The value (empty when missing).
        value: String,
    },
    /// A part is not the next asked range (or a run of them): not asked, out of order, or of
    /// another length.
    #[error("multipart answer: part {part} is bytes {}-{}, expected a part starting at {} and ending at the end of an asked range (next asked: bytes {}-{})", got.start, got.end - 1, next.start, next.start, next.end - 1)]
    PartNotAsked {
        /// Part number.
        part: usize,
        /// Its range.
        got: Range<u64>,
        /// The next asked range not yet sent.
        next: Range<u64>,
    },
    /// A part's `Content-Length` disagrees with its `Content-Range`.
    #[error("multipart answer: part {part} says Content-Length {length} for {range_len} bytes")]
    PartLength {
        /// Part number.
        part: usize,
        /// The `Content-Length`.
        length: u64,
        /// Bytes its `Content-Range` spans.
        range_len: u64,
    },
    /// A part's total length is not the payload's.
    #[error("multipart answer: part {part} says the payload is {found} bytes, it is {expected}")]
    Total {
        /// Part number.
        part: usize,
        /// From the first response.
        expected: u64,
        /// From the part.
        found: u64,
    },
    /// The closing boundary came before every asked range was sent.
    #[error("multipart answer: closed after {parts} parts; bytes {}-{} were asked and not sent", missing.start, missing.end - 1)]
    Missing {
        /// Parts read.
        parts: usize,
        /// The first asked range not sent.
        missing: Range<u64>,
    },
}

/// Whether an I/O error carries a [`ByterangesError`] (a malformed answer, not a broken
/// connection: retrying the same request would get the same answer).
pub fn is_byteranges_error(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|i| i.downcast_ref::<ByterangesError>().is_some())
}

fn invalid(e: ByterangesError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The `Range` header value for the longest prefix of `ranges` (non-empty ones, ascending)
/// within [`MAX_RANGES_PER_REQUEST`] and [`MAX_RANGE_HEADER`], and how many it holds (at least
/// one when `ranges` is not empty).
pub fn range_header(ranges: &[Range<u64>]) -> (String, usize) {
    let mut v = String::from("bytes=");
    let mut n = 0;
    for r in ranges.iter().take(MAX_RANGES_PER_REQUEST) {
        let one = format!("{}{}-{}", if n == 0 { "" } else { "," }, r.start, r.end - 1);
        if n > 0 && v.len() + one.len() > MAX_RANGE_HEADER {
            break;
        }
        v += &one;
        n += 1;
    }
    (v, n)
}

/// The boundary of a `multipart/byteranges` `Content-Type` value, if it is one.
pub fn boundary(content_type: &str) -> Result<String, ByterangesError> {
    let bad = || ByterangesError::Boundary(content_type.chars().take(200).collect());
    let mut params = content_type.split(';');
    let mime = params.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/byteranges") {
        return Err(bad());
    }
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("boundary") {
            continue;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        // RFC 2046 bchars, not ending in a space.
        let ok = !v.is_empty()
            && v.len() <= MAX_BOUNDARY
            && !v.ends_with(' ')
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" '()+_,-./:=?".contains(&b));
        return if ok { Ok(v.to_owned()) } else { Err(bad()) };
    }
    Err(bad())
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) as the range and the total.
pub fn parse_content_range(v: &str) -> Option<(Range<u64>, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let digits = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (start, end) = (digits(start)?, digits(end)?);
    let total = match total.trim() {
        "*" => None,
        t => Some(digits(t)?),
    };
    if end < start || end == u64::MAX || total.is_some_and(|t| end >= t) {
        return None;
    }
    Some((start..end + 1, total))
}

/// Where the reader is.
#[derive(Debug, Clone)]
enum State {
    /// Before the first part (multipart only).
    Start,
    /// In a part that spans `start..end`, at `pos`.
    Part { start: u64, pos: u64, end: u64 },
    /// After a boundary: part headers come next.
    Between,
    /// After the closing boundary.
    Closed,
    /// Every asked range was delivered.
    Done,
}

/// The asked ranges' bytes out of a multi-range answer (see the module doc).
pub struct ByterangesReader<R> {
    inner: R,
    /// `--BOUNDARY`, or `None` for a single-part answer.
    delimiter: Option<String>,
    asked: Vec<Range<u64>>,
    /// The next asked range (index into `asked`) not wholly delivered.
    next: usize,
    total: Option<u64>,
    parts: usize,
    state: State,
}

impl<R: BufRead> ByterangesReader<R> {
    /// Reads a `multipart/byteranges` body with `boundary`, answering a request for `asked`
    /// (non-empty, ascending, disjoint), of a payload of `total` bytes when known.
    pub fn multipart(
        inner: R,
        boundary: &str,
        asked: &[Range<u64>],
        total: Option<u64>,
    ) -> ByterangesReader<R> {
        ByterangesReader {
            inner,
            delimiter: Some(format!("--{boundary}")),
            asked: asked.to_vec(),
            next: 0,
            total,
            parts: 0,
            state: State::Start,
        }
    }

    /// Reads the body of a single-part `206` spanning `part` (from its `Content-Range`), which
    /// must start at or before the first of `asked` and end at or after the last.
    pub fn single(
        inner: R,
        part: Range<u64>,
        asked: &[Range<u64>],
    ) -> Result<ByterangesReader<R>, ByterangesError> {
        let (first, last) = (asked[0].clone(), asked[asked.len() - 1].clone());
        if part.start > first.start || part.end < last.end {
            return Err(ByterangesError::PartNotAsked {
                part: 1,
                got: part,
                next: first,
            });
        }
        Ok(ByterangesReader {
            inner,
            delimiter: None,
            asked: asked.to_vec(),
            next: 0,
            total: None,
            parts: 1,
            state: State::Part {
                start: part.start,
                pos: part.start,
                end: part.end,
            },
        })
    }

    /// One line without its line end, at most [`MAX_LINE`] bytes.
    fn line(&mut self, what: &'static str) -> io::Result<String> {
        let mut buf = Vec::new();
        let n = (&mut self.inner)
            .take(MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            if buf.len() > MAX_LINE {
                return Err(invalid(ByterangesError::TooLong {
                    what,
                    limit: MAX_LINE,
                }));
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("multipart answer ended in the {what}"),
            ));
        }
        buf.pop();
        if buf.pop() != Some(b'\r') {
            return Err(invalid(ByterangesError::BareLineFeed { what }));
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn no_boundary(&self, expected: String, found: &str) -> io::Error {
        invalid(ByterangesError::NoBoundary {
            expected,
            found: found.chars().take(80).collect(),
        })
    }

    /// Reads a delimiter line (after the preamble, or after a part's CRLF); whether it closes.
    fn delimiter_line(&mut self, where_: String, mut allowed_junk: usize) -> io::Result<bool> {
        let delim = self.delimiter.clone().expect("multipart");
        loop {
            let line = self.line("boundary line")?;
            let trimmed = line.trim_end_matches([' ', '\t']);
            if trimmed == delim {
                return Ok(false);
            }
            if trimmed.strip_prefix(delim.as_str()) == Some("--") {
                return Ok(true);
            }
            // Preamble lines are skipped within their bound; anywhere else this is junk.
            match allowed_junk.checked_sub(line.len() + 2) {
                Some(left) if allowed_junk > 0 => allowed_junk = left,
                _ if allowed_junk > 0 => {
                    return Err(invalid(ByterangesError::TooLong {
                        what: "preamble",
                        limit: MAX_PREAMBLE,
                    }))
                }
                _ => return Err(self.no_boundary(where_, &line)),
            }
        }
    }

    /// Reads part headers after a delimiter and checks the part's range; enters it.
    fn start_part(&mut self) -> io::Result<()> {
        self.parts += 1;
        let part = self.parts;
        let (mut range, mut length) = (None, None);
        let mut lines = 0;
        loop {
            let line = self.line("part headers")?;
            if line.is_empty() {
                break;
            }
            lines += 1;
            if lines > MAX_PART_HEADERS {
                return Err(invalid(ByterangesError::TooManyHeaders { part }));
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let bad = || {
                invalid(ByterangesError::BadContentRange {
                    part,
                    value: value.trim().chars().take(80).collect(),
                })
            };
            if name.trim().eq_ignore_ascii_case("content-range") {
                range = Some(parse_content_range(value).ok_or_else(bad)?);
            } else if name.trim().eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse::<u64>().map_err(|_| bad())?);
            }
        }
        let Some((got, total)) = range else {
            return Err(invalid(ByterangesError::BadContentRange {
                part,
                value: String::new(),
            }));
        };
        if let (Some(expected), Some(found)) = (self.total, total) {
            if expected != found {
                return Err(invalid(ByterangesError::Total {
                    part,
                    expected,
                    found,
                }));
            }
        }
        self.total = self.total.or(total);
        if let Some(length) = length.filter(|&l| l != got.end - got.start) {
            return Err(invalid(ByterangesError::PartLength {
                part,
                length,
                range_len: got.end - got.start,
            }));
        }
        let next = self.asked[self.next].clone();
        let ends_an_asked = self.asked[self.next..].iter().any(|r| r.end == got.end);
        if got.start != next.start || !ends_an_asked {
            return Err(invalid(ByterangesError::PartNotAsked { part, got, next }));
        }
        self.state = State::Part {
            start: got.start,
            pos: got.start,
            end: got.end,
        };
        Ok(())
    }

    /// Reads and drops `n` bytes of the current part.
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let skipped = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        if skipped < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

impl<R: BufRead> ByterangesReader<R> {
    /// After the bytes of part `range`: the CRLF, then a boundary; the state that follows.
    fn end_part(&mut self, range: Range<u64>) -> io::Result<State> {
        let where_ = format!(
            "after part {} (bytes {}-{})",
            self.parts,
            range.start,
            range.end - 1
        );
        let end = self.line("boundary line")?;
        if !end.is_empty() {
            return Err(self.no_boundary(where_, &end));
        }
        Ok(if self.delimiter_line(where_, 0)? {
            State::Closed
        } else {
            State::Between
        })
    }
}

impl<R: BufRead> Read for ByterangesReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if buf.is_empty() {
                return Ok(0);
            }
            match self.state.clone() {
                State::Done => return Ok(0),
                State::Start => {
                    self.state = if self.delimiter_line("before part 1".into(), MAX_PREAMBLE)? {
                        State::Closed
                    } else {
                        State::Between
                    };
                }
                State::Between => self.start_part()?,
                State::Closed => {
                    return match self.asked.get(self.next) {
                        None => {
                            self.state = State::Done;
                            Ok(0)
                        }
                        Some(missing) => Err(invalid(ByterangesError::Missing {
                            parts: self.parts,
                            missing: missing.clone(),
                        })),
                    };
                }
                State::Part { start, pos, end } => {
                    let Some(want) = self.asked.get(self.next).cloned() else {
                        // A single part may go on past the last asked range: not read.
                        self.state = State::Done;
                        return Ok(0);
                    };
                    if pos >= want.end {
                        self.next += 1;
                        continue;
                    }
                    if pos < want.start {
                        // A gap inside a coalesced part.
                        let gap = want.start - pos;
                        self.skip(gap)?;
                        self.state = State::Part {
                            start,
                            pos: want.start,
                            end,
                        };
                        continue;
                    }
                    let left = want.end.min(end) - pos;
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let got = self.inner.read(&mut buf[..n])?;
                    if got == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("multipart answer ended at payload offset {pos}"),
                        ));
                    }
                    let pos = pos + got as u64;
                    self.state = State::Part { start, pos, end };
                    if pos == end && self.delimiter.is_some() {
                        // The boundary is checked before the part's last bytes are handed
                        // out, so a part longer than its Content-Range never passes.
                        self.state = self.end_part(start..end)?;
                        if pos >= want.end {
                            self.next += 1;
                        }
                    }
                    return Ok(got);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Payload byte `i` is `i % 251`.
    fn byte(i: u64) -> u8 {
        (i % 251) as u8
    }

    fn bytes(r: Range<u64>) -> Vec<u8> {
        r.map(byte).collect()
    }

    /// A multipart body as nginx sends it: one part per range in `parts`, total 1000.
    fn body(parts: &[Range<u64>]) -> Vec<u8> {
        let mut b = Vec::new();
        for p in parts {
            b.extend_from_slice(
                format!(
                    "\r\n--B0\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {}-{}/1000\r\n\r\n",
                    p.start,
                    p.end - 1
                )
                .as_bytes(),
            );
            b.extend_from_slice(&bytes(p.clone()));
        }
        b.extend_from_slice(b"\r\n--B0--\r\n");
        b
    }

    fn read_all(body: &[u8], asked: &[Range<u64>]) -> Result<Vec<u8>, io::Error> {
        // A small buffer, so lines and parts straddle refills.
        let r = io::BufReader::with_capacity(7, body);
        let mut out = Vec::new();
        ByterangesReader::multipart(r, "B0", asked, Some(1000)).read_to_end(&mut out)?;
        Ok(out)
    }

    fn err(body: &[u8], asked: &[Range<u64>]) -> String {
        let e = read_all(body, asked).unwrap_err();
        assert!(is_byteranges_error(&e), "{e:?}");
        e.to_string()
    }

    fn concat(asked: &[Range<u64>]) -> Vec<u8> {
        asked.iter().flat_map(|r| bytes(r.clone())).collect()
    }

    #[test]
    fn delivers_the_bytes_of_each_asked_range_in_order() {
        let asked = [0..10, 100..350, 999..1000];
        assert_eq!(read_all(&body(&asked), &asked).unwrap(), concat(&asked));
    }

    #[test]
    fn reads_past_the_gaps_of_a_part_that_coalesces_neighbouring_ranges() {
        let asked = [10..20, 25..30, 40..50, 60..70];
        let b = body(&[10..30, 40..70]);
        assert_eq!(read_all(&b, &asked).unwrap(), concat(&asked));
    }

    #[test]
    fn accepts_a_quoted_boundary_and_a_preamble_and_refuses_bare_line_feeds() {
        assert_eq!(
            boundary("multipart/byteranges; boundary=\"B0\"").unwrap(),
            "B0"
        );
        assert_eq!(boundary("Multipart/ByteRanges;BOUNDARY=B0").unwrap(), "B0");
        let asked = std::slice::from_ref(&(5..8));
        let b = b"This is a preamble.\r\n--B0\r\nContent-Range: bytes 5-7/1000\r\n\r\n\x05\x06\x07\r\n--B0--\r\n";
        assert_eq!(read_all(b, asked).unwrap(), vec![5, 6, 7]);
        let b = b"--B0\r\nContent-Range: bytes 5-7/1000\r\n\r\n\x05\x06\x07\n--B0--\r\n";
        assert_eq!(
            err(b, asked),
            "multipart answer: a boundary line ends in LF, not CRLF"
        );
    }

    #[test]
    fn a_single_part_answer_is_read_past_its_gaps() {
        let asked = [10..20, 30..40];
        let data = bytes(0..50);
        let mut r = ByterangesReader::single(&data[..], 0..50, &asked).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, concat(&asked));
        // One that does not reach the last asked range is refused.
        let e = ByterangesReader::single(&data[..], 0..35, &asked)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "multipart answer: part 1 is bytes 0-34, expected a part starting at 10 and ending at the end of an asked range (next asked: bytes 10-19)"
        );
    }

    #[test]
    fn the_range_header_is_bounded_in_ranges_and_length() {
        let few = [0..10, 20..30];
        assert_eq!(range_header(&few), ("bytes=0-9,20-29".into(), 2));
        let many: Vec<Range<u64>> = (0..100).map(|i| i * 10..i * 10 + 5).collect();
        let (v, n) = range_header(&many);
        assert_eq!(n, MAX_RANGES_PER_REQUEST);
        assert!(v.ends_with(",310-314"), "{v}");
        let huge: Vec<Range<u64>> = (0..32)
            .map(|i| u64::MAX / 2 + i * 1000..u64::MAX / 2 + i * 1000 + 5)
            .collect();
        let (v, n) = range_header(&huge);
        assert!(
            v.len() <= MAX_RANGE_HEADER && n < 32 && n > 0,
            "{n} {}",
            v.len()
        );
    }

    /// Hostile answers, each a small change of a good one, with the exact error.
    #[test]
    fn refuses_hostile_answers_naming_the_part() {
        let asked = [0..10, 100..200, 500..600];
        let with_parts = |parts: &[(&str, Range<u64>)]| {
            let mut b = Vec::new();
            for (cr, data) in parts {
                b.extend_from_slice(format!("\r\n--B0\r\nContent-Range: {cr}\r\n\r\n").as_bytes());
                b.extend_from_slice(&bytes(data.clone()));
            }
            b.extend_from_slice(b"\r\n--B0--\r\n");
            b
        };
        let ok = [
            ("bytes 0-9/1000", 0..10),
            ("bytes 100-199/1000", 100..200),
            ("bytes 500-599/1000", 500..600),
        ];
        assert_eq!(read_all(&with_parts(&ok), &asked).unwrap(), concat(&asked));
        for (name, parts, error) in [
            (
                "a range not asked",
                vec![ok[0].clone(), ("bytes 101-200/1000", 101..201), ok[2].clone()],
                "multipart answer: part 2 is bytes 101-200, expected a part starting at 100 and ending at the end of an asked range (next asked: bytes 100-199)",
            ),
            (
                "out of order",
                vec![ok[0].clone(), ok[2].clone(), ok[1].clone()],
                "multipart answer: part 2 is bytes 500-599, expected a part starting at 100 and ending at the end of an asked range (next asked: bytes 100-199)",
            ),
            (
                "a part shorter than asked",
                vec![ok[0].clone(), ("bytes 100-198/1000", 100..199), ok[2].clone()],
                "multipart answer: part 2 is bytes 100-198, expected a part starting at 100 and ending at the end of an asked range (next asked: bytes 100-199)",
            ),
            (
                "more bytes than its Content-Range says",
                vec![ok[0].clone(), ("bytes 100-199/1000", 100..201), ok[2].clone()],
                // Payload bytes 200 and 201 where the CRLF should be.
                "multipart answer: expected the boundary after part 2 (bytes 100-199), found \"\u{fffd}\"",
            ),
            (
                "another total length",
                vec![ok[0].clone(), ("bytes 100-199/1001", 100..200), ok[2].clone()],
                "multipart answer: part 2 says the payload is 1001 bytes, it is 1000",
            ),
            (
                "an unreadable Content-Range",
                vec![ok[0].clone(), ("bytes 100-0x99/1000", 100..200), ok[2].clone()],
                "multipart answer: part 2 has Content-Range \"bytes 100-0x99/1000\"",
            ),
            (
                "an inverted Content-Range",
                vec![ok[0].clone(), ("bytes 199-100/1000", 100..200), ok[2].clone()],
                "multipart answer: part 2 has Content-Range \"bytes 199-100/1000\"",
            ),
            (
                "a part missing",
                vec![ok[0].clone(), ok[1].clone()],
                "multipart answer: closed after 2 parts; bytes 500-599 were asked and not sent",
            ),
        ] {
            assert_eq!(err(&with_parts(&parts), &asked), error, "{name}");
        }
    }

    #[test]
    fn refuses_malformed_framing() {
        let asked = std::slice::from_ref(&(0..10));
        let part = "Content-Range: bytes 0-9/1000\r\n\r\n";
        let data = String::from_utf8(bytes(0..10)).unwrap();
        for (name, b, error) in [
            (
                "no Content-Range",
                format!("--B0\r\nContent-Type: x\r\n\r\n{data}\r\n--B0--\r\n"),
                "multipart answer: part 1 has Content-Range \"\"".to_owned(),
            ),
            (
                "another boundary",
                format!("--B1\r\n{part}{data}\r\n--B1--\r\n"),
                format!("multipart answer: preamble longer than {MAX_PREAMBLE} bytes"),
            ),
            (
                "a Content-Length that disagrees",
                format!("--B0\r\nContent-Length: 11\r\n{part}{data}\r\n--B0--\r\n"),
                "multipart answer: part 1 says Content-Length 11 for 10 bytes".to_owned(),
            ),
            (
                "closed at once",
                "--B0--\r\n".to_owned(),
                "multipart answer: closed after 0 parts; bytes 0-9 were asked and not sent"
                    .to_owned(),
            ),
            (
                "too many header lines",
                format!(
                    "--B0\r\n{}{part}{data}",
                    "X-A: 1\r\n".repeat(MAX_PART_HEADERS)
                ),
                "multipart answer: part 1 has more than 16 header lines".to_owned(),
            ),
            (
                "a header line too long",
                format!("--B0\r\nX-A: {}\r\n{part}{data}", "a".repeat(MAX_LINE)),
                format!("multipart answer: part headers longer than {MAX_LINE} bytes"),
            ),
        ] {
            // "another boundary": the B1 lines are preamble until the bound runs out.
            let b = if name == "another boundary" {
                format!("{}{b}", "x\r\n".repeat(MAX_PREAMBLE / 3 + 1))
            } else {
                b
            };
            assert_eq!(err(b.as_bytes(), asked), error, "{name}");
        }
        for ct in [
            "multipart/mixed; boundary=B0",
            "multipart/byteranges",
            "multipart/byteranges; boundary=",
            "multipart/byteranges; boundary=a\u{7f}b",
            &format!(
                "multipart/byteranges; boundary={}",
                "b".repeat(MAX_BOUNDARY + 1)
            ),
        ] {
            assert!(
                matches!(boundary(ct), Err(ByterangesError::Boundary(_))),
                "{ct}"
            );
        }
    }

    #[test]
    fn an_answer_cut_short_is_an_unexpected_end_not_a_refusal() {
        let asked = [0..10, 100..200];
        let good = body(&asked);
        for cut in [0, 5, 30, good.len() / 2, good.len() - 20] {
            let e = read_all(&good[..cut], &asked).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}: {e}");
            assert!(!is_byteranges_error(&e));
        }
    }

    #[test]
    fn content_range_parsing() {
        for (v, want) in [
            ("bytes 0-9/10", Some((0..10, Some(10)))),
            ("bytes 5-5/*", Some((5..6, None))),
            (" bytes 1-2/3 ", Some((1..3, Some(3)))),
            ("bytes 0-10/10", None),
            ("bytes 3-2/10", None),
            ("bytes -2/10", None),
            ("bytes +1-2/10", None),
            ("bits 0-9/10", None),
            ("bytes 0-18446744073709551615/*", None),
        ] {
            assert_eq!(parse_content_range(v), want, "{v}");
        }
    }

    /// Mutations of a good answer: every one is read correctly, refused, or cut short; none
    /// panics, and none yields bytes other than the asked ones.
    #[test]
    fn mutated_answers_never_yield_wrong_bytes_silently() {
        let asked = [3..40, 100..180, 700..710];
        let good = body(&asked);
        let want = concat(&asked);
        let mut x = 0x9e37_79b9u32;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..3000 {
            let mut b = good.clone();
            match rnd() % 3 {
                0 => {
                    let i = rnd() as usize % b.len();
                    b[i] = rnd() as u8;
                }
                1 => {
                    let i = rnd() as usize % b.len();
                    b.remove(i);
                }
                _ => {
                    let i = rnd() as usize % b.len();
                    b.insert(i, rnd() as u8);
                }
            }
            if let Ok(out) = read_all(&b, &asked) {
                // A changed byte inside a part's data gives other data of the right length
                // (the frame's SHA-256 catches it); anything else is refused.
                assert_eq!(out.len(), want.len());
                let diff = out.iter().zip(&want).filter(|(a, b)| a != b).count();
                assert!(
                    diff <= 1,
                    "{diff} bytes differ: {:?}",
                    String::from_utf8_lossy(&b)
                );
            }
        }
    }
}
