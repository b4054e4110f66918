//! The update cycle end to end under OVMF (issue 5): install in the guest from a payload on an
//! attached virtio disk, reboot through our GRUB, `updater health` at boot commits or rolls
//! back, failures are remembered, power cuts leave a bootable disk.
//!
//! Every scenario starts from a fresh disk with v1 committed in USR-A
//! ([`qemu_tests::cycle::CycleDisk`]) and the images of [`qemu_tests::cycle::CycleImages`],
//! boots only what it needs, checks what the guest's `updater status --json` says, and after
//! power-off checks with bootctl what is on the disk file. Each prints its wall time.
use crate::util::Scratch;
use anyhow::bail;
use bootctl::{SlotAttrs, SlotId};
use qemu_tests::cycle::{
    machine_config, CycleDisk, CycleImages, Guest, BOOT_TIMEOUT, FAILING_CHECK_MESSAGE,
    FAILING_CHECK_NAME, HEALTH_HOOK_MARKER, INSTALL_TIMEOUT, PANIC_MARKER, V4_MARKER,
};
use qemu_tests::machine::{Firmware, Machine};
use std::time::Instant;

/// The firmware most cycle scenarios boot with; v1 → v2 runs under both (the boot scenarios
/// cover GRUB's selection under both firmwares).
const FIRMWARE: Firmware = Firmware::Uefi;

const fn attrs(priority: u8, tries: u8, successful: bool) -> SlotAttrs {
    SlotAttrs {
        priority,
        tries,
        successful,
    }
}

/// A scenario's scratch directory, fresh disk and clock (the delta cycle uses it too).
pub(crate) struct Scenario {
    name: &'static str,
    _scratch: Scratch,
    pub(crate) images: &'static CycleImages,
    pub(crate) disk: CycleDisk,
    started: Instant,
    firmware: Firmware,
}

impl Scenario {
    pub(crate) fn new(name: &'static str) -> anyhow::Result<Scenario> {
        Scenario::on(name, FIRMWARE)
    }

    fn on(name: &'static str, firmware: Firmware) -> anyhow::Result<Scenario> {
        // Shared builds (cached across runs) are not the scenario's time.
        let images = CycleImages::get()?;
        qemu_tests::grub::artifacts()?;
        let started = Instant::now();
        let scratch = Scratch::new(&format!("cycle-{name}"));
        let disk = CycleDisk::new(images, scratch.path("disk.img"))?;
        Ok(Scenario {
            name,
            _scratch: scratch,
            images,
            disk,
            started,
            firmware,
        })
    }

    pub(crate) fn boot(&self, what: &str) -> anyhow::Result<Guest> {
        Guest::boot(
            &self.disk,
            self.images,
            self.firmware,
            &format!("{}: {what}", self.name),
        )
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        eprintln!(
            "cycle scenario {} ({}): {:.1} s wall time",
            self.name,
            self.firmware.name(),
            self.started.elapsed().as_secs_f64()
        );
    }
}

mod v2_installed_in_the_guest_passes_health_and_is_committed_with_v1_as_fallback {
    #[test]
    fn uefi() -> anyhow::Result<()> {
        super::v1_to_v2(qemu_tests::machine::Firmware::Uefi)
    }
    #[test]
    fn bios() -> anyhow::Result<()> {
        super::v1_to_v2(qemu_tests::machine::Firmware::Bios)
    }
}

fn v1_to_v2(firmware: Firmware) -> anyhow::Result<()> {
    let s = Scenario::on("v1-to-v2", firmware)?;
    let mut g = s.boot_v1()?;
    let out = g.install("2")?;
    assert!(out.contains("installed 2 into slot B"), "{out}");
    s.v2_boots_and_is_committed_with_v1_as_fallback(g)
}

impl Scenario {
    /// Boots the fresh disk: v1 from slot A.
    pub(crate) fn boot_v1(&self) -> anyhow::Result<Guest> {
        let a = self.disk.partuuid(&SlotId::A)?;
        let g = self.boot("v1 on A")?;
        assert_eq!(
            (g.booted.version.as_str(), &g.booted.usr_partuuid),
            ("1", &a)
        );
        Ok(g)
    }

