//! Where a payload comes from: a file, a block device, or an http(s) URL, read from any offset.
//!
//! A [`Source`] opens a byte stream at an offset (a seek for files, a `Range: bytes=N-` request
//! for HTTP). [`ResumingReader`] turns a source into one `Read` that survives transient
//! failures and gives up on hopeless ones ([`RetryPolicy`], the `[download]` configuration):
//!
//! - after a failed read, a stream that ends early or a failed open, it waits and reopens at
//!   the byte it had reached. The wait doubles with each failure, up to a cap, and its upper
//!   half is random (jitter), so a fleet does not retry in step;
//! - failures are counted across reopens and the count resets only on progress, new bytes past
//!   the furthest offset reached: a server that answers and then closes at the same offset
//!   every time ends in [`SourceError::GaveUp`] after [`RetryPolicy::attempts`] failures;
//! - the whole download has a deadline ([`SourceError::DeadlineExceeded`]) and a minimum
//!   throughput over a window ([`SourceError::TooSlow`]), so a server that trickles bytes is
//!   cut off. Both count only time spent waiting for the source (reads, reconnects, waits
//!   between them), never the time the consumer spends writing what it read;
//! - permanent failures (HTTP 4xx, a server that ignores ranges, a refused redirect, a payload
//!   that changed on the server, a malformed multi-range answer) are not retried.
//!
//! [`ResumingReader::seek_ranges`] reads several ranges as one stream; [`HttpSource`] asks for
//! them in one request where the server answers multi-range requests (parsed by
//! [`crate::byteranges`]), one range per request where it does not.
//!
//! [`HttpSource`] remembers the `ETag` (else the `Last-Modified` date) and the length of its
//! first response and sends it as `If-Range` when it resumes. A payload replaced on the server
//! meanwhile (a `200` with the new validator, or a `206` whose validator or length changed) is
//! [`SourceError::PayloadChanged`]: the bytes already read belong to the old payload, so the
//! reader cannot go on, and the caller starts over from offset 0 after
//! [`Source::start_over`] (the device's install does). Redirects are
//! followed by the source itself, at most [`MAX_REDIRECTS`] in a row, and one from https to
//! plain http is refused ([`check_redirect`]).
//!
//! ```
//! use std::io::Read;
//! use ab_release::source::{FileSource, ResumingReader, RetryPolicy};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("p");
//! std::fs::write(&path, b"0123456789").unwrap();
//! let mut r = ResumingReader::new(Box::new(FileSource::open(&path).unwrap()), 4, RetryPolicy::default()).unwrap();
//! let mut s = String::new();
//! r.read_to_string(&mut s).unwrap();
//! assert_eq!(s, "456789");
//! ```

use crate::byteranges::{self, ByterangesReader};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Redirects followed in a row before an open fails with [`SourceError::TooManyRedirects`].
pub const MAX_REDIRECTS: u32 = 5;

/// Largest [`RetryPolicy::attempts`] the configuration accepts.
pub const MAX_ATTEMPTS: u32 = 1000;

/// Why a source could not deliver bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The server answered with an error status (not retried for 4xx).
    #[error("{url}: HTTP status {status} {text}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The status text.
        text: String,
    },
    /// The server did not honour a range request.
    #[error("{url}: asked for bytes from offset {offset}, the server sent {answer}")]
    RangeNotHonoured {
        /// The URL.
        url: String,
        /// The offset asked for.
        offset: u64,
        /// What came back instead.
        answer: String,
    },
    /// The payload on the server is not the one the download started with.
    #[error("{url} changed on the server during the download ({change}): the bytes from offset {offset} on belong to another payload")]
    PayloadChanged {
        /// The URL.
        url: String,
        /// The offset the download had reached.
        offset: u64,
        /// What changed (`ETag "a" became "b"`…).
        change: String,
    },
    /// A redirect the source does not follow.
    #[error("refusing the redirect from {from} to {to:?}: {reason}")]
    RedirectRefused {
        /// The URL that answered with the redirect.
        from: String,
        /// Where it pointed (the raw `Location` when it is not a URL).
        to: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Redirects went on for longer than [`MAX_REDIRECTS`].
    #[error("{url}: more than {limit} redirects in a row")]
    TooManyRedirects {
        /// The URL asked for.
        url: String,
        /// [`MAX_REDIRECTS`].
        limit: u32,
    },
    /// Transient failures without progress went on for longer than the retry policy allows.
    #[error("giving up on {what} at offset {offset} after {attempts} attempts without progress")]
    GaveUp {
        /// The source.
        what: String,
        /// The offset reached.
        offset: u64,
        /// Consecutive failed attempts, none of which brought a byte past the furthest offset.
        attempts: u32,
        /// The last failure.
        #[source]
        last: io::Error,
    },
    /// The download took longer than [`RetryPolicy::deadline`].
    #[error("giving up on {what} at offset {offset}: the download deadline of {} s passed", deadline.as_secs_f64())]
    DeadlineExceeded {
        /// The source.
        what: String,
        /// The offset reached.
        offset: u64,
        /// [`RetryPolicy::deadline`].
        deadline: Duration,
    },
    /// Fewer bytes arrived within a throughput window than the policy's minimum.
    #[error("giving up on {what} at offset {offset}: {received} bytes in {} s, below the minimum of {min_bytes_per_sec} bytes/s", window.as_secs_f64())]
    TooSlow {
        /// The source.
        what: String,
        /// The offset reached.
        offset: u64,
        /// Bytes that arrived in the window.
        received: u64,
        /// [`RetryPolicy::throughput_window`].
        window: Duration,
        /// [`RetryPolicy::min_bytes_per_sec`].
        min_bytes_per_sec: u64,
    },
}

