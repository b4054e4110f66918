//! `demo`: the update cycle narrated, in QEMU (`scripts/demo.sh` builds and runs it).
//!
//! v1 on slot A → install v2 → reboot → health passes → committed; then v3, whose health
//! check fails → the updater marks it bad and reboots → GRUB falls back to v2. `updater status`
//! is printed at each step with a line saying what happened. Exit status 0 when the machine
//! ends on v2 with v3 recorded as failed, 1 otherwise (the error says which step), 2 on a usage
//! error.
use anyhow::{ensure, Context};
use clap::Parser;
use qemu_tests::cycle::{
    CycleDisk, CycleImages, Guest, BOOT_TIMEOUT, FAILING_CHECK_NAME, HEALTH_HOOK_MARKER,
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
        "install v2 from the payload disk into the passive slot B",
    );
    println!("  $ {}", Guest::install_command("2"));
    show(&g.install("2")?);
    say("signature, version and every chunk were verified before writing and read back after; B boots next with one try (P2 T1 S0), A is untouched");
    status(&mut g)?;

    step(
        3,
        "reboot: GRUB's gptprio picks B, `updater health` runs the checks at boot",
    );
    let booted = g.reboot()?.clone();
    ensure!(
        booted.version == "2",
        "expected v2 after the reboot, booted {booted:?}"
    );
    say("GRUB spent B's one try, v2 came up from slot B and its health checks passed: B is committed (S1), A (v1) stays as the fallback");
    status(&mut g)?;

    step(
        4,
        "install v3, whose health check will fail, into the passive slot A",
    );
    println!("  $ {}", Guest::install_command("3"));
    show(&g.install("3")?);
    status(&mut g)?;

    step(5, "reboot into v3");
    g.vm.reboot()?;
    let v3 = g.vm.wait_booted(BOOT_TIMEOUT)?;
    say(&format!("v3 came up from PARTUUID {}", v3.usr_partuuid));
    g.vm.wait_for(HEALTH_HOOK_MARKER, BOOT_TIMEOUT)?;
    say("`updater health` runs v3's checks: 50-widget-service fails, so the updater marks the slot bad (priority 0), records why, and reboots by itself (reboot strategy \"immediate\")");
    let back = g.wait_next_boot()?.clone();
    ensure!(
        back.version == "2",
        "expected to be back on v2, booted {back:?}"
    );
    say("GRUB picked slot B again: the box is back on v2, and remembers why v3 was rolled back");
    status(&mut g)?;

    step(6, "a failed version is never installed again");
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
