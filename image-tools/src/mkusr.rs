//! `image-tools mkusr`: turns a /usr tree into a reproducible, uncompressed filesystem image.
//!
//! The image is what goes into a USR partition and, compressed, into a payload. It is built
//! *without* compression inside the filesystem (the payload compresses; compressing twice wastes
//! CPU and ruins deltas) and reproducibly: the same tree gives the same bytes, whatever the file
//! timestamps, owners or directory order on the host.
//!
//! Two filesystems are supported, both readable by GRUB 2.06 (which loads `boot/vmlinuz` and
//! `boot/initramfs.img` out of the image) and by Linux:
//!
//! - [`UsrFs::Squashfs`] through `mksquashfs` with every table and block stored uncompressed,
//!   all files owned by root and every timestamp set to the build epoch;
//! - [`UsrFs::Ext4`] through `mkfs.ext4 -d` with our own `mke2fs.conf` (no journal: the image is
//!   mounted read-only), a UUID and directory hash seed derived from the image identity, a fixed
//!   clock, and owners and timestamps normalised with `debugfs` afterwards.
//!
//! A tree is refused before anything is written unless it has `boot/vmlinuz`,
//! `boot/initramfs.img` and `lib/os-release` naming `IMAGE_ID` and `IMAGE_VERSION`
//! ([`UsrTree::open`]).
//!
//! ```no_run
//! use image_tools::mkusr::{build_usr_image, UsrFs, UsrTree};
//! let tree = UsrTree::open("rootfs/usr".as_ref())?;
//! build_usr_image(&tree, UsrFs::Squashfs, "usr.img".as_ref(), 0)?;
//! # Ok::<(), image_tools::mkusr::MkusrError>(())
//! ```
use anyhow::Context;
use clap::{Args, ValueEnum};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

mod ext4;
mod squashfs;

/// The files a /usr tree must hold to be bootable and identifiable.
pub const REQUIRED_FILES: [&str; 3] = ["boot/vmlinuz", "boot/initramfs.img", "lib/os-release"];

/// The os-release keys a /usr tree must define (non-empty).
pub const REQUIRED_OS_RELEASE_KEYS: [&str; 2] = ["IMAGE_ID", "IMAGE_VERSION"];

/// Errors of building a /usr image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MkusrError {
    /// The tree lacks required files or os-release keys.
    #[error("/usr tree {} is missing {}", dir.display(), missing.join(", "))]
    IncompleteTree {
        /// The tree given.
        dir: PathBuf,
        /// What is missing, e.g. `boot/vmlinuz` or `IMAGE_VERSION in lib/os-release`.
        missing: Vec<String>,
    },
    /// Reading or writing a file or directory failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done, as a gerund (`reading`, `creating`).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An external tool could not be started or failed.
    #[error("running {program}: {detail}")]
    Tool {
        /// The program (`mksquashfs`, `mkfs.ext4`, `debugfs`).
        program: &'static str,
        /// Its exit status and last line of output, or why it could not start.
        detail: String,
    },
}

impl MkusrError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        MkusrError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// The filesystem of a /usr image.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum UsrFs {
    /// squashfs with every table and data block stored uncompressed.
    Squashfs,
    /// ext4 without a journal.
    Ext4,
}

impl UsrFs {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            UsrFs::Squashfs => "squashfs",
            UsrFs::Ext4 => "ext4",
        }
    }
}

/// A validated /usr tree: the required files exist and os-release names the image.
#[derive(Clone, Debug)]
pub struct UsrTree {
    dir: PathBuf,
    image_id: String,
    image_version: String,
}

impl UsrTree {
    /// Checks `dir` for the files and os-release keys every /usr image must have.
    ///
    /// Everything missing is reported at once in [`MkusrError::IncompleteTree`].
    pub fn open(dir: &Path) -> Result<UsrTree, MkusrError> {
        let meta = fs::metadata(dir).map_err(|e| MkusrError::io("reading", dir, e))?;
        if !meta.is_dir() {
            return Err(MkusrError::io(
                "reading",
                dir,
                io::Error::other("not a directory"),
            ));
        }
        let mut missing = Vec::new();
        for rel in REQUIRED_FILES {
            // Not followed: an absolute symlink would resolve on the host, not in the image.
            let ok = fs::symlink_metadata(dir.join(rel)).is_ok_and(|m| m.is_file());
            if !ok {
                missing.push(rel.to_string());
            }
        }
        let mut image_id = String::new();
        let mut image_version = String::new();
        let os_release = dir.join("lib/os-release");
        if !missing.iter().any(|m| m == "lib/os-release") {
            let text = fs::read_to_string(&os_release)
                .map_err(|e| MkusrError::io("reading", &os_release, e))?;
            image_id = os_release_value(&text, "IMAGE_ID").unwrap_or_default();
            image_version = os_release_value(&text, "IMAGE_VERSION").unwrap_or_default();
            for (key, value) in REQUIRED_OS_RELEASE_KEYS
                .iter()
                .zip([&image_id, &image_version])
            {
                if value.is_empty() {
                    missing.push(format!("{key} in lib/os-release"));
                }
            }
        }
        if !missing.is_empty() {
            return Err(MkusrError::IncompleteTree {
                dir: dir.to_owned(),
                missing,
            });
        }
        Ok(UsrTree {
            dir: dir.to_owned(),
            image_id,
            image_version,
        })
    }

