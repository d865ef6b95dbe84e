#!/usr/bin/env bash
# Benchmark: `cvm-cli deploy-azure` uploading a 1 GiB half-empty sparse image (data in every other
# 4 MiB range) into a page blob on Azurite (SAS URL straight to Azurite, parallel page writes of
# 4 MiB, zero ranges skipped) against the naive upload: every 4 MiB range of the VHD, one page
# write at a time, on the same Azurite. ARM is the test server of cli/tests/deploy_azure.rs.
# Prints a line starting with BENCH. Usage: bench/deploy-azure.sh (needs
# scripts/install-test-deps.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -q -p cvm-cli --test deploy_azure bench_upload_1gib_half_empty -- --ignored --nocapture 2>&1 |
  grep -E '^BENCH|panicked|test result'
