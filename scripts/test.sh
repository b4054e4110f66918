#!/usr/bin/env bash
# The project's test command (README.md "Test"; .ci/run calls exactly this).
# Installs what it needs on a fresh Debian 12 machine, then runs every test layer:
# formatting and lints, unit/property/integration tests of every crate, and the QEMU
# end-to-end scenarios (which build GRUB once and cache it outside the repo).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
install_deps

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== the device binary carries no publisher code"
./scripts/check-device-features.sh
echo "== cargo test"
cargo test --workspace --no-fail-fast
echo "== fuzz smoke (scripts/fuzz.sh short)"
./scripts/fuzz.sh short
