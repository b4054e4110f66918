//! `image-tools disk`: assembles a bootable GPT disk image with the DESIGN §3 layout.
//!
//! | # | label | content |
//! |---|---|---|
//! | 1 | EFI-SYSTEM | FAT: `EFI/BOOT/BOOTX64.EFI` (GRUB with gptprio built in) and `EFI/BOOT/grub.cfg` |
//! | 2 | BIOS-BOOT | GRUB `core.img`; `boot.img` goes into the MBR boot code (512-byte sectors) |
//! | 3 | USR-A | the /usr image, P1 T0 S1 |
//! | 4 | USR-B | empty, P0 T0 S0 |
//! | 6 | OEM | empty |
//! | 9 | ROOT | ext4 labelled ROOT, from `--root-dir` or a skeleton of mount points |
//!
//! The partition table comes from [`bootctl::layout::standard`] (fresh random disk and
//! partition GUIDs) and is written with [`bootctl::gpt::write_new`]. Filesystems are made on
//! temporary files by host tools ([`mkfs`]) and copied in; the GRUB boot code is patched on
//! bytes ([`bios`]). No loop devices, no mounts, no root privileges. The image is written to
//! `DISK.IMG.tmp` and renamed over `DISK.IMG` only when complete.
//!
//! The GRUB files come from the directory `grub-patches/build.sh` prints ([`GrubFiles`]), by
//! default the one `grub-patches/install.sh` fills ([`GRUB_INSTALL_DIR`], see [`grub_dir`]).
//!
//! ```no_run
//! use image_tools::disk::{assemble, DiskSpec, GrubFiles};
//! let grub = GrubFiles::from_dir("/var/cache/ab-updater/grub/0123".as_ref())?;
//! let report = assemble(&DiskSpec::new("usr.img".into(), "disk.img".into(), grub))?;
//! println!("USR-A is PARTUUID={}", report.partuuid(3).unwrap());
//! # Ok::<(), image_tools::disk::DiskError>(())
//! ```
use anyhow::Context;
use bootctl::gpt::{self, Gpt};
use bootctl::layout::{self, LayoutSizes};
use bootctl::storage::FileDisk;
use bootctl::Guid;
use clap::Args;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub mod bios;
pub mod mkfs;

const MIB: u64 = 1 << 20;

/// Default size of each USR partition.
pub const DEFAULT_USR_SIZE: u64 = 1024 * MIB;
/// Default size of the ROOT partition.
pub const DEFAULT_ROOT_SIZE: u64 = 256 * MIB;
/// Directories made in ROOT when no `--root-dir` is given (mount points of the booted system).
pub const ROOT_SKELETON: [&str; 8] = ["usr", "etc", "var", "proc", "sys", "dev", "run", "tmp"];

