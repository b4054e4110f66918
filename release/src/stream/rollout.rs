//! The client-side rollout rule and the choice of a target release.
//!
//! Every decision is computed on the box from the signed stream; the server keeps no state per
//! box. A box's [`Position`] in `[0, 1)` is the first 53 bits of
//! `SHA-256("updater rollout position\n" ‖ machine id)`: stable across releases and channels,
//! so the same boxes go first every time (a known canary set, and a box that went early once is
//! never late the next time by chance). The release version is deliberately not mixed in.
//! `rollout_wariness` replaces the position with a chosen value ([`Position::from_wariness`]).
//!
//! A release with a [`Rollout`] is open to a box at time `t` when it is not paused, `t ≥ start`,
//! and `position < fraction(t)` or `fraction(t) = 1`, where ([`open_fraction`])
//!
//! ```text
//! fraction(t) = start_fraction + (1 − start_fraction) · min((t − start) / duration, 1)
//! ```
//!
//! (`duration = 0` gives 1 from `start` on). A box running a dead end ignores its position: it
//! should leave a pulled release as soon as a newer one is offered.
//!
//! [`choose_target`] applies, to each release, the rules in this order and records the first
//! that skips it ([`Skip`]): not newer than the booted version; failed on this box; dead end;
//! behind a barrier (above the lowest non-dead-end barrier that is newer than the booted
//! version); not offered (no rollout); paused; not started; not open for this position. The
//! newest release that no rule skips is the target; the others that passed are superseded.
//!
//! ```
//! use ab_release::stream::rollout::{open_fraction, Position};
//! use ab_release::stream::Rollout;
//! let r = Rollout { start: 1000, duration: 100, start_fraction: 0.5, paused: false };
//! assert_eq!(open_fraction(&r, 999), 0.0);
//! assert_eq!(open_fraction(&r, 1000), 0.5);
//! assert_eq!(open_fraction(&r, 1050), 0.75);
//! assert_eq!(open_fraction(&r, 5000), 1.0);
//! assert!(Position::from_wariness(1.5).is_err());
//! ```

use super::{Release, Rollout, Stream};
use crate::version::compare_versions;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cmp::Ordering;
use std::fmt;

/// The bytes hashed in front of the machine id (domain separation from other uses of the id).
pub const POSITION_DOMAIN: &[u8] = b"updater rollout position\n";

/// Where a box stands in every staged rollout: 0 goes first, values near 1 go last.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(f64);

/// A `rollout_wariness` outside `0..=1`.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("rollout wariness {value} is outside 0..=1")]
pub struct BadWariness {
    /// The value given.
    pub value: f64,
}

impl Position {
    /// The position of the box with this machine id (`/etc/machine-id`, surrounding whitespace
    /// ignored).
    pub fn from_machine_id(machine_id: &str) -> Position {
        let mut h = Sha256::new();
        h.update(POSITION_DOMAIN);
        h.update(machine_id.trim().as_bytes());
        let d = h.finalize();
        let top = u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) >> 11;
        Position(top as f64 / (1u64 << 53) as f64)
    }

    /// A position chosen by configuration: 0 takes every release as soon as it starts, 1 only
    /// once it is open to all boxes.
    pub fn from_wariness(wariness: f64) -> Result<Position, BadWariness> {
        if (0.0..=1.0).contains(&wariness) {
            Ok(Position(wariness))
        } else {
            Err(BadWariness { value: wariness })
        }
    }

    /// The value, in `0..=1`.
    pub fn value(self) -> f64 {
        self.0
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.4}", self.0)
    }
}

/// The fraction of boxes a rollout is open to at `now`: 0 before `start`, then growing
/// linearly from `start_fraction` to 1 over `duration` seconds.
pub fn open_fraction(rollout: &Rollout, now: u64) -> f64 {
    if now < rollout.start {
        return 0.0;
    }
    if rollout.duration == 0 {
        return 1.0;
    }
    let elapsed = (now - rollout.start) as f64 / rollout.duration as f64;
    let sf = rollout.start_fraction;
    sf + (1.0 - sf) * elapsed.min(1.0)
}

/// Why a release is not the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Skip {
    /// Not newer than the booted version (never a downgrade or a reinstall).
    NotNewer,
    /// This version failed on this box before; it is never retried.
    Failed,
    /// Pulled by the publisher.
    DeadEnd,
    /// Newer than a barrier the box has not reached yet.
    BehindBarrier {
        /// The barrier's version.
        barrier: String,
    },
    /// Listed without a rollout: not offered yet.
    NotOffered,
    /// Its rollout is paused.
    Paused,
    /// Its rollout starts later.
    NotStarted {
        /// The rollout's start, Unix seconds.
        start: u64,
    },
    /// Its rollout does not include this box's position yet.
    NotOpenForPosition {
        /// The box's position.
        position: Position,
        /// The fraction of boxes it is open to now.
        fraction: f64,
    },
    /// Open to this box, but a newer release is the target.
    Superseded {
        /// The target's version.
        by: String,
    },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NotNewer => f.write_str("not newer than the booted version"),
            Skip::Failed => f.write_str("failed on this box before, never retried"),
            Skip::DeadEnd => f.write_str("pulled (dead end)"),
            Skip::BehindBarrier { barrier } => {
                write!(f, "behind barrier {barrier}, which must be installed first")
            }
            Skip::NotOffered => f.write_str("not offered yet (no rollout)"),
            Skip::Paused => f.write_str("rollout paused"),
            Skip::NotStarted { start } => write!(f, "rollout starts at {start}"),
            Skip::NotOpenForPosition { position, fraction } => write!(
                f,
                "rollout open to {:.4} of boxes, this box is at {position}",
                fraction
            ),
            Skip::Superseded { by } => write!(f, "open, but {by} is newer"),
        }
    }
}

