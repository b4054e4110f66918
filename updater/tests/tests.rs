//! Integration tests of `updater` (one binary; one module per area).
mod install;
mod payload;
mod util;
