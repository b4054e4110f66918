//! Integration tests (one binary per crate).
