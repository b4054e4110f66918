//! Tests of `image-tools publish`: a tree built from real payloads, read back with the updater's
//! own stream reader after every edit; refusals; determinism; the stream test vector.
use ab_payload::{self as payload, TrustedKeys};
use ab_release::stream::{self, Accepted, Expectations, Stream, VerifiedStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const T0: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const DAY: u64 = 86_400;

fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_image-tools"))
        .args(args)
        .env("SOURCE_DATE_EPOCH", T0.to_string())
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts failure with exit status 1 and a one-line error containing `want`.
fn fails(out: Output, want: &str) {
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(want), "{err:?} should contain {want:?}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn at(t: u64) -> String {
    format!("@{t}")
}

/// A scratch directory with a key pair and a tree under `tree/`.
struct Publisher {
    dir: tempfile::TempDir,
    key: PathBuf,
    public: PathBuf,
}

impl Publisher {
    fn new() -> Publisher {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("publisher");
        ok(tool(&["keygen", "--out", s(&prefix)]));
        Publisher {
            key: dir.path().join("publisher.key"),
            public: dir.path().join("publisher.pub"),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn root(&self) -> PathBuf {
        self.path("tree")
    }

    /// Packs a small raw image into a payload for `compatible` `version`, signed by `key`.
    fn payload_for(&self, compatible: &str, version: &str, key: &Path) -> PathBuf {
        let img = self.path(&format!("{compatible}-{version}.img"));
        let seed = version
            .bytes()
            .fold(7u32, |a, b| a.wrapping_mul(31) ^ u32::from(b));
        let bytes: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(seed) % 251) as u8)
            .collect();
        std::fs::write(&img, bytes).unwrap();
        let out = self.path(&format!("{compatible}-{version}-{}.payload", key_name(key)));
        ok(tool(&[
            "pack",
            "--image",
            s(&img),
            "--key",
            s(key),
            "-o",
            s(&out),
            "--chunk-size",
            "4096",
            "--level",
            "1",
            "--image-id",
            compatible,
            "--image-version",
            version,
        ]));
        out
    }

    fn payload(&self, version: &str) -> PathBuf {
        self.payload_for("box", version, &self.key)
    }

    /// Runs `publish VERB ARGS… --root tree --channel CHANNEL --key KEY --now @NOW`.
    fn edit(&self, channel: &str, now: u64, args: &[&str]) -> Output {
        let root = self.root();
        let now = at(now);
        let mut all = vec!["publish"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--root",
            s(&root),
            "--channel",
            channel,
            "--key",
            s(&self.key),
            "--now",
            &now,
        ]);
        tool(&all)
    }

    fn init(&self, channel: &str, now: u64) -> String {
        let root = self.root();
        ok(tool(&[
            "publish",
            "init",
            s(&root),
            "--channel",
            channel,
            "--key",
            s(&self.key),
            "--expires-in",
            "30d",
            "--now",
            &at(now),
        ]))
    }

    fn trusted(&self) -> TrustedKeys {
        TrustedKeys::new([TrustedKeys::load_file(&self.public).unwrap()])
    }

    /// Reads the channel's stream back with the updater's reader.
    fn read(&self, channel: &str, last: Option<Accepted>, now: u64) -> VerifiedStream {
        let dir = self.root().join(channel);
        let bytes = std::fs::read(dir.join("stream.json")).unwrap();
        let sig = std::fs::read(dir.join("stream.json.sig")).unwrap();
        let expect = Expectations { channel, last, now };
        stream::verify(&bytes, &sig, &self.trusted(), &expect).unwrap()
    }

    fn show_json(&self, channel: &str, now: u64) -> serde_json::Value {
        let root = self.root();
        let out = ok(tool(&[
            "publish",
            "show",
            "--json",
            "--root",
            s(&root),
            "--channel",
            channel,
            "--pubkey",
            s(&self.public),
            "--now",
            &at(now),
        ]));
        serde_json::from_str(&out).unwrap()
    }
}

fn key_name(key: &Path) -> &str {
    key.file_stem().unwrap().to_str().unwrap()
}

fn payload_id(path: &Path, keys: &TrustedKeys) -> String {
    let bytes = std::fs::read(path).unwrap();
    payload::verify_stream(&mut &bytes[..], keys)
        .unwrap()
        .payload_id()
        .to_string()
}

