//! Maintenance windows of the `periodic` reboot strategy: weekly windows in a time zone, in
//! which the agent may reboot the machine (DESIGN §6 invariant 8).
//!
//! A window is a set of weekdays, a local start time and a length (`days = ["Sat", "Sun"],
//! start_time = "22:30", length_minutes = 60`, the same words Zincati's configuration uses). A
//! window belongs to the day it starts on and may run past midnight. Local times are turned
//! into instants by the time zone's rules; a start time that falls in a daylight-saving gap
//! moves forward, one that falls in a fold takes the earlier instant.
//!
//! The clock is not trusted to move forward: [`MaintenanceWindows::is_open`] is a pure
//! function of the instant it is given, and the agent asks again right before rebooting.
//!
//! ```
//! use updater::window::{MaintenanceWindows, WindowSpec};
//! let w = MaintenanceWindows::new("UTC", &[WindowSpec {
//!     days: vec!["Sat".into()], start_time: "22:30".into(), length_minutes: 60,
//! }]).unwrap();
//! // Saturday 2026-11-28 23:00 UTC is inside; the Sunday after at 00:00 is not.
//! assert!(w.is_open(1_795_906_800));
//! assert!(!w.is_open(1_795_910_400));
//! ```
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Longest window: a week.
pub const MAX_WINDOW_MINUTES: u32 = 7 * 24 * 60;
/// Most windows configured.
pub const MAX_WINDOWS: usize = 64;

/// One window as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Weekdays the window starts on: `Mon`…`Sun` (or full names), case-insensitive.
    pub days: Vec<String>,
    /// Local start time, `HH:MM`.
    pub start_time: String,
    /// Length in minutes (1 to a week).
    pub length_minutes: u32,
}

/// Why windows could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// The time zone is not known here.
    #[error("unknown time zone {name:?}: {reason}")]
    TimeZone {
        /// The name given.
        name: String,
        /// What the time zone database said.
        reason: String,
    },
    /// A weekday is not one.
    #[error("window {index}: {day:?} is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)")]
    Day {
        /// Window index.
        index: usize,
        /// The word given.
        day: String,
    },
    /// A window names no day.
    #[error("window {index}: no days")]
    NoDays {
        /// Window index.
        index: usize,
    },
    /// The start time is not `HH:MM`.
    #[error("window {index}: start_time {time:?} is not HH:MM")]
    StartTime {
        /// Window index.
        index: usize,
        /// The text given.
        time: String,
    },
    /// The length is 0 or longer than a week.
    #[error("window {index}: length_minutes {minutes} is not between 1 and {MAX_WINDOW_MINUTES}")]
    Length {
        /// Window index.
        index: usize,
        /// The length given.
        minutes: u32,
    },
    /// More than [`MAX_WINDOWS`] windows.
    #[error("{count} windows configured, at most {MAX_WINDOWS}")]
    TooMany {
        /// How many.
        count: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Window {
    days: Vec<Weekday>,
    start: Time,
    length_secs: i64,
}

/// Validated weekly windows in one time zone.
#[derive(Debug, Clone)]
pub struct MaintenanceWindows {
    tz: TimeZone,
    tz_name: String,
    windows: Vec<Window>,
}

fn weekday(word: &str) -> Option<Weekday> {
    let w = word.to_ascii_lowercase();
    let all = [
        ("mon", "monday", Weekday::Monday),
        ("tue", "tuesday", Weekday::Tuesday),
        ("wed", "wednesday", Weekday::Wednesday),
        ("thu", "thursday", Weekday::Thursday),
        ("fri", "friday", Weekday::Friday),
        ("sat", "saturday", Weekday::Saturday),
        ("sun", "sunday", Weekday::Sunday),
    ];
    all.into_iter()
        .find(|(short, long, _)| w == *short || w == *long)
        .map(|(_, _, d)| d)
}

fn start_time(text: &str) -> Option<Time> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: i8 = h.parse().ok()?;
    let m: i8 = m.parse().ok()?;
    Time::new(h, m, 0, 0).ok()
}

