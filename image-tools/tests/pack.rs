//! Tests of `image-tools keygen`, `pack`, `verify` and `inspect`, on real squashfs and ext4
//! images made with the standard tools.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory with a /usr tree `usr/` carrying `lib/os-release`.
pub(crate) struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub(crate) fn new(os_release: &str) -> Scratch {
        let s = Scratch {
            dir: tempfile::tempdir().unwrap(),
        };
        let usr = s.path("usr");
        std::fs::create_dir_all(usr.join("lib")).unwrap();
        std::fs::create_dir_all(usr.join("bin")).unwrap();
        std::fs::write(usr.join("lib/os-release"), os_release).unwrap();
        let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(usr.join("bin/tool"), blob).unwrap();
        s
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn squashfs(&self) -> PathBuf {
        let img = self.path("usr.squashfs");
        let out = Command::new("mksquashfs")
            .arg(self.path("usr"))
            .arg(&img)
            .args([
                "-noI",
                "-noD",
                "-noF",
                "-noX",
                "-noappend",
                "-no-progress",
                "-quiet",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        img
    }

    fn ext4(&self) -> PathBuf {
        let img = self.path("usr.ext4");
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(self.path("usr"))
            .arg(&img)
            .arg("4M")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        img
    }

    pub(crate) fn keygen(&self, name: &str) -> (PathBuf, PathBuf) {
        let prefix = self.path(name);
        ok(tool(&["keygen", "--out", s(&prefix)]));
        (
            self.path(&format!("{name}.key")),
            self.path(&format!("{name}.pub")),
        )
    }
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub(crate) fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_image-tools"))
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1767225600")
        .output()
        .unwrap()
}

pub(crate) fn ok(out: Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts failure with exit status 1 and a one-line error containing `want`.
pub(crate) fn fails(out: Output, want: &str) {
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(want), "{err:?} should contain {want:?}");
}

fn inspect_json(payload: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(tool(&["inspect", s(payload), "--json"]))).unwrap()
}

#[test]
fn packs_a_squashfs_image_with_its_own_os_release_and_verifies_it() {
    let sc = Scratch::new("NAME=Test\nIMAGE_ID=box-x86\nIMAGE_VERSION=\"2026.1.5\"\n");
    let img = sc.squashfs();
    let (key, public) = sc.keygen("k");
    let payload = sc.path("p");
    ok(tool(&[
        "pack",
        "--image",
        s(&img),
        "--key",
        s(&key),
        "-o",
        s(&payload),
        "--chunk-size",
        "65536",
        "--expires",
        "2030-06-01T12:00:00Z",
    ]));
    let out = ok(tool(&["verify", "--pubkey", s(&public), s(&payload)]));
    assert!(out.contains("good signature"), "{out}");
    let v = inspect_json(&payload);
    assert_eq!(v["compatible"], "box-x86");
    assert_eq!(v["version"], "2026.1.5");
    assert_eq!(v["created"], 1_767_225_600);
    assert_eq!(v["expires"], 1_906_545_600);
    assert_eq!(v["image_size"], std::fs::metadata(&img).unwrap().len());
    assert_eq!(
        v["payload_size"],
        std::fs::metadata(&payload).unwrap().len()
    );
}

#[test]
fn packs_an_ext4_image_with_its_own_os_release() {
    let sc = Scratch::new("IMAGE_ID=box\nIMAGE_VERSION=7\n");
    let img = sc.ext4();
    let (key, public) = sc.keygen("k");
    let payload = sc.path("p");
    ok(tool(&[
        "pack",
        "--image",
        s(&img),
        "--key",
        s(&key),
        "-o",
        s(&payload),
    ]));
    ok(tool(&["verify", "--pubkey", s(&public), s(&payload)]));
    let v = inspect_json(&payload);
    assert_eq!(
        (v["compatible"].as_str(), v["version"].as_str()),
        (Some("box"), Some("7"))
    );
}

#[test]
fn refuses_an_image_id_that_contradicts_the_image() {
    let sc = Scratch::new("IMAGE_ID=box\nIMAGE_VERSION=7\n");
    let img = sc.squashfs();
    let (key, _) = sc.keygen("k");
    let payload = sc.path("p");
    fails(
        tool(&[
            "pack",
            "--image",
            s(&img),
            "--key",
            s(&key),
            "-o",
            s(&payload),
            "--image-id",
            "other",
        ]),
        "IMAGE_ID \"other\" given on the command line contradicts \"box\" in",
    );
    assert!(!payload.exists());
}

#[test]
fn requires_image_id_and_version_for_unknown_filesystems() {
    let sc = Scratch::new("");
    let img = sc.path("raw.img");
    std::fs::write(&img, vec![5u8; 100_000]).unwrap();
    let (key, public) = sc.keygen("k");
    let payload = sc.path("p");
    fails(
        tool(&[
            "pack",
            "--image",
            s(&img),
            "--key",
            s(&key),
            "-o",
            s(&payload),
        ]),
        "has no IMAGE_ID in lib/os-release; pass --image-id",
    );
    ok(tool(&[
        "pack",
        "--image",
        s(&img),
        "--key",
        s(&key),
        "-o",
        s(&payload),
        "--image-id",
        "raw",
        "--image-version",
        "1",
    ]));
    ok(tool(&["verify", "--pubkey", s(&public), s(&payload)]));
}

#[test]
fn verify_refuses_a_payload_signed_by_another_key() {
    let sc = Scratch::new("IMAGE_ID=box\nIMAGE_VERSION=7\n");
    let img = sc.squashfs();
    let (key, _) = sc.keygen("k");
    let (_, other_pub) = sc.keygen("other");
    let payload = sc.path("p");
    ok(tool(&[
        "pack",
        "--image",
        s(&img),
        "--key",
        s(&key),
        "-o",
        s(&payload),
    ]));
    fails(
        tool(&["verify", "--pubkey", s(&other_pub), s(&payload)]),
        "payload is signed only by unknown keys",
    );
}

#[test]
fn verify_refuses_a_payload_with_one_flipped_frame_byte() {
    let sc = Scratch::new("IMAGE_ID=box\nIMAGE_VERSION=7\n");
    let img = sc.squashfs();
    let (key, public) = sc.keygen("k");
    let payload = sc.path("p");
    ok(tool(&[
        "pack",
        "--image",
        s(&img),
        "--key",
        s(&key),
        "-o",
        s(&payload),
    ]));
    let mut bytes = std::fs::read(&payload).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 1;
    std::fs::write(&payload, bytes).unwrap();
    fails(
        tool(&["verify", "--pubkey", s(&public), s(&payload)]),
        "chunk ",
    );
}

#[test]
fn keygen_never_overwrites_a_key() {
    let sc = Scratch::new("");
    let (key, _) = sc.keygen("k");
    let before = std::fs::read(&key).unwrap();
    fails(
        tool(&["keygen", "--out", s(&sc.path("k"))]),
        "refusing to overwrite",
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn pack_refuses_a_malformed_expiry() {
    let sc = Scratch::new("IMAGE_ID=box\nIMAGE_VERSION=7\n");
    let img = sc.squashfs();
    let (key, _) = sc.keygen("k");
    fails(
        tool(&[
            "pack",
            "--image",
            s(&img),
            "--key",
            s(&key),
            "-o",
            s(&sc.path("p")),
            "--expires",
            "tomorrow",
        ]),
        "time \"tomorrow\" is neither YYYY-MM-DDTHH:MM:SSZ nor @UNIX-SECONDS",
    );
}
