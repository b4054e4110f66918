//! Publisher and factory tools: keys, /usr images, signed payloads and bootable disk images.
//!
//! One module per subcommand family: [`keys`] (keygen), [`pack`] (pack, verify, inspect),
//! [`mkusr`] (build a /usr filesystem image), [`disk`] (assemble a bootable GPT disk image),
//! [`flash`] (write that layout onto devices from signed payloads),
//! [`publish`] (signed release streams and the payload tree they list), [`pxe`] (netboot
//! artifacts for RAM-booted nodes); [`cpio`] writes initramfs archives.
#![deny(missing_docs)]

pub mod cpio;
pub mod disk;
pub mod flash;
pub mod keys;
pub mod mkusr;
pub mod pack;
pub mod patch;
pub mod publish;
pub mod pxe;