/// How a download is retried and when it is abandoned (the `[download]` configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RetryPolicy {
    /// Consecutive failures without progress before giving up (at least 1; 1 means no retry).
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further failure without progress.
    pub initial_delay: Duration,
    /// Longest wait between retries.
    pub max_delay: Duration,
    /// Longest time the whole download may spend waiting for the source.
    pub deadline: Duration,
    /// Fewest bytes per second over each [`RetryPolicy::throughput_window`]; 0 turns the
    /// check off.
    pub min_bytes_per_sec: u64,
    /// The window over which the throughput is measured.
    pub throughput_window: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 6,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            deadline: Duration::from_secs(6 * 3600),
            min_bytes_per_sec: 1024,
            throughput_window: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th consecutive failure without progress (1 for the
    /// first): `initial_delay · 2^(failures-1)`, at most `max_delay`, of which the upper half
    /// is scaled by `jitter` (in 0..1). So it is never less than half the doubled delay.
    pub fn backoff(&self, failures: u32, jitter: f64) -> Duration {
        let doubling = 2u32.saturating_pow(failures.saturating_sub(1));
        let base = self
            .initial_delay
            .saturating_mul(doubling)
            .min(self.max_delay);
        base / 2 + (base / 2).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// A number in 0..1 that differs from call to call: std's randomly keyed hasher over a
/// counter. Jitter only has to spread retries apart, not be unpredictable.
fn jitter() -> f64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let x = std::collections::hash_map::RandomState::new()
        .hash_one(CALLS.fetch_add(1, Ordering::Relaxed));
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A stream opened at some offset of a payload.
pub type Stream = Box<dyn Read + Send>;

/// A payload that can be read from any offset.
pub trait Source: Send {
    /// Human-readable name (path or URL) for messages.
    fn describe(&self) -> String;
    /// Opens a stream at `offset`. Errors whose inner error is a [`SourceError::HttpStatus`]
    /// of 4xx, any other [`SourceError`] or a
    /// [`ByterangesError`](crate::byteranges::ByterangesError) are permanent; others
    /// are transient.
    fn open_at(&mut self, offset: u64) -> io::Result<Stream>;
    /// Opens a stream of the bytes `offset..end` (`end` = `None`: to the end of the payload).
    /// The stream may go on past `end` (sources that cannot bound it): the reader stops there.
    /// HTTP asks for `Range: bytes=offset-(end-1)`.
    fn open_range(&mut self, offset: u64, end: Option<u64>) -> io::Result<Stream> {
        let _ = end;
        self.open_at(offset)
    }
    /// Opens a stream of several `ranges` (non-empty, ascending, disjoint) at once where the
    /// source can: the stream gives the bytes of the first `n` ranges one after the other,
    /// nothing between them, and `n` (at least 1) is returned with it. By default one range
    /// per open; HTTP asks for several in one request (see [`HttpSource`]).
    fn open_ranges(&mut self, ranges: &[Range<u64>]) -> io::Result<(Stream, usize)> {
        let r = &ranges[0];
        Ok((self.open_range(r.start, Some(r.end))?, 1))
    }
    /// Total length, when known (after the first open for HTTP).
    fn total_len(&self) -> Option<u64>;
    /// A block device: its length is whole sectors, so bytes after the payload's end are
    /// padding, not trailing data.
    fn is_block_device(&self) -> bool {
        false
    }
    /// Forgets what earlier opens learnt about the payload (its validator and length), so the
    /// next open starts a new download, after [`SourceError::PayloadChanged`].
    fn start_over(&mut self) {}
}

/// Whether an error from a source is worth retrying.
pub fn is_transient(e: &io::Error) -> bool {
    if byteranges::is_byteranges_error(e) {
        return false;
    }
    match e.get_ref().and_then(|i| i.downcast_ref::<SourceError>()) {
        Some(SourceError::HttpStatus { status, .. }) => {
            *status >= 500 || *status == 408 || *status == 429
        }
        Some(_) => false,
        None => !matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput
        ),
    }
}

/// Whether an error says the payload changed on the server mid-download
/// ([`SourceError::PayloadChanged`]): the download must start over from offset 0.
pub fn is_payload_changed(e: &io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<SourceError>()),
        Some(SourceError::PayloadChanged { .. })
    )
}

/// A payload in a file or on a block device.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    len: u64,
    block_device: bool,
}

impl FileSource {
    /// Opens `path` to learn its length (block devices included).
    pub fn open(path: &Path) -> io::Result<FileSource> {
        let mut f = File::open(path)?;
        let len = f.seek(SeekFrom::End(0))?;
        let block_device =
            std::os::unix::fs::FileTypeExt::is_block_device(&f.metadata()?.file_type());
        Ok(FileSource {
            path: path.to_owned(),
            len,
            block_device,
        })
    }
}

impl Source for FileSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn open_at(&mut self, offset: u64) -> io::Result<Stream> {
        self.open_range(offset, None)
    }
    fn open_range(&mut self, offset: u64, end: Option<u64>) -> io::Result<Stream> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(offset))?;
        // A short range (a delta's frames) needs no 1 MiB buffer, nor reading past its end.
        let len = end.map_or(u64::MAX, |e| e.saturating_sub(offset));
        let capacity = len.clamp(4096, 1 << 20) as usize;
        Ok(Box::new(io::BufReader::with_capacity(
            capacity,
            f.take(len),
        )))
    }
    fn total_len(&self) -> Option<u64> {
        Some(self.len)
    }
    fn is_block_device(&self) -> bool {
        self.block_device
    }
}

/// What identifies one version of a payload on a server: learnt from the first response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Identity {
    etag: Option<String>,
    last_modified: Option<String>,
    len: Option<u64>,
}

impl Identity {
    /// The `If-Range` value: a strong ETag, else the modification date.
    fn if_range(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .filter(|t| !t.starts_with("W/"))
            .or(self.last_modified.as_deref())
    }

    /// How `now` differs from this identity, if it does (a value missing from either side
    /// says nothing).
    fn change_to(&self, now: &Identity) -> Option<String> {
        // Weak comparison (RFC 9110 §8.8.3.2): a proxy that compresses may weaken the tag.
        let weak = |t: &str| t.strip_prefix("W/").unwrap_or(t).to_owned();
        if let (Some(a), Some(b)) = (&self.etag, &now.etag) {
            if weak(a) != weak(b) {
                return Some(format!("ETag {a} became {b}"));
            }
        }
        if let (Some(a), Some(b)) = (&self.last_modified, &now.last_modified) {
            if a != b {
                return Some(format!("Last-Modified {a} became {b}"));
            }
        }
        match (self.len, now.len) {
            (Some(a), Some(b)) if a != b => Some(format!("length {a} became {b}")),
            _ => None,
        }
    }
}

/// A payload on an http(s) server that supports range requests. Proxies come from the
/// environment (`http_proxy`, `https_proxy`, `ALL_PROXY`, `NO_PROXY`).
///
/// Several ranges ([`Source::open_ranges`]) are asked in one request, `Range: bytes=a-b,c-d,…`
/// (at most [`byteranges::MAX_RANGES_PER_REQUEST`] ranges and
/// [`byteranges::MAX_RANGE_HEADER`] bytes), with `If-Range` as for one range. The answer
/// decides, and the source remembers for as long as it lives (the whole install):
///
/// - `206 multipart/byteranges`: read part by part ([`ByterangesReader`]); a part that is not
///   what was asked is an error (not retried);
/// - `206` with one `Content-Range` that starts at or before the first range: a server that
///   coalesced them, read as one range past its gaps. One that stops before the last range
///   answers the ranges it covers, and the server is taken for one without multi-range
///   support;
/// - `200` with the same validators (nginx with `max_ranges 1`, servers without multi-range
///   support): the connection is dropped without reading the body, and from then on one
///   range per request. A `200` with new validators is [`SourceError::PayloadChanged`].
pub struct HttpSource {
    url: String,
    agent: ureq::Agent,
    /// Learnt from the first response of this download.
    identity: Option<Identity>,
    /// Whether the server answers several ranges in one response.
    multi_range: MultiRange,
}

