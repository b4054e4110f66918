//! `image-tools flash`: writes the DESIGN §3 disk straight onto one or many devices from signed
//! payloads, so nothing unsigned reaches a device and the bootable part comes last.
//!
//! Before any device is touched, [`Job::prepare`] checks the payloads' signatures and chunk
//! tables ([`ab_payload::read_prelude`]), their expiry and size, and makes the ESP, the
//! BIOS boot code and ROOT with the same code as `image-tools disk`
//! ([`crate::disk::system_regions`]), and the OEM filesystem from `--oem DIR` (ext4 labelled
//! `OEM`, made by `mkfs.ext4 -d`, no mounting). [`target::Target::open`] refuses mounted, busy
//! and too-small devices. Then [`flash_all`] runs one thread per device and one decoder thread
//! that decodes every chunk once, checks it against the signed chunk table, and hands it to every
//! device (bounded queues: memory is a few chunks per device).
//!
//! Each device goes through the [`report::Phase`]s in order:
//!
//! 1. **wiping**: the first and last MiB (MBR, both GPT headers and entry arrays) are zeroed and
//!    flushed: from here the device is not bootable;
//! 2. **writing**: USR-A (and USR-B with `--payload-b`, else its first MiB cleared), the ESP,
//!    core.img (512-byte sectors), OEM (or its first MiB cleared) and ROOT, then flushed;
//! 3. **verifying**: every region is read back (`O_DIRECT` on block devices) and its SHA-256
//!    compared with what was written; the slots' with the signed image digests;
//! 4. **finalizing**: the MBR boot code, then the partition table with fresh random disk and
//!    partition GUIDs, the backup at the device's real end written and flushed before the primary
//!    ([`bootctl::gpt::write_new`]);
//! 5. **checking**: both table copies are read back and compared with what was meant.
//!
//! Any failure from step 1 on wipes the tables again (unless `--preserve-on-error`), so a power
//! cut or an error never leaves a device that looks bootable with unverified content. Boot state:
//! USR-A P1 T0 S1 and USR-B P0 T0 S0; with `--payload-b` both hold verified images and both are
//! committed, A preferred: A P2 T0 S1, B P1 T0 S1.
//!
//! ```no_run
//! use image_tools::flash::{flash_all, FlashSpec, Job, DeviceSlot};
//! use image_tools::flash::{report::NoReporter, target::Target};
//! # fn spec() -> FlashSpec { unimplemented!() }
//! let job = Job::prepare(&spec(), &[512])?;
//! let t = Target::open("/dev/sdb".as_ref(), None, job.min_bytes())?;
//! let records = flash_all(&job, &mut [DeviceSlot::from_target(t)], &NoReporter);
//! assert_eq!(records[0].result, "flashed");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use crate::disk::{self, GrubFiles, Region, RegionSource, SystemRegions};
use ab_payload::{
    self as payload, ChunkDecoder, ReadError, Sha256Digest, TrustedKeys, VerifiedPrelude,
};
use ab_release::netboot::one_line;
use anyhow::Context;
use bootctl::gpt::{self, Gpt};
use bootctl::layout::{self, LayoutSizes};
use bootctl::storage::Storage;
use bootctl::SlotAttrs;
use clap::Args;
use report::{DeviceRecord, PartitionRecord, Phase, RegionDigest, Reporter, SlotRecord};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

pub mod report;
pub mod target;

const MIB: u64 = 1 << 20;
/// Size of each write and read-back block.
pub const BLOCK: usize = 4 << 20;
/// Chunks queued per device before the decoder waits for it.
pub const QUEUE_CHUNKS: usize = 4;
/// Size of the OEM partition.
pub const DEFAULT_OEM_SIZE: u64 = 16 * MIB;

