//! Tests of `image-tools flash`: loop devices made by the test (512- and 4096-byte sectors,
//! several flashed at once) checked with `sgdisk -v`, `cgpt show` and the bootctl reader; the
//! refusals (corrupted payload, wrong key, too small, mounted, busy) leave nothing bootable; and
//! a power cut at every write of a flash never leaves a table that boots unverified content.
//!
//! Loop devices need root; where `losetup` fails the test prints a SKIPPED line and passes.
use crate::disk::{range, read_at, tool, Fixture};
use ab_payload::writer::{self, PackOptions, PayloadParts};
use ab_payload::TrustedKeys;
use bootctl::gpt;
use bootctl::storage::{FileDisk, MemDisk, Storage};
use bootctl::{SlotAttrs, SlotDisk};
use image_tools::flash::report::NoReporter;
use image_tools::flash::{flash_all, DeviceSlot, FlashSpec, Job};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MIB: u64 = 1 << 20;
/// Disk size for the tests' layout (16 MiB slots, 32 MiB ROOT), with room to spare.
const DISK: u64 = 200 * MIB;

/// A fixture with signed payloads of the usr image.
struct Flash {
    f: Fixture,
    key: ed25519_dalek::SigningKey,
}

fn pack_opts(version: &str) -> PackOptions {
    PackOptions {
        compatible: "testbox".into(),
        version: version.into(),
        created: 1_767_225_600,
        expires: None,
        chunk_size: 1 << 20,
        level: 3,
        threads: 1,
    }
}

impl Flash {
    fn new() -> Flash {
        let f = Fixture::new();
        let key = writer::generate_key().unwrap();
        fs::write(
            f.path("release.pub"),
            writer::encode_public_key(&key.verifying_key()),
        )
        .unwrap();
        fs::create_dir_all(f.path("oem/etc")).unwrap();
        fs::write(f.path("oem/etc/board.conf"), "board=rev-c\n").unwrap();
        let t = Flash { f, key };
        t.payload("a.payload", "1.0", &t.usr());
        t
    }

    fn usr(&self) -> Vec<u8> {
        fs::read(self.f.path("usr.img")).unwrap()
    }

    fn payload(&self, name: &str, version: &str, image: &[u8]) -> PathBuf {
        let bytes = PayloadParts::from_image(image, &pack_opts(version))
            .unwrap()
            .assemble(std::slice::from_ref(&self.key));
        fs::write(self.f.path(name), bytes).unwrap();
        self.f.path(name)
    }

    fn flash(&self, targets: &[&Path], extra: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_image-tools"));
        c.arg("flash")
            .arg("--payload")
            .arg(self.f.path("a.payload"))
            .arg("--pubkey")
            .arg(self.f.path("release.pub"))
            .args(["--usr-size", "16M", "--root-size", "32M", "--grub-dir"])
            .arg(self.f.path("grub"))
            .args(extra);
        for t in targets {
            c.arg("--to").arg(t);
        }
        c.output().unwrap()
    }

    fn spec(&self) -> FlashSpec {
        FlashSpec {
            payload_a: self.f.path("a.payload"),
            disk_image: false,
            payload_b: None,
            keys: TrustedKeys::new([self.key.verifying_key()]),
            grub: Some(image_tools::disk::GrubFiles::from_dir(&self.f.path("grub")).unwrap()),
            usr_size: 16 * MIB,
            root_size: 32 * MIB,
            root_dir: None,
            oem_dir: Some(self.f.path("oem")),
            preserve_on_error: false,
            now: 1_767_225_600,
        }
    }

    fn blank(&self, name: &str, bytes: u64) -> PathBuf {
        let p = self.f.path(name);
        fs::File::create(&p).unwrap().set_len(bytes).unwrap();
        p
    }
}

/// A loop device over a sparse file, with the given logical sector size; detached on drop.
struct Loop {
    dev: PathBuf,
    mounted: Option<PathBuf>,
}

