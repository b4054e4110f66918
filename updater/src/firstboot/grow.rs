//! The filesystem half of first boot: tell the kernel ROOT grew, then grow ROOT's ext4.
//!
//! - **Kernel.** On a block device whose ROOT partition the kernel knows at its old size,
//!   [`resize_kernel_partition`] sends `BLKPG_RESIZE_PARTITION` (the start stays, so the kernel
//!   allows it while ROOT is mounted). Disk-image files have no partition devices.
//! - **Mounted ROOT: online.** When ROOT is mounted (found in `/proc/self/mountinfo` by its
//!   device number), [`grow_online`] asks the kernel to grow the filesystem with
//!   `EXT4_IOC_RESIZE_FS`, the call `resize2fs` itself makes on a mounted filesystem. The
//!   kernel adds block groups in journalled transactions, so a power cut leaves a consistent
//!   filesystem of some size between the old and the new, and the same call after the next
//!   boot finishes the growth; asking for the size the filesystem already has does nothing.
//!   No e2fsprogs on the device.
//! - **Unmounted ROOT: offline.** For an init that runs first boot before mounting ROOT, and
//!   for disk-image files (through a [`LoopDevice`]), [`grow_offline`] runs `e2fsck -f -p`
//!   (which `resize2fs` requires, and which cleans up after an interrupted earlier attempt) then
//!   `resize2fs`. e2fsprogs does not
//!   promise that an interrupted offline resize leaves a filesystem e2fsck can repair; the
//!   online path is the power-cut-safe one, which is why a device image should run first boot
//!   after mounting ROOT.
//!
//! Host tools run with an empty environment but `PATH` and `LC_ALL=C`, so their messages are
//! the ones quoted in errors.
use super::FirstbootError;
use bootctl::storage::Storage;
use serde::Serialize;
use std::ffi::{c_char, c_int, c_longlong, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where sysfs lists block devices.
const SYS_CLASS_BLOCK: &str = "/sys/class/block";
/// Longest `/proc/self/mountinfo` read.
const MAX_MOUNTINFO_LEN: u64 = 1 << 20;
/// Longest stderr line quoted from a host tool.
const MAX_TOOL_MESSAGE: usize = 400;
/// `PATH` host tools are looked up in.
const TOOL_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The ext4 superblock fields first boot reads (offsets within the 1024-byte superblock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ext4Super {
    /// Block size in bytes.
    pub block_size: u64,
    /// Blocks in the filesystem.
    pub blocks: u64,
}

impl Ext4Super {
    /// Reads the superblock of the filesystem at byte `offset` of `disk`; `None` when there is
    /// no ext4 (or ext2/3) magic, or an impossible block size.
    pub fn read<S: Storage + ?Sized>(
        disk: &mut S,
        offset: u64,
    ) -> Result<Option<Ext4Super>, FirstbootError> {
        let mut sb = [0u8; 1024];
        let at = offset.saturating_add(1024);
        disk.read_at(at, &mut sb)
            .map_err(FirstbootError::io(format!(
                "reading a superblock at offset {at}"
            )))?;
        Ok(Ext4Super::parse(&sb))
    }

    /// Parses a 1024-byte superblock.
    pub fn parse(sb: &[u8; 1024]) -> Option<Ext4Super> {
        let le32 = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().expect("4 bytes"));
        if sb[0x38..0x3a] != [0x53, 0xef] {
            return None;
        }
        let log = le32(0x18);
        if log > 6 {
            return None; // 1 KiB << 6 = 64 KiB, the largest ext4 block
        }
        let hi = if le32(0x60) & 0x80 != 0 {
            le32(0x150)
        } else {
            0
        };
        Some(Ext4Super {
            block_size: 1024 << log,
            blocks: u64::from(hi) << 32 | u64::from(le32(0x4)),
        })
    }
}

/// A partition of a block device as sysfs lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysPartition {
    /// Its device node, `/dev/<name>`.
    pub node: PathBuf,
    /// Its device number, `major:minor`.
    pub dev: String,
    /// Its size as the kernel knows it, in bytes.
    pub bytes: u64,
}

