//! `updater install http://…` against a small HTTP/1.1 server on 127.0.0.1 inside this test
//! binary: range requests, refusals, a dropped connection resumed in the same run, and a killed
//! install resumed by the next run.
use crate::util::{self, Device};
use bootctl::SlotId;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server answers a path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behaviour {
    /// The payload, honouring `Range: bytes=N-`.
    Serve,
    /// 404 Not Found.
    Missing,
    /// 200 with an HTML page.
    Html,
    /// The first request gets the headers and half the body, then the connection closes.
    DropOnce,
    /// Every request gets the headers and `n` body bytes, then the connection hangs.
    StallAfter(usize),
    /// Every request gets the headers and the body up to payload offset `n`, then the
    /// connection closes.
    CloseAt(usize),
    /// Requests for `/payload` get `302 Found` to this location; other paths are served.
    RedirectTo(&'static str),
}

struct Server {
    port: u16,
    payload: Arc<Mutex<Vec<u8>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// Range start of each request, in order.
    requests: Arc<Mutex<Vec<u64>>>,
}

impl Server {
    fn start(payload: Vec<u8>, behaviour: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = Server {
            port: listener.local_addr().unwrap().port(),
            payload: Arc::new(Mutex::new(payload)),
            behaviour: Arc::new(Mutex::new(behaviour)),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        let (payload, behaviour, requests) =
            (s.payload.clone(), s.behaviour.clone(), s.requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (payload, behaviour, requests) =
                    (payload.clone(), behaviour.clone(), requests.clone());
                std::thread::spawn(move || {
                    let _ = handle(conn, &payload, &behaviour, &requests);
                });
            }
        });
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/payload", self.port)
    }

    fn requests(&self) -> Vec<u64> {
        self.requests.lock().unwrap().clone()
    }
}