/// What a server has shown of its multi-range support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MultiRange {
    /// Not asked yet.
    Unknown,
    /// It answered several ranges in one response.
    Supported,
    /// It answered a multi-range request with the whole payload or the first range only.
    Unsupported,
}

impl HttpSource {
    /// A source for `url` with connect and read timeouts.
    pub fn new(url: &str, connect_timeout: Duration, read_timeout: Duration) -> HttpSource {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(connect_timeout)
            .timeout_read(read_timeout)
            .try_proxy_from_env(true)
            // Redirects are followed by `open_at`, which refuses https → http.
            .redirects(0)
            .build();
        HttpSource {
            url: url.to_owned(),
            agent,
            identity: None,
            multi_range: MultiRange::Unknown,
        }
    }

    /// Where a redirect from `from` leads, if it may be followed.
    fn redirect_target(&self, from: &str, resp: &ureq::Response) -> Result<String, SourceError> {
        let refused = |to: &str, reason| SourceError::RedirectRefused {
            from: from.to_owned(),
            to: to.to_owned(),
            reason,
        };
        let location = resp
            .header("Location")
            .ok_or_else(|| refused("", "no Location header"))?;
        let to = self
            .agent
            .get(from)
            .request_url()
            .ok()
            .and_then(|u| u.as_url().join(location).ok())
            .ok_or_else(|| refused(location, "not a valid URL"))?
            .to_string();
        check_redirect(from, &to)?;
        Ok(to)
    }

    /// Checks a response to a request for bytes from `offset` of the payload.
    fn accept(&mut self, url: &str, offset: u64, resp: ureq::Response) -> io::Result<Stream> {
        let refuse = |answer: String| {
            io::Error::other(SourceError::RangeNotHonoured {
                url: url.to_owned(),
                offset,
                answer,
            })
        };
        let header = |name| resp.header(name).map(str::to_owned);
        let mut now = Identity {
            etag: header("ETag"),
            last_modified: header("Last-Modified"),
            len: None,
        };
        match resp.status() {
            206 => {
                let cr = resp.header("Content-Range").unwrap_or("").to_owned();
                match content_range(&cr) {
                    Some((start, total)) if start == offset => now.len = Some(total),
                    _ => return Err(refuse(format!("206 with Content-Range {cr:?}"))),
                }
            }
            200 => {
                now.len = resp.header("Content-Length").and_then(|v| v.parse().ok());
                // A whole file for a range: a new payload (If-Range did not match), or a
                // server that ignores ranges.
                if offset != 0
                    && self
                        .identity
                        .as_ref()
                        .and_then(|i| i.change_to(&now))
                        .is_none()
                {
                    return Err(refuse("status 200".into()));
                }
            }
            s => return Err(refuse(format!("status {s}"))),
        }
        self.check_identity(offset, now)?;
        Ok(Box::new(resp.into_reader()))
    }

    /// Records the identity of the first response; fails with
    /// [`SourceError::PayloadChanged`] when a later one differs.
    fn check_identity(&mut self, offset: u64, now: Identity) -> io::Result<()> {
        match &self.identity {
            None => self.identity = Some(now),
            Some(first) => {
                if let Some(change) = first.change_to(&now) {
                    return Err(io::Error::other(SourceError::PayloadChanged {
                        url: self.url.clone(),
                        offset,
                        change,
                    }));
                }
            }
        }
        Ok(())
    }

    /// Sends a GET with this `Range` (and `If-Range` once the payload's identity is known),
    /// following redirects; the final URL and the response.
    fn get(&mut self, range: &str) -> io::Result<(String, ureq::Response)> {
        let mut url = self.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.agent.get(&url).set("Range", range);
            if let Some(v) = self.identity.as_ref().and_then(Identity::if_range) {
                request = request.set("If-Range", v);
            }
            let resp = match request.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(status, r)) => {
                    return Err(io::Error::other(SourceError::HttpStatus {
                        url,
                        status,
                        text: r.status_text().to_owned(),
                    }))
                }
                Err(ureq::Error::Transport(t)) => return Err(io::Error::other(t.to_string())),
            };
            if !(300..400).contains(&resp.status()) {
                return Ok((url, resp));
            }
            url = self
                .redirect_target(&url, &resp)
                .map_err(io::Error::other)?;
        }
        Err(io::Error::other(SourceError::TooManyRedirects {
            url: self.url.clone(),
            limit: MAX_REDIRECTS,
        }))
    }

    /// Asks for `asked` (two or more ranges) in one request; see the type's doc.
    fn open_multi(&mut self, ranges: &[Range<u64>]) -> io::Result<(Stream, usize)> {
        let (header, n) = byteranges::range_header(ranges);
        let asked = &ranges[..n];
        let offset = asked[0].start;
        let (url, resp) = self.get(&header)?;
        let header_of = |name| resp.header(name).map(str::to_owned);
        let mut now = Identity {
            etag: header_of("ETag"),
            last_modified: header_of("Last-Modified"),
            len: None,
        };
        let refuse = |answer: String| {
            io::Error::other(SourceError::RangeNotHonoured {
                url: url.clone(),
                offset,
                answer,
            })
        };
        match resp.status() {
            206 => {
                if let Some(cr) = header_of("Content-Range") {
                    let Some((part, total)) = byteranges::parse_content_range(&cr) else {
                        return Err(refuse(format!("206 with Content-Range {cr:?}")));
                    };
                    now.len = total;
                    self.check_identity(offset, now)?;
                    let covered = asked.iter().take_while(|r| r.end <= part.end).count();
                    if covered == 0 || part.start > offset {
                        return Err(refuse(format!("206 with Content-Range {cr:?}")));
                    }
                    if covered < n {
                        log::info!("{url} answered only {covered} of {n} ranges: one range per request from now on");
                        self.multi_range = MultiRange::Unsupported;
                    }
                    let body = io::BufReader::new(resp.into_reader());
                    let reader = ByterangesReader::single(body, part, &asked[..covered])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    return Ok((Box::new(reader), covered));
                }
                let boundary = byteranges::boundary(&header_of("Content-Type").unwrap_or_default())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                self.check_identity(offset, now)?;
                self.multi_range = MultiRange::Supported;
                let total = self.total_len();
                let body = io::BufReader::new(resp.into_reader());
                let reader = ByterangesReader::multipart(body, &boundary, asked, total);
                Ok((Box::new(reader), n))
            }
            200 => {
                now.len = resp.header("Content-Length").and_then(|v| v.parse().ok());
                // New validators: the payload changed (If-Range did not match).
                self.check_identity(offset, now)?;
                // The whole payload: dropped unread (the connection closes), and one range
                // per request from now on.
                drop(resp);
                log::info!("{url} answered {n} ranges with the whole payload: one range per request from now on");
                self.multi_range = MultiRange::Unsupported;
                let r = &ranges[0];
                Ok((self.open_range(r.start, Some(r.end))?, 1))
            }
            s => Err(refuse(format!("status {s} to {n} ranges"))),
        }
    }
}

