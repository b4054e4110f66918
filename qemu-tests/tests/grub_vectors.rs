//! The GRUB module `gptprio` against the Rust rule, and on real firmware.
//!
//! - Every vector of `bootctl/testdata/select-vectors.json` is put on its own DESIGN §3 disk
//!   file and one `grub-emu` run calls `gptprio.next` on all of them: the same partition (or
//!   none, with the variables untouched), the same attributes written, both GPT copies valid
//!   and equal afterwards, and not one byte written when nothing was decremented.
//! - Its `damaged` vectors do the same on disks with one or both GPT copies broken (DESIGN §4):
//!   with a try to spend GRUB rebuilds the broken copy, leaving exactly the bytes a boot of the
//!   undamaged disk leaves (`sgdisk -v` clean); with none it writes nothing; with both copies
//!   broken it chooses nothing. Beside them, in the emulator: a stale backup is rewritten from
//!   the primary, and a copy that could not be rebuilt into a valid one means no write.
//! - Real firmware: disks made by `image-tools disk` boot GRUB under OVMF (512- and 4096-byte
//!   sectors) and SeaBIOS, and GRUB's choice and tries decrement show on the serial console
//!   and on the disk, also with a broken primary or backup copy. The /usr image holds a
//!   stand-in kernel, so GRUB's `linux` fails after the choice; booting a real kernel is
//!   `boot.rs`'s business.
use bootctl::gpt::{self, Entry, Gpt};
use bootctl::guid::{BIOS_BOOT_TYPE, ESP_TYPE, LINUX_DATA_TYPE, USR_TYPE};
use bootctl::storage::FileDisk;
use bootctl::Guid;
use bootctl::SlotAttrs;
use qemu_tests::grub::{artifacts, Emu, GrubArtifacts, EMU_MAX_DISKS};
use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::Hasher;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../bootctl/testdata/select-vectors.json"
);

fn grub() -> GrubArtifacts {
    artifacts().expect("building GRUB with gptprio (grub-patches/build.sh)")
}

fn attrs(p: u8, t: u8, s: bool) -> u64 {
    SlotAttrs {
        priority: p,
        tries: t,
        successful: s,
    }
    .apply(0)
}

/// Sectors of a vector disk: room for both GPT copies and six 8-sector partitions.
const VECTOR_DISK_SECTORS: u64 = 256;

/// Writes a tiny disk with the DESIGN §3 partitions (numbers, types, labels; 8 sectors each,
/// as gptprio never looks at sizes) and the given usr attributes; returns its table.
fn make_disk(path: &Path, usr: &[(u32, u64)]) -> Gpt {
    let bytes = VECTOR_DISK_SECTORS * 512;
    fs::File::create(path).unwrap().set_len(bytes).unwrap();
    let mut table = Gpt::new(bytes, 512, Guid::random().unwrap()).unwrap();
    let parts = [
        (1, "EFI-SYSTEM", ESP_TYPE),
        (2, "BIOS-BOOT", BIOS_BOOT_TYPE),
        (3, "USR-A", USR_TYPE),
        (4, "USR-B", USR_TYPE),
        (6, "OEM", LINUX_DATA_TYPE),
        (9, "ROOT", LINUX_DATA_TYPE),
    ];
    let mut next = table.first_usable_lba;
    for (number, name, type_guid) in parts {
        let unique_guid = Guid::random().unwrap();
        let (first_lba, last_lba) = (next, next + 7);
        let entry = Entry {
            type_guid,
            unique_guid,
            first_lba,
            last_lba,
            attributes: 0,
            name: name.into(),
        };
        table.set_entry(number, &entry);
        next += 8;
    }
    for &(n, a) in usr {
        table.set_attributes(n, a);
    }
    let mut d = FileDisk::open(path, true).unwrap();
    gpt::write_new(&mut d, &table).unwrap();
    table
}

fn file_hash(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    let mut f = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h.finish();
        }
        h.write(&buf[..n]);
    }
}

