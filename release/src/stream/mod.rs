//! The release stream: a signed `stream.json` that lists the releases of one channel (read side).
//!
//! A publisher serves, on any static web server, CDN or file system, one directory per channel
//! holding `stream.json` and its detached signature `stream.json.sig`; the payloads it lists sit
//! at locations relative to the stream's URL. This module owns the format (documented byte by
//! byte in `docs/stream-format.md`), its verification, and the client-side choice of a target:
//!
//! - [`verify`] checks sizes against [`MAX_STREAM_LEN`] and [`MAX_SIGNATURE_FILE_LEN`] before
//!   anything else, then the ed25519 signature with the same [`TrustedKeys`] and the same code
//!   as payloads ([`payload::verify_signatures`]), and only then parses the JSON, checks every
//!   field against its bound ([`MAX_RELEASES`], [`MAX_CHANNEL_LEN`], [`MAX_LOCATION_LEN`],
//!   [`payload::MAX_STRING_LEN`]), and refuses a wrong channel, a serial lower than the last
//!   accepted one (replay) and a stream past its `expires` (freeze). It returns a
//!   [`VerifiedStream`]; [`StreamError`] says what was wrong, with the facts.
//! - [`rollout`] places a box in the staged rollout ([`Position`]) and chooses the release to
//!   install ([`choose_target`]), explaining every candidate it skipped ([`Decision`]).
//! - `writer` (cargo feature `writer`, enabled by `image-tools` only) encodes, edits and signs
//!   streams, so the device binary carries no publisher code.
//!
//! ```
//! use ab_release::stream::{verify, Expectations, StreamError};
//! use ab_payload::TrustedKeys;
//! let expect = Expectations { channel: "stable", last: None, now: 1_767_225_600 };
//! let err = verify(b"{}", &[0u8; 4], &TrustedKeys::default(), &expect).unwrap_err();
//! assert!(matches!(err, StreamError::Unsigned));
//! ```

pub mod rollout;
#[cfg(feature = "writer")]
pub mod writer;

pub use rollout::{choose_target, Candidate, Decision, Outcome, Position, Skip};

use crate::version::compare_versions;
use ab_payload::{self as payload, KeyId, PayloadError, Sha256Digest, SignatureBlock, TrustedKeys};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::io::Read;

/// The `format_version` this code reads and writes.
pub const STREAM_FORMAT_VERSION: u32 = 1;
/// Largest `stream.json` accepted, in bytes (checked before parsing).
pub const MAX_STREAM_LEN: usize = 256 << 10;
/// Largest `stream.json.sig` accepted, in bytes: the payload signature block at its maximum.
pub const MAX_SIGNATURE_FILE_LEN: usize = payload::MAX_SIGNATURE_BLOCK_LEN;
/// Most releases one stream may list.
pub const MAX_RELEASES: usize = 256;
/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 64;
/// Longest payload location, in bytes.
pub const MAX_LOCATION_LEN: usize = 1024;
/// File name of the stream in a channel directory.
pub const STREAM_FILE: &str = "stream.json";
/// File name of the detached signature in a channel directory.
pub const SIGNATURE_FILE: &str = "stream.json.sig";

