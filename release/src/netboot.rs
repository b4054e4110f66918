//! The verified fetch of a payload into a file: what a RAM-booted node (issue 11, DESIGN §12)
//! runs in its initramfs, and what `image-tools pxe` runs on the very same payload before it
//! writes the netboot artifacts, so the publisher checks exactly what the node will check.
//!
//! [`fetch_into`] is the whole verified download, in the order the payload format prescribes:
//!
//! 1. the prelude through [`payload::read_prelude`] (signature by a trusted key before anything
//!    of the manifest is parsed);
//! 2. the node's own checks on the signed manifest: `compatible` equals the `IMAGE_ID` the
//!    artifacts were made for, the version is not older than the one they were made from (a
//!    replayed old payload is refused), not expired, the stream entry (stream mode) matches, and
//!    the image fits in the free space of the RAM file system with [`RAM_RESERVE`] to spare;
//! 3. the frames through the payload's own [`pipeline`] (decode with a capped window, SHA-256
//!    per chunk, in order), each chunk written at its offset into `OUT.partial`, the whole image
//!    hashed against the manifest; only then renamed to `OUT`.
//!
//! Anything refused removes `OUT.partial`: a refused payload leaves nothing to mount. Memory
//! beyond the image itself is the pipeline's bounded buffer pool
//! ([`pipeline::BUFFER_BUDGET`]) and one chunk table. What verified is a [`VerifiedImage`].
//!
//! [`choose_release`] fetches and verifies a signed release stream and picks the newest release
//! a rollout position allows ([`stream::choose_target`], with no booted version: a RAM node
//! starts from nothing). [`NetbootError::is_transient`] tells a server that failed (worth
//! another attempt) from a payload that was refused.
//!
//! This module leaves out everything about the booted system: the retries of a whole fetch, the
//! record of what was booted and the node's identity stay in the device crate
//! (`updater::netboot`).
//!
//! ```no_run
//! use ab_payload::TrustedKeys;
//! use ab_release::netboot::{fetch_into, Expect, NetbootOptions};
//! use ab_release::source::HttpSource;
//! let keys = TrustedKeys::load_dirs(&["/etc/updater/keys.d".into()])?;
//! let opts = NetbootOptions::new(Expect { image_id: Some("myos".into()), min_version: None });
//! let url = "http://boot.example/usr-1.2.payload";
//! let source = HttpSource::new(url, opts.connect_timeout, opts.read_timeout);
//! let got = fetch_into(Box::new(source), &keys, &opts, None, "/run/netboot/usr.img".as_ref())?;
//! println!("verified {} {}", got.version, got.url);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::source::{ResumingReader, RetryPolicy, Source, SourceError};
use crate::stream::{self, Expectations, Position, Release, StreamError};
use crate::version::compare_versions;
use ab_payload::pipeline::{self, PipelineError};
use ab_payload::{self as payload, PayloadError, ReadError, Sha256Digest, TrustedKeys};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes of the RAM file system left free after the image: the rest of the boot needs room.
pub const RAM_RESERVE: u64 = 16 << 20;

/// Longest URL accepted (kernel command lines are short anyway).
pub const MAX_URL_LEN: usize = 1024;

/// Whole-fetch attempts at most ([`NetbootOptions::attempts`]).
pub const MAX_ATTEMPTS: u32 = 1000;

/// What the node insists on, beyond a trusted signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// The `IMAGE_ID` the node boots: the payload's `compatible` must equal it (`None` only for
    /// the publisher, `image-tools pxe`, which learns it from the payload).
    pub image_id: Option<String>,
    /// The oldest version accepted (the version the artifacts were made from), if any.
    pub min_version: Option<String>,
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct NetbootOptions {
    /// The node's expectations.
    pub expect: Expect,
    /// Whole-fetch attempts before giving up (1..=[`MAX_ATTEMPTS`]), for a caller that retries
    /// [`NetbootError::is_transient`] failures (the node's `updater::netboot::run`); one call of
    /// [`fetch_into`] is one attempt.
    pub attempts: u32,
    /// Waits between whole-fetch attempts (`initial_delay`, `max_delay`), and the resuming
    /// reader's own retries within one attempt (`attempts`, `deadline`, throughput).
    pub retry: RetryPolicy,
    /// Decoder threads.
    pub threads: usize,
    /// Connect timeout of each request.
    pub connect_timeout: Duration,
    /// Read timeout of each request.
    pub read_timeout: Duration,
    /// The current time, Unix seconds (payload and stream expiry).
    pub now: u64,
}

