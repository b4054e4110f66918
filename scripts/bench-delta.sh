#!/usr/bin/env bash
# Benchmark of delta updates (issue 12). Not a test: it prints the target table.
#
# On the realistic image pair of ../shared/bench/make-images.sh (v1.img, v2.img: /usr of 512
# Debian 12 packages, and v1 plus a 15-library security update), in one run:
#   payload:  v2.img packed as format 2 (content-defined chunks, frames with a prefix) and as
#             format 1 (today's fixed 4 MiB chunks), and v2.img as ONE zstd frame, all at
#             $BENCH_LEVEL;
#   delta:    `updater --json install http://127.0.0.1/v2.payload` (static musl build) on a disk
#             image whose booted slot A holds v1.img, served by nginx on 127.0.0.1: bytes
#             fetched (the updater's own count, and nginx's $bytes_sent), bytes reused, wall
#             time of the whole install (index the booted slot, fetch, verify, write, fsync, read
#             back the slot, flip) and its peak RSS;
#   patch:    the delta install again with `image-tools patch`'s patch from v1.img next to
#             the payload (bytes fetched: prelude, patch and the frames it does not cover);
#   full:     the same install with an empty booted slot (nothing to reuse), of the format 2
#             payload and of the format 1 payload: throughput and peak RSS;
#   peers:    when installed, casync (default chunks, and 16 KiB chunks: the bytes of the chunk
#             files of v2's store missing from v1's store) and zchunk (`zck_delta_size`).
# Each install is run $BENCH_RUNS times (default 2) on a freshly written disk; the best time
# and the largest RSS are printed. The two full installs run in turns, and the median of each
# is printed too, with their ratio.
#
# Usage: scripts/bench-delta.sh
# Optional: BENCH_IMAGES (directory holding v1.img and v2.img; default /var/tmp/usr-images,
# built by ../shared/bench/make-images.sh, ~6 min the first time), BENCH_LEVEL (default 3),
# BENCH_PREFIX (prefix_len, default 1048576), BENCH_RUNS, BENCH_DIR (work directory),
# BENCH_KEEP=1, BENCH_PEERS=0 (skip casync and zchunk).
set -euo pipefail
cd "$(dirname "$0")/.."

LEVEL=${BENCH_LEVEL:-3}
PREFIX=${BENCH_PREFIX:-1048576}
RUNS=${BENCH_RUNS:-2}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
WORK=${BENCH_DIR:-$(mktemp -d /var/tmp/bench-delta.XXXXXX)}
mkdir -p "$WORK/www"
NGINX_PID=""
cleanup() {
  [ -z "$NGINX_PID" ] || kill "$NGINX_PID" 2>/dev/null || true
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=scripts/bench-images.sh
. scripts/bench-images.sh

echo "== building the static updater (musl) and image-tools"
cargo build -q --release -p updater --target x86_64-unknown-linux-musl
cargo build -q --release -p image-tools
UPDATER=$TARGET_DIR/x86_64-unknown-linux-musl/release/updater
TOOLS=$TARGET_DIR/release/image-tools

echo "== payloads of v2.img at level $LEVEL (format 2 with prefix $PREFIX, format 1) and one zstd frame"
"$TOOLS" keygen --out "$WORK/key" >/dev/null
pack() { # FORMAT OUT [extra args]
  local fmt=$1 out=$2
  shift 2
  local t0 t1
  t0=$(date +%s.%N)
  "$TOOLS" pack --image "$V2" --key "$WORK/key.key" -o "$out" --level "$LEVEL" --format "$fmt" \
    --image-id bench --image-version 2 "$@" >/dev/null
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.1f}')"
}
PACK2_S=$(pack 2 "$WORK/www/v2.payload" --prefix-len "$PREFIX")
PACK1_S=$(pack 1 "$WORK/www/v2-format1.payload")
ONE=$WORK/v2.img.zst
zstd -q -"$LEVEL" -T0 --no-check -c "$V2" >"$ONE"
FRAMES=$(zstd -lv "$ONE" 2>/dev/null | awk '/^# Zstandard Frames:/ {print $4}')
[ "${FRAMES:-1}" = 1 ] || { echo "$ONE has $FRAMES frames, expected 1" >&2; exit 1; }

