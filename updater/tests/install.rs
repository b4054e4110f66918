//! `updater install` (filled in by the install work).
