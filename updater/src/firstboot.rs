//! `updater firstboot`: make a freshly flashed box use its whole disk, and apply its OEM data.
//!
//! A factory writes a small image onto a disk of whatever size. At the first boot, the image's
//! init (or a unit) runs `updater firstboot`, which:
//!
//! 1. **table** ([`table`]): moves the backup GPT to the disk's last LBA and grows the ROOT
//!    entry to the end of the usable area, in one write, backup copy first;
//! 2. **kernel** ([`grow::resize_kernel_partition`]): tells the running kernel ROOT's new size;
//! 3. **filesystem** ([`grow`]): grows ROOT's ext4 to fill the partition, online when ROOT is
//!    mounted (the kernel's journalled resize), offline with e2fsprogs when it is not;
//! 4. **OEM** ([`oem`]): copies the OEM partition's `etc/` and `var/` into ROOT;
//! 5. **marker**: writes `ROOT/var/lib/updater/firstboot.json` ([`FIRSTBOOT_FILE`]).
//!
//! Every step works out what is left to do from the disk itself, never from a note of its own,
//! and does nothing when its part is done: the table from the GPT, the filesystem by asking for
//! the size it should have (a no-op at that size), the OEM copy by copying the same files
//! again. A power cut anywhere therefore leaves a box on which the next `firstboot` finishes
//! the job. The marker is written last; once it exists `firstboot` returns at once without
//! reading the disk, so running it at every boot costs one file read. The /usr slots' entries,
//! attribute bits and contents are never written.
//!
//! Refused, with nothing written: a disk smaller than its partition table says, a GPT with no
//! valid copy or with inconsistent entries, no partition labelled ROOT or ROOT not the last
//! partition, a ROOT without ext4, an OEM tree breaking [`oem`]'s rules.
//!
//! ```no_run
//! use updater::firstboot::{run, FirstbootOptions, FirstbootOutcome};
//! let opts = FirstbootOptions::new("/dev/vda".into(), "/".into());
//! match run(&opts)? {
//!     FirstbootOutcome::AlreadyDone { .. } => println!("nothing to do"),
//!     FirstbootOutcome::Done(report) => println!("ROOT is {} bytes", report.table.root_bytes_after),
//! }
//! # Ok::<(), updater::firstboot::FirstbootError>(())
//! ```
use crate::lock::{LockError, UpdaterLock, LOCK_FILE};
use crate::state::{Loaded, StateDir, StateError};
use bootctl::storage::FileDisk;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod grow;
pub mod oem;
pub mod table;

pub use grow::FsMethod;
pub use table::TableOutcome;

/// The marker written once first boot is complete, in the state directory.
pub const FIRSTBOOT_FILE: &str = "firstboot.json";
/// Format version of [`FIRSTBOOT_FILE`].
pub const FIRSTBOOT_FORMAT_VERSION: u32 = 1;

