//! `updater install`: put a signed payload into the passive slot and make it the next boot.
//!
//! Three stages, each a type, so the order is the code's shape (DESIGN §5–6, issue 14):
//!
//! 1. [`plan`] holds every refusal and opens nothing for writing. It takes the updater lock
//!    ([`crate::lock`]) first, so the slots it judges are the slots it later writes; reads the
//!    device's facts ([`crate::device`]); refuses an ambiguous disk, a target range that
//!    touches the booted slot or is the device mounted on `/usr`, and a booted slot that is not
//!    committed ([`crate::bootstate`], unless `force`); parses the payload prelude with every
//!    length bounds-checked, verifies its signature against the trusted keys, checks the chunk
//!    table against the signed manifest; checks `compatible` against the booted `IMAGE_ID`,
//!    the version (strictly newer unless downgrades are allowed, never a failed one unless
//!    allowed), the expiry, and the image size against the slot.
//! 2. [`InstallPlan::write`] stores the checkpoint (the state directory must take writes
//!    before the disk is touched), marks the passive slot unbootable, streams the frames
//!    through [`pipeline`] (each chunk decoded with a capped window and verified before
//!    [`SlotWriter`] writes it; checkpoints ([`crate::state::InstallProgress`]) after fsyncs
//!    let a later run resume), and reads every chunk back from the device (`O_DIRECT`, beside
//!    the stream) and verifies it again.
//! 3. [`WrittenSlot::finish`] records the pending install, then flips: the passive slot becomes
//!    the next boot with `tries` attempts (unless `flip` is off).
//!
//! The booted slot is never opened for writing: [`SlotWriter`] only covers the passive slot and
//! refuses any range outside it; every GPT write re-reads both copies (bootctl) under the lock.

pub use ab_release::byteranges;
pub mod delta;
pub mod patch;
/// The parallel chunk pipeline lives with the payload format (shared with `image-tools`).
pub use ab_payload::pipeline;
pub mod resume;

use crate::bootstate::{slot_name, BootState, BootStateRefusal};
use crate::device::DeviceError;
pub use crate::device::DeviceSpec;
use crate::lock::{LockError, UpdaterLock};
use crate::payload::{self, KeyId, PayloadError, ReadError, Sha256Digest};
use crate::source::{is_payload_changed, ResumingReader, RetryPolicy, SharedSource, Source};
use crate::state::{InstallProgress, PendingInstall, StateError, INSTALL_PROGRESS, PENDING};
use crate::version::compare_versions;
use bootctl::{Slot, SlotDisk, SlotId};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Accept a version that is not newer than the booted one.
    pub allow_downgrade: bool,
    /// Accept a version recorded as failed (DESIGN §6 invariant 7: never automatically).
    pub allow_failed: bool,
    /// Make the slot the next boot after verification.
    pub flip: bool,
    /// Boot attempts given to the new slot when flipping (1..=15).
    pub tries: u32,
    /// The current time (Unix seconds), for the expiry check.
    pub now: u64,
    /// Decoder threads.
    pub threads: usize,
    /// Bytes written between durable checkpoints.
    pub checkpoint_bytes: u64,
    /// Retries of transient read failures.
    pub retry: RetryPolicy,
    /// Install even though the booted slot is not committed (its other slot may be the only
    /// fallback: see [`crate::bootstate`]).
    pub force: bool,
    /// How long to wait for another updater's lock.
    pub lock_wait: Duration,
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstallReport {
    /// The slot written (`A` or `B`).
    pub slot: String,
    /// Its PARTUUID.
    pub partuuid: String,
    /// The installed version.
    pub version: String,
    /// The booted version.
    pub booted_version: String,
    /// SHA-256 of the signed manifest.
    pub payload_id: String,
    /// The key that signed it.
    pub signed_by: String,
    /// Image size in bytes.
    pub image_size: u64,
    /// The chunk the install started at (0 unless resumed).
    pub resumed_from_chunk: u32,
    /// Chunks in the payload.
    pub chunk_count: u32,
    /// Transient read failures retried.
    pub retries: u32,
    /// Whether the slot was made the next boot.
    pub flipped: bool,
    /// Whether chunks were taken from the booted slot and fetched by range (a format 2
    /// payload whose plan was not a full download).
    pub delta: bool,
    /// Bytes received from the payload source by this run (prelude included; bytes of a
    /// retried request count again).
    pub bytes_fetched: u64,
    /// Image bytes copied from the booted slot, each chunk checked against its SHA-256.
    pub bytes_reused: u64,
    /// Image bytes copied from elsewhere in the target slot (an older release it still held),
    /// each chunk read before anything overwrote it and checked against its SHA-256.
    pub bytes_reused_from_target: u64,
    /// Image bytes found already in place in the target slot (written by an interrupted run,
    /// or the same at the same offset in the release it held), not written again.
    pub bytes_in_place: u64,
    /// Chunks of the booted slot that no longer matched their SHA-256 and were fetched.
    pub damaged_local_chunks: u32,
    /// The server ignored range requests: the payload was downloaded whole.
    pub ranges_ignored: bool,
    /// Image bytes decoded from a publish-time patch for the booted version (each chunk
    /// checked against its SHA-256), not fetched from the payload.
    pub bytes_from_patch: u64,
    /// Bytes received for that patch (also when it then was not used).
    pub patch_bytes_fetched: u64,
    /// Records of the patch that failed (their chunks were fetched from the payload).
    pub patch_failed_records: u32,
}

