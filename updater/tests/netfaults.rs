//! Network faults (issue 6): a loopback HTTP server that drops the connection, stalls, sends a
//! wrong Content-Length (too long or too short), ignores Range, or swaps the payload between
//! requests — each at many points of the download. Every install either completes with a
//! verified, flipped slot or fails cleanly (booted slot untouched, passive slot unbootable), and
//! the rerun that follows finishes, re-fetching nothing before its last checkpoint.
use crate::util::{self, Device};
use bootctl::{SlotAttrs, SlotId};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use updater::install::{install, InstallOptions, NoProgress};
use updater::source::{HttpSource, ResumingReader, RetryPolicy, SourceError};
use updater::state::{InstallProgress, StateDir, INSTALL_PROGRESS};

/// What the server does to one request (a request past the end of the script gets the
/// server's `then` fault, [`Fault::Serve`] unless told otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
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
    /// Drop at byte `at`, then serve the other payload (the first one again after a second
    /// swap) from the next request on, with its own validators.
    Swap { at: usize },
    /// Send the headers, then one byte every `every_ms` milliseconds.
    Trickle { every_ms: u64 },
    /// Answer `302 Found` with this `Location`.
    Redirect { location: &'static str },
}

/// Which validators the server sends and whether it honours `If-Range`.
#[derive(Clone, Copy, Debug)]
struct Validators {
    etag: bool,
    last_modified: bool,
    if_range: bool,
}

impl Validators {
    /// What nginx does for a static file.
    const NGINX: Validators = Validators {
        etag: true,
        last_modified: true,
        if_range: true,
    };
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Request {
    path: String,
    /// Range start (0 without a Range header).
    start: u64,
    if_range: Option<String>,
    at: Instant,
}

pub(crate) struct FaultServer {
    port: u16,
    /// Every request, in order.
    log: Arc<Mutex<Vec<Request>>>,
}

struct Script {
    faults: Vec<Fault>,
    then: Fault,
    payload: Vec<u8>,
    other: Vec<u8>,
    swapped: bool,
    validators: Validators,
}

impl FaultServer {
    pub(crate) fn start(payload: Vec<u8>, other: Vec<u8>, faults: Vec<Fault>) -> FaultServer {
        FaultServer::build(payload, other, faults, Fault::Serve, Validators::NGINX)
    }

    fn build(
        payload: Vec<u8>,
        other: Vec<u8>,
        faults: Vec<Fault>,
        then: Fault,
        validators: Validators,
    ) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(Script {
            faults,
            then,
            payload,
            other,
            swapped: false,
            validators,
        }));
        let reqs = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (script, reqs) = (script.clone(), reqs.clone());
                std::thread::spawn(move || {
                    let _ = answer(conn, &script, &reqs);
                });
            }
        });
        FaultServer { port, log }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/payload", self.port)
    }

    /// Range start of each request, in order.
    pub(crate) fn starts(&self) -> Vec<u64> {
        self.log.lock().unwrap().iter().map(|r| r.start).collect()
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

/// The validators of the payload (`false`) or the other one (`true`).
fn etag(swapped: bool) -> &'static str {
    if swapped {
        "\"other-2\""
    } else {
        "\"first-1\""
    }
}

fn last_modified(swapped: bool) -> &'static str {
    if swapped {
        "Mon, 30 Nov 2026 09:00:00 GMT"
    } else {
        "Mon, 30 Nov 2026 08:00:00 GMT"
    }
}

