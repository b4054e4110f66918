//! Health checks (DESIGN §7): the operator's executables that decide whether a new slot is
//! committed, and the runner that holds them to their time limits.
//!
//! **Discovery.** Checks are the entries of `ROOT/usr/lib/updater/health.d` (vendor) and
//! `ROOT/etc/updater/health.d` (admin; an entry there replaces the vendor entry of the same
//! name); names starting with `.` are ignored. Each name becomes a [`Check`] in one of three
//! states ([`CheckState`]):
//!
//! - *runnable*: a regular file, executable and readable, owned by root (or by the updater's
//!   own user) and writable by its owner only;
//! - *masked*: a symlink to exactly `/dev/null` (systemd's convention); reported, never run;
//! - *refused* ([`Refusal`]): anything else, such as a non-executable or unreadable file, a
//!   broken symlink, a directory, a FIFO, a group- or world-writable file or one owned by
//!   another user. A refused check is a **failed** check: an unusable file never silently
//!   removes the check whose name it has.
//!
//! **Running.** Checks run one at a time in name order; a check passes by exiting 0. The first
//! failure stops the run: the verdict names the check and keeps the tail of its output (at most
//! [`MAX_OUTPUT_BYTES`], in a fixed ring), so `updater status` on the old slot can say why the
//! new one was rolled back. Checks get `UPDATER_SLOT` (A or B), `UPDATER_VERSION` and
//! [`RUN_MARKER_ENV`] in their environment.
//!
//! **Time limits are absolute.** A check ends at its own timeout or at the overall deadline,
//! whichever comes first, whatever its processes do: its output is read with `poll()` against
//! that instant, never to end of file. When a check exits or times out, every process that
//! descends from it is stopped, killed and reaped, including daemons that left its process
//! group or session: the runner makes the calling process a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`, for the rest of its life), so a check's orphans become its
//! children, and finds them in `/proc` among its own descendants (the check's process group,
//! the parent links recorded while the check runs, and the [`RUN_MARKER_ENV`] value they
//! inherit). That cleanup takes at most [`KILL_GRACE`].
//!
//! ```
//! use std::time::Duration;
//! use updater::health::{HealthChecks, Limits};
//! let dir = tempfile::tempdir().unwrap();
//! let checks = HealthChecks::discover(dir.path()).unwrap();
//! let limits = Limits { check_timeout: Duration::from_secs(5), deadline: Duration::from_secs(10) };
//! let verdict = checks.run(&limits, &[]);
//! assert!(verdict.passed); // no checks: healthy, and said so
//! assert!(verdict.no_checks_installed());
//! ```
use crate::history::CheckResult;
use anyhow::Context;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Vendor checks, relative to the root.
pub const VENDOR_DIR: &str = "usr/lib/updater/health.d";
/// Admin checks, relative to the root.
pub const ADMIN_DIR: &str = "etc/updater/health.d";
/// Output kept per check: the last this many bytes.
pub const MAX_OUTPUT_BYTES: usize = 4096;
/// The symlink target that masks a check.
pub const MASK_TARGET: &str = "/dev/null";
/// [`CheckResult::outcome`] of a masked check.
pub const MASKED_OUTCOME: &str = "masked (symlink to /dev/null)";
/// How [`CheckResult::outcome`] of a refused check starts; the [`Refusal`] follows.
pub const REFUSED_PREFIX: &str = "refused: ";
/// Environment variable set for every check, with a value unique to that run of it. Processes
/// that inherit it are the check's, found and killed after it even if they left its tree.
pub const RUN_MARKER_ENV: &str = "UPDATER_HEALTH_RUN";
/// Longest time stopping, killing and reaping a check's processes and draining its output may
/// take after the check exits or times out (only processes stuck in the kernel take long).
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// Most processes read from `/proc` in one scan.
pub const MAX_PROCESSES: usize = 1 << 16;
/// Most bytes of a process's `/proc/PID/environ` searched for [`RUN_MARKER_ENV`].
pub const MAX_ENVIRON_BYTES: u64 = 1 << 20;
/// Most bytes of a `/proc/PID/stat` line read.
const MAX_STAT_BYTES: u64 = 4096;
/// Longest sleep between looks at a running check's exit.
const TICK: Duration = Duration::from_millis(10);
/// How often a running check's process tree is recorded.
const SCAN_INTERVAL: Duration = Duration::from_millis(200);
/// Sleep between rounds of killing and reaping.
const REAP_TICK: Duration = Duration::from_millis(5);

/// Time limits of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// One check.
    pub check_timeout: Duration,
    /// All checks together.
    pub deadline: Duration,
}

/// One name in the check directories and what was found under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The file name.
    pub name: String,
    /// The entry that counts: the admin one if there is one, else the vendor one.
    pub path: PathBuf,
    /// Whether it runs.
    pub state: CheckState,
}

/// What discovery made of a check's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckState {
    /// An executable file: it runs.
    Runnable,
    /// A symlink to [`MASK_TARGET`]: disabled on purpose, reported and not run.
    Masked,
    /// Present but unusable: a failed check, never run.
    Refused(Refusal),
}

/// Why an entry cannot be run (it then fails the run).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A regular file with no execute permission (for the updater).
    #[error("not executable (mode {mode:04o})")]
    NotExecutable {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file the updater may not read.
    #[error("unreadable (mode {mode:04o})")]
    Unreadable {
        /// Permission bits.
        mode: u32,
    },
    /// Anyone besides its owner may change what runs as root.
    #[error("group- or world-writable (mode {mode:04o})")]
    Writable {
        /// Permission bits.
        mode: u32,
    },
    /// Owned by a user other than root and the updater's own.
    #[error("owned by uid {uid}, not root")]
    ForeignOwner {
        /// The owner.
        uid: u32,
    },
    /// A symlink whose target does not exist.
    #[error("a broken symlink to {}", target.display())]
    BrokenSymlink {
        /// Where it points.
        target: PathBuf,
    },
    /// A directory.
    #[error("a directory")]
    Directory,
    /// A FIFO, socket or device.
    #[error("not a regular file but a {kind}")]
    NotRegularFile {
        /// `FIFO`, `socket`, `character device` or `block device`.
        kind: &'static str,
    },
    /// Its metadata could not be read (a symlink loop, an I/O error).
    #[error("unresolvable: {reason}")]
    Unresolvable {
        /// The error.
        reason: String,
    },
}

