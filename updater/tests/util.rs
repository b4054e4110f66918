//! Test harness: the test signing key, images, payloads, and disk-image files with the
//! standard layout, each in a temporary directory removed on drop.
#![allow(dead_code)]
use bootctl::layout::{self, LayoutSizes};
use bootctl::storage::FileDisk;
use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};
pub use updater::payload::writer::{encode_public_key, PackOptions, PayloadParts};

/// The test vector's directory.
pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// The test signing key (RFC 8032 §7.1 test 1; its secret is public, tests only).
pub fn test_key() -> SigningKey {
    let seed =
        hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap();
    SigningKey::from_bytes(&seed.try_into().unwrap())
}

/// A second key nobody trusts.
pub fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

/// `len` bytes of an image: a compressible run and a pseudo-random (incompressible) run per
/// 4 KiB, so some frames are raw blocks whose bytes can be altered one at a time.
pub fn image_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|i| {
            if (i / 4096) % 2 == 0 {
                (i % 97) as u8
            } else {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
        })
        .collect()
}

/// Options for a test payload: chunk size 4096, level 3, no expiry.
pub fn opts(compatible: &str, version: &str) -> PackOptions {
    PackOptions {
        compatible: compatible.into(),
        version: version.into(),
        created: 1_767_225_600,
        expires: None,
        chunk_size: 4096,
        level: 3,
        threads: 1,
    }
}

/// Parts of a payload of `image` for board `testbox`, version `version`.
pub fn parts(image: &[u8], version: &str) -> PayloadParts {
    PayloadParts::from_image(image, &opts("testbox", version)).unwrap()
}

/// A scratch directory with a disk image, a device root (`root/`) trusting the test key and
/// booted from slot A with `testbox` version 1.0, and room for payloads.
pub struct Device {
    pub dir: tempfile::TempDir,
}

/// USR partition size of test disks.
pub const USR_BYTES: u64 = 1 << 20;

impl Device {
    pub fn new() -> Device {
        let d = Device {
            dir: tempfile::tempdir().unwrap(),
        };
        let sizes = LayoutSizes {
            usr: USR_BYTES,
            ..LayoutSizes::small()
        };
        let bytes = layout::min_disk_bytes(&sizes, 512);
        let f = std::fs::File::create(d.disk()).unwrap();
        f.set_len(bytes).unwrap();
        drop(f);
        let mut disk = FileDisk::open(&d.disk(), true).unwrap();
        let gpt = layout::standard(bytes, 512, &sizes).unwrap();
        bootctl::gpt::write_new(&mut disk, &gpt).unwrap();
        drop(disk);
        // Slot A holds the "booted" image: recognisable bytes that must never change.
        let a = d.slot(&bootctl::SlotId::A);
        let booted: Vec<u8> = image_bytes(USR_BYTES as usize, 99);
        write_at(&d.disk(), a.byte_offset(), &booted);
        d.write_root_file(
            "usr/lib/os-release",
            "IMAGE_ID=testbox\nIMAGE_VERSION=1.0\n",
        );
        d.write_root_file(
            "usr/lib/updater/keys.d/test.pub",
            &encode_public_key(&test_key().verifying_key()),
        );
        d
    }

