//! End-to-end tests in QEMU (one binary; one module per area).
mod boot;
mod cycle;
mod delta;
mod firstboot;
mod grub_vectors;
mod pxe;
mod testos;
mod util;
