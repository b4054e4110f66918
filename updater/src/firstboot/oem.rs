//! The OEM half of first boot: copy the board's files from the OEM partition into ROOT.
//!
//! # The OEM contract
//!
//! The partition labelled `OEM` holds an ext4 filesystem (or nothing: then there is no OEM
//! data). Its top-level directories `etc/` and `var/` ([`OEM_TREES`]) are copied into ROOT's
//! `/etc` and `/var` at the same relative paths: `OEM:/etc/hostname` becomes `/etc/hostname`.
//! Directories, regular files and symbolic links are copied with their permission bits
//! (owner: the user running first boot, root on a device); symbolic links are copied as links,
//! never followed. An OEM file replaces a file of the same path in ROOT. Anything else at the
//! top of the OEM filesystem stays there for the platform's own use, untouched.
//!
//! The whole tree is listed and checked before the first byte is written, so a refused OEM
//! tree writes nothing: a device node, FIFO or socket ([`OemError::Unsupported`]), more than
//! [`MAX_OEM_ENTRIES`] entries, more than [`MAX_OEM_BYTES`] of file data, or a path deeper
//! than [`MAX_OEM_DEPTH`]. Each file is written to a temporary name next to its destination,
//! fsynced and renamed over it, and the directories are fsynced at the end: a power cut leaves
//! every destination whole (old or new), and first boot, run again, copies everything again.
//!
//! The OEM filesystem is read where it is mounted already, else mounted read-only (`nosuid`,
//! `nodev`, `noexec`) on a private directory under `ROOT/run/updater` for the copy. `--oem-dir`
//! names an already mounted or unpacked tree instead (and is needed for disk-image files,
//! whose partitions have no device to mount).
use super::FirstbootError;
use serde::Serialize;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// The OEM directories copied into ROOT.
pub const OEM_TREES: [&str; 2] = ["etc", "var"];
/// Most entries (directories, files, links) copied from OEM.
pub const MAX_OEM_ENTRIES: usize = 4096;
/// Most bytes of file data copied from OEM.
pub const MAX_OEM_BYTES: u64 = 64 << 20;
/// Deepest path copied from OEM, in components.
pub const MAX_OEM_DEPTH: usize = 32;
/// Suffix of the temporary files written next to their destinations.
const TEMP_SUFFIX: &str = ".oem-tmp";

/// Why an OEM tree was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OemError {
    /// An entry that is not a directory, regular file or symbolic link.
    #[error("OEM entry {path} is not a directory, regular file or symbolic link")]
    Unsupported {
        /// The entry, relative to the OEM tree.
        path: PathBuf,
    },
    /// More entries than [`MAX_OEM_ENTRIES`].
    #[error("the OEM tree has more than {max} entries")]
    TooManyEntries {
        /// The maximum.
        max: usize,
    },
    /// More file data than [`MAX_OEM_BYTES`].
    #[error("the OEM tree holds more than {max} bytes of files")]
    TooLarge {
        /// The maximum.
        max: u64,
    },
    /// A path deeper than [`MAX_OEM_DEPTH`].
    #[error("OEM entry {path} is deeper than {max} components")]
    TooDeep {
        /// The entry.
        path: PathBuf,
        /// The maximum.
        max: usize,
    },
}

/// What was copied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OemCopied {
    /// Directories made or kept.
    pub directories: usize,
    /// Regular files copied.
    pub files: usize,
    /// Symbolic links copied.
    pub links: usize,
    /// Bytes of file data copied.
    pub bytes: u64,
}

#[derive(Debug)]
enum Kind {
    Dir,
    File(u64),
    Link(PathBuf),
}

#[derive(Debug)]
struct Entry {
    rel: PathBuf,
    kind: Kind,
    mode: u32,
}

