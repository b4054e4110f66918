//! `image-tools pxe`: the artifacts a PXE/iPXE or GRUB netboot setup serves to RAM-booted
//! nodes (issue 11, DESIGN §12, `docs/usage/pxe.md`).
//!
//! From a signed payload (`--payload FILE|URL`) or the newest release of a signed stream
//! (`--stream URL`), verified completely against the trusted keys first (the same code as the
//! node, [`ab_release::netboot::fetch_into`]), it writes into the output directory:
//!
//! - `vmlinuz`: the image's `boot/vmlinuz`;
//! - `initramfs.img`: the image's `boot/initramfs.img` followed by a second `newc` archive (the
//!   kernel unpacks both, later entries replacing earlier ones) holding our `/init`
//!   ([`NETBOOT_INIT`]), the static `updater` (the image's `bin/updater`, or `--updater`), the
//!   trusted keys in `etc/updater/keys.d/`, `etc/updater/netboot.env` (`IMAGE_ID`, the oldest
//!   version accepted, the init to switch to) and the modules the image lists in
//!   `lib/modules/netboot/load-order` (network driver, loop, the /usr filesystem);
//! - `boot.ipxe` and `grub.cfg`: example netboot configs with the kernel arguments;
//! - `pxe.json`: what was written (version, kernel arguments, SHA-256 of each file).
//!
//! Files are read out of the /usr image without mounting it (`unsquashfs -cat` for squashfs,
//! `debugfs -R dump` for ext4), each bounded by [`MAX_BOOT_FILE_LEN`].
//!
//! ```no_run
//! use image_tools::pxe::{write_artifacts, PxeSpec, PxeSource};
//! let spec = PxeSpec::new(PxeSource::Payload("usr-2.0.payload".into()), "out".into())
//!     .payload_url("http://boot.example/usr-2.0.payload");
//! let spec = PxeSpec { pubkeys: vec!["release.pub".into()], ..spec };
//! let report = write_artifacts(&spec)?;
//! println!("{}", report.kernel_args);
//! # Ok::<(), anyhow::Error>(())
//! ```
use crate::cpio::CpioWriter;
use ab_payload::{KeyId, Sha256Digest, TrustedKeys};
use ab_release::netboot::{self, Expect, NetbootOptions};
use ab_release::source::{FileSource, HttpSource, Source};
use ab_release::stream::{self, Position};
use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `/init` of the netboot initramfs.
pub const NETBOOT_INIT: &str = include_str!("pxe/netboot-init.sh");

/// Largest file taken out of the /usr image (kernel, initramfs, updater, one module).
pub const MAX_BOOT_FILE_LEN: u64 = 512 << 20;

/// Most modules taken from `lib/modules/netboot/load-order`.
pub const MAX_MODULES: usize = 64;

/// Where the image lists the modules a RAM-booted node loads, relative to /usr.
pub const NETBOOT_MODULES_DIR: &str = "lib/modules/netboot";

/// Where the payload comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PxeSource {
    /// A payload file or http(s) URL.
    Payload(String),
    /// An http(s) URL of a signed stream's `stream.json`: its newest started release.
    Stream {
        /// The URL.
        url: String,
        /// The channel.
        channel: String,
    },
}

/// What to write.
#[derive(Debug, Clone)]
pub struct PxeSpec {
    /// The payload or stream.
    pub source: PxeSource,
    /// The output directory (created; files in it are replaced).
    pub output: PathBuf,
    /// The payload URL nodes fetch (payload mode; default: the `--payload` URL if it is one).
    pub payload_url: Option<String>,
    /// The static updater to put in the initramfs (default: the image's `bin/updater`).
    pub updater: Option<PathBuf>,
    /// The init the node switches to (absolute path in the booted system).
    pub init: String,
    /// Refuse payloads older than this (default: the payload's version in payload mode, none
    /// in stream mode, where the rollout may hold a node at an older release).
    pub min_version: Option<String>,
    /// Extra kernel arguments.
    pub append: String,
    /// The trusted public key files (copied into the initramfs).
    pub pubkeys: Vec<PathBuf>,
}