/// Partition `number` of the block device `disk`, from sysfs; `None` for a file, or when sysfs
/// does not list it.
pub fn sys_partition(disk: &Path, number: u32) -> Option<SysPartition> {
    use std::os::unix::fs::FileTypeExt;
    if !std::fs::metadata(disk).ok()?.file_type().is_block_device() {
        return None;
    }
    let name = std::fs::canonicalize(disk).ok()?.file_name()?.to_owned();
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    for child in std::fs::read_dir(Path::new(SYS_CLASS_BLOCK).join(&name))
        .ok()?
        .flatten()
    {
        let p = child.path();
        if read(p.join("partition")).and_then(|s| s.parse::<u32>().ok()) != Some(number) {
            continue;
        }
        return Some(SysPartition {
            node: Path::new("/dev").join(child.file_name()),
            dev: read(p.join("dev"))?,
            bytes: read(p.join("size"))?.parse::<u64>().ok()? * 512,
        });
    }
    None
}

/// Where the filesystem of device `major:minor` is mounted, from `/proc/self/mountinfo`.
pub fn mount_point_of(dev: &str) -> Result<Option<PathBuf>, FirstbootError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = crate::device::read_bounded(path, MAX_MOUNTINFO_LEN)
        .map_err(FirstbootError::io(format!("reading {}", path.display())))?;
    Ok(parse_mountinfo(&text, dev))
}

/// The mount point of the first mount of `dev` in mountinfo `text` (octal escapes undone).
fn parse_mountinfo(text: &str, dev: &str) -> Option<PathBuf> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && f[2] == dev).then(|| PathBuf::from(unescape(f[4])))
    })
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[repr(C)]
struct BlkpgPartition {
    start: c_longlong,
    length: c_longlong,
    pno: c_int,
    devname: [c_char; 64],
    volname: [c_char; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: c_int,
    flags: c_int,
    datalen: c_int,
    data: *mut c_void,
}

/// `BLKPG_RESIZE_PARTITION` (linux/blkpg.h).
const BLKPG_RESIZE_PARTITION: c_int = 3;

mod ioctl {
    // linux/fs.h: BLKPG _IO(0x12, 105)
    nix::ioctl_write_ptr_bad!(
        blkpg,
        nix::request_code_none!(0x12, 105),
        super::BlkpgIoctlArg
    );
    // linux/ext4.h (fs/ext4/ext4.h): EXT4_IOC_RESIZE_FS _IOW('f', 16, __u64)
    nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);
}

/// Tells the kernel that partition `number` of the block device `disk` now spans `bytes` from
/// `start` (bytes). Returns whether it had another size before.
pub fn resize_kernel_partition(
    disk: &Path,
    number: u32,
    start: u64,
    bytes: u64,
) -> Result<bool, FirstbootError> {
    let Some(part) = sys_partition(disk, number) else {
        return Ok(false);
    };
    if part.bytes == bytes {
        return Ok(false);
    }
    let what = || {
        format!(
            "telling the kernel that partition {number} of {} grew to {bytes} bytes",
            disk.display()
        )
    };
    let to_i64 = |v: u64| {
        c_longlong::try_from(v).map_err(|_| FirstbootError::Io {
            action: what(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })
    };
    let mut p = BlkpgPartition {
        start: to_i64(start)?,
        length: to_i64(bytes)?,
        pno: c_int::try_from(number).unwrap_or(c_int::MAX),
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as c_int,
        data: (&mut p as *mut BlkpgPartition).cast(),
    };
    let f = std::fs::File::open(disk)
        .map_err(FirstbootError::io(format!("opening {}", disk.display())))?;
    use std::os::fd::AsRawFd;
    // SAFETY: `arg` points at a live `BlkpgPartition` of the size `datalen` says, laid out as
    // linux/blkpg.h declares it; the kernel only reads both.
    unsafe { ioctl::blkpg(f.as_raw_fd(), &arg) }
        .map_err(|e| FirstbootError::io(what())(e.into()))?;
    Ok(true)
}

/// How the filesystem was grown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsMethod {
    /// `EXT4_IOC_RESIZE_FS` on the mounted filesystem.
    Online,
    /// `e2fsck -f -p` and `resize2fs` on the unmounted filesystem.
    Offline,
}

/// Grows the ext4 mounted at `mount_point` to `blocks` blocks (no-op at that size already).
pub fn grow_online(mount_point: &Path, blocks: u64) -> Result<(), FirstbootError> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(mount_point).map_err(FirstbootError::io(format!(
        "opening {}",
        mount_point.display()
    )))?;
    // SAFETY: the kernel reads one u64 from a valid pointer.
    unsafe { ioctl::ext4_resize_fs(dir.as_raw_fd(), &blocks) }.map_err(|e| {
        FirstbootError::io(format!(
            "growing the filesystem mounted on {} to {blocks} blocks",
            mount_point.display()
        ))(e.into())
    })?;
    Ok(())
}