# --- publish-time patch (issue 12 part 3, optional): the same payload under another name,
# with the patch from v1 next to it, so the plain delta row above stays patch-free.
echo "== patch from v1.img to the format 2 payload (image-tools patch, level 19)"
ln "$WORK/www/v2.payload" "$WORK/www/v2-patched.payload"
t0=$(date +%s.%N)
"$TOOLS" patch --from "$V1" --from-version 1 --payload "$WORK/www/v2-patched.payload" \
  --image "$V2" --key "$WORK/key.key" --json >"$WORK/patch.json"
PATCH_S=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
PATCH_BYTES=$(stat -c %s "$WORK/www/v2-patched.payload.from-1.patch")
# --- end of the patch block

echo "== nginx on 127.0.0.1"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 64; }
http {
  log_format bytes '\$bytes_sent "\$http_range" \$status';
  access_log $WORK/nginx/access.log bytes;
  client_body_temp_path $WORK/nginx/body; proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi; uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$PORT; root $WORK/www; etag on; }
}
EOF
nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT))" 2>/dev/null && break
  sleep 0.1
done

SLOT_BYTES=$(python3 -c "import os; print(max(os.path.getsize('$V1'), os.path.getsize('$V2')))")
SLOT_MIB=$(((SLOT_BYTES >> 20) + 16))
# A fresh device: GPT with USR-A (booted, committed; holding IMAGE or zeros) and USR-B.
fresh_disk() { # IMAGE|-
  rm -rf "$WORK/disk.img" "$WORK/root"
  fallocate -l $(((2 * SLOT_MIB + 2) << 20)) "$WORK/disk.img"
  sgdisk -o -n "3:2048:+${SLOT_MIB}M" -t 3:5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6 -c 3:USR-A \
    -n "4:0:+${SLOT_MIB}M" -t 4:5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6 -c 4:USR-B \
    "$WORK/disk.img" >/dev/null
  cgpt add -i 3 -P 1 -T 0 -S 1 "$WORK/disk.img"
  if [ "$1" != - ]; then
    # USR-A starts at sector 2048: 1 MiB.
    dd if="$1" of="$WORK/disk.img" bs=1M seek=1 conv=notrunc status=none
  fi
  mkdir -p "$WORK/root/usr/lib/updater/keys.d" "$WORK/root/etc"
  cp "$WORK/key.pub" "$WORK/root/usr/lib/updater/keys.d/"
  printf 'IMAGE_ID=bench\nIMAGE_VERSION=1\n' >"$WORK/root/usr/lib/os-release"
  sync
}

# Runs an install; prints "SECONDS MAX_RSS_KIB BYTES_FETCHED BYTES_REUSED NGINX_BYTES".
install_once() { # URL
  : >"$WORK/nginx/access.log"
  python3 - "$UPDATER" "$WORK" "$1" <<'PY'
import json, resource, subprocess, sys, time
updater, work, url = sys.argv[1:]
t = time.monotonic()
p = subprocess.run([updater, "--disk", f"{work}/disk.img", "--root", f"{work}/root",
                    "--booted", "A", "--json", "install", url],
                   check=True, stdout=subprocess.PIPE, text=True)
secs = time.monotonic() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
report = {}
for line in p.stdout.splitlines():
    try:
        obj = json.loads(line)
    except ValueError:
        continue
    if isinstance(obj, dict) and "bytes_fetched" in obj:
        report = obj
sent = 0
for line in open(f"{work}/nginx/access.log"):
    sent += int(line.split()[0])
# A patch's bytes are fetched too (0 without one).
fetched = report.get('bytes_fetched', 0) + report.get('patch_bytes_fetched', 0)
print(f"{secs:.3f} {rss} {fetched} {report.get('bytes_reused', 0)} {sent}")
PY
}

