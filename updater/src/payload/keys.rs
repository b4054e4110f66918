//! Trusted ed25519 public keys and their ids.
//!
//! A key file holds the 32-byte public key as 64 hexadecimal characters (surrounding whitespace
//! ignored). A key's id is the first eight bytes of the SHA-256 of those 32 bytes; payload
//! signatures name the key by this id. [`TrustedKeys::load_dirs`] reads every `*.pub` file of
//! the key directories (`/usr/lib/updater/keys.d`, `/etc/updater/keys.d`) in name order.

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest key file read, in bytes (a key is 64 hex characters plus whitespace).
pub const MAX_KEY_FILE_LEN: u64 = 256;
/// Most keys loaded from the key directories.
pub const MAX_TRUSTED_KEYS: usize = 64;

/// Identifies a public key: the first eight bytes of its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &VerifyingKey) -> KeyId {
        let d = Sha256::digest(key.as_bytes());
        KeyId(d[..8].try_into().expect("8 bytes"))
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

/// Why a key could not be loaded.
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
    /// More than [`MAX_TRUSTED_KEYS`] key files.
    #[error("more than {max} trusted keys in {dirs}")]
    TooMany {
        /// The directories searched.
        dirs: String,
        /// The maximum.
        max: usize,
    },
}

/// Parses the text of a public key file.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|v: Vec<u8>| format!("{} bytes, expected 32", v.len()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

/// The set of public keys a payload may be signed by.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(KeyId, VerifyingKey)>,
}

impl TrustedKeys {
    /// A set holding the given keys.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> TrustedKeys {
        TrustedKeys {
            keys: keys.into_iter().map(|k| (KeyId::of(&k), k)).collect(),
        }
    }

    /// Loads a single public key file.
    pub fn load_file(path: &Path) -> Result<VerifyingKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_KEY_FILE_LEN {
            return Err(KeyError::Malformed {
                path: path.to_owned(),
                reason: format!("{len} bytes, more than {MAX_KEY_FILE_LEN}"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        parse_public_key(&text).map_err(|reason| KeyError::Malformed {
            path: path.to_owned(),
            reason,
        })
    }

    /// Loads every `*.pub` file of `dirs` (missing directories are skipped), in name order.
    pub fn load_dirs(dirs: &[PathBuf]) -> Result<TrustedKeys, KeyError> {
        let mut keys = Vec::new();
        for dir in dirs {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(KeyError::Io {
                        path: dir.clone(),
                        source,
                    })
                }
            };
            let mut paths = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| KeyError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "pub") {
                    paths.push(path);
                }
                if paths.len() + keys.len() > MAX_TRUSTED_KEYS {
                    return Err(KeyError::TooMany {
                        dirs: dirs_list(dirs),
                        max: MAX_TRUSTED_KEYS,
                    });
                }
            }
            paths.sort();
            for p in paths {
                keys.push(Self::load_file(&p)?);
            }
        }
        Ok(TrustedKeys::new(keys))
    }

    /// The key with this id, if trusted.
    pub fn get(&self, id: &KeyId) -> Option<&VerifyingKey> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, v)| v)
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
        self.keys
            .iter()
            .map(|(k, _)| k.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn dirs_list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
