//! What every scenario needs: a scratch directory, the test OS, and standard timeouts.
use image_tools::mkusr::UsrFs;
use qemu_tests::testos::{TestOs, UsrSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// From power-on to the test OS's boot marker; generous, as TCG on a loaded 2-core host is
/// slow. A hang guard, not a speed check.
pub const BOOT: Duration = Duration::from_secs(180);
/// A command in the guest.
pub const COMMAND: Duration = Duration::from_secs(60);
/// From the power-off request to QEMU's exit.
pub const POWEROFF: Duration = Duration::from_secs(60);

/// A scenario's private directory, removed when the scenario ends.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix(&format!("qemu-{name}-"))
                .tempdir()
                .expect("creating a scratch directory"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The test OS, built or taken from the cache once per test process.
pub fn testos() -> &'static TestOs {
    match TestOs::get() {
        Ok(os) => os,
        Err(e) => panic!("{e}"),
    }
}

/// The cached squashfs /usr image of `version`.
pub fn usr_image(version: &str) -> PathBuf {
    usr_image_fs(version, UsrFs::Squashfs)
}

/// The cached /usr image of `version` in filesystem `fs_kind`.
pub fn usr_image_fs(version: &str, fs_kind: UsrFs) -> PathBuf {
    testos()
        .usr_image(&UsrSpec::new(version), fs_kind)
        .unwrap_or_else(|e| panic!("building /usr image {version}: {e}"))
}