    /// After v2 was installed into B from v1: B boots next with one try, v2 boots from it, its
    /// health check commits it with v1 kept as the fallback; then powers off and checks the
    /// disk file.
    pub(crate) fn v2_boots_and_is_committed_with_v1_as_fallback(
        &self,
        mut g: Guest,
    ) -> anyhow::Result<()> {
        let b = self.disk.partuuid(&SlotId::B)?;
        let st = g.status()?;
        assert_eq!(st.next.as_deref(), Some("B"), "{st:?}");
        assert_eq!(st.slot("B")?.attrs(), attrs(2, 1, false));
        let pending = st.pending.as_ref().expect("a pending install");
        assert_eq!((pending.version.as_str(), pending.flipped), ("2", true));

        let booted = g.reboot()?.clone();
        assert_eq!((booted.version.as_str(), &booted.usr_partuuid), ("2", &b));
        assert!(!booted.fallback);
        let st = g.status()?;
        assert_eq!(st.booted, "B");
        assert_eq!(st.next.as_deref(), Some("B"));
        assert_eq!(st.slot("B")?.attrs(), attrs(2, 0, true), "B committed");
        assert_eq!(
            st.slot("A")?.attrs(),
            attrs(1, 0, true),
            "A kept as fallback"
        );
        assert!(st.pending.is_none(), "{st:?}");
        let health = st.last_health.as_ref().expect("a health verdict");
        assert!(health.passed && health.version == "2", "{health:?}");
        assert!(st.failed.versions.is_empty(), "{st:?}");
        g.poweroff()?;

        assert_eq!(self.disk.attrs(&SlotId::B)?, attrs(2, 0, true));
        assert_eq!(self.disk.attrs(&SlotId::A)?, attrs(1, 0, true));
        assert_eq!(self.disk.next()?.as_deref(), Some("USR-B"));
        assert!(
            self.disk.gpt_consistent()?,
            "both GPT copies valid and equal"
        );
        Ok(())
    }
}

#[test]
fn v3_failing_its_health_check_rolls_back_and_is_never_installed_again() -> anyhow::Result<()> {
    let s = Scenario::new("v3-health-fails")?;
    let a = s.disk.partuuid(&SlotId::A)?;
    let b = s.disk.partuuid(&SlotId::B)?;
    let mut g = s.boot("v1 on A")?;
    g.install("3")?;

    g.vm.reboot()?;
    let v3 = g.vm.wait_booted(BOOT_TIMEOUT)?;
    assert_eq!((v3.version.as_str(), &v3.usr_partuuid), ("3", &b));
    g.vm.wait_for(HEALTH_HOOK_MARKER, BOOT_TIMEOUT)?;
    // The check fails, the updater marks B bad and reboots by itself (strategy "immediate");
    // GRUB now picks A.
    let back = g.wait_next_boot()?.clone();
    assert_eq!((back.version.as_str(), &back.usr_partuuid), ("1", &a));
    assert!(
        !back.fallback,
        "A is chosen by gptprio, not the fallback entry"
    );

    let st = g.status()?;
    assert_eq!((st.booted.as_str(), st.next.as_deref()), ("A", Some("A")));
    assert_eq!(st.slot("B")?.attrs(), attrs(0, 0, false), "B marked bad");
    let failed = st.failed("3").expect("v3 recorded as failed");
    assert_eq!(failed.check.as_deref(), Some(FAILING_CHECK_NAME));
    assert!(
        failed
            .output
            .as_deref()
            .is_some_and(|o| o.contains(FAILING_CHECK_MESSAGE)),
        "{failed:?}"
    );
    let health = st.last_health.as_ref().expect("the health verdict");
    assert!(!health.passed && health.version == "3", "{health:?}");
    let text = g.status_text()?;
    assert!(
        text.contains(&format!(
            "failed: version 3 (slot B): health check {FAILING_CHECK_NAME} failed (exit 3)"
        )) && text.contains(FAILING_CHECK_MESSAGE),
        "{text}"
    );

    let (rc, out) = g.try_install("3")?;
    assert_eq!(rc, 1, "{out}");
    assert!(
        out.contains("version 3 failed before and is not installed again"),
        "{out}"
    );
    assert_eq!(g.status()?.slot("B")?.attrs(), attrs(0, 0, false));
    g.poweroff()?;

    assert_eq!(s.disk.attrs(&SlotId::A)?, attrs(1, 0, true));
    assert_eq!(s.disk.attrs(&SlotId::B)?, attrs(0, 0, false));
    assert!(s.disk.gpt_consistent()?);
    Ok(())
}