/// Lists the OEM trees under `src`, parents before children, checking every bound.
fn list(src: &Path) -> Result<Vec<Entry>, FirstbootError> {
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let mut stack: Vec<PathBuf> = OEM_TREES
        .iter()
        .rev()
        .map(PathBuf::from)
        .filter(|t| src.join(t).symlink_metadata().is_ok_and(|m| m.is_dir()))
        .collect();
    while let Some(rel) = stack.pop() {
        if out.len() >= MAX_OEM_ENTRIES {
            return Err(OemError::TooManyEntries {
                max: MAX_OEM_ENTRIES,
            }
            .into());
        }
        if rel.components().count() > MAX_OEM_DEPTH {
            return Err(OemError::TooDeep {
                path: rel,
                max: MAX_OEM_DEPTH,
            }
            .into());
        }
        let path = src.join(&rel);
        let meta = path
            .symlink_metadata()
            .map_err(FirstbootError::io(format!("reading {}", path.display())))?;
        let mode = meta.permissions().mode() & 0o7777;
        let kind = if meta.is_dir() {
            let mut children: Vec<PathBuf> = fs::read_dir(&path)
                .map_err(FirstbootError::io(format!("listing {}", path.display())))?
                .take(MAX_OEM_ENTRIES + 1)
                .map(|e| e.map(|e| rel.join(e.file_name())))
                .collect::<io::Result<_>>()
                .map_err(FirstbootError::io(format!("listing {}", path.display())))?;
            children.sort_by(|a, b| b.cmp(a)); // popped in name order
            stack.extend(children);
            Kind::Dir
        } else if meta.is_file() {
            bytes = bytes.saturating_add(meta.len());
            if bytes > MAX_OEM_BYTES {
                return Err(OemError::TooLarge { max: MAX_OEM_BYTES }.into());
            }
            Kind::File(meta.len())
        } else if meta.file_type().is_symlink() {
            Kind::Link(fs::read_link(&path).map_err(FirstbootError::io(format!(
                "reading link {}",
                path.display()
            )))?)
        } else {
            return Err(OemError::Unsupported { path: rel }.into());
        };
        out.push(Entry { rel, kind, mode });
    }
    Ok(out)
}

/// Copies the OEM trees of `src` into `root` (see the module doc); refuses before writing
/// anything when the tree breaks a bound or holds an unsupported entry.
pub fn apply(src: &Path, root: &Path) -> Result<OemCopied, FirstbootError> {
    let entries = list(src)?;
    let mut copied = OemCopied::default();
    let mut touched: Vec<PathBuf> = Vec::new();
    for e in &entries {
        let dest = root.join(&e.rel);
        let io = |what: &str| FirstbootError::io(format!("{what} {}", dest.display()));
        match &e.kind {
            Kind::Dir => {
                if !dest.is_dir() {
                    fs::create_dir_all(&dest).map_err(io("creating"))?;
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(e.mode))
                    .map_err(io("setting the mode of"))?;
                copied.directories += 1;
            }
            Kind::File(len) => {
                let tmp = temp_name(&dest);
                let written = (|| {
                    let mut from = fs::File::open(src.join(&e.rel))?;
                    let mut to = fs::File::create(&tmp)?;
                    let n = io::copy(&mut io::Read::take(&mut from, *len), &mut to)?;
                    if n != *len {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the file shrank to {n} bytes while copied"),
                        ));
                    }
                    to.set_permissions(fs::Permissions::from_mode(e.mode))?;
                    to.sync_all()?;
                    fs::rename(&tmp, &dest)
                })();
                if let Err(err) = written {
                    let _ = fs::remove_file(&tmp);
                    return Err(io("writing")(err));
                }
                copied.files += 1;
                copied.bytes += len;
            }
            Kind::Link(target) => {
                let tmp = temp_name(&dest);
                let _ = fs::remove_file(&tmp);
                symlink(target, &tmp)
                    .and_then(|()| fs::rename(&tmp, &dest))
                    .map_err(io("linking"))?;
                copied.links += 1;
            }
        }
        if let Some(parent) = dest.parent() {
            if !touched.iter().any(|t| t == parent) {
                touched.push(parent.to_path_buf());
            }
        }
    }
    for dir in &touched {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(FirstbootError::io(format!("syncing {}", dir.display())))?;
    }
    Ok(copied)
}

fn temp_name(dest: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(dest.file_name().unwrap_or_default());
    name.push(TEMP_SUFFIX);
    dest.with_file_name(name)
}

/// A read-only mount of the OEM filesystem on a private directory, undone on drop.
#[derive(Debug)]
pub struct OemMount {
    dir: PathBuf,
}

