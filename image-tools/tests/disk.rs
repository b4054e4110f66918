//! Tests of `image-tools disk`: the DESIGN §3 layout on both sector sizes, checked with
//! `sgdisk`, `cgpt`, mtools and the bootctl reader; content placement; fresh GUIDs; refusals.
//!
//! GRUB artifacts here are stand-ins with recognisable bytes (the real ones are booted in
//! qemu-tests); what is tested is where `disk` puts them and how it patches the BIOS code.
use bootctl::guid::{BIOS_BOOT_TYPE, ESP_TYPE, LINUX_DATA_TYPE, USR_TYPE};
use bootctl::storage::FileDisk;
use bootctl::SlotAttrs;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MIB: u64 = 1 << 20;

/// A scratch directory with a usr image, stand-in GRUB artifacts and the disks made from them.
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        let grub = f.path("grub");
        fs::create_dir_all(grub.join("x86_64-efi")).unwrap();
        fs::create_dir_all(grub.join("i386-pc")).unwrap();
        fs::write(grub.join("x86_64-efi/BOOTX64.EFI"), pattern(1, 300_000)).unwrap();
        fs::write(grub.join("i386-pc/boot.img"), pattern(2, 512)).unwrap();
        fs::write(grub.join("i386-pc/core.img"), pattern(3, 70_000)).unwrap();
        fs::write(grub.join("grub.cfg"), "gptprio.next -d d -u u\n").unwrap();
        let tree = f.path("usr");
        fs::create_dir_all(tree.join("boot")).unwrap();
        fs::write(tree.join("boot/vmlinuz"), pattern(4, 1_500_000)).unwrap();
        fs::write(tree.join("boot/initramfs.img"), b"initramfs").unwrap();
        let out = Command::new("mksquashfs")
            .arg(&tree)
            .arg(f.path("usr.img"))
            .args([
                "-noappend",
                "-noI",
                "-noD",
                "-noF",
                "-noX",
                "-quiet",
                "-no-progress",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mksquashfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        f
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn disk(&self, out: &str, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_image-tools"))
            .arg("disk")
            .arg("--usr")
            .arg(self.path("usr.img"))
            .arg("-o")
            .arg(self.path(out))
            .args(["--usr-size", "16M", "--root-size", "32M", "--grub-dir"])
            .arg(self.path("grub"))
            .args(extra)
            .output()
            .unwrap()
    }

    pub(crate) fn good_disk(&self, out: &str, sector_size: u32) -> PathBuf {
        let o = self.disk(out, &["--sector-size", &sector_size.to_string()]);
        assert!(
            o.status.success(),
            "image-tools disk: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        self.path(out)
    }
}

pub(crate) fn tool(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn table(disk: &Path, sector_size: u32) -> bootctl::gpt::DiskGpt {
    let mut d = FileDisk::open(disk, false).unwrap();
    bootctl::gpt::read(&mut d, Some(sector_size)).unwrap()
}

pub(crate) fn range(t: &bootctl::gpt::Gpt, n: u32) -> (u64, u64) {
    let e = t.entry(n);
    let ss = u64::from(t.sector_size);
    (e.first_lba * ss, (e.last_lba - e.first_lba + 1) * ss)
}

pub(crate) fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, off)
        .unwrap();
    buf
}

#[test]
fn layout_labels_types_and_slot_attributes_follow_the_design_on_both_sector_sizes() {
    let f = Fixture::new();
    for ss in [512u32, 4096] {
        let disk = f.good_disk(&format!("disk-{ss}.img"), ss);
        let r = table(&disk, ss);
        assert!(
            r.primary.is_ok() && r.backup.is_ok() && r.copies_match,
            "{ss}: both copies valid and equal"
        );
        let t = &r.gpt;
        assert_eq!(t.sector_size, ss);
        let used: Vec<(u32, String, bootctl::Guid)> = t
            .used_entries()
            .into_iter()
            .map(|(n, e)| (n, e.name, e.type_guid))
            .collect();
        assert_eq!(
            used,
            vec![
                (1, "EFI-SYSTEM".into(), ESP_TYPE),
                (2, "BIOS-BOOT".into(), BIOS_BOOT_TYPE),
                (3, "USR-A".into(), USR_TYPE),
                (4, "USR-B".into(), USR_TYPE),
                (6, "OEM".into(), LINUX_DATA_TYPE),
                (9, "ROOT".into(), LINUX_DATA_TYPE),
            ],
            "{ss}"
        );
        let a = SlotAttrs::decode(t.entry(3).attributes);
        let b = SlotAttrs::decode(t.entry(4).attributes);
        assert_eq!(
            (a.priority, a.tries, a.successful),
            (1, 0, true),
            "{ss}: USR-A P1 T0 S1"
        );
        assert_eq!(
            (b.priority, b.tries, b.successful),
            (0, 0, false),
            "{ss}: USR-B P0 T0 S0"
        );
        assert_eq!(range(t, 3).1, 16 * MIB);
        assert_eq!(range(t, 4).1, 16 * MIB);
        assert_eq!(range(t, 9).1, 32 * MIB);
        assert_eq!(range(t, 2).1, 2 * MIB);
        for (n, _, _) in &used {
            assert_eq!(
                range(t, *n).0 % MIB,
                0,
                "{ss}: partition {n} is MiB aligned"
            );
        }
    }
}

#[test]
fn standard_tools_find_no_problem_and_agree_on_the_slots() {
    let f = Fixture::new();
    let disk = f.good_disk("disk.img", 512);
    let v = tool(Command::new("sgdisk").arg("-v").arg(&disk));
    assert!(v.contains("No problems found"), "sgdisk -v: {v}");
    let a = tool(Command::new("sgdisk").args(["-i", "3"]).arg(&disk));
    assert!(a.contains("5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6"), "{a}");
    assert!(a.contains("Partition name: 'USR-A'"), "{a}");
    assert!(a.contains("Attribute flags: 0101000000000000"), "{a}");
    let e = tool(Command::new("sgdisk").args(["-i", "1"]).arg(&disk));
    assert!(
        e.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B") && e.contains("'EFI-SYSTEM'"),
        "{e}"
    );
    for (flag, want) in [("-P", "0"), ("-T", "0"), ("-S", "0")] {
        let got = tool(
            Command::new("cgpt")
                .args(["show", "-i", "4", flag])
                .arg(&disk),
        );
        assert_eq!(got.trim(), want, "cgpt show -i 4 {flag}");
    }
    for (flag, want) in [("-P", "1"), ("-T", "0"), ("-S", "1")] {
        let got = tool(
            Command::new("cgpt")
                .args(["show", "-i", "3", flag])
                .arg(&disk),
        );
        assert_eq!(got.trim(), want, "cgpt show -i 3 {flag}");
    }
    let b = tool(
        Command::new("cgpt")
            .args(["show", "-i", "4", "-l"])
            .arg(&disk),
    );
    assert_eq!(b.trim(), "USR-B");
}

#[test]
fn usr_image_bytes_are_in_usr_a_and_usr_b_is_empty() {
    let f = Fixture::new();
    let usr = fs::read(f.path("usr.img")).unwrap();
    for ss in [512u32, 4096] {
        let disk = f.good_disk(&format!("disk-{ss}.img"), ss);
        let t = table(&disk, ss).gpt;
        let (a, _) = range(&t, 3);
        assert!(
            read_at(&disk, a, usr.len()) == usr,
            "{ss}: USR-A starts with the usr image"
        );
        let (b, blen) = range(&t, 4);
        assert!(
            read_at(&disk, b, blen as usize).iter().all(|&x| x == 0),
            "{ss}: USR-B is empty"
        );
    }
}

#[test]
fn esp_is_fat_with_grub_and_its_config_on_both_sector_sizes() {
    let f = Fixture::new();
    for ss in [512u32, 4096] {
        let disk = f.good_disk(&format!("disk-{ss}.img"), ss);
        let (off, _) = range(&table(&disk, ss).gpt, 1);
        let image = format!("{}@@{off}", disk.display());
        let got = f.path(&format!("BOOTX64-{ss}.EFI"));
        tool(
            Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-n", "-i", &image, "::/EFI/BOOT/BOOTX64.EFI"])
                .arg(&got),
        );
        assert!(
            fs::read(&got).unwrap() == fs::read(f.path("grub/x86_64-efi/BOOTX64.EFI")).unwrap(),
            "{ss}"
        );
        let cfg = tool(Command::new("mtype").env("MTOOLS_SKIP_CHECK", "1").args([
            "-i",
            &image,
            "::/EFI/BOOT/grub.cfg",
        ]));
        assert_eq!(cfg, "gptprio.next -d d -u u\n");
        let label = tool(
            Command::new("mlabel")
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-s", "-i", &image, "::"]),
        );
        assert!(label.contains("EFI-SYSTEM"), "{label}");
    }
}

#[test]
fn mbr_boot_code_points_at_core_img_in_bios_boot() {
    let f = Fixture::new();
    let disk = f.good_disk("disk.img", 512);
    let (off, _) = range(&table(&disk, 512).gpt, 2);
    let mbr = read_at(&disk, 0, 512);
    let boot = fs::read(f.path("grub/i386-pc/boot.img")).unwrap();
    assert_eq!(&mbr[..0x5c], &boot[..0x5c]);
    assert_eq!(
        &mbr[0x5c..0x64],
        &(off / 512).to_le_bytes(),
        "boot.img names core.img's LBA"
    );
    assert_eq!(mbr[0x64], 0xff);
    assert_eq!(
        &mbr[0x1fe..],
        &[0x55, 0xaa],
        "protective MBR signature kept"
    );
    assert_eq!(mbr[0x1c2], 0xee, "protective MBR partition record kept");
    let core = fs::read(f.path("grub/i386-pc/core.img")).unwrap();
    let on_disk = read_at(&disk, off, core.len());
    assert_eq!(&on_disk[..0x1e8], &core[..0x1e8]);
    assert!(
        on_disk[0x1e8..0x1f4].iter().all(|&b| b == 0),
        "blocklist terminator"
    );
    assert_eq!(&on_disk[0x200..], &core[0x200..]);
    assert_eq!(
        &on_disk[0x1f4..0x1fc],
        &(off / 512 + 1).to_le_bytes(),
        "blocklist starts after sector 1"
    );
    let rest = (core.len() as u64).div_ceil(512) - 1;
    assert_eq!(
        &on_disk[0x1fc..0x1fe],
        &(rest as u16).to_le_bytes(),
        "blocklist covers the rest"
    );
}

#[test]
fn root_is_an_ext4_labelled_root_with_mount_points() {
    let f = Fixture::new();
    let disk = f.good_disk("disk.img", 512);
    let (off, len) = range(&table(&disk, 512).gpt, 9);
    let root = f.path("root.img");
    fs::write(&root, read_at(&disk, off, len as usize)).unwrap();
    let h = tool(Command::new("dumpe2fs").arg("-h").arg(&root));
    assert!(h.contains("Filesystem volume name:   ROOT"), "{h}");
    let ls = tool(Command::new("debugfs").args(["-R", "ls -p /"]).arg(&root));
    for d in ["usr", "etc", "var", "proc", "sys", "dev", "run", "tmp"] {
        assert!(ls.contains(&format!("/{d}/")), "ROOT has /{d}: {ls}");
    }
}

#[test]
fn every_run_gets_fresh_disk_and_partition_guids() {
    let f = Fixture::new();
    let t1 = table(&f.good_disk("one.img", 512), 512).gpt;
    let t2 = table(&f.good_disk("two.img", 512), 512).gpt;
    assert_ne!(t1.disk_guid, t2.disk_guid);
    let mut all: Vec<String> = Vec::new();
    for t in [&t1, &t2] {
        all.push(t.disk_guid.to_string());
        all.extend(
            t.used_entries()
                .into_iter()
                .map(|(_, e)| e.unique_guid.to_string()),
        );
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "every GUID differs");
}

fn one_line_error(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "exit status 1");
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    e
}

