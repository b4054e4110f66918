//! Locating (and building, through `grub-patches/build.sh`) GRUB with the gptprio module.
