//! RAM-booted nodes (issue 11): diskless guests boot the `image-tools pxe` artifacts, directly
//! (`-kernel/-initrd/-append`) and through QEMU's iPXE ROM (DHCP and TFTP of QEMU's user
//! network), and fetch the payload over HTTP from nginx on 127.0.0.1, reached only through the
//! one forward of a `restrict=on` network. A good payload is verified into RAM and mounted as
//! /usr; a tampered one, one signed by an untrusted key and one for another IMAGE_ID are
//! refused on the console and nothing is mounted; a server that is down is retried until it
//! comes up; a stream URL boots the release the node's rollout position allows.
//!
//! Each boot prints its time to the boot marker and the fetch's peak memory (VmHWM of
//! `updater netboot`) against the image size, for the reliability figures.
use crate::util::{self, Scratch};
use qemu_tests::http::Nginx;
use qemu_tests::machine::{Firmware, Machine, MachineConfig, READY_MARKER};
use qemu_tests::pxe::{direct_boot, ipxe_boot, kernel_args, PxeImages, BOOT_SERVER};
use std::time::Instant;

/// The console line `updater netboot` ends a good fetch with.
const VERIFIED: &str = "peak memory ";
/// The init's line when nothing was mounted.
const FAILED: &str =
    "NETBOOT: failed: updater netboot refused or could not fetch the payload; nothing mounted";

fn images() -> &'static PxeImages {
    PxeImages::get().unwrap_or_else(|e| panic!("{e:#}"))
}

fn payload_arg(name: &str) -> String {
    kernel_args(&format!("updater.url=http://{BOOT_SERVER}/{name}"))
}