/// Why an install stopped. Everything up to [`InstallError::TooLargeForSlot`] happens before the
/// first write; after that the passive slot is left unbootable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// A key file is bad.
    #[error(transparent)]
    Keys(#[from] payload::KeyError),
    /// The device's facts (booted release, PARTUUIDs, the /usr mount) forbid the install.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Another updater holds the lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The boot state forbids writing the other slot.
    #[error(transparent)]
    BootState(#[from] BootStateRefusal),
    /// The target slot's range is unusable or touches the booted slot.
    #[error("refusing to write partition {target}: {why}")]
    TargetGeometry {
        /// The target partition number.
        target: u32,
        /// What is wrong.
        why: String,
    },
    /// The disk or its slots cannot be used.
    #[error("using slots of {path}")]
    Disk {
        /// The disk.
        path: PathBuf,
        /// The cause.
        #[source]
        source: bootctl::Error,
    },
    /// The booted and the target slot are the same partition.
    #[error("refusing to write partition {number}: it is the booted slot")]
    TargetIsBooted {
        /// Partition number.
        number: u32,
    },
    /// The payload is bad.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// Reading the payload failed.
    #[error("reading payload {source_name} at offset {offset}")]
    Read {
        /// Path or URL.
        source_name: String,
        /// Payload offset.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The payload is for another board or product.
    #[error("payload is for {payload:?}, this device is {device:?} (IMAGE_ID)")]
    WrongCompatible {
        /// `compatible` of the payload.
        payload: String,
        /// `IMAGE_ID` of the booted image.
        device: String,
    },
    /// The payload's version is not newer than the booted one.
    #[error(
        "payload version {payload} is not newer than the booted {booted} (use --allow-downgrade)"
    )]
    NotNewer {
        /// Payload version.
        payload: String,
        /// Booted version.
        booted: String,
    },
    /// The version failed its health checks or never came up before.
    #[error(
        "version {version} failed before and is not installed again: {reason} (use --allow-failed)"
    )]
    PreviouslyFailed {
        /// The version.
        version: String,
        /// Why it failed.
        reason: String,
    },
    /// The payload has expired.
    #[error("payload expired at {expires} (Unix time), it is now {now}")]
    Expired {
        /// Expiry time.
        expires: u64,
        /// Current time.
        now: u64,
    },
    /// The image does not fit the slot.
    #[error("image of {image_size} bytes does not fit slot {slot} of {slot_size} bytes")]
    TooLargeForSlot {
        /// Image size.
        image_size: u64,
        /// Slot label.
        slot: String,
        /// Slot size.
        slot_size: u64,
    },
    /// Writing, syncing or reading the slot failed.
    #[error("{action} slot {slot} of {disk} at offset {offset}")]
    SlotIo {
        /// What was being done (`writing chunk 17 to`…).
        action: String,
        /// Slot label.
        slot: String,
        /// The disk.
        disk: PathBuf,
        /// Byte offset on the disk.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A chunk read back from the slot differs from what was verified and written.
    #[error("read-back of slot {slot}: chunk {index} at image offset {offset}: SHA-256 is {found}, expected {expected}")]
    ReadBackMismatch {
        /// Slot label.
        slot: String,
        /// Chunk index.
        index: u32,
        /// Image offset.
        offset: u64,
        /// From the signed chunk table.
        expected: Sha256Digest,
        /// Read back.
        found: Sha256Digest,
    },
    /// State could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Receives progress of an install.
pub trait Progress {
    /// A step began (`verified`, `writing`, `reading back`, `flipped`…) with a byte total (0
    /// when not measured).
    fn phase(&mut self, phase: &'static str, total: u64);
    /// Bytes done within the current phase.
    fn advance(&mut self, done: u64);
    /// A delta plan was made: payload bytes to fetch, image bytes to copy from the booted
    /// slot and from the target slot (reported once, before `writing`).
    fn delta(&mut self, _fetch_bytes: u64, _reuse_bytes: u64, _reuse_target_bytes: u64) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&mut self, _: &'static str, _: u64) {}
    fn advance(&mut self, _: u64) {}
}

/// How a read-back reached the bytes it checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPath {
    /// From the device, around the page cache (`O_DIRECT`).
    Direct,
    /// Through the page cache.
    Buffered,
}

/// Writes into one slot of a disk and nowhere else: offsets are relative to the slot, and a
/// write past its end is refused before it reaches the disk.
pub struct SlotWriter<'a> {
    file: &'a File,
    disk: &'a Path,
    slot: &'a Slot,
    /// Consecutive small chunks not yet written: they go to the disk together, up to
    /// [`WRITE_BATCH`] bytes (and always before a sync).
    pending: std::sync::Mutex<PendingWrite>,
}

/// Bytes the first request of a payload asks for: the largest header, manifest and signature
/// block (1 600 bytes); the chunk table follows in a second request, sized by the manifest.
pub const FIRST_REQUEST: u64 = payload::MAX_SIGNED_PART_LEN as u64;

/// Chunks (or runs of them) smaller than this are written (and advised out of the page cache)
/// together: a write and an advice per 16 KiB chunk would start writeback in 16 KiB pieces.
/// Gathering them costs a copy, but less than the kernel's own cost per write: writing the
/// pipeline's 128 KiB runs one by one made a full install of a version 2 payload slower
/// (1.73 s against 1.60 s, `scripts/bench-delta.sh`'s image).
const WRITE_BATCH: usize = 1 << 20;

/// Consecutive chunks gathered for one write.
#[derive(Default)]
struct PendingWrite {
    /// Disk offset of the first byte.
    at: u64,
    /// Index of the first chunk (for errors).
    index: u32,
    bytes: Vec<u8>,
    /// The disk bytes written since the last sync lie in this range: clean once synced, they
    /// are dropped from the page cache then ([`SlotWriter::sync`]).
    unsynced: Option<std::ops::Range<u64>>,
}

