//! Harness of the fleet tests (issue 9): a real etcd cluster of three members on 127.0.0.1,
//! a signed release on disk, and simulated boxes, each its own disk-image file, root and
//! agent process, "rebooting" through the test-only reboot hook
//! (`UPDATER_TEST_REBOOT_COMMAND`): the hook records the reboot in the timeline and exits;
//! the harness applies GRUB's rule to the box's disk ([`grub_boots`]), runs the next boot's
//! `updater health`, then starts the box's agent again. The agent and health code run
//! unchanged. Every slot take and release (an `etcdctl watch` of the slot keys) and every
//! reboot start and end lands in one timeline file with its time.
#![allow(dead_code)]
use crate::util::{self, grub_boots, Device};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use updater::stream::{self, Release, Stream};

/// Seconds since the epoch, with nanoseconds.
pub fn stamp() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A scratch directory on tmpfs when there is one (etcd fsyncs a lot).
pub fn fast_tempdir() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An etcd cluster (Debian's `etcd-server`) on 127.0.0.1, its data in a temporary directory;
/// every member is stopped by its PID on drop.
pub struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<(u16, Option<Child>)>,
    scheme: String,
}

impl Etcd {
    /// Starts `n` members and waits until the cluster takes a write.
    pub fn start(n: usize) -> Etcd {
        Self::start_with(n, &[], "http")
    }

    /// Starts one member serving `scheme` clients with `extra` arguments (TLS files), without
    /// waiting (a TLS client is the caller's).
    pub fn start_tls(extra: &[String]) -> Etcd {
        Self::start_with(1, extra, "https")
    }

