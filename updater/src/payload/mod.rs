//! The payload format, re-exported from the `ab-payload` crate so that every
//! `updater::payload::…` path keeps working.
//!
//! The format (byte layout, parsers, signature check, chunk decoder, and with the `writer`
//! feature the packer) lives in its own small crate, shared by this crate (read side) and by
//! `image-tools` (write side); see `docs/payload-format.md`.

pub use ab_payload::*;