/// Everything that can be wrong with a stream, its signature, or its freshness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A file is larger than its named maximum (checked before it is parsed).
    #[error("{what} is {found} bytes, more than the maximum of {max}")]
    TooLarge {
        /// `stream.json` or `stream.json.sig`.
        what: &'static str,
        /// Its size (or a lower bound when reading stopped at the limit).
        found: u64,
        /// The maximum.
        max: u64,
    },
    /// Reading a stream file failed.
    #[error("reading {what}")]
    Read {
        /// `stream.json` or `stream.json.sig`.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The signature file holds no signature.
    #[error("stream carries no signature")]
    Unsigned,
    /// The signature file is not a signature block.
    #[error("stream signature file is malformed")]
    BadSignatureFile(#[source] PayloadError),
    /// None of the signatures is by a trusted key.
    #[error("stream is signed only by unknown keys ({key_ids}); trusted keys: {trusted}")]
    UnknownKey {
        /// Key ids of the signatures, comma separated.
        key_ids: String,
        /// Key ids of the trusted keys, comma separated (or "none").
        trusted: String,
    },
    /// A signature by a trusted key does not verify.
    #[error("bad stream signature by trusted key {key_id}: stream.json or its signature altered")]
    BadSignature {
        /// The key id of the failing signature.
        key_id: KeyId,
    },
    /// The signed bytes are not a JSON object of the stream's shape.
    #[error("stream.json is malformed: {reason}")]
    Malformed {
        /// The parser's message, with line and column.
        reason: String,
    },
    /// The stream has a `format_version` this code does not read.
    #[error("unsupported stream format version {found} (this updater reads {supported})")]
    UnsupportedVersion {
        /// The version found.
        found: u64,
        /// The version supported.
        supported: u32,
    },
    /// A field breaks its rule.
    #[error("stream field {field} is {value}: {rule}")]
    BadField {
        /// The field, e.g. `releases[2].location`.
        field: String,
        /// Its value, shown as JSON.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// More releases than [`MAX_RELEASES`].
    #[error("stream lists {found} releases, more than the maximum of {max}")]
    TooManyReleases {
        /// The number listed.
        found: usize,
        /// The maximum.
        max: usize,
    },
    /// Releases are not in strictly ascending version order.
    #[error("releases[{index}] version {version:?} does not sort after {previous:?}")]
    NotAscending {
        /// Index of the offending release.
        index: usize,
        /// Its version.
        version: String,
        /// The version listed before it.
        previous: String,
    },
    /// The stream is for another channel than the box follows.
    #[error("stream is for channel {found:?}, this box follows {expected:?}")]
    WrongChannel {
        /// The configured channel.
        expected: String,
        /// The stream's channel.
        found: String,
    },
    /// The serial is lower than the last accepted one: an old stream is being replayed.
    #[error("stream serial {serial} is lower than the last accepted serial {last}: replayed or rolled back")]
    Replayed {
        /// The stream's serial.
        serial: u64,
        /// The last accepted serial.
        last: u64,
    },
    /// The serial equals the last accepted one but the bytes differ.
    #[error("stream serial {serial} was accepted before with SHA-256 {accepted}, now it hashes to {found}: a serial must not be reused")]
    SerialReused {
        /// The serial.
        serial: u64,
        /// SHA-256 of the stream accepted before.
        accepted: Sha256Digest,
        /// SHA-256 of this stream.
        found: Sha256Digest,
    },
    /// A fetched payload is not the one the release entry describes.
    #[error("payload for release {version} does not match its stream entry: {field} is {found}, the stream says {listed}")]
    PayloadMismatch {
        /// The release's version.
        version: String,
        /// `version`, `size`, `payload_id` or `image_sha256`.
        field: &'static str,
        /// The value in the stream.
        listed: String,
        /// The value of the payload.
        found: String,
    },
    /// The stream is past its `expires` time: a frozen (withheld) stream.
    #[error("stream expired at {expires} (now {now}): the publisher has not re-signed it, or it is being withheld")]
    Expired {
        /// The stream's `expires`, Unix seconds.
        expires: u64,
        /// The time of the check, Unix seconds.
        now: u64,
    },
}

/// A staged rollout: from `start`, a `start_fraction` of boxes, growing linearly to all boxes
/// over `duration` seconds. See [`rollout`] for the rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// When the rollout starts, Unix seconds. Before it the release is open to no box.
    pub start: u64,
    /// Seconds from `start` until every box is included; 0 opens it to all at `start`.
    pub duration: u64,
    /// Fraction of boxes included at `start`, 0 ≤ f ≤ 1.
    pub start_fraction: f64,
    /// While true, no box starts installing this release.
    pub paused: bool,
}

/// One release of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// The payload's manifest `version` (`IMAGE_VERSION`).
    pub version: String,
    /// Where the payload is, relative to the stream's URL ([`resolve_location`]).
    pub location: String,
    /// The payload's size in bytes.
    pub size: u64,
    /// SHA-256 of the payload's signed manifest ([`payload::VerifiedPrelude::payload_id`]).
    #[serde(with = "hex_digest")]
    pub payload_id: Sha256Digest,
    /// SHA-256 of the uncompressed image (the manifest's `image_sha256`).
    #[serde(with = "hex_digest")]
    pub image_sha256: Sha256Digest,
    /// The rollout; `None` (JSON `null`): listed but not offered to any box yet.
    pub rollout: Option<Rollout>,
    /// Every box below this version installs it before any newer release.
    pub barrier: bool,
    /// Pulled: no box installs it; boxes running it move on to a newer release.
    pub dead_end: bool,
}

