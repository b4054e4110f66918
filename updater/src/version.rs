//! Version ordering as `systemd-analyze compare-versions` does it (the UAPI version format).
//!
//! Strings are compared segment by segment: `~` sorts before everything, even the end of the
//! string (`1~rc1 < 1`); then the end of the string; then `-`, `^` and `.` in that order; digit
//! runs compare numerically (leading zeros ignored) and sort after letters; letter runs compare
//! bytewise. Characters outside `[A-Za-z0-9~^.-]` are ignored.
//!
//! ```
//! use std::cmp::Ordering;
//! use updater::version::compare_versions;
//! assert_eq!(compare_versions("1.10", "1.9"), Ordering::Greater);
//! assert_eq!(compare_versions("1~rc1", "1"), Ordering::Less);
//! ```

use std::cmp::Ordering;

fn is_valid(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

/// Compares two version strings by the UAPI version format rules.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        while a.first().is_some_and(|&c| !is_valid(c)) {
            a = &a[1..];
        }
        while b.first().is_some_and(|&c| !is_valid(c)) {
            b = &b[1..];
        }
        let (ca, cb) = (a.first().copied(), b.first().copied());
        // A separator that only one side has at this position decides: that side is older.
        for sep in [b'~'] {
            if ca == Some(sep) || cb == Some(sep) {
                match ((ca != Some(sep)), (cb != Some(sep))) {
                    (false, true) => return Ordering::Less,
                    (true, false) => return Ordering::Greater,
                    _ => {}
                }
            }
        }
        if ca == Some(b'~') {
            a = &a[1..];
            b = &b[1..];
            continue;
        }
        match (ca, cb) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            _ => {}
        }
        let (ca, cb) = (ca.expect("checked"), cb.expect("checked"));
        let mut separator = false;
        for sep in [b'-', b'^', b'.'] {
            if ca == sep || cb == sep {
                match (ca != sep, cb != sep) {
                    (false, true) => return Ordering::Less,
                    (true, false) => return Ordering::Greater,
                    _ => {}
                }
                separator = true;
                break;
            }
        }
        if separator {
            a = &a[1..];
            b = &b[1..];
            continue;
        }
        if ca.is_ascii_digit() || cb.is_ascii_digit() {
            let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
            let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
            // A number is newer than letters.
            match (na > 0).cmp(&(nb > 0)) {
                Ordering::Equal => {}
                o => return o,
            }
            let da = trim_zeros(&a[..na]);
            let db = trim_zeros(&b[..nb]);
            match da.len().cmp(&db.len()).then_with(|| da.cmp(db)) {
                Ordering::Equal => {}
                o => return o,
            }
            a = &a[na..];
            b = &b[nb..];
        } else {
            let na = a.iter().take_while(|c| c.is_ascii_alphabetic()).count();
            let nb = b.iter().take_while(|c| c.is_ascii_alphabetic()).count();
            let n = na.min(nb);
            match a[..n].cmp(&b[..n]).then(na.cmp(&nb)) {
                Ordering::Equal => {}
                o => return o,
            }
            a = &a[na..];
            b = &b[nb..];
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    /// Examples from the UAPI version format specification and systemd's test suite.
    #[test]
    fn orders_like_systemd_analyze_compare_versions() {
        let rows = [
            ("11", "22", Less),
            ("22", "22", Equal),
            ("123", "9", Greater),
            ("0123", "123", Equal),
            ("1.10", "1.9", Greater),
            ("1.0", "1", Greater),
            ("1~rc1", "1", Less),
            ("1~rc1", "1~rc2", Less),
            ("1~", "1", Less),
            ("1-1", "1", Greater),
            ("1-1", "1.1", Less),
            ("1^1", "1", Greater),
            ("1^1", "1.1", Less),
            ("1^1", "1-1", Greater),
            ("1a", "1", Greater),
            ("1a", "1.0", Greater),
            ("1a", "1b", Less),
            ("a", "1", Less),
            ("abc", "ab", Greater),
            ("2024.1", "2024.01", Equal),
            ("", "", Equal),
            ("", "1", Less),
            ("122.1", "123~rc1-1", Less),
            ("123~rc1-1", "123", Less),
            ("123", "123-a", Less),
            ("123-a", "123-a.1", Less),
            ("123-a.1", "123-1", Less),
            ("123-1", "123-1.1", Less),
            ("123-1.1", "123^post1", Less),
            ("123^post1", "123.a-1", Less),
            ("123.a-1", "123.1-1", Less),
            ("123.1-1", "123a-1", Less),
            ("123a-1", "124-1", Less),
        ];
        for (a, b, want) in rows {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }
}
