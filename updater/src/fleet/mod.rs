//! Fleet reboots (issue 9): a box of a fleet reboots into a new release only while it holds a
//! reboot slot of its group, so a fleet installing one release never reboots all at once, and
//! a release that fails its health checks on one box stops the others.
//!
//! Two [`Gate`]s, chosen by `reboot.strategy`:
//!
//! - `fleetlock`: a FleetLock server ([`fleetlock`]) holds the slots; `pre-reboot` before the
//!   reboot, `steady-state` once `updater health` committed the new slot.
//! - `etcd`: N slots per group in etcd ([`etcd`]), each taken atomically with a lease whose
//!   TTL outlives the reboot plus the health deadline. `updater health` refreshes the lease
//!   after the reboot (its id is in `fleet.json`), releases it after the commit, and on a
//!   failed check writes the group's [`HaltRecord`]; no box takes a slot while it exists.
//!
//! What the box remembers is `fleet.json` in the state directory ([`FleetState`]): whether it
//! holds a slot (and its lease and key), the refusals in a row (for the backoff), and a halt
//! record not written yet. Windows compose with the lock ([`window_step`]): the lock is taken
//! only inside a maintenance window, and given back if the window closes before the reboot.
//!
//! Callers hold the updater lock ([`crate::lock`]) around these calls; this module takes none.
pub mod etcd;
pub mod fleetlock;
pub mod identity;

use crate::config::{RebootStrategy, Settings};
use crate::state::StateDir;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File name of [`FleetState`].
pub const FLEET_STATE: &str = "fleet.json";
/// Format version of [`FleetState`].
pub const FLEET_STATE_VERSION: u32 = 1;
/// Largest halt record accepted (bytes of JSON).
pub const MAX_HALT_RECORD: usize = 4096;
/// Longest reason kept in a halt record.
pub const MAX_HALT_REASON: usize = 1024;
/// Longest node id or version in a halt record.
pub const MAX_HALT_FIELD: usize = 256;

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// A group name the FleetLock pattern (`[a-zA-Z0-9.-]+`) refuses.
    #[error("bad fleet group {group:?}: must be 1-256 of a-z A-Z 0-9 . -")]
    BadGroup {
        /// The group (at most 64 characters).
        group: String,
    },
    /// An empty or over-long node id.
    #[error("bad node id {id:?}: must be 1-256 bytes")]
    BadNodeId {
        /// The id (at most 64 characters).
        id: String,
    },
    /// A server URL that is not `http(s)://`.
    #[error("bad server URL {url:?}: must start with http:// or https://")]
    BadUrl {
        /// The URL.
        url: String,
    },
    /// Strategy `fleetlock` without `fleetlock.url`.
    #[error("reboot strategy fleetlock needs fleetlock.url")]
    NoFleetLockUrl,
    /// Strategy `etcd` without `etcd.endpoints`.
    #[error("reboot strategy etcd needs etcd.endpoints")]
    NoEndpoints,
    /// The FleetLock server could not be reached.
    #[error("reaching the FleetLock server {url}: {reason}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The FleetLock server refused to release the slot.
    #[error("the FleetLock server refused steady-state (status {status}): {value}")]
    ReleaseRefused {
        /// The status.
        status: u16,
        /// Its explanation.
        value: String,
    },
    /// No etcd endpoint answered.
    #[error("no etcd endpoint answered: {}", tried.join("; "))]
    EtcdUnreachable {
        /// Each endpoint tried, with its failure.
        tried: Vec<String>,
    },
    /// etcd answered with an error.
    #[error("etcd {url}: {reason}")]
    Etcd {
        /// The request URL.
        url: String,
        /// etcd's message.
        reason: String,
    },
    /// etcd authentication failed.
    #[error("etcd authentication: {reason}")]
    Auth {
        /// Why.
        reason: String,
    },
    /// A TLS file could not be used.
    #[error("etcd TLS {file}: {reason}")]
    Tls {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// A halt record larger than [`MAX_HALT_RECORD`].
    #[error("halt record of {len} bytes exceeds the maximum of {MAX_HALT_RECORD}")]
    HaltTooLarge {
        /// Its size.
        len: usize,
    },
    /// A halt record that does not parse or breaks a bound.
    #[error("bad halt record: {reason}")]
    BadHalt {
        /// Why.
        reason: String,
    },
    /// `updater fleet resume` under strategy `fleetlock` (halt records are etcd's).
    #[error("only reboot strategy etcd keeps a halt record (this box's is fleetlock)")]
    NoHaltRecords,
    /// The node id could not be made.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// `fleet.json` could not be read or written.
    #[error("fleet state: {0}")]
    State(String),
}