    /// Writes `bytes` as a payload file and returns its path.
    pub fn payload(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// The device as the library sees it.
    pub fn spec(&self) -> updater::install::DeviceSpec {
        updater::install::DeviceSpec {
            disk: self.disk(),
            booted: bootctl::SlotId::A,
            root: self.root(),
        }
    }

    pub fn disk(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write_root_file(&self, rel: &str, text: &str) {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn slot(&self, id: &bootctl::SlotId) -> bootctl::Slot {
        bootctl::SlotDisk::open(&self.disk(), false, None)
            .unwrap()
            .slot(id)
            .unwrap()
    }

    /// The bytes of a slot's partition.
    pub fn slot_bytes(&self, id: &bootctl::SlotId) -> Vec<u8> {
        let s = self.slot(id);
        let all = std::fs::read(self.disk()).unwrap();
        all[s.byte_offset() as usize..(s.byte_offset() + s.byte_len()) as usize].to_vec()
    }

    /// `updater --disk DISK --root ROOT --booted BOOTED`, ready for more arguments.
    pub fn command(&self, booted: &str) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_updater"));
        c.arg("--disk")
            .arg(self.disk())
            .arg("--root")
            .arg(self.root())
            .args(["--booted", booted]);
        c
    }

    /// Runs `updater --disk DISK --root ROOT --booted A ARGS…`.
    pub fn updater(&self, args: &[&str]) -> std::process::Output {
        self.command("A").args(args).output().unwrap()
    }
}

pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// The image behind [`good_parts`]: four chunks (the second incompressible) and 100 bytes.
pub fn good_image() -> Vec<u8> {
    image_bytes(4 * 4096 + 100, 1)
}

/// A good payload, version 2.0 for `testbox`, signed by the test key.
pub fn good_parts() -> PayloadParts {
    parts(&good_image(), "2.0")
}

/// Re-signs the manifest of an assembled payload in place (after a test altered it).
pub fn resign(payload: &mut [u8], key: &SigningKey) {
    use ed25519_dalek::Signer;
    let mlen = u32::from_le_bytes(payload[16..20].try_into().unwrap()) as usize;
    let sig = key.sign(&payload[64..64 + mlen]).to_bytes();
    payload[64 + mlen + 4 + 8..64 + mlen + 4 + 72].copy_from_slice(&sig);
}

/// Offsets of the regions of an assembled payload.
pub struct Layout {
    pub manifest: usize,
    pub signatures: usize,
    pub table: usize,
    pub frames: usize,
}

pub fn layout(payload: &[u8]) -> Layout {
    let mlen = u32::from_le_bytes(payload[16..20].try_into().unwrap()) as usize;
    let slen = u32::from_le_bytes(payload[20..24].try_into().unwrap()) as usize;
    let count = u32::from_le_bytes(payload[64 + 68..64 + 72].try_into().unwrap()) as usize;
    Layout {
        manifest: 64,
        signatures: 64 + mlen,
        table: 64 + mlen + slen,
        frames: 64 + mlen + slen + count * 56,
    }
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// A payload that must be refused, and the exact error it must be refused with.
pub struct BadCase {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub error: String,
    /// Whether the refusal comes before the first byte is written to the passive slot.
    pub before_write: bool,
}

fn flip(mut b: Vec<u8>, at: usize) -> Vec<u8> {
    b[at] ^= 0x10;
    b
}

/// Every kind of bad payload that is bad in itself (not relative to a device), each a one-byte
/// (or one-field) change of [`good_parts`] where the kind allows.
pub fn bad_payloads() -> Vec<BadCase> {
    let key = test_key();
    let parts = good_parts();
    let good = parts.assemble(std::slice::from_ref(&key));
    let l = layout(&good);
    let image = good_image();
    let len = good.len();
    let key_id = updater::payload::KeyId::of(&key.verifying_key()).to_string();
    let entry = |i: usize| {
        let e = &good[l.table + 56 * i..l.table + 56 * (i + 1)];
        (
            u64::from_le_bytes(e[8..16].try_into().unwrap()) as usize,
            u32::from_le_bytes(e[20..24].try_into().unwrap()) as usize,
        )
    };
    let mut cases = Vec::new();
    let mut case = |name, bytes, error: String, before_write| {
        cases.push(BadCase {
            name,
            bytes,
            error,
            before_write,
        })
    };

    case(
        "empty file",
        vec![],
        "payload truncated: header needs bytes 0..64, the payload has 0".into(),
        true,
    );
    let random = image_bytes(8192, 7)[4096..].to_vec();
    case(
        "random bytes",
        random.clone(),
        format!(
            "not a payload: magic is {:?}, expected \"UPDPAYLD\"",
            String::from_utf8_lossy(&random[..8])
        ),
        true,
    );
    let bad = flip(good.clone(), 17);
    let crc = crc32fast::hash(&bad[..60]);
    case(
        "flipped bit in the header",
        bad,
        format!(
            "header checksum mismatch: stored {:08x}, computed {crc:08x}",
            u32::from_le_bytes(good[60..64].try_into().unwrap())
        ),
        true,
    );
    case(
        "flipped bit in the manifest",
        flip(good.clone(), l.signatures - 1),
        format!("bad signature by trusted key {key_id}: manifest or signature altered"),
        true,
    );
    case(
        "flipped bit in the signature",
        flip(good.clone(), l.signatures + 4 + 8 + 20),
        format!("bad signature by trusted key {key_id}: manifest or signature altered"),
        true,
    );
    let bad = flip(good.clone(), l.signatures + 4);
    let bad_id = hex::encode(&bad[l.signatures + 4..l.signatures + 12]);
    case(
        "flipped bit in the signature's key id (unknown key)",
        bad,
        format!("payload is signed only by unknown keys ({bad_id}); trusted keys: {key_id}"),
        true,
    );
    let bad = flip(good.clone(), l.table + 56 + 30);
    case(
        "flipped bit in the chunk table",
        bad.clone(),
        format!(
            "chunk table SHA-256 mismatch: manifest says {}, table hashes to {}",
            sha(&good[l.table..l.frames]),
            sha(&bad[l.table..l.frames])
        ),
        true,
    );
    // Frame 1 is incompressible, so zstd stored it raw and its last byte is image byte 8191.
    let (f1, f1_len) = entry(1);
    assert!(f1_len > 4096, "frame 1 is a raw block");
    let mut chunk1 = image[4096..8192].to_vec();
    chunk1[4095] ^= 0x10;
    case(
        "flipped bit in a frame",
        flip(good.clone(), f1 + f1_len - 1),
        format!(
            "chunk 1 at image offset 4096: SHA-256 mismatch: expected {}, found {}",
            sha(&image[4096..8192]),
            sha(&chunk1)
        ),
        false,
    );
    let (f2, _) = entry(2);
    for (name, at, region, start, end) in [
        ("truncated in the header", 10, "header", 0, 64),
        (
            "truncated in the manifest",
            l.manifest + 20,
            "manifest",
            l.manifest,
            l.signatures,
        ),
        (
            "truncated in the signatures",
            l.signatures + 5,
            "signature block",
            l.signatures,
            l.table,
        ),
        (
            "truncated in the chunk table",
            l.table + 60,
            "chunk table",
            l.table,
            l.frames,
        ),
        ("truncated in a frame", f2 + 3, "frame", f2, f2 + entry(2).1),
        ("truncated by one byte", len - 1, "frame", entry(4).0, len),
    ] {
        case(
            name,
            good[..at].to_vec(),
            format!("payload truncated: {region} needs bytes {start}..{end}, the payload has {at}"),
            region != "frame",
        );
    }
    let mut bad = good.clone();
    bad.push(0);
    case(
        "trailing byte",
        bad,
        format!("trailing data after the last frame at payload offset {len}"),
        false,
    );
    case(
        "signed by an unknown key",
        parts.assemble(&[other_key()]),
        format!(
            "payload is signed only by unknown keys ({}); trusted keys: {key_id}",
            updater::payload::KeyId::of(&other_key().verifying_key())
        ),
        true,
    );
    let mut bad = good.clone();
    bad[l.manifest + 68..l.manifest + 72].copy_from_slice(&u32::MAX.to_le_bytes());
    resign(&mut bad, &key);
    case(
        "absurd chunk count",
        bad,
        "chunk count 4294967295 exceeds the maximum of 65536".into(),
        true,
    );
    // A frame that asks for a 2 TiB window: no single segment, window descriptor 31<<3,
    // 4-byte content size 4096, then one raw last block of 4096 bytes.
    let mut hostile = vec![0x28, 0xb5, 0x2f, 0xfd, 0x80, 31 << 3];
    hostile.extend_from_slice(&4096u32.to_le_bytes());
    let block_header = (4096u32 << 3) | 1; // last block, raw
    hostile.extend_from_slice(&block_header.to_le_bytes()[..3]);
    hostile.extend_from_slice(&image[..4096]);
    let mut p = parts.clone();
    p.frames[0] = hostile;
    let bad = p.assemble(std::slice::from_ref(&key));
    case(
        "frame asking for a huge zstd window",
        bad.clone(),
        format!(
            "chunk 0 at payload offset {}: zstd window of 2199023255552 bytes exceeds the maximum of 8388608",
            layout(&bad).frames
        ),
        false,
    );
    for (name, data, found) in [
        (
            "frame decompressing to more than its chunk",
            [&image[..4096], &[1u8; 10][..]].concat(),
            4106,
        ),
        (
            "frame decompressing to less than its chunk",
            image[..4000].to_vec(),
            4000,
        ),
    ] {
        let mut p = parts.clone();
        p.frames[0] = zstd::bulk::compress(&data, 3).unwrap();
        case(
            name,
            p.assemble(std::slice::from_ref(&key)),
            format!(
                "chunk 0 at image offset 0: frame decompresses to {found} bytes, chunk is 4096"
            ),
            false,
        );
    }
    cases
}

// Running the binary as a device (shared by cycle.rs, hardening.rs and agent.rs).

pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// Runs `updater` as the device booted from `booted` (its os-release says `version`).
pub fn on(dev: &Device, booted: &str, version: &str, args: &[&str]) -> std::process::Output {
    dev.write_root_file(
        "usr/lib/os-release",
        &format!("IMAGE_ID=testbox\nIMAGE_VERSION={version}\n"),
    );
    dev.command(booted).args(args).output().unwrap()
}

/// What GRUB does at the reboot: apply the rule with its tries decrement.
pub fn grub_boots(dev: &Device) -> String {
    let sel = bootctl::SlotDisk::open(&dev.disk(), true, None)
        .unwrap()
        .select(true)
        .unwrap()
        .unwrap();
    sel.slot.label.trim_start_matches("USR-").to_string()
}

pub fn check(dev: &Device, name: &str, body: &str) {
    dev.write_root_file(
        &format!("etc/updater/health.d/{name}"),
        &format!("#!/bin/sh\n{body}\n"),
    );
    std::fs::set_permissions(
        dev.root().join("etc/updater/health.d").join(name),
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
}

pub fn payload(dev: &Device, version: &str) -> String {
    let p = dev.payload(
        version,
        &parts(&good_image(), version).assemble(&[test_key()]),
    );
    p.to_str().unwrap().to_string()
}
