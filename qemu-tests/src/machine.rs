//! One QEMU virtual machine (TCG) with its serial console, owned for the length of a test.
//!
//! [`Machine::start`] boots a [`MachineConfig`]: UEFI through OVMF (with a private copy of the
//! variable store) or BIOS through SeaBIOS, the first disk as the boot disk and any others
//! attached after it, all virtio-blk (OVMF and SeaBIOS both boot from it, GRUB reads it through
//! the firmware, Linux sees `/dev/vda`, `/dev/vdb`, …), with 512- or 4096-byte logical
//! sectors. The serial console is QEMU's stdio: a thread copies it to `serial.log` and to a
//! buffer that [`Machine::wait_for`] searches with a timeout, from a cursor that only moves
//! forward, so each wait sees only what came after the previous one.
//!
//! Power: [`Machine::poweroff`] asks the test OS to power off and checks QEMU exited cleanly;
//! [`Machine::kill`] is a power cut (SIGKILL; writes QEMU completed are in the host page cache,
//! as on a disk that acknowledged them). A guest reboot resets the machine in the same process
//! unless [`MachineConfig::exit_on_reboot`] is set. Dropping a `Machine` kills QEMU if it still
//! runs and removes its directory.
//!
//! ```no_run
//! use qemu_tests::machine::{Firmware, Machine, MachineConfig};
//! use std::time::Duration;
//! let mut vm = Machine::start(MachineConfig::new("demo", Firmware::Uefi, "disk.img"))?;
//! let booted = vm.wait_booted(Duration::from_secs(300))?;
//! println!("booted {} from {}", booted.version, booted.usr_partuuid);
//! let out = vm.run("cat /usr/lib/os-release", Duration::from_secs(30))?;
//! vm.poweroff(Duration::from_secs(60))?;
//! # Ok::<(), qemu_tests::Error>(())
//! ```
use crate::error::{Error, IoContext, Result};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// OVMF firmware code (read-only) and the variable store template, per Debian's `ovmf`.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The variable store template copied for each UEFI machine.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Printed by the test OS when it booted (see [`crate::testos`]).
pub const BOOTED_MARKER: &str = "TESTOS: booted ";
/// Printed by the test OS when it serves commands.
pub const READY_MARKER: &str = "TESTOS: ready\n";

/// The firmware a machine boots with.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// OVMF (x86_64 UEFI).
    Uefi,
    /// SeaBIOS (QEMU's default BIOS).
    Bios,
}

impl Firmware {
    /// Both firmwares, for scenarios that run on each.
    pub const ALL: [Firmware; 2] = [Firmware::Uefi, Firmware::Bios];

    /// `uefi` or `bios`.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Uefi => "uefi",
            Firmware::Bios => "bios",
        }
    }
}

/// A disk attached to a machine.
#[derive(Clone, Debug)]
pub struct Disk {
    /// The raw image file.
    pub path: PathBuf,
    /// Logical (and physical) sector size: 512 or 4096.
    pub sector_size: u32,
    /// Attached read-only.
    pub read_only: bool,
}

/// Booting Linux directly (`-kernel/-initrd/-append`) instead of through the disk's GRUB.
#[derive(Clone, Debug)]
pub struct DirectKernel {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub append: String,
}

/// How to start a machine.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// A name for messages (e.g. the scenario and firmware).
    pub name: String,
    /// The firmware.
    pub firmware: Firmware,
    /// Disks; the first is the boot disk.
    pub disks: Vec<Disk>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Boot this kernel directly instead of the boot disk's GRUB.
    pub direct_kernel: Option<DirectKernel>,
    /// Exit QEMU when the guest reboots instead of resetting it.
    pub exit_on_reboot: bool,
    /// More QEMU arguments, after all others (network devices, say).
    pub extra_args: Vec<String>,
}

impl MachineConfig {
    /// A machine booting `boot_disk` (512-byte sectors) with `firmware` and 512 MiB.
    pub fn new(name: &str, firmware: Firmware, boot_disk: impl Into<PathBuf>) -> MachineConfig {
        MachineConfig {
            name: format!("{name} ({})", firmware.name()),
            firmware,
            disks: vec![Disk {
                path: boot_disk.into(),
                sector_size: 512,
                read_only: false,
            }],
            memory_mib: 512,
            direct_kernel: None,
            exit_on_reboot: false,
            extra_args: Vec::new(),
        }
    }