impl<'a> SlotWriter<'a> {
    /// A writer for `slot` of `disk`, opened as `file`.
    pub fn new(file: &'a File, disk: &'a Path, slot: &'a Slot) -> SlotWriter<'a> {
        SlotWriter {
            file,
            disk,
            slot,
            pending: std::sync::Mutex::new(PendingWrite::default()),
        }
    }

    fn io_err(&self, action: String, offset: u64) -> impl FnOnce(std::io::Error) -> InstallError {
        let slot = self.slot.label.clone();
        let disk = self.disk.to_owned();
        move |source| InstallError::SlotIo {
            action,
            slot,
            disk,
            offset,
            source,
        }
    }

    /// Writes chunk `index` (or the run of consecutive chunks starting with it: `data` holds
    /// their bytes one after the other) at `offset` bytes into the slot. Small consecutive
    /// chunks are gathered and written together ([`WRITE_BATCH`]): their bytes reach the disk
    /// by the next [`Self::sync`] at the latest, and only synced bytes may be read back.
    pub fn write_chunk(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), InstallError> {
        let at = self.slot.byte_offset() + offset;
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > self.slot.byte_len()) {
            return Err(self
                .io_err(format!("writing chunk {index} past the end of"), at)(
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "outside the slot"),
            ));
        }
        let mut pending = self.pending.lock().expect("pending write lock");
        let direct = data.len() >= WRITE_BATCH;
        if !pending.bytes.is_empty() && (direct || pending.at + pending.bytes.len() as u64 != at) {
            self.flush(&mut pending)?;
        }
        if direct {
            // A large chunk (version 1) or a run of them goes straight to the disk.
            return self.write_out(index, at, data, &mut pending.unsynced);
        }
        if pending.bytes.is_empty() {
            pending.at = at;
            pending.index = index;
        }
        pending.bytes.extend_from_slice(data);
        if pending.bytes.len() >= WRITE_BATCH {
            self.flush(&mut pending)?;
        }
        Ok(())
    }

    /// Writes the chunks gathered so far (not synced).
    pub fn write_pending(&self) -> Result<(), InstallError> {
        self.flush(&mut self.pending.lock().expect("pending write lock"))
    }

    /// Writes the gathered chunks.
    fn flush(&self, pending: &mut PendingWrite) -> Result<(), InstallError> {
        if pending.bytes.is_empty() {
            return Ok(());
        }
        let PendingWrite {
            at,
            index,
            bytes,
            unsynced,
        } = pending;
        let result = self.write_out(*index, *at, bytes, unsynced);
        bytes.clear();
        result
    }

    /// Writes `data` at disk offset `at` and advises it out of the page cache; widens
    /// `unsynced` to it.
    fn write_out(
        &self,
        index: u32,
        at: u64,
        data: &[u8],
        unsynced: &mut Option<std::ops::Range<u64>>,
    ) -> Result<(), InstallError> {
        self.file
            .write_all_at(data, at)
            .map_err(self.io_err(format!("writing chunk {index} to"), at))?;
        let end = at + data.len() as u64;
        *unsynced = Some(match unsynced.take() {
            Some(r) => r.start.min(at)..r.end.max(end),
            None => at..end,
        });
        self.advise_dontneed(at..end);
        Ok(())
    }

    /// On dirty pages, DONTNEED starts their writeback now, so the device works while later
    /// chunks decode and the final fsync only waits for the tail. On clean (synced) pages it
    /// drops them: the page cache does not fill with the image, so writes find free pages
    /// without reclaim, and a direct read-back has no cached pages to write out or invalidate
    /// first (measured: both twice as slow without it).
    fn advise_dontneed(&self, range: std::ops::Range<u64>) {
        // A length of 0 would mean "to the end of the file".
        if range.is_empty() {
            return;
        }
        // Advisory: failure only costs speed, or lets a read-back come from the page cache.
        let _ = nix::fcntl::posix_fadvise(
            self.file.as_raw_fd(),
            range.start as i64,
            (range.end - range.start) as i64,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }

    /// Flushes written data to the device.
    pub fn sync(&self) -> Result<(), InstallError> {
        let mut pending = self.pending.lock().expect("pending write lock");
        self.flush(&mut pending)?;
        let written = pending.unsynced.take();
        drop(pending);
        self.file
            .sync_data()
            .map_err(self.io_err("syncing".into(), self.slot.byte_offset()))?;
        // Now clean: out of the page cache.
        if let Some(r) = written {
            self.advise_dontneed(r);
        }
        Ok(())
    }

    /// Reads chunk `index` back from the slot into `buf` and checks it against `entry`;
    /// says which path the bytes came by.
    ///
    /// With a direct handle (`O_DIRECT`) the read comes from the device: the kernel first
    /// writes out any dirty page of the range, then reads around the page cache. Direct reads
    /// need an aligned offset and length, so the read covers the aligned window around the
    /// chunk (whole 4 KiB blocks, or whole 512-byte sectors where 4 KiB would leave the slot)
    /// and the chunk is cut out of it: a slot that does not start on a 4 KiB boundary is read
    /// back from the device too. Without a direct handle (filesystems that refuse `O_DIRECT`,
    /// such as tmpfs) the read is buffered.
    pub fn read_back_chunk(
        &self,
        direct: Option<&File>,
        index: u32,
        entry: &payload::ChunkEntry,
        buf: &mut Vec<u8>,
    ) -> Result<ReadPath, InstallError> {
        self.read_back_run(direct, index, std::slice::from_ref(entry), buf)
    }

    /// [`Self::read_back_chunk`] for consecutive chunks `first..` (`run`, adjacent in the
    /// image) in one read: small chunks (version 2) read back one by one would cost one
    /// device round trip each.
    pub fn read_back_run(
        &self,
        direct: Option<&File>,
        first: u32,
        run: &[payload::ChunkEntry],
        buf: &mut Vec<u8>,
    ) -> Result<ReadPath, InstallError> {
        let (Some(head), Some(tail)) = (run.first(), run.last()) else {
            return Ok(ReadPath::Buffered);
        };
        let at = self.slot.byte_offset() + head.image_offset;
        let len = (tail.image_offset + u64::from(tail.image_len) - head.image_offset) as usize;
        let slot_start = self.slot.byte_offset();
        let slot_end = slot_start + self.slot.byte_len();
        let err = || self.io_err(format!("reading back chunk {first} from"), at);
        let window = |align: u64| {
            let lo = at - at % align;
            let hi = (at + len as u64).div_ceil(align) * align;
            (lo >= slot_start && hi <= slot_end).then_some((lo, hi))
        };
        let (data, path): (&[u8], ReadPath) = match (direct, window(4096).or_else(|| window(512))) {
            (Some(f), Some((lo, hi))) => {
                let want = (hi - lo) as usize;
                buf.resize(want + 4096, 0);
                let skip = buf.as_ptr().align_offset(4096);
                let aligned = &mut buf[skip..skip + want];
                f.read_exact_at(aligned, lo).map_err(err())?;
                let from = skip + (at - lo) as usize;
                (&buf[from..from + len], ReadPath::Direct)
            }
            _ => {
                buf.resize(len, 0);
                self.file.read_exact_at(buf, at).map_err(err())?;
                (&buf[..len], ReadPath::Buffered)
            }
        };
        for (k, entry) in run.iter().enumerate() {
            let from = (entry.image_offset - head.image_offset) as usize;
            let found = Sha256Digest::of(&data[from..from + entry.image_len as usize]);
            if found != entry.sha256 {
                return Err(InstallError::ReadBackMismatch {
                    slot: self.slot.label.clone(),
                    index: first + k as u32,
                    offset: entry.image_offset,
                    expected: entry.sha256,
                    found,
                });
            }
        }
        Ok(path)
    }

    /// Opens the disk again for reads that bypass the page cache, if the OS allows it.
    pub fn open_direct(&self) -> Option<File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
            .open(self.disk)
            .ok()
    }

    /// Reads every chunk of the image back from the slot and checks it against the signed
    /// chunk table (the standalone form of the read-back [`install`] overlaps with writing).
    pub fn verify(&self, entries: &[payload::ChunkEntry]) -> Result<(), InstallError> {
        let direct = self.open_direct();
        let mut buf = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            self.read_back_chunk(direct.as_ref(), i as u32, e, &mut buf)?;
        }
        Ok(())
    }
}

/// Most bytes the read-back beside the stream reads in one request (consecutive chunks).
const READ_BACK_RUN: u64 = 1 << 20;

/// Stage 1 of an install: every check passed and nothing written. It holds the updater lock
/// (taken before the GPT is read, so the slots it judged are the slots it writes), the
/// verified payload prelude positioned at its first frame, and the refusal-free plan.
pub struct InstallPlan {
    device: DeviceSpec,
    opts: InstallOptions,
    _lock: Arc<UpdaterLock>,
    reader: ResumingReader,
    padded_device: bool,
    source_name: String,
    prelude: payload::VerifiedPrelude,
    target: Slot,
    target_name: String,
    booted_version: String,
    start: u32,
    booted: Slot,
    /// A checkpoint of this payload and slot was found: chunks past it may be written.
    resuming: bool,
    /// A checked patch from the booted version to this payload, and its bytes received.
    patch: Option<payload::patch::VerifiedPatch>,
    patch_fetched: u64,
}

