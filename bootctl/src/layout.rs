//! The disk layout of DESIGN §3 as a partition table: ESP, BIOS boot, USR-A, USR-B, OEM, ROOT.
//!
//! [`standard`] builds the [`Gpt`] (partition numbers 1, 2, 3, 4, 6, 9, 1 MiB aligned, fresh
//! random GUIDs, USR-A at P1 T0 S1 and USR-B at P0 T0 S0); `image-tools disk` fills the
//! partitions, tests use [`mem_disk`] for a small in-memory disk with the same table.
//!
//! ```
//! use bootctl::layout::{self, LayoutSizes};
//! let sizes = LayoutSizes::small();
//! let gpt = layout::standard(layout::min_disk_bytes(&sizes, 512), 512, &sizes).unwrap();
//! assert_eq!(gpt.entry(9).name, "ROOT");
//! ```
use crate::attrs::SlotAttrs;
use crate::error::{Error, Result};
use crate::gpt::{self, Entry, Gpt};
use crate::guid::{Guid, BIOS_BOOT_TYPE, ESP_TYPE, LINUX_DATA_TYPE, USR_TYPE};
use crate::storage::MemDisk;

const MIB: u64 = 1 << 20;

/// Partition sizes in bytes (each rounded up to whole MiB); ROOT takes the rest of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutSizes {
    /// EFI system partition.
    pub esp: u64,
    /// BIOS boot partition (GRUB core.img).
    pub bios_boot: u64,
    /// Each of USR-A and USR-B.
    pub usr: u64,
    /// OEM partition.
    pub oem: u64,
    /// Smallest ROOT partition.
    pub min_root: u64,
}

impl Default for LayoutSizes {
    fn default() -> LayoutSizes {
        LayoutSizes {
            esp: 64 * MIB,
            bios_boot: 2 * MIB,
            usr: 1024 * MIB,
            oem: 16 * MIB,
            min_root: 64 * MIB,
        }
    }
}

impl LayoutSizes {
    /// One MiB each: for tests that only look at the table.
    pub fn small() -> LayoutSizes {
        LayoutSizes {
            esp: MIB,
            bios_boot: MIB,
            usr: MIB,
            oem: MIB,
            min_root: MIB,
        }
    }
}

fn mib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(MIB).max(1) * MIB
}

/// The smallest disk that holds `sizes` with 1 MiB alignment and room for the backup GPT.
pub fn min_disk_bytes(sizes: &LayoutSizes, _sector_size: u32) -> u64 {
    // 1 MiB in front for the MBR and primary GPT, 1 MiB at the end for the backup.
    MIB + mib_ceil(sizes.esp)
        + mib_ceil(sizes.bios_boot)
        + 2 * mib_ceil(sizes.usr)
        + mib_ceil(sizes.oem)
        + mib_ceil(sizes.min_root)
        + MIB
}

/// The DESIGN §3 table for a disk of `disk_bytes`.
pub fn standard(disk_bytes: u64, sector_size: u32, sizes: &LayoutSizes) -> Result<Gpt> {
    let random = || Guid::random().map_err(Error::io("reading /dev/urandom for a GUID"));
    if disk_bytes < min_disk_bytes(sizes, sector_size) {
        return Err(Error::DiskTooSmall {
            bytes: disk_bytes,
            sector_size,
        });
    }
    let mut gpt = Gpt::new(disk_bytes, sector_size, random()?)?;
    let ss = u64::from(sector_size);
    let mut next = MIB / ss;
    let parts = [
        (1, "EFI-SYSTEM", ESP_TYPE, sizes.esp, 0),
        (2, "BIOS-BOOT", BIOS_BOOT_TYPE, sizes.bios_boot, 0),
        (
            3,
            "USR-A",
            USR_TYPE,
            sizes.usr,
            SlotAttrs {
                priority: 1,
                tries: 0,
                successful: true,
            }
            .apply(0),
        ),
        (4, "USR-B", USR_TYPE, sizes.usr, 0),
        (6, "OEM", LINUX_DATA_TYPE, sizes.oem, 0),
    ];
    for (number, name, type_guid, bytes, attributes) in parts {
        let len = mib_ceil(bytes) / ss;
        gpt.set_entry(
            number,
            &Entry {
                type_guid,
                unique_guid: random()?,
                first_lba: next,
                last_lba: next + len - 1,
                attributes,
                name: name.into(),
            },
        );
        next += len;
    }
    // ROOT ends on the last whole MiB before the backup entry array.
    let end = (gpt.last_usable_lba + 1) / (MIB / ss) * (MIB / ss);
    gpt.set_entry(
        9,
        &Entry {
            type_guid: LINUX_DATA_TYPE,
            unique_guid: random()?,
            first_lba: next,
            last_lba: end - 1,
            attributes: 0,
            name: "ROOT".into(),
        },
    );
    Ok(gpt)
}

/// An in-memory disk with the [`standard`] table and [`LayoutSizes::small`] partitions.
pub fn mem_disk(sector_size: u32) -> MemDisk {
    let sizes = LayoutSizes::small();
    let bytes = min_disk_bytes(&sizes, sector_size);
    let mut disk = MemDisk::new(vec![0; bytes as usize], sector_size);
    let table = standard(bytes, sector_size, &sizes).expect("small layout fits its own minimum");
    gpt::write_new(&mut disk, &table).expect("memory writes cannot fail");
    disk
}
