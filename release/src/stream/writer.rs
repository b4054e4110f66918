//! Writing streams: the edits a publisher makes, the deterministic encoding, and signing.
//!
//! Compiled only with the `writer` feature (enabled by `image-tools` and the tests), so the
//! device binary carries no publisher code. Every edit goes through [`Stream::republish`], which
//! bumps the serial, sets `generated` to the edit's time and moves `expires` forward by the
//! stream's validity period; [`encode`] validates with the reader's own rules before writing, so
//! a publisher never writes a stream a box refuses. Encoding is deterministic (pretty JSON with
//! the fields in declaration order and a final newline) and ed25519 signatures are
//! deterministic, so the same edits at the same time give the same bytes.

use super::{check_channel, Release, Rollout, Stream, StreamError, STREAM_FORMAT_VERSION};
use crate::version::compare_versions;
use ab_payload::{KeyId, Sha256Digest, Signature, SignatureBlock, MAX_SIGNATURES};
use ed25519_dalek::{Signer, SigningKey};
use std::cmp::Ordering;

/// Why an edit was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// No release of this version is listed.
    #[error("channel {channel} lists no release {version}")]
    UnknownVersion {
        /// The channel.
        channel: String,
        /// The version asked for.
        version: String,
    },
    /// A release of this version is listed already.
    #[error("channel {channel} lists {version} already, with payload id {listed}; the new payload's id is {new}")]
    AlreadyListed {
        /// The channel.
        channel: String,
        /// The version.
        version: String,
        /// The listed payload id.
        listed: Sha256Digest,
        /// The new payload's id.
        new: Sha256Digest,
    },
    /// Pausing or resuming a release that has no rollout.
    #[error("release {version} has no rollout to {action}; set one with rollout first")]
    NoRollout {
        /// The version.
        version: String,
        /// `pause` or `resume`.
        action: &'static str,
    },
    /// Marking a pulled release as a barrier (a dead end holds no box back).
    #[error("release {version} is pulled (dead end) and cannot be a barrier")]
    PulledBarrier {
        /// The version.
        version: String,
    },
    /// The validity period is zero.
    #[error("the stream's validity period must be at least one second")]
    NoValidity,
    /// The serial cannot grow any more.
    #[error("serial {serial} cannot be bumped")]
    SerialExhausted {
        /// The current serial.
        serial: u64,
    },
    /// Signing needs 1 to 16 keys.
    #[error("{found} signing keys given, need 1 to {max}")]
    KeyCount {
        /// Keys given.
        found: usize,
        /// The maximum.
        max: usize,
    },
    /// The edited stream breaks a rule of the format.
    #[error(transparent)]
    Invalid(#[from] StreamError),
}

impl Stream {
    /// A new, empty stream for `channel` at serial 1, generated at `now` and valid for
    /// `valid_for` seconds.
    pub fn new(channel: &str, now: u64, valid_for: u64) -> Result<Stream, EditError> {
        check_channel(channel)?;
        if valid_for == 0 {
            return Err(EditError::NoValidity);
        }
        Ok(Stream {
            format_version: STREAM_FORMAT_VERSION.into(),
            channel: channel.to_owned(),
            serial: 1,
            generated: now,
            expires: now.saturating_add(valid_for),
            releases: Vec::new(),
        })
    }

    /// Seconds from `generated` to `expires`.
    pub fn validity(&self) -> u64 {
        self.expires.saturating_sub(self.generated)
    }

    /// Makes the next serial: serial + 1, `generated = now`, `expires = now + validity`.
    pub fn republish(&mut self, now: u64) -> Result<(), EditError> {
        let validity = self.validity();
        if validity == 0 {
            return Err(EditError::NoValidity);
        }
        self.serial = self
            .serial
            .checked_add(1)
            .ok_or(EditError::SerialExhausted {
                serial: self.serial,
            })?;
        self.generated = now;
        self.expires = now.saturating_add(validity);
        Ok(())
    }

