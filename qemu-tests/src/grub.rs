//! GRUB with our `gptprio` module: finding (and on first use building) its artifacts, and
//! running GRUB's emulator against disk images.
//!
//! [`artifacts`] returns the files `grub-patches/build.sh` produces: the UEFI image, the BIOS
//! `boot.img`/`core.img`, `grub.cfg` and `grub-emu`. The first call in a process runs the build
//! script, which returns in seconds when its content-hashed cache
//! (`/var/cache/ab-updater/grub/<sha256>`, or under `$AB_GRUB_CACHE`) already holds them and
//! otherwise builds GRUB 2.06 from Debian's source (about 10 minutes on two cores, needs root
//! for `apt-get build-dep`). Later calls return the same answer, failures included, so a
//! broken build fails every test quickly instead of rebuilding. The script locks its cache, so
//! several test processes may call this at once. `$AB_GRUB_DIR` points at a ready artifact
//! directory instead and skips the script.
//!
//! [`Emu`] runs `grub-emu` (the same module source compiled for the host) on disk-image files
//! mapped to `hd0`, `hd1`, … and returns what GRUB printed: cheap enough to run the module
//! against hundreds of GPTs in one process. The emulator sees 512-byte sectors only; 4096-byte
//! sectors are covered by booting under OVMF.
//!
//! ```no_run
//! let grub = qemu_tests::grub::artifacts()?;
//! assert!(grub.efi_image.ends_with("x86_64-efi/BOOTX64.EFI"));
//! let out = qemu_tests::grub::Emu::new(&grub)
//!     .run(&["disk.img".as_ref()], "gptprio.next -d dev -u uuid hd0\necho $dev $uuid\n")?;
//! println!("{out}");
//! # Ok::<(), qemu_tests::grub::GrubError>(())
//! ```
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The build script, relative to the workspace root.
pub const BUILD_SCRIPT: &str = "grub-patches/build.sh";

/// Most disks one `grub-emu` run can map (its device map holds at most 256 entries).
pub const EMU_MAX_DISKS: usize = 256;

/// Longest a `grub-emu` run may take before it is killed.
pub const EMU_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors of building or running GRUB.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GrubError {
    /// `grub-patches/build.sh` failed or printed no directory; its stderr says why.
    #[error("building GRUB with {script}: {detail}")]
    Build {
        /// The script run.
        script: String,
        /// Exit status or what was wrong with its output.
        detail: String,
    },
    /// An artifact is missing from the directory.
    #[error("GRUB artifact {} is missing", path.display())]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// `grub-emu` could not be run, failed or timed out.
    #[error("running grub-emu: {detail}")]
    Emu {
        /// What went wrong, with the tail of its output.
        detail: String,
    },
}

/// The GRUB artifacts (see `grub-patches/build.sh`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubArtifacts {
    /// The artifact directory (what `build.sh` printed).
    pub dir: PathBuf,
    /// x86_64-efi standalone image with gptprio built in: `EFI/BOOT/BOOTX64.EFI` on the ESP.
    pub efi_image: PathBuf,
    /// i386-pc MBR boot code.
    pub bios_boot_img: PathBuf,
    /// i386-pc core image with gptprio built in, for the BIOS-BOOT partition.
    pub bios_core_img: PathBuf,
    /// The boot menu: `EFI/BOOT/grub.cfg` on the ESP.
    pub grub_cfg: PathBuf,
    /// GRUB's emulator with every module (gptprio included) linked in.
    pub grub_emu: PathBuf,
}

impl GrubArtifacts {
    /// The artifacts in `dir`; fails naming the first file missing.
    pub fn from_dir(dir: &Path) -> Result<GrubArtifacts, GrubError> {
        let a = GrubArtifacts {
            dir: dir.to_path_buf(),
            efi_image: dir.join("x86_64-efi/BOOTX64.EFI"),
            bios_boot_img: dir.join("i386-pc/boot.img"),
            bios_core_img: dir.join("i386-pc/core.img"),
            grub_cfg: dir.join("grub.cfg"),
            grub_emu: dir.join("emu/grub-emu"),
        };
        for p in [
            &a.efi_image,
            &a.bios_boot_img,
            &a.bios_core_img,
            &a.grub_cfg,
            &a.grub_emu,
        ] {
            if !p.is_file() {
                return Err(GrubError::Missing { path: p.clone() });
            }
        }
        Ok(a)
    }
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate has a parent")
        .to_path_buf()
}

