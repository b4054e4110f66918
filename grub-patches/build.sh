#!/usr/bin/env bash
# Builds GRUB 2.06 from Debian's source package with our gptprio module (grub-patches/gptprio,
# added out of tree through GRUB's GRUB_CONTRIB hook) for x86_64-efi, i386-pc and emu, and
# assembles the boot artifacts. Results are cached by the SHA-256 of their inputs, so a second
# run costs seconds:
#   images-<sha256 of gptprio/, this script, the Debian source version>   compiled images
#   <sha256 of the above + grub.cfg>                                      images + grub.cfg
# (grub.cfg is not built into any image, so editing it does not recompile GRUB.)
#
# Usage: grub-patches/build.sh [CACHE_ROOT]
#   CACHE_ROOT defaults to $AB_GRUB_CACHE, else /var/cache/ab-updater/grub.
# Output: progress on stderr; the artifact directory as the last line of stdout:
#   x86_64-efi/BOOTX64.EFI   standalone EFI image, every module the boot needs built in
#   i386-pc/boot.img         MBR boot code (patch the core.img LBA in before use)
#   i386-pc/core.img         diskboot + kernel + modules, prefix (,gpt1)/EFI/BOOT
#   emu/grub-emu             host-side GRUB with every module linked in (for tests)
#   grub.cfg                 the boot menu (ESP: EFI/BOOT/grub.cfg)
#   modules.txt, VERSION     what went into the images, and from which source
# Needs root on a cache miss (apt-get source / build-dep); a cache hit needs nothing.
# Clear the cache with: rm -rf /var/cache/ab-updater/grub
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${1:-${AB_GRUB_CACHE:-/var/cache/ab-updater/grub}}
jobs=${AB_GRUB_JOBS:-2}

# Modules built into the images. gptprio pulls in disk (for grub_disk_write) and extcmd.
# part_gpt is listed before gptprio so that gptprio's backup "gpt" partition map is registered
# after it and asked first (it declines whenever the primary GPT validates).
common_modules="part_gpt gptprio fat ext2 squash4 normal linux echo test serial terminal
  configfile regexp probe halt reboot sleep cat ls search search_fs_uuid"
efi_modules="$common_modules efi_gop efi_uga"
pc_modules="$common_modules biosdisk part_msdos"