/// The script that runs gptprio.next on `hd<i>` and prints `RESULT <i> ok|err <dev> <uuid>`.
fn select_script(disks: usize) -> String {
    (0..disks)
        .map(|i| {
            format!(
                "set dev=untouched\nset uuid=untouched\n\
                 if gptprio.next -d dev -u uuid hd{i}; then echo \"RESULT {i} ok $dev $uuid\"; \
                 else echo \"RESULT {i} err $dev $uuid\"; fi\n"
            )
        })
        .collect()
}

/// What GRUB said about each disk: `(ok, dev, uuid)`.
fn results(out: &str, disks: usize) -> Vec<(bool, String, String)> {
    let mut r = vec![None; disks];
    for line in out.lines() {
        let Some(at) = line.find("RESULT ") else {
            continue;
        };
        let f: Vec<&str> = line[at + 7..].split_whitespace().collect();
        if f.len() == 4 {
            let i: usize = f[0].parse().unwrap();
            r[i] = Some((f[1] == "ok", f[2].to_string(), f[3].to_string()));
        }
    }
    r.into_iter()
        .enumerate()
        .map(|(i, x)| x.unwrap_or_else(|| panic!("no RESULT for hd{i} in:\n{out}")))
        .collect()
}

fn read_table(path: &Path, sector_size: u32) -> gpt::DiskGpt {
    let mut d = FileDisk::open(path, false).unwrap();
    gpt::read(&mut d, Some(sector_size)).unwrap()
}

fn hex_attr(v: &serde_json::Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

fn entries(v: &serde_json::Value) -> Vec<(u32, u64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap() as u32,
                hex_attr(&e["attributes"]),
            )
        })
        .collect()
}

#[test]
fn gptprio_matches_the_rust_rule_on_every_select_vector() {
    let grub = grub();
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(VECTORS).unwrap()).unwrap();
    let vectors = json["vectors"].as_array().unwrap();
    assert!(vectors.len() > 100, "the vector file holds the full matrix");
    let dir = tempfile::tempdir().unwrap();
    struct Case {
        name: String,
        path: PathBuf,
        table: Gpt,
        choice: Option<u32>,
        before: Vec<(u32, u64)>,
        after: Vec<(u32, u64)>,
        hash: u64,
    }
    let cases: Vec<Case> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let path = dir.path().join(format!("v{i}.img"));
            let before = entries(&v["entries"]);
            let table = make_disk(&path, &before);
            Case {
                name: v["name"].as_str().unwrap().to_string(),
                hash: file_hash(&path),
                path,
                table,
                choice: v["choice"].as_u64().map(|c| c as u32),
                before,
                after: entries(&v["after"]),
            }
        })
        .collect();
    // One emulator run per batch; disk i of a batch is GRUB's hd<i>.
    const BATCH: usize = EMU_MAX_DISKS / 2;
    let mut got = Vec::new();
    for batch in cases.chunks(BATCH) {
        let disks: Vec<&Path> = batch.iter().map(|c| c.path.as_path()).collect();
        let out = Emu::new(&grub)
            .run(&disks, &select_script(disks.len()))
            .unwrap();
        got.extend(results(&out, disks.len()));
    }

    let mut failures = Vec::new();
    for (n, (c, (ok, dev, uuid))) in cases.iter().zip(&got).enumerate() {
        let i = n % BATCH;
        let want = match c.choice {
            Some(n) => (
                true,
                format!("hd{i},gpt{n}"),
                c.table.entry(n).unique_guid.to_string().to_lowercase(),
            ),
            None => (false, "untouched".to_string(), "untouched".to_string()),
        };
        if (*ok, dev.clone(), uuid.clone()) != want {
            failures.push(format!(
                "{}: GRUB said {ok} {dev} {uuid}, the rule {want:?}",
                c.name
            ));
            continue;
        }
        let r = read_table(&c.path, 512);
        if r.primary.is_err() || r.backup.is_err() || !r.copies_match {
            failures.push(format!(
                "{}: copies after GRUB: {:?} {:?} match={}",
                c.name, r.primary, r.backup, r.copies_match
            ));
            continue;
        }
        let now: Vec<(u32, u64)> = c
            .after
            .iter()
            .map(|&(n, _)| (n, r.gpt.entry(n).attributes))
            .collect();
        if now != c.after {
            failures.push(format!(
                "{}: attributes after GRUB {now:x?}, the rule {:x?}",
                c.name, c.after
            ));
        }
        if c.after == c.before && file_hash(&c.path) != c.hash {
            failures.push(format!(
                "{}: nothing to decrement, yet GRUB changed the disk",
                c.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, offset)
        .unwrap();
}

/// Inverts the lowest bit of the byte at `offset`.
fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 1], offset).unwrap();
}