# Keeps the best of the runs of NAME: BEST_<NAME>="secs rss fetched reused nginx", with the
# largest RSS of all its runs and the rest from its fastest run; SECS_<NAME> lists every time.
record() { # NAME RUN LINE
  local name=$1 run=$2 line=$3 s k f r n best bs bk secs=SECS_$1
  echo "  $name run $run: $line (s, KiB, fetched, reused, nginx bytes)"
  read -r s k f r n <<<"$line"
  best=BEST_$name
  printf -v "$secs" '%s' "${!secs:-} $s"
  if [ -z "${!best:-}" ]; then
    printf -v "$best" '%s' "$line"
    return
  fi
  read -r bs bk _ <<<"${!best}"
  [ "$bk" -gt "$k" ] && k=$bk
  if python3 -c "import sys; sys.exit(not $s < $bs)"; then
    printf -v "$best" '%s' "$s $k $f $r $n"
  else
    read -r _ _ f r n <<<"${!best}"
    printf -v "$best" '%s' "$bs $k $f $r $n"
  fi
}

best() { # NAME IMAGE|- URL -> sets BEST_<NAME>
  local name=$1 img=$2 url=$3
  for run in $(seq "$RUNS"); do
    fresh_disk "$img"
    record "$name" "$run" "$(install_once "$url")"
  done
}

# Two installs run in turns (A B, then B A, ...): the machine's speed drifts by 10-30 % from
# minute to minute, and a comparison of runs made minutes apart measures that drift.
alternate() { # NAME_A URL_A NAME_B URL_B (empty booted slot)
  local run
  for run in $(seq "$RUNS"); do
    fresh_disk -
    record "$1" "$run" "$(install_once "$2")"
    fresh_disk -
    record "$3" "$run" "$(install_once "$4")"
    set -- "$3" "$4" "$1" "$2"
  done
}

echo "== installs (best of $RUNS, each on a freshly written disk)"
best delta "$V1" "http://127.0.0.1:$PORT/v2.payload"
alternate full2 "http://127.0.0.1:$PORT/v2.payload" full1 "http://127.0.0.1:$PORT/v2-format1.payload"
best patch "$V1" "http://127.0.0.1:$PORT/v2-patched.payload" # the patch block

CASYNC=""; CASYNC16=""; ZCK=""
if [ "${BENCH_PEERS:-1}" != 0 ] && command -v casync >/dev/null; then
  echo "== casync (default chunks and 16 KiB chunks)"
  casync_fetch() { # EXTRA ARGS -> bytes of v2's chunk files missing from v1's store
    rm -rf "$WORK/cs1" "$WORK/cs2"
    casync make "$@" --store="$WORK/cs1" "$WORK/v1.caibx" "$V1" >/dev/null
    casync make "$@" --store="$WORK/cs2" "$WORK/v2.caibx" "$V2" >/dev/null
    python3 - "$WORK/cs1" "$WORK/cs2" <<'PY'
import os, sys
def files(d):
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            out[n] = os.path.getsize(os.path.join(root, n))
    return out
a, b = files(sys.argv[1]), files(sys.argv[2])
print(sum(size for n, size in b.items() if n not in a) + os.path.getsize(sys.argv[2] + "/../v2.caibx"))
PY
  }
  CASYNC=$(casync_fetch)
  CASYNC16=$(casync_fetch --chunk-size=16384)
fi
if [ "${BENCH_PEERS:-1}" != 0 ] && command -v zck >/dev/null && command -v zck_delta_size >/dev/null; then
  echo "== zchunk"
  zck -o "$WORK/v1.zck" "$V1" >/dev/null
  zck -o "$WORK/v2.zck" "$V2" >/dev/null
  ZCK=$(zck_delta_size "$WORK/v1.zck" "$WORK/v2.zck" | awk '/download/ {for (i=1;i<=NF;i++) if ($i ~ /^[0-9]+$/) {print $i; exit}}')
