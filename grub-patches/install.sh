#!/usr/bin/env bash
# Installs the GRUB artifacts grub-patches/build.sh makes into the place `image-tools disk` and
# `image-tools flash` look when --grub-dir is not given, so a publisher or factory station that
# ran this once just runs the tools.
#
# Usage: grub-patches/install.sh [DIR [CACHE_ROOT]]
#   DIR defaults to $AB_GRUB_INSTALL_DIR, else /usr/lib/ab-updater/grub (image-tools'
#   GRUB_INSTALL_DIR); CACHE_ROOT is passed to build.sh (its cache, by default
#   /var/cache/ab-updater/grub). Prints DIR as the last line of stdout.
# The old copy is replaced by one rename: a reader sees the whole old set or the whole new one.
# (A separate script, not a build.sh flag: build.sh is part of its own cache key.)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-${AB_GRUB_INSTALL_DIR:-/usr/lib/ab-updater/grub}}
from=$("$here/build.sh" ${2:+"$2"} | tail -n1)
[ -f "$from/x86_64-efi/BOOTX64.EFI" ] || {
  echo "grub-patches/install.sh: build.sh printed no artifact directory" >&2
  exit 1
}
mkdir -p "$(dirname "$dir")"
rm -rf "$dir.tmp" "$dir.old"
# A copy, not hard links into the cache: clearing the cache must not change installed files.
cp -r "$from" "$dir.tmp"
rm -f "$dir.tmp/.complete"
if [ -e "$dir" ]; then mv "$dir" "$dir.old"; fi
mv "$dir.tmp" "$dir"
rm -rf "$dir.old"
echo "grub-patches/install.sh: installed $from into $dir" >&2
echo "$dir"