/// Applies a vector's `damage` edits (format: `bootctl/tests/vectors.rs`) to a 512-byte-sector
/// disk laid out as `table`.
fn apply_damage(path: &Path, table: &Gpt, damage: &serde_json::Value) {
    for edit in damage.as_array().expect("damage is a list") {
        let lba = match edit["at"].as_str() {
            Some("primary header") => 1,
            Some("backup header") => table.backup_lba,
            Some("primary entries") => table.primary_entries_lba,
            Some("backup entries") => table.backup_entries_lba,
            other => panic!("unknown damage place {other:?}"),
        };
        match edit["op"].as_str() {
            Some("zero") => overwrite(path, lba * 512, &[0u8; 512]),
            Some("flip") => flip(path, lba * 512 + edit["byte"].as_u64().unwrap()),
            other => panic!("unknown damage op {other:?}"),
        }
    }
}

/// `sgdisk -v` finds no problem on the disk.
fn assert_sgdisk_clean(path: &Path, what: &str) {
    if let Err(e) = qemu_tests::disk::sgdisk_verify(path) {
        panic!("{what}: {e}");
    }
}

#[test]
fn gptprio_matches_the_rust_rule_on_every_damaged_vector() {
    // Issue 14, defect 11: with one broken copy GRUB used to write nothing, so a trial slot
    // that died before userspace repaired the table booted again forever.
    let grub = grub();
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(VECTORS).unwrap()).unwrap();
    let vectors = json["damaged"].as_array().expect("damaged vectors");
    assert!(
        vectors.len() >= 40,
        "the vector file holds the damaged cases"
    );
    assert!(
        vectors.iter().any(|v| v["written"] == true)
            && vectors.iter().any(|v| v["written"] == false),
        "damaged vectors with and without a write"
    );
    let dir = tempfile::tempdir().unwrap();
    // Disk 2i is vector i's damaged disk, disk 2i+1 its undamaged twin (same GUIDs), whose
    // boot shows the bytes a rebuilt table must end up as.
    let mut paths = Vec::new();
    let mut tables = Vec::new();
    let mut hashes = Vec::new();
    for (i, v) in vectors.iter().enumerate() {
        let damaged = dir.path().join(format!("v{i}.img"));
        let twin = dir.path().join(format!("v{i}-twin.img"));
        let table = make_disk(&damaged, &entries(&v["entries"]));
        fs::copy(&damaged, &twin).unwrap();
        apply_damage(&damaged, &table, &v["damage"]);
        hashes.push(file_hash(&damaged));
        paths.extend([damaged, twin]);
        tables.push(table);
    }
    assert!(paths.len() <= EMU_MAX_DISKS);
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let got = results(
        &Emu::new(&grub)
            .run(&refs, &select_script(refs.len()))
            .unwrap(),
        refs.len(),
    );

    let mut failures = Vec::new();
    for (i, v) in vectors.iter().enumerate() {
        let name = v["name"].as_str().unwrap();
        let (path, twin) = (&paths[2 * i], &paths[2 * i + 1]);
        let (ok, dev, uuid) = &got[2 * i];
        let want = match v["choice"].as_u64() {
            Some(n) => (
                true,
                format!("hd{},gpt{n}", 2 * i),
                tables[i]
                    .entry(n as u32)
                    .unique_guid
                    .to_string()
                    .to_lowercase(),
            ),
            None => (false, "untouched".to_string(), "untouched".to_string()),
        };
        if (*ok, dev.clone(), uuid.clone()) != want {
            failures.push(format!(
                "{name}: GRUB said {ok} {dev} {uuid}, the rule {want:?}"
            ));
            continue;
        }
        if v["written"] == false {
            if file_hash(path) != hashes[i] {
                failures.push(format!(
                    "{name}: nothing to decrement, yet GRUB changed the disk"
                ));
            }
            continue;
        }
        let r = read_table(path, 512);
        if r.needs_repair() {
            failures.push(format!(
                "{name}: copies after GRUB: {:?} {:?} match={} backup at end={}",
                r.primary,
                r.backup,
                r.copies_match,
                r.backup_at_end()
            ));
            continue;
        }
        let after = entries(&v["after"]);
        let now: Vec<(u32, u64)> = after
            .iter()
            .map(|&(n, _)| (n, r.gpt.entry(n).attributes))
            .collect();
        if now != after {
            failures.push(format!(
                "{name}: attributes after GRUB {now:x?}, the rule {after:x?}"
            ));
        } else if fs::read(path).unwrap() != fs::read(twin).unwrap() {
            failures.push(format!(
                "{name}: the disk differs from its undamaged twin after the same boot"
            ));
        } else if let Err(e) = qemu_tests::disk::sgdisk_verify(path) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} damaged vectors differ:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

