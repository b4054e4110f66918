#!/usr/bin/env bash
# Regenerates the stream test vector (docs/stream-format.md "Test vector"):
#   stream.json, stream.json.sig  channel stable, serial 3: init at 2026-01-01T00:00:00Z valid for
#                                 30 days, add vector.payload a minute later, rollout 1.0 from
#                                 2026-01-02T00:00:00Z over 2 days from 10% a minute after that,
#                                 signed by vector.key (the RFC 8032 test key; tests only).
# The tests check that the updater's writer and `image-tools publish` both reproduce these bytes.
set -euo pipefail
cd "$(dirname "$0")"
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
publish() { cargo run -q -p image-tools -- publish "$@"; }
publish init "$tree" --channel stable --key vector.key --expires-in 30d --now 2026-01-01T00:00:00Z
publish add vector.payload --root "$tree" --channel stable --key vector.key \
  --now 2026-01-01T00:01:00Z
publish rollout 1.0 --start 2026-01-02T00:00:00Z --duration 2d --start-fraction 0.1 \
  --root "$tree" --channel stable --key vector.key --now 2026-01-01T00:02:00Z
cp "$tree/stable/stream.json" "$tree/stable/stream.json.sig" .