/// The checks found under a root, in run order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthChecks {
    /// Every name in either directory, in name order.
    pub checks: Vec<Check>,
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthVerdict {
    /// Every check passed (masked ones do not count).
    pub passed: bool,
    /// One line: what passed or which check failed how.
    pub summary: String,
    /// Each check in name order: run, masked, refused, or not run after a failure.
    pub checks: Vec<CheckResult>,
}

impl HealthVerdict {
    /// The check that failed, if any.
    pub fn failed_check(&self) -> Option<&CheckResult> {
        self.checks.iter().find(|c| !c.passed)
    }

    /// Whether the run had no check at all (none installed, or all masked): the slot was
    /// judged healthy for reaching init. `updater status` says so.
    pub fn no_checks_installed(&self) -> bool {
        no_checks_installed(&self.checks)
    }
}

/// Whether recorded results (a stored health report's) come from a run without checks: none
/// installed, or every one masked.
pub fn no_checks_installed(results: &[CheckResult]) -> bool {
    results.iter().all(|c| c.outcome == MASKED_OUTCOME)
}

impl HealthChecks {
    /// Finds the checks under `root` and judges each entry (see the module doc). Only a check
    /// directory that exists but cannot be listed is an error.
    pub fn discover(root: &Path) -> anyhow::Result<HealthChecks> {
        let mut by_name = BTreeMap::new();
        for dir in [VENDOR_DIR, ADMIN_DIR] {
            let dir = root.join(dir);
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("listing health checks in {}", dir.display()))
                }
            };
            for e in entries {
                let e = e.with_context(|| format!("listing health checks in {}", dir.display()))?;
                if e.file_name().as_encoded_bytes().starts_with(b".") {
                    continue;
                }
                by_name.insert(e.file_name(), e.path());
            }
        }
        let updater_uid = nix::unistd::geteuid().as_raw();
        let checks = by_name
            .into_iter()
            .map(|(name, path)| Check {
                name: name.to_string_lossy().into_owned(),
                state: judge(&path, updater_uid),
                path,
            })
            .collect();
        Ok(HealthChecks { checks })
    }

    /// Whether no check is installed (none at all, or every one masked).
    pub fn none_installed(&self) -> bool {
        self.checks.iter().all(|c| c.state == CheckState::Masked)
    }

    /// Runs the checks in order until one fails or the deadline passes.
    pub fn run(&self, limits: &Limits, env: &[(&str, &str)]) -> HealthVerdict {
        let start = Instant::now();
        let deadline = start + limits.deadline;
        if self.checks.iter().any(|c| c.state == CheckState::Runnable) {
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                log::warn!("becoming a child subreaper: {e}; a check's daemons may outlive it");
            }
        }
        let mut results = Vec::new();
        let mut failed: Option<String> = None;
        for check in &self.checks {
            let not_run = |why: &str| CheckResult {
                name: check.name.clone(),
                outcome: format!("not run: {why}"),
                passed: false,
                millis: 0,
                output: String::new(),
            };
            let r = match (&check.state, &failed) {
                (CheckState::Masked, _) => CheckResult {
                    name: check.name.clone(),
                    outcome: MASKED_OUTCOME.to_string(),
                    passed: true,
                    millis: 0,
                    output: String::new(),
                },
                (_, Some(why)) => not_run(why),
                (CheckState::Refused(why), None) => CheckResult {
                    name: check.name.clone(),
                    outcome: format!("{REFUSED_PREFIX}{why}"),
                    passed: false,
                    millis: 0,
                    output: String::new(),
                },
                (CheckState::Runnable, None) => {
                    let now = Instant::now();
                    if now >= deadline {
                        not_run(&format!("deadline of {} passed", Secs(limits.deadline)))
                    } else {
                        let own = now + limits.check_timeout;
                        let (until, limit) = if own <= deadline {
                            (
                                own,
                                format!("timed out after {}", Secs(limits.check_timeout)),
                            )
                        } else {
                            let why = format!(
                                "timed out at the deadline of all checks ({})",
                                Secs(limits.deadline)
                            );
                            (deadline, why)
                        };
                        run_one(check, until, limit, env)
                    }
                }
            };
            if !r.passed && failed.is_none() {
                failed = Some(format!("{} {}", r.name, r.outcome));
            }
            results.push(r);
        }
        let masked: Vec<&str> = results
            .iter()
            .filter(|r| r.outcome == MASKED_OUTCOME)
            .map(|r| r.name.as_str())
            .collect();
        let masked_note = if masked.is_empty() {
            String::new()
        } else {
            format!(" (masked: {})", masked.join(", "))
        };
        let ran = results.len() - masked.len();
        let summary = match &failed {
            Some(why) => format!("health check {why}"),
            None if ran == 0 => format!("no health checks installed{masked_note}: healthy"),
            None => format!("all {ran} health checks passed{masked_note}"),
        };
        HealthVerdict {
            passed: failed.is_none(),
            summary,
            checks: results,
        }
    }

    /// One line for `updater status`: how many checks are installed, which are masked and
    /// which refused (and why).
    pub fn describe(&self) -> String {
        let mut runnable = 0;
        let mut masked = Vec::new();
        let mut refused = Vec::new();
        for c in &self.checks {
            match &c.state {
                CheckState::Runnable => runnable += 1,
                CheckState::Masked => masked.push(c.name.as_str()),
                CheckState::Refused(why) => refused.push(format!("{} ({why})", c.name)),
            }
        }
        let mut s = match runnable + refused.len() {
            0 => "no health checks installed".to_string(),
            1 => "1 health check installed".to_string(),
            n => format!("{n} health checks installed"),
        };
        if !refused.is_empty() {
            s += &format!("; refused, failing every run: {}", refused.join(", "));
        }
        if !masked.is_empty() {
            s += &format!("; masked: {}", masked.join(", "));
        }
        s
    }
}

