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
# Usage: bench/tdx-verify.sh
#   BENCH_COLD_RUNS=21      child processes for the cold numbers
#   CARGO_CMD="cargo"       e.g. "flock /tmp/cargo.lock cargo" on a shared machine
set -euo pipefail
cd "$(dirname "$0")/.."
cargo_cmd=${CARGO_CMD:-cargo}
$cargo_cmd build --locked -q --release -p cvm-attestation --example tdx_verify_bench
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
exec "${CARGO_TARGET_DIR:-target}/release/examples/tdx_verify_bench"
