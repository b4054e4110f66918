//! A loopback HTTP server that answers multi-range requests (`Range: bytes=a-b,c-d,…`) the ways
//! servers do and the ways they should not: `multipart/byteranges`, one coalesced part, the
//! whole payload, a part that was not asked for, or a body cut off midway. It logs each
//! request's `Range` header and the status it answered.
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// How the server answers a request for two or more ranges (single ranges are always
/// answered with a plain `206`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Multi {
    /// `206 multipart/byteranges`, one part per range.
    Parts,
    /// `206` with one `Content-Range` from the first range's start to the last range's end.
    Coalesce,
    /// `200` with the whole payload (a server without multi-range support).
    Whole,
    /// Multipart, but the second part's `Content-Range` (and bytes) start one byte late.
    WrongSecondPart,
    /// Multipart, the connection closed after this many bytes of the body.
    CutAfter(usize),
    /// Replace the payload by the other one (new ETag) first, then answer multipart.
    SwapThenParts,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub(crate) struct Logged {
    /// The `Range` header value (empty without one).
    pub range: String,
    /// The status answered.
    pub status: u16,
}

pub(crate) struct RangeServer {
    port: u16,
    log: Arc<Mutex<Vec<Logged>>>,
}

/// The ETag of the payload, then of the other one after a swap.
const ETAGS: [&str; 2] = ["\"range-server-1\"", "\"range-server-2\""];
const BOUNDARY: &str = "3d6b6a416f9b5";

impl RangeServer {
    /// Serves `payload`, answering multi-range requests as `script` says one after the other,
    /// then as `then`.
    pub(crate) fn start(payload: Vec<u8>, script: Vec<Multi>, then: Multi) -> RangeServer {
        RangeServer::with_other(payload, Vec::new(), script, then)
    }

    /// [`RangeServer::start`], with `other` served from a [`Multi::SwapThenParts`] on.
    pub(crate) fn with_other(
        payload: Vec<u8>,
        other: Vec<u8>,
        script: Vec<Multi>,
        then: Multi,
    ) -> RangeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script));
        let payload = Arc::new(Mutex::new((payload, other, 0)));
        let reqs = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (payload, script, reqs) = (payload.clone(), script.clone(), reqs.clone());
                std::thread::spawn(move || {
                    let _ = answer(conn, &payload, &script, then, &reqs);
                });
            }
        });
        RangeServer { port, log }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/payload", self.port)
    }

    pub(crate) fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

/// The ranges of a `bytes=…` value, each `a-b` or `a-`.
fn ranges(v: &str, total: u64) -> Vec<Range<u64>> {
    v.trim()
        .strip_prefix("bytes=")
        .unwrap_or("")
        .split(',')
        .filter_map(|r| {
            let (a, b) = r.trim().split_once('-')?;
            let a: u64 = a.parse().ok()?;
            let end = if b.is_empty() {
                total
            } else {
                b.parse::<u64>().ok()? + 1
            };
            Some(a..end.min(total))
        })
        .collect()
}

fn answer(
    conn: TcpStream,
    served: &Mutex<(Vec<u8>, Vec<u8>, usize)>,
    script: &Mutex<Vec<Multi>>,
    then: Multi,
    log: &Mutex<Vec<Logged>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let (mut range, mut if_range) = (String::new(), None);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("range:") {
            range = line["range:".len()..].trim().to_owned();
        }
        if lower.starts_with("if-range:") {
            if_range = Some(line["if-range:".len()..].trim().to_owned());
        }
    }
    // A patch looked up next to the payload (install::patch): none here, and the request
    // neither takes a script step nor shows in the log.
    if request_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|p| p.ends_with(".patch"))
    {
        let mut conn = conn;
        return write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
    let mode = if range.contains(',') {
        let mut s = script.lock().unwrap();
        Some(if s.is_empty() { then } else { s.remove(0) })
    } else {
        None
    };
    let (payload, etag) = {
        let mut served = served.lock().unwrap();
        if mode == Some(Multi::SwapThenParts) {
            let (a, b, swaps) = &mut *served;
            std::mem::swap(a, b);
            *swaps += 1;
        }
        (served.0.clone(), ETAGS[served.2 % 2])
    };
    let payload = &payload[..];
    let total = payload.len() as u64;
    let asked = ranges(&range, total);
    let stale = if_range.is_some_and(|v| v != etag);
    let mut conn = conn;
    let head = |status: &str, extra: String, len: usize| {
        format!("HTTP/1.1 {status}\r\nETag: {etag}\r\nContent-Length: {len}\r\n{extra}Connection: close\r\n\r\n")
    };
    let whole = || {
        let h = head("200 OK", String::new(), payload.len());
        (200, [h.as_bytes(), payload].concat())
    };
    let one_part = |r: Range<u64>| {
        let data = &payload[r.start as usize..r.end as usize];
        let cr = format!("Content-Range: bytes {}-{}/{total}\r\n", r.start, r.end - 1);
        let h = head("206 Partial Content", cr, data.len());
        (206, [h.as_bytes(), data].concat())
    };
    let (status, bytes): (u16, Vec<u8>) = match mode {
        _ if stale || asked.is_empty() => whole(),
        _ if asked.len() < 2 => one_part(asked[0].clone()),
        None => unreachable!("a single range"),
        Some(Multi::Whole) => whole(),
        Some(Multi::Coalesce) => one_part(asked[0].start..asked[asked.len() - 1].end),
        Some(m) => {
            let mut body = Vec::new();
            for (i, r) in asked.iter().enumerate() {
                let r = if m == Multi::WrongSecondPart && i == 1 {
                    r.start + 1..(r.end + 1).min(total)
                } else {
                    r.clone()
                };
                body.extend_from_slice(
                    format!(
                        "\r\n--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {}-{}/{total}\r\n\r\n",
                        r.start,
                        r.end - 1
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(&payload[r.start as usize..r.end as usize]);
            }
            body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
            let ct = format!("Content-Type: multipart/byteranges; boundary={BOUNDARY}\r\n");
            let h = head("206 Partial Content", ct, body.len());
            if let Multi::CutAfter(n) = m {
                body.truncate(n);
            }
            (206, [h.as_bytes(), &body].concat())
        }
    };
    log.lock().unwrap().push(Logged { range, status });
    conn.write_all(&bytes)?;
    conn.flush()?;
    conn.shutdown(Shutdown::Both)
}
