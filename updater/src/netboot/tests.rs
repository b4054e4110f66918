//! Unit tests of the RAM fetch: a good payload verifies into the output file; each refusal
//! (tampered, untrusted key, wrong IMAGE_ID, too old, stream mismatch) leaves nothing behind;
//! an unreachable server is retried a bounded number of times; stream mode picks the release
//! the rollout position allows. Served by a small HTTP server on 127.0.0.1 in the test.

use super::*;
use crate::payload::writer::{PackOptions, PayloadParts};
use crate::payload::{self, KeyId, PayloadError, Sha256Digest};
use crate::source::FileSource;
use crate::stream::writer::{encode, sign};
use crate::stream::{Release, Stream, StreamError};
use ed25519_dalek::SigningKey;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

const NOW: u64 = 1_767_225_600;

fn test_key() -> SigningKey {
    SigningKey::from_bytes(&[9u8; 32])
}

fn trusted() -> TrustedKeys {
    TrustedKeys::new([test_key().verifying_key()])
}

fn image(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9u32;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if (i / 4096) % 2 == 0 {
                (i % 251) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

fn parts(compatible: &str, version: &str) -> (Vec<u8>, PayloadParts) {
    let img = image(5 * 4096 + 17);
    let opts = PackOptions {
        compatible: compatible.into(),
        version: version.into(),
        created: NOW,
        expires: None,
        chunk_size: 4096,
        level: 3,
        threads: 1,
    };
    let p = PayloadParts::from_image(&img, &opts).unwrap();
    (img, p)
}

fn payload(compatible: &str, version: &str, key: &SigningKey) -> (Vec<u8>, Vec<u8>) {
    let (img, p) = parts(compatible, version);
    (img, p.assemble(std::slice::from_ref(key)))
}

fn options() -> NetbootOptions {
    let mut o = NetbootOptions::new(Expect {
        image_id: Some("ramos".into()),
        min_version: Some("2.0".into()),
    });
    o.now = NOW;
    o.threads = 2;
    o.retry.initial_delay = Duration::from_millis(10);
    o.retry.max_delay = Duration::from_millis(20);
    o.attempts = 3;
    o
}

/// Fetches `bytes` (as a file source) into `dir/usr.img`.
fn fetch_file(dir: &Path, bytes: &[u8]) -> Result<VerifiedImage, NetbootError> {
    let p = dir.join("payload");
    std::fs::write(&p, bytes).unwrap();
    let source = FileSource::open(&p).unwrap();
    fetch_into(
        Box::new(source),
        &trusted(),
        &options(),
        None,
        &dir.join("usr.img"),
    )
}

fn assert_nothing_left(dir: &Path) {
    let out = dir.join("usr.img");
    assert!(!out.exists(), "refused image left at {}", out.display());
    assert!(!partial_path(&out).exists(), "partial image left behind");
}

#[test]
fn good_payload_verifies_into_the_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bytes) = payload("ramos", "2.0", &test_key());
    let verified = fetch_file(dir.path(), &bytes).unwrap();
    assert_eq!(std::fs::read(dir.path().join("usr.img")).unwrap(), img);
    assert!(!partial_path(&dir.path().join("usr.img")).exists());
    assert_eq!(verified.version, "2.0");
    assert_eq!(verified.compatible, "ramos");
    assert_eq!(verified.image_size, img.len() as u64);
    assert_eq!(
        verified.signed_by,
        KeyId::of(&test_key().verifying_key()).to_string()
    );
}

#[test]
fn tampered_frame_is_refused_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut bytes) = payload("ramos", "2.0", &test_key());
    // The last frame is the 17-byte tail chunk, compressed: change its last byte.
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    let err = fetch_file(dir.path(), &bytes).unwrap_err();
    assert!(matches!(err, NetbootError::Payload { .. }), "{err:?}");
    assert_nothing_left(dir.path());
}

