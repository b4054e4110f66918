//! The ext4 flavour of a /usr image: `mkfs.ext4 -d`, then owners and times fixed with `debugfs`.
//!
//! Reproducibility takes four measures, because mke2fs copies what it finds on the host:
//! our own `mke2fs.conf` (so the host's defaults cannot change the feature set; no journal, as
//! the image is only ever mounted read-only), a UUID and directory hash seed derived from the
//! image identity, `E2FSPROGS_FAKE_TIME` for the filesystem's clock, and a `debugfs` pass that
//! sets every inode's owner to root and its timestamps to the build epoch.
use super::{run_tool, MkusrError, UsrTree};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

const BLOCK: u64 = 4096;

/// Feature set of the image: what GRUB 2.06's ext2 driver and Linux read; no journal.
const MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,dir_index,ext_attr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

/// What the tree needs: inodes and bytes of data blocks.
#[derive(Default)]
struct TreeSize {
    inodes: u64,
    data_bytes: u64,
    /// Paths relative to the tree, `/`-prefixed, sorted, for the debugfs pass.
    paths: Vec<String>,
}

fn walk(dir: &Path, rel: &str, size: &mut TreeSize) -> Result<(), MkusrError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| MkusrError::io("reading directory", dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| MkusrError::io("reading directory", dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(|e| MkusrError::io("reading", &path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = format!("{rel}/{name}");
        if name.contains(['"', '\n', '\r']) {
            // debugfs, which sets owners and times, cannot quote these characters.
            return Err(MkusrError::io(
                "reading",
                &path,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a file name with a double quote or line break cannot go into an ext4 \
                     image (use --fs squashfs)",
                ),
            ));
        }
        size.inodes += 1;
        size.data_bytes += meta.len().div_ceil(BLOCK) * BLOCK;
        size.paths.push(child.clone());
        if meta.is_dir() {
            walk(&path, &child, size)?;
        }
    }
    Ok(())
}

pub(super) fn build(tree: &UsrTree, output: &Path, epoch: u64) -> Result<(), MkusrError> {
    let mut size = TreeSize::default();
    walk(tree.dir(), "", &mut size)?;
    let inodes = size.inodes + 64;
    // Data plus a quarter for extent and directory blocks, the inode tables, and 4 MiB of
    // group descriptors, bitmaps and slack; rounded up to a MiB.
    let bytes = size.data_bytes + size.data_bytes / 4 + inodes * 256 + (4 << 20);
    let bytes = bytes.div_ceil(1 << 20) << 20;

    let work = tempfile::tempdir().map_err(|e| MkusrError::io("creating", Path::new("tmp"), e))?;
    let conf = work.path().join("mke2fs.conf");
    fs::write(&conf, MKE2FS_CONF).map_err(|e| MkusrError::io("writing", &conf, e))?;
    let uuid = tree.identity_uuid();
    let fake_time = epoch.max(1).to_string();

    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"])
        .args(["-N", &inodes.to_string(), "-U", &uuid, "-L", "USR"])
        .arg("-E")
        .arg(format!(
            "hash_seed={uuid},root_owner=0:0,lazy_itable_init=0,nodiscard"
        ))
        .arg("-d")
        .arg(tree.dir())
        .arg(output)
        .arg(format!("{}k", bytes / 1024))
        .env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", &fake_time);
    run_tool("mkfs.ext4", &mut mkfs)?;

    let script = normalise_script(&size.paths, epoch);
    let script_path: PathBuf = work.path().join("normalise.debugfs");
    fs::write(&script_path, script).map_err(|e| MkusrError::io("writing", &script_path, e))?;
    let mut debugfs = Command::new("debugfs");
    debugfs
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(output)
        .env("E2FSPROGS_FAKE_TIME", &fake_time);
    let out = debugfs.output().map_err(|e| MkusrError::Tool {
        program: "debugfs",
        detail: format!("starting it: {e}"),
    })?;
    // debugfs echoes the script on stdout and exits 0 even when a command fails; failures are
    // the stderr lines after its version banner.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failure = stderr
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with("debugfs "));
    if !out.status.success() || failure.is_some() {
        return Err(MkusrError::Tool {
            program: "debugfs",
            detail: format!("{}: {}", out.status, failure.unwrap_or("no output").trim()),
        });
    }
    Ok(())
}

/// A debugfs script setting owner and every timestamp of the root and each path.
fn normalise_script(paths: &[String], epoch: u64) -> String {
    let mut s = String::new();
    for path in std::iter::once("/").chain(paths.iter().map(String::as_str)) {
        let quoted = format!("\"{path}\"");
        for field in ["uid", "gid"] {
            let _ = writeln!(s, "sif {quoted} {field} 0");
        }
        for field in ["atime", "mtime", "ctime", "crtime"] {
            let _ = writeln!(s, "sif {quoted} {field} {epoch}");
            let _ = writeln!(s, "sif {quoted} {field}_extra 0");
        }
    }
    s
}
