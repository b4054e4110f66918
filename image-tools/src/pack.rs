//! `image-tools pack`, `verify` and `inspect`: make, check and show signed payloads.
//!
//! `pack` reads the image's own `lib/os-release` (squashfs through `unsquashfs -cat`, ext4
//! through `debugfs`, never mounting) for `IMAGE_ID` (the compatible string) and
//! `IMAGE_VERSION`; for other filesystems both must be given, and given values that contradict
//! the image are refused. Compression uses every core. The format is in
//! `docs/payload-format.md`; the work is done by [`ab_payload`].
use ab_payload::writer::{self, PackOptions};
use ab_payload::{self as payload, TrustedKeys};
use ab_release::osrelease::{OsRelease, MAX_OS_RELEASE_LEN};
use anyhow::{bail, Context};
use clap::Args;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Pack a /usr image into a signed, chunked, zstd-compressed payload.
///
/// IMAGE_ID and IMAGE_VERSION come from the image's lib/os-release (squashfs and ext4 images);
/// for other filesystems pass --image-id and --image-version. The creation time is
/// SOURCE_DATE_EPOCH when set, so packing is reproducible.
#[derive(Args, Debug)]
pub struct PackCmd {
    /// The uncompressed /usr filesystem image.
    #[arg(long, value_name = "USR.IMG")]
    pub image: PathBuf,
    /// Secret key file (from keygen); repeat to add signatures.
    #[arg(long, value_name = "KEY", required = true)]
    pub key: Vec<PathBuf>,
    /// Where to write the payload (must not exist).
    #[arg(short = 'o', long = "output", value_name = "PAYLOAD")]
    pub output: PathBuf,
    /// Expiry: RFC 3339 UTC time (2027-01-31T00:00:00Z) or @UNIX-SECONDS.
    #[arg(long, value_name = "TIME")]
    pub expires: Option<String>,
    /// Chunk size in bytes: a multiple of 4096 from 4096 to 8388608.
    #[arg(long, value_name = "N", default_value_t = writer::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u32,
    /// zstd compression level (1 to 22).
    #[arg(long, value_name = "L", default_value_t = writer::DEFAULT_LEVEL)]
    pub level: i32,
    /// Payload format: 2 (content-defined chunks, delta-capable) or 1 (fixed chunks of
    /// --chunk-size, for devices whose updater predates version 2).
    #[arg(long, value_name = "1|2", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub format: u32,
    /// Format 2: smallest chunk in bytes (at least 1024).
    #[arg(long, value_name = "N", default_value_t = payload::cdc::CdcParams::DEFAULT.min)]
    pub cdc_min: u32,
    /// Format 2: average chunk in bytes (a power of two between --cdc-min and --cdc-max).
    #[arg(long, value_name = "N", default_value_t = payload::cdc::CdcParams::DEFAULT.avg)]
    pub cdc_avg: u32,
    /// Format 2: largest chunk in bytes (at most 4194304).
    #[arg(long, value_name = "N", default_value_t = payload::cdc::CdcParams::DEFAULT.max)]
    pub cdc_max: u32,
    /// Format 2: image bytes before each chunk that its frame references as a zstd prefix, at
    /// most 4194304; 0 makes every frame decode alone (larger payload).
    #[arg(long, value_name = "N", default_value_t = writer::DEFAULT_PREFIX_LEN)]
    pub prefix_len: u32,
    /// IMAGE_ID, for images whose os-release cannot be read; must match the image otherwise.
    #[arg(long, value_name = "ID")]
    pub image_id: Option<String>,
    /// IMAGE_VERSION, for images whose os-release cannot be read; must match the image otherwise.
    #[arg(long, value_name = "VERSION")]
    pub image_version: Option<String>,
}

/// The filesystem an image holds, as far as `pack` can read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filesystem {
    Squashfs,
    Ext4,
    Other,
}

