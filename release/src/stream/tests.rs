//! Tests of the stream format (test vector, every refusal with its exact error), the rollout
//! rule and target choice, and the publisher's edits.

use super::rollout::open_fraction;
use super::writer::{encode, payload_file_name, sign, EditError};
use super::*;
use ed25519_dalek::SigningKey;
use sha2::Digest;
use std::path::PathBuf;

fn testdata() -> PathBuf {
    // The test vectors live with the payload vectors they list.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../updater/testdata")
}

/// The test signing key (RFC 8032 §7.1 test 1; its secret is public, tests only).
fn test_key() -> SigningKey {
    let seed = std::fs::read_to_string(testdata().join("vector.key")).unwrap();
    ab_payload::writer::parse_secret_key(&seed).unwrap()
}

/// A key nobody trusts.
fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

fn trusted() -> TrustedKeys {
    TrustedKeys::new([test_key().verifying_key()])
}

const T0: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const DAY: u64 = 86_400;

fn digest(n: u8) -> Sha256Digest {
    Sha256Digest([n; 32])
}

fn release(version: &str) -> Release {
    Release {
        version: version.into(),
        location: format!("../payloads/box_{version}.payload"),
        size: 1000,
        payload_id: digest(1),
        image_sha256: digest(2),
        rollout: Some(Rollout {
            start: T0,
            duration: 0,
            start_fraction: 1.0,
            paused: false,
        }),
        barrier: false,
        dead_end: false,
    }
}

fn stream(releases: &[Release]) -> Stream {
    Stream {
        format_version: 1,
        channel: "stable".into(),
        serial: 7,
        generated: T0,
        expires: T0 + 30 * DAY,
        releases: releases.to_vec(),
    }
}

/// Encodes with serde (not the writer's validating encoder), so tests can sign invalid streams.
fn raw(s: &Stream) -> Vec<u8> {
    serde_json::to_vec_pretty(s).unwrap()
}

fn signed(bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (bytes.to_vec(), sign(bytes, &[test_key()]).unwrap())
}

fn expect(now: u64) -> Expectations<'static> {
    Expectations {
        channel: "stable",
        last: None,
        now,
    }
}

// ── The test vector ──────────────────────────────────────────────────────────────────────────

fn vector() -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(testdata().join("stream.json")).unwrap(),
        std::fs::read(testdata().join("stream.json.sig")).unwrap(),
    )
}

fn vector_payload() -> ab_payload::VerifiedPrelude {
    let bytes = std::fs::read(testdata().join("vector.payload")).unwrap();
    ab_payload::verify_stream(&mut &bytes[..], &trusted()).unwrap()
}

#[test]
fn test_vector_verifies_with_the_payload_key_and_describes_the_vector_payload() {
    let (bytes, sig) = vector();
    let key = TrustedKeys::load_file(&testdata().join("vector.pub")).unwrap();
    let v = verify(&bytes, &sig, &TrustedKeys::new([key]), &expect(T0 + DAY)).unwrap();
    assert_eq!(v.signed_by.to_string(), "21fe31dfa154a261");
    let s = &v.stream;
    assert_eq!(
        (s.channel.as_str(), s.serial, s.generated, s.expires),
        ("stable", 3, 1_767_225_720, 1_769_817_720)
    );
    let p = vector_payload();
    let payload_len = std::fs::metadata(testdata().join("vector.payload"))
        .unwrap()
        .len();
    let r = &s.releases[0];
    assert_eq!(s.releases.len(), 1);
    assert_eq!(r.version, p.manifest.version);
    assert_eq!(r.size, payload_len);
    assert_eq!(r.payload_id, p.payload_id());
    assert_eq!(r.image_sha256, p.manifest.image_sha256);
    assert_eq!(
        r.location,
        format!(
            "../payloads/{}",
            payload_file_name("testbox", "1.0", &p.payload_id())
        )
    );
    assert_eq!(
        r.rollout,
        Some(Rollout {
            start: 1_767_312_000,
            duration: 2 * DAY,
            start_fraction: 0.1,
            paused: false
        })
    );
    assert_eq!(v.accepted.sha256, Sha256Digest::of(&bytes));
}