/// Whether a redirect from `from` to `to` (both absolute URLs) may be followed: only to
/// http(s), and never from https to plain http (the payload is signed, but a downgrade would
/// let anyone on the path see what the box fetches and feed it stale bytes until the hash
/// check fails).
pub fn check_redirect(from: &str, to: &str) -> Result<(), SourceError> {
    let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let refused = |reason| SourceError::RedirectRefused {
        from: from.to_owned(),
        to: to.to_owned(),
        reason,
    };
    match (scheme(from).as_deref(), scheme(to).as_deref()) {
        (Some("https"), Some("http")) => Err(refused("from https to plain http")),
        (_, Some("http" | "https")) => Ok(()),
        _ => Err(refused("not an http(s) URL")),
    }
}

fn content_range(v: &str) -> Option<(u64, u64)> {
    // "bytes START-END/TOTAL"
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()?))
}

impl Source for HttpSource {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn open_at(&mut self, offset: u64) -> io::Result<Stream> {
        self.open_range(offset, None)
    }

    fn open_range(&mut self, offset: u64, end: Option<u64>) -> io::Result<Stream> {
        let range = match end {
            Some(end) if end > offset => format!("bytes={offset}-{}", end - 1),
            _ => format!("bytes={offset}-"),
        };
        let (url, resp) = self.get(&range)?;
        self.accept(&url, offset, resp)
    }

    fn open_ranges(&mut self, ranges: &[Range<u64>]) -> io::Result<(Stream, usize)> {
        if ranges.len() < 2 || self.multi_range == MultiRange::Unsupported {
            let r = &ranges[0];
            return Ok((self.open_range(r.start, Some(r.end))?, 1));
        }
        self.open_multi(ranges)
    }

    fn total_len(&self) -> Option<u64> {
        self.identity.as_ref().and_then(|i| i.len)
    }

    fn start_over(&mut self) {
        self.identity = None;
    }
}

/// A source shared by successive readers: an install that starts over after
/// [`SourceError::PayloadChanged`] reads the same source again.
#[derive(Clone)]
pub struct SharedSource(Arc<Mutex<Box<dyn Source>>>);

