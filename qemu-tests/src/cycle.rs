//! The update cycle in QEMU (issue 5): test images v1 to v4, their signed payloads on a disk
//! the guest mounts, and the guest side of install, health, status and rollback.
//!
//! # Brief overview
//! - [`CycleImages::get`]: the /usr images and payloads, built once and cached by their inputs
//!   ([`crate::cache`]). Every image ships the boot hook [`HEALTH_HOOK`] (the test OS's form of
//!   `updater/dist/inittab.updater`: `updater health` once per boot), a passing health check
//!   [`CHECK_OK`], the test public key in `lib/updater/keys.d/`, and [`CONFIG`] with
//!   `[reboot] strategy = "immediate"`, so a guest whose checks fail reboots by itself. v3
//!   adds [`CHECK_FAILING`]; v4's init ([`V4_INIT`]) exits at once, so the kernel panics and
//!   `panic=5` on GRUB's command line reboots. The signing key is made by image-tools' keygen
//!   when the entry is built: test keys live in the test cache only, never in the repository.
//! - [`CycleImages::payloads_disk`]: an ext4 image holding `v2.payload` … `v4.payload`, v2
//!   again in payload format 2 ([`V2_FORMAT2_PAYLOAD`], installed by delta) and the release
//!   streams [`STREAMS`] (made with `image-tools publish`), attached read-only as
//!   `/dev/vdb` and mounted at [`PAYLOADS_MOUNT`]. A filesystem rather
//!   than a raw payload as the disk: a virtio disk is a whole number of sectors, and the
//!   updater rightly refuses the padding after the last frame as trailing data.
//! - [`CycleDisk`]: a fresh bootable disk (v1 in USR-A) and what bootctl reads on it.
//! - [`Guest`]: the commands of the cycle over the serial console of a [`Machine`] —
//!   install, status (parsed from `--json` into [`GuestStatus`]), rollback.
//!
//! ```no_run
//! use qemu_tests::cycle::{CycleDisk, CycleImages, Guest};
//! use qemu_tests::machine::Firmware;
//! use std::time::Duration;
//! let images = CycleImages::get()?;
//! let disk = CycleDisk::new(images, std::env::temp_dir().join("cycle-disk.img"))?;
//! let mut guest = Guest::boot(&disk, images, Firmware::Uefi, "doc")?;
//! guest.install("2")?;
//! println!("{}", guest.status_text()?);
//! # Ok::<(), anyhow::Error>(())
//! ```
use crate::cache::{cached_dir, Key};
use crate::error::Error;
use crate::machine::{Booted, Firmware, Machine, MachineConfig, READY_MARKER};
use crate::testos::{TestOs, UsrSpec, USR_INIT};
use anyhow::{bail, Context};
use bootctl::{SlotAttrs, SlotDisk, SlotId};
use image_tools::mkusr::UsrFs;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The boot hook every cycle image ships (`/usr/lib/testos/boot.d/50-updater-health`).
///
/// The test OS runs its boot hooks once per boot, as busybox init runs the `::once:` line of
/// `updater/dist/inittab.updater`. The guest has no udev and so no `/dev/disk/by-partuuid`:
/// the disk is named, the booted slot still comes from `mount.usr=PARTUUID=`.
pub const HEALTH_HOOK: &str = "#!/usr/bin/sh\n\
# updater/dist/inittab.updater for the test OS: run the health checks once per boot.\n\
exec /usr/bin/updater --disk /dev/vda health\n";

/// A health check every image passes (`/usr/lib/updater/health.d/10-usr-mounted`).
pub const CHECK_OK: &str = "#!/usr/bin/sh\n\
# The running /usr is the one GRUB chose.\n\
grep -q \"mount.usr=PARTUUID=\" /proc/cmdline && test -x /usr/bin/updater\n";

/// Name of v3's failing health check.
pub const FAILING_CHECK_NAME: &str = "50-widget-service";

/// What v3's failing check prints (and `updater status` must repeat).
pub const FAILING_CHECK_MESSAGE: &str = "widget-service: self-test failed: port 8080 refused";

/// v3's failing health check (`/usr/lib/updater/health.d/50-widget-service`).
pub const CHECK_FAILING: &str = "#!/usr/bin/sh\n\
echo \"widget-service: self-test failed: port 8080 refused\" >&2\n\
exit 3\n";

/// The vendor configuration of every image (`/usr/lib/updater/config.d/50-testos.toml`).
pub const CONFIG: &str = "[reboot]\nstrategy = \"immediate\"\n";