/// Errors of assembling a disk image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// The /usr image does not exist or cannot be read.
    #[error("reading usr image {}", path.display())]
    UsrImageUnreadable {
        /// The image given.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The /usr image is neither squashfs nor ext4.
    #[error("usr image {} is not a squashfs or ext4 filesystem", path.display())]
    UsrImageInvalid {
        /// The image given.
        path: PathBuf,
    },
    /// The /usr image does not fit the USR partition.
    #[error("usr image {} is {image_bytes} bytes, larger than the {slot_bytes}-byte USR partition (raise --usr-size)", path.display())]
    UsrImageTooLarge {
        /// The image given.
        path: PathBuf,
        /// Its size.
        image_bytes: u64,
        /// The partition size.
        slot_bytes: u64,
    },
    /// A GRUB artifact is missing from the GRUB directory.
    #[error("GRUB file {} is missing (build it with grub-patches/build.sh)", path.display())]
    GrubFileMissing {
        /// The missing file.
        path: PathBuf,
    },
    /// The sector size is not 512 or 4096.
    #[error("unsupported sector size {size} (use 512 or 4096)")]
    UnsupportedSectorSize {
        /// The size given.
        size: u32,
    },
    /// The BIOS boot code could not be installed.
    #[error("installing the BIOS boot code")]
    Bios(#[from] bios::BiosError),
    /// core.img does not fit the BIOS-BOOT partition.
    #[error("core.img is {core_bytes} bytes, larger than the {partition_bytes}-byte BIOS-BOOT partition")]
    CoreImgTooLarge {
        /// core.img's size, padded to sectors.
        core_bytes: u64,
        /// The partition size.
        partition_bytes: u64,
    },
    /// A host tool could not be started.
    #[error("running {tool} (is it installed?)")]
    ToolMissing {
        /// The tool.
        tool: String,
        /// The OS error.
        source: io::Error,
    },
    /// A host tool failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        /// The tool.
        tool: String,
        /// Its exit status.
        status: String,
        /// The last line it wrote to stderr.
        stderr: String,
    },
    /// The partition table could not be built or written.
    #[error("writing the partition table")]
    Gpt(#[from] bootctl::Error),
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done, e.g. `writing USR-A to disk.img at offset 72351744`.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

impl DiskError {
    /// Wraps an `io::Error` with what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> DiskError {
        let what = what.into();
        move |source| DiskError::Io { what, source }
    }
}

/// The GRUB artifacts a disk needs (the directory `grub-patches/build.sh` prints).
#[derive(Debug, Clone)]
pub struct GrubFiles {
    /// x86_64-efi standalone image, installed as `EFI/BOOT/BOOTX64.EFI`.
    pub efi_image: PathBuf,
    /// i386-pc `boot.img` (MBR boot code).
    pub boot_img: PathBuf,
    /// i386-pc `core.img` (goes into BIOS-BOOT).
    pub core_img: PathBuf,
    /// The boot menu, installed as `EFI/BOOT/grub.cfg`.
    pub grub_cfg: PathBuf,
}

impl GrubFiles {
    /// The artifacts in `dir` (`x86_64-efi/BOOTX64.EFI`, `i386-pc/boot.img`,
    /// `i386-pc/core.img`, `grub.cfg`); fails naming the first one missing.
    pub fn from_dir(dir: &Path) -> Result<GrubFiles, DiskError> {
        let files = GrubFiles {
            efi_image: dir.join("x86_64-efi/BOOTX64.EFI"),
            boot_img: dir.join("i386-pc/boot.img"),
            core_img: dir.join("i386-pc/core.img"),
            grub_cfg: dir.join("grub.cfg"),
        };
        for p in [
            &files.efi_image,
            &files.boot_img,
            &files.core_img,
            &files.grub_cfg,
        ] {
            if !p.is_file() {
                return Err(DiskError::GrubFileMissing { path: p.clone() });
            }
        }
        Ok(files)
    }
}

/// Everything [`assemble`] needs.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// The /usr filesystem image for USR-A.
    pub usr_image: PathBuf,
    /// The disk image to write.
    pub output: PathBuf,
    /// Logical sector size, 512 or 4096.
    pub sector_size: u32,
    /// Size of each USR partition.
    pub usr_size: u64,
    /// Size of ROOT.
    pub root_size: u64,
    /// Tree to fill ROOT from; `None` makes the [`ROOT_SKELETON`] directories.
    pub root_dir: Option<PathBuf>,
    /// The GRUB artifacts.
    pub grub: GrubFiles,
}

impl DiskSpec {
    /// A spec with 512-byte sectors and the default sizes.
    pub fn new(usr_image: PathBuf, output: PathBuf, grub: GrubFiles) -> DiskSpec {
        DiskSpec {
            usr_image,
            output,
            sector_size: 512,
            usr_size: DEFAULT_USR_SIZE,
            root_size: DEFAULT_ROOT_SIZE,
            root_dir: None,
            grub,
        }
    }
}

/// What [`assemble`] made.
#[derive(Debug, Clone)]
pub struct DiskReport {
    /// The disk image.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The disk GUID.
    pub disk_guid: Guid,
    /// Every partition: number, label, unique GUID, first byte, length in bytes.
    pub partitions: Vec<(u32, String, Guid, u64, u64)>,
    /// Whether the MBR got GRUB's BIOS boot code (only with 512-byte sectors).
    pub bios_boot_installed: bool,
}

impl DiskReport {
    /// The unique GUID of partition `number`, in lower-case text form.
    pub fn partuuid(&self, number: u32) -> Option<String> {
        self.partitions
            .iter()
            .find(|p| p.0 == number)
            .map(|p| p.2.to_string().to_lowercase())
    }
}