/// Stage 2's result: the target slot holds the image, durable and read back; not flipped.
pub struct WrittenSlot {
    plan: InstallPlan,
    retries: u32,
    delta: bool,
    bytes_fetched: u64,
    stats: delta::DeltaStats,
    /// Image bytes from the patch, and its records that failed.
    patch_stats: (u64, u32),
}

fn read_err(source_name: &str, offset: u64) -> impl FnOnce(std::io::Error) -> InstallError {
    let source_name = source_name.to_owned();
    move |source| InstallError::Read {
        source_name,
        offset,
        source,
    }
}

/// Stage 1: takes the lock, reads the device's facts and the payload's prelude, and makes
/// every refusal (keys, boot state, slot geometry, signature, compatible, version, failed
/// versions, expiry, size) with the disk opened read-only. See the module doc.
pub fn plan(
    device: &DeviceSpec,
    source: Box<dyn Source>,
    opts: &InstallOptions,
) -> Result<InstallPlan, InstallError> {
    let lock = UpdaterLock::acquire(&device.lock_path(), "install", opts.lock_wait)?;
    plan_locked(device, source, opts, Arc::new(lock))
}

/// [`plan`] under a lock the caller already holds.
fn plan_locked(
    device: &DeviceSpec,
    source: Box<dyn Source>,
    opts: &InstallOptions,
    lock: Arc<UpdaterLock>,
) -> Result<InstallPlan, InstallError> {
    let keys = payload::load_trusted(
        &device.root,
        &crate::config::Settings::load(&device.root).keys,
    )?;
    let release = device.booted_release()?;
    let disk_err = |source| InstallError::Disk {
        path: device.disk.clone(),
        source,
    };
    let disk = SlotDisk::open(&device.disk, false, None).map_err(disk_err)?;
    crate::device::check_unique_partuuids(&disk, &device.disk)?;
    let booted = disk.slot(&device.booted).map_err(disk_err)?;
    let target = disk.other(&device.booted).map_err(disk_err)?;
    check_target_geometry(&booted, &target)?;
    device.refuse_mounted_usr(&target)?;
    let state = device.state();
    let boot_state = BootState::classify(&booted, &target, state.read(PENDING)?.into_option());
    if let Some(refusal) = boot_state.install_refusal() {
        if !opts.force {
            return Err(refusal.into());
        }
        log::warn!("{refusal} (forced)");
    }
    let target_name = slot_name(&target);

    // The signed part first: nothing of the payload is trusted before its signature.
    let source_name = source.describe();
    let padded_device = source.is_block_device();
    // The first request asks for the header, manifest and signatures only, the next one for
    // the chunk table the signed manifest announces; from there the install decides what to
    // read (every frame, or some by range), so the server never sends frames a delta drops.
    let mut reader = ResumingReader::new_planned(source, 0, Some(FIRST_REQUEST), opts.retry)
        .map_err(read_err(&source_name, 0))?;
    let prelude =
        payload::read_prelude_planned(&mut reader, &keys, |r, table| r.plan_until(table.end))
            .map_err(|e| match e {
                ReadError::Payload(p) => InstallError::Payload(p),
                ReadError::Io(io) => read_err(&source_name, reader.offset())(io),
            })?;
    let m = &prelude.manifest;
    if m.compatible != release.image_id {
        return Err(InstallError::WrongCompatible {
            payload: m.compatible.clone(),
            device: release.image_id,
        });
    }
    if !opts.allow_downgrade && compare_versions(&m.version, &release.version).is_le() {
        return Err(InstallError::NotNewer {
            payload: m.version.clone(),
            booted: release.version,
        });
    }
    if !opts.allow_failed {
        let failed = crate::history::History::new(state.clone()).failed()?;
        if let Some(f) = failed.refusal(&m.version) {
            return Err(InstallError::PreviouslyFailed {
                version: m.version.clone(),
                reason: f.reason.clone(),
            });
        }
    }
    if let Some(expires) = m.expires {
        if opts.now >= expires {
            return Err(InstallError::Expired {
                expires,
                now: opts.now,
            });
        }
    }
    if m.image_size > target.byte_len() {
        return Err(InstallError::TooLargeForSlot {
            image_size: m.image_size,
            slot: target.label.clone(),
            slot_size: target.byte_len(),
        });
    }

    // A publish-time patch from the booted version, when the publisher made one.
    let (patch, patch_fetched) = patch::find(
        &source_name,
        padded_device,
        &release.version,
        opts.retry,
        &keys,
        &prelude,
        booted.byte_len(),
    );

    // Resume only the same payload into the same slot, still unbootable since the checkpoint.
    let payload_id = prelude.payload_id().to_string();
    // A damaged checkpoint is kept aside and means starting over.
    let resume = match state
        .read::<InstallProgress>(INSTALL_PROGRESS)?
        .into_option()
    {
        Some(p)
            if p.payload_id == payload_id
                && p.slot_partuuid == target.partuuid.to_string()
                && p.chunk_count == m.chunk_count
                && p.next_chunk <= m.chunk_count
                && !target.attrs.is_bootable() =>
        {
            Some(p.next_chunk)
        }
        _ => None,
    };
    Ok(InstallPlan {
        device: device.clone(),
        opts: opts.clone(),
        _lock: lock,
        reader,
        padded_device,
        source_name,
        prelude,
        target,
        target_name,
        booted_version: release.version,
        start: resume.unwrap_or(0),
        booted,
        resuming: resume.is_some(),
        patch,
        patch_fetched,
    })
}

/// Refuses a target slot that is the booted one, whose byte range is empty or overflows, or
/// that touches the booted slot's range. bootctl already refuses a table whose entries
/// overlap; this is the install's own last word before it writes.
fn check_target_geometry(booted: &Slot, target: &Slot) -> Result<(), InstallError> {
    if target.number == booted.number {
        return Err(InstallError::TargetIsBooted {
            number: target.number,
        });
    }
    let bad = |why: String| InstallError::TargetGeometry {
        target: target.number,
        why,
    };
    let t = target.byte_range().map_err(|e| bad(e.to_string()))?;
    if t.is_empty() {
        return Err(bad("its byte range is empty".into()));
    }
    if target.overlaps(booted) {
        return Err(bad(format!(
            "bytes {}..{} overlap the booted partition {} (LBAs {}..={})",
            t.start, t.end, booted.number, booted.first_lba, booted.last_lba
        )));
    }
    Ok(())
}

impl InstallPlan {
    /// The verified manifest.
    pub fn manifest(&self) -> &payload::Manifest {
        &self.prelude.manifest
    }