impl SharedSource {
    /// Shares `source`.
    pub fn new(source: Box<dyn Source>) -> SharedSource {
        SharedSource(Arc::new(Mutex::new(source)))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Box<dyn Source>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Source for SharedSource {
    fn describe(&self) -> String {
        self.inner().describe()
    }
    fn open_at(&mut self, offset: u64) -> io::Result<Stream> {
        self.inner().open_at(offset)
    }
    fn open_range(&mut self, offset: u64, end: Option<u64>) -> io::Result<Stream> {
        self.inner().open_range(offset, end)
    }
    fn open_ranges(&mut self, ranges: &[Range<u64>]) -> io::Result<(Stream, usize)> {
        self.inner().open_ranges(ranges)
    }
    fn total_len(&self) -> Option<u64> {
        self.inner().total_len()
    }
    fn is_block_device(&self) -> bool {
        self.inner().is_block_device()
    }
    fn start_over(&mut self) {
        self.inner().start_over()
    }
}

/// One `Read` over a source that reopens at the current offset after transient failures,
/// within the limits of a [`RetryPolicy`] (see the module doc).
pub struct ResumingReader {
    source: Box<dyn Source>,
    stream: Option<Stream>,
    offset: u64,
    /// Where the current range ends (`None`: the payload's end), see [`ResumingReader::seek_range`].
    end: Option<u64>,
    /// Reading to the payload's end: the next request asks only up to here
    /// ([`ResumingReader::plan_until`]).
    soft_end: Option<u64>,
    /// Where the open stream was asked to end, reading to the payload's end: a stream that
    /// ends there is followed by the next request, not counted as a failure.
    stream_end: Option<u64>,
    /// Ranges to read after the current one, see [`ResumingReader::seek_ranges`].
    queue: VecDeque<Range<u64>>,
    /// Ranges the open stream delivers, the current one included.
    covers: usize,
    /// The furthest offset reached: bytes past it are progress.
    furthest: u64,
    policy: RetryPolicy,
    /// Consecutive failures since the last progress.
    failures: u32,
    /// Time spent waiting for the source: reads, opens, waits between attempts.
    waited: Duration,
    /// Bytes read so far.
    received: u64,
    /// Where the current throughput window started: `waited` and `received` then.
    window_start: (Duration, u64),
    /// Retries made so far, over the whole read (for reports and tests).
    pub retries: u32,
}

impl ResumingReader {
    /// Opens `source` at `offset` (retrying transient failures).
    pub fn new(
        source: Box<dyn Source>,
        offset: u64,
        policy: RetryPolicy,
    ) -> io::Result<ResumingReader> {
        ResumingReader::new_planned(source, offset, None, policy)
    }

    /// Opens `source` at `offset` to read on to its end, asking the first request only for the
    /// bytes up to `first_end` ([`ResumingReader::plan_until`]): a payload's prelude is read
    /// without the server sending frames a delta install will not read.
    pub fn new_planned(
        source: Box<dyn Source>,
        offset: u64,
        first_end: Option<u64>,
        policy: RetryPolicy,
    ) -> io::Result<ResumingReader> {
        let mut r = ResumingReader {
            source,
            stream: None,
            offset,
            end: None,
            soft_end: first_end,
            stream_end: None,
            queue: VecDeque::new(),
            covers: 1,
            furthest: offset,
            policy,
            failures: 0,
            waited: Duration::ZERO,
            received: 0,
            window_start: (Duration::ZERO, 0),
            retries: 0,
        };
        r.open()?;
        Ok(r)
    }

    /// The offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The source's name.
    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// Reading on to the payload's end, the next request asks only for the bytes up to `at`
    /// (no effect once that is reached, or on a stream that already goes further, such as a
    /// `200` for the whole payload). Past `at` the reader opens a request to the end: the
    /// caller knows it needs the bytes up to `at` and decides there where to read next, so an
    /// open-ended request does not make the server send, into socket buffers, bytes the caller
    /// drops when it seeks elsewhere.
    pub fn plan_until(&mut self, at: u64) {
        self.soft_end = Some(at);
    }

    /// Moves to `offset`, reopening the stream there (to the payload's end).
    pub fn seek_to(&mut self, offset: u64) -> io::Result<()> {
        if offset != self.offset || self.stream.is_none() || self.end.is_some() {
            self.offset = offset;
            self.end = None;
            self.soft_end = None;
            self.queue.clear();
            self.stream = None;
            self.open()?;
        }
        Ok(())
    }

    /// Opens the bytes `range` of the payload (one HTTP range request; reopened from the
    /// offset reached after a transient failure). Reading past `range.end` ends the stream.
    pub fn seek_range(&mut self, range: std::ops::Range<u64>) -> io::Result<()> {
        self.seek_ranges(std::slice::from_ref(&range))
    }

    /// Opens the bytes of `ranges` (non-empty, ascending, disjoint; at most
    /// [`byteranges::MAX_RANGES_PER_REQUEST`] are taken), as few requests as the source allows
    /// ([`Source::open_ranges`]). Reads give the bytes of each range in turn and
    /// [`ResumingReader::offset`] jumps from the end of one to the start of the next. After a
    /// transient failure the rest, from the offset reached, is asked again.
    pub fn seek_ranges(&mut self, ranges: &[Range<u64>]) -> io::Result<()> {
        let ranges = &ranges[..ranges.len().min(byteranges::MAX_RANGES_PER_REQUEST)];
        self.offset = ranges[0].start;
        self.end = Some(ranges[0].end);
        self.soft_end = None;
        self.queue = ranges[1..].iter().cloned().collect();
        self.stream = None;
        self.open()
    }

    /// How many bytes must be read from here to reach `r.start`, when `r` lies within the
    /// current range (from the offset on) or one of the ranges queued after it.
    pub fn reach(&self, r: &Range<u64>) -> Option<u64> {
        let end = self.end?;
        if self.offset <= r.start && r.end <= end {
            return Some(r.start - self.offset);
        }
        let mut skip = end.checked_sub(self.offset)?;
        for q in &self.queue {
            if q.start <= r.start && r.end <= q.end {
                return Some(skip + (r.start - q.start));
            }
            skip += q.end - q.start;
        }
        None
    }

    /// Bytes received from the source so far (re-fetched bytes after a retry count again).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Fails when the deadline has passed or the last window was too slow.
    fn check_limits(&mut self) -> io::Result<()> {
        let what = || self.source.describe();
        if self.waited >= self.policy.deadline {
            return Err(io::Error::other(SourceError::DeadlineExceeded {
                what: what(),
                offset: self.offset,
                deadline: self.policy.deadline,
            }));
        }
        let (started, received_then) = self.window_start;
        let window = self.policy.throughput_window;
        if self.policy.min_bytes_per_sec > 0 && self.waited - started >= window {
            let received = self.received - received_then;
            // received / window < min, without rounding the window to whole seconds.
            if u128::from(received) * 1000
                < u128::from(self.policy.min_bytes_per_sec) * window.as_millis()
            {
                return Err(io::Error::other(SourceError::TooSlow {
                    what: what(),
                    offset: self.offset,
                    received,
                    window,
                    min_bytes_per_sec: self.policy.min_bytes_per_sec,
                }));
            }
            self.window_start = (self.waited, self.received);
        }
        Ok(())
    }

    /// Opens the stream at the current offset, retrying transient failures.
    fn open(&mut self) -> io::Result<()> {
        loop {
            self.check_limits()?;
            let started = Instant::now();
            self.stream_end = None;
            let opened = match self.end {
                None => match self.soft_end.filter(|&at| at > self.offset) {
                    Some(at) => {
                        self.stream_end = Some(at);
                        self.source
                            .open_range(self.offset, Some(at))
                            .map(|s| (s, 1))
                    }
                    None => self.source.open_at(self.offset).map(|s| (s, 1)),
                },
                Some(end) if self.queue.is_empty() => self
                    .source
                    .open_range(self.offset, Some(end))
                    .map(|s| (s, 1)),
                Some(end) => {
                    let ranges: Vec<Range<u64>> = std::iter::once(self.offset..end)
                        .chain(self.queue.iter().cloned())
                        .collect();
                    self.source.open_ranges(&ranges)
                }
            };
            self.waited += started.elapsed();
            match opened {
                Ok((s, covers)) => {
                    self.stream = Some(s);
                    self.covers = covers.max(1);
                    return Ok(());
                }
                Err(e) => self.failed(e)?,
            }
        }
    }

    /// Counts a failure: gives up on a permanent one or after too many without progress,
    /// else waits before the next attempt.
    fn failed(&mut self, e: io::Error) -> io::Result<()> {
        self.stream = None;
        if !is_transient(&e) {
            return Err(e);
        }
        self.failures += 1;
        if self.failures >= self.policy.attempts.max(1) {
            return Err(io::Error::other(SourceError::GaveUp {
                what: self.source.describe(),
                offset: self.offset,
                attempts: self.failures,
                last: e,
            }));
        }
        // Never sleep past the deadline: the next check reports it.
        let delay = self
            .policy
            .backoff(self.failures, jitter())
            .min(self.policy.deadline.saturating_sub(self.waited));
        let started = Instant::now();
        std::thread::sleep(delay);
        self.waited += started.elapsed();
        self.retries += 1;
        Ok(())
    }
}

impl Read for ResumingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // At the end of a range: on to the next queued one, on the same stream while it
        // covers it.
        while let (Some(end), Some(next)) = (self.end, self.queue.front()) {
            if end > self.offset {
                break;
            }
            self.offset = next.start;
            self.end = Some(next.end);
            self.queue.pop_front();
            self.covers = self.covers.saturating_sub(1);
            if self.covers == 0 {
                self.stream = None;
            }
        }
        let buf = match self.end {
            Some(end) if end <= self.offset => return Ok(0),
            Some(end) => {
                let left = usize::try_from(end - self.offset).unwrap_or(usize::MAX);
                let n = buf.len().min(left);
                &mut buf[..n]
            }
            None => buf,
        };
        loop {
            self.check_limits()?;
            if self.stream.is_none() {
                self.open()?;
            }
            let stream = self.stream.as_mut().expect("opened");
            let started = Instant::now();
            let read = stream.read(buf);
            self.waited += started.elapsed();
            let failure = match read {
                // The planned end of a request, before the payload's: on with the next one.
                Ok(0)
                    if self.end.is_none()
                        && self.stream_end == Some(self.offset)
                        && self.source.total_len().is_none_or(|len| self.offset < len) =>
                {
                    self.stream = None;
                    continue;
                }
                Ok(0) => match self.source.total_len() {
                    // Ended before the length the source announced: the connection dropped.
                    Some(len) if self.offset < len => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("stream ended at offset {} of {len}", self.offset),
                    ),
                    _ => return Ok(0),
                },
                Ok(n) => {
                    self.offset += n as u64;
                    self.received += n as u64;
                    if self.offset > self.furthest {
                        self.furthest = self.offset;
                        self.failures = 0;
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            self.failed(failure)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_never_drops_below_half() {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        let ms = Duration::from_millis;
        // (failures, jitter, wait)
        for (failures, jitter, wait) in [
            (1, 0.0, ms(50)),
            (1, 1.0, ms(100)),
            (1, 0.5, ms(75)),
            (2, 0.0, ms(100)),
            (2, 1.0, ms(200)),
            (3, 0.0, ms(200)),
            (4, 1.0, ms(800)),
            (5, 0.0, ms(500)),
            (5, 1.0, ms(1000)),
            (40, 1.0, ms(1000)),
            (u32::MAX, 0.0, ms(500)),
            // Out-of-range jitter is clamped.
            (1, 7.0, ms(100)),
            (1, -1.0, ms(50)),
            // Failure 0 does not happen; it waits like the first.
            (0, 0.0, ms(50)),
        ] {
            assert_eq!(p.backoff(failures, jitter), wait, "{failures} {jitter}");
        }
    }

    #[test]
    fn jitter_varies_within_zero_to_one() {
        let draws: Vec<f64> = (0..64).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)), "{draws:?}");
        let mut distinct = draws.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        assert!(distinct.len() > 60, "{draws:?}");
    }

    #[test]
    fn refuses_https_to_http_redirects() {
        // (from, to, refusal reason or None when followed)
        for (from, to, refused) in [
            ("http://a/p", "http://b/p", None),
            ("http://a/p", "https://a/p", None),
            ("https://a/p", "https://b/p", None),
            ("HTTPS://a/p", "HTTPS://b/p", None),
            (
                "https://a/p",
                "http://a/p",
                Some("from https to plain http"),
            ),
            (
                "https://a/p",
                "HTTP://a/p",
                Some("from https to plain http"),
            ),
            (
                "HTTPS://a/p",
                "http://a/p",
                Some("from https to plain http"),
            ),
            ("http://a/p", "ftp://a/p", Some("not an http(s) URL")),
            (
                "https://a/p",
                "file:///etc/passwd",
                Some("not an http(s) URL"),
            ),
            ("http://a/p", "a/p", Some("not an http(s) URL")),
        ] {
            match (check_redirect(from, to), refused) {
                (Ok(()), None) => {}
                (Err(SourceError::RedirectRefused { reason, .. }), Some(want)) => {
                    assert_eq!(reason, want, "{from} -> {to}")
                }
                (got, _) => panic!("{from} -> {to}: {got:?}"),
            }
        }
        assert_eq!(
            check_redirect("https://a/p", "http://a/p")
                .unwrap_err()
                .to_string(),
            "refusing the redirect from https://a/p to \"http://a/p\": from https to plain http"
        );
    }

    #[test]
    fn a_new_validator_or_length_is_a_changed_payload() {
        let first = Identity {
            etag: Some("\"1\"".into()),
            last_modified: Some("Mon, 30 Nov 2026 08:00:00 GMT".into()),
            len: Some(100),
        };
        assert_eq!(first.change_to(&first), None);
        // A value missing on one side says nothing.
        assert_eq!(first.change_to(&Identity::default()), None);
        // Nor does a tag made weak on the way.
        let weakened = Identity {
            etag: Some("W/\"1\"".into()),
            ..first.clone()
        };
        assert_eq!(first.change_to(&weakened), None);
        for (now, change) in [
            (
                Identity {
                    etag: Some("\"2\"".into()),
                    ..first.clone()
                },
                "ETag \"1\" became \"2\"",
            ),
            (
                Identity {
                    last_modified: Some("Mon, 30 Nov 2026 09:00:00 GMT".into()),
                    ..first.clone()
                },
                "Last-Modified Mon, 30 Nov 2026 08:00:00 GMT became Mon, 30 Nov 2026 09:00:00 GMT",
            ),
            (
                Identity {
                    len: Some(101),
                    ..first.clone()
                },
                "length 100 became 101",
            ),
        ] {
            assert_eq!(first.change_to(&now).as_deref(), Some(change));
        }
    }

    #[test]
    fn if_range_prefers_a_strong_etag_then_the_date() {
        let date = "Mon, 30 Nov 2026 08:00:00 GMT";
        for (etag, last_modified, want) in [
            (Some("\"1\""), Some(date), Some("\"1\"")),
            (Some("W/\"1\""), Some(date), Some(date)),
            (Some("W/\"1\""), None, None),
            (None, Some(date), Some(date)),
            (None, None, None),
        ] {
            let id = Identity {
                etag: etag.map(str::to_owned),
                last_modified: last_modified.map(str::to_owned),
                len: None,
            };
            assert_eq!(id.if_range(), want, "{etag:?} {last_modified:?}");
        }
    }

    #[test]
    fn retries_server_errors_and_broken_connections_only() {
        let e = |s| io::Error::other(s);
        let status = |status| SourceError::HttpStatus {
            url: "u".into(),
            status,
            text: String::new(),
        };
        assert!(is_transient(&e(status(503))));
        assert!(is_transient(&e(status(429))));
        assert!(!is_transient(&e(status(404))));
        let changed = SourceError::PayloadChanged {
            url: "u".into(),
            offset: 1,
            change: String::new(),
        };
        assert!(is_payload_changed(&e(changed)));
        assert!(!is_payload_changed(&e(status(503))));
        let slow = SourceError::TooSlow {
            what: "u".into(),
            offset: 0,
            received: 0,
            window: Duration::from_secs(1),
            min_bytes_per_sec: 1,
        };
        assert!(!is_transient(&e(slow)));
        assert!(is_transient(&io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "early end"
        )));
        assert!(!is_transient(&io::Error::new(
            io::ErrorKind::NotFound,
            "gone"
        )));
    }