fn handle(
    conn: TcpStream,
    payload: &Mutex<Vec<u8>>,
    behaviour: &Mutex<Behaviour>,
    requests: &Mutex<Vec<u64>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut start = 0u64;
    let mut path = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some(rest) = line.strip_prefix("GET ") {
            path = rest.split(' ').next().unwrap_or("").to_owned();
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            // `bytes=START-` or `bytes=START-END`: answered from START to the payload's end
            // either way (a server may send more than asked; the updater reads on).
            start = v.trim().split('-').next().unwrap().parse().unwrap();
        }
    }
    requests.lock().unwrap().push(start);
    let mut conn = conn;
    let b = *behaviour.lock().unwrap();
    let body = payload.lock().unwrap().clone();
    match b {
        Behaviour::Missing => conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        ),
        Behaviour::Html => {
            let page = b"<!DOCTYPE html><html><body>Welcome to nginx!</body></html>";
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                page.len()
            )?;
            conn.write_all(page)
        }
        Behaviour::RedirectTo(location) if path == "/payload" => write!(
            conn,
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        _ if body.is_empty() => {
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
        Behaviour::Serve
        | Behaviour::DropOnce
        | Behaviour::StallAfter(_)
        | Behaviour::CloseAt(_)
        | Behaviour::RedirectTo(_) => {
            let total = body.len() as u64;
            let rest = &body[start as usize..];
            write!(
                conn,
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\nConnection: close\r\n\r\n",
                rest.len(),
                total - 1
            )?;
            match b {
                Behaviour::DropOnce => {
                    *behaviour.lock().unwrap() = Behaviour::Serve;
                    conn.write_all(&rest[..rest.len() / 2])?;
                    conn.flush()?;
                    conn.shutdown(std::net::Shutdown::Both)
                }
                Behaviour::StallAfter(n) => {
                    conn.write_all(&rest[..n.min(rest.len())])?;
                    conn.flush()?;
                    std::thread::sleep(Duration::from_secs(120));
                    Ok(())
                }
                Behaviour::CloseAt(n) => {
                    conn.write_all(&body[start as usize..n.max(start as usize)])?;
                    conn.flush()?;
                    conn.shutdown(std::net::Shutdown::Both)
                }
                _ => conn.write_all(rest),
            }
        }
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A payload big enough to span many chunks: 64 chunks of 4 KiB.
fn big_payload() -> (Vec<u8>, Vec<u8>) {
    let image = util::image_bytes(64 * 4096, 21);
    let bytes = util::parts(&image, "2.0").assemble(&[util::test_key()]);
    (image, bytes)
}

#[test]
fn installs_from_an_http_url_with_range_requests() {
    let dev = Device::new();
    let (image, bytes) = big_payload();
    let server = Server::start(bytes, Behaviour::Serve);
    let out = dev.updater(&["install", &server.url()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dev.slot_bytes(&SlotId::B)[..image.len()], image[..]);
    assert_eq!(dev.slot(&SlotId::B).attrs.tries, 1);
    assert_eq!(server.requests()[0], 0);
}

#[test]
fn refuses_a_url_that_answers_404_before_writing() {
    let dev = Device::new();
    let before = std::fs::read(dev.disk()).unwrap();
    let server = Server::start(vec![], Behaviour::Missing);
    let out = dev.updater(&["install", &server.url()]);
    assert_eq!(out.status.code(), Some(1));
    let url = server.url();
    assert_eq!(
        stderr(&out),
        format!(
            "updater: installing {url} into {}: reading payload {url} at offset 0: {url}: HTTP status 404 Not Found\n",
            dev.disk().display()
        )
    );
    assert_eq!(server.requests().len(), 1, "a 404 is not retried");
    assert!(std::fs::read(dev.disk()).unwrap() == before);
}

#[test]
fn refuses_a_url_that_answers_html_before_writing() {
    let dev = Device::new();
    let before = std::fs::read(dev.disk()).unwrap();
    let server = Server::start(vec![], Behaviour::Html);
    let out = dev.updater(&["install", &server.url()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "updater: installing {} into {}: not a payload: magic is \"<!DOCTYP\", expected \"UPDPAYLD\"\n",
            server.url(),
            dev.disk().display()
        )
    );
    assert!(std::fs::read(dev.disk()).unwrap() == before);
}

#[test]
fn resumes_with_a_range_request_when_the_connection_closes_mid_body() {
    let dev = Device::new();
    let (image, bytes) = big_payload();
    let half = (bytes.len() / 2) as u64;
    let server = Server::start(bytes, Behaviour::DropOnce);
    let out = dev.updater(&["--json", "install", &server.url()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.requests(), [0, half]);
    assert_eq!(dev.slot_bytes(&SlotId::B)[..image.len()], image[..]);
    let result: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(result["retries"], 1);
}

#[test]
fn rejects_each_bad_payload_over_http_as_from_a_file() {
    for case in util::bad_payloads() {
        let dev = Device::new();
        let before = dev.slot_bytes(&SlotId::A);
        let server = Server::start(case.bytes.clone(), Behaviour::Serve);
        let out = dev.updater(&["install", &server.url()]);
        assert_eq!(out.status.code(), Some(1), "{}", case.name);
        let want = format!(
            "updater: installing {} into {}: {}\n",
            server.url(),
            dev.disk().display(),
            case.error
        );
        assert_eq!(stderr(&out), want, "{}", case.name);
        assert_eq!(dev.slot_bytes(&SlotId::A), before, "{}", case.name);
    }
}

#[test]
fn a_killed_http_install_resumes_from_its_checkpoint_on_the_next_run() {
    let dev = Device::new();
    let (image, bytes) = big_payload();
    let l = util::layout(&bytes);
    let stall = l.frames + (bytes.len() - l.frames) * 3 / 4;
    let server = Server::start(bytes, Behaviour::StallAfter(stall));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_updater"))
        .arg("--disk")
        .arg(dev.disk())
        .arg("--root")
        .arg(dev.root())
        .args([
            "--booted",
            "A",
            "install",
            "--checkpoint-bytes",
            "4096",
            &server.url(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the stalled install has checkpointed most of what it received, then kill it.
    let progress = dev.root().join("var/lib/updater/install-progress.json");
    let mut next = 0;
    for _ in 0..400 {
        if let Ok(b) = std::fs::read(&progress) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                next = v["next_chunk"].as_u64().unwrap();
                if next >= 32 {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(next >= 32, "checkpoint reached chunk {next}");
    assert_eq!(dev.slot(&SlotId::B).attrs.priority, 0);

    *server.behaviour.lock().unwrap() = Behaviour::Serve;
    let out = dev.updater(&["--json", "install", &server.url()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let result: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let resumed = result["resumed_from_chunk"].as_u64().unwrap();
    assert!(
        resumed >= next,
        "resumed from {resumed}, checkpoint was {next}"
    );
    let requests = server.requests();
    assert!(
        *requests.last().unwrap() > l.frames as u64,
        "the second run asked for a range after the checkpoint: {requests:?}"
    );
    assert_eq!(dev.slot_bytes(&SlotId::B)[..image.len()], image[..]);
    assert_eq!(dev.slot(&SlotId::B).attrs.tries, 1);
}

/// Runs `cmd`; `None` if it has not exited within `limit` (it is then killed).
fn output_within(cmd: &mut std::process::Command, limit: Duration) -> Option<std::process::Output> {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > until {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child.wait_with_output().unwrap())
}

#[test]
fn download_attempts_from_the_configuration_bound_an_install() {
    // Issue 14 defect 5: a server that closes at the same offset every time was retried forever.
    let dev = Device::new();
    dev.write_root_file(
        "etc/updater/config.d/50-download.toml",
        "[download]\nattempts = 2\n",
    );
    let (_, bytes) = big_payload();
    let l = util::layout(&bytes);
    let at = l.frames + (bytes.len() - l.frames) / 2;
    let server = Server::start(bytes, Behaviour::CloseAt(at));
    let out = output_within(
        dev.command("A").args(["install", &server.url()]),
        Duration::from_secs(60),
    );
    let requests = server.requests();
    let out =
        out.unwrap_or_else(|| panic!("still installing after 60 s: {} requests", requests.len()));
    assert_eq!(out.status.code(), Some(1));
    let url = server.url();
    assert!(
        stderr(&out).contains(&format!(
            ": giving up on {url} at offset {at} after 2 attempts without progress: "
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(requests, [0, at as u64]);
    assert_eq!(dev.slot(&SlotId::B).attrs.priority, 0);
}

#[test]
fn installs_through_an_http_redirect() {
    let dev = Device::new();
    let (image, bytes) = big_payload();
    let server = Server::start(bytes, Behaviour::RedirectTo("/real/payload"));
    let out = dev.updater(&["install", &server.url()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.requests(), [0, 0]);
    assert_eq!(dev.slot_bytes(&SlotId::B)[..image.len()], image[..]);
}

#[test]
fn refuses_a_redirect_loop_after_five_hops_without_retrying() {
    let dev = Device::new();
    let before = std::fs::read(dev.disk()).unwrap();
    let (_, bytes) = big_payload();
    let server = Server::start(bytes, Behaviour::RedirectTo("/payload"));
    let out = output_within(
        dev.command("A").args(["install", &server.url()]),
        Duration::from_secs(60),
    )
    .expect("finished within 60 s");
    assert_eq!(out.status.code(), Some(1));
    let url = server.url();
    assert_eq!(
        stderr(&out),
        format!(
            "updater: installing {url} into {}: reading payload {url} at offset 0: {url}: more than 5 redirects in a row\n",
            dev.disk().display()
        )
    );
    assert_eq!(server.requests(), [0; 6]);
    assert!(std::fs::read(dev.disk()).unwrap() == before);
}
