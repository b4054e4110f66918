//! `updater netboot`: the initramfs side of a RAM-booted node ([`crate::netboot`]), and the
//! RAM-boot line of `updater status`.
use super::GlobalArgs;
use crate::netboot::record::{NetbootRecord, RECORD_PATH};
use crate::netboot::{self, Expect, NetbootOptions, Target};
use crate::stream::Position;
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const NETBOOT_EXAMPLES: &str = "Examples (the initramfs of image-tools pxe runs the first):
  updater netboot --image-id myos --url http://boot/usr.payload \\
    --output /run/netboot/usr.img
  updater netboot --image-id myos --stream http://boot/stable/stream.json \\
    --wariness 0.3";

/// Fetch a signed /usr payload over HTTP(S) and verify every chunk of it into a file in RAM
/// (run by the initramfs of a RAM-booted node, which then mounts the file as /usr).
///
/// The payload's signature is checked against the keys in ROOT/usr/lib/updater/keys.d and
/// ROOT/etc/updater/keys.d, its compatible against --image-id, its version against
/// --min-version; only a payload that passes every check and whose every chunk verified is
/// left at NEW_ROOT/OUTPUT, and the boot is recorded in NEW_ROOT/run/updater/netboot.json for
/// `updater status` (NEW_ROOT: where the initramfs mounted the root it switches to). An unreachable server is retried --attempts times with doubling waits; a refused
/// payload is not retried and leaves nothing behind. With --stream, the newest release of the
/// signed stream that this node's rollout position allows is fetched.
///
/// Exit status: 0 when the image verified, 1 when it was refused or could not be fetched.
/// See docs/usage/pxe.md.
#[derive(Args, Debug)]
#[command(after_help = NETBOOT_EXAMPLES)]
pub struct NetbootCmd {
    /// The payload URL (http or https).
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "stream",
        conflicts_with = "stream"
    )]
    pub url: Option<String>,
    /// URL of a release stream's stream.json: boot the newest release open to this node.
    #[arg(long, value_name = "URL")]
    pub stream: Option<String>,
    /// The channel the stream must be for.
    #[arg(long, value_name = "NAME", default_value = "stable")]
    pub channel: String,
    /// Rollout position in 0..=1 (default: from --machine-id, else the MAC address).
    #[arg(long, value_name = "W", conflicts_with = "machine_id")]
    pub wariness: Option<f64>,
    /// Machine id for the rollout position (default: the first network interface's MAC).
    #[arg(long, value_name = "ID")]
    pub machine_id: Option<String>,
    /// The IMAGE_ID this node boots: the payload's compatible must equal it.
    #[arg(long, value_name = "ID")]
    pub image_id: String,
    /// Refuse payloads older than this version.
    #[arg(long, value_name = "VERSION")]
    pub min_version: Option<String>,
    /// The verified image, as the booted system will see it (a file on a tmpfs).
    #[arg(long, value_name = "FILE", default_value = "/run/netboot/usr.img")]
    pub output: PathBuf,
    /// Where the root the node switches to is mounted now: the image and the boot record
    /// are written below it.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub new_root: PathBuf,
    /// Whole-fetch attempts while the server cannot be reached.
    #[arg(long, value_name = "N", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=netboot::MAX_ATTEMPTS as i64))]
    pub attempts: u32,
    /// Longest wait between attempts, in seconds (waits double from one second).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub max_delay: u64,
}

impl NetbootCmd {
    /// Runs the command.
    pub fn run(&self, d: &GlobalArgs) -> anyhow::Result<ExitCode> {
        let target = self.target()?;
        let keys = crate::payload::load_trusted(&d.root, &Default::default())
            .context("loading the trusted keys")?;
        let mut opts = NetbootOptions::new(Expect {
            image_id: Some(self.image_id.clone()),
            min_version: self.min_version.clone(),
        });
        opts.attempts = self.attempts;
        opts.retry.max_delay = Duration::from_secs(self.max_delay.max(1));
        opts.retry.initial_delay = opts.retry.initial_delay.min(opts.retry.max_delay);
        if !self.output.is_absolute() {
            anyhow::bail!("--output {} is not an absolute path", self.output.display());
        }
        let output = self.new_root.join(self.output.strip_prefix("/")?);
        if let Some(dir) = output.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        log::info!("fetching {} into {}", target.url(), output.display());
        let got = netboot::run(&target, &keys, &opts, &output).map_err(|e| {
            let what = if e.is_transient() {
                "giving up"
            } else {
                "refused"
            };
            anyhow::anyhow!("{what}: {}; nothing to mount", netboot::one_line(&e))
        })?;
        let mut record = got.record;
        record.peak_rss_kib = netboot::peak_rss_kib();
        record.verified.image = self.output.clone();
        record.store(&self.new_root.join(RECORD_PATH))?;
        if d.json {
            println!("{}", serde_json::to_string(&record)?);
        } else {
            println!(
                "verified {} {} from {} ({} bytes, signed by {}, {} attempt(s)); \
                 peak memory {} KiB",
                record.verified.compatible,
                record.verified.version,
                record.verified.url,
                record.verified.image_size,
                record.verified.signed_by,
                got.attempts,
                record.peak_rss_kib.unwrap_or(0)
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    fn target(&self) -> anyhow::Result<Target> {
        let check = |u: &str| netboot::check_url(u).map_err(anyhow::Error::msg);
        if let Some(url) = &self.url {
            check(url)?;
            return Ok(Target::Payload(url.clone()));
        }
        let url = self
            .stream
            .clone()
            .context("--url or --stream is required")?;
        check(&url)?;
        crate::stream::check_channel(&self.channel)?;
        let position = match (self.wariness, &self.machine_id) {
            (Some(w), _) => Position::from_wariness(w)?,
            (None, Some(id)) => Position::from_machine_id(id),
            (None, None) => {
                let id = netboot::machine_id_from_mac(Path::new("/sys/class/net"))
                    .context("no --wariness or --machine-id, and no network interface's MAC address to place this node in the rollout")?;
                Position::from_machine_id(&id)
            }
        };
        Ok(Target::Stream {
            url,
            channel: self.channel.clone(),
            position,
        })
    }
}

/// `updater status` on a RAM-booted node: the line (or JSON) saying from where and which
/// version; `None` when the node is not RAM-booted (no record under the root).
pub fn ram_status(d: &GlobalArgs) -> anyhow::Result<Option<ExitCode>> {
    let Some(record) = NetbootRecord::load(&d.root)? else {
        return Ok(None);
    };
    if d.json {
        println!(
            "{}",
            serde_json::json!({ "ram_booted": true, "netboot": record })
        );
    } else {
        println!("{}", record.status_line());
        println!(
            "image: {} ({} bytes, sha256 {}), payload {} signed by {}",
            record.verified.image.display(),
            record.verified.image_size,
            record.verified.image_sha256,
            record.verified.payload_id,
            record.verified.signed_by
        );
    }
    Ok(Some(ExitCode::SUCCESS))
}
