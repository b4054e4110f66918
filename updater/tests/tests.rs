//! Integration tests of `updater` (one binary; one module per area).
mod agent;
mod crashpoints;
mod cycle;
mod delta;
mod hardening;
mod health;
mod http;
mod install;
mod netfaults;
mod payload;
mod util;
