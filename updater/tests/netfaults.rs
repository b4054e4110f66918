//! Network faults (issue 6): a loopback HTTP server that drops the connection, stalls, sends a
//! wrong Content-Length (too long or too short), ignores Range, or swaps the payload between
//! requests — each at many points of the download. Every install either completes with a
//! verified, flipped slot or fails cleanly (booted slot untouched, passive slot unbootable), and
//! the rerun that follows finishes, re-fetching nothing before its last checkpoint.
use crate::util::{self, Device};
use bootctl::{SlotAttrs, SlotId};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use updater::install::{install, InstallOptions, NoProgress};
use updater::source::{HttpSource, RetryPolicy};
use updater::state::{InstallProgress, StateDir, INSTALL_PROGRESS};

/// What the server does to one request (a request past the end of the script is served).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Answer correctly.
    Serve,
    /// Send the headers and `at` bytes of the payload (counted from the file start), then close.
    Drop { at: usize },
    /// Send up to byte `at`, then say nothing until the client gives up.
    Stall { at: usize },
    /// Declare the full length but send only up to byte `at` before closing.
    LongLength { at: usize },
    /// Declare a Content-Length that ends at byte `at`, send everything.
    ShortLength { at: usize },
    /// Answer 200 with the whole file whatever the Range said, dropping at byte `at`.
    IgnoreRange { at: usize },
    /// Serve the other payload from this request on, after dropping at byte `at`.
    Swap { at: usize },
}

struct FaultServer {
    port: u16,
    /// Range start of each request, in order.
    requests: Arc<Mutex<Vec<u64>>>,
}

struct Script {
    faults: Vec<Fault>,
    payload: Vec<u8>,
    other: Vec<u8>,
    swapped: bool,
}

impl FaultServer {
    fn start(payload: Vec<u8>, other: Vec<u8>, faults: Vec<Fault>) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(Script {
            faults,
            payload,
            other,
            swapped: false,
        }));
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (script, reqs) = (script.clone(), reqs.clone());
                std::thread::spawn(move || {
                    let _ = answer(conn, &script, &reqs);
                });
            }
        });
        FaultServer { port, requests }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/payload", self.port)
    }
}

fn answer(
    conn: TcpStream,
    script: &Mutex<Script>,
    requests: &Mutex<Vec<u64>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut start = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            start = v.trim().trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    let (fault, body) = {
        let mut s = script.lock().unwrap();
        requests.lock().unwrap().push(start as u64);
        let fault = if s.faults.is_empty() {
            Fault::Serve
        } else {
            s.faults.remove(0)
        };
        let body = if s.swapped {
            s.other.clone()
        } else {
            s.payload.clone()
        };
        if let Fault::Swap { .. } = fault {
            s.swapped = true;
        }
        (fault, body)
    };
    let mut conn = conn;
    let total = body.len();
    let start = start.min(total);
    let partial = |conn: &mut TcpStream, declared_end: usize| {
        write!(
            conn,
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\nConnection: close\r\n\r\n",
            declared_end.saturating_sub(start),
            total - 1
        )
    };
    let send_until = |conn: &mut TcpStream, from: usize, end: usize| -> std::io::Result<()> {
        conn.write_all(&body[from..end.clamp(from, total)])?;
        conn.flush()
    };
    match fault {
        Fault::Serve => {
            partial(&mut conn, total)?;
            send_until(&mut conn, start, total)
        }
        Fault::Drop { at } | Fault::LongLength { at } | Fault::Swap { at } => {
            partial(&mut conn, total)?;
            send_until(&mut conn, start, at)?;
            conn.shutdown(Shutdown::Both)
        }
        Fault::Stall { at } => {
            partial(&mut conn, total)?;
            send_until(&mut conn, start, at)?;
            std::thread::sleep(Duration::from_secs(5));
            Ok(())
        }
        Fault::ShortLength { at } => {
            partial(&mut conn, at.max(start))?;
            send_until(&mut conn, start, total)?;
            conn.shutdown(Shutdown::Both)
        }
        Fault::IgnoreRange { at } => {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
            )?;
            send_until(&mut conn, 0, at)?;
            conn.shutdown(Shutdown::Both)
        }
    }
}

const UNBOOTABLE: SlotAttrs = SlotAttrs {
    priority: 0,
    tries: 0,
    successful: false,
};

/// One install over HTTP with `attempts` tries per failure and short timeouts.
fn run_install(
    dev: &Device,
    url: &str,
    attempts: u32,
) -> Result<updater::install::InstallReport, updater::install::InstallError> {
    let source = Box::new(HttpSource::new(
        url,
        Duration::from_secs(2),
        Duration::from_millis(300),
    ));
    let opts = InstallOptions {
        allow_downgrade: false,
        allow_failed: false,
        flip: true,
        tries: 1,
        now: 1_800_000_000,
        threads: 2,
        checkpoint_bytes: 16 << 10,
        retry: RetryPolicy {
            attempts,
            initial_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        },
        force: false,
        lock_wait: std::time::Duration::ZERO,
    };
    install(&dev.spec(), source, &opts, &mut NoProgress)
}