fn detect_filesystem(path: &Path) -> anyhow::Result<Filesystem> {
    let mut head = vec![0u8; 2048];
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = f
        .read(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    head.truncate(n);
    Ok(if head.starts_with(b"hsqs") {
        Filesystem::Squashfs
    } else if head.len() >= 1082 && head[1080..1082] == [0x53, 0xef] {
        Filesystem::Ext4
    } else {
        Filesystem::Other
    })
}

/// Reads `lib/os-release` out of a squashfs or ext4 image without mounting it.
fn read_image_os_release(path: &Path, fs: Filesystem) -> anyhow::Result<Option<OsRelease>> {
    let mut cmd = match fs {
        Filesystem::Squashfs => {
            let mut c = Command::new("unsquashfs");
            c.arg("-cat").arg(path).arg("lib/os-release");
            c
        }
        Filesystem::Ext4 => {
            let mut c = Command::new("debugfs");
            c.arg("-R").arg("cat /lib/os-release").arg(path);
            c
        }
        Filesystem::Other => return Ok(None),
    };
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} on {}", path.display()))?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "reading lib/os-release from {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.len() as u64 > MAX_OS_RELEASE_LEN {
        bail!(
            "lib/os-release in {} is larger than {MAX_OS_RELEASE_LEN} bytes",
            path.display()
        );
    }
    Ok(Some(OsRelease::parse(&String::from_utf8_lossy(
        &out.stdout,
    ))))
}

/// `lib/os-release` of a squashfs or ext4 image (`None` for other filesystems).
pub(crate) fn image_os_release(path: &Path) -> anyhow::Result<Option<OsRelease>> {
    read_image_os_release(path, detect_filesystem(path)?)
}

/// Loads the secret key files for signing (at most [`payload::MAX_SIGNATURES`]).
pub(crate) fn load_secret_keys(
    paths: &[PathBuf],
) -> anyhow::Result<Vec<ed25519_dalek::SigningKey>> {
    anyhow::ensure!(
        paths.len() <= payload::MAX_SIGNATURES,
        "at most {} keys",
        payload::MAX_SIGNATURES
    );
    paths.iter().map(|k| load_secret_key(k)).collect()
}

/// Picks the value of `key`: from the image when it has one (a given value must agree), else
/// the given one.
pub(crate) fn resolve(
    key: &str,
    given: Option<&String>,
    image: Option<&OsRelease>,
    path: &Path,
) -> anyhow::Result<String> {
    match (given, image.and_then(|r| r.get(key))) {
        (Some(g), Some(i)) if g != i => bail!(
            "{key} {g:?} given on the command line contradicts {i:?} in {}",
            path.display()
        ),
        (_, Some(i)) => Ok(i.to_owned()),
        (Some(g), None) => Ok(g.clone()),
        (None, None) => bail!(
            "{} has no {key} in lib/os-release; pass --{}",
            path.display(),
            key.to_lowercase().replace('_', "-")
        ),
    }
}

/// Parses `@SECONDS` or an RFC 3339 UTC time `YYYY-MM-DDTHH:MM:SSZ` into Unix seconds.
pub fn parse_time(s: &str) -> anyhow::Result<u64> {
    if let Some(secs) = s.strip_prefix('@') {
        return secs
            .parse()
            .with_context(|| format!("parsing {s:?} as @UNIX-SECONDS"));
    }
    let b = s.as_bytes();
    let shape_ok = b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b' ')
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z';
    if !shape_ok {
        bail!("time {s:?} is neither YYYY-MM-DDTHH:MM:SSZ nor @UNIX-SECONDS");
    }
    let num = |r: std::ops::Range<usize>| -> anyhow::Result<i64> {
        s[r.clone()]
            .parse()
            .with_context(|| format!("parsing {:?} in time {s:?}", &s[r]))
    };
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        bail!("time {s:?} is out of range");
    }
    // Days from the civil date (proleptic Gregorian), Howard Hinnant's algorithm.
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let t = days * 86400 + h * 3600 + mi * 60 + se;
    u64::try_from(t).with_context(|| format!("time {s:?} is before 1970"))
}

/// The current time in Unix seconds, or `SOURCE_DATE_EPOCH` when set (reproducible output).
pub(crate) fn now_or_source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("parsing SOURCE_DATE_EPOCH {v:?}")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("reading the clock")?
            .as_secs()),
    }
}

/// Reads a secret key file written by keygen.
pub(crate) fn load_secret_key(path: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading key {}", path.display()))?;
    writer::parse_secret_key(&text)
        .map_err(|e| anyhow::anyhow!("parsing secret key {}: {e}", path.display()))
}

