//! The device-side A/B /usr updater.
//!
//! This crate holds the payload reader, the streaming install pipeline, boot-time health
//! checks with commit and rollback, device state and configuration. Slot state on disk is read
//! and written through the [`bootctl`] crate.
//!
//! Brief overview: [`device`] (which disk and slot are booted, paths under the root),
//! [`bootstate`] (where the device stands in the update cycle), [`lock`] (the one lock of
//! every writer), [`payload`] (the signed chunked format, re-exported from `ab-payload`),
//! [`install`] (the install pipeline), [`state`] (atomic state files), [`config`] (TOML
//! drop-ins), [`health`] (running health checks), [`history`] (failed versions, last verdict),
//! [`cycle`] (commit, rollback, status), [`window`] (maintenance windows),
//! [`agent`] (the update agent: poll, decide, install, reboot by strategy), [`fleet`]
//! (fleet reboots: FleetLock and etcd reboot slots, halt records), [`firstboot`]
//! (grow ROOT to the disk's end and apply the OEM data on a freshly flashed box), [`netboot`]
//! (RAM-booted nodes: a verified /usr fetched into RAM by the initramfs).
//!
//! What the device shares with the publisher beyond the payload format lives in the
//! `ab-release` crate and is re-exported under its old paths: [`version`] (UAPI version
//! ordering), [`osrelease`] (os-release parsing), [`source`] (files and HTTP with ranges and
//! resume; the multi-range reader as [`install::byteranges`]), [`stream`] (signed release
//! streams and the rollout rule; the writer only in `ab-release`'s `writer` feature) and the
//! verified fetch of [`netboot`].
#![deny(missing_docs)]

pub mod agent;
pub mod bootstate;
pub mod cli;
pub mod config;
pub mod cycle;
pub mod device;
pub mod firstboot;
pub mod fleet;
pub mod health;
pub mod history;
pub mod install;
pub mod lock;
pub mod netboot;
pub mod payload;
pub mod state;
pub mod window;

// What the publisher shares with the device (`ab-release`), under the paths it always had here.
pub use ab_release::{osrelease, source, stream, version};