#[test]
fn gptprio_rewrites_a_stale_backup_and_never_writes_a_copy_that_would_not_validate() {
    let grub = grub();
    let next = [(3, attrs(1, 0, true)), (4, attrs(2, 1, false))];
    let dir = tempfile::tempdir().unwrap();
    let (stale, unfit) = (dir.path().join("stale.img"), dir.path().join("unfit.img"));

    // A valid backup that still says B is P0 (an interrupted userspace write): the primary
    // wins and is written to both copies.
    let t = make_disk(&stale, &next);
    let mut old = t.clone();
    old.set_attributes(4, 0);
    let mut padded = old.entry_array().to_vec();
    padded.resize((old.array_sectors() * 512) as usize, 0);
    overwrite(&stale, old.backup_entries_lba * 512, &padded);
    overwrite(
        &stale,
        old.backup_lba * 512,
        &old.header_sector(gpt::Copy::Backup),
    );

    // A primary whose usable range reaches into the backup entry array (valid to GRUB, which
    // does not check that) and a zeroed backup: a backup rebuilt from it would overlap the
    // usable range and fail GRUB's own checks, so GRUB boots B by the primary and writes
    // nothing rather than leave a disk with one valid copy half-rewritten.
    let mut u = make_disk(&unfit, &next);
    u.last_usable_lba = u.backup_entries_lba;
    overwrite(&unfit, 512, &u.header_sector(gpt::Copy::Primary));
    overwrite(&unfit, u.backup_lba * 512, &[0u8; 512]);
    let unfit_hash = file_hash(&unfit);

    let out = Emu::new(&grub)
        .run(&[&stale, &unfit], &select_script(2))
        .unwrap();
    let got = results(&out, 2);
    let b = |t: &Gpt| t.entry(4).unique_guid.to_string().to_lowercase();
    assert_eq!(
        got[0],
        (true, "hd0,gpt4".to_string(), b(&t)),
        "stale backup"
    );
    let r = read_table(&stale, 512);
    assert!(!r.needs_repair(), "stale backup: {r:?}");
    assert_eq!(SlotAttrs::decode(r.gpt.entry(4).attributes).tries, 0);
    assert_sgdisk_clean(&stale, "stale backup");

    assert_eq!(
        got[1],
        (true, "hd1,gpt4".to_string(), b(&u)),
        "unfit backup"
    );
    assert_eq!(file_hash(&unfit), unfit_hash, "unfit backup: GRUB wrote");
}

