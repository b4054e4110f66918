//! GUIDs as GPT stores them: 16 bytes whose first three fields are little-endian.
//!
//! [`Guid`] keeps the on-disk byte order and converts to and from the canonical text form
//! (`5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6`), which is what `sgdisk`, `cgpt` and the kernel's
//! `PARTUUID=` use.
//!
//! ```
//! use bootctl::Guid;
//! let g: Guid = "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6".parse().unwrap();
//! assert_eq!(g.as_bytes()[0], 0xf4); // first field is stored little-endian
//! assert_eq!(g.to_string(), "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6");
//! ```
use std::fmt;
use std::io::Read;
use std::str::FromStr;

/// A GUID in GPT on-disk byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid([u8; 16]);

/// The CoreOS `usr` partition type: A/B slots are the GPT entries of this type.
pub const USR_TYPE: Guid = Guid::from_fields(
    0x5dfbf5f4,
    0x2848,
    0x4bac,
    [0xaa, 0x5e, 0x0d, 0x9a, 0x20, 0xb7, 0x45, 0xa6],
);
/// The EFI system partition type.
pub const ESP_TYPE: Guid = Guid::from_fields(
    0xc12a7328,
    0xf81f,
    0x11d2,
    [0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b],
);
/// The BIOS boot partition type (GRUB's core.img on GPT disks).
pub const BIOS_BOOT_TYPE: Guid = Guid::from_fields(
    0x21686148,
    0x6449,
    0x6e6f,
    [0x74, 0x4e, 0x65, 0x65, 0x64, 0x45, 0x46, 0x49],
);
/// The Linux filesystem data type.
pub const LINUX_DATA_TYPE: Guid = Guid::from_fields(
    0x0fc63daf,
    0x8483,
    0x4772,
    [0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4],
);

/// Text that is not a GUID in canonical 8-4-4-4-12 hex form.
#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not a GUID (expected 8-4-4-4-12 hex digits)")]
pub struct GuidParseError {
    /// The rejected text.
    pub text: String,
}

impl Guid {
    /// The all-zero GUID, which marks an unused partition entry.
    pub const NIL: Guid = Guid([0; 16]);

    /// Builds a GUID from its canonical fields.
    pub const fn from_fields(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
    }

    /// Wraps 16 bytes in on-disk order.
    pub const fn from_bytes(bytes: [u8; 16]) -> Guid {
        Guid(bytes)
    }

    /// The 16 bytes in on-disk order.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// True for the all-zero GUID.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// A fresh random (version 4) GUID from the kernel's random source.
    pub fn random() -> std::io::Result<Guid> {
        let mut b = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        // Version 4 in the high nibble of the third field (stored little-endian: byte 7).
        b[7] = (b[7] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Ok(Guid(b))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Guid {
    type Err = GuidParseError;

    fn from_str(s: &str) -> Result<Guid, GuidParseError> {
        let err = || GuidParseError {
            text: s.to_string(),
        };
        let parts: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if parts.len() != 5
            || parts
                .iter()
                .zip(lens)
                .any(|(p, l)| p.len() != l || !p.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(err());
        }
        let a = u32::from_str_radix(parts[0], 16).map_err(|_| err())?;
        let b = u16::from_str_radix(parts[1], 16).map_err(|_| err())?;
        let c = u16::from_str_radix(parts[2], 16).map_err(|_| err())?;
        let tail = format!("{}{}", parts[3], parts[4]);
        let mut d = [0u8; 8];
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&tail[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Guid::from_fields(a, b, c, d))
    }
}

impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_is_lower_case() {
        let g: Guid = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".parse().unwrap();
        assert_eq!(g, ESP_TYPE);
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }

    #[test]
    fn on_disk_order_swaps_the_first_three_fields() {
        assert_eq!(
            USR_TYPE.as_bytes(),
            &[
                0xf4, 0xf5, 0xfb, 0x5d, 0x48, 0x28, 0xac, 0x4b, 0xaa, 0x5e, 0x0d, 0x9a, 0x20, 0xb7,
                0x45, 0xa6
            ]
        );
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a",
            "5dfbf5f4x2848-4bac-aa5e-0d9a20b745a6",
            "zzfbf5f4-2848-4bac-aa5e-0d9a20b745a6",
        ] {
            assert!(bad.parse::<Guid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_guids_differ_and_are_version_4() {
        let (a, b) = (Guid::random().unwrap(), Guid::random().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.to_string().as_bytes()[14], b'4');
    }
}