impl PackCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        let release = image_os_release(&self.image)?;
        let compatible = resolve(
            "IMAGE_ID",
            self.image_id.as_ref(),
            release.as_ref(),
            &self.image,
        )?;
        let version = resolve(
            "IMAGE_VERSION",
            self.image_version.as_ref(),
            release.as_ref(),
            &self.image,
        )?;
        let keys = load_secret_keys(&self.key)?;
        let opts = PackOptions {
            compatible,
            version,
            created: now_or_source_date_epoch()?,
            expires: self.expires.as_deref().map(parse_time).transpose()?,
            chunk_size: self.chunk_size,
            level: self.level,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let image = File::open(&self.image)
            .with_context(|| format!("opening image {}", self.image.display()))?;
        let size = image
            .metadata()
            .with_context(|| format!("reading size of {}", self.image.display()))?
            .len();
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.output)
            .with_context(|| format!("creating payload {}", self.output.display()))?;
        let mut image = BufReader::with_capacity(1 << 20, image);
        let cdc = payload::cdc::CdcParams {
            min: self.cdc_min,
            avg: self.cdc_avg,
            max: self.cdc_max,
        };
        let summary = if self.format == 1 {
            writer::pack(&mut image, size, &mut out, &keys, &opts)
        } else {
            writer::pack_v2_prefixed(
                &mut image,
                size,
                &mut out,
                &keys,
                &opts,
                cdc,
                self.prefix_len,
            )
        };
        let summary = summary.with_context(|| {
            format!(
                "packing {} into {}",
                self.image.display(),
                self.output.display()
            )
        });
        let summary = match summary {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&self.output);
                return Err(e);
            }
        };
        out.sync_all()
            .with_context(|| format!("syncing {}", self.output.display()))?;
        println!(
            "packed {} {} ({} bytes, {} chunks) into {} ({} bytes)",
            summary.manifest.compatible,
            summary.manifest.version,
            summary.manifest.image_size,
            summary.manifest.chunk_count,
            self.output.display(),
            summary.payload_size
        );
        Ok(())
    }
}

/// Verify a payload completely: signature, chunk table, every chunk, the image hash.
#[derive(Args, Debug)]
pub struct VerifyCmd {
    /// Trusted public key file; repeat for several.
    #[arg(long, value_name = "PUB", required = true)]
    pub pubkey: Vec<PathBuf>,
    /// The payload file.
    #[arg(value_name = "PAYLOAD")]
    pub payload: PathBuf,
}

impl VerifyCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        let keys = self
            .pubkey
            .iter()
            .map(|p| TrustedKeys::load_file(p))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = TrustedKeys::new(keys);
        let f = File::open(&self.payload)
            .with_context(|| format!("opening payload {}", self.payload.display()))?;
        let prelude = payload::verify_stream(&mut BufReader::with_capacity(1 << 20, f), &keys)
            .with_context(|| format!("verifying payload {}", self.payload.display()))?;
        println!(
            "{}: good signature by key {}; {} {} ({} bytes, {} chunks) verified",
            self.payload.display(),
            prelude.signed_by,
            prelude.manifest.compatible,
            prelude.manifest.version,
            prelude.manifest.image_size,
            prelude.manifest.chunk_count
        );
        Ok(())
    }
}

/// Show a payload's header, manifest and chunk table (signatures are not checked; use verify).
#[derive(Args, Debug)]
pub struct InspectCmd {
    /// The payload file.
    #[arg(value_name = "PAYLOAD")]
    pub payload: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl InspectCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        let f = File::open(&self.payload)
            .with_context(|| format!("opening payload {}", self.payload.display()))?;
        let size = f
            .metadata()
            .with_context(|| format!("reading size of {}", self.payload.display()))?
            .len();
        let i = payload::inspect(&mut BufReader::new(f))
            .with_context(|| format!("inspecting payload {}", self.payload.display()))?;
        let m = &i.manifest;
        let key_ids: Vec<String> = i
            .signatures
            .signatures
            .iter()
            .map(|s| s.key_id.to_string())
            .collect();
        let frames: u64 = i
            .chunks
            .entries
            .iter()
            .map(|e| u64::from(e.frame_len))
            .sum();
        if self.json {
            let v = serde_json::json!({
                "payload_size": size,
                "payload_end": i.chunks.payload_end(),
                "format_version": payload::FORMAT_VERSION,
                "compatible": m.compatible,
                "version": m.version,
                "created": m.created,
                "expires": m.expires,
                "image_size": m.image_size,
                "image_sha256": m.image_sha256.to_string(),
                "chunk_size": m.chunk_size,
                "chunk_count": m.chunk_count,
                "chunk_table_sha256": m.chunk_table_sha256.to_string(),
                "compressed_size": frames,
                "signature_key_ids": key_ids,
                "signatures_checked": false,
            });
            println!("{v}");
        } else {
            println!("payload:      {} ({size} bytes)", self.payload.display());
            println!("compatible:   {}", m.compatible);
            println!("version:      {}", m.version);
            println!("created:      {}", m.created);
            println!(
                "expires:      {}",
                m.expires.map_or("never".to_string(), |e| e.to_string())
            );
            println!(
                "image:        {} bytes, sha256 {}",
                m.image_size, m.image_sha256
            );
            println!(
                "chunks:       {} of {} bytes, {} bytes compressed",
                m.chunk_count, m.chunk_size, frames
            );
            println!(
                "signed by:    {} (not checked; use verify)",
                key_ids.join(", ")
            );
        }
        Ok(())
    }
}
