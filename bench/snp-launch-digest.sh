#!/usr/bin/env bash
# Benchmark: `cvm-cli snp-launch-digest` against the reference calculator `sev-snp-measure`
# (PyPI, installed by scripts/install-test-deps.sh) on the same OVMF and vCPU counts. Prints the
# best of five runs of each, the ratio, and checks the digests are identical.
# Usage: bench/snp-launch-digest.sh [OVMF] (default: Debian's /usr/share/ovmf/OVMF.fd)
set -euo pipefail
cd "$(dirname "$0")/.."
OVMF=${1:-/usr/share/ovmf/OVMF.fd}
REF=/opt/cvm-test-venv/bin/sev-snp-measure
cargo build -q -p cvm-cli
CLI=${CARGO_TARGET_DIR:-target}/debug/cvm-cli
best() {
  local best=999 a b
  for _ in 1 2 3 4 5; do
    a=$(date +%s.%N); "$@" >/tmp/snp-bench.out; b=$(date +%s.%N)
    best=$(awk -v a="$a" -v b="$b" -v c="$best" 'BEGIN { d = b - a; print (d < c ? d : c) }')
  done
  echo "$best"
}
echo "firmware: $OVMF ($(stat -c %s "$OVMF") bytes); load: $(cut -d' ' -f1 /proc/loadavg)"
for vcpus in 1 64; do
  theirs=$(best "$REF" --mode snp --vcpus "$vcpus" --vcpu-type EPYC-v4 --ovmf "$OVMF"); t=$(cat /tmp/snp-bench.out)
  ours=$(best "$CLI" snp-launch-digest --snp-ovmf "$OVMF" --snp-vcpus "$vcpus"); o=$(cat /tmp/snp-bench.out)
  [ "$t" = "$o" ] || { echo "digests differ: $t vs $o"; exit 1; }
  awk -v t="$theirs" -v o="$ours" -v n="$vcpus" 'BEGIN {
    printf "%3d vCPUs: sev-snp-measure %.3f s, cvm-cli %.3f s, ratio %.1fx\n", n, t, o, t / o }'
done