impl MaintenanceWindows {
    /// Validates `specs` in the time zone `tz_name` (an IANA name such as `Europe/Berlin`, or
    /// `UTC`).
    pub fn new(tz_name: &str, specs: &[WindowSpec]) -> Result<MaintenanceWindows, WindowError> {
        if specs.len() > MAX_WINDOWS {
            return Err(WindowError::TooMany { count: specs.len() });
        }
        let tz = if tz_name.eq_ignore_ascii_case("utc") {
            TimeZone::UTC
        } else {
            TimeZone::get(tz_name).map_err(|e| WindowError::TimeZone {
                name: tz_name.into(),
                reason: e.to_string(),
            })?
        };
        let mut windows = Vec::new();
        for (index, s) in specs.iter().enumerate() {
            if s.days.is_empty() {
                return Err(WindowError::NoDays { index });
            }
            let days = s
                .days
                .iter()
                .map(|d| {
                    weekday(d).ok_or_else(|| WindowError::Day {
                        index,
                        day: d.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let start = start_time(&s.start_time).ok_or_else(|| WindowError::StartTime {
                index,
                time: s.start_time.clone(),
            })?;
            if !(1..=MAX_WINDOW_MINUTES).contains(&s.length_minutes) {
                return Err(WindowError::Length {
                    index,
                    minutes: s.length_minutes,
                });
            }
            windows.push(Window {
                days,
                start,
                length_secs: i64::from(s.length_minutes) * 60,
            });
        }
        Ok(MaintenanceWindows {
            tz,
            tz_name: tz_name.into(),
            windows,
        })
    }

    /// The time zone's name as configured.
    pub fn time_zone(&self) -> &str {
        &self.tz_name
    }

    /// Every window start (Unix seconds) of days `from_day..=to_day` relative to the local date
    /// of `now`, in order, with its end.
    fn occurrences(&self, now: i64, from_day: i64, to_day: i64) -> Vec<(i64, i64)> {
        let Ok(ts) = Timestamp::from_second(now) else {
            return Vec::new();
        };
        let today = ts.to_zoned_datetime(self.tz.clone()).date();
        let mut out = Vec::new();
        for d in from_day..=to_day {
            let Ok(date) = today.checked_add(jiff::Span::new().days(d)) else {
                continue;
            };
            for w in &self.windows {
                if !w.days.contains(&date.weekday()) {
                    continue;
                }
                let Ok(start) = self.tz.to_timestamp(date.to_datetime(w.start)) else {
                    continue;
                };
                let start = start.as_second();
                out.push((start, start.saturating_add(w.length_secs)));
            }
        }
        out.sort_unstable();
        out
    }

    /// Whether the instant `now` (Unix seconds) is inside a window.
    pub fn is_open(&self, now: i64) -> bool {
        // A window starts at most a week (plus a day of time-zone slack) before it ends.
        self.occurrences(now, -8, 0)
            .into_iter()
            .any(|(start, end)| start <= now && now < end)
    }

    /// The current or next window `(start, end)` in Unix seconds, if any is configured.
    pub fn next(&self, now: i64) -> Option<(i64, i64)> {
        self.occurrences(now, -8, 8)
            .into_iter()
            .find(|&(_, end)| now < end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(days: &[&str], start: &str, minutes: u32) -> WindowSpec {
        WindowSpec {
            days: days.iter().map(|d| d.to_string()).collect(),
            start_time: start.into(),
            length_minutes: minutes,
        }
    }

    /// Unix seconds of a UTC civil time.
    fn utc(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> i64 {
        jiff::civil::date(y, mo, d)
            .at(h, mi, 0, 0)
            .to_zoned_datetime(TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_second()
    }

    #[test]
    fn a_window_is_open_from_its_start_until_its_end_exclusive() {
        // 2026-11-28 is a Saturday.
        let w = MaintenanceWindows::new("UTC", &[spec(&["Sat"], "22:30", 60)]).unwrap();
        assert!(!w.is_open(utc(2026, 11, 28, 22, 29)));
        assert!(w.is_open(utc(2026, 11, 28, 22, 30)));
        assert!(w.is_open(utc(2026, 11, 28, 23, 29)));
        assert!(!w.is_open(utc(2026, 11, 28, 23, 30)));
        assert!(
            !w.is_open(utc(2026, 11, 21, 22, 0)),
            "the Saturday before, too early"
        );
        assert!(!w.is_open(utc(2026, 11, 27, 22, 45)), "a Friday");
    }

    #[test]
    fn a_window_runs_past_midnight_into_the_next_day() {
        let w = MaintenanceWindows::new("UTC", &[spec(&["sun"], "23:00", 120)]).unwrap();
        assert!(w.is_open(utc(2026, 11, 30, 0, 59)), "Monday 00:59");
        assert!(!w.is_open(utc(2026, 11, 30, 1, 0)));
        assert!(!w.is_open(utc(2026, 11, 30, 23, 30)), "a Monday evening");
    }

    #[test]
    fn windows_follow_the_local_time_zone_across_daylight_saving() {
        let w = MaintenanceWindows::new("Europe/Berlin", &[spec(&["Sat"], "03:00", 30)]).unwrap();
        // Winter: CET = UTC+1.
        assert!(w.is_open(utc(2026, 11, 28, 2, 10)));
        assert!(!w.is_open(utc(2026, 11, 28, 3, 10)));
        // Summer: CEST = UTC+2.
        assert!(w.is_open(utc(2026, 7, 4, 1, 10)));
        assert!(!w.is_open(utc(2026, 7, 4, 2, 10)));
    }

    #[test]
    fn a_week_long_window_is_always_open() {
        let w =
            MaintenanceWindows::new("UTC", &[spec(&["Mon"], "00:00", MAX_WINDOW_MINUTES)]).unwrap();
        for day in 23..=30 {
            assert!(w.is_open(utc(2026, 11, day, 12, 0)), "day {day}");
        }
    }

    #[test]
    fn next_gives_the_current_or_the_coming_window() {
        let w = MaintenanceWindows::new("UTC", &[spec(&["Wed", "Sat"], "22:30", 60)]).unwrap();
        let mon = utc(2026, 11, 30, 12, 0);
        assert_eq!(
            w.next(mon),
            Some((utc(2026, 12, 2, 22, 30), utc(2026, 12, 2, 23, 30)))
        );
        let inside = utc(2026, 12, 2, 23, 0);
        assert_eq!(w.next(inside).unwrap().0, utc(2026, 12, 2, 22, 30));
        let none = MaintenanceWindows::new("UTC", &[]).unwrap();
        assert_eq!(none.next(mon), None);
        assert!(!none.is_open(mon));
    }

    #[test]
    fn bad_windows_are_refused_with_the_reason() {
        for (specs, tz, want) in [
            (
                vec![spec(&["Sat"], "22:30", 60)],
                "Mars/Olympus",
                "unknown time zone \"Mars/Olympus\"",
            ),
            (
                vec![spec(&["Caturday"], "22:30", 60)],
                "UTC",
                "window 0: \"Caturday\" is not a weekday",
            ),
            (vec![spec(&[], "22:30", 60)], "UTC", "window 0: no days"),
            (
                vec![spec(&["Sat"], "22:30", 60), spec(&["Sat"], "25:00", 60)],
                "UTC",
                "window 1: start_time \"25:00\" is not HH:MM",
            ),
            (
                vec![spec(&["Sat"], "2:30", 60)],
                "UTC",
                "window 0: start_time \"2:30\" is not HH:MM",
            ),
            (
                vec![spec(&["Sat"], "22:30", 0)],
                "UTC",
                "window 0: length_minutes 0 is not between 1 and 10080",
            ),
            (
                vec![spec(&["Sat"], "22:30", MAX_WINDOW_MINUTES + 1)],
                "UTC",
                "window 0: length_minutes 10081 is not between 1 and 10080",
            ),
        ] {
            let e = MaintenanceWindows::new(tz, &specs).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e} (wanted {want})");
        }
        let many = vec![spec(&["Sat"], "22:30", 60); MAX_WINDOWS + 1];
        assert_eq!(
            MaintenanceWindows::new("UTC", &many).unwrap_err(),
            WindowError::TooMany { count: 65 }
        );
    }
}