    fn start_with(n: usize, extra: &[String], scheme: &str) -> Etcd {
        let dir = fast_tempdir();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
            let child = Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}")))
                .args([
                    "--listen-client-urls",
                    &format!("{scheme}://127.0.0.1:{client}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("{scheme}://127.0.0.1:{client}"),
                ])
                .args(extra)
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "updater-fleet-test"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--log-level", "warn", "--logger", "zap"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting etcd (Debian package etcd-server, installed by scripts/deps.sh)");
            members.push((*client, Some(child)));
        }
        let e = Etcd {
            dir,
            members,
            scheme: scheme.into(),
        };
        if scheme == "https" {
            return e;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if e.client().put("/updater-test/ready", b"1").is_ok() {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not come up: {}",
                std::fs::read_to_string(e.dir.path().join("m0.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The client URLs of every member (dead or alive), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|(p, _)| format!("{}://127.0.0.1:{p}", self.scheme))
            .collect()
    }

    /// A library client of the whole cluster.
    pub fn client(&self) -> updater::fleet::etcd::EtcdClient {
        updater::fleet::etcd::EtcdClient::new(&updater::fleet::etcd::EtcdSettings {
            endpoints: self.endpoints(),
            timeout: Duration::from_secs(3),
            ..Default::default()
        })
        .unwrap()
    }

    /// Kills member `i` (SIGKILL, by PID).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].1.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcdctl watch --prefix PREFIX` against member `i`, each event appended to `timeline`
    /// with the time it was seen; stopped on drop.
    pub fn watch(&self, i: usize, prefix: &str, timeline: &Timeline) -> Watch {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints()[i]))
            .args(["watch", "--prefix", prefix, "-w", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcdctl (Debian package etcd-client)");
        let out = child.stdout.take().unwrap();
        let tl = timeline.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let t = stamp();
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                for ev in v["Events"].as_array().cloned().unwrap_or_default() {
                    use base64::Engine;
                    let b64 = |x: &serde_json::Value| {
                        base64::engine::general_purpose::STANDARD
                            .decode(x.as_str().unwrap_or(""))
                            .unwrap_or_default()
                    };
                    let key = String::from_utf8_lossy(&b64(&ev["kv"]["key"])).into_owned();
                    if ev["type"].as_i64() == Some(1) {
                        tl.record_at(t, "slot-release", &key);
                    } else {
                        let value: serde_json::Value =
                            serde_json::from_slice(&b64(&ev["kv"]["value"])).unwrap_or_default();
                        let node = value["node"].as_str().unwrap_or("?");
                        tl.record_at(t, "slot-take", &format!("{key} {node}"));
                    }
                }
            }
        });
        // The watch is live once etcdctl connected; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        Watch {
            child,
            reader: Some(reader),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A running `etcdctl watch`.
pub struct Watch {
    child: Child,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The timeline file: one line per event, `SECONDS KIND WHO…`.
#[derive(Clone)]
pub struct Timeline {
    pub path: PathBuf,
    lock: Arc<std::sync::Mutex<()>>,
}

/// One timeline line.
#[derive(Debug, Clone)]
pub struct Event {
    pub t: f64,
    pub kind: String,
    pub who: String,
}

impl Timeline {
    pub fn new(path: PathBuf) -> Timeline {
        std::fs::write(&path, "").unwrap();
        Timeline {
            path,
            lock: Arc::default(),
        }
    }

    pub fn record_at(&self, t: f64, kind: &str, who: &str) {
        use std::io::Write;
        let _g = self.lock.lock().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .unwrap();
        writeln!(f, "{t:.6} {kind} {who}").unwrap();
    }

    pub fn record(&self, kind: &str, who: &str) {
        self.record_at(stamp(), kind, who)
    }

    /// Every event, in file order (the watch's events are in etcd's revision order).
    pub fn events(&self) -> Vec<Event> {
        std::fs::read_to_string(&self.path)
            .unwrap()
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                Some(Event {
                    t: it.next()?.parse().ok()?,
                    kind: it.next()?.to_owned(),
                    who: it.next().unwrap_or("").to_owned(),
                })
            })
            .collect()
    }

    /// The most slots held at once, replaying takes and releases in etcd's order.
    pub fn max_slot_holders(&self) -> usize {
        let mut held = std::collections::BTreeSet::new();
        let mut max = 0;
        for e in self.events() {
            let key = e.who.split(' ').next().unwrap_or("").to_owned();
            match e.kind.as_str() {
                "slot-take" => {
                    held.insert(key);
                }
                "slot-release" => {
                    held.remove(&key);
                }
                _ => continue,
            }
            max = max.max(held.len());
        }
        max
    }

    /// The most boxes rebooting at once (from `reboot-start`, the hook, to `reboot-end`, the
    /// start of the next boot), by time.
    pub fn max_rebooting(&self) -> usize {
        let mut evs: Vec<(f64, i32)> = self
            .events()
            .into_iter()
            .filter_map(|e| match e.kind.as_str() {
                "reboot-start" => Some((e.t, 1)),
                "reboot-end" => Some((e.t, -1)),
                _ => None,
            })
            .collect();
        // At equal times an end goes first (the interval is closed at its start).
        evs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (mut n, mut max) = (0i32, 0i32);
        for (_, d) in evs {
            n += d;
            max = max.max(n);
        }
        max as usize
    }

    pub fn count(&self, kind: &str) -> usize {
        self.events().iter().filter(|e| e.kind == kind).count()
    }
}