/// Checks the usr image exists, is squashfs or ext4, and returns its size.
fn check_usr_image(path: &Path) -> Result<u64, DiskError> {
    let unreadable = |source| DiskError::UsrImageUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(unreadable)?;
    let len = f.metadata().map_err(unreadable)?.len();
    let mut head = vec![0u8; 2048];
    let n = read_up_to(&mut f, &mut head).map_err(unreadable)?;
    let squashfs = n >= 4 && &head[..4] == b"hsqs";
    let ext4 = n >= 1082 && head[1080..1082] == [0x53, 0xef];
    if !squashfs && !ext4 {
        return Err(DiskError::UsrImageInvalid {
            path: path.to_path_buf(),
        });
    }
    Ok(len)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Copies `src` into `disk` at `offset`, leaving all-zero blocks as holes.
fn copy_into(
    disk: &File,
    disk_path: &Path,
    offset: u64,
    src: &Path,
    label: &str,
) -> Result<(), DiskError> {
    let mut f = File::open(src).map_err(DiskError::io(format!("opening {}", src.display())))?;
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut at = 0u64;
    loop {
        let n = read_up_to(&mut f, &mut buf)
            .map_err(DiskError::io(format!("reading {}", src.display())))?;
        if n == 0 {
            return Ok(());
        }
        for (i, block) in buf[..n].chunks(64 << 10).enumerate() {
            if block.iter().any(|&b| b != 0) {
                let pos = offset + at + (i as u64) * (64 << 10);
                disk.write_all_at(block, pos)
                    .map_err(DiskError::io(format!(
                        "writing {label} to {} at offset {pos}",
                        disk_path.display()
                    )))?;
            }
        }
        at += n as u64;
    }
}

/// Builds the disk image described by `spec`.
pub fn assemble(spec: &DiskSpec) -> Result<DiskReport, DiskError> {
    if !gpt::SECTOR_SIZES.contains(&spec.sector_size) {
        return Err(DiskError::UnsupportedSectorSize {
            size: spec.sector_size,
        });
    }
    let usr_bytes = check_usr_image(&spec.usr_image)?;
    let usr_slot = spec.usr_size.div_ceil(MIB).max(1) * MIB;
    if usr_bytes > usr_slot {
        return Err(DiskError::UsrImageTooLarge {
            path: spec.usr_image.clone(),
            image_bytes: usr_bytes,
            slot_bytes: usr_slot,
        });
    }
    let sizes = LayoutSizes {
        usr: usr_slot,
        min_root: spec.root_size,
        ..LayoutSizes::default()
    };
    let disk_bytes = layout::min_disk_bytes(&sizes, spec.sector_size);
    let table = layout::standard(disk_bytes, spec.sector_size, &sizes)?;

    let mut tmp_name = spec.output.clone().into_os_string();
    tmp_name.push(".tmp");
    let tmp_path = PathBuf::from(tmp_name);
    let result = write_disk(spec, &table, disk_bytes, &tmp_path);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    fs::rename(&tmp_path, &spec.output).map_err(DiskError::io(format!(
        "renaming {} to {}",
        tmp_path.display(),
        spec.output.display()
    )))?;
    let bios_boot_installed = spec.sector_size == 512;
    Ok(DiskReport {
        path: spec.output.clone(),
        bytes: disk_bytes,
        disk_guid: table.disk_guid,
        partitions: table
            .used_entries()
            .into_iter()
            .map(|(n, e)| {
                let (off, len) = partition_range(&table, n);
                (n, e.name, e.unique_guid, off, len)
            })
            .collect(),
        bios_boot_installed,
    })
}

/// Bytes of one region of a disk: a file made in a scratch directory, or bytes in memory.
#[derive(Debug, Clone)]
pub enum RegionSource {
    /// The whole file, from its first byte.
    File(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

/// One region of the disk outside the USR slots: what goes where.
#[derive(Debug, Clone)]
pub struct Region {
    /// What it is, for messages (`EFI-SYSTEM`, `core.img`, `ROOT`).
    pub label: String,
    /// Its first byte on the disk.
    pub offset: u64,
    /// Its bytes.
    pub source: RegionSource,
}

/// The boot and system content of a disk, apart from the slots and the partition table.
#[derive(Debug, Clone)]
pub struct SystemRegions {
    /// The ESP with GRUB, core.img in BIOS-BOOT (512-byte sectors only) and ROOT.
    pub regions: Vec<Region>,
    /// GRUB's boot code for the first [`bios::BOOT_CODE_END`] bytes of LBA 0 (512-byte sectors
    /// only). It belongs to the part that makes a disk bootable: write it with the table.
    pub mbr_boot_code: Option<Vec<u8>>,
}

/// What ROOT gets: an ext4 of `bytes` labelled ROOT, filled from `tree` or a skeleton.
#[derive(Debug, Clone)]
pub struct RootContent<'a> {
    /// Size of the filesystem (at most the partition).
    pub bytes: u64,
    /// Tree to fill it from; `None` makes the [`ROOT_SKELETON`] directories.
    pub tree: Option<&'a Path>,
}

/// Makes the ESP, core.img and ROOT for a disk laid out as `table`, in `scratch`.
///
/// Shared by `image-tools disk` (into an image file) and `image-tools flash` (onto devices):
/// the regions depend on the sector size and on where the partitions start, not on the disk's
/// size, so one set serves every device with the same sector size.
pub fn system_regions(
    table: &Gpt,
    grub: &GrubFiles,
    root: &RootContent<'_>,
    scratch: &Path,
) -> Result<SystemRegions, DiskError> {
    let mut regions = Vec::new();
    // 1 EFI-SYSTEM: FAT with GRUB and its menu.
    let (esp_off, esp_len) = partition_range(table, 1);
    let esp = scratch.join(format!("esp-{}.img", table.sector_size));
    mkfs::make_esp(
        &esp,
        esp_len,
        table.sector_size,
        &[
            mkfs::EspFile {
                src: grub.efi_image.clone(),
                dest: "EFI/BOOT/BOOTX64.EFI".into(),
            },
            mkfs::EspFile {
                src: grub.grub_cfg.clone(),
                dest: "EFI/BOOT/grub.cfg".into(),
            },
        ],
    )?;
    regions.push(Region {
        label: "EFI-SYSTEM".into(),
        offset: esp_off,
        source: RegionSource::File(esp),
    });

    // 2 BIOS-BOOT and the MBR boot code; BIOS boot code counts 512-byte sectors only.
    let mut mbr_boot_code = None;
    if table.sector_size == 512 {
        let (bb_off, bb_len) = partition_range(table, 2);
        let core_lba = bb_off / 512;
        let mut core = fs_read(&grub.core_img)?;
        bios::patch_core_img(&mut core, core_lba)?;
        if core.len() as u64 > bb_len {
            return Err(DiskError::CoreImgTooLarge {
                core_bytes: core.len() as u64,
                partition_bytes: bb_len,
            });
        }
        regions.push(Region {
            label: "core.img".into(),
            offset: bb_off,
            source: RegionSource::Bytes(core),
        });
        let boot_img = fs_read(&grub.boot_img)?;
        let mut mbr = vec![0u8; 512];
        bios::patch_boot_img(&mut mbr, &boot_img, core_lba)?;
        mbr.truncate(bios::BOOT_CODE_END);
        mbr_boot_code = Some(mbr);
    }

    // 9 ROOT: ext4.
    let (root_off, root_len) = partition_range(table, 9);
    let tree = match root.tree {
        Some(d) => d.to_path_buf(),
        None => {
            let t = scratch.join("root");
            for d in ROOT_SKELETON {
                fs::create_dir_all(t.join(d))
                    .map_err(DiskError::io(format!("creating {}", t.join(d).display())))?;
            }
            t
        }
    };
    let root_img = scratch.join("root.img");
    mkfs::make_ext4(&root_img, root.bytes.min(root_len), "ROOT", &tree)?;
    regions.push(Region {
        label: "ROOT".into(),
        offset: root_off,
        source: RegionSource::File(root_img),
    });
    Ok(SystemRegions {
        regions,
        mbr_boot_code,
    })
}

/// The byte offset and length of partition `number` of `table`.
pub fn partition_range(table: &Gpt, number: u32) -> (u64, u64) {
    let e = table.entry(number);
    let ss = u64::from(table.sector_size);
    (e.first_lba * ss, (e.last_lba - e.first_lba + 1) * ss)
}

fn write_disk(spec: &DiskSpec, table: &Gpt, disk_bytes: u64, path: &Path) -> Result<(), DiskError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(DiskError::io(format!("creating {}", path.display())))?;
    file.set_len(disk_bytes).map_err(DiskError::io(format!(
        "sizing {} to {disk_bytes} bytes",
        path.display()
    )))?;

    let scratch = tempfile::Builder::new()
        .prefix(".image-tools-disk-")
        .tempdir_in(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .map_err(DiskError::io(
            "creating a scratch directory next to the disk image",
        ))?;

    // 1 EFI-SYSTEM, 2 BIOS-BOOT and 9 ROOT; the MBR boot code.
    let (_, root_len) = partition_range(table, 9);
    let system = system_regions(
        table,
        &spec.grub,
        &RootContent {
            bytes: root_len,
            tree: spec.root_dir.as_deref(),
        },
        scratch.path(),
    )?;
    for region in &system.regions {
        match &region.source {
            RegionSource::File(src) => copy_into(&file, path, region.offset, src, &region.label)?,
            RegionSource::Bytes(b) => {
                file.write_all_at(b, region.offset)
                    .map_err(DiskError::io(format!(
                        "writing {} to {} at offset {}",
                        region.label,
                        path.display(),
                        region.offset
                    )))?
            }
        }
    }
    if let Some(code) = &system.mbr_boot_code {
        file.write_all_at(code, 0).map_err(DiskError::io(format!(
            "writing boot.img to {} at offset 0",
            path.display()
        )))?;
    }

    // 3 USR-A: the image; 4 USR-B and 6 OEM stay empty (holes).
    let (usr_off, _) = partition_range(table, 3);
    copy_into(&file, path, usr_off, &spec.usr_image, "USR-A")?;

    // The table last: a half-written image is not a valid GPT disk.
    drop(file);
    let mut disk = FileDisk::open(path, true).map_err(|e| DiskError::Io {
        what: format!("opening {} for the partition table", path.display()),
        source: io::Error::other(e.to_string()),
    })?;
    gpt::write_new(&mut disk, table)?;
    Ok(())
}

fn fs_read(path: &Path) -> Result<Vec<u8>, DiskError> {
    std::fs::read(path).map_err(DiskError::io(format!("reading {}", path.display())))
}

/// Parses a size: bytes, or a number with a K, M, G or T suffix (powers of 1024, optional
/// `iB`/`B`), e.g. `512M`, `1GiB`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix in {s:?} (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. 512M, 1G, 1048576)"))?;
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("size {s:?} is zero or too large"))
}