impl NetbootOptions {
    /// Defaults: 30 attempts, waits from 1 s doubling to 30 s, 4 in-attempt retries.
    pub fn new(expect: Expect) -> NetbootOptions {
        NetbootOptions {
            expect,
            attempts: 30,
            retry: RetryPolicy {
                attempts: 4,
                initial_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(30),
                ..RetryPolicy::default()
            },
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            now: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// Why a netboot fetch stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetbootError {
    /// The payload is bad, or not signed by a trusted key.
    #[error("payload {url} refused")]
    Payload {
        /// The payload URL.
        url: String,
        /// What is wrong with it.
        #[source]
        source: PayloadError,
    },
    /// The payload is for another product.
    #[error("payload {url} is for {found:?}, this node boots {expected:?}")]
    WrongImageId {
        /// The payload URL.
        url: String,
        /// The node's `IMAGE_ID`.
        expected: String,
        /// The payload's `compatible`.
        found: String,
    },
    /// The payload is older than the version the artifacts were made from.
    #[error("payload {url} has version {found}, older than the oldest accepted {min}")]
    TooOld {
        /// The payload URL.
        url: String,
        /// The oldest version accepted.
        min: String,
        /// The payload's version.
        found: String,
    },
    /// The payload expired.
    #[error("payload {url} expired at {expires} (now {now})")]
    Expired {
        /// The payload URL.
        url: String,
        /// Its expiry, Unix seconds.
        expires: u64,
        /// The node's time.
        now: u64,
    },
    /// The image does not fit in RAM.
    #[error(
        "the image of {image_size} bytes does not fit in {dir}: {free} bytes free, \
         {RAM_RESERVE} kept in reserve"
    )]
    TooLarge {
        /// Image size.
        image_size: u64,
        /// The RAM file system.
        dir: PathBuf,
        /// Its free bytes.
        free: u64,
    },
    /// The release stream is bad or not trusted.
    #[error("release stream {url} refused")]
    Stream {
        /// The stream URL.
        url: String,
        /// What is wrong.
        #[source]
        source: StreamError,
    },
    /// The stream offers this node no release.
    #[error("release stream {url} offers this node no release: {why}")]
    NoRelease {
        /// The stream URL.
        url: String,
        /// The decision, one line.
        why: String,
    },
    /// The payload does not match its stream entry.
    #[error("payload {url} does not match its stream entry")]
    StreamMismatch {
        /// The payload URL.
        url: String,
        /// The mismatch.
        #[source]
        source: StreamError,
    },
    /// The server answered with a permanent failure (a 4xx status, ranges ignored, a refused
    /// redirect).
    #[error("fetching {url}")]
    Fetch {
        /// The URL.
        url: String,
        /// The answer.
        #[source]
        source: std::io::Error,
    },
    /// The server could not be reached or failed mid-way, after every attempt.
    #[error("cannot fetch {url} ({attempts} attempt(s))")]
    Unreachable {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: std::io::Error,
    },
    /// Writing the image into RAM failed.
    #[error("{action} {}", path.display())]
    Ram {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl NetbootError {
    /// Whether another attempt may succeed (the server, not the payload, failed).
    pub fn is_transient(&self) -> bool {
        matches!(self, NetbootError::Unreachable { .. })
    }
}

/// What [`fetch_into`] verified and where it put it (the device records it in
/// `/run/updater/netboot.json`, under these field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedImage {
    /// The payload fetched ([`Source::describe`]: its URL, or its path).
    pub url: String,
    /// The payload's `compatible`.
    pub compatible: String,
    /// The payload's version.
    pub version: String,
    /// SHA-256 of the signed manifest.
    pub payload_id: String,
    /// The key that signed it.
    pub signed_by: String,
    /// Image size in bytes.
    pub image_size: u64,
    /// SHA-256 of the image.
    pub image_sha256: String,
    /// The verified image file.
    pub image: PathBuf,
    /// When it was fetched, Unix seconds ([`NetbootOptions::now`]).
    pub fetched_at: u64,
    /// Transient read failures retried within the fetch.
    #[serde(default)]
    pub retries: u32,
}

/// The URL must be http(s) and short; nothing else is fetched by a RAM node.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("URL longer than {MAX_URL_LEN} bytes"));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url:?} is not an http(s) URL"));
    }
    Ok(())
}

