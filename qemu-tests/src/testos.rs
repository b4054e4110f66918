//! The test OS: the Debian cloud kernel, a busybox initramfs, and /usr trees and images.
//!
//! A /usr tree ([`TestOs::write_usr_tree`]) holds `boot/vmlinuz`, `boot/initramfs.img`,
//! `lib/os-release` (`IMAGE_ID`, `IMAGE_VERSION`), busybox with a link per applet in `bin/`, our
//! static `updater` in `bin/`, the init `lib/testos/init`, and whatever files a [`UsrSpec`]
//! adds (boot hooks in `lib/testos/boot.d/`, health checks, config). [`TestOs::build_usr_image`]
//! turns it into a USR image with `image-tools mkusr`'s library.
//!
//! Boot sequence (GRUB loads kernel and initramfs out of the chosen USR partition):
//! 1. the initramfs `/init` (`testos/initramfs-init.sh`) loads virtio and squashfs, finds USR by
//!    the `mount.usr=PARTUUID=` of the command line and ROOT by its GPT label on the same disk,
//!    mounts ROOT read-write with USR read-only at `/usr`, and switches root;
//! 2. `/usr/lib/testos/init` (`testos/usr-init.sh`) prints
//!    `TESTOS: booted usr=<partuuid> version=<IMAGE_VERSION> fallback=<0|1>`, runs the boot
//!    hooks, prints `TESTOS: ready` and serves commands on the serial console
//!    ([`crate::machine::Machine::run`]).
//!
//! The kernel and the initramfs are cached ([`crate::cache`]) by their inputs; the updater is
//! built once per test process with `cargo build --release --target x86_64-unknown-linux-musl`
//! in a target directory of its own (the running `cargo test` holds the lock of the usual one),
//! or taken from `$QEMU_TESTS_UPDATER_BIN`.
//!
//! ```no_run
//! use qemu_tests::testos::{TestOs, UsrSpec};
//! let os = TestOs::get()?;
//! os.build_usr_image(&UsrSpec::new("2.0"), image_tools::mkusr::UsrFs::Squashfs, "usr-v2.img".as_ref())?;
//! # Ok::<(), qemu_tests::Error>(())
//! ```
use crate::cache::{cached_dir, Key};
use crate::cpio::CpioWriter;
use crate::error::{Error, IoContext, Result};
use crate::kernel::CloudKernel;
use image_tools::mkusr::{build_usr_image, UsrFs, UsrTree};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `IMAGE_ID` of every test OS image.
pub const IMAGE_ID: &str = "ab-testos";

/// The initramfs `/init`.
pub const INITRAMFS_INIT: &str = include_str!("../testos/initramfs-init.sh");

/// `/usr/lib/testos/init`, PID 1 after switch_root.
pub const USR_INIT: &str = include_str!("../testos/usr-init.sh");

/// Where busybox-static installs its binary.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// Rust target of the device binary.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// What goes into one /usr image beyond the common content.
#[derive(Clone, Debug)]
pub struct UsrSpec {
    /// `IMAGE_VERSION`.
    pub version: String,
    /// Extra files: path relative to /usr, mode, content.
    pub files: Vec<(String, u32, Vec<u8>)>,
}

impl UsrSpec {
    /// An image of `version` with the common content only.
    pub fn new(version: &str) -> UsrSpec {
        UsrSpec {
            version: version.to_string(),
            files: Vec::new(),
        }
    }

    /// Adds a file at `path` (relative to /usr) with `mode`.
    pub fn file(mut self, path: &str, mode: u32, content: impl Into<Vec<u8>>) -> UsrSpec {
        self.files.push((path.to_string(), mode, content.into()));
        self
    }
}

/// The built pieces every /usr image shares.
#[derive(Clone, Debug)]
pub struct TestOs {
    /// The kernel.
    pub kernel: CloudKernel,
    /// The initramfs (uncompressed newc cpio).
    pub initramfs: PathBuf,
    /// The static busybox.
    pub busybox: PathBuf,
    /// The static updater binary.
    pub updater: PathBuf,
}