    /// The verified payload prelude (signed manifest, signer, chunk table).
    pub fn prelude(&self) -> &payload::VerifiedPrelude {
        &self.prelude
    }

    /// The slot to be written.
    pub fn target(&self) -> &Slot {
        &self.target
    }

    /// The chunk the write starts at (0 unless resuming).
    pub fn start_chunk(&self) -> u32 {
        self.start
    }

    /// Stage 2: records the checkpoint, makes the target unbootable (the first write to the
    /// disk, after the state directory proved writable), streams every chunk verified into
    /// it with durable checkpoints, and reads the whole image back from the device.
    pub fn write(mut self, progress: &mut dyn Progress) -> Result<WrittenSlot, InstallError> {
        progress.phase("verified", 0);
        let device = self.device.clone();
        let state = device.state();
        let disk_err = |source| InstallError::Disk {
            path: device.disk.clone(),
            source,
        };
        let m = &self.prelude.manifest;
        let payload_id = self.prelude.payload_id().to_string();
        let partuuid = self.target.partuuid.to_string();
        let checkpoint = |next_chunk: u32| InstallProgress {
            format_version: crate::state::STATE_FORMAT_VERSION,
            payload_id: payload_id.clone(),
            slot_partuuid: partuuid.clone(),
            version: m.version.clone(),
            next_chunk,
            chunk_count: m.chunk_count,
        };
        let mut start = self.start;

        // The first writes: state (so an unwritable state directory stops us before the disk
        // is touched), then the target stops being bootable.
        state.store(INSTALL_PROGRESS, &checkpoint(start))?;
        state.remove(PENDING)?;
        let mut disk = SlotDisk::open(&device.disk, true, None).map_err(disk_err)?;
        disk.mark_bad(&SlotId::Number(self.target.number))
            .map_err(disk_err)?;
        drop(disk);

        // Stream: read → decode and verify (all cores) → write, checkpointing as we go.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&device.disk)
            .map_err(|source| InstallError::SlotIo {
                action: "opening".into(),
                slot: self.target.label.clone(),
                disk: device.disk.clone(),
                offset: 0,
                source,
            })?;
        let writer = SlotWriter::new(&file, &device.disk, &self.target);
        let entries = &self.prelude.chunks.entries;
        // Frames that reference the bytes before them: after an interruption, the decoder
        // first reads those back from the target (checked; a damaged chunk moves `start` back).
        let mut decoder =
            payload::ChunkDecoder::for_manifest(m).map_err(|source| InstallError::SlotIo {
                action: "creating a zstd decoder for".into(),
                slot: self.target.label.clone(),
                disk: device.disk.clone(),
                offset: 0,
                source,
            })?;
        start = resume::prime(
            &mut decoder,
            m.prefix_len,
            &file,
            self.target.byte_offset(),
            entries,
            start,
        )
        .map_err(|source| InstallError::SlotIo {
            action: "reading back the chunks before the resume point from".into(),
            slot: self.target.label.clone(),
            disk: device.disk.clone(),
            offset: self.target.byte_offset(),
            source,
        })?;
        // A crash after the last checkpoint leaves nothing to stream: resume at the payload end
        // and go on to the read-back (found by the crash-point sweep, tests/crashpoints.rs).
        let resume_image_offset = entries
            .get(start as usize)
            .map_or(m.image_size, |e| e.image_offset);
        let source_name = self.source_name.clone();
        // A format 2 payload: index the booted slot and plan which chunks to fetch.
        let mut patched = None;
        let delta_plan = match m.cdc {
            Some(params) if (start as usize) < entries.len() => {
                progress.phase("indexing", 0);
                let index_of = |slot: &Slot, keep_last: bool| {
                    let build = |len| {
                        delta::LocalIndex::build_slot(
                            &file,
                            slot.byte_offset(),
                            len,
                            params,
                            self.opts.threads,
                            keep_last,
                        )
                        .map_err(|source| InstallError::SlotIo {
                            action: "indexing".into(),
                            slot: slot.label.clone(),
                            disk: device.disk.clone(),
                            offset: slot.byte_offset(),
                            source,
                        })
                    };
                    // A slot whose start shares no chunk with the payload (empty, or another
                    // product) is not read further: indexing it all would only find that a
                    // full download is needed.
                    let probe = build(slot.byte_len().min(delta::INDEX_PROBE_BYTES))?;
                    if probe.shares_none_with(&entries[start as usize..]) {
                        log::info!(
                            "slot {}: its first {} bytes share no chunk with the payload; not indexed further",
                            slot.label,
                            slot.byte_len().min(delta::INDEX_PROBE_BYTES)
                        );
                        return Ok(probe);
                    }
                    build(slot.byte_len())
                };
                let index = index_of(&self.booted, false)?;
                let mut p = delta::plan(entries, start as usize, &index);
                // The target slot often still holds an older release: chunks the booted slot
                // lacks may be there, at or after where they go (delta::target_source_is_safe).
                if !p.ranges.is_empty() {
                    let target_index = index_of(&self.target, true)?;
                    p = delta::plan_with_target(
                        entries,
                        start as usize,
                        &index,
                        Some(&target_index),
                    );
                }
                if let Some(patch) = self.patch.take() {
                    let booted = (&file, self.booted.byte_offset());
                    patched = Some(patch::Patched::attach(
                        patch,
                        &mut p,
                        entries,
                        start as usize,
                        booted,
                    ));
                }
                log::info!(
                    "delta plan: {} bytes to fetch in {} ranges, {} bytes to reuse from the booted slot, {} from the target slot{}",
                    p.fetch_bytes,
                    p.ranges.len(),
                    p.reuse_bytes,
                    p.reuse_target_bytes,
                    if p.full_download {
                        "; a full download is cheaper"
                    } else {
                        ""
                    }
                );
                if !p.full_download {
                    progress.delta(p.fetch_bytes, p.reuse_bytes, p.reuse_target_bytes);
                }
                Some(p).filter(|p| !p.full_download)
            }
            _ => None,
        };
        let slots = delta::Slots {
            booted: (&file, self.booted.byte_offset()),
            target: (&file, self.target.byte_offset()),
            resuming: self.resuming,
            patch: patched.as_ref(),
        };
        let mut stats = delta::DeltaStats::default();
        let booted_label = self.booted.label.clone();
        progress.phase("writing", m.image_size);
        let mut since_checkpoint = 0u64;
        let mut done = resume_image_offset;
        progress.advance(done);
        // The read-back runs beside the stream: a verifier thread reads each chunk back from
        // the device once a checkpoint's fsync has made it clean (chunks of an earlier,
        // interrupted run first), so its reads never wait for writeback while later chunks
        // decode.
        let direct = writer.open_direct();
        let (written_tx, written_rx) = std::sync::mpsc::channel::<u32>();
        for i in 0..start {
            written_tx.send(i).expect("receiver alive");
        }
        let mut unsynced: Vec<u32> = Vec::new();
        let abort = std::sync::atomic::AtomicBool::new(false);
        let padded_device = self.padded_device;
        let reader = &mut self.reader;
        let opts = &self.opts;
        let (streamed, read_back) = std::thread::scope(|s| {
            let verifier = s.spawn(|| -> Result<(), InstallError> {
                let written_rx = written_rx;
                let mut buf = Vec::new();
                // Indices arrive in order, a checkpoint's worth at a time: consecutive ones are
                // read back together, up to READ_BACK_RUN bytes.
                let mut run: Option<(u32, u32, u64)> = None; // (first, end, bytes)
                let flush = |run: (u32, u32, u64), buf: &mut Vec<u8>| {
                    let (first, end, _) = run;
                    let entries = &entries[first as usize..end as usize];
                    writer.read_back_run(direct.as_ref(), first, entries, buf)
                };
                loop {
                    let next = match run {
                        Some(_) => written_rx.try_recv().ok(),
                        None => written_rx.recv().ok(),
                    };
                    if abort.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let Some(i) = next else {
                        // Nothing more right now (or ever): read back what is gathered.
                        match run.take() {
                            Some(r) => flush(r, &mut buf)?,
                            None => break,
                        };
                        continue;
                    };
                    let len = u64::from(entries[i as usize].image_len);
                    run = match run {
                        Some((first, end, bytes)) if end == i && bytes + len <= READ_BACK_RUN => {
                            Some((first, i + 1, bytes + len))
                        }
                        Some(r) => {
                            flush(r, &mut buf)?;
                            Some((i, i + 1, len))
                        }
                        None => Some((i, i + 1, len)),
                    };
                }
                Ok(())
            });
            // A run of consecutive chunks `first..` (their bytes one after the other in `data`).
            let mut put = |first: u32,
                           run: &[payload::ChunkEntry],
                           data: Option<&[u8]>|
             -> Result<(), InstallError> {
                let Some(head) = run.first() else {
                    return Ok(());
                };
                // `None`: already in place from an interrupted run (checked by hash).
                if let Some(data) = data {
                    writer.write_chunk(first, head.image_offset, data)?;
                }
                // Checkpoints fall where they would chunk by chunk (`--checkpoint-bytes`); a
                // sync inside the run also makes the rest of it durable, which is not recorded.
                for (k, e) in run.iter().enumerate() {
                    let index = first + k as u32;
                    unsynced.push(index);
                    since_checkpoint += u64::from(e.image_len);
                    done += u64::from(e.image_len);
                    if since_checkpoint >= opts.checkpoint_bytes {
                        progress.advance(done);
                        writer.sync()?;
                        state.store(INSTALL_PROGRESS, &checkpoint(index + 1))?;
                        since_checkpoint = 0;
                        for i in unsynced.drain(..) {
                            let _ = written_tx.send(i);
                        }
                    }
                }
                progress.advance(done);
                Ok(())
            };
            // By delta: chunks from the booted slot and frames by range; then, or instead, the
            // payload streamed from the frame of chunk `from` on.
            let full_from: Result<Option<u32>, pipeline::PipelineError<InstallError>> =
                match &delta_plan {
                    None => Ok(Some(start)),
                    Some(dp) => {
                        match delta::apply(
                            entries,
                            start,
                            dp,
                            &slots,
                            reader,
                            &mut decoder,
                            &mut stats,
                            &mut |index, e, data| put(index, std::slice::from_ref(e), data),
                        ) {
                            Ok(delta::Applied::Done) => Ok(None),
                            Ok(delta::Applied::RangesIgnored(from)) => {
                                stats.ranges_ignored = true;
                                log::warn!(
                                    "{source_name} ignores range requests: downloading the payload whole"
                                );
                                Ok(Some(from))
                            }
                            Err(delta::ApplyError::Payload(p)) => {
                                Err(pipeline::PipelineError::Payload(p))
                            }
                            Err(delta::ApplyError::Read { offset, source }) => {
                                Err(pipeline::PipelineError::Read { offset, source })
                            }
                            Err(delta::ApplyError::Local { offset, source }) => {
                                Err(pipeline::PipelineError::Sink(InstallError::SlotIo {
                                    action: "reading a local chunk from".into(),
                                    slot: booted_label.clone(),
                                    disk: device.disk.clone(),
                                    offset,
                                    source,
                                }))
                            }
                            Err(delta::ApplyError::Sink(e)) => {
                                Err(pipeline::PipelineError::Sink(e))
                            }
                        }
                    }
                };
            let streamed = full_from.and_then(|from| {
                let Some(from) = from else { return Ok(()) };
                let from_offset = entries
                    .get(from as usize)
                    .map_or(self.prelude.chunks.payload_end(), |e| e.payload_offset);
                let read = |offset| {
                    move |source| pipeline::PipelineError::<InstallError>::Read { offset, source }
                };
                if delta_plan.is_none() {
                    reader.seek_to(from_offset).map_err(read(from_offset))?;
                } else {
                    // After a range the server ignored: the whole payload, skipped up to `from`.
                    reader.seek_to(0).map_err(read(0))?;
                    let skipped = std::io::copy(
                        &mut std::io::Read::take(&mut *reader, from_offset),
                        &mut std::io::sink(),
                    )
                    .map_err(read(0))?;
                    if skipped != from_offset {
                        return Err(read(skipped)(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                let mut sink = |first: u32, run: &[payload::ChunkEntry], data: &[u8]| {
                    put(first, run, Some(data))
                };
                // A block device ends on a sector boundary: read it up to the payload's end only.
                if padded_device {
                    let left = self
                        .prelude
                        .chunks
                        .payload_end()
                        .saturating_sub(from_offset);
                    let mut payload_only = std::io::Read::take(&mut *reader, left);
                    pipeline::run(
                        &mut payload_only,
                        entries,
                        from,
                        m.chunk_size,
                        opts.threads,
                        decoder,
                        &mut sink,
                    )
                } else {
                    pipeline::run(
                        &mut *reader,
                        entries,
                        from,
                        m.chunk_size,
                        opts.threads,
                        decoder,
                        &mut sink,
                    )
                }
            });
            let streamed = streamed.and_then(|()| {
                // The tail: durable, then to the verifier like the rest.
                writer.sync().map_err(pipeline::PipelineError::Sink)?;
                for i in unsynced.drain(..) {
                    let _ = written_tx.send(i);
                }
                Ok(())
            });
            drop(written_tx);
            if streamed.is_err() {
                // Chunks gathered for writing are verified: write them, so a rerun finds them
                // in place (a failure here only costs that).
                let _ = writer.write_pending();
                abort.store(true, std::sync::atomic::Ordering::Relaxed);
            } else {
                progress.phase("reading back", m.image_size);
            }
            let read_back = verifier.join().expect("read-back thread panicked");
            (streamed, read_back)
        });
        match streamed {
            Ok(()) => {}
            Err(pipeline::PipelineError::Payload(p)) => return Err(p.into()),
            Err(pipeline::PipelineError::Read { offset, source }) => {
                return Err(read_err(&source_name, offset)(source))
            }
            Err(pipeline::PipelineError::Sink(e)) => return Err(e),
        }
        // Every chunk was made durable, read back from the device and verified.
        if let Err(e) = read_back {
            // What is on the slot is wrong: the next attempt starts over.
            state.remove(INSTALL_PROGRESS)?;
            return Err(e);
        }
        progress.advance(m.image_size);
        writer.sync()?;
        let retries = self.reader.retries;
        let bytes_fetched = self.reader.received();
        let patch_stats = patched
            .as_ref()
            .map_or((0, 0), |p| (p.bytes_from_patch(), p.failed_records()));
        Ok(WrittenSlot {
            patch_stats,
            delta: delta_plan.is_some(),
            plan: self,
            retries,
            bytes_fetched,
            stats,
        })
    }
}

impl WrittenSlot {
    /// Stage 3: records the pending install, then flips the slot to boot next (the last
    /// write), then drops the checkpoint. The record goes first so that a flip is never on
    /// disk without it: a slot that then never comes up is recorded as failed by name.
    pub fn finish(self, progress: &mut dyn Progress) -> Result<InstallReport, InstallError> {
        let p = &self.plan;
        let device = &p.device;
        let state = device.state();
        let m = &p.prelude.manifest;
        let payload_id = p.prelude.payload_id().to_string();
        let partuuid = p.target.partuuid.to_string();
        state.store(
            PENDING,
            &PendingInstall {
                format_version: crate::state::STATE_FORMAT_VERSION,
                slot: p.target_name.clone(),
                slot_partuuid: partuuid.clone(),
                version: m.version.clone(),
                payload_id: payload_id.clone(),
                flipped: p.opts.flip,
            },
        )?;
        if p.opts.flip {
            let mut disk =
                SlotDisk::open(&device.disk, true, None).map_err(|source| InstallError::Disk {
                    path: device.disk.clone(),
                    source,
                })?;
            disk.set_next(&SlotId::Number(p.target.number), p.opts.tries)
                .map_err(|source| InstallError::Disk {
                    path: device.disk.clone(),
                    source,
                })?;
            progress.phase("flipped", 0);
        }
        state.remove(INSTALL_PROGRESS)?;
        Ok(InstallReport {
            slot: p.target_name.clone(),
            partuuid,
            version: m.version.clone(),
            booted_version: p.booted_version.clone(),
            payload_id,
            signed_by: KeyId::to_string(&p.prelude.signed_by),
            image_size: m.image_size,
            resumed_from_chunk: p.start,
            chunk_count: m.chunk_count,
            retries: self.retries,
            flipped: p.opts.flip,
            delta: self.delta,
            bytes_fetched: self.bytes_fetched,
            bytes_reused: self.stats.reused_bytes,
            bytes_reused_from_target: self.stats.reused_from_target_bytes,
            bytes_in_place: self.stats.in_place_bytes,
            damaged_local_chunks: self.stats.damaged_local_chunks,
            ranges_ignored: self.stats.ranges_ignored,
            bytes_from_patch: self.patch_stats.0,
            patch_bytes_fetched: p.patch_fetched,
            patch_failed_records: self.patch_stats.1,
        })
    }
}

/// Times an install starts over because the payload changed on the server mid-download.
pub const MAX_PAYLOAD_CHANGES: u32 = 2;

/// Installs the payload from `source` into the passive slot of `device`: [`plan`], then
/// [`InstallPlan::write`], then [`WrittenSlot::finish`], all under one hold of the lock. See
/// the module doc.
///
/// When the payload is replaced on the server during the download
/// ([`crate::source::SourceError::PayloadChanged`]), the install starts over from the prelude
/// with the new payload, at most [`MAX_PAYLOAD_CHANGES`] times: every check runs again on it,
/// and the old payload's checkpoint no longer matches, so nothing of the old one is kept (the
/// slot stays unbootable until the new image is verified).
pub fn install(
    device: &DeviceSpec,
    source: Box<dyn Source>,
    opts: &InstallOptions,
    progress: &mut dyn Progress,
) -> Result<InstallReport, InstallError> {
    let lock = Arc::new(UpdaterLock::acquire(
        &device.lock_path(),
        "install",
        opts.lock_wait,
    )?);
    let mut source = SharedSource::new(source);
    let mut changes = 0;
    loop {
        let attempt = plan_locked(device, Box::new(source.clone()), opts, lock.clone())
            .and_then(|plan| plan.write(progress))
            .and_then(|written| written.finish(progress));
        match attempt {
            Err(InstallError::Read { source: e, .. })
                if changes < MAX_PAYLOAD_CHANGES && is_payload_changed(&e) =>
            {
                changes += 1;
                source.start_over();
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootctl::{Guid, SlotAttrs};

    /// A 64 KiB slot starting 8 KiB into a 128 KiB file.
    fn setup() -> (tempfile::NamedTempFile, Slot) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(128 << 10).unwrap();
        let slot = Slot {
            number: 4,
            label: "USR-B".into(),
            partuuid: Guid::NIL,
            first_lba: 16,
            last_lba: 16 + 128 - 1,
            sector_size: 512,
            attrs: SlotAttrs::default(),
            attributes: 0,
        };
        (f, slot)
    }

    fn entry(index: u64, data: &[u8]) -> payload::ChunkEntry {
        payload::ChunkEntry {
            image_offset: index * 4096,
            payload_offset: 0,
            image_len: data.len() as u32,
            frame_len: 1,
            sha256: Sha256Digest::of(data),
        }
    }

    #[test]
    fn a_target_touching_the_booted_range_is_refused_and_an_adjacent_one_is_not() {
        let booted = Slot {
            number: 3,
            label: "USR-A".into(),
            first_lba: 100,
            last_lba: 199,
            ..setup().1
        };
        let at = |first_lba, last_lba| Slot {
            first_lba,
            last_lba,
            ..setup().1
        };
        assert!(check_target_geometry(&booted, &at(200, 299)).is_ok());
        assert!(check_target_geometry(&booted, &at(0, 99)).is_ok());
        for (first, last) in [(199, 299), (0, 100), (150, 160), (0, 1000)] {
            let e = check_target_geometry(&booted, &at(first, last)).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!(
                    "refusing to write partition 4: bytes {}..{} overlap the booted partition 3",
                    first * 512,
                    (last + 1) * 512
                )),
                "{first}..={last}: {e}"
            );
        }
        assert!(matches!(
            check_target_geometry(&booted, &at(300, 299)),
            Err(InstallError::TargetGeometry { .. })
        ));
        assert!(matches!(
            check_target_geometry(&booted, &booted),
            Err(InstallError::TargetIsBooted { number: 3 })
        ));
    }

    #[test]
    fn slot_writer_writes_at_the_slot_offset_and_nowhere_else() {
        let (f, slot) = setup();
        let w = SlotWriter::new(f.as_file(), f.path(), &slot);
        w.write_chunk(0, 4096, &[7u8; 4096]).unwrap();
        w.sync().unwrap();
        let all = std::fs::read(f.path()).unwrap();
        assert!(all[..8192 + 4096].iter().all(|&b| b == 0));
        assert!(all[8192 + 4096..8192 + 8192].iter().all(|&b| b == 7));
        assert!(all[8192 + 8192..].iter().all(|&b| b == 0));
    }

    #[test]
    fn slot_writer_refuses_a_chunk_past_the_slot_end() {
        let (f, slot) = setup();
        let w = SlotWriter::new(f.as_file(), f.path(), &slot);
        let err = w.write_chunk(16, 64 << 10, &[1u8; 1]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "writing chunk 16 past the end of slot USR-B of {} at offset {}",
                f.path().display(),
                8192 + (64 << 10)
            )
        );
        assert!(std::fs::read(f.path()).unwrap().iter().all(|&b| b == 0));
    }

    /// A zeroed disk file of `len` bytes on the build's filesystem (in a directory removed
    /// with the returned guard): unlike tmpfs it takes `O_DIRECT` and drops clean pages.
    fn disk_on_build_fs(len: u64) -> (tempfile::TempDir, std::path::PathBuf, File) {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("disk.img");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(len).unwrap();
        (dir, path, f)
    }

    /// Issue 14 defect 12: a slot at an offset that is a multiple of 512 but not of 4096 is
    /// read back around the page cache too. (The test file lives on the build's filesystem,
    /// which takes `O_DIRECT`; tmpfs does not.)
    #[test]
    fn read_back_bypasses_the_page_cache_for_a_slot_not_on_a_4k_boundary() {
        let (_dir, path, f) = disk_on_build_fs(256 << 10);
        let slot = Slot {
            first_lba: 17,
            last_lba: 17 + 256 - 1,
            ..setup().1
        };
        assert_ne!(slot.byte_offset() % 4096, 0);
        let w = SlotWriter::new(&f, &path, &slot);
        let direct = w
            .open_direct()
            .expect("the build filesystem takes O_DIRECT");
        let mut buf = Vec::new();
        for i in 0..4u8 {
            let data = vec![i + 1; 4096 - 100 * usize::from(i)];
            w.write_chunk(u32::from(i), u64::from(i) * 4096, &data)
                .unwrap();
            w.sync().unwrap();
            let e = entry(u64::from(i), &data);
            assert_eq!(
                w.read_back_chunk(Some(&direct), u32::from(i), &e, &mut buf)
                    .unwrap(),
                ReadPath::Direct,
                "chunk {i}"
            );
        }
        // The last chunk of the slot: the 4 KiB window would leave it, sectors do not.
        let last = 256 * 512 - 4096 + 512;
        let data = vec![9u8; 4096 - 512];
        w.write_chunk(9, last, &data).unwrap();
        w.sync().unwrap();
        let e = payload::ChunkEntry {
            image_offset: last,
            ..entry(0, &data)
        };
        assert_eq!(
            w.read_back_chunk(Some(&direct), 9, &e, &mut buf).unwrap(),
            ReadPath::Direct
        );
    }

    /// Bytes of `file`'s `range` (page-aligned) the page cache holds: `mincore` over a
    /// mapping, which itself reads nothing in.
    fn resident(file: &File, range: std::ops::Range<u64>) -> u64 {
        use nix::libc;
        let len = (range.end - range.start) as usize;
        let mut pages = vec![0u8; len.div_ceil(4096)];
        // SAFETY: a fresh read-only mapping of the file, unmapped before returning; `pages`
        // has one byte per page of it, as mincore needs.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                range.start as libc::off_t,
            );
            assert_ne!(at, libc::MAP_FAILED, "mmap");
            assert_eq!(libc::mincore(at, len, pages.as_mut_ptr()), 0, "mincore");
            libc::munmap(at, len);
        }
        pages.iter().filter(|&&p| p & 1 == 1).count() as u64 * 4096
    }

    /// A page cache full of the image makes later writes reclaim pages first and the direct
    /// read-back write out or drop cached pages first (each twice as slow in the full-install
    /// benchmark): synced bytes leave it. Bytes outside the slot (here a booted slot after
    /// it) stay cached; an advice of length 0 once meant "to the end of the file".
    #[test]
    fn synced_slot_bytes_leave_the_page_cache_and_bytes_after_the_slot_stay() {
        let (_dir, path, f) = disk_on_build_fs(4 << 20);
        let after = (3 << 20)..(4 << 20);
        f.write_all_at(&vec![5u8; 1 << 20], after.start).unwrap();
        f.sync_data().unwrap();
        assert_eq!(
            resident(&f, after.clone()),
            1 << 20,
            "a written file is cached"
        );
        // The slot: bytes 1 MiB..3 MiB.
        let slot = Slot {
            first_lba: 2048,
            last_lba: 2048 + 4096 - 1,
            ..setup().1
        };
        let w = SlotWriter::new(&f, &path, &slot);
        for i in 0..64u32 {
            w.write_chunk(i, u64::from(i) * (16 << 10), &[i as u8; 16 << 10])
                .unwrap();
        }
        w.write_chunk(64, 1 << 20, &vec![1u8; 1 << 20]).unwrap();
        w.sync().unwrap();
        assert_eq!(resident(&f, (1 << 20)..(3 << 20)), 0);
        assert_eq!(resident(&f, after), 1 << 20);
    }

    #[test]
    fn read_back_finds_one_changed_byte_on_the_slot() {
        let (f, slot) = setup();
        let w = SlotWriter::new(f.as_file(), f.path(), &slot);
        let chunks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; 4096]).collect();
        let entries: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| entry(i as u64, c))
            .collect();
        for (i, c) in chunks.iter().enumerate() {
            w.write_chunk(i as u32, i as u64 * 4096, c).unwrap();
        }
        w.sync().unwrap();
        w.verify(&entries).unwrap();
        f.as_file()
            .write_all_at(&[0xff], 8192 + 2 * 4096 + 100)
            .unwrap();
        let mut changed = chunks[2].clone();
        changed[100] = 0xff;
        let err = w.verify(&entries).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "read-back of slot USR-B: chunk 2 at image offset 8192: SHA-256 is {}, expected {}",
                Sha256Digest::of(&changed),
                entries[2].sha256
            )
        );
    }
}
