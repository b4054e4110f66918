//! Tests of `image-tools patch` on real squashfs images: an old and a new /usr that differ in
//! one library rewritten with small edits, the new one packed as a format 2 payload.
use crate::pack::{fails, ok, s, tool, Scratch};
use std::path::{Path, PathBuf};
use std::process::Output;

/// The same 400 KB library in both trees (noise: the payload cannot compress it), with one
/// byte in 37 of its middle 120 KB changed in `new`.
fn library(new: bool) -> Vec<u8> {
    let mut x = 7u32;
    let mut lib: Vec<u8> = (0..400_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    if new {
        for b in lib[140_000..260_000].iter_mut().step_by(37) {
            *b ^= 0x81;
        }
    }
    lib
}

/// A squashfs image of version `version`, in its own scratch directory.
fn image(version: &str, new: bool) -> (Scratch, PathBuf) {
    let sc = Scratch::new(&format!("IMAGE_ID=box\nIMAGE_VERSION={version}\n"));
    std::fs::write(sc.path("usr/lib/libthing.so"), library(new)).unwrap();
    let img = sc.squashfs();
    (sc, img)
}

/// Version 1.0 and 2.0 images, a key, and the 2.0 image packed as a format 2 payload.
struct Fixture {
    _old_dir: Scratch,
    sc: Scratch,
    old: PathBuf,
    new: PathBuf,
    key: PathBuf,
    payload: PathBuf,
}

fn fixture() -> Fixture {
    let (_old_dir, old) = image("1.0", false);
    let (sc, new) = image("2.0", true);
    let (key, _) = sc.keygen("k");
    let payload = sc.path("v2.payload");
    ok(tool(&[
        "pack",
        "--image",
        s(&new),
        "--key",
        s(&key),
        "-o",
        s(&payload),
        "--format",
        "2",
    ]));
    Fixture {
        _old_dir,
        sc,
        old,
        new,
        key,
        payload,
    }
}

/// `image-tools patch --from FROM --payload … --image IMAGE --key KEY EXTRA…`.
fn patch(f: &Fixture, from: &Path, image: &Path, key: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "patch",
        "--from",
        s(from),
        "--payload",
        s(&f.payload),
        "--image",
        s(image),
        "--key",
        s(key),
    ];
    args.extend_from_slice(extra);
    tool(&args)
}

#[test]
fn a_patch_is_named_for_the_old_image_version_and_replaces_the_changed_chunks_for_less() {
    let f = fixture();
    let out = ok(patch(&f, &f.old, &f.new, &f.key, &["--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let written = f.sc.path("v2.payload.from-1.0.patch");
    assert_eq!(v["patch"], s(&written));
    assert_eq!(v["base_version"], "1.0");
    assert_eq!(v["patch_size"], std::fs::metadata(&written).unwrap().len());
    let n = |k: &str| v[k].as_u64().unwrap();
    assert!(n("covered_chunks") >= 1, "{v}");
    assert!(
        n("record_frame_bytes") * 4 < n("replaced_frame_bytes"),
        "{v}"
    );
    // The same again: the patch file exists, and is not overwritten.
    fails(patch(&f, &f.old, &f.new, &f.key, &[]), "creating patch");
}

#[test]
fn a_new_image_that_is_not_the_payloads_is_refused() {
    let f = fixture();
    fails(
        patch(&f, &f.old, &f.old, &f.key, &[]),
        "checking the target image:",
    );
    assert!(!f.sc.path("v2.payload.from-1.0.patch").exists());
}

#[test]
fn a_payload_signed_by_another_key_is_refused() {
    let f = fixture();
    let (other, _) = f.sc.keygen("other");
    fails(
        patch(&f, &f.old, &f.new, &other, &[]),
        "signed only by unknown keys",
    );
}
