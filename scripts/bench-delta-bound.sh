#!/usr/bin/env bash
# What a payload made from v2 alone could at best make a v1 box fetch (issue 12's 10 MB
# target). Not a test: it prints four sizes.
#
# On the pair of ../shared/bench/make-images.sh: packs v1.img and v2.img as format 2 (default
# content-defined chunks), lists the v2 chunks whose SHA-256 is not in v1's chunk table (what a
# v1 box lacks), writes them out (missing.bin) and v2 without them (v2-minus.img), then
# compresses v2.img, v2-minus.img and missing.bin with `zstd -19 --long=27`. The difference
# v2.img - v2-minus.img is what the missing chunks cost with the whole image before them as
# context: the most any frame made from v2 alone (no per-pair work) could get, whatever its
# prefix. The chunk table comes on top (40 bytes a chunk).
#
# Usage: scripts/bench-delta-bound.sh   (~6 min on 2 cores)
# Optional: BENCH_IMAGES (directory holding v1.img and v2.img; default /var/tmp/usr-images),
# BENCH_DIR (work directory; removed unless BENCH_KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/bench-images.sh
. scripts/bench-images.sh
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
WORK=${BENCH_DIR:-$(mktemp -d /var/tmp/bench-bound.XXXXXX)}
mkdir -p "$WORK"
cleanup() { [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT

echo "== building image-tools"
cargo build -q --release -p image-tools
TOOLS=$TARGET_DIR/release/image-tools
"$TOOLS" keygen --out "$WORK/key" >/dev/null

echo "== packing v1.img and v2.img as format 2 (level 1: only the chunk tables are used)"
for v in 1 2; do
  "$TOOLS" pack --image "$IMAGES/v$v.img" --key "$WORK/key.key" -o "$WORK/v$v.payload" \
    --level 1 --format 2 --image-id bench --image-version "$v" >/dev/null
done

echo "== splitting v2.img into the chunks v1 has and the ones it lacks"
python3 - "$TOOLS" "$WORK" "$V2" <<'PY'
import json, struct, subprocess, sys
tools, work, v2_img = sys.argv[1:]

def chunks(path):
    """(image offset, length, SHA-256) of every chunk, from the version 2 chunk table
    (docs/payload-format.md: 40 bytes a chunk after header, manifest and signature block)."""
    info = json.loads(subprocess.check_output([tools, "inspect", "--json", path]))
    with open(path, "rb") as f:
        header = f.read(64)
        manifest_len, signatures_len = struct.unpack_from("<II", header, 16)
        f.seek(64 + manifest_len + signatures_len)
        table = f.read(40 * info["chunk_count"])
    out, at = [], 0
    for i in range(info["chunk_count"]):
        image_len, _frame_len = struct.unpack_from("<II", table, 40 * i)
        out.append((at, image_len, table[40 * i + 8:40 * i + 40]))
        at += image_len
    return out

have = {sha for _, _, sha in chunks(f"{work}/v1.payload")}
v2 = chunks(f"{work}/v2.payload")
missing = 0
with open(v2_img, "rb") as img, open(f"{work}/v2-minus.img", "wb") as rest, \
        open(f"{work}/missing.bin", "wb") as lack:
    for at, n, sha in v2:
        img.seek(at)
        data = img.read(n)
        if sha in have:
            rest.write(data)
        else:
            lack.write(data)
            missing += 1
print(f"v2 chunks {len(v2)} (table {40 * len(v2) / 1e6:.2f} MB), missing on a v1 box {missing}")
PY

echo "== zstd -19 --long=27"
size() { zstd -19 --long=27 -T0 -q -c "$1" | wc -c; }
FULL=$(size "$V2")
REST=$(size "$WORK/v2-minus.img")
ALONE=$(size "$WORK/missing.bin")
python3 - <<PY
mb = 1e6
full, rest, alone = $FULL, $REST, $ALONE
print(f"{'v2.img':40} {full / mb:10.2f} MB")
print(f"{'v2.img without the missing chunks':40} {rest / mb:10.2f} MB")
print(f"{'the missing chunks, whole image as context':40} {(full - rest) / mb:10.2f} MB  (target: 10 MB with the table)")
print(f"{'the missing chunks on their own':40} {alone / mb:10.2f} MB")
PY
