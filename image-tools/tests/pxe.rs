//! Tests of `image-tools pxe`: the artifacts come out of a verified payload (squashfs and ext4
//! images), the initramfs is the image's own followed by our archive, and a payload that does
//! not verify produces nothing.
use image_tools::cpio::CpioWriter;
use image_tools::mkusr::{build_usr_image, UsrFs, UsrTree};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_image-tools"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A scratch directory with keys, a /usr image of version 2.0 and its payload.
struct Scratch {
    dir: tempfile::TempDir,
    public: PathBuf,
    other_public: PathBuf,
    initramfs: Vec<u8>,
    payload: PathBuf,
}

const KERNEL: &[u8] = b"not really a kernel, but bytes to find again";

impl Scratch {
    fn new(fs: UsrFs) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        ok(tool(&["keygen", "--out", s(&p("k"))]));
        ok(tool(&["keygen", "--out", s(&p("other"))]));
        let usr = p("usr");
        for d in ["boot", "bin", "lib/modules/netboot"] {
            std::fs::create_dir_all(usr.join(d)).unwrap();
        }
        std::fs::write(usr.join("boot/vmlinuz"), KERNEL).unwrap();
        let mut w = CpioWriter::new(Vec::new());
        w.file("init", 0o755, b"#!/bin/sh\necho disk init\n")
            .unwrap();
        let initramfs = w.finish().unwrap();
        std::fs::write(usr.join("boot/initramfs.img"), &initramfs).unwrap();
        std::fs::write(usr.join("bin/updater"), b"static updater bytes").unwrap();
        std::fs::write(
            usr.join("lib/os-release"),
            "IMAGE_ID=ramos\nIMAGE_VERSION=2.0\n",
        )
        .unwrap();
        std::fs::write(usr.join("lib/modules/netboot/net.ko"), b"module bytes").unwrap();
        std::fs::write(usr.join("lib/modules/netboot/load-order"), "net.ko\n").unwrap();
        let tree = UsrTree::open(&usr).unwrap();
        build_usr_image(&tree, fs, &p("usr.img"), 0).unwrap();
        let payload = p("usr.payload");
        ok(tool(&[
            "pack",
            "--image",
            s(&p("usr.img")),
            "--key",
            s(&p("k.key")),
            "-o",
            s(&payload),
            "--chunk-size",
            "65536",
        ]));
        Scratch {
            public: p("k.pub"),
            other_public: p("other.pub"),
            initramfs,
            payload,
            dir,
        }
    }

    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    fn pxe(&self, payload: &Path, public: &Path, out: &str) -> Output {
        tool(&[
            "pxe",
            "--payload",
            s(payload),
            "--url",
            "http://10.0.2.100/usr.payload",
            "--pubkey",
            s(public),
            "--init",
            "/usr/lib/testos/init",
            "-o",
            s(&self.path(out)),
        ])
    }
}

/// Unpacks a newc archive with GNU cpio into `dir`.
fn unpack(archive: &[u8], dir: &Path) {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let mut child = Command::new("cpio")
        .args(["-i", "-d", "--quiet", "--no-absolute-filenames"])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(archive).unwrap();
    assert!(child.wait().unwrap().success());
}

fn artifacts_come_from_the_verified_image(fs: UsrFs) {
    let sc = Scratch::new(fs);
    let stdout = ok(sc.pxe(&sc.payload, &sc.public, "out"));
    assert!(stdout.contains("ramos 2.0"), "{stdout}");
    let out = sc.path("out");
    assert_eq!(std::fs::read(out.join("vmlinuz")).unwrap(), KERNEL);
    let initramfs = std::fs::read(out.join("initramfs.img")).unwrap();
    assert!(
        initramfs.starts_with(&sc.initramfs),
        "the image's initramfs comes first"
    );
    let ours = &initramfs[sc.initramfs.len().next_multiple_of(512)..];
    let x = sc.path("x");
    unpack(ours, &x);
    let init = std::fs::read_to_string(x.join("init")).unwrap();
    assert_eq!(init, image_tools::pxe::NETBOOT_INIT);
    assert_eq!(
        std::fs::read(x.join("bin/updater")).unwrap(),
        b"static updater bytes"
    );
    assert_eq!(
        std::fs::read_to_string(x.join("etc/updater/netboot.env")).unwrap(),
        "NETBOOT_IMAGE_ID=ramos\nNETBOOT_MIN_VERSION=2.0\nNETBOOT_INIT=/usr/lib/testos/init\n"
    );
    let keys: Vec<_> = std::fs::read_dir(x.join("etc/updater/keys.d"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        std::fs::read(&keys[0]).unwrap(),
        std::fs::read(&sc.public).unwrap()
    );
    assert_eq!(
        std::fs::read(x.join("lib/modules/netboot/net.ko")).unwrap(),
        b"module bytes"
    );
    let args =
        "console=ttyS0 updater.url=http://10.0.2.100/usr.payload updater.init=/usr/lib/testos/init";
    let ipxe = std::fs::read_to_string(out.join("boot.ipxe")).unwrap();
    assert!(ipxe.starts_with("#!ipxe\n"));
    assert!(
        ipxe.contains(&format!("kernel vmlinuz initrd=initramfs.img {args}\n")),
        "{ipxe}"
    );
    let grub = std::fs::read_to_string(out.join("grub.cfg")).unwrap();
    assert!(
        grub.contains(&format!("linux ($root)/vmlinuz {args}\n")),
        "{grub}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("pxe.json")).unwrap()).unwrap();
    assert_eq!(report["version"], "2.0");
    assert_eq!(report["kernel_args"], args);
}

#[test]
fn artifacts_come_from_a_verified_squashfs_image() {
    artifacts_come_from_the_verified_image(UsrFs::Squashfs);
}

#[test]
fn artifacts_come_from_a_verified_ext4_image() {
    artifacts_come_from_the_verified_image(UsrFs::Ext4);
}

#[test]
fn a_tampered_payload_writes_nothing() {
    let sc = Scratch::new(UsrFs::Squashfs);
    let mut bytes = std::fs::read(&sc.payload).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let bad = sc.path("bad.payload");
    std::fs::write(&bad, bytes).unwrap();
    let out = sc.pxe(&bad, &sc.public, "out");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "image-tools: verifying payload {}: payload ",
            s(&bad)
        )),
        "{err}"
    );
    assert!(!sc.path("out").exists());
}

#[test]
fn a_payload_signed_by_an_untrusted_key_writes_nothing() {
    let sc = Scratch::new(UsrFs::Squashfs);
    let out = sc.pxe(&sc.payload, &sc.other_public, "out");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(" refused: payload is signed only by unknown keys ("),
        "{err}"
    );
    assert!(!sc.path("out").exists());
}

#[test]
fn a_payload_file_needs_the_url_nodes_fetch() {
    let sc = Scratch::new(UsrFs::Squashfs);
    let out = tool(&[
        "pxe",
        "--payload",
        s(&sc.payload),
        "--pubkey",
        s(&sc.public),
        "-o",
        s(&sc.path("out")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "image-tools: --url is required: the payload URL the nodes fetch"
    );
}

#[test]
fn help_shows_examples() {
    let help = ok(tool(&["pxe", "--help"]));
    assert!(
        help.contains("\nExamples:\n  image-tools pxe --payload "),
        "{help}"
    );
    for line in help.lines().skip_while(|l| !l.starts_with("Examples")) {
        assert!(line.len() <= 80, "{line:?} is longer than 80 columns");
    }
}