#[test]
fn v4_whose_init_never_comes_up_falls_back_and_is_recorded_as_failed() -> anyhow::Result<()> {
    let s = Scenario::new("v4-never-comes-up")?;
    let a = s.disk.partuuid(&SlotId::A)?;
    let mut g = s.boot("v1 on A")?;
    g.install("4")?;

    g.vm.reboot()?;
    g.vm.wait_for(V4_MARKER, BOOT_TIMEOUT)?;
    g.vm.wait_for(PANIC_MARKER, BOOT_TIMEOUT)?;
    // panic=5 reboots; B's only try is spent, so GRUB's rule picks A.
    let back = g.wait_next_boot()?.clone();
    assert_eq!((back.version.as_str(), &back.usr_partuuid), ("1", &a));
    assert!(!back.fallback);

    let st = g.status()?;
    assert_eq!((st.booted.as_str(), st.next.as_deref()), ("A", Some("A")));
    // GRUB spent B's try; the old slot's health recorded it and marked it bad.
    assert_eq!(
        st.slot("B")?.attrs(),
        attrs(0, 0, false),
        "B never came up: recorded and marked bad"
    );
    assert!(st.pending.is_none(), "{st:?}");
    let failed = st.failed("4").expect("v4 recorded as failed");
    assert!(failed.reason.starts_with("never came up"), "{failed:?}");
    let (rc, out) = g.try_install("4")?;
    assert_eq!(rc, 1, "{out}");
    assert!(
        out.contains("version 4 failed before and is not installed again"),
        "{out}"
    );
    g.poweroff()?;

    assert_eq!(s.disk.next()?.as_deref(), Some("USR-A"));
    assert!(s.disk.gpt_consistent()?);
    Ok(())
}

/// Starts `updater install` of `version` with JSON progress and cuts the power as soon as the
/// console shows a progress event `cut_at` accepts; returns that event.
fn cut_install_when(
    g: &mut Guest,
    version: &str,
    cut_at: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let cmd = Guest::install_command(version).replace("updater ", "updater --json ");
    g.vm.send_line(&format!("9000 {cmd}"))?;
    loop {
        let (_, line) =
            g.vm.wait_for_any(&["{\"", "TESTOS: end 9000"], INSTALL_TIMEOUT)?;
        if line.contains("TESTOS: end 9000") {
            bail!("the install ended before the power cut: {line}");
        }
        let Some(json) = line.find('{').map(|at| &line[at..]) else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<serde_json::Value>(json) else {
            continue;
        };
        if cut_at(&event) {
            g.vm.kill()?;
            return Ok(event);
        }
    }
}

fn phase_is(event: &serde_json::Value, phase: &str) -> bool {
    event["phase"] == phase
}

fn progress_of(event: &serde_json::Value) -> (u64, u64) {
    (
        event["done"].as_u64().unwrap_or(0),
        event["total"].as_u64().unwrap_or(u64::MAX),
    )
}

