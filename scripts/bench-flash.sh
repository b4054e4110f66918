#!/usr/bin/env bash
# Benchmark of `image-tools flash` (issue 10). Not a test: it prints figures.
#
# In one run, on one /usr image (an uncompressed squashfs of $BENCH_SRC, default /usr/bin and
# /usr/share/locale), the same disk content goes onto loop devices (512-byte sectors, over
# preallocated files in $BENCH_DIR) three ways:
#   flash:    image-tools flash --payload P --to DEV... (verify each chunk, write, read back
#             with O_DIRECT and verify, table last);
#   dd:       zstd -dc disk.img.zst | dd of=DEV bs=4M conv=fsync (no verification at all), one
#             pipeline per device, all at once;
#   coreos:   coreos-installer install DEV --image-file disk.img.zst --insecure (its own
#             streaming writer; skipped with a note when it is not installed), one per device;
# where disk.img is what `image-tools disk` makes from the same usr image (the layout flash
# writes), compressed at the payload's level. Each is run with one device and with
# $BENCH_DEVICES (default 3) devices; the figure is disk bytes x devices / seconds, best of
# $BENCH_RUNS (default 2), and the ratios flash/dd and flash/coreos are printed.
#
# Usage: scripts/bench-flash.sh
# Optional: BENCH_SRC, BENCH_LEVEL (default 12), BENCH_RUNS, BENCH_DEVICES, BENCH_DIR,
# BENCH_KEEP=1, IMAGE_TOOLS (a built binary; default: build the release one), COREOS_INSTALLER (path; default: coreos-installer on PATH, else
# ~/.cargo/bin/coreos-installer; install it with `cargo install coreos-installer`, which needs
# libzstd-dev, libssl-dev and pkg-config; it also needs a running udevd, e.g. Debian's `udev` package
# and `/lib/systemd/systemd-udevd --daemon` on a machine without systemd).
set -euo pipefail
cd "$(dirname "$0")/.."