/// Why first boot stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirstbootError {
    /// The disk is smaller than the valid primary header says.
    #[error("the disk is {disk_bytes} bytes but its partition table describes {table_bytes} bytes: refusing to touch a disk smaller than its image")]
    DiskSmallerThanTable {
        /// The disk's size.
        disk_bytes: u64,
        /// The size the table was made for.
        table_bytes: u64,
    },
    /// No GPT copy validates, or the entries are inconsistent.
    #[error("the partition table cannot be used: {0}")]
    Gpt(#[source] bootctl::Error),
    /// No partition is labelled ROOT.
    #[error("no partition labelled ROOT in the GPT")]
    NoRoot,
    /// Two partitions are labelled ROOT.
    #[error("partitions {first} and {second} are both labelled ROOT: refusing to guess")]
    SeveralRoots {
        /// One of them.
        first: u32,
        /// The other.
        second: u32,
    },
    /// A partition lies after ROOT.
    #[error("ROOT (partition {root}) is not the last partition (partition {after} {label:?} follows it): refusing to grow it")]
    RootNotLast {
        /// ROOT's number.
        root: u32,
        /// The partition after it.
        after: u32,
        /// Its label.
        label: String,
    },
    /// ROOT holds no ext4 filesystem.
    #[error("ROOT (partition {number}) holds no ext4 filesystem")]
    RootNotExt4 {
        /// ROOT's number.
        number: u32,
    },
    /// The OEM partition of a disk-image file holds a filesystem, and no `--oem-dir` was given.
    #[error("the OEM partition of the disk image {disk} holds a filesystem, which cannot be mounted from a file: pass --oem-dir with its content")]
    OemNeedsDir {
        /// The image.
        disk: PathBuf,
    },
    /// The OEM tree was refused.
    #[error("the OEM data cannot be applied: {0}")]
    Oem(#[from] oem::OemError),
    /// A host tool could not be started.
    #[error("running {tool} (is e2fsprogs installed?)")]
    ToolMissing {
        /// The tool.
        tool: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A host tool failed.
    #[error("{command} failed ({status}): {message}")]
    Tool {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its last line of output.
        message: String,
    },
    /// Another updater holds the lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The marker could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// Opening the disk failed.
    #[error("opening {path}")]
    Open {
        /// The disk.
        path: PathBuf,
        /// The cause.
        source: bootctl::storage::OpenError,
    },
    /// A file, device or kernel operation failed.
    #[error("{action}")]
    Io {
        /// What was being done, e.g. `mounting the OEM filesystem /dev/vda6 on /run/updater/oem`.
        action: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl FirstbootError {
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> FirstbootError {
        let action = action.into();
        move |source| FirstbootError::Io { action, source }
    }
}

/// What [`run`] works on.
#[derive(Debug, Clone)]
pub struct FirstbootOptions {
    /// The booted disk (block device or disk-image file).
    pub disk: PathBuf,
    /// The device's root directory (`/` on a device): the marker and the OEM copy go under it.
    pub root: PathBuf,
    /// The OEM tree to apply instead of the OEM partition's filesystem.
    pub oem_dir: Option<PathBuf>,
    /// How long to wait for another updater's lock.
    pub lock_wait: Duration,
}

impl FirstbootOptions {
    /// Options for `disk` and `root`, the OEM data from the OEM partition.
    pub fn new(disk: PathBuf, root: PathBuf) -> FirstbootOptions {
        FirstbootOptions {
            disk,
            root,
            oem_dir: None,
            lock_wait: crate::lock::DEFAULT_LOCK_WAIT,
        }
    }
}

/// The marker of a completed first boot ([`FIRSTBOOT_FILE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstbootMarker {
    /// [`FIRSTBOOT_FORMAT_VERSION`].
    pub format_version: u32,
    /// Unix time of completion.
    pub completed_at: u64,
    /// The disk GUID the job was done on.
    pub disk_guid: String,
    /// ROOT's size in bytes afterwards.
    pub root_bytes: u64,
}

/// What happened to ROOT's filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsOutcome {
    /// How it was grown; `None` when it had its full size already.
    pub method: Option<FsMethod>,
    /// Where ROOT is mounted, if it is.
    pub mount_point: Option<PathBuf>,
    /// The filesystem's block size.
    pub block_size: u64,
    /// Its blocks before, as its superblock on the disk said (for a mounted filesystem the
    /// on-disk superblock can lag behind the journal).
    pub blocks_before: u64,
    /// Its blocks now: the partition's size in blocks.
    pub blocks_after: u64,
}

/// Where the OEM data came from and what was copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum OemOutcome {
    /// No partition labelled OEM.
    NoPartition,
    /// The OEM partition holds no ext4 filesystem (an image's empty OEM).
    Empty,
    /// Copied from a tree.
    Copied {
        /// The tree (the `--oem-dir`, the OEM filesystem's mount point, or the private mount).
        from: PathBuf,
        /// What was copied.
        copied: oem::OemCopied,
    },
}

/// What a run of first boot did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirstbootReport {
    /// The disk.
    pub disk: PathBuf,
    /// The table step.
    pub table: TableOutcome,
    /// Whether the kernel was told ROOT's new size.
    pub kernel_resized: bool,
    /// The filesystem step.
    pub filesystem: FsOutcome,
    /// The OEM step.
    pub oem: OemOutcome,
    /// The marker written.
    pub marker: PathBuf,
}

/// The result of [`run`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum FirstbootOutcome {
    /// The marker exists: nothing was read or written.
    AlreadyDone {
        /// The marker.
        marker: PathBuf,
        /// When the job was completed.
        completed_at: u64,
    },
    /// The job ran to its end (each step doing what was left).
    Done(Box<FirstbootReport>),
}

/// Reads the marker; `None` when missing (a damaged one is set aside and counts as missing:
/// every step is safe to redo).
fn marker(state: &StateDir) -> Result<Option<FirstbootMarker>, FirstbootError> {
    Ok(match state.read::<FirstbootMarker>(FIRSTBOOT_FILE)? {
        Loaded::Present(m) => Some(m),
        Loaded::Missing | Loaded::Damaged(_) => None,
    })
}

