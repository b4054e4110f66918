//! Trusted ed25519 public keys, their ids, and the policy that decides which keys count.
//!
//! A key file holds the 32-byte public key as 64 hexadecimal characters (surrounding whitespace
//! ignored). A key's id is the first eight bytes of the SHA-256 of those 32 bytes; payload
//! signatures name the key by this id.
//!
//! [`load_trusted`] is the one place a device's trust is decided: it reads every `*.pub` of
//! [`VENDOR_KEY_DIR`] and [`ADMIN_KEY_DIR`] under a root, in name order, drops the ids the
//! `[keys]` configuration revokes ([`KeySettings::revoked`], whichever directory holds the key),
//! and carries [`KeySettings::signatures_required`] into the [`TrustedKeys`] that
//! [`verify_signatures`](super::verify_signatures) applies. It refuses rather than guesses:
//! a key file that is not a regular file (a FIFO, a device, a directory) is an error found
//! without blocking and without opening a device, as is a key file over [`MAX_KEY_FILE_LEN`],
//! more than [`MAX_TRUSTED_KEYS`] key files, no key left after revocation, fewer keys than
//! signatures required, and a `[keys]` value that does not parse
//! ([`KeySettings::invalid`]: ignoring it could trust a key the admin meant to revoke).
//!
//! ```
//! use ab_payload::keys::{load_trusted, KeyError, KeySettings};
//! let root = tempfile::tempdir().unwrap();
//! let err = load_trusted(root.path(), &KeySettings::default()).unwrap_err();
//! assert!(matches!(err, KeyError::NoTrustedKeys { revoked: 0, .. }));
//! ```

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Vendor key directory (in the image), relative to the root.
pub const VENDOR_KEY_DIR: &str = "usr/lib/updater/keys.d";
/// Admin key directory, relative to the root.
pub const ADMIN_KEY_DIR: &str = "etc/updater/keys.d";
/// Largest key file read, in bytes (a key is 64 hex characters plus whitespace).
pub const MAX_KEY_FILE_LEN: u64 = 256;
/// Most key files (`*.pub`) in the key directories together.
pub const MAX_TRUSTED_KEYS: usize = 64;

/// Identifies a public key: the first eight bytes of its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &VerifyingKey) -> KeyId {
        let d = Sha256::digest(key.as_bytes());
        KeyId(d[..8].try_into().expect("8 bytes"))
    }

    /// Parses an id written as 16 hexadecimal characters (either case).
    pub fn parse(text: &str) -> Option<KeyId> {
        let bytes = hex::decode(text).ok()?;
        Some(KeyId(bytes.try_into().ok()?))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The `[keys]` configuration: which keys never count, and how many must sign.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeySettings {
    /// Key ids never trusted, even when a key directory (vendor or admin) holds the key.
    pub revoked: Vec<KeyId>,
    /// How many distinct trusted keys must have signed a manifest (1 to
    /// [`MAX_SIGNATURES`](super::MAX_SIGNATURES)).
    pub signatures_required: usize,
    /// `[keys]` values that could not be used, each naming its file and key. While any is
    /// present [`load_trusted`] trusts no key.
    pub invalid: Vec<String>,
}

impl Default for KeySettings {
    fn default() -> KeySettings {
        KeySettings {
            revoked: Vec::new(),
            signatures_required: 1,
            invalid: Vec::new(),
        }
    }
}

/// Why no usable set of trusted keys could be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading a key file or directory failed.
    #[error("reading key {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file is not 64 hex characters encoding a valid ed25519 point.
    #[error("key file {path} is not an ed25519 public key in hex: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `*.pub` entry is not a regular file (after following symlinks).
    #[error("key file {path} is a {kind}, not a regular file")]
    NotRegularFile {
        /// The entry.
        path: PathBuf,
        /// What it is: `directory`, `FIFO`, `socket`, `character device`, `block device`.
        kind: &'static str,
    },
    /// More than [`MAX_TRUSTED_KEYS`] key files.
    #[error("more than {max} trusted keys in {dirs}")]
    TooMany {
        /// The directories searched.
        dirs: String,
        /// The maximum.
        max: usize,
    },
    /// No key is left to trust.
    #[error("no trusted keys: no *.pub file in {dirs}{}", revoked_note(*.revoked))]
    NoTrustedKeys {
        /// The directories searched.
        dirs: String,
        /// How many keys found there are revoked.
        revoked: usize,
    },
    /// Fewer trusted keys than signatures required.
    #[error(
        "keys.signatures_required is {required}, but only {trusted} trusted keys are installed"
    )]
    NotEnoughKeys {
        /// Signatures required.
        required: usize,
        /// Trusted (non-revoked, distinct) keys.
        trusted: usize,
    },
    /// The `[keys]` configuration has values that could not be used.
    #[error("trusting no key while the [keys] configuration is invalid: {problems}")]
    InvalidSettings {
        /// The problems, `; ` separated.
        problems: String,
    },
}

fn revoked_note(revoked: usize) -> String {
    match revoked {
        0 => String::new(),
        n => format!(" that is not revoked ({n} revoked by keys.revoked)"),
    }
}

/// Parses the text of a public key file.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|v: Vec<u8>| format!("{} bytes, expected 32", v.len()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

/// The key directories under `root`: [`VENDOR_KEY_DIR`], then [`ADMIN_KEY_DIR`].
pub fn key_dirs(root: &Path) -> [PathBuf; 2] {
    [root.join(VENDOR_KEY_DIR), root.join(ADMIN_KEY_DIR)]
}

