//! Tests of `image-tools mkusr`: refusals, both filesystems read back with the standard tools,
//! and byte-identical output for the same tree.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory holding a /usr tree `usr/` and the images made from it.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A complete tree: kernel, initramfs, os-release, a binary, a symlink and a nested file.
    fn complete() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        f.write("boot/vmlinuz", b"kernel bytes");
        f.write("boot/initramfs.img", b"initramfs bytes");
        f.write(
            "lib/os-release",
            b"NAME=\"Test OS\"\nIMAGE_ID=testos\nIMAGE_VERSION=\"1.2.3\"\n",
        );
        f.write("share/doc/readme with space.txt", &[7u8; 10_000]);
        f.write(
            "bin/tool",
            &(0..=255u8).cycle().take(300_000).collect::<Vec<_>>(),
        );
        std::os::unix::fs::symlink("tool", f.usr().join("bin/alias")).unwrap();
        f
    }

    fn usr(&self) -> PathBuf {
        self.dir.path().join("usr")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, rel: &str, bytes: &[u8]) {
        let p = self.usr().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    fn mkusr(&self, out: &str, fs_kind: &str) -> Output {
        Command::new(env!("CARGO_BIN_EXE_image-tools"))
            .arg("mkusr")
            .arg(self.usr())
            .arg("-o")
            .arg(self.path(out))
            .args(["--fs", fs_kind])
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .unwrap()
    }

    /// Sets every mtime in the tree to `secs`, as a rebuilt tree would differ.
    fn touch_all(&self, secs: i64) {
        let status = Command::new("find")
            .arg(self.usr())
            .args(["-exec", "touch", "-h", "-d", &format!("@{secs}"), "{}", "+"])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_refused(f: &Fixture, expected: &str) {
    for fs_kind in ["squashfs", "ext4"] {
        let out = f.mkusr("usr.img", fs_kind);
        assert_eq!(out.status.code(), Some(1), "{fs_kind}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one-line error expected: {err}");
        assert!(err.contains(expected), "{err:?} should name {expected:?}");
        assert!(!f.path("usr.img").exists(), "nothing may be written");
    }
}

#[test]
fn refuses_tree_without_vmlinuz() {
    let f = Fixture::complete();
    fs::remove_file(f.usr().join("boot/vmlinuz")).unwrap();
    assert_refused(&f, "is missing boot/vmlinuz\n");
}

#[test]
fn refuses_tree_without_initramfs() {
    let f = Fixture::complete();
    fs::remove_file(f.usr().join("boot/initramfs.img")).unwrap();
    assert_refused(&f, "is missing boot/initramfs.img\n");
}

#[test]
fn refuses_tree_without_os_release() {
    let f = Fixture::complete();
    fs::remove_file(f.usr().join("lib/os-release")).unwrap();
    assert_refused(&f, "is missing lib/os-release\n");
}

#[test]
fn refuses_os_release_without_image_version() {
    let f = Fixture::complete();
    f.write("lib/os-release", b"IMAGE_ID=testos\nVERSION=1\n");
    assert_refused(&f, "is missing IMAGE_VERSION in lib/os-release\n");
}

#[test]
fn refuses_os_release_with_empty_image_id() {
    let f = Fixture::complete();
    f.write("lib/os-release", b"IMAGE_ID=\"\"\nIMAGE_VERSION=2\n");
    assert_refused(&f, "is missing IMAGE_ID in lib/os-release\n");
}

#[test]
fn names_everything_missing_in_one_error() {
    let f = Fixture::complete();
    fs::remove_file(f.usr().join("boot/vmlinuz")).unwrap();
    f.write("lib/os-release", b"NAME=x\n");
    assert_refused(
        &f,
        "is missing boot/vmlinuz, IMAGE_ID in lib/os-release, IMAGE_VERSION in lib/os-release\n",
    );
}

#[test]
fn refuses_kernel_that_is_a_symlink() {
    let f = Fixture::complete();
    fs::remove_file(f.usr().join("boot/vmlinuz")).unwrap();
    std::os::unix::fs::symlink("/boot/vmlinuz", f.usr().join("boot/vmlinuz")).unwrap();
    assert_refused(&f, "is missing boot/vmlinuz\n");
}

#[test]
fn squashfs_image_is_uncompressed_and_reads_back_with_unsquashfs() {
    let f = Fixture::complete();
    let out = f.mkusr("usr.img", "squashfs");
    assert!(out.status.success(), "{}", stderr(&out));

    let info = Command::new("unsquashfs")
        .arg("-s")
        .arg(f.path("usr.img"))
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    for line in [
        "Inodes are uncompressed",
        "Data is uncompressed",
        "Fragments are uncompressed",
        "Uids/Gids (Id table) are uncompressed",
        "Creation or last append time Thu Jan  1 00:00:00 1970",
    ] {
        assert!(info.contains(line), "{line:?} not in:\n{info}");
    }

    let extracted = f.path("extracted");
    let status = Command::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(&extracted)
        .arg(f.path("usr.img"))
        .status()
        .unwrap();
    assert!(status.success());
    assert_trees_equal(&f.usr(), &extracted);

    let listing = Command::new("unsquashfs")
        .args(["-lln"])
        .arg(f.path("usr.img"))
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&listing.stdout).lines().skip(3) {
        assert!(line.contains(" 0/0 "), "not owned by root: {line}");
        assert!(
            line.contains("1970-01-01 00:00"),
            "not stamped at 0: {line}"
        );
    }
}

#[test]
fn ext4_image_reads_back_with_debugfs() {
    let f = Fixture::complete();
    let out = f.mkusr("usr.img", "ext4");
    assert!(out.status.success(), "{}", stderr(&out));

    let dumped = f.path("dumped");
    fs::create_dir(&dumped).unwrap();
    let status = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", dumped.display()))
        .arg(f.path("usr.img"))
        .output()
        .unwrap();
    assert!(status.status.success());
    fs::remove_dir(dumped.join("lost+found")).unwrap();
    assert_trees_equal(&f.usr(), &dumped);

    let stat = Command::new("debugfs")
        .args(["-R", "stat /bin/tool"])
        .arg(f.path("usr.img"))
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&stat.stdout);
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");
    assert!(stat.contains("mtime: 0x00000000:00000000"), "{stat}");

    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(f.path("usr.img"))
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn same_tree_gives_byte_identical_images() {
    for fs_kind in ["squashfs", "ext4"] {
        let f = Fixture::complete();
        f.touch_all(1_000_000);
        assert!(f.mkusr("first.img", fs_kind).status.success());
        f.touch_all(2_000_000);
        assert!(f.mkusr("second.img", fs_kind).status.success());
        let first = fs::read(f.path("first.img")).unwrap();
        let second = fs::read(f.path("second.img")).unwrap();
        assert!(first == second, "{fs_kind} images differ");
    }
}

#[test]
fn changed_content_gives_a_different_image() {
    for fs_kind in ["squashfs", "ext4"] {
        let f = Fixture::complete();
        assert!(f.mkusr("first.img", fs_kind).status.success());
        f.write("share/doc/readme with space.txt", &[8u8; 10_000]);
        assert!(f.mkusr("second.img", fs_kind).status.success());
        let first = fs::read(f.path("first.img")).unwrap();
        let second = fs::read(f.path("second.img")).unwrap();
        assert!(first != second, "{fs_kind} image ignores a content change");
    }
}

#[test]
fn help_shows_an_example() {
    let out = Command::new(env!("CARGO_BIN_EXE_image-tools"))
        .args(["mkusr", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Example: image-tools mkusr"), "{help}");
}

/// Both trees hold the same names, kinds, symlink targets and file bytes.
fn assert_trees_equal(a: &Path, b: &Path) {
    let mut names_a: Vec<_> = fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut names_b: Vec<_> = fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(
        names_a,
        names_b,
        "entries of {} and {}",
        a.display(),
        b.display()
    );
    for name in names_a {
        let (pa, pb) = (a.join(&name), b.join(&name));
        let (ma, mb) = (
            fs::symlink_metadata(&pa).unwrap(),
            fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{}", pa.display());
        if ma.is_dir() {
            assert_trees_equal(&pa, &pb);
        } else if ma.file_type().is_symlink() {
            assert_eq!(fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
        } else {
            assert!(
                fs::read(&pa).unwrap() == fs::read(&pb).unwrap(),
                "{}",
                pa.display()
            );
        }
    }
}
