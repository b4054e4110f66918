//! RAM-booted nodes (issue 11, DESIGN §12): a verified /usr fetched into RAM by the initramfs,
//! with bounded retries, and the record of what was booted.
//!
//! The verified fetch itself ([`fetch_into`], [`choose_release`], [`Expect`],
//! [`NetbootOptions`], [`NetbootError`]) lives in `ab_release::netboot`, shared with
//! `image-tools pxe`, and is re-exported here. This module owns what only the node does:
//!
//! [`run`] wraps the fetch in bounded retries: a server that cannot be reached (or fails mid-way)
//! is retried with doubling waits ([`RetryPolicy::backoff`]) and a console line per attempt; a
//! refused payload is not retried. Stream mode ([`Target::Stream`]) first fetches and verifies
//! the signed release stream and picks the newest release this node's rollout position allows
//! ([`choose_release`]).
//!
//! What was booted is recorded as [`record::NetbootRecord`] in `/run/updater/netboot.json`, which
//! `updater status` shows. [`machine_id_from_mac`] places a node without a machine id in the
//! rollout, and [`peak_rss_kib`] measures what the fetch cost.
//!
//! [`RetryPolicy::backoff`]: crate::source::RetryPolicy::backoff
//!
//! ```no_run
//! use updater::netboot::{run, Expect, NetbootOptions, Target};
//! use updater::payload::TrustedKeys;
//! let keys = TrustedKeys::load_dirs(&["/etc/updater/keys.d".into()])?;
//! let opts = NetbootOptions::new(Expect { image_id: Some("myos".into()), min_version: None });
//! let target = Target::Payload("http://boot.example/usr-1.2.payload".into());
//! let got = run(&target, &keys, &opts, "/run/netboot/usr.img".as_ref())?;
//! println!("verified {} {}", got.record.verified.version, got.record.verified.url);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod record;

pub use ab_release::netboot::{
    check_url, choose_release, fetch_into, one_line, partial_path, Expect, NetbootError,
    NetbootOptions, VerifiedImage, MAX_ATTEMPTS, MAX_URL_LEN, RAM_RESERVE,
};

use crate::payload::TrustedKeys;
use crate::source::HttpSource;
use crate::stream::{self, Position};
use record::NetbootRecord;
use std::path::Path;

/// Where the node boots from.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// This payload URL.
    Payload(String),
    /// The newest release of this signed stream open to the node.
    Stream {
        /// URL of `stream.json`.
        url: String,
        /// The channel the stream must be for.
        channel: String,
        /// The node's rollout position.
        position: Position,
    },
}

impl Target {
    /// The URL the node was told (payload or stream).
    pub fn url(&self) -> &str {
        match self {
            Target::Payload(u) | Target::Stream { url: u, .. } => u,
        }
    }
}

/// The verified image and what it is.
#[derive(Debug, Clone)]
pub struct Netbooted {
    /// What to record in `/run/updater/netboot.json`.
    pub record: NetbootRecord,
    /// Whole-fetch attempts made (1 when the first succeeded).
    pub attempts: u32,
}

/// Fetches `target` into `out` with bounded retries (see the module doc), logging each failed
/// attempt on the console.
pub fn run(
    target: &Target,
    keys: &TrustedKeys,
    opts: &NetbootOptions,
    out: &Path,
) -> Result<Netbooted, NetbootError> {
    let attempts = opts.attempts.clamp(1, MAX_ATTEMPTS);
    let mut attempt = 1;
    loop {
        match fetch_target(target, keys, opts, out) {
            Ok(record) => {
                return Ok(Netbooted {
                    record,
                    attempts: attempt,
                })
            }
            Err(NetbootError::Unreachable { url, source, .. }) if attempt < attempts => {
                let wait = opts.retry.backoff(attempt, 0.5);
                log::warn!(
                    "cannot fetch {url}: {}; attempt {attempt} of {attempts} failed, retrying in {:.1} s",
                    one_line(&source),
                    wait.as_secs_f64()
                );
                std::thread::sleep(wait);
                attempt += 1;
            }
            Err(NetbootError::Unreachable { url, source, .. }) => {
                return Err(NetbootError::Unreachable {
                    url,
                    attempts: attempt,
                    source,
                })
            }
            Err(e) => return Err(e),
        }
    }
}

/// One attempt at `target`.
fn fetch_target(
    target: &Target,
    keys: &TrustedKeys,
    opts: &NetbootOptions,
    out: &Path,
) -> Result<NetbootRecord, NetbootError> {
    match target {
        Target::Payload(url) => {
            let source = HttpSource::new(url, opts.connect_timeout, opts.read_timeout);
            let verified = fetch_into(Box::new(source), keys, opts, None, out)?;
            Ok(NetbootRecord::new(record::MODE_PAYLOAD, None, verified))
        }
        Target::Stream {
            url,
            channel,
            position,
        } => {
            let release = choose_release(url, channel, *position, keys, opts)?;
            let location = stream::resolve_location(url, &release.location);
            let source = HttpSource::new(&location, opts.connect_timeout, opts.read_timeout);
            let verified = fetch_into(Box::new(source), keys, opts, Some(&release), out)?;
            Ok(NetbootRecord::new(
                record::MODE_STREAM,
                Some(url.clone()),
                verified,
            ))
        }
    }
}

/// A stable machine id for the rollout position of a node without one: `mac:` and the lowest
/// non-zero MAC address among the interfaces under `sys_class_net` (`/sys/class/net`), the
/// loopback skipped. The same node gets the same position on every boot.
pub fn machine_id_from_mac(sys_class_net: &Path) -> Option<String> {
    let mut macs: Vec<String> = std::fs::read_dir(sys_class_net)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "lo")
        .filter_map(|e| crate::device::read_bounded(&e.path().join("address"), 64).ok())
        .map(|a| a.trim().to_ascii_lowercase())
        .filter(|a| a.len() == 17 && a != "00:00:00:00:00:00")
        .collect();
    macs.sort();
    macs.into_iter().next().map(|m| format!("mac:{m}"))
}

/// Peak resident memory of this process (`VmHWM` of `/proc/self/status`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = crate::device::read_bounded(Path::new("/proc/self/status"), 64 << 10).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests;