#[test]
fn gptprio_defaults_to_the_disk_of_root_and_requires_both_variables() {
    let grub = grub();
    let dir = tempfile::tempdir().unwrap();
    let (d0, d1) = (dir.path().join("d0.img"), dir.path().join("d1.img"));
    make_disk(&d0, &[(3, attrs(1, 0, true)), (4, 0)]);
    let t1 = make_disk(&d1, &[(3, attrs(1, 0, true)), (4, attrs(2, 0, true))]);
    let script = "\
        set root=hd1,gpt1\n\
        if gptprio.next -d dev -u uuid; then echo \"ROOTDISK $dev $uuid\"; fi\n\
        if gptprio.next -d dev hd0; then echo NO-U-ACCEPTED; else echo NO-U-REFUSED; fi\n\
        if gptprio.next -u uuid hd0; then echo NO-D-ACCEPTED; else echo NO-D-REFUSED; fi\n\
        if gptprio.next -d dev -u uuid hd9; then echo NO-DISK-ACCEPTED; else echo NO-DISK-REFUSED; fi\n\
        if gptprio.next -d dev -u uuid (hd0,gpt2); then echo \"PARTNAME $dev\"; fi\n";
    let out = Emu::new(&grub).run(&[&d0, &d1], script).unwrap();
    let b = t1.entry(4).unique_guid.to_string().to_lowercase();
    assert!(out.contains(&format!("ROOTDISK hd1,gpt4 {b}")), "{out}");
    for refused in ["NO-U-REFUSED", "NO-D-REFUSED", "NO-DISK-REFUSED"] {
        assert!(out.contains(refused), "{refused}: {out}");
    }
    assert!(
        out.contains("PARTNAME hd0,gpt3"),
        "a partition names its disk: {out}"
    );
}

#[test]
fn partitions_resolve_by_the_backup_gpt_when_the_primary_is_broken() {
    // GRUB's part_gpt reads only the primary copy; gptprio's backup partition map takes over
    // when the primary does not validate, so files on (hdN,gpt4) stay reachable.
    let grub = grub();
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("d{i}.img")))
        .collect();
    let tables: Vec<Gpt> = paths
        .iter()
        .map(|p| make_disk(p, &[(3, attrs(1, 0, true))]))
        .collect();
    overwrite(&paths[1], 512, &[0u8; 512]);
    overwrite(&paths[2], 512, &[0u8; 512]);
    overwrite(&paths[2], tables[2].backup_lba * 512, &[0u8; 512]);
    let script: String = (0..3)
        .map(|i| {
            format!(
                "if probe --set=u --part-uuid (hd{i},gpt4); then echo \"PART {i} $u\"; \
                 else echo \"PART {i} none\"; fi\n"
            )
        })
        .collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let out = Emu::new(&grub).run(&refs, &script).unwrap();
    for (i, t) in tables.iter().enumerate().take(2) {
        let b = t.entry(4).unique_guid.to_string().to_lowercase();
        assert!(out.contains(&format!("PART {i} {b}")), "disk {i}: {out}");
    }
    assert!(
        out.contains("PART 2 none"),
        "no valid copy, no partitions: {out}"
    );
}

// --- Real firmware -------------------------------------------------------------------------

/// A QEMU (TCG) machine whose serial console goes to a file; killed on drop.
struct Vm {
    child: Child,
    log: PathBuf,
}