fn parse_sector_size(s: &str) -> Result<u32, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!("unsupported sector size {s:?} (use 512 or 4096)")),
    }
}

/// Shown after `image-tools disk --help`.
const DISK_EXAMPLE: &str = "Example:
  image-tools disk --usr usr.img -o disk.img --usr-size 512M \\
    --grub-dir \"$(grub-patches/build.sh | tail -n1)\"
  grub-patches/install.sh   # once; then --grub-dir may be left out";

/// Assemble a bootable GPT disk image (ESP+GRUB, BIOS-BOOT, USR-A, USR-B, OEM, ROOT).
///
/// USR-A gets the /usr image at priority 1, tries 0, successful 1; USR-B stays empty at
/// priority 0. GRUB (with gptprio) boots it on UEFI and, with 512-byte sectors, on BIOS.
/// Disk and partition GUIDs are fresh and random on every run. Needs mkfs.vfat, mtools and
/// mkfs.ext4; no root privileges.
#[derive(Args, Debug)]
#[command(after_long_help = DISK_EXAMPLE)]
pub struct DiskCmd {
    /// The /usr filesystem image (squashfs or ext4) to put into USR-A.
    #[arg(long, value_name = "USR.IMG")]
    usr: PathBuf,
    /// The disk image to write (replaced if it exists).
    #[arg(short, long, value_name = "DISK.IMG")]
    output: PathBuf,
    /// Logical sector size of the disk: 512 or 4096 (BIOS boot code needs 512).
    #[arg(long, value_name = "BYTES", default_value = "512", value_parser = parse_sector_size)]
    sector_size: u32,
    /// Size of each USR partition (e.g. 512M, 1G).
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    usr_size: u64,
    /// Size of the ROOT partition (e.g. 256M).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    root_size: u64,
    /// Directory to fill ROOT from (default: empty mount points usr, etc, var, ...).
    #[arg(long, value_name = "DIR")]
    root_dir: Option<PathBuf>,
    /// GRUB artifacts, as printed by grub-patches/build.sh [default: $IMAGE_TOOLS_GRUB_DIR,
    /// else /usr/lib/ab-updater/grub, where `grub-patches/install.sh` puts them].
    #[arg(long, value_name = "DIR")]
    grub_dir: Option<PathBuf>,
}

