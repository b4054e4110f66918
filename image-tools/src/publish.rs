//! `image-tools publish`: keep a tree of signed release streams and the payloads they list.
//!
//! Layout (one tree, several channels; `docs/usage/publishing.md`):
//!
//! ```text
//! ROOT/CHANNEL/stream.json       the channel's stream (docs/stream-format.md)
//! ROOT/CHANNEL/stream.json.sig   its detached signature
//! ROOT/payloads/NAME.payload     payloads, shared by channels, listed as ../payloads/NAME
//! ```
//!
//! Every command that changes a stream first checks the existing signature with the given keys
//! (a tampered tree is never re-signed), then applies the edit, bumps the serial, sets
//! `generated` to now and moves `expires` by the stream's validity period, and writes both files
//! atomically (temporary file, fsync, rename, fsync of the directory). "Now" is `--now`, else
//! `SOURCE_DATE_EPOCH`, else the clock, so the same edits at the same time give the same bytes.
//! The format and the edits are [`ab_release::stream`]; this module does the files.
use crate::pack::{load_secret_key, now_or_source_date_epoch, parse_time};
use ab_payload::{self as payload, SignatureBlock, TrustedKeys};
use ab_release::stream::rollout::open_fraction;
use ab_release::stream::writer::{self, payload_file_name};
use ab_release::stream::{
    self, check_channel, read_bounded, Release, Stream, MAX_SIGNATURE_FILE_LEN, MAX_STREAM_LEN,
    SIGNATURE_FILE, STREAM_FILE,
};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ed25519_dalek::SigningKey;
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

/// Name of the payload directory under the tree's root.
pub const PAYLOAD_DIR: &str = "payloads";

/// Publish release streams: init, add, rollout, pause, resume, pull, barrier, sign, show.
///
/// A tree holds one directory per channel (ROOT/stable/stream.json and stream.json.sig) and the
/// payloads all channels share (ROOT/payloads/). Every edit bumps the serial, sets `generated`
/// to now and re-signs. Times are RFC 3339 UTC (2026-01-02T00:00:00Z), @UNIX-SECONDS or `now`;
/// durations are N with s, m, h, d or w (90m, 2d). Now is --now, else SOURCE_DATE_EPOCH, else
/// the clock.
#[derive(Args, Debug)]
#[command(after_help = PUBLISH_EXAMPLE)]
pub struct PublishCmd {
    #[command(subcommand)]
    command: PublishCommand,
}

const PUBLISH_EXAMPLE: &str = "Example (a 10% canary growing to all boxes over two days):
  cd /srv/updates
  image-tools publish init . --channel stable --key publisher.key
  image-tools publish add --channel stable --key publisher.key box-1.2.payload
  image-tools publish rollout 1.2 --channel stable --key publisher.key \\
    --start 2026-03-02T08:00:00Z --duration 2d --start-fraction 0.1
  image-tools publish show --channel stable --pubkey publisher.pub";

#[derive(Subcommand, Debug)]
enum PublishCommand {
    Init(InitCmd),
    Add(AddCmd),
    Rollout(RolloutCmd),
    Pause(PauseCmd),
    Resume(ResumeCmd),
    Pull(PullCmd),
    Barrier(BarrierCmd),
    Sign(SignCmd),
    Show(ShowCmd),
}

impl PublishCmd {
    /// Runs the subcommand.
    pub fn run(&self) -> anyhow::Result<()> {
        match &self.command {
            PublishCommand::Init(c) => c.run(),
            PublishCommand::Add(c) => c.run(),
            PublishCommand::Rollout(c) => c.run(),
            PublishCommand::Pause(c) => c
                .edit
                .run("pause", &c.version, |s| s.set_paused(&c.version, true)),
            PublishCommand::Resume(c) => c
                .edit
                .run("resume", &c.version, |s| s.set_paused(&c.version, false)),
            PublishCommand::Pull(c) => c.edit.run("pull", &c.version, |s| s.pull(&c.version)),
            PublishCommand::Barrier(c) => c
                .edit
                .run("barrier", &c.version, |s| s.mark_barrier(&c.version)),
            PublishCommand::Sign(c) => c.run(),
            PublishCommand::Show(c) => c.run(),
        }
    }
}