#[test]
fn untrusted_key_is_refused_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = payload("ramos", "2.0", &SigningKey::from_bytes(&[42u8; 32]));
    let err = fetch_file(dir.path(), &bytes).unwrap_err();
    assert!(
        matches!(
            err,
            NetbootError::Payload {
                source: PayloadError::UnknownKey { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_nothing_left(dir.path());
}

#[test]
fn wrong_image_id_is_refused_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = payload("otheros", "2.0", &test_key());
    let err = fetch_file(dir.path(), &bytes).unwrap_err();
    match err {
        NetbootError::WrongImageId {
            expected, found, ..
        } => assert_eq!((expected.as_str(), found.as_str()), ("ramos", "otheros")),
        e => panic!("{e:?}"),
    }
    assert_nothing_left(dir.path());
}

#[test]
fn version_older_than_the_artifacts_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = payload("ramos", "1.9", &test_key());
    let err = fetch_file(dir.path(), &bytes).unwrap_err();
    assert_eq!(
        netboot_line(&err),
        format!(
            "payload {} has version 1.9, older than the oldest accepted 2.0",
            dir.path().join("payload").display()
        )
    );
    assert_nothing_left(dir.path());
}

#[test]
fn an_earlier_image_at_the_output_is_removed_when_a_payload_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("usr.img"), b"stale").unwrap();
    let (_, mut bytes) = payload("ramos", "2.0", &test_key());
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fetch_file(dir.path(), &bytes).unwrap_err();
    assert_nothing_left(dir.path());
}

fn netboot_line(e: &NetbootError) -> String {
    e.to_string()
}

/// A tiny HTTP/1.0 server on 127.0.0.1: answers 503 to the first `fail_first` requests, then
/// serves `files` (whole bodies, 404 for others). Runs until the test process ends.
fn serve(files: BTreeMap<String, Vec<u8>>, fail_first: u32) -> (String, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req);
            let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let (status, body) = if n < fail_first {
                ("503 Busy", Vec::new())
            } else if let Some(b) = files.get(&path) {
                ("200 OK", b.clone())
            } else {
                ("404 Not Found", Vec::new())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    (base, count)
}

#[test]
fn a_server_that_fails_then_recovers_is_retried_and_the_image_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bytes) = payload("ramos", "2.0", &test_key());
    let (base, requests) = serve([("/p".to_string(), bytes)].into(), 5);
    let mut opts = options();
    opts.attempts = 5;
    opts.retry.attempts = 2;
    let out = dir.path().join("usr.img");
    let got = run(
        &Target::Payload(format!("{base}/p")),
        &trusted(),
        &opts,
        &out,
    )
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), img);
    assert!(got.attempts > 1, "{got:?}");
    assert!(requests.load(Ordering::SeqCst) >= 6);
}

#[test]
fn an_unreachable_server_is_given_up_after_the_attempts() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on: bind, note, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = options();
    opts.retry.attempts = 1;
    let url = format!("http://127.0.0.1:{port}/p");
    let err = run(
        &Target::Payload(url.clone()),
        &trusted(),
        &opts,
        &dir.path().join("usr.img"),
    )
    .unwrap_err();
    match &err {
        NetbootError::Unreachable {
            url: u, attempts, ..
        } => {
            assert_eq!((u.as_str(), *attempts), (url.as_str(), 3))
        }
        e => panic!("{e:?}"),
    }
    assert_nothing_left(dir.path());
}

#[test]
fn a_missing_payload_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (base, requests) = serve(BTreeMap::new(), 0);
    let err = run(
        &Target::Payload(format!("{base}/nothing")),
        &trusted(),
        &options(),
        &dir.path().join("usr.img"),
    )
    .unwrap_err();
    assert!(matches!(err, NetbootError::Fetch { .. }), "{err:?}");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

/// A stream with 2.0 open to all and 3.0 open to half the fleet.
fn stream_tree() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut s = Stream::new("stable", NOW, 86_400).unwrap();
    for (version, fraction) in [("2.0", 1.0), ("3.0", 0.5)] {
        let (img, parts) = parts("ramos", version);
        let bytes = parts.assemble(&[test_key()]);
        let prelude = payload::read_prelude(&mut bytes.as_slice(), &trusted()).unwrap();
        s.add_release(Release {
            version: version.into(),
            location: format!("../payloads/{version}"),
            size: bytes.len() as u64,
            payload_id: prelude.payload_id(),
            image_sha256: Sha256Digest::of(&img),
            rollout: None,
            barrier: false,
            dead_end: false,
        })
        .unwrap();
        s.set_rollout(version, NOW - 10, 1_000_000, fraction)
            .unwrap();
        files.insert(format!("/payloads/{version}"), bytes);
    }
    let json = encode(&s).unwrap();
    files.insert(
        "/stable/stream.json.sig".into(),
        sign(&json, &[test_key()]).unwrap(),
    );
    files.insert("/stable/stream.json".into(), json);
    files
}

fn stream_target(base: &str, wariness: f64) -> Target {
    Target::Stream {
        url: format!("{base}/stable/stream.json"),
        channel: "stable".into(),
        position: Position::from_wariness(wariness).unwrap(),
    }
}