LEVEL=${BENCH_LEVEL:-12}
RUNS=${BENCH_RUNS:-2}
NDEV=${BENCH_DEVICES:-3}
read -r -a SRC <<<"${BENCH_SRC:-/usr/bin /usr/share/locale}"
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
WORK=${BENCH_DIR:-$(mktemp -d /var/tmp/bench-flash.XXXXXX)}
mkdir -p "$WORK"
LOOPS=()
cleanup() {
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

COREOS=${COREOS_INSTALLER:-$(command -v coreos-installer || echo "$HOME/.cargo/bin/coreos-installer")}
[ -x "$COREOS" ] || COREOS=

if [ -n "${IMAGE_TOOLS:-}" ]; then
  TOOLS=$IMAGE_TOOLS
else
  echo "== building image-tools (release)"
  cargo build -q --release -p image-tools
  TOOLS=$TARGET_DIR/release/image-tools
fi

echo "== image: uncompressed squashfs of ${SRC[*]}"
printf 'IMAGE_ID=bench\nIMAGE_VERSION=1\n' >"$WORK/os-release"
mksquashfs "${SRC[@]}" "$WORK/usr.img" -noI -noD -noF -noX -no-xattrs -noappend -no-progress \
  -quiet -p "lib d 755 0 0" -p "lib/os-release f 444 0 0 cat $WORK/os-release" >/dev/null
IMG_BYTES=$(stat -c %s "$WORK/usr.img")
USR_MIB=$(((IMG_BYTES >> 20) + 8))

GRUB=$WORK/grub
if [ -n "${IMAGE_TOOLS_GRUB_DIR:-}" ]; then GRUB=$IMAGE_TOOLS_GRUB_DIR
elif [ -d /usr/lib/ab-updater/grub ]; then GRUB=/usr/lib/ab-updater/grub
else GRUB=$(grub-patches/build.sh | tail -n1)
fi

echo "== payload, disk image and its zstd (level $LEVEL)"
"$TOOLS" keygen --out "$WORK/key" >/dev/null
"$TOOLS" pack --image "$WORK/usr.img" --key "$WORK/key.key" -o "$WORK/payload" --level "$LEVEL" >/dev/null
"$TOOLS" disk --usr "$WORK/usr.img" -o "$WORK/disk.img" --usr-size "${USR_MIB}M" \
  --grub-dir "$GRUB" >/dev/null
DISK_BYTES=$(stat -c %s "$WORK/disk.img")
zstd -q -"$LEVEL" -T0 -f "$WORK/disk.img" -o "$WORK/disk.img.zst"
DEV_BYTES=$((DISK_BYTES + (8 << 20)))
echo "usr image $IMG_BYTES bytes; disk $DISK_BYTES bytes; payload $(stat -c %s "$WORK/payload");" \
  "disk.img.zst $(stat -c %s "$WORK/disk.img.zst")"

for i in $(seq "$NDEV"); do
  fallocate -l "$DEV_BYTES" "$WORK/dev$i.img"
  # --partscan: coreos-installer rereads the partition table (BLKRRPART), which a loop device
  # without it refuses.
  LOOPS+=("$(losetup --find --show --partscan --sector-size 512 "$WORK/dev$i.img")")
done

now() { date +%s.%N; }
# The seconds of "$@"; the backing files' page cache is dropped first so runs compare.
timed() {
  sync
  echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true
  local t0 t1
  t0=$(now)
  "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; return 1; }
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}
run_flash() {
  local args=() d
  for d in "$@"; do args+=(--to "$d"); done
  "$TOOLS" flash --payload "$WORK/payload" --pubkey "$WORK/key.pub" --usr-size "${USR_MIB}M" \
    --grub-dir "$GRUB" "${args[@]}"
}
run_dd() {
  local d pids=()
  for d in "$@"; do
    (zstd -dc "$WORK/disk.img.zst" | dd of="$d" bs=4M iflag=fullblock conv=fsync status=none) &
    pids+=($!)
  done
  local failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  return "$failed"
}
run_coreos() {
  local d pids=()
  for d in "$@"; do
    "$COREOS" install "$d" --image-file "$WORK/disk.img.zst" --insecure &
    pids+=($!)
  done
  local failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  return "$failed"
}
best() { # best (lowest) seconds of RUNS runs of "$@"
  local b="" s r
  for r in $(seq "$RUNS"); do
    s=$(timed "$@")
    if [ -z "$b" ] || awk -v s="$s" -v b="$b" 'BEGIN { exit !(s < b) }'; then b=$s; fi
    : "$r"
  done
  echo "$b"
}
mibs() { awk -v d="$DISK_BYTES" -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", d * n / 1048576 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

printf '\n%-8s %-8s %10s %12s\n' tool devices seconds "MiB/s total"
declare -A T
for n in 1 "$NDEV"; do
  devs=("${LOOPS[@]:0:$n}")
  T[flash$n]=$(best run_flash "${devs[@]}")
  T[dd$n]=$(best run_dd "${devs[@]}")
  if [ -n "$COREOS" ]; then T[coreos$n]=$(best run_coreos "${devs[@]}"); fi
  for tool in flash dd coreos; do
    [ -n "${T[$tool$n]:-}" ] || continue
    printf '%-8s %-8s %10.2f %12s\n' "$tool" "$n" "${T[$tool$n]}" "$(mibs "$n" "${T[$tool$n]}")"
  done
done
echo
for n in 1 "$NDEV"; do
  printf 'devices=%s  flash/dd throughput ratio: %s' "$n" "$(ratio "${T[dd$n]}" "${T[flash$n]}")"
  if [ -n "${T[coreos$n]:-}" ]; then
    printf '  flash/coreos-installer: %s' "$(ratio "${T[coreos$n]}" "${T[flash$n]}")"
  else
    printf '  coreos-installer: not installed (cargo install coreos-installer)'
  fi
  echo
done
echo "(flash also verifies every chunk's signature-bound hash and reads everything back; dd verifies nothing)"
