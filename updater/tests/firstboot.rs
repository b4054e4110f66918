//! `updater firstboot` on disk-image files (issue 10): a small image "flashed" onto a larger
//! disk grows to fill it, refusals leave the disk as it was, and a crash-point sweep over
//! firstboot's own writes (the crash shim of `crashpoints.rs`) shows that every cut leaves a
//! valid GPT with the slots untouched, and that rerunning finishes the job.
//!
//! On an image file ROOT is not mounted, so the filesystem is grown offline (e2fsck + resize2fs
//! on `disk.img?offset=N`) and the OEM data comes from `--oem-dir`; the online path and the
//! OEM partition mount are exercised in QEMU (`qemu-tests`, `firstboot::`).
use crate::crashpoints::{killed, run_with_shim};
use bootctl::gpt;
use bootctl::layout::{self, LayoutSizes};
use bootctl::storage::FileDisk;
use bootctl::SlotDisk;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MIB: u64 = 1 << 20;
/// The image's ROOT, and how much larger the disk is than the image.
const ROOT_BYTES: u64 = 16 * MIB;
const GROWTH: u64 = 40 * MIB;

/// A small image written onto a larger disk file, a device root and an OEM tree.
struct Flashed {
    dir: tempfile::TempDir,
    image_bytes: u64,
    entries: Vec<(u32, gpt::Entry)>,
    slot_a: Vec<u8>,
}