    /// Lists a new release in version order (not offered until it gets a rollout).
    pub fn add_release(&mut self, release: Release) -> Result<(), EditError> {
        if let Some(r) = self.find(&release.version) {
            return Err(EditError::AlreadyListed {
                channel: self.channel.clone(),
                version: r.version.clone(),
                listed: r.payload_id,
                new: release.payload_id,
            });
        }
        let at = self
            .releases
            .iter()
            .position(|r| compare_versions(&r.version, &release.version) == Ordering::Greater)
            .unwrap_or(self.releases.len());
        self.releases.insert(at, release);
        Ok(())
    }

    fn find(&self, version: &str) -> Option<&Release> {
        self.releases
            .iter()
            .find(|r| compare_versions(&r.version, version) == Ordering::Equal)
    }

    /// The release of `version` (compared as versions), for editing.
    pub fn release_mut(&mut self, version: &str) -> Result<&mut Release, EditError> {
        let channel = self.channel.clone();
        self.releases
            .iter_mut()
            .find(|r| compare_versions(&r.version, version) == Ordering::Equal)
            .ok_or(EditError::UnknownVersion {
                channel,
                version: version.to_owned(),
            })
    }

    /// Sets (or replaces) the rollout of `version`; a new rollout is not paused.
    pub fn set_rollout(
        &mut self,
        version: &str,
        start: u64,
        duration: u64,
        start_fraction: f64,
    ) -> Result<(), EditError> {
        self.release_mut(version)?.rollout = Some(Rollout {
            start,
            duration,
            start_fraction,
            paused: false,
        });
        Ok(())
    }

    /// Pauses (`true`) or resumes (`false`) the rollout of `version`.
    pub fn set_paused(&mut self, version: &str, paused: bool) -> Result<(), EditError> {
        let r = self.release_mut(version)?;
        let rollout = r.rollout.as_mut().ok_or(EditError::NoRollout {
            version: r.version.clone(),
            action: if paused { "pause" } else { "resume" },
        })?;
        rollout.paused = paused;
        Ok(())
    }

    /// Pulls `version`: a dead end from now on.
    pub fn pull(&mut self, version: &str) -> Result<(), EditError> {
        self.release_mut(version)?.dead_end = true;
        Ok(())
    }

    /// Marks `version` as a barrier.
    pub fn mark_barrier(&mut self, version: &str) -> Result<(), EditError> {
        let r = self.release_mut(version)?;
        if r.dead_end {
            return Err(EditError::PulledBarrier {
                version: r.version.clone(),
            });
        }
        r.barrier = true;
        Ok(())
    }
}

/// The file name `image-tools publish add` gives a payload under `ROOT/payloads/`:
/// `COMPATIBLE_VERSION_ID12.payload`, where ID12 is the first 12 hex digits of the payload id and
/// every byte outside `[A-Za-z0-9.~-]` of the compatible and version strings becomes `-`. The same
/// payload always gets the same name, and two payloads never share one by accident.
pub fn payload_file_name(compatible: &str, version: &str, payload_id: &Sha256Digest) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".~-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let id = payload_id.to_string();
    format!(
        "{}_{}_{}.payload",
        clean(compatible),
        clean(version),
        &id[..12]
    )
}

/// The bytes of `stream.json`: validated, pretty JSON, fields in declaration order, newline.
pub fn encode(stream: &Stream) -> Result<Vec<u8>, EditError> {
    stream.validate()?;
    let mut out = serde_json::to_vec_pretty(stream).expect("a stream always serializes");
    out.push(b'\n');
    super::check_len(super::STREAM_FILE, out.len(), super::MAX_STREAM_LEN)?;
    Ok(out)
}

/// The bytes of `stream.json.sig`: a payload signature block over the exact `stream` bytes, one
/// signature per key.
pub fn sign(stream: &[u8], keys: &[SigningKey]) -> Result<Vec<u8>, EditError> {
    if keys.is_empty() || keys.len() > MAX_SIGNATURES {
        return Err(EditError::KeyCount {
            found: keys.len(),
            max: MAX_SIGNATURES,
        });
    }
    let block = SignatureBlock {
        signatures: keys
            .iter()
            .map(|k| Signature {
                key_id: KeyId::of(&k.verifying_key()),
                signature: k.sign(stream).to_bytes(),
            })
            .collect(),
    };
    Ok(block.encode())
}
