//! Installing GRUB's i386-pc boot code: `boot.img` into the MBR, `core.img` into BIOS-BOOT.
//!
//! This is what `grub-install`/`grub-setup` do when they embed GRUB into a GPT BIOS boot
//! partition, done on bytes instead of a device so no loop device or root is needed. The
//! facts come from GRUB 2.06 (`include/grub/i386/pc/boot.h`, `util/setup.c`,
//! `grub-core/boot/i386/pc/diskboot.S`):
//!
//! - `boot.img` (512 bytes) goes into LBA 0 up to the disk signature at 0x1b8, keeping the
//!   protective MBR's partition record. At 0x5c it holds the LBA of core.img's first sector
//!   (u64), at 0x64 the boot drive (0xff: use the drive the BIOS passed in DL), and at 0x66 a
//!   two-byte jump that is replaced by two NOPs for hard disks.
//! - `core.img` starts with `diskboot.img`, whose last 12 bytes are the first blocklist entry:
//!   start LBA (u64), sector count (u16), load segment (u16). With core.img contiguous in
//!   BIOS-BOOT there is one entry: the sectors after the first, loaded at segment 0x820.
//!
//! Only 512-byte sectors make sense here: the BIOS and GRUB's diskboot count in 512-byte units.
//!
//! ```
//! use image_tools::disk::bios::{patch_boot_img, patch_core_img};
//! let mut mbr = vec![0u8; 512];
//! patch_boot_img(&mut mbr, &[0xeb; 512], 4096).unwrap();
//! assert_eq!(&mbr[0x5c..0x64], &4096u64.to_le_bytes());
//! let mut core = vec![0u8; 3 * 512];
//! patch_core_img(&mut core, 4096).unwrap();
//! assert_eq!(&core[0x1f4..0x1fc], &4097u64.to_le_bytes());
//! ```

/// Offset of the core.img LBA in boot.img.
pub const KERNEL_SECTOR_OFFSET: usize = 0x5c;
/// Offset of the boot drive byte in boot.img.
pub const BOOT_DRIVE_OFFSET: usize = 0x64;
/// Offset of the floppy/hard-disk drive check jump in boot.img.
pub const DRIVE_CHECK_OFFSET: usize = 0x66;
/// Boot code ends where the MBR disk signature starts.
pub const BOOT_CODE_END: usize = 0x1b8;
/// Offset of the first blocklist entry in core.img (the end of its first sector).
pub const FIRST_BLOCKLIST_OFFSET: usize = 512 - 12;
/// Segment core.img's second sector is loaded to (GRUB_BOOT_I386_PC_KERNEL_SEG + 0x20).
pub const CORE_LOAD_SEGMENT: u16 = 0x820;
/// Largest core.img diskboot can load below 0x78000 (grub-setup's own limit), in bytes.
pub const MAX_CORE_BYTES: usize = 0x78000 - 0x8200;

/// Why the BIOS boot code cannot be installed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BiosError {
    /// boot.img is not one 512-byte sector.
    #[error("boot.img is {len} bytes, expected 512")]
    BootImgSize {
        /// Its length.
        len: usize,
    },
    /// core.img is shorter than two sectors or larger than diskboot can load.
    #[error("core.img is {len} bytes; it must be 1024 to {max} bytes")]
    CoreImgSize {
        /// Its length.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
    /// The LBA 0 buffer is not one 512-byte sector.
    #[error("the MBR buffer is {len} bytes, expected 512")]
    MbrSize {
        /// Its length.
        len: usize,
    },
}

/// Copies `boot_img`'s boot code into `mbr` (LBA 0) and points it at core.img at `core_lba`.
///
/// Bytes from the disk signature on (0x1b8..512: signature, partition records, 0x55aa) are left
/// as they are in `mbr`.
pub fn patch_boot_img(mbr: &mut [u8], boot_img: &[u8], core_lba: u64) -> Result<(), BiosError> {
    if boot_img.len() != 512 {
        return Err(BiosError::BootImgSize {
            len: boot_img.len(),
        });
    }
    if mbr.len() != 512 {
        return Err(BiosError::MbrSize { len: mbr.len() });
    }
    mbr[..BOOT_CODE_END].copy_from_slice(&boot_img[..BOOT_CODE_END]);
    mbr[KERNEL_SECTOR_OFFSET..KERNEL_SECTOR_OFFSET + 8].copy_from_slice(&core_lba.to_le_bytes());
    mbr[BOOT_DRIVE_OFFSET] = 0xff;
    mbr[DRIVE_CHECK_OFFSET] = 0x90;
    mbr[DRIVE_CHECK_OFFSET + 1] = 0x90;
    Ok(())
}

/// Pads `core` to whole sectors and writes its blocklist for a contiguous copy at `core_lba`.
pub fn patch_core_img(core: &mut Vec<u8>, core_lba: u64) -> Result<(), BiosError> {
    if core.len() < 1024 || core.len() > MAX_CORE_BYTES {
        return Err(BiosError::CoreImgSize {
            len: core.len(),
            max: MAX_CORE_BYTES,
        });
    }
    core.resize(core.len().div_ceil(512) * 512, 0);
    let rest = (core.len() / 512 - 1) as u16;
    let at = FIRST_BLOCKLIST_OFFSET;
    core[at..at + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[at + 8..at + 10].copy_from_slice(&rest.to_le_bytes());
    core[at + 10..at + 12].copy_from_slice(&CORE_LOAD_SEGMENT.to_le_bytes());
    // The entry before it (growing downwards) terminates the list.
    core[at - 12..at].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_img_keeps_the_partition_records_and_sets_lba_drive_and_nops() {
        let mut mbr = vec![0u8; 512];
        mbr[0x1b8..].fill(0xaa);
        let boot: Vec<u8> = (0..512).map(|i| i as u8).collect();
        patch_boot_img(&mut mbr, &boot, 0x0102_0304).unwrap();
        assert!(mbr[0x1b8..].iter().all(|&b| b == 0xaa));
        assert_eq!(&mbr[..0x5c], &boot[..0x5c]);
        assert_eq!(&mbr[0x5c..0x64], &0x0102_0304u64.to_le_bytes());
        assert_eq!(mbr[0x64], 0xff);
        assert_eq!(&mbr[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&mbr[0x68..0x1b8], &boot[0x68..0x1b8]);
    }

    #[test]
    fn core_img_blocklist_covers_every_sector_after_the_first() {
        let mut core = vec![1u8; 1000 + 512];
        patch_core_img(&mut core, 2048).unwrap();
        assert_eq!(core.len(), 1536);
        assert_eq!(&core[0x1f4..0x1fc], &2049u64.to_le_bytes());
        assert_eq!(&core[0x1fc..0x1fe], &2u16.to_le_bytes());
        assert_eq!(&core[0x1fe..0x200], &0x820u16.to_le_bytes());
        assert!(core[0x1e8..0x1f4].iter().all(|&b| b == 0));
        assert!(core[1512..].iter().all(|&b| b == 0));
    }

    #[test]
    fn rejects_wrong_sizes() {
        let mut mbr = vec![0u8; 512];
        assert_eq!(
            patch_boot_img(&mut mbr, &[0; 511], 1),
            Err(BiosError::BootImgSize { len: 511 })
        );
        let mut core = vec![0u8; 512];
        assert_eq!(
            patch_core_img(&mut core, 1),
            Err(BiosError::CoreImgSize {
                len: 512,
                max: MAX_CORE_BYTES
            })
        );
        let mut core = vec![0u8; MAX_CORE_BYTES + 1];
        assert!(patch_core_img(&mut core, 1).is_err());
    }
}
