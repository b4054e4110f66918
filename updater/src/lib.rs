//! The device-side A/B /usr updater.
//!
//! This crate will hold the payload reader, the streaming install pipeline, boot-time health
//! checks with commit and rollback, device state and configuration. Slot state on disk is read
//! and written through the [`bootctl`] crate.
#![deny(missing_docs)]
