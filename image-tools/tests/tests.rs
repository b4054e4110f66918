//! Integration tests of `image-tools` (one binary; one module per subcommand family).
mod disk;
mod flash;
mod mkusr;
mod pack;
mod patch;
mod publish;
mod pxe;
