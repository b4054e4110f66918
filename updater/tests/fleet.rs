//! Fleet reboots (issue 9) on simulated boxes ([`crate::fleet_sim`]): a real three-member etcd
//! on 127.0.0.1 holding N reboot slots, each box its own disk image, root and agent process
//! rebooting through the test reboot hook; and FleetLock against a protocol-faithful server
//! ([`crate::fleetlock_server`]) whose raw request and response bytes are checked.
use crate::fleet_sim::{etcd_config, End, Etcd, Fleet, SimBox};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Boxes of the rollout test (at least 20: the issue's fleet).
const FLEET_BOXES: usize = 20;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn twenty_boxes_reboot_at_most_two_at_a_time_and_a_dead_etcd_member_does_not_stop_them() {
    let mut etcd = Etcd::start(3);
    let fleet = Fleet::new();
    let _watch = etcd.watch(0, "/updater/workers/slots/", &fleet.timeline);
    // Every box tries the member that is killed first: its failover is exercised.
    let eps = etcd.endpoints();
    let order = [eps[2].clone(), eps[0].clone(), eps[1].clone()];
    let config = etcd_config(&order, 2, 20);
    let started = Instant::now();
    let boxes: Vec<Arc<SimBox>> = (0..FLEET_BOXES)
        .map(|i| Arc::new(SimBox::new(i, &fleet.stream_url, "2.0", &config)))
        .collect();
    let threads: Vec<_> = boxes
        .iter()
        .map(|b| fleet.start(b.clone(), Duration::from_secs(150)))
        .collect();
    // Mid-rollout: a member dies.
    let kill_deadline = Instant::now() + Duration::from_secs(60);
    while fleet.timeline.count("reboot-end") < 4 && Instant::now() < kill_deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    etcd.kill(2);
    let killed_at = fleet.timeline.count("reboot-end");
    let ends: Vec<End> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let drained = started.elapsed();
    for (b, e) in boxes.iter().zip(&ends) {
        assert_eq!(*e, End::Updated, "box{}: {e:?}\n{}", b.idx, b.log());
    }
    std::thread::sleep(Duration::from_millis(300)); // the watch's last events
    let tl = &fleet.timeline;
    let (holders, rebooting) = (tl.max_slot_holders(), tl.max_rebooting());
    eprintln!(
        "fleet timeline: {FLEET_BOXES} boxes, N = 2: max concurrent slot holders {holders}, max concurrent reboots {rebooting}, drained in {:.1} s, etcd member killed after {killed_at} reboots; timeline {}",
        drained.as_secs_f64(),
        tl.path.display()
    );
    assert!(holders <= 2, "{holders} held slots at once");
    assert!(rebooting <= 2, "{rebooting} rebooted at once");
    assert_eq!(holders, 2, "the two slots were used");
    assert!(killed_at < FLEET_BOXES, "the member died mid-rollout");
    assert_eq!(tl.count("slot-take"), FLEET_BOXES);
    assert_eq!(tl.count("slot-release"), FLEET_BOXES);
    assert_eq!(tl.count("reboot-start"), FLEET_BOXES);
    // Each box took a slot once and rebooted once.
    let ev = tl.events();
    for b in &boxes {
        let node = b.node();
        let n = |kind: &str| {
            ev.iter()
                .filter(|e| e.kind == kind && e.who.ends_with(&node))
                .count()
        };
        assert_eq!(
            (n("slot-take"), n("reboot-start"), n("reboot-end")),
            (1, 1, 1),
            "box{}",
            b.idx
        );
    }
}

#[test]
fn a_box_killed_holding_a_slot_frees_it_when_its_lease_expires() {
    let etcd = Etcd::start(3);
    let fleet = Fleet::new();
    let _watch = etcd.watch(0, "/updater/workers/slots/", &fleet.timeline);
    let ttl = 4;
    let config = etcd_config(&etcd.endpoints(), 1, ttl);
    let dying = Arc::new(SimBox::new(0, &fleet.stream_url, "2.0", &config));
    dying.die_at_reboot();
    assert_eq!(
        fleet
            .start(dying.clone(), Duration::from_secs(60))
            .join()
            .unwrap(),
        End::Died
    );
    let other = Arc::new(SimBox::new(1, &fleet.stream_url, "2.0", &config));
    assert_eq!(
        fleet
            .start(other.clone(), Duration::from_secs(60))
            .join()
            .unwrap(),
        End::Updated,
        "{}",
        other.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let ev = fleet.timeline.events();
    let at = |kind: &str, node: &str| {
        ev.iter()
            .find(|e| e.kind == kind && (node.is_empty() || e.who.ends_with(node)))
            .unwrap_or_else(|| panic!("no {kind} {node} in {ev:?}"))
            .t
    };
    let taken = at("slot-take", &dying.node());
    let freed = at("slot-release", "");
    let retaken = at("slot-take", &other.node());
    assert!(
        freed - taken >= ttl as f64 - 1.0,
        "freed {:.1} s after the take, before the lease's TTL",
        freed - taken
    );
    assert!(retaken >= freed);
    assert_eq!(fleet.timeline.max_slot_holders(), 1);
}

#[test]
fn a_failed_health_check_halts_the_group_until_fleet_resume() {
    let etcd = Etcd::start(3);
    let fleet = Fleet::new();
    let _watch = etcd.watch(0, "/updater/workers/slots/", &fleet.timeline);
    let config = etcd_config(&etcd.endpoints(), 2, 20);
    let bad = Arc::new(SimBox::new(0, &fleet.stream_url, "2.0", &config));
    crate::util::check(
        &bad.dev,
        "10-app",
        "[ \"$UPDATER_VERSION\" != 2.0 ] || { echo 'app: crashed' >&2; exit 3; }",
    );
    assert_eq!(
        fleet
            .start(bad.clone(), Duration::from_secs(60))
            .join()
            .unwrap(),
        End::RolledBack,
        "{}",
        bad.log()
    );
    let status = json(
        &bad.dev
            .command("A")
            .args(["--json", "fleet", "status"])
            .output()
            .unwrap(),
    );
    assert_eq!(status["halt"]["node"], bad.node().as_str(), "{status}");
    assert_eq!(status["halt"]["version"], "2.0");
    assert_eq!(
        status["halt"]["reason"],
        "health check 10-app failed (exit 3)"
    );
    assert_eq!(
        status["held"],
        serde_json::json!([]),
        "its slot was released"
    );
    let text = crate::util::ok(
        bad.dev
            .command("A")
            .args(["fleet", "status"])
            .output()
            .unwrap(),
    );
    assert!(text.contains("HALTED: node"), "{text}");

    let rest: Vec<Arc<SimBox>> = (1..5)
        .map(|i| Arc::new(SimBox::new(i, &fleet.stream_url, "2.0", &config)))
        .collect();
    let threads: Vec<_> = rest
        .iter()
        .map(|b| fleet.start(b.clone(), Duration::from_secs(90)))
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        fleet.timeline.count("reboot-start"),
        2,
        "only the failed box's two reboots"
    );
    for b in &rest {
        assert!(
            b.log().contains("group halted: node"),
            "box{}: {}",
            b.idx,
            b.log()
        );
    }

    let resumed = json(
        &rest[0]
            .dev
            .command("A")
            .args(["--json", "fleet", "resume"])
            .output()
            .unwrap(),
    );
    assert_eq!(resumed["resumed"]["version"], "2.0", "{resumed}");
    for (b, t) in rest.iter().zip(threads) {
        assert_eq!(t.join().unwrap(), End::Updated, "box{}: {}", b.idx, b.log());
    }
    let again = json(
        &bad.dev
            .command("A")
            .args(["--json", "fleet", "resume"])
            .output()
            .unwrap(),
    );
    assert_eq!(again["resumed"], serde_json::Value::Null);
    assert!(fleet.timeline.max_slot_holders() <= 2);
}

// FleetLock.

fn fleetlock_box(fleet: &Fleet, url: &str, interval: u64) -> SimBox {
    SimBox::new(
        7,
        &fleet.stream_url,
        "2.0",
        &format!(
            "interval_secs = {interval}\njitter_secs = 0\n[reboot]\nstrategy = \"fleetlock\"\n[fleetlock]\nurl = \"{url}\"\n"
        ),
    )
}

/// `updater --json agent --once` on the box booted from A with version 1.0.
fn agent_once(fleet: &Fleet, b: &SimBox) -> serde_json::Value {
    json(
        &b.command("A", "1.0", &fleet.hook, &fleet.timeline)
            .args(["--json", "agent", "--once"])
            .output()
            .unwrap(),
    )
}

fn fleet_state(b: &SimBox) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(b.dev.root().join("var/lib/updater/fleet.json")).unwrap())
        .unwrap()
}

