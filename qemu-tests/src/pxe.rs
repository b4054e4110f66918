//! RAM-booted nodes in QEMU (issue 11): the payloads, stream and netboot artifacts the
//! scenarios boot, and the machine configurations for direct kernel boot and iPXE.
//!
//! # Brief overview
//! - [`PxeImages::get`]: a cache entry ([`crate::cache`]) with a signing key and an untrusted
//!   one (made by image-tools' keygen, never in the repository), /usr images 2.0 and 3.0 of the
//!   test OS carrying the netboot modules in `lib/modules/netboot/` ([`NETBOOT_MODULES`] and
//!   their dependencies, from the cloud kernel), and the served tree ([`PxeImages::tree`]):
//!   `good.payload` (2.0), `untrusted.payload` (2.0 signed by the untrusted key),
//!   `otheros.payload` (IMAGE_ID `other-os`), `tampered.payload` (one byte of the last frame
//!   changed), and the release stream `stable/stream.json` listing 2.0 open to every node and
//!   3.0 open to about half ([`STREAM_30_FRACTION`]), with `payloads/`. The artifacts of
//!   `image-tools pxe` for `good.payload` are in [`PxeImages::artifacts`].
//! - [`direct_boot`] and [`ipxe_boot`]: diskless machines on QEMU user networking with
//!   `restrict=on` (the guest reaches nothing outside) and one explicit forward,
//!   [`BOOT_SERVER`]:80 → 127.0.0.1:PORT (through `busybox nc`, one per connection), the HTTP server the test runs
//!   ([`crate::http::Nginx`]); the iPXE one loads `boot.ipxe`, the kernel and the initramfs
//!   from QEMU's TFTP server (the artifacts directory) with the iPXE ROM of Debian's
//!   `ipxe-qemu`.
//!
//! ```no_run
//! use qemu_tests::pxe::{direct_boot, kernel_args, PxeImages};
//! let images = PxeImages::get()?;
//! let server = qemu_tests::http::Nginx::serve(&images.tree())?;
//! let config = direct_boot("good", &images.artifacts(), &kernel_args("updater.url=http://10.0.2.100/good.payload"), server.port());
//! # Ok::<(), anyhow::Error>(())
//! ```
use crate::cache::{cached_dir, Key};
use crate::cycle::{pack, publish};
use crate::error::Error;
use crate::kernel::CloudKernel;
use crate::machine::{Firmware, MachineConfig};
use crate::testos::{TestOs, UsrSpec, USR_INIT};
use anyhow::Context;
use image_tools::mkusr::UsrFs;
use image_tools::pxe::{write_artifacts, PxeSource, PxeSpec, NETBOOT_INIT};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Modules a RAM-booted test node loads (their dependencies are added): the network driver,
/// loop for the image file, squashfs for /usr.
pub const NETBOOT_MODULES: [&str; 4] = ["virtio_pci", "virtio_net", "loop", "squashfs"];

/// The address the guest reaches the test's HTTP server at (port 80, forwarded).
pub const BOOT_SERVER: &str = "10.0.2.100";

/// The test OS init a RAM-booted node switches to.
pub const GUEST_INIT: &str = "/usr/lib/testos/init";

/// Share of nodes 3.0 is rolled out to at the stream's start (it grows over ten years).
pub const STREAM_30_FRACTION: &str = "0.5";

/// The time the stream is made and its rollouts start (fixed: the entry is cached).
const STREAM_EPOCH: &str = "@1767225600";

/// Guest memory of a RAM-booted node, MiB.
pub const NODE_MEMORY_MIB: u32 = 512;

/// Kernel arguments of a test node fetching by `fetch` (`updater.url=…` or
/// `updater.stream=…`): serial console, power off on failure, the test OS init.
pub fn kernel_args(fetch: &str) -> String {
    format!("console=ttyS0 panic=-1 updater.on_failure=poweroff updater.init={GUEST_INIT} {fetch}")
}

/// The cached images, payloads, stream and artifacts.
#[derive(Debug)]
pub struct PxeImages {
    /// The cache entry.
    pub dir: PathBuf,
}

