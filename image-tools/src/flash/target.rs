//! Flash targets: opening a block device or disk-image file for `image-tools flash`, with the
//! refusals that protect a station's own disks.
//!
//! [`Target::open`] refuses, each with a one-line [`TargetError`]: a device that is mounted (it
//! or one of its partitions appears in `/proc/self/mountinfo`), used as swap, held by another
//! block device (`holders/` in sysfs: LVM, RAID, dm-crypt), or busy (the `O_EXCL` open of a
//! block device fails with `EBUSY`); a device smaller than the layout; a sector size other than
//! 512 or 4096. The sector size of a block device is its own (`BLKSSZGET`); a regular file has
//! none, so `--sector-size` gives it. The serial number comes from sysfs when the device has one.
//!
//! A [`Target`] is a [`Storage`]: writes go through the page cache in the large blocks the
//! caller gives and [`Storage::flush`] is `fdatasync`; reads of a block device go through a
//! second descriptor opened with `O_DIRECT`, so a read-back checks the medium, not the cache.
//!
//! ```no_run
//! use image_tools::flash::target::Target;
//! let t = Target::open("/dev/sdb".as_ref(), None, 1 << 30)?;
//! println!("{} bytes, {}-byte sectors", t.len, t.sector_size);
//! # Ok::<(), image_tools::flash::target::TargetError>(())
//! ```
use bootctl::storage::Storage;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Alignment of `O_DIRECT` buffers, offsets and lengths (the largest logical sector size).
const DIRECT_ALIGN: usize = 4096;
/// Largest single `O_DIRECT` read.
const DIRECT_READ_MAX: usize = 4 << 20;

/// Why a target is refused or could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The device or one of its partitions is mounted.
    #[error("refusing {}: {} is mounted on {mountpoint}", device.display(), what.display())]
    Mounted {
        /// The target.
        device: PathBuf,
        /// The mounted device (the target or one of its partitions).
        what: PathBuf,
        /// Where.
        mountpoint: String,
    },
    /// The device or one of its partitions is active swap.
    #[error("refusing {}: {} is in use as swap", device.display(), what.display())]
    Swap {
        /// The target.
        device: PathBuf,
        /// The swap device.
        what: PathBuf,
    },
    /// Another block device (LVM, RAID, dm-crypt) is built on the device.
    #[error("refusing {}: it is held by {holder} (LVM, RAID or dm-crypt)", device.display())]
    Held {
        /// The target.
        device: PathBuf,
        /// The holder's name in sysfs.
        holder: String,
    },
    /// The exclusive open failed with EBUSY.
    #[error("refusing {}: it is busy (another program holds it open exclusively)", device.display())]
    Busy {
        /// The target.
        device: PathBuf,
    },
    /// The device is smaller than the layout.
    #[error("refusing {}: it is {bytes} bytes, the layout needs at least {needed} bytes", device.display())]
    TooSmall {
        /// The target.
        device: PathBuf,
        /// Its size.
        bytes: u64,
        /// The layout's minimum.
        needed: u64,
    },
    /// The sector size is not 512 or 4096, or contradicts `--sector-size`.
    #[error("refusing {}: {reason}", device.display())]
    SectorSize {
        /// The target.
        device: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Neither a block device nor a regular file.
    #[error("refusing {}: it is neither a block device nor a regular file", device.display())]
    NotADisk {
        /// The target.
        device: PathBuf,
    },
    /// An OS call failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> TargetError {
    move |source| TargetError::Io { what, source }
}

/// Block device queries (linux/fs.h).
mod ioctl {
    nix::ioctl_read_bad!(blksszget, 0x1268, std::ffi::c_int);
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_none!(blkrrpart, 0x12, 95);
}

/// An opened, checked flash target.
#[derive(Debug)]
pub struct Target {
    /// The path given.
    pub path: PathBuf,
    /// Size in bytes.
    pub len: u64,
    /// Logical sector size the table is laid out for.
    pub sector_size: u32,
    /// Serial number from sysfs, if the device has one.
    pub serial: Option<String>,
    /// True for a block device.
    pub is_block: bool,
    /// (device number, inode) identifying the target, to refuse the same one twice.
    pub identity: (u64, u64),
    file: File,
    direct: Option<File>,
}

