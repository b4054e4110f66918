//! `updater install`: put a signed payload into the passive slot and make it the next boot.
//!
//! The order is the contract (DESIGN §5–6, issue 3):
//!
//! 1. parse the payload prelude with every length bounds-checked, verify its signature
//!    against the trusted keys, check the chunk table against the signed manifest;
//! 2. check `compatible` against the booted `IMAGE_ID`, the version against the booted
//!    `IMAGE_VERSION` (strictly newer unless downgrades are allowed), the expiry, and the image
//!    size against the passive slot — nothing has been written yet;
//! 3. mark the passive slot unbootable (the first write);
//! 4. stream the frames through [`pipeline`]: each chunk decoded with a capped window and
//!    verified before [`SlotWriter`] writes it; checkpoints ([`crate::state::InstallProgress`])
//!    after fsyncs let a later run resume;
//! 5. read every chunk of the image back from the device (`O_DIRECT`, beside the stream, so
//!    it costs little time) and verify it again, then fsync;
//! 6. flip: the passive slot becomes the next boot with `tries` attempts (unless `flip` is off).
//!
//! The booted slot is never opened for writing: [`SlotWriter`] only covers the passive slot and
//! refuses any range outside it.

pub mod pipeline;

use crate::payload::{self, KeyId, PayloadError, ReadError, Sha256Digest, TrustedKeys};
use crate::source::{ResumingReader, RetryPolicy, Source};
use crate::state::{InstallProgress, PendingInstall, StateDir, StateError};
use crate::version::compare_versions;
use bootctl::{Slot, SlotDisk, SlotId};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The device an install works on: its disk, the booted slot, and its root directory.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// The disk (block device or disk-image file) holding both slots.
    pub disk: PathBuf,
    /// The booted slot (never written).
    pub booted: SlotId,
    /// The device's `/`: keys, the booted os-release and state live under it.
    pub root: PathBuf,
}

impl DeviceSpec {
    /// The key directories: `ROOT/usr/lib/updater/keys.d` then `ROOT/etc/updater/keys.d`.
    pub fn key_dirs(&self) -> Vec<PathBuf> {
        vec![
            self.root.join("usr/lib/updater/keys.d"),
            self.root.join("etc/updater/keys.d"),
        ]
    }

    /// The booted image's os-release: `ROOT/usr/lib/os-release`.
    pub fn os_release(&self) -> PathBuf {
        self.root.join("usr/lib/os-release")
    }
}

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
}

/// What an install did.
#[derive(Debug, Clone, serde::Serialize)]
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
}

/// Why an install stopped. Everything up to [`InstallError::TooLargeForSlot`] happens before the
/// first write; after that the passive slot is left unbootable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// A key file is bad.
    #[error(transparent)]
    Keys(#[from] payload::KeyError),
    /// No trusted key is installed.
    #[error("no trusted keys: no *.pub file in {dirs}")]
    NoTrustedKeys {
        /// The directories searched.
        dirs: String,
    },
    /// The booted os-release cannot be read or lacks a field.
    #[error("reading {field} from the booted os-release {path}: {reason}")]
    BootedRelease {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
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
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&mut self, _: &'static str, _: u64) {}
    fn advance(&mut self, _: u64) {}
}

/// Writes into one slot of a disk and nowhere else: offsets are relative to the slot, and a
/// write past its end is refused before it reaches the disk.
pub struct SlotWriter<'a> {
    file: &'a File,
    disk: &'a Path,
    slot: &'a Slot,
}

impl<'a> SlotWriter<'a> {
    /// A writer for `slot` of `disk`, opened as `file`.
    pub fn new(file: &'a File, disk: &'a Path, slot: &'a Slot) -> SlotWriter<'a> {
        SlotWriter { file, disk, slot }
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

    /// Writes chunk `index` at `offset` bytes into the slot.
    pub fn write_chunk(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), InstallError> {
        let at = self.slot.byte_offset() + offset;
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > self.slot.byte_len()) {
            return Err(self
                .io_err(format!("writing chunk {index} past the end of"), at)(
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "outside the slot"),
            ));
        }
        self.file
            .write_all_at(data, at)
            .map_err(self.io_err(format!("writing chunk {index} to"), at))?;
        // Start writing the chunk out now (DONTNEED on dirty pages starts asynchronous
        // writeback), so the device works while later chunks decode and the final fsync only
        // waits for the tail; it also keeps the page cache from filling with the image.
        self.advise_dontneed(at, data.len() as u64);
        Ok(())
    }