impl Loop {
    fn new(backing: &Path, sector_size: u32) -> Option<Loop> {
        let out = Command::new("losetup")
            .args([
                "--find",
                "--show",
                "--sector-size",
                &sector_size.to_string(),
            ])
            .arg(backing)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: no loop device here ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Loop {
            dev: String::from_utf8_lossy(&out.stdout).trim().into(),
            mounted: None,
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(m) = self.mounted.take() {
            let _ = Command::new("umount").arg(&m).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn records(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "record")
        .map(|v| v["record"].clone())
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// True when neither GPT copy validates: nothing can boot from the disk.
fn no_table(path: &Path, ss: u32) -> bool {
    let mut d = FileDisk::open(path, false).unwrap();
    gpt::read(&mut d, Some(ss)).is_err()
}

fn attrs(t: &gpt::Gpt, n: u32) -> (u8, u8, bool) {
    let a = SlotAttrs::decode(t.entry(n).attributes);
    (a.priority, a.tries, a.successful)
}

/// Reads a file out of an ext4 partition of `disk` without mounting it.
fn ext4_file(disk: &Path, t: &gpt::Gpt, n: u32, file: &str, scratch: &Path) -> String {
    let (off, len) = range(t, n);
    let img = scratch.join(format!("part{n}.img"));
    fs::write(&img, read_at(disk, off, len as usize)).unwrap();
    tool(
        Command::new("debugfs")
            .args(["-R", &format!("cat {file}")])
            .arg(&img),
    )
}

#[test]
fn flashes_several_loop_devices_of_both_sector_sizes_at_once() {
    let t = Flash::new();
    let mut loops = Vec::new();
    for (i, ss) in [512u32, 4096, 512].into_iter().enumerate() {
        let backing = t.blank(&format!("dev{i}.img"), DISK + i as u64 * MIB);
        let Some(l) = Loop::new(&backing, ss) else {
            return;
        };
        loops.push((l, ss, backing));
    }
    let devs: Vec<&Path> = loops.iter().map(|(l, _, _)| l.dev.as_path()).collect();
    let oem = t.f.path("oem");
    let o = t.flash(&devs, &["--json", "--oem", oem.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&o);
    assert_eq!(recs.len(), 3);
    let usr = t.usr();
    let mut guids = Vec::new();
    for ((l, ss, backing), r) in loops.iter().zip(&recs) {
        assert_eq!(r["device"], l.dev.display().to_string());
        assert_eq!(
            (r["result"].as_str(), r["left"].as_str()),
            (Some("flashed"), Some("bootable"))
        );
        assert_eq!(r["sector_size"], *ss);
        let v = tool(Command::new("sgdisk").arg("-v").arg(&l.dev));
        assert!(
            v.contains("No problems found"),
            "{}: sgdisk -v: {v}",
            l.dev.display()
        );
        for (n, flag, want) in [
            (3, "-P", "1"),
            (3, "-S", "1"),
            (4, "-P", "0"),
            (4, "-S", "0"),
        ] {
            let got = tool(
                Command::new("cgpt")
                    .args(["show", "-i", &n.to_string(), flag])
                    .arg(&l.dev),
            );
            assert_eq!(
                got.trim(),
                want,
                "{}: cgpt show -i {n} {flag}",
                l.dev.display()
            );
        }
        let mut d = FileDisk::open(&l.dev, false).unwrap();
        let state = gpt::read(&mut d, None).unwrap();
        assert!(state.backup_at_end() && state.copies_match);
        let table = state.gpt;
        assert_eq!(table.sector_size, *ss);
        assert_eq!(attrs(&table, 3), (1, 0, true));
        assert_eq!(attrs(&table, 4), (0, 0, false));
        assert_eq!(
            r["disk_guid"].as_str().unwrap(),
            table.disk_guid.to_string().to_lowercase()
        );
        guids.push(table.disk_guid.to_string());
        for (n, e) in table.used_entries() {
            guids.push(e.unique_guid.to_string());
            let rec = r["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["number"] == n)
                .unwrap();
            assert_eq!(rec["partuuid"], e.unique_guid.to_string().to_lowercase());
        }
        let (a, _) = range(&table, 3);
        assert!(
            read_at(backing, a, usr.len()) == usr,
            "USR-A holds the image"
        );
        assert_eq!(r["slots"][0]["version"], "1.0");
        assert_eq!(r["slots"][0]["attributes"], "P1 T0 S1");
        let oem_file = ext4_file(backing, &table, 6, "/etc/board.conf", &t.f.path(""));
        assert_eq!(oem_file, "board=rev-c\n");
    }
    let n = guids.len();
    guids.sort();
    guids.dedup();
    assert_eq!(guids.len(), n, "no two devices or partitions share a GUID");
}

#[test]
fn a_signed_disk_image_is_flashed_with_fresh_guids_and_its_backup_table_at_the_device_end() {
    let t = Flash::new();
    let image = t.f.good_disk("golden.img", 512);
    let golden = fs::read(&image).unwrap();
    let disk_payload = t.payload("disk.payload", "1.0", &golden);
    let backing = t.blank("dev.img", golden.len() as u64 + 40 * MIB);
    let Some(l) = Loop::new(&backing, 512) else {
        return;
    };
    let o = Command::new(env!("CARGO_BIN_EXE_image-tools"))
        .arg("flash")
        .arg("--disk-payload")
        .arg(&disk_payload)
        .arg("--pubkey")
        .arg(t.f.path("release.pub"))
        .arg("--oem")
        .arg(t.f.path("oem"))
        .arg("--to")
        .arg(&l.dev)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v = tool(Command::new("sgdisk").arg("-v").arg(&l.dev));
    assert!(v.contains("No problems found"), "sgdisk -v: {v}");
    let mut g = FileDisk::open(&image, false).unwrap();
    let old = gpt::read(&mut g, Some(512)).unwrap().gpt;
    let mut d = FileDisk::open(&l.dev, false).unwrap();
    let state = gpt::read(&mut d, Some(512)).unwrap();
    assert!(state.backup_at_end() && state.copies_match);
    let new = state.gpt;
    assert_eq!(new.backup_lba, (golden.len() as u64 + 40 * MIB) / 512 - 1);
    assert_ne!(new.disk_guid, old.disk_guid);
    for (n, e) in old.used_entries() {
        let f = new.entry(n);
        assert_eq!(
            (f.first_lba, f.last_lba, &f.name),
            (e.first_lba, e.last_lba, &e.name)
        );
        assert_ne!(
            f.unique_guid, e.unique_guid,
            "partition {n} has a fresh GUID"
        );
    }
    assert_eq!(attrs(&new, 3), (1, 0, true));
    for n in [1, 3] {
        let (off, len) = range(&new, n);
        assert!(
            read_at(&backing, off, len as usize) == golden[off as usize..(off + len) as usize],
            "partition {n} is the image's"
        );
    }
    let oem_file = ext4_file(&backing, &new, 6, "/etc/board.conf", &t.f.path(""));
    assert_eq!(oem_file, "board=rev-c\n");
    assert_eq!(records(&o)[0]["left"], "bootable");
}

#[test]
fn payload_b_fills_both_slots_and_commits_them_a_first() {
    let t = Flash::new();
    let mut older = t.usr();
    older[4096..8192].fill(0x5a);
    let b = t.payload("b.payload", "0.9", &older);
    let disk = t.blank("disk.img", DISK);
    let o = t.flash(
        &[&disk],
        &[
            "--sector-size",
            "4096",
            "--payload-b",
            b.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = &records(&o)[0];
    assert_eq!(r["slots"][1]["label"], "USR-B");
    assert_eq!(r["slots"][1]["version"], "0.9");
    let mut d = FileDisk::open(&disk, false).unwrap();
    let table = gpt::read(&mut d, Some(4096)).unwrap().gpt;
    assert_eq!(attrs(&table, 3), (2, 0, true));
    assert_eq!(attrs(&table, 4), (1, 0, true));
    let (boff, _) = range(&table, 4);
    assert!(read_at(&disk, boff, older.len()) == older);
    let mut sd = SlotDisk::open(&disk, false, Some(4096)).unwrap();
    assert_eq!(sd.select(false).unwrap().unwrap().slot.label, "USR-A");
}

#[test]
fn a_corrupted_chunk_fails_the_device_and_leaves_no_partition_table() {
    let t = Flash::new();
    let disk = t.blank("disk.img", DISK);
    // A device flashed before: the failed flash must not leave its old table either.
    let good = t.flash(&[&disk], &[]);
    assert!(good.status.success(), "{}", stderr(&good));
    assert!(!no_table(&disk, 512));
    let p = t.f.path("a.payload");
    let mut bytes = fs::read(&p).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x01;
    fs::write(&p, bytes).unwrap();
    let o = t.flash(&[&disk], &["--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let r = &records(&o)[0];
    assert_eq!(r["result"], "failed");
    assert_eq!(r["left"], "wiped");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.starts_with(&format!("verifying payload {}", p.display())) && e.contains("chunk"),
        "{e}"
    );
    assert!(no_table(&disk, 512));
}

#[test]
fn a_payload_from_an_untrusted_key_is_refused_before_any_write() {
    let t = Flash::new();
    let other = writer::generate_key().unwrap();
    fs::write(
        t.f.path("release.pub"),
        writer::encode_public_key(&other.verifying_key()),
    )
    .unwrap();
    let disk = t.blank("disk.img", DISK);
    let o = t.flash(&[&disk], &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(e.contains("payload is signed only by unknown keys"), "{e}");
    assert!(
        fs::read(&disk).unwrap().iter().all(|&b| b == 0),
        "nothing written"
    );
}

#[test]
fn a_device_smaller_than_the_layout_is_refused() {
    let t = Flash::new();
    let backing = t.blank("small.img", 100 * MIB);
    let Some(l) = Loop::new(&backing, 512) else {
        return;
    };
    let o = t.flash(&[&l.dev], &[]);
    assert_eq!(o.status.code(), Some(3));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "refusing {}: it is 104857600 bytes, the layout needs at least",
            l.dev.display()
        )),
        "{e}"
    );
    assert!(no_table(&backing, 512));
}

#[test]
fn a_mounted_device_is_refused_and_left_as_it_was() {
    let t = Flash::new();
    let backing = t.blank("mounted.img", DISK);
    let Some(mut l) = Loop::new(&backing, 512) else {
        return;
    };
    tool(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&l.dev));
    let at = t.f.path("mnt");
    fs::create_dir_all(&at).unwrap();
    tool(Command::new("mount").arg(&l.dev).arg(&at));
    l.mounted = Some(at.clone());
    let o = t.flash(&[&l.dev], &[]);
    assert_eq!(o.status.code(), Some(3));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "refusing {}: {} is mounted on {}",
            l.dev.display(),
            l.dev.display(),
            at.display()
        )),
        "{e}"
    );
    assert!(fs::read_dir(&at)
        .unwrap()
        .any(|e| e.unwrap().file_name() == "lost+found"));
}

#[test]
fn a_device_held_open_exclusively_is_refused_as_busy() {
    use std::os::unix::fs::OpenOptionsExt;
    let t = Flash::new();
    let backing = t.blank("busy.img", DISK);
    let Some(l) = Loop::new(&backing, 4096) else {
        return;
    };
    let _held = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_EXCL)
        .open(&l.dev)
        .unwrap();
    let o = t.flash(&[&l.dev], &[]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains(&format!(
            "refusing {}: it is busy (another program holds it open exclusively)",
            l.dev.display()
        )),
        "{}",
        stderr(&o)
    );
    assert!(no_table(&backing, 4096));
}

/// A disk whose writes sit in a volatile cache until a flush, and whose power goes off just
/// before write number `cut_at`: that write and every later one fail, and the cache is lost.
struct PowerCut {
    durable: MemDisk,
    cache: Vec<(u64, Vec<u8>)>,
    writes: usize,
    cut_at: usize,
}

impl Storage for PowerCut {
    fn len(&self) -> u64 {
        self.durable.len()
    }
    fn device_sector_size(&self) -> Option<u32> {
        Some(self.durable.sector_size)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.durable.read_at(offset, buf)?;
        for (at, data) in &self.cache {
            let (a, b) = (
                offset.max(*at),
                (offset + buf.len() as u64).min(at + data.len() as u64),
            );
            if a < b {
                buf[(a - offset) as usize..(b - offset) as usize]
                    .copy_from_slice(&data[(a - at) as usize..(b - at) as usize]);
            }
        }
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.writes += 1;
        if self.writes >= self.cut_at {
            self.cache.clear();
            return Err(std::io::Error::other("power cut"));
        }
        self.cache.push((offset, buf.to_vec()));
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.writes >= self.cut_at {
            return Err(std::io::Error::other("power cut"));
        }
        for (at, data) in self.cache.drain(..) {
            self.durable.write_at(at, &data)?;
        }
        Ok(())
    }
}

#[test]
fn a_power_cut_at_any_write_never_leaves_a_bootable_disk_with_unverified_content() {
    let t = Flash::new();
    let job = Job::prepare(&t.spec(), &[512]).unwrap();
    let usr = t.usr();
    // The reference: an uninterrupted flash, and what each partition must hold to boot.
    let bytes = job.min_bytes() as usize + MIB as usize;
    let full = |cut_at| {
        let mut devs = [DeviceSlot {
            name: "mem".into(),
            serial: None,
            storage: PowerCut {
                durable: MemDisk::new(vec![0xee; bytes], 512),
                cache: Vec::new(),
                writes: 0,
                cut_at,
            },
        }];
        let rec = flash_all(&job, &mut devs, &NoReporter).remove(0);
        let [dev] = devs;
        (rec, dev.storage)
    };
    let (rec, done) = full(usize::MAX);
    assert_eq!(rec.result, "flashed", "{:?}", rec.error);
    let writes = done.writes;
    assert!(writes > 20, "{writes} writes");
    let mut reference = done.durable;
    let ref_table = gpt::read(&mut reference, Some(512)).unwrap().gpt;
    let content = |d: &mut MemDisk, n: u32| {
        let (off, len) = range(&ref_table, n);
        d.bytes[off as usize..(off + len) as usize].to_vec()
    };
    let want: Vec<(u32, Vec<u8>)> = [1, 2, 6, 9]
        .into_iter()
        .map(|n| (n, content(&mut reference, n)))
        .collect();
    let mut with_table = 0;
    for cut_at in 1..=writes {
        let (rec, mut dev) = full(cut_at);
        assert_eq!(rec.result, "failed", "cut before write {cut_at}");
        let d = &mut dev.durable;
        let Ok(state) = gpt::read(d, Some(512)) else {
            continue; // no table: nothing boots
        };
        // A table survived the cut: only the final step writes one, so the content under it
        // must be complete and verified.
        with_table += 1;
        let mut sd = SlotDisk::from_storage(d.clone(), Some(512)).unwrap();
        let chosen = sd
            .select(false)
            .unwrap()
            .expect("a table always has a bootable slot");
        assert_eq!(chosen.slot.label, "USR-A");
        let (a, _) = range(&state.gpt, 3);
        assert!(
            d.bytes[a as usize..a as usize + usr.len()] == usr[..],
            "cut before write {cut_at}: bootable table over an incomplete USR-A"
        );
        for (n, bytes) in &want {
            assert!(
                content(d, *n) == *bytes,
                "cut before write {cut_at}: bootable table over incomplete partition {n}"
            );
        }
    }
    assert!(
        with_table >= 1,
        "the cuts inside the final table write leave a valid backup"
    );
}

#[test]
fn help_shows_examples_and_exit_codes() {
    let o = Command::new(env!("CARGO_BIN_EXE_image-tools"))
        .args(["flash", "--help"])
        .output()
        .unwrap();
    let h = String::from_utf8_lossy(&o.stdout);
    assert!(
        h.contains("image-tools flash --payload os-1.0.payload"),
        "{h}"
    );
    assert!(h.contains("3 some devices refused or failed"), "{h}");
}