impl Target {
    /// Opens and checks `path`: a block device (exclusively, its own sector size; a given
    /// `sector_size` must agree) or an existing regular file (`sector_size`, default 512). The
    /// target must hold at least `min_bytes`.
    pub fn open(
        path: &Path,
        sector_size: Option<u32>,
        min_bytes: u64,
    ) -> Result<Target, TargetError> {
        let meta =
            std::fs::metadata(path).map_err(io_err(format!("inspecting {}", path.display())))?;
        let ft = meta.file_type();
        let is_block = ft.is_block_device();
        if !is_block && !ft.is_file() {
            return Err(TargetError::NotADisk {
                device: path.into(),
            });
        }
        if is_block {
            refuse_in_use(path, meta.rdev())?;
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if is_block {
            opts.custom_flags(nix::libc::O_EXCL);
        }
        let file = opts.open(path).map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::EBUSY) {
                TargetError::Busy {
                    device: path.into(),
                }
            } else {
                TargetError::Io {
                    what: format!("opening {}", path.display()),
                    source: e,
                }
            }
        })?;
        let (len, own_ss, direct) = if is_block {
            let fd = file.as_raw_fd();
            let mut size = 0u64;
            let mut ss: std::ffi::c_int = 0;
            // SAFETY: both ioctls write one integer of the declared type into a valid pointer.
            unsafe {
                ioctl::blkgetsize64(fd, &mut size).map_err(|e| {
                    io_err(format!("reading the size of {}", path.display()))(e.into())
                })?;
                ioctl::blksszget(fd, &mut ss).map_err(|e| {
                    io_err(format!("reading the sector size of {}", path.display()))(e.into())
                })?;
            }
            let direct = OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_DIRECT)
                .open(path)
                .map_err(io_err(format!(
                    "opening {} for direct reads",
                    path.display()
                )))?;
            (size, Some(ss as u32), Some(direct))
        } else {
            (meta.len(), None, None)
        };
        let sector_size = match (own_ss, sector_size) {
            (Some(own), Some(given)) if own != given => {
                return Err(TargetError::SectorSize {
                    device: path.into(),
                    reason: format!("its sector size is {own} bytes, --sector-size says {given}"),
                })
            }
            (Some(own), _) => own,
            (None, given) => given.unwrap_or(512),
        };
        if !bootctl::gpt::SECTOR_SIZES.contains(&sector_size) {
            return Err(TargetError::SectorSize {
                device: path.into(),
                reason: format!("sector size {sector_size} is not supported (512 or 4096)"),
            });
        }
        let t = Target {
            path: path.into(),
            len,
            sector_size,
            serial: if is_block { serial(meta.rdev()) } else { None },
            is_block,
            identity: if is_block {
                (meta.rdev(), 0)
            } else {
                (meta.dev(), meta.ino())
            },
            file,
            direct,
        };
        t.check_size(min_bytes)?;
        Ok(t)
    }

    /// Refuses a target smaller than `min_bytes`.
    pub fn check_size(&self, min_bytes: u64) -> Result<(), TargetError> {
        if self.len < min_bytes {
            return Err(TargetError::TooSmall {
                device: self.path.clone(),
                bytes: self.len,
                needed: min_bytes,
            });
        }
        Ok(())
    }

    /// Asks the kernel to re-read the partition table (block devices; errors are ignored: a
    /// loop device without partition scanning refuses, and the table on disk is what counts).
    pub fn reread_partitions(&self) {
        if self.is_block {
            // SAFETY: BLKRRPART takes no argument.
            let _ = unsafe { ioctl::blkrrpart(self.file.as_raw_fd()) };
        }
    }
}

impl Storage for Target {
    fn len(&self) -> u64 {
        self.len
    }
    fn device_sector_size(&self) -> Option<u32> {
        Some(self.sector_size)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match &self.direct {
            Some(d) => direct_read(d, self.len, offset, buf),
            None => self.file.read_exact_at(buf, offset),
        }
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Reads `buf.len()` bytes at `offset` through an `O_DIRECT` descriptor: whole aligned blocks
/// into an aligned bounce buffer, copied out.
fn direct_read(f: &File, dev_len: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let align = DIRECT_ALIGN as u64;
    let mut bounce = vec![0u8; DIRECT_READ_MAX + DIRECT_ALIGN];
    let skew = bounce.as_ptr().align_offset(DIRECT_ALIGN);
    let bounce = &mut bounce[skew..skew + DIRECT_READ_MAX];
    let end = offset + buf.len() as u64;
    let mut pos = offset;
    while pos < end {
        let start = pos / align * align;
        let want_end = end.min(start + DIRECT_READ_MAX as u64);
        // Round up to the alignment, but not past the device (whose size is whole sectors).
        let read_end = (want_end.div_ceil(align) * align).min(dev_len);
        let n = (read_end - start) as usize;
        f.read_exact_at(&mut bounce[..n], start)?;
        let from = (pos - start) as usize;
        let take = (want_end - pos) as usize;
        let at = (pos - offset) as usize;
        buf[at..at + take].copy_from_slice(&bounce[from..from + take]);
        pos = want_end;
    }
    Ok(())
}

/// The sysfs directory of block device `rdev`.
fn sysfs_dir(rdev: u64) -> PathBuf {
    PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    ))
}