/// The publisher's edits (init, add, rollout, one serial each) reproduce the vector exactly,
/// as `testdata/stream-gen-vector.sh` does through `image-tools publish`.
#[test]
fn a_payload_is_checked_against_its_entry() {
    let (bytes, _) = vector();
    let entry = Stream::parse(&bytes).unwrap().releases[0].clone();
    let p = vector_payload();
    entry.check_payload(&p, Some(754)).unwrap();
    entry.check_payload(&p, None).unwrap();
    let mut other_version = entry.clone();
    other_version.version = "1.1".into();
    let mut other_id = entry.clone();
    other_id.payload_id = digest(3);
    let mut other_image = entry.clone();
    other_image.image_sha256 = digest(4);
    let rows = [
        (
            other_version,
            Some(754),
            "payload for release 1.1 does not match its stream entry: version is 1.0, the stream says 1.1".to_owned(),
        ),
        (
            other_id,
            Some(754),
            format!("payload for release 1.0 does not match its stream entry: payload_id is {}, the stream says {}", p.payload_id(), digest(3)),
        ),
        (
            other_image,
            Some(754),
            format!("payload for release 1.0 does not match its stream entry: image_sha256 is {}, the stream says {}", p.manifest.image_sha256, digest(4)),
        ),
        (
            entry.clone(),
            Some(755),
            "payload for release 1.0 does not match its stream entry: size is 755, the stream says 754".to_owned(),
        ),
    ];
    for (entry, size, want) in rows {
        assert_eq!(entry.check_payload(&p, size).unwrap_err().to_string(), want);
    }
}

#[test]
fn writer_reproduces_the_test_vector_byte_for_byte() {
    let p = vector_payload();
    let payload_len = std::fs::metadata(testdata().join("vector.payload"))
        .unwrap()
        .len();
    let mut s = Stream::new("stable", T0, 30 * DAY).unwrap();
    s.republish(T0 + 60).unwrap();
    s.add_release(Release {
        version: p.manifest.version.clone(),
        location: format!(
            "../payloads/{}",
            payload_file_name("testbox", "1.0", &p.payload_id())
        ),
        size: payload_len,
        payload_id: p.payload_id(),
        image_sha256: p.manifest.image_sha256,
        rollout: None,
        barrier: false,
        dead_end: false,
    })
    .unwrap();
    s.republish(T0 + 120).unwrap();
    s.set_rollout("1.0", T0 + DAY, 2 * DAY, 0.1).unwrap();
    let bytes = encode(&s).unwrap();
    let (want, want_sig) = vector();
    assert_eq!(
        String::from_utf8(bytes.clone()).unwrap(),
        String::from_utf8(want).unwrap()
    );
    assert_eq!(sign(&bytes, &[test_key()]).unwrap(), want_sig);
}

#[test]
fn docs_show_the_test_vector() {
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/stream-format.md"),
    )
    .unwrap();
    let between = |begin: &str, end: &str| -> String {
        let s = doc.split(begin).nth(1).expect(begin);
        let s = s.split(end).next().expect(end);
        let s = s
            .trim()
            .trim_start_matches("```json")
            .trim_start_matches("```text");
        s.trim_end_matches("```").trim().to_owned()
    };
    let (bytes, sig) = vector();
    assert_eq!(
        between("<!-- stream-json-begin -->", "<!-- stream-json-end -->"),
        String::from_utf8(bytes).unwrap().trim_end()
    );
    let hex_lines = between("<!-- stream-sig-begin -->", "<!-- stream-sig-end -->");
    let hex_text: String = hex_lines.split_whitespace().collect();
    assert_eq!(hex_text, hex::encode(sig));
}

// ── Verification: every refusal with its exact error ─────────────────────────────────────────

#[test]
fn a_good_stream_is_accepted_and_remembered() {
    let (bytes, sig) = signed(&raw(&stream(&[release("1.0")])));
    let v = verify(&bytes, &sig, &trusted(), &expect(T0)).unwrap();
    assert_eq!(v.stream, stream(&[release("1.0")]));
    assert_eq!(
        v.accepted,
        Accepted {
            serial: 7,
            sha256: Sha256Digest::of(&bytes)
        }
    );
}

#[test]
fn the_same_stream_again_and_a_higher_serial_are_accepted() {
    let (bytes, sig) = signed(&raw(&stream(&[])));
    let first = verify(&bytes, &sig, &trusted(), &expect(T0)).unwrap();
    let again = Expectations {
        last: Some(first.accepted),
        ..expect(T0)
    };
    verify(&bytes, &sig, &trusted(), &again).unwrap();
    let mut next = stream(&[]);
    next.serial = 8;
    let (b2, s2) = signed(&raw(&next));
    assert_eq!(
        verify(&b2, &s2, &trusted(), &again)
            .unwrap()
            .accepted
            .serial,
        8
    );
}