/// Why a group is halted: a box failed its health checks on a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltRecord {
    /// The node that failed.
    pub node: String,
    /// The version it failed on.
    pub version: String,
    /// The health verdict.
    pub reason: String,
    /// When (Unix seconds).
    pub at: u64,
}

impl HaltRecord {
    /// A record with each field cut to its bound.
    pub fn new(node: &str, version: &str, reason: &str, at: u64) -> HaltRecord {
        let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>();
        HaltRecord {
            node: cut(node, MAX_HALT_FIELD),
            version: cut(version, MAX_HALT_FIELD),
            reason: cut(reason, MAX_HALT_REASON),
            at,
        }
    }

    /// Parses a stored record: at most [`MAX_HALT_RECORD`] bytes, each field within its bound.
    pub fn parse(bytes: &[u8]) -> Result<HaltRecord, FleetError> {
        if bytes.len() > MAX_HALT_RECORD {
            return Err(FleetError::HaltTooLarge { len: bytes.len() });
        }
        let r: HaltRecord = serde_json::from_slice(bytes).map_err(|e| FleetError::BadHalt {
            reason: e.to_string(),
        })?;
        for (field, value, max) in [
            ("node", &r.node, MAX_HALT_FIELD),
            ("version", &r.version, MAX_HALT_FIELD),
            ("reason", &r.reason, MAX_HALT_REASON),
        ] {
            if value.chars().count() > max {
                return Err(FleetError::BadHalt {
                    reason: format!("{field} longer than {max} characters"),
                });
            }
        }
        Ok(r)
    }

    /// The stored form (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a halt record serializes")
    }
}

impl std::fmt::Display for HaltRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {} failed version {} at {}: {}",
            self.node, self.version, self.at, self.reason
        )
    }
}

/// Validated fleet settings (`[fleet]`, `[fleetlock]`, `[etcd]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetSettings {
    /// The group whose slots this box shares.
    pub group: String,
    /// The node id; `None`: the app-specific id of `/etc/machine-id`.
    pub node_id: Option<String>,
    /// Longest wait after refusals in a row.
    pub max_backoff: Duration,
    /// The FleetLock server's base URL.
    pub fleetlock_url: Option<String>,
    /// Bound of one FleetLock request.
    pub fleetlock_timeout: Duration,
    /// etcd.
    pub etcd: etcd::EtcdSettings,
}

impl Default for FleetSettings {
    fn default() -> FleetSettings {
        FleetSettings {
            group: "default".into(),
            node_id: None,
            max_backoff: Duration::from_secs(3600),
            fleetlock_url: None,
            fleetlock_timeout: Duration::from_secs(15),
            etcd: etcd::EtcdSettings::default(),
        }
    }
}

/// `[fleet]` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFragment {
    /// The group (`[a-zA-Z0-9.-]+`).
    pub group: Option<String>,
    /// Overrides the node id.
    pub node_id: Option<String>,
    /// Longest wait between lock attempts after refusals, in seconds.
    pub max_backoff_secs: Option<u64>,
}

/// `[fleetlock]` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetLockFragment {
    /// The server's base URL.
    pub url: Option<String>,
    /// Seconds one request may take.
    pub timeout_secs: Option<u64>,
}

