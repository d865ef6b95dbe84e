#!/usr/bin/env bash
# Benchmark: a full `tiny` image build (release binary, warm download cache), and our VHD writer
# against `qemu-img convert -O vpc -o subformat=fixed,force_size` on the same disk.raw.
# Usage: bench/image-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p image-builder --bin cvm-image
BIN=${CARGO_TARGET_DIR:-target}/release/cvm-image
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

"$BIN" build --config image-builder/images/tiny.toml --out "$W/warmup" >/dev/null 2>&1
t0=$(date +%s.%N)
"$BIN" build --config image-builder/images/tiny.toml --out "$W/out" --json >"$W/report.json"
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "tiny build (all formats): %.2f s\n", b - a }'
python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["timings"]; print("  steps: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))' "$W/report.json"

# VHD: ours (copy + footer) vs qemu-img, on a 1 GiB sparse-free raw disk made of the image.
RAW="$W/big.raw"
cp "$W/out/disk.raw" "$RAW"
head -c $((1024 * 1024 * 1024 - $(stat -c %s "$RAW"))) /dev/urandom >>"$RAW"
cat "$RAW" >/dev/null
# Best of three, with dirty pages flushed before each run (writeback dominates otherwise).
best() {
  local best=999
  for _ in 1 2 3; do
    rm -f "$W/x.vhd"; sync
    local a b
    a=$(date +%s.%N); "$@" "$W/x.vhd"; b=$(date +%s.%N)
    best=$(awk -v a="$a" -v b="$b" -v c="$best" 'BEGIN { d = b - a; print (d < c ? d : c) }')
  done
  echo "$best"
}
q=$(best qemu-img convert -f raw -O vpc -o subformat=fixed,force_size "$RAW")
o=$(best "$BIN" vhd "$RAW")
qemu-img convert -f raw -O vpc -o subformat=fixed,force_size "$RAW" "$W/q.vhd"
cmp <(head -c "$(stat -c %s "$RAW")" "$W/q.vhd") <(head -c "$(stat -c %s "$RAW")" "$W/x.vhd")
awk -v q="$q" -v o="$o" 'BEGIN {
  printf "1 GiB fixed VHD (best of 3): qemu-img convert %.2f s, cvm-image vhd %.2f s, ratio %.2fx\n", q, o, q / o }'
