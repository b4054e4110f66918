//! A FleetLock server for the tests, written from the protocol document (Zincati's
//! `docs/development/fleetlock/protocol.md`): `POST /v1/pre-reboot` and `POST
//! /v1/steady-state`, each with the header `fleet-lock-protocol: true` and the body
//! `{"client_params":{"id":…,"group":…}}` (nothing else), a semaphore of N owned, recursive
//! slots per group; a full semaphore answers 409 with `{"kind":"failed_lock_semaphore_full",
//! "value":…}`. Any request that breaks the protocol is answered 400 and counted as a
//! violation. Every request and answer is recorded byte for byte. On 127.0.0.1, stopped on
//! drop.
#![allow(dead_code)]
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One request and its answer, as bytes.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub request: Vec<u8>,
    pub response: Vec<u8>,
}

#[derive(Default)]
struct State {
    slots: usize,
    holders: BTreeMap<String, BTreeSet<String>>,
    exchanges: Vec<Exchange>,
    violations: Vec<String>,
    redirect: bool,
}

pub struct FleetLockServer {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn answer(status: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn error(status: &str, kind: &str, value: &str) -> Vec<u8> {
    answer(
        status,
        &serde_json::json!({"kind": kind, "value": value}).to_string(),
        "",
    )
}

/// Reads one request: head up to the blank line, then Content-Length bytes of body.
fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len.min(64 * 1024)];
    s.read_exact(&mut body).ok()?;
    buf.extend_from_slice(&body);
    Some(buf)
}

/// The client parameters of a protocol-conforming request, or what is wrong with it.
fn check(request: &[u8]) -> Result<(String, String, String), String> {
    let text = String::from_utf8(request.to_vec()).map_err(|_| "not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no head")?;
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    let endpoint = match first {
        "POST /v1/pre-reboot HTTP/1.1" => "pre-reboot",
        "POST /v1/steady-state HTTP/1.1" => "steady-state",
        other => return Err(format!("bad request line {other:?}")),
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let protocol: Vec<_> = headers
        .iter()
        .filter(|(n, _)| n == "fleet-lock-protocol")
        .collect();
    if protocol.len() != 1 || protocol[0].1 != "true" {
        return Err(format!("fleet-lock-protocol header is {protocol:?}"));
    }
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("body is not an object")?;
    if obj.len() != 1 {
        return Err(format!("body has keys other than client_params: {v}"));
    }
    let p = obj["client_params"]
        .as_object()
        .ok_or("client_params is not an object")?;
    if p.len() != 2 {
        return Err(format!("client_params has other keys: {v}"));
    }
    let id = p.get("id").and_then(|x| x.as_str()).unwrap_or("");
    let group = p.get("group").and_then(|x| x.as_str()).unwrap_or("");
    if id.is_empty() {
        return Err("empty id".into());
    }
    if group.is_empty()
        || !group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(format!("bad group {group:?}"));
    }
    Ok((endpoint.into(), id.into(), group.into()))
}

fn serve(s: &mut TcpStream, state: &Mutex<State>) {
    let Some(request) = read_request(s) else {
        return;
    };
    let mut st = state.lock().unwrap();
    let response = if st.redirect {
        answer("307 Temporary Redirect", "", "Location: /v1/elsewhere\r\n")
    } else {
        match check(&request) {
            Err(why) => {
                st.violations.push(why.clone());
                error("400 Bad Request", "bad_request", &why)
            }
            Ok((endpoint, id, group)) => {
                let slots = st.slots;
                let held = st.holders.entry(group.clone()).or_default();
                if endpoint == "steady-state" {
                    held.remove(&id);
                    answer("200 OK", "", "")
                } else if held.contains(&id) || held.len() < slots {
                    held.insert(id);
                    answer("200 OK", "", "")
                } else {
                    error(
                        "409 Conflict",
                        "failed_lock_semaphore_full",
                        &format!("all {slots} reboot slots of group {group} are taken"),
                    )
                }
            }
        }
    };
    let _ = s.write_all(&response);
    st.exchanges.push(Exchange { request, response });
}

impl FleetLockServer {
    /// A server with `slots` slots per group on a free port.
    pub fn start(slots: usize) -> FleetLockServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::on(listener, slots)
    }

    /// A server with `slots` slots per group on `port`.
    pub fn start_on(port: u16, slots: usize) -> FleetLockServer {
        Self::on(TcpListener::bind(("127.0.0.1", port)).unwrap(), slots)
    }

    fn on(listener: TcpListener, slots: usize) -> FleetLockServer {
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            slots,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut s) = conn {
                    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                    serve(&mut s, &st);
                }
            }
        });
        FleetLockServer {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Answers every request with a redirect from now on.
    pub fn redirect_all(&self) {
        self.state.lock().unwrap().redirect = true;
    }

    /// Gives `id` a slot of `group` (another node's reboot).
    pub fn hold(&self, group: &str, id: &str) {
        let mut st = self.state.lock().unwrap();
        st.holders
            .entry(group.into())
            .or_default()
            .insert(id.into());
    }

    /// Frees `id`'s slot of `group`.
    pub fn free(&self, group: &str, id: &str) {
        let mut st = self.state.lock().unwrap();
        st.holders.entry(group.into()).or_default().remove(id);
    }

    pub fn holders(&self, group: &str) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.holders
            .get(group)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.state.lock().unwrap().exchanges.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }
}

impl Drop for FleetLockServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