/// Where `grub-patches/install.sh` installs the GRUB artifacts, and where `disk` and
/// `flash` look for them when neither `--grub-dir` nor `$IMAGE_TOOLS_GRUB_DIR` is given.
pub const GRUB_INSTALL_DIR: &str = "/usr/lib/ab-updater/grub";

/// The GRUB artifact directory: `flag` (`--grub-dir`), else `$IMAGE_TOOLS_GRUB_DIR`, else
/// [`GRUB_INSTALL_DIR`] when it exists; otherwise an error saying how to get one.
pub fn grub_dir(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    grub_dir_from(
        flag,
        std::env::var_os("IMAGE_TOOLS_GRUB_DIR").map(PathBuf::from),
        Path::new(GRUB_INSTALL_DIR),
    )
}

fn grub_dir_from(
    flag: Option<&Path>,
    env: Option<PathBuf>,
    installed: &Path,
) -> anyhow::Result<PathBuf> {
    match (flag, env) {
        (Some(d), _) => Ok(d.to_path_buf()),
        (None, Some(d)) => Ok(d),
        (None, None) if installed.is_dir() => Ok(installed.to_path_buf()),
        (None, None) => anyhow::bail!(
            "no GRUB artifacts: {} does not exist; install them with \
             `grub-patches/install.sh` or pass --grub-dir DIR (the directory \
             grub-patches/build.sh prints)",
            installed.display()
        ),
    }
}

