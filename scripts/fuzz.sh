#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ with cargo fuzz (libFuzzer) and prints each one's executions.
#   scripts/fuzz.sh short [TARGET...]   bounded smoke run, 20 s a target (the test command runs this)
#   scripts/fuzz.sh long  [TARGET...]   600 s a target (figures recorded in docs/reliability.md)
# FUZZ_SECONDS overrides the time per target. New inputs go to a work corpus outside the repo
# ($FUZZ_WORK, default /var/tmp/ab-updater-fuzz); the committed seeds (fuzz/seeds/) are read only.
# A crash stops the run with libFuzzer's report and a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
mode=${1:-short}; shift || true
case "$mode" in
  short) secs=${FUZZ_SECONDS:-20} ;;
  long) secs=${FUZZ_SECONDS:-600} ;;
  *) echo "usage: scripts/fuzz.sh short|long [TARGET...]" >&2; exit 2 ;;
esac
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gpt payload frame config state byteranges patch)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
# cargo fuzz needs nightly rustc flags; use the nightly toolchain where the machine has one,
# else let the stable compiler accept them.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then fuzz=(cargo +nightly fuzz); else fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz); fi

work=${FUZZ_WORK:-/var/tmp/ab-updater-fuzz}
"${fuzz[@]}" build -O
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  if ! "${fuzz[@]}" run -O "$t" "$work/$t" "seeds/$t" -- -max_total_time="$secs" -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $t FAILED (log: $log)"
    exit 1
  fi
  runs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  echo "fuzz: $t ok: ${runs:-?} executions in ${secs} s, corpus $(ls "$work/$t" | wc -l) inputs"
done
