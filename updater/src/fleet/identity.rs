//! The node id a box gives a fleet coordinator: an application-specific id derived from
//! `/etc/machine-id` (systemd's `sd_id128_get_machine_app_specific` rule), so the raw machine
//! id never leaves the box, unless `fleet.node_id` overrides it.
//!
//! Rule: HMAC-SHA256 keyed with the 16 bytes of the machine id over the 16 bytes of
//! [`APP_ID`]; the first 16 bytes of the MAC, made a version-4 UUID (byte 6 high nibble 4,
//! byte 8 top bits `10`), printed as 32 lowercase hex digits.
use sha2::{Digest, Sha256};
use std::path::Path;

/// This updater's application id (a random 128-bit value chosen once, never to change: a
/// different value gives every box a different node id).
pub const APP_ID: [u8; 16] = [
    0x0c, 0x7f, 0x69, 0x21, 0x48, 0xae, 0x46, 0xe5, 0x97, 0x1e, 0x74, 0xbf, 0x84, 0xe4, 0xe6, 0xa3,
];

/// Longest `/etc/machine-id` read.
pub const MAX_MACHINE_ID_FILE: u64 = 256;

/// Why no node id could be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityError {
    /// The machine id is not 32 hex digits.
    #[error("the machine id {text:?} is not 32 hex digits")]
    BadMachineId {
        /// The text found (trimmed, at most 64 characters).
        text: String,
    },
    /// The machine id file could not be read.
    #[error("reading the machine id {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// The application-specific id of the machine id `text` (32 hex digits, surrounding white
/// space ignored).
pub fn app_specific_id(text: &str) -> Result<String, IdentityError> {
    let t = text.trim();
    let bad = || IdentityError::BadMachineId {
        text: t.chars().take(64).collect(),
    };
    if t.len() != 32 {
        return Err(bad());
    }
    let raw = hex::decode(t).map_err(|_| bad())?;
    let mac = hmac_sha256(&raw, &APP_ID);
    let mut id = [0u8; 16];
    id.copy_from_slice(&mac[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(hex::encode(id))
}

/// The node id of the box under `root`: `configured` when set, else the app-specific id of
/// `ROOT/etc/machine-id`.
pub fn node_id(root: &Path, configured: Option<&str>) -> Result<String, IdentityError> {
    if let Some(id) = configured {
        return Ok(id.to_owned());
    }
    let path = root.join("etc/machine-id");
    let text = crate::device::read_bounded(&path, MAX_MACHINE_ID_FILE).map_err(|e| {
        IdentityError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    app_specific_id(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_hashes_a_key_longer_than_a_block_first() {
        // RFC 4231 test case 6.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn the_id_is_what_systemd_derives() {
        // `systemd-id128 machine-id --app-specific=0c7f692148ae46e5971e74bf84e4e6a3` on a
        // machine whose /etc/machine-id is the input.
        assert_eq!(
            app_specific_id("3d1219c7c4c5404aaa1f6d2a48adfda4").unwrap(),
            "c892a0f5123f4c949e62586a262715b7"
        );
    }

    #[test]
    fn the_id_is_a_v4_uuid_that_hides_the_machine_id() {
        let m = "4b1d0c2a8e3f4c1b9a7d6e5f4c3b2a19";
        let id = app_specific_id(&format!("{m}\n")).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(&id[12..13], "4");
        assert!("89ab".contains(&id[16..17]), "{id}");
        assert_ne!(id, m);
        assert_eq!(id, app_specific_id(m).unwrap(), "stable");
        assert_ne!(
            id,
            app_specific_id("4b1d0c2a8e3f4c1b9a7d6e5f4c3b2a18").unwrap()
        );
    }

    #[test]
    fn a_machine_id_that_is_not_32_hex_digits_is_refused() {
        for bad in [
            "",
            "4b1d0c2a8e3f4c1b9a7d6e5f4c3b2a1",
            "4b1d0c2a8e3f4c1b9a7d6e5f4c3b2a1g",
        ] {
            assert_eq!(
                app_specific_id(bad),
                Err(IdentityError::BadMachineId { text: bad.into() })
            );
        }
    }

    #[test]
    fn a_configured_id_wins() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(node_id(dir.path(), Some("box-7")).unwrap(), "box-7");
        assert!(matches!(
            node_id(dir.path(), None),
            Err(IdentityError::Unreadable { .. })
        ));
    }
}