impl OemMount {
    /// Mounts the ext4 on `node` read-only on `dir` (made if missing).
    pub fn new(node: &Path, dir: PathBuf) -> Result<OemMount, FirstbootError> {
        use nix::mount::{mount, MsFlags};
        fs::create_dir_all(&dir)
            .map_err(FirstbootError::io(format!("creating {}", dir.display())))?;
        let flags =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some(node), &dir, Some("ext4"), flags, None::<&str>).map_err(|e| {
            let _ = fs::remove_dir(&dir);
            FirstbootError::io(format!(
                "mounting the OEM filesystem {} on {}",
                node.display(),
                dir.display()
            ))(e.into())
        })?;
        Ok(OemMount { dir })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for OemMount {
    fn drop(&mut self) {
        use nix::mount::{umount2, MntFlags};
        if umount2(&self.dir, MntFlags::empty()).is_err() {
            let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc/board.d")).unwrap();
        fs::write(d.path().join("etc/hostname"), "box-17\n").unwrap();
        fs::write(d.path().join("etc/board.d/fan.conf"), "curve=quiet\n").unwrap();
        fs::set_permissions(
            d.path().join("etc/board.d/fan.conf"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        symlink("fan.conf", d.path().join("etc/board.d/current")).unwrap();
        fs::create_dir_all(d.path().join("var/lib/board")).unwrap();
        fs::write(d.path().join("grub.cfg"), "# platform's own\n").unwrap();
        d
    }

    #[test]
    fn etc_and_var_are_copied_with_modes_and_links_and_nothing_else() {
        let src = tree();
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("etc")).unwrap();
        fs::write(root.path().join("etc/hostname"), "image-default\n").unwrap();
        let copied = apply(src.path(), root.path()).unwrap();
        assert_eq!(
            copied,
            OemCopied {
                directories: 5,
                files: 2,
                links: 1,
                bytes: 19
            }
        );
        let r = root.path();
        assert_eq!(
            fs::read_to_string(r.join("etc/hostname")).unwrap(),
            "box-17\n"
        );
        let fan = r.join("etc/board.d/fan.conf");
        assert_eq!(
            fs::metadata(&fan).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_link(r.join("etc/board.d/current")).unwrap(),
            Path::new("fan.conf")
        );
        assert!(r.join("var/lib/board").is_dir());
        assert!(
            !r.join("grub.cfg").exists(),
            "only etc/ and var/ are copied"
        );
        assert!(
            !r.join("etc/.hostname.oem-tmp").exists(),
            "no temporary file left"
        );
        assert_eq!(
            apply(src.path(), r).unwrap(),
            copied,
            "a rerun copies the same"
        );
    }

    #[test]
    fn a_fifo_refuses_the_whole_tree_before_anything_is_written() {
        let src = tree();
        nix::unistd::mkfifo(
            &src.path().join("etc/zz-pipe"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        let root = tempfile::tempdir().unwrap();
        let e = apply(src.path(), root.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the OEM data cannot be applied: OEM entry etc/zz-pipe is not a directory, regular file or symbolic link"
        );
        assert!(!root.path().join("etc").exists(), "nothing written");
    }

    #[test]
    fn more_file_data_than_the_maximum_is_refused() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("var")).unwrap();
        let f = fs::File::create(src.path().join("var/big")).unwrap();
        f.set_len(MAX_OEM_BYTES + 1).unwrap();
        let root = tempfile::tempdir().unwrap();
        let e = apply(src.path(), root.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the OEM data cannot be applied: the OEM tree holds more than {MAX_OEM_BYTES} bytes of files")
        );
    }

    #[test]
    fn a_path_deeper_than_the_maximum_is_refused() {
        let src = tempfile::tempdir().unwrap();
        let deep: PathBuf = std::iter::once("etc")
            .chain(std::iter::repeat_n("d", MAX_OEM_DEPTH))
            .collect();
        fs::create_dir_all(src.path().join(&deep)).unwrap();
        let root = tempfile::tempdir().unwrap();
        let e = apply(src.path(), root.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("is deeper than {MAX_OEM_DEPTH} components")),
            "{e}"
        );
    }

    #[test]
    fn no_oem_trees_copy_nothing() {
        let src = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            apply(src.path(), root.path()).unwrap(),
            OemCopied::default()
        );
    }
}
