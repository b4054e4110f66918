//! The first-boot scenario's pieces (issue 10): a /usr image whose boot hook runs
//! `updater firstboot` the way an image's init or unit would, a factory disk, and the checks
//! made on the disk file from the host.
//!
//! [`FactoryDisk::build`] assembles a small disk with `image-tools disk`'s library, puts an
//! ext4 labelled OEM holding the given files into the OEM partition (what a factory's OEM
//! injection leaves there), and writes the image onto a [`FACTORY_DISK_BYTES`] sparse disk:
//! the image's bytes at its start, nothing after, the backup GPT where the image ended.
//!
//! ```no_run
//! use qemu_tests::firstboot::{usr_spec, FactoryDisk};
//! use qemu_tests::testos::TestOs;
//! let usr = TestOs::get()?.usr_image(&usr_spec(), image_tools::mkusr::UsrFs::Squashfs)?;
//! let disk = FactoryDisk::build(&usr, "disk.img".as_ref(), &[("etc/hostname", "box-7\n")])?;
//! assert!(!disk.backup_at_end()?);
//! # Ok::<(), qemu_tests::Error>(())
//! ```
use crate::error::{Error, IoContext, Result};
use crate::testos::UsrSpec;
use bootctl::gpt::{self, DiskGpt};
use bootctl::storage::FileDisk;
use image_tools::disk::DiskReport;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The boot hook, in /usr, that runs first boot at every boot.
pub const FIRSTBOOT_HOOK: &str = "lib/testos/boot.d/10-updater-firstboot";
/// Its script: the image's first-boot unit (a no-op once the job is done).
pub const FIRSTBOOT_HOOK_SCRIPT: &str =
    "#!/usr/bin/sh\n# The image's first-boot unit; returns at once once the job is done.\nexec updater firstboot --json\n";
/// What `updater firstboot` logs once the partition table is grown (and flushed).
pub const TABLE_GROWN_MARKER: &str = "updater: info: firstboot: partition table grown";
/// The factory's disk.
pub const FACTORY_DISK_BYTES: u64 = 4 << 30;
/// ROOT's label, and its filesystem's block size as `image-tools disk` makes it.
const ROOT_BLOCK_BYTES: u64 = 4096;

/// The /usr image of the scenario: version 1 with the first-boot hook.
pub fn usr_spec() -> UsrSpec {
    UsrSpec::new("1").file(FIRSTBOOT_HOOK, 0o755, FIRSTBOOT_HOOK_SCRIPT)
}

/// A small image written onto a larger disk, as a factory flashes it.
#[derive(Debug)]
pub struct FactoryDisk {
    /// The disk file.
    pub path: PathBuf,
    /// What `image-tools disk` made.
    pub report: DiskReport,
}

fn invalid(what: String) -> Error {
    Error::Invalid(what)
}

impl FactoryDisk {
    /// Assembles the image of `usr` at `out` ([`crate::disk::spec`] sizes, 512-byte sectors),
    /// fills OEM with `oem_files` (path in the OEM filesystem, content), and grows the file to
    /// [`FACTORY_DISK_BYTES`].
    pub fn build(usr: &Path, out: &Path, oem_files: &[(&str, &str)]) -> Result<FactoryDisk> {
        let report = crate::disk::assemble(&crate::disk::spec(usr, out)?)?;
        let (oem_off, oem_len) = crate::disk::partition_range(&report, "OEM")?;
        let scratch = tempfile::tempdir().ctx("creating", std::env::temp_dir())?;
        let tree = scratch.path().join("oem");
        for (path, content) in oem_files {
            let p = tree.join(path);
            fs::create_dir_all(p.parent().unwrap_or(&tree)).ctx("creating", &tree)?;
            fs::write(&p, content).ctx("writing", &p)?;
        }
        fs::create_dir_all(&tree).ctx("creating", &tree)?;
        let oem_img = scratch.path().join("oem.img");
        image_tools::disk::mkfs::make_ext4(&oem_img, oem_len, "OEM", &tree)
            .map_err(|e| invalid(format!("making the OEM filesystem: {e}")))?;
        let bytes = fs::read(&oem_img).ctx("reading", &oem_img)?;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(out)
            .ctx("opening", out)?;
        f.write_all_at(&bytes, oem_off)
            .ctx("writing the OEM filesystem into", out)?;
        f.set_len(FACTORY_DISK_BYTES)
            .ctx("growing to the factory disk's size", out)?;
        f.sync_all().ctx("syncing", out)?;
        Ok(FactoryDisk {
            path: out.to_path_buf(),
            report,
        })
    }