impl Vm {
    fn start(dir: &Path, disk: &Path, uefi: bool, sector_size: u32) -> Vm {
        let log = dir.join(format!("serial-{}.log", if uefi { "uefi" } else { "bios" }));
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m", "256", "-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=none,id=d0", disk.display()))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive=d0,logical_block_size={sector_size},physical_block_size={sector_size}"));
        if uefi {
            let vars = dir.join("OVMF_VARS.fd");
            fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
            cmd.args([
                "-machine",
                "q35",
                "-drive",
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            ])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Vm { child, log }
    }

    /// Waits until every one of `patterns` is on the console; returns the console text.
    fn wait_for(&mut self, patterns: &[&str], timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let text =
                String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned();
            if patterns.iter().all(|p| text.contains(p)) {
                return text;
            }
            if start.elapsed() > timeout {
                panic!("waiting {timeout:?} for {patterns:?}; console:\n{text}");
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("QEMU exited ({status}) before {patterns:?}; console:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A disk from `image-tools disk` whose USR-A holds a stand-in kernel.
fn image_tools_disk(
    dir: &Path,
    grub: &GrubArtifacts,
    sector_size: u32,
) -> (PathBuf, image_tools::disk::DiskReport) {
    let tree = dir.join("usr");
    fs::create_dir_all(tree.join("boot")).unwrap();
    fs::write(tree.join("boot/vmlinuz"), b"stand-in kernel").unwrap();
    fs::write(tree.join("boot/initramfs.img"), b"stand-in initramfs").unwrap();
    let usr = dir.join("usr.img");
    let st = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&usr)
        .args([
            "-noappend",
            "-noI",
            "-noD",
            "-noF",
            "-noX",
            "-quiet",
            "-no-progress",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let files = image_tools::disk::GrubFiles::from_dir(&grub.dir).unwrap();
    let mut spec = image_tools::disk::DiskSpec::new(usr, dir.join("disk.img"), files);
    spec.sector_size = sector_size;
    spec.usr_size = 8 << 20;
    spec.root_size = 8 << 20;
    let report = image_tools::disk::assemble(&spec).unwrap();
    (dir.join("disk.img"), report)
}

/// Boots GRUB from a fresh image-tools disk after `prepare` changed it, until every pattern
/// `expect` makes from the disk's report is on the console. Returns the scratch directory
/// (removed on drop), the disk, the console, and whether the disk bytes stayed the same.
fn grub_boot(
    uefi: bool,
    sector_size: u32,
    prepare: impl FnOnce(&Path),
    expect: impl FnOnce(&image_tools::disk::DiskReport) -> Vec<String>,
) -> (tempfile::TempDir, PathBuf, String, bool) {
    let grub = grub();
    let dir = tempfile::tempdir().unwrap();
    let (disk, report) = image_tools_disk(dir.path(), &grub, sector_size);
    prepare(&disk);
    let before = file_hash(&disk);
    let patterns = expect(&report);
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let mut vm = Vm::start(dir.path(), &disk, uefi, sector_size);
    let console = vm.wait_for(&refs, Duration::from_secs(240));
    drop(vm);
    let unchanged = file_hash(&disk) == before;
    (dir, disk, console, unchanged)
}

fn set_next_b(disk: &Path, sector_size: u32) {
    let mut d = bootctl::SlotDisk::open(disk, true, Some(sector_size)).unwrap();
    d.set_next(&bootctl::SlotId::B, 1).unwrap();
}

/// With B at P2 T1 S0 and A at P1 T0 S1, GRUB must choose B, say so on the console, and leave
/// B at P2 T0 S0 on the disk, both copies valid.
fn boots_b_and_decrements(uefi: bool, sector_size: u32) {
    let (_dir, disk, _, _) = grub_boot(
        uefi,
        sector_size,
        |d| set_next_b(d, sector_size),
        |r| {
            vec![format!(
                "gptprio: booting hd0,gpt4 PARTUUID={}",
                r.partuuid(4).unwrap()
            )]
        },
    );
    let t = read_table(&disk, sector_size);
    assert!(t.primary.is_ok() && t.backup.is_ok() && t.copies_match);
    let b = SlotAttrs::decode(t.gpt.entry(4).attributes);
    assert_eq!(
        (b.priority, b.tries, b.successful),
        (2, 0, false),
        "GRUB used B's try"
    );
    let a = SlotAttrs::decode(t.gpt.entry(3).attributes);
    assert_eq!((a.priority, a.tries, a.successful), (1, 0, true));
}

#[test]
fn uefi_grub_from_an_image_tools_disk_boots_b_and_uses_its_try() {
    boots_b_and_decrements(true, 512);
}

#[test]
fn uefi_grub_on_4096_byte_sectors_boots_b_and_uses_its_try() {
    boots_b_and_decrements(true, 4096);
}

#[test]
fn bios_grub_from_an_image_tools_disk_boots_b_and_uses_its_try() {
    boots_b_and_decrements(false, 512);
}

/// With A marked bad and B empty, GRUB must print why, run the fallback entry (USR-A,
/// updater.fallback=1) without a key press, and write nothing.
fn nothing_bootable_runs_the_fallback(uefi: bool) {
    let (_dir, _, console, unchanged) = grub_boot(
        uefi,
        512,
        |d| {
            let mut d = bootctl::SlotDisk::open(d, true, Some(512)).unwrap();
            d.mark_bad(&bootctl::SlotId::A).unwrap();
        },
        |r| {
            vec![
                "gptprio: no bootable USR partition on hd0".into(),
                "gptprio: fallback entry USR-A (hd0,gpt3), updater.fallback=1".into(),
                format!("gptprio: fallback PARTUUID={}", r.partuuid(3).unwrap()),
            ]
        },
    );
    assert!(!console.contains("gptprio: booting"), "{console}");
    assert!(unchanged, "GRUB wrote nothing");
}

#[test]
fn uefi_nothing_bootable_boots_the_fallback_entry_without_a_key_press() {
    nothing_bootable_runs_the_fallback(true);
}

#[test]
fn bios_nothing_bootable_boots_the_fallback_entry_without_a_key_press() {
    nothing_bootable_runs_the_fallback(false);
}

/// Boots a disk with B at P2 T1 S0 whose GPT was then damaged by `damage`: GRUB must boot B.
/// Returns the disk afterwards, whether its bytes stayed the same, and the scratch directory
/// holding it (removed on drop).
fn boots_b_on_a_damaged_table(
    uefi: bool,
    sector_size: u32,
    damage: fn(&Path, u32),
) -> (gpt::DiskGpt, bool, PathBuf, tempfile::TempDir) {
    let (dir, disk, _, unchanged) = grub_boot(
        uefi,
        sector_size,
        |d| {
            set_next_b(d, sector_size);
            damage(d, sector_size);
        },
        |r| {
            vec![format!(
                "gptprio: booting hd0,gpt4 PARTUUID={}",
                r.partuuid(4).unwrap()
            )]
        },
    );
    let mut d = FileDisk::open(&disk, false).unwrap();
    (
        gpt::read(&mut d, Some(sector_size)).unwrap(),
        unchanged,
        disk,
        dir,
    )
}

fn zero_primary_header(d: &Path, sector_size: u32) {
    overwrite(d, u64::from(sector_size), &vec![0u8; sector_size as usize]);
}

fn zero_backup_header(d: &Path, sector_size: u32) {
    qemu_tests::disk::zero_backup_header(d, sector_size).unwrap();
}

/// Both copies valid and equal, the backup at the end, and B's try spent.
fn assert_repaired_and_spent(t: &gpt::DiskGpt) {
    assert!(
        !t.needs_repair(),
        "primary {:?}, backup {:?}, copies match {}, backup at the end {}",
        t.primary,
        t.backup,
        t.copies_match,
        t.backup_at_end()
    );
    let b = SlotAttrs::decode(t.gpt.entry(4).attributes);
    assert_eq!(
        (b.priority, b.tries, b.successful),
        (2, 0, false),
        "B's try spent"
    );
}

#[test]
fn bios_with_the_primary_header_zeroed_boots_b_by_the_backup_and_rebuilds_the_primary() {
    // SeaBIOS never touches the GPT, so the rebuilt primary and the spent try are GRUB's work
    // alone (issue 14, defect 11: GRUB used to write nothing here).
    let (t, _, disk, _dir) = boots_b_on_a_damaged_table(false, 512, zero_primary_header);
    assert_repaired_and_spent(&t);
    assert_sgdisk_clean(&disk, "rebuilt primary");
}

#[test]
fn bios_with_the_backup_header_zeroed_boots_b_and_rebuilds_the_backup() {
    let (t, _, disk, _dir) = boots_b_on_a_damaged_table(false, 512, zero_backup_header);
    assert_repaired_and_spent(&t);
    assert_sgdisk_clean(&disk, "rebuilt backup");
}

#[test]
fn uefi_4096_with_the_primary_header_zeroed_boots_b_after_the_firmware_restores_it() {
    // OVMF's partition driver (EDK2 PartitionDxe) restores an invalid primary GPT from a valid
    // backup before GRUB runs; GRUB then sees two valid copies and uses B's try.
    let (t, _, _, _dir) = boots_b_on_a_damaged_table(true, 4096, zero_primary_header);
    assert_repaired_and_spent(&t);
}