/// Runs first boot (see the module doc).
pub fn run(opts: &FirstbootOptions) -> Result<FirstbootOutcome, FirstbootError> {
    let state = StateDir::under_root(&opts.root);
    let already = |m: FirstbootMarker| FirstbootOutcome::AlreadyDone {
        marker: state.path(FIRSTBOOT_FILE),
        completed_at: m.completed_at,
    };
    if let Some(m) = marker(&state)? {
        return Ok(already(m));
    }
    let _lock = UpdaterLock::acquire(&state.path(LOCK_FILE), "firstboot", opts.lock_wait)?;
    if let Some(m) = marker(&state)? {
        return Ok(already(m));
    }

    let mut disk = FileDisk::open(&opts.disk, true).map_err(|source| FirstbootError::Open {
        path: opts.disk.clone(),
        source,
    })?;
    let table = table::grow_table(&mut disk)?;
    log::info!(
        "firstboot: partition table {} (ROOT {} -> {} bytes, backup GPT at LBA {})",
        if table.wrote {
            "grown"
        } else {
            "already grown"
        },
        table.root_bytes_before,
        table.root_bytes_after,
        table.backup_lba_after
    );

    let kernel_resized = grow::resize_kernel_partition(
        &opts.disk,
        table.root_number,
        table.root_offset(),
        table.root_bytes_after,
    )?;
    let filesystem = grow_filesystem(&mut disk, &opts.disk, &table)?;
    log::info!(
        "firstboot: filesystem {} ({} blocks of {} bytes)",
        match filesystem.method {
            Some(FsMethod::Online) => "grown online",
            Some(FsMethod::Offline) => "grown offline",
            None => "already full size",
        },
        filesystem.blocks_after,
        filesystem.block_size
    );
    let oem = apply_oem(&mut disk, opts)?;
    log::info!(
        "firstboot: OEM data {}",
        match &oem {
            OemOutcome::NoPartition => "none (no OEM partition)".to_string(),
            OemOutcome::Empty => "none (empty OEM partition)".to_string(),
            OemOutcome::Copied { copied, .. } => format!("applied ({} files)", copied.files),
        }
    );

    let guid = bootctl::gpt::read(&mut disk, Some(table.sector_size))
        .map(|s| s.gpt.disk_guid.to_string().to_lowercase())
        .map_err(FirstbootError::Gpt)?;
    state.store(
        FIRSTBOOT_FILE,
        &FirstbootMarker {
            format_version: FIRSTBOOT_FORMAT_VERSION,
            completed_at: crate::history::now(),
            disk_guid: guid,
            root_bytes: table.root_bytes_after,
        },
    )?;
    Ok(FirstbootOutcome::Done(Box::new(FirstbootReport {
        disk: opts.disk.clone(),
        table,
        kernel_resized,
        filesystem,
        oem,
        marker: state.path(FIRSTBOOT_FILE),
    })))
}

/// Grows ROOT's ext4 to the partition's size: online where mounted, else offline.
fn grow_filesystem(
    disk: &mut FileDisk,
    path: &Path,
    table: &TableOutcome,
) -> Result<FsOutcome, FirstbootError> {
    let sb =
        grow::Ext4Super::read(disk, table.root_offset())?.ok_or(FirstbootError::RootNotExt4 {
            number: table.root_number,
        })?;
    let target = table.root_bytes_after / sb.block_size;
    let part = grow::sys_partition(path, table.root_number);
    let mount_point = match &part {
        Some(p) => grow::mount_point_of(&p.dev)?,
        None => None,
    };
    let method = match (&mount_point, &part) {
        (Some(mp), _) => {
            grow::grow_online(mp, target)?;
            (sb.blocks < target).then_some(FsMethod::Online)
        }
        (None, _) if sb.blocks >= target => None,
        (None, Some(p)) => {
            grow::grow_offline(&p.node, target)?;
            Some(FsMethod::Offline)
        }
        (None, None) => {
            let lo = grow::LoopDevice::attach(path, table.root_offset(), table.root_bytes_after)?;
            grow::grow_offline(lo.node(), target)?;
            Some(FsMethod::Offline)
        }
    };
    Ok(FsOutcome {
        method,
        mount_point,
        block_size: sb.block_size,
        blocks_before: sb.blocks,
        blocks_after: target,
    })
}

/// Applies the OEM data: from `--oem-dir`, the OEM filesystem where it is mounted, or a
/// private read-only mount of it.
fn apply_oem(disk: &mut FileDisk, opts: &FirstbootOptions) -> Result<OemOutcome, FirstbootError> {
    if let Some(dir) = &opts.oem_dir {
        let copied = oem::apply(dir, &opts.root)?;
        return Ok(OemOutcome::Copied {
            from: dir.clone(),
            copied,
        });
    }
    let state = bootctl::gpt::read(disk, None).map_err(FirstbootError::Gpt)?;
    let ss = u64::from(state.gpt.sector_size);
    let Some((number, entry)) = state
        .gpt
        .used_entries()
        .into_iter()
        .find(|(_, e)| e.name == "OEM")
    else {
        return Ok(OemOutcome::NoPartition);
    };
    if grow::Ext4Super::read(disk, entry.first_lba * ss)?.is_none() {
        return Ok(OemOutcome::Empty);
    }
    let Some(part) = grow::sys_partition(&opts.disk, number) else {
        return Err(FirstbootError::OemNeedsDir {
            disk: opts.disk.clone(),
        });
    };
    if let Some(mp) = grow::mount_point_of(&part.dev)? {
        let copied = oem::apply(&mp, &opts.root)?;
        return Ok(OemOutcome::Copied { from: mp, copied });
    }
    let mount = oem::OemMount::new(
        &part.node,
        opts.root
            .join("run/updater")
            .join(format!("oem-{}", std::process::id())),
    )?;
    let copied = oem::apply(mount.path(), &opts.root)?;
    Ok(OemOutcome::Copied {
        from: mount.path().to_path_buf(),
        copied,
    })
}