/// Which stream of which tree.
#[derive(Args, Debug)]
struct TreeArgs {
    /// Root of the tree (holds CHANNEL/ and payloads/).
    #[arg(long, value_name = "ROOT", default_value = ".")]
    root: PathBuf,
    /// The channel: a directory of the tree (a-z, 0-9, '.', '_', '-').
    #[arg(long, value_name = "NAME")]
    channel: String,
}

impl TreeArgs {
    fn channel_dir(&self) -> anyhow::Result<PathBuf> {
        check_channel(&self.channel)?;
        Ok(self.root.join(&self.channel))
    }
}

/// How edits are signed and timed.
#[derive(Args, Debug)]
struct SignArgs {
    /// Secret key file (from keygen); repeat to add signatures. Boxes trust its .pub in keys.d.
    #[arg(long, value_name = "KEYFILE", required = true)]
    key: Vec<PathBuf>,
    /// Also accept the current signature by this public key (when rotating keys); repeatable.
    #[arg(long, value_name = "PUB")]
    trust: Vec<PathBuf>,
    /// The time of the edit: RFC 3339 UTC or @UNIX-SECONDS [default: SOURCE_DATE_EPOCH or the clock].
    #[arg(long, value_name = "TIME")]
    now: Option<String>,
}

impl SignArgs {
    fn keys(&self) -> anyhow::Result<Vec<SigningKey>> {
        anyhow::ensure!(
            self.key.len() <= payload::MAX_SIGNATURES,
            "at most {} keys",
            payload::MAX_SIGNATURES
        );
        self.key.iter().map(|k| load_secret_key(k)).collect()
    }

    /// The public halves of the signing keys and every --trust key.
    fn trusted(&self, keys: &[SigningKey]) -> anyhow::Result<TrustedKeys> {
        let mut all: Vec<_> = keys.iter().map(|k| k.verifying_key()).collect();
        for p in &self.trust {
            all.push(TrustedKeys::load_file(p)?);
        }
        Ok(TrustedKeys::new(all))
    }

    fn now(&self) -> anyhow::Result<u64> {
        now_from(self.now.as_deref())
    }
}

fn now_from(given: Option<&str>) -> anyhow::Result<u64> {
    match given {
        Some(t) => parse_time(t),
        None => now_or_source_date_epoch(),
    }
}

/// Parses a duration: a number of seconds, or a number followed by s, m, h, d or w.
pub fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("duration {s:?} is not N, Ns, Nm, Nh, Nd or Nw"),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("parsing duration {s:?}"))?;
    n.checked_mul(factor)
        .with_context(|| format!("duration {s:?} is too large"))
}

/// Parses a time, also accepting `now`.
fn parse_time_or_now(s: &str, now: u64) -> anyhow::Result<u64> {
    if s == "now" {
        Ok(now)
    } else {
        parse_time(s)
    }
}

/// Formats Unix seconds as RFC 3339 UTC (`2026-01-02T00:00:00Z`).
pub fn format_time(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian), Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Formats a duration in the largest unit that divides it.
fn format_duration(d: u64) -> String {
    for (unit, n) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if d > 0 && d.is_multiple_of(n) {
            return format!("{}{unit}", d / n);
        }
    }
    format!("{d}s")
}