/// One release as [`choose_target`] judged it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The release's version.
    pub version: String,
    /// Why it is not the target; `None` for the target.
    pub skip: Option<Skip>,
}

/// What the box should do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Install this release.
    Update {
        /// The target.
        release: Release,
    },
    /// No listed release is newer than the booted version.
    UpToDate,
    /// Newer releases are listed, but none is open to this box now (see the candidates).
    Waiting,
}

/// The choice of a target and its explanation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The booted version.
    pub booted: String,
    /// Whether the booted version is listed as a dead end.
    pub booted_dead_end: bool,
    /// The box's rollout position.
    pub position: Position,
    /// The time of the decision, Unix seconds.
    pub now: u64,
    /// Every release of the stream, in stream order, with its verdict.
    pub candidates: Vec<Candidate>,
    /// The result.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Decision {
    /// The release to install, if any.
    pub fn target(&self) -> Option<&Release> {
        match &self.outcome {
            Outcome::Update { release } => Some(release),
            _ => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dead = if self.booted_dead_end {
            " (pulled: moving on ignores the rollout position)"
        } else {
            ""
        };
        writeln!(
            f,
            "booted {}{dead}, rollout position {}",
            self.booted, self.position
        )?;
        for c in &self.candidates {
            match &c.skip {
                None => writeln!(f, "  {}: target", c.version)?,
                Some(s) => writeln!(f, "  {}: {s}", c.version)?,
            }
        }
        match &self.outcome {
            Outcome::Update { release } => write!(f, "target: {}", release.version),
            Outcome::UpToDate => write!(f, "no target: no release newer than {}", self.booted),
            Outcome::Waiting => write!(f, "no target: no newer release is open to this box now"),
        }
    }
}

fn newer(a: &str, b: &str) -> bool {
    compare_versions(a, b) == Ordering::Greater
}

fn judge(
    r: &Release,
    booted: &str,
    barrier: Option<&Release>,
    booted_dead_end: bool,
    failed: &impl Fn(&str) -> bool,
    position: Position,
    now: u64,
) -> Option<Skip> {
    if !newer(&r.version, booted) {
        return Some(Skip::NotNewer);
    }
    if failed(&r.version) {
        return Some(Skip::Failed);
    }
    if r.dead_end {
        return Some(Skip::DeadEnd);
    }
    if let Some(b) = barrier.filter(|b| newer(&r.version, &b.version)) {
        return Some(Skip::BehindBarrier {
            barrier: b.version.clone(),
        });
    }
    let Some(rollout) = &r.rollout else {
        return Some(Skip::NotOffered);
    };
    if rollout.paused {
        return Some(Skip::Paused);
    }
    if now < rollout.start {
        return Some(Skip::NotStarted {
            start: rollout.start,
        });
    }
    let fraction = open_fraction(rollout, now);
    if !booted_dead_end && fraction < 1.0 && position.0 >= fraction {
        return Some(Skip::NotOpenForPosition { position, fraction });
    }
    None
}

/// Chooses the release a box running `booted` should install at `now`, and says why about every
/// release. `failed` tells whether a version failed on this box before. Pure: the same inputs
/// give the same decision.
pub fn choose_target(
    stream: &Stream,
    booted: &str,
    failed: impl Fn(&str) -> bool,
    position: Position,
    now: u64,
) -> Decision {
    let booted_dead_end = stream
        .releases
        .iter()
        .any(|r| r.dead_end && compare_versions(&r.version, booted) == Ordering::Equal);
    // The lowest barrier above the booted version; a pulled barrier no longer holds boxes back.
    let barrier = stream
        .releases
        .iter()
        .filter(|r| r.barrier && !r.dead_end && newer(&r.version, booted))
        .min_by(|a, b| compare_versions(&a.version, &b.version));
    let mut candidates: Vec<Candidate> = stream
        .releases
        .iter()
        .map(|r| Candidate {
            version: r.version.clone(),
            skip: judge(r, booted, barrier, booted_dead_end, &failed, position, now),
        })
        .collect();
    let chosen = stream
        .releases
        .iter()
        .zip(&candidates)
        .filter(|(_, c)| c.skip.is_none())
        .max_by(|(a, _), (b, _)| compare_versions(&a.version, &b.version))
        .map(|(r, _)| r.clone());
    let outcome = match chosen {
        Some(release) => {
            for c in candidates.iter_mut() {
                if c.skip.is_none() && c.version != release.version {
                    c.skip = Some(Skip::Superseded {
                        by: release.version.clone(),
                    });
                }
            }
            Outcome::Update { release }
        }
        None if candidates.iter().all(|c| c.skip == Some(Skip::NotNewer)) => Outcome::UpToDate,
        None => Outcome::Waiting,
    };
    Decision {
        booted: booted.to_owned(),
        booted_dead_end,
        position,
        now,
        candidates,
        outcome,
    }
}
