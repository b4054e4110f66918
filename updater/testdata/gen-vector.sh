#!/usr/bin/env bash
# Regenerates the payload test vector (docs/payload-format.md "Test vector"):
#   vector.img      10000-byte image (3 chunks of 4096, 4096 and 1808 bytes)
#   vector.key/.pub the test signing key (test use only; its seed is public)
#   vector.payload  the payload (format 1), packed at level 3, created 2026-01-01T00:00:00Z, expiring
#                   2036-01-01T00:00:00Z
# The tests compare vector.payload byte for byte with a fresh pack of vector.img, and the
# hex dump in the docs with the first bytes of vector.payload.
set -euo pipefail
cd "$(dirname "$0")"
python3 - <<'PY'
img = bytes((i * 7) % 251 for i in range(4096)) + bytes(4096) + (b"updater test vector\n" * 100)[:1808]
open("vector.img", "wb").write(img)
PY
printf '%s\n' 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60 > vector.key
rm -f vector.payload vector.pub
# RFC 8032 section 7.1 test 1: the public key of that seed.
printf '%s\n' d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a > vector.pub
SOURCE_DATE_EPOCH=1767225600 cargo run -q -p image-tools -- pack --image vector.img --key vector.key \
  -o vector.payload --format 1 --chunk-size 4096 --level 3 --image-id testbox --image-version 1.0 \
  --expires 2036-01-01T00:00:00Z
# Format 2 (content-defined chunks of 1024..8192 bytes, average 2048) of the same image.
rm -f vector-v2.payload
SOURCE_DATE_EPOCH=1767225600 cargo run -q -p image-tools -- pack --image vector.img --key vector.key \
  -o vector-v2.payload --format 2 --cdc-min 1024 --cdc-avg 2048 --cdc-max 8192 --level 3 \
  --image-id testbox --image-version 1.0 --expires 2036-01-01T00:00:00Z
