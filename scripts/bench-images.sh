# Sourced by the delta benchmarks: the realistic image pair of ../shared/bench/make-images.sh.
# Sets IMAGES (BENCH_IMAGES, default /var/tmp/usr-images), V1 and V2, and exits with a hint
# when either image is missing.
IMAGES=${BENCH_IMAGES:-/var/tmp/usr-images}
for f in v1.img v2.img; do
  if [ ! -f "$IMAGES/$f" ]; then
    echo "$IMAGES/$f missing: run ../shared/bench/make-images.sh $IMAGES first" >&2
    exit 1
  fi
done
V1=$IMAGES/v1.img
V2=$IMAGES/v2.img