/// `[etcd]` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdFragment {
    /// Client URLs.
    pub endpoints: Option<Vec<String>>,
    /// Reboot slots per group.
    pub slots: Option<u32>,
    /// Lease TTL in seconds.
    pub lease_ttl_secs: Option<u64>,
    /// Key prefix.
    pub prefix: Option<String>,
    /// CA file (PEM).
    pub ca_file: Option<String>,
    /// Client certificate (PEM).
    pub cert_file: Option<String>,
    /// Client key (PEM).
    pub key_file: Option<String>,
    /// etcd user.
    pub username: Option<String>,
    /// File holding the user's password.
    pub password_file: Option<String>,
    /// Seconds one request may take.
    pub timeout_secs: Option<u64>,
}

/// Largest `fleet.max_backoff_secs` (a day).
pub const MAX_BACKOFF_SECS: u64 = 86_400;
/// Largest `etcd.lease_ttl_secs` (a day).
pub const MAX_LEASE_TTL_SECS: u64 = 86_400;

/// Applies the fleet sections of one drop-in; bad values are warnings and keep the default.
pub fn apply_fragments(
    s: &mut FleetSettings,
    warnings: &mut Vec<String>,
    fleet: Option<&FleetFragment>,
    lock: Option<&FleetLockFragment>,
    etcd: Option<&EtcdFragment>,
    file: &Path,
) {
    let mut warn = |w: String| warnings.push(format!("{}: {w}, ignored", file.display()));
    let mut secs = |key: &str, v: Option<u64>, min: u64, max: u64, slot: &mut Duration| match v {
        Some(v) if (min..=max).contains(&v) => *slot = Duration::from_secs(v),
        Some(v) => warn(format!("{key} = {v} out of range {min}-{max}")),
        None => {}
    };
    let f = fleet.cloned().unwrap_or_default();
    let l = lock.cloned().unwrap_or_default();
    let e = etcd.cloned().unwrap_or_default();
    secs(
        "fleet.max_backoff_secs",
        f.max_backoff_secs,
        1,
        MAX_BACKOFF_SECS,
        &mut s.max_backoff,
    );
    secs(
        "fleetlock.timeout_secs",
        l.timeout_secs,
        1,
        300,
        &mut s.fleetlock_timeout,
    );
    secs(
        "etcd.lease_ttl_secs",
        e.lease_ttl_secs,
        2,
        MAX_LEASE_TTL_SECS,
        &mut s.etcd.lease_ttl,
    );
    secs(
        "etcd.timeout_secs",
        e.timeout_secs,
        1,
        300,
        &mut s.etcd.timeout,
    );
    let mut warn = |w: String| warnings.push(format!("{}: {w}, ignored", file.display()));
    if let Some(g) = f.group {
        match fleetlock::check_group(&g) {
            Ok(()) => s.group = g,
            Err(e) => warn(format!("fleet.group: {e}")),
        }
    }
    if let Some(id) = f.node_id {
        if id.is_empty() || id.len() > fleetlock::MAX_PARAM_LEN {
            warn("fleet.node_id must be 1-256 bytes".into());
        } else {
            s.node_id = Some(id);
        }
    }
    let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
    if let Some(u) = l.url {
        if url_ok(&u) {
            s.fleetlock_url = Some(u);
        } else {
            warn(format!("fleetlock.url {u:?} is not http(s)"));
        }
    }
    if let Some(list) = e.endpoints {
        if list.is_empty() || list.len() > 32 || !list.iter().all(|u| url_ok(u)) {
            warn("etcd.endpoints must be 1-32 http(s) URLs".into());
        } else {
            s.etcd.endpoints = list;
        }
    }
    match e.slots {
        Some(n) if (1..=etcd::MAX_SLOTS).contains(&n) => s.etcd.slots = n,
        Some(n) => warn(format!(
            "etcd.slots = {n} out of range 1-{}",
            etcd::MAX_SLOTS
        )),
        None => {}
    }
    if let Some(p) = e.prefix {
        if p.starts_with('/') && p.ends_with('/') && p.len() <= 128 {
            s.etcd.prefix = p;
        } else {
            warn(format!(
                "etcd.prefix {p:?} must start and end with / (at most 128 bytes)"
            ));
        }
    }
    for (v, slot) in [
        (e.ca_file, &mut s.etcd.ca_file),
        (e.cert_file, &mut s.etcd.cert_file),
        (e.key_file, &mut s.etcd.key_file),
        (e.password_file, &mut s.etcd.password_file),
    ] {
        if let Some(p) = v {
            *slot = Some(PathBuf::from(p));
        }
    }
    if let Some(u) = e.username {
        s.etcd.username = Some(u);
    }
}