/// Loads the keys a device trusts: every `*.pub` of [`key_dirs`] under `root`, less the
/// revoked ones, requiring `settings.signatures_required` signatures. See the module doc for
/// every refusal.
pub fn load_trusted(root: &Path, settings: &KeySettings) -> Result<TrustedKeys, KeyError> {
    if !settings.invalid.is_empty() {
        return Err(KeyError::InvalidSettings {
            problems: settings.invalid.join("; "),
        });
    }
    let dirs = key_dirs(root);
    let found = TrustedKeys::load_dirs(&dirs)?;
    let keys = TrustedKeys::with_settings(found.keys.iter().map(|(_, k)| *k), settings);
    if keys.is_empty() {
        return Err(KeyError::NoTrustedKeys {
            dirs: dirs_list(&dirs),
            revoked: found.len(),
        });
    }
    if keys.len() < settings.signatures_required {
        return Err(KeyError::NotEnoughKeys {
            required: settings.signatures_required,
            trusted: keys.len(),
        });
    }
    Ok(keys)
}

/// The set of public keys a payload may be signed by, the ids revoked, and how many distinct
/// keys must sign.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    keys: Vec<(KeyId, VerifyingKey)>,
    revoked: Vec<KeyId>,
    signatures_required: usize,
}

impl Default for TrustedKeys {
    fn default() -> TrustedKeys {
        TrustedKeys::new([])
    }
}

impl TrustedKeys {
    /// A set holding the given keys (a key given twice counts once), one signature required.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> TrustedKeys {
        TrustedKeys::with_settings(keys, &KeySettings::default())
    }

    /// A set holding the given keys less those `settings` revokes, requiring
    /// `settings.signatures_required` signatures. Its `invalid` list is not looked at (that is
    /// [`load_trusted`]'s business).
    pub fn with_settings(
        keys: impl IntoIterator<Item = VerifyingKey>,
        settings: &KeySettings,
    ) -> TrustedKeys {
        let mut set = TrustedKeys {
            keys: Vec::new(),
            revoked: settings.revoked.clone(),
            signatures_required: settings.signatures_required,
        };
        for key in keys {
            let id = KeyId::of(&key);
            if !set.revoked.contains(&id) && set.get(&id).is_none() {
                set.keys.push((id, key));
            }
        }
        set
    }

    /// Loads a single public key file: a regular file (symlinks followed) of at most
    /// [`MAX_KEY_FILE_LEN`] bytes. Anything else is refused without blocking: the type is
    /// checked before the file is opened (so no device is ever opened), the file is opened
    /// non-blocking (so a FIFO swapped in meanwhile cannot block), and the opened file is
    /// checked again.
    pub fn load_file(path: &Path) -> Result<VerifyingKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let regular = |meta: &std::fs::Metadata| -> Result<(), KeyError> {
            let t = meta.file_type();
            let kind = if t.is_file() {
                return Ok(());
            } else if t.is_dir() {
                "directory"
            } else if t.is_fifo() {
                "FIFO"
            } else if t.is_socket() {
                "socket"
            } else if t.is_char_device() {
                "character device"
            } else {
                "block device"
            };
            Err(KeyError::NotRegularFile {
                path: path.to_owned(),
                kind,
            })
        };
        regular(&std::fs::metadata(path).map_err(io)?)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        regular(&meta)?;
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(KeyError::Malformed {
                path: path.to_owned(),
                reason: format!("{} bytes, more than {MAX_KEY_FILE_LEN}", meta.len()),
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE_LEN)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let malformed = |reason| KeyError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let text = String::from_utf8(bytes).map_err(|_| malformed("not UTF-8".into()))?;
        parse_public_key(&text).map_err(malformed)
    }

    /// Loads every `*.pub` file of `dirs` (missing directories are skipped), each directory in
    /// name order; at most [`MAX_TRUSTED_KEYS`] files in all.
    pub fn load_dirs(dirs: &[PathBuf]) -> Result<TrustedKeys, KeyError> {
        let mut keys = Vec::new();
        for dir in dirs {
            let dir_err = |source| KeyError::Io {
                path: dir.clone(),
                source,
            };
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(dir_err(e)),
            };
            let mut paths = Vec::new();
            for entry in entries {
                let path = entry.map_err(dir_err)?.path();
                if path.extension().is_some_and(|e| e == "pub") {
                    if keys.len() + paths.len() >= MAX_TRUSTED_KEYS {
                        return Err(KeyError::TooMany {
                            dirs: dirs_list(dirs),
                            max: MAX_TRUSTED_KEYS,
                        });
                    }
                    paths.push(path);
                }
            }
            paths.sort();
            for p in paths {
                keys.push(Self::load_file(&p)?);
            }
        }
        Ok(TrustedKeys::new(keys))
    }

    /// The key with this id, if trusted (never a revoked one).
    pub fn get(&self, id: &KeyId) -> Option<&VerifyingKey> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, v)| v)
    }

    /// Whether the configuration revokes this id.
    pub fn is_revoked(&self, id: &KeyId) -> bool {
        self.revoked.contains(id)
    }

    /// How many distinct trusted keys must have signed a manifest.
    pub fn signatures_required(&self) -> usize {
        self.signatures_required
    }

    /// Number of trusted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids, comma separated, or `none`.
    pub fn describe(&self) -> String {
        if self.keys.is_empty() {
            return "none".into();
        }
        ids_list(self.keys.iter().map(|(k, _)| k))
    }
}

/// Ids, comma separated.
pub(super) fn ids_list<'a>(ids: impl IntoIterator<Item = &'a KeyId>) -> String {
    ids.into_iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn dirs_list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
