//! Reboot slots held in etcd v3, through its JSON gateway (`POST /v3/<service>/<method>`, keys
//! and values base64, 64-bit integers as strings): no gRPC stack in the static binary.
//!
//! Keys of a group `G` under the prefix `P` (default `/updater/`):
//!
//! - `P G/slots/I` for `I` in `0..N`: a slot, attached to the holder's lease, its value a
//!   [`SlotHolder`] (node, version, time). Taken with one transaction: *this slot key and the
//!   halt key both have `create_revision == 0`* → put with the lease. A holder that dies frees
//!   the slot when its lease's TTL runs out.
//! - `P G/halt`: the group's [`HaltRecord`], written without a lease when a box fails its
//!   health checks. While it exists the transaction above fails: no box of the group takes a
//!   slot until `updater fleet resume` deletes it.
//!
//! Each request goes to the endpoint that answered last, then to the others in order: a dead
//! member costs one connection attempt. TLS (own CA, client certificate) and password auth
//! (`/v3/auth/authenticate`, the token sent as `Authorization`) are as etcdctl has them.
use super::{FleetError, HaltRecord, MAX_HALT_RECORD};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Most bytes of one gateway answer read.
pub const MAX_RESPONSE: u64 = 1 << 20;
/// Most slots a group may have.
pub const MAX_SLOTS: u32 = 1000;
/// Longest slot value accepted.
pub const MAX_SLOT_VALUE: usize = 1024;
/// Longest password file read.
pub const MAX_PASSWORD_FILE: u64 = 4096;

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdSettings {
    /// Client URLs (`http(s)://host:port`), tried in order.
    pub endpoints: Vec<String>,
    /// Reboot slots per group (N).
    pub slots: u32,
    /// TTL of a slot's lease: must outlive a reboot plus the health deadline.
    pub lease_ttl: Duration,
    /// Key prefix.
    pub prefix: String,
    /// CA certificate(s) (PEM) trusted for `https` endpoints instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// User name for etcd auth.
    pub username: Option<String>,
    /// File holding the password of `username` (first line).
    pub password_file: Option<PathBuf>,
    /// Bound of one request.
    pub timeout: Duration,
}

