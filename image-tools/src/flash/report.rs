//! What `image-tools flash` tells the factory: progress (bars on a terminal, or JSON lines with
//! `--json`) and one [`DeviceRecord`] per device for the factory's books.
//!
//! The record's fields are documented in `docs/usage/factory.md`; a field never changes
//! meaning once released (`format_version` says which fields exist).
//!
//! ```
//! use image_tools::flash::report::{Phase, Reporter};
//! struct Quiet;
//! impl Reporter for Quiet {
//!     fn progress(&self, _device: usize, _phase: Phase, _done: u64, _total: u64) {}
//! }
//! Quiet.progress(0, Phase::Writing, 1, 2);
//! ```
use serde::Serialize;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Version of the record format.
pub const RECORD_FORMAT_VERSION: u32 = 1;

/// The steps of flashing one device, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Zeroing both partition tables and the MBR: from here on the device is not bootable.
    Wiping,
    /// Writing the slots, the ESP, BIOS boot, OEM and ROOT.
    Writing,
    /// Reading all of that back and checking it against its digests.
    Verifying,
    /// Writing the MBR boot code and the partition table (backup, then primary).
    Finalizing,
    /// Reading the table back.
    Checking,
    /// Done: the device is bootable.
    Done,
    /// Failed: the record says why and what was left.
    Failed,
}

impl Phase {
    /// Its name in JSON and on the bars.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Wiping => "wiping",
            Phase::Writing => "writing",
            Phase::Verifying => "verifying",
            Phase::Finalizing => "finalizing",
            Phase::Checking => "checking",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }
}

/// Receives progress from the device threads (device = index in the `--to` order).
pub trait Reporter: Sync {
    /// `done` of `total` bytes of `phase` are through on `device`.
    fn progress(&self, device: usize, phase: Phase, done: u64, total: u64);
}

/// A partition as flashed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionRecord {
    /// Partition number.
    pub number: u32,
    /// GPT name.
    pub label: String,
    /// Unique partition GUID (PARTUUID), lower case.
    pub partuuid: String,
    /// Type GUID, lower case.
    pub type_guid: String,
    /// First byte on the device.
    pub offset: u64,
    /// Length in bytes.
    pub bytes: u64,
}

/// A slot's content as flashed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotRecord {
    /// `USR-A` or `USR-B`.
    pub label: String,
    /// IMAGE_VERSION from the signed manifest.
    pub version: String,
    /// The signed `compatible` string.
    pub compatible: String,
    /// SHA-256 of the image (signed), checked on the read-back.
    pub image_sha256: String,
    /// SHA-256 of the signed manifest bytes: the payload's id, as `updater status` shows it.
    pub payload_id: String,
    /// Key ids whose signatures verified.
    pub signed_by: Vec<String>,
    /// The boot attributes written, `P<priority> T<tries> S<successful>`.
    pub attributes: String,
}

/// The digest of one region written and read back.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RegionDigest {
    /// `EFI-SYSTEM`, `core.img`, `ROOT`, `OEM`, `USR-A`, `USR-B`.
    pub label: String,
    /// First byte on the device.
    pub offset: u64,
    /// Bytes written.
    pub bytes: u64,
    /// SHA-256 of those bytes.
    pub sha256: String,
}

/// The per-device record: one JSON object per device for the factory's books.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceRecord {
    /// [`RECORD_FORMAT_VERSION`].
    pub format_version: u32,
    /// `flashed`, `failed` (writing started) or `refused` (nothing written).
    pub result: String,
    /// The one-line error when not flashed.
    pub error: Option<String>,
    /// What the device holds now: `bootable`, `wiped` (no partition table), `preserved`
    /// (`--preserve-on-error`: whatever the failure left) or `untouched`.
    pub left: String,
    /// The path given with `--to`.
    pub device: String,
    /// Serial number from sysfs, when the device has one.
    pub serial: Option<String>,
    /// Device size in bytes.
    pub bytes: u64,
    /// Logical sector size the table uses.
    pub sector_size: u32,
    /// Disk GUID written.
    pub disk_guid: Option<String>,
    /// Partitions written.
    pub partitions: Vec<PartitionRecord>,
    /// USR-A, and USR-B when `--payload-b` filled it.
    pub slots: Vec<SlotRecord>,
    /// Every region written, with its digest (all verified by reading back).
    pub digests: Vec<RegionDigest>,
    /// Bytes written to the device.
    pub bytes_written: u64,
    /// Wall time for this device, in seconds.
    pub seconds: f64,
    /// Unix time the device was finished.
    pub finished_at: u64,
}

/// Writes JSON lines to stdout (`--json`): progress at most every half second and at every
/// phase change, per device.
pub struct JsonReporter {
    devices: Vec<String>,
    last: Mutex<Vec<(Option<Phase>, Option<Instant>)>>,
}

impl JsonReporter {
    /// A reporter for the devices named `devices` (in `--to` order).
    pub fn new(devices: Vec<String>) -> JsonReporter {
        let n = devices.len();
        JsonReporter {
            devices,
            last: Mutex::new(vec![(None, None); n]),
        }
    }
}

/// Writes one JSON object as a line to stdout; a closed stdout does not stop a flash.
pub fn emit_json(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}").and_then(|()| out.flush());
}

impl Reporter for JsonReporter {
    fn progress(&self, device: usize, phase: Phase, done: u64, total: u64) {
        let mut last = self.last.lock().expect("reporter lock");
        let (p, t) = &mut last[device];
        let now = Instant::now();
        let due = *p != Some(phase)
            || done == total
            || t.is_none_or(|t| now.duration_since(t) >= Duration::from_millis(500));
        if !due {
            return;
        }
        *p = Some(phase);
        *t = Some(now);
        emit_json(&serde_json::json!({
            "event": "progress",
            "device": self.devices[device],
            "phase": phase.name(),
            "done": done,
            "total": total,
        }));
    }
}

/// One progress bar per device on stderr (hidden when stderr is not a terminal).
pub struct BarReporter {
    bars: Vec<indicatif::ProgressBar>,
}

impl BarReporter {
    /// Bars for the devices named `devices`.
    pub fn new(devices: &[String]) -> BarReporter {
        let multi =
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
        let width = devices.iter().map(|d| d.len()).max().unwrap_or(8).min(24);
        let style = indicatif::ProgressStyle::with_template(&format!(
            "{{prefix:<{width}}} {{msg:<10}} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}}"
        ))
        .expect("valid template")
        .progress_chars("=> ");
        let bars = devices
            .iter()
            .map(|d| {
                let b = multi.add(indicatif::ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(d.clone());
                b
            })
            .collect();
        BarReporter { bars }
    }
}

impl Reporter for BarReporter {
    fn progress(&self, device: usize, phase: Phase, done: u64, total: u64) {
        let b = &self.bars[device];
        if b.message() != phase.name() {
            b.set_message(phase.name());
        }
        b.set_length(total);
        b.set_position(done);
        if matches!(phase, Phase::Done | Phase::Failed) {
            b.finish();
        }
    }
}

/// Reports nothing.
pub struct NoReporter;

impl Reporter for NoReporter {
    fn progress(&self, _: usize, _: Phase, _: u64, _: u64) {}
}
