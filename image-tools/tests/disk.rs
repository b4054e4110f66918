//! Tests of `image-tools disk`.