/// Why a flash job could not start, or a device failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlashError {
    /// A payload is unreadable, bad or not signed by a trusted key.
    #[error("verifying payload {}", path.display())]
    Payload {
        /// The payload.
        path: PathBuf,
        /// What is wrong.
        source: ReadError,
    },
    /// A payload expired.
    #[error("payload {} expired at {expires} (now {now})", path.display())]
    Expired {
        /// The payload.
        path: PathBuf,
        /// Its expiry, Unix seconds.
        expires: u64,
        /// The clock, Unix seconds.
        now: u64,
    },
    /// A payload's image does not fit a USR partition.
    #[error("payload {} holds a {image_bytes}-byte image, larger than the {slot_bytes}-byte USR partition (raise --usr-size)", path.display())]
    ImageTooLarge {
        /// The payload.
        path: PathBuf,
        /// Its image size.
        image_bytes: u64,
        /// The USR partition size.
        slot_bytes: u64,
    },
    /// `--payload-b` is for another product than `--payload`.
    #[error("--payload-b is for {b:?}, --payload for {a:?}")]
    Incompatible {
        /// A's compatible string.
        a: String,
        /// B's.
        b: String,
    },
    /// Making the ESP, BIOS boot code, ROOT or OEM failed.
    #[error("preparing the disk content")]
    Disk(#[from] disk::DiskError),
    /// The payload stream failed while flashing (a chunk did not verify, a read failed).
    #[error("{0}")]
    Stream(String),
    /// A device write, read or flush failed.
    #[error("{what} on {}", device.display())]
    Device {
        /// The device.
        device: PathBuf,
        /// What was being done, with the offset.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// A region read back differs from what was written.
    #[error("read-back of {label} at offset {offset} on {}: sha256 {found}, written {expected}", device.display())]
    Mismatch {
        /// The device.
        device: PathBuf,
        /// The region.
        label: String,
        /// Its first byte.
        offset: u64,
        /// SHA-256 of what was written.
        expected: String,
        /// SHA-256 of what was read.
        found: String,
    },
    /// The partition table could not be built, written or read back as written.
    #[error("partition table on {}: {reason}", device.display())]
    Table {
        /// The device.
        device: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A disk-image payload does not hold a disk with the DESIGN §3 layout.
    #[error("payload {} is not a disk image with the A/B layout: {reason}", path.display())]
    NotADiskImage {
        /// The payload.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file of the job could not be read.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

/// Everything a flash job needs.
#[derive(Debug, Clone)]
pub struct FlashSpec {
    /// Payload for USR-A, or with `disk_image` a payload of a whole disk image.
    pub payload_a: PathBuf,
    /// `payload_a` holds a whole disk image (`image-tools disk`, packed), not a /usr image.
    pub disk_image: bool,
    /// Payload for USR-B (both slots filled), or `None` (USR-B empty).
    pub payload_b: Option<PathBuf>,
    /// Keys the payloads must be signed with.
    pub keys: TrustedKeys,
    /// GRUB artifacts (not needed for a disk image, which has its own).
    pub grub: Option<GrubFiles>,
    /// Size of each USR partition.
    pub usr_size: u64,
    /// Size of the ROOT filesystem (the partition takes the rest of the device).
    pub root_size: u64,
    /// Tree for ROOT (`None`: mount points only).
    pub root_dir: Option<PathBuf>,
    /// Tree for the OEM partition (`None`: left empty).
    pub oem_dir: Option<PathBuf>,
    /// Leave a failed device as the failure left it instead of wiping its table.
    pub preserve_on_error: bool,
    /// The clock for expiry checks, Unix seconds.
    pub now: u64,
}

/// The partition sizes of a flash: USR partitions of `usr_size` (whole MiB), ROOT at least
/// `root_size`, the default ESP and BIOS-BOOT, and a [`DEFAULT_OEM_SIZE`] OEM.
pub fn layout_sizes(usr_size: u64, root_size: u64) -> LayoutSizes {
    LayoutSizes {
        usr: usr_size.div_ceil(MIB).max(1) * MIB,
        oem: DEFAULT_OEM_SIZE,
        min_root: root_size,
        ..LayoutSizes::default()
    }
}

/// The OEM partition of `table` as an ext4 labelled OEM filled from `tree`, made in `scratch`.
fn oem_region(table: &Gpt, tree: &Path, scratch: &Path) -> Result<Region, FlashError> {
    let (offset, len) = disk::partition_range(table, 6);
    let file = scratch.join("oem.img");
    disk::mkfs::make_ext4(&file, len, "OEM", tree)?;
    Ok(Region {
        label: "OEM".into(),
        offset,
        source: RegionSource::File(file),
    })
}

/// A verified payload for one slot.
#[derive(Debug, Clone)]
struct SlotPayload {
    path: PathBuf,
    prelude: VerifiedPrelude,
}

/// A prepared job: verified payloads and the filesystems, made once for every device.
pub struct Job {
    a: SlotPayload,
    b: Option<SlotPayload>,
    sizes: LayoutSizes,
    system: BTreeMap<u32, SystemRegions>,
    image: Option<DiskImage>,
    oem: Option<Region>,
    preserve_on_error: bool,
    _scratch: tempfile::TempDir,
}

/// A signed whole-disk image: its partition table and MBR boot code, read from its verified
/// first chunks.
struct DiskImage {
    table: Gpt,
    mbr_boot_code: Vec<u8>,
}

/// The first bytes of a disk image as a [`Storage`] of the image's full length: reads beyond
/// them fail, so the backup table (at the image's end) reads as invalid and the primary is used.
struct ImageHead {
    head: Vec<u8>,
    len: u64,
}

impl Storage for ImageHead {
    fn len(&self) -> u64 {
        self.len
    }
    fn device_sector_size(&self) -> Option<u32> {
        None
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset as usize + buf.len();
        match self.head.get(offset as usize..end) {
            Some(b) => {
                buf.copy_from_slice(b);
                Ok(())
            }
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decodes the verified chunks covering the first [`MIB`] of a disk-image payload and reads
/// its partition table.
fn read_disk_image(slot: &SlotPayload) -> Result<DiskImage, FlashError> {
    let m = &slot.prelude.manifest;
    let mut chunks = ChunkReader::open(slot)?;
    let (mut out, mut head) = (Vec::new(), Vec::new());
    for i in 0..slot.prelude.chunks.entries.len() {
        if head.len() as u64 >= MIB.min(m.image_size) {
            break;
        }
        chunks.next(i, &mut out)?;
        head.extend_from_slice(&out);
    }
    let not_disk = |reason: String| FlashError::NotADiskImage {
        path: slot.path.clone(),
        reason,
    };
    let mut disk = ImageHead {
        head,
        len: m.image_size,
    };
    let state = gpt::read(&mut disk, None).map_err(|e| not_disk(one_line(&e)))?;
    state
        .entries
        .map_err(|e| not_disk(format!("its partition table is bad: {e}")))?;
    let table = state.gpt;
    for (n, label) in [(3, "USR-A"), (4, "USR-B")] {
        let e = table.entry(n);
        if e.type_guid != bootctl::guid::USR_TYPE || e.name != label {
            return Err(not_disk(format!(
                "partition {n} is not a usr partition labelled {label}"
            )));
        }
    }
    let mut mbr_boot_code = disk.head;
    mbr_boot_code.truncate(disk::bios::BOOT_CODE_END);
    Ok(DiskImage {
        table,
        mbr_boot_code,
    })
}

fn verify_payload(path: &Path, keys: &TrustedKeys, now: u64) -> Result<SlotPayload, FlashError> {
    let bad = |source| FlashError::Payload {
        path: path.into(),
        source,
    };
    let f = File::open(path).map_err(|e| bad(ReadError::Io(e)))?;
    let prelude = payload::read_prelude(&mut BufReader::new(f), keys).map_err(bad)?;
    if let Some(expires) = prelude.manifest.expires {
        if expires <= now {
            return Err(FlashError::Expired {
                path: path.into(),
                expires,
                now,
            });
        }
    }
    Ok(SlotPayload {
        path: path.into(),
        prelude,
    })
}

impl Job {
    /// Verifies the payloads and makes the disk content for devices with `sector_sizes`.
    /// Nothing is written to any device.
    pub fn prepare(spec: &FlashSpec, sector_sizes: &[u32]) -> Result<Job, FlashError> {
        let a = verify_payload(&spec.payload_a, &spec.keys, spec.now)?;
        let b = spec
            .payload_b
            .as_deref()
            .map(|p| verify_payload(p, &spec.keys, spec.now))
            .transpose()?;
        if let Some(b) = &b {
            if b.prelude.manifest.compatible != a.prelude.manifest.compatible {
                return Err(FlashError::Incompatible {
                    a: a.prelude.manifest.compatible.clone(),
                    b: b.prelude.manifest.compatible.clone(),
                });
            }
        }
        let image = if spec.disk_image {
            Some(read_disk_image(&a)?)
        } else {
            None
        };
        let mut sizes = layout_sizes(spec.usr_size, spec.root_size);
        if let Some(img) = &image {
            sizes.usr = disk::partition_range(&img.table, 4).1;
        }
        let usr = sizes.usr;
        let slot_payloads = if image.is_some() {
            b.iter().collect::<Vec<_>>()
        } else {
            std::iter::once(&a).chain(&b).collect()
        };
        for p in slot_payloads {
            if p.prelude.manifest.image_size > usr {
                return Err(FlashError::ImageTooLarge {
                    path: p.path.clone(),
                    image_bytes: p.prelude.manifest.image_size,
                    slot_bytes: usr,
                });
            }
        }
        let scratch = tempfile::Builder::new()
            .prefix(".image-tools-flash-")
            .tempdir()
            .map_err(|source| FlashError::Io {
                what: "creating a scratch directory".into(),
                source,
            })?;
        let mut system = BTreeMap::new();
        let mut oem = None;
        if let (Some(img), Some(tree)) = (&image, &spec.oem_dir) {
            let e = img.table.entry(6);
            if !e.is_used() || e.name != "OEM" {
                return Err(FlashError::NotADiskImage {
                    path: a.path.clone(),
                    reason: "partition 6 is not labelled OEM (needed by --oem)".into(),
                });
            }
            oem = Some(oem_region(&img.table, tree, scratch.path())?);
        }
        let layout_sector_sizes = if image.is_some() {
            &[][..]
        } else {
            sector_sizes
        };
        for &ss in layout_sector_sizes {
            let Some(grub) = &spec.grub else {
                return Err(FlashError::Io {
                    what: "no GRUB artifacts given".into(),
                    source: io::ErrorKind::NotFound.into(),
                });
            };
            if system.contains_key(&ss) {
                continue;
            }
            let table = layout::standard(layout::min_disk_bytes(&sizes, ss), ss, &sizes)
                .map_err(disk::DiskError::from)?;
            let dir = scratch.path().join(ss.to_string());
            std::fs::create_dir_all(&dir).map_err(|source| FlashError::Io {
                what: format!("creating {}", dir.display()),
                source,
            })?;
            let regions = disk::system_regions(
                &table,
                grub,
                &disk::RootContent {
                    bytes: spec.root_size,
                    tree: spec.root_dir.as_deref(),
                },
                &dir,
            )?;
            system.insert(ss, regions);
            if let (None, Some(tree)) = (&oem, &spec.oem_dir) {
                oem = Some(oem_region(&table, tree, scratch.path())?);
            }
        }
        Ok(Job {
            a,
            b,
            sizes,
            system,
            image,
            oem,
            preserve_on_error: spec.preserve_on_error,
            _scratch: scratch,
        })
    }

    /// The smallest device the layout (or the disk image) fits.
    pub fn min_bytes(&self) -> u64 {
        match &self.image {
            Some(_) => self.a.prelude.manifest.image_size,
            None => layout::min_disk_bytes(&self.sizes, 512),
        }
    }

    /// The sector size a disk-image payload's table is laid out for (`None`: any).
    pub fn image_sector_size(&self) -> Option<u32> {
        self.image.as_ref().map(|i| i.table.sector_size)
    }

    /// The signed manifest of USR-A's payload.
    pub fn manifest_a(&self) -> &payload::Manifest {
        &self.a.prelude.manifest
    }

    fn slots(&self) -> Vec<(&SlotPayload, u32)> {
        let mut v = vec![(&self.a, 3)];
        if let Some(b) = &self.b {
            v.push((b, 4));
        }
        v
    }
}

/// One device to flash: a name for messages and records, its serial, and its storage.
pub struct DeviceSlot<S> {
    /// The path given.
    pub name: PathBuf,
    /// Serial number, if known.
    pub serial: Option<String>,
    /// The device.
    pub storage: S,
}

impl DeviceSlot<target::Target> {
    /// A slot for an opened target.
    pub fn from_target(t: target::Target) -> DeviceSlot<target::Target> {
        DeviceSlot {
            name: t.path.clone(),
            serial: t.serial.clone(),
            storage: t,
        }
    }
}

/// What the decoder hands each device.
#[derive(Debug, Clone)]
enum Item {
    /// A verified chunk of the slot's image at this offset.
    Chunk(u64, Arc<Vec<u8>>),
    /// The slot's image is complete and matched its signed SHA-256.
    End,
    /// The payload failed; nothing more comes.
    Failed(Arc<String>),
}

/// Decodes each slot's payload once and sends every verified chunk to every device still
/// listening; a device that failed drops its receiver and is skipped from then on.
fn decode_into(job: &Job, mut senders: Vec<SyncSender<Item>>) {
    for (slot, _) in job.slots() {
        let r = decode_slot(slot, &mut senders);
        if let Err(e) = r {
            let msg = Arc::new(one_line(&e));
            for s in &senders {
                let _ = s.send(Item::Failed(msg.clone()));
            }
            return;
        }
        senders.retain(|s| s.send(Item::End).is_ok());
    }
}

/// Reads a verified payload's frames from the first one, decoding each chunk and checking it
/// against the chunk table verified in [`Job::prepare`] (so a payload file changed since then
/// fails at its first changed chunk).
struct ChunkReader<'a> {
    slot: &'a SlotPayload,
    r: BufReader<File>,
    decoder: ChunkDecoder,
    frame: Vec<u8>,
}

impl<'a> ChunkReader<'a> {
    fn bad(&self, source: ReadError) -> FlashError {
        FlashError::Payload {
            path: self.slot.path.clone(),
            source,
        }
    }

    fn open(slot: &'a SlotPayload) -> Result<ChunkReader<'a>, FlashError> {
        let bad = |e| FlashError::Payload {
            path: slot.path.clone(),
            source: ReadError::Io(e),
        };
        let mut f = File::open(&slot.path).map_err(bad)?;
        let entries = &slot.prelude.chunks.entries;
        let first = entries.first().map_or(0, |e| e.payload_offset);
        io::Seek::seek(&mut f, io::SeekFrom::Start(first)).map_err(bad)?;
        Ok(ChunkReader {
            slot,
            r: BufReader::with_capacity(1 << 20, f),
            decoder: ChunkDecoder::for_manifest(&slot.prelude.manifest).map_err(bad)?,
            frame: Vec::new(),
        })
    }

    /// Decodes chunk `i` (the next one) into `out`.
    fn next(&mut self, i: usize, out: &mut Vec<u8>) -> Result<(), FlashError> {
        let entry = &self.slot.prelude.chunks.entries[i];
        payload::read_frame(&mut self.r, i as u32, entry, &mut self.frame)
            .map_err(|e| self.bad(e))?;
        self.decoder
            .decode(i as u32, entry, &self.frame, out)
            .map_err(|e| self.bad(ReadError::Payload(e)))
    }

    /// Checks that the payload ends after the last frame.
    fn end(&mut self) -> Result<(), FlashError> {
        payload::expect_end(&mut self.r, self.slot.prelude.chunks.payload_end())
            .map_err(|e| self.bad(e))
    }
}

fn decode_slot(slot: &SlotPayload, senders: &mut Vec<SyncSender<Item>>) -> Result<(), FlashError> {
    let mut chunks = ChunkReader::open(slot)?;
    let mut image = Sha256::new();
    for (i, entry) in slot.prelude.chunks.entries.iter().enumerate() {
        let mut out = Vec::new();
        chunks.next(i, &mut out)?;
        image.update(&out);
        let chunk = Arc::new(out);
        senders.retain(|s| {
            s.send(Item::Chunk(entry.image_offset, chunk.clone()))
                .is_ok()
        });
        if senders.is_empty() {
            return Ok(());
        }
    }
    chunks.end()?;
    let found = Sha256Digest(image.finalize().into());
    if found != slot.prelude.manifest.image_sha256 {
        return Err(chunks.bad(ReadError::Payload(
            payload::PayloadError::ImageHashMismatch {
                expected: slot.prelude.manifest.image_sha256,
                found,
            },
        )));
    }
    Ok(())
}

/// Flashes every device in parallel; returns one record per device, in order.
pub fn flash_all<S: Storage + Send>(
    job: &Job,
    devices: &mut [DeviceSlot<S>],
    reporter: &dyn Reporter,
) -> Vec<DeviceRecord> {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in devices.iter() {
        let (tx, rx) = sync_channel(QUEUE_CHUNKS);
        senders.push(tx);
        receivers.push(rx);
    }
    std::thread::scope(|s| {
        s.spawn(move || decode_into(job, senders));
        let handles: Vec<_> = devices
            .iter_mut()
            .zip(receivers)
            .enumerate()
            .map(|(i, (dev, rx))| s.spawn(move || flash_device(job, i, dev, rx, reporter)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("device thread panicked"))
            .collect()
    })
}

/// One region written: where, how much, and the SHA-256 of its bytes.
struct Written {
    label: String,
    offset: u64,
    bytes: u64,
    sha256: Sha256Digest,
}

/// Progress accounting for one device.
struct Meter<'a> {
    reporter: &'a dyn Reporter,
    index: usize,
    phase: Phase,
    done: u64,
    total: u64,
}

impl Meter<'_> {
    fn phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.reporter
            .progress(self.index, phase, self.done, self.total);
    }
    fn add(&mut self, n: u64) {
        self.done += n;
        self.reporter
            .progress(self.index, self.phase, self.done, self.total);
    }
}

/// The state of one device's flash, shared by its steps.
struct Flash<'a, S: Storage> {
    job: &'a Job,
    name: &'a Path,
    dev: &'a mut S,
    meter: Meter<'a>,
    written: Vec<Written>,
    bytes_written: u64,
}

impl<S: Storage> Flash<'_, S> {
    fn dev_err(&self, what: String) -> impl FnOnce(io::Error) -> FlashError {
        let device = self.name.to_path_buf();
        move |source| FlashError::Device {
            device,
            what,
            source,
        }
    }

    fn write(&mut self, label: &str, offset: u64, data: &[u8]) -> Result<(), FlashError> {
        let e = self.dev_err(format!("writing {label} at offset {offset}"));
        self.dev.write_at(offset, data).map_err(e)?;
        self.bytes_written += data.len() as u64;
        self.meter.add(data.len() as u64);
        Ok(())
    }

    fn flush(&mut self, what: &str) -> Result<(), FlashError> {
        let e = self.dev_err(format!("flushing {what}"));
        self.dev.flush().map_err(e)
    }

    /// Zeroes `len` bytes at `offset` and records them.
    fn zero(&mut self, label: &str, offset: u64, len: u64) -> Result<(), FlashError> {
        let zeros = vec![0u8; len.min(BLOCK as u64) as usize];
        let mut h = Sha256::new();
        let mut at = 0;
        while at < len {
            let n = (len - at).min(zeros.len() as u64) as usize;
            self.write(label, offset + at, &zeros[..n])?;
            h.update(&zeros[..n]);
            at += n as u64;
        }
        self.written.push(Written {
            label: label.into(),
            offset,
            bytes: len,
            sha256: Sha256Digest(h.finalize().into()),
        });
        Ok(())
    }

    /// Writes a region from a file or memory, in [`BLOCK`]s.
    fn region(&mut self, r: &Region) -> Result<(), FlashError> {
        let mut h = Sha256::new();
        let len = match &r.source {
            RegionSource::Bytes(b) => {
                self.write(&r.label, r.offset, b)?;
                h.update(b);
                b.len() as u64
            }
            RegionSource::File(p) => {
                let io = |what: String| move |source| FlashError::Io { what, source };
                let mut f = File::open(p).map_err(io(format!("opening {}", p.display())))?;
                let mut buf = vec![0u8; BLOCK];
                let mut at = 0u64;
                loop {
                    let n = read_full(&mut f, &mut buf)
                        .map_err(io(format!("reading {}", p.display())))?;
                    if n == 0 {
                        break;
                    }
                    self.write(&r.label, r.offset + at, &buf[..n])?;
                    h.update(&buf[..n]);
                    at += n as u64;
                }
                at
            }
        };
        self.written.push(Written {
            label: r.label.clone(),
            offset: r.offset,
            bytes: len,
            sha256: Sha256Digest(h.finalize().into()),
        });
        Ok(())
    }

    /// Writes a payload's image at `offset` from the decoder's verified chunks, except the
    /// byte ranges in `skip` (relative to the image; sorted, not overlapping). Each stretch
    /// written is recorded with the SHA-256 of its bytes.
    fn stream(
        &mut self,
        label: &str,
        offset: u64,
        p: &SlotPayload,
        skip: &[(u64, u64)],
        rx: &Receiver<Item>,
    ) -> Result<(), FlashError> {
        let size = p.prelude.manifest.image_size;
        let mut gaps = Vec::new();
        let mut from = 0;
        for &(a, b) in skip.iter().chain([(size, size)].iter()) {
            if a.min(size) > from {
                gaps.push((from, a.min(size), Sha256::new()));
            }
            from = from.max(b);
        }
        loop {
            match rx.recv() {
                Ok(Item::Chunk(at, data)) => {
                    let end = at + data.len() as u64;
                    for (ga, gb, h) in gaps.iter_mut() {
                        let (a, b) = (at.max(*ga), end.min(*gb));
                        if a < b {
                            let part = &data[(a - at) as usize..(b - at) as usize];
                            self.write(label, offset + a, part)?;
                            h.update(part);
                        }
                    }
                }
                Ok(Item::End) => break,
                Ok(Item::Failed(msg)) => return Err(FlashError::Stream(msg.to_string())),
                Err(_) => return Err(FlashError::Stream("the payload decoder stopped".into())),
            }
        }
        for (a, b, h) in gaps {
            self.written.push(Written {
                label: label.into(),
                offset: offset + a,
                bytes: b - a,
                sha256: Sha256Digest(h.finalize().into()),
            });
        }
        Ok(())
    }

    /// Reads every written region back and compares digests.
    fn verify(&mut self) -> Result<(), FlashError> {
        let mut buf = vec![0u8; BLOCK];
        for i in 0..self.written.len() {
            let (label, offset, bytes, expected) = {
                let w = &self.written[i];
                (w.label.clone(), w.offset, w.bytes, w.sha256)
            };
            let mut h = Sha256::new();
            let mut at = 0u64;
            while at < bytes {
                let n = (bytes - at).min(BLOCK as u64) as usize;
                let e = self.dev_err(format!("reading back {label} at offset {}", offset + at));
                self.dev.read_at(offset + at, &mut buf[..n]).map_err(e)?;
                h.update(&buf[..n]);
                at += n as u64;
                self.meter.add(n as u64);
            }
            let found = Sha256Digest(h.finalize().into());
            if found != expected {
                return Err(FlashError::Mismatch {
                    device: self.name.into(),
                    label,
                    offset,
                    expected: expected.to_string(),
                    found: found.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Zeroes the MBR, both tables and their entry arrays: the first and last MiB.
    fn wipe(&mut self) -> Result<(), FlashError> {
        let len = self.dev.len();
        let head = MIB.min(len);
        let zeros = vec![0u8; head as usize];
        self.write("the partition tables", 0, &zeros)?;
        let tail = len.saturating_sub(MIB).max(head);
        self.write(
            "the backup partition table",
            tail,
            &zeros[..(len - tail) as usize],
        )?;
        self.flush("the wiped partition tables")
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn attrs_text(a: u64) -> String {
    let s = SlotAttrs::decode(a);
    format!("P{} T{} S{}", s.priority, s.tries, u8::from(s.successful))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The table for a device: the standard layout (or the disk image's partitions) with fresh
/// random disk and partition GUIDs, the backup at the device's end, boot state set.
fn device_table(job: &Job, len: u64, ss: u32) -> Result<Gpt, bootctl::Error> {
    let random = || {
        bootctl::Guid::random().map_err(|source| bootctl::Error::Io {
            action: "reading /dev/urandom for a GUID".into(),
            source,
        })
    };
    let mut table = match &job.image {
        None => layout::standard(len, ss, &job.sizes)?,
        Some(img) => {
            let mut t = Gpt::new(len, ss, random()?)?;
            for (n, mut e) in img.table.used_entries() {
                e.unique_guid = random()?;
                t.set_entry(n, &e);
            }
            t
        }
    };
    let set = |t: &mut Gpt, n: u32, priority: u8, successful: bool| {
        let a = SlotAttrs {
            priority,
            tries: 0,
            successful,
        }
        .apply(t.entry(n).attributes);
        t.set_attributes(n, a);
    };
    if job.b.is_some() {
        set(&mut table, 3, 2, true);
        set(&mut table, 4, 1, true);
    } else {
        set(&mut table, 3, 1, true);
        set(&mut table, 4, 0, false);
    }
    Ok(table)
}

fn flash_device<S: Storage>(
    job: &Job,
    index: usize,
    dev: &mut DeviceSlot<S>,
    rx: Receiver<Item>,
    reporter: &dyn Reporter,
) -> DeviceRecord {
    let started = Instant::now();
    let len = dev.storage.len();
    let ss = dev.storage.device_sector_size().unwrap_or(512);
    let mut record = DeviceRecord {
        format_version: report::RECORD_FORMAT_VERSION,
        result: "refused".into(),
        error: None,
        left: "untouched".into(),
        device: dev.name.display().to_string(),
        serial: dev.serial.clone(),
        bytes: len,
        sector_size: ss,
        disk_guid: None,
        partitions: Vec::new(),
        slots: Vec::new(),
        digests: Vec::new(),
        bytes_written: 0,
        seconds: 0.0,
        finished_at: 0,
    };
    let table = match device_table(job, len, ss) {
        Ok(t) => t,
        Err(e) => {
            record.error = Some(one_line(&FlashError::Table {
                device: dev.name.clone(),
                reason: one_line(&e),
            }));
            reporter.progress(index, Phase::Failed, 0, 0);
            return record;
        }
    };
    let system = job.system.get(&ss);
    let usable = match job.image_sector_size() {
        Some(image_ss) => image_ss == ss,
        None => system.is_some(),
    };
    if !usable {
        record.error = Some(format!(
            "refusing {}: no disk content for its {ss}-byte sectors{}",
            dev.name.display(),
            job.image_sector_size().map_or(String::new(), |i| format!(
                " (the disk image is for {i}-byte sectors)"
            ))
        ));
        reporter.progress(index, Phase::Failed, 0, 0);
        return record;
    }
    // What will be written and read back, for the progress total.
    let region_len = |r: &Region| match &r.source {
        RegionSource::Bytes(b) => b.len() as u64,
        RegionSource::File(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
    };
    let slot_bytes: u64 = job
        .slots()
        .iter()
        .map(|(p, _)| p.prelude.manifest.image_size)
        .sum();
    let content = slot_bytes
        + system.map_or(0, |s| s.regions.iter().map(region_len).sum::<u64>())
        + job.oem.as_ref().map_or(MIB, region_len)
        + if job.b.is_none() { MIB } else { 0 };
    let total = 2 * MIB + 2 * content;
    let name = dev.name.clone();
    let mut f = Flash {
        job,
        name: &name,
        dev: &mut dev.storage,
        meter: Meter {
            reporter,
            index,
            phase: Phase::Wiping,
            done: 0,
            total,
        },
        written: Vec::new(),
        bytes_written: 0,
    };
    let result = run_steps(&mut f, &table, system, &rx);
    drop(rx);
    record.bytes_written = f.bytes_written;
    record.digests = f
        .written
        .iter()
        .map(|w| RegionDigest {
            label: w.label.clone(),
            offset: w.offset,
            bytes: w.bytes,
            sha256: w.sha256.to_string(),
        })
        .collect();
    match result {
        Ok(()) => {
            record.result = "flashed".into();
            record.left = "bootable".into();
            record.disk_guid = Some(table.disk_guid.to_string().to_lowercase());
            record.partitions = table
                .used_entries()
                .into_iter()
                .map(|(n, e)| {
                    let (offset, bytes) = disk::partition_range(&table, n);
                    PartitionRecord {
                        number: n,
                        label: e.name,
                        partuuid: e.unique_guid.to_string().to_lowercase(),
                        type_guid: e.type_guid.to_string().to_lowercase(),
                        offset,
                        bytes,
                    }
                })
                .collect();
            record.slots = job
                .slots()
                .iter()
                .map(|(p, n)| {
                    let m = &p.prelude.manifest;
                    SlotRecord {
                        label: table.entry(*n).name,
                        version: m.version.clone(),
                        compatible: m.compatible.clone(),
                        image_sha256: m.image_sha256.to_string(),
                        payload_id: p.prelude.payload_id().to_string(),
                        signed_by: p.prelude.signers.iter().map(|k| k.to_string()).collect(),
                        attributes: attrs_text(table.entry(*n).attributes),
                    }
                })
                .collect();
            f.meter.phase(Phase::Done);
        }
        Err(e) => {
            record.result = "failed".into();
            record.error = Some(one_line(&e));
            record.left = if job.preserve_on_error {
                "preserved".into()
            } else {
                match f.wipe() {
                    Ok(()) => "wiped".into(),
                    Err(w) => format!(
                        "unknown (wiping after the failure failed: {})",
                        one_line(&w)
                    ),
                }
            };
            f.meter.phase(Phase::Failed);
        }
    }
    record.seconds = started.elapsed().as_secs_f64();
    record.finished_at = unix_now();
    record
}

fn run_steps<S: Storage>(
    f: &mut Flash<'_, S>,
    table: &Gpt,
    system: Option<&SystemRegions>,
    rx: &Receiver<Item>,
) -> Result<(), FlashError> {
    let job = f.job;
    let mbr_boot_code = match &job.image {
        Some(img) => Some(&img.mbr_boot_code),
        None => system.and_then(|s| s.mbr_boot_code.as_ref()),
    };
    // 1. Not bootable from here on.
    f.meter.phase(Phase::Wiping);
    f.wipe()?;

    // 2. Everything but the part that makes the device bootable.
    f.meter.phase(Phase::Writing);
    if let Some(img) = &job.image {
        // The disk image but its tables (and what --oem and --payload-b replace).
        let ss = u64::from(img.table.sector_size);
        let size = job.a.prelude.manifest.image_size;
        let mut skip = vec![
            (0, img.table.first_usable_lba * ss),
            (img.table.backup_entries_lba * ss, size),
        ];
        if job.oem.is_some() {
            let (o, l) = disk::partition_range(&img.table, 6);
            skip.push((o, o + l));
        }
        if job.b.is_some() {
            let (o, l) = disk::partition_range(&img.table, 4);
            skip.push((o, o + l));
        }
        skip.sort_unstable();
        f.stream("disk image", 0, &job.a, &skip, rx)?;
    } else {
        let (off, _) = disk::partition_range(table, 3);
        f.stream("USR-A", off, &job.a, &[], rx)?;
    }
    if let Some(b) = &job.b {
        let (off, _) = disk::partition_range(table, 4);
        f.stream("USR-B", off, b, &[], rx)?;
    } else if job.image.is_none() {
        let (off, _) = disk::partition_range(table, 4);
        f.zero("USR-B", off, MIB)?;
    }
    for r in system.iter().flat_map(|s| &s.regions) {
        f.region(r)?;
    }
    match &job.oem {
        Some(r) => f.region(r)?,
        None if job.image.is_some() => {}
        None => {
            let (off, _) = disk::partition_range(table, 6);
            f.zero("OEM", off, MIB)?;
        }
    }
    f.flush("the content")?;

    // 3. Read it all back.
    f.meter.phase(Phase::Verifying);
    f.verify()?;

    // 4. The bootable part: boot code, then the table (backup first, then primary).
    f.meter.phase(Phase::Finalizing);
    if let Some(code) = mbr_boot_code {
        f.write("the MBR boot code", 0, code)?;
    }
    let table_err = |e: bootctl::Error, name: &Path| FlashError::Table {
        device: name.into(),
        reason: one_line(&e),
    };
    gpt::write_new(f.dev, table).map_err(|e| table_err(e, f.name))?;

    // 5. Read the table back.
    f.meter.phase(Phase::Checking);
    let state = gpt::read(f.dev, Some(table.sector_size)).map_err(|e| table_err(e, f.name))?;
    let mismatch = |reason: &str| FlashError::Table {
        device: f.name.into(),
        reason: reason.into(),
    };
    if state.primary.is_err() || state.backup.is_err() || !state.copies_match {
        return Err(mismatch("a copy does not validate after writing"));
    }
    if state.gpt != *table {
        return Err(mismatch("the table read back differs from the one written"));
    }
    if !state.backup_at_end() {
        return Err(mismatch("the backup table is not at the device's end"));
    }
    if let Some(code) = mbr_boot_code {
        let mut back = vec![0u8; code.len()];
        let e = f.dev_err("reading back the MBR boot code".into());
        f.dev.read_at(0, &mut back).map_err(e)?;
        if back != *code {
            return Err(mismatch("the MBR boot code read back differs"));
        }
    }
    Ok(())
}

/// Parses `--sector-size`.
fn parse_sector_size(s: &str) -> Result<u32, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!("unsupported sector size {s:?} (use 512 or 4096)")),
    }
}

/// Returned (inside anyhow) when some devices were not flashed: exit status 3.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} devices not flashed")]
pub struct DevicesFailed {
    /// Devices not flashed.
    pub failed: usize,
    /// Devices given.
    pub total: usize,
}

/// Shown after `image-tools flash --help`.
const FLASH_EXAMPLE: &str = "Examples:
  image-tools flash --payload os-1.0.payload --pubkey release.pub \\
    --to /dev/sdb --to /dev/sdc --oem oem/ --record flash-log.jsonl
  image-tools flash --payload os-1.0.payload --payload-b os-0.9.payload \\
    --pubkey release.pub --to disk.img --sector-size 4096 --json

Exit status: 0 every device flashed; 1 nothing written (bad payload, key, GRUB
files, options); 2 usage error; 3 some devices refused or failed (see their
records; a failed device is left without a partition table).";

/// Flash the disk layout onto devices from signed payloads, several at once.
///
/// Writes the layout of `image-tools disk` (ESP with GRUB, BIOS-BOOT, USR-A, USR-B, OEM, ROOT)
/// straight onto each --to device: every payload chunk is checked against the signed chunk
/// table before it is written, everything is read back and verified, and the partition table
/// (fresh disk and partition GUIDs, backup at the device's end) is written last. A device that
/// is mounted, busy or too small is refused; one that fails is left without a partition table.
/// ROOT's partition takes the rest of the device; its filesystem is --root-size (`updater
/// firstboot` grows it).
#[derive(Args, Debug)]
#[command(after_long_help = FLASH_EXAMPLE)]
pub struct FlashCmd {
    /// Device or existing disk-image file to flash; repeat for several (flashed in parallel).
    #[arg(long = "to", value_name = "DEV", required = true)]
    to: Vec<PathBuf>,
    /// Signed payload for USR-A (committed, booted first).
    #[arg(long, value_name = "PAYLOAD", required_unless_present = "disk_payload")]
    payload: Option<PathBuf>,
    /// Signed payload of a whole disk image (`image-tools disk`, then `image-tools pack
    /// --image disk.img --image-id ID --image-version V`): written but for its tables, which
    /// are made anew (fresh GUIDs, backup at the device's end). Instead of --payload.
    #[arg(long, value_name = "PAYLOAD", conflicts_with_all = ["payload", "root_dir"])]
    disk_payload: Option<PathBuf>,
    /// Signed payload for USR-B: both slots filled and committed, A preferred.
    #[arg(long, value_name = "PAYLOAD")]
    payload_b: Option<PathBuf>,
    /// Trusted public key file; repeat for several.
    #[arg(long, value_name = "PUB", required = true)]
    pubkey: Vec<PathBuf>,
    /// Directory whose files go into the OEM partition (ext4 labelled OEM).
    #[arg(long, value_name = "DIR")]
    oem: Option<PathBuf>,
    /// Directory to fill ROOT from (default: empty mount points usr, etc, var, ...).
    #[arg(long, value_name = "DIR")]
    root_dir: Option<PathBuf>,
    /// Size of each USR partition (e.g. 512M, 1G).
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = disk::parse_size)]
    usr_size: u64,
    /// Size of the ROOT filesystem (the partition takes the rest of the device).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = disk::parse_size)]
    root_size: u64,
    /// Sector size for disk-image files (block devices use their own): 512 or 4096.
    #[arg(long, value_name = "BYTES", value_parser = parse_sector_size)]
    sector_size: Option<u32>,
    /// GRUB artifacts [default: $IMAGE_TOOLS_GRUB_DIR, else /usr/lib/ab-updater/grub].
    #[arg(long, value_name = "DIR")]
    grub_dir: Option<PathBuf>,
    /// On failure leave the device as it is instead of wiping its partition table.
    #[arg(long)]
    preserve_on_error: bool,
    /// Append each device's JSON record as one line to FILE (synced).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// JSON lines on stdout: progress events and one record per device.
    #[arg(long)]
    json: bool,
}

impl FlashCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        let grub = match self.disk_payload {
            Some(_) => None,
            None => Some(GrubFiles::from_dir(&disk::grub_dir(
                self.grub_dir.as_deref(),
            )?)?),
        };
        let keys = self
            .pubkey
            .iter()
            .map(|p| TrustedKeys::load_file(p))
            .collect::<Result<Vec<_>, _>>()?;
        let spec = FlashSpec {
            payload_a: match (&self.payload, &self.disk_payload) {
                (Some(p), _) | (None, Some(p)) => p.clone(),
                (None, None) => anyhow::bail!("give --payload or --disk-payload"),
            },
            disk_image: self.disk_payload.is_some(),
            payload_b: self.payload_b.clone(),
            keys: TrustedKeys::new(keys),
            grub,
            usr_size: self.usr_size,
            root_size: self.root_size,
            root_dir: self.root_dir.clone(),
            oem_dir: self.oem.clone(),
            preserve_on_error: self.preserve_on_error,
            now: unix_now(),
        };
        for (i, p) in self.to.iter().enumerate() {
            if self.to[..i].contains(p) {
                anyhow::bail!("{} is given twice", p.display());
            }
        }
        // Open and check every target first: refusals are per device.
        let mut opened = Vec::new();
        let mut refused = Vec::new();
        for (i, p) in self.to.iter().enumerate() {
            match target::Target::open(p, self.sector_size, 0) {
                Ok(t) => {
                    if opened
                        .iter()
                        .any(|(_, o): &(usize, target::Target)| o.identity == t.identity)
                    {
                        anyhow::bail!("{} is the same device as another --to", p.display());
                    }
                    opened.push((i, t));
                }
                Err(e) => refused.push((i, p.clone(), e)),
            }
        }
        let mut sizes: Vec<u32> = opened.iter().map(|(_, t)| t.sector_size).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let job = Job::prepare(&spec, &sizes).context("preparing the flash")?;
        let mut fits = Vec::new();
        for (i, t) in opened {
            match t.check_size(job.min_bytes()) {
                Ok(()) => fits.push((i, t)),
                Err(e) => refused.push((i, t.path.clone(), e)),
            }
        }
        let opened = fits;

        let names: Vec<String> = opened
            .iter()
            .map(|(_, t)| t.path.display().to_string())
            .collect();
        let reporter: Box<dyn Reporter> = if self.json {
            Box::new(report::JsonReporter::new(names.clone()))
        } else {
            Box::new(report::BarReporter::new(&names))
        };
        let order: Vec<usize> = opened.iter().map(|(i, _)| *i).collect();
        let mut slots: Vec<DeviceSlot<target::Target>> = opened
            .into_iter()
            .map(|(_, t)| DeviceSlot::from_target(t))
            .collect();
        let flashed = flash_all(&job, &mut slots, &*reporter);
        for s in &slots {
            s.storage.reread_partitions();
        }
        drop(reporter);
        let mut records: Vec<(usize, DeviceRecord)> = order.into_iter().zip(flashed).collect();
        for (i, p, e) in refused {
            records.push((i, refused_record(p, &e)));
        }
        records.sort_by_key(|(i, _)| *i);
        self.output(&records.into_iter().map(|(_, r)| r).collect::<Vec<_>>())
    }

    fn output(&self, records: &[DeviceRecord]) -> anyhow::Result<()> {
        if let Some(path) = &self.record {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening record file {}", path.display()))?;
            for r in records {
                writeln!(f, "{}", serde_json::to_string(r)?)
                    .with_context(|| format!("writing record file {}", path.display()))?;
            }
            f.sync_all()
                .with_context(|| format!("syncing record file {}", path.display()))?;
        }
        let failed = records.iter().filter(|r| r.result != "flashed").count();
        for r in records {
            if self.json {
                report::emit_json(&serde_json::json!({"event": "record", "record": r}));
            } else if r.result == "flashed" {
                println!(
                    "{}: flashed {} {} in {:.1} s, disk GUID {}",
                    r.device,
                    r.slots[0].compatible,
                    r.slots
                        .iter()
                        .map(|s| format!("{}={}", s.label, s.version))
                        .collect::<Vec<_>>()
                        .join(" "),
                    r.seconds,
                    r.disk_guid.as_deref().unwrap_or("")
                );
            } else {
                let error = r.error.as_deref().unwrap_or("");
                // Refusals and device errors name the device already.
                let prefix = if error.contains(&r.device) {
                    String::new()
                } else {
                    format!("{}: ", r.device)
                };
                eprintln!(
                    "image-tools: {prefix}{error} ({}; left {})",
                    r.result, r.left
                );
            }
        }
        if failed > 0 {
            return Err(DevicesFailed {
                failed,
                total: records.len(),
            }
            .into());
        }
        Ok(())
    }
}

fn refused_record(p: PathBuf, e: &target::TargetError) -> DeviceRecord {
    DeviceRecord {
        format_version: report::RECORD_FORMAT_VERSION,
        result: "refused".into(),
        error: Some(one_line(e)),
        left: "untouched".into(),
        device: p.display().to_string(),
        serial: None,
        bytes: 0,
        sector_size: 0,
        disk_guid: None,
        partitions: Vec::new(),
        slots: Vec::new(),
        digests: Vec::new(),
        bytes_written: 0,
        seconds: 0.0,
        finished_at: unix_now(),
    }
}
