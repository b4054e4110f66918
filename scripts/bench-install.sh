#!/usr/bin/env bash
# Benchmark of `updater install` (issue 3, item 6). Not a test: it prints figures.
#
# In one run, on one realistic /usr image (an uncompressed squashfs of $BENCH_SRC, default
# /usr/bin and /usr/share/locale, at least 512 MiB):
#   baseline: `zstd -dc image.zst | sha256sum`, image.zst = the image as ONE zstd frame at the
#             same level as the payload;
#   install:  the static musl `updater install payload` into a disk-image file (decompress on
#             all cores, verify, write, fsync, read back from the device and verify, flip);
# and prints: install throughput / baseline throughput (target >= 1.0), peak RSS of the
# install (target <= 32 MiB), payload size / one-frame zstd size (target <= 1.03), and the
# static binary's size (target <= 4 MiB) and `ldd` verdict. Each timing is the best of
# $BENCH_RUNS (default 5) runs, alternating baseline and install.
#
# Usage: scripts/bench-install.sh
# Optional: BENCH_SRC (directories), BENCH_LEVEL, BENCH_RUNS, BENCH_DIR (work directory),
# BENCH_KEEP=1 (keep the work directory).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
install_deps

LEVEL=${BENCH_LEVEL:-12}
RUNS=${BENCH_RUNS:-5}
read -r -a SRC <<<"${BENCH_SRC:-/usr/bin /usr/share/locale}"
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
WORK=${BENCH_DIR:-$(mktemp -d /var/tmp/bench-install.XXXXXX)}
mkdir -p "$WORK"
[ -n "${BENCH_KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT

echo "== building the static updater (musl, non-PIE) and image-tools"
cargo build -q --release -p updater \
  --target x86_64-unknown-linux-musl
cargo build -q --release -p image-tools
UPDATER=$TARGET_DIR/x86_64-unknown-linux-musl/release/updater
TOOLS=$TARGET_DIR/release/image-tools

echo "== image: uncompressed squashfs of ${SRC[*]}"
printf 'IMAGE_ID=bench\nIMAGE_VERSION=2\n' >"$WORK/os-release"
mksquashfs "${SRC[@]}" "$WORK/usr.img" -noI -noD -noF -noX -no-xattrs -noappend -no-progress \
  -quiet -p "lib d 755 0 0" -p "lib/os-release f 444 0 0 cat $WORK/os-release" >/dev/null
IMG_BYTES=$(stat -c %s "$WORK/usr.img")
if [ "$IMG_BYTES" -lt $((512 << 20)) ]; then
  echo "image is only $IMG_BYTES bytes; set BENCH_SRC to directories totalling >= 512 MiB" >&2
  exit 1
fi

echo "== payload (level $LEVEL) and one-frame zstd (level $LEVEL)"
"$TOOLS" keygen --out "$WORK/key" >/dev/null
"$TOOLS" pack --image "$WORK/usr.img" --key "$WORK/key.key" -o "$WORK/payload" --level "$LEVEL" >/dev/null
zstd -q -"$LEVEL" -T0 --no-check -c "$WORK/usr.img" >"$WORK/usr.img.zst"
FRAMES=$(zstd -lv "$WORK/usr.img.zst" 2>/dev/null | awk '/^# Zstandard Frames:/ {print $4}')
[ "${FRAMES:-1}" = 1 ] || { echo "usr.img.zst has $FRAMES frames, expected 1" >&2; exit 1; }

echo "== device: disk image with USR-A (booted, version 1) and USR-B"
SLOT_MIB=$(((IMG_BYTES >> 20) + 16))
# Allocated, not sparse: a real partition has its blocks already.
fallocate -l $(((2 * SLOT_MIB + 2) << 20)) "$WORK/disk.img"
sgdisk -o -n "3:2048:+${SLOT_MIB}M" -t 3:5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6 -c 3:USR-A \
  -n "4:0:+${SLOT_MIB}M" -t 4:5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6 -c 4:USR-B "$WORK/disk.img" >/dev/null
cgpt add -i 3 -P 1 -T 0 -S 1 "$WORK/disk.img"
mkdir -p "$WORK/root/usr/lib/updater/keys.d"
cp "$WORK/key.pub" "$WORK/root/usr/lib/updater/keys.d/"
printf 'IMAGE_ID=bench\nIMAGE_VERSION=1\n' >"$WORK/root/usr/lib/os-release"

# Runs a command; prints "SECONDS MAX_RSS_KIB" of it (and its children).
measure() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(f"{time.monotonic() - t:.3f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
PY
}

best_base=""; best_inst=""; rss=0
for run in $(seq "$RUNS"); do
  sync
  read -r base _ < <(measure sh -c "zstd -dc '$WORK/usr.img.zst' | sha256sum")
  read -r inst kib < <(measure "$UPDATER" --disk "$WORK/disk.img" --root "$WORK/root" \
    --booted A install "$WORK/payload")
  echo "run $run: baseline ${base}s, install ${inst}s, install peak RSS ${kib} KiB"
  best_base=$(python3 -c "print(min(float(x) for x in '$best_base $base'.split()))")
  best_inst=$(python3 -c "print(min(float(x) for x in '$best_inst $inst'.split()))")
  [ "$kib" -gt "$rss" ] && rss=$kib
done

PAYLOAD_BYTES=$(stat -c %s "$WORK/payload")
ZST_BYTES=$(stat -c %s "$WORK/usr.img.zst")
BIN_BYTES=$(stat -c %s "$UPDATER")
LDD=$(ldd "$UPDATER" 2>&1 | tr -d '\t' || true)
python3 - <<PY
img, base, inst = $IMG_BYTES, $best_base, $best_inst
mib = 1 << 20
print("== results (image %d MiB, level $LEVEL, %d cores, best of $RUNS)" % (img // mib, $(nproc)))
print("baseline zstd -dc | sha256sum : %.2f s  %.0f MiB/s" % (base, img / mib / base))
print("updater install               : %.2f s  %.0f MiB/s" % (inst, img / mib / inst))
print("throughput ratio              : %.2f   (target >= 1.0)" % (base / inst))
print("install peak RSS              : %.1f MiB (target <= 32)" % ($rss / 1024))
print("payload / one-frame zstd      : %.4f (target <= 1.03; %d / %d bytes)" % ($PAYLOAD_BYTES / $ZST_BYTES, $PAYLOAD_BYTES, $ZST_BYTES))
print("static binary size            : %.2f MiB (target <= 4; %d bytes)" % ($BIN_BYTES / mib, $BIN_BYTES))
print("ldd                           : $LDD")
PY
