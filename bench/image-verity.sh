#!/usr/bin/env bash
# Benchmark: our dm-verity tree builder (`cvm-image verity`) against `veritysetup format` on the
# same 1 GiB file with the same salt and UUID. Prints both times, the speed ratio, and checks that
# the root hashes and hash files are identical. Usage: bench/image-verity.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
cargo build -q --release -p image-builder --bin cvm-image
BIN=${CARGO_TARGET_DIR:-target}/release/cvm-image
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
SALT=$(printf '5a%.0s' $(seq 32))
UUID=12345678-9abc-def0-1234-56789abcdef0
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$W/data"
cat "$W/data" >/dev/null # both runs read from the page cache

t0=$(date +%s.%N)
theirs=$(veritysetup format --salt="$SALT" --uuid="$UUID" "$W/data" "$W/theirs" | awk '/Root hash/ {print $3}')
t1=$(date +%s.%N)
ours=$("$BIN" verity --salt "$SALT" --uuid "$UUID" "$W/data" "$W/ours" | awk '/Root hash/ {print $3}')
t2=$(date +%s.%N)

cmp "$W/theirs" "$W/ours"
[ "$theirs" = "$ours" ] || { echo "root hash differs: $theirs vs $ours"; exit 1; }
awk -v a="$t0" -v b="$t1" -v c="$t2" -v n="$SIZE_MIB" -v cores="$(nproc)" 'BEGIN {
  vs = b - a; us = c - b;
  printf "data: %d MiB, cores: %d\nveritysetup format: %.2f s\ncvm-image verity:   %.2f s\nratio (veritysetup / ours): %.2fx\n", n, cores, vs, us, vs / us }'
echo "root hash (identical): $ours"