/// Seconds for messages: `2s`, `0.3s`.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_millis() == 0 {
            write!(f, "{}s", self.0.as_secs())
        } else {
            write!(f, "{}s", self.0.as_secs_f32())
        }
    }
}

/// What the entry at `path` is: runnable, masked or refused. `updater_uid` may own checks
/// besides root.
fn judge(path: &Path, updater_uid: u32) -> CheckState {
    let refused = CheckState::Refused;
    let unresolvable = |e: std::io::Error| {
        CheckState::Refused(Refusal::Unresolvable {
            reason: e.to_string(),
        })
    };
    let entry = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return unresolvable(e),
    };
    let link = if entry.file_type().is_symlink() {
        match std::fs::read_link(path) {
            Ok(target) if target == Path::new(MASK_TARGET) => return CheckState::Masked,
            Ok(target) => Some(target),
            Err(e) => return unresolvable(e),
        }
    } else {
        None
    };
    let meta = match (std::fs::metadata(path), link) {
        (Ok(m), _) => m,
        (Err(e), Some(target)) if e.kind() == std::io::ErrorKind::NotFound => {
            return refused(Refusal::BrokenSymlink { target })
        }
        (Err(e), _) => return unresolvable(e),
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        return refused(Refusal::Directory);
    }
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() {
            "character device"
        } else {
            "block device"
        };
        return refused(Refusal::NotRegularFile { kind });
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != 0 && meta.uid() != updater_uid {
        return refused(Refusal::ForeignOwner { uid: meta.uid() });
    }
    if mode & 0o022 != 0 {
        return refused(Refusal::Writable { mode });
    }
    use nix::unistd::{access, AccessFlags};
    // For root, X_OK holds when any execute bit is set; for others, when theirs is.
    if access(path, AccessFlags::X_OK).is_err() {
        return refused(Refusal::NotExecutable { mode });
    }
    if access(path, AccessFlags::R_OK).is_err() {
        return refused(Refusal::Unreadable { mode });
    }
    CheckState::Runnable
}

/// The last [`MAX_OUTPUT_BYTES`] of a stream.
struct Tail(VecDeque<u8>);

impl Tail {
    fn new() -> Tail {
        Tail(VecDeque::with_capacity(MAX_OUTPUT_BYTES))
    }

    fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(MAX_OUTPUT_BYTES)..];
        let excess = (self.0.len() + bytes.len()).saturating_sub(MAX_OUTPUT_BYTES);
        self.0.drain(..excess);
        self.0.extend(bytes);
    }

    fn into_string(mut self) -> String {
        String::from_utf8_lossy(self.0.make_contiguous()).into_owned()
    }
}

/// What one read of the output pipe found.
enum Got {
    Data,
    Nothing,
    End,
}

/// Reads what the pipe holds now (the pipe is non-blocking) into `tail`.
fn read_some(pipe: &mut std::io::PipeReader, tail: &mut Tail) -> Got {
    let mut buf = [0u8; 4096];
    match pipe.read(&mut buf) {
        Ok(0) => Got::End,
        Ok(n) => {
            tail.push(&buf[..n]);
            Got::Data
        }
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Got::Nothing,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Got::Nothing,
        Err(_) => Got::End,
    }
}

