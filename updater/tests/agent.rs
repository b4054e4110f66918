//! The update agent on a host (issue 13): a signed stream tree published on disk and served by
//! a real nginx on 127.0.0.1 (some cases read it as a `file://` URL), and `updater check` /
//! `updater agent --once` through the binary.
use crate::util::{self, grub_boots, ok, on, Device};
use bootctl::{SlotAttrs, SlotId};
use std::path::PathBuf;
use updater::history::History;
use updater::payload::VerifiedPrelude;
use updater::state::StateDir;
use updater::stream::{self, Release, Stream};

/// A release tree: `DIR/stable/stream.json(.sig)` and payloads in `DIR/payloads/`.
struct Tree {
    dir: PathBuf,
    stream: Stream,
}

/// "Now" of the tests' streams: generated an hour ago, valid for a week.
fn now() -> u64 {
    updater::history::now()
}

impl Tree {
    fn new(dev: &Device) -> Tree {
        let dir = dev.path("tree");
        std::fs::create_dir_all(dir.join("stable")).unwrap();
        std::fs::create_dir_all(dir.join("payloads")).unwrap();
        let stream = Stream::new("stable", now() - 3600, 7 * 86400).unwrap();
        let t = Tree { dir, stream };
        t.publish();
        t
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.join("stable/stream.json").display())
    }

    fn publish(&self) {
        let bytes = stream::writer::encode(&self.stream).unwrap();
        let sig = stream::writer::sign(&bytes, &[util::test_key()]).unwrap();
        std::fs::write(self.dir.join("stable/stream.json"), &bytes).unwrap();
        std::fs::write(self.dir.join("stable/stream.json.sig"), &sig).unwrap();
    }

    /// Adds `version` (its payload built from `image`), rolled out to every box, and publishes.
    fn release(&mut self, version: &str, image: &[u8]) -> PathBuf {
        let bytes = util::parts(image, version).assemble(&[util::test_key()]);
        let name = format!("testbox-{version}.payload");
        let path = self.dir.join("payloads").join(&name);
        std::fs::write(&path, &bytes).unwrap();
        let prelude = prelude_of(&bytes);
        self.stream.republish(now() - 3600).unwrap();
        self.stream
            .add_release(Release {
                version: version.into(),
                location: format!("../payloads/{name}"),
                size: bytes.len() as u64,
                payload_id: prelude.payload_id(),
                image_sha256: prelude.manifest.image_sha256,
                rollout: None,
                barrier: false,
                dead_end: false,
            })
            .unwrap();
        self.stream
            .set_rollout(version, now() - 3600, 0, 1.0)
            .unwrap();
        self.publish();
        path
    }

    fn edit(&mut self, f: impl FnOnce(&mut Stream)) {
        self.stream.republish(now() - 3600).unwrap();
        f(&mut self.stream);
        self.publish();
    }
}

fn prelude_of(payload: &[u8]) -> VerifiedPrelude {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pub");
    std::fs::write(
        &key,
        util::encode_public_key(&util::test_key().verifying_key()),
    )
    .unwrap();
    let keys = updater::payload::TrustedKeys::load_dirs(&[dir.path().to_owned()]).unwrap();
    updater::payload::read_prelude(&mut &payload[..], &keys).unwrap()
}

fn configure(dev: &Device, url: &str, extra: &str) {
    dev.write_root_file(
        "etc/updater/config.d/50-agent.toml",
        &format!("[agent]\nstream_url = \"{url}\"\n{extra}"),
    );
    dev.write_root_file("etc/machine-id", "4b1d0c2a8e3f4c1b9a7d6e5f4c3b2a19\n");
}

