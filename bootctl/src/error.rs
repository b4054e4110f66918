//! The errors of this crate: what went wrong, with the values that show it.
use crate::gpt::CopyError;

/// Everything a bootctl operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Neither LBA 1 nor the last LBA holds a GPT header for any sector size tried.
    #[error("not a GPT disk (no \"EFI PART\" header for {tried} sectors)")]
    NotGpt {
        /// The sector sizes that were tried, e.g. "512- or 4096-byte".
        tried: String,
    },
    /// The GPT was written for another logical sector size than the device has.
    #[error("sector size mismatch: the GPT is laid out for {gpt}-byte sectors but the device uses {device}-byte sectors")]
    SectorSizeMismatch {
        /// The sector size the GPT was found at.
        gpt: u32,
        /// The sector size the device (or --sector-size) says.
        device: u32,
    },
    /// Both GPT copies failed validation; nothing can be trusted or repaired.
    #[error("both GPT copies are invalid (primary: {primary}; backup: {backup})")]
    BothCopiesInvalid {
        /// Why the primary copy was rejected.
        primary: CopyError,
        /// Why the backup copy was rejected.
        backup: CopyError,
    },
    /// The GPT has no entry of the CoreOS usr type.
    #[error("no usr partitions (type 5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6) in the GPT")]
    NoUsrPartitions,
    /// The requested slot does not exist or is not a usr partition.
    #[error("slot {slot} not found: {why}")]
    SlotNotFound {
        /// The slot as the user named it.
        slot: String,
        /// What was missing.
        why: String,
    },
    /// A tries count outside 1–15.
    #[error("tries {tries} out of range (1 to 15)")]
    TriesOutOfRange {
        /// The rejected value.
        tries: u32,
    },
    /// A sector size other than 512 or 4096.
    #[error("unsupported sector size {size} (512 or 4096)")]
    UnsupportedSectorSize {
        /// The rejected value.
        size: u32,
    },
    /// The disk is too small for a GPT with the requested layout.
    #[error("disk of {bytes} bytes is too small for a GPT with {sector_size}-byte sectors")]
    DiskTooSmall {
        /// Disk size.
        bytes: u64,
        /// Sector size.
        sector_size: u32,
    },
    /// An LBA whose byte offset does not fit in 64 bits: a table or slot not read from a disk.
    #[error("LBA {lba} of {sector_size}-byte sectors is past any disk")]
    LbaOverflow {
        /// The LBA.
        lba: u64,
        /// The sector size it counts in.
        sector_size: u32,
    },
    /// A slot whose LBAs do not give a byte range: inverted, or past 2^64 bytes.
    #[error("slot {number} has no byte range: LBAs {first_lba}..={last_lba} of {sector_size}-byte sectors")]
    SlotRange {
        /// Partition number.
        number: u32,
        /// First LBA.
        first_lba: u64,
        /// Last LBA.
        last_lba: u64,
        /// Sector size.
        sector_size: u32,
    },
    /// The partition entries of the table in use are inconsistent (see
    /// [`crate::gpt::EntryError`]); slot operations and repair are refused.
    #[error(
        "refusing to use the slots: the {copy} GPT's partition entries are invalid: {problem}"
    )]
    BadEntries {
        /// The copy the table was taken from.
        copy: crate::gpt::Copy,
        /// What is wrong with its entries (boxed: it names two partitions, and every
        /// `Result` of this crate carries the size of its largest error).
        problem: Box<crate::gpt::EntryError>,
    },
    /// Opening the disk failed.
    #[error(transparent)]
    Open(#[from] crate::storage::OpenError),
    /// Reading, writing or flushing the disk failed.
    #[error("{action}")]
    Io {
        /// What was being done, e.g. "writing backup GPT header at LBA 2047".
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let action = action.into();
        move |source| Error::Io { action, source }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