    /// The tree's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `IMAGE_ID` from os-release.
    pub fn image_id(&self) -> &str {
        &self.image_id
    }

    /// `IMAGE_VERSION` from os-release.
    pub fn image_version(&self) -> &str {
        &self.image_version
    }

    /// A 16-byte value derived from the image identity, used where a filesystem wants a UUID.
    fn identity_uuid(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"ab-updater usr image\0")
            .chain_update(self.image_id.as_bytes())
            .chain_update(b"\0")
            .chain_update(self.image_version.as_bytes())
            .finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[..16]);
        // RFC 4122 version 5 style markers, so tools print it as a proper UUID.
        b[6] = (b[6] & 0x0f) | 0x50;
        b[8] = (b[8] & 0x3f) | 0x80;
        let mut s = String::with_capacity(36);
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            let _ = write!(s, "{byte:02x}");
        }
        s
    }
}

/// The value of `key` in os-release text, unquoted; `None` when absent.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        if k.trim() != key {
            return None;
        }
        let v = v.trim();
        let unquoted = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        Some(unquoted.to_string())
    })
}

/// Builds the image of `tree` at `output` (replaced atomically), with every timestamp `epoch`.
pub fn build_usr_image(
    tree: &UsrTree,
    fs_kind: UsrFs,
    output: &Path,
    epoch: u64,
) -> Result<(), MkusrError> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "usr.img".into());
    let tmp = parent.join(format!(".{name}.tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let built = match fs_kind {
        UsrFs::Squashfs => squashfs::build(tree, &tmp, epoch),
        UsrFs::Ext4 => ext4::build(tree, &tmp, epoch),
    };
    if let Err(e) = built {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, output).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        MkusrError::io("renaming into place", output, e)
    })
}

/// Runs a prepared command, turning a failure into [`MkusrError::Tool`] with its last line of
/// output.
fn run_tool(program: &'static str, cmd: &mut Command) -> Result<String, MkusrError> {
    let out = cmd.output().map_err(|e| MkusrError::Tool {
        program,
        detail: format!("starting it: {e}"),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .chain(stdout.lines())
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no output")
            .trim()
            .to_string();
        return Err(MkusrError::Tool {
            program,
            detail: format!("{}: {last}", out.status),
        });
    }
    Ok(stdout)
}

/// Build a reproducible, uncompressed /usr filesystem image from a directory.
///
/// The tree must hold boot/vmlinuz, boot/initramfs.img and lib/os-release with IMAGE_ID and
/// IMAGE_VERSION. Every file is owned by root and stamped with SOURCE_DATE_EPOCH (0 when
/// unset), so two runs on the same tree give byte-identical images.
///
/// Example: image-tools mkusr rootfs/usr -o usr.img --fs squashfs
#[derive(Args, Debug)]
pub struct MkusrCmd {
    /// The /usr tree to image
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Where to write the image (replaced atomically)
    #[arg(short, long, value_name = "USR.IMG")]
    pub output: PathBuf,
    /// Filesystem of the image
    #[arg(long = "fs", value_enum, default_value = "squashfs")]
    pub fs_kind: UsrFs,
}

impl MkusrCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v
                .trim()
                .parse::<u64>()
                .with_context(|| format!("parsing SOURCE_DATE_EPOCH {v:?}"))?,
            Err(_) => 0,
        };
        let tree = UsrTree::open(&self.dir)?;
        build_usr_image(&tree, self.fs_kind, &self.output, epoch).with_context(|| {
            format!(
                "building {} image {} from {}",
                self.fs_kind.name(),
                self.output.display(),
                self.dir.display()
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_unquoted_and_last_wins() {
        let text = "IMAGE_ID=a\nIMAGE_VERSION=\"1.0\"\nNAME='x y'\nIMAGE_ID=b\n";
        assert_eq!(os_release_value(text, "IMAGE_ID").as_deref(), Some("b"));
        assert_eq!(
            os_release_value(text, "IMAGE_VERSION").as_deref(),
            Some("1.0")
        );
        assert_eq!(os_release_value(text, "NAME").as_deref(), Some("x y"));
        assert_eq!(os_release_value(text, "VERSION"), None);
    }
}
