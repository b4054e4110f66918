//! `demo`: the update cycle narrated, in QEMU (`scripts/demo.sh` builds and runs it).
//!
//! Publish, and the box updates itself: v1 on slot A with the update agent on → the publisher
//! publishes v2 → the agent installs it and reboots → health passes → committed; then v3,
//! whose health check fails → the updater marks it bad and reboots → GRUB falls back to v2,
//! and neither the agent nor a manual install takes v3 again. `updater status` is printed at
//! each step with a line saying what happened. Exit status 0 when the machine
//! ends on v2 with v3 recorded as failed, 1 otherwise (the error says which step), 2 on a usage
//! error.
use anyhow::{ensure, Context};
use clap::Parser;
use qemu_tests::cycle::{
    CycleDisk, CycleImages, Guest, BOOT_TIMEOUT, FAILING_CHECK_NAME, HEALTH_HOOK_MARKER,
    INSTALL_TIMEOUT,
};
use qemu_tests::machine::Firmware;
use std::process::ExitCode;
use std::time::Instant;

/// Run the narrated A/B update cycle in QEMU: v1 → v2 committed → v3 fails → back on v2.
#[derive(Parser, Debug)]
#[command(help_expected = true)]
struct DemoCmd {
    /// Boot through SeaBIOS instead of OVMF (UEFI).
    #[arg(long)]
    bios: bool,
}

fn main() -> ExitCode {
    match run(&DemoCmd::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Prints a step heading.
fn step(n: u32, title: &str) {
    println!("\n=== {n}. {title}");
}

/// Prints narration.
fn say(text: &str) {
    println!("--> {text}");
}

/// Prints guest output, indented.
fn show(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

fn status(g: &mut Guest) -> anyhow::Result<()> {
    println!("  $ updater status");
    show(&g.status_text()?);
    Ok(())
}

fn run(cmd: &DemoCmd) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let firmware = if cmd.bios {
        Firmware::Bios
    } else {
        Firmware::Uefi
    };
    say("building the test images v1..v4, their signed payloads and GRUB with gptprio (cached after the first run)");
    let images = CycleImages::get()?;
    let scratch = tempfile::Builder::new()
        .prefix("ab-updater-demo-")
        .tempdir()
        .context("creating the demo's directory")?;
    let disk = CycleDisk::new(images, scratch.path().join("disk.img"))?;

    step(
        1,
        "a factory-fresh disk: v1 in slot A (committed), slot B empty",
    );
    say(&format!(
        "booting QEMU ({}, TCG) from {}",
        firmware.name(),
        disk.path.display()
    ));
    let mut g = Guest::boot(&disk, images, firmware, "demo")?;
    say(&format!(
        "the box runs version {} from PARTUUID {}",
        g.booted.version, g.booted.usr_partuuid
    ));
    status(&mut g)?;

    step(
        2,
        "turn the update agent on: it polls the release stream of a local mirror",
    );
    say("/etc/updater/config.d/60-agent.toml: [agent] stream_url = \"file:///var/lib/testos-updates/stable/stream.json\", every 2 s; [reboot] strategy = \"immediate\" (vendor config)");
    g.enable_agent()?;

    step(
        3,
        "the publisher publishes v2 (image-tools publish add + rollout); nobody touches the box",
    );
    g.publish("2")?;
    say("the agent verifies the signed stream, picks v2, installs it into slot B through `updater install`'s stages, and reboots by itself; GRUB's gptprio picks B and `updater health` commits it");
    let booted = g.wait_next_boot_within(INSTALL_TIMEOUT)?.clone();
    ensure!(
        booted.version == "2",
        "expected v2 after the agent's reboot, booted {booted:?}"
    );
    status(&mut g)?;

    step(
        4,
        "the publisher publishes v3, whose health check will fail",
    );
    g.publish("3")?;
    let v3 = g.vm.wait_booted(INSTALL_TIMEOUT)?;
    say(&format!(
        "the agent installed v3 into slot A and rebooted; v3 came up from PARTUUID {}",
        v3.usr_partuuid
    ));
    g.vm.wait_for(HEALTH_HOOK_MARKER, BOOT_TIMEOUT)?;
    say("`updater health` runs v3's checks: 50-widget-service fails, so the updater marks the slot bad (priority 0), records why, and reboots by itself");
    let back = g.wait_next_boot()?.clone();
    ensure!(
        back.version == "2",
        "expected to be back on v2, booted {back:?}"
    );
    say("GRUB picked slot B again: the box is back on v2, and remembers why v3 was rolled back");
    status(&mut g)?;

    step(
        5,
        "a failed version is never installed again, by the agent or by hand",
    );
    g.run_ok("sleep 6")?;
    println!("  $ updater --disk /dev/vda check");
    show(&g.run_ok("updater --disk /dev/vda check")?);
    println!("  $ {}", Guest::install_command("3"));
    let (rc, out) = g.try_install("3")?;
    show(&out);
    ensure!(rc != 0, "installing v3 again was not refused");
    let st = g.status()?;
    let failed = st.failed("3").context("v3 is not recorded as failed")?;
    ensure!(
        failed.check.as_deref() == Some(FAILING_CHECK_NAME),
        "v3 is recorded as failed by {:?}, expected {FAILING_CHECK_NAME}",
        failed.check
    );
    ensure!(
        st.booted == "B",
        "expected to run from slot B, status {st:?}"
    );
    g.poweroff()?;
    say(&format!(
        "done in {:.0} s: running v2 from slot B, v3 recorded as failed by check {FAILING_CHECK_NAME}",
        started.elapsed().as_secs_f64()
    ));
    Ok(ExitCode::SUCCESS)
}