/// The GRUB artifacts, built and cached on first use (see the module doc).
pub fn artifacts() -> Result<GrubArtifacts, GrubError> {
    static CELL: OnceLock<Result<GrubArtifacts, GrubError>> = OnceLock::new();
    CELL.get_or_init(locate_or_build).clone()
}

fn locate_or_build() -> Result<GrubArtifacts, GrubError> {
    if let Some(dir) = std::env::var_os("AB_GRUB_DIR") {
        return GrubArtifacts::from_dir(Path::new(&dir));
    }
    let script = workspace_root().join(BUILD_SCRIPT);
    let err = |detail: String| GrubError::Build {
        script: script.display().to_string(),
        detail,
    };
    // stderr (progress, and the reason on failure) goes straight to the test's output.
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| err(format!("starting bash: {e}")))?;
    if !out.status.success() {
        return Err(err(format!("{} (see its messages above)", out.status)));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("").trim();
    if last.is_empty() {
        return Err(err("no artifact directory on its last stdout line".into()));
    }
    GrubArtifacts::from_dir(Path::new(last))
}

/// Runs `grub-emu` on disk-image files with a script as its `grub.cfg`.
#[derive(Debug, Clone)]
pub struct Emu {
    binary: PathBuf,
    timeout: Duration,
}

impl Emu {
    /// An emulator from `artifacts`, killed after [`EMU_TIMEOUT`].
    pub fn new(artifacts: &GrubArtifacts) -> Emu {
        Emu {
            binary: artifacts.grub_emu.clone(),
            timeout: EMU_TIMEOUT,
        }
    }

    /// Sets how long a run may take.
    pub fn timeout(mut self, timeout: Duration) -> Emu {
        self.timeout = timeout;
        self
    }

    /// Maps `disks[i]` to GRUB's `hd<i>`, runs `script` as the config file, then halts GRUB,
    /// and returns everything GRUB printed. Disks are opened read-write: commands in the
    /// script (gptprio.next) may write to them. At most [`EMU_MAX_DISKS`] disks.
    pub fn run(&self, disks: &[&Path], script: &str) -> Result<String, GrubError> {
        let err = |detail: String| GrubError::Emu { detail };
        if disks.len() > EMU_MAX_DISKS {
            return Err(err(format!(
                "{} disks given, at most {EMU_MAX_DISKS} fit one run",
                disks.len()
            )));
        }
        let dir =
            tempfile::tempdir().map_err(|e| err(format!("creating a temporary directory: {e}")))?;
        let mut map = String::new();
        for (i, d) in disks.iter().enumerate() {
            let abs = std::fs::canonicalize(d)
                .map_err(|e| err(format!("resolving {}: {e}", d.display())))?;
            map.push_str(&format!("(hd{i}) {}\n", abs.display()));
        }
        let map_path = dir.path().join("device.map");
        std::fs::write(&map_path, map)
            .map_err(|e| err(format!("writing {}: {e}", map_path.display())))?;
        // `halt` ends the emulator; the marker tells a finished script from a crash.
        let cfg = format!("{script}\necho GRUB-EMU-SCRIPT-DONE\nhalt\n");
        let cfg_path = dir.path().join("grub.cfg");
        std::fs::write(&cfg_path, cfg)
            .map_err(|e| err(format!("writing {}: {e}", cfg_path.display())))?;

        let mut child = Command::new(&self.binary)
            .arg("--root=host")
            .arg(format!("--directory={}", dir.path().display()))
            .arg(format!("--device-map={}", map_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(format!("starting {}: {e}", self.binary.display())))?;
        let reader = drain(child.stdout.take().expect("piped"));
        let err_reader = drain(child.stderr.take().expect("piped"));
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let out =
                        String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
                    return Err(err(format!(
                        "timed out after {:?}; output ends:\n{}",
                        self.timeout,
                        tail(&out)
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(err(format!("waiting for grub-emu: {e}"))),
            }
        };
        let out = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
        let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
        if !out.contains("GRUB-EMU-SCRIPT-DONE") {
            return Err(err(format!(
                "script did not finish ({status}); output ends:\n{}\nstderr:\n{}",
                tail(&out),
                tail(&stderr)
            )));
        }
        Ok(out)
    }
}

/// Reads a pipe to its end on a thread, so a chatty child never blocks on a full pipe.
fn drain<R: Read + Send + 'static>(mut pipe: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = pipe.read_to_end(&mut s);
        s
    })
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
