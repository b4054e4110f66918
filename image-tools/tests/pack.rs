//! Tests of `image-tools pack`.