fn answer(
    conn: TcpStream,
    script: &Mutex<Script>,
    log: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = Request {
        path: String::new(),
        start: 0,
        if_range: None,
        at: Instant::now(),
    };
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some(rest) = line.strip_prefix("GET ") {
            request.path = rest.split(' ').next().unwrap_or("").to_owned();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            // `bytes=N-` or `bytes=N-M` (the rest of the file is sent either way).
            request.start = v
                .split('-')
                .next()
                .unwrap_or("")
                .trim()
                .parse()
                .unwrap_or(0);
        }
        if lower.starts_with("if-range:") {
            request.if_range = Some(line["if-range:".len()..].trim().to_owned());
        }
    }
    // A patch looked up next to the payload (install::patch): none here, and the request
    // neither takes a fault nor shows in the log.
    if request.path.ends_with(".patch") {
        let mut conn = conn;
        return write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
    let (fault, body, swapped, validators) = {
        let mut s = script.lock().unwrap();
        log.lock().unwrap().push(request.clone());
        let fault = if s.faults.is_empty() {
            s.then
        } else {
            s.faults.remove(0)
        };
        let swapped = s.swapped;
        let body = if swapped {
            s.other.clone()
        } else {
            s.payload.clone()
        };
        if let Fault::Swap { .. } = fault {
            s.swapped = !s.swapped;
        }
        (fault, body, swapped, s.validators)
    };
    let mut conn = conn;
    let total = body.len();
    let mut headers = String::new();
    if validators.etag {
        headers += &format!("ETag: {}\r\n", etag(swapped));
    }
    if validators.last_modified {
        headers += &format!("Last-Modified: {}\r\n", last_modified(swapped));
    }
    // RFC 9110 §13.1.5: a range request whose If-Range does not match gets the whole file.
    let stale = validators.if_range
        && request
            .if_range
            .as_deref()
            .is_some_and(|v| v != etag(swapped) && v != last_modified(swapped));
    let start = if stale {
        0
    } else {
        (request.start as usize).min(total)
    };
    let whole = |conn: &mut TcpStream| {
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n{headers}Connection: close\r\n\r\n"
        )
    };
    let partial = |conn: &mut TcpStream, declared_end: usize| {
        if stale {
            return whole(conn);
        }
        write!(
            conn,
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\n{headers}Connection: close\r\n\r\n",
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
            whole(&mut conn)?;
            send_until(&mut conn, 0, at)?;
            conn.shutdown(Shutdown::Both)
        }
        Fault::Trickle { every_ms } => {
            partial(&mut conn, total)?;
            for i in start..total {
                send_until(&mut conn, i, i + 1)?;
                std::thread::sleep(Duration::from_millis(every_ms));
            }
            Ok(())
        }
        Fault::Redirect { location } => write!(
            conn,
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    }
}

const UNBOOTABLE: SlotAttrs = SlotAttrs {
    priority: 0,
    tries: 0,
    successful: false,
};

/// One install over HTTP with `attempts` tries per failure and short timeouts.
pub(crate) fn run_install(
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
            ..RetryPolicy::default()
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
    let before = server.starts().len();
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
        let reqs = server.starts()[before..].to_vec();
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

// Issue 14, defect 5: a download that cannot finish gives up within bounds, and one whose
// payload is replaced on the server starts over instead of failing on a hash.

/// Short waits, and no deadline or throughput limit in the way.
fn quick(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        deadline: Duration::from_secs(3600),
        min_bytes_per_sec: 0,
        throughput_window: Duration::from_secs(60),
    }
}

/// Reads `url` to the end through a [`ResumingReader`] in a thread; `None` when it has not
/// finished within `limit` (the code before issue 14 retried some faults forever).
fn read_all_within(
    url: &str,
    policy: RetryPolicy,
    limit: Duration,
) -> Option<std::io::Result<Vec<u8>>> {
    let url = url.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let source = HttpSource::new(&url, Duration::from_secs(2), Duration::from_secs(2));
        let read = ResumingReader::new(Box::new(source), 0, policy).and_then(|mut r| {
            let mut out = Vec::new();
            r.read_to_end(&mut out).map(|_| out)
        });
        let _ = tx.send(read);
    });
    rx.recv_timeout(limit).ok()
}

/// The typed error inside an I/O error from a source.
fn source_error(e: &std::io::Error) -> &SourceError {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<SourceError>())
        .unwrap_or_else(|| panic!("not a SourceError: {e}"))
}

/// A server that fails every request with `fault` after `script`.
fn failing_server(script: Vec<Fault>, then: Fault) -> (FaultServer, Vec<u8>) {
    let payload = util::image_bytes(64 << 10, 3);
    let server = FaultServer::build(payload.clone(), vec![], script, then, Validators::NGINX);
    (server, payload)
}

