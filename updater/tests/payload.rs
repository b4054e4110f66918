//! The payload format: the committed test vector, the documented layout, and every kind of
//! damage refused with its exact error.
use crate::util::{self, testdata};
use updater::payload::writer::{PackOptions, PayloadParts};
use updater::payload::{self, TrustedKeys};

fn trusted() -> TrustedKeys {
    TrustedKeys::new([util::test_key().verifying_key()])
}

#[test]
fn test_vector_verifies_with_its_committed_public_key() {
    let key = TrustedKeys::load_file(&testdata().join("vector.pub")).unwrap();
    let bytes = std::fs::read(testdata().join("vector.payload")).unwrap();
    let prelude = payload::verify_stream(&mut &bytes[..], &TrustedKeys::new([key])).unwrap();
    let m = &prelude.manifest;
    assert_eq!(m.compatible, "testbox");
    assert_eq!(m.version, "1.0");
    assert_eq!(m.created, 1_767_225_600);
    assert_eq!(m.expires, Some(2_082_758_400));
    assert_eq!(
        (m.image_size, m.chunk_size, m.chunk_count),
        (10000, 4096, 3)
    );
    let image = std::fs::read(testdata().join("vector.img")).unwrap();
    assert_eq!(m.image_sha256, payload::Sha256Digest::of(&image));
    assert_eq!(prelude.signed_by.to_string(), "21fe31dfa154a261");
}

#[test]
fn packing_the_test_vector_image_reproduces_the_payload_byte_for_byte() {
    let image = std::fs::read(testdata().join("vector.img")).unwrap();
    let parts = PayloadParts::from_image(
        &image,
        &PackOptions {
            compatible: "testbox".into(),
            version: "1.0".into(),
            created: 1_767_225_600,
            expires: Some(2_082_758_400),
            chunk_size: 4096,
            level: 3,
            threads: 1,
        },
    )
    .unwrap();
    let want = std::fs::read(testdata().join("vector.payload")).unwrap();
    assert!(parts.assemble(&[util::test_key()]) == want);
}

#[test]
fn streaming_pack_equals_in_memory_assembly() {
    let image = util::image_bytes(50_000, 3);
    let opts = util::opts("testbox", "3");
    let mut out = std::io::Cursor::new(Vec::new());
    let summary = payload::writer::pack(
        &mut &image[..],
        image.len() as u64,
        &mut out,
        &[util::test_key()],
        &PackOptions {
            threads: 2,
            ..opts.clone()
        },
    )
    .unwrap();
    let parts = PayloadParts::from_image(&image, &opts).unwrap();
    assert_eq!(out.get_ref().len() as u64, summary.payload_size);
    assert!(*out.get_ref() == parts.assemble(&[util::test_key()]));
}

#[test]
fn docs_hex_dump_matches_the_test_vector() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/payload-format.md"),
    )
    .unwrap();
    let block = doc
        .split("<!-- vector-hex-begin -->")
        .nth(1)
        .and_then(|s| s.split("<!-- vector-hex-end -->").next())
        .expect("hex block in docs/payload-format.md");
    let mut bytes = Vec::new();
    for line in block.lines().filter(|l| l.contains(':')) {
        let (offset, hexes) = line.split_once(':').unwrap();
        assert_eq!(
            usize::from_str_radix(offset.trim(), 16).unwrap(),
            bytes.len()
        );
        for h in hexes.split_whitespace() {
            bytes.push(u8::from_str_radix(h, 16).unwrap());
        }
    }
    let vector = std::fs::read(testdata().join("vector.payload")).unwrap();
    assert_eq!(bytes.len(), 182);
    assert_eq!(bytes[..], vector[..182]);
}

#[test]
fn accepts_the_good_payload_the_reject_cases_derive_from() {
    let good = util::good_parts().assemble(&[util::test_key()]);
    let prelude = payload::verify_stream(&mut &good[..], &trusted()).unwrap();
    assert_eq!(prelude.manifest.chunk_count, 5);
}

#[test]
fn rejects_each_bad_payload_with_its_exact_error() {
    for case in util::bad_payloads() {
        let err = payload::verify_stream(&mut &case.bytes[..], &trusted())
            .map(|_| ())
            .expect_err(case.name);
        assert_eq!(err.to_string(), case.error, "{}", case.name);
    }
}