    fn advise_dontneed(&self, at: u64, len: u64) {
        // Advisory: failure only costs speed, or lets a read-back come from the page cache.
        let _ = nix::fcntl::posix_fadvise(
            self.file.as_raw_fd(),
            at as i64,
            len as i64,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }

    /// Flushes written data to the device.
    pub fn sync(&self) -> Result<(), InstallError> {
        self.file
            .sync_data()
            .map_err(self.io_err("syncing".into(), self.slot.byte_offset()))
    }

    /// Reads chunk `index` back from the slot into `buf` and checks it against `entry`.
    ///
    /// With a direct handle (`O_DIRECT`) the read comes from the device: the kernel first
    /// writes out any dirty page of the range, then reads around the page cache. Without one
    /// (filesystems that refuse `O_DIRECT`, such as tmpfs) the read is buffered.
    pub fn read_back_chunk(
        &self,
        direct: Option<&File>,
        index: u32,
        entry: &payload::ChunkEntry,
        buf: &mut Vec<u8>,
    ) -> Result<(), InstallError> {
        let at = self.slot.byte_offset() + entry.image_offset;
        let len = entry.image_len as usize;
        let slot_end = self.slot.byte_offset() + self.slot.byte_len();
        let round = |n: usize, to: usize| n.div_ceil(to) * to;
        let err = || self.io_err(format!("reading back chunk {index} from"), at);
        let data: &[u8] = match direct {
            Some(f) if at.is_multiple_of(u64::from(payload::CHUNK_ALIGN)) => {
                // Whole 4 KiB blocks when they stay inside the slot, else whole sectors.
                let mut want = round(len, 4096);
                if at + want as u64 > slot_end {
                    want = round(len, 512);
                }
                buf.resize(want + 4096, 0);
                let skip = buf.as_ptr().align_offset(4096);
                let aligned = &mut buf[skip..skip + want];
                f.read_exact_at(aligned, at).map_err(err())?;
                &buf[skip..skip + len]
            }
            _ => {
                buf.resize(len, 0);
                self.file.read_exact_at(buf, at).map_err(err())?;
                &buf[..len]
            }
        };
        let found = Sha256Digest::of(data);
        if found != entry.sha256 {
            return Err(InstallError::ReadBackMismatch {
                slot: self.slot.label.clone(),
                index,
                offset: entry.image_offset,
                expected: entry.sha256,
                found,
            });
        }
        Ok(())
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

fn slot_name(disk: &SlotDisk, slot: &Slot) -> String {
    for id in [SlotId::A, SlotId::B] {
        if disk.slot(&id).is_ok_and(|s| s.number == slot.number) {
            return id.to_string();
        }
    }
    slot.number.to_string()
}

fn booted_release(device: &DeviceSpec) -> Result<(String, String), InstallError> {
    let path = device.os_release();
    let err = |field, reason: String| InstallError::BootedRelease {
        path: path.clone(),
        field,
        reason,
    };
    let len = std::fs::metadata(&path)
        .map_err(|e| err("IMAGE_ID", e.to_string()))?
        .len();
    if len > crate::osrelease::MAX_OS_RELEASE_LEN {
        return Err(err("IMAGE_ID", format!("file is {len} bytes")));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| err("IMAGE_ID", e.to_string()))?;
    let r = crate::osrelease::OsRelease::parse(&text);
    let id = r
        .get("IMAGE_ID")
        .ok_or_else(|| err("IMAGE_ID", "not set".into()))?;
    let version = r
        .get("IMAGE_VERSION")
        .ok_or_else(|| err("IMAGE_VERSION", "not set".into()))?;
    Ok((id.to_owned(), version.to_owned()))
}

/// Installs the payload from `source` into the passive slot of `device`. See the module doc
/// for the order of checks and writes.
pub fn install(
    device: &DeviceSpec,
    source: Box<dyn Source>,
    opts: &InstallOptions,
    progress: &mut dyn Progress,
) -> Result<InstallReport, InstallError> {
    let keys = TrustedKeys::load_dirs(&device.key_dirs())?;
    if keys.is_empty() {
        return Err(InstallError::NoTrustedKeys {
            dirs: device
                .key_dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let (booted_id, booted_version) = booted_release(device)?;
    let disk_err = |source| InstallError::Disk {
        path: device.disk.clone(),
        source,
    };
    let mut disk = SlotDisk::open(&device.disk, true, None).map_err(disk_err)?;
    let booted = disk.slot(&device.booted).map_err(disk_err)?;
    let target = disk.other(&device.booted).map_err(disk_err)?;
    if target.number == booted.number {
        return Err(InstallError::TargetIsBooted {
            number: target.number,
        });
    }
    let target_name = slot_name(&disk, &target);

    // 1. Parse, verify the signature, check the chunk table.
    let source_name = source.describe();
    let read_err = |offset: u64| {
        let source_name = source_name.clone();
        move |source| InstallError::Read {
            source_name,
            offset,
            source,
        }
    };
    let padded_device = source.is_block_device();
    let mut reader = ResumingReader::new(source, 0, opts.retry).map_err(read_err(0))?;
    let prelude = payload::read_prelude(&mut reader, &keys).map_err(|e| match e {
        ReadError::Payload(p) => InstallError::Payload(p),
        ReadError::Io(io) => read_err(reader.offset())(io),
    })?;
    let m = &prelude.manifest;

    // 2. Is it for us, newer, current, and does it fit?
    if m.compatible != booted_id {
        return Err(InstallError::WrongCompatible {
            payload: m.compatible.clone(),
            device: booted_id,
        });
    }
    if !opts.allow_downgrade && compare_versions(&m.version, &booted_version).is_le() {
        return Err(InstallError::NotNewer {
            payload: m.version.clone(),
            booted: booted_version,
        });
    }
    if !opts.allow_failed {
        let failed = crate::history::History::new(StateDir::under_root(&device.root)).failed()?;
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
    progress.phase("verified", 0);

    // Resume only the same payload into the same slot, still unbootable since the checkpoint.
    let state = StateDir::under_root(&device.root);
    let payload_id = prelude.payload_id().to_string();
    let partuuid = target.partuuid.to_string();
    // A damaged checkpoint is kept aside and means starting over.
    let progress_file = state.read::<InstallProgress>(crate::state::INSTALL_PROGRESS)?;
    let start = match progress_file.into_option() {
        Some(p)
            if p.payload_id == payload_id
                && p.slot_partuuid == partuuid
                && p.chunk_count == m.chunk_count
                && p.next_chunk <= m.chunk_count
                && !target.attrs.is_bootable() =>
        {
            p.next_chunk
        }
        _ => 0,
    };
    let checkpoint = |next_chunk: u32| InstallProgress {
        format_version: crate::state::STATE_FORMAT_VERSION,
        payload_id: payload_id.clone(),
        slot_partuuid: partuuid.clone(),
        version: m.version.clone(),
        next_chunk,
        chunk_count: m.chunk_count,
    };

    // 3. The first write: the passive slot stops being bootable.
    disk.mark_bad(&SlotId::Number(target.number))
        .map_err(disk_err)?;
    state.remove(crate::state::PENDING)?;
    state.store(crate::state::INSTALL_PROGRESS, &checkpoint(start))?;

    // 4. Stream: read → decode and verify (all cores) → write, checkpointing as we go.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&device.disk)
        .map_err(|source| InstallError::SlotIo {
            action: "opening".into(),
            slot: target.label.clone(),
            disk: device.disk.clone(),
            offset: 0,
            source,
        })?;
    let writer = SlotWriter::new(&file, &device.disk, &target);
    let entries = &prelude.chunks.entries;
    // A crash after the last checkpoint leaves nothing to stream: resume at the payload end
    // and go on to the read-back (found by the crash-point sweep, tests/crashpoints.rs).
    let (resume_offset, resume_image_offset) = match entries.get(start as usize) {
        Some(e) => (e.payload_offset, e.image_offset),
        None => (prelude.chunks.payload_end(), m.image_size),
    };
    reader
        .seek_to(resume_offset)
        .map_err(read_err(resume_offset))?;
    progress.phase("writing", m.image_size);
    let mut since_checkpoint = 0u64;
    let mut done = resume_image_offset;
    progress.advance(done);
    // The read-back runs beside the stream: a verifier thread reads each chunk back from the
    // device once a checkpoint's fsync has made it clean (chunks of an earlier, interrupted run
    // first), so its reads never wait for writeback while later chunks decode.
    let direct = writer.open_direct();
    let (written_tx, written_rx) = std::sync::mpsc::channel::<u32>();
    for i in 0..start {
        written_tx.send(i).expect("receiver alive");
    }
    let mut unsynced: Vec<u32> = Vec::new();
    let abort = std::sync::atomic::AtomicBool::new(false);
    let (streamed, read_back) = std::thread::scope(|s| {
        let verifier = s.spawn(|| -> Result<(), InstallError> {
            let mut buf = Vec::new();
            for i in written_rx {
                if abort.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                writer.read_back_chunk(direct.as_ref(), i, &entries[i as usize], &mut buf)?;
            }
            Ok(())
        });
        let mut sink =
            |index: u32, e: &payload::ChunkEntry, data: &[u8]| -> Result<(), InstallError> {
                writer.write_chunk(index, e.image_offset, data)?;
                unsynced.push(index);
                since_checkpoint += data.len() as u64;
                done += data.len() as u64;
                progress.advance(done);
                if since_checkpoint >= opts.checkpoint_bytes {
                    writer.sync()?;
                    state.store(crate::state::INSTALL_PROGRESS, &checkpoint(index + 1))?;
                    since_checkpoint = 0;
                    for i in unsynced.drain(..) {
                        let _ = written_tx.send(i);
                    }
                }
                Ok(())
            };
        // A block device ends on a sector boundary: read it up to the payload's end only.
        let streamed = if padded_device {
            let left = prelude.chunks.payload_end().saturating_sub(resume_offset);
            let mut payload_only = std::io::Read::take(&mut reader, left);
            pipeline::run(
                &mut payload_only,
                entries,
                start,
                m.chunk_size,
                opts.threads,
                &mut sink,
            )
        } else {
            pipeline::run(
                &mut reader,
                entries,
                start,
                m.chunk_size,
                opts.threads,
                &mut sink,
            )
        };
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
            return Err(read_err(offset)(source))
        }
        Err(pipeline::PipelineError::Sink(e)) => return Err(e),
    }

    // 5. Every chunk was made durable, read back from the device and verified.
    if let Err(e) = read_back {
        // What is on the slot is wrong: the next attempt starts over.
        state.remove(crate::state::INSTALL_PROGRESS)?;
        return Err(e);
    }
    progress.advance(m.image_size);
    writer.sync()?;

    // 6. Flip: the slot becomes the next boot (the last write).
    if opts.flip {
        disk.set_next(&SlotId::Number(target.number), opts.tries)
            .map_err(disk_err)?;
        progress.phase("flipped", 0);
    }
    state.store(
        crate::state::PENDING,
        &PendingInstall {
            format_version: crate::state::STATE_FORMAT_VERSION,
            slot: target_name.clone(),
            slot_partuuid: partuuid.clone(),
            version: m.version.clone(),
            payload_id: payload_id.clone(),
            flipped: opts.flip,
        },
    )?;
    state.remove(crate::state::INSTALL_PROGRESS)?;
    Ok(InstallReport {
        slot: target_name,
        partuuid,
        version: m.version.clone(),
        booted_version,
        payload_id,
        signed_by: KeyId::to_string(&prelude.signed_by),
        image_size: m.image_size,
        resumed_from_chunk: start,
        chunk_count: m.chunk_count,
        retries: reader.retries,
        flipped: opts.flip,
    })
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
    fn slot_writer_writes_at_the_slot_offset_and_nowhere_else() {
        let (f, slot) = setup();
        let w = SlotWriter::new(f.as_file(), f.path(), &slot);
        w.write_chunk(0, 4096, &[7u8; 4096]).unwrap();
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