/// What `fleet.json` remembers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetState {
    /// [`FLEET_STATE_VERSION`].
    pub format_version: u32,
    /// The strategy that took the slot (`fleetlock` or `etcd`).
    pub strategy: String,
    /// Whether this box holds a reboot slot.
    pub held: bool,
    /// The etcd lease of the slot.
    pub lease: Option<i64>,
    /// The etcd slot key.
    pub slot_key: Option<String>,
    /// Refusals in a row.
    pub failures: u32,
    /// No lock request before this time (Unix seconds).
    pub next_try: u64,
    /// The last refusal or error.
    pub last: String,
    /// A halt record etcd did not take yet (written on the agent's next tick).
    pub halt_pending: Option<HaltRecord>,
}

/// The coordinator of the strategy.
#[derive(Debug)]
pub enum Gate {
    /// A FleetLock server.
    FleetLock(fleetlock::FleetLockClient),
    /// Slots in etcd.
    Etcd(etcd::EtcdSlots),
}

/// The answer to a lock attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "lock")]
pub enum Verdict {
    /// The slot is held: reboot.
    Granted,
    /// Not now; the next attempt is at `retry_at`.
    Refused {
        /// Why (the server's answer, the halt record, or the error).
        reason: String,
        /// Unix seconds.
        retry_at: u64,
    },
}

/// What the agent does about the lock before a reboot (see [`window_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Take (or keep) the slot, then reboot.
    Take,
    /// The window closed with the slot held: give it back and wait.
    Release,
    /// Outside the window: wait.
    Wait,
}

/// Composes windows and the lock: `window` is `None` when no window is configured (any
/// time), else whether one is open now.
pub fn window_step(window: Option<bool>, held: bool) -> Step {
    match (window, held) {
        (None | Some(true), _) => Step::Take,
        (Some(false), true) => Step::Release,
        (Some(false), false) => Step::Wait,
    }
}

/// The wait after `failures` refusals in a row: the interval doubled per refusal, at most
/// `max`.
pub fn backoff(failures: u32, interval: Duration, max: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    interval
        .saturating_mul(factor)
        .min(max)
        .max(Duration::from_secs(1))
}

/// Whether `strategy` is coordinated by a fleet gate.
pub fn is_fleet(strategy: RebootStrategy) -> bool {
    matches!(strategy, RebootStrategy::Fleetlock | RebootStrategy::Etcd)
}

/// The fleet gate of one box, with its state.
#[derive(Debug)]
pub struct Fleet {
    gate: Gate,
    state: StateDir,
    node: String,
    interval: Duration,
    max_backoff: Duration,
    strategy: &'static str,
}

fn state_err(e: crate::state::StateError) -> FleetError {
    FleetError::State(e.to_string())
}