impl Default for EtcdSettings {
    fn default() -> EtcdSettings {
        EtcdSettings {
            endpoints: Vec::new(),
            slots: 1,
            lease_ttl: Duration::from_secs(1800),
            prefix: "/updater/".into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The value of a held slot key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotHolder {
    /// The holder's node id.
    pub node: String,
    /// The version it reboots into.
    #[serde(default)]
    pub version: String,
    /// When it took the slot (Unix seconds).
    #[serde(default)]
    pub at: u64,
}

/// One held slot as `updater fleet status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldSlot {
    /// The slot key.
    pub key: String,
    /// Who holds it (`None`: a value this updater cannot read).
    pub holder: Option<SlotHolder>,
    /// The lease it is attached to.
    pub lease: i64,
}

/// A gateway client over a list of endpoints.
#[derive(Debug)]
pub struct EtcdClient {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    username: Option<String>,
    password_file: Option<PathBuf>,
    token: RefCell<Option<String>>,
    current: Cell<usize>,
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default()
}

/// A JSON int64 (a string on the gateway; absent means 0).
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn read_pem(path: &PathBuf) -> Result<Vec<u8>, FleetError> {
    let max = 1 << 20;
    let f = std::fs::File::open(path).map_err(|e| FleetError::Tls {
        file: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, max + 1), &mut buf).map_err(|e| {
        FleetError::Tls {
            file: path.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    if buf.len() as u64 > max {
        return Err(FleetError::Tls {
            file: path.display().to_string(),
            reason: format!("larger than {max} bytes"),
        });
    }
    Ok(buf)
}

/// The rustls configuration of `s`'s CA and client certificate, when any is set.
fn tls_config(s: &EtcdSettings) -> Result<Option<Arc<rustls::ClientConfig>>, FleetError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if s.ca_file.is_none() && s.cert_file.is_none() && s.key_file.is_none() {
        return Ok(None);
    }
    let tls = |file: &PathBuf, reason: String| FleetError::Tls {
        file: file.display().to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    match &s.ca_file {
        Some(ca) => {
            let pem = read_pem(ca)?;
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| tls(ca, e.to_string()))?;
                roots.add(c).map_err(|e| tls(ca, e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(tls(ca, "no certificate in it".into()));
            }
        }
        None => {
            let f = s
                .cert_file
                .as_ref()
                .or(s.key_file.as_ref())
                .expect("one is set");
            return Err(tls(f, "a client certificate needs etcd.ca_file too".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FleetError::Tls {
            file: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    let config = match (&s.cert_file, &s.key_file) {
        (Some(cert), Some(key)) => {
            let pem = read_pem(cert)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(cert, e.to_string()))?;
            let key_pem = read_pem(key)?;
            let k = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| tls(key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| tls(cert, e.to_string()))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(f), None) | (None, Some(f)) => {
            return Err(tls(
                f,
                "etcd.cert_file and etcd.key_file go together".into(),
            ))
        }
    };
    Ok(Some(Arc::new(config)))
}

/// Whether a gateway error means "try another member" (unavailable, no leader, timed out).
fn member_trouble(code: i64, message: &str) -> bool {
    code == 14
        || code == 4
        || message.contains("leader")
        || message.contains("timed out")
        || message.contains("too many requests")
}

impl EtcdClient {
    /// A client of `s.endpoints` (at least one, each `http://` or `https://`).
    pub fn new(s: &EtcdSettings) -> Result<EtcdClient, FleetError> {
        if s.endpoints.is_empty() {
            return Err(FleetError::NoEndpoints);
        }
        for e in &s.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(FleetError::BadUrl { url: e.clone() });
            }
        }
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(s.timeout.min(Duration::from_secs(5)))
            .timeout(s.timeout)
            .redirects(0);
        if let Some(c) = tls_config(s)? {
            b = b.tls_config(c);
        }
        Ok(EtcdClient {
            endpoints: s
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_owned())
                .collect(),
            agent: b.build(),
            username: s.username.clone(),
            password_file: s.password_file.clone(),
            token: RefCell::new(None),
            current: Cell::new(0),
        })
    }

    fn post_one(&self, endpoint: &str, path: &str, body: &Value) -> Result<Value, Attempt> {
        let url = format!("{endpoint}{path}");
        let mut req = self
            .agent
            .post(&url)
            .set("Content-Type", "application/json");
        if let Some(t) = self.token.borrow().as_ref() {
            req = req.set("Authorization", t);
        }
        let (status, resp) = match req.send_string(&body.to_string()) {
            Ok(r) => (r.status(), r),
            Err(ureq::Error::Status(s, r)) => (s, r),
            Err(e) => return Err(Attempt::Member(format!("{url}: {e}"))),
        };
        let mut buf = Vec::new();
        // The gateway ends an error answer with an HTTP trailer ureq's chunk decoder rejects
        // after the whole JSON body: keep what was read and let the JSON decide.
        let read = std::io::Read::read_to_end(
            &mut std::io::Read::take(resp.into_reader(), MAX_RESPONSE + 1),
            &mut buf,
        );
        if let Err(e) = read {
            if serde_json::from_slice::<Value>(&buf).is_err() {
                return Err(Attempt::Member(format!("{url}: reading the answer: {e}")));
            }
        }
        if buf.len() as u64 > MAX_RESPONSE {
            return Err(Attempt::Fatal(FleetError::Etcd {
                url,
                reason: format!("answer larger than {MAX_RESPONSE} bytes"),
            }));
        }
        let v: Value = serde_json::from_slice(&buf).map_err(|_| {
            Attempt::Member(format!(
                "{url}: status {status}, not JSON: {}",
                String::from_utf8_lossy(&buf[..buf.len().min(120)])
            ))
        })?;
        if let Some(msg) = v.get("error").and_then(Value::as_str) {
            let code = int(&v["code"]);
            let msg: String = msg.chars().take(300).collect();
            if code == 16 || msg.contains("invalid auth token") {
                return Err(Attempt::Auth(format!("{url}: {msg}")));
            }
            if msg.contains("authentication failed")
                || msg.contains("user name is empty")
                || msg.contains("permission denied")
            {
                return Err(Attempt::Fatal(FleetError::Auth {
                    reason: format!("{url}: {msg}"),
                }));
            }
            if member_trouble(code, &msg) {
                return Err(Attempt::Member(format!("{url}: {msg}")));
            }
            return Err(Attempt::Fatal(FleetError::Etcd { url, reason: msg }));
        }
        if !(200..300).contains(&status) {
            return Err(Attempt::Member(format!("{url}: status {status}")));
        }
        Ok(v)
    }

    fn authenticate(&self) -> Result<(), FleetError> {
        let (Some(name), Some(file)) = (&self.username, &self.password_file) else {
            return Ok(());
        };
        let password =
            crate::device::read_bounded(file, MAX_PASSWORD_FILE).map_err(|e| FleetError::Auth {
                reason: format!("reading the password file {}: {e}", file.display()),
            })?;
        let password = password.lines().next().unwrap_or("").to_owned();
        *self.token.borrow_mut() = None;
        let v = self.call_raw(
            "/v3/auth/authenticate",
            &json!({"name": name, "password": password}),
        )?;
        let token = v["token"].as_str().ok_or_else(|| FleetError::Auth {
            reason: format!("etcd gave user {name} no token"),
        })?;
        *self.token.borrow_mut() = Some(token.to_owned());
        Ok(())
    }

    fn call_raw(&self, path: &str, body: &Value) -> Result<Value, FleetError> {
        let n = self.endpoints.len();
        let start = self.current.get();
        let mut tried = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            match self.post_one(&self.endpoints[i], path, body) {
                Ok(v) => {
                    self.current.set(i);
                    return Ok(v);
                }
                Err(Attempt::Member(why)) => tried.push(why),
                Err(Attempt::Auth(why)) => return Err(FleetError::Auth { reason: why }),
                Err(Attempt::Fatal(e)) => return Err(e),
            }
        }
        Err(FleetError::EtcdUnreachable { tried })
    }

    /// One gateway call, authenticating first (and once more on an expired token) when a user
    /// is configured.
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, FleetError> {
        if self.username.is_some() && self.token.borrow().is_none() {
            self.authenticate()?;
        }
        match self.call_raw(path, body) {
            Err(FleetError::Auth { .. }) if self.username.is_some() => {
                self.authenticate()?;
                self.call_raw(path, body)
            }
            r => r,
        }
    }

    /// Grants a lease of `ttl`; returns its id.
    pub fn grant(&self, ttl: Duration) -> Result<i64, FleetError> {
        let v = self.call(
            "/v3/lease/grant",
            &json!({"TTL": ttl.as_secs().to_string()}),
        )?;
        match int(&v["ID"]) {
            0 => Err(FleetError::Etcd {
                url: "/v3/lease/grant".into(),
                reason: format!("no lease id in {v}"),
            }),
            id => Ok(id),
        }
    }

    /// Refreshes lease `id`; `None` when it no longer exists (expired or revoked).
    pub fn keepalive(&self, id: i64) -> Result<Option<i64>, FleetError> {
        let v = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))?;
        Ok(match int(&v["result"]["TTL"]) {
            ttl if ttl > 0 => Some(ttl),
            _ => None,
        })
    }

    /// Revokes lease `id` (and deletes the keys attached to it); a lease already gone is fine.
    pub fn revoke(&self, id: i64) -> Result<(), FleetError> {
        match self.call("/v3/lease/revoke", &json!({"ID": id.to_string()})) {
            Ok(_) => Ok(()),
            Err(FleetError::Etcd { reason, .. }) if reason.contains("lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every key under `prefix`: (key, value, lease).
    pub fn range_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>, i64)>, FleetError> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let v = self.call(
            "/v3/kv/range",
            &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&end)}),
        )?;
        Ok(kvs(&v["kvs"]))
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, FleetError> {
        let v = self.call("/v3/kv/range", &json!({"key": b64(key.as_bytes())}))?;
        Ok(kvs(&v["kvs"]).into_iter().next().map(|(_, v, _)| v))
    }

    /// Puts `key` = `value` (no lease).
    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), FleetError> {
        self.call(
            "/v3/kv/put",
            &json!({"key": b64(key.as_bytes()), "value": b64(value)}),
        )?;
        Ok(())
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool, FleetError> {
        let v = self.call("/v3/kv/deleterange", &json!({"key": b64(key.as_bytes())}))?;
        Ok(int(&v["deleted"]) > 0)
    }

    /// Atomically: if neither `key` nor any of `absent` exists, put `key` = `value` attached to
    /// `lease`. Returns whether `key` is now attached to `lease`: put by this call, or by an
    /// earlier attempt of it whose answer was lost (a member died after committing it, and the
    /// request was repeated on the next endpoint).
    pub fn put_if_absent(
        &self,
        key: &str,
        absent: &[&str],
        value: &[u8],
        lease: i64,
    ) -> Result<bool, FleetError> {
        let compare: Vec<Value> = std::iter::once(key)
            .chain(absent.iter().copied())
            .map(|k| {
                json!({"key": b64(k.as_bytes()), "target": "CREATE",
                       "result": "EQUAL", "create_revision": "0"})
            })
            .collect();
        let v = self.call(
            "/v3/kv/txn",
            &json!({
                "compare": compare,
                "success": [{"request_put": {"key": b64(key.as_bytes()), "value": b64(value),
                                             "lease": lease.to_string()}}],
                "failure": [{"request_range": {"key": b64(key.as_bytes())}}],
            }),
        )?;
        if v["succeeded"].as_bool().unwrap_or(false) {
            return Ok(true);
        }
        let existing = kvs(&v["responses"][0]["response_range"]["kvs"]);
        Ok(existing.first().is_some_and(|(_, _, l)| *l == lease))
    }
}

fn kvs(v: &Value) -> Vec<(String, Vec<u8>, i64)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&unb64(&kv["key"])).into_owned(),
                        unb64(&kv["value"]),
                        int(&kv["lease"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

enum Attempt {
    /// This member failed: try the next.
    Member(String),
    /// The token was refused.
    Auth(String),
    /// etcd answered with an error that another member would repeat.
    Fatal(FleetError),
}

/// What taking a slot gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Slot `key` is held with `lease`.
    Held {
        /// The slot key.
        key: String,
        /// The lease.
        lease: i64,
    },
    /// The group is halted.
    Halted(HaltRecord),
    /// All slots are held by others.
    Full {
        /// Who holds them.
        holders: Vec<String>,
    },
}

/// The reboot slots of one group.
#[derive(Debug)]
pub struct EtcdSlots {
    /// The gateway client.
    pub client: EtcdClient,
    prefix: String,
    group: String,
    slots: u32,
    ttl: Duration,
    node: String,
}

impl EtcdSlots {
    /// The slots of `group` as `s` describes them, for `node`.
    pub fn new(s: &EtcdSettings, group: &str, node: &str) -> Result<EtcdSlots, FleetError> {
        super::fleetlock::check_group(group)?;
        Ok(EtcdSlots {
            client: EtcdClient::new(s)?,
            prefix: s.prefix.clone(),
            group: group.to_owned(),
            slots: s.slots.clamp(1, MAX_SLOTS),
            ttl: s.lease_ttl,
            node: node.to_owned(),
        })
    }

    fn slots_prefix(&self) -> String {
        format!("{}{}/slots/", self.prefix, self.group)
    }

    /// The halt record's key.
    pub fn halt_key(&self) -> String {
        format!("{}{}/halt", self.prefix, self.group)
    }

    /// The held slots of the group.
    pub fn held(&self) -> Result<Vec<HeldSlot>, FleetError> {
        Ok(self
            .client
            .range_prefix(&self.slots_prefix())?
            .into_iter()
            .map(|(key, value, lease)| HeldSlot {
                key,
                holder: (value.len() <= MAX_SLOT_VALUE)
                    .then(|| serde_json::from_slice(&value).ok())
                    .flatten(),
                lease,
            })
            .collect())
    }

    /// The group's halt record, if any.
    pub fn halt_record(&self) -> Result<Option<HaltRecord>, FleetError> {
        self.client
            .get(&self.halt_key())?
            .map(|b| HaltRecord::parse(&b))
            .transpose()
    }

    /// Takes a slot for `version` at `now`, or keeps the one this node holds (a take is
    /// recursive: the slot's lease is refreshed).
    pub fn take(&self, version: &str, now: u64) -> Result<Take, FleetError> {
        if let Some(h) = self.halt_record()? {
            return Ok(Take::Halted(h));
        }
        let held = self.held()?;
        if let Some(mine) = held
            .iter()
            .find(|h| h.holder.as_ref().is_some_and(|h| h.node == self.node))
        {
            if self.client.keepalive(mine.lease)?.is_some() {
                return Ok(Take::Held {
                    key: mine.key.clone(),
                    lease: mine.lease,
                });
            }
        }
        let lease = self.client.grant(self.ttl)?;
        let value = serde_json::to_vec(&SlotHolder {
            node: self.node.clone(),
            version: version.to_owned(),
            at: now,
        })
        .expect("a slot holder serializes");
        let halt = self.halt_key();
        for i in 0..self.slots {
            let key = format!("{}{i}", self.slots_prefix());
            if self
                .client
                .put_if_absent(&key, &[halt.as_str()], &value, lease)?
            {
                return Ok(Take::Held { key, lease });
            }
        }
        self.client.revoke(lease)?;
        if let Some(h) = self.halt_record()? {
            return Ok(Take::Halted(h));
        }
        Ok(Take::Full {
            holders: self
                .held()?
                .into_iter()
                .map(|h| h.holder.map_or_else(|| "?".into(), |h| h.node))
                .collect(),
        })
    }

    /// The node's slot count and the TTL of its leases.
    pub fn describe(&self) -> String {
        format!(
            "group {} ({} slots, lease TTL {}s)",
            self.group,
            self.slots,
            self.ttl.as_secs()
        )
    }

    /// Writes the group's halt record.
    pub fn halt(&self, record: &HaltRecord) -> Result<(), FleetError> {
        let bytes = record.to_bytes();
        debug_assert!(bytes.len() <= MAX_HALT_RECORD);
        self.client.put(&self.halt_key(), &bytes)
    }
}