#[test]
fn rejects_a_missing_usr_image_with_one_line() {
    let f = Fixture::new();
    fs::remove_file(f.path("usr.img")).unwrap();
    let e = one_line_error(&f.disk("disk.img", &[]));
    assert!(
        e.contains("reading usr image") && e.contains("usr.img"),
        "{e}"
    );
    assert!(!f.path("disk.img").exists() && !f.path("disk.img.tmp").exists());
}

#[test]
fn rejects_a_usr_image_that_is_not_a_filesystem() {
    let f = Fixture::new();
    fs::write(f.path("usr.img"), pattern(9, 8192)).unwrap();
    let e = one_line_error(&f.disk("disk.img", &[]));
    assert!(e.contains("is not a squashfs or ext4 filesystem"), "{e}");
    assert!(!f.path("disk.img").exists());
}

#[test]
fn rejects_a_usr_image_larger_than_the_usr_partition() {
    let f = Fixture::new();
    let o = Command::new(env!("CARGO_BIN_EXE_image-tools"))
        .arg("disk")
        .arg("--usr")
        .arg(f.path("usr.img"))
        .arg("-o")
        .arg(f.path("disk.img"))
        .args(["--usr-size", "1M", "--grub-dir"])
        .arg(f.path("grub"))
        .output()
        .unwrap();
    let e = one_line_error(&o);
    assert!(
        e.contains("larger than the 1048576-byte USR partition"),
        "{e}"
    );
    assert!(!f.path("disk.img").exists());
}

#[test]
fn rejects_a_grub_dir_without_artifacts() {
    let f = Fixture::new();
    fs::remove_file(f.path("grub/i386-pc/core.img")).unwrap();
    let e = one_line_error(&f.disk("disk.img", &[]));
    assert!(e.contains("core.img is missing"), "{e}");
}

#[test]
fn rejects_other_sector_sizes() {
    let f = Fixture::new();
    let o = f.disk("disk.img", &["--sector-size", "1024"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("use 512 or 4096"));
}

#[test]
fn help_shows_an_example() {
    let o = Command::new(env!("CARGO_BIN_EXE_image-tools"))
        .args(["disk", "--help"])
        .output()
        .unwrap();
    let h = String::from_utf8_lossy(&o.stdout);
    assert!(
        h.contains("image-tools disk --usr usr.img -o disk.img"),
        "{h}"
    );
}
