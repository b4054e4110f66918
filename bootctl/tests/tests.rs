//! Integration tests of bootctl (one binary; one module per area).
mod cli;
mod corruption;
mod interop;
mod powercut;
mod util;
mod vectors;
