//! Health checks (DESIGN §7): the operator's executables that decide whether a new slot is
//! committed.
//!
//! Checks are the executable files in `ROOT/usr/lib/updater/health.d` (vendor) and
//! `ROOT/etc/updater/health.d` (admin; a file there replaces the vendor check of the same
//! name). They run one at a time in name order, each with its own timeout and all within one
//! deadline; a check passes by exiting 0. The first failure stops the run: the verdict names
//! the check and keeps the tail of its output (at most [`MAX_OUTPUT_BYTES`], in a fixed ring),
//! so `updater status` on the old slot can say why the new one was rolled back. A check that
//! outlives its timeout is killed with its whole process group.
//!
//! Checks get `UPDATER_SLOT` (A or B) and `UPDATER_VERSION` in their environment.
//!
//! ```
//! use std::time::Duration;
//! use updater::health::{HealthChecks, Limits};
//! let dir = tempfile::tempdir().unwrap();
//! let checks = HealthChecks::discover(dir.path()).unwrap();
//! let limits = Limits { check_timeout: Duration::from_secs(5), deadline: Duration::from_secs(10) };
//! assert!(checks.run(&limits, &[]).passed); // no checks: healthy
//! ```
use crate::history::CheckResult;
use anyhow::Context;
use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Vendor checks, relative to the root.
pub const VENDOR_DIR: &str = "usr/lib/updater/health.d";
/// Admin checks, relative to the root.
pub const ADMIN_DIR: &str = "etc/updater/health.d";
/// Output kept per check: the last this many bytes.
pub const MAX_OUTPUT_BYTES: usize = 4096;

/// Time limits of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// One check.
    pub check_timeout: Duration,
    /// All checks together.
    pub deadline: Duration,
}

/// The checks found under a root, in run order.
#[derive(Debug, Clone, Default)]
pub struct HealthChecks {
    /// Paths of the executables, in name order.
    pub checks: Vec<PathBuf>,
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthVerdict {
    /// Every check passed.
    pub passed: bool,
    /// One line: what passed or which check failed how.
    pub summary: String,
    /// Each check run (and those not run after a failure).
    pub checks: Vec<CheckResult>,
}

impl HealthVerdict {
    /// The check that failed, if any.
    pub fn failed_check(&self) -> Option<&CheckResult> {
        self.checks.iter().find(|c| !c.passed)
    }
}

impl HealthChecks {
    /// Finds the checks under `root`; non-executable files are skipped.
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
                by_name.insert(e.file_name(), e.path());
            }
        }
        let checks = by_name
            .into_values()
            .filter(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .collect();
        Ok(HealthChecks { checks })
    }

    /// Runs the checks in order until one fails or the deadline passes.
    pub fn run(&self, limits: &Limits, env: &[(&str, &str)]) -> HealthVerdict {
        let start = Instant::now();
        let mut results = Vec::new();
        let mut failed: Option<String> = None;
        for path in &self.checks {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(why) = &failed {
                results.push(CheckResult {
                    name,
                    outcome: format!("not run: {why}"),
                    passed: false,
                    millis: 0,
                    output: String::new(),
                });
                continue;
            }
            let left = limits.deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                let why = format!("deadline of {}s passed", limits.deadline.as_secs());
                results.push(CheckResult {
                    name: name.clone(),
                    outcome: format!("not run: {why}"),
                    passed: false,
                    millis: 0,
                    output: String::new(),
                });
                failed = Some(why);
                continue;
            }
            let r = run_one(path, &name, limits.check_timeout.min(left), env);
            if !r.passed {
                failed = Some(format!("{name} {}", r.outcome));
            }
            results.push(r);
        }
        let passed = failed.is_none();
        let summary = match (&failed, results.len()) {
            (None, 0) => "no health checks installed: healthy".to_string(),
            (None, n) => format!("all {n} health checks passed"),
            (Some(_), _) => {
                let bad = results.iter().find(|r| !r.passed).expect("a failed check");
                format!("health check {} {}", bad.name, bad.outcome)
            }
        };
        HealthVerdict {
            passed,
            summary,
            checks: results,
        }
    }
}

/// Keeps the last [`MAX_OUTPUT_BYTES`] of a stream.
fn read_tail(mut r: impl Read) -> String {
    let mut ring: VecDeque<u8> = VecDeque::with_capacity(MAX_OUTPUT_BYTES);
    let mut buf = [0u8; 1024];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if ring.len() == MAX_OUTPUT_BYTES {
                ring.pop_front();
            }
            ring.push_back(b);
        }
    }
    String::from_utf8_lossy(ring.make_contiguous()).into_owned()
}

fn run_one(path: &Path, name: &str, timeout: Duration, env: &[(&str, &str)]) -> CheckResult {
    let started = Instant::now();
    let result = |outcome: String, passed: bool, output: String| CheckResult {
        name: name.to_string(),
        outcome,
        passed,
        millis: started.elapsed().as_millis() as u64,
        output,
    };
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            return result(
                format!("not run: creating a pipe: {e}"),
                false,
                String::new(),
            )
        }
    };
    let mut cmd = Command::new(path);
    cmd.envs(env.iter().copied())
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
    let tail = std::thread::spawn(move || read_tail(reader));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= timeout => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    let outcome = match status {
        None => {
            // Kill the whole group so children holding the pipe do not keep us waiting.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            format!("timed out after {}s", timeout.as_secs_f32())
        }
        Some(s) if s.success() => {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            String::from("passed")
        }
        Some(s) => {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            match (s.code(), s.signal()) {
                (Some(code), _) => format!("failed (exit {code})"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => "failed".to_string(),
            }
        }
    };
    let output = tail.join().unwrap_or_default();
    let passed = outcome == "passed";
    result(outcome, passed, output)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn non_executable_files_are_not_checks() {
        let r = root_with(&[("usr/lib/updater/health.d/10-app", "exit 1")]);
        std::fs::set_permissions(
            r.path().join("usr/lib/updater/health.d/10-app"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(HealthChecks::discover(r.path()).unwrap().checks.is_empty());
    }
}
