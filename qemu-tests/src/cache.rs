//! The cache of built and downloaded inputs, kept outside the repository.
//!
//! Entries live under [`cache_root`] (`$AB_UPDATER_CACHE`, else `/var/cache/ab-updater` when it
//! can be created, else `~/.cache/ab-updater`), one directory per entry named after what it is
//! and a hash of the inputs it was made from, so a changed input makes a new entry and an
//! unchanged one costs nothing. Entries of a name unused for two weeks are removed when a new
//! entry of that name is built. An entry is built in a private temporary directory and renamed
//! into place whole, so a crash or a concurrent build never leaves a half-built entry behind.
//!
//! ```no_run
//! use qemu_tests::cache::{cached_dir, Key};
//! let dir = cached_dir("hello", &Key::new().text("v1"), |dir| {
//!     std::fs::write(dir.join("hello.txt"), "hi").map_err(|e| qemu_tests::Error::io("writing", dir, e))
//! })?;
//! # Ok::<(), qemu_tests::Error>(())
//! ```
use crate::error::{IoContext, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The directory holding every cache entry (created if needed).
pub fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("AB_UPDATER_CACHE") {
        let dir = PathBuf::from(dir);
        fs::create_dir_all(&dir).ctx("creating cache directory", &dir)?;
        return Ok(dir);
    }
    let system = PathBuf::from("/var/cache/ab-updater");
    if fs::create_dir_all(&system).is_ok() && is_writable(&system) {
        return Ok(system);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let user = home.join(".cache/ab-updater");
    fs::create_dir_all(&user).ctx("creating cache directory", &user)?;
    Ok(user)
}

fn is_writable(dir: &Path) -> bool {
    tempfile::tempfile_in(dir).is_ok()
}

/// A hash of the inputs of a cache entry.
#[derive(Clone)]
pub struct Key(Sha256);

impl Default for Key {
    fn default() -> Self {
        Key::new()
    }
}

impl Key {
    /// An empty key.
    pub fn new() -> Key {
        Key(Sha256::new())
    }

    /// Adds a piece of text (length-prefixed, so pieces cannot run together).
    pub fn text(self, text: &str) -> Key {
        self.bytes(text.as_bytes())
    }

    /// Adds bytes (length-prefixed).
    pub fn bytes(mut self, bytes: &[u8]) -> Key {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// Adds the content of a file.
    pub fn file(self, path: &Path) -> Result<Key> {
        let bytes = fs::read(path).ctx("reading", path)?;
        Ok(self.bytes(&bytes))
    }

    /// The first 16 hex digits of the hash.
    pub fn short(&self) -> String {
        hex::encode(&self.0.clone().finalize()[..8])
    }
}

/// Entries unused for this long are removed when another entry of the same name is built.
pub const UNUSED_LIFETIME: Duration = Duration::from_secs(14 * 24 * 3600);

/// Stamps an entry as used now (its directory's modification time).
fn mark_used(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Removes entries `name-*` of `root` unused for [`UNUSED_LIFETIME`]: every change of an input
/// (say, the updater) makes a new entry and the old one is never asked for again.
fn prune(root: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let prefix = format!("{name}-");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(hash) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if hash.len() != 16 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let unused = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > UNUSED_LIFETIME);
        if unused {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The directory of entry `name` for `key`, built by `build` into an empty directory if it
/// does not exist yet.
pub fn cached_dir(
    name: &str,
    key: &Key,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let root = cache_root()?;
    let dir = root.join(format!("{name}-{}", key.short()));
    if dir.is_dir() {
        mark_used(&dir);
        return Ok(dir);
    }
    prune(&root, name);
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .tempdir_in(&root)
        .ctx("creating a directory in", &root)?;
    build(tmp.path())?;
    let tmp = tmp.keep();
    if let Err(e) = fs::rename(&tmp, &dir) {
        let _ = fs::remove_dir_all(&tmp);
        // Someone else finished the same entry first: theirs is as good as ours.
        if !dir.is_dir() {
            return Err(crate::Error::io("renaming cache entry into", &dir, e));
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_an_entry_prunes_long_unused_ones_of_the_same_name() {
        let root = tempfile::tempdir().unwrap();
        let old = root.path().join("usr-0123456789abcdef");
        let recent = root.path().join("usr-fedcba9876543210");
        let other = root.path().join("kernel-0123456789abcdef");
        for d in [&old, &recent, &other] {
            fs::create_dir(d).unwrap();
        }
        let long_ago = SystemTime::now() - UNUSED_LIFETIME - Duration::from_secs(60);
        for d in [&old, &other] {
            fs::File::open(d).unwrap().set_modified(long_ago).unwrap();
        }
        prune(root.path(), "usr");
        assert!(!old.exists(), "unused usr entry kept");
        assert!(recent.exists(), "recently used usr entry removed");
        assert!(other.exists(), "entry of another name removed");
    }

    #[test]
    fn keys_differ_when_any_input_differs() {
        let a = Key::new().text("ab").text("c").short();
        let b = Key::new().text("a").text("bc").short();
        assert_ne!(a, b);
        assert_eq!(a, Key::new().text("ab").text("c").short());
    }
}