/// A unique value of [`RUN_MARKER_ENV`] per check run in this process.
fn run_marker() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}.{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs one check until it exits or `until` (its absolute end), then ends its processes.
/// `timed_out` is the outcome if `until` comes first.
fn run_one(check: &Check, until: Instant, timed_out: String, env: &[(&str, &str)]) -> CheckResult {
    let started = Instant::now();
    let result = |outcome: String, passed: bool, output: String| CheckResult {
        name: check.name.clone(),
        outcome,
        passed,
        millis: started.elapsed().as_millis() as u64,
        output,
    };
    let (mut reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            return result(
                format!("not run: creating a pipe: {e}"),
                false,
                String::new(),
            )
        }
    };
    if let Err(e) = nix::fcntl::fcntl(
        reader.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    ) {
        return result(
            format!("not run: configuring a pipe: {e}"),
            false,
            String::new(),
        );
    }
    let marker = run_marker();
    let mut cmd = Command::new(&check.path);
    cmd.envs(env.iter().copied())
        .env(RUN_MARKER_ENV, &marker)
        .stdin(Stdio::null())
        .process_group(0);
    match writer.try_clone() {
        Ok(w2) => cmd.stdout(writer).stderr(w2),
        Err(e) => {
            return result(
                format!("not run: duplicating a pipe: {e}"),
                false,
                String::new(),
            )
        }
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return result(format!("could not start: {e}"), false, String::new()),
    };
    drop(cmd); // closes our copies of the pipe's write end
    let mut tree = Tree::new(&child, &marker);
    let mut tail = Tail::new();
    let mut open = true;
    let mut next_scan = started + SCAN_INTERVAL;
    let exited = loop {
        if tree.check_exited() {
            break true;
        }
        let now = Instant::now();
        if now >= until {
            break false;
        }
        if now >= next_scan {
            tree.record(&scan_processes());
            next_scan = now + SCAN_INTERVAL;
        }
        let wait = (until - now).min(TICK);
        if open {
            let mut fds = [nix::poll::PollFd::new(
                reader.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let timeout =
                nix::poll::PollTimeout::try_from(wait).unwrap_or(nix::poll::PollTimeout::ZERO);
            if let Ok(n) = nix::poll::poll(&mut fds, timeout) {
                if n > 0 {
                    open = !matches!(read_some(&mut reader, &mut tail), Got::End);
                }
            }
        } else {
            std::thread::sleep(wait);
        }
    };
    let grace = Instant::now() + KILL_GRACE;
    let status = tree.end(&mut child, grace);
    // Whatever is still in the pipe; a writer that escaped is not waited for.
    while open && Instant::now() < grace {
        match read_some(&mut reader, &mut tail) {
            Got::Data => {}
            Got::Nothing | Got::End => open = false,
        }
    }
    let output = tail.into_string();
    if !exited {
        return result(timed_out, false, output);
    }
    match status {
        Some(s) if s.success() => result("passed".to_string(), true, output),
        Some(s) => {
            let outcome = match (s.code(), s.signal()) {
                (Some(code), _) => format!("failed (exit {code})"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => "failed".to_string(),
            };
            result(outcome, false, output)
        }
        None => result(
            "failed: its exit status could not be read".to_string(),
            false,
            output,
        ),
    }
}

/// One process, from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    pid: i32,
    ppid: i32,
    /// Process group.
    pgrp: i32,
    /// `R`, `S`, `D`, `Z`, `T`…
    state: u8,
    /// Start time in clock ticks after boot: with the pid, names one process for good.
    start: u64,
}

impl ProcStat {
    /// Not yet a zombie.
    fn alive(&self) -> bool {
        !matches!(self.state, b'Z' | b'X' | b'x')
    }
}

/// Parses a `/proc/PID/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so the fields after it are found from its last `)`.
fn parse_stat(line: &[u8]) -> Option<ProcStat> {
    let open = line.iter().position(|&b| b == b'(')?;
    let close = line.iter().rposition(|&b| b == b')')?;
    let pid = std::str::from_utf8(line.get(..open)?)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let rest = std::str::from_utf8(line.get(close + 1..)?).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(20).collect();
    // fields[0] is field 3 (state), [1] field 4 (ppid), [2] field 5 (pgrp), [19] field 22
    // (starttime).
    let state = *fields.first()?.as_bytes().first()?;
    Some(ProcStat {
        pid,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        state,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Every process in `/proc` (at most [`MAX_PROCESSES`]).
fn scan_processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        if out.len() >= MAX_PROCESSES {
            break;
        }
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let mut line = Vec::with_capacity(MAX_STAT_BYTES as usize);
        let read = std::fs::File::open(format!("/proc/{pid}/stat"))
            .and_then(|f| f.take(MAX_STAT_BYTES).read_to_end(&mut line));
        if let Some(p) = read.ok().and_then(|_| parse_stat(&line)) {
            out.push(p);
        }
    }
    out
}

/// Whether the environment `pid` started with holds `needle` (`\0NAME=VALUE\0`), searched
/// in its first [`MAX_ENVIRON_BYTES`].
fn environ_has(pid: i32, needle: &[u8]) -> bool {
    let Ok(f) = std::fs::File::open(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let mut f = f.take(MAX_ENVIRON_BYTES);
    let mut buf = [0u8; 4096];
    // The first entry has no NUL before it: start the window with one.
    let mut window = Vec::with_capacity(needle.len() + buf.len());
    window.push(0);
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        window.extend_from_slice(&buf[..n]);
        if window.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        window.drain(..window.len().saturating_sub(needle.len() - 1));
    }
}

/// The processes of one running check: the check, every process below it, and its orphans
/// (which this process, a subreaper, inherits).
struct Tree {
    /// The check. Its exit is looked at without reaping it, so its pid (and process group)
    /// cannot be reused until [`Tree::end`] is done.
    check: i32,
    /// This process.
    me: i32,
    /// `\0RUN_MARKER_ENV=value\0`.
    needle: Vec<u8>,
    /// Processes seen in the tree, by pid and start time (at most [`MAX_PROCESSES`]).
    seen: HashSet<(i32, u64)>,
}

impl Tree {
    fn new(child: &Child, marker: &str) -> Tree {
        Tree {
            check: child.id() as i32,
            me: std::process::id() as i32,
            needle: format!("\0{RUN_MARKER_ENV}={marker}\0").into_bytes(),
            seen: HashSet::new(),
        }
    }

    /// Whether the check has exited (it stays unreaped).
    fn check_exited(&self) -> bool {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        !matches!(
            waitid(Id::Pid(Pid::from_raw(self.check)), flags),
            Ok(WaitStatus::StillAlive)
        )
    }

    /// The tree's processes in `table`: the check, the rest of its process group, those seen
    /// before, this process's children carrying the run's marker, and every process below
    /// them. Only this process's
    /// descendants qualify (it is the subreaper of every check's orphans), so whatever a stale
    /// record says, nothing else is ever signalled.
    fn members(&self, table: &[ProcStat]) -> Vec<ProcStat> {
        let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
        for (i, p) in table.iter().enumerate() {
            children.entry(p.ppid).or_default().push(i);
        }
        let below = |starts: Vec<usize>| {
            let mut taken: HashSet<usize> = starts.iter().copied().collect();
            let mut queue = starts;
            let mut out = Vec::new();
            while let Some(i) = queue.pop() {
                out.push(i);
                for &c in children.get(&table[i].pid).into_iter().flatten() {
                    if taken.insert(c) {
                        queue.push(c);
                    }
                }
            }
            out
        };
        let mine = below(children.get(&self.me).cloned().unwrap_or_default());
        let roots = mine
            .into_iter()
            .filter(|&i| {
                let p = &table[i];
                p.pid == self.check
                    || p.pgrp == self.check
                    || self.seen.contains(&(p.pid, p.start))
                    || (p.ppid == self.me && environ_has(p.pid, &self.needle))
            })
            .collect();
        below(roots).into_iter().map(|i| table[i]).collect()
    }

    /// Remembers the tree's processes now, so they are found after they leave it.
    fn record(&mut self, table: &[ProcStat]) {
        for p in self.members(table) {
            if self.seen.len() < MAX_PROCESSES {
                self.seen.insert((p.pid, p.start));
            }
        }
    }

    /// Stops every process of the tree (a stopped process cannot fork), kills them all and
    /// reaps those that became this process's children, then the check; gives up at `until`.
    /// Returns the check's exit status if it was reaped.
    fn end(&mut self, child: &mut Child, until: Instant) -> Option<ExitStatus> {
        let mut stopped = HashSet::new();
        while Instant::now() < until {
            let table = scan_processes();
            self.record(&table);
            let fresh: Vec<ProcStat> = self
                .members(&table)
                .into_iter()
                .filter(|p| p.alive() && stopped.insert((p.pid, p.start)))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for p in fresh {
                let _ = kill(Pid::from_raw(p.pid), Signal::SIGSTOP);
            }
        }
        // The check is not reaped, so its process group id still names its group.
        let _ = killpg(Pid::from_raw(self.check), Signal::SIGKILL);
        loop {
            let table = scan_processes();
            self.record(&table);
            let mut others = false;
            for p in self.members(&table) {
                if p.pid == self.check {
                    if p.alive() {
                        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                    }
                    continue;
                }
                others = true;
                if p.alive() {
                    let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                } else if p.ppid == self.me {
                    let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
                }
            }
            if !others && self.check_exited() {
                return child.wait().ok();
            }
            if Instant::now() >= until {
                log::warn!(
                    "health check processes (pid {}) still present after {}",
                    self.check,
                    Secs(KILL_GRACE)
                );
                return self.check_exited().then(|| child.wait().ok()).flatten();
            }
            std::thread::sleep(REAP_TICK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn limits(timeout_ms: u64, deadline_ms: u64) -> Limits {
        Limits {
            check_timeout: Duration::from_millis(timeout_ms),
            deadline: Duration::from_millis(deadline_ms),
        }
    }

    fn root_with(checks: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, body) in checks {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    #[test]
    fn all_passing_checks_pass_in_name_order() {
        let r = root_with(&[
            ("usr/lib/updater/health.d/20-b", "exit 0"),
            ("etc/updater/health.d/10-a", "echo hi; exit 0"),
        ]);
        let v = HealthChecks::discover(r.path())
            .unwrap()
            .run(&limits(5000, 10000), &[]);
        assert!(v.passed, "{v:?}");
        assert_eq!(
            v.checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["10-a", "20-b"]
        );
        assert_eq!(v.checks[0].output, "hi\n");
    }

    #[test]
    fn a_failing_check_fails_the_run_with_its_output_and_stops_it() {
        let r = root_with(&[
            (
                "usr/lib/updater/health.d/10-app",
                "echo app is down >&2; exit 3",
            ),
            ("usr/lib/updater/health.d/20-next", "exit 0"),
        ]);
        let v = HealthChecks::discover(r.path())
            .unwrap()
            .run(&limits(5000, 10000), &[]);
        assert!(!v.passed);
        assert_eq!(v.summary, "health check 10-app failed (exit 3)");
        assert_eq!(v.failed_check().unwrap().output, "app is down\n");
        assert!(
            v.checks[1].outcome.starts_with("not run"),
            "{:?}",
            v.checks[1]
        );
    }

    #[test]
    fn admin_check_replaces_the_vendor_check_of_the_same_name() {
        let r = root_with(&[
            ("usr/lib/updater/health.d/10-app", "exit 1"),
            ("etc/updater/health.d/10-app", "exit 0"),
        ]);
        assert!(
            HealthChecks::discover(r.path())
                .unwrap()
                .run(&limits(5000, 10000), &[])
                .passed
        );
    }

    #[test]
    fn a_hanging_check_is_killed_at_its_timeout_with_its_children() {
        let r = root_with(&[(
            "usr/lib/updater/health.d/10-hang",
            "echo started; sleep 60 & sleep 60",
        )]);
        let t = Instant::now();
        let v = HealthChecks::discover(r.path())
            .unwrap()
            .run(&limits(300, 10000), &[]);
        assert!(!v.passed);
        assert!(v.summary.contains("timed out"), "{}", v.summary);
        assert_eq!(v.checks[0].output, "started\n");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the run waited for the orphaned child"
        );
    }

    #[test]
    fn the_deadline_bounds_the_whole_run() {
        // Each check alone is within its timeout; together they overrun the deadline.
        let r = root_with(&[
            ("usr/lib/updater/health.d/10-slow", "sleep 1"),
            ("usr/lib/updater/health.d/20-slow", "sleep 1"),
            ("usr/lib/updater/health.d/30-slow", "sleep 1"),
        ]);
        let t = Instant::now();
        let v = HealthChecks::discover(r.path())
            .unwrap()
            .run(&limits(30_000, 1_500), &[]);
        assert!(!v.passed, "{v:?}");
        let last = v.checks.last().unwrap();
        assert!(
            last.outcome.starts_with("not run") || last.outcome.starts_with("timed out"),
            "{v:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the deadline did not cut the run short"
        );
    }

    #[test]
    fn output_is_bounded_to_its_tail() {
        let r = root_with(&[(
            "usr/lib/updater/health.d/10-noisy",
            "yes x | head -c 100000; echo END; exit 1",
        )]);
        let v = HealthChecks::discover(r.path())
            .unwrap()
            .run(&limits(5000, 10000), &[]);
        let out = &v.failed_check().unwrap().output;
        assert_eq!(out.len(), MAX_OUTPUT_BYTES);
        assert!(out.ends_with("END\n"));
    }

    #[test]
    fn checks_see_slot_and_version() {
        let r = root_with(&[(
            "usr/lib/updater/health.d/10-env",
            "test \"$UPDATER_SLOT/$UPDATER_VERSION\" = B/2",
        )]);
        let v = HealthChecks::discover(r.path()).unwrap().run(
            &limits(5000, 10000),
            &[("UPDATER_SLOT", "B"), ("UPDATER_VERSION", "2")],
        );
        assert!(v.passed, "{v:?}");
    }

    /// How an admin entry named `10-app`, over a passing vendor check of that name, is
    /// judged and what the run records for it.
    #[test]
    fn each_kind_of_entry_is_run_masked_or_refused() {
        let root = nix::unistd::geteuid().is_root();
        let script = |mode: u32| {
            move |p: &Path| {
                std::fs::write(p, "#!/bin/sh\nexit 0\n").unwrap();
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        };
        let link =
            |target: &'static str| move |p: &Path| std::os::unix::fs::symlink(target, p).unwrap();
        type Setup = Box<dyn Fn(&Path)>;
        #[rustfmt::skip]
        let rows: Vec<(&str, Setup, CheckState, &str)> = vec![
            ("an executable script", Box::new(script(0o755)), CheckState::Runnable, "passed"),
            ("executable by its owner only", Box::new(script(0o700)), CheckState::Runnable, "passed"),
            ("a symlink to an executable", Box::new(move |p: &Path| {
                let real = p.parent().unwrap().join("../real-check");
                script(0o755)(&real);
                std::os::unix::fs::symlink(&real, p).unwrap();
            }), CheckState::Runnable, "passed"),
            ("a symlink to /dev/null", Box::new(link("/dev/null")), CheckState::Masked, MASKED_OUTCOME),
            ("a symlink to /dev/null by another spelling", Box::new(link("/dev/../dev/null")),
                CheckState::Refused(Refusal::NotRegularFile { kind: "character device" }),
                "refused: not a regular file but a character device"),
            ("not executable", Box::new(script(0o644)),
                CheckState::Refused(Refusal::NotExecutable { mode: 0o644 }),
                "refused: not executable (mode 0644)"),
            ("group-writable", Box::new(script(0o775)),
                CheckState::Refused(Refusal::Writable { mode: 0o775 }),
                "refused: group- or world-writable (mode 0775)"),
            ("world-writable", Box::new(script(0o757)),
                CheckState::Refused(Refusal::Writable { mode: 0o757 }),
                "refused: group- or world-writable (mode 0757)"),
            ("a broken symlink", Box::new(link("/nonexistent/10-app")),
                CheckState::Refused(Refusal::BrokenSymlink { target: "/nonexistent/10-app".into() }),
                "refused: a broken symlink to /nonexistent/10-app"),
            ("a symlink loop", Box::new(link("10-app")),
                CheckState::Refused(Refusal::Unresolvable {
                    reason: "Too many levels of symbolic links (os error 40)".into(),
                }),
                "refused: unresolvable: Too many levels of symbolic links (os error 40)"),
            ("a directory", Box::new(|p: &Path| std::fs::create_dir(p).unwrap()),
                CheckState::Refused(Refusal::Directory), "refused: a directory"),
            ("a FIFO", Box::new(|p: &Path| {
                nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o755)).unwrap()
            }), CheckState::Refused(Refusal::NotRegularFile { kind: "FIFO" }),
                "refused: not a regular file but a FIFO"),
        ];
        // Only root can make a file that is unreadable to root impossible, or give one away.
        let mut rows = rows;
        if root {
            rows.push((
                "owned by another user",
                Box::new(move |p: &Path| {
                    script(0o755)(p);
                    std::os::unix::fs::chown(p, Some(65534), None).unwrap();
                }),
                CheckState::Refused(Refusal::ForeignOwner { uid: 65534 }),
                "refused: owned by uid 65534, not root",
            ));
        } else {
            rows.push((
                "unreadable",
                Box::new(script(0o311)),
                CheckState::Refused(Refusal::Unreadable { mode: 0o311 }),
                "refused: unreadable (mode 0311)",
            ));
        }
        for (what, setup, state, outcome) in rows {
            let r = root_with(&[("usr/lib/updater/health.d/10-app", "exit 0")]);
            let admin = r.path().join(ADMIN_DIR);
            std::fs::create_dir_all(&admin).unwrap();
            let path = admin.join("10-app");
            setup(&path);
            let checks = HealthChecks::discover(r.path()).unwrap();
            assert_eq!(
                checks.checks,
                [Check {
                    name: "10-app".into(),
                    path,
                    state: state.clone()
                }],
                "{what}"
            );
            let v = checks.run(&limits(5000, 10000), &[]);
            assert_eq!(v.checks.len(), 1, "{what}: {v:?}");
            assert_eq!(v.checks[0].outcome, outcome, "{what}");
            let passes = matches!(state, CheckState::Runnable | CheckState::Masked);
            assert_eq!(v.passed, passes, "{what}: {v:?}");
            assert_eq!(v.checks[0].passed, passes, "{what}: {v:?}");
        }
    }

    #[test]
    fn checks_may_belong_to_root_or_to_the_updaters_own_user() {
        let r = root_with(&[("usr/lib/updater/health.d/10-app", "exit 0")]);
        let path = r.path().join(VENDOR_DIR).join("10-app");
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(judge(&path, me), CheckState::Runnable);
        if me == 0 {
            // Root's files are trusted whoever runs the updater; another user's only by it.
            assert_eq!(judge(&path, 1000), CheckState::Runnable);
            std::os::unix::fs::chown(&path, Some(1000), None).unwrap();
            assert_eq!(judge(&path, 1000), CheckState::Runnable);
            assert_eq!(
                judge(&path, 0),
                CheckState::Refused(Refusal::ForeignOwner { uid: 1000 })
            );
        } else {
            assert_eq!(
                judge(&path, me + 1),
                CheckState::Refused(Refusal::ForeignOwner { uid: me })
            );
        }
    }

    #[test]
    fn a_refused_check_fails_the_run_and_stops_it() {
        let r = root_with(&[
            ("usr/lib/updater/health.d/10-app", "exit 0"),
            ("usr/lib/updater/health.d/20-next", "exit 0"),
        ]);
        std::fs::set_permissions(
            r.path().join("usr/lib/updater/health.d/10-app"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let v = HealthChecks::discover(r.path())
            .unwrap()
            .run(&limits(5000, 10000), &[]);
        assert!(!v.passed);
        assert_eq!(
            v.summary,
            "health check 10-app refused: not executable (mode 0644)"
        );
        assert_eq!(
            v.checks[1].outcome,
            "not run: 10-app refused: not executable (mode 0644)"
        );
    }

    #[test]
    fn a_check_directory_that_cannot_be_listed_is_an_error_not_an_empty_one() {
        let r = root_with(&[("usr/lib/updater/health.d/10-app", "exit 0")]);
        std::fs::create_dir_all(r.path().join("etc/updater")).unwrap();
        std::fs::write(r.path().join(ADMIN_DIR), "not a directory\n").unwrap();
        let e = HealthChecks::discover(r.path()).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            format!(
                "listing health checks in {}: Not a directory (os error 20)",
                r.path().join(ADMIN_DIR).display()
            )
        );
    }

    #[test]
    fn hidden_entries_are_not_checks() {
        let r = root_with(&[("etc/updater/health.d/.10-app.swp", "exit 1")]);
        let checks = HealthChecks::discover(r.path()).unwrap();
        assert_eq!(checks.checks, []);
    }

    #[test]
    fn a_run_without_checks_says_none_are_installed() {
        let r = root_with(&[("usr/lib/updater/health.d/10-app", "exit 0")]);
        let one = HealthChecks::discover(r.path()).unwrap();
        assert!(!one.none_installed());
        assert_eq!(one.describe(), "1 health check installed");
        let v = one.run(&limits(5000, 10000), &[]);
        assert_eq!(v.summary, "all 1 health checks passed");
        assert!(!v.no_checks_installed());

        let none = HealthChecks::discover(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(none.none_installed());
        assert_eq!(none.describe(), "no health checks installed");
        let v = none.run(&limits(5000, 10000), &[]);
        assert!(v.passed);
        assert_eq!(v.summary, "no health checks installed: healthy");
        assert!(v.no_checks_installed());
    }

    #[test]
    fn a_run_whose_checks_are_all_masked_says_none_are_installed() {
        let r = root_with(&[("usr/lib/updater/health.d/10-app", "exit 1")]);
        std::fs::create_dir_all(r.path().join(ADMIN_DIR)).unwrap();
        std::os::unix::fs::symlink("/dev/null", r.path().join(ADMIN_DIR).join("10-app")).unwrap();
        let checks = HealthChecks::discover(r.path()).unwrap();
        assert!(checks.none_installed());
        assert_eq!(
            checks.describe(),
            "no health checks installed; masked: 10-app"
        );
        let v = checks.run(&limits(5000, 10000), &[]);
        assert!(v.passed);
        assert_eq!(
            v.summary,
            "no health checks installed (masked: 10-app): healthy"
        );
        assert!(v.no_checks_installed());
    }

    #[test]
    fn status_names_masked_and_refused_checks() {
        let r = root_with(&[
            ("usr/lib/updater/health.d/10-a", "exit 0"),
            ("usr/lib/updater/health.d/20-b", "exit 0"),
            ("usr/lib/updater/health.d/30-c", "exit 0"),
        ]);
        std::fs::set_permissions(
            r.path().join("usr/lib/updater/health.d/20-b"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        std::fs::create_dir_all(r.path().join(ADMIN_DIR)).unwrap();
        std::os::unix::fs::symlink("/dev/null", r.path().join(ADMIN_DIR).join("30-c")).unwrap();
        assert_eq!(
            HealthChecks::discover(r.path()).unwrap().describe(),
            "2 health checks installed; refused, failing every run: 20-b (group- or world-writable (mode 0666)); masked: 30-c"
        );
    }

    #[test]
    fn a_passing_run_names_its_masked_checks() {
        let r = root_with(&[
            ("usr/lib/updater/health.d/10-a", "exit 0"),
            ("usr/lib/updater/health.d/20-b", "exit 1"),
        ]);
        std::fs::create_dir_all(r.path().join(ADMIN_DIR)).unwrap();
        std::os::unix::fs::symlink("/dev/null", r.path().join(ADMIN_DIR).join("20-b")).unwrap();
        let v = HealthChecks::discover(r.path())
            .unwrap()
            .run(&limits(5000, 10000), &[]);
        assert!(v.passed, "{v:?}");
        assert_eq!(v.summary, "all 1 health checks passed (masked: 20-b)");
        assert!(!v.no_checks_installed());
    }

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        let line =
            b"4242 (a) (b c) S 17 4240 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2 3\n";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                pid: 4242,
                ppid: 17,
                pgrp: 4240,
                state: b'S',
                start: 987654
            })
        );
        assert_eq!(parse_stat(b"4242 (sh) S 17 4242"), None, "too few fields");
        assert_eq!(
            parse_stat(b"x (sh) S 17 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5"),
            None
        );
    }

    /// Runs `f` on its own thread; fails the test (instead of hanging it) after `limit`.
    fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("the health run was still running after {limit:?}"))
    }

    /// Whether the process whose id the check wrote to `pidfile` still exists (alive or not
    /// yet reaped).
    fn still_exists(pidfile: &Path) -> bool {
        let pid = std::fs::read_to_string(pidfile).expect("the check wrote its child's pid");
        Path::new("/proc").join(pid.trim()).exists()
    }

    /// A check body that starts a daemon in its own session, holding the check's stdout,
    /// and waits until the daemon has written its pid to `$PIDFILE`.
    const LEAVE_A_DAEMON: &str = "setsid sh -c 'echo $$ > \"$PIDFILE\"; exec sleep 1000' &
while [ ! -s \"$PIDFILE\" ]; do sleep 0.05; done";

    #[test]
    fn a_timed_out_check_whose_daemon_holds_the_pipe_ends_at_its_timeout_and_the_daemon_dies() {
        let r = root_with(&[(
            "usr/lib/updater/health.d/10-hang",
            &format!("{LEAVE_A_DAEMON}\necho started; sleep 1000"),
        )]);
        let pidfile = r.path().join("daemon.pid");
        let env_pid = pidfile.to_str().unwrap().to_string();
        let checks = HealthChecks::discover(r.path()).unwrap();
        let t = Instant::now();
        let v = within(Duration::from_secs(30), move || {
            checks.run(&limits(2000, 60_000), &[("PIDFILE", env_pid.as_str())])
        });
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "took {:?}",
            t.elapsed()
        );
        assert!(v.summary.contains("timed out"), "{v:?}");
        assert_eq!(v.checks[0].output, "started\n");
        assert!(!still_exists(&pidfile), "the daemon outlived the check");
    }

    #[test]
    fn a_passing_check_that_leaves_a_daemon_holding_the_pipe_passes_and_the_daemon_dies() {
        let r = root_with(&[(
            "usr/lib/updater/health.d/10-daemon",
            &format!("{LEAVE_A_DAEMON}\necho ok; exit 0"),
        )]);
        let pidfile = r.path().join("daemon.pid");
        let env_pid = pidfile.to_str().unwrap().to_string();
        let checks = HealthChecks::discover(r.path()).unwrap();
        let t = Instant::now();
        let v = within(Duration::from_secs(30), move || {
            checks.run(&limits(20_000, 60_000), &[("PIDFILE", env_pid.as_str())])
        });
        assert!(v.passed, "{v:?}");
        assert_eq!(v.checks[0].output, "ok\n");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "took {:?}",
            t.elapsed()
        );
        assert!(!still_exists(&pidfile), "the daemon outlived the check");
    }

    /// Runs a passing check that leaves the daemon `start` launches (which writes its pid to
    /// `$PIDFILE`), then waits `linger`; returns whether the daemon still exists after the run.
    fn daemon_survives(start: &str, linger: &str) -> bool {
        let body = format!(
            "{start}\nwhile [ ! -s \"$PIDFILE\" ]; do sleep 0.05; done\nsleep {linger}\necho ok"
        );
        let r = root_with(&[("usr/lib/updater/health.d/10-daemon", &body)]);
        let pidfile = r.path().join("daemon.pid");
        let env_pid = pidfile.to_str().unwrap().to_string();
        let checks = HealthChecks::discover(r.path()).unwrap();
        let v = within(Duration::from_secs(30), move || {
            checks.run(&limits(20_000, 60_000), &[("PIDFILE", env_pid.as_str())])
        });
        assert!(v.passed, "{v:?}");
        assert_eq!(v.checks[0].output, "ok\n");
        still_exists(&pidfile)
    }

    #[test]
    fn a_daemon_that_clears_its_environment_dies_once_seen_in_the_tree() {
        // env -i drops the run marker; the tree recorded while the check ran still has it.
        assert!(!daemon_survives(
            "setsid env -i PIDFILE=\"$PIDFILE\" sh -c 'echo $$ > \"$PIDFILE\"; exec sleep 1000' &",
            "1"
        ));
    }

    #[test]
    fn a_double_forked_daemon_dies_by_its_run_marker() {
        // The intermediate exits at once: the daemon is never below the check in a scan.
        assert!(!daemon_survives(
            "sh -c 'setsid sh -c \"echo \\$\\$ > \\\"$PIDFILE\\\"; exec sleep 1000\" & exit 0'",
            "0"
        ));
    }

    #[test]
    fn an_unmarked_orphan_in_the_checks_process_group_dies_with_the_group() {
        // Neither below the check (its parent exits at once) nor marked (env -i): only its
        // process group, the check's, still names it.
        assert!(!daemon_survives(
            "sh -c 'env -i PIDFILE=\"$PIDFILE\" sh -c \"echo \\$\\$ > \\\"\\$PIDFILE\\\"; exec sleep 1000\" & exit 0'",
            "0"
        ));
    }

    #[test]
    fn a_daemon_that_keeps_forking_dies_with_its_children() {
        assert!(!daemon_survives(
            "setsid sh -c 'echo $$ > \"$PIDFILE\"; while :; do sleep 0.01 & sleep 0.01; done' &",
            "0.5"
        ));
    }

    #[test]
    fn a_run_leaves_the_callers_other_children_alone() {
        let mut bystander = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(!daemon_survives(
            "setsid sh -c 'echo $$ > \"$PIDFILE\"; exec sleep 1000' &",
            "0.3"
        ));
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "a process the run did not start was killed"
        );
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }

    #[test]
    fn the_deadline_holds_across_checks_when_a_daemon_holds_the_pipe() {
        // The second check's own timeout (30 s) is cut to what is left of the 3 s deadline.
        let r = root_with(&[
            ("usr/lib/updater/health.d/10-slow", "sleep 1"),
            (
                "usr/lib/updater/health.d/20-hang",
                &format!("{LEAVE_A_DAEMON}\nsleep 1000"),
            ),
            ("usr/lib/updater/health.d/30-next", "exit 0"),
        ]);
        let pidfile = r.path().join("daemon.pid");
        let env_pid = pidfile.to_str().unwrap().to_string();
        let checks = HealthChecks::discover(r.path()).unwrap();
        let t = Instant::now();
        let v = within(Duration::from_secs(30), move || {
            checks.run(&limits(30_000, 3_000), &[("PIDFILE", env_pid.as_str())])
        });
        assert!(
            t.elapsed() < Duration::from_secs(7),
            "took {:?}",
            t.elapsed()
        );
        assert_eq!(
            v.summary, "health check 20-hang timed out at the deadline of all checks (3s)",
            "{v:?}"
        );
        assert!(v.checks[2].outcome.starts_with("not run"), "{v:?}");
        assert!(!still_exists(&pidfile), "the daemon outlived the check");
    }

    #[test]
    fn an_unusable_admin_file_does_not_remove_the_vendor_check_it_shadows() {
        let r = root_with(&[
            ("usr/lib/updater/health.d/10-app", "exit 0"),
            ("etc/updater/health.d/10-app", "exit 0"),
        ]);
        std::fs::set_permissions(
            r.path().join("etc/updater/health.d/10-app"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let v = HealthChecks::discover(r.path())
            .unwrap()
            .run(&limits(5000, 10000), &[]);
        assert!(!v.passed, "{v:?}");
        assert_eq!(
            v.summary,
            "health check 10-app refused: not executable (mode 0644)"
        );
    }
}
