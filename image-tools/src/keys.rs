//! `image-tools keygen`: make an ed25519 signing key pair for payloads.
//!
//! Writes `PREFIX.key` (the secret seed, 64 hex characters, mode 0600) and `PREFIX.pub` (the
//! public key, 64 hex characters) in the format `docs/payload-format.md` describes. The public
//! file goes into a device image's `/usr/lib/updater/keys.d/`. Existing files are never
//! overwritten.
use ab_payload::writer::{encode_public_key, encode_secret_key, generate_key};
use ab_payload::KeyId;
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Generate a payload signing key pair (PREFIX.key and PREFIX.pub).
///
/// The key id printed is the one payload signatures and `inspect` show.
#[derive(Args, Debug)]
pub struct KeygenCmd {
    /// Path prefix of the key files; PREFIX.key and PREFIX.pub must not exist.
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

impl KeygenCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        let key = generate_key().context("reading random bytes from /dev/urandom")?;
        let secret = with_suffix(&self.out, ".key");
        let public = with_suffix(&self.out, ".pub");
        for p in [&secret, &public] {
            anyhow::ensure!(!p.exists(), "refusing to overwrite {}", p.display());
        }
        write_new(&secret, &encode_secret_key(&key), 0o600)?;
        write_new(&public, &encode_public_key(&key.verifying_key()), 0o644)?;
        println!(
            "key id {} written to {} and {}",
            KeyId::of(&key.verifying_key()),
            secret.display(),
            public.display()
        );
        Ok(())
    }
}