#[test]
fn gives_up_after_bounded_failures_when_the_server_closes_at_a_fixed_offset() {
    // Every request gets 206 and the bytes up to 20000, then the connection closes.
    let (server, _) = failing_server(vec![], Fault::Drop { at: 20_000 });
    let err = read_all_within(&server.url(), quick(5), Duration::from_secs(60))
        .expect("gave up within 60 s")
        .unwrap_err();
    match source_error(&err) {
        SourceError::GaveUp {
            attempts,
            offset,
            last,
            ..
        } => {
            assert_eq!((*attempts, *offset), (5, 20_000), "{err}");
            assert_eq!(last.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(server.starts(), [0, 20_000, 20_000, 20_000, 20_000]);
}

#[test]
fn failures_with_progress_in_between_do_not_add_up() {
    // Four drops in a row, each after new bytes: two attempts without progress are enough.
    let script = (1..=4).map(|i| Fault::Drop { at: i * 10_000 }).collect();
    let (server, payload) = failing_server(script, Fault::Serve);
    let read = read_all_within(&server.url(), quick(2), Duration::from_secs(60))
        .expect("finished within 60 s")
        .unwrap();
    assert!(read == payload);
    assert_eq!(server.starts(), [0, 10_000, 20_000, 30_000, 40_000]);
}

#[test]
fn the_wait_between_attempts_doubles() {
    let (server, _) = failing_server(vec![], Fault::Drop { at: 20_000 });
    let policy = RetryPolicy {
        initial_delay: Duration::from_millis(40),
        max_delay: Duration::from_secs(10),
        ..quick(6)
    };
    let err = read_all_within(&server.url(), policy, Duration::from_secs(60))
        .expect("gave up within 60 s")
        .unwrap_err();
    assert!(
        matches!(source_error(&err), SourceError::GaveUp { attempts: 6, .. }),
        "{err}"
    );
    // The wait after failure k is 40 ms · 2^(k-1), its upper half random: at least half of it.
    let at: Vec<Instant> = server.requests().iter().map(|r| r.at).collect();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps.len(), 5);
    for (k, gap) in gaps.iter().enumerate() {
        let least = Duration::from_millis(20 << k);
        assert!(*gap >= least, "wait {} was {gap:?}: {gaps:?}", k + 1);
    }
}

#[test]
fn a_trickling_server_is_cut_off_by_the_minimum_throughput() {
    // One byte every 20 ms (at most 50 bytes/s) against a minimum of 1000 bytes/s over 1 s.
    let (server, payload) = failing_server(vec![], Fault::Trickle { every_ms: 20 });
    let policy = RetryPolicy {
        min_bytes_per_sec: 1000,
        throughput_window: Duration::from_secs(1),
        ..quick(3)
    };
    let err = read_all_within(&server.url(), policy, Duration::from_secs(60))
        .expect("cut off within 60 s")
        .unwrap_err();
    match source_error(&err) {
        SourceError::TooSlow {
            offset,
            received,
            window,
            min_bytes_per_sec,
            ..
        } => {
            assert!(*received < 1000 && *offset < payload.len() as u64, "{err}");
            assert_eq!(
                (*window, *min_bytes_per_sec),
                (Duration::from_secs(1), 1000)
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(server.starts(), [0], "too slow is not retried");
    // The same policy passes a server that serves at full speed.
    let (server, payload) = failing_server(vec![], Fault::Serve);
    let read = read_all_within(&server.url(), policy, Duration::from_secs(60)).unwrap();
    assert!(read.unwrap() == payload);
}

#[test]
fn the_deadline_cuts_off_a_download_that_keeps_progressing() {
    let (server, payload) = failing_server(vec![], Fault::Trickle { every_ms: 20 });
    let policy = RetryPolicy {
        deadline: Duration::from_secs(1),
        ..quick(3)
    };
    let err = read_all_within(&server.url(), policy, Duration::from_secs(60))
        .expect("cut off within 60 s")
        .unwrap_err();
    match source_error(&err) {
        SourceError::DeadlineExceeded {
            offset, deadline, ..
        } => {
            assert!(*offset > 0 && *offset < payload.len() as u64, "{err}");
            assert_eq!(*deadline, Duration::from_secs(1));
        }
        other => panic!("{other}"),
    }
    assert_eq!(server.starts(), [0]);
}

/// A signed 2.0 payload and a 2.1 one with the same image size, and an offset in the middle of
/// the 2.0 frames.
fn two_payloads() -> (Vec<u8>, Vec<u8>, Vec<u8>, usize) {
    let image = util::image_bytes(256 << 10, 7);
    let payload = util::parts(&image, "2.0").assemble(&[util::test_key()]);
    let other_image = util::image_bytes(256 << 10, 8);
    let other = util::parts(&other_image, "2.1").assemble(&[util::test_key()]);
    let frames = util::layout(&payload).frames;
    let middle = frames + (payload.len() - frames) / 2;
    (payload, other, other_image, middle)
}

#[test]
fn a_payload_replaced_mid_download_starts_over_and_installs_the_new_one() {
    let (payload, other, other_image, middle) = two_payloads();
    let mut lm_only = Validators::NGINX;
    lm_only.etag = false;
    let mut no_if_range = Validators::NGINX;
    no_if_range.if_range = false;
    // Validators the server sends, and the If-Range the resumed request carries.
    for (validators, if_range) in [
        (Validators::NGINX, etag(false)),
        (lm_only, last_modified(false)),
        // A server that ignores If-Range: the new ETag on its 206 gives the change away.
        (no_if_range, etag(false)),
    ] {
        let dev = Device::new();
        let a_before = dev.slot_bytes(&SlotId::A);
        let server = FaultServer::build(
            payload.clone(),
            other.clone(),
            vec![Fault::Swap { at: middle }],
            Fault::Serve,
            validators,
        );
        let report =
            run_install(&dev, &server.url(), 3).unwrap_or_else(|e| panic!("{validators:?}: {e}"));
        assert_eq!(report.version, "2.1", "{validators:?}");
        assert_eq!(report.resumed_from_chunk, 0, "{validators:?}");
        assert!(
            dev.slot_bytes(&SlotId::B)[..other_image.len()] == other_image[..],
            "{validators:?}"
        );
        assert_eq!(dev.slot(&SlotId::B).attrs.tries, 1);
        assert_eq!(dev.slot_bytes(&SlotId::A), a_before);
        // The first download, its resume with If-Range, then the new one from the start.
        let reqs = server.requests();
        let seen: Vec<(u64, Option<&str>)> = reqs
            .iter()
            .map(|r| (r.start, r.if_range.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [(0, None), (middle as u64, Some(if_range)), (0, None)],
            "{validators:?}"
        );
    }
}

#[test]
fn a_payload_that_keeps_changing_fails_after_two_fresh_starts() {
    // Every request drops in the middle and swaps the payload.
    let (payload, other, _, middle) = two_payloads();
    let dev = Device::new();
    let a_before = dev.slot_bytes(&SlotId::A);
    let server = FaultServer::build(
        payload,
        other,
        vec![],
        Fault::Swap { at: middle },
        Validators::NGINX,
    );
    let err = run_install(&dev, &server.url(), 3).unwrap_err();
    match &err {
        updater::install::InstallError::Read { source, .. } => assert!(
            matches!(source_error(source), SourceError::PayloadChanged { .. }),
            "{err}"
        ),
        other => panic!("{other}"),
    }
    assert_eq!(
        format!("{:#}", anyhow::Error::from(err)),
        format!(
            "reading payload {url} at offset {middle}: {url} changed on the server during the download (ETag {} became {}): the bytes from offset {middle} on belong to another payload",
            etag(false),
            etag(true),
            url = server.url()
        )
    );
    let m = middle as u64;
    assert_eq!(server.starts(), [0, m, 0, m, 0, m]);
    assert_eq!(dev.slot(&SlotId::B).attrs, UNBOOTABLE);
    assert_eq!(dev.slot_bytes(&SlotId::A), a_before);
}

#[test]
fn a_redirect_is_followed_from_the_original_url_on_every_resume() {
    let script = vec![
        Fault::Redirect { location: "/moved" },
        Fault::Drop { at: 20_000 },
        Fault::Redirect { location: "/moved" },
    ];
    let (server, payload) = failing_server(script, Fault::Serve);
    let read = read_all_within(&server.url(), quick(3), Duration::from_secs(60)).unwrap();
    assert!(read.unwrap() == payload);
    let seen: Vec<(String, u64)> = server
        .requests()
        .into_iter()
        .map(|r| (r.path, r.start))
        .collect();
    let want = [
        ("/payload", 0),
        ("/moved", 0),
        ("/payload", 20_000),
        ("/moved", 20_000),
    ]
    .map(|(p, s)| (p.to_owned(), s));
    assert_eq!(seen, want);
}

#[test]
fn a_redirect_loop_fails_after_five_hops_without_retrying() {
    let (server, _) = failing_server(
        vec![],
        Fault::Redirect {
            location: "/payload",
        },
    );
    let err = read_all_within(&server.url(), quick(3), Duration::from_secs(60))
        .expect("finished within 60 s")
        .unwrap_err();
    assert!(
        matches!(
            source_error(&err),
            SourceError::TooManyRedirects { limit: 5, .. }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("{}: more than 5 redirects in a row", server.url())
    );
    assert_eq!(server.starts(), [0; 6]);
}
