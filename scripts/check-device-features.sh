#!/usr/bin/env bash
# The device binary carries no publisher code: `cargo build -p updater` (any target) must not
# enable ab-payload's `writer` feature (payload packing, signing, key generation) nor
# ab-release's `writer` feature (stream encoding and signing). image-tools enables both; the
# updater's tests get them through dev-dependencies, which do not reach the binary.
# And the publisher carries no device code: image-tools' normal dependency tree does not
# contain the `updater` crate at all (issue 12); the payload format and what both sides share
# live in ab-payload and ab-release.
#
# Reads cargo's own feature resolution (`cargo tree -e features,no-dev`, the resolution
# `cargo build -p updater` uses), for the device target and the host. As a control, the same
# query for image-tools must show both features, so a change in cargo's output cannot make
# this check pass by matching nothing; likewise the package list of image-tools must name
# ab-release before its lack of `updater` counts. Exit status 1 names the offending feature
# (or package) and its path.
#   scripts/check-device-features.sh         (scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

# Publisher features as `package feature`; each is looked up in the inverted tree of its
# package (`-i`), which lists every enabled feature of it, the root package's own included.
publisher=('ab-payload writer' 'ab-release writer')
# The features enabled on `package` when cargo builds `root` (no dev-dependencies).
features_of() { # root package target-args...
  local root=$1 package=$2
  shift 2
  cargo tree --locked -e features,no-dev -p "$root" "$@" -i "$package"
}

status=0
for target in x86_64-unknown-linux-musl host; do
  if [ "$target" = host ]; then args=(); else args=(--target "$target"); fi
  for pf in "${publisher[@]}"; do
    package=${pf% *} feature=${pf#* }
    node="$package feature \"$feature\""
    out=$(features_of updater "$package" "${args[@]}")
    if grep -qF "$node" <<<"$out"; then
      echo "check-device-features: building updater for $target enables $node:" >&2
      echo "$out" >&2
      status=1
    fi
    if ! features_of image-tools "$package" "${args[@]}" | grep -qF "$node"; then
      echo "check-device-features: control failed: image-tools for $target does not show $node (cargo tree's output changed?)" >&2
      status=1
    fi
  done
done

# The packages image-tools builds with (no dev-dependencies), one name a line.
packages=$(cargo tree --locked -e normal -p image-tools --prefix none --format '{p}' | awk '{print $1}' | sort -u)
if ! grep -qx 'ab-release' <<<"$packages"; then
  echo "check-device-features: control failed: image-tools' package list does not name ab-release (cargo tree's output changed?)" >&2
  status=1
fi
if grep -qx 'updater' <<<"$packages"; then
  echo "check-device-features: image-tools depends on the device crate updater:" >&2
  cargo tree --locked -e normal -p image-tools -i updater >&2
  status=1
fi
[ "$status" -eq 0 ] && echo "check-device-features: the updater binary enables no publisher feature (musl and host), and image-tools does not depend on updater"
exit "$status"