log() { echo "grub-patches/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

has_source() {
  # No grep -q: it would stop reading early and fail the pipeline (pipefail) by SIGPIPE.
  apt-cache showsrc --only-source grub2 2>/dev/null | grep '^Version:' >/dev/null
}

# apt-get source needs a deb-src entry; add one for bookworm main when none is configured.
# Another process may be running apt-get update (lists briefly missing), so look twice.
ensure_deb_src() {
  has_source && return
  sleep 5
  has_source && return
  local list=/etc/apt/sources.list.d/ab-updater-deb-src.sources
  if [ ! -f "$list" ]; then
    log "adding a deb-src entry for bookworm main ($list)"
    as_root tee "$list" >/dev/null <<'EOF2'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF2
  fi
  local try
  for try in 1 2 3; do
    as_root apt-get update -qq -o DPkg::Lock::Timeout=120 && has_source && return
    log "apt-get update or the grub2 source lookup failed (try $try of 3)"
    sleep 10
  done
  die "no grub2 source package visible to apt (deb-src entry: $list)"
}

source_version() {
  apt-cache showsrc --only-source grub2 | awk '/^Version:/ {print $2}' | sort -V | tail -n1
}

# Hash of what the compiled images depend on.
images_hash() {
  local version=$1
  {
    echo "debian-source grub2 $version"
    (cd "$here" && find gptprio build.sh -type f | LC_ALL=C sort | xargs sha256sum)
  } | sha256sum | cut -d' ' -f1
}

build_platform() {
  local src=$1 dir=$2
  shift 2
  log "configuring $dir ($*)"
  mkdir -p "$src/build-$dir"
  (cd "$src/build-$dir" && ../configure --disable-werror --disable-nls --disable-grub-mkfont \
    --disable-grub-themes --disable-grub-mount --disable-device-mapper --disable-libzfs \
    "$@") >"$src/build-$dir.log" 2>&1 || { tail -n 30 "$src/build-$dir.log" >&2; die "configuring $dir"; }
  log "building $dir with make -j$jobs"
  make -C "$src/build-$dir" -j"$jobs" >>"$src/build-$dir.log" 2>&1 ||
    { tail -n 30 "$src/build-$dir.log" >&2; die "building $dir"; }
}

build() {
  local version=$1 out=$2 work=$3
  log "installing build dependencies of grub2"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq grub2 >/dev/null
  command -v autoreconf >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq autoconf automake autopoint >/dev/null

  log "fetching Debian source grub2=$version"
  (cd "$work" && apt-get source -qq "grub2=$version") >"$work/source.log" 2>&1 ||
    { tail -n 20 "$work/source.log" >&2; die "fetching grub2=$version with apt-get source"; }
  local src
  src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'grub2-*' | head -n1)
  [ -n "$src" ] || die "apt-get source produced no grub2-* directory"

  # Our module goes in through the contrib hook: autogen.sh links $GRUB_CONTRIB to
  # contrib/ and adds every contrib/*/Makefile.core.def to the build.
  mkdir -p "$work/contrib"
  cp -r "$here/gptprio" "$work/contrib/"
  log "running autogen.sh with GRUB_CONTRIB"
  (cd "$src" && GRUB_CONTRIB="$work/contrib" PYTHON=python3 ./autogen.sh) >"$work/autogen.log" 2>&1 ||
    { tail -n 30 "$work/autogen.log" >&2; die "running autogen.sh"; }

  build_platform "$src" efi --with-platform=efi --target=x86_64
  build_platform "$src" pc --with-platform=pc --target=i386
  build_platform "$src" emu --with-platform=emu --disable-grub-emu-sdl --disable-grub-emu-pci \
    --disable-grub-emu-usb

  mkdir -p "$out/x86_64-efi" "$out/i386-pc" "$out/emu"
  local mkimage_efi="$src/build-efi/grub-mkimage" mkimage_pc="$src/build-pc/grub-mkimage"
  [ -f "$src/build-efi/grub-core/gptprio.mod" ] || die "gptprio.mod missing from the efi build"
  # shellcheck disable=SC2086
  "$mkimage_efi" -d "$src/build-efi/grub-core" -O x86_64-efi -p /EFI/BOOT \
    -o "$out/x86_64-efi/BOOTX64.EFI" $efi_modules || die "making BOOTX64.EFI"
  # shellcheck disable=SC2086
  "$mkimage_pc" -d "$src/build-pc/grub-core" -O i386-pc -p '(,gpt1)/EFI/BOOT' \
    -o "$out/i386-pc/core.img" $pc_modules || die "making core.img"
  cp "$src/build-pc/grub-core/boot.img" "$out/i386-pc/boot.img"
  cp "$src/build-emu/grub-core/grub-emu" "$out/emu/grub-emu"
  {
    echo "efi: $efi_modules"
    echo "pc: $pc_modules"
  } | tr -s ' \n' ' ' >"$out/modules.txt"
  echo "grub2 $version (Debian source) + gptprio" >"$out/VERSION"
}

main() {
  mkdir -p "$cache_root"
  exec 9>"$cache_root/.lock"
  flock 9

  ensure_deb_src
  local version key out images
  version=$(source_version)
  key=$(images_hash "$version")
  images="$cache_root/images-$key"
  out="$cache_root/$( (echo "$key"; sha256sum <"$here/grub.cfg") | sha256sum | cut -d' ' -f1)"
  if [ -f "$out/.complete" ]; then
    log "cache hit ($out)"
    echo "$out"
    return
  fi

  if [ -f "$images/.complete" ]; then
    log "compiled images cached ($images)"
  else
    log "cache miss: building GRUB $version with gptprio into $images"
    local start work tmp
    start=$(date +%s)
    work="$cache_root/work-$key"
    tmp="$cache_root/tmp-$key"
    rm -rf "$work" "$tmp"
    mkdir -p "$work" "$tmp"
    build "$version" "$tmp" "$work"
    touch "$tmp/.complete"
    rm -rf "$images"
    mv "$tmp" "$images"
    rm -rf "$work"
    log "built in $(($(date +%s) - start)) s"
  fi

  local staging="$out.tmp"
  rm -rf "$staging"
  cp -al "$images" "$staging"
  cp "$here/grub.cfg" "$staging/grub.cfg"
  rm -rf "$out"
  mv "$staging" "$out"
  echo "$out"
}

main "$@"
