//! The Debian cloud kernel of the test OS: fetched with apt, unpacked, its modules resolved.
//!
//! The package is whatever `linux-image-cloud-amd64` depends on in the host's apt lists (the
//! current bookworm kernel). Its `.deb` is downloaded once with `apt-get download` into the
//! cache ([`crate::cache`]), and the kernel image plus the modules the test OS needs, with their
//! dependencies read from each module's `.modinfo`, are copied into a cache entry keyed by the
//! package name and version. In the cloud kernel ext4 and the GPT partition parser are built in;
//! virtio (PCI and block) and squashfs are modules.
//!
//! ```no_run
//! let kernel = qemu_tests::kernel::CloudKernel::fetch()?;
//! println!("{} with {} modules", kernel.vmlinuz.display(), kernel.modules.len());
//! # Ok::<(), qemu_tests::Error>(())
//! ```
use crate::cache::{cache_root, cached_dir, Key};
use crate::error::{Error, IoContext, Result};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The meta-package naming the current cloud kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// The modules the test OS loads (dependencies are added).
pub const WANTED_MODULES: [&str; 3] = ["virtio_pci", "virtio_blk", "squashfs"];

/// A kernel image and the modules to load, in load order.
#[derive(Clone, Debug)]
pub struct CloudKernel {
    /// Package name and version, e.g. `linux-image-6.1.0-56-cloud-amd64 6.1.192-2`.
    pub package: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// Module files, dependencies before their users.
    pub modules: Vec<PathBuf>,
}

impl CloudKernel {
    /// Returns the cached kernel, downloading and unpacking it on first use.
    pub fn fetch() -> Result<CloudKernel> {
        CloudKernel::fetch_with(&WANTED_MODULES)
    }

    /// The cached kernel with the modules `wanted` (and their dependencies) instead of
    /// [`WANTED_MODULES`].
    pub fn fetch_with(wanted: &[&str]) -> Result<CloudKernel> {
        let (name, version) = current_package()?;
        let key = Key::new()
            .text(&name)
            .text(&version)
            .text(&wanted.join(","));
        let dir = cached_dir("kernel", &key, |dir| unpack(&name, &version, wanted, dir))?;
        let order =
            fs::read_to_string(dir.join("load-order")).ctx("reading", dir.join("load-order"))?;
        Ok(CloudKernel {
            package: format!("{name} {version}"),
            vmlinuz: dir.join("vmlinuz"),
            modules: order.lines().map(|m| dir.join("modules").join(m)).collect(),
        })
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Command {
        command: shown.clone(),
        detail: format!("starting it: {e}"),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Command {
            command: shown,
            detail: format!(
                "{}: {}",
                out.status,
                stderr
                    .lines()
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or("no output")
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The concrete kernel package and its candidate version; refreshes the apt lists (as root)
/// when they do not know the meta-package yet, as on a fresh machine.
fn current_package() -> Result<(String, String)> {
    let lookup = || -> Result<(String, String)> {
        let deps = run(Command::new("apt-cache").args(["depends", META_PACKAGE]))?;
        let name = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .ok_or_else(|| Error::Invalid(format!("apt-cache names no kernel for {META_PACKAGE}")))?
            .to_string();
        let policy = run(Command::new("apt-cache").args(["policy", &name]))?;
        let version = policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: "))
            .filter(|v| *v != "(none)")
            .ok_or_else(|| Error::Invalid(format!("apt has no candidate version of {name}")))?
            .to_string();
        Ok((name, version))
    };
    match lookup() {
        Ok(found) => Ok(found),
        Err(first) => {
            if !is_root() {
                return Err(first);
            }
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            lookup()
        }
    }
}

/// Whether this process runs as root (the owner of `/proc/self`).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn unpack(name: &str, version: &str, wanted: &[&str], dir: &Path) -> Result<()> {
    let debs = cache_root()?.join("debs");
    fs::create_dir_all(&debs).ctx("creating", &debs)?;
    let deb = debs.join(format!("{name}_{}_amd64.deb", version.replace(':', "%3a")));
    if !deb.is_file() {
        let tmp = tempfile::tempdir_in(&debs).ctx("creating a directory in", &debs)?;
        run(Command::new("apt-get")
            .args(["download", "-q", &format!("{name}={version}")])
            .current_dir(tmp.path()))?;
        let fetched = fs::read_dir(tmp.path())
            .ctx("reading", tmp.path())?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().ends_with(".deb"))
            .ok_or_else(|| Error::Invalid(format!("apt-get download left no .deb for {name}")))?;
        fs::rename(fetched.path(), &deb).ctx("renaming into", &deb)?;
    }
    let x = tempfile::tempdir().ctx("creating", std::env::temp_dir())?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(x.path()))?;

    let boot = x.path().join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .ctx("reading", &boot)?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        .ok_or_else(|| Error::Invalid(format!("{} holds no /boot/vmlinuz-*", deb.display())))?;
    fs::copy(vmlinuz.path(), dir.join("vmlinuz")).ctx("copying", vmlinuz.path())?;

    let mut index = HashMap::new();
    index_modules(&x.path().join("lib/modules"), &mut index)?;
    let mut order = Vec::new();
    for m in wanted {
        resolve(m, &index, &mut order, &mut Vec::new())?;
    }
    let modules = dir.join("modules");
    fs::create_dir(&modules).ctx("creating", &modules)?;
    let mut listing = String::new();
    for m in &order {
        let src = &index[m];
        let file = format!("{m}.ko");
        fs::copy(src, modules.join(&file)).ctx("copying", src)?;
        listing.push_str(&file);
        listing.push('\n');
    }
    fs::write(dir.join("load-order"), listing).ctx("writing", dir.join("load-order"))
}

/// Maps module names (with `_`, as the kernel spells them) to their files.
fn index_modules(dir: &Path, index: &mut HashMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).ctx("reading", dir)? {
        let path = entry.ctx("reading", dir)?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            index.insert(stem.replace('-', "_"), path);
        }
    }
    Ok(())
}