impl Fleet {
    /// The gate of the box under `root`, or `None` when its strategy is not a fleet one.
    pub fn for_root(root: &Path, settings: &Settings) -> Result<Option<Fleet>, FleetError> {
        let s = &settings.fleet;
        let node = || identity::node_id(root, s.node_id.as_deref());
        let (gate, strategy) = match settings.reboot {
            RebootStrategy::Fleetlock => {
                let url = s
                    .fleetlock_url
                    .as_deref()
                    .ok_or(FleetError::NoFleetLockUrl)?;
                (
                    Gate::FleetLock(fleetlock::FleetLockClient::new(
                        url,
                        &node()?,
                        &s.group,
                        s.fleetlock_timeout,
                    )?),
                    "fleetlock",
                )
            }
            RebootStrategy::Etcd => (
                Gate::Etcd(etcd::EtcdSlots::new(&s.etcd, &s.group, &node()?)?),
                "etcd",
            ),
            _ => return Ok(None),
        };
        Ok(Some(Fleet {
            gate,
            state: StateDir::under_root(root),
            node: node()?,
            interval: settings.agent.interval,
            max_backoff: s.max_backoff,
            strategy,
        }))
    }

    /// This box's node id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The gate.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// What `fleet.json` says (default when absent or unreadable).
    pub fn state(&self) -> FleetState {
        self.state
            .read::<FleetState>(FLEET_STATE)
            .ok()
            .and_then(crate::state::Loaded::into_option)
            .unwrap_or_default()
    }

    fn store(&self, mut st: FleetState) -> Result<(), FleetError> {
        st.format_version = FLEET_STATE_VERSION;
        st.strategy = self.strategy.into();
        self.state.store(FLEET_STATE, &st).map_err(state_err)
    }