/// An error and its causes on one line.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn unreachable(url: &str, source: std::io::Error) -> NetbootError {
    NetbootError::Unreachable {
        url: url.to_owned(),
        attempts: 1,
        source,
    }
}

/// Fetches and verifies the stream at `url` and picks the newest release open to `position`.
pub fn choose_release(
    url: &str,
    channel: &str,
    position: Position,
    keys: &TrustedKeys,
    opts: &NetbootOptions,
) -> Result<Release, NetbootError> {
    let timeout = opts.read_timeout.max(opts.connect_timeout);
    let get = |u: &str, what: &'static str, max: usize| -> Result<Vec<u8>, NetbootError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(opts.connect_timeout)
            .timeout(timeout)
            .redirects(0)
            .build();
        match agent.get(u).call() {
            Ok(resp) => {
                stream::read_bounded(&mut resp.into_reader(), what, max).map_err(|source| {
                    NetbootError::Stream {
                        url: u.to_owned(),
                        source,
                    }
                })
            }
            Err(ureq::Error::Status(status, resp)) => {
                let e = SourceError::HttpStatus {
                    url: u.to_owned(),
                    status,
                    text: resp.status_text().to_owned(),
                };
                Err(classify(u, std::io::Error::other(e)))
            }
            Err(e) => Err(unreachable(u, std::io::Error::other(e))),
        }
    };
    let bytes = get(url, stream::STREAM_FILE, stream::MAX_STREAM_LEN)?;
    let sig = get(
        &format!("{url}.sig"),
        stream::SIGNATURE_FILE,
        stream::MAX_SIGNATURE_FILE_LEN,
    )?;
    let verified = stream::verify(
        &bytes,
        &sig,
        keys,
        &Expectations {
            channel,
            last: None,
            now: opts.now,
        },
    )
    .map_err(|source| NetbootError::Stream {
        url: url.to_owned(),
        source,
    })?;
    let floor = opts.expect.min_version.as_deref().unwrap_or("");
    // A RAM node boots from nothing: every release at or above the floor is a candidate.
    let decision = stream::choose_target(&verified.stream, "", |_| false, position, opts.now);
    let release = decision
        .target()
        .cloned()
        .filter(|r| compare_versions(&r.version, floor).is_ge());
    release.ok_or_else(|| NetbootError::NoRelease {
        url: url.to_owned(),
        why: decision.to_string().replace('\n', "; "),
    })
}

/// Free bytes of the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// `OUT.partial`: the file written before the image is verified.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// One verified download from `source` into `out` (see the module doc); `release` is the
/// stream entry the payload must match, in stream mode. Nothing is left at `out` or
/// `OUT.partial` unless the whole image verified.
pub fn fetch_into(
    source: Box<dyn Source>,
    keys: &TrustedKeys,
    opts: &NetbootOptions,
    release: Option<&Release>,
    out: &Path,
) -> Result<VerifiedImage, NetbootError> {
    let partial = partial_path(out);
    let result = fetch_partial(source, keys, opts, release, out, &partial);
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    let verified = result?;
    std::fs::rename(&partial, out).map_err(|source| NetbootError::Ram {
        action: "renaming the verified image to",
        path: out.to_owned(),
        source,
    })?;
    Ok(verified)
}

