#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted input (docs/evidence.md, "Fuzzing").
#
#   scripts/fuzz.sh [seconds-per-target] [target...]     (default: 300 s, every target)
#
# Builds fuzz/ on stable Rust with libFuzzer's coverage instrumentation (no cargo-fuzz, no
# nightly), writes the seed corpus from shared/vectors and the example workload, runs each target
# in turn and prints execs, coverage and crashes per target. The corpus grows in
# fuzz/target/corpus/<target> across runs. Exits non-zero on any crash, naming its input file;
# reproduce with `fuzz/target/<triple>/release/<target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-300}
shift || true
host=$(rustc -vV | sed -n 's/^host: //p')
out=fuzz/target
bin=$out/$host/release

# The flags cargo-fuzz passes, minus the nightly-only sanitizer: edge coverage with inline 8-bit
# counters, the PC table, comparison tracing and stack depth for libFuzzer; `--cfg fuzzing`.
# `--target` keeps them off build scripts and proc macros. The release profile in
# fuzz/Cargo.toml keeps debug assertions and overflow checks on.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
--cfg fuzzing -Cforce-frame-pointers"
build_start=$(date +%s)
flock /tmp/cargo.lock cargo build --manifest-path fuzz/Cargo.toml --locked --release \
    --target "$host" --bins
echo "fuzz: build took $(( $(date +%s) - build_start )) s"

# Largest input per target: a little above the largest real one of its kind.
declare -A max_len=(
    [snp_report]=2048 [hcl_report]=4096 [tpms_attest]=1100 [tpmt_public]=2048
    [tpmt_signature]=1024 [tcg2_event_log]=65536 [cc_event_log]=65536 [td_quote]=8192
    [tdx_collateral]=32768 [intel_x509]=4096 [evidence_json]=131072 [golden_json]=16384
    [workload_archive]=65536 [image_archive]=65536 [compose_yaml]=8192
)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(printf '%s\n' "${!max_len[@]}" | sort)
fi
for target in "${targets[@]}"; do
    [ -n "${max_len[$target]:-}" ] || { echo "fuzz: no target $target" >&2; exit 2; }
done

rm -rf "$out/seeds"
if ! CVM_FUZZ_SEEDS="$out/seeds" CVM_FUZZ_TARGETS="${targets[*]}" "$bin/seeds" \
    > "$out/seeds.log" 2>&1; then
    grep -v '^INFO:\|^WARNING:' "$out/seeds.log" >&2
    echo "fuzz: writing the seed corpus failed" >&2
    exit 1
fi

crashed=()
printf '%-18s %10s %8s %8s %8s  %s\n' target execs exec/s cov corpus result > "$out/summary.txt"
for target in "${targets[@]}"; do
    corpus=$out/corpus/$target
    artifacts=$out/artifacts/$target
    log=$out/logs/$target.log
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    echo "fuzz: $target for $seconds s"
    status=0
    "$bin/$target" -max_total_time="$seconds" -max_len="${max_len[$target]}" \
        -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "$corpus" "$out/seeds/$target" > "$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    units=$(ls "$corpus" | wc -l)
    result=ok
    if [ "$status" -ne 0 ]; then
        input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        result="CRASH (exit $status): ${input:-see $log}"
        crashed+=("$target: ${input:-$log}")
        grep -m1 -A12 -E "panicked|ERROR: libFuzzer" "$log" || tail -20 "$log"
    fi
    printf '%-18s %10s %8s %8s %8s  %s\n' "$target" "${execs:-?}" "${rate:-?}" "${cov:-?}" \
        "$units" "$result" | tee -a "$out/summary.txt"
done
echo
cat "$out/summary.txt"
if [ ${#crashed[@]} -gt 0 ]; then
    printf 'fuzz: crash: %s\n' "${crashed[@]}" >&2
    exit 1
fi
