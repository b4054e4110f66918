//! Harness for end-to-end tests in QEMU: builds the test OS, assembles disks, boots them under
//! OVMF and SeaBIOS with TCG, and drives scenarios over the serial console.
#![deny(missing_docs)]

pub mod grub;