fn read_file_bounded(path: &Path, what: &'static str, max: usize) -> anyhow::Result<Vec<u8>> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    read_bounded(&mut f, what, max).with_context(|| format!("reading {}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory: write, fsync,
/// rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// A channel's stream as loaded for an edit.
struct Loaded {
    dir: PathBuf,
    stream: Stream,
}

/// Reads the channel's stream and checks its signature with `trusted` and its channel.
fn load(tree: &TreeArgs, trusted: &TrustedKeys) -> anyhow::Result<Loaded> {
    let dir = tree.channel_dir()?;
    let path = dir.join(STREAM_FILE);
    let bytes = read_file_bounded(&path, STREAM_FILE, MAX_STREAM_LEN)?;
    let sig_path = dir.join(SIGNATURE_FILE);
    let sig = read_file_bounded(&sig_path, SIGNATURE_FILE, MAX_SIGNATURE_FILE_LEN)?;
    stream::verify_signature(&bytes, &sig, trusted).with_context(|| {
        format!(
            "checking the signature of {} before editing it (pass --trust OLD.pub when rotating keys)",
            path.display()
        )
    })?;
    let stream = Stream::parse(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(
        stream.channel == tree.channel,
        "{} is for channel {:?}, not {:?}",
        path.display(),
        stream.channel,
        tree.channel
    );
    Ok(Loaded { dir, stream })
}

/// Encodes, signs and writes the stream into `dir`, then prints one line.
fn save(dir: &Path, stream: &Stream, keys: &[SigningKey], what: &str) -> anyhow::Result<()> {
    let bytes = writer::encode(stream).context("encoding the stream")?;
    let sig = writer::sign(&bytes, keys).context("signing the stream")?;
    write_atomic(&dir.join(STREAM_FILE), &bytes)?;
    write_atomic(&dir.join(SIGNATURE_FILE), &sig)?;
    sync_dir(dir)?;
    println!(
        "{what}: channel {} serial {}, expires {}",
        stream.channel,
        stream.serial,
        format_time(stream.expires)
    );
    Ok(())
}

/// Create a channel's stream in a tree: ROOT/CHANNEL/stream.json, its signature, ROOT/payloads/.
///
/// The stream starts at serial 1 with no release. Every later edit keeps the validity period
/// set here (--expires-in): boxes refuse the stream once it passes, so re-sign (publish sign)
/// well before.
#[derive(Args, Debug)]
#[command(after_help = "Example:
  image-tools publish init /srv/updates --channel stable --key publisher.key \\
    --expires-in 14d")]
struct InitCmd {
    /// Root of the tree (created if missing).
    #[arg(value_name = "ROOT")]
    root: PathBuf,
    /// The channel to create.
    #[arg(long, value_name = "NAME")]
    channel: String,
    /// How long each signed serial stays valid (N with s, m, h, d or w).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    expires_in: u64,
    #[command(flatten)]
    sign: SignArgs,
}

impl InitCmd {
    fn run(&self) -> anyhow::Result<()> {
        let tree = TreeArgs {
            root: self.root.clone(),
            channel: self.channel.clone(),
        };
        let dir = tree.channel_dir()?;
        let keys = self.sign.keys()?;
        let stream = Stream::new(&self.channel, self.sign.now()?, self.expires_in)?;
        let path = dir.join(STREAM_FILE);
        anyhow::ensure!(!path.exists(), "refusing to overwrite {}", path.display());
        for d in [&dir, &self.root.join(PAYLOAD_DIR)] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        save(&dir, &stream, &keys, "initialised")
    }
}

/// Copy a payload into the tree and list it in a channel (not offered until `rollout`).
///
/// The payload is verified completely (signature by one of the --key/--trust keys, every chunk,
/// the image hash) and its entry filled from the signed manifest: version, size, payload id,
/// image SHA-256. It is copied to ROOT/payloads/COMPATIBLE_VERSION_ID.payload unless that file
/// already holds it. Refused: a version the channel lists already, a payload for another
/// `compatible` than the channel's other releases, a payload file in the tree that differs.
#[derive(Args, Debug)]
#[command(after_help = "Example:
  image-tools publish add --root /srv/updates --channel beta \\
    --key publisher.key box-1.3.payload")]
struct AddCmd {
    /// The payload file (from pack).
    #[arg(value_name = "PAYLOAD")]
    payload: PathBuf,
    #[command(flatten)]
    tree: TreeArgs,
    #[command(flatten)]
    sign: SignArgs,
}

/// Reads and fully verifies a payload; returns its prelude and size.
fn verify_payload(
    path: &Path,
    keys: &TrustedKeys,
) -> anyhow::Result<(payload::VerifiedPrelude, u64)> {
    let f = File::open(path).with_context(|| format!("opening payload {}", path.display()))?;
    let size = f
        .metadata()
        .with_context(|| format!("reading size of {}", path.display()))?
        .len();
    let prelude = payload::verify_stream(&mut BufReader::with_capacity(1 << 20, f), keys)
        .with_context(|| format!("verifying payload {}", path.display()))?;
    Ok((prelude, size))
}

impl AddCmd {
    fn run(&self) -> anyhow::Result<()> {
        let keys = self.sign.keys()?;
        let trusted = self.sign.trusted(&keys)?;
        let mut loaded = load(&self.tree, &trusted)?;
        let (prelude, size) = verify_payload(&self.payload, &trusted)?;
        let m = &prelude.manifest;
        let id = prelude.payload_id();
        // One channel serves one product: compare with a payload the channel lists already.
        if let Some(first) = loaded.stream.releases.first() {
            let listed = loaded.dir.join(&first.location);
            let f = File::open(&listed)
                .with_context(|| format!("opening listed payload {}", listed.display()))?;
            let other = payload::inspect(&mut BufReader::new(f))
                .with_context(|| format!("inspecting listed payload {}", listed.display()))?;
            anyhow::ensure!(
                other.manifest.compatible == m.compatible,
                "payload {} is for {:?}, channel {} lists payloads for {:?} ({})",
                self.payload.display(),
                m.compatible,
                self.tree.channel,
                other.manifest.compatible,
                first.version
            );
        }
        let name = payload_file_name(&m.compatible, &m.version, &id);
        loaded.stream.add_release(Release {
            version: m.version.clone(),
            location: format!("../{PAYLOAD_DIR}/{name}"),
            size,
            payload_id: id,
            image_sha256: m.image_sha256,
            rollout: None,
            barrier: false,
            dead_end: false,
        })?;
        loaded.stream.republish(self.sign.now()?)?;
        let payload_dir = self.tree.root.join(PAYLOAD_DIR);
        let dest = payload_dir.join(&name);
        if dest.exists() {
            let (there, there_size) = verify_payload(&dest, &trusted)?;
            anyhow::ensure!(
                there.payload_id() == id && there_size == size,
                "{} exists and holds another payload (id {}, {} bytes) than {} (id {id}, {size} bytes)",
                dest.display(),
                there.payload_id(),
                there_size,
                self.payload.display()
            );
        } else {
            copy_payload(&self.payload, &dest, &payload_dir)?;
        }
        save(
            &loaded.dir,
            &loaded.stream,
            &keys,
            &format!("added {} as {}", m.version, dest.display()),
        )
    }
}

/// Copies a payload into the tree: temporary file, fsync, rename, fsync of the directory.
fn copy_payload(from: &Path, to: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, to)
        .with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))?;
    sync_dir(dir)
}

