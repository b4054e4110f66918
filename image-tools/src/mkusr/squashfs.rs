//! The squashfs flavour of a /usr image: `mksquashfs` with nothing compressed.
//!
//! GRUB 2.06 and Linux both read blocks flagged "stored uncompressed" whatever compressor the
//! superblock names, so the superblock keeps gzip (the most widely supported) while `-noI -noId
//! -noD -noF -noX` store every table and block raw. Owners are forced to root and every
//! timestamp, the filesystem's own included, to the build epoch; mksquashfs sorts directory
//! entries itself, so the output depends only on the tree's content.
use super::{run_tool, MkusrError, UsrTree};
use std::path::Path;
use std::process::Command;

pub(super) fn build(tree: &UsrTree, output: &Path, epoch: u64) -> Result<(), MkusrError> {
    let epoch = epoch.to_string();
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(tree.dir())
        .arg(output)
        .args(["-noappend", "-no-progress", "-quiet", "-no-xattrs"])
        .args(["-comp", "gzip", "-noI", "-noId", "-noD", "-noF", "-noX"])
        .args(["-all-root", "-mkfs-time", &epoch, "-all-time", &epoch])
        // mksquashfs refuses SOURCE_DATE_EPOCH together with explicit times; ours come from it.
        .env_remove("SOURCE_DATE_EPOCH");
    run_tool("mksquashfs", &mut cmd)?;
    Ok(())
}
