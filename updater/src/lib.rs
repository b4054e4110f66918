//! The device-side A/B /usr updater.
//!
//! This crate holds the payload reader, the streaming install pipeline, boot-time health
//! checks with commit and rollback, device state and configuration. Slot state on disk is read
//! and written through the [`bootctl`] crate.
//!
//! Brief overview: [`payload`] (the signed chunked format; its writer only with the `writer`
//! feature), [`version`] (UAPI version ordering), [`osrelease`] (os-release parsing),
//! [`source`] (files and HTTP with resume), [`install`] (the install pipeline), [`state`]
//! (atomic state files), [`config`] (TOML drop-ins), [`health`] (running health checks),
//! [`history`] (failed versions, last verdict), [`cycle`] (commit, rollback, status).
#![deny(missing_docs)]

pub mod cli;
pub mod config;
pub mod cycle;
pub mod health;
pub mod history;
pub mod install;
pub mod osrelease;
pub mod payload;
pub mod source;
pub mod state;
pub mod version;