fn run_tool(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mkfs.ext4` of `bytes` at `offset` of `file`.
fn mkfs_at(file: &Path, offset: u64, bytes: u64, label: &str) {
    run_tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-L", label, "-E"])
            .arg(format!("offset={offset},root_owner=0:0"))
            .arg(file)
            .arg(format!("{}k", bytes / 1024)),
    );
}

fn sizes() -> LayoutSizes {
    LayoutSizes {
        min_root: ROOT_BYTES,
        ..LayoutSizes::small()
    }
}

/// Size of the image: the small layout with a [`ROOT_BYTES`] ROOT.
fn image_bytes(sector_size: u32) -> u64 {
    layout::min_disk_bytes(&sizes(), sector_size)
}

impl Flashed {
    fn new(sector_size: u32) -> Flashed {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        let sizes = sizes();
        let image_bytes = image_bytes(sector_size);
        let table = layout::standard(image_bytes, sector_size, &sizes).unwrap();
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(image_bytes)
            .unwrap();
        let ss = u64::from(sector_size);
        let root = table.entry(9);
        mkfs_at(
            &disk,
            root.first_lba * ss,
            (root.last_lba - root.first_lba + 1) * ss,
            "ROOT",
        );
        let mut f = FileDisk::open(&disk, true).unwrap();
        gpt::write_new(&mut f, &table).unwrap();
        drop(f);
        let a = table.entry(3);
        let slot_a = crate::util::image_bytes(((a.last_lba - a.first_lba + 1) * ss) as usize, 7);
        crate::util::write_at(&disk, a.first_lba * ss, &slot_a);
        // The factory writes the image onto a larger disk.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .unwrap()
            .set_len(image_bytes + GROWTH)
            .unwrap();
        let oem = dir.path().join("oem");
        std::fs::create_dir_all(oem.join("etc/board")).unwrap();
        std::fs::write(oem.join("etc/hostname"), "box-0042\n").unwrap();
        std::fs::write(oem.join("etc/board/serial"), "SN0042\n").unwrap();
        std::fs::create_dir_all(dir.path().join("root/var/lib")).unwrap();
        Flashed {
            dir,
            image_bytes,
            entries: table.used_entries(),
            slot_a,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn disk(&self) -> PathBuf {
        self.path("disk.img")
    }

    /// `updater --disk DISK --root ROOT firstboot --oem-dir OEM --json`.
    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_updater"));
        c.arg("--disk")
            .arg(self.disk())
            .arg("--root")
            .arg(self.path("root"))
            .args(["--json", "firstboot", "--oem-dir"])
            .arg(self.path("oem"));
        c
    }

    fn firstboot(&self) -> Output {
        self.command().output().unwrap()
    }

    fn gpt(&self) -> gpt::DiskGpt {
        gpt::read(&mut FileDisk::open(&self.disk(), false).unwrap(), None).unwrap()
    }

    /// The ext4 block count of ROOT, from its superblock.
    fn root_blocks(&self, root_offset: u64) -> u64 {
        let mut f = FileDisk::open(&self.disk(), false).unwrap();
        updater::firstboot::grow::Ext4Super::read(&mut f, root_offset)
            .unwrap()
            .expect("ROOT holds ext4")
            .blocks
    }

    fn e2fsck_clean(&self, root_offset: u64, what: &str) {
        let out = Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(format!("{}?offset={root_offset}", self.disk().display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: e2fsck -fn: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every entry but ROOT is as the image had it, byte for byte (slots and their bits
    /// included), slot A's bytes are untouched, and GRUB would boot A.
    fn slots_untouched(&self, what: &str) {
        let now = self.gpt();
        for (n, e) in &self.entries {
            if *n != 9 {
                assert_eq!(&now.gpt.entry(*n), e, "{what}: entry {n} changed");
            }
        }
        let mut d = SlotDisk::open(&self.disk(), false, None).unwrap();
        let chosen = d.select(false).unwrap().expect("a bootable slot");
        assert_eq!(chosen.slot.label, "USR-A", "{what}");
        let a = &self.entries.iter().find(|(n, _)| *n == 3).unwrap().1;
        let ss = u64::from(now.gpt.sector_size);
        let bytes = std::fs::read(self.disk()).unwrap();
        let at = (a.first_lba * ss) as usize;
        assert!(
            bytes[at..at + self.slot_a.len()] == self.slot_a[..],
            "{what}: slot A's bytes changed"
        );
    }

    /// The job is done: sgdisk -v clean, backup GPT at the last LBA, ROOT to the aligned end,
    /// its ext4 filling it, the OEM files in ROOT's /etc, the marker written.
    fn done(&self, what: &str) {
        let s = self.gpt();
        assert!(
            s.primary.is_ok() && s.backup.is_ok() && s.copies_match && s.backup_at_end(),
            "{what}: {s:?}"
        );
        sgdisk_clean(&self.disk(), what);
        let ss = u64::from(s.gpt.sector_size);
        let root = s.gpt.entry(9);
        let root_bytes = (root.last_lba - root.first_lba + 1) * ss;
        assert_eq!(root_bytes, ROOT_BYTES + GROWTH, "{what}: ROOT size");
        assert_eq!(
            self.root_blocks(root.first_lba * ss),
            root_bytes / 4096,
            "{what}: ROOT's filesystem does not fill ROOT"
        );
        self.e2fsck_clean(root.first_lba * ss, what);
        let r = self.path("root");
        assert_eq!(
            std::fs::read_to_string(r.join("etc/hostname")).unwrap(),
            "box-0042\n",
            "{what}"
        );
        assert_eq!(
            std::fs::read_to_string(r.join("etc/board/serial")).unwrap(),
            "SN0042\n"
        );
        let marker: serde_json::Value = serde_json::from_slice(
            &std::fs::read(r.join("var/lib/updater/firstboot.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(marker["root_bytes"], root_bytes, "{what}");
        self.slots_untouched(what);
    }
}

fn sgdisk_clean(disk: &Path, what: &str) {
    let out = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No problems found"),
        "{what}: sgdisk -v: {text}"
    );
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "firstboot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn a_small_image_on_a_larger_disk_grows_to_fill_it_and_gets_its_oem_files() {
    for ss in [512, 4096] {
        let f = Flashed::new(ss);
        let out = json(&f.firstboot());
        assert_eq!(out["result"], "done");
        assert_eq!(out["table"]["wrote"], true);
        assert_eq!(out["table"]["root_bytes_before"], ROOT_BYTES);
        assert_eq!(out["table"]["root_bytes_after"], ROOT_BYTES + GROWTH);
        assert_eq!(out["filesystem"]["method"], "offline");
        assert_eq!(out["oem"]["source"], "copied");
        assert_eq!(out["oem"]["copied"]["files"], 2);
        f.done(&format!("{ss}-byte sectors"));
    }
}

#[test]
fn a_done_box_returns_at_once_without_reading_the_disk() {
    let f = Flashed::new(512);
    json(&f.firstboot());
    std::fs::remove_file(f.disk()).unwrap();
    let out = json(&f.firstboot());
    assert_eq!(out["result"], "already-done");
}

#[test]
fn a_disk_of_the_images_own_size_only_gets_its_oem_files() {
    let f = Flashed::new(512);
    std::fs::OpenOptions::new()
        .write(true)
        .open(f.disk())
        .unwrap()
        .set_len(f.image_bytes)
        .unwrap();
    let before = std::fs::read(f.disk()).unwrap();
    let out = json(&f.firstboot());
    assert_eq!(out["table"]["wrote"], false);
    assert_eq!(out["filesystem"]["method"], serde_json::Value::Null);
    assert!(std::fs::read(f.disk()).unwrap() == before, "disk unchanged");
    assert!(f.path("root/etc/hostname").exists());
}

/// Runs firstboot on a disk changed by `spoil`; it must fail with one line starting with
/// `message` and leave the disk and the root as they were.
fn refused(spoil: impl Fn(&Flashed), message: &str) {
    let f = Flashed::new(512);
    spoil(&f);
    let before = std::fs::read(f.disk()).unwrap();
    let out = f.firstboot();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let prefix = format!("updater: growing ROOT on {}: {message}", f.disk().display());
    assert!(
        stderr.starts_with(&prefix) && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(std::fs::read(f.disk()).unwrap() == before, "disk changed");
    assert!(!f.path("root/etc").exists(), "OEM data applied");
    assert!(!f.path("root/var/lib/updater/firstboot.json").exists());
}

#[test]
fn a_disk_smaller_than_its_table_is_refused() {
    refused(
        |f| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(f.disk())
                .unwrap()
                .set_len(f.image_bytes - MIB)
                .unwrap();
        },
        &format!(
            "the disk is {} bytes but its partition table describes {} bytes: refusing to touch a disk smaller than its image",
            image_bytes(512) - MIB,
            image_bytes(512)
        ),
    );
}

#[test]
fn root_followed_by_another_partition_is_refused() {
    refused(
        |f| {
            let mut d = FileDisk::open(&f.disk(), true).unwrap();
            let mut table = gpt::read(&mut d, None).unwrap().gpt;
            let mut root = table.entry(9);
            let mut oem = table.entry(6);
            root.last_lba -= 2048;
            oem.first_lba = root.last_lba + 1;
            oem.last_lba = root.last_lba + 2048;
            table.set_entry(9, &root);
            table.set_entry(6, &oem);
            gpt::write(&mut d, &table).unwrap();
        },
        "ROOT (partition 9) is not the last partition (partition 6 \"OEM\" follows it): refusing to grow it",
    );
}

#[test]
fn a_gpt_without_a_valid_copy_is_refused() {
    refused(
        |f| {
            let s = f.gpt();
            let mut bytes = std::fs::read(f.disk()).unwrap();
            bytes[512 + 16] ^= 1;
            bytes[s.gpt.backup_lba as usize * 512 + 16] ^= 1;
            std::fs::write(f.disk(), bytes).unwrap();
        },
        "the partition table cannot be used: both GPT copies are invalid (primary: header CRC",
    );
}

#[test]
fn an_oem_filesystem_on_an_image_file_needs_oem_dir() {
    let f = Flashed::new(512);
    let oem = &f.entries.iter().find(|(n, _)| *n == 6).unwrap().1;
    mkfs_at(
        &f.disk(),
        oem.first_lba * 512,
        (oem.last_lba - oem.first_lba + 1) * 512,
        "OEM",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_updater"))
        .arg("--disk")
        .arg(f.disk())
        .arg("--root")
        .arg(f.path("root"))
        .arg("firstboot")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).ends_with(&format!(
            "the OEM partition of the disk image {} holds a filesystem, which cannot be mounted from a file: pass --oem-dir with its content\n",
            f.disk().display()
        )),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs firstboot under the crash shim, killed before its `crash_at`-th write, flush or rename
/// (0: never); returns the output and the number of operations.
fn run_crashing(f: &Flashed, crash_at: usize) -> (Output, usize) {
    run_with_shim(f.command(), &f.path("ops.count"), crash_at)
}

/// What every cut must leave: a GPT that validates (either the old table or the new one, whose
/// backup is then at the last LBA), the slots untouched, ROOT's ext4 clean at the old or the
/// new size.
fn after_cut(f: &Flashed, what: &str) {
    let s = f.gpt();
    assert!(s.entries.is_ok(), "{what}: {:?}", s.entries);
    let ss = u64::from(s.gpt.sector_size);
    let root = s.gpt.entry(9);
    let old_root = &f.entries.iter().find(|(n, _)| *n == 9).unwrap().1;
    assert_eq!(root.first_lba, old_root.first_lba, "{what}");
    let grown = (root.last_lba - root.first_lba + 1) * ss == ROOT_BYTES + GROWTH;
    assert!(grown || root == *old_root, "{what}: ROOT is {root:?}");
    if grown {
        assert!(s.backup.is_ok() && s.backup_at_end(), "{what}: {s:?}");
    } else {
        assert!(
            s.primary.is_ok(),
            "{what}: the old table must come from the primary"
        );
    }
    f.slots_untouched(what);
    let blocks = f.root_blocks(root.first_lba * ss);
    assert!(
        blocks == ROOT_BYTES / 4096 || blocks == (ROOT_BYTES + GROWTH) / 4096,
        "{what}: ROOT's filesystem has {blocks} blocks"
    );
    f.e2fsck_clean(root.first_lba * ss, what);
}

#[test]
fn firstboot_survives_a_crash_at_every_write_and_flush() {
    let probe = Flashed::new(512);
    let (out, total) = run_crashing(&probe, 0);
    json(&out);
    probe.done("uncrashed run");
    assert!(
        total > 8,
        "only {total} operations seen: is the shim loaded?"
    );
    let mut table_cut = 0;
    for n in 1..=total {
        let what = format!("firstboot, crash before op {n}/{total}");
        let f = Flashed::new(512);
        let (out, _) = run_crashing(&f, n);
        assert!(
            killed(&out),
            "{what}: did not crash: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        after_cut(&f, &what);
        // A cut between the flushed new backup and the primary: old table, new backup waiting.
        let bytes = std::fs::read(f.disk()).unwrap();
        if !f.gpt().backup_at_end() && bytes[bytes.len() - 512..].starts_with(b"EFI PART") {
            table_cut += 1;
        }
        let (out, _) = run_crashing(&f, 0);
        json(&out);
        f.done(&format!("{what}, rerun"));
    }
    eprintln!(
        "firstboot: {total} crash points swept, {table_cut} between the new backup and the primary"
    );
    assert!(table_cut > 0, "no cut fell inside the table write");
}