/// The contents of `stream.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    /// Always [`STREAM_FORMAT_VERSION`].
    pub format_version: u64,
    /// The channel this stream is for (`stable`, `beta`…).
    pub channel: String,
    /// Grows by at least one with every published edit.
    pub serial: u64,
    /// When this serial was made, Unix seconds.
    pub generated: u64,
    /// After this time (Unix seconds) boxes refuse the stream.
    pub expires: u64,
    /// The releases, in strictly ascending version order.
    pub releases: Vec<Release>,
}

/// What a box remembers of the last stream it accepted, to refuse replays. Keep one per
/// channel: serials of different channels are unrelated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The stream's serial.
    pub serial: u64,
    /// SHA-256 of the exact `stream.json` bytes.
    #[serde(with = "hex_digest")]
    pub sha256: Sha256Digest,
}

/// What a box expects of a stream, besides a good signature.
#[derive(Debug, Clone, Copy)]
pub struct Expectations<'a> {
    /// The channel the box follows.
    pub channel: &'a str,
    /// The last stream the box accepted, if any.
    pub last: Option<Accepted>,
    /// The current time, Unix seconds.
    pub now: u64,
}

/// A stream whose signature, shape, channel, serial and expiry were checked.
#[derive(Debug, Clone)]
pub struct VerifiedStream {
    /// The stream.
    pub stream: Stream,
    /// The key that verified it.
    pub signed_by: KeyId,
    /// What to remember as the last accepted stream.
    pub accepted: Accepted,
}

fn bad(field: impl Into<String>, value: impl Serialize, rule: &'static str) -> StreamError {
    StreamError::BadField {
        field: field.into(),
        value: serde_json::to_string(&value).unwrap_or_default(),
        rule,
    }
}

/// Checks a channel name: 1 to [`MAX_CHANNEL_LEN`] bytes of `[a-z0-9._-]`, starting with a
/// letter or digit (it names a directory of the tree).
pub fn check_channel(channel: &str) -> Result<(), StreamError> {
    let ok = !channel.is_empty()
        && channel.len() <= MAX_CHANNEL_LEN
        && channel.as_bytes()[0].is_ascii_alphanumeric()
        && channel
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(bad(
            "channel",
            channel,
            "must be 1 to 64 bytes of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
        ))
    }
}

fn check_location(field: String, loc: &str) -> Result<(), StreamError> {
    let chars_ok = loc
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"._~-/%+".contains(&c));
    let ok = !loc.is_empty()
        && loc.len() <= MAX_LOCATION_LEN
        && chars_ok
        && !loc.starts_with('/')
        && !loc.ends_with('/')
        && !loc.contains("//");
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            loc,
            "must be a relative path of 1 to 1024 bytes of A-Z, a-z, 0-9, '._~-/%+', without empty segments",
        ))
    }
}