/// Grows the unmounted ext4 on the block device `node` to `blocks` blocks: `e2fsck -f -p`,
/// then `resize2fs`.
pub fn grow_offline(node: &Path, blocks: u64) -> Result<(), FirstbootError> {
    let node = node.to_string_lossy();
    // e2fsck -p: 0 clean, 1 errors fixed; anything else needs a human.
    run_tool("e2fsck", &["-f", "-p", &node], &[0, 1])?;
    run_tool("resize2fs", &[&node, &blocks.to_string()], &[0])?;
    Ok(())
}

/// A loop device over a byte range of a disk-image file, detached on drop.
///
/// Why not `resize2fs 'disk.img?offset=N'`: on a regular file, resize2fs truncates the file
/// to the new filesystem's size, offset ignored, which would cut off the backup GPT.
#[derive(Debug)]
pub struct LoopDevice {
    node: PathBuf,
}

impl LoopDevice {
    /// Attaches `bytes` of `file` from `offset` (`losetup --find --show`).
    pub fn attach(file: &Path, offset: u64, bytes: u64) -> Result<LoopDevice, FirstbootError> {
        let file = file.to_string_lossy();
        let out = run_tool(
            "losetup",
            &[
                "--find",
                "--show",
                "--offset",
                &offset.to_string(),
                "--sizelimit",
                &bytes.to_string(),
                &file,
            ],
            &[0],
        )?;
        Ok(LoopDevice {
            node: PathBuf::from(out.trim()),
        })
    }

    /// Its device node.
    pub fn node(&self) -> &Path {
        &self.node
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = run_tool("losetup", &["--detach", &self.node.to_string_lossy()], &[0]);
    }
}

/// Runs a host tool; returns its stdout when its exit code is one of `ok`.
fn run_tool(tool: &str, args: &[&str], ok: &[i32]) -> Result<String, FirstbootError> {
    let out = Command::new(tool)
        .args(args)
        .env_clear()
        .env("PATH", TOOL_PATH)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| FirstbootError::ToolMissing {
            tool: tool.into(),
            source,
        })?;
    if out.status.code().is_some_and(|c| ok.contains(&c)) {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut message = stderr
        .lines()
        .chain(stdout.lines())
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string();
    message.truncate(MAX_TOOL_MESSAGE);
    Err(FirstbootError::Tool {
        command: format!("{tool} {}", args.join(" ")),
        status: out.status.to_string(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_finds_the_mount_point_of_a_device_number() {
        let text = "22 1 253:9 / / rw,relatime shared:1 - ext4 /dev/vda9 rw\n\
                    23 22 0:21 / /proc rw - proc proc rw\n\
                    30 22 253:6 / /run/oem\\040dir ro - ext4 /dev/vda6 ro\n";
        assert_eq!(parse_mountinfo(text, "253:9"), Some(PathBuf::from("/")));
        assert_eq!(
            parse_mountinfo(text, "253:6"),
            Some(PathBuf::from("/run/oem dir"))
        );
        assert_eq!(parse_mountinfo(text, "253:1"), None);
    }

    #[test]
    fn a_superblock_is_parsed_with_its_64_bit_count_and_anything_else_is_none() {
        let mut sb = [0u8; 1024];
        assert_eq!(Ext4Super::parse(&sb), None);
        sb[0x38..0x3a].copy_from_slice(&[0x53, 0xef]);
        sb[0x18] = 2; // 4096-byte blocks
        sb[0x4..0x8].copy_from_slice(&7u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            Ext4Super::parse(&sb),
            Some(Ext4Super {
                block_size: 4096,
                blocks: 7
            }),
            "the high word counts only with the 64bit feature"
        );
        sb[0x60] = 0x80;
        assert_eq!(Ext4Super::parse(&sb).unwrap().blocks, (1 << 32) + 7);
        sb[0x18] = 7;
        assert_eq!(Ext4Super::parse(&sb), None, "a block size past 64 KiB");
    }

    #[test]
    fn a_failing_tool_is_reported_with_its_last_message() {
        let e = run_tool(
            "sh",
            &["-c", "echo first >&2; echo 'bad superblock' >&2; exit 8"],
            &[0],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "sh -c echo first >&2; echo 'bad superblock' >&2; exit 8 failed (exit status: 8): bad superblock"
        );
    }
}