impl TestOs {
    /// The test OS, built (or taken from the cache) on first use in this process.
    pub fn get() -> Result<&'static TestOs> {
        static OS: OnceLock<std::result::Result<TestOs, String>> = OnceLock::new();
        OS.get_or_init(|| TestOs::build().map_err(|e| format!("{:#}", anyhow_like(&e))))
            .as_ref()
            .map_err(|e| Error::Invalid(format!("building the test OS: {e}")))
    }

    fn build() -> Result<TestOs> {
        let kernel = CloudKernel::fetch()?;
        let busybox = PathBuf::from(HOST_BUSYBOX);
        let initramfs = build_initramfs(&kernel, &busybox)?;
        let updater = updater_binary()?;
        Ok(TestOs {
            kernel,
            initramfs,
            busybox,
            updater,
        })
    }

    /// Writes the /usr tree of `spec` into the empty or missing directory `dir`.
    pub fn write_usr_tree(&self, spec: &UsrSpec, dir: &Path) -> Result<()> {
        for sub in ["bin", "boot", "lib/testos/boot.d"] {
            fs::create_dir_all(dir.join(sub)).ctx("creating", dir.join(sub))?;
        }
        copy(&self.kernel.vmlinuz, &dir.join("boot/vmlinuz"), 0o644)?;
        copy(&self.initramfs, &dir.join("boot/initramfs.img"), 0o644)?;
        copy(&self.busybox, &dir.join("bin/busybox"), 0o755)?;
        copy(&self.updater, &dir.join("bin/updater"), 0o755)?;
        for applet in busybox_applets(&self.busybox)? {
            let link = dir.join("bin").join(&applet);
            if !link.exists() {
                symlink("busybox", &link).ctx("creating symlink", &link)?;
            }
        }
        symlink("bin", dir.join("sbin")).ctx("creating symlink", dir.join("sbin"))?;
        write(&dir.join("lib/testos/init"), 0o755, USR_INIT.as_bytes())?;
        let os_release = format!(
            "NAME=\"A/B updater test OS\"\nID={IMAGE_ID}\nIMAGE_ID={IMAGE_ID}\nIMAGE_VERSION={}\n",
            spec.version
        );
        write(&dir.join("lib/os-release"), 0o644, os_release.as_bytes())?;
        for (path, mode, content) in &spec.files {
            let target = dir.join(path.trim_start_matches('/'));
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).ctx("creating", parent)?;
            }
            write(&target, *mode, content)?;
        }
        Ok(())
    }

    /// The /usr image of `spec`, from the cache (built there on first use, keyed by every
    /// input: kernel, initramfs, busybox, updater, init and the spec).
    pub fn usr_image(&self, spec: &UsrSpec, fs_kind: UsrFs) -> Result<PathBuf> {
        let mut key = Key::new()
            .text(&self.kernel.package)
            .file(&self.initramfs)?
            .file(&self.busybox)?
            .file(&self.updater)?
            .text(USR_INIT)
            .text(fs_kind.name())
            .text(&spec.version);
        for (path, mode, content) in &spec.files {
            key = key.text(path).text(&mode.to_string()).bytes(content);
        }
        let dir = cached_dir("usr", &key, |dir| {
            self.build_usr_image(spec, fs_kind, &dir.join("usr.img"))
        })?;
        Ok(dir.join("usr.img"))
    }

    /// Builds the /usr image of `spec` at `out`.
    pub fn build_usr_image(&self, spec: &UsrSpec, fs_kind: UsrFs, out: &Path) -> Result<()> {
        let tree = tempfile::tempdir().ctx("creating", std::env::temp_dir())?;
        let usr = tree.path().join("usr");
        self.write_usr_tree(spec, &usr)?;
        let checked = UsrTree::open(&usr).map_err(|e| Error::Invalid(format!("{e}")))?;
        build_usr_image(&checked, fs_kind, out, 0).map_err(|e| {
            Error::Invalid(format!(
                "building /usr image {}: {:#}",
                out.display(),
                anyhow_like(&e)
            ))
        })
    }
}

/// Formats an error with its chain on one line, as `anyhow`'s `{:#}` would.
fn anyhow_like(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::copy(from, to).ctx("copying", from)?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).ctx("setting mode of", to)
}

fn write(to: &Path, mode: u32, content: &[u8]) -> Result<()> {
    fs::write(to, content).ctx("writing", to)?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).ctx("setting mode of", to)
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .ctx("running", busybox)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
        .map(str::to_string)
        .collect())
}

/// The initramfs for `kernel`, cached by its inputs.
fn build_initramfs(kernel: &CloudKernel, busybox: &Path) -> Result<PathBuf> {
    let mut key = Key::new()
        .text(&kernel.package)
        .text(INITRAMFS_INIT)
        .file(busybox)?;
    for m in &kernel.modules {
        key = key.text(&m.file_name().unwrap_or_default().to_string_lossy());
    }
    let dir = cached_dir("initramfs", &key, |dir| {
        let out = dir.join("initramfs.img");
        let file = fs::File::create(&out).ctx("creating", &out)?;
        let mut w = CpioWriter::new(std::io::BufWriter::new(file));
        let ctx = |e| Error::io("writing", &out, e);
        for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
            w.dir(d, 0o755).map_err(ctx)?;
        }
        w.char_device("dev/console", 0o600, 5, 1).map_err(ctx)?;
        let bb = fs::read(busybox).ctx("reading", busybox)?;
        w.file("bin/busybox", 0o755, &bb).map_err(ctx)?;
        w.symlink("bin/sh", "busybox").map_err(ctx)?;
        w.file("init", 0o755, INITRAMFS_INIT.as_bytes())
            .map_err(ctx)?;
        let mut order = String::new();
        for m in &kernel.modules {
            let name = m
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let bytes = fs::read(m).ctx("reading", m)?;
            w.file(&format!("lib/modules/{name}"), 0o644, &bytes)
                .map_err(ctx)?;
            order.push_str(&name);
            order.push('\n');
        }
        w.file("lib/modules/load-order", 0o644, order.as_bytes())
            .map_err(ctx)?;
        let mut buf = w.finish().map_err(ctx)?;
        std::io::Write::flush(&mut buf).map_err(ctx)
    })?;
    Ok(dir.join("initramfs.img"))
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The static updater: `$QEMU_TESTS_UPDATER_BIN`, or a release musl build of the workspace's.
pub fn updater_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("QEMU_TESTS_UPDATER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("testos-musl");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "build",
        "--release",
        "--quiet",
        "--target",
        MUSL_TARGET,
        "-p",
        "updater",
    ])
    .env("CARGO_TARGET_DIR", &target_dir)
    .current_dir(workspace_root());
    let out = cmd.output().map_err(|e| Error::Command {
        command: format!("{cmd:?}"),
        detail: format!("starting it: {e}"),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first_error = stderr
            .lines()
            .find(|l| l.starts_with("error"))
            .or_else(|| stderr.lines().rfind(|l| !l.trim().is_empty()))
            .unwrap_or("no output");
        return Err(Error::Command {
            command: format!("cargo build --release --target {MUSL_TARGET} -p updater"),
            detail: format!("{}: {first_error}", out.status),
        });
    }
    Ok(target_dir.join(MUSL_TARGET).join("release/updater"))
}
