//! Integration tests of `updater` (one binary; one module per area).
mod agent;
mod crashpoints;
mod cycle;
mod delta;
mod firstboot;
mod fleet;
mod fleet_sim;
mod fleetlock_server;
mod hardening;
mod health;
mod http;
mod install;
mod netboot;
mod netfaults;
mod patch;
mod payload;
mod util;