    /// Asks for the reboot slot before rebooting into `version` (recursive: a held slot is
    /// kept and its lease refreshed). A refusal or an unreachable server is a
    /// [`Verdict::Refused`] with the backoff applied; an attempt before the backoff ends asks
    /// nobody.
    pub fn take(&self, version: &str, now: u64) -> Result<Verdict, FleetError> {
        let mut st = self.state();
        if !st.held && now < st.next_try {
            return Ok(Verdict::Refused {
                reason: format!("backing off after {} refusals: {}", st.failures, st.last),
                retry_at: st.next_try,
            });
        }
        let refused: Result<(), String> = match &self.gate {
            Gate::FleetLock(c) => match c.pre_reboot() {
                Ok(fleetlock::Answer::Granted { .. }) => Ok(()),
                Ok(fleetlock::Answer::Refused {
                    status,
                    kind,
                    value,
                }) => Err(format!(
                    "pre-reboot refused (status {status}{}): {value}",
                    kind.map(|k| format!(", {k}")).unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            },
            Gate::Etcd(slots) => match slots.take(version, now) {
                Ok(etcd::Take::Held { key, lease }) => {
                    st.lease = Some(lease);
                    st.slot_key = Some(key);
                    Ok(())
                }
                Ok(etcd::Take::Halted(h)) => {
                    // A slot held from before the halt is given back: the group stops.
                    if let (true, Some(lease)) = (st.held, st.lease) {
                        if slots.client.revoke(lease).is_ok() {
                            st.held = false;
                            st.lease = None;
                            st.slot_key = None;
                        }
                    }
                    Err(format!("group halted: {h}"))
                }
                Ok(etcd::Take::Full { holders }) => Err(format!(
                    "all slots of the group are held (by {})",
                    holders.join(", ")
                )),
                Err(e) => Err(e.to_string()),
            },
        };
        match refused {
            Ok(()) => {
                st.held = true;
                st.failures = 0;
                st.next_try = 0;
                st.last.clear();
                self.store(st)?;
                Ok(Verdict::Granted)
            }
            Err(reason) => {
                st.failures = st.failures.saturating_add(1);
                st.next_try = now + backoff(st.failures, self.interval, self.max_backoff).as_secs();
                st.last = reason.chars().take(MAX_HALT_REASON).collect();
                let retry_at = st.next_try;
                self.store(st)?;
                Ok(Verdict::Refused { reason, retry_at })
            }
        }
    }

    /// Gives the slot back when `fleet.json` says one is held (FleetLock `steady-state`, or
    /// the etcd lease revoked, which deletes the slot key). Returns whether one was released.
    pub fn release(&self) -> Result<bool, FleetError> {
        let mut st = self.state();
        if !st.held {
            return Ok(false);
        }
        match &self.gate {
            Gate::FleetLock(c) => match c.steady_state()? {
                fleetlock::Answer::Granted { .. } => {}
                fleetlock::Answer::Refused { status, value, .. } => {
                    return Err(FleetError::ReleaseRefused { status, value })
                }
            },
            Gate::Etcd(slots) => {
                if let Some(lease) = st.lease {
                    slots.client.revoke(lease)?;
                }
            }
        }
        st.held = false;
        st.lease = None;
        st.slot_key = None;
        self.store(st)?;
        Ok(true)
    }

    /// Refreshes the held slot's etcd lease (after the reboot, before the health checks).
    /// Returns `Some(false)` when the lease was lost (expired: the slot may be someone
    /// else's now), `None` when nothing is held or the gate has no lease.
    pub fn refresh(&self) -> Result<Option<bool>, FleetError> {
        let mut st = self.state();
        let (Gate::Etcd(slots), true, Some(lease)) = (&self.gate, st.held, st.lease) else {
            return Ok(None);
        };
        if slots.client.keepalive(lease)?.is_some() {
            return Ok(Some(true));
        }
        st.held = false;
        st.lease = None;
        st.slot_key = None;
        self.store(st)?;
        Ok(Some(false))
    }

    /// Writes the group's halt record (etcd only; FleetLock has none). When etcd cannot take
    /// it now, it is kept in `fleet.json` and [`Fleet::flush_halt`] writes it later.
    pub fn halt(&self, version: &str, reason: &str, now: u64) -> Result<bool, FleetError> {
        let Gate::Etcd(slots) = &self.gate else {
            return Ok(false);
        };
        let record = HaltRecord::new(&self.node, version, reason, now);
        if let Err(e) = slots.halt(&record) {
            let mut st = self.state();
            st.halt_pending = Some(record);
            self.store(st)?;
            return Err(e);
        }
        Ok(true)
    }

    /// Writes a halt record left over from a failed [`Fleet::halt`].
    pub fn flush_halt(&self) -> Result<(), FleetError> {
        let mut st = self.state();
        let (Gate::Etcd(slots), Some(record)) = (&self.gate, st.halt_pending.clone()) else {
            return Ok(());
        };
        slots.halt(&record)?;
        st.halt_pending = None;
        self.store(st)
    }
}

/// What `updater fleet status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// `fleetlock` or `etcd`.
    pub strategy: String,
    /// This box's node id.
    pub node: String,
    /// Its group.
    pub group: String,
    /// What this box remembers (`fleet.json`).
    pub local: FleetState,
    /// etcd: slots per group.
    pub slots: Option<u32>,
    /// etcd: the held slots of the group.
    pub held: Vec<etcd::HeldSlot>,
    /// etcd: the group's halt record.
    pub halt: Option<HaltRecord>,
}

impl Fleet {
    /// The box's view and, for etcd, the group's slots and halt record.
    pub fn status(&self, settings: &FleetSettings) -> Result<FleetStatus, FleetError> {
        let mut s = FleetStatus {
            strategy: self.strategy.into(),
            node: self.node.clone(),
            group: settings.group.clone(),
            local: self.state(),
            slots: None,
            held: Vec::new(),
            halt: None,
        };
        if let Gate::Etcd(slots) = &self.gate {
            s.slots = Some(settings.etcd.slots);
            s.held = slots.held()?;
            s.halt = slots.halt_record()?;
        }
        Ok(s)
    }

