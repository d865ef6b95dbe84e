#!/bin/sh
# Benchmark of cvm-attestation's verify() and its parts (release profile), next to openssl's own
# numbers for the signature primitives verification cannot avoid, on the same machine.
#
# Usage: bench/verify.sh    (from anywhere; needs cargo and openssl)
set -eu
cd "$(dirname "$0")/.."

echo "== cargo bench -p cvm-attestation --bench verify"
cargo bench -p cvm-attestation --bench verify

echo
echo "== openssl speed -seconds 1 ecdsap384 rsa4096 ecdsap256"
echo "   (compare 1e6 / verify/s with the us/op above)"
openssl speed -seconds 1 ecdsap384 rsa4096 ecdsap256 2>/dev/null | sed -n '/sign *verify/,$p'
