//! `updater install SOURCE`: the command-line face of [`crate::install`].

use super::progress::{emit_json, reporter};
use super::GlobalArgs;
use crate::install::{install, InstallOptions};
use crate::source::{FileSource, HttpSource, Source};
use anyhow::Context;
use clap::Args;
use std::path::Path;
use std::time::Duration;

/// Install a signed payload into the passive slot and make it the next boot.
///
/// SOURCE is a payload file, a block device, or an http(s) URL (proxies from http_proxy,
/// https_proxy, NO_PROXY). Nothing is written before the signature, IMAGE_ID, version,
/// expiry and size have been checked; the passive slot is then marked unbootable, every chunk
/// is verified before it is written, the whole slot is read back and verified, and only then
/// is it flipped to boot next. Run the same command again after an interruption to resume.
///
/// Exit status: 0 when installed, 1 when refused or failed (one line says why), 2 on a usage
/// error.
#[derive(Args, Debug)]
pub struct InstallCmd {
    /// Payload file, block device, or http(s) URL.
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// Install even if the version is not newer than the booted one.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Install a version even if it is recorded as failed (see `updater status`).
    #[arg(long)]
    pub allow_failed: bool,
    /// Verify and write, but leave the slot unbootable (no GPT flip).
    #[arg(long)]
    pub no_flip: bool,
    /// Boot attempts the new slot gets before GRUB falls back [default: install.tries of
    /// the configuration, else 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=15))]
    pub tries: Option<u32>,
    /// Install even though the booted slot is not committed (its other slot may then be
    /// the only fallback, and this overwrites it).
    #[arg(long)]
    pub force: bool,
    /// Bytes written between durable checkpoints (resume points).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20, hide = true)]
    pub checkpoint_bytes: u64,
}

impl InstallCmd {
    /// Runs the command.
    pub fn run(&self, global: &GlobalArgs) -> anyhow::Result<()> {
        let result = self.install(global);
        if global.json {
            match &result {
                Ok(report) => {
                    let mut v = serde_json::to_value(report).expect("report serializes");
                    v["event"] = "result".into();
                    v["status"] = "ok".into();
                    emit_json(&v);
                }
                Err(e) => emit_json(&serde_json::json!({
                    "event": "result", "status": "error", "error": format!("{e:#}")
                })),
            }
        }
        let report = result?;
        if !global.json {
            println!(
                "installed {} into slot {} ({}){}",
                report.version,
                report.slot,
                report.partuuid,
                if report.flipped {
                    "; it boots next"
                } else {
                    "; not flipped (--no-flip)"
                }
            );
            if report.delta {
                println!(
                    "by delta: fetched {} bytes, reused {} bytes of the booted slot{}{}{}{}",
                    report.bytes_fetched,
                    report.bytes_reused,
                    match report.bytes_reused_from_target {
                        0 => String::new(),
                        n => format!(", {n} bytes of the target slot"),
                    },
                    match report.bytes_in_place {
                        0 => String::new(),
                        n => format!(", {n} bytes already in place"),
                    },
                    match report.patch_bytes_fetched {
                        0 => String::new(),
                        n => format!(", {} bytes from a {n}-byte patch", report.bytes_from_patch),
                    },
                    if report.ranges_ignored {
                        " (the server ignored Range: downloaded whole)"
                    } else {
                        ""
                    }
                );
            }
        }
        Ok(())
    }

    fn install(&self, global: &GlobalArgs) -> anyhow::Result<crate::install::InstallReport> {
        let device = global.device()?;
        let source: Box<dyn Source> =
            if self.source.starts_with("http://") || self.source.starts_with("https://") {
                Box::new(HttpSource::new(
                    &self.source,
                    Duration::from_secs(15),
                    Duration::from_secs(30),
                ))
            } else {
                Box::new(
                    FileSource::open(Path::new(&self.source))
                        .with_context(|| format!("opening payload {}", self.source))?,
                )
            };
        let opts = InstallOptions {
            allow_downgrade: self.allow_downgrade,
            allow_failed: self.allow_failed,
            flip: !self.no_flip,
            tries: self
                .tries
                .unwrap_or_else(|| u32::from(crate::config::Settings::load(&device.root).tries)),
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("reading the clock")?
                .as_secs(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            checkpoint_bytes: self.checkpoint_bytes,
            retry: crate::config::Settings::load(&device.root).download,
            force: self.force,
            lock_wait: global.lock_wait(),
        };
        let mut progress = reporter(global.json);
        install(&device, source, &opts, progress.as_mut())
            .with_context(|| format!("installing {} into {}", self.source, device.disk.display()))
    }
}
