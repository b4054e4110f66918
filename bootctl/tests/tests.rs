//! Integration tests of bootctl (one binary; one module per area).
mod cli;
mod corruption;
mod entries;
mod interop;
mod powercut;
mod stale;
mod util;
mod vectors;