/// Arguments of an edit of one release.
#[derive(Args, Debug)]
struct EditArgs {
    #[command(flatten)]
    tree: TreeArgs,
    #[command(flatten)]
    sign: SignArgs,
}

impl EditArgs {
    fn run(
        &self,
        what: &str,
        version: &str,
        edit: impl FnOnce(&mut Stream) -> Result<(), writer::EditError>,
    ) -> anyhow::Result<()> {
        let keys = self.sign.keys()?;
        let mut loaded = load(&self.tree, &self.sign.trusted(&keys)?)?;
        edit(&mut loaded.stream)?;
        loaded.stream.republish(self.sign.now()?)?;
        save(
            &loaded.dir,
            &loaded.stream,
            &keys,
            &format!("{what} {version}"),
        )
    }
}

/// Start (or replace) the staged rollout of a release.
///
/// From --start, the release is open to a --start-fraction of boxes, growing linearly to all
/// boxes at start + duration. A box is in when its position (from its machine id, or its
/// rollout_wariness) is below the fraction. A new rollout is not paused.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  # 5% at 08:00, everybody three days later
  image-tools publish rollout 1.2 --root /srv/updates --channel stable \\
    --key publisher.key --start 2026-03-02T08:00:00Z --duration 3d \\
    --start-fraction 0.05
  # everybody, now
  image-tools publish rollout 1.2 --channel beta --key publisher.key \\
    --start now --duration 0")]
struct RolloutCmd {
    /// The release's version.
    #[arg(value_name = "VERSION")]
    version: String,
    /// When the rollout starts: RFC 3339 UTC, @UNIX-SECONDS or `now`.
    #[arg(long, value_name = "TIME")]
    start: String,
    /// How long until every box is included (N with s, m, h, d or w; 0: all at once).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: u64,
    /// Fraction of boxes included at the start, 0 to 1.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    start_fraction: f64,
    #[command(flatten)]
    edit: EditArgs,
}

