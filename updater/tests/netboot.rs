//! `updater netboot` and the RAM-boot line of `updater status`, run as the binary against a
//! temporary root and output path (the refusal paths of the fetch itself are the unit tests of
//! `updater::netboot`).
use crate::util::{encode_public_key, test_key};
use std::path::Path;
use std::process::{Command, Output};

fn updater(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_updater"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// A root trusting the test key.
fn root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("etc/updater/keys.d");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join("test.pub"),
        encode_public_key(&test_key().verifying_key()),
    )
    .unwrap();
    dir
}

#[test]
fn an_unreachable_server_gives_up_after_the_attempts_and_leaves_nothing() {
    let root = root();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/usr.payload");
    let out_path = root.path().join("ram/usr.img");
    let out = updater(
        root.path(),
        &[
            "netboot",
            "--image-id",
            "testbox",
            "--url",
            &url,
            "--attempts",
            "2",
            "--max-delay",
            "1",
            "--new-root",
            root.path().to_str().unwrap(),
            "--output",
            "/ram/usr.img",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with(&format!(
            "updater: giving up: cannot fetch {url} (2 attempt(s)): "
        )),
        "{err}"
    );
    assert!(last.ends_with("; nothing to mount"), "{err}");
    assert!(err.contains("attempt 1 of 2 failed, retrying in "), "{err}");
    assert!(!out_path.exists());
    assert!(!root.path().join("run/updater/netboot.json").exists());
}

#[test]
fn a_url_that_is_not_http_is_refused_before_any_fetch() {
    let root = root();
    let out = updater(
        root.path(),
        &[
            "netboot",
            "--image-id",
            "testbox",
            "--url",
            "ftp://boot/usr.payload",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "updater: \"ftp://boot/usr.payload\" is not an http(s) URL"
    );
}

#[test]
fn url_and_stream_together_are_a_usage_error() {
    let root = root();
    let out = updater(
        root.path(),
        &[
            "netboot",
            "--image-id",
            "x",
            "--url",
            "http://a/p",
            "--stream",
            "http://a/s",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn status_of_a_ram_booted_node_names_the_url_and_version() {
    let root = root();
    let run = root.path().join("run/updater");
    std::fs::create_dir_all(&run).unwrap();
    let record = serde_json::json!({
        "format_version": 1, "mode": "payload", "url": "http://boot/usr-2.0.payload",
        "stream_url": null, "compatible": "testbox", "version": "2.0",
        "payload_id": "ab", "signed_by": "cd", "image_size": 4096, "image_sha256": "ef",
        "image": "/run/netboot/usr.img", "fetched_at": 1, "retries": 0, "peak_rss_kib": 100,
        "a_field_from_a_newer_updater": true
    });
    std::fs::write(run.join("netboot.json"), record.to_string()).unwrap();
    let out = updater(root.path(), &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().next(),
        Some("RAM-booted from http://boot/usr-2.0.payload, version 2.0")
    );
    let json = updater(root.path(), &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["ram_booted"], true);
    assert_eq!(v["netboot"]["version"], "2.0");
}

#[test]
fn help_shows_examples() {
    let root = root();
    let out = updater(root.path(), &["netboot", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("\n  updater netboot --image-id myos --url "),
        "{help}"
    );
    assert!(help.lines().all(|l| l.len() <= 80), "{help}");
}
