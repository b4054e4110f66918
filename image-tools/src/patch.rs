//! `image-tools patch`: make a signed patch from an older image to a version 2 payload, for the
//! devices that still run that older image (`docs/patch-format.md`).
//!
//! The payload's signature is checked with the signing key's own public half (so the patch
//! and the payload come from the same publisher), the new image is checked against the
//! payload's manifest, and the base version comes from the old image's `lib/os-release` (or
//! `--from-version`). The work is done by [`ab_payload::patch::write`].
use crate::pack::{image_os_release, load_secret_keys, now_or_source_date_epoch, resolve};
use ab_payload::patch::write::{make_patch, PatchOptions, DEFAULT_PATCH_LEVEL};
use ab_payload::{self as payload, TrustedKeys};
use anyhow::Context;
use clap::Args;
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::PathBuf;

/// Make a patch that turns a device running OLD.img into the image of NEW.payload.
///
/// The patch holds, for the chunks of the payload that OLD lacks, zstd frames compressed
/// against the old bytes of the same region, so a device that runs OLD fetches it instead of
/// those chunks' frames. Publish it next to the payload, named
/// `<payload file name>.from-<OLD's IMAGE_VERSION>.patch` (the default output name); devices
/// look for that name and use it when present.
///
/// Example:
///
///   image-tools patch --from v1.img --payload www/v2.payload --image v2.img --key release.key
///
/// writes www/v2.payload.from-1.patch when v1.img's IMAGE_VERSION is 1.
#[derive(Args, Debug)]
pub struct PatchCmd {
    /// The old (base) /usr image the patch applies to.
    #[arg(long = "from", value_name = "OLD.IMG")]
    pub from: PathBuf,
    /// The new version 2 payload (signed with --key).
    #[arg(long, value_name = "NEW.PAYLOAD")]
    pub payload: PathBuf,
    /// The new image the payload was packed from.
    #[arg(long, value_name = "NEW.IMG")]
    pub image: PathBuf,
    /// Secret key file (from keygen); repeat to add signatures. The payload must carry a
    /// signature by the first.
    #[arg(long, value_name = "KEY", required = true)]
    pub key: Vec<PathBuf>,
    /// Where to write the patch (must not exist); default: next to the payload, named for the
    /// base version.
    #[arg(short = 'o', long = "output", value_name = "PATCH")]
    pub output: Option<PathBuf>,
    /// zstd compression level (1 to 22).
    #[arg(long, value_name = "L", default_value_t = DEFAULT_PATCH_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub level: i32,
    /// IMAGE_VERSION of OLD.IMG, for images whose os-release cannot be read; must match the
    /// image otherwise.
    #[arg(long, value_name = "VERSION")]
    pub from_version: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl PatchCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        let release = image_os_release(&self.from)?;
        let base_version = resolve(
            "IMAGE_VERSION",
            self.from_version.as_ref(),
            release.as_ref(),
            &self.from,
        )?;
        let keys = load_secret_keys(&self.key)?;
        let trusted = TrustedKeys::new([keys[0].verifying_key()]);
        let f = File::open(&self.payload)
            .with_context(|| format!("opening payload {}", self.payload.display()))?;
        let prelude = payload::read_prelude(&mut BufReader::new(f), &trusted)
            .with_context(|| format!("reading payload {}", self.payload.display()))?;
        let output = match &self.output {
            Some(o) => o.clone(),
            None => {
                let name = self
                    .payload
                    .file_name()
                    .context("the payload path has no file name")?
                    .to_string_lossy();
                let name = payload::patch::patch_file_name(&name, &base_version)
                    .with_context(|| format!("base version {base_version:?} cannot name a file"))?;
                self.payload.with_file_name(name)
            }
        };
        let open = |p: &PathBuf, what: &str| {
            File::open(p).with_context(|| format!("opening {what} {}", p.display()))
        };
        let (base, target) = (
            open(&self.from, "old image")?,
            open(&self.image, "new image")?,
        );
        let opts = PatchOptions {
            base_version,
            created: now_or_source_date_epoch()?,
            level: self.level,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let bar = if self.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(0).with_message("compressing records")
        };
        let tick = |done: u64, total: u64| {
            bar.set_length(total);
            bar.set_position(done);
        };
        let (bytes, s) =
            make_patch(&base, &target, &prelude, &keys, &opts, &tick).with_context(|| {
                format!(
                    "making a patch from {} to {}",
                    self.from.display(),
                    self.payload.display()
                )
            })?;
        bar.finish_and_clear();
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&output)
            .with_context(|| format!("creating patch {}", output.display()))?;
        if let Err(e) = out.write_all(&bytes).and_then(|()| out.sync_all()) {
            let _ = std::fs::remove_file(&output);
            return Err(e).with_context(|| format!("writing patch {}", output.display()));
        }
        if self.json {
            let v = serde_json::json!({
                "patch": output.display().to_string(),
                "patch_size": s.patch_len,
                "base_version": opts.base_version,
                "records": s.records,
                "missing_chunks": s.missing_chunks,
                "missing_frame_bytes": s.missing_frame_bytes,
                "covered_chunks": s.covered_chunks,
                "replaced_frame_bytes": s.replaced_frame_bytes,
                "record_frame_bytes": s.record_frame_bytes,
            });
            println!("{v}");
        } else {
            println!(
                "patch from {} written to {} ({} bytes, {} records): covers {} of the {} chunks {} lacks, replacing {} bytes of payload frames (of {})",
                opts.base_version,
                output.display(),
                s.patch_len,
                s.records,
                s.covered_chunks,
                s.missing_chunks,
                self.from.display(),
                s.replaced_frame_bytes,
                s.missing_frame_bytes
            );
        }
        Ok(())
    }
}