    /// A 1000-byte source (byte `i` is `i % 251`) that delivers two ranges per
    /// `open_ranges`, and logs each open as the ranges it was asked for.
    struct TwoAtATime(Arc<Mutex<Vec<Vec<Range<u64>>>>>);

    fn byte_at(i: u64) -> u8 {
        (i % 251) as u8
    }

    impl Source for TwoAtATime {
        fn describe(&self) -> String {
            "two at a time".into()
        }
        fn open_at(&mut self, offset: u64) -> io::Result<Stream> {
            self.open_range(offset, None)
        }
        fn open_range(&mut self, offset: u64, end: Option<u64>) -> io::Result<Stream> {
            self.open_ranges(std::slice::from_ref(&(offset..end.unwrap_or(1000))))
                .map(|(s, _)| s)
        }
        fn open_ranges(&mut self, ranges: &[Range<u64>]) -> io::Result<(Stream, usize)> {
            self.0.lock().unwrap().push(ranges.to_vec());
            let n = ranges.len().min(2);
            let bytes: Vec<u8> = ranges[..n]
                .iter()
                .flat_map(|r| r.clone().map(byte_at))
                .collect();
            Ok((Box::new(io::Cursor::new(bytes)), n))
        }
        fn total_len(&self) -> Option<u64> {
            Some(1000)
        }
    }

