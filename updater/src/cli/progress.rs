//! Progress output: JSON lines on stdout (`--json`), a progress bar on a terminal's stderr,
//! or nothing.

use crate::install::Progress;
use std::io::{IsTerminal, Write};

/// Writes one JSON object per line to stdout.
pub fn emit_json(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not fail the install.
    let _ = writeln!(out, "{v}").and_then(|()| out.flush());
}

/// JSON lines: `{"event":"phase",…}` per step and `{"event":"progress",…}` at most once per
/// percent.
#[derive(Default)]
pub struct JsonProgress {
    phase: &'static str,
    total: u64,
    last_percent: Option<u64>,
}

impl Progress for JsonProgress {
    fn delta(&mut self, fetch_bytes: u64, reuse_bytes: u64, reuse_target_bytes: u64) {
        emit_json(&serde_json::json!({
            "event": "delta", "fetch_bytes": fetch_bytes, "reuse_bytes": reuse_bytes,
            "reuse_target_bytes": reuse_target_bytes
        }));
    }
    fn phase(&mut self, phase: &'static str, total: u64) {
        self.phase = phase;
        self.total = total;
        self.last_percent = None;
        emit_json(&serde_json::json!({"event": "phase", "phase": phase, "total": total}));
    }
    fn advance(&mut self, done: u64) {
        let percent = (done * 100).checked_div(self.total).unwrap_or(100);
        if self.last_percent != Some(percent) {
            self.last_percent = Some(percent);
            emit_json(&serde_json::json!({
                "event": "progress", "phase": self.phase, "done": done, "total": self.total
            }));
        }
    }
}

/// A progress bar on stderr.
pub struct BarProgress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress for BarProgress {
    fn delta(&mut self, fetch_bytes: u64, reuse_bytes: u64, reuse_target_bytes: u64) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        eprintln!("by delta: {fetch_bytes} bytes to fetch, {reuse_bytes} bytes to copy from the booted slot{}", match reuse_target_bytes {
            0 => String::new(),
            n => format!(", {n} from the target slot"),
        });
    }
    fn phase(&mut self, phase: &'static str, total: u64) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        if total == 0 {
            eprintln!("{phase}");
            return;
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(phase);
        self.bar = Some(bar);
    }
    fn advance(&mut self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

/// The reporter for the options: JSON, a bar when stderr is a terminal, else nothing.
pub fn reporter(json: bool) -> Box<dyn Progress> {
    if json {
        Box::new(JsonProgress::default())
    } else if std::io::stderr().is_terminal() {
        Box::new(BarProgress { bar: None })
    } else {
        Box::new(crate::install::NoProgress)
    }
}