    /// Both GPT copies as bootctl reads them.
    pub fn gpt(&self) -> Result<DiskGpt> {
        let mut d = FileDisk::open(&self.path, false)
            .map_err(|e| invalid(format!("opening {}: {e}", self.path.display())))?;
        gpt::read(&mut d, None).map_err(|source| Error::Bootctl {
            action: "reading the GPT of".into(),
            path: self.path.clone(),
            source,
        })
    }

    /// Whether the backup GPT header is at the disk's last LBA.
    pub fn backup_at_end(&self) -> Result<bool> {
        Ok(self.gpt()?.backup_at_end())
    }

    /// ROOT's byte offset (it never moves).
    pub fn root_offset(&self) -> Result<u64> {
        Ok(crate::disk::partition_range(&self.report, "ROOT")?.0)
    }

    /// The size ROOT has once grown: up to the last whole MiB before the backup entry array.
    pub fn grown_root_bytes(&self) -> Result<u64> {
        let mib = 1u64 << 20;
        // 33 sectors of backup GPT (128 entries of 128 bytes, and the header) at the end.
        let usable_end = FACTORY_DISK_BYTES - 33 * 512;
        Ok(usable_end / mib * mib - self.root_offset()?)
    }

    /// ROOT's ext4 block count, from the superblock on the disk file.
    pub fn root_fs_blocks(&self) -> Result<u64> {
        let mut d = FileDisk::open(&self.path, false)
            .map_err(|e| invalid(format!("opening {}: {e}", self.path.display())))?;
        let mut sb = [0u8; 1024];
        bootctl::storage::Storage::read_at(&mut d, self.root_offset()? + 1024, &mut sb)
            .ctx("reading ROOT's superblock in", &self.path)?;
        if sb[0x38..0x3a] != [0x53, 0xef]
            || u32::from_le_bytes(sb[0x18..0x1c].try_into().expect("4")) != 2
        {
            return Err(invalid(format!(
                "ROOT of {} holds no ext4 of {ROOT_BLOCK_BYTES}-byte blocks",
                self.path.display()
            )));
        }
        Ok(u64::from(u32::from_le_bytes(
            sb[4..8].try_into().expect("4"),
        )))
    }

    /// ROOT's ext4 block count once grown.
    pub fn grown_root_blocks(&self) -> Result<u64> {
        Ok(self.grown_root_bytes()? / ROOT_BLOCK_BYTES)
    }

    /// Whether `/var/lib/updater/firstboot.json` is in ROOT's filesystem as written to its
    /// home location (`debugfs`, which does not replay the journal).
    pub fn has_firstboot_marker(&self) -> Result<bool> {
        let target = format!("{}?offset={}", self.path.display(), self.root_offset()?);
        let out = output(Command::new("debugfs").args([
            "-R",
            "cat /var/lib/updater/firstboot.json",
            &target,
        ]))?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("format_version"))
    }

    /// Runs `e2fsck -f -n` on ROOT; fails with its report unless the filesystem is clean.
    pub fn check_root_fs(&self) -> Result<()> {
        let target = format!("{}?offset={}", self.path.display(), self.root_offset()?);
        let mut cmd = Command::new("e2fsck");
        cmd.args(["-f", "-n", &target]);
        let out = output(&mut cmd)?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("{cmd:?}"),
                detail: format!(
                    "{}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }
}

/// Runs `cmd` and returns its output, whatever its exit status.
fn output(cmd: &mut Command) -> Result<std::process::Output> {
    cmd.output().map_err(|e| Error::Command {
        command: format!("{cmd:?}"),
        detail: format!("starting it: {e}"),
    })
}