impl RolloutCmd {
    fn run(&self) -> anyhow::Result<()> {
        let now = self.edit.sign.now()?;
        let start = parse_time_or_now(&self.start, now)?;
        self.edit.run("rollout", &self.version, |s| {
            s.set_rollout(&self.version, start, self.duration, self.start_fraction)
        })
    }
}

/// Pause a release's rollout: no box starts installing it until `resume`.
#[derive(Args, Debug)]
#[command(after_help = "Example:
  image-tools publish pause 1.2 --root /srv/updates --channel stable \\
    --key publisher.key")]
struct PauseCmd {
    /// The release's version.
    #[arg(value_name = "VERSION")]
    version: String,
    #[command(flatten)]
    edit: EditArgs,
}

/// Resume a paused rollout where its schedule stands now.
#[derive(Args, Debug)]
#[command(after_help = "Example:
  image-tools publish resume 1.2 --root /srv/updates --channel stable \\
    --key publisher.key")]
struct ResumeCmd {
    /// The release's version.
    #[arg(value_name = "VERSION")]
    version: String,
    #[command(flatten)]
    edit: EditArgs,
}

/// Pull a release (dead end): no box installs it, boxes running it move on to a newer one.
///
/// A pulled barrier no longer holds boxes back: mark its replacement as a barrier first.
#[derive(Args, Debug)]
#[command(after_help = "Example:
  image-tools publish pull 1.2 --root /srv/updates --channel stable \\
    --key publisher.key")]
struct PullCmd {
    /// The release's version.
    #[arg(value_name = "VERSION")]
    version: String,
    #[command(flatten)]
    edit: EditArgs,
}

/// Make a release a barrier: every box below it installs it before any newer release.
///
/// Use it for changes a box must pass through, e.g. an image that ships a new signing key.
#[derive(Args, Debug)]
#[command(after_help = "Example:
  image-tools publish barrier 1.2 --root /srv/updates --channel stable \\
    --key publisher.key")]
struct BarrierCmd {
    /// The release's version.
    #[arg(value_name = "VERSION")]
    version: String,
    #[command(flatten)]
    edit: EditArgs,
}

/// Re-sign a stream unchanged but for a new serial and fresh times, before it expires.
///
/// Run it (e.g. from a timer) at least twice per validity period, or boxes refuse the stream
/// as frozen. --expires-in changes the validity period; --key with --trust rotates keys.
#[derive(Args, Debug)]
#[command(after_help = "Example:
  image-tools publish sign --root /srv/updates --channel stable \\
    --key publisher.key")]
struct SignCmd {
    /// New validity period (N with s, m, h, d or w) [default: keep the current one].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    expires_in: Option<u64>,
    #[command(flatten)]
    edit: EditArgs,
}

impl SignCmd {
    fn run(&self) -> anyhow::Result<()> {
        let keys = self.edit.sign.keys()?;
        let mut loaded = load(&self.edit.tree, &self.edit.sign.trusted(&keys)?)?;
        let s = &mut loaded.stream;
        let now = self.edit.sign.now()?;
        if let Some(validity) = self.expires_in {
            anyhow::ensure!(validity > 0, "--expires-in must be at least 1s");
            s.expires = s.generated.saturating_add(validity);
        }
        s.republish(now)?;
        save(&loaded.dir, &loaded.stream, &keys, "signed")
    }
}

/// Show a channel's stream: serial, times, signatures, and each release's rollout state now.
///
/// With --pubkey the signature is checked; without, key ids are shown unchecked.
#[derive(Args, Debug)]
#[command(after_help = "Example:
  image-tools publish show --root /srv/updates --channel stable \\
    --pubkey publisher.pub --json")]