    /// Sets the boot disk's logical sector size.
    pub fn sector_size(mut self, sector_size: u32) -> MachineConfig {
        self.disks[0].sector_size = sector_size;
        self
    }

    /// Attaches another disk (512-byte sectors).
    pub fn extra_disk(mut self, path: impl Into<PathBuf>, read_only: bool) -> MachineConfig {
        self.disks.push(Disk {
            path: path.into(),
            sector_size: 512,
            read_only,
        });
        self
    }

    /// Boots `kernel` and `initrd` directly with `append`.
    pub fn direct_kernel(mut self, kernel: &Path, initrd: &Path, append: &str) -> MachineConfig {
        self.direct_kernel = Some(DirectKernel {
            kernel: kernel.to_owned(),
            initrd: initrd.to_owned(),
            append: append.to_string(),
        });
        self
    }

    /// QEMU's arguments, with the per-machine variable store at `vars`.
    fn qemu_args(&self, vars: &Path) -> Vec<String> {
        let mut a: Vec<String> = [
            "-nodefaults",
            "-no-user-config",
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-smp",
            "1",
            "-display",
            "none",
            "-chardev",
            "stdio,id=console,signal=off",
            "-serial",
            "chardev:console",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push("-m".into());
        a.push(self.memory_mib.to_string());
        if self.exit_on_reboot {
            a.push("-no-reboot".into());
        }
        if self.firmware == Firmware::Uefi {
            a.push("-drive".into());
            a.push(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ));
            a.push("-drive".into());
            a.push(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
        }
        for (i, d) in self.disks.iter().enumerate() {
            a.push("-drive".into());
            a.push(format!(
                "file={},format=raw,if=none,id=disk{i},cache=writeback{}",
                d.path.display(),
                if d.read_only { ",readonly=on" } else { "" }
            ));
            a.push("-device".into());
            a.push(format!(
                "virtio-blk-pci,drive=disk{i},logical_block_size={0},physical_block_size={0}{1}",
                d.sector_size,
                if i == 0 && self.direct_kernel.is_none() {
                    ",bootindex=0"
                } else {
                    ""
                }
            ));
        }
        if let Some(k) = &self.direct_kernel {
            a.extend([
                "-kernel".into(),
                k.kernel.display().to_string(),
                "-initrd".into(),
                k.initrd.display().to_string(),
                "-append".into(),
                k.append.clone(),
            ]);
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// What the test OS reported when it booted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Booted {
    /// PARTUUID of the USR partition it runs from (lower case).
    pub usr_partuuid: String,
    /// `IMAGE_VERSION` of that /usr.
    pub version: String,
    /// Booted through GRUB's fallback entry.
    pub fallback: bool,
}

/// What a command run in the guest printed, and its exit status.
#[derive(Clone, Debug)]
pub struct GuestOutput {
    /// Exit status.
    pub rc: i32,
    /// stdout and stderr, interleaved.
    pub output: String,
}

/// The console as received so far, shared with the reader thread.
#[derive(Default)]
struct Console {
    /// Everything received, carriage returns removed.
    text: Vec<u8>,
    /// QEMU closed its stdout (it is exiting).
    closed: bool,
}

/// A running (or finished) QEMU and its console.
pub struct Machine {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<(Mutex<Console>, Condvar)>,
    reader: Option<JoinHandle<()>>,
    cursor: usize,
    seq: u64,
    exit: Option<ExitStatus>,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Machine {
    /// Starts QEMU for `config`; the machine runs until powered off, killed or dropped.
    pub fn start(config: MachineConfig) -> Result<Machine> {
        let dir = tempfile::Builder::new()
            .prefix("qemu-machine-")
            .tempdir()
            .ctx("creating", std::env::temp_dir())?;
        let vars = dir.path().join("OVMF_VARS.fd");
        if config.firmware == Firmware::Uefi {
            fs::copy(OVMF_VARS, &vars).ctx("copying", OVMF_VARS)?;
        }
        for d in &config.disks {
            if !d.path.is_file() {
                return Err(Error::Invalid(format!(
                    "disk image {} does not exist",
                    d.path.display()
                )));
            }
        }
        let log = dir.path().join("serial.log");
        let stderr_path = dir.path().join("qemu.stderr");
        let stderr = fs::File::create(&stderr_path).ctx("creating", &stderr_path)?;
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(config.qemu_args(&vars))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd.spawn().map_err(|e| Error::Command {
            command: "qemu-system-x86_64".into(),
            detail: format!("starting it: {e}"),
        })?;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let shared = Arc::clone(&console);
        let mut log_file = fs::File::create(&log).ctx("creating", &log)?;
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let _ = log_file.write_all(&buf[..n]);
                let (lock, cvar) = &*shared;
                let mut c = lock.lock().unwrap_or_else(|p| p.into_inner());
                c.text.extend(buf[..n].iter().filter(|&&b| b != b'\r'));
                cvar.notify_all();
            }
            let (lock, cvar) = &*shared;
            lock.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
            cvar.notify_all();
        });
        Ok(Machine {
            name: config.name,
            child,
            stdin,
            console,
            reader: Some(reader),
            cursor: 0,
            seq: 0,
            exit: None,
            log,
            dir,
        })
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The serial console log file (removed with the machine).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The machine's private directory (removed with the machine).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the console printed so far.
    pub fn console_text(&self) -> String {
        let (lock, _) = &*self.console;
        let c = lock.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&c.text).into_owned()
    }

    /// The last `n` lines of the console.
    pub fn tail(&self, n: usize) -> String {
        let text = self.console_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until a line containing `pattern` appears after the cursor; returns that line and
    /// moves the cursor past it.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        self.wait_for_any(&[pattern], timeout).map(|(_, line)| line)
    }

    /// Waits for the first line, after the cursor, containing any of `patterns`; returns the
    /// index of the pattern and the line, and moves the cursor past that line.
    pub fn wait_for_any(
        &mut self,
        patterns: &[&str],
        timeout: Duration,
    ) -> Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let what = patterns
            .iter()
            .map(|p| format!("{:?}", p.trim_end()))
            .collect::<Vec<_>>()
            .join(" or ");
        let console = Arc::clone(&self.console);
        let (lock, cvar) = &*console;
        let mut c = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let hay = &c.text[self.cursor..];
            let found = patterns
                .iter()
                .enumerate()
                .filter_map(|(i, p)| find(hay, p.as_bytes()).map(|at| (at, i, p.len())))
                .min();
            if let Some((at, i, len)) = found {
                let start = hay[..at]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |n| n + 1);
                let after = at + len;
                // Patterns ending in a newline are complete; others wait for the line to end.
                let end = if hay[..after].ends_with(b"\n") {
                    Some(after)
                } else {
                    hay[after..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map(|n| after + n + 1)
                };
                if let Some(end) = end.or(if c.closed { Some(hay.len()) } else { None }) {
                    let line = String::from_utf8_lossy(&hay[start..end])
                        .trim_end()
                        .to_string();
                    self.cursor += end;
                    return Ok((i, line));
                }
            }
            if c.closed {
                drop(c);
                let status = self.reap(Duration::from_secs(10));
                return Err(Error::Exited {
                    what,
                    status,
                    machine: self.name.clone(),
                    log: self.log.clone(),
                    tail: self.tail(30),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                drop(c);
                return Err(Error::Timeout {
                    what,
                    timeout,
                    machine: self.name.clone(),
                    log: self.log.clone(),
                    tail: self.tail(30),
                });
            }
            c = cvar
                .wait_timeout(c, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits for the test OS's boot marker and parses it.
    pub fn wait_booted(&mut self, timeout: Duration) -> Result<Booted> {
        let line = self.wait_for(BOOTED_MARKER, timeout)?;
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
                .ok_or_else(|| Error::Invalid(format!("boot marker without {key}: {line:?}")))
        };
        Ok(Booted {
            usr_partuuid: field("usr=")?.to_ascii_lowercase(),
            version: field("version=")?,
            fallback: field("fallback=")? == "1",
        })
    }

    /// Writes one line to the serial console.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| Error::Invalid(format!("{} has no console input", self.name)))?;
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        stdin
            .write_all(&bytes)
            .and_then(|()| stdin.flush())
            .ctx("writing to the serial console of", &self.log)
    }

    /// Runs a shell command in the booted test OS (after [`READY_MARKER`]) and returns its
    /// output and exit status.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<GuestOutput> {
        if command.contains('\n') {
            return Err(Error::Invalid(format!(
                "guest command spans lines: {command:?}"
            )));
        }
        self.seq += 1;
        let seq = self.seq;
        self.send_line(&format!("{seq} {command}"))?;
        self.wait_for(&format!("TESTOS: begin {seq}\n"), timeout)?;
        let begin = self.cursor;
        let end_line = self.wait_for(&format!("TESTOS: end {seq} rc="), timeout)?;
        let rc = end_line
            .rsplit("rc=")
            .next()
            .and_then(|v| v.trim().parse::<i32>().ok())
            .ok_or_else(|| Error::Invalid(format!("bad end marker {end_line:?}")))?;
        let text = self.console_text();
        let region = text.as_bytes().get(begin..self.cursor).unwrap_or_default();
        let region = String::from_utf8_lossy(region);
        let output = match region.rfind("TESTOS: end ") {
            Some(at) => region[..at].to_string(),
            None => region.into_owned(),
        };
        Ok(GuestOutput { rc, output })
    }

    /// Runs a command that must succeed; returns its output.
    pub fn run_ok(&mut self, command: &str, timeout: Duration) -> Result<String> {
        let out = self.run(command, timeout)?;
        if out.rc != 0 {
            return Err(Error::GuestCommand {
                command: command.to_string(),
                machine: self.name.clone(),
                rc: out.rc,
                output: out.output,
            });
        }
        Ok(out.output)
    }

    /// Asks the test OS to power off (ROOT synced and remounted read-only first) and waits
    /// until QEMU has exited cleanly.
    pub fn poweroff(&mut self, timeout: Duration) -> Result<()> {
        self.send_line("0 sync; mount -o remount,ro /; poweroff -f")?;
        let status = self.wait_exit(timeout)?;
        if !status.success() {
            return Err(Error::Exited {
                what: "a clean power-off".into(),
                status: status.to_string(),
                machine: self.name.clone(),
                log: self.log.clone(),
                tail: self.tail(30),
            });
        }
        Ok(())
    }

    /// Asks the test OS to reboot (ROOT synced and remounted read-only first). The machine
    /// resets in the same QEMU, so the next [`Machine::wait_booted`] sees the next boot; with
    /// [`MachineConfig::exit_on_reboot`] QEMU exits instead.
    pub fn reboot(&mut self) -> Result<()> {
        self.send_line("0 sync; mount -o remount,ro /; reboot -f")
    }

    /// Waits for QEMU to exit by itself (guest power-off, or reboot with `exit_on_reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit {
                return Ok(status);
            }
            if let Some(status) = self
                .child
                .try_wait()
                .ctx("waiting for QEMU of", &self.log)?
            {
                self.exit = Some(status);
                self.join_reader();
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "QEMU to exit".into(),
                    timeout,
                    machine: self.name.clone(),
                    log: self.log.clone(),
                    tail: self.tail(30),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Cuts the power: kills QEMU at once and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let status = self.child.wait().ctx("waiting for QEMU of", &self.log)?;
            self.exit = Some(status);
        }
        self.join_reader();
        Ok(())
    }

    /// Waits up to `grace` for QEMU to exit, returning its status as text.
    fn reap(&mut self, grace: Duration) -> String {
        match self.wait_exit(grace) {
            Ok(status) => {
                let stderr =
                    fs::read_to_string(self.dir.path().join("qemu.stderr")).unwrap_or_default();
                match stderr.lines().rfind(|l| !l.trim().is_empty()) {
                    Some(last) => format!("{status}; qemu: {}", last.trim()),
                    None => status.to_string(),
                }
            }
            Err(_) => "still running".into(),
        }
    }

    fn join_reader(&mut self) {
        self.stdin = None;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}
