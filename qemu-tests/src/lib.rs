//! Harness for end-to-end tests in QEMU: builds the test OS, assembles disks, boots them under
//! OVMF and SeaBIOS with TCG, and drives scenarios over the serial console.
//!
//! # Brief overview
//! - [`testos::TestOs`]: the Debian cloud kernel ([`kernel`]), a busybox initramfs written with
//!   [`cpio`], and /usr trees and images of any version ([`testos::UsrSpec`]); cached by their
//!   inputs outside the repository ([`cache`]).
//! - [`disk`]: assembling disk images (`image-tools disk`), writing a /usr image into a slot,
//!   reading and setting slot attributes through `bootctl`.
//! - [`machine::Machine`]: one QEMU (UEFI or BIOS, TCG) with its serial console: wait for a
//!   line with a timeout, run a command in the guest, power off, power cut; killed and cleaned
//!   up on drop.
//! - [`grub`]: the GRUB build with our gptprio module.
//! - [`firstboot`]: the factory disk and first-boot hook of the first-boot scenario.
//! - [`pxe`]: RAM-booted nodes: netboot payloads, stream and artifacts, diskless machines on
//!   restricted user networking with a forward to the test's HTTP server ([`http`]).
//!
//! ```
//! use qemu_tests::machine::{Firmware, MachineConfig};
//! let config = MachineConfig::new("fresh disk", Firmware::Bios, "disk.img").sector_size(512);
//! assert_eq!(config.name, "fresh disk (bios)");
//! ```
#![deny(missing_docs)]

pub mod cache;
pub use image_tools::cpio;
pub mod cycle;
pub mod disk;
mod error;
pub mod firstboot;
pub mod grub;
pub mod http;
pub mod kernel;
pub mod machine;
pub mod pxe;
pub mod testos;

pub use error::{Error, Result};