/// Appends `name` after its dependencies to `order` (depth first; `stack` catches cycles).
fn resolve(
    name: &str,
    index: &HashMap<String, PathBuf>,
    order: &mut Vec<String>,
    stack: &mut Vec<String>,
) -> Result<()> {
    if order.iter().any(|m| m == name) {
        return Ok(());
    }
    if stack.iter().any(|m| m == name) {
        return Err(Error::Invalid(format!(
            "module dependency cycle through {name}"
        )));
    }
    let path = index
        .get(name)
        .ok_or_else(|| Error::Invalid(format!("the kernel package has no module {name}")))?;
    let bytes = fs::read(path).ctx("reading", path)?;
    let info = modinfo(&bytes);
    stack.push(name.to_string());
    for dep in info
        .get("depends")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
    {
        if !dep.is_empty() {
            resolve(dep, index, order, stack)?;
        }
    }
    stack.pop();
    order.push(name.to_string());
    Ok(())
}

/// The `key=value` strings of a module's `.modinfo` section, found by their NUL framing.
fn modinfo(ko: &[u8]) -> BTreeMap<String, String> {
    let mut info = BTreeMap::new();
    for key in ["depends", "name"] {
        let needle = format!("\0{key}=");
        if let Some(at) = ko
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
        {
            let start = at + needle.len();
            let end = ko[start..]
                .iter()
                .position(|&b| b == 0)
                .map_or(ko.len(), |n| start + n);
            info.insert(
                key.to_string(),
                String::from_utf8_lossy(&ko[start..end]).into_owned(),
            );
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_reads_depends_between_nuls() {
        let ko = b"\x7fELF junk\0license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0";
        let info = modinfo(ko);
        assert_eq!(info["depends"], "virtio,virtio_ring");
        assert_eq!(info["name"], "virtio_blk");
    }

    #[test]
    fn dependencies_come_before_their_users() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = HashMap::new();
        for (name, deps) in [("a", "b,c"), ("b", "c"), ("c", "")] {
            let p = dir.path().join(format!("{name}.ko"));
            fs::write(&p, format!("x\0depends={deps}\0")).unwrap();
            index.insert(name.to_string(), p);
        }
        let mut order = Vec::new();
        resolve("a", &index, &mut order, &mut Vec::new()).unwrap();
        assert_eq!(order, ["c", "b", "a"]);
    }
}