/// Waits until the box's backoff (`fleet.json` next_try) has passed.
fn wait_backoff(b: &SimBox) {
    let next = fleet_state(b)["next_try"].as_u64().unwrap();
    while updater::history::now() < next {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The request the protocol document specifies for `endpoint`, node `id`, group `default`
/// (the head as ureq writes it; the protocol fixes the method, path, header and body).
fn assert_protocol_request(raw: &[u8], endpoint: &str, id: &str, port: u16) {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body_want = format!(r#"{{"client_params":{{"id":"{id}","group":"default"}}}}"#);
    assert_eq!(body, body_want);
    let mut lines: Vec<&str> = head.split("\r\n").collect();
    assert_eq!(lines.remove(0), format!("POST /v1/{endpoint} HTTP/1.1"));
    lines.sort();
    let mut want = vec![
        format!("Host: 127.0.0.1:{port}"),
        "fleet-lock-protocol: true".to_string(),
        "Content-Type: application/json".to_string(),
        format!("Content-Length: {}", body_want.len()),
    ];
    want.sort();
    let lines: Vec<String> = lines
        .into_iter()
        .filter(|l| {
            // ureq's own headers, which the protocol leaves free.
            !l.starts_with("User-Agent:")
                && !l.starts_with("Accept:")
                && !l.starts_with("accept-encoding:")
        })
        .map(str::to_owned)
        .collect();
    assert_eq!(lines, want, "{text}");
}

#[test]
fn fleetlock_requests_and_answers_are_the_protocols_and_the_reboot_waits_for_a_free_slot() {
    let fleet = Fleet::new();
    let server = crate::fleetlock_server::FleetLockServer::start(1);
    server.hold("default", "another-node");
    let b = fleetlock_box(&fleet, &server.url(), 1);
    let node = b.node();

    let out = agent_once(&fleet, &b);
    assert_eq!(out["finalize"]["reboot"], "waiting_for_lock", "{out}");
    assert_eq!(
        out["finalize"]["reason"],
        "pre-reboot refused (status 409, failed_lock_semaphore_full): all 1 reboot slots of group default are taken"
    );
    assert!(
        !b.dev.path("rebooting").exists(),
        "no reboot without the slot"
    );
    let prom = std::fs::read_to_string(b.dev.root().join("var/lib/updater/updater.prom")).unwrap();
    assert!(prom.contains("\nupdater_fleet_lock_refusals 1\n"), "{prom}");
    assert!(prom.contains("\nupdater_fleet_slot_held 0\n"), "{prom}");
    let ex = server.exchanges();
    assert_eq!(ex.len(), 1);
    assert_protocol_request(&ex[0].request, "pre-reboot", &node, server.port);
    let body = r#"{"kind":"failed_lock_semaphore_full","value":"all 1 reboot slots of group default are taken"}"#;
    assert_eq!(
        String::from_utf8(ex[0].response.clone()).unwrap(),
        format!("HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    );

    server.free("default", "another-node");
    wait_backoff(&b);
    let out = agent_once(&fleet, &b);
    assert_eq!(out["finalize"]["reboot"], "rebooting", "{out}");
    assert!(
        b.dev.path("rebooting").exists(),
        "the hook ran: the box rebooted"
    );
    assert_eq!(server.holders("default"), std::slice::from_ref(&node));
    let ex = server.exchanges();
    assert_protocol_request(&ex[1].request, "pre-reboot", &node, server.port);
    assert!(ex[1].response.starts_with(b"HTTP/1.1 200 OK\r\n"));

    // The next boot: GRUB picks B, health commits it, and only then is the slot given back.
    assert_eq!(crate::util::grub_boots(&b.dev), "B");
    assert_eq!(server.exchanges().len(), 2, "nothing before the commit");
    crate::util::ok(
        b.command("B", "2.0", &fleet.hook, &fleet.timeline)
            .arg("health")
            .output()
            .unwrap(),
    );
    let ex = server.exchanges();
    assert_eq!(ex.len(), 3);
    assert_protocol_request(&ex[2].request, "steady-state", &node, server.port);
    assert!(server.holders("default").is_empty());
    assert!(server.violations().is_empty(), "{:?}", server.violations());
    assert_eq!(fleet_state(&b)["held"], false);
}

#[test]
fn an_unreachable_fleetlock_server_means_no_reboot_and_a_retry_after_backoff() {
    let fleet = Fleet::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b = fleetlock_box(&fleet, &format!("http://127.0.0.1:{port}/"), 2);
    let out = agent_once(&fleet, &b);
    assert_eq!(out["finalize"]["reboot"], "waiting_for_lock", "{out}");
    let reason = out["finalize"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "reaching the FleetLock server http://127.0.0.1:{port}/v1/pre-reboot:"
        )),
        "{reason}"
    );
    assert!(!b.dev.path("rebooting").exists());
    assert_eq!(fleet_state(&b)["failures"], 1);
    // Within the backoff nobody is asked.
    let out = agent_once(&fleet, &b);
    assert!(
        out["finalize"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("backing off after 1 refusals"),
        "{out}"
    );
    let server = crate::fleetlock_server::FleetLockServer::start_on(port, 1);
    wait_backoff(&b);
    let out = agent_once(&fleet, &b);
    assert_eq!(out["finalize"]["reboot"], "rebooting", "{out}");
    assert!(b.dev.path("rebooting").exists());
    assert_eq!(server.exchanges().len(), 1);
}

#[test]
fn a_redirect_from_the_fleetlock_server_is_not_followed() {
    let fleet = Fleet::new();
    let server = crate::fleetlock_server::FleetLockServer::start(1);
    server.redirect_all();
    let b = fleetlock_box(&fleet, &server.url(), 1);
    let out = agent_once(&fleet, &b);
    assert_eq!(out["finalize"]["reboot"], "waiting_for_lock", "{out}");
    assert_eq!(
        out["finalize"]["reason"],
        "pre-reboot refused (status 307): "
    );
    assert_eq!(server.exchanges().len(), 1, "the redirect was not followed");
    assert!(!b.dev.path("rebooting").exists());
}

/// A `[reboot.periodic]` window of every day: open now (started a minute ago, ten minutes
/// long) or closed (a minute long, half a day away).
fn window(open: bool) -> String {
    let now = updater::history::now();
    let at = (if open { now - 60 } else { now + 12 * 3600 }) % 86400;
    format!(
        "[reboot.periodic]\ntime_zone = \"UTC\"\n[[reboot.periodic.window]]\ndays = [\"Mon\", \"Tue\", \"Wed\", \"Thu\", \"Fri\", \"Sat\", \"Sun\"]\nstart_time = \"{:02}:{:02}\"\nlength_minutes = {}\n",
        at / 3600,
        (at % 3600) / 60,
        if open { 10 } else { 1 }
    )
}

#[test]
fn the_fleet_lock_is_taken_only_inside_a_window_and_given_back_when_it_closes() {
    let fleet = Fleet::new();
    let server = crate::fleetlock_server::FleetLockServer::start(1);
    let b = fleetlock_box(&fleet, &server.url(), 1);
    let node = b.node();
    // Closed window, no slot: nobody is asked.
    b.dev
        .write_root_file("etc/updater/config.d/60-window.toml", &window(false));
    let out = agent_once(&fleet, &b);
    assert_eq!(out["finalize"]["reboot"], "deferred", "{out}");
    assert!(server.exchanges().is_empty());
    // Open window: the slot is taken and the box reboots.
    b.dev
        .write_root_file("etc/updater/config.d/60-window.toml", &window(true));
    let status = crate::util::ok(b.dev.updater(&["--json", "status"]));
    assert!(status.contains("\"config_warnings\":[]"), "{status}");
    let out = agent_once(&fleet, &b);
    assert_eq!(out["finalize"]["reboot"], "rebooting", "{out}");
    assert_eq!(server.holders("default"), std::slice::from_ref(&node));
    // The reboot did not happen (the hook is a test; say the machine stayed up) and the window
    // closed: the slot goes back.
    std::fs::remove_file(b.dev.path("rebooting")).unwrap();
    b.dev
        .write_root_file("etc/updater/config.d/60-window.toml", &window(false));
    let out = agent_once(&fleet, &b);
    assert_eq!(out["finalize"]["reboot"], "deferred", "{out}");
    assert!(server.holders("default").is_empty());
    let ex = server.exchanges();
    assert_eq!(ex.len(), 2);
    assert_protocol_request(&ex[1].request, "steady-state", &node, server.port);
    assert_eq!(fleet_state(&b)["held"], false);
}

#[test]
fn etcd_auth_takes_and_releases_a_slot_with_the_password_file_and_a_wrong_password_is_refused() {
    let etcd = Etcd::start(1);
    let ep = etcd.endpoints()[0].clone();
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "updater"],
        &[
            "role",
            "grant-permission",
            "updater",
            "--prefix=true",
            "readwrite",
            "/updater/",
        ],
        &["user", "add", "box:s3cret"],
        &["user", "grant-role", "box", "updater"],
        &["auth", "enable"],
    ] {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={ep}"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    }
    let fleet = Fleet::new();
    let config = |password: &str, b: usize| {
        let file = fleet.dir.path().join(format!("password-{b}"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        format!(
            "{}username = \"box\"\npassword_file = \"{}\"\n",
            etcd_config(std::slice::from_ref(&ep), 1, 30),
            file.display()
        )
    };
    let wrong = SimBox::new(1, &fleet.stream_url, "2.0", &config("guess", 1));
    let out = agent_once(&fleet, &wrong);
    assert_eq!(out["finalize"]["reboot"], "waiting_for_lock", "{out}");
    let reason = out["finalize"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("etcd authentication:"), "{reason}");
    assert!(!wrong.dev.path("rebooting").exists());

    let b = SimBox::new(0, &fleet.stream_url, "2.0", &config("s3cret", 0));
    let out = agent_once(&fleet, &b);
    assert_eq!(out["finalize"]["reboot"], "rebooting", "{out}");
    assert_eq!(fleet_state(&b)["held"], true);
    let status = json(
        &b.command("A", "1.0", &fleet.hook, &fleet.timeline)
            .args(["--json", "fleet", "status"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        status["held"][0]["holder"]["node"],
        b.node().as_str(),
        "{status}"
    );
    assert_eq!(crate::util::grub_boots(&b.dev), "B");
    crate::util::ok(
        b.command("B", "2.0", &fleet.hook, &fleet.timeline)
            .arg("health")
            .output()
            .unwrap(),
    );
    assert_eq!(fleet_state(&b)["held"], false);
    let status = json(
        &b.command("B", "2.0", &fleet.hook, &fleet.timeline)
            .args(["--json", "fleet", "status"])
            .output()
            .unwrap(),
    );
    assert_eq!(status["held"], serde_json::json!([]), "{status}");
}

#[test]
fn a_lost_lease_is_reported_and_revoking_it_again_is_fine() {
    let etcd = Etcd::start(1);
    let c = etcd.client();
    let lease = c.grant(Duration::from_secs(2)).unwrap();
    assert!(c.keepalive(lease).unwrap().is_some());
    assert!(c
        .put_if_absent("/updater/g/slots/0", &["/updater/g/halt"], b"{}", lease)
        .unwrap());
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(c.keepalive(lease).unwrap(), None, "expired");
    assert_eq!(
        c.get("/updater/g/slots/0").unwrap(),
        None,
        "its slot is free"
    );
    c.revoke(lease).unwrap();
}

/// `openssl` in `dir`: a CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_certs(dir: &std::path::Path) {
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
    };
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null");
    for (name, ext) in [
        // etcd's gateway dials its own gRPC port with the server certificate: clientAuth too.
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth",
        ),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), format!("{ext}\n")).unwrap();
        sh(&format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name} 2>/dev/null
             openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.ext 2>/dev/null"
        ));
    }
}