    /// Reads `r` to its end in reads of `step` bytes.
    fn read_all(r: &mut ResumingReader, step: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; step];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                return got;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn planned_requests_ask_for_the_bytes_up_to_each_plan_then_for_the_rest() {
        let opens = Arc::new(Mutex::new(Vec::new()));
        let source = Box::new(TwoAtATime(opens.clone()));
        let mut r =
            ResumingReader::new_planned(source, 0, Some(64), RetryPolicy::default()).unwrap();
        let mut head = [0u8; 40];
        r.read_exact(&mut head).unwrap();
        r.plan_until(300);
        let rest = read_all(&mut r, 7);
        let want: Vec<u8> = (40..1000).map(byte_at).collect();
        assert_eq!(rest, want);
        assert_eq!(r.retries, 0, "a planned end is not a failure");
        let asked = [0..64, 64..300, 300..1000].map(|r| vec![r]);
        assert_eq!(*opens.lock().unwrap(), asked);
    }

    #[test]
    fn a_planned_end_at_the_payloads_end_is_its_end() {
        let opens = Arc::new(Mutex::new(Vec::new()));
        let source = Box::new(TwoAtATime(opens.clone()));
        let mut r =
            ResumingReader::new_planned(source, 0, Some(1000), RetryPolicy::default()).unwrap();
        assert_eq!(
            read_all(&mut r, 64),
            (0..1000).map(byte_at).collect::<Vec<u8>>()
        );
        assert_eq!(opens.lock().unwrap().len(), 1, "no request past the end");
    }

    /// A 1000-byte source that sends the whole payload whatever it is asked (a server that
    /// ignores `Range` answers `200`), and counts its opens.
    struct IgnoresRanges(Arc<Mutex<u32>>);

    impl Source for IgnoresRanges {
        fn describe(&self) -> String {
            "ignores ranges".into()
        }
        fn open_at(&mut self, offset: u64) -> io::Result<Stream> {
            *self.0.lock().unwrap() += 1;
            let bytes: Vec<u8> = (offset..1000).map(byte_at).collect();
            Ok(Box::new(io::Cursor::new(bytes)))
        }
        fn total_len(&self) -> Option<u64> {
            Some(1000)
        }
    }

    #[test]
    fn a_stream_that_goes_past_its_planned_end_is_read_on_without_a_new_request() {
        let opens = Arc::new(Mutex::new(0));
        let source = Box::new(IgnoresRanges(opens.clone()));
        let mut r =
            ResumingReader::new_planned(source, 0, Some(64), RetryPolicy::default()).unwrap();
        let got = read_all(&mut r, 100);
        assert_eq!(got, (0..1000).map(byte_at).collect::<Vec<u8>>());
        assert_eq!(*opens.lock().unwrap(), 1);
    }

    #[test]
    fn several_ranges_read_as_one_stream_with_offsets_jumping_between_them() {
        let opens = Arc::new(Mutex::new(Vec::new()));
        let mut r = ResumingReader::new(
            Box::new(TwoAtATime(opens.clone())),
            0,
            RetryPolicy::default(),
        )
        .unwrap();
        let ranges = [10..20, 30..40, 50..60, 900..905];
        r.seek_ranges(&ranges).unwrap();
        assert_eq!(r.reach(&(12..15)), Some(2));
        assert_eq!(r.reach(&(50..60)), Some(20));
        assert_eq!(r.reach(&(55..61)), None, "not within one range");
        assert_eq!(r.reach(&(0..5)), None, "behind");
        let mut got = Vec::new();
        let mut offsets = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            offsets.push(r.offset());
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let want: Vec<u8> = ranges.iter().flat_map(|r| r.clone().map(byte_at)).collect();
        assert_eq!(got, want);
        // No read crosses from one range into the next (the read at 17 gives 3 bytes); the
        // offset jumps to the next range when a read starts there.
        assert_eq!(offsets, [10, 17, 20, 37, 40, 57, 60, 905]);
        // The first open: the reader's own; then two ranges per request.
        let opens = opens.lock().unwrap();
        assert_eq!(
            opens[1..],
            [ranges.to_vec(), ranges[2..].to_vec()],
            "{opens:?}"
        );
    }

    /// A source whose opens always fail with a reset connection.
    struct Unreachable(Arc<Mutex<u32>>);

    impl Source for Unreachable {
        fn describe(&self) -> String {
            "unreachable".into()
        }
        fn open_at(&mut self, _: u64) -> io::Result<Stream> {
            *self.0.lock().unwrap() += 1;
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
        }
        fn total_len(&self) -> Option<u64> {
            None
        }
    }

