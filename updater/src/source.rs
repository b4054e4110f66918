//! Where a payload comes from: a file, a block device, or an http(s) URL, read from any offset.
//!
//! A [`Source`] opens a byte stream at an offset (a seek for files, a `Range: bytes=N-` request
//! for HTTP). [`ResumingReader`] turns a source into one `Read` that survives transient
//! failures: when a read fails or the stream ends early, it waits (exponential backoff) and
//! reopens at the byte it had reached, up to [`RetryPolicy::attempts`] consecutive failures
//! without progress. Permanent failures (HTTP 4xx, a server that ignores ranges) are not
//! retried.
//!
//! ```
//! use std::io::Read;
//! use updater::source::{FileSource, ResumingReader, RetryPolicy};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("p");
//! std::fs::write(&path, b"0123456789").unwrap();
//! let mut r = ResumingReader::new(Box::new(FileSource::open(&path).unwrap()), 4, RetryPolicy::default()).unwrap();
//! let mut s = String::new();
//! r.read_to_string(&mut s).unwrap();
//! assert_eq!(s, "456789");
//! ```

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Transient failures went on for longer than the retry policy allows.
    #[error("giving up on {what} at offset {offset} after {attempts} attempts")]
    GaveUp {
        /// The source.
        what: String,
        /// The offset reached.
        offset: u64,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        last: io::Error,
    },
}

/// How transient failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Consecutive failures without progress before giving up (at least 1).
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub initial_delay: Duration,
    /// Longest wait between retries.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 6,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// A stream opened at some offset of a payload.
pub type Stream = Box<dyn Read + Send>;

/// A payload that can be read from any offset.
pub trait Source: Send {
    /// Human-readable name (path or URL) for messages.
    fn describe(&self) -> String;
    /// Opens a stream at `offset`. Errors whose inner error is a [`SourceError::HttpStatus`]
    /// of 4xx or [`SourceError::RangeNotHonoured`] are permanent; others are transient.
    fn open_at(&mut self, offset: u64) -> io::Result<Stream>;
    /// Total length, when known (after the first open for HTTP).
    fn total_len(&self) -> Option<u64>;
    /// A block device: its length is whole sectors, so bytes after the payload's end are
    /// padding, not trailing data.
    fn is_block_device(&self) -> bool {
        false
    }
}

/// Whether an error from a source is worth retrying.
pub fn is_transient(e: &io::Error) -> bool {
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
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
    }
    fn total_len(&self) -> Option<u64> {
        Some(self.len)
    }
    fn is_block_device(&self) -> bool {
        self.block_device
    }
}

/// A payload on an http(s) server that supports range requests. Proxies come from the
/// environment (`http_proxy`, `https_proxy`, `ALL_PROXY`, `NO_PROXY`).
pub struct HttpSource {
    url: String,
    agent: ureq::Agent,
    len: Option<u64>,
}

impl HttpSource {
    /// A source for `url` with connect and read timeouts.
    pub fn new(url: &str, connect_timeout: Duration, read_timeout: Duration) -> HttpSource {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(connect_timeout)
            .timeout_read(read_timeout)
            .try_proxy_from_env(true)
            .build();
        HttpSource {
            url: url.to_owned(),
            agent,
            len: None,
        }
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
        let resp = match self
            .agent
            .get(&self.url)
            .set("Range", &format!("bytes={offset}-"))
            .call()
        {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) => {
                return Err(io::Error::other(SourceError::HttpStatus {
                    url: self.url.clone(),
                    status,
                    text: r.status_text().to_owned(),
                }))
            }
            Err(ureq::Error::Transport(t)) => return Err(io::Error::other(t.to_string())),
        };
        let refuse = |answer: String| {
            io::Error::other(SourceError::RangeNotHonoured {
                url: self.url.clone(),
                offset,
                answer,
            })
        };
        let len = match resp.status() {
            206 => {
                let cr = resp.header("Content-Range").unwrap_or("").to_owned();
                match content_range(&cr) {
                    Some((start, total)) if start == offset => total,
                    _ => return Err(refuse(format!("206 with Content-Range {cr:?}"))),
                }
            }
            200 if offset == 0 => resp
                .header("Content-Length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX),
            s => return Err(refuse(format!("status {s}"))),
        };
        if len != u64::MAX {
            self.len = Some(len);
        }
        Ok(Box::new(resp.into_reader()))
    }

    fn total_len(&self) -> Option<u64> {
        self.len
    }
}

/// One `Read` over a source that reopens at the current offset after transient failures.
pub struct ResumingReader {
    source: Box<dyn Source>,
    stream: Option<Stream>,
    offset: u64,
    policy: RetryPolicy,
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
        let mut r = ResumingReader {
            source,
            stream: None,
            offset,
            policy,
            retries: 0,
        };
        r.reopen(None)?;
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

    /// Moves to `offset`, reopening the stream there.
    pub fn seek_to(&mut self, offset: u64) -> io::Result<()> {
        if offset != self.offset || self.stream.is_none() {
            self.offset = offset;
            self.stream = None;
            self.reopen(None)?;
        }
        Ok(())
    }

    /// (Re)opens the stream at the current offset; `failure` is the error that made it
    /// necessary, counting as the first failed attempt.
    fn reopen(&mut self, failure: Option<io::Error>) -> io::Result<()> {
        let mut attempt = u32::from(failure.is_some());
        let mut last = failure;
        let mut delay = self.policy.initial_delay;
        loop {
            if let Some(e) = &last {
                if !is_transient(e) {
                    return Err(last.expect("set"));
                }
                if attempt >= self.policy.attempts.max(1) {
                    return Err(io::Error::other(SourceError::GaveUp {
                        what: self.source.describe(),
                        offset: self.offset,
                        attempts: attempt,
                        last: last.expect("set"),
                    }));
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(self.policy.max_delay);
                self.retries += 1;
            }
            match self.source.open_at(self.offset) {
                Ok(s) => {
                    self.stream = Some(s);
                    return Ok(());
                }
                Err(e) => {
                    attempt += 1;
                    last = Some(e);
                }
            }
        }
    }
}

impl Read for ResumingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let stream = match self.stream.as_mut() {
                Some(s) => s,
                None => {
                    self.reopen(None)?;
                    continue;
                }
            };
            let failure = match stream.read(buf) {
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
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            self.stream = None;
            self.reopen(Some(failure))?;
        }
    }
}
