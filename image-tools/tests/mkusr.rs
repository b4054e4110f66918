//! Tests of `image-tools mkusr`.