    #[test]
    fn the_deadline_ends_the_waits_between_failed_opens() {
        let opens = Arc::new(Mutex::new(0));
        let policy = RetryPolicy {
            attempts: MAX_ATTEMPTS,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(50),
            deadline: Duration::from_millis(300),
            ..RetryPolicy::default()
        };
        let err = ResumingReader::new(Box::new(Unreachable(opens.clone())), 7, policy)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "giving up on unreachable at offset 7: the download deadline of 0.3 s passed"
        );
        // Retried, and stopped far before the attempts allowed (300 ms of waits of 10-50 ms).
        let opens = *opens.lock().unwrap();
        assert!((2..100).contains(&opens), "{opens} opens");
    }

    #[test]
    fn failed_opens_count_towards_the_attempts() {
        let opens = Arc::new(Mutex::new(0));
        let policy = RetryPolicy {
            attempts: 4,
            initial_delay: Duration::from_millis(1),
            ..RetryPolicy::default()
        };
        let err = ResumingReader::new(Box::new(Unreachable(opens.clone())), 0, policy)
            .err()
            .unwrap();
        assert_eq!(
            format!("{:#}", anyhow::Error::from(err)),
            "giving up on unreachable at offset 0 after 4 attempts without progress: reset"
        );
        assert_eq!(*opens.lock().unwrap(), 4);
    }

    /// A source whose streams deliver `chunk` bytes per read, each after `pause`.
    struct Paced {
        len: u64,
        chunk: usize,
        pause: Duration,
    }

    struct PacedStream {
        left: u64,
        chunk: usize,
        pause: Duration,
    }

    impl Read for PacedStream {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(self.pause);
            let n = buf.len().min(self.chunk).min(self.left as usize);
            buf[..n].fill(7);
            self.left -= n as u64;
            Ok(n)
        }
    }

    impl Source for Paced {
        fn describe(&self) -> String {
            "paced".into()
        }
        fn open_at(&mut self, offset: u64) -> io::Result<Stream> {
            Ok(Box::new(PacedStream {
                left: self.len - offset,
                chunk: self.chunk,
                pause: self.pause,
            }))
        }
        fn total_len(&self) -> Option<u64> {
            Some(self.len)
        }
    }

    fn read_paced(chunk: usize, policy: RetryPolicy) -> io::Result<u64> {
        let source = Paced {
            len: 8000,
            chunk,
            pause: Duration::from_millis(5),
        };
        let mut r = ResumingReader::new(Box::new(source), 0, policy)?;
        io::copy(&mut r, &mut io::sink())
    }

    #[test]
    fn a_source_below_the_minimum_throughput_fails_and_one_above_passes() {
        let policy = RetryPolicy {
            min_bytes_per_sec: 1000,
            throughput_window: Duration::from_millis(100),
            ..RetryPolicy::default()
        };
        // 100 bytes per 5 ms read (at most 20000 bytes/s): passes every window of 100 ms.
        assert_eq!(read_paced(100, policy).unwrap(), 8000);
        // 1 byte per read (at most 200 bytes/s): cut off after the first window.
        let err = read_paced(1, policy).unwrap_err();
        match err.get_ref().and_then(|e| e.downcast_ref::<SourceError>()) {
            Some(SourceError::TooSlow {
                offset, received, ..
            }) => assert!(*received == *offset && *received < 100, "{err}"),
            _ => panic!("{err}"),
        }
        // With the check off, the slow source is read to the end.
        let off = RetryPolicy {
            min_bytes_per_sec: 0,
            ..policy
        };
        assert_eq!(read_paced(20, off).unwrap(), 8000);
    }

    #[test]
    fn the_deadline_counts_time_spent_reading() {
        let policy = RetryPolicy {
            deadline: Duration::from_millis(100),
            ..RetryPolicy::default()
        };
        // 8000 bytes in reads of 10 every 5 ms: at least 4 s of reading.
        let err = read_paced(10, policy).unwrap_err();
        assert!(
            err.to_string().starts_with("giving up on paced at offset "),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with(": the download deadline of 0.1 s passed"),
            "{err}"
        );
        // Time the consumer spends between reads does not count.
        let source = Paced {
            len: 100,
            chunk: 10,
            pause: Duration::ZERO,
        };
        let mut r = ResumingReader::new(Box::new(source), 0, policy).unwrap();
        let mut buf = [0u8; 10];
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(15));
            assert_eq!(r.read(&mut buf).unwrap(), 10);
        }
    }

    /// A 1000-byte source whose every stream breaks: after `per_stream` bytes, or at offset
    /// `wall`, whichever comes first.
    struct Breaking {
        per_stream: u64,
        wall: u64,
        opens: Arc<Mutex<Vec<u64>>>,
    }

    struct BreakingStream {
        offset: u64,
        end: u64,
    }

    impl Read for BreakingStream {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.offset == 1000 {
                return Ok(0);
            }
            if self.offset == self.end {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
            }
            let n = buf.len().min((self.end - self.offset) as usize);
            self.offset += n as u64;
            Ok(n)
        }
    }

    impl Source for Breaking {
        fn describe(&self) -> String {
            "breaking".into()
        }
        fn open_at(&mut self, offset: u64) -> io::Result<Stream> {
            self.opens.lock().unwrap().push(offset);
            let end = (offset + self.per_stream).min(self.wall).max(offset);
            Ok(Box::new(BreakingStream { offset, end }))
        }
        fn total_len(&self) -> Option<u64> {
            Some(1000)
        }
    }

    #[test]
    fn failures_count_across_reopens_until_progress() {
        let policy = RetryPolicy {
            attempts: 3,
            initial_delay: Duration::from_millis(1),
            ..RetryPolicy::default()
        };
        // (bytes per stream, offset no stream passes, opens expected, error expected)
        for (per_stream, wall, opens, error) in [
            // Progress before every failure: never three in a row.
            (300, 1000, vec![0, 300, 600, 900], None),
            // Stuck at 500: the failure that ended the progress, then two more.
            (
                1000,
                500,
                vec![0, 500, 500],
                Some(
                    "giving up on breaking at offset 500 after 3 attempts without progress: reset",
                ),
            ),
            (
                300,
                500,
                vec![0, 300, 500, 500],
                Some(
                    "giving up on breaking at offset 500 after 3 attempts without progress: reset",
                ),
            ),
        ] {
            let log = Arc::new(Mutex::new(Vec::new()));
            let source = Breaking {
                per_stream,
                wall,
                opens: log.clone(),
            };
            let read = ResumingReader::new(Box::new(source), 0, policy).and_then(|mut r| {
                let n = io::copy(&mut r, &mut io::sink())?;
                Ok((n, r.retries))
            });
            match (read, error) {
                (Ok((n, retries)), None) => {
                    assert_eq!((n, retries), (1000, opens.len() as u32 - 1))
                }
                (Err(e), Some(want)) => {
                    assert_eq!(format!("{:#}", anyhow::Error::from(e)), want)
                }
                (got, _) => panic!("{per_stream} {wall}: {got:?}"),
            }
            assert_eq!(*log.lock().unwrap(), opens, "{per_stream} {wall}");
        }
    }
}