/// Boots `config`, waits for the verified fetch and the test OS, and checks what is mounted
/// and what `updater status` says. Returns the booted version.
fn boot_and_check(config: MachineConfig, status_line: &str) -> anyhow::Result<String> {
    let started = Instant::now();
    let name = config.name.clone();
    let mut vm = Machine::start(config)?;
    let verified = vm.wait_for(VERIFIED, util::BOOT)?;
    let fetched = started.elapsed();
    let booted = vm.wait_booted(util::BOOT)?;
    let boot_time = started.elapsed();
    vm.wait_for(READY_MARKER, util::BOOT)?;
    let version = booted.version.clone();
    let image = images().usr(&version);
    let image_size = std::fs::metadata(&image)?.len();
    let peak_kib: u64 = verified
        .rsplit(VERIFIED)
        .next()
        .and_then(|t| t.trim_end_matches(" KiB").parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in {verified:?}"));
    eprintln!(
        "FIGURE {name}: fetched and verified at {:.1} s, booted at {:.1} s; peak memory of the \
         fetch {peak_kib} KiB for an image of {} KiB",
        fetched.as_secs_f64(),
        boot_time.as_secs_f64(),
        image_size / 1024
    );
    let mounts = vm.run_ok("grep ' /usr ' /proc/mounts", util::COMMAND)?;
    assert!(
        mounts.starts_with("/dev/loop") && mounts.contains(" /usr squashfs ro"),
        "{mounts}"
    );
    let sum = vm.run_ok("sha256sum /run/netboot/usr.img", util::COMMAND)?;
    let expected = hex_sha256(&std::fs::read(&image)?);
    assert!(
        sum.starts_with(&expected),
        "RAM image {sum} is not {expected}"
    );
    let status = vm.run_ok("updater status", util::COMMAND)?;
    assert_eq!(status.lines().next(), Some(status_line), "{status}");
    assert!(
        status.contains("\nimage: /run/netboot/usr.img ("),
        "{status}"
    );
    vm.poweroff(util::POWEROFF)?;
    Ok(version)
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn direct_boot_of_a_good_payload_mounts_the_verified_usr() -> anyhow::Result<()> {
    let images = images();
    let server = Nginx::serve(&images.tree())?;
    let config = direct_boot(
        "netboot good payload",
        &images.artifacts(),
        &payload_arg("good.payload"),
        server.port(),
    );
    let version = boot_and_check(
        config,
        &format!("RAM-booted from http://{BOOT_SERVER}/good.payload, version 2.0"),
    )?;
    assert_eq!(version, "2.0");
    assert!(server.requests().contains("GET /good.payload "));
    Ok(())
}

#[test]
fn ipxe_network_boot_of_a_good_payload_mounts_the_verified_usr() -> anyhow::Result<()> {
    let images = images();
    let server = Nginx::serve(&images.tree())?;
    let config = ipxe_boot(
        "netboot ipxe",
        Firmware::Bios,
        &images.artifacts(),
        server.port(),
    );
    let version = boot_and_check(
        config,
        &format!("RAM-booted from http://{BOOT_SERVER}/good.payload, version 2.0"),
    )?;
    assert_eq!(version, "2.0");
    Ok(())
}

/// Boots with `payload` and expects the refusal `reason` on the console, the init's failure
/// line, nothing mounted and a power-off.
fn refused(name: &str, payload: &str, reason: &str) -> anyhow::Result<()> {
    let images = images();
    let server = Nginx::serve(&images.tree())?;
    let mut vm = Machine::start(direct_boot(
        name,
        &images.artifacts(),
        &payload_arg(payload),
        server.port(),
    ))?;
    let line = vm.wait_for("updater: refused: ", util::BOOT)?;
    eprintln!("CONSOLE {name}: {line}");
    let url = format!("http://{BOOT_SERVER}/{payload}");
    assert!(
        line.starts_with(&format!("updater: refused: payload {url} ")) && line.contains(reason),
        "{line}"
    );
    assert!(line.ends_with("; nothing to mount"), "{line}");
    vm.wait_for(FAILED, util::BOOT)?;
    vm.wait_exit(util::POWEROFF)?;
    let console = vm.console_text();
    assert!(!console.contains("NETBOOT: mounted"), "{console}");
    assert!(!console.contains("TESTOS: booted"), "{console}");
    Ok(())
}

#[test]
fn a_tampered_payload_is_refused_and_nothing_is_mounted() -> anyhow::Result<()> {
    refused("netboot tampered", "tampered.payload", " refused: ")
}

#[test]
fn a_payload_signed_by_an_untrusted_key_is_refused_and_nothing_is_mounted() -> anyhow::Result<()> {
    refused(
        "netboot untrusted key",
        "untrusted.payload",
        "refused: payload is signed only by unknown keys (",
    )
}

#[test]
fn a_payload_for_another_image_id_is_refused_and_nothing_is_mounted() -> anyhow::Result<()> {
    refused(
        "netboot other image id",
        "otheros.payload",
        "is for \"other-os\", this node boots \"ab-testos\"",
    )
}

#[test]
fn a_boot_server_that_is_down_is_retried_until_it_comes_up() -> anyhow::Result<()> {
    let images = images();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = Nginx::stopped(&images.tree(), port)?;
    let mut vm = Machine::start(direct_boot(
        "netboot server down",
        &images.artifacts(),
        &payload_arg("good.payload"),
        port,
    ))?;
    let retry = vm.wait_for("failed, retrying in ", util::BOOT)?;
    eprintln!("CONSOLE server down: {retry}");
    assert!(
        retry.starts_with(&format!(
            "updater: warn: cannot fetch http://{BOOT_SERVER}/good.payload: "
        )),
        "{retry}"
    );
    server.start()?;
    let booted = vm.wait_booted(util::BOOT)?;
    assert_eq!(booted.version, "2.0");
    vm.wait_for(READY_MARKER, util::BOOT)?;
    let status = vm.run_ok("updater status", util::COMMAND)?;
    assert!(status.starts_with(&format!(
        "RAM-booted from http://{BOOT_SERVER}/good.payload, version 2.0"
    )));
    vm.poweroff(util::POWEROFF)?;
    Ok(())
}

#[test]
fn a_stream_url_boots_the_release_the_rollout_position_allows() -> anyhow::Result<()> {
    let images = images();
    let server = Nginx::serve(&images.tree())?;
    // image-tools pxe --stream: artifacts from the newest release the stream has started.
    let scratch = Scratch::new("pxe-stream");
    let mut spec = image_tools::pxe::PxeSpec::new(
        image_tools::pxe::PxeSource::Stream {
            url: format!("http://127.0.0.1:{}/stable/stream.json", server.port()),
            channel: "stable".into(),
        },
        scratch.path("artifacts"),
    );
    spec.pubkeys = vec![images.pubkey()];
    spec.init = qemu_tests::pxe::GUEST_INIT.into();
    let report = image_tools::pxe::write_artifacts(&spec)?;
    assert_eq!(report.version, "3.0");
    let stream = format!("http://{BOOT_SERVER}/stable/stream.json");
    // 3.0 is open to about half of the nodes: a wary node (0.9) stays on 2.0, an eager one
    // (0.1) gets 3.0.
    for (wariness, version) in [("0.9", "2.0"), ("0.1", "3.0")] {
        let args = kernel_args(&format!(
            "updater.stream={stream} updater.channel=stable updater.wariness={wariness}"
        ));
        let config = direct_boot(
            &format!("netboot stream wariness {wariness}"),
            &scratch.path("artifacts"),
            &args,
            server.port(),
        );
        let status = boot_and_check_stream(config, version)?;
        assert!(
            status.ends_with(&format!(", version {version} (release stream {stream})")),
            "{status}"
        );
    }
    Ok(())
}

/// Boots a stream node, checks the version, returns the status line.
fn boot_and_check_stream(config: MachineConfig, version: &str) -> anyhow::Result<String> {
    let mut vm = Machine::start(config)?;
    let booted = vm.wait_booted(util::BOOT)?;
    assert_eq!(booted.version, version);
    vm.wait_for(READY_MARKER, util::BOOT)?;
    let status = vm.run_ok("updater status", util::COMMAND)?;
    vm.poweroff(util::POWEROFF)?;
    Ok(status.lines().next().unwrap_or_default().to_string())
}