/// The signed release of the fleet tests: version 2.0 in `dir/stable/stream.json`, its
/// payload next to it, open to every box.
pub fn publish_release(dir: &Path, version: &str, image: &[u8]) -> String {
    let now = updater::history::now();
    std::fs::create_dir_all(dir.join("stable")).unwrap();
    let bytes = util::parts(image, version).assemble(&[util::test_key()]);
    let payload = dir.join(format!("stable/testbox-{version}.payload"));
    std::fs::write(&payload, &bytes).unwrap();
    let keys_dir = dir.join("keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    std::fs::write(
        keys_dir.join("test.pub"),
        util::encode_public_key(&util::test_key().verifying_key()),
    )
    .unwrap();
    let keys = updater::payload::TrustedKeys::load_dirs(&[keys_dir]).unwrap();
    let prelude = updater::payload::read_prelude(&mut &bytes[..], &keys).unwrap();
    let mut s = Stream::new("stable", now - 3600, 7 * 86400).unwrap();
    s.add_release(Release {
        version: version.into(),
        location: format!("testbox-{version}.payload"),
        size: bytes.len() as u64,
        payload_id: prelude.payload_id(),
        image_sha256: prelude.manifest.image_sha256,
        rollout: None,
        barrier: false,
        dead_end: false,
    })
    .unwrap();
    s.set_rollout(version, now - 3600, 0, 1.0).unwrap();
    let enc = stream::writer::encode(&s).unwrap();
    let sig = stream::writer::sign(&enc, &[util::test_key()]).unwrap();
    std::fs::write(dir.join("stable/stream.json"), &enc).unwrap();
    std::fs::write(dir.join("stable/stream.json.sig"), &sig).unwrap();
    format!("file://{}", dir.join("stable/stream.json").display())
}

/// The reboot hook every box uses: it records the reboot, leaves a marker for the harness,
/// and, for a box told to die there, SIGKILLs the process that called it (the agent,
/// holding its slot).
pub fn write_hook(dir: &Path) -> PathBuf {
    let p = dir.join("reboot-hook");
    std::fs::write(
        &p,
        "#!/bin/sh\n\
         printf '%s reboot-start %s\\n' \"$(date +%s.%N)\" \"$BOX\" >> \"$TIMELINE\"\n\
         touch \"$BOX_DIR/rebooting\"\n\
         if [ -e \"$BOX_DIR/die-at-reboot\" ]; then kill -KILL $PPID; fi\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &p,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    p
}

/// How a box's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// It runs the new version, committed.
    Updated,
    /// It rebooted into the new version, failed its checks, and is back on the old one.
    RolledBack,
    /// It died at its reboot (told to) and never came back.
    Died,
    /// The harness gave up or was stopped.
    Stopped(String),
}

/// One simulated box.
pub struct SimBox {
    pub idx: usize,
    pub dev: Device,
    pub target: String,
}

impl SimBox {
    /// A box with machine id `idx + 1` and drop-in `config` (the agent's stream URL added).
    pub fn new(idx: usize, stream_url: &str, target: &str, config: &str) -> SimBox {
        let dev = Device::new();
        dev.write_root_file("etc/machine-id", &format!("{:032x}\n", idx + 1));
        dev.write_root_file(
            "etc/updater/config.d/50-fleet.toml",
            &format!("[agent]\nstream_url = \"{stream_url}\"\n{config}"),
        );
        SimBox {
            idx,
            dev,
            target: target.into(),
        }
    }

    /// Its node id (the app-specific id of its machine id).
    pub fn node(&self) -> String {
        updater::fleet::identity::app_specific_id(&format!("{:032x}", self.idx + 1)).unwrap()
    }

    pub fn command(&self, booted: &str, version: &str, hook: &Path, tl: &Timeline) -> Command {
        self.dev.write_root_file(
            "usr/lib/os-release",
            &format!("IMAGE_ID=testbox\nIMAGE_VERSION={version}\n"),
        );
        let mut c = self.dev.command(booted);
        c.env(updater::cycle::REBOOT_HOOK_ENV, hook)
            .env("BOX", format!("box{} {}", self.idx, self.node()))
            .env("BOX_DIR", self.dev.dir.path())
            .env("TIMELINE", &tl.path);
        c
    }

    /// Tells the box to die (its agent SIGKILLed by the hook) at its next reboot.
    pub fn die_at_reboot(&self) {
        std::fs::write(self.dev.path("die-at-reboot"), "").unwrap();
    }