fn fetch_partial(
    source: Box<dyn Source>,
    keys: &TrustedKeys,
    opts: &NetbootOptions,
    release: Option<&Release>,
    out: &Path,
    partial: &Path,
) -> Result<VerifiedImage, NetbootError> {
    let url = source.describe();
    let refused = |source: PayloadError| NetbootError::Payload {
        url: url.clone(),
        source,
    };
    let mut reader = ResumingReader::new(source, 0, opts.retry).map_err(|e| classify(&url, e))?;
    let prelude = payload::read_prelude(&mut reader, keys).map_err(|e| match e {
        ReadError::Payload(p) => refused(p),
        ReadError::Io(io) => classify(&url, io),
    })?;
    let m = &prelude.manifest;
    if let Some(expected) = opts
        .expect
        .image_id
        .as_ref()
        .filter(|i| **i != m.compatible)
    {
        return Err(NetbootError::WrongImageId {
            url,
            expected: expected.clone(),
            found: m.compatible.clone(),
        });
    }
    if let Some(min) = &opts.expect.min_version {
        if compare_versions(&m.version, min).is_lt() {
            return Err(NetbootError::TooOld {
                url,
                min: min.clone(),
                found: m.version.clone(),
            });
        }
    }
    if let Some(expires) = m.expires.filter(|&e| opts.now >= e) {
        return Err(NetbootError::Expired {
            url,
            expires,
            now: opts.now,
        });
    }
    if let Some(r) = release {
        r.check_payload(&prelude, None)
            .map_err(|source| NetbootError::StreamMismatch {
                url: url.clone(),
                source,
            })?;
    }
    let ram_err = |action, source| NetbootError::Ram {
        action,
        path: partial.to_owned(),
        source,
    };
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(partial);
    let free = free_bytes(dir).map_err(|e| ram_err("reading the free space of", e))?;
    if m.image_size.saturating_add(RAM_RESERVE) > free {
        return Err(NetbootError::TooLarge {
            image_size: m.image_size,
            dir: dir.to_owned(),
            free,
        });
    }
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(partial)
        .map_err(|e| ram_err("creating", e))?;
    let mut image = Sha256::new();
    let mut next_offset = 0u64;
    let mut sink =
        |_first: u32, run: &[payload::ChunkEntry], data: &[u8]| -> Result<(), NetbootError> {
            // Chunks arrive in order and the signed table tiles the image: hash as they come.
            let at = run.first().map_or(next_offset, |e| e.image_offset);
            debug_assert_eq!(at, next_offset);
            file.write_all_at(data, at)
                .map_err(|source| ram_err("writing", source))?;
            image.update(data);
            next_offset = at + data.len() as u64;
            Ok(())
        };
    pipeline::run(
        &mut reader,
        &prelude.chunks.entries,
        0,
        m.chunk_size,
        opts.threads,
        payload::ChunkDecoder::for_manifest(m)
            .map_err(|e| ram_err("creating a zstd decoder for", e))?,
        &mut sink,
    )
    .map_err(|e| match e {
        PipelineError::Payload(p) => refused(p),
        PipelineError::Read { source, .. } => classify(&url, source),
        PipelineError::Sink(e) => e,
    })?;
    let found = Sha256Digest(image.finalize().into());
    if found != m.image_sha256 || next_offset != m.image_size {
        return Err(refused(PayloadError::ImageHashMismatch {
            expected: m.image_sha256,
            found,
        }));
    }
    Ok(VerifiedImage {
        url,
        compatible: m.compatible.clone(),
        version: m.version.clone(),
        payload_id: prelude.payload_id().to_string(),
        signed_by: prelude.signed_by.to_string(),
        image_size: m.image_size,
        image_sha256: m.image_sha256.to_string(),
        image: out.to_owned(),
        fetched_at: opts.now,
        retries: reader.retries,
    })
}

/// A read failure: the server's (worth another attempt), or a permanent answer (a 404, a
/// server ignoring ranges, a refused redirect), reported once.
fn classify(url: &str, e: std::io::Error) -> NetbootError {
    let permanent = match e.get_ref().and_then(|i| i.downcast_ref::<SourceError>()) {
        Some(SourceError::HttpStatus { status, .. }) => {
            (400..500).contains(status) && *status != 408 && *status != 429
        }
        Some(
            SourceError::RangeNotHonoured { .. }
            | SourceError::RedirectRefused { .. }
            | SourceError::TooManyRedirects { .. },
        ) => true,
        _ => false,
    };
    if permanent {
        NetbootError::Fetch {
            url: url.to_owned(),
            source: e,
        }
    } else {
        unreachable(url, e)
    }
}