/// Payload offset of chunk `n` of `payload`.
fn frame_offset(payload: &[u8], n: u32) -> u64 {
    let l = util::layout(payload);
    let e = &payload[l.table + 56 * n as usize..l.table + 56 * (n as usize + 1)];
    u64::from_le_bytes(e[8..16].try_into().unwrap())
}

#[derive(Default, Debug)]
struct Tally {
    faults: usize,
    completed_first_try: usize,
    failed_cleanly: usize,
    resumed: usize,
}

/// Runs one faulted install and its clean rerun, checking the invariants of each.
fn faulted_then_rerun(
    fault: Fault,
    image: &[u8],
    payload: &[u8],
    other_image: &[u8],
    other: &[u8],
    attempts: u32,
    tally: &mut Tally,
) {
    let dev = Device::new();
    let a_before = dev.slot_bytes(&SlotId::A);
    let server = FaultServer::start(payload.to_vec(), other.to_vec(), vec![fault]);
    tally.faults += 1;
    let swapped = matches!(fault, Fault::Swap { .. });
    match run_install(&dev, &server.url(), attempts) {
        Ok(report) => {
            // A swap before anything was trusted may legitimately yield the other, also signed,
            // payload; either way the slot holds exactly the image the report names.
            let want = if report.version == "2.1" {
                other_image
            } else {
                image
            };
            assert!(
                swapped || report.version == "2.0",
                "{fault:?}: installed {}",
                report.version
            );
            assert!(
                dev.slot_bytes(&SlotId::B)[..want.len()] == *want,
                "{fault:?}: completed but the slot differs from {}",
                report.version
            );
            assert_eq!(dev.slot(&SlotId::B).attrs.tries, 1, "{fault:?}");
            tally.completed_first_try += 1;
        }
        Err(e) => {
            let b = dev.slot(&SlotId::B).attrs;
            assert_eq!(b, UNBOOTABLE, "{fault:?}: failed ({e}) but slot B is {b}");
            tally.failed_cleanly += 1;
        }
    }
    assert_eq!(
        dev.slot_bytes(&SlotId::A),
        a_before,
        "{fault:?}: the booted slot changed"
    );
    if dev.slot(&SlotId::B).attrs.tries == 1 {
        return;
    }
    // The rerun serves whatever the server now serves (the other payload after a swap).
    let (want_image, want_payload) = if swapped {
        (other_image, other)
    } else {
        (image, payload)
    };
    let checkpoint: Option<InstallProgress> = StateDir::under_root(&dev.root())
        .load(INSTALL_PROGRESS)
        .unwrap();
    let before = server.requests.lock().unwrap().len();
    let report = run_install(&dev, &server.url(), 3)
        .unwrap_or_else(|e| panic!("{fault:?}: rerun failed: {e}"));
    assert_eq!(
        &dev.slot_bytes(&SlotId::B)[..want_image.len()],
        want_image,
        "{fault:?}: rerun"
    );
    assert_eq!(dev.slot(&SlotId::B).attrs.tries, 1);
    if let Some(cp) = checkpoint.filter(|cp| cp.next_chunk > 0 && !swapped) {
        tally.resumed += 1;
        assert_eq!(report.resumed_from_chunk, cp.next_chunk, "{fault:?}");
        // The prelude is read again (possibly retried); no frame before the checkpoint is.
        let reqs = server.requests.lock().unwrap()[before..].to_vec();
        let (frames_start, frames_from) = (
            util::layout(want_payload).frames as u64,
            frame_offset(want_payload, cp.next_chunk),
        );
        assert!(reqs.iter().all(|&r| r < frames_start || r >= frames_from), "{fault:?}: refetched frames before the checkpoint: {reqs:?}, frames from {frames_start}, checkpoint at {frames_from}");
    }
}

#[test]
fn every_network_fault_at_every_point_completes_or_fails_cleanly_and_resumes() {
    let image = util::image_bytes(256 << 10, 7);
    let payload = util::parts(&image, "2.0").assemble(&[util::test_key()]);
    let other_image = util::image_bytes(256 << 10, 8);
    let other = util::parts(&other_image, "2.1").assemble(&[util::test_key()]);
    let frames = util::layout(&payload).frames;
    // Points: inside the header, the manifest, the chunk table, and across the frames.
    let mut points = vec![10, 70, frames - 20];
    points.extend((1..=9).map(|i| frames + (payload.len() - frames) * i / 10));
    let mut tally = Tally::default();
    for &at in &points {
        for fault in [
            Fault::Drop { at },
            Fault::Stall { at },
            Fault::LongLength { at },
            Fault::ShortLength { at },
            Fault::IgnoreRange { at },
            Fault::Swap { at },
        ] {
            for attempts in [1, 3] {
                faulted_then_rerun(
                    fault,
                    &image,
                    &payload,
                    &other_image,
                    &other,
                    attempts,
                    &mut tally,
                );
            }
        }
    }
    eprintln!("netfaults: {tally:?}");
    assert_eq!(tally.faults, points.len() * 12);
    assert!(
        tally.failed_cleanly > 0 && tally.completed_first_try > 0 && tally.resumed > 0,
        "{tally:?}"
    );
}