impl PxeImages {
    /// Built on first use in this process, or taken from the cache.
    pub fn get() -> anyhow::Result<&'static PxeImages> {
        static IMAGES: OnceLock<Result<PxeImages, String>> = OnceLock::new();
        IMAGES
            .get_or_init(|| PxeImages::build().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("building the netboot images: {e}"))
    }

    fn build() -> anyhow::Result<PxeImages> {
        let os = TestOs::get()?;
        let kernel = CloudKernel::fetch_with(&NETBOOT_MODULES)?;
        let mut key = Key::new()
            .text(&os.kernel.package)
            .file(&os.initramfs)?
            .file(&os.busybox)?
            .file(&os.updater)?
            .text(USR_INIT)
            .text(NETBOOT_INIT)
            .text(STREAM_EPOCH)
            .text(STREAM_30_FRACTION);
        for m in &kernel.modules {
            key = key.text(&m.display().to_string());
        }
        let dir = cached_dir("pxe", &key, |dir| {
            build_entry(os, &kernel, dir).map_err(|e| Error::Invalid(format!("{e:#}")))
        })?;
        Ok(PxeImages { dir })
    }

    /// The tree the HTTP server serves.
    pub fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }

    /// The `image-tools pxe` output for `good.payload`.
    pub fn artifacts(&self) -> PathBuf {
        self.dir.join("artifacts")
    }

    /// The trusted public key file.
    pub fn pubkey(&self) -> PathBuf {
        self.dir.join("test-signing.pub")
    }

    /// The /usr image of `version` ("2.0" or "3.0").
    pub fn usr(&self, version: &str) -> PathBuf {
        self.dir.join(format!("usr-{version}.img"))
    }
}

/// The /usr spec of a netboot test image: the test OS with the netboot modules.
fn usr_spec(version: &str, kernel: &CloudKernel) -> anyhow::Result<UsrSpec> {
    let mut spec = UsrSpec::new(version);
    let mut order = String::new();
    for m in &kernel.modules {
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .context("module without a file name")?
            .to_string();
        let bytes = std::fs::read(m).with_context(|| format!("reading {}", m.display()))?;
        spec = spec.file(&format!("lib/modules/netboot/{name}"), 0o644, bytes);
        order.push_str(&name);
        order.push('\n');
    }
    Ok(spec.file("lib/modules/netboot/load-order", 0o644, order))
}