/// The device and its partitions: (name, "major:minor").
fn device_and_partitions(rdev: u64) -> Vec<(String, String)> {
    let dir = sysfs_dir(rdev);
    let name = std::fs::canonicalize(&dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut out = vec![(
        name,
        format!(
            "{}:{}",
            nix::sys::stat::major(rdev),
            nix::sys::stat::minor(rdev)
        ),
    )];
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Ok(dev) = std::fs::read_to_string(p.join("dev")) {
                    out.push((
                        e.file_name().to_string_lossy().into_owned(),
                        dev.trim().into(),
                    ));
                }
            }
        }
    }
    out
}

/// Refuses a block device that is mounted, swap, or held, itself or through a partition.
fn refuse_in_use(path: &Path, rdev: u64) -> Result<(), TargetError> {
    let devs = device_and_partitions(rdev);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("reading /proc/self/mountinfo".into()))?;
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint ...
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 {
            continue;
        }
        if let Some((name, _)) = devs.iter().find(|(_, mm)| mm == f[2]) {
            return Err(TargetError::Mounted {
                device: path.into(),
                what: PathBuf::from("/dev").join(name),
                mountpoint: unescape_mount(f[4]),
            });
        }
    }
    if let Ok(swaps) = std::fs::read_to_string("/proc/swaps") {
        for line in swaps.lines().skip(1) {
            let Some(p) = line.split_whitespace().next() else {
                continue;
            };
            if let Ok(m) = std::fs::metadata(p) {
                let mm = format!(
                    "{}:{}",
                    nix::sys::stat::major(m.rdev()),
                    nix::sys::stat::minor(m.rdev())
                );
                if m.file_type().is_block_device() && devs.iter().any(|(_, d)| *d == mm) {
                    return Err(TargetError::Swap {
                        device: path.into(),
                        what: p.into(),
                    });
                }
            }
        }
    }
    let dir = sysfs_dir(rdev);
    let mut holder_dirs = vec![dir.join("holders")];
    for (name, _) in devs.iter().skip(1) {
        holder_dirs.push(dir.join(name).join("holders"));
    }
    for h in holder_dirs {
        if let Some(e) = std::fs::read_dir(&h).ok().and_then(|mut rd| rd.next()) {
            let holder = e.map(|e| e.file_name().to_string_lossy().into_owned());
            return Err(TargetError::Held {
                device: path.into(),
                holder: holder.unwrap_or_default(),
            });
        }
    }
    Ok(())
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Longest serial number read from sysfs.
const MAX_SERIAL_LEN: u64 = 256;

/// The device's serial number: `device/serial` (NVMe, virtio, MMC), else `device/wwid` or
/// `wwid` (SCSI, SATA).
fn serial(rdev: u64) -> Option<String> {
    let dir = sysfs_dir(rdev);
    for p in ["device/serial", "device/wwid", "wwid"] {
        let path = dir.join(p);
        let Ok(f) = File::open(&path) else { continue };
        let mut s = String::new();
        use std::io::Read;
        if f.take(MAX_SERIAL_LEN).read_to_string(&mut s).is_ok() {
            let t = s.trim();
            if !t.is_empty() {
                return Some(t.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/end\\04"), "/end\\04");
    }

    #[test]
    fn direct_reads_return_unaligned_ranges_exactly() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3 * 4096 + 512).map(|i| (i % 251) as u8).collect();
        std::io::Write::write_all(&mut f, &data).unwrap();
        let mut buf = vec![0u8; 5000];
        direct_read(&f, data.len() as u64, 1000, &mut buf).unwrap();
        assert_eq!(buf, data[1000..6000]);
        let mut tail = vec![0u8; 100];
        direct_read(&f, data.len() as u64, data.len() as u64 - 100, &mut tail).unwrap();
        assert_eq!(tail, data[data.len() - 100..]);
    }

    #[test]
    fn a_regular_file_smaller_than_the_layout_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let e = Target::open(f.path(), None, 2 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "refusing {}: it is 1048576 bytes, the layout needs at least 2097152 bytes",
                f.path().display()
            )
        );
    }
}