/// What v4's init prints before it exits.
pub const V4_MARKER: &str = "TESTOS: v4 init exits: this image never comes up";

/// v4's `/usr/lib/testos/init`: PID 1 exits, the kernel panics, `panic=5` reboots.
pub const V4_INIT: &str = "#!/usr/bin/sh\n\
echo \"TESTOS: v4 init exits: this image never comes up\"\n\
exit 1\n";

/// The line the kernel prints when PID 1 exits.
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";

/// Where the guest mounts the payloads disk.
pub const PAYLOADS_MOUNT: &str = "/mnt/payloads";

/// The versions with a payload.
pub const PAYLOAD_VERSIONS: [&str; 3] = ["2", "3", "4"];

/// v2 packed in payload format 2 (`image-tools pack --format 2`: content-defined chunks), on
/// the payloads disk next to the format 1 payloads. v2 differs from v1 in `IMAGE_VERSION`
/// only, so a v1 box finds most of its chunks in its booted slot and installs it by delta.
pub const V2_FORMAT2_PAYLOAD: &str = "v2-format2.payload";

/// From power-on to the test OS's boot marker (TCG on a loaded host; a hang guard).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// A quick command in the guest.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// An install in the guest (decode, verify, write and read back ~25 MiB under TCG).
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// From the power-off request to QEMU's exit.
pub const POWEROFF_TIMEOUT: Duration = Duration::from_secs(90);

/// Size of each USR partition of a cycle disk.
pub const USR_SIZE: u64 = 64 << 20;
/// Size of ROOT of a cycle disk.
pub const ROOT_SIZE: u64 = 64 << 20;

/// The /usr spec of cycle image `version` ("1" to "4") trusting `public_key`.
pub fn usr_spec(version: &str, public_key: &[u8]) -> UsrSpec {
    let mut spec = UsrSpec::new(version)
        .file("lib/testos/boot.d/50-updater-health", 0o755, HEALTH_HOOK)
        .file("lib/updater/health.d/10-usr-mounted", 0o755, CHECK_OK)
        .file("lib/updater/config.d/50-testos.toml", 0o644, CONFIG)
        .file("lib/updater/keys.d/test.pub", 0o644, public_key);
    if version == "3" {
        spec = spec.file(
            &format!("lib/updater/health.d/{FAILING_CHECK_NAME}"),
            0o755,
            CHECK_FAILING,
        );
    }
    if version == "4" {
        spec = spec.file("lib/testos/init", 0o755, V4_INIT);
    }
    spec
}

/// The cycle's images and payloads (one cache entry).
#[derive(Debug, Clone)]
pub struct CycleImages {
    /// The cache entry's directory.
    pub dir: PathBuf,
}

impl CycleImages {
    /// Builds the images on first use in this process (or takes them from the cache).
    pub fn get() -> anyhow::Result<&'static CycleImages> {
        static IMAGES: OnceLock<Result<CycleImages, String>> = OnceLock::new();
        IMAGES
            .get_or_init(|| CycleImages::build().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("building the cycle images: {e}"))
    }

    fn build() -> anyhow::Result<CycleImages> {
        let os = TestOs::get()?;
        let mut key = Key::new()
            .text(&os.kernel.package)
            .file(&os.initramfs)?
            .file(&os.busybox)?
            .file(&os.updater)?
            .text(USR_INIT)
            .text(&format!("{STREAMS:?} {STREAM_EPOCH}"))
            .text(V2_FORMAT2_PAYLOAD);
        for v in ["1", "2", "3", "4"] {
            for (path, mode, content) in usr_spec(v, b"").files {
                key = key.text(&path).text(&mode.to_string()).bytes(&content);
            }
        }
        let dir = cached_dir("cycle", &key, |dir| {
            build_entry(os, dir).map_err(|e| Error::Invalid(format!("{e:#}")))
        })?;
        Ok(CycleImages { dir })
    }

    /// The /usr image of `version`.
    pub fn usr(&self, version: &str) -> PathBuf {
        self.dir.join(format!("usr-v{version}.img"))
    }

    /// The payload of `version` (on the host).
    pub fn payload(&self, version: &str) -> PathBuf {
        self.dir.join(format!("payloads/v{version}.payload"))
    }

    /// The ext4 image holding every payload, for [`MachineConfig::extra_disk`].
    pub fn payloads_disk(&self) -> PathBuf {
        self.dir.join("payloads.img")
    }
}