#[test]
fn power_cuts_during_install_and_commit_leave_a_complete_verified_slot_to_boot(
) -> anyhow::Result<()> {
    let s = Scenario::new("power-cuts")?;
    let a = s.disk.partuuid(&SlotId::A)?;
    let b = s.disk.partuuid(&SlotId::B)?;

    // Early: right after the first write (B marked unbootable), as streaming starts.
    let mut g = s.boot("v1, cut early")?;
    let e = cut_install_when(&mut g, "2", |e| phase_is(e, "writing"))?;
    eprintln!("power cut early, at {e}");
    drop(g);
    assert_eq!(s.disk.attrs(&SlotId::B)?, attrs(0, 0, false));
    assert!(s.disk.gpt_consistent()?);

    // Mid-stream: half the image written.
    let mut g = s.boot("after the early cut")?;
    assert_eq!(
        (g.booted.version.as_str(), &g.booted.usr_partuuid),
        ("1", &a)
    );
    let e = cut_install_when(&mut g, "2", |e| {
        let (done, total) = progress_of(e);
        phase_is(e, "writing") && done * 2 >= total
    })?;
    eprintln!("power cut mid-stream, at {e}");
    drop(g);
    assert_eq!(s.disk.attrs(&SlotId::B)?, attrs(0, 0, false));

    // The flip: the whole slot read back and verified, the GPT write follows at once.
    let mut g = s.boot("after the mid-stream cut")?;
    assert_eq!(
        (g.booted.version.as_str(), &g.booted.usr_partuuid),
        ("1", &a)
    );
    let e = cut_install_when(&mut g, "2", |e| {
        let (done, total) = progress_of(e);
        phase_is(e, "flipped") || (phase_is(e, "reading back") && done >= total)
    })?;
    eprintln!("power cut at the flip, at {e}");
    drop(g);
    assert!(s.disk.gpt_consistent()?);
    let flipped = s.disk.attrs(&SlotId::B)? == attrs(2, 1, false);
    eprintln!(
        "the flip was {} when the power went",
        if flipped {
            "durable"
        } else {
            "not yet written"
        }
    );
    if !flipped {
        assert_eq!(s.disk.attrs(&SlotId::B)?, attrs(0, 0, false));
    }

    // Next boot: on A (the flip was not written) the install is run again and finishes, then
    // v2 boots; on B (the flip made it) v2 boots at once. Power goes while `updater health`
    // runs on v2's first boot: the commit's window.
    let mut vm = if flipped {
        Machine::start(machine_config(
            &s.disk,
            s.images,
            s.firmware,
            "v2 first boot",
        ))?
    } else {
        let mut g = s.boot("after the cut at the flip")?;
        assert_eq!(
            (g.booted.version.as_str(), &g.booted.usr_partuuid),
            ("1", &a)
        );
        let out = g.install("2")?;
        assert!(out.contains("installed 2 into slot B"), "{out}");
        g.vm.reboot()?;
        g.vm
    };
    let v2 = vm.wait_booted(BOOT_TIMEOUT)?;
    assert_eq!((v2.version.as_str(), &v2.usr_partuuid), ("2", &b));
    vm.wait_for(HEALTH_HOOK_MARKER, BOOT_TIMEOUT)?;
    vm.kill()?;
    drop(vm);
    assert!(s.disk.gpt_consistent()?);
    let committed = s.disk.attrs(&SlotId::B)? == attrs(2, 0, true);
    eprintln!(
        "power cut during the commit: the commit was {}",
        if committed {
            "durable"
        } else {
            "not yet written"
        }
    );

    let mut g = s.boot("after the commit cut")?;
    let st = g.status()?;
    if committed {
        assert_eq!(
            (g.booted.version.as_str(), &g.booted.usr_partuuid),
            ("2", &b)
        );
        assert!(
            st.pending.is_none() && st.failed.versions.is_empty(),
            "{st:?}"
        );
    } else {
        // B's only try is spent: GRUB falls back to A, which records v2 as never up and marks
        // B bad.
        assert_eq!(st.slot("B")?.attrs(), attrs(0, 0, false));
        assert_eq!(
            (g.booted.version.as_str(), &g.booted.usr_partuuid),
            ("1", &a)
        );
        let failed = st.failed("2").expect("v2 recorded as failed");
        assert!(failed.reason.starts_with("never came up"), "{failed:?}");
    }
    g.poweroff()?;
    assert!(s.disk.gpt_consistent()?);
    Ok(())
}