struct ShowCmd {
    #[command(flatten)]
    tree: TreeArgs,
    /// Check the signature with this public key; repeatable.
    #[arg(long, value_name = "PUB")]
    pubkey: Vec<PathBuf>,
    /// The time to evaluate rollouts at: RFC 3339 UTC or @UNIX-SECONDS [default: SOURCE_DATE_EPOCH or the clock].
    #[arg(long, value_name = "TIME")]
    now: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

impl ShowCmd {
    fn run(&self) -> anyhow::Result<()> {
        let dir = self.tree.channel_dir()?;
        let path = dir.join(STREAM_FILE);
        let bytes = read_file_bounded(&path, STREAM_FILE, MAX_STREAM_LEN)?;
        let sig_path = dir.join(SIGNATURE_FILE);
        let sig = read_file_bounded(&sig_path, SIGNATURE_FILE, MAX_SIGNATURE_FILE_LEN)?;
        let block = SignatureBlock::parse(&sig)
            .with_context(|| format!("parsing {}", sig_path.display()))?;
        let key_ids: Vec<String> = block
            .signatures
            .iter()
            .map(|s| s.key_id.to_string())
            .collect();
        let checked = if self.pubkey.is_empty() {
            None
        } else {
            let keys = self
                .pubkey
                .iter()
                .map(|p| TrustedKeys::load_file(p))
                .collect::<Result<Vec<_>, _>>()?;
            Some(
                stream::verify_signature(&bytes, &sig, &TrustedKeys::new(keys))
                    .with_context(|| format!("checking the signature of {}", path.display()))?,
            )
        };
        let s = Stream::parse(&bytes).with_context(|| format!("parsing {}", path.display()))?;
        let now = now_from(self.now.as_deref())?;
        let fraction = |r: &Release| r.rollout.as_ref().map(|ro| open_fraction(ro, now));
        if self.json {
            let mut v = serde_json::to_value(&s).context("encoding the stream as JSON")?;
            for (r, jr) in s
                .releases
                .iter()
                .zip(v["releases"].as_array_mut().expect("releases is an array"))
            {
                jr["open_fraction"] = serde_json::json!(fraction(r).unwrap_or(0.0));
            }
            v["now"] = now.into();
            v["signature_key_ids"] = key_ids.into();
            v["signature_checked"] = checked.is_some().into();
            println!("{v}");
            return Ok(());
        }
        println!(
            "channel {} serial {}: generated {}, expires {}{}",
            s.channel,
            s.serial,
            format_time(s.generated),
            format_time(s.expires),
            if now >= s.expires { " (EXPIRED)" } else { "" }
        );
        match checked {
            Some(k) => println!("signature: good, by key {k}"),
            None => println!(
                "signed by {} (not checked; pass --pubkey to check)",
                key_ids.join(", ")
            ),
        }
        if s.releases.is_empty() {
            println!("no releases");
        }
        for r in &s.releases {
            let mut marks = Vec::new();
            if r.barrier {
                marks.push("barrier");
            }
            if r.dead_end {
                marks.push("pulled");
            }
            let marks = if marks.is_empty() {
                String::new()
            } else {
                format!(" [{}]", marks.join(", "))
            };
            println!("{}{marks}: {} ({} bytes)", r.version, r.location, r.size);
            println!("  payload id {}", r.payload_id);
            match (&r.rollout, fraction(r)) {
                (Some(ro), Some(f)) => println!(
                    "  rollout from {} over {} from {:.0}%{}: open to {:.1}% of boxes at {}",
                    format_time(ro.start),
                    format_duration(ro.duration),
                    ro.start_fraction * 100.0,
                    if ro.paused { ", PAUSED" } else { "" },
                    f * 100.0,
                    format_time(now)
                ),
                _ => println!("  not offered (no rollout)"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_as_rfc3339_and_back() {
        for t in [
            0,
            951_782_400,
            1_767_225_600,
            1_767_312_000 + 38_400,
            4_102_444_799,
        ] {
            assert_eq!(parse_time(&format_time(t)).unwrap(), t, "{t}");
        }
        assert_eq!(format_time(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(format_time(951_868_800), "2000-03-01T00:00:00Z");
    }

    #[test]
    fn parses_durations_with_units() {
        let rows = [
            ("90", 90),
            ("90s", 90),
            ("15m", 900),
            ("2h", 7200),
            ("2d", 172_800),
        ];
        for (s, want) in rows {
            assert_eq!(parse_duration(s).unwrap(), want, "{s}");
        }
        assert_eq!(parse_duration("1w").unwrap(), 604_800);
        for bad in ["", "d", "2y", "-1d", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(172_800), "2d");
        assert_eq!(format_duration(5400), "90m");
        assert_eq!(format_duration(0), "0s");
    }
}
