//! `bootctl`: the cgpt-like command line over the bootctl library. Parsing and printing only.
use anyhow::Context;
use bootctl::{SlotDisk, SlotId};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// A/B slot control on GPT disks and disk-image files.
///
/// Reads and writes the priority (bits 48-51), tries (52-55) and successful (56) attributes of
/// the usr partitions (type 5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6) exactly as GRUB's gptprio.next
/// reads them, validating both GPT copies and writing the backup copy first. SLOT is A, B or a
/// partition number. On a host, systemd owns the name `bootctl`; on a device, use `updater`.
///
/// Exit status: 0 success; 1 error (one line on stderr says why); 2 usage error;
/// 3 `select` found no bootable slot.
#[derive(Parser)]
#[command(name = "bootctl", version, help_expected = true, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct DiskArg {
    /// Block device or disk-image file.
    #[arg(value_name = "DISK")]
    disk: PathBuf,
    /// Logical sector size of an image file (512 or 4096); detected when omitted.
    #[arg(long, value_name = "BYTES")]
    sector_size: Option<u32>,
}

#[derive(Subcommand)]
enum Command {
    /// Show both GPT copies' health and every usr slot.
    ///
    /// Example: bootctl show disk.img --json
    Show {
        #[command(flatten)]
        disk: DiskArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make SLOT the next to boot: top priority, TRIES tries, not successful.
    ///
    /// Other slots keep their order below it. Example: bootctl set-next disk.img B --tries 1
    SetNext {
        #[command(flatten)]
        disk: DiskArg,
        /// A, B or a partition number.
        #[arg(value_name = "SLOT")]
        slot: SlotId,
        /// Boot attempts before GRUB gives up on the slot (1-15).
        #[arg(long, default_value_t = 1, value_name = "N")]
        tries: u32,
    },
    /// Commit SLOT: successful 1, tries 0, priority kept (top priority if it was 0).
    ///
    /// A slot at priority 0 (booted through grub.cfg's fallback entry) becomes the next boot,
    /// the others re-ranked below it. Example: bootctl mark-good /dev/vda B
    MarkGood {
        #[command(flatten)]
        disk: DiskArg,
        /// A, B or a partition number.
        #[arg(value_name = "SLOT")]
        slot: SlotId,
    },
    /// Make SLOT unbootable: priority 0, tries 0, successful 0.
    ///
    /// Example: bootctl mark-bad disk.img 4
    MarkBad {
        #[command(flatten)]
        disk: DiskArg,
        /// A, B or a partition number.
        #[arg(value_name = "SLOT")]
        slot: SlotId,
    },
    /// Print the slot GRUB's gptprio.next would boot.
    ///
    /// With --boot, also write the tries decrement GRUB would write. Exit status 3 when no
    /// slot is bootable. Example: bootctl select disk.img --boot --json
    Select {
        #[command(flatten)]
        disk: DiskArg,
        /// Apply GRUB's tries decrement to the chosen slot, as a boot would.
        #[arg(long)]
        boot: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rewrite an invalid or differing GPT copy from the valid one; move the backup to the
    /// end of a disk that grew.
    ///
    /// Example: bootctl repair disk.img
    Repair {
        #[command(flatten)]
        disk: DiskArg,
    },
}

fn open(d: &DiskArg, writable: bool) -> anyhow::Result<SlotDisk> {
    SlotDisk::open(&d.disk, writable, d.sector_size)
        .with_context(|| format!("reading the GPT of {}", d.disk.display()))
}

fn show(d: &DiskArg, json: bool) -> anyhow::Result<ExitCode> {
    let mut disk = open(d, false)?;
    // A table with inconsistent entries is shown, but GRUB's rule is not applied to it.
    let next = match disk.state().entries {
        Ok(()) => disk.select(false)?,
        Err(_) => None,
    };
    let state = disk.state();
    let slots = disk.slots();
    let g = disk.gpt();
    if json {
        let copy = |r: &Result<(), bootctl::gpt::CopyError>| serde_json::json!({"valid": r.is_ok(), "error": r.as_ref().err().map(|e| e.to_string())});
        let v = serde_json::json!({
            "disk": d.disk,
            "sector_size": g.sector_size,
            "disk_sectors": state.disk_sectors,
            "disk_guid": g.disk_guid,
            "primary": copy(&state.primary),
            "backup": copy(&state.backup),
            "copies_match": state.copies_match,
            "entries": copy_entries(&state.entries),
            "backup_at_end": state.backup_at_end(),
            "slots": slots,
            "next": next.map(|s| s.slot.number),
        });
        println!("{v:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let copy = |r: &Result<(), bootctl::gpt::CopyError>| match r {
        Ok(()) => "valid".to_string(),
        Err(e) => format!("INVALID ({e})"),
    };
    println!(
        "{}: {}-byte sectors, {} sectors, disk GUID {}",
        d.disk.display(),
        g.sector_size,
        state.disk_sectors,
        g.disk_guid
    );
    println!(
        "primary GPT {}, backup GPT {}",
        copy(&state.primary),
        copy(&state.backup)
    );
    if let Err(e) = &state.entries {
        println!(
            "partition entries INVALID ({e}): every slot operation is refused until the table \
             is fixed by hand"
        );
    }
    if state.needs_repair() {
        println!("needs repair: run `bootctl repair {}`", d.disk.display());
    }
    println!(
        "{:>3}  {:<10} {:>8} {:>5} {:>10}  PARTUUID",
        "#", "LABEL", "PRIORITY", "TRIES", "SUCCESSFUL"
    );
    for s in &slots {
        println!(
            "{:>3}  {:<10} {:>8} {:>5} {:>10}  {}",
            s.number,
            s.label,
            s.attrs.priority,
            s.attrs.tries,
            u8::from(s.attrs.successful),
            s.partuuid
        );
    }
    match next {
        Some(n) => println!("next boot: {} ({})", n.slot.number, n.slot.label),
        None if state.entries.is_err() => println!("next boot: unknown (invalid entries)"),
        None if slots.is_empty() => println!("next boot: none (no usr partitions)"),
        None => println!("next boot: none (no bootable slot)"),
    }
    Ok(ExitCode::SUCCESS)
}

fn copy_entries(r: &Result<(), bootctl::gpt::EntryError>) -> serde_json::Value {
    serde_json::json!({"valid": r.is_ok(), "error": r.as_ref().err().map(|e| e.to_string())})
}

fn change(
    d: &DiskArg,
    slot: &SlotId,
    op: impl FnOnce(&mut SlotDisk) -> bootctl::Result<bool>,
) -> anyhow::Result<ExitCode> {
    let mut disk = open(d, true)?;
    let before = disk.slots();
    let wrote =
        op(&mut disk).with_context(|| format!("changing slot {slot} on {}", d.disk.display()))?;
    for (b, a) in before.iter().zip(disk.slots()) {
        if b.attrs != a.attrs {
            println!("{} ({}): {} -> {}", a.label, a.number, b.attrs, a.attrs);
        }
    }
    if !wrote {
        let s = disk.slot(slot)?;
        println!(
            "{} ({}): unchanged ({}), nothing written",
            s.label, s.number, s.attrs
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Show { disk, json } => show(&disk, json),
        Command::SetNext { disk, slot, tries } => {
            change(&disk, &slot, |d| d.set_next(&slot, tries))
        }
        Command::MarkGood { disk, slot } => change(&disk, &slot, |d| d.mark_good(&slot)),
        Command::MarkBad { disk, slot } => change(&disk, &slot, |d| d.mark_bad(&slot)),
        Command::Select {
            disk: d,
            boot,
            json,
        } => {
            let mut disk = open(&d, boot)?;
            let sel = disk
                .select(boot)
                .with_context(|| format!("selecting a slot on {}", d.disk.display()))?;
            match (&sel, json) {
                (Some(s), true) => println!(
                    "{}",
                    serde_json::json!({"number": s.slot.number, "label": s.slot.label, "partuuid": s.slot.partuuid,
                        "before": s.slot.attrs, "after": s.after, "wrote": s.wrote})
                ),
                (Some(s), false) => {
                    println!("{} {} {}", s.slot.number, s.slot.label, s.slot.partuuid)
                }
                (None, true) => println!("{}", serde_json::json!({"number": null})),
                (None, false) => eprintln!("bootctl: no bootable slot on {}", d.disk.display()),
            }
            Ok(if sel.is_some() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Repair { disk: d } => {
            let mut disk = open(&d, true)?;
            let report = disk
                .repair()
                .with_context(|| format!("repairing the GPT of {}", d.disk.display()))?;
            if report.problems.is_empty() {
                println!(
                    "{}: both GPT copies valid and identical, nothing written",
                    d.disk.display()
                );
            }
            for p in &report.problems {
                println!("repaired: {p}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bootctl: {e:#}");
            ExitCode::from(1)
        }
    }
}