#[test]
fn manual_rollback_goes_to_the_committed_fallback_and_back() -> anyhow::Result<()> {
    let s = Scenario::new("rollback-and-back")?;
    let a = s.disk.partuuid(&SlotId::A)?;
    let b = s.disk.partuuid(&SlotId::B)?;
    let mut g = s.boot("v1 on A")?;
    g.install("2")?;
    let v2 = g.reboot()?.clone();
    assert_eq!((v2.version.as_str(), &v2.usr_partuuid), ("2", &b));
    assert_eq!(g.status()?.slot("B")?.attrs(), attrs(2, 0, true));

    let out = g.rollback()?;
    assert!(out.contains("slot A boots next"), "{out}");
    let st = g.status()?;
    assert_eq!((st.booted.as_str(), st.next.as_deref()), ("B", Some("A")));
    let (sa, sb) = (st.slot("A")?.attrs(), st.slot("B")?.attrs());
    assert!(
        sa.successful && sb.successful,
        "both stay committed: {st:?}"
    );
    assert!(sa.priority > sb.priority && sa.tries == 0, "{st:?}");
    let v1 = g.reboot()?.clone();
    assert_eq!((v1.version.as_str(), &v1.usr_partuuid), ("1", &a));
    assert!(!v1.fallback);

    let out = g.rollback()?;
    assert!(out.contains("slot B boots next"), "{out}");
    let v2 = g.reboot()?.clone();
    assert_eq!((v2.version.as_str(), &v2.usr_partuuid), ("2", &b));
    let st = g.status()?;
    assert_eq!((st.booted.as_str(), st.next.as_deref()), ("B", Some("B")));
    assert!(
        st.failed.versions.is_empty(),
        "rolling between committed slots records no failure: {st:?}"
    );
    g.poweroff()?;

    let (da, db) = (s.disk.attrs(&SlotId::A)?, s.disk.attrs(&SlotId::B)?);
    assert!(da.successful && db.successful && db.priority > da.priority);
    assert_eq!(s.disk.next()?.as_deref(), Some("USR-B"));
    assert!(s.disk.gpt_consistent()?);
    Ok(())
}

#[test]
fn the_agent_in_the_guest_updates_the_box_by_itself() -> anyhow::Result<()> {
    let s = Scenario::new("agent")?;
    let a = s.disk.partuuid(&SlotId::A)?;
    let b = s.disk.partuuid(&SlotId::B)?;
    let mut g = s.boot("v1 on A")?;
    g.enable_agent()?;

    // v2 published: the agent installs it, reboots (strategy immediate), health commits it.
    g.publish("2")?;
    let v2 = g.wait_next_boot_within(INSTALL_TIMEOUT)?.clone();
    assert_eq!((v2.version.as_str(), &v2.usr_partuuid), ("2", &b));
    let st = g.status()?;
    assert_eq!(st.slot("B")?.attrs(), attrs(2, 0, true), "v2 committed");

    // v3 (failing check) published: installed, booted, rolled back by its health check.
    g.publish("3")?;
    let v3 = g.vm.wait_booted(INSTALL_TIMEOUT)?;
    assert_eq!((v3.version.as_str(), &v3.usr_partuuid), ("3", &a));
    let back = g.wait_next_boot()?.clone();
    assert_eq!((back.version.as_str(), &back.usr_partuuid), ("2", &b));
    let st = g.status()?;
    assert!(st.failed("3").is_some(), "v3 recorded as failed: {st:?}");
    // Several polls later it is still not retried.
    g.run_ok("sleep 8")?;
    let st = g.status()?;
    assert_eq!(
        st.slot("A")?.attrs(),
        attrs(0, 0, false),
        "v3 never retried"
    );
    let log = g.run_ok("cat /run/updater-agent.log")?;
    assert!(log.contains("3.0") || log.contains("\"3\""), "{log}");

    // v4 published next: installed (it never comes up, and the box says so).
    g.publish("4")?;
    g.vm.wait_for(V4_MARKER, INSTALL_TIMEOUT)?;
    let back = g.wait_next_boot()?.clone();
    assert_eq!((back.version.as_str(), &back.usr_partuuid), ("2", &b));
    let st = g.status()?;
    let failed = st.failed("4").expect("v4 was installed and recorded");
    assert!(failed.reason.starts_with("never came up"), "{failed:?}");
    g.poweroff()?;
    assert!(s.disk.gpt_consistent()?);
    Ok(())
}