fn build_entry(os: &TestOs, dir: &Path) -> anyhow::Result<()> {
    let prefix = dir.join("test-signing");
    image_tools::keys::KeygenCmd {
        out: prefix.clone(),
    }
    .run()
    .context("making the test signing key")?;
    let public = dir.join("test-signing.pub");
    let public_key =
        std::fs::read(&public).with_context(|| format!("reading {}", public.display()))?;
    for v in ["1", "2", "3", "4"] {
        let out = dir.join(format!("usr-v{v}.img"));
        os.build_usr_image(&usr_spec(v, &public_key), UsrFs::Squashfs, &out)
            .with_context(|| format!("building /usr image v{v}"))?;
    }
    let payloads = dir.join("payloads");
    std::fs::create_dir_all(&payloads)
        .with_context(|| format!("creating {}", payloads.display()))?;
    let mut total = 0;
    for v in PAYLOAD_VERSIONS {
        let out = payloads.join(format!("v{v}.payload"));
        pack(
            &dir.join(format!("usr-v{v}.img")),
            &dir.join("test-signing.key"),
            &out,
        )
        .with_context(|| format!("packing v{v}"))?;
        total += std::fs::metadata(&out)
            .with_context(|| format!("reading size of {}", out.display()))?
            .len();
    }
    let v2_format2 = payloads.join(V2_FORMAT2_PAYLOAD);
    pack_with(
        &dir.join("usr-v2.img"),
        &dir.join("test-signing.key"),
        &v2_format2,
        &["--format", "2"],
    )
    .context("packing v2 in format 2")?;
    total += std::fs::metadata(&v2_format2)
        .with_context(|| format!("reading size of {}", v2_format2.display()))?
        .len();
    // Release streams of the agent scenario: `streams/N` is the tree a publisher holds once
    // it has published v2 … vN (each release open to every box), signed with the test key.
    for (n, versions) in STREAMS {
        let tree = payloads.join("streams").join(n);
        let key = dir.join("test-signing.key");
        let (root, key) = (tree.to_str().unwrap_or(""), key.to_str().unwrap_or(""));
        publish(
            &["init", root, "--channel", "stable", "--expires-in", "520w"],
            key,
        )
        .with_context(|| format!("publishing stream {n}"))?;
        for v in *versions {
            let payload = payloads.join(format!("v{v}.payload"));
            let payload = payload.to_str().unwrap_or("");
            let tree_args = ["--root", root, "--channel", "stable"];
            publish(&[&["add", payload][..], &tree_args].concat(), key)
                .with_context(|| format!("adding v{v} to stream {n}"))?;
            publish(
                &[
                    &["rollout", v, "--start", STREAM_EPOCH, "--duration", "0s"][..],
                    &tree_args,
                ]
                .concat(),
                key,
            )
            .with_context(|| format!("rolling out v{v} in stream {n}"))?;
        }
    }
    let total: u64 = total * 4;
    // ext4 without a journal: mounted read-only from a read-only disk, nothing to replay.
    let image = dir.join("payloads.img");
    let mib = total / (1 << 20) + total / (4 << 20) + 8;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-L", "PAYLOADS", "-d"])
        .arg(&payloads)
        .arg(&image)
        .arg(format!("{mib}M"))
        .output()
        .context("running mkfs.ext4")?;
    if !out.status.success() {
        bail!(
            "mkfs.ext4 -d {} {}: {}",
            payloads.display(),
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The streams on the payloads disk: `streams/N` lists these versions.
pub const STREAMS: &[(&str, &[&str])] =
    &[("2", &["2"]), ("3", &["2", "3"]), ("4", &["2", "3", "4"])];

/// The time the cycle streams are made and their rollouts start (fixed: the entry is cached).
const STREAM_EPOCH: &str = "@1767225600";

/// Runs `image-tools publish ARGS --key KEY --now STREAM_EPOCH` in-process.
pub fn publish(args: &[&str], key: &str) -> anyhow::Result<()> {
    use clap::Parser;
    #[derive(Parser)]
    struct Publish {
        #[command(flatten)]
        cmd: image_tools::publish::PublishCmd,
    }
    let mut argv = vec!["publish"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--key", key, "--now", STREAM_EPOCH]);
    Publish::try_parse_from(&argv)
        .with_context(|| format!("parsing publish {argv:?}"))?
        .cmd
        .run()
}

/// Runs `image-tools pack --image IMAGE --key KEY -o OUT` in-process, through its own
/// argument parser so its defaults (chunk size, level) apply.
pub fn pack(image: &Path, key: &Path, out: &Path) -> anyhow::Result<()> {
    pack_with(image, key, out, &[])
}

/// [`pack`] with more arguments (`--format 2`).
pub fn pack_with(image: &Path, key: &Path, out: &Path, more: &[&str]) -> anyhow::Result<()> {
    use clap::Parser;
    #[derive(Parser)]
    struct Pack {
        #[command(flatten)]
        cmd: image_tools::pack::PackCmd,
    }
    let mut args = vec![
        "pack".as_ref(),
        "--image".as_ref(),
        image.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ];
    args.extend(more.iter().map(std::ffi::OsStr::new));
    let parsed: Pack = Pack::try_parse_from(args).context("parsing image-tools pack arguments")?;
    parsed.cmd.run()
}

/// A bootable disk for the cycle: v1 in USR-A (committed), USR-B empty.
#[derive(Debug)]
pub struct CycleDisk {
    /// The disk image file.
    pub path: PathBuf,
}

impl CycleDisk {
    /// Assembles the disk at `path` (512-byte sectors) with image-tools disk's library.
    pub fn new(images: &CycleImages, path: PathBuf) -> anyhow::Result<CycleDisk> {
        let grub = crate::grub::artifacts()?;
        let files = image_tools::disk::GrubFiles::from_dir(&grub.dir)
            .with_context(|| format!("finding GRUB files in {}", grub.dir.display()))?;
        let mut spec = image_tools::disk::DiskSpec::new(images.usr("1"), path.clone(), files);
        spec.usr_size = USR_SIZE;
        spec.root_size = ROOT_SIZE;
        image_tools::disk::assemble(&spec)
            .with_context(|| format!("assembling disk {}", path.display()))?;
        Ok(CycleDisk { path })
    }

    /// Opens the disk's GPT through bootctl, as the device does.
    pub fn slots(&self) -> anyhow::Result<SlotDisk> {
        SlotDisk::open(&self.path, false, None)
            .with_context(|| format!("reading the GPT of {}", self.path.display()))
    }

    /// Slot `id`'s priority, tries and successful bits.
    pub fn attrs(&self, id: &SlotId) -> anyhow::Result<SlotAttrs> {
        Ok(self
            .slots()?
            .slot(id)
            .with_context(|| format!("finding slot {id} on {}", self.path.display()))?
            .attrs)
    }

    /// Slot `id`'s PARTUUID, lower case.
    pub fn partuuid(&self, id: &SlotId) -> anyhow::Result<String> {
        Ok(self
            .slots()?
            .slot(id)
            .with_context(|| format!("finding slot {id} on {}", self.path.display()))?
            .partuuid
            .to_string()
            .to_ascii_lowercase())
    }

    /// Which slot GRUB's rule picks next (without spending a try), `None` when nothing is
    /// bootable.
    pub fn next(&self) -> anyhow::Result<Option<String>> {
        let mut disk = self.slots()?;
        Ok(disk
            .select(false)
            .with_context(|| format!("selecting on {}", self.path.display()))?
            .map(|s| s.slot.label))
    }

    /// Both GPT copies validate and agree.
    pub fn gpt_consistent(&self) -> anyhow::Result<bool> {
        Ok(!self.slots()?.state().needs_repair())
    }
}

/// One slot in `updater status --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct GuestSlot {
    /// `A` or `B`.
    pub slot: String,
    /// The PARTUUID.
    pub partuuid: String,
    /// Priority.
    pub priority: u8,
    /// Tries left.
    pub tries: u8,
    /// Committed.
    pub successful: bool,
    /// `IMAGE_VERSION`, where the updater knows it.
    pub version: Option<String>,
    /// Running now.
    pub booted: bool,
    /// GRUB boots it next.
    pub next: bool,
}

impl GuestSlot {
    /// The slot's attributes.
    pub fn attrs(&self) -> SlotAttrs {
        SlotAttrs {
            priority: self.priority,
            tries: self.tries,
            successful: self.successful,
        }
    }
}

/// The pending install in `updater status --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct GuestPending {
    /// The slot installed into.
    pub slot: String,
    /// The version installed.
    pub version: String,
    /// Made the next boot.
    pub flipped: bool,
}

/// A failed version in `updater status --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct GuestFailedVersion {
    /// The version.
    pub version: String,
    /// The slot it failed in.
    pub slot: String,
    /// Why.
    pub reason: String,
    /// The failing health check, if one failed.
    pub check: Option<String>,
    /// That check's output.
    pub output: Option<String>,
}

/// The failed versions in `updater status --json`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GuestFailed {
    /// Every failed version.
    #[serde(default)]
    pub versions: Vec<GuestFailedVersion>,
}