fi

python3 - <<PY
mb = 1e6
mib = 1 << 20
v2 = $(stat -c %s "$V2")
p2, p1, one = $(stat -c %s "$WORK/www/v2.payload"), $(stat -c %s "$WORK/www/v2-format1.payload"), $(stat -c %s "$ONE")
d = "$BEST_delta".split(); f2 = "$BEST_full2".split(); f1 = "$BEST_full1".split()
ds, dk, dfetch, dreuse, dnginx = float(d[0]), int(d[1]), int(d[2]), int(d[3]), int(d[4])
f2s, f2k = float(f2[0]), int(f2[1])
f1s, f1k = float(f1[0]), int(f1[1])
print(f"== results (v2.img {v2 / mib:.0f} MiB, level $LEVEL, prefix $PREFIX, $(nproc) cores, best of $RUNS)")
print(f"{'':44} {'measured':>14}  target")
print(f"{'bytes fetched v1 -> v2 (updater count)':44} {dfetch / mb:>11.2f} MB  <= 10 MB")
print(f"{'bytes sent by nginx for that install':44} {dnginx / mb:>11.2f} MB")
print(f"{'bytes reused from the booted slot':44} {dreuse / mb:>11.2f} MB")
print(f"{'full payload, format 2':44} {p2 / mb:>11.2f} MB")
print(f"{'  / one-frame zstd -$LEVEL (' + f'{one / mb:.2f} MB)':44} {p2 / one:>14.4f}  <= 1.03")
print(f"{'full payload, format 1 (today)':44} {p1 / mb:>11.2f} MB  ({p1 / one:.4f} x one frame)")
print(f"{'delta install time (whole install)':44} {ds:>12.2f} s  <= 5 s")
print(f"{'delta install peak RSS':44} {dk / 1024:>10.1f} MiB  <= 32 MiB")
print(f"{'full install, format 2':44} {v2 / mib / f2s:>8.0f} MiB/s  >= format 1")
print(f"{'full install, format 1 (today)':44} {v2 / mib / f1s:>8.0f} MiB/s")
# The runs were made in turns: the median of the two formats' times, and their ratio.
med = lambda xs: sorted(xs)[len(xs) // 2]
t2, t1 = [float(x) for x in "$SECS_full2".split()], [float(x) for x in "$SECS_full1".split()]
print(f"{'  format 2 / format 1, median of the runs':44} {med(t1) / med(t2):>14.2f}  >= 1  ({v2 / mib / med(t2):.0f} / {v2 / mib / med(t1):.0f} MiB/s)")
print(f"{'full install peak RSS, format 2':44} {f2k / 1024:>10.1f} MiB  <= 16 MiB")
print(f"{'full install peak RSS, format 1':44} {f1k / 1024:>10.1f} MiB")
print(f"{'pack time, format 2 / format 1':44} {'$PACK2_S s / $PACK1_S s':>14}")
# The patch block: prelude + patch + the frames the patch does not cover.
pt = "$BEST_patch".split()
print(f"{'bytes fetched v1 -> v2 with the v1 patch':44} {int(pt[2]) / mb:>11.2f} MB  <= 5 MB")
print(f"{'  patch size / make time':44} {$PATCH_BYTES / mb:>8.2f} MB {'$PATCH_S s':>6}")
print(f"{'  install time / peak RSS with the patch':44} {float(pt[0]):>6.2f} s {int(pt[1]) / 1024:>5.1f} MiB")
for name, v in [("casync (default chunks)", "$CASYNC"), ("casync (16 KiB chunks)", "$CASYNC16"), ("zchunk (zck_delta_size)", "$ZCK")]:
    why = '  skipped (BENCH_PEERS=0)' if "${BENCH_PEERS:-1}" == "0" else '  not installed'
    print(f"{'peer: ' + name + ' fetch v1 -> v2':44} {(f'{int(v) / mb:11.2f} MB') if v else why}")
PY
