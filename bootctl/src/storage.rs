//! Byte-addressed storage the GPT code reads and writes: disk-image files, block devices, and
//! in-memory disks for tests.
//!
//! [`Storage`] is the seam that lets tests record every write and replay any prefix of it (a
//! power cut), so the write order promised in DESIGN §4 is tested, not assumed. [`FileDisk`]
//! opens a file or block device; [`MemDisk`] holds a disk in memory.
//!
//! ```
//! use bootctl::storage::{MemDisk, Storage};
//! let mut d = MemDisk::new(vec![0; 4096], 512);
//! d.write_at(512, b"EFI PART").unwrap();
//! let mut buf = [0u8; 8];
//! d.read_at(512, &mut buf).unwrap();
//! assert_eq!(&buf, b"EFI PART");
//! ```
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

/// Random-access storage with an explicit durability barrier.
pub trait Storage {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// True when the storage holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The logical sector size the device reports, if it is a device that has one.
    fn device_sector_size(&self) -> Option<u32>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every earlier write durable before any later one.
    fn flush(&mut self) -> io::Result<()>;
}

/// A disk-image file or a block device.
#[derive(Debug)]
pub struct FileDisk {
    file: File,
    path: PathBuf,
    len: u64,
    sector_size: Option<u32>,
}

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file has no write permission bits (refused even for root, who could override them).
    #[error("{path} is read-only")]
    ReadOnly {
        /// The disk.
        path: PathBuf,
    },
    /// The OS refused to open or inspect the file.
    #[error("opening {path}")]
    Io {
        /// The disk.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Block device size queries (linux/fs.h).
mod ioctl {
    nix::ioctl_read_bad!(blksszget, 0x1268, std::ffi::c_int);
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
}
use ioctl::{blkgetsize64, blksszget};

impl FileDisk {
    /// Opens `path` for reading, or for reading and writing.
    pub fn open(path: &Path, writable: bool) -> Result<FileDisk, OpenError> {
        let io_err = |source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if writable && meta.is_file() && meta.permissions().readonly() {
            return Err(OpenError::ReadOnly {
                path: path.to_path_buf(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(nix::libc::EROFS)
                    || e.kind() == io::ErrorKind::PermissionDenied
                {
                    OpenError::ReadOnly {
                        path: path.to_path_buf(),
                    }
                } else {
                    io_err(e)
                }
            })?;
        let (len, sector_size) = if meta.file_type().is_block_device() {
            use std::os::fd::AsRawFd;
            let fd = file.as_raw_fd();
            let mut size = 0u64;
            let mut ssz: std::ffi::c_int = 0;
            // SAFETY: both ioctls write one integer of the declared type into a valid pointer.
            unsafe {
                blkgetsize64(fd, &mut size).map_err(|e| io_err(e.into()))?;
                blksszget(fd, &mut ssz).map_err(|e| io_err(e.into()))?;
            }
            (size, Some(ssz as u32))
        } else {
            (meta.len(), None)
        };
        Ok(FileDisk {
            file,
            path: path.to_path_buf(),
            len,
            sector_size,
        })
    }

    /// The path this disk was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Storage for FileDisk {
    fn len(&self) -> u64 {
        self.len
    }
    fn device_sector_size(&self) -> Option<u32> {
        self.sector_size
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// A disk held in memory (tests, and building images before they are written out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemDisk {
    /// The disk's bytes.
    pub bytes: Vec<u8>,
    /// The logical sector size it reports.
    pub sector_size: u32,
}

impl MemDisk {
    /// Wraps `bytes` as a disk with `sector_size`-byte sectors.
    pub fn new(bytes: Vec<u8>, sector_size: u32) -> MemDisk {
        MemDisk { bytes, sector_size }
    }

    fn range(&self, offset: u64, n: usize) -> io::Result<std::ops::Range<usize>> {
        let start =
            usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        match start.checked_add(n) {
            Some(end) if end <= self.bytes.len() => Ok(start..end),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("access at {offset}+{n} beyond the end of the disk"),
            )),
        }
    }
}

impl Storage for MemDisk {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn device_sector_size(&self) -> Option<u32> {
        Some(self.sector_size)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        self.bytes[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
