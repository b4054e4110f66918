//! Filesystem images made by host tools on temporary files, never on loop devices or mounts:
//! the FAT EFI system partition (`mkfs.vfat` + `mmd`/`mcopy` from mtools) and the ext4 ROOT
//! (`mkfs.ext4 -d`). No root privileges are needed.
//!
//! ```no_run
//! use image_tools::disk::mkfs::{make_esp, EspFile};
//! let esp = tempfile::NamedTempFile::new()?;
//! make_esp(esp.path(), 64 << 20, 512, &[EspFile { src: "BOOTX64.EFI".into(), dest: "EFI/BOOT/BOOTX64.EFI".into() }])?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use super::DiskError;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A file to put on the ESP.
#[derive(Debug, Clone)]
pub struct EspFile {
    /// The file on the host.
    pub src: PathBuf,
    /// Its path on the ESP, `/`-separated, without a leading `/`.
    pub dest: String,
}

/// Runs a host tool and turns a failure into [`DiskError::Tool`] with its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<(), DiskError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| DiskError::ToolMissing {
        tool: tool.clone(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        return Err(DiskError::Tool {
            tool,
            status: out.status.to_string(),
            stderr: last.to_string(),
        });
    }
    Ok(())
}

fn sized_file(path: &Path, bytes: u64) -> Result<(), DiskError> {
    let f = File::create(path).map_err(DiskError::io(format!("creating {}", path.display())))?;
    f.set_len(bytes).map_err(DiskError::io(format!(
        "sizing {} to {bytes} bytes",
        path.display()
    )))
}

/// Makes a FAT filesystem labelled `EFI-SYSTEM` of `bytes` at `path` holding `files`.
///
/// The filesystem uses `sector_size`-byte logical sectors so firmware on a disk with that
/// sector size reads it.
pub fn make_esp(
    path: &Path,
    bytes: u64,
    sector_size: u32,
    files: &[EspFile],
) -> Result<(), DiskError> {
    sized_file(path, bytes)?;
    run(Command::new("mkfs.vfat")
        .arg("-S")
        .arg(sector_size.to_string())
        .args(["-n", "EFI-SYSTEM"])
        .arg(path))?;
    let mut dirs: Vec<String> = Vec::new();
    for f in files {
        let parts: Vec<&str> = f.dest.split('/').collect();
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    for d in &dirs {
        run(Command::new("mmd")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(path)
            .arg(format!("::/{d}")))?;
    }
    for f in files {
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(path)
            .arg(&f.src)
            .arg(format!("::/{}", f.dest)))?;
    }
    Ok(())
}

/// Makes an ext4 filesystem labelled `label` of `bytes` at `path`, filled from `tree`, with
/// 4 KiB blocks whatever its size (mke2fs would pick 1 KiB blocks below 512 MiB, which Linux
/// cannot mount on a disk with 4096-byte logical sectors).
pub fn make_ext4(path: &Path, bytes: u64, label: &str, tree: &Path) -> Result<(), DiskError> {
    sized_file(path, bytes)?;
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-L",
            label,
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(tree)
        .arg(path))
}