#[test]
fn accepts_a_payload_with_one_trusted_and_one_unknown_signature() {
    let good = util::good_parts().assemble(&[util::other_key(), util::test_key()]);
    let prelude = payload::verify_stream(&mut &good[..], &trusted()).unwrap();
    assert_eq!(
        prelude.signed_by,
        payload::KeyId::of(&util::test_key().verifying_key())
    );
}

// ---- trust policy through `updater install` (issue 14, defect 12) ---------------------------

/// A second trusted key, installed by the site admin in /etc/updater/keys.d.
fn site_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
}

fn key_id(key: &ed25519_dalek::SigningKey) -> String {
    payload::KeyId::of(&key.verifying_key()).to_string()
}

/// Runs `updater install PAYLOAD` and expects a refusal with exactly `error`, and the disk
/// unchanged.
fn assert_install_refused(dev: &util::Device, payload_bytes: &[u8], error: &str) {
    let disk_before = std::fs::read(dev.disk()).unwrap();
    let p = dev.payload("p", payload_bytes);
    let out = dev.updater(&["install", p.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "updater: installing {} into {}: {error}\n",
            p.display(),
            dev.disk().display()
        )
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        std::fs::read(dev.disk()).unwrap() == disk_before,
        "disk changed"
    );
}

#[test]
fn install_refuses_a_payload_signed_by_a_vendor_key_revoked_in_etc() {
    let dev = util::Device::new();
    let test_id = key_id(&util::test_key());
    dev.write_root_file(
        "etc/updater/keys.d/site.pub",
        &util::encode_public_key(&site_key().verifying_key()),
    );
    dev.write_root_file(
        "etc/updater/config.d/50-revoke.toml",
        &format!("[keys]\nrevoked = [\"{test_id}\"]\n"),
    );
    assert_install_refused(
        &dev,
        &util::good_parts().assemble(&[util::test_key()]),
        &format!(
            "payload is signed only by revoked or unknown keys ({test_id}); revoked by keys.revoked: {test_id}"
        ),
    );
    let both = util::good_parts().assemble(&[util::test_key(), site_key()]);
    let out = dev.updater(&["install", dev.payload("p", &both).to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn install_requires_keys_signatures_required_distinct_trusted_signers() {
    let dev = util::Device::new();
    dev.write_root_file(
        "etc/updater/keys.d/site.pub",
        &util::encode_public_key(&site_key().verifying_key()),
    );
    dev.write_root_file(
        "etc/updater/config.d/50-two.toml",
        "[keys]\nsignatures_required = 2\n",
    );
    assert_install_refused(
        &dev,
        &util::good_parts().assemble(&[util::test_key(), util::test_key()]),
        &format!(
            "payload is signed by 1 trusted key(s) ({}), keys.signatures_required is 2",
            key_id(&util::test_key())
        ),
    );
    let both = util::good_parts().assemble(&[site_key(), util::test_key()]);
    let out = dev.updater(&["install", dev.payload("p", &both).to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn install_trusts_no_key_while_the_keys_configuration_is_invalid() {
    let dev = util::Device::new();
    dev.write_root_file(
        "etc/updater/config.d/50-typo.toml",
        "[keys]\nrevoked = [\"21fe31dfa154a26\"]\n",
    );
    assert_install_refused(
        &dev,
        &util::good_parts().assemble(&[util::test_key()]),
        &format!(
            "trusting no key while the [keys] configuration is invalid: {}: keys.revoked entry \"21fe31dfa154a26\" is not a key id (16 hex digits)",
            dev.root().join("etc/updater/config.d/50-typo.toml").display()
        ),
    );
}

/// Issue 14, defect 12: a FIFO in keys.d made `updater install` block forever.
#[test]
fn install_refuses_a_fifo_in_keys_d_without_blocking() {
    let dev = util::Device::new();
    let fifo = dev.root().join("etc/updater/keys.d/evil.pub");
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let p = dev.payload("p", &util::good_parts().assemble(&[util::test_key()]));
    let mut child = dev
        .command("A")
        .args(["install", p.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("updater install blocked on a FIFO in keys.d");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        stderr,
        format!(
            "updater: installing {} into {}: key file {} is a FIFO, not a regular file\n",
            p.display(),
            dev.disk().display(),
            fifo.display()
        )
    );
    assert_eq!(status.code(), Some(1));
}