#[test]
fn members_in_any_order_and_unknown_members_are_accepted() {
    let text = format!(
        r#"{{"releases": [], "expires": {}, "serial": 7, "added_later": {{"x": [1]}},
            "channel": "stable", "generated": {T0}, "format_version": 1}}"#,
        T0 + 30 * DAY
    );
    let (bytes, sig) = signed(text.as_bytes());
    let v = verify(&bytes, &sig, &trusted(), &expect(T0)).unwrap();
    assert_eq!(v.stream, stream(&[]));
}

type Case = (
    &'static str,
    Vec<u8>,
    Vec<u8>,
    Expectations<'static>,
    String,
);

/// Each row: a good stream with one small change, and the exact error it must produce.
fn refusals() -> Vec<Case> {
    let good = raw(&stream(&[release("1.0"), release("1.1")]));
    let (gb, gs) = signed(&good);
    let mut rows: Vec<Case> = Vec::new();
    let mut row = |name, (b, s): (Vec<u8>, Vec<u8>), e, want: &str| {
        rows.push((name, b, s, e, want.to_owned()))
    };
    let tampered = String::from_utf8(good.clone())
        .unwrap()
        .replace("\"serial\": 7", "\"serial\": 9")
        .into_bytes();
    row(
        "one byte of stream.json changed",
        (tampered, gs.clone()),
        expect(T0),
        "bad stream signature by trusted key 21fe31dfa154a261: stream.json or its signature altered",
    );
    let mut sig = gs.clone();
    sig[20] ^= 1;
    row(
        "one byte of the signature changed",
        (gb.clone(), sig),
        expect(T0),
        "bad stream signature by trusted key 21fe31dfa154a261: stream.json or its signature altered",
    );
    row(
        "signed by an unknown key",
        (gb.clone(), sign(&good, &[other_key()]).unwrap()),
        expect(T0),
        "stream is signed only by unknown keys (b600306cfa76723f); trusted keys: 21fe31dfa154a261",
    );
    row(
        "empty signature block",
        (gb.clone(), vec![0, 0, 0, 0]),
        expect(T0),
        "stream carries no signature",
    );
    let mut long_sig = gs.clone();
    long_sig.push(0);
    row(
        "signature file one byte long",
        (gb.clone(), long_sig),
        expect(T0),
        "stream signature file is malformed",
    );
    row(
        "signature file above its maximum",
        (gb.clone(), vec![0; MAX_SIGNATURE_FILE_LEN + 1]),
        expect(T0),
        "stream.json.sig is 1157 bytes, more than the maximum of 1156",
    );
    let mut huge = good.clone();
    huge.resize(MAX_STREAM_LEN + 1, b' ');
    row(
        "stream.json above its maximum",
        signed(&huge),
        expect(T0),
        "stream.json is 262145 bytes, more than the maximum of 262144",
    );
    row(
        "wrong channel",
        (gb.clone(), gs.clone()),
        Expectations {
            channel: "beta",
            ..expect(T0)
        },
        "stream is for channel \"stable\", this box follows \"beta\"",
    );
    row(
        "older serial (replay)",
        (gb.clone(), gs.clone()),
        Expectations {
            last: Some(Accepted {
                serial: 8,
                sha256: digest(9),
            }),
            ..expect(T0)
        },
        "stream serial 7 is lower than the last accepted serial 8: replayed or rolled back",
    );
    row(
        "same serial, other bytes",
        (gb.clone(), gs.clone()),
        Expectations {
            last: Some(Accepted {
                serial: 7,
                sha256: digest(9),
            }),
            ..expect(T0)
        },
        &format!("stream serial 7 was accepted before with SHA-256 {}, now it hashes to {}: a serial must not be reused", digest(9), Sha256Digest::of(&gb)),
    );
    row(
        "at its expiry time (freeze)",
        (gb.clone(), gs.clone()),
        expect(T0 + 30 * DAY),
        "stream expired at 1769817600 (now 1769817600): the publisher has not re-signed it, or it is being withheld",
    );
    let edit = |f: &dyn Fn(&mut Stream)| {
        let mut s = stream(&[release("1.0"), release("1.1")]);
        f(&mut s);
        signed(&raw(&s))
    };
    row(
        "format_version 2",
        edit(&|s| s.format_version = 2),
        expect(T0),
        "unsupported stream format version 2 (this updater reads 1)",
    );
    row(
        "channel with a slash",
        edit(&|s| s.channel = "st/able".into()),
        Expectations {
            channel: "st/able",
            ..expect(T0)
        },
        "stream field channel is \"st/able\": must be 1 to 64 bytes of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
    );
    row(
        "serial 0",
        edit(&|s| s.serial = 0),
        expect(T0),
        "stream field serial is 0: must be at least 1",
    );
    row(
        "expires not after generated",
        edit(&|s| s.expires = s.generated),
        expect(T0 - 1),
        "stream field expires is 1767225600: must be later than generated",
    );
    row(
        "releases out of order",
        edit(&|s| s.releases.reverse()),
        expect(T0),
        "releases[1] version \"1.0\" does not sort after \"1.1\"",
    );
    row(
        "the same version twice",
        edit(&|s| s.releases[1].version = "1.00".into()),
        expect(T0),
        "releases[1] version \"1.00\" does not sort after \"1.0\"",
    );
    row(
        "absolute location",
        edit(&|s| s.releases[1].location = "/payloads/p".into()),
        expect(T0),
        "stream field releases[1].location is \"/payloads/p\": must be a relative path of 1 to 1024 bytes of A-Z, a-z, 0-9, '._~-/%+', without empty segments",
    );
    row(
        "location with a scheme",
        edit(&|s| s.releases[0].location = "http://evil/p".into()),
        expect(T0),
        "stream field releases[0].location is \"http://evil/p\": must be a relative path of 1 to 1024 bytes of A-Z, a-z, 0-9, '._~-/%+', without empty segments",
    );
    row(
        "empty version",
        edit(&|s| s.releases[0].version = String::new()),
        expect(T0),
        "stream field releases[0].version is \"\": must be 1 to 128 bytes without control characters",
    );
    row(
        "size 0",
        edit(&|s| s.releases[0].size = 0),
        expect(T0),
        "stream field releases[0].size is 0: must be at least 1",
    );
    row(
        "start_fraction above 1",
        edit(&|s| s.releases[0].rollout.as_mut().unwrap().start_fraction = 1.5),
        expect(T0),
        "stream field releases[0].rollout.start_fraction is 1.5: must be within 0..=1",
    );
    row(
        "more releases than the maximum",
        edit(&|s| {
            s.releases = (0..=MAX_RELEASES)
                .map(|i| release(&i.to_string()))
                .collect()
        }),
        expect(T0),
        "stream lists 257 releases, more than the maximum of 256",
    );
    let text = String::from_utf8(good.clone()).unwrap();
    let json_edit = |from: &str, to: &str| signed(text.replacen(from, to, 1).as_bytes());
    row(
        "upper-case hex payload id",
        json_edit(&digest(1).to_string(), &"AB".repeat(32)),
        expect(T0),
        "stream.json is malformed: \"ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB\" is not 64 lower-case hex characters at line 12 column 86",
    );
    row(
        "a field given twice",
        json_edit("\"serial\": 7,", "\"serial\": 7,\n  \"serial\": 9,"),
        expect(T0),
        "stream.json is malformed: duplicate field `serial` at line 5 column 10",
    );
    row(
        "a missing field",
        json_edit("\"expires\": 1769817600,", ""),
        expect(T0),
        "stream.json is malformed: missing field `expires` at line 39 column 1",
    );
    row(
        "leading whitespace",
        signed(format!(" {text}").as_bytes()),
        expect(T0),
        "stream.json is malformed: the first byte must be '{'",
    );
    row(
        "a JSON array",
        signed(b"[]"),
        expect(T0),
        "stream.json is malformed: the first byte must be '{'",
    );
    rows
}