#[test]
fn etcd_over_tls_needs_the_ca_and_the_client_certificate() {
    use updater::fleet::etcd::{EtcdClient, EtcdSettings};
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    make_certs(d);
    let f = |n: &str| d.join(n).display().to_string();
    let etcd = Etcd::start_tls(&[
        format!("--cert-file={}", f("server.pem")),
        format!("--key-file={}", f("server.key")),
        format!("--trusted-ca-file={}", f("ca.pem")),
        "--client-cert-auth".into(),
    ]);
    let settings = EtcdSettings {
        endpoints: etcd.endpoints(),
        timeout: Duration::from_secs(3),
        ca_file: Some(d.join("ca.pem")),
        cert_file: Some(d.join("client.pem")),
        key_file: Some(d.join("client.key")),
        ..Default::default()
    };
    let c = EtcdClient::new(&settings).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = c.put("/updater/tls", b"yes") {
        assert!(Instant::now() < deadline, "etcd over TLS: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.get("/updater/tls").unwrap().as_deref(), Some(&b"yes"[..]));
    // Without the client certificate the server refuses the handshake.
    let anonymous = EtcdClient::new(&EtcdSettings {
        cert_file: None,
        key_file: None,
        ..settings.clone()
    })
    .unwrap();
    let e = anonymous.get("/updater/tls").unwrap_err().to_string();
    assert!(
        e.starts_with("no etcd endpoint answered: https://127.0.0.1:"),
        "{e}"
    );
    // Without our CA the server is not trusted.
    let e = EtcdClient::new(&EtcdSettings {
        ca_file: None,
        ..settings.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.ends_with("a client certificate needs etcd.ca_file too"),
        "{e}"
    );
    let e = EtcdClient::new(&EtcdSettings {
        cert_file: None,
        key_file: None,
        ca_file: None,
        ..settings
    })
    .unwrap()
    .get("/updater/tls")
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("UnknownIssuer") || e.contains("certificate"),
        "{e}"
    );
}

#[test]
fn a_release_that_never_came_up_halts_the_group_and_frees_the_slot() {
    let etcd = Etcd::start(1);
    let fleet = Fleet::new();
    let b = SimBox::new(
        0,
        &fleet.stream_url,
        "2.0",
        &etcd_config(&etcd.endpoints(), 1, 30),
    );
    let out = agent_once(&fleet, &b);
    assert_eq!(out["finalize"]["reboot"], "rebooting", "{out}");
    // B hangs before its health check; GRUB spends its try and falls back to A.
    assert_eq!(crate::util::grub_boots(&b.dev), "B");
    assert_eq!(crate::util::grub_boots(&b.dev), "A");
    let health = json(
        &b.command("A", "1.0", &fleet.hook, &fleet.timeline)
            .args(["--json", "health"])
            .output()
            .unwrap(),
    );
    assert_eq!(health["result"], "pending_never_came_up", "{health}");
    let status = json(
        &b.command("A", "1.0", &fleet.hook, &fleet.timeline)
            .args(["--json", "fleet", "status"])
            .output()
            .unwrap(),
    );
    assert_eq!(status["halt"]["version"], "2.0", "{status}");
    assert!(status["halt"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("never came up"));
    assert_eq!(status["held"], serde_json::json!([]));
    assert_eq!(status["local"]["held"], false);
}

#[test]
fn a_slot_put_whose_answer_was_lost_is_recognised_as_held() {
    let etcd = Etcd::start(1);
    let c = etcd.client();
    let lease = c.grant(Duration::from_secs(30)).unwrap();
    let key = "/updater/g/slots/0";
    assert!(c
        .put_if_absent(key, &["/updater/g/halt"], b"{}", lease)
        .unwrap());
    // The same request again (as after a member died before answering): still ours.
    assert!(c
        .put_if_absent(key, &["/updater/g/halt"], b"{}", lease)
        .unwrap());
    // Another lease does not get it.
    let other = c.grant(Duration::from_secs(30)).unwrap();
    assert!(!c
        .put_if_absent(key, &["/updater/g/halt"], b"{}", other)
        .unwrap());
}