    /// The agent's log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dev.path("agent.log")).unwrap_or_default()
    }

    /// Runs the box until it is updated, rolled back, dead, `deadline` passes or `stop` is
    /// set: boot (health), agent until it reboots, GRUB's rule, boot again…
    pub fn run(&self, hook: &Path, tl: &Timeline, stop: &AtomicBool, deadline: Instant) -> End {
        let marker = self.dev.path("rebooting");
        let mut booted = "A".to_string();
        let mut after_reboot = false;
        // GRUB chose the slot: the next boot begins and the reboot is over (the slot is held
        // until that boot's health gives it back).
        let boot = |tl: &Timeline| {
            let slot = grub_boots(&self.dev);
            tl.record("reboot-end", &format!("box{} {}", self.idx, self.node()));
            slot
        };
        loop {
            let version = if booted == "B" {
                self.target.as_str()
            } else {
                "1.0"
            };
            let out = self
                .command(&booted, version, hook, tl)
                .arg("health")
                .output()
                .unwrap();
            if marker.exists() {
                // Health failed and rebooted back (the hook recorded the start).
                std::fs::remove_file(&marker).unwrap();
                booted = boot(tl);
                after_reboot = true;
                continue;
            }
            if !out.status.success() {
                return End::Stopped(format!(
                    "box{}: health failed without a reboot: {}",
                    self.idx,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            if after_reboot {
                if version == self.target {
                    return End::Updated;
                }
                return End::RolledBack;
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dev.path("agent.log"))
                .unwrap();
            let mut agent = self
                .command(&booted, version, hook, tl)
                .arg("agent")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let status = loop {
                if let Some(s) = agent.try_wait().unwrap() {
                    break s;
                }
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    let _ = agent.kill();
                    let _ = agent.wait();
                    return End::Stopped(format!("box{}: stopped while its agent ran", self.idx));
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if !marker.exists() {
                return End::Stopped(format!(
                    "box{}: the agent exited ({status}) without rebooting: {}",
                    self.idx,
                    self.log()
                ));
            }
            std::fs::remove_file(&marker).unwrap();
            if self.dev.path("die-at-reboot").exists() {
                return End::Died;
            }
            booted = boot(tl);
            after_reboot = true;
        }
    }
}

/// A fleet of boxes run in threads.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub timeline: Timeline,
    pub hook: PathBuf,
    pub stream_url: String,
    pub stop: Arc<AtomicBool>,
}

impl Fleet {
    /// A fleet directory with release 2.0 published and the hook written.
    pub fn new() -> Fleet {
        let dir = fast_tempdir();
        let stream_url = publish_release(dir.path(), "2.0", &util::image_bytes(64 * 1024, 2));
        let hook = write_hook(dir.path());
        let timeline = Timeline::new(dir.path().join("timeline"));
        Fleet {
            dir,
            timeline,
            hook,
            stream_url,
            stop: Arc::default(),
        }
    }

    /// Starts `b` in a thread, to end within `limit`.
    pub fn start(&self, b: Arc<SimBox>, limit: Duration) -> std::thread::JoinHandle<End> {
        let (hook, tl, stop) = (self.hook.clone(), self.timeline.clone(), self.stop.clone());
        let deadline = Instant::now() + limit;
        std::thread::spawn(move || b.run(&hook, &tl, &stop, deadline))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if std::thread::panicking() {
            // Keep the evidence of a failed run.
            let keep = std::env::temp_dir().join(format!(
                "fleet-timeline-{}-{}",
                std::process::id(),
                stamp()
            ));
            if std::fs::copy(&self.timeline.path, &keep).is_ok() {
                eprintln!("fleet timeline kept in {}", keep.display());
            }
        }
    }
}

/// The `[reboot]`, `[fleet]` and `[etcd]` drop-in of an etcd fleet: `slots` slots, lease TTL
/// `ttl` seconds, ticks of a second.
pub fn etcd_config(endpoints: &[String], slots: u32, ttl: u64) -> String {
    let list = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "interval_secs = 1\njitter_secs = 1\n\
         [reboot]\nstrategy = \"etcd\"\n\
         [fleet]\ngroup = \"workers\"\nmax_backoff_secs = 2\n\
         [etcd]\nendpoints = [{list}]\nslots = {slots}\nlease_ttl_secs = {ttl}\ntimeout_secs = 2\n"
    )
}