fn err(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn attrs(dev: &Device, id: SlotId) -> SlotAttrs {
    dev.slot(&id).attrs
}

fn image(seed: u32) -> Vec<u8> {
    util::image_bytes(64 * 1024, seed)
}

#[test]
fn the_agent_installs_the_released_version_and_leaves_the_reboot_to_strategy_off() {
    let dev = Device::new();
    let mut tree = Tree::new(&dev);
    tree.release("2.0", &image(2));
    configure(&dev, &tree.url(), "");
    let out = ok(on(&dev, "A", "1.0", &["agent", "--once"]));
    assert!(out.contains("installed 2.0 into slot B"), "{out}");
    assert!(out.contains("reboot required"), "{out}");
    assert!(dev.root().join("run/reboot-required").exists());
    assert_eq!(attrs(&dev, SlotId::B).tries, 1);
    assert!(dev.slot_bytes(&SlotId::B)[..image(2).len()] == image(2)[..]);
    let prom = std::fs::read_to_string(dev.root().join("var/lib/updater/updater.prom")).unwrap();
    assert!(prom.contains("updater_update_pending 1"), "{prom}");
    assert!(
        prom.contains("updater_target_info{version=\"2.0\"} 1"),
        "{prom}"
    );
    // The next cycle sees it staged and does not install it again.
    let again = ok(on(&dev, "A", "1.0", &["agent", "--once"]));
    assert!(again.contains("2.0 is already installed"), "{again}");
}

#[test]
fn check_explains_the_decision_and_changes_nothing() {
    let dev = Device::new();
    let mut tree = Tree::new(&dev);
    tree.release("2.0", &image(2));
    configure(&dev, &tree.url(), "");
    let disk_before = std::fs::read(dev.disk()).unwrap();
    let out = ok(on(&dev, "A", "1.0", &["check"]));
    assert!(out.contains("target: 2.0"), "{out}");
    assert!(out.contains("serial 2"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(ok(on(&dev, "A", "1.0", &["--json", "check"])).trim()).unwrap();
    assert_eq!(json["decision"]["outcome"], "update");
    assert!(std::fs::read(dev.disk()).unwrap() == disk_before);
    assert!(!dev.root().join("var/lib/updater/agent.json").exists());
}

#[test]
fn the_full_cycle_commits_and_a_failed_version_is_never_retried_but_a_newer_one_is() {
    let dev = Device::new();
    let mut tree = Tree::new(&dev);
    tree.release("2.0", &image(2));
    let nginx = Nginx::serve(&tree.dir);
    configure(&dev, &nginx.url("stable/stream.json"), "");
    ok(on(&dev, "A", "1.0", &["agent", "--once"]));
    assert_eq!(grub_boots(&dev), "B");
    ok(on(&dev, "B", "2.0", &["health", "--no-reboot"]));
    // v3 fails its health check on B's successor (A) and rolls back.
    tree.release("3.0", &image(3));
    ok(on(&dev, "B", "2.0", &["agent", "--once"]));
    assert_eq!(grub_boots(&dev), "A");
    dev.write_root_file("etc/updater/health.d/10-app", "#!/bin/sh\nexit 1\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dev.root().join("etc/updater/health.d/10-app"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = on(&dev, "A", "3.0", &["health", "--no-reboot"]);
    assert!(!out.status.success());
    std::fs::remove_file(dev.root().join("etc/updater/health.d/10-app")).unwrap();
    assert_eq!(grub_boots(&dev), "B");
    let out = ok(on(&dev, "B", "2.0", &["agent", "--once"]));
    assert!(out.contains("3.0: failed on this box before"), "{out}");
    assert_eq!(
        attrs(&dev, SlotId::A),
        SlotAttrs::default(),
        "3.0 not retried"
    );
    tree.release("4.0", &image(4));
    let out = ok(on(&dev, "B", "2.0", &["agent", "--once"]));
    assert!(out.contains("installed 4.0 into slot A"), "{out}");
}

#[test]
fn a_newer_release_restages_over_a_pending_one() {
    let dev = Device::new();
    let mut tree = Tree::new(&dev);
    tree.release("2.0", &image(2));
    let nginx = Nginx::serve(&tree.dir);
    configure(&dev, &nginx.url("stable/stream.json"), "");
    ok(on(&dev, "A", "1.0", &["agent", "--once"]));
    tree.release("3.0", &image(3));
    let out = ok(on(&dev, "A", "1.0", &["agent", "--once"]));
    assert!(out.contains("installed 3.0 into slot B"), "{out}");
    assert!(dev.slot_bytes(&SlotId::B)[..image(3).len()] == image(3)[..]);
}

#[test]
fn nothing_happens_while_the_booted_slot_is_not_committed() {
    let dev = Device::new();
    let mut tree = Tree::new(&dev);
    tree.release("2.0", &image(2));
    configure(&dev, &tree.url(), "");
    ok(on(&dev, "A", "1.0", &["agent", "--once"]));
    assert_eq!(grub_boots(&dev), "B");
    tree.release("3.0", &image(3));
    let a_before = dev.slot_bytes(&SlotId::A);
    let out = ok(on(&dev, "B", "2.0", &["agent", "--once"]));
    assert!(
        out.contains("waiting: the booted slot is not committed"),
        "{out}"
    );
    assert!(dev.slot_bytes(&SlotId::A) == a_before);
}

#[test]
fn refused_streams_change_nothing_and_say_why() {
    for (name, tamper, want) in [
        (
            "bad signature",
            Box::new(|t: &mut Tree| {
                let p = t.dir.join("stable/stream.json");
                let mut b = std::fs::read(&p).unwrap();
                let i = b.len() - 3;
                b[i] ^= 1;
                std::fs::write(&p, b).unwrap();
            }) as Box<dyn Fn(&mut Tree)>,
            "signature",
        ),
        (
            "unknown key",
            Box::new(|t: &mut Tree| {
                let bytes = std::fs::read(t.dir.join("stable/stream.json")).unwrap();
                let sig = stream::writer::sign(&bytes, &[util::other_key()]).unwrap();
                std::fs::write(t.dir.join("stable/stream.json.sig"), sig).unwrap();
            }),
            "key",
        ),
        (
            "expired",
            Box::new(|t: &mut Tree| {
                t.stream.republish(now() - 30 * 86400).unwrap();
                t.publish();
            }),
            "stream expired",
        ),
        (
            "manifest disagrees with its entry",
            Box::new(|t: &mut Tree| {
                // The entry keeps 2.0's id, the file now holds another 2.0 payload.
                let other = util::parts(&image(9), "2.0").assemble(&[util::test_key()]);
                std::fs::write(t.dir.join("payloads/testbox-2.0.payload"), other).unwrap();
            }),
            "payload_id",
        ),
    ] {
        let dev = Device::new();
        let mut tree = Tree::new(&dev);
        tree.release("2.0", &image(2));
        let nginx = Nginx::serve(&tree.dir);
        configure(&dev, &nginx.url("stable/stream.json"), "");
        tamper(&mut tree);
        let disk_before = std::fs::read(dev.disk()).unwrap();
        let e = err(&on(&dev, "A", "1.0", &["agent", "--once"]));
        assert!(e.contains(want), "{name}: {e}");
        assert!(
            std::fs::read(dev.disk()).unwrap() == disk_before,
            "{name}: the disk changed"
        );
    }
}

#[test]
fn a_replayed_older_stream_is_refused() {
    let dev = Device::new();
    let mut tree = Tree::new(&dev);
    tree.release("2.0", &image(2));
    let nginx = Nginx::serve(&tree.dir);
    configure(&dev, &nginx.url("stable/stream.json"), "");
    let old = (
        std::fs::read(tree.dir.join("stable/stream.json")).unwrap(),
        std::fs::read(tree.dir.join("stable/stream.json.sig")).unwrap(),
    );
    tree.edit(|s| s.pull("2.0").unwrap());
    ok(on(&dev, "A", "1.0", &["agent", "--once"]));
    assert_eq!(attrs(&dev, SlotId::B), SlotAttrs::default(), "2.0 pulled");
    std::fs::write(tree.dir.join("stable/stream.json"), &old.0).unwrap();
    std::fs::write(tree.dir.join("stable/stream.json.sig"), &old.1).unwrap();
    let e = err(&on(&dev, "A", "1.0", &["agent", "--once"]));
    assert!(e.contains("serial 2") && e.contains("3"), "{e}");
    assert_eq!(attrs(&dev, SlotId::B), SlotAttrs::default());
    let st: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dev.root().join("var/lib/updater/agent.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(st["last_check_ok"], false);
}

#[test]
fn pause_and_barrier_hold_the_box_back() {
    let dev = Device::new();
    let mut tree = Tree::new(&dev);
    tree.release("2.0", &image(2));
    tree.release("3.0", &image(3));
    tree.edit(|s| s.mark_barrier("2.0").unwrap());
    let nginx = Nginx::serve(&tree.dir);
    configure(&dev, &nginx.url("stable/stream.json"), "");
    let out = ok(on(&dev, "A", "1.0", &["check"]));
    assert!(out.contains("target: 2.0"), "barrier first: {out}");
    tree.edit(|s| s.set_paused("2.0", true).unwrap());
    let out = ok(on(&dev, "A", "1.0", &["agent", "--once"]));
    assert!(out.contains("no target"), "{out}");
    assert_eq!(attrs(&dev, SlotId::B), SlotAttrs::default());
}

#[test]
fn periodic_strategy_defers_the_reboot_outside_its_window() {
    let dev = Device::new();
    let mut tree = Tree::new(&dev);
    tree.release("2.0", &image(2));
    // A window of one minute, a day's half away from now.
    let at = (now() + 12 * 3600) % 86400;
    let window = format!(
        "[reboot]\nstrategy = \"periodic\"\n[reboot.periodic]\ntime_zone = \"UTC\"\n[[reboot.periodic.window]]\ndays = [\"Mon\", \"Tue\", \"Wed\", \"Thu\", \"Fri\", \"Sat\", \"Sun\"]\nstart_time = \"{:02}:{:02}\"\nlength_minutes = 1\n",
        at / 3600,
        (at % 3600) / 60
    );
    dev.write_root_file("etc/updater/config.d/60-reboot.toml", &window);
    let nginx = Nginx::serve(&tree.dir);
    configure(&dev, &nginx.url("stable/stream.json"), "");
    let out = ok(on(&dev, "A", "1.0", &["--json", "agent", "--once"]));
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["finalize"]["reboot"], "deferred", "{json}");
    assert!(json["finalize"]["next_window"][0].as_i64().unwrap() > now() as i64);
}

#[test]
fn status_keeps_the_failed_list_the_agent_reads() {
    // The agent decides with the same failed-version list install uses.
    let dev = Device::new();
    let mut tree = Tree::new(&dev);
    tree.release("2.0", &image(2));
    configure(&dev, &tree.url(), "");
    History::new(StateDir::under_root(&dev.root()))
        .record_failed(updater::history::FailedVersion {
            version: "2.0".into(),
            reason: "test".into(),
            ..Default::default()
        })
        .unwrap();
    let out = ok(on(&dev, "A", "1.0", &["agent", "--once"]));
    assert!(out.contains("2.0: failed on this box before"), "{out}");
    assert_eq!(attrs(&dev, SlotId::B), SlotAttrs::default());
}

/// A real nginx (Debian's package) serving a directory on a free 127.0.0.1 port, with its own
/// config, logs and pid in a temporary directory; stopped on drop.
pub(crate) struct Nginx {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Nginx {
    pub(crate) fn serve(root: &std::path::Path) -> Nginx {
        Nginx::serve_with(root, "")
    }

    /// [`Nginx::serve`] with `directives` added to the `server` block (`max_ranges 1;`…).
    pub(crate) fn serve_with(root: &std::path::Path, directives: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port}; root {}; etag on; {directives} }}
}}
",
            root.display()
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let mut child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .spawn()
            .expect("starting nginx (Debian package nginx, installed by scripts/deps.sh)");
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Nginx { child, dir, port };
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "nginx did not listen on {port}: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    pub(crate) fn requests(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn over_http_from_nginx_the_agent_installs_and_the_next_poll_is_not_modified() {
    let dev = Device::new();
    let mut tree = Tree::new(&dev);
    tree.release("2.0", &image(2));
    let nginx = Nginx::serve(&tree.dir);
    configure(&dev, &nginx.url("stable/stream.json"), "");
    let out = ok(on(&dev, "A", "1.0", &["agent", "--once"]));
    assert!(out.contains("installed 2.0 into slot B"), "{out}");
    assert!(dev.slot_bytes(&SlotId::B)[..image(2).len()] == image(2)[..]);
    let json: serde_json::Value =
        serde_json::from_str(ok(on(&dev, "A", "1.0", &["--json", "check"])).trim()).unwrap();
    assert_eq!(json["not_modified"], true, "{json}");
    assert!(
        nginx
            .requests()
            .contains("\"GET /stable/stream.json HTTP/1.1\" 304"),
        "{}",
        nginx.requests()
    );
    // A new serial is fetched again.
    tree.release("3.0", &image(3));
    let json: serde_json::Value =
        serde_json::from_str(ok(on(&dev, "A", "1.0", &["--json", "check"])).trim()).unwrap();
    assert_eq!(json["not_modified"], false, "{json}");
    assert_eq!(json["serial"], 3);
}

#[test]
fn a_server_that_is_down_changes_nothing_and_says_why() {
    let dev = Device::new();
    let mut tree = Tree::new(&dev);
    tree.release("2.0", &image(2));
    let url = {
        let nginx = Nginx::serve(&tree.dir);
        nginx.url("stable/stream.json")
    };
    configure(&dev, &url, "");
    let disk_before = std::fs::read(dev.disk()).unwrap();
    let e = err(&on(&dev, "A", "1.0", &["agent", "--once"]));
    assert!(e.contains("fetching http://127.0.0.1:"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(std::fs::read(dev.disk()).unwrap() == disk_before);
    let status = ok(on(&dev, "A", "1.0", &["status"]));
    assert!(status.contains("FAILED: fetching"), "{status}");
}

#[test]
fn a_stalled_server_is_cut_off_by_the_download_deadline() {
    let dev = Device::new();
    // Accepts connections and never answers.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in server.incoming().take(2) {
            held.push(c);
        }
        std::thread::sleep(std::time::Duration::from_secs(60));
    });
    configure(
        &dev,
        &format!("http://127.0.0.1:{port}/stable/stream.json"),
        "[download]\ndeadline_secs = 2\n",
    );
    let started = std::time::Instant::now();
    let e = err(&on(&dev, "A", "1.0", &["agent", "--once"]));
    assert!(e.contains("fetching http://127.0.0.1:"), "{e}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "not cut off: {:?}",
        started.elapsed()
    );
    assert_eq!(attrs(&dev, SlotId::B), SlotAttrs::default());
    drop(hold);
}