#[test]
fn stream_mode_boots_the_newest_release_the_rollout_allows() {
    let (base, _) = serve(stream_tree(), 0);
    for (wariness, version) in [(0.1, "3.0"), (0.9, "2.0")] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("usr.img");
        let got = run(
            &stream_target(&base, wariness),
            &trusted(),
            &options(),
            &out,
        )
        .unwrap();
        assert_eq!(got.record.verified.version, version, "wariness {wariness}");
        assert_eq!(
            got.record.verified.url,
            format!("{base}/payloads/{version}")
        );
        assert_eq!(got.record.mode, record::MODE_STREAM);
        assert_eq!(
            got.record.stream_url.as_deref(),
            Some(format!("{base}/stable/stream.json").as_str())
        );
        assert!(out.is_file());
    }
}

#[test]
fn stream_mode_refuses_a_payload_that_is_not_its_stream_entry() {
    let mut files = stream_tree();
    // 2.0's location now serves a different (still signed) payload of the same version.
    let (_, mut other) = parts("ramos", "2.0");
    other.manifest.created += 1;
    files.insert("/payloads/2.0".into(), other.assemble(&[test_key()]));
    let (base, _) = serve(files, 0);
    let dir = tempfile::tempdir().unwrap();
    let err = run(
        &stream_target(&base, 0.9),
        &trusted(),
        &options(),
        &dir.path().join("usr.img"),
    )
    .unwrap_err();
    assert!(
        matches!(err, NetbootError::StreamMismatch { .. }),
        "{err:?}"
    );
    assert_nothing_left(dir.path());
}

#[test]
fn stream_mode_refuses_a_stream_signed_by_an_untrusted_key() {
    let mut files = stream_tree();
    let json = files["/stable/stream.json"].clone();
    let sig = sign(&json, &[SigningKey::from_bytes(&[42u8; 32])]).unwrap();
    files.insert("/stable/stream.json.sig".into(), sig);
    let (base, _) = serve(files, 0);
    let dir = tempfile::tempdir().unwrap();
    let err = run(
        &stream_target(&base, 0.1),
        &trusted(),
        &options(),
        &dir.path().join("usr.img"),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            NetbootError::Stream {
                source: StreamError::UnknownKey { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_nothing_left(dir.path());
}

#[test]
fn machine_id_comes_from_the_lowest_real_mac() {
    let dir = tempfile::tempdir().unwrap();
    for (ifc, mac) in [
        ("lo", "00:00:00:00:00:00"),
        ("eth1", "52:54:00:12:34:99"),
        ("eth0", "52:54:00:12:34:56"),
        ("dummy", "00:00:00:00:00:00"),
    ] {
        std::fs::create_dir(dir.path().join(ifc)).unwrap();
        std::fs::write(dir.path().join(ifc).join("address"), format!("{mac}\n")).unwrap();
    }
    assert_eq!(
        machine_id_from_mac(dir.path()).as_deref(),
        Some("mac:52:54:00:12:34:56")
    );
    assert_eq!(machine_id_from_mac(&dir.path().join("none")), None);
}

#[test]
fn record_round_trips_and_says_ram_booted() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = payload("ramos", "2.0", &test_key());
    let mut rec = NetbootRecord::new(
        record::MODE_PAYLOAD,
        None,
        fetch_file(dir.path(), &bytes).unwrap(),
    );
    rec.verified.url = "http://boot/usr.payload".into();
    rec.store(&dir.path().join(record::RECORD_PATH)).unwrap();
    let back = NetbootRecord::load(dir.path()).unwrap().unwrap();
    assert_eq!(back, rec);
    assert_eq!(
        back.status_line(),
        "RAM-booted from http://boot/usr.payload, version 2.0"
    );
}

/// The record's format did not change when the verified fetch moved into `ab-release`: one
/// flat JSON object with the documented field names (`record` module doc).
#[test]
fn record_is_one_flat_object_with_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = payload("ramos", "2.0", &test_key());
    let mut rec = NetbootRecord::new(
        record::MODE_STREAM,
        Some("http://boot/stream.json".into()),
        fetch_file(dir.path(), &bytes).unwrap(),
    );
    rec.peak_rss_kib = Some(1024);
    let json: serde_json::Value = serde_json::to_value(&rec).unwrap();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "compatible",
            "fetched_at",
            "format_version",
            "image",
            "image_sha256",
            "image_size",
            "mode",
            "payload_id",
            "peak_rss_kib",
            "retries",
            "signed_by",
            "stream_url",
            "url",
            "version",
        ]
    );
    assert_eq!(json["version"], "2.0");
    assert_eq!(json["mode"], "stream");
}