impl Stream {
    /// Checks every rule `docs/stream-format.md` gives for the parsed fields (the writer runs it
    /// too, so it never writes what a box refuses).
    pub fn validate(&self) -> Result<(), StreamError> {
        if self.format_version != u64::from(STREAM_FORMAT_VERSION) {
            return Err(StreamError::UnsupportedVersion {
                found: self.format_version,
                supported: STREAM_FORMAT_VERSION,
            });
        }
        check_channel(&self.channel)?;
        if self.serial == 0 {
            return Err(bad("serial", self.serial, "must be at least 1"));
        }
        if self.expires <= self.generated {
            return Err(bad("expires", self.expires, "must be later than generated"));
        }
        if self.releases.len() > MAX_RELEASES {
            return Err(StreamError::TooManyReleases {
                found: self.releases.len(),
                max: MAX_RELEASES,
            });
        }
        for (i, r) in self.releases.iter().enumerate() {
            r.validate(i)?;
            if i > 0 {
                let previous = &self.releases[i - 1].version;
                if compare_versions(previous, &r.version) != Ordering::Less {
                    return Err(StreamError::NotAscending {
                        index: i,
                        version: r.version.clone(),
                        previous: previous.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Parses and validates stream bytes without checking a signature (for display, and for
    /// the publisher's own tree). Refuses more than [`MAX_STREAM_LEN`] bytes before parsing.
    pub fn parse(bytes: &[u8]) -> Result<Stream, StreamError> {
        check_len(STREAM_FILE, bytes.len(), MAX_STREAM_LEN)?;
        if bytes.first() != Some(&b'{') {
            return Err(StreamError::Malformed {
                reason: "the first byte must be '{'".into(),
            });
        }
        let stream: Stream = serde_json::from_slice(bytes).map_err(|e| StreamError::Malformed {
            reason: e.to_string(),
        })?;
        stream.validate()?;
        Ok(stream)
    }

    /// The release with this exact version string, if listed.
    pub fn release(&self, version: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.version == version)
    }
}

impl Release {
    /// Checks a fetched payload against this entry: its signed manifest's version and image
    /// SHA-256, its payload id and, when known, its size. A box installs a release only from a
    /// payload that passes (the payload's own signature is checked by the payload reader).
    pub fn check_payload(
        &self,
        prelude: &payload::VerifiedPrelude,
        size: Option<u64>,
    ) -> Result<(), StreamError> {
        let mismatch = |field, listed: String, found: String| StreamError::PayloadMismatch {
            version: self.version.clone(),
            field,
            listed,
            found,
        };
        if prelude.manifest.version != self.version {
            return Err(mismatch(
                "version",
                self.version.clone(),
                prelude.manifest.version.clone(),
            ));
        }
        let id = prelude.payload_id();
        if id != self.payload_id {
            return Err(mismatch(
                "payload_id",
                self.payload_id.to_string(),
                id.to_string(),
            ));
        }
        if prelude.manifest.image_sha256 != self.image_sha256 {
            return Err(mismatch(
                "image_sha256",
                self.image_sha256.to_string(),
                prelude.manifest.image_sha256.to_string(),
            ));
        }
        if let Some(size) = size.filter(|&s| s != self.size) {
            return Err(mismatch("size", self.size.to_string(), size.to_string()));
        }
        Ok(())
    }

    fn validate(&self, i: usize) -> Result<(), StreamError> {
        let v = &self.version;
        if v.is_empty() || v.len() > payload::MAX_STRING_LEN || v.chars().any(char::is_control) {
            return Err(bad(
                format!("releases[{i}].version"),
                v,
                "must be 1 to 128 bytes without control characters",
            ));
        }
        check_location(format!("releases[{i}].location"), &self.location)?;
        if self.size == 0 {
            return Err(bad(
                format!("releases[{i}].size"),
                self.size,
                "must be at least 1",
            ));
        }
        if let Some(r) = &self.rollout {
            if !(0.0..=1.0).contains(&r.start_fraction) {
                return Err(bad(
                    format!("releases[{i}].rollout.start_fraction"),
                    r.start_fraction,
                    "must be within 0..=1",
                ));
            }
        }
        Ok(())
    }
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), StreamError> {
    if len > max {
        return Err(StreamError::TooLarge {
            what,
            found: len as u64,
            max: max as u64,
        });
    }
    Ok(())
}

/// Reads a whole stream file of at most `max` bytes from `r`, refusing a longer one after
/// reading `max + 1` bytes (never more).
pub fn read_bounded(
    r: &mut dyn std::io::Read,
    what: &'static str,
    max: usize,
) -> Result<Vec<u8>, StreamError> {
    let mut out = Vec::new();
    r.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| StreamError::Read { what, source })?;
    check_len(what, out.len(), max)?;
    Ok(out)
}

/// Checks the detached signature over the exact `stream` bytes with `keys` (the payload rule:
/// at least one signature by a trusted key, and every signature by a trusted key verifies).
pub fn verify_signature(
    stream: &[u8],
    signature: &[u8],
    keys: &TrustedKeys,
) -> Result<KeyId, StreamError> {
    check_len(STREAM_FILE, stream.len(), MAX_STREAM_LEN)?;
    check_len(SIGNATURE_FILE, signature.len(), MAX_SIGNATURE_FILE_LEN)?;
    let block = SignatureBlock::parse(signature).map_err(|e| match e {
        PayloadError::NoSignatures => StreamError::Unsigned,
        e => StreamError::BadSignatureFile(e),
    })?;
    // The payload's rules hold for the stream too: revoked keys and `signatures_required`.
    let signers = payload::verify_signatures(stream, &block, keys).map_err(|e| match e {
        PayloadError::UnknownKey { key_ids, trusted } => {
            StreamError::UnknownKey { key_ids, trusted }
        }
        PayloadError::BadSignature { key_id } => StreamError::BadSignature { key_id },
        e => StreamError::BadSignatureFile(e),
    })?;
    Ok(*signers.first().expect("a verified block has a signer"))
}

/// Verifies a fetched stream: sizes, signature, shape, channel, serial and expiry, in that
/// order. Nothing of the JSON is parsed before the signature verified.
pub fn verify(
    stream: &[u8],
    signature: &[u8],
    keys: &TrustedKeys,
    expect: &Expectations<'_>,
) -> Result<VerifiedStream, StreamError> {
    let signed_by = verify_signature(stream, signature, keys)?;
    let parsed = Stream::parse(stream)?;
    if parsed.channel != expect.channel {
        return Err(StreamError::WrongChannel {
            expected: expect.channel.to_owned(),
            found: parsed.channel,
        });
    }
    let sha256 = Sha256Digest::of(stream);
    if let Some(last) = expect.last {
        if parsed.serial < last.serial {
            return Err(StreamError::Replayed {
                serial: parsed.serial,
                last: last.serial,
            });
        }
        if parsed.serial == last.serial && sha256 != last.sha256 {
            return Err(StreamError::SerialReused {
                serial: parsed.serial,
                accepted: last.sha256,
                found: sha256,
            });
        }
    }
    if expect.now >= parsed.expires {
        return Err(StreamError::Expired {
            expires: parsed.expires,
            now: expect.now,
        });
    }
    let accepted = Accepted {
        serial: parsed.serial,
        sha256,
    };
    Ok(VerifiedStream {
        stream: parsed,
        signed_by,
        accepted,
    })
}

/// Resolves a release `location` against the URL the stream was fetched from (RFC 3986
/// reference resolution for a relative path): the stream URL's last segment, query and
/// fragment are dropped, the location appended, and `.` and `..` segments removed (never
/// above the URL's root).
///
/// ```
/// use ab_release::stream::resolve_location;
/// assert_eq!(
///     resolve_location("https://cdn.example/os/stable/stream.json", "../payloads/p1"),
///     "https://cdn.example/os/payloads/p1"
/// );
/// assert_eq!(resolve_location("file:///media/u/stable/stream.json", "../../../x"), "file:///x");
/// ```
pub fn resolve_location(stream_url: &str, location: &str) -> String {
    let url = stream_url.split(['?', '#']).next().unwrap_or_default();
    // The root: scheme and authority (`https://host`, `file://`), or nothing for a plain path.
    let (root, path) = match url.find("://") {
        Some(i) => {
            let after = i + 3;
            let slash = url[after..].find('/').map_or(url.len(), |j| after + j);
            (&url[..slash], &url[slash..])
        }
        None => ("", url),
    };
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let mut segments: Vec<&str> = Vec::new();
    for seg in dir.split('/').chain(location.split('/')) {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let absolute = path.starts_with('/') || !root.is_empty();
    let joined = segments.join("/");
    if absolute {
        format!("{root}/{joined}")
    } else {
        joined
    }
}

/// Serde for a [`Sha256Digest`] as 64 lower-case hexadecimal characters.
mod hex_digest {
    use super::Sha256Digest;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Sha256Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Sha256Digest, D::Error> {
        let text = String::deserialize(d)?;
        let ok = text.len() == 64
            && text
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "{text:?} is not 64 lower-case hex characters"
            )));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(Sha256Digest(out))
    }
}

#[cfg(test)]
mod tests;
