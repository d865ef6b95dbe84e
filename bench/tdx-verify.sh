#!/usr/bin/env bash
# Benchmark: our TDX quote verification against Phala's dcap-qvl, in one process (release build),
# on the same real quote and Intel collateral (shared/vectors/tdx, the sample dcap-qvl ships):
# cold (first verification in a fresh process, collateral JSON parsed, PCK chain and collateral
# signatures checked), cached (the same quote again: ours remembers the decoded certificates,
# the verified chain, the parsed and signature-checked collateral, the CRL checks and the QE
# report signature per process; dcap-qvl has no cache)
# and the raw P-256 checks (QE report and quote signature) through OpenSSL and through ring.
# Prints medians and the ratios against the goals: cold ours <= dcap-qvl, cached dcap-qvl /
# ours >= 5, cached ours <= 1.2 x the raw signature checks.
#
# With BENCH_CALLGRIND=1 (and valgrind installed) it also counts the instructions of one cold
# verification by each under callgrind: repeatable when other work shares the machine, unlike
# wall-clock (valgrind hides SHA-NI and ADX, so both run their portable code paths there).
#
# Usage: bench/tdx-verify.sh
#   BENCH_COLD_RUNS=21      child processes for the cold numbers
#   BENCH_CALLGRIND=0       1: also print cold instruction counts and their ratio
#   CARGO_CMD="cargo"       e.g. "flock /tmp/cargo.lock cargo" on a shared machine
set -euo pipefail
cd "$(dirname "$0")/.."
cargo_cmd=${CARGO_CMD:-cargo}
$cargo_cmd build --locked -q --release -p cvm-compare --example tdx_verify_bench
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
bench="${CARGO_TARGET_DIR:-target}/release/examples/tdx_verify_bench"
"$bench"
[ "${BENCH_CALLGRIND:-0}" = 1 ] || exit 0
# Instructions of one cold verification (after the same warm-up as the timed children).
count() {
  local out
  out=$(mktemp)
  valgrind --tool=callgrind --toggle-collect='*counted_*' --callgrind-out-file="$out" \
    "$bench" "--count-$1" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
  rm -f "$out"
}
ours=$(count ours)
theirs=$(count theirs)
echo
printf '%-62s %12s instructions\n' "cold (callgrind): ours" "$ours" "cold (callgrind): dcap-qvl" "$theirs"
awk -v o="$ours" -v t="$theirs" \
  'BEGIN { printf "RATIO cold instructions ours / dcap-qvl = %.2f  (goal <= 1.00)\n", o / t }'
