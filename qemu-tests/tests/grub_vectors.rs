//! The GRUB gptprio module run against every bootctl select test vector.