#[test]
fn init_add_rollout_and_show_json_describe_the_tree() {
    let p = Publisher::new();
    let (p10, p11) = (p.payload("1.0"), p.payload("1.1"));
    p.init("stable", T0);
    ok(p.edit("stable", T0 + 60, &["add", s(&p10)]));
    ok(p.edit("stable", T0 + 120, &["add", s(&p11)]));
    ok(p.edit(
        "stable",
        T0 + 180,
        &[
            "rollout",
            "1.1",
            "--start",
            "2026-01-02T00:00:00Z",
            "--duration",
            "2d",
            "--start-fraction",
            "0.1",
        ],
    ));
    let j = p.show_json("stable", T0 + 2 * DAY);
    assert_eq!(j["channel"], "stable");
    assert_eq!(j["serial"], 4);
    assert_eq!(j["generated"], T0 + 180);
    assert_eq!(j["expires"], T0 + 180 + 30 * DAY);
    assert_eq!(j["signature_checked"], true);
    let releases = j["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 2);
    for (r, file) in releases.iter().zip([&p10, &p11]) {
        let location = r["location"].as_str().unwrap();
        let copied = p.root().join("stable").join(location);
        assert_eq!(
            std::fs::read(&copied).unwrap(),
            std::fs::read(file).unwrap()
        );
        assert_eq!(r["size"], std::fs::metadata(file).unwrap().len());
        assert_eq!(r["payload_id"], payload_id(file, &p.trusted()));
    }
    assert_eq!(releases[0]["version"], "1.0");
    assert_eq!(releases[0]["rollout"], serde_json::Value::Null);
    assert_eq!(releases[0]["open_fraction"], 0.0);
    assert_eq!(releases[1]["version"], "1.1");
    assert_eq!(releases[1]["rollout"]["start"], T0 + DAY);
    assert_eq!(releases[1]["rollout"]["duration"], 2 * DAY);
    assert_eq!(releases[1]["open_fraction"], 0.55);
}

#[test]
fn every_edit_bumps_the_serial_and_verifies_with_the_updater_reader() {
    let p = Publisher::new();
    let (p10, p11) = (p.payload("1.0"), p.payload("1.1"));
    p.init("stable", T0);
    let mut last = p.read("stable", None, T0);
    assert_eq!(last.stream.serial, 1);
    let edits: [&[&str]; 9] = [
        &["add", s(&p10)],
        &["add", s(&p11)],
        &["rollout", "1.0", "--start", "now", "--duration", "0"],
        &["rollout", "1.1", "--start", "now", "--duration", "1d"],
        &["pause", "1.1"],
        &["resume", "1.1"],
        &["barrier", "1.0"],
        &["pull", "1.1"],
        &["sign"],
    ];
    for (i, args) in edits.iter().enumerate() {
        let now = T0 + 100 * (i as u64 + 1);
        ok(p.edit("stable", now, args));
        let next = p.read("stable", Some(last.accepted), now);
        assert_eq!(next.stream.serial, last.stream.serial + 1, "{args:?}");
        assert_eq!(next.stream.generated, now, "{args:?}");
        assert_eq!(next.stream.expires, now + 30 * DAY, "{args:?}");
        last = next;
    }
    let r = &last.stream.releases;
    assert!(r[0].barrier && !r[0].dead_end);
    assert!(r[1].dead_end && !r[1].rollout.unwrap().paused);
    assert_eq!(r[1].rollout.unwrap().start, T0 + 400);
}

#[test]
fn sign_can_change_the_validity_period() {
    let p = Publisher::new();
    p.init("stable", T0);
    ok(p.edit("stable", T0 + 10, &["sign", "--expires-in", "2h"]));
    let v = p.read("stable", None, T0 + 10);
    assert_eq!(
        (v.stream.generated, v.stream.expires),
        (T0 + 10, T0 + 10 + 7200)
    );
}

#[test]
fn the_same_edits_at_the_same_times_give_the_same_bytes() {
    let trees: Vec<Publisher> = (0..2).map(|_| Publisher::new()).collect();
    // Both publishers use the first one's key and payload.
    let key = trees[0].key.clone();
    let payload = trees[0].payload("1.0");
    let mut outputs = Vec::new();
    for p in &trees {
        let root = p.root();
        let k = s(&key);
        ok(tool(&[
            "publish",
            "init",
            s(&root),
            "--channel",
            "beta",
            "--key",
            k,
            "--now",
            "@1767225600",
        ]));
        for args in [
            vec!["add", s(&payload)],
            vec![
                "rollout",
                "1.0",
                "--start",
                "@1767232800",
                "--duration",
                "6h",
            ],
        ] {
            let mut all = vec!["publish"];
            all.extend(args);
            all.extend(["--root", s(&root), "--channel", "beta", "--key", k]);
            ok(tool(&all)); // now: SOURCE_DATE_EPOCH
        }
        let dir = root.join("beta");
        let names: Vec<_> = std::fs::read_dir(root.join("payloads"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        outputs.push((
            std::fs::read(dir.join("stream.json")).unwrap(),
            std::fs::read(dir.join("stream.json.sig")).unwrap(),
            names,
        ));
    }
    assert!(outputs[0] == outputs[1]);
}

#[test]
fn two_channels_share_one_copy_of_a_payload() {
    let p = Publisher::new();
    let p10 = p.payload("1.0");
    p.init("stable", T0);
    p.init("beta", T0);
    ok(p.edit("beta", T0 + 1, &["add", s(&p10)]));
    ok(p.edit("stable", T0 + 2, &["add", s(&p10)]));
    let beta = p.read("beta", None, T0 + 2);
    let stable = p.read("stable", None, T0 + 2);
    assert_eq!(beta.stream.releases, stable.stream.releases);
    let files: Vec<_> = std::fs::read_dir(p.root().join("payloads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        stable.stream.releases[0].location,
        format!("../payloads/{}", files[0])
    );
}

#[test]
fn add_refuses_a_version_listed_with_another_payload() {
    let p = Publisher::new();
    p.init("stable", T0);
    let listed = p.payload("1.0");
    ok(p.edit("stable", T0 + 1, &["add", s(&listed)]));
    // Same version, other content: pack a different image under the same version.
    let img = p.path("other.img");
    std::fs::write(&img, vec![9u8; 9000]).unwrap();
    let changed = p.path("changed-1.0.payload");
    ok(tool(&[
        "pack",
        "--image",
        s(&img),
        "--key",
        s(&p.key),
        "-o",
        s(&changed),
        "--chunk-size",
        "4096",
        "--image-id",
        "box",
        "--image-version",
        "1.0",
    ]));
    let before = std::fs::read(p.root().join("stable/stream.json")).unwrap();
    fails(
        p.edit("stable", T0 + 2, &["add", s(&changed)]),
        &format!(
            "channel stable lists 1.0 already, with payload id {}; the new payload's id is {}",
            payload_id(&listed, &p.trusted()),
            payload_id(&changed, &p.trusted())
        ),
    );
    assert_eq!(
        std::fs::read(p.root().join("stable/stream.json")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_dir(p.root().join("payloads"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn add_refuses_a_payload_for_another_compatible() {
    let p = Publisher::new();
    p.init("stable", T0);
    ok(p.edit("stable", T0 + 1, &["add", s(&p.payload("1.0"))]));
    let arm = p.payload_for("box-arm", "1.1", &p.key);
    fails(
        p.edit("stable", T0 + 2, &["add", s(&arm)]),
        "is for \"box-arm\", channel stable lists payloads for \"box\" (1.0)",
    );
}

#[test]
fn add_refuses_a_payload_the_publisher_key_did_not_sign() {
    let p = Publisher::new();
    ok(tool(&["keygen", "--out", s(&p.path("stranger"))]));
    let foreign = p.payload_for("box", "1.0", &p.path("stranger.key"));
    p.init("stable", T0);
    fails(
        p.edit("stable", T0 + 1, &["add", s(&foreign)]),
        "payload is signed only by unknown keys",
    );
}

#[test]
fn add_refuses_a_damaged_copy_already_in_the_tree() {
    let p = Publisher::new();
    let p10 = p.payload("1.0");
    p.init("stable", T0);
    p.init("beta", T0);
    ok(p.edit("stable", T0 + 1, &["add", s(&p10)]));
    let copy = std::fs::read_dir(p.root().join("payloads"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&copy).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&copy, bytes).unwrap();
    fails(
        p.edit("beta", T0 + 2, &["add", s(&p10)]),
        &format!("verifying payload {}", copy.display()),
    );
}

#[test]
fn edits_refuse_to_re_sign_a_tampered_stream() {
    let p = Publisher::new();
    p.init("stable", T0);
    ok(p.edit("stable", T0 + 1, &["add", s(&p.payload("1.0"))]));
    let path = p.root().join("stable/stream.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"dead_end\": false", "\"dead_end\": true"),
    )
    .unwrap();
    fails(
        p.edit("stable", T0 + 2, &["barrier", "1.0"]),
        "before editing it (pass --trust OLD.pub when rotating keys): bad stream signature",
    );
}

#[test]
fn edits_refuse_what_the_stream_cannot_do() {
    let p = Publisher::new();
    p.init("stable", T0);
    ok(p.edit("stable", T0 + 1, &["add", s(&p.payload("1.0"))]));
    let rows: [(&[&str], &str); 5] = [
        (&["pause", "2.0"], "channel stable lists no release 2.0"),
        (
            &["pause", "1.0"],
            "release 1.0 has no rollout to pause; set one with rollout first",
        ),
        (
            &[
                "rollout",
                "1.0",
                "--start",
                "now",
                "--duration",
                "1d",
                "--start-fraction",
                "1.5",
            ],
            "stream field releases[0].rollout.start_fraction is 1.5: must be within 0..=1",
        ),
        (
            &["rollout", "1.0", "--start", "tomorrow", "--duration", "1d"],
            "time \"tomorrow\" is neither YYYY-MM-DDTHH:MM:SSZ nor @UNIX-SECONDS",
        ),
        (
            &["sign", "--expires-in", "0"],
            "--expires-in must be at least 1s",
        ),
    ];
    for (args, want) in rows {
        fails(p.edit("stable", T0 + 2, args), want);
    }
    assert_eq!(p.read("stable", None, T0 + 2).stream.serial, 2);
    fails(
        tool(&[
            "publish",
            "init",
            s(&p.root()),
            "--channel",
            "stable",
            "--key",
            s(&p.key),
        ]),
        "refusing to overwrite",
    );
    fails(
        p.edit("Stable", T0 + 2, &["sign"]),
        "stream field channel is \"Stable\"",
    );
}

#[test]
fn show_prints_the_rollout_state_in_text() {
    let p = Publisher::new();
    p.init("stable", T0);
    ok(p.edit("stable", T0 + 1, &["add", s(&p.payload("1.0"))]));
    ok(p.edit(
        "stable",
        T0 + 2,
        &[
            "rollout",
            "1.0",
            "--start",
            "@1767312000",
            "--duration",
            "2d",
            "--start-fraction",
            "0.1",
        ],
    ));
    let root = p.root();
    let out = ok(tool(&[
        "publish",
        "show",
        "--root",
        s(&root),
        "--channel",
        "stable",
        "--now",
        "2026-01-03T00:00:00Z",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "channel stable serial 3: generated 2026-01-01T00:00:02Z, expires 2026-01-31T00:00:02Z"
    );
    assert!(
        lines[1].starts_with("signed by ")
            && lines[1].ends_with("(not checked; pass --pubkey to check)")
    );
    assert!(lines[2].starts_with("1.0: ../payloads/box_1.0_"), "{out}");
    assert_eq!(
        lines[4],
        "  rollout from 2026-01-02T00:00:00Z over 2d from 10%: open to 55.0% of boxes at 2026-01-03T00:00:00Z"
    );
}

/// `updater/testdata/stream-gen-vector.sh` makes the stream test vector with these commands.
#[test]
fn publish_reproduces_the_stream_test_vector() {
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("../updater/testdata");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let key = testdata.join("vector.key");
    let (root_s, key_s) = (s(root), s(&key));
    let payload = testdata.join("vector.payload");
    ok(tool(&[
        "publish",
        "init",
        root_s,
        "--channel",
        "stable",
        "--key",
        key_s,
        "--expires-in",
        "30d",
        "--now",
        "2026-01-01T00:00:00Z",
    ]));
    ok(tool(&[
        "publish",
        "add",
        s(&payload),
        "--root",
        root_s,
        "--channel",
        "stable",
        "--key",
        key_s,
        "--now",
        "2026-01-01T00:01:00Z",
    ]));
    ok(tool(&[
        "publish",
        "rollout",
        "1.0",
        "--start",
        "2026-01-02T00:00:00Z",
        "--duration",
        "2d",
        "--start-fraction",
        "0.1",
        "--root",
        root_s,
        "--channel",
        "stable",
        "--key",
        key_s,
        "--now",
        "2026-01-01T00:02:00Z",
    ]));
    for f in ["stream.json", "stream.json.sig"] {
        assert!(
            std::fs::read(root.join("stable").join(f)).unwrap()
                == std::fs::read(testdata.join(f)).unwrap(),
            "{f} differs from the test vector"
        );
    }
    let parsed = Stream::parse(&std::fs::read(root.join("stable/stream.json")).unwrap()).unwrap();
    let copied = root.join("stable").join(&parsed.releases[0].location);
    assert_eq!(
        std::fs::read(copied).unwrap(),
        std::fs::read(&payload).unwrap()
    );
}

#[test]
fn help_shows_examples_for_every_subcommand() {
    for sub in [
        "init", "add", "rollout", "pause", "resume", "pull", "barrier", "sign", "show",
    ] {
        let help = ok(tool(&["publish", sub, "--help"]));
        assert!(
            help.contains(&format!("image-tools publish {sub} ")),
            "{sub}: {help}"
        );
        for line in help.lines().skip_while(|l| !l.starts_with("Example")) {
            assert!(
                line.len() <= 80,
                "{sub}: {line:?} is longer than 80 columns"
            );
        }
    }
    let help = ok(tool(&["publish", "--help"]));
    assert!(help.contains("Example (a 10% canary"), "{help}");
}