    /// Deletes the group's halt record (etcd); returns it when there was one (`None` also
    /// for a record this updater cannot read, which is deleted all the same).
    pub fn resume(&self) -> Result<Option<HaltRecord>, FleetError> {
        let Gate::Etcd(slots) = &self.gate else {
            return Err(FleetError::NoHaltRecords);
        };
        let key = slots.halt_key();
        let Some(bytes) = slots.client.get(&key)? else {
            return Ok(None);
        };
        slots.client.delete(&key)?;
        Ok(HaltRecord::parse(&bytes).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_is_taken_only_inside_a_window_and_given_back_when_it_closes() {
        assert_eq!(window_step(None, false), Step::Take);
        assert_eq!(window_step(None, true), Step::Take);
        assert_eq!(window_step(Some(true), false), Step::Take);
        assert_eq!(window_step(Some(true), true), Step::Take);
        assert_eq!(window_step(Some(false), true), Step::Release);
        assert_eq!(window_step(Some(false), false), Step::Wait);
    }

    #[test]
    fn backoff_doubles_per_refusal_up_to_the_maximum() {
        let s = Duration::from_secs;
        let got: Vec<u64> = (1..=6)
            .map(|n| backoff(n, s(60), s(600)).as_secs())
            .collect();
        assert_eq!(got, [60, 120, 240, 480, 600, 600]);
        assert_eq!(backoff(u32::MAX, s(60), s(600)), s(600));
    }

    #[test]
    fn a_halt_record_round_trips() {
        let r = HaltRecord::new("n1", "2.0", "health check 10-app failed (exit 1)", 7);
        assert_eq!(HaltRecord::parse(&r.to_bytes()).unwrap(), r);
    }

    #[test]
    fn halt_records_out_of_bounds_are_refused() {
        let good = HaltRecord::new("n1", "2.0", "x", 7).to_bytes();
        let too_big = vec![b' '; MAX_HALT_RECORD + 1];
        assert!(matches!(
            HaltRecord::parse(&too_big),
            Err(FleetError::HaltTooLarge { len }) if len == MAX_HALT_RECORD + 1
        ));
        let long_node = String::from_utf8(good.clone())
            .unwrap()
            .replace("\"n1\"", &format!("\"{}\"", "n".repeat(MAX_HALT_FIELD + 1)));
        assert_eq!(
            HaltRecord::parse(long_node.as_bytes())
                .unwrap_err()
                .to_string(),
            "bad halt record: node longer than 256 characters"
        );
        let extra = String::from_utf8(good.clone())
            .unwrap()
            .replace("\"at\":7", "\"at\":7,\"x\":1");
        assert!(matches!(
            HaltRecord::parse(extra.as_bytes()),
            Err(FleetError::BadHalt { .. })
        ));
        let no_at = String::from_utf8(good).unwrap().replace(",\"at\":7", "");
        assert!(matches!(
            HaltRecord::parse(no_at.as_bytes()),
            Err(FleetError::BadHalt { .. })
        ));
    }

    #[test]
    fn a_new_record_cuts_each_field_to_its_bound() {
        let r = HaltRecord::new("n", "v", &"r".repeat(5000), 1);
        assert_eq!(r.reason.len(), MAX_HALT_REASON);
        assert!(HaltRecord::parse(&r.to_bytes()).is_ok());
    }

    #[test]
    fn fleet_keys_apply_and_bad_values_warn() {
        let mut s = FleetSettings::default();
        let mut w = Vec::new();
        apply_fragments(
            &mut s,
            &mut w,
            Some(&FleetFragment {
                group: Some("workers".into()),
                node_id: None,
                max_backoff_secs: Some(0),
            }),
            None,
            Some(&EtcdFragment {
                endpoints: Some(vec!["http://127.0.0.1:2379".into()]),
                slots: Some(2),
                prefix: Some("updater".into()),
                ..Default::default()
            }),
            Path::new("50.toml"),
        );
        assert_eq!(s.group, "workers");
        assert_eq!(s.etcd.slots, 2);
        assert_eq!(s.etcd.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(
            w,
            [
                "50.toml: fleet.max_backoff_secs = 0 out of range 1-86400, ignored",
                "50.toml: etcd.prefix \"updater\" must start and end with / (at most 128 bytes), ignored"
            ]
        );
    }
}
