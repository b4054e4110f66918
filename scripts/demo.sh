#!/usr/bin/env bash
# The project's demo command (README.md "Demo"). On a fresh Debian 12 machine: installs what
# it needs, builds everything (GRUB with our gptprio module, cached; the static updater; the
# test OS images v1..v4 and their signed payloads, cached), then runs the narrated update cycle
# in QEMU (qemu-tests/src/bin/demo.rs): v1 on slot A with the update agent on -> v2 published
# -> the agent installs it and reboots -> health passes -> committed; then v3, whose health
# check fails -> rolled back to v2 and never taken again, with `updater status` at each step. Extra arguments go to the demo (--bios boots through SeaBIOS instead of OVMF).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
install_deps

echo "== building the demo"
cargo build --quiet -p qemu-tests --bin demo
echo "== running the demo (QEMU with TCG: a few minutes)"
cargo run --quiet -p qemu-tests --bin demo -- "$@"
