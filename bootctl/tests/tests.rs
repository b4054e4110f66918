//! Integration tests of bootctl.
