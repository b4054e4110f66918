//! Test harness: disks in the DESIGN §3 layout made by `sgdisk` (512-byte sectors as files,
//! 4096-byte sectors through a loop device), and helpers that ask sgdisk and cgpt what they see.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

pub const USR: &str = "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6";

/// A disk image in its own temp dir, optionally attached to a loop device with 4096-byte sectors.
pub struct TestDisk {
    _dir: TempDir,
    pub file: PathBuf,
    pub loopdev: Option<PathBuf>,
    pub sector_size: u32,
}

impl TestDisk {
    /// The path tools should use: the loop device for 4096-byte sectors, else the file.
    pub fn dev(&self) -> &Path {
        self.loopdev.as_deref().unwrap_or(&self.file)
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.file).unwrap()
    }

    /// Grows the image by `bytes` (and tells the loop device).
    pub fn grow(&self, bytes: u64) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.file)
            .unwrap();
        f.set_len(f.metadata().unwrap().len() + bytes).unwrap();
        if let Some(l) = &self.loopdev {
            run("losetup", &["-c".as_ref(), l.as_os_str()]);
        }
    }

    /// Flips one bit at byte `offset` of the image.
    pub fn flip(&self, offset: u64) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.file)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, offset).unwrap();
        f.write_all_at(&[b[0] ^ 0x04], offset).unwrap();
    }

    pub fn len(&self) -> u64 {
        std::fs::metadata(&self.file).unwrap().len()
    }
}

impl Drop for TestDisk {
    fn drop(&mut self) {
        if let Some(l) = &self.loopdev {
            let _ = Command::new("losetup").arg("-d").arg(l).status();
        }
    }
}

pub fn run(cmd: &str, args: &[&std::ffi::OsStr]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn run_str(cmd: &str, args: &[&str]) -> String {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    String::from_utf8(run(cmd, &args).stdout).unwrap()
}

/// A 64 MiB disk in the DESIGN §3 layout made with sgdisk, A at P1 T0 S1 (set with cgpt).
pub fn sgdisk_layout(sector_size: u32) -> TestDisk {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let loopdev = (sector_size == 4096).then(|| {
        let out = run_str(
            "losetup",
            &["-f", "--show", "-b", "4096", file.to_str().unwrap()],
        );
        PathBuf::from(out.trim())
    });
    let disk = TestDisk {
        _dir: dir,
        file,
        loopdev,
        sector_size,
    };
    let dev = disk.dev().to_str().unwrap().to_string();
    run_str(
        "sgdisk",
        &[
            "-o",
            "-n",
            "1:1M:+8M",
            "-t",
            "1:c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            "-c",
            "1:EFI-SYSTEM",
            "-n",
            "2:0:+1M",
            "-t",
            "2:21686148-6449-6e6f-744e-656564454649",
            "-c",
            "2:BIOS-BOOT",
            "-n",
            "3:0:+16M",
            "-t",
            &format!("3:{USR}"),
            "-c",
            "3:USR-A",
            "-n",
            "4:0:+16M",
            "-t",
            &format!("4:{USR}"),
            "-c",
            "4:USR-B",
            "-n",
            "6:0:+2M",
            "-t",
            "6:0fc63daf-8483-4772-8e79-3d69d8477de4",
            "-c",
            "6:OEM",
            "-n",
            "9:0:0",
            "-t",
            "9:0fc63daf-8483-4772-8e79-3d69d8477de4",
            "-c",
            "9:ROOT",
            &dev,
        ],
    );
    run_str(
        "cgpt",
        &["add", "-i", "3", "-P", "1", "-T", "0", "-S", "1", &dev],
    );
    disk
}

/// Whether loop devices with 4096-byte sectors can be made here (they need root and /dev/loop*).
pub fn loop_available() -> bool {
    let ok = Path::new("/dev/loop-control").exists()
        && Command::new("losetup")
            .arg("-f")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("NOTE: no loop devices here; 4096-byte sgdisk/cgpt interop checks cannot run");
    }
    ok
}

/// Sector sizes to test with sgdisk-made disks.
pub fn sector_sizes() -> Vec<u32> {
    if loop_available() {
        vec![512, 4096]
    } else {
        vec![512]
    }
}

/// `sgdisk -v` reports no problems.
pub fn assert_sgdisk_clean(d: &TestDisk) {
    let out = run_str("sgdisk", &["-v", d.dev().to_str().unwrap()]);
    assert!(
        out.contains("No problems found"),
        "sgdisk -v on {} ({}):\n{out}",
        d.dev().display(),
        d.sector_size
    );
}

/// The attribute field of partition `n` as `sgdisk -i` prints it.
pub fn sgdisk_attributes(d: &TestDisk, n: u32) -> u64 {
    let out = run_str("sgdisk", &["-i", &n.to_string(), d.dev().to_str().unwrap()]);
    let line = out
        .lines()
        .find(|l| l.starts_with("Attribute flags:"))
        .unwrap_or_else(|| panic!("no attributes in {out}"));
    u64::from_str_radix(line.trim_start_matches("Attribute flags:").trim(), 16).unwrap()
}

/// (priority, tries, successful) of partition `n` as `cgpt show` prints them.
pub fn cgpt_pts(d: &TestDisk, n: u32) -> (u8, u8, bool) {
    let dev = d.dev().to_str().unwrap().to_string();
    let get = |flag: &str| {
        run_str("cgpt", &["show", "-i", &n.to_string(), flag, &dev])
            .trim()
            .parse::<u8>()
            .unwrap()
    };
    (get("-P"), get("-T"), get("-S") == 1)
}

/// Runs the bootctl binary.
pub fn bootctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bootctl"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs the bootctl binary and requires success.
pub fn bootctl_ok(args: &[&str]) -> String {
    let out = bootctl(args);
    assert!(
        out.status.success(),
        "bootctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `bootctl show --json` parsed.
pub fn show_json(d: &TestDisk) -> serde_json::Value {
    serde_json::from_str(&bootctl_ok(&["show", d.dev().to_str().unwrap(), "--json"])).unwrap()
}

/// (priority, tries, successful) of partition `n` from `bootctl show --json`.
pub fn bootctl_pts(d: &TestDisk, n: u32) -> (u8, u8, bool) {
    let v = show_json(d);
    let s = v["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["number"] == n)
        .unwrap_or_else(|| panic!("no slot {n} in {v}"));
    (
        s["priority"].as_u64().unwrap() as u8,
        s["tries"].as_u64().unwrap() as u8,
        s["successful"].as_bool().unwrap(),
    )
}
