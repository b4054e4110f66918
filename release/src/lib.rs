//! What the publisher and the device share beyond the payload format: where bytes come from,
//! the signed release stream, version ordering, and the verified fetch of a payload into a file.
//!
//! This crate is shared by the device (`updater`, which re-exports each module under its old
//! path, `updater::source` and so on) and the publisher (`image-tools`, which publishes streams
//! with the `writer` feature and checks netboot artifacts with the node's own fetch). Neither
//! side's own code lives here: no slots, installs, health checks or agent (the device's), no
//! packing, signing keys or disk images (the publisher's). The payload format itself is the
//! `ab-payload` crate.
//!
//! Brief overview:
//!
//! - [`source`]: a payload's bytes from a file, a block device or an http(s) URL, from any
//!   offset ([`source::Source`]), and [`source::ResumingReader`], which resumes after transient
//!   failures within a deadline; [`byteranges`] reads the answer to a multi-range request.
//! - [`stream`]: the signed `stream.json` of a channel, verified before it is parsed, and the
//!   rollout rule that picks a release ([`stream::choose_target`]). Its writer (encoding,
//!   editing, signing) is compiled only with the `writer` feature, which only `image-tools`
//!   enables, so the device binary carries no publisher code.
//! - [`version`]: UAPI version ordering ([`version::compare_versions`]); [`osrelease`]: the
//!   `IMAGE_ID` and `IMAGE_VERSION` of an `os-release` file.
//! - [`netboot`]: [`netboot::fetch_into`], a signed payload verified chunk by chunk into a file,
//!   the same code on a RAM-booted node and in `image-tools pxe`.
//!
//! ```
//! use ab_release::stream::Position;
//! use ab_release::version::compare_versions;
//! assert!(compare_versions("2.10", "2.9").is_gt());
//! let first = Position::from_wariness(0.0).unwrap();
//! assert!(first <= Position::from_machine_id("any box"));
//! ```
#![deny(missing_docs)]

pub mod byteranges;
pub mod netboot;
pub mod osrelease;
pub mod source;
pub mod stream;
pub mod version;