/// The last health verdict in `updater status --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct GuestHealth {
    /// The slot checked.
    pub slot: String,
    /// Its version.
    pub version: String,
    /// The verdict.
    pub passed: bool,
    /// One line about it.
    pub summary: String,
}

/// `updater status --json` as the guest printed it.
#[derive(Debug, Clone, Deserialize)]
pub struct GuestStatus {
    /// The booted slot.
    pub booted: String,
    /// The slot GRUB boots next.
    pub next: Option<String>,
    /// Both slots.
    pub slots: Vec<GuestSlot>,
    /// The pending install.
    pub pending: Option<GuestPending>,
    /// Failed versions.
    #[serde(default)]
    pub failed: GuestFailed,
    /// The last health verdict.
    pub last_health: Option<GuestHealth>,
}

impl GuestStatus {
    /// Slot `name` (`A` or `B`).
    pub fn slot(&self, name: &str) -> anyhow::Result<&GuestSlot> {
        self.slots
            .iter()
            .find(|s| s.slot == name)
            .with_context(|| format!("no slot {name} in the status: {self:?}"))
    }

    /// The failure recorded for `version`.
    pub fn failed(&self, version: &str) -> Option<&GuestFailedVersion> {
        self.failed.versions.iter().find(|f| f.version == version)
    }
}