impl PxeSpec {
    /// A spec with defaults: init `/sbin/init`, `console=ttyS0`.
    pub fn new(source: PxeSource, output: PathBuf) -> PxeSpec {
        PxeSpec {
            source,
            output,
            payload_url: None,
            updater: None,
            init: "/sbin/init".into(),
            min_version: None,
            append: "console=ttyS0".into(),
            pubkeys: Vec::new(),
        }
    }

    /// Sets the payload URL nodes fetch.
    pub fn payload_url(mut self, url: &str) -> PxeSpec {
        self.payload_url = Some(url.to_owned());
        self
    }
}

/// What [`write_artifacts`] wrote (`pxe.json`).
#[derive(Debug, Clone, Serialize)]
pub struct PxeReport {
    /// `IMAGE_ID` of the image.
    pub image_id: String,
    /// Its version.
    pub version: String,
    /// The kernel arguments of the example configs.
    pub kernel_args: String,
    /// Modules added to the initramfs, in load order.
    pub modules: Vec<String>,
    /// Files written, name and SHA-256.
    pub files: Vec<(String, String)>,
    /// Image size in bytes (the RAM a node needs for /usr).
    pub image_size: u64,
}

/// Verifies the payload against the keys of `spec.pubkeys` (the keys the initramfs will trust)
/// and writes the artifacts (see the module doc).
pub fn write_artifacts(spec: &PxeSpec) -> anyhow::Result<PxeReport> {
    if spec.pubkeys.is_empty() {
        bail!("no trusted public key given");
    }
    let keys = spec
        .pubkeys
        .iter()
        .map(|p| TrustedKeys::load_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    let keys = &TrustedKeys::new(keys);
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let image = work.path().join("usr.img");
    let mut opts = NetbootOptions::new(Expect {
        image_id: None,
        min_version: None,
    });
    opts.attempts = 3;
    let (verified, fetch_url) = match &spec.source {
        PxeSource::Payload(p) => {
            let source: Box<dyn Source> = if p.starts_with("http://") || p.starts_with("https://") {
                Box::new(HttpSource::new(p, opts.connect_timeout, opts.read_timeout))
            } else {
                Box::new(FileSource::open(Path::new(p)).with_context(|| format!("opening {p}"))?)
            };
            let verified = netboot::fetch_into(source, keys, &opts, None, &image)
                .map_err(|e| anyhow::anyhow!(netboot::one_line(&e)))
                .with_context(|| format!("verifying payload {p}"))?;
            let url = spec
                .payload_url
                .clone()
                .or_else(|| netboot::check_url(p).ok().map(|()| p.clone()))
                .context("--url is required: the payload URL the nodes fetch")?;
            netboot::check_url(&url).map_err(anyhow::Error::msg)?;
            (verified, format!("updater.url={url}"))
        }
        PxeSource::Stream { url, channel } => {
            netboot::check_url(url).map_err(anyhow::Error::msg)?;
            let position = Position::from_wariness(0.0).expect("0 is a valid wariness");
            let release = netboot::choose_release(url, channel, position, keys, &opts)
                .map_err(|e| anyhow::anyhow!(netboot::one_line(&e)))?;
            let location = stream::resolve_location(url, &release.location);
            let source = HttpSource::new(&location, opts.connect_timeout, opts.read_timeout);
            let verified =
                netboot::fetch_into(Box::new(source), keys, &opts, Some(&release), &image)
                    .map_err(|e| anyhow::anyhow!(netboot::one_line(&e)))
                    .with_context(|| format!("verifying payload {location}"))?;
            (
                verified,
                format!("updater.stream={url} updater.channel={channel}"),
            )
        }
    };
    let min_version = match (&spec.min_version, &spec.source) {
        (Some(v), _) => Some(v.clone()),
        (None, PxeSource::Payload(_)) => Some(verified.version.clone()),
        (None, PxeSource::Stream { .. }) => None,
    };
    let fs_kind = ImageFs::detect(&image)?;
    fs::create_dir_all(&spec.output)
        .with_context(|| format!("creating {}", spec.output.display()))?;
    let out = |name: &str| spec.output.join(name);

    fs_kind.extract(&image, "boot/vmlinuz", &out("vmlinuz"))?;
    let base_initramfs = work.path().join("initramfs.img");
    fs_kind.extract(&image, "boot/initramfs.img", &base_initramfs)?;
    let updater_bin = match &spec.updater {
        Some(p) => p.clone(),
        None => {
            let p = work.path().join("updater");
            fs_kind
                .extract(&image, "bin/updater", &p)
                .context("taking the static updater from the image (or pass --updater)")?;
            p
        }
    };
    let modules = fs_kind.modules(&image, work.path())?;

    // The second archive, appended to the image's own initramfs.
    let mut appended = CpioWriter::new(Vec::new());
    let env = format!(
        "NETBOOT_IMAGE_ID={}\nNETBOOT_MIN_VERSION={}\nNETBOOT_INIT={}\n",
        shell_word(&verified.compatible)?,
        shell_word(min_version.as_deref().unwrap_or(""))?,
        shell_word(&spec.init)?
    );
    let w = &mut appended;
    for d in [
        "bin",
        "etc",
        "etc/updater",
        "etc/updater/keys.d",
        "lib",
        "lib/modules",
    ] {
        w.dir(d, 0o755)?;
    }
    w.dir(NETBOOT_MODULES_DIR, 0o755)?;
    w.file("init", 0o755, NETBOOT_INIT.as_bytes())?;
    w.file("bin/updater", 0o755, &read_bounded(&updater_bin)?)?;
    w.file("etc/updater/netboot.env", 0o644, env.as_bytes())?;
    for key in &spec.pubkeys {
        let text = read_bounded(key)?;
        let vk = TrustedKeys::load_file(key)?;
        w.file(
            &format!("etc/updater/keys.d/{}.pub", KeyId::of(&vk)),
            0o644,
            &text,
        )?;
    }
    let mut order = String::new();
    for (name, path) in &modules {
        w.file(
            &format!("{NETBOOT_MODULES_DIR}/{name}"),
            0o644,
            &read_bounded(path)?,
        )?;
        order.push_str(name);
        order.push('\n');
    }
    w.file(
        &format!("{NETBOOT_MODULES_DIR}/load-order"),
        0o644,
        order.as_bytes(),
    )?;
    let appended = appended.finish()?;
    let mut initramfs = read_bounded(&base_initramfs)?;
    // Each archive starts on a 4-byte boundary; ours are 512-byte padded already.
    initramfs.resize(initramfs.len().next_multiple_of(512), 0);
    initramfs.extend_from_slice(&appended);
    write_file(&out("initramfs.img"), &initramfs)?;

    let kernel_args = format!(
        "{} {fetch_url} updater.init={}",
        spec.append.trim(),
        spec.init
    )
    .trim()
    .to_string();
    write_file(&out("boot.ipxe"), ipxe_script(&kernel_args).as_bytes())?;
    write_file(&out("grub.cfg"), grub_cfg(&kernel_args).as_bytes())?;
    let mut files = Vec::new();
    for name in ["vmlinuz", "initramfs.img", "boot.ipxe", "grub.cfg"] {
        let bytes = fs::read(out(name)).with_context(|| format!("reading {name}"))?;
        files.push((name.to_string(), Sha256Digest::of(&bytes).to_string()));
    }
    let report = PxeReport {
        image_id: verified.compatible,
        version: verified.version,
        kernel_args,
        modules: modules.into_iter().map(|(n, _)| n).collect(),
        files,
        image_size: verified.image_size,
    };
    write_file(
        &out("pxe.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

/// The iPXE script: kernel and initramfs next to it (TFTP or HTTP, relative to the script).
pub fn ipxe_script(kernel_args: &str) -> String {
    format!(
        "#!ipxe\n\
         # Written by image-tools pxe. Serve vmlinuz and initramfs.img beside this script.\n\
         dhcp || goto retry\n\
         kernel vmlinuz initrd=initramfs.img {kernel_args}\n\
         initrd initramfs.img\n\
         boot\n\
         :retry\n\
         sleep 5\n\
         reboot\n"
    )
}

/// The GRUB netboot menu (grub-mknetdir): kernel and initramfs from the boot server.
pub fn grub_cfg(kernel_args: &str) -> String {
    format!(
        "# Written by image-tools pxe. Serve vmlinuz and initramfs.img from $prefix/...\n\
         set timeout=0\n\
         menuentry \"RAM boot\" {{\n\
         \tnet_dhcp\n\
         \tlinux ($root)/vmlinuz {kernel_args}\n\
         \tinitrd ($root)/initramfs.img\n\
         }}\n"
    )
}

/// A value for `netboot.env` (sourced by the init): only characters that need no quoting.
fn shell_word(v: &str) -> anyhow::Result<&str> {
    let ok = v
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"._-~^+:/=,@".contains(&c));
    if !ok {
        bail!("{v:?} contains characters the initramfs script cannot take");
    }
    Ok(v)
}

fn read_bounded(path: &Path) -> anyhow::Result<Vec<u8>> {
    let len = fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_BOOT_FILE_LEN {
        bail!(
            "{} is {len} bytes, more than {MAX_BOOT_FILE_LEN}",
            path.display()
        );
    }
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

/// The filesystem of a verified /usr image, read without mounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageFs {
    Squashfs,
    Ext4,
}

impl ImageFs {
    fn detect(image: &Path) -> anyhow::Result<ImageFs> {
        let mut head = [0u8; 1082];
        let f = fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0)
            .with_context(|| format!("reading {}", image.display()))?;
        if head.starts_with(b"hsqs") {
            Ok(ImageFs::Squashfs)
        } else if head[1080..1082] == [0x53, 0xef] {
            Ok(ImageFs::Ext4)
        } else {
            bail!("the /usr image is neither squashfs nor ext4");
        }
    }

    /// Copies `/usr/<inner>` of the image to `to`, refusing a missing or oversized file.
    fn extract(self, image: &Path, inner: &str, to: &Path) -> anyhow::Result<()> {
        let mut cmd = match self {
            ImageFs::Squashfs => {
                let mut c = Command::new("unsquashfs");
                c.arg("-cat").arg(image).arg(inner);
                c.stdout(
                    fs::File::create(to).with_context(|| format!("creating {}", to.display()))?,
                );
                c
            }
            ImageFs::Ext4 => {
                let mut c = Command::new("debugfs");
                c.arg("-R")
                    .arg(format!("dump /{inner} {}", to.display()))
                    .arg(image);
                c.stdout(std::process::Stdio::null());
                c
            }
        };
        let out = cmd
            .stderr(std::process::Stdio::piped())
            .output()
            .with_context(|| format!("running {cmd:?}"))?;
        let len = fs::metadata(to).map(|m| m.len()).unwrap_or(0);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // debugfs reports a missing file on stderr with status 0.
        if !out.status.success() || len == 0 || stderr.contains("not found") {
            let _ = fs::remove_file(to);
            bail!(
                "/usr/{inner} is missing or empty in the image: {}",
                stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("")
            );
        }
        if len > MAX_BOOT_FILE_LEN {
            bail!("/usr/{inner} is {len} bytes, more than {MAX_BOOT_FILE_LEN}");
        }
        Ok(())
    }

    /// The modules named by `lib/modules/netboot/load-order` (none without one), each copied
    /// into `work`: (file name, path).
    fn modules(self, image: &Path, work: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let order = work.join("load-order");
        if self
            .extract(image, &format!("{NETBOOT_MODULES_DIR}/load-order"), &order)
            .is_err()
        {
            return Ok(Vec::new());
        }
        let text = fs::read_to_string(&order).context("reading the module load order")?;
        let names: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if names.len() > MAX_MODULES {
            bail!("{NETBOOT_MODULES_DIR}/load-order lists more than {MAX_MODULES} modules");
        }
        let mut out = Vec::new();
        for name in names {
            if !name.ends_with(".ko") || name.contains('/') || name.starts_with('.') {
                bail!("{NETBOOT_MODULES_DIR}/load-order names {name:?}, not a file name.ko");
            }
            let to = work.join(name);
            self.extract(image, &format!("{NETBOOT_MODULES_DIR}/{name}"), &to)?;
            out.push((name.to_string(), to));
        }
        Ok(out)
    }
}

const PXE_EXAMPLES: &str = "Examples:
  image-tools pxe --payload usr-2.0.payload --pubkey release.pub -o /srv/tftp \\
    --url http://boot.example/usr-2.0.payload
  image-tools pxe --stream http://boot.example/stable/stream.json \\
    --pubkey release.pub -o /srv/tftp --json";

/// Make the kernel, initramfs and example iPXE/GRUB configs for RAM-booted nodes.
///
/// The payload (or the newest started release of the stream) is verified completely against
/// the --pubkey keys first. The initramfs is the image's boot/initramfs.img extended with the
/// netboot /init, the static updater (the image's bin/updater unless --updater), the keys,
/// and the modules listed in the image's lib/modules/netboot/load-order. Nodes boot with the
/// kernel arguments printed (and written into boot.ipxe and grub.cfg). See docs/usage/pxe.md.
#[derive(Args, Debug)]
#[command(after_help = PXE_EXAMPLES)]
pub struct PxeCmd {
    /// The payload: a file or an http(s) URL.
    #[arg(
        long,
        value_name = "FILE|URL",
        required_unless_present = "stream",
        conflicts_with = "stream"
    )]
    pub payload: Option<String>,
    /// A release stream's stream.json URL: nodes boot the newest release open to
    /// them.
    #[arg(long, value_name = "URL")]
    pub stream: Option<String>,
    /// The stream's channel.
    #[arg(long, value_name = "NAME", default_value = "stable")]
    pub channel: String,
    /// The payload URL nodes fetch (default: --payload when it is a URL).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Trusted public key file; repeat for several.
    #[arg(long, value_name = "PUB", required = true)]
    pub pubkey: Vec<PathBuf>,
    /// The static (musl) updater for the initramfs (default: the image's
    /// /usr/bin/updater).
    #[arg(long, value_name = "FILE")]
    pub updater: Option<PathBuf>,
    /// The init the node runs once /usr is mounted.
    #[arg(long, value_name = "PATH", default_value = "/sbin/init")]
    pub init: String,
    /// Refuse payloads older than this (default: the payload's version; none with
    /// --stream).
    #[arg(long, value_name = "VERSION")]
    pub min_version: Option<String>,
    /// Kernel arguments before ours.
    #[arg(long, value_name = "ARGS", default_value = "console=ttyS0")]
    pub append: String,
    /// The output directory.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl PxeCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        let source = match (&self.payload, &self.stream) {
            (Some(p), _) => PxeSource::Payload(p.clone()),
            (None, Some(s)) => PxeSource::Stream {
                url: s.clone(),
                channel: self.channel.clone(),
            },
            (None, None) => bail!("--payload or --stream is required"),
        };
        let spec = PxeSpec {
            source,
            output: self.output.clone(),
            payload_url: self.url.clone(),
            updater: self.updater.clone(),
            init: self.init.clone(),
            min_version: self.min_version.clone(),
            append: self.append.clone(),
            pubkeys: self.pubkey.clone(),
        };
        let report = write_artifacts(&spec)?;
        if self.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "wrote netboot artifacts of {} {} to {} (the image needs {} bytes of RAM)",
                report.image_id,
                report.version,
                self.output.display(),
                report.image_size
            );
            println!("kernel arguments: {}", report.kernel_args);
        }
        Ok(())
    }
}
