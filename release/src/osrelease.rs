//! Reading `os-release` files (`KEY=value` lines, values optionally quoted).
//!
//! Only what the updater needs: the `IMAGE_ID` (the compatible string) and `IMAGE_VERSION`.
//!
//! ```
//! let r = ab_release::osrelease::OsRelease::parse("IMAGE_ID=box\nIMAGE_VERSION=\"1.2\"\n");
//! assert_eq!(r.get("IMAGE_VERSION"), Some("1.2"));
//! ```

/// Largest os-release file read, in bytes.
pub const MAX_OS_RELEASE_LEN: u64 = 64 << 10;

/// A parsed os-release file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    fields: Vec<(String, String)>,
}

impl OsRelease {
    /// Parses os-release text; malformed lines and comments are skipped.
    pub fn parse(text: &str) -> OsRelease {
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            let v = ['"', '\'']
                .iter()
                .find_map(|q| v.strip_prefix(*q).and_then(|s| s.strip_suffix(*q)))
                .unwrap_or(v);
            let v = v.replace("\\\"", "\"").replace("\\\\", "\\");
            fields.push((k.trim().to_owned(), v));
        }
        OsRelease { fields }
    }

    /// The value of `key`, if set (the last assignment wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}