/// The machine of a cycle guest: `disk` as the boot disk, the payloads disk attached
/// read-only after it.
pub fn machine_config(
    disk: &CycleDisk,
    images: &CycleImages,
    firmware: Firmware,
    name: &str,
) -> MachineConfig {
    MachineConfig::new(name, firmware, &disk.path).extra_disk(images.payloads_disk(), true)
}

/// The line the test OS prints when it starts the health boot hook.
pub const HEALTH_HOOK_MARKER: &str = "TESTOS: hook /usr/lib/testos/boot.d/50-updater-health";

/// A booted cycle guest: the machine, the disk it boots, and what came up.
pub struct Guest {
    /// The machine.
    pub vm: Machine,
    /// What the last boot reported.
    pub booted: Booted,
    name: String,
}

/// The agent's configuration an admin drops into the guest's ROOT, and its boot hook.
const AGENT_SETUP: &str = "mkdir -p /etc/updater/config.d /etc/testos/boot.d /var/lib && \
printf '[agent]\\nstream_url = \"file:///var/lib/testos-updates/stable/stream.json\"\\ninterval_secs = 2\\njitter_secs = 0\\nrollout_wariness = 0.0\\n' > /etc/updater/config.d/60-agent.toml && \
printf '#!/usr/bin/sh\\n/usr/bin/updater --disk /dev/vda agent </dev/null >>/run/updater-agent.log 2>&1 &\\n' > /etc/testos/boot.d/60-updater-agent && \
chmod 755 /etc/testos/boot.d/60-updater-agent && sync";

/// `updater` with the guest's disk named (no udev in the test OS).
pub const UPDATER: &str = "updater --disk /dev/vda";

impl Guest {
    /// Starts a machine on `disk` with the payloads disk attached, and waits until the test OS
    /// is ready (its boot hooks, `updater health` among them, done).
    pub fn boot(
        disk: &CycleDisk,
        images: &CycleImages,
        firmware: Firmware,
        name: &str,
    ) -> anyhow::Result<Guest> {
        let mut vm = Machine::start(machine_config(disk, images, firmware, name))?;
        let booted = vm.wait_booted(BOOT_TIMEOUT)?;
        vm.wait_for(READY_MARKER, BOOT_TIMEOUT)?;
        let mut guest = Guest {
            vm,
            booted,
            name: name.to_string(),
        };
        guest.run_ok(&format!(
            "mkdir -p {PAYLOADS_MOUNT} && mount -t ext4 -o ro /dev/vdb {PAYLOADS_MOUNT}"
        ))?;
        Ok(guest)
    }

    /// Waits for the next boot of the same machine (after a reboot the guest asked for, a
    /// panic, or [`Machine::reboot`]) and for the test OS to be ready again.
    pub fn wait_next_boot(&mut self) -> anyhow::Result<&Booted> {
        self.wait_next_boot_within(BOOT_TIMEOUT)
    }