#[test]
fn refuses_each_bad_stream_with_its_exact_error() {
    let (gb, gs) = signed(&raw(&stream(&[release("1.0"), release("1.1")])));
    verify(&gb, &gs, &trusted(), &expect(T0)).expect("the good stream of every row verifies");
    let mut failures = Vec::new();
    for (name, bytes, sig, e, want) in refusals() {
        match verify(&bytes, &sig, &trusted(), &e) {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(err) if err.to_string() != want => {
                failures.push(format!("{name}:\n   got  {err}\n   want {want}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn channel_names_are_lower_case_words_that_name_a_directory() {
    for good in ["stable", "beta-2", "lts_2026.1", "0day", &"a".repeat(64)] {
        check_channel(good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in ["", "Stable", "-x", ".hidden", "a/b", "a b", &"a".repeat(65)] {
        assert!(check_channel(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn read_bounded_refuses_one_byte_over_the_maximum() {
    let data = [b'x'; 11];
    assert_eq!(
        read_bounded(&mut &data[..10], STREAM_FILE, 10)
            .unwrap()
            .len(),
        10
    );
    let err = read_bounded(&mut &data[..], STREAM_FILE, 10).unwrap_err();
    assert_eq!(
        err.to_string(),
        "stream.json is 11 bytes, more than the maximum of 10"
    );
}

#[test]
fn locations_resolve_against_the_stream_url() {
    let rows = [
        (
            "https://cdn.example/os/stable/stream.json",
            "../payloads/p",
            "https://cdn.example/os/payloads/p",
        ),
        (
            "https://cdn.example/os/stable/stream.json?x=1#f",
            "p",
            "https://cdn.example/os/stable/p",
        ),
        (
            "http://127.0.0.1:8080/stream.json",
            "../../p",
            "http://127.0.0.1:8080/p",
        ),
        (
            "file:///media/pay/stable/stream.json",
            "../payloads/./p",
            "file:///media/pay/payloads/p",
        ),
        (
            "/srv/tree/beta/stream.json",
            "../payloads/p",
            "/srv/tree/payloads/p",
        ),
        ("tree/beta/stream.json", "../payloads/p", "tree/payloads/p"),
    ];
    for (url, loc, want) in rows {
        assert_eq!(resolve_location(url, loc), want, "{url} + {loc}");
    }
}

// ── The rollout rule ────────────────────────────────────────────────────────────────────────

/// 1,000 machine ids shaped like /etc/machine-id (32 hex digits), derived from their index.
fn machine_ids() -> Vec<String> {
    (0u32..1000)
        .map(|i| hex::encode(&Sha256Digest::of(&i.to_le_bytes()).0[..16]))
        .collect()
}

#[test]
fn rollout_reaches_the_scheduled_fraction_of_1000_boxes_within_3_percent() {
    let ids = machine_ids();
    let mut r = release("2.0");
    r.rollout = Some(Rollout {
        start: T0,
        duration: 4 * DAY,
        start_fraction: 0.1,
        paused: false,
    });
    let s = stream(&[r]);
    let rows = [
        (T0 - 1, 0.0),
        (T0, 0.1),
        (T0 + DAY, 0.325),
        (T0 + 2 * DAY, 0.55),
        (T0 + 3 * DAY, 0.775),
        (T0 + 4 * DAY, 1.0),
        (T0 + 9 * DAY, 1.0),
    ];
    for (now, want) in rows {
        let open = ids
            .iter()
            .filter(|id| {
                choose_target(&s, "1.0", |_| false, Position::from_machine_id(id), now)
                    .target()
                    .is_some()
            })
            .count();
        let got = open as f64 / ids.len() as f64;
        assert!(
            (got - want).abs() <= 0.03,
            "at {now}: {got} of boxes open, schedule says {want}"
        );
        assert_eq!(
            open_fraction(s.releases[0].rollout.as_ref().unwrap(), now),
            want
        );
    }
}

#[test]
fn position_depends_only_on_the_machine_id() {
    let id = "5c1e8f0d3a2b4c6d8e9f0a1b2c3d4e5f";
    let p = Position::from_machine_id(id);
    assert_eq!(p, Position::from_machine_id(&format!(" {id}\n")));
    assert_ne!(
        p,
        Position::from_machine_id("5c1e8f0d3a2b4c6d8e9f0a1b2c3d4e5e")
    );
    // Pinned: changing the hash input would reshuffle every fleet's rollout order.
    let d = sha2::Sha256::digest(b"updater rollout position\n5c1e8f0d3a2b4c6d8e9f0a1b2c3d4e5f");
    let top = u64::from_be_bytes(d[..8].try_into().unwrap()) >> 11;
    assert_eq!(p.value(), top as f64 / 9_007_199_254_740_992.0);
    assert!((0.0..1.0).contains(&p.value()));
}

fn one_rollout(start_fraction: f64) -> Stream {
    let mut r = release("2.0");
    r.rollout = Some(Rollout {
        start: T0,
        duration: 10 * DAY,
        start_fraction,
        paused: false,
    });
    stream(&[r])
}

#[test]
fn wariness_zero_goes_at_the_start_and_one_only_when_open_to_all() {
    let s = one_rollout(0.0);
    let eager = Position::from_wariness(0.0).unwrap();
    let wary = Position::from_wariness(1.0).unwrap();
    assert!(choose_target(&s, "1.0", |_| false, eager, T0)
        .target()
        .is_none());
    assert!(choose_target(&s, "1.0", |_| false, eager, T0 + 1)
        .target()
        .is_some());
    assert!(choose_target(&s, "1.0", |_| false, wary, T0 + 10 * DAY - 1)
        .target()
        .is_none());
    assert!(choose_target(&s, "1.0", |_| false, wary, T0 + 10 * DAY)
        .target()
        .is_some());
}

#[test]
fn wariness_outside_0_to_1_is_refused() {
    for w in [-0.1, 1.01, f64::NAN] {
        assert!(Position::from_wariness(w).is_err(), "{w}");
    }
}

// ── Choosing a target ───────────────────────────────────────────────────────────────────────

fn at(w: f64) -> Position {
    Position::from_wariness(w).unwrap()
}

fn skips(d: &Decision) -> Vec<(String, Option<Skip>)> {
    d.candidates
        .iter()
        .map(|c| (c.version.clone(), c.skip.clone()))
        .collect()
}

fn v(s: &str) -> String {
    s.to_owned()
}

#[test]
fn the_newest_open_release_is_the_target_and_every_other_says_why() {
    let mut old = release("0.9");
    old.rollout = None;
    let mut late = release("1.3");
    late.rollout = Some(Rollout {
        start: T0,
        duration: DAY,
        start_fraction: 0.0,
        paused: false,
    });
    let mut future = release("1.4");
    future.rollout.as_mut().unwrap().start = T0 + DAY;
    let s = stream(&[
        old,
        release("1.0"),
        release("1.1"),
        release("1.2"),
        late,
        future,
    ]);
    let d = choose_target(&s, "1.0", |v| v == "1.2", at(0.5), T0 + 3600);
    assert_eq!(d.target().map(|r| r.version.as_str()), Some("1.1"));
    let fraction = open_fraction(s.releases[4].rollout.as_ref().unwrap(), T0 + 3600);
    assert_eq!(
        skips(&d),
        [
            (v("0.9"), Some(Skip::NotNewer)),
            (v("1.0"), Some(Skip::NotNewer)),
            (v("1.1"), None),
            (v("1.2"), Some(Skip::Failed)),
            (
                v("1.3"),
                Some(Skip::NotOpenForPosition {
                    position: at(0.5),
                    fraction
                })
            ),
            (v("1.4"), Some(Skip::NotStarted { start: T0 + DAY })),
        ]
    );
}

#[test]
fn the_decision_explains_itself_in_text_and_json() {
    let mut paused = release("1.2");
    paused.rollout.as_mut().unwrap().paused = true;
    let s = stream(&[release("1.0"), release("1.1"), paused]);
    let d = choose_target(&s, "1.0", |_| false, at(0.25), T0);
    assert_eq!(
        d.to_string(),
        "booted 1.0, rollout position 0.2500\n  1.0: not newer than the booted version\n  \
         1.1: target\n  1.2: rollout paused\ntarget: 1.1"
    );
    let j = serde_json::to_value(&d).unwrap();
    assert_eq!(j["outcome"], "update");
    assert_eq!(j["release"]["version"], "1.1");
    assert_eq!(j["position"], 0.25);
    assert_eq!(j["candidates"][2]["skip"]["reason"], "paused");
    assert_eq!(j["candidates"][1]["skip"], serde_json::Value::Null);
    // The agent keeps its last decision in its state: it reads back unchanged.
    assert_eq!(serde_json::from_value::<Decision>(j).unwrap(), d);
}

#[test]
fn a_box_on_the_newest_release_is_up_to_date_and_one_behind_an_unopened_release_waits() {
    let s = stream(&[release("1.0"), release("1.1")]);
    let d = choose_target(&s, "1.1", |_| false, at(0.5), T0);
    assert_eq!(d.outcome, Outcome::UpToDate);
    assert_eq!(
        d.to_string().lines().last(),
        Some("no target: no release newer than 1.1")
    );
    let d = choose_target(&s, "1.0", |_| false, at(0.5), T0 - 1);
    assert_eq!(d.outcome, Outcome::Waiting);
}

#[test]
fn never_downgrades_after_switching_to_a_slower_channel() {
    // A box on beta's 1.3 switched to stable, which lists up to 1.2: it waits for stable.
    let s = stream(&[release("1.1"), release("1.2")]);
    let d = choose_target(&s, "1.3", |_| false, at(0.0), T0 + DAY);
    assert_eq!(d.outcome, Outcome::UpToDate);
    let s = stream(&[release("1.1"), release("1.2"), release("1.4")]);
    let d = choose_target(&s, "1.3", |_| false, at(0.0), T0 + DAY);
    assert_eq!(d.target().map(|r| r.version.as_str()), Some("1.4"));
}

#[test]
fn a_failed_version_is_never_chosen_and_a_newer_one_is() {
    let s = stream(&[release("1.0"), release("1.1")]);
    let d = choose_target(&s, "1.0", |v| v == "1.1", at(0.0), T0);
    assert_eq!(d.outcome, Outcome::Waiting);
    let s = stream(&[release("1.0"), release("1.1"), release("1.2")]);
    let d = choose_target(&s, "1.0", |v| v == "1.1", at(0.0), T0);
    assert_eq!(d.target().map(|r| r.version.as_str()), Some("1.2"));
}

fn edited(f: impl Fn(&mut Stream) -> Result<(), EditError>) -> Stream {
    let mut s = stream(&[release("1.0"), release("1.1"), release("1.2")]);
    f(&mut s).unwrap();
    s
}

#[test]
fn pause_holds_a_release_back_and_resume_offers_it_again() {
    let paused = edited(|s| s.set_paused("1.2", true));
    let d = choose_target(&paused, "1.0", |_| false, at(0.0), T0);
    assert_eq!(d.target().map(|r| r.version.as_str()), Some("1.1"));
    assert_eq!(d.candidates[2].skip, Some(Skip::Paused));
    let resumed = edited(|s| {
        s.set_paused("1.2", true)?;
        s.set_paused("1.2", false)
    });
    let d = choose_target(&resumed, "1.0", |_| false, at(0.0), T0);
    assert_eq!(d.target().map(|r| r.version.as_str()), Some("1.2"));
    assert_eq!(
        d.candidates[1].skip,
        Some(Skip::Superseded { by: v("1.2") })
    );
    assert_eq!(d.candidates[2].skip, None);
}

#[test]
fn a_pulled_release_is_never_chosen() {
    let pulled = edited(|s| s.pull("1.2"));
    let d = choose_target(&pulled, "1.0", |_| false, at(0.0), T0);
    assert_eq!(d.target().map(|r| r.version.as_str()), Some("1.1"));
    assert_eq!(d.candidates[2].skip, Some(Skip::DeadEnd));
}

#[test]
fn a_box_on_a_pulled_release_moves_on_before_its_rollout_turn() {
    let s = edited(|s| {
        s.pull("1.1")?;
        s.set_rollout("1.2", T0, 10 * DAY, 0.0)
    });
    let late = at(0.9);
    let on_good = choose_target(&s, "1.0", |_| false, late, T0 + DAY);
    assert_eq!(on_good.outcome, Outcome::Waiting);
    let on_pulled = choose_target(&s, "1.1", |_| false, late, T0 + DAY);
    assert!(on_pulled.booted_dead_end);
    assert_eq!(on_pulled.target().map(|r| r.version.as_str()), Some("1.2"));
    // …but not to a release whose rollout has not started or is paused.
    let paused = edited(|s| {
        s.pull("1.1")?;
        s.set_paused("1.2", true)
    });
    assert_eq!(
        choose_target(&paused, "1.1", |_| false, late, T0 + DAY).outcome,
        Outcome::Waiting
    );
}

#[test]
fn a_box_below_a_barrier_goes_to_the_barrier_first() {
    let s = edited(|s| s.mark_barrier("1.1"));
    let d = choose_target(&s, "1.0", |_| false, at(0.0), T0);
    assert_eq!(d.target().map(|r| r.version.as_str()), Some("1.1"));
    assert_eq!(
        d.candidates[2].skip,
        Some(Skip::BehindBarrier { barrier: v("1.1") })
    );
    let d = choose_target(&s, "1.1", |_| false, at(0.0), T0);
    assert_eq!(d.target().map(|r| r.version.as_str()), Some("1.2"));
}

#[test]
fn a_box_waits_at_a_barrier_it_cannot_take() {
    let s = edited(|s| {
        s.mark_barrier("1.1")?;
        s.set_paused("1.1", true)
    });
    let d = choose_target(&s, "1.0", |_| false, at(0.0), T0);
    assert_eq!(d.outcome, Outcome::Waiting);
    let s = edited(|s| s.mark_barrier("1.1"));
    let d = choose_target(&s, "1.0", |v| v == "1.1", at(0.0), T0);
    assert_eq!(d.outcome, Outcome::Waiting);
    assert_eq!(
        d.candidates[2].skip,
        Some(Skip::BehindBarrier { barrier: v("1.1") })
    );
}

#[test]
fn pulling_a_barrier_releases_the_boxes_below_it() {
    let s = edited(|s| {
        s.mark_barrier("1.1")?;
        s.pull("1.1")
    });
    let d = choose_target(&s, "1.0", |_| false, at(0.0), T0);
    assert_eq!(d.target().map(|r| r.version.as_str()), Some("1.2"));
}

#[test]
fn the_lowest_barrier_above_the_box_holds() {
    let mut s = stream(&[
        release("1.0"),
        release("1.1"),
        release("1.2"),
        release("1.3"),
    ]);
    s.mark_barrier("1.1").unwrap();
    s.mark_barrier("1.2").unwrap();
    let d = choose_target(&s, "1.0", |_| false, at(0.0), T0);
    assert_eq!(d.target().map(|r| r.version.as_str()), Some("1.1"));
    assert_eq!(
        d.candidates[2].skip,
        Some(Skip::BehindBarrier { barrier: v("1.1") })
    );
}

// ── Publisher edits ─────────────────────────────────────────────────────────────────────────

#[test]
fn republish_bumps_the_serial_and_keeps_the_validity_period() {
    let mut s = Stream::new("beta", T0, 7 * DAY).unwrap();
    assert_eq!((s.serial, s.generated, s.expires), (1, T0, T0 + 7 * DAY));
    s.republish(T0 + 100).unwrap();
    assert_eq!(
        (s.serial, s.generated, s.expires),
        (2, T0 + 100, T0 + 100 + 7 * DAY)
    );
}

#[test]
fn add_keeps_version_order_and_refuses_a_version_listed_twice() {
    let mut s = stream(&[]);
    for ver in ["1.10", "1.2", "1.9"] {
        s.add_release(release(ver)).unwrap();
    }
    let order: Vec<_> = s.releases.iter().map(|r| r.version.as_str()).collect();
    assert_eq!(order, ["1.2", "1.9", "1.10"]);
    let mut again = release("1.9");
    again.payload_id = digest(7);
    assert_eq!(
        s.add_release(again).unwrap_err().to_string(),
        format!(
            "channel stable lists 1.9 already, with payload id {}; the new payload's id is {}",
            digest(1),
            digest(7)
        )
    );
}

#[test]
fn edits_refuse_what_they_cannot_do() {
    let mut s = stream(&[release("1.0")]);
    s.releases[0].rollout = None;
    let rows: [(&str, Result<(), EditError>); 4] = [
        ("channel stable lists no release 2.0", s.clone().pull("2.0")),
        (
            "release 1.0 has no rollout to pause; set one with rollout first",
            s.clone().set_paused("1.0", true),
        ),
        (
            "release 1.0 is pulled (dead end) and cannot be a barrier",
            s.clone().pull("1.0").and_then(|()| {
                let mut t = s.clone();
                t.pull("1.0")?;
                t.mark_barrier("1.0")
            }),
        ),
        (
            "stream field releases[0].rollout.start_fraction is 2.0: must be within 0..=1",
            {
                let mut t = s.clone();
                t.set_rollout("1.0", T0, 0, 2.0)
                    .and_then(|()| encode(&t).map(|_| ()))
            },
        ),
    ];
    for (want, got) in rows {
        assert_eq!(got.unwrap_err().to_string(), want);
    }
}

#[test]
fn encoding_is_pretty_json_with_a_final_newline_that_parses_back() {
    let s = stream(&[release("1.0")]);
    let bytes = encode(&s).unwrap();
    assert!(bytes.starts_with(b"{\n  \"format_version\": 1,\n  \"channel\": \"stable\",\n"));
    assert!(bytes.ends_with(b"}\n"));
    assert_eq!(Stream::parse(&bytes).unwrap(), s);
}

#[test]
fn payload_file_names_are_safe_and_carry_the_id() {
    assert_eq!(
        payload_file_name("box/x86", "1.2^post 1", &digest(0xab)),
        "box-x86_1.2-post-1_abababababab.payload"
    );
}