impl DiskCmd {
    /// Runs the command: assembles the disk and prints its partitions.
    pub fn run(&self) -> anyhow::Result<()> {
        let grub = GrubFiles::from_dir(&grub_dir(self.grub_dir.as_deref())?)?;
        let spec = DiskSpec {
            usr_image: self.usr.clone(),
            output: self.output.clone(),
            sector_size: self.sector_size,
            usr_size: self.usr_size,
            root_size: self.root_size,
            root_dir: self.root_dir.clone(),
            grub,
        };
        let report =
            assemble(&spec).with_context(|| format!("assembling {}", self.output.display()))?;
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "{}: {} bytes, {}-byte sectors, disk GUID {}",
            report.path.display(),
            report.bytes,
            spec.sector_size,
            report.disk_guid
        )?;
        for (n, label, guid, off, len) in &report.partitions {
            writeln!(
                out,
                "  {n:>2} {label:<10} PARTUUID={} offset {off} size {len}",
                guid.to_string().to_lowercase()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_dir_prefers_the_flag_then_the_environment_then_the_install_location() {
        let installed = tempfile::tempdir().unwrap();
        let inst = installed.path();
        let flag = Path::new("/flag");
        let env = || Some(PathBuf::from("/env"));
        assert_eq!(grub_dir_from(Some(flag), env(), inst).unwrap(), flag);
        assert_eq!(grub_dir_from(None, env(), inst).unwrap(), Path::new("/env"));
        assert_eq!(grub_dir_from(None, None, inst).unwrap(), inst);
        let missing = inst.join("absent");
        let e = grub_dir_from(None, None, &missing).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "no GRUB artifacts: {} does not exist; install them with \
                 `grub-patches/install.sh` or pass --grub-dir DIR (the directory \
             grub-patches/build.sh prints)",
                missing.display()
            )
        );
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