    /// [`Guest::wait_next_boot`], with the boot allowed to start up to `timeout` from now (an
    /// agent installing an update before it reboots).
    pub fn wait_next_boot_within(&mut self, timeout: Duration) -> anyhow::Result<&Booted> {
        self.booted = self.vm.wait_booted(timeout)?;
        self.vm.wait_for(READY_MARKER, BOOT_TIMEOUT)?;
        self.run_ok(&format!(
            "mkdir -p {PAYLOADS_MOUNT} && mount -t ext4 -o ro /dev/vdb {PAYLOADS_MOUNT}"
        ))?;
        Ok(&self.booted)
    }

    /// Turns the update agent on, as an admin would: its configuration in `/etc` (the stream
    /// is the local mirror `file:///var/lib/testos-updates/stable/stream.json`, polled every
    /// 2 s, rollout position 0) and its boot hook (the test OS's form of
    /// `updater-agent.service`), started once now; every later boot starts it from init.
    pub fn enable_agent(&mut self) -> anyhow::Result<()> {
        self.run_ok(AGENT_SETUP)?;
        self.run_ok("/etc/testos/boot.d/60-updater-agent")?;
        Ok(())
    }

    /// The publisher makes stream `n` of [`STREAMS`] current on the box's local mirror (one
    /// atomic symlink swap). An agent that is on picks it up at its next poll.
    pub fn publish(&mut self, n: &str) -> anyhow::Result<()> {
        self.run_ok(&format!(
            "ln -sfn {PAYLOADS_MOUNT}/streams/{n} /var/lib/testos-updates.new && mv -T /var/lib/testos-updates.new /var/lib/testos-updates && sync"
        ))?;
        Ok(())
    }

    /// Runs a command that must succeed; returns its output.
    pub fn run_ok(&mut self, command: &str) -> anyhow::Result<String> {
        self.vm
            .run_ok(command, COMMAND_TIMEOUT)
            .with_context(|| format!("running {command:?} in {}", self.name))
    }

    /// The guest command that installs `version` from the payloads disk.
    pub fn install_command(version: &str) -> String {
        format!("{UPDATER} install {PAYLOADS_MOUNT}/v{version}.payload")
    }

    /// The install command as run: stderr into a file and shown after, so it is not a
    /// terminal and the updater draws no progress bar over the serial console.
    fn install_wrapped(version: &str) -> String {
        format!(
            "{} 2>/run/install.err; rc=$?; cat /run/install.err; exit $rc",
            Guest::install_command(version)
        )
    }

    /// Installs `version` and returns what the updater printed.
    pub fn install(&mut self, version: &str) -> anyhow::Result<String> {
        let cmd = Guest::install_wrapped(version);
        self.vm
            .run_ok(&cmd, INSTALL_TIMEOUT)
            .with_context(|| format!("running {cmd:?} in {}", self.name))
    }

    /// Tries to install `version`; returns the exit status and the output.
    pub fn try_install(&mut self, version: &str) -> anyhow::Result<(i32, String)> {
        let cmd = Guest::install_wrapped(version);
        let out = self
            .vm
            .run(&cmd, INSTALL_TIMEOUT)
            .with_context(|| format!("running {cmd:?} in {}", self.name))?;
        Ok((out.rc, out.output))
    }

    /// `updater status --json`, parsed.
    pub fn status(&mut self) -> anyhow::Result<GuestStatus> {
        let out = self.run_ok(&format!("{UPDATER} status --json"))?;
        let line = out
            .lines()
            .rfind(|l| l.trim_start().starts_with('{'))
            .with_context(|| format!("no JSON in the output of updater status: {out:?}"))?;
        serde_json::from_str(line).with_context(|| format!("parsing updater status --json: {line}"))
    }

    /// `updater status` as an operator reads it.
    pub fn status_text(&mut self) -> anyhow::Result<String> {
        self.run_ok(&format!("{UPDATER} status"))
    }

    /// `updater rollback --no-reboot`; returns its output.
    pub fn rollback(&mut self) -> anyhow::Result<String> {
        self.run_ok(&format!("{UPDATER} rollback --no-reboot"))
    }

    /// Asks the guest to reboot (ROOT synced and read-only first) and waits for the next boot.
    pub fn reboot(&mut self) -> anyhow::Result<&Booted> {
        self.vm.reboot()?;
        self.wait_next_boot()
    }

    /// Powers the guest off cleanly.
    pub fn poweroff(mut self) -> anyhow::Result<()> {
        self.vm.poweroff(POWEROFF_TIMEOUT)?;
        Ok(())
    }
}