fn build_entry(os: &TestOs, kernel: &CloudKernel, dir: &Path) -> anyhow::Result<()> {
    for name in ["test-signing", "untrusted"] {
        image_tools::keys::KeygenCmd {
            out: dir.join(name),
        }
        .run()
        .with_context(|| format!("making the {name} key"))?;
    }
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    let key = dir.join("test-signing.key");
    let other_os = usr_spec("2.0", kernel)?.file(
        "lib/os-release",
        0o644,
        "ID=other-os\nIMAGE_ID=other-os\nIMAGE_VERSION=2.0\n",
    );
    for (image, spec) in [
        ("usr-2.0.img", usr_spec("2.0", kernel)?),
        ("usr-3.0.img", usr_spec("3.0", kernel)?),
        ("usr-otheros.img", other_os),
    ] {
        os.build_usr_image(&spec, UsrFs::Squashfs, &dir.join(image))
            .with_context(|| format!("building {image}"))?;
    }
    let payloads = [
        ("good.payload", "usr-2.0.img", &key),
        ("v3.payload", "usr-3.0.img", &key),
        ("otheros.payload", "usr-otheros.img", &key),
        (
            "untrusted.payload",
            "usr-2.0.img",
            &dir.join("untrusted.key"),
        ),
    ];
    for (name, image, k) in payloads {
        pack(&dir.join(image), k, &tree.join(name)).with_context(|| format!("packing {name}"))?;
    }
    let mut tampered = std::fs::read(tree.join("good.payload")).context("reading good.payload")?;
    let last = tampered.len() - 1;
    tampered[last] ^= 0x20;
    std::fs::write(tree.join("tampered.payload"), tampered).context("writing tampered.payload")?;

    let (root, k) = (
        tree.to_str().context("non-UTF-8 path")?,
        key.to_str().context("non-UTF-8 path")?,
    );
    let tree_args = ["--root", root, "--channel", "stable"];
    publish(
        &["init", root, "--channel", "stable", "--expires-in", "520w"],
        k,
    )?;
    for (payload, version, rollout) in [
        (
            "good.payload",
            "2.0",
            ["--duration", "0s", "--start-fraction", "1"],
        ),
        (
            "v3.payload",
            "3.0",
            ["--duration", "520w", "--start-fraction", STREAM_30_FRACTION],
        ),
    ] {
        let p = tree.join(payload);
        let p = p.to_str().context("non-UTF-8 path")?;
        publish(&[&["add", p][..], &tree_args].concat(), k)
            .with_context(|| format!("adding {version} to the stream"))?;
        publish(
            &[
                &["rollout", version, "--start", STREAM_EPOCH][..],
                &rollout,
                &tree_args,
            ]
            .concat(),
            k,
        )
        .with_context(|| format!("rolling out {version}"))?;
    }

    let mut spec = PxeSpec::new(
        PxeSource::Payload(tree.join("good.payload").display().to_string()),
        dir.join("artifacts"),
    )
    .payload_url(&format!("http://{BOOT_SERVER}/good.payload"));
    spec.init = GUEST_INIT.into();
    spec.append = "console=ttyS0 panic=-1 updater.on_failure=poweroff".into();
    spec.pubkeys = vec![dir.join("test-signing.pub")];
    write_artifacts(&spec).context("writing the netboot artifacts")?;
    Ok(())
}

/// The user network: `restrict=on`, one forward from [`BOOT_SERVER`]:80 to 127.0.0.1:`port`,
/// and `extra` options (TFTP). The forward runs `busybox nc` (busybox-static) for each guest
/// connection: a chardev forward connects once, when QEMU starts, and can follow neither a
/// server that is down then up nor several connections at once.
fn network(config: &mut MachineConfig, port: u16, extra: &str, boot: bool) {
    config.extra_args.extend([
        "-netdev".to_string(),
        format!(
            "user,id=n,restrict=on,guestfwd=tcp:{BOOT_SERVER}:80-cmd:{} nc 127.0.0.1 {port}{extra}",
            crate::testos::HOST_BUSYBOX
        ),
        "-device".to_string(),
        format!(
            "virtio-net-pci,netdev=n{}",
            if boot { ",bootindex=0" } else { "" }
        ),
    ]);
}

/// A diskless BIOS machine booting `artifacts`' kernel and initramfs directly with `append`,
/// its boot server at 127.0.0.1:`port`.
pub fn direct_boot(name: &str, artifacts: &Path, append: &str, port: u16) -> MachineConfig {
    let mut c = MachineConfig::new(name, Firmware::Bios, artifacts.join("unused"));
    c.disks.clear();
    c.memory_mib = NODE_MEMORY_MIB;
    c.exit_on_reboot = true;
    network(&mut c, port, "", false);
    c.direct_kernel(
        &artifacts.join("vmlinuz"),
        &artifacts.join("initramfs.img"),
        append,
    )
}

/// A diskless machine that boots from the network with QEMU's iPXE ROM: DHCP and TFTP from
/// QEMU's user networking (`tftp_dir/boot.ipxe`, then the kernel and initramfs beside it).
pub fn ipxe_boot(name: &str, firmware: Firmware, tftp_dir: &Path, port: u16) -> MachineConfig {
    let mut c = MachineConfig::new(name, firmware, tftp_dir.join("unused"));
    c.disks.clear();
    c.memory_mib = NODE_MEMORY_MIB;
    c.exit_on_reboot = true;
    network(
        &mut c,
        port,
        &format!(",tftp={},bootfile=boot.ipxe", tftp_dir.display()),
        true,
    );
    c
}
