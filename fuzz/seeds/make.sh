#!/usr/bin/env bash
# Rebuilds the seed corpus of every fuzz target (fuzz/seeds/TARGET/). Run from anywhere, as root
# (the 4096-byte GPT seed goes through a loop device, since sgdisk assumes 512 for files).
set -euo pipefail
cd "$(dirname "$0")"
rm -rf gpt payload frame config state byteranges patch
mkdir -p gpt payload frame config state byteranges patch
USR=5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6

# gpt: one byte picking the sector size (0: 512, 1: 4096), then a small disk image with two
# usr slots (A at P1 T0 S1, B at P2 T1 S0) and a Linux partition.
mk_gpt() { # $1 = sector size, $2 = output, $3 = image size
  local img; img=$(mktemp); truncate -s "$3" "$img"
  local dev="$img" loop=""
  if [ "$1" = 4096 ]; then loop=$(losetup -f --show -b 4096 "$img"); dev=$loop; fi
  sgdisk -o -a 1 -n 3:0:+2 -t 3:$USR -c 3:USR-A -n 4:0:+2 -t 4:$USR -c 4:USR-B -n 9:0:0 -c 9:ROOT "$dev" >/dev/null
  cgpt add -i 3 -P 1 -T 0 -S 1 "$dev"; cgpt add -i 4 -P 2 -T 1 -S 0 "$dev"
  [ -z "$loop" ] || losetup -d "$loop"
  { if [ "$1" = 4096 ]; then printf '\001'; else printf '\000'; fi; cat "$img"; } > "$2"
  rm -f "$img"
}
mk_gpt 512 gpt/two-slots-512 $((80 * 512))
mk_gpt 4096 gpt/two-slots-4096 $((16 * 4096))

# payload: mode byte 0 (whole prelude) with the committed test vector; mode 1 (chunk table);
# mode 2 (a manifest the target signs with the vector key: 2-byte length, manifest, then the
# vector's chunk table and frames, so the seed is the whole vector re-signed).
V=../../updater/testdata/vector.payload
{ printf '\000'; cat $V; } > payload/vector
{ printf '\001'; head -c 112 /dev/zero; } > payload/two-zero-entries
{ printf '\002\166\000'; tail -c +65 $V | head -c 118; tail -c +259 $V; } > payload/signed-manifest
# mode 3 (a version 2 chunk table): the v2 vector's own table (2 entries of 40 bytes).
V2=../../updater/testdata/vector-v2.payload
{ printf '\003'; tail -c +275 $V2 | head -c 80; } > payload/v2-table

# frame: 4-byte little-endian chunk length, then a zstd frame of that many bytes.
printf 'hello, frame\n' > /tmp/seed-frame.txt
{ printf '\015\000\000\000'; zstd -q -c /tmp/seed-frame.txt; } > frame/hello
{ printf '\000\020\000\000'; head -c 4096 /dev/zero | zstd -q -c; } > frame/zeros-4k

# config: the shipped defaults and a drop-in with unknown and bad keys.
cp ../../updater/dist/config.d/00-defaults.toml config/defaults.toml
printf '[install]\ntries = 99\n[reboot]\nstrategy = "sometimes"\nwhen = 1\n[x]\ny = [1]\n' > config/bad-keys.toml

# state: one of each file, as the updater writes them.
printf '{"format_version":1,"slot":"B","slot_partuuid":"0fc63daf-8483-4772-8e79-3d69d8477de4","version":"2.0","payload_id":"ab","flipped":true}\n' > state/pending.json
printf '{"format_version":1,"payload_id":"ab","slot_partuuid":"x","version":"2.0","next_chunk":3,"chunk_count":9}\n' > state/install-progress.json
printf '{"format_version":1,"versions":[{"version":"3","slot":"B","reason":"health check 10-app failed (exit 1)","check":"10-app","output":"boom\\n","at":1}]}\n' > state/failed.json
printf '{"format_version":1,"slot":"B","version":"3","passed":false,"summary":"s","checks":[{"name":"10-app","outcome":"failed (exit 1)","passed":false,"millis":3,"output":"boom"}],"at":1}\n' > state/health.json
printf '{"format_version":1,"slots":{"0fc63daf-8483-4772-8e79-3d69d8477de4":"1.0"}}\n' > state/versions.json

# byteranges: a Content-Type line, then a multipart/byteranges body answering bytes 3-39,
# 100-179 and 700-709 of a 1000-byte payload (the ranges the target asks for).
{ printf 'multipart/byteranges; boundary=B0\n'
  for r in 3-39 100-179 700-709; do
    printf '\r\n--B0\r\nContent-Range: bytes %s/1000\r\n\r\n' "$r"
    head -c $((${r#*-} - ${r%-*} + 1)) /dev/zero | tr '\0' x
  done
  printf '\r\n--B0--\r\n'; } > byteranges/three-parts

# patch: mode 0 (the whole reader) on a header with the patch magic and nothing after it.
{ printf '\000UPDPATCH'; head -c 56 /dev/zero; } > patch/header-only

echo "seeds rebuilt in $(pwd)"
